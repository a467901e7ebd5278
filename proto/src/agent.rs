//! Messages between the control plane and node agents over NATS.
//!
//! The agent is the source of truth for what a host runs (the level); the control plane's
//! records are what it wants (the intent). Heartbeats carry a digest of the agent's inventory;
//! when the digest differs from the last inventory the leader holds, it asks for the full
//! inventory and reconciles. Facts are edges that only make reconciliation faster: losing one
//! costs at most a heartbeat or two. Every command is idempotent by container id.

use std::collections::BTreeMap;
use std::net::Ipv6Addr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::egress::Egress;
use crate::ids::{ContainerId, NodeId, PoolName};
use crate::pool::{ContainerResources, HealthCheck, PullPolicy, Security};
use crate::records::{Health, Resources};
use crate::time::Timestamp;

/// Periodic liveness and load report of an agent (`pool.v1.node.<node>.heartbeat`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The sender.
    pub node: NodeId,
    /// Random per agent process: a change means the agent restarted.
    pub boot_id: Uuid,
    /// Increases with every message the agent process sends (heartbeats and facts).
    pub seq: u64,
    /// Agent's clock when sent.
    pub sent_at: Timestamp,
    /// Agent version.
    pub agent_version: String,
    /// The node's container /64.
    pub ipv6_prefix: String,
    /// The node's labels.
    pub labels: BTreeMap<String, String>,
    /// What the node offers to containers.
    pub capacity: Resources,
    /// What is in use on the node.
    pub usage: Usage,
    /// Containers the agent manages.
    pub containers: u32,
    /// [`inventory_digest`] of the agent's inventory.
    pub inventory_digest: u64,
    /// Containers the agent makes at once (more wait their turn). Absent from older agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_slots: Option<u32>,
    /// Set while the agent cannot reach its container runtime (dockerd stopped, restarting or
    /// hung). The containers may well still run (Docker's live restore keeps them), so the
    /// control plane keeps their records and allocations, but it grants and places nothing on
    /// the node until this clears. Absent from older agents and while the runtime answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_unavailable: Option<RuntimeOutage>,
    /// Images the agent is pulling or cannot pull, with the pools that want them (an image
    /// that is there is not listed). Absent from older agents and while every image is there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<ImageStatus>,
}

/// An image a node's agent does not have ready for the pools that want it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ImageStatus {
    /// The image reference, as the pool spec gives it.
    pub image: String,
    /// The pools whose creates asked for it on this node.
    pub pools: Vec<PoolName>,
    /// Where its pull is.
    pub state: ImageState,
}

/// Where a node's pull of an image is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ImageState {
    /// Being pulled; creates of its pools wait for it (old containers keep serving).
    Pulling {
        /// When the pull started (agent's clock).
        since: Timestamp,
    },
    /// The image could not be pulled (or, with pull policy `never`, is not there). No
    /// container of its pools is made on the node until a retry succeeds.
    Failed {
        /// Why, as a code.
        reason: ImagePullError,
        /// The registry's (or Docker's) own words.
        message: String,
        /// Failed pulls in a row.
        attempts: u32,
        /// When the agent tries again (agent's clock).
        retry_at: Timestamp,
    },
}

/// Why an image could not be had on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ImagePullError {
    /// The reference does not parse (`invalid reference format`).
    InvalidReference,
    /// The registry has no such repository or tag.
    NotFound,
    /// The registry refused the credentials, or wants some and none were given.
    Unauthorized,
    /// The registry could not be reached (name, connection, TLS).
    Unreachable,
    /// Pull policy `never`, and the image is not on the node.
    NotPresent,
    /// Anything else Docker said.
    Other,
}

impl ImagePullError {
    /// The wire form.
    pub fn as_str(&self) -> &'static str {
        match self {
            ImagePullError::InvalidReference => "invalid_reference",
            ImagePullError::NotFound => "not_found",
            ImagePullError::Unauthorized => "unauthorized",
            ImagePullError::Unreachable => "unreachable",
            ImagePullError::NotPresent => "not_present",
            ImagePullError::Other => "other",
        }
    }
}

impl std::fmt::Display for ImagePullError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The agent's container runtime does not answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeOutage {
    /// When the agent first failed to reach it (agent's clock).
    pub since: Timestamp,
    /// The last error, for operators.
    pub error: String,
}

/// Load of a node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Memory in use on the host, MiB.
    pub memory_used_mb: u64,
    /// Memory of the host, MiB.
    pub memory_total_mb: u64,
    /// Host load average over one minute.
    pub load1: f64,
}

