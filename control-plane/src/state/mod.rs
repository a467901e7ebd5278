//! The replicated state: pools, containers, nodes, allocations and the event log.
//!
//! [`PoolState::apply`] is the whole state machine: a pure function of the current state and
//! one [`Request`], with no IO and no clock of its own. Raft calls it on every member with the
//! same log, so every member holds the same state and the same event log.

mod apply;
pub mod command;
pub mod query;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use warmpool_proto::api::Counts;
use warmpool_proto::records::{NodeStatus, Pool};
use warmpool_proto::{
    Allocation, AllocationId, Container, ContainerId, ContainerState, Event, Health, Node, NodeId,
    PoolName, Timestamp,
};

pub use apply::tenant_sees_event;
pub use command::{Command, RejectCode, Rejection, Request, Response};
pub use query::EventFilter;

/// Most events kept in the replicated state by default; older ones are evicted to each
/// member's archive ([`crate::archive`]). Kept small so that a snapshot stays small: the
/// archive holds the history.
pub const EVENT_RETENTION: usize = 10_000;
/// Most ended (terminated or failed) container records kept for inspection by default.
pub const ENDED_CONTAINER_RETENTION: usize = 2_000;
/// Most released allocation records (and their idempotency keys) kept by default. A retry
/// with the idempotency key of an allocation evicted since makes a new allocation.
pub const RELEASED_ALLOCATION_RETENTION: usize = 10_000;
/// The smallest cap a [`Retention`] may set (the leader reads recent events, and clients
/// retry with idempotency keys of recently released allocations).
pub const RETENTION_MIN: usize = 10;
/// The largest cap a [`Retention`] may set.
pub const RETENTION_MAX: usize = 1_000_000;
/// How long past its requester's deadline a waiting allocation stays queued, so the
/// requester's own cancel arrives first.
pub const WAIT_GRACE_MS: u64 = 2_000;

/// How many old records the replicated state keeps before it evicts the oldest to the
/// members' archives. Part of the replicated state (set by [`Command::SetRetention`]), never
/// a member's own setting: eviction must pick the same records on every member, in log order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// Events.
    pub events: usize,
    /// Ended (terminated or failed) containers.
    pub ended_containers: usize,
    /// Released allocations, with their idempotency keys.
    pub released_allocations: usize,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            events: EVENT_RETENTION,
            ended_containers: ENDED_CONTAINER_RETENTION,
            released_allocations: RELEASED_ALLOCATION_RETENTION,
        }
    }
}

impl Retention {
    /// Checks every cap is within [`RETENTION_MIN`]`..=`[`RETENTION_MAX`].
    pub fn validate(&self) -> Result<(), String> {
        for (name, n) in [
            ("events", self.events),
            ("ended containers", self.ended_containers),
            ("released allocations", self.released_allocations),
        ] {
            if !(RETENTION_MIN..=RETENTION_MAX).contains(&n) {
                return Err(format!(
                    "retention of {name} must be {RETENTION_MIN}..={RETENTION_MAX}, not {n}"
                ));
            }
        }
        Ok(())
    }
}

/// Records one applied log entry evicted from the state: what a member appends to its archive.
/// Every member evicts the same records at the same index.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Evicted {
    /// The log index whose apply evicted them.
    pub index: u64,
    /// Events, oldest first, each with the tenant it belongs to when it belongs to one.
    pub events: Vec<(Arc<Event>, Option<warmpool_proto::TenantId>)>,
    /// Ended containers, in the order they ended, with their allocation's tenant if known.
    pub containers: Vec<(Arc<Container>, Option<warmpool_proto::TenantId>)>,
    /// Released allocations, in the order they were released.
    pub allocations: Vec<Arc<Allocation>>,
}

impl Evicted {
    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.containers.is_empty() && self.allocations.is_empty()
    }
}

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
    /// The tenant whose allocations it sees and makes (none for admin keys, which act for
    /// every tenant; a user or viewer key from before tenants existed belongs to `default`).
    #[serde(default)]
    pub tenant: Option<warmpool_proto::TenantId>,
    /// SHA-256 of the secret, hex.
    pub hash: String,
    /// When it was made.
    pub created_at: Timestamp,
    /// When it was revoked.
    pub revoked_at: Option<Timestamp>,
}

