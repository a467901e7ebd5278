//! The replicated state: pools, containers, nodes, allocations and the event log.
//!
//! [`PoolState::apply`] is the whole state machine: a pure function of the current state and
//! one [`Request`], with no IO and no clock of its own. Raft calls it on every member with the
//! same log, so every member holds the same state and the same event log.

mod apply;
pub mod command;
pub mod query;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};
use warmpool_proto::records::Pool;
use warmpool_proto::{
    Allocation, AllocationId, Container, ContainerId, Event, Node, NodeId, PoolName, Timestamp,
};

pub use command::{Command, RejectCode, Rejection, Request, Response};
pub use query::EventFilter;

/// Most events kept; older ones are dropped from the front.
pub const EVENT_RETENTION: usize = 100_000;
/// Most ended (terminated or failed) container records kept for inspection.
pub const ENDED_CONTAINER_RETENTION: usize = 2_000;
/// Most released allocation records (and their idempotency keys) kept.
pub const RELEASED_ALLOCATION_RETENTION: usize = 100_000;
/// How long past its requester's deadline a waiting allocation stays queued, so the
/// requester's own cancel arrives first.
pub const WAIT_GRACE_MS: u64 = 2_000;

/// Container time of a pool over closed intervals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageTotals {
    /// Milliseconds containers spent warm and unallocated (the pool's overhead).
    pub warm_ms: u64,
    /// Milliseconds containers spent allocated.
    pub allocated_ms: u64,
}

/// An API key as stored: never its secret, only the secret's hash.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Public id.
    pub id: String,
    /// A name for people.
    pub name: String,
    /// What it may do.
    pub role: warmpool_proto::api::Role,
    /// SHA-256 of the secret, hex.
    pub hash: String,
    /// When it was made.
    pub created_at: Timestamp,
    /// When it was revoked.
    pub revoked_at: Option<Timestamp>,
}

/// Why a pool is not growing as it should.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoolCondition {
    /// The last failure.
    pub reason: String,
    /// Creates that failed in a row.
    pub consecutive_failures: u32,
    /// No create before this.
    pub retry_at: Timestamp,
}

impl PoolCondition {
    /// For people: what is wrong and when the next attempt is.
    pub fn describe(&self) -> String {
        format!(
            "creates are failing ({} in a row; last: {}); next attempt at {}",
            self.consecutive_failures, self.reason, self.retry_at
        )
    }
}

/// An allocation waiting in its pool's queue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    /// The allocation it will become.
    pub allocation_id: AllocationId,
    /// The session.
    pub session: warmpool_proto::SessionId,
    /// Lease length, ms.
    pub lease_ms: u64,
    /// Its idempotency key.
    pub idempotency_key: Option<String>,
    /// When it was asked for.
    pub since: Timestamp,
    /// After this it is dropped unserved.
    pub deadline: Timestamp,
}

/// Everything the control plane agrees on.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PoolState {
    pools: BTreeMap<PoolName, Pool>,
    containers: BTreeMap<ContainerId, Container>,
    nodes: BTreeMap<NodeId, Node>,
    allocations: BTreeMap<AllocationId, Allocation>,
    /// Idempotency key → the allocation it made.
    idempotency: BTreeMap<String, AllocationId>,
    /// The scaler's wanted warm count per pool, when it has set one.
    wanted: BTreeMap<PoolName, u32>,
    events: VecDeque<Event>,
    next_event_seq: u64,
    /// Ended containers, oldest first, for pruning.
    ended_containers: VecDeque<ContainerId>,
    /// Released allocations, oldest first, for pruning.
    released_allocations: VecDeque<AllocationId>,
    /// Index of the last applied log entry.
    applied_index: u64,
    /// Allocations waiting for a warm container, per pool, oldest first.
    pending: BTreeMap<PoolName, VecDeque<Pending>>,
    /// Container time per pool over closed intervals (open ones are added when asked).
    usage: BTreeMap<PoolName, UsageTotals>,
    /// API keys by id.
    keys: BTreeMap<String, KeyRecord>,
    /// Pools whose creates keep failing, and why.
    conditions: BTreeMap<PoolName, PoolCondition>,
    /// Allocation requests ever made per pool (served, queued or refused; replays excluded):
    /// the demand the scaler measures.
    arrivals: BTreeMap<PoolName, u64>,

    /// Warm containers per pool, ordered by when they became warm: allocation takes the
    /// oldest first. Derived from `containers`; rebuilt after a snapshot is loaded.
    #[serde(skip)]
    warm_index: BTreeMap<PoolName, BTreeSet<(Timestamp, ContainerId)>>,
}