impl Usage {
    /// Memory in use as a share of the total, 0.0..=1.0.
    pub fn memory_fraction(&self) -> f64 {
        if self.memory_total_mb == 0 {
            return 0.0;
        }
        self.memory_used_mb as f64 / self.memory_total_mb as f64
    }
}

/// What Docker says a container is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObservedStatus {
    /// Created or started, not yet probed healthy.
    Starting,
    /// Running.
    Running,
    /// Exited, died or was killed.
    Exited,
}

/// One container as its agent sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InventoryEntry {
    /// Warmpool's id (the `io.warmpool.id` label).
    pub id: ContainerId,
    /// Its pool.
    pub pool: PoolName,
    /// Pool generation it was made from.
    pub generation: u64,
    /// Docker's id.
    pub docker_id: String,
    /// Its IPv6 address on the node's bridge.
    pub ipv6: Option<Ipv6Addr>,
    /// What Docker says.
    pub status: ObservedStatus,
    /// The probes' verdict.
    pub health: Health,
    /// Exit code, once exited.
    pub exit_code: Option<i64>,
    /// Killed by the OOM killer.
    pub oom_killed: bool,
    /// Last time its network counters moved.
    pub last_activity_at: Option<Timestamp>,
    /// Paused (`docker pause`: frozen, memory kept). Absent from older agents and while not.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
}

/// Everything an agent manages, at one moment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    /// The node.
    pub node: NodeId,
    /// The agent process.
    pub boot_id: Uuid,
    /// The agent's message counter when taken.
    pub seq: u64,
    /// The agent's clock when taken.
    pub taken_at: Timestamp,
    /// The containers, sorted by id.
    pub containers: Vec<InventoryEntry>,
}

impl Inventory {
    /// [`inventory_digest`] of these containers.
    pub fn digest(&self) -> u64 {
        inventory_digest(&self.containers)
    }
}

/// Containers an agent removes at once; the destroys beyond wait their turn. A pool deleted
/// with a few hundred containers sends as many destroys at once, and dockerd 20.10 killing and
/// removing about 260 containers at once stopped answering for good (every remove waiting for
/// an exit it was never told of). The simulator's fleet removes as many at once.
pub const DESTROY_SLOTS: usize = 16;

/// Node labels at most, so that a heartbeat stays small (it travels every second, and must fit
/// in a NATS message with room to spare).
pub const MAX_LABELS: usize = 64;
/// Longest label key, bytes.
pub const MAX_LABEL_KEY: usize = 63;
/// Longest label value, bytes.
pub const MAX_LABEL_VALUE: usize = 253;

/// Why a node's labels are refused: by the agent at its start, and by the control plane in a
/// heartbeat (from an agent that does not check).
pub fn check_labels(labels: &std::collections::BTreeMap<String, String>) -> Result<(), String> {
    if labels.len() > MAX_LABELS {
        return Err(format!(
            "{} labels; at most {MAX_LABELS} are allowed",
            labels.len()
        ));
    }
    for (k, v) in labels {
        if k.is_empty() || k.len() > MAX_LABEL_KEY {
            return Err(format!(
                "label key {:?} is {} bytes; 1..={MAX_LABEL_KEY} are allowed",
                k.chars().take(80).collect::<String>(),
                k.len()
            ));
        }
        if v.len() > MAX_LABEL_VALUE {
            return Err(format!(
                "the value of label {k:?} is {} bytes; at most {MAX_LABEL_VALUE} are allowed",
                v.len()
            ));
        }
    }
    Ok(())
}

