//! Records the control plane keeps in its replicated state and serves over the API.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv6Addr;

use serde::{Deserialize, Serialize};

use crate::ids::{AllocationId, ContainerId, NodeId, PoolName, SessionId};
use crate::pool::PoolSpec;
use crate::time::Timestamp;

/// Where a container is in its life.
///
/// `creating → warm → allocated → releasing → terminated`; any live state may end in `failed`
/// (it never became usable) or `terminated` (it was lost or destroyed). A pool with a paused
/// tier (`min_paused`) also moves warm containers to `paused` (frozen by the cgroup freezer),
/// from where an allocation takes them (`paused → allocated`, unpaused on the way).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ContainerState {
    /// Planned by the control plane; the agent is making it or about to.
    Creating,
    /// Running, healthy and waiting to be handed out.
    Warm,
    /// Handed to a session.
    Allocated,
    /// Started, probed healthy, then paused (`docker pause`): no CPU, memory kept. Handed out
    /// after the warm ones, unpaused on the way.
    Paused,
    /// Released; the agent is destroying it.
    Releasing,
    /// Gone.
    Terminated,
    /// Never became warm.
    Failed,
}

impl ContainerState {
    /// Every state, in lifecycle order.
    pub const ALL: [ContainerState; 7] = [
        ContainerState::Creating,
        ContainerState::Warm,
        ContainerState::Paused,
        ContainerState::Allocated,
        ContainerState::Releasing,
        ContainerState::Terminated,
        ContainerState::Failed,
    ];

    /// The state's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ContainerState::Creating => "creating",
            ContainerState::Warm => "warm",
            ContainerState::Allocated => "allocated",
            ContainerState::Paused => "paused",
            ContainerState::Releasing => "releasing",
            ContainerState::Terminated => "terminated",
            ContainerState::Failed => "failed",
        }
    }

    /// True until the container is terminated or failed.
    pub fn is_live(self) -> bool {
        !matches!(self, ContainerState::Terminated | ContainerState::Failed)
    }
}

impl fmt::Display for ContainerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ContainerState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ContainerState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown container state {s:?}"))
    }
}

/// The verdict of a container's health probes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Health {
    /// Not probed successfully yet.
    #[default]
    Unknown,
    /// The last probe passed.
    Healthy,
    /// At least `failure_threshold` consecutive probes failed.
    Unhealthy {
        /// Consecutive failed probes so far.
        consecutive_failures: u32,
    },
}

impl Health {
    /// The verdict's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Healthy => "healthy",
            Health::Unhealthy { .. } => "unhealthy",
        }
    }
}

/// A container as the control plane knows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Container {
    /// Its id, also the Docker label `io.warmpool.id`.
    pub id: ContainerId,
    /// The pool it belongs to.
    pub pool: PoolName,
    /// The node it runs on.
    pub node: NodeId,
    /// The pool generation (spec version) it was made from.
    pub generation: u64,
    /// Lifecycle state.
    pub state: ContainerState,
    /// Health verdict as last reported by its agent.
    pub health: Health,
    /// Docker's id, once the agent has made it.
    pub docker_id: Option<String>,
    /// Its address on the node's /64.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = Ipv6))]
    pub ipv6: Option<Ipv6Addr>,
    /// The service port.
    pub port: u16,
    /// The session holding it, while allocated.
    pub session: Option<SessionId>,
    /// The allocation holding it, while allocated.
    pub allocation: Option<AllocationId>,
    /// When the control plane planned it.
    pub created_at: Timestamp,
    /// When it first became warm.
    pub warm_at: Option<Timestamp>,
    /// When it was allocated.
    pub allocated_at: Option<Timestamp>,
    /// Last network activity seen by the agent.
    pub last_activity_at: Option<Timestamp>,
    /// When the lease of its allocation runs out.
    pub lease_expires_at: Option<Timestamp>,
    /// When it was released, or retired without having been allocated (scaled down, of an
    /// older spec, drained, ...).
    pub released_at: Option<Timestamp>,
    /// When it was terminated or failed.
    pub ended_at: Option<Timestamp>,
    /// Why it was released, terminated or failed (a string on the wire; see
    /// [`ContainerEndReason`](crate::ContainerEndReason)).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub reason: Option<crate::ContainerEndReason>,
    /// Raft log index at which it was first seen running, if it was. An inventory requested
    /// after this index that lacks the container proves it is gone.
    pub observed_index: Option<u64>,
    /// Times it was restarted in place (an allocated container failing its health check is
    /// restarted once; failing again, its allocation ends).
    #[serde(default)]
    pub restarts: u32,
    /// A restart was asked for and the agent has not reported the new life yet; health
    /// reports of the old life are ignored meanwhile.
    #[serde(default)]
    pub restart_pending: bool,
}

