//! Wire types of Warmpool, shared by the control plane, the node agent and `poolctl`.
//!
//! Nothing here does IO. Every type that crosses a process boundary lives in this crate, so a
//! change to the protocol is a change to one place:
//!
//! - [`ids`]: identifiers (`ContainerId`, `NodeId`, `PoolName`, ...), validated on parse.
//! - [`time`]: [`Timestamp`], milliseconds since the Unix epoch, RFC 3339 on the wire.
//! - [`pool`]: [`PoolSpec`] and its parts (health check, resources, constraints).
//! - [`egress`]: a pool's egress policy and IP prefixes.
//! - [`records`]: container, node and allocation records as the control plane keeps them.
//! - [`reason`]: why a container ended and why one is retired, typed, with the wire strings
//!   of every earlier version.
//! - [`event`]: the lifecycle event log.
//! - [`agent`]: messages between the control plane and node agents over NATS.
//! - [`subjects`]: the NATS subject names, all under `pool.v1`.
//! - [`api`]: REST request and response bodies.
//! - [`session`]: logs, exec, files and settings of an allocated container: REST bodies and
//!   the member ↔ agent protocol.
//! - [`workspace`]: workspaces that outlive their container: keys, manifest, commit rules.
#![warn(missing_docs)]

pub mod agent;
pub mod api;
pub mod egress;
pub mod event;
pub mod ids;
pub mod pool;
pub mod reason;
pub mod records;
pub mod session;
pub mod subjects;
pub mod time;
pub mod workspace;

#[cfg(feature = "openapi")]
mod openapi;

pub use egress::{Egress, EgressRule, IpPrefix};
pub use event::{Event, EventKind};
pub use ids::{AllocationId, ContainerId, MemberId, NodeId, PoolName, SessionId, TenantId};
pub use pool::{HealthCheck, HealthProbe, PoolSpec};
pub use reason::{ContainerEndReason, RetireReason};
pub use records::{Allocation, Container, ContainerState, Health, Node, NodeStatus, Tier};
pub use time::Timestamp;

/// Protocol version carried in every NATS subject and REST path.
pub const PROTOCOL_VERSION: &str = "v1";

/// Docker label holding a container's [`ContainerId`].
pub const LABEL_ID: &str = "io.warmpool.id";
/// Docker label holding a container's pool name.
pub const LABEL_POOL: &str = "io.warmpool.pool";
/// Docker label holding the id of the node that made the container.
pub const LABEL_NODE: &str = "io.warmpool.node";
/// Docker label holding the pool generation the container was made from.
pub const LABEL_GENERATION: &str = "io.warmpool.generation";
/// Docker label holding the container's health check as JSON, so a restarted agent can probe
/// adopted containers without asking the control plane.
pub const LABEL_HEALTH: &str = "io.warmpool.health";
/// Docker label holding the container's service port.
pub const LABEL_PORT: &str = "io.warmpool.port";
/// The pool's other named ports, comma-separated (absent when it names none).
pub const LABEL_PORTS: &str = "io.warmpool.ports";
/// Docker label holding the container's egress policy as JSON, so a restarted agent rebuilds
/// its network rules without asking the control plane. Absent (a container made by an agent
/// before egress policies existed) means [`Egress::None`].
pub const LABEL_EGRESS: &str = "io.warmpool.egress";
/// Docker label holding a container's stop grace in seconds (absent: 0, removed at once).
pub const LABEL_STOP_GRACE: &str = "io.warmpool.stop-grace";
/// Docker label holding a container's pre-stop command as a JSON array (absent: none).
pub const LABEL_PRE_STOP: &str = "io.warmpool.pre-stop";
