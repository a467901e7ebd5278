//! REST API v1 bodies. Requests reject unknown fields.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{MemberId, NodeId, PoolName, SessionId};
use crate::records::{Node, NodeStatus, Pool, Resources};
use crate::time::Timestamp;

/// Every error answer: `{"error":{"code":"…","message":"…"}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// A machine-readable code and a human-readable message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// Stable, snake_case: `not_found`, `bad_request`, `no_capacity`, `no_quorum`, ...
    pub code: ErrorCode,
    /// What went wrong, for a person.
    pub message: String,
}

/// Every error code the API answers, with its one HTTP status: the server maps its errors to
/// these, and clients decide on them (retry, fail over to another member) without string
/// matching. Serialized as the snake_case names clients have always seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: malformed or out of range.
    BadRequest,
    /// 401: no key, or an unknown, malformed or revoked one.
    Unauthorized,
    /// 403: the key's role or tenant may not do this.
    Forbidden,
    /// 404: nothing by that name (or another tenant's).
    NotFound,
    /// 405: the route exists, the method does not.
    MethodNotAllowed,
    /// 409: it exists, or its state forbids the change.
    Conflict,
    /// 413: the body is too large.
    PayloadTooLarge,
    /// 415: not JSON.
    UnsupportedMediaType,
    /// 429: the tenant holds its `max_allocations`.
    OverQuota,
    /// 429: the tenant asks faster than its rate.
    RateLimited,
    /// 503: no warm container came free in time.
    NoCapacity,
    /// 409: no ready node carries the labels the allocation's `location` asks for (with the
    /// pool's own constraints), so none could ever serve it.
    NoMatchingNode,
    /// 503: no quorum or no leader: another member may do better.
    NoQuorum,
    /// 503: the leader has as many writes waiting as it queues; try again after Retry-After.
    Overloaded,
    /// 500: a bug or a broken part.
    Internal,
    /// 410: the allocation has ended (released, expired, lost): its container is gone, so its
    /// logs, exec and files are too.
    Ended,
    /// 502: the agent of the container's node did not answer, or its container runtime
    /// failed; the request may work later.
    AgentUnavailable,
    /// 502: the gateway could not reach the allocated container, or it broke off.
    BadGateway,
    /// A code this client does not know (from a newer server), or an answer that was not
    /// an error body at all.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The code's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Conflict => "conflict",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::OverQuota => "over_quota",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::NoCapacity => "no_capacity",
            ErrorCode::NoMatchingNode => "no_matching_node",
            ErrorCode::NoQuorum => "no_quorum",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Internal => "internal",
            ErrorCode::Ended => "ended",
            ErrorCode::AgentUnavailable => "agent_unavailable",
            ErrorCode::BadGateway => "bad_gateway",
            ErrorCode::Unknown => "unknown",
        }
    }

    /// The HTTP status the API answers it with.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::Conflict | ErrorCode::NoMatchingNode => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::Ended => 410,
            ErrorCode::AgentUnavailable => 502,
            ErrorCode::OverQuota | ErrorCode::RateLimited => 429,
            ErrorCode::NoCapacity | ErrorCode::NoQuorum | ErrorCode::Overloaded => 503,
            ErrorCode::Internal | ErrorCode::Unknown => 500,
            ErrorCode::BadGateway => 502,
        }
    }

    /// Whether another member may answer the same request better (this one has no leader).
    pub fn is_failover(self) -> bool {
        self == ErrorCode::NoQuorum
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// `POST /v1/allocations`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateAllocation {
    /// The pool to allocate from.
    pub pool: PoolName,
    /// The caller's session; a new one is made up when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<SessionId>,
    /// Lease length; the pool's `lease_seconds` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 2_592_000))]
    pub lease_seconds: Option<u64>,
    /// How long to wait for a warm container when none is free (at most 60000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(maximum = 60_000))]
    pub wait_ms: Option<u64>,
    /// Retrying with the same key returns the same allocation, never a second one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 256))]
    pub idempotency_key: Option<String>,
    /// The tenant to allocate for: admins only (a user key allocates for its own tenant, and
    /// may name only that one). `default` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<crate::ids::TenantId>,
    /// Environment for the container, delivered after the grant without a restart: written
    /// to `/run/warmpool/env` (tmpfs, mode 0400) and set for every exec. Never answered back.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Like `env`, for credentials: delivered the same way, never stored by the control plane
    /// (not in the replicated log, not in any answer, event or log line).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
    /// Labels stored with the allocation and answered with it; lists filter on them
    /// (`?metadata.team=ml`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// `settings`: answer only once `env` and `secrets` are in the container (or failed to
    /// get there); otherwise the answer says `settings: pending` and they follow at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_for: Option<WaitFor>,
    /// Answer at once: `202` with the allocation `pending` when no matching container is warm
    /// (`201` as usual when one is). It is granted when one is, however long that takes (no
    /// `wait_ms` cap); `GET /v1/allocations/{id}` and the event stream show it become
    /// `active`, and `DELETE` cancels it. Not with `env`, `secrets` or `wait_for`.
    #[serde(default, rename = "async", skip_serializing_if = "std::ops::Not::not")]
    pub asynchronous: bool,
    /// Node labels the container's node must carry, e.g. `{"region": "eu"}`. A list is an
    /// order of preference: `{"region": ["eu", "us"]}` takes a warm container in `eu` if there
    /// is one, else in `us`, and has new ones made in the first that can host the pool.
    /// Refused at once (`409 no_matching_node`) when no ready node matches.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<std::collections::HashMap<String, crate::api::LocationValue>>))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    /// Caps this allocation's lifetime (renewals included) below its pool's
    /// `max_lifetime_secs`; longer than the pool's is refused (`400`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub max_lifetime_secs: Option<u64>,
    /// A workspace of the tenant's (an id of its choosing: 1..=64 of `[A-Za-z0-9._-]`) to
    /// restore into the container at the pool's `workspace.path`; synced while allocated and
    /// saved once more before the container goes. The pool must declare a `workspace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(
            min_length = 1,
            max_length = 64,
            pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$"
        )
    )]
    pub workspace: Option<String>,
}

