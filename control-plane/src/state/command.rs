//! Commands: the payload of every Raft log entry, and what applying one answers.

use serde::{Deserialize, Serialize};
use warmpool_proto::agent::InventoryEntry;
use warmpool_proto::records::{Allocation, NodeStatus, Pool, ReleaseReason, Resources};
use warmpool_proto::{
    AllocationId, ContainerEndReason, ContainerId, NodeId, PoolName, PoolSpec, SessionId, Timestamp,
};

use std::collections::BTreeMap;

/// One Raft log entry's payload: a command stamped with the proposer's clock.
///
/// The state machine reads time only from `at`, so replaying the log on any member, at any
/// time, yields the same state and the same events.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// When the command was proposed.
    pub at: Timestamp,
    /// What to do.
    pub cmd: Command,
}

impl Request {
    /// `cmd`, stamped now.
    pub fn now(cmd: Command) -> Self {
        Request {
            at: Timestamp::now(),
            cmd,
        }
    }

    /// Stamps it `at` instead, moving the times the command carries by as much, so that they
    /// keep their distance from the stamp. The leader restamps every request it proposes with
    /// its own clock: leases, waits and deadlines then count from one clock, in log order,
    /// whichever member took the request and however far its clock is off.
    pub fn restamp(&mut self, at: Timestamp) {
        let shift = |t: &mut Timestamp, from: Timestamp| {
            *t = Timestamp(at.0.saturating_add(t.0).saturating_sub(from.0));
        };
        let from = self.at;
        match &mut self.cmd {
            Command::SetNodeStatus {
                drain_deadline: Some(d),
                ..
            } => shift(d, from),
            Command::CreateKey { key } => shift(&mut key.created_at, from),
            Command::Batch { requests } => {
                for r in requests {
                    r.restamp(at);
                }
            }
            _ => {}
        }
        self.at = at;
    }
}