/// A tenant's limits, and the bucket its allocation rate is taken from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Tenant {
    /// Its limits.
    pub quota: warmpool_proto::api::TenantQuota,
    /// Thousandths of a request the bucket held at `bucket_at` (full when never used).
    #[serde(default)]
    pub bucket_milli: Option<u64>,
    /// When the bucket was last taken from.
    #[serde(default)]
    pub bucket_at: Timestamp,
}

impl Tenant {
    /// The bucket's size in thousandths of a request.
    fn capacity_milli(&self) -> Option<u64> {
        let rate = self.quota.allocations_per_minute?;
        Some(u64::from(self.quota.burst.unwrap_or(rate).max(1)) * 1000)
    }

    /// What the bucket holds at `at`, in thousandths of a request (none without a rate).
    pub fn tokens_at(&self, at: Timestamp) -> Option<u64> {
        let cap = self.capacity_milli()?;
        let rate = u64::from(self.quota.allocations_per_minute?);
        let Some(held) = self.bucket_milli else {
            return Some(cap);
        };
        // `rate` per minute is `rate` thousandths per 60 ms.
        let refill = at.since(self.bucket_at).as_millis() as u64 * rate / 60;
        Some(held.saturating_add(refill).min(cap))
    }

    /// Takes one request from the bucket at `at`; else how long until one is there.
    pub fn take(&mut self, at: Timestamp) -> Result<(), std::time::Duration> {
        let (Some(tokens), Some(rate)) = (self.tokens_at(at), self.quota.allocations_per_minute)
        else {
            return Ok(());
        };
        if tokens < 1000 {
            let ms = ((1000 - tokens) * 60).div_ceil(u64::from(rate.max(1)));
            return Err(std::time::Duration::from_millis(ms));
        }
        self.bucket_milli = Some(tokens - 1000);
        self.bucket_at = at;
        Ok(())
    }
}

/// The key under which `tenant`'s idempotency key `key` is remembered. The `default` tenant's
/// keys are stored as they are, so the keys of a state written before tenants keep working.
pub fn scoped_key(tenant: &warmpool_proto::TenantId, key: &str) -> String {
    if *tenant == warmpool_proto::TenantId::default_tenant() {
        key.to_string()
    } else {
        // A unit separator cannot occur in a tenant name.
        format!("{tenant}\u{1f}{key}")
    }
}

/// Why a pool, or a node, is not making containers as it should: its creates keep failing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Condition {
    /// The last failure (a string on the wire, as before it was typed).
    pub reason: warmpool_proto::ContainerEndReason,
    /// Creates that failed in a row.
    pub consecutive_failures: u32,
    /// No create before this.
    pub retry_at: Timestamp,
}

impl Condition {
    /// For people: what is wrong and when the next attempt is.
    pub fn describe(&self) -> String {
        format!(
            "creates are failing ({} in a row; last: {}); next attempt at {}",
            self.consecutive_failures, self.reason, self.retry_at
        )
    }
}

/// Live containers of one pool on one node of one generation, counted by state and by
/// whether they are unhealthy. Keep-warm, placement and status read these instead of scanning
/// every container; [`PoolState`] keeps them up to date at the two places a live container's
/// state or health changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// `[state][unhealthy]` for creating, warm, allocated, releasing, paused.
    counts: [[u32; 2]; 5],
}

impl Tally {
    fn slot(state: ContainerState) -> Option<usize> {
        match state {
            ContainerState::Creating => Some(0),
            ContainerState::Warm => Some(1),
            ContainerState::Allocated => Some(2),
            ContainerState::Releasing => Some(3),
            ContainerState::Paused => Some(4),
            ContainerState::Terminated | ContainerState::Failed => None,
        }
    }

    fn is_empty(&self) -> bool {
        self.counts.iter().flatten().all(|n| *n == 0)
    }

    /// Being created, healthy or not.
    pub fn creating(&self) -> u32 {
        self.counts[0][0] + self.counts[0][1]
    }