/// Node labels an allocation asks for: every key must match; a list value is an order of
/// preference (the first value a node has with a warm container wins).
pub type Location = BTreeMap<String, LocationValue>;

/// One label's wanted value: a value, or values in order of preference.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum LocationValue {
    /// Exactly this value.
    One(String),
    /// Any of these, the earlier preferred.
    Prefer(Vec<String>),
}

impl LocationValue {
    /// The accepted values, most preferred first.
    pub fn choices(&self) -> &[String] {
        match self {
            LocationValue::One(v) => std::slice::from_ref(v),
            LocationValue::Prefer(vs) => vs,
        }
    }
}

/// Most keys in a location, and most values in one preference list.
pub const MAX_LOCATION_ENTRIES: usize = 16;

/// Checks a request's `location`: 1..=16 keys, none empty, each with 1..=16 non-empty values.
pub fn check_location(location: &Location) -> Result<(), String> {
    if location.is_empty() || location.len() > MAX_LOCATION_ENTRIES {
        return Err(format!(
            "location must name 1..={MAX_LOCATION_ENTRIES} labels"
        ));
    }
    for (k, v) in location {
        if k.is_empty() {
            return Err("location has an empty label name".into());
        }
        let choices = v.choices();
        if choices.is_empty() || choices.len() > MAX_LOCATION_ENTRIES {
            return Err(format!(
                "location {k:?} must give 1..={MAX_LOCATION_ENTRIES} values"
            ));
        }
        if choices.iter().any(String::is_empty) {
            return Err(format!("location {k:?} has an empty value"));
        }
    }
    Ok(())
}