/// A change to the replicated state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Create a pool; refused if it exists.
    CreatePool {
        /// The spec, already validated.
        spec: PoolSpec,
    },
    /// Create or replace a pool's spec; a change bumps its generation.
    PutPool {
        /// The spec, already validated.
        spec: PoolSpec,
    },
    /// Delete a pool; its containers are released.
    DeletePool {
        /// The pool.
        name: PoolName,
    },
    /// The leader planned new containers for a pool, each on a node.
    PlanContainers {
        /// The pool.
        pool: PoolName,
        /// The generation planned for; a stale plan is refused.
        generation: u64,
        /// New container ids and their nodes.
        placements: Vec<(ContainerId, NodeId)>,
    },
    /// What an agent reports about containers it runs.
    Observe {
        /// The reporting node.
        node: NodeId,
        /// The containers' entries.
        entries: Vec<InventoryEntry>,
    },
    /// Containers no longer on their host (destroyed, vanished, or never made).
    ContainersGone {
        /// The containers and why each is gone.
        gone: Vec<(ContainerId, ContainerEndReason)>,
    },
    /// Stop offering these containers and have them destroyed (scale down, old spec, drain).
    RetireContainers {
        /// The containers.
        ids: Vec<ContainerId>,
        /// Why.
        reason: ContainerEndReason,
        /// Written by this version: each container keeps the retirement's time in its
        /// `released_at`, and its `container_terminated` (or `container_failed`) event says how
        /// long it took to go (`detail.teardown_ms`). Entries written before it lack the field
        /// and are applied as they were, so that a log replayed by this version makes the state
        /// and the events it made then.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        timed: bool,
    },
    /// Move these warm containers to their pool's paused tier (the leader then has their
    /// agents pause them). Containers no longer warm and healthy are skipped.
    PauseContainers {
        /// The containers.
        ids: Vec<ContainerId>,
    },
    /// A container allocated from the paused tier did not answer once unpaused: it is
    /// destroyed (`unpause_failed`) and the allocation moves to another container of its
    /// pool (warm first, then paused), or, with none free, ends (`lost`). Refused unless
    /// `container` still holds the allocation (a repeat changes nothing and answers the
    /// allocation as it stands).
    UnpauseFailed {
        /// The allocation.
        allocation_id: AllocationId,
        /// The container that did not answer.
        container: ContainerId,
    },
    /// Hand a warm container of `pool` to `session`. The state machine picks the container, so
    /// concurrent allocations can never pick the same one.
    Allocate {
        /// Id of the new allocation.
        allocation_id: AllocationId,
        /// The pool.
        pool: PoolName,
        /// The session.
        session: SessionId,
        /// Lease length in milliseconds.
        lease_ms: u64,
        /// Retries with the same key get the same allocation.
        idempotency_key: Option<String>,
        /// When no container is free, wait in the pool's queue this long: the first container
        /// to become warm goes to the longest waiter.
        #[serde(default)]
        wait_ms: u64,
        /// The tenant it is for (its idempotency keys, quotas and visibility).
        #[serde(default)]
        tenant: warmpool_proto::TenantId,
        /// Labels stored with the allocation.
        #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
        metadata: std::collections::BTreeMap<String, String>,
        /// Env or secrets were given (delivered by the answering member straight to the
        /// agent; their values are never in the log).
        #[serde(default)]
        with_settings: bool,
        /// The workspace the allocation named (restored by the answering member's request to
        /// the agent; the allocation says `restoring` until it reports).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        workspace: Option<String>,
        /// SHA-256 (hex) of the gateway access token the proposer made (the token itself
        /// never enters the log).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token_sha256: Option<String>,
        /// The requester does not wait: the allocation stays queued (`pending`) until a
        /// container is warm for it, with no deadline, or until it is cancelled.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        asynchronous: bool,
        /// Node labels the container's node must carry (a list: in order of preference).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        location: Option<warmpool_proto::api::Location>,
        /// Caps the allocation's lifetime below its pool's `max_lifetime_secs`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_lifetime_secs: Option<u64>,
    },
    /// Where an allocation's settings given at claim stand, after the member that took the
    /// claim delivered them (or failed to).
    SettingsDelivered {
        /// The allocation.
        allocation_id: AllocationId,
        /// Applied or failed.
        state: warmpool_proto::session::SettingsState,
    },
    /// Where an allocation's workspace restore stands, after the member that took the claim
    /// asked the agent for it.
    WorkspaceRestored {
        /// The allocation.
        allocation_id: AllocationId,
        /// Restored or failed.
        state: warmpool_proto::workspace::WorkspaceState,
    },
    /// Set a tenant's limits (replacing what it had; the rate bucket starts full).
    PutTenant {
        /// The tenant.
        tenant: warmpool_proto::TenantId,
        /// Its limits.
        quota: warmpool_proto::api::TenantQuota,
    },
    /// Remove a tenant's limits.
    DeleteTenant {
        /// The tenant.
        tenant: warmpool_proto::TenantId,
    },
    /// Restart an allocated, unhealthy container in place (once; the leader then asks its
    /// agent to do it).
    RestartContainer {
        /// The container.
        id: ContainerId,
    },
    /// A waiting allocation gives up: answered with the allocation if it was served in the
    /// meantime, else it leaves the queue.
    CancelWait {
        /// The waiting allocation.
        allocation_id: AllocationId,
    },
    /// Drops waiting allocations whose time is up (their requester is gone).
    ExpireWaits,
    /// The request that proposed `Allocate { allocation_id }` got no answer to its client (the
    /// write timed out, or the client hung up), so the allocation, if the write committed,
    /// is held by nobody. Unless the client comes back for it with its idempotency key within
    /// `grace_ms`, the leader releases it (`abandoned`); if the allocate has not been applied
    /// yet, it is refused when it is.
    Abandon {
        /// The allocation the unanswered request proposed.
        allocation_id: AllocationId,
        /// How long the client has to come back for it.
        grace_ms: u64,
        /// The request's idempotency key and tenant: when the request was a replay (it asked
        /// again for an allocation made before), that allocation is the one abandoned.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idempotency_key: Option<String>,
        /// The tenant the request was for.
        #[serde(default)]
        tenant: warmpool_proto::TenantId,
    },
    /// Several requests in one log entry, applied in order as if each were an entry of its
    /// own; answered with [`Response::Batch`]. The leader groups concurrent writes so that
    /// they share one append, one replication round and one flush. Not nested.
    Batch {
        /// The requests, each with its own time.
        requests: Vec<Request>,
    },
    /// End an allocation.
    Release {
        /// The allocation.
        allocation_id: AllocationId,
        /// Why.
        reason: ReleaseReason,
    },
    /// Extend an allocation's lease to `lease_ms` from now (capped by `max_lifetime_secs`).
    Renew {
        /// The allocation.
        allocation_id: AllocationId,
        /// New lease length from now, in milliseconds.
        lease_ms: u64,
    },
    /// A node announced itself, or came back after being down.
    NodeJoin {
        /// The node.
        node: NodeId,
        /// Its container /64.
        ipv6_prefix: String,
        /// Its labels.
        labels: BTreeMap<String, String>,
        /// Its capacity.
        capacity: Resources,
        /// Its agent's version.
        agent_version: String,
    },
    /// A node missed its heartbeats for the node timeout. What it held that no session holds
    /// (warm, creating, releasing containers) is gone from the pool and replaced elsewhere;
    /// allocated containers keep their records and their sessions, since the node may well be
    /// alive behind a broken link, until it comes back or [`Command::NodeLost`] gives up on it.
    NodeDown {
        /// The node.
        node: NodeId,
        /// Why.
        reason: String,
    },
    /// A node down for the leader's `node_lost` time is given up on: every live container on
    /// it is gone and the allocations on them are lost. Does nothing unless the node is still
    /// down when applied (it may have come back in between).
    NodeLost {
        /// The node.
        node: NodeId,
    },
    /// Marks a node that is not down as taking no grants or placements for now (`Some`), or
    /// clears the mark (`None`). Its containers and allocations are kept.
    MarkUnreachable {
        /// The node.
        node: NodeId,
        /// Why, or `None` to clear.
        reason: Option<warmpool_proto::records::UnreachableReason>,
    },
    /// Cordon, uncordon or drain a node.
    SetNodeStatus {
        /// The node.
        node: NodeId,
        /// `ready`, `cordoned` or `draining`.
        status: NodeStatus,
        /// Why, when the control plane itself does it.
        #[serde(default)]
        reason: Option<String>,
        /// With `draining`: when the allocations still on the node are released.
        #[serde(default)]
        drain_deadline: Option<Timestamp>,
    },
    /// Store a new API key (idempotent by id: an existing key is left as it is).
    CreateKey {
        /// The key.
        key: super::KeyRecord,
    },
    /// Revoke an API key.
    RevokeKey {
        /// Its id.
        id: String,
    },
    /// A pool's creates keep failing (Some) or work again (None).
    SetPoolCondition {
        /// The pool.
        pool: PoolName,
        /// The condition, or None to clear it.
        condition: Option<super::Condition>,
    },
    /// A node's creates keep failing (Some: the leader avoids it for a while) or work again
    /// (None).
    SetNodeCondition {
        /// The node.
        node: NodeId,
        /// The condition, or None to clear it.
        condition: Option<super::Condition>,
    },
    /// The scaler changed a pool's wanted warm count.
    SetWanted {
        /// The pool.
        pool: PoolName,
        /// The new target.
        wanted: u32,
        /// The decision's inputs, kept in the event.
        detail: Option<serde_json::Value>,
    },
    /// How many old records the state keeps before it evicts them to the members' archives
    /// (proposed by a member started with `--retain-*`). Applying it evicts at once down to
    /// the new caps, so every member evicts the same records at the same log index.
    SetRetention {
        /// The new caps.
        retention: super::Retention,
    },
}