    /// Warm and not unhealthy.
    pub fn warm(&self) -> u32 {
        self.counts[1][0]
    }

    /// Warm, healthy or not.
    pub fn warm_any(&self) -> u32 {
        self.counts[1][0] + self.counts[1][1]
    }

    /// Paused and not unhealthy.
    pub fn paused(&self) -> u32 {
        self.counts[4][0]
    }

    /// Paused, healthy or not.
    pub fn paused_any(&self) -> u32 {
        self.counts[4][0] + self.counts[4][1]
    }

    /// Allocated, healthy or not.
    pub fn allocated(&self) -> u32 {
        self.counts[2][0] + self.counts[2][1]
    }

    /// Live containers that count against a pool's `max_total`: releasing ones are on their
    /// way out and do not block replacements.
    pub fn counted(&self) -> u32 {
        self.creating() + self.warm_any() + self.paused_any() + self.allocated()
    }

    /// Every live container (releasing ones included).
    pub fn live(&self) -> u32 {
        self.counts.iter().flatten().sum()
    }

    /// Adds these containers to `counts` as the status counts them: every live container in
    /// `total`, unhealthy ones in `unhealthy`, and healthy warm ones in `warm` when they are of
    /// the pool's `current` generation (they may be handed out), else in `outdated`.
    pub fn add_to(&self, counts: &mut Counts, current: bool) {
        let c = &self.counts;
        counts.total += self.live();
        counts.unhealthy += c[0][1] + c[1][1] + c[2][1] + c[3][1] + c[4][1];
        counts.creating += self.creating();
        if current {
            counts.warm += c[1][0];
            counts.paused += c[4][0];
        } else {
            counts.outdated += c[1][0] + c[4][0];
        }
        counts.allocated += self.allocated();
        counts.releasing += c[3][0] + c[3][1];
    }
}

/// Tallies per pool, node and generation.
type Tallies = BTreeMap<PoolName, BTreeMap<NodeId, BTreeMap<u64, Tally>>>;

/// Counts `c` in (`add`) or out of `tallies`; ended containers are not counted. Empty entries
/// are removed, so the tallies equal ones rebuilt from scratch.
fn retally(tallies: &mut Tallies, c: &Container, add: bool) {
    let Some(slot) = Tally::slot(c.state) else {
        return;
    };
    let unhealthy = usize::from(matches!(c.health, Health::Unhealthy { .. }));
    if add {
        if !tallies.contains_key(&c.pool) {
            tallies.insert(c.pool.clone(), BTreeMap::new());
        }
        let Some(nodes) = tallies.get_mut(&c.pool) else {
            return;
        };
        if !nodes.contains_key(&c.node) {
            nodes.insert(c.node.clone(), BTreeMap::new());
        }
        let Some(gens) = nodes.get_mut(&c.node) else {
            return;
        };
        gens.entry(c.generation).or_default().counts[slot][unhealthy] += 1;
        return;
    }
    let Some(nodes) = tallies.get_mut(&c.pool) else {
        return;
    };
    let Some(gens) = nodes.get_mut(&c.node) else {
        return;
    };
    let Some(t) = gens.get_mut(&c.generation) else {
        return;
    };
    let n = &mut t.counts[slot][unhealthy];
    debug_assert!(*n > 0, "tally of {} went below zero", c.id);
    *n = n.saturating_sub(1);
    if t.is_empty() {
        gens.remove(&c.generation);
        if gens.is_empty() {
            nodes.remove(&c.node);
            if nodes.is_empty() {
                tallies.remove(&c.pool);
            }
        }
    }
}