/// What an allocation's answer waits for besides the grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum WaitFor {
    /// The settings given at claim are in place.
    Settings,
    /// The workspace is restored into the container (or failed to be).
    Workspace,
}

/// Longest `wait_ms` an allocation may ask for.
pub const MAX_WAIT_MS: u64 = 60_000;
/// Longest idempotency key.
pub const MAX_IDEMPOTENCY_KEY: usize = 256;

/// `POST /v1/allocations/{id}/renew`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RenewAllocation {
    /// New lease length from now; the pool's `lease_seconds` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 2_592_000))]
    pub lease_seconds: Option<u64>,
}

/// `POST /v1/nodes/{id}/drain`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DrainNode {
    /// Release the allocations still on the node this long from now (reason `drained`);
    /// without it, the drain waits for them to end however long they last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 2_592_000))]
    pub deadline_secs: Option<u64>,
}

/// Longest drain deadline, in seconds (30 days, like the longest lease).
pub const MAX_DRAIN_DEADLINE_SECS: u64 = 2_592_000;

/// Counts of containers by state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Counts {
    /// Live containers (creating, warm, allocated, releasing).
    pub total: u32,
    /// Being made.
    pub creating: u32,
    /// Warm and healthy, ready to hand out.
    pub warm: u32,
    /// Handed out.
    pub allocated: u32,
    /// Being destroyed.
    pub releasing: u32,
    /// Live but failing their health checks.
    pub unhealthy: u32,
    /// Warm and healthy but of an older spec of their pool: never handed out, kept while a
    /// rollout makes new ones to take their places (not counted in `warm`).
    #[serde(default)]
    pub outdated: u32,
    /// In the paused tier (healthy, of the current spec): handed out after the warm ones.
    #[serde(default)]
    pub paused: u32,
}

/// One pool in `GET /v1/status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PoolStatus {
    /// The pool.
    pub name: PoolName,
    /// Its spec generation.
    pub generation: u64,
    /// Containers by state.
    pub counts: Counts,
    /// Warm containers the pool is aiming for.
    pub wanted: u32,
    /// Allocations waiting in the pool's queue for a container to become warm.
    #[serde(default)]
    pub waiting: u32,
    /// Container-seconds spent warm and unallocated so far (the pool's overhead).
    #[serde(default)]
    pub warm_seconds: f64,
    /// Container-seconds spent allocated so far.
    #[serde(default)]
    pub allocated_seconds: f64,
    /// `(warm_seconds + allocated_seconds) / 3600 × price_per_hour`, when the pool has a price.
    #[serde(default)]
    pub cost: Option<f64>,
    /// Why the pool is not growing as it should, when that is so (e.g. creates failing and
    /// backing off).
    #[serde(default)]
    pub condition: Option<String>,
    /// `min_warm` of the spec.
    pub min_warm: u32,
    /// `max_warm` of the spec.
    pub max_warm: u32,
    /// `max_total` of the spec.
    pub max_total: u32,
}

/// One node in `GET /v1/status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeCounts {
    /// The node.
    pub node: NodeId,
    /// Its status.
    pub status: NodeStatus,
    /// Its containers by state.
    pub counts: Counts,
    /// Why it takes no new containers for now although ready, when that is so (its creates
    /// keep failing and the leader backs off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
}

/// `GET /v1/status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StatusView {
    /// Over every pool.
    pub totals: Counts,
    /// Per pool, by name.
    pub pools: Vec<PoolStatus>,
    /// Per node, by id.
    pub nodes: Vec<NodeCounts>,
    /// Raft index the answer reflects.
    pub applied_index: u64,
}

/// A pool in `GET /v1/pools` and `GET /v1/pools/{name}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PoolView {
    /// Spec and bookkeeping.
    #[serde(flatten)]
    pub pool: Pool,
    /// Its containers by state.
    pub counts: Counts,
    /// Warm containers the pool is aiming for.
    pub wanted: u32,
    /// Nodes where the pool's image is being pulled or cannot be pulled, as the answering
    /// member last heard from their agents (empty when the image is ready everywhere).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<NodeImage>,
}