/// What applying a command answers. Business refusals are values here, never storage errors:
/// a storage error stops Raft.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
pub enum Response {
    /// Done; nothing to return.
    Ok,
    /// The pool as it now is.
    Pool {
        /// The pool.
        pool: Pool,
        /// True when the command created it.
        created: bool,
    },
    /// An allocation.
    Allocation {
        /// The allocation.
        allocation: Allocation,
        /// True when an earlier command with the same idempotency key made it.
        replayed: bool,
    },
    /// No container was free; the allocation waits in the pool's queue.
    Queued {
        /// The allocation it will become.
        allocation_id: AllocationId,
        /// Place in the queue, 0 = next.
        position: usize,
    },
    /// The command was refused; the state did not change.
    Rejected(Rejection),
    /// What each request of a [`Command::Batch`] answered, in order.
    Batch {
        /// The answers.
        responses: Vec<Response>,
    },
}

/// Why a command was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// Category, mapped to an HTTP status by the API.
    pub code: RejectCode,
    /// For a person.
    pub message: String,
    /// When trying again may work (for `RateLimited`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

/// Categories of refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectCode {
    /// Something named does not exist.
    NotFound,
    /// It exists already, or is in a state that forbids the change.
    Conflict,
    /// No warm container is free.
    NoCapacity,
    /// The command is not valid.
    Invalid,
    /// The tenant holds as many allocations as its `max_allocations`.
    OverQuota,
    /// The tenant asked faster than its `allocations_per_minute`; see `retry_after_ms`.
    RateLimited,
    /// No ready node carries the labels the allocation's `location` asks for.
    NoMatchingNode,
}