impl Container {
    /// A container just planned on `node`: being made, nothing heard of it yet.
    pub fn planned(
        id: ContainerId,
        pool: PoolName,
        node: NodeId,
        generation: u64,
        port: u16,
        at: Timestamp,
    ) -> Container {
        Container {
            id,
            pool,
            node,
            generation,
            state: ContainerState::Creating,
            health: Health::Unknown,
            docker_id: None,
            ipv6: None,
            port,
            session: None,
            allocation: None,
            created_at: at,
            warm_at: None,
            allocated_at: None,
            last_activity_at: None,
            lease_expires_at: None,
            released_at: None,
            ended_at: None,
            reason: None,
            observed_index: None,
            restarts: 0,
            restart_pending: false,
        }
    }

    /// `http://[ipv6]:port`, once the container has an address.
    pub fn url(&self) -> Option<String> {
        self.ipv6.map(|ip| format!("http://[{ip}]:{}", self.port))
    }
}

/// A Docker host's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    /// Takes new containers.
    Ready,
    /// Keeps what it has, takes nothing new.
    Cordoned,
    /// Takes nothing new; its warm containers move elsewhere.
    Draining,
    /// Missed its heartbeats; its containers are gone from the pool.
    Down,
}

impl NodeStatus {
    /// The status's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Ready => "ready",
            NodeStatus::Cordoned => "cordoned",
            NodeStatus::Draining => "draining",
            NodeStatus::Down => "down",
        }
    }
}

/// CPU and memory of a node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Resources {
    /// CPU in thousandths of a core.
    pub cpu_millis: u64,
    /// Memory in MiB.
    pub memory_mb: u64,
}

/// A Docker host running an agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Node {
    /// Its id.
    pub id: NodeId,
    /// The /64 its containers get addresses from, e.g. `fd36:1::/64`.
    pub ipv6_prefix: String,
    /// Labels matched by pool constraints.
    pub labels: BTreeMap<String, String>,
    /// What it can hold.
    pub capacity: Resources,
    /// Scheduling status.
    pub status: NodeStatus,
    /// Version of its agent.
    pub agent_version: String,
    /// When it first joined.
    pub joined_at: Timestamp,
    /// When its status last changed.
    pub status_changed_at: Timestamp,
    /// Why it is down, cordoned or draining.
    pub reason: Option<String>,
    /// While draining: when the allocations still on it are released (reason `drained`);
    /// none means they are waited for however long they last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_deadline: Option<Timestamp>,
    /// Set while the node is not down but nothing may be granted or placed on it: its agent
    /// has not been heard for a while, or cannot reach its container runtime. Its containers
    /// and their allocations are kept; the mark clears when the agent is heard in good health.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreachable: Option<Unreachable>,
}

/// Why a node that is not down takes no grants for now, and since when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Unreachable {
    /// Why.
    pub reason: UnreachableReason,
    /// Since when (the leader's clock).
    pub since: Timestamp,
}

/// Why a node is marked [`Unreachable`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum UnreachableReason {
    /// The leader has not heard its heartbeats for a while (it is declared down if that
    /// lasts the node timeout, counted from when the leader itself was connected).
    NoHeartbeat,
    /// Its agent heartbeats but cannot reach its container runtime (dockerd).
    RuntimeUnavailable,
}

impl UnreachableReason {
    /// The reason's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            UnreachableReason::NoHeartbeat => "no_heartbeat",
            UnreachableReason::RuntimeUnavailable => "runtime_unavailable",
        }
    }
}

/// Whether an allocation still holds its container.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AllocationState {
    /// Asked for (`async: true`, or while a request waits) and not granted yet: no container,
    /// node or lease so far. Granted when a matching container is warm.
    Pending,
    /// The session holds the container.
    Active,
    /// Over; the container is being or has been destroyed.
    Released,
    /// Cancelled while pending (`DELETE`, or its pool was deleted): it never held a container.
    /// Answered by the cancel; the record is not kept.
    Cancelled,
}

/// Why an allocation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ReleaseReason {
    /// The client released it.
    Client,
    /// Its lease ran out.
    Expired,
    /// No network activity for the pool's `idle_timeout_secs`.
    Idle,
    /// Its container became unhealthy.
    Unhealthy,
    /// Its container or node was lost.
    Lost,
    /// Its pool was deleted.
    PoolDeleted,
    /// Its node was drained and the drain's deadline passed.
    Drained,
    /// The request that made it was never answered (it timed out, or its client hung up),
    /// and the client did not come back for it with the same idempotency key in time.
    Abandoned,
}

impl ReleaseReason {
    /// The reason's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseReason::Client => "client",
            ReleaseReason::Expired => "expired",
            ReleaseReason::Idle => "idle",
            ReleaseReason::Unhealthy => "unhealthy",
            ReleaseReason::Lost => "lost",
            ReleaseReason::PoolDeleted => "pool_deleted",
            ReleaseReason::Drained => "drained",
            ReleaseReason::Abandoned => "abandoned",
        }
    }
}