/// A pool's image on one node, in [`PoolView::images`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeImage {
    /// The node.
    pub node: NodeId,
    /// The image.
    pub image: String,
    /// `pulling`, or `failed` with a reason code and the registry's message.
    #[serde(flatten)]
    pub state: crate::agent::ImageState,
}

/// A node in `GET /v1/nodes`: the replicated record and what the answering member has heard.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeView {
    /// The replicated record.
    #[serde(flatten)]
    pub node: Node,
    /// When this control-plane member last heard a heartbeat, if it has.
    pub last_heartbeat_at: Option<Timestamp>,
    /// Milliseconds since that heartbeat.
    pub heartbeat_age_ms: Option<u64>,
    /// Memory in use on the host, 0.0..=1.0, from the last heartbeat.
    pub memory_fraction: Option<f64>,
    /// Containers its agent makes at once, from the last heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_slots: Option<u32>,
    /// What placement may reserve on it: its capacity times the control plane's
    /// overcommit factors.
    pub allocatable: Resources,
    /// The limits of the live containers placed on it (releasing ones included, until
    /// they are gone).
    pub reserved: Resources,
    /// Its containers by state.
    pub counts: Counts,
    /// Why it takes no new containers for now although ready, when that is so (its creates
    /// keep failing and the leader backs off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
}

/// `GET /v1/health`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HealthView {
    /// `ok`. Nothing else: the route needs no key, so it tells nothing about the cluster.
    pub status: String,
}

/// A control-plane member in `GET /v1/cluster`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MemberView {
    /// Raft id.
    pub id: MemberId,
    /// Its REST API address, as it announced it.
    pub api_addr: String,
    /// `voter` or `learner`.
    pub role: String,
}

/// `GET /v1/cluster`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClusterView {
    /// The answering member.
    pub member: MemberId,
    /// The leader it knows of.
    pub leader: Option<MemberId>,
    /// Raft term.
    pub term: u64,
    /// `leader`, `follower`, `candidate` or `learner`.
    pub state: String,
    /// Members of the cluster.
    pub members: Vec<MemberView>,
    /// Last log index.
    pub last_log_index: Option<u64>,
    /// Highest index this member knows to be committed (replicated to a quorum).
    #[serde(default)]
    pub commit_index: Option<u64>,
    /// Last applied index.
    pub applied_index: Option<u64>,
    /// Last index in the latest snapshot.
    pub snapshot_index: Option<u64>,
    /// Last index removed from the log by compaction (entries up to it live only in the
    /// snapshot).
    #[serde(default)]
    pub purged_index: Option<u64>,
    /// The answering member's version (absent from older members).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// How the answering member was built: figures measured against a debug build say little
    /// about a release one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<BuildProfile>,
}

/// The Cargo profile a binary was built with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum BuildProfile {
    /// Unoptimised, with debug assertions (`cargo build`).
    Debug,
    /// Optimised (`cargo build --release`).
    Release,
}

impl BuildProfile {
    /// The profile of the running binary.
    pub fn current() -> Self {
        if cfg!(debug_assertions) {
            BuildProfile::Debug
        } else {
            BuildProfile::Release
        }
    }

    /// Its wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            BuildProfile::Debug => "debug",
            BuildProfile::Release => "release",
        }
    }
}

/// `POST /v1/cluster/members`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    /// The new member's Raft id.
    pub id: MemberId,
    /// Its REST API address.
    #[cfg_attr(feature = "openapi", schema(min_length = 1, pattern = "\\S"))]
    pub api_addr: String,
}