impl Response {
    pub(crate) fn rejected(code: RejectCode, message: impl Into<String>) -> Self {
        Response::Rejected(Rejection {
            code,
            message: message.into(),
            retry_after_ms: None,
        })
    }
}

impl Command {
    /// Allocation `allocation_id`, asking for nothing beyond its lease and waiting up to
    /// `wait_ms` for a container: what the simulator's requesters ask (and, waiting for
    /// nothing, the request most tests need).
    pub(crate) fn simple_allocate(
        allocation_id: warmpool_proto::AllocationId,
        pool: warmpool_proto::PoolName,
        session: warmpool_proto::SessionId,
        lease_ms: u64,
        wait_ms: u64,
    ) -> Command {
        Command::Allocate {
            allocation_id,
            pool,
            session,
            lease_ms,
            idempotency_key: None,
            wait_ms,
            tenant: Default::default(),
            metadata: Default::default(),
            with_settings: false,
            workspace: None,
            token_sha256: None,
            asynchronous: false,
            location: None,
            max_lifetime_secs: None,
        }
    }
}

#[cfg(test)]
impl Command {
    /// An allocation that waits for nothing and asks for nothing beyond its lease.
    pub(crate) fn plain_allocate(
        pool: warmpool_proto::PoolName,
        session: warmpool_proto::SessionId,
        lease_ms: u64,
    ) -> Command {
        Command::simple_allocate(
            warmpool_proto::AllocationId::new(),
            pool,
            session,
            lease_ms,
            0,
        )
    }
}

#[cfg(test)]
mod restamp_tests {
    use super::*;

    #[test]
    fn restamping_moves_the_times_a_command_carries_with_its_stamp() {
        let node = NodeId::new("n1").unwrap();
        let drain = |at: u64, deadline: u64| Request {
            at: Timestamp(at),
            cmd: Command::SetNodeStatus {
                node: node.clone(),
                status: NodeStatus::Draining,
                reason: None,
                drain_deadline: Some(Timestamp(deadline)),
            },
        };
        // Taken by a member 30 s ahead; proposed by the leader at 1_000_000.
        let mut r = drain(1_030_000, 1_090_000);
        r.restamp(Timestamp(1_000_000));
        assert_eq!(r, drain(1_000_000, 1_060_000));
        // Inside a batch too.
        let mut b = Request {
            at: Timestamp(5),
            cmd: Command::Batch {
                requests: vec![drain(1_030_000, 1_090_000)],
            },
        };
        b.restamp(Timestamp(1_000_000));
        let Command::Batch { requests } = &b.cmd else {
            unreachable!()
        };
        assert_eq!(requests[0], drain(1_000_000, 1_060_000));
        assert_eq!(b.at, Timestamp(1_000_000));
    }
}
