//! NATS subjects, all under [`PREFIX`].
//!
//! | subject | from → to |
//! |---|---|
//! | `pool.v1.node.<node>.heartbeat` | agent → control plane |
//! | `pool.v1.node.<node>.facts` | agent → control plane |
//! | `pool.v1.node.<node>.cmd` | leader → agent, request/reply |
//! | `pool.v1.node.<node>.session` | any member → agent, request/reply: logs, exec, files, settings ([`crate::session`]) |
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

/// How long a NATS client of Warmpool waits before its `attempts`-th reconnection: at once,
/// then 100 ms doubling, at most 1 s. Both sides use it so that, when NATS comes back, every
/// agent is heard again well within the control plane's node timeout (the client library's
/// own default backs off to 4 s, most of a default 5 s timeout).
pub fn reconnect_delay(attempts: usize) -> std::time::Duration {
    let exp = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(u32::MAX)
        .min(4);
    let ms = if attempts <= 1 { 0 } else { 100u64 << exp };
    std::time::Duration::from_millis(ms.min(1_000))
}

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

/// Where any member sends session requests (logs, exec, files, settings) for containers on
/// `node`. Apart from the leader's commands so that an agent may serve them on their own
/// subscription and a member's user may be allowed these without the commands.
pub fn session(node: &NodeId) -> String {
    format!("{PREFIX}.node.{node}.session")
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
    /// What the member says of itself: its log, the leader it knows and when it last heard
    /// one (a dead leader's subject has no responders, which is the point of asking).
    Status,
}

impl RaftRpc {
    /// The subject's last token.
    pub fn as_str(self) -> &'static str {
        match self {
            RaftRpc::Append => "append",
            RaftRpc::Vote => "vote",
            RaftRpc::Snapshot => "snapshot",
            RaftRpc::Status => "status",
        }
    }

    /// Parses a subject's last token.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "append" => Some(RaftRpc::Append),
            "vote" => Some(RaftRpc::Vote),
            "snapshot" => Some(RaftRpc::Snapshot),
            "status" => Some(RaftRpc::Status),
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
    fn reconnects_come_fast_and_never_wait_more_than_a_second() {
        let ms: Vec<u64> = (0..8)
            .map(|a| reconnect_delay(a).as_millis() as u64)
            .collect();
        assert_eq!(ms, vec![0, 0, 200, 400, 800, 1000, 1000, 1000]);
        assert_eq!(reconnect_delay(usize::MAX).as_millis(), 1000);
    }

    #[test]
    fn node_subjects_parse_back() {
        let n = NodeId::new("host-a").unwrap();
        assert_eq!(heartbeat(&n), "pool.v1.node.host-a.heartbeat");
        assert_eq!(node_of(&heartbeat(&n)), Some(n.clone()));
        assert_eq!(node_of(&facts(&n)), Some(n.clone()));
        assert_eq!(session(&n), "pool.v1.node.host-a.session");
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