/// `GET /v1/events` query.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams), into_params(parameter_in = Query))]
#[serde(deny_unknown_fields)]
pub struct EventQuery {
    /// Only events with `seq` above this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
    /// At most this many (default 100, at most 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", param(minimum = 1, maximum = 1000))]
    pub limit: Option<usize>,
    /// Newest first, for paging back from `before`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<u64>,
    /// Only this pool's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Only this container's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Only this session's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Only these kinds, comma-separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        param(example = "container_warm,container_allocated")
    )]
    pub kind: Option<String>,
    /// Only this node's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// `GET /v1/containers` query.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams), into_params(parameter_in = Query))]
#[serde(deny_unknown_fields)]
pub struct ContainerQuery {
    /// Only this pool's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Only on this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Only in this state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", param(value_type = Option<crate::ContainerState>))]
    pub state: Option<String>,
    /// Only held by this session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

/// `GET /v1/usage` query.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams), into_params(parameter_in = Query))]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    /// Only this pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Also this session's usage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

/// Container time and cost of one pool.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PoolUsage {
    /// The pool.
    pub pool: PoolName,
    /// Container-seconds warm and unallocated (overhead).
    pub warm_seconds: f64,
    /// Container-seconds allocated.
    pub allocated_seconds: f64,
    /// The pool's price per container-hour, if set.
    pub price_per_hour: Option<f64>,
    /// Cost of the warm (overhead) time.
    pub warm_cost: Option<f64>,
    /// Cost of the allocated time.
    pub allocated_cost: Option<f64>,
}

/// Allocated container time of one session in one pool.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SessionUsage {
    /// The session.
    pub session: SessionId,
    /// The pool.
    pub pool: PoolName,
    /// Container-seconds allocated to the session (allocations still on record).
    pub allocated_seconds: f64,
    /// Their cost, when the pool has a price.
    pub cost: Option<f64>,
}

/// `GET /v1/usage`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UsageView {
    /// When the figures were taken.
    pub at: Timestamp,
    /// Per pool.
    pub pools: Vec<PoolUsage>,
    /// Per pool for the session asked for (empty without `session=`).
    pub sessions: Vec<SessionUsage>,
}