/// Where an allocation whose request went unanswered stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Abandonment {
    /// Released as `abandoned` at this time unless its client comes back first.
    ReleaseAt(Timestamp),
    /// Its client came back for it by idempotency key, with the request that proposed this
    /// allocation id: only that request's own abandonment (it went unanswered too) makes the
    /// allocation abandoned again.
    ClaimedBack(AllocationId),
    /// The abandonment came before the allocate: the allocate is refused when applied.
    /// Kept from this time for an hour.
    NeverMade(Timestamp),
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
    /// Its idempotency key, as the client gave it (unique within its tenant).
    pub idempotency_key: Option<String>,
    /// The tenant it is for.
    #[serde(default)]
    pub tenant: warmpool_proto::TenantId,
    /// Labels given at claim.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub metadata: std::collections::BTreeMap<String, String>,
    /// Env or secrets were given at claim (their values never enter the state).
    #[serde(default)]
    pub with_settings: bool,
    /// The workspace it named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
    /// SHA-256 (hex) of its gateway access token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_sha256: Option<String>,
    /// When it was asked for.
    pub since: Timestamp,
    /// After this it is dropped unserved.
    pub deadline: Timestamp,
    /// Asked for with `async: true`: no requester waits on it, no deadline ends it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub asynchronous: bool,
    /// Node labels the container's node must carry (a list: in order of preference).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<warmpool_proto::api::Location>,
    /// The allocation's own lifetime cap, in seconds (within its pool's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lifetime_secs: Option<u64>,
}

impl Pending {
    /// How the API shows it: an allocation of `pool` in state `pending`, with no container,
    /// node or lease yet.
    pub fn to_allocation(&self, pool: &PoolName) -> Allocation {
        Allocation {
            id: self.allocation_id,
            session_id: self.session.clone(),
            tenant: self.tenant.clone(),
            pool: pool.clone(),
            container_id: ContainerId::nil(),
            node: NodeId::unassigned(),
            ipv6: None,
            port: 0,
            url: None,
            created_at: self.since,
            expires_at: Timestamp::default(),
            max_expires_at: None,
            idempotency_key: self.idempotency_key.clone(),
            state: warmpool_proto::records::AllocationState::Pending,
            released_at: None,
            release_reason: None,
            metadata: self.metadata.clone(),
            settings: None,
            workspace: None,
            token_sha256: self.token_sha256.clone(),
            access: None,
            cost: None,
            location: self.location.clone(),
            tier: None,
        }
    }
}

/// How many of a pool's latest allocation requests the state keeps the time of
/// ([`PoolState::arrival_times`]): more than arrive between two steps of the leader.
pub const RECENT_ARRIVALS: usize = 1024;