/// A digest of what matters for reconciliation in an inventory: ids, status, health verdict,
/// address. Independent of order. FNV-1a, so both sides compute it the same way with no
/// dependency.
pub fn inventory_digest(entries: &[InventoryEntry]) -> u64 {
    let mut keys: Vec<String> = entries
        .iter()
        .map(|e| {
            format!(
                "{}|{:?}|{}|{}{}",
                e.id,
                e.status,
                e.health.as_str(),
                e.ipv6.map(|a| a.to_string()).unwrap_or_default(),
                if e.paused { "|paused" } else { "" }
            )
        })
        .collect();
    keys.sort();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for key in keys {
        for b in key.bytes().chain(std::iter::once(b'\n')) {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// An edge in an agent's inventory (`pool.v1.node.<node>.facts`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "fact", rename_all = "snake_case")]
pub enum Fact {
    /// A container's entry changed (started, became healthy or unhealthy, exited).
    Observed {
        /// The sender.
        node: NodeId,
        /// The agent's message counter.
        seq: u64,
        /// The container's entry now.
        entry: InventoryEntry,
    },
    /// A container is gone from the host (removed, or destroyed on command).
    Gone {
        /// The sender.
        node: NodeId,
        /// The agent's message counter.
        seq: u64,
        /// The container.
        id: ContainerId,
        /// Why (the destroy command's reason, or the agent's own).
        reason: crate::ContainerEndReason,
    },
    /// Creating a container failed; nothing of it is left on the host.
    CreateFailed {
        /// The sender.
        node: NodeId,
        /// The agent's message counter.
        seq: u64,
        /// The container.
        id: ContainerId,
        /// Docker's error.
        error: String,
        /// dockerd stopped answering while it ran: the failure says nothing about the
        /// container or the node's ability to make one, so it is not held against either.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        runtime_unavailable: bool,
    },
}

impl Fact {
    /// The node that sent the fact.
    pub fn node(&self) -> &NodeId {
        match self {
            Fact::Observed { node, .. }
            | Fact::Gone { node, .. }
            | Fact::CreateFailed { node, .. } => node,
        }
    }
}

/// Everything an agent needs to make one container.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CreateSpec {
    /// Its id, to become the `io.warmpool.id` label.
    pub id: ContainerId,
    /// Its pool.
    pub pool: PoolName,
    /// Pool generation it is made from.
    pub generation: u64,
    /// Docker image.
    pub image: String,
    /// When to pull it (absent from an older control plane: `if_not_present`).
    #[serde(default)]
    pub pull: PullPolicy,
    /// Command; empty means the image's.
    pub command: Vec<String>,
    /// Environment.
    pub env: BTreeMap<String, String>,
    /// Service port.
    pub port: u16,
    /// The pool's other named ports: open to the gateway like the service port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_ports: Vec<u16>,
    /// Limits.
    pub resources: ContainerResources,
    /// Health check the agent runs.
    pub health: HealthCheck,
    /// Capabilities given back, read-only root filesystem, tmpfs mounts.
    #[serde(default)]
    pub security: Security,
    /// Where it may open connections (absent from an older control plane: none).
    #[serde(default)]
    pub egress: Egress,
    /// SIGTERM, then this long before SIGKILL when it is removed (0: at once).
    #[serde(default)]
    pub stop_grace_secs: u32,
    /// Run in the container before it is stopped.
    #[serde(default)]
    pub pre_stop: Vec<String>,
    /// The pool's workspace path: a volume of its own there (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_path: Option<String>,
}

/// A command from the leader to an agent (`pool.v1.node.<node>.cmd`, request/reply).
///
/// `Create` is much larger than the rest; a command lives only as long as its request, so it
/// is not boxed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)]
pub enum AgentCommand {
    /// Make this container, if it does not exist yet. Answered once accepted; progress
    /// arrives as facts.
    Create(CreateSpec),
    /// Remove this container, if it exists. Answered once it is gone.
    Destroy {
        /// The container.
        id: ContainerId,
        /// Why, for the agent's log; the agent reports it back with the container gone.
        reason: crate::ContainerEndReason,
    },
    /// Send the full inventory.
    Inventory,
    /// Restart this container in place (its health check failed while a session held it).
    /// Answered once it runs again.
    Restart {
        /// The container.
        id: ContainerId,
    },
    /// Pause this warm container (`docker pause`): it joins its pool's paused tier. Refused
    /// for a container unpaused for an allocation lately (a pause that arrives after the
    /// allocation's unpause must not freeze a session's container). Answered once paused.
    Pause {
        /// The container.
        id: ContainerId,
    },
    /// Unpause this container if it is paused (it was allocated, or leaves the paused tier).
    /// Answered once it runs.
    Unpause {
        /// The container.
        id: ContainerId,
    },
}

/// An agent's answer to an [`AgentCommand`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum AgentReply {
    /// The create was accepted (or the container already exists).
    Accepted,
    /// The container is gone; `existed` says whether there was anything to remove.
    Destroyed {
        /// Whether the container existed.
        existed: bool,
    },
    /// The full inventory.
    Inventory(Inventory),
    /// The container was restarted and runs again.
    Restarted,
    /// The container is paused.
    Paused,
    /// The container runs (unpaused, or it was not paused).
    Unpaused,
    /// The command could not be carried out.
    Error {
        /// Why.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(status: ObservedStatus, health: Health) -> InventoryEntry {
        InventoryEntry {
            id: ContainerId::new(),
            pool: PoolName::new("demo").unwrap(),
            generation: 1,
            docker_id: "abc".into(),
            ipv6: Some("fd36:1::2".parse().unwrap()),
            status,
            health,
            exit_code: None,
            oom_killed: false,
            last_activity_at: None,
            paused: false,
        }
    }

    #[test]
    fn digest_ignores_order_and_sees_health() {
        let a = entry(ObservedStatus::Running, Health::Healthy);
        let b = entry(ObservedStatus::Starting, Health::Unknown);
        let d1 = inventory_digest(&[a.clone(), b.clone()]);
        assert_eq!(d1, inventory_digest(&[b.clone(), a.clone()]));
        let mut sick = a.clone();
        sick.health = Health::Unhealthy {
            consecutive_failures: 3,
        };
        assert_ne!(d1, inventory_digest(&[sick, b.clone()]));
        assert_ne!(d1, inventory_digest(&[a]));
        assert_ne!(inventory_digest(&[]), inventory_digest(&[b]));
    }

    #[test]
    fn commands_and_replies_round_trip() {
        let cmds = vec![
            AgentCommand::Destroy {
                id: ContainerId::new(),
                reason: "released".into(),
            },
            AgentCommand::Inventory,
            AgentCommand::Create(CreateSpec {
                id: ContainerId::new(),
                pool: PoolName::new("demo").unwrap(),
                generation: 2,
                image: "warmpool-demo:latest".into(),
                pull: PullPolicy::Always,
                command: vec![],
                env: BTreeMap::new(),
                port: 8080,
                extra_ports: Vec::new(),
                resources: ContainerResources::default(),
                health: HealthCheck::default(),
                security: Security::default(),
                egress: Default::default(),
                stop_grace_secs: 0,
                pre_stop: vec![],
                workspace_path: None,
            }),
        ];
        for c in cmds {
            let json = serde_json::to_vec(&c).unwrap();
            assert_eq!(serde_json::from_slice::<AgentCommand>(&json).unwrap(), c);
        }
        let inv = Inventory {
            node: NodeId::new("n1").unwrap(),
            boot_id: Uuid::now_v7(),
            seq: 9,
            taken_at: Timestamp(5),
            containers: vec![entry(ObservedStatus::Exited, Health::Unknown)],
        };
        for r in [
            AgentReply::Accepted,
            AgentReply::Destroyed { existed: true },
            AgentReply::Inventory(inv),
            AgentReply::Error {
                message: "no such image".into(),
            },
        ] {
            let json = serde_json::to_vec(&r).unwrap();
            assert_eq!(serde_json::from_slice::<AgentReply>(&json).unwrap(), r);
        }
    }

    #[test]
    fn facts_round_trip_and_garbage_is_an_error() {
        let f = Fact::Gone {
            node: NodeId::new("n1").unwrap(),
            seq: 3,
            id: ContainerId::new(),
            reason: "oom".into(),
        };
        let json = serde_json::to_vec(&f).unwrap();
        assert_eq!(serde_json::from_slice::<Fact>(&json).unwrap(), f);
        assert!(serde_json::from_slice::<Fact>(b"{\"fact\":\"exploded\"}").is_err());
        assert!(serde_json::from_slice::<Fact>(b"\xff\x00").is_err());
    }

    #[test]
    fn heartbeat_round_trips() {
        let hb = Heartbeat {
            node: NodeId::new("n1").unwrap(),
            boot_id: Uuid::now_v7(),
            seq: 1,
            sent_at: Timestamp(10),
            agent_version: "0.1.0".into(),
            ipv6_prefix: "fd36:1::/64".into(),
            labels: BTreeMap::from([("region".into(), "eu".into())]),
            capacity: Resources {
                cpu_millis: 2000,
                memory_mb: 4096,
            },
            usage: Usage {
                memory_used_mb: 1024,
                memory_total_mb: 4096,
                load1: 0.5,
            },
            containers: 3,
            inventory_digest: 77,
            create_slots: Some(4),
            runtime_unavailable: None,
            images: vec![ImageStatus {
                image: "registry.example:5000/app:1".into(),
                pools: vec![PoolName::new("demo").unwrap()],
                state: ImageState::Failed {
                    reason: ImagePullError::NotFound,
                    message: "manifest unknown".into(),
                    attempts: 2,
                    retry_at: Timestamp(99),
                },
            }],
        };
        let json = serde_json::to_vec(&hb).unwrap();
        assert_eq!(serde_json::from_slice::<Heartbeat>(&json).unwrap(), hb);
        let text = String::from_utf8(json).unwrap();
        assert!(
            text.contains(r#""state":"failed","reason":"not_found""#),
            "{text}"
        );
        // An older agent's heartbeat (no images) and an older control plane's create (no
        // pull policy) still read.
        let mut old: serde_json::Value = serde_json::from_str(&text).unwrap();
        old.as_object_mut().unwrap().remove("images");
        let old: Heartbeat = serde_json::from_value(old).unwrap();
        assert!(old.images.is_empty());
        assert!((hb.usage.memory_fraction() - 0.25).abs() < 1e-9);
    }
}