/// Labels given to a node, as `key=value` pairs.
pub type Labels = BTreeMap<String, String>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn async_location_and_lifetime_on_the_wire() {
        let req: CreateAllocation = serde_json::from_str(
            r#"{"pool":"demo","async":true,"location":{"region":["eu","us"],"zone":"a"},"max_lifetime_secs":60}"#,
        )
        .unwrap();
        assert!(req.asynchronous);
        let loc = req.location.clone().unwrap();
        assert_eq!(loc["region"].choices(), ["eu", "us"]);
        assert_eq!(loc["zone"], LocationValue::One("a".into()));
        assert_eq!(req.max_lifetime_secs, Some(60));
        assert!(check_location(&loc).is_ok());
        // Not sent when not asked for, so an older server takes the request.
        let plain: CreateAllocation = serde_json::from_str(r#"{"pool":"demo"}"#).unwrap();
        let json = serde_json::to_string(&plain).unwrap();
        assert!(
            !json.contains("async") && !json.contains("location"),
            "{json}"
        );
        for bad in [
            r#"{}"#,
            r#"{"region":[]}"#,
            r#"{"region":""}"#,
            r#"{"":"eu"}"#,
            r#"{"region":["eu",""]}"#,
        ] {
            let loc: Location = serde_json::from_str(bad).unwrap();
            assert!(check_location(&loc).is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<Location>(r#"{"region":1}"#).is_err());
    }

    #[test]
    fn a_pending_allocation_leaves_out_what_it_does_not_have_yet() {
        let a: crate::Allocation = serde_json::from_value(serde_json::json!({
            "id": crate::AllocationId::new(),
            "session_id": "s",
            "pool": "demo",
            "ipv6": null,
            "port": 0,
            "url": null,
            "created_at": "2026-01-01T00:00:00.000Z",
            "max_expires_at": null,
            "idempotency_key": null,
            "state": "pending",
            "released_at": null,
            "release_reason": null,
        }))
        .unwrap();
        assert!(a.container_id.is_nil() && a.node.is_unassigned() && a.expires_at.is_zero());
        let back = serde_json::to_value(&a).unwrap();
        for absent in ["container_id", "node", "expires_at"] {
            assert!(back.get(absent).is_none(), "{absent} in {back}");
        }
        assert_eq!(back["state"], "pending");
    }

    #[test]
    fn allocation_request_minimal_and_strict() {
        let req: CreateAllocation = serde_json::from_str(r#"{"pool":"demo"}"#).unwrap();
        assert_eq!(req.pool.as_str(), "demo");
        assert!(req.wait_ms.is_none());
        assert!(serde_json::from_str::<CreateAllocation>(r#"{"pool":"demo","x":1}"#).is_err());
        assert!(serde_json::from_str::<CreateAllocation>(r#"{}"#).is_err());
        let full = CreateAllocation {
            pool: PoolName::new("demo").unwrap(),
            session_id: Some(SessionId::new("s").unwrap()),
            lease_seconds: Some(5),
            wait_ms: Some(100),
            idempotency_key: Some("k".into()),
            tenant: Some(crate::ids::TenantId::new("acme").unwrap()),
            env: Default::default(),
            secrets: Default::default(),
            metadata: Default::default(),
            wait_for: None,
            asynchronous: false,
            location: None,
            max_lifetime_secs: None,
            workspace: None,
        };
        let json = serde_json::to_string(&full).unwrap();
        assert_eq!(
            serde_json::from_str::<CreateAllocation>(&json).unwrap(),
            full
        );
    }

    #[test]
    fn error_body_shape() {
        let e = ErrorBody {
            error: ErrorDetail {
                code: ErrorCode::NotFound,
                message: "no pool x".into(),
            },
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"error":{"code":"not_found","message":"no pool x"}}"#
        );
    }

    #[test]
    fn error_codes_keep_their_names_and_statuses_and_unknown_ones_parse() {
        for (code, name, status) in [
            (ErrorCode::BadRequest, "bad_request", 400),
            (ErrorCode::OverQuota, "over_quota", 429),
            (ErrorCode::RateLimited, "rate_limited", 429),
            (ErrorCode::NoCapacity, "no_capacity", 503),
            (ErrorCode::NoMatchingNode, "no_matching_node", 409),
            (ErrorCode::NoQuorum, "no_quorum", 503),
        ] {
            assert_eq!(serde_json::to_value(code).unwrap(), name);
            assert_eq!(code.as_str(), name);
            assert_eq!(code.status(), status);
            assert_eq!(
                serde_json::from_value::<ErrorCode>(name.into()).unwrap(),
                code
            );
        }
        let newer: ErrorCode = serde_json::from_value("teapot".into()).unwrap();
        assert_eq!(newer, ErrorCode::Unknown);
        assert!(ErrorCode::NoQuorum.is_failover() && !ErrorCode::NoCapacity.is_failover());
    }
}

/// What an API key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read everything.
    Viewer,
    /// Read, and allocate, release and renew.
    User,
    /// Everything: pools, nodes, cluster membership, keys.
    Admin,
}

impl Role {
    /// The role's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::User => "user",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "user" => Ok(Role::User),
            "admin" => Ok(Role::Admin),
            other => Err(format!("unknown role {other:?}: admin, user or viewer")),
        }
    }
}

/// An API key as listed (never its secret).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyView {
    /// Public id: the part of the token after `wpk_` and before the secret.
    pub id: String,
    /// A name for people.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The tenant whose allocations it sees and makes; none for admin keys, which act for
    /// every tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<crate::ids::TenantId>,
    /// When it was made.
    pub created_at: Timestamp,
    /// When it was revoked, if it was.
    pub revoked_at: Option<Timestamp>,
}

/// `POST /v1/keys`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// A name for people (1..=64 characters).
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 64, pattern = "\\S")
    )]
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// For user and viewer keys: the tenant it belongs to (`default` when absent). Refused on
    /// admin keys, which act for every tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<crate::ids::TenantId>,
}