/// Everything the control plane agrees on.
///
/// Containers, allocations and events, the bulk of a large fleet's state, are kept behind
/// `Arc` (changed copy-on-write with `Arc::make_mut`), so copying the whole state for a
/// snapshot copies pointers rather than 100,000 records while every apply waits. They
/// serialize exactly as the records themselves.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PoolState {
    pools: BTreeMap<PoolName, Pool>,
    containers: BTreeMap<ContainerId, Arc<Container>>,
    nodes: BTreeMap<NodeId, Node>,
    allocations: BTreeMap<AllocationId, Arc<Allocation>>,
    /// Idempotency key → the allocation it made.
    /// Allocations by idempotency key, scoped by tenant ([`scoped_key`]).
    idempotency: BTreeMap<String, AllocationId>,
    /// Tenants with limits, and their rate buckets.
    #[serde(default)]
    tenants: BTreeMap<warmpool_proto::TenantId, Tenant>,
    /// The scaler's wanted warm count per pool, when it has set one.
    wanted: BTreeMap<PoolName, u32>,
    events: VecDeque<Arc<Event>>,
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
    conditions: BTreeMap<PoolName, Condition>,
    /// Nodes whose creates keep failing (so the leader avoids them for a while), and why.
    #[serde(default)]
    node_conditions: BTreeMap<NodeId, Condition>,
    /// Allocations whose request went unanswered ([`Command::Abandon`]), and allocations
    /// whose client came back for them by idempotency key (so an abandonment applied later
    /// does not count). Entries go when their allocation ends; those for allocations never
    /// made are dropped an hour after.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    abandoned: BTreeMap<AllocationId, Abandonment>,
    /// Allocation requests ever made per pool (served, queued or refused; replays excluded):
    /// the demand the scaler measures.
    arrivals: BTreeMap<PoolName, u64>,
    /// When the latest of those requests were made, ms, oldest first (at most
    /// [`RECENT_ARRIVALS`] a pool): the scaler records each at its own time, not when the
    /// leader next looks. Not in snapshots: a member restored from one knows only the counts,
    /// and its scaler records the arrivals it has no time for when it sees them.
    #[serde(skip)]
    recent_arrivals: BTreeMap<PoolName, VecDeque<u64>>,
    /// How many old records are kept (caps from before they could be set are the defaults).
    #[serde(default)]
    retention: Retention,

    /// Records evicted since the last [`PoolState::take_evicted`], while collecting is on
    /// ([`PoolState::collect_evicted`]); otherwise evicted records are simply dropped.
    #[serde(skip)]
    evicted: Vec<Evicted>,
    /// Whether evicted records are kept for [`PoolState::take_evicted`].
    #[serde(skip)]
    collect_evicted: bool,
    /// Warm containers per pool, ordered by when they became warm: allocation takes the
    /// oldest first. Derived from `containers`; rebuilt after a snapshot is loaded.
    #[serde(skip)]
    warm_index: BTreeMap<PoolName, BTreeSet<(Timestamp, ContainerId)>>,
    /// Paused containers per pool, ordered by when they became warm (allocation takes the
    /// oldest first once no warm one is left). Derived from `containers`.
    #[serde(skip)]
    paused_index: BTreeMap<PoolName, BTreeSet<(Timestamp, ContainerId)>>,
    /// Every container record (live or ended) per node, by id, so work on one node does not
    /// scan the fleet. Derived from `containers` (a container never changes node).
    #[serde(skip)]
    by_node: BTreeMap<NodeId, BTreeSet<ContainerId>>,
    /// The live container records per node (creating, warm, paused, allocated, releasing): what
    /// the leader reconciles with the node's inventory. The ended ones kept for history (up to
    /// the retention cap) would otherwise be read on every pass over a busy node. Derived from
    /// `containers`.
    #[serde(skip)]
    live_by_node: BTreeMap<NodeId, BTreeSet<ContainerId>>,
    /// Every container record per pool, by id. Derived from `containers` (a container never
    /// changes pool).
    #[serde(skip)]
    by_pool: BTreeMap<PoolName, BTreeSet<ContainerId>>,
    /// Active allocations by lease expiry, so lease and idle checks do not scan the released
    /// allocations kept for idempotency. Derived from `allocations`.
    #[serde(skip)]
    active_by_expiry: BTreeSet<(Timestamp, AllocationId)>,
    /// Live containers counted per pool, node and generation. Derived from `containers`.
    #[serde(skip)]
    tallies: Tallies,
    /// The log index at which a container record on each node last changed, so the leader
    /// reconciles only nodes where something changed (see [`PoolState::node_changed_at`]).
    /// A change marker, not an index of the records: not serialized, and empty after a
    /// snapshot is loaded (every node then counts as changed at the snapshot's index).
    #[serde(skip)]
    node_changed: HashMap<NodeId, u64>,
    /// The applied index when the state was loaded from a snapshot.
    #[serde(skip)]
    loaded_at: u64,
}

/// Marks `node` as changed at `index`.
fn touch(changed: &mut HashMap<NodeId, u64>, node: &NodeId, index: u64) {
    match changed.get_mut(node) {
        Some(at) => *at = index,
        None => {
            changed.insert(node.clone(), index);
        }
    }
}

impl PoolState {
    /// Rebuilds derived indexes; call after deserializing.
    pub fn rebuild_indexes(&mut self) {
        self.warm_index.clear();
        self.paused_index.clear();
        self.by_node.clear();
        self.live_by_node.clear();
        self.by_pool.clear();
        self.active_by_expiry.clear();
        self.tallies.clear();
        self.node_changed.clear();
        self.loaded_at = self.applied_index;
        for c in self.containers.values() {
            retally(&mut self.tallies, c, true);
            if c.state == warmpool_proto::ContainerState::Warm {
                self.warm_index
                    .entry(c.pool.clone())
                    .or_default()
                    .insert((c.warm_at.unwrap_or(c.created_at), c.id));
            }
            if c.state == warmpool_proto::ContainerState::Paused {
                self.paused_index
                    .entry(c.pool.clone())
                    .or_default()
                    .insert((c.warm_at.unwrap_or(c.created_at), c.id));
            }
            self.by_node.entry(c.node.clone()).or_default().insert(c.id);
            if c.state.is_live() {
                self.live_by_node
                    .entry(c.node.clone())
                    .or_default()
                    .insert(c.id);
            }
            self.by_pool.entry(c.pool.clone()).or_default().insert(c.id);
        }
        for a in self.allocations.values() {
            if a.state == warmpool_proto::records::AllocationState::Active {
                self.active_by_expiry.insert((a.expires_at, a.id));
            }
        }
    }