impl PoolState {
    /// Rebuilds derived indexes; call after deserializing.
    pub fn rebuild_indexes(&mut self) {
        self.warm_index.clear();
        let warm: Vec<_> = self
            .containers
            .values()
            .filter(|c| c.state == warmpool_proto::ContainerState::Warm)
            .map(|c| (c.pool.clone(), c.warm_at.unwrap_or(c.created_at), c.id))
            .collect();
        for (pool, at, id) in warm {
            self.warm_index.entry(pool).or_default().insert((at, id));
        }
    }

    /// Index of the last applied log entry.
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// Sequence number of the newest event, 0 if none.
    pub fn last_event_seq(&self) -> u64 {
        self.next_event_seq
    }

    /// A pool by name.
    pub fn pool(&self, name: &PoolName) -> Option<&Pool> {
        self.pools.get(name)
    }

    /// Every pool, by name.
    pub fn pools(&self) -> impl Iterator<Item = &Pool> {
        self.pools.values()
    }

    /// A container by id (live, or recently ended).
    pub fn container(&self, id: &ContainerId) -> Option<&Container> {
        self.containers.get(id)
    }

    /// Every container record, by id.
    pub fn containers(&self) -> impl Iterator<Item = &Container> {
        self.containers.values()
    }

    /// A node by id.
    pub fn node(&self, id: &NodeId) -> Option<&Node> {
        self.nodes.get(id)
    }

    /// Every node, by id.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    /// An allocation by id.
    pub fn allocation(&self, id: &AllocationId) -> Option<&Allocation> {
        self.allocations.get(id)
    }

    /// Every allocation record, by id.
    pub fn allocations(&self) -> impl Iterator<Item = &Allocation> {
        self.allocations.values()
    }

    /// The allocation an idempotency key made, if it is still remembered.
    pub fn allocation_by_key(&self, key: &str) -> Option<&Allocation> {
        self.idempotency
            .get(key)
            .and_then(|id| self.allocations.get(id))
    }

    /// The warm count a pool aims for: the scaler's choice within `min_warm..=max_warm`.
    pub fn wanted(&self, pool: &Pool) -> u32 {
        let spec = &pool.spec;
        self.wanted
            .get(&spec.name)
            .copied()
            .unwrap_or(spec.min_warm)
            .clamp(spec.min_warm, spec.max_warm())
    }

    /// Whether `pool` has a container an allocation could take right now.
    pub fn has_allocatable(&self, pool: &PoolName) -> bool {
        self.pick_warm(pool).is_some()
    }

    /// Why `pool` is not growing as it should, if it is not.
    pub fn condition(&self, pool: &PoolName) -> Option<&PoolCondition> {
        self.conditions.get(pool)
    }

    /// An API key by id.
    pub fn key(&self, id: &str) -> Option<&KeyRecord> {
        self.keys.get(id)
    }

    /// Every API key.
    pub fn keys(&self) -> impl Iterator<Item = &KeyRecord> {
        self.keys.values()
    }

    /// Allocations waiting in `pool`'s queue.
    pub fn waiting(&self, pool: &PoolName) -> usize {
        self.pending.get(pool).map_or(0, VecDeque::len)
    }

    /// Every waiting allocation, per pool.
    pub fn pending(&self) -> impl Iterator<Item = (&PoolName, &VecDeque<Pending>)> {
        self.pending.iter().filter(|(_, q)| !q.is_empty())
    }

    /// Whether `id` is waiting in a queue.
    pub fn is_waiting(&self, id: &AllocationId) -> bool {
        self.pending
            .values()
            .any(|q| q.iter().any(|p| &p.allocation_id == id))
    }

    /// Allocation requests made for `pool` so far.
    pub fn arrivals(&self, pool: &PoolName) -> u64 {
        self.arrivals.get(pool).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests;