/// `POST /v1/keys` answer: the token is shown this once and stored only as a hash.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatedKey {
    /// The key.
    #[serde(flatten)]
    pub key: KeyView,
    /// The bearer token: `wpk_<id>_<secret>`.
    pub token: String,
}

/// `GET /v1/ready`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReadyView {
    /// `ready`. Nothing else: the route needs no key, so it tells nothing about the cluster.
    pub status: String,
}

/// `GET /v1/whoami`: the caller's key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WhoamiView {
    /// Whether the member wants keys.
    pub auth: bool,
    /// The key's id (none with auth off).
    pub id: Option<String>,
    /// The key's name (none with auth off).
    pub name: Option<String>,
    /// What the caller may do (`admin` with auth off).
    pub role: Role,
    /// The tenant it acts for; none for admins (every tenant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<crate::ids::TenantId>,
}

/// A tenant's limits (`PUT /v1/tenants/{name}`); each is optional, and absent means none.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TenantQuota {
    /// Most allocations active (or waiting) at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_allocations: Option<u32>,
    /// Allocation requests per minute, on average (a token bucket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub allocations_per_minute: Option<u32>,
    /// Requests the bucket holds, for bursts (`allocations_per_minute` when absent, at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub burst: Option<u32>,
    /// Most bytes the tenant's saved workspaces may take in the store together (compressed);
    /// a save that would pass it is refused and the previous version stays.
    /// 0: no workspace may be saved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_max_bytes: Option<u64>,
}

/// `GET /v1/tenants/{name}`: a tenant's limits and use.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TenantView {
    /// Its name.
    pub name: crate::ids::TenantId,
    /// Its limits.
    pub quota: TenantQuota,
    /// Allocations active or waiting now.
    pub allocations: u32,
}

// ---- The gateway (issue 16) ----

/// How an allocation's gateway access token starts (`wpa_<64 hex>`).
pub const ACCESS_TOKEN_PREFIX: &str = "wpa_";

/// `GET /v1/gateway/allocations/{id}` (admin keys, i.e. the gateway): what the gateway needs
/// to route to an allocation and check its token. Never shown to tenants.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GatewayRoute {
    /// The allocation.
    pub allocation: crate::ids::AllocationId,
    /// Active or released: the gateway serves active ones only.
    pub state: crate::records::AllocationState,
    /// The container's address.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = Ipv6))]
    pub ipv6: Option<std::net::Ipv6Addr>,
    /// Its service port.
    pub port: u16,
    /// The ports a session reaches by name ([`crate::PoolSpec::reachable_ports`]).
    pub ports: BTreeMap<String, u16>,
    /// SHA-256 (hex) of its access token; none for allocations made before tokens existed,
    /// which the gateway never serves.
    pub token_sha256: Option<String>,
}

/// A page of allocations: `GET /v1/allocations` with `limit` or `cursor` (without either it
/// answers a plain array, as before), and `archived=true` reads.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AllocationPage {
    /// This page, in id order (archived reads: in the order they were archived).
    pub items: Vec<crate::records::Allocation>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// What `GET /v1/allocations` answers: the whole list as an array, or with `limit`, `cursor`
/// or `archived=true` a page. For the API document (one `application/json` body, either
/// shape); clients read the shape they asked for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum AllocationList {
    /// Without paging parameters.
    All(Vec<crate::records::Allocation>),
    /// With them.
    Page(AllocationPage),
}

/// What `GET /v1/containers` answers: the whole list as an array, or with `limit` or
/// `cursor` a page.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum ContainerList {
    /// Without paging parameters.
    All(Vec<crate::records::Container>),
    /// With them.
    Page(ContainerPage),
}

/// A page of containers: `GET /v1/containers` with `limit` or `cursor` (without either it
/// answers a plain array, as before).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ContainerPage {
    /// This page, in id order (archived reads: in the order they were archived).
    pub items: Vec<crate::records::Container>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}
