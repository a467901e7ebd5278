//! The lifecycle event log.
//!
//! Events are derived deterministically while the state machine applies the Raft log, so every
//! control-plane member holds the same log with the same sequence numbers.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ids::{AllocationId, ContainerId, NodeId, PoolName, SessionId};
use crate::time::Timestamp;

macro_rules! event_kinds {
    ($($(#[$doc:meta])* $variant:ident => $name:literal,)*) => {
        /// What happened.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[serde(rename_all = "snake_case")]
        pub enum EventKind {
            $($(#[$doc])* $variant,)*
        }

        impl EventKind {
            /// Every kind.
            pub const ALL: &'static [EventKind] = &[$(EventKind::$variant,)*];

            /// The kind's wire name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(EventKind::$variant => $name,)*
                }
            }
        }
    };
}

event_kinds! {
    /// A pool was created.
    PoolCreated => "pool_created",
    /// A pool's spec changed.
    PoolUpdated => "pool_updated",
    /// A pool was deleted.
    PoolDeleted => "pool_deleted",
    /// The wanted warm count of a pool changed.
    PoolScaled => "pool_scaled",
    /// Creates for a pool keep failing; the pool waits before trying again.
    PoolBackoff => "pool_backoff",
    /// A pool that was backing off made a warm container again.
    PoolRecovered => "pool_recovered",
    /// The control plane planned a container and asked an agent for it.
    ContainerCreated => "container_created",
    /// A container became warm.
    ContainerWarm => "container_warm",
    /// A container was handed to a session.
    ContainerAllocated => "container_allocated",
    /// A warm container was moved to its pool's paused tier (`docker pause`).
    ContainerPaused => "container_paused",
    /// A paused container allocated to a session did not answer once unpaused: it is
    /// destroyed and the allocation moved to another container.
    ContainerUnpauseFailed => "container_unpause_failed",
    /// A container's allocation ended.
    ContainerReleased => "container_released",
    /// A container's health verdict changed.
    ContainerHealthChanged => "container_health_changed",
    /// An allocated container failing its health check was restarted in place, once.
    ContainerRestarted => "container_restarted",
    /// A container is gone.
    ContainerTerminated => "container_terminated",
    /// A container never became warm.
    ContainerFailed => "container_failed",
    /// An allocation is pending: asked for, waiting for a warm container (the step before
    /// `container_allocated`, which names the same allocation when it is granted).
    AllocationPending => "allocation_pending",
    /// A pending allocation was cancelled before it was granted.
    AllocationCancelled => "allocation_cancelled",
    /// An allocation's lease was extended.
    AllocationRenewed => "allocation_renewed",
    /// An allocated container was lost; its session must find another.
    AllocationLost => "allocation_lost",
    /// A node joined the fleet, or came back.
    NodeJoined => "node_joined",
    /// A node missed its heartbeats.
    NodeDown => "node_down",
    /// A node was cordoned.
    NodeCordoned => "node_cordoned",
    /// A node was uncordoned.
    NodeUncordoned => "node_uncordoned",
    /// A node started draining (its detail gives the deadline, if any).
    NodeDraining => "node_draining",
    /// A draining node holds no container any more: it can be worked on.
    NodeDrained => "node_drained",
    /// Creates keep failing on a node: it takes none for a while (reason and retry time).
    NodeBackoff => "node_backoff",
    /// A node's creates work again.
    NodeRecovered => "node_recovered",
    /// Nothing is granted or placed on a node for now, though it is not down (its reason:
    /// `no_heartbeat` or `runtime_unavailable`); its containers and allocations are kept.
    NodeUnreachable => "node_unreachable",
    /// A node marked unreachable is heard in good health again.
    NodeReachable => "node_reachable",
    /// An API key was made (never its secret).
    KeyCreated => "key_created",
    /// An API key was revoked.
    KeyRevoked => "key_revoked",
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        EventKind::ALL
            .iter()
            .copied()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown event kind {s:?}"))
    }
}

/// One entry of the event log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Event {
    /// Position in the event log: 1, 2, 3, ... with no gaps.
    pub seq: u64,
    /// The Raft log index whose command produced it.
    pub log_index: u64,
    /// When the command was proposed.
    pub at: Timestamp,
    /// What happened.
    pub kind: EventKind,
    /// The pool involved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolName>,
    /// The container involved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerId>,
    /// The node involved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeId>,
    /// The session involved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionId>,
    /// The allocation involved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation: Option<AllocationId>,
    /// Why, in a word or two (`client`, `expired`, `unhealthy`, `node_down`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Anything else worth keeping, e.g. a scaling decision's inputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_their_own_names() {
        for kind in EventKind::ALL {
            assert_eq!(kind.as_str().parse::<EventKind>().unwrap(), *kind);
            let json = serde_json::to_string(kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
        }
        assert!("container_exploded".parse::<EventKind>().is_err());
    }

    #[test]
    fn event_round_trips_and_omits_empty_fields() {
        let e = Event {
            seq: 7,
            log_index: 42,
            at: Timestamp(1_000),
            kind: EventKind::ContainerReleased,
            pool: Some(PoolName::new("demo").unwrap()),
            container: Some(ContainerId::new()),
            node: None,
            session: Some(SessionId::new("s-1").unwrap()),
            allocation: Some(AllocationId::new()),
            reason: Some("client".into()),
            detail: None,
        };
        let json = serde_json::to_string(&e).unwrap();
        assert!(!json.contains("\"node\""), "{json}");
        assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), e);
    }
}