/// A container handed to a session.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Allocation {
    /// Its id.
    pub id: AllocationId,
    /// The session holding it.
    pub session_id: SessionId,
    /// The tenant it belongs to: only that tenant's keys (and admins) see or touch it.
    #[serde(default)]
    pub tenant: crate::ids::TenantId,
    /// The pool it came from.
    pub pool: PoolName,
    /// The container (absent while `pending`).
    #[serde(
        default = "ContainerId::nil",
        skip_serializing_if = "ContainerId::is_nil"
    )]
    #[cfg_attr(feature = "openapi", schema(required = false))]
    pub container_id: ContainerId,
    /// The node the container runs on (absent while `pending`).
    #[serde(
        default = "NodeId::unassigned",
        skip_serializing_if = "NodeId::is_unassigned"
    )]
    #[cfg_attr(feature = "openapi", schema(required = false))]
    pub node: NodeId,
    /// The container's address.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = Ipv6))]
    pub ipv6: Option<Ipv6Addr>,
    /// The container's service port.
    pub port: u16,
    /// `http://[ipv6]:port`.
    pub url: Option<String>,
    /// When it was made.
    pub created_at: Timestamp,
    /// When its lease runs out unless renewed (absent while `pending`: the lease starts at
    /// the grant).
    #[serde(default, skip_serializing_if = "Timestamp::is_zero")]
    #[cfg_attr(feature = "openapi", schema(required = false))]
    pub expires_at: Timestamp,
    /// The latest `expires_at` renewals may reach (`max_lifetime_secs`).
    pub max_expires_at: Option<Timestamp>,
    /// The caller's key that makes retries safe.
    pub idempotency_key: Option<String>,
    /// Pending, active, released (or cancelled, in the answer to a cancel).
    pub state: AllocationState,
    /// When it was released.
    pub released_at: Option<Timestamp>,
    /// Why it was released.
    pub release_reason: Option<ReleaseReason>,
    /// Labels given at claim; lists filter on them (`?metadata.key=value`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub metadata: std::collections::BTreeMap<String, String>,
    /// Where the env and secrets given at claim stand; absent when none were given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<crate::session::SettingsState>,
    /// The workspace it named and where its restore stands; absent when it named none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<crate::workspace::AllocationWorkspace>,
    /// SHA-256 (hex) of its access token for the gateway. Kept in the replicated state in
    /// place of the token, as API keys are; the API never answers it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(ignore))]
    pub token_sha256: Option<String>,
    /// How to reach it through the gateway (filled in by the API for the allocation's
    /// tenant; never stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<Access>,
    /// What it has cost so far (or cost, once released) at its pool's `price_per_hour`:
    /// computed by the API when it answers, never stored; absent when the pool has no price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
    /// The node labels asked for at claim (`location`), if any.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<std::collections::HashMap<String, crate::api::LocationValue>>))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<crate::api::Location>,
    /// Which tier served it: `warm` (running, handed over as it was) or `paused` (unpaused
    /// and checked on its port before the answer). Absent while `pending`, and in records
    /// written before tiers existed (those were all warm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<Tier>,
}

/// The tier an allocation was served from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// A running, probed container.
    #[default]
    Warm,
    /// A paused container, unpaused for this allocation.
    Paused,
}

impl Tier {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Warm => "warm",
            Tier::Paused => "paused",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Allocation {
    /// What it costs at `price_per_hour` from its creation to its release, or to `now` while
    /// it runs.
    pub fn cost_at(&self, price_per_hour: f64, now: crate::Timestamp) -> f64 {
        let end = self.released_at.unwrap_or(now).max(self.created_at);
        end.since(self.created_at).as_secs_f64() / 3600.0 * price_per_hour
    }
}

/// How a session reaches its container through the gateway.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Access {
    /// The access token (`wpa_<64 hex>`): in the answer that granted the allocation only
    /// (only its hash is kept). Send it as `X-Warmpool-Token`, `Authorization: Bearer`, or once
    /// as `?token=` (which sets a cookie and redirects).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// A URL by path through the gateway per port name: `{gateway}/s/{allocation}/{port}/`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub urls: BTreeMap<String, String>,
    /// A URL by host per port name: `{scheme}://{allocation}-{port}.{domain}/`, when the
    /// gateway has a domain.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub host_urls: BTreeMap<String, String>,
}

/// A pool as stored: its spec and bookkeeping.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Pool {
    /// The spec as last set.
    pub spec: PoolSpec,
    /// Bumped on every spec change; containers of older generations are never handed out.
    pub generation: u64,
    /// When the pool was created.
    pub created_at: Timestamp,
    /// When the spec last changed.
    pub updated_at: Timestamp,
}