    /// Adds a new (live) container record to the per-node and per-pool indexes.
    fn index_container(&mut self, node: &NodeId, pool: &PoolName, id: ContainerId) {
        self.by_node.entry(node.clone()).or_default().insert(id);
        self.live_by_node
            .entry(node.clone())
            .or_default()
            .insert(id);
        self.by_pool.entry(pool.clone()).or_default().insert(id);
    }

    /// Moves container `id` of `node` into or out of the live index.
    fn index_liveness(&mut self, node: &NodeId, id: ContainerId, live: bool) {
        if live {
            self.live_by_node
                .entry(node.clone())
                .or_default()
                .insert(id);
        } else if let Some(set) = self.live_by_node.get_mut(node) {
            set.remove(&id);
            if set.is_empty() {
                self.live_by_node.remove(node);
            }
        }
    }

    /// Takes a removed container record out of the per-node and per-pool indexes.
    fn unindex_container(&mut self, c: &Container) {
        self.index_liveness(&c.node, c.id, false);
        if let Some(set) = self.by_node.get_mut(&c.node) {
            set.remove(&c.id);
            if set.is_empty() {
                self.by_node.remove(&c.node);
            }
        }
        if let Some(set) = self.by_pool.get_mut(&c.pool) {
            set.remove(&c.id);
            if set.is_empty() {
                self.by_pool.remove(&c.pool);
            }
        }
    }

    /// Panics unless every derived index equals one rebuilt from scratch (tests call it after
    /// every command).
    #[cfg(test)]
    pub(crate) fn assert_indexes_consistent(&self) {
        let mut fresh = self.clone();
        fresh.rebuild_indexes();
        // The warm index keeps a pool's entry once its last warm container leaves.
        let warm = |s: &PoolState| {
            s.warm_index
                .iter()
                .filter(|(_, set)| !set.is_empty())
                .map(|(p, set)| (p.clone(), set.clone()))
                .collect::<BTreeMap<_, _>>()
        };
        assert_eq!(warm(self), warm(&fresh), "warm index");
        let paused = |s: &PoolState| {
            s.paused_index
                .iter()
                .filter(|(_, set)| !set.is_empty())
                .map(|(p, set)| (p.clone(), set.clone()))
                .collect::<BTreeMap<_, _>>()
        };
        assert_eq!(paused(self), paused(&fresh), "paused index");
        assert_eq!(self.by_node, fresh.by_node, "per-node index");
        assert_eq!(self.live_by_node, fresh.live_by_node, "live per-node index");
        assert_eq!(self.by_pool, fresh.by_pool, "per-pool index");
        assert_eq!(
            self.active_by_expiry, fresh.active_by_expiry,
            "active allocations"
        );
        assert_eq!(self.tallies, fresh.tallies, "tallies");
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
        self.containers.get(id).map(|c| &**c)
    }

    /// Every container record, by id.
    pub fn containers(&self) -> impl Iterator<Item = &Container> {
        self.containers.values().map(|c| &**c)
    }

