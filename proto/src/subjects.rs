//! NATS subjects, all under [`PREFIX`].
//!
//! | subject | from → to |
//! |---|---|
//! | `pool.v1.node.<node>.heartbeat` | agent → control plane |
//! | `pool.v1.node.<node>.facts` | agent → control plane |
//! | `pool.v1.node.<node>.cmd` | leader → agent, request/reply |
//! | `pool.v1.raft.<member>.<rpc>` | control plane ↔ control plane, request/reply |
//! | `pool.v1.cp.<member>.forward` | follower → leader, request/reply |
//! | `pool.v1.cp.join` | new member → leader, request/reply |
//! | `pool.v1.events` | control plane → anyone |

use crate::ids::{MemberId, NodeId};

/// Prefix of every subject; the version changes when the protocol does.
pub const PREFIX: &str = "pool.v1";

/// Every agent's heartbeats.
pub const ALL_HEARTBEATS: &str = "pool.v1.node.*.heartbeat";
/// Every agent's facts.
pub const ALL_FACTS: &str = "pool.v1.node.*.facts";
/// Committed events, for live views.
pub const EVENTS: &str = "pool.v1.events";
/// New control-plane members ask to join here; the leader answers.
pub const JOIN: &str = "pool.v1.cp.join";

/// Where `node` sends heartbeats.
pub fn heartbeat(node: &NodeId) -> String {
    format!("{PREFIX}.node.{node}.heartbeat")
}

/// Where `node` sends facts about its containers.
pub fn facts(node: &NodeId) -> String {
    format!("{PREFIX}.node.{node}.facts")
}

/// Where the leader sends commands to `node`.
pub fn cmd(node: &NodeId) -> String {
    format!("{PREFIX}.node.{node}.cmd")
}

/// Everything `node` may publish to.
pub fn node_publish(node: &NodeId) -> String {
    format!("{PREFIX}.node.{node}.>")
}

/// The node id in a `pool.v1.node.<node>.<kind>` subject, if the subject is one.
pub fn node_of(subject: &str) -> Option<NodeId> {
    let rest = subject.strip_prefix(PREFIX)?.strip_prefix(".node.")?;
    let (node, _kind) = rest.split_once('.')?;
    NodeId::new(node).ok()
}

/// A Raft RPC kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RaftRpc {
    /// AppendEntries.
    Append,
    /// RequestVote.
    Vote,
    /// InstallSnapshot (one chunk).
    Snapshot,
}

impl RaftRpc {
    /// The subject's last token.
    pub fn as_str(self) -> &'static str {
        match self {
            RaftRpc::Append => "append",
            RaftRpc::Vote => "vote",
            RaftRpc::Snapshot => "snapshot",
        }
    }

    /// Parses a subject's last token.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "append" => Some(RaftRpc::Append),
            "vote" => Some(RaftRpc::Vote),
            "snapshot" => Some(RaftRpc::Snapshot),
            _ => None,
        }
    }
}

/// Where Raft RPCs of kind `rpc` for `member` go.
pub fn raft(member: MemberId, rpc: RaftRpc) -> String {
    format!("{PREFIX}.raft.{member}.{}", rpc.as_str())
}

/// Every Raft RPC for `member`.
pub fn raft_all(member: MemberId) -> String {
    format!("{PREFIX}.raft.{member}.*")
}

/// Where followers forward writes to `member` when it leads.
pub fn forward(member: MemberId) -> String {
    format!("{PREFIX}.cp.{member}.forward")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_subjects_parse_back() {
        let n = NodeId::new("host-a").unwrap();
        assert_eq!(heartbeat(&n), "pool.v1.node.host-a.heartbeat");
        assert_eq!(node_of(&heartbeat(&n)), Some(n.clone()));
        assert_eq!(node_of(&facts(&n)), Some(n));
        assert_eq!(node_of("pool.v1.raft.1.vote"), None);
        assert_eq!(node_of("pool.v2.node.x.facts"), None);
    }

    #[test]
    fn raft_subjects() {
        assert_eq!(raft(3, RaftRpc::Vote), "pool.v1.raft.3.vote");
        assert_eq!(raft_all(3), "pool.v1.raft.3.*");
        assert_eq!(RaftRpc::parse("append"), Some(RaftRpc::Append));
        assert_eq!(forward(1), "pool.v1.cp.1.forward");
    }
}