    /// The container records (live or recently ended) on `node`, by id.
    pub fn containers_on<'a>(&'a self, node: &NodeId) -> impl Iterator<Item = &'a Container> + 'a {
        self.records(self.by_node.get(node))
    }

    /// The live container records on `node` (creating, warm, paused, allocated, releasing).
    pub fn live_containers_on<'a>(
        &'a self,
        node: &NodeId,
    ) -> impl Iterator<Item = &'a Container> + 'a {
        self.records(self.live_by_node.get(node))
    }

    /// The live container records on `node` whose ids are not in `except`: a walk of two
    /// sorted sets side by side, reading only the records it answers.
    pub fn live_containers_on_except<'a>(
        &'a self,
        node: &NodeId,
        except: &'a BTreeSet<ContainerId>,
    ) -> impl Iterator<Item = &'a Container> + 'a {
        self.live_by_node
            .get(node)
            .into_iter()
            .flat_map(move |ids| ids.difference(except))
            .filter_map(|id| self.container(id))
    }

    /// The container records of the ids in `set`, if any.
    fn records<'a>(
        &'a self,
        set: Option<&'a BTreeSet<ContainerId>>,
    ) -> impl Iterator<Item = &'a Container> + 'a {
        set.into_iter()
            .flatten()
            .filter_map(|id| self.container(id))
    }

    /// How many live container records `node` has, without reading them.
    pub fn live_containers_on_count(&self, node: &NodeId) -> usize {
        self.live_by_node.get(node).map_or(0, BTreeSet::len)
    }

    /// The log index at which a container record on `node` last changed (created, changed
    /// state, health, address or lease, or was observed); the index the state was loaded at
    /// for nodes unchanged since. Equal answers mean nothing on the node changed in between.
    pub fn node_changed_at(&self, node: &NodeId) -> u64 {
        self.node_changed
            .get(node)
            .copied()
            .unwrap_or(self.loaded_at)
    }

    /// Live containers of `pool` counted per node and generation.
    pub fn tallies_of<'a>(
        &'a self,
        pool: &PoolName,
    ) -> impl Iterator<Item = (&'a NodeId, &'a BTreeMap<u64, Tally>)> + 'a {
        self.tallies.get(pool).into_iter().flatten()
    }

    /// The warm containers of `pool` (any generation or health), longest warm first.
    pub fn warm_of<'a>(
        &'a self,
        pool: &PoolName,
    ) -> impl DoubleEndedIterator<Item = &'a Container> + 'a {
        self.warm_index
            .get(pool)
            .into_iter()
            .flatten()
            .filter_map(|(_, id)| self.container(id))
    }

    /// The paused containers of `pool` (any generation or health), longest warm first.
    pub fn paused_of<'a>(
        &'a self,
        pool: &PoolName,
    ) -> impl DoubleEndedIterator<Item = &'a Container> + 'a {
        self.paused_index
            .get(pool)
            .into_iter()
            .flatten()
            .filter_map(|(_, id)| self.container(id))
    }

    /// The container records (live or recently ended) of `pool`, by id.
    pub fn containers_of<'a>(
        &'a self,
        pool: &PoolName,
    ) -> impl Iterator<Item = &'a Container> + 'a {
        self.by_pool
            .get(pool)
            .into_iter()
            .flatten()
            .filter_map(|id| self.container(id))
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
        self.allocations.get(id).map(|a| &**a)
    }

    /// Every allocation record, by id.
    pub fn allocations(&self) -> impl Iterator<Item = &Allocation> {
        self.allocations.values().map(|a| &**a)
    }

    /// The active allocations, soonest lease expiry first.
    pub fn active_allocations(&self) -> impl Iterator<Item = &Allocation> {
        self.active_by_expiry
            .iter()
            .filter_map(|(_, id)| self.allocation(id))
    }

    /// The active allocations whose lease ended at or before `now`, soonest first.
    pub fn expired_allocations(&self, now: Timestamp) -> impl Iterator<Item = &Allocation> {
        self.active_allocations()
            .take_while(move |a| a.expires_at <= now)
    }

    /// Active allocations whose request went unanswered and whose client did not come back
    /// for them by `now`: the leader releases them with reason `abandoned`.
    pub fn abandoned_allocations(&self, now: Timestamp) -> impl Iterator<Item = AllocationId> + '_ {
        self.abandoned
            .iter()
            .filter_map(move |(id, mark)| match mark {
                Abandonment::ReleaseAt(t) if *t <= now => self
                    .allocations
                    .get(id)
                    .filter(|a| a.state == warmpool_proto::records::AllocationState::Active)
                    .map(|a| a.id),
                _ => None,
            })
    }

    /// Active allocations on draining nodes whose drain deadline is past: the leader releases
    /// them with reason `drained`.
    pub fn overdue_drain_allocations(&self, now: Timestamp) -> Vec<AllocationId> {
        self.nodes()
            .filter(|n| {
                n.status == NodeStatus::Draining && n.drain_deadline.is_some_and(|d| d <= now)
            })
            .flat_map(|n| self.containers_on(&n.id))
            .filter(|c| c.state == ContainerState::Allocated)
            .filter_map(|c| c.allocation)
            .collect()
    }

    /// The allocation `tenant`'s idempotency key made, if it is still remembered.
    pub fn allocation_by_key(
        &self,
        tenant: &warmpool_proto::TenantId,
        key: &str,
    ) -> Option<&Allocation> {
        self.idempotency
            .get(&scoped_key(tenant, key))
            .and_then(|id| self.allocation(id))
    }

    /// A tenant's limits and bucket, if an admin set any.
    pub fn tenant(&self, name: &warmpool_proto::TenantId) -> Option<&Tenant> {
        self.tenants.get(name)
    }

    /// Every tenant with limits.
    pub fn tenants(&self) -> impl Iterator<Item = (&warmpool_proto::TenantId, &Tenant)> {
        self.tenants.iter()
    }

    /// Allocations of `tenant` active or waiting now: what its `max_allocations` counts.
    pub fn tenant_allocations(&self, tenant: &warmpool_proto::TenantId) -> u32 {
        let active = self
            .active_by_expiry
            .iter()
            .filter_map(|(_, id)| self.allocations.get(id))
            .filter(|a| &a.tenant == tenant)
            .count();
        let waiting = self
            .pending
            .values()
            .flatten()
            .filter(|p| &p.tenant == tenant)
            .count();
        u32::try_from(active + waiting).unwrap_or(u32::MAX)
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
        self.pick_warm(pool, None).is_some()
    }

    /// Why `pool` is not growing as it should, if it is not.
    pub fn condition(&self, pool: &PoolName) -> Option<&Condition> {
        self.conditions.get(pool)
    }

    /// Why `node` takes no creates for now, if its creates keep failing.
    pub fn node_condition(&self, node: &NodeId) -> Option<&Condition> {
        self.node_conditions.get(node)
    }

    /// Every pool condition.
    pub fn pool_conditions(&self) -> impl Iterator<Item = (&PoolName, &Condition)> {
        self.conditions.iter()
    }

    /// Every node condition.
    pub fn node_conditions(&self) -> impl Iterator<Item = (&NodeId, &Condition)> {
        self.node_conditions.iter()
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

    /// A waiting allocation, shown as an allocation in state `pending`.
    pub fn pending_allocation(&self, id: &AllocationId) -> Option<Allocation> {
        self.pending.iter().find_map(|(pool, q)| {
            q.iter()
                .find(|p| &p.allocation_id == id)
                .map(|p| p.to_allocation(pool))
        })
    }

    /// An allocation by id, granted or pending.
    pub fn allocation_or_pending(&self, id: &AllocationId) -> Option<Allocation> {
        self.allocation(id)
            .cloned()
            .or_else(|| self.pending_allocation(id))
    }

    /// Every waiting allocation, shown as allocations in state `pending`, oldest first per
    /// pool.
    pub fn pending_allocations(&self) -> impl Iterator<Item = Allocation> + '_ {
        self.pending
            .iter()
            .flat_map(|(pool, q)| q.iter().map(move |p| p.to_allocation(pool)))
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

    /// When the last `n` allocation requests for `pool` were made, oldest first, as far as
    /// this state knows (see `recent_arrivals`), and how many of the `n` it has no time for.
    pub fn arrival_times(&self, pool: &PoolName, n: u64) -> (Vec<Timestamp>, u64) {
        let known = self.recent_arrivals.get(pool);
        let have = known.map_or(0, VecDeque::len) as u64;
        let take = n.min(have);
        let times = known
            .into_iter()
            .flat_map(|q| q.iter().skip((have - take) as usize))
            .map(|ms| Timestamp(*ms))
            .collect();
        (times, n - take)
    }
}

#[cfg(test)]
mod tests;
