//! Which nodes are alive, as the leader decides it: pure, from the replicated state, what this
//! member heard of each node, and a clock.
//!
//! The rule that keeps a NATS hiccup from ending sessions: **a node is declared down only on
//! evidence gathered while the deciding leader could hear it.** Silence counts from the latest
//! of the node's last heartbeat, the start of this leadership, and the moment this member's
//! own NATS connection came back; while the connection is gone nothing is decided at all.
//!
//! Three steps, each reversible until the last:
//! 1. *Unreachable* (`MarkUnreachable`): a node not heard for the node timeout but not yet
//!    down (just after the leader's NATS link or leadership began, when it gets a full grace
//!    first), or whose agent says its container runtime does not answer, gets no grants and no
//!    placements. Its containers and allocations are kept. The mark clears when it is heard in
//!    good health.
//! 2. *Down* (`NodeDown`): silent for the whole node timeout. What no session holds (warm,
//!    creating) is replaced elsewhere; allocated containers and their sessions are kept, since
//!    the node may be alive behind a broken link. A node that returns gets them back.
//! 3. *Lost* (`NodeLost`): down for `node_lost`. Its allocations end as lost.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;
use warmpool_proto::records::{NodeStatus, UnreachableReason};
use warmpool_proto::{NodeId, Timestamp};

use crate::agents::NodeSoft;
use crate::state::{Command, PoolState};

/// The leader's clocks and limits for one decision.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Now (monotonic), for heartbeats.
    pub now: Instant,
    /// Now (wall clock), for times in the state.
    pub wall: Timestamp,
    /// Since when this member, leading, has been able to hear nodes: the latest of when its
    /// leadership began and when its NATS connection last came back. `None` while it is not
    /// connected: then nothing is decided.
    pub hearing_since: Option<Instant>,
    /// Silence after which a node is declared down.
    pub node_timeout: Duration,
    /// Time down after which a node's allocations are lost.
    pub node_lost: Duration,
}

impl Clock {
    /// Silence after which a node gets no grants: the node timeout. In steady state the node
    /// is declared down at the same moment; during a grace (after this member regained NATS
    /// or leadership) it is not, but takes no grants until heard. (Shorter would flap under
    /// load, when a busy member reads heartbeats late.)
    pub fn unheard_after(&self) -> Duration {
        self.node_timeout
    }
}

/// What the leader should write about node liveness now: joins and returns of nodes heard,
/// unreachable marks set or cleared, nodes down, down nodes lost.
pub fn plan(state: &PoolState, heard: &HashMap<NodeId, NodeSoft>, clock: Clock) -> Vec<Command> {
    let Some(hearing_since) = clock.hearing_since else {
        // This member hears nothing now: silence says nothing about anyone.
        return Vec::new();
    };
    let mut out = Vec::new();
    for (id, soft) in heard {
        if clock.now.duration_since(soft.received) > clock.node_timeout {
            continue;
        }
        let hb = &soft.heartbeat;
        let changed = match state.node(id) {
            None => true,
            Some(n) => {
                n.status == NodeStatus::Down
                    || n.labels != hb.labels
                    || n.ipv6_prefix != hb.ipv6_prefix
                    || n.capacity != hb.capacity
                    || n.agent_version != hb.agent_version
            }
        };
        if changed {
            out.push(Command::NodeJoin {
                node: id.clone(),
                ipv6_prefix: hb.ipv6_prefix.clone(),
                labels: hb.labels.clone(),
                capacity: hb.capacity,
                agent_version: hb.agent_version.clone(),
            });
        }
    }
    for n in state.nodes() {
        let soft = heard.get(&n.id);
        let last = soft.map(|s| s.received);
        if n.status == NodeStatus::Down {
            let down_for = clock.wall.since(n.status_changed_at);
            let joining = last.is_some_and(|l| clock.now.duration_since(l) <= clock.node_timeout);
            if down_for >= clock.node_lost && !joining && state.live_containers_on_count(&n.id) > 0
            {
                out.push(Command::NodeLost { node: n.id.clone() });
            }
            continue;
        }
        // Silence counts only from when this member could hear the node.
        let quiet_from = last.map_or(hearing_since, |l| l.max(hearing_since));
        let quiet = clock.now.duration_since(quiet_from);
        if quiet > clock.node_timeout {
            let silent = clock.now.duration_since(last.unwrap_or(hearing_since));
            out.push(Command::NodeDown {
                node: n.id.clone(),
                reason: format!("no heartbeat for {:.1}s", silent.as_secs_f64()),
            });
            continue;
        }
        // Grants need fresh news: a heartbeat older than `unheard_after` is not enough, even
        // when it is too soon to call the node down (as just after NATS came back).
        let unheard = match last {
            Some(l) => clock.now.duration_since(l) > clock.unheard_after(),
            None => clock.now.duration_since(hearing_since) > clock.unheard_after(),
        };
        let runtime_down = soft.is_some_and(|s| s.heartbeat.runtime_unavailable.is_some());
        let want = if unheard {
            Some(UnreachableReason::NoHeartbeat)
        } else if runtime_down {
            Some(UnreachableReason::RuntimeUnavailable)
        } else {
            None
        };
        if n.unreachable.as_ref().map(|u| u.reason) != want {
            out.push(Command::MarkUnreachable {
                node: n.id.clone(),
                reason: want,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use warmpool_proto::agent::{Heartbeat, RuntimeOutage, Usage};
    use warmpool_proto::records::Resources;
    use warmpool_proto::{ContainerId, ContainerState, PoolSpec, SessionId};

    use super::*;
    use crate::state::Request;

    const TIMEOUT: Duration = Duration::from_secs(5);
    const LOST: Duration = Duration::from_secs(300);

    struct World {
        state: PoolState,
        index: u64,
        /// The wall clock of the world, in ms.
        wall: u64,
        /// Monotonic time zero.
        t0: Instant,
        heard: HashMap<NodeId, NodeSoft>,
    }

    fn nid(name: &str) -> NodeId {
        NodeId::new(name).expect("node id")
    }

    fn pool() -> warmpool_proto::PoolName {
        warmpool_proto::PoolName::new("demo").expect("pool name")
    }

    fn heartbeat(node: &str) -> Heartbeat {
        Heartbeat {
            node: nid(node),
            boot_id: uuid::Uuid::nil(),
            seq: 1,
            sent_at: Timestamp(0),
            agent_version: "test".into(),
            ipv6_prefix: "fd36:1::/64".into(),
            labels: BTreeMap::new(),
            capacity: Resources {
                cpu_millis: 2000,
                memory_mb: 4096,
            },
            usage: Usage::default(),
            containers: 0,
            inventory_digest: 0,
            create_slots: None,
            runtime_unavailable: None,
            images: Vec::new(),
        }
    }

    impl World {
        fn new() -> World {
            World {
                state: PoolState::default(),
                index: 0,
                wall: 1_000_000,
                t0: Instant::now(),
                heard: HashMap::new(),
            }
        }

        fn at(&self, secs: f64) -> Instant {
            self.t0 + Duration::from_secs_f64(secs)
        }

        fn apply(&mut self, cmd: Command) -> crate::state::Response {
            self.index += 1;
            self.state.apply(
                self.index,
                Request {
                    at: Timestamp(self.wall),
                    cmd,
                },
            )
        }

        /// The node joined, and this member heard it at `secs`.
        fn node(&mut self, id: &str, secs: f64) {
            self.apply(Command::NodeJoin {
                node: nid(id),
                ipv6_prefix: "fd36:1::/64".into(),
                labels: BTreeMap::new(),
                capacity: Resources {
                    cpu_millis: 2000,
                    memory_mb: 4096,
                },
                agent_version: "test".into(),
            });
            self.hear(id, secs);
        }

        fn hear(&mut self, id: &str, secs: f64) {
            let at = self.at(secs);
            self.heard.insert(
                nid(id),
                NodeSoft {
                    heartbeat: heartbeat(id),
                    received: at,
                    received_at: Timestamp(self.wall),
                    observed: None,
                    observed_digest: None,
                    observed_version: 0,
                    pull_wanted: false,
                    boot_seen_at: Timestamp(self.wall),
                    boots: vec![],
                    suspect_until: None,
                },
            );
        }

        /// A warm container of pool `demo` on `node`, allocated when `allocate`.
        fn container(&mut self, node: &str, allocate: bool) -> ContainerId {
            if self.state.pool(&pool()).is_none() {
                let spec = PoolSpec::new(pool(), "img");
                self.apply(Command::CreatePool { spec });
            }
            let id = ContainerId::new();
            self.apply(Command::PlanContainers {
                pool: pool(),
                generation: 1,
                placements: vec![(id, nid(node))],
            });
            self.apply(Command::Observe {
                node: nid(node),
                entries: vec![warmpool_proto::agent::InventoryEntry {
                    id,
                    pool: pool(),
                    generation: 1,
                    docker_id: format!("d-{id}"),
                    ipv6: Some("fd36:1::2".parse().expect("ip")),
                    status: warmpool_proto::agent::ObservedStatus::Running,
                    health: warmpool_proto::Health::Healthy,
                    exit_code: None,
                    oom_killed: false,
                    last_activity_at: None,
                    paused: false,
                }],
            });
            if allocate {
                self.apply(Command::plain_allocate(
                    pool(),
                    SessionId::new("s").expect("session"),
                    3_600_000,
                ));
            }
            assert_eq!(
                self.state.container(&id).map(|c| c.state),
                Some(if allocate {
                    ContainerState::Allocated
                } else {
                    ContainerState::Warm
                })
            );
            id
        }

        fn plan(&self, secs: f64, hearing_since: Option<f64>) -> Vec<Command> {
            plan(
                &self.state,
                &self.heard,
                Clock {
                    now: self.at(secs),
                    wall: Timestamp(self.wall),
                    hearing_since: hearing_since.map(|s| self.at(s)),
                    node_timeout: TIMEOUT,
                    node_lost: LOST,
                },
            )
        }
    }

    /// A plain allocation from pool `demo`, waiting for nothing.
    fn allocate() -> Command {
        Command::plain_allocate(pool(), SessionId::new("s").expect("session"), 60_000)
    }

    fn downs(cmds: &[Command]) -> Vec<String> {
        cmds.iter()
            .filter_map(|c| match c {
                Command::NodeDown { node, .. } => Some(node.to_string()),
                _ => None,
            })
            .collect()
    }

    fn marks(cmds: &[Command]) -> Vec<(String, Option<UnreachableReason>)> {
        cmds.iter()
            .filter_map(|c| match c {
                Command::MarkUnreachable { node, reason } => Some((node.to_string(), *reason)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_node_silent_for_the_timeout_is_down() {
        let mut w = World::new();
        w.node("n1", 0.0);
        w.node("n2", 0.0);
        w.hear("n2", 9.0);
        assert!(w.plan(1.0, Some(0.0)).is_empty(), "both fresh");
        assert!(
            w.plan(4.9, Some(0.0)).is_empty(),
            "a busy moment is no outage"
        );
        let cmds = w.plan(5.5, Some(0.0));
        assert_eq!(downs(&cmds), vec!["n1".to_string()]);
        match cmds.iter().find(|c| matches!(c, Command::NodeDown { .. })) {
            Some(Command::NodeDown { reason, .. }) => {
                assert_eq!(reason, "no heartbeat for 5.5s")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn nothing_is_decided_while_this_member_hears_no_nats() {
        let mut w = World::new();
        w.node("n1", 0.0);
        assert!(w.plan(60.0, None).is_empty());
    }

    #[test]
    fn after_nats_returns_every_node_gets_a_full_grace_but_no_grants_until_heard() {
        let mut w = World::new();
        w.node("n1", 0.0);
        // The member's NATS link came back at 20 s: the last heartbeat is 20 s old.
        let cmds = w.plan(20.1, Some(20.0));
        assert!(downs(&cmds).is_empty(), "{cmds:?}");
        assert_eq!(
            marks(&cmds),
            vec![("n1".into(), Some(UnreachableReason::NoHeartbeat))],
            "a stale node takes no grants meanwhile"
        );
        w.apply(cmds[0].clone());
        // Heard again 1 s later: the mark clears and nothing went down.
        w.hear("n1", 21.0);
        let cmds = w.plan(21.1, Some(20.0));
        assert_eq!(marks(&cmds), vec![("n1".into(), None)]);
        assert!(downs(&cmds).is_empty());
        // A node that stays silent is down a full timeout after the link came back.
        w.hear("n1", 0.0);
        assert!(downs(&w.plan(24.9, Some(20.0))).is_empty());
        assert_eq!(downs(&w.plan(25.1, Some(20.0))), vec!["n1".to_string()]);
    }

    #[test]
    fn a_new_leader_counts_silence_from_when_it_took_over() {
        let mut w = World::new();
        w.node("n1", 0.0);
        w.heard.clear(); // never heard by this member
        assert!(w.plan(4.9, Some(0.0)).is_empty(), "too soon to tell");
        assert_eq!(downs(&w.plan(5.1, Some(0.0))), vec!["n1".to_string()]);
    }

    #[test]
    fn a_runtime_outage_marks_the_node_and_its_end_clears_it() {
        let mut w = World::new();
        w.node("n1", 0.0);
        if let Some(s) = w.heard.get_mut(&nid("n1")) {
            s.heartbeat.runtime_unavailable = Some(RuntimeOutage {
                since: Timestamp(0),
                error: "connection refused".into(),
            });
        }
        let cmds = w.plan(0.5, Some(0.0));
        assert_eq!(
            marks(&cmds),
            vec![("n1".into(), Some(UnreachableReason::RuntimeUnavailable))]
        );
        w.apply(cmds[0].clone());
        assert!(w.plan(0.6, Some(0.0)).is_empty(), "marked once");
        w.hear("n1", 1.0);
        assert_eq!(marks(&w.plan(1.1, Some(0.0))), vec![("n1".into(), None)]);
    }

    #[test]
    fn down_keeps_sessions_and_lost_ends_them_only_after_node_lost() {
        let mut w = World::new();
        w.node("n1", 0.0);
        let held = w.container("n1", true);
        let warm = w.container("n1", false);
        w.apply(Command::NodeDown {
            node: nid("n1"),
            reason: "no heartbeat".into(),
        });
        assert_eq!(
            w.state.container(&held).unwrap().state,
            ContainerState::Allocated
        );
        assert_eq!(
            w.state.container(&warm).unwrap().state,
            ContainerState::Terminated
        );
        assert_eq!(w.state.active_allocations().count(), 1);
        w.heard.clear();
        w.wall += 299_000;
        assert!(w.plan(299.0, Some(0.0)).is_empty(), "not lost yet");
        w.wall += 2_000;
        let cmds = w.plan(301.0, Some(0.0));
        assert_eq!(cmds, vec![Command::NodeLost { node: nid("n1") }]);
        w.apply(cmds[0].clone());
        assert_eq!(w.state.active_allocations().count(), 0);
        assert!(w.plan(302.0, Some(0.0)).is_empty(), "lost once");
    }

    #[test]
    fn a_down_node_that_returns_keeps_its_sessions() {
        let mut w = World::new();
        w.node("n1", 0.0);
        let held = w.container("n1", true);
        w.apply(Command::NodeDown {
            node: nid("n1"),
            reason: "no heartbeat".into(),
        });
        w.wall += 60_000;
        w.hear("n1", 60.0);
        let cmds = w.plan(60.1, Some(0.0));
        assert!(
            matches!(cmds.as_slice(), [Command::NodeJoin { .. }]),
            "{cmds:?}"
        );
        w.apply(cmds[0].clone());
        assert_eq!(w.state.node(&nid("n1")).unwrap().status, NodeStatus::Ready);
        assert_eq!(
            w.state.container(&held).unwrap().state,
            ContainerState::Allocated
        );
        assert_eq!(w.state.active_allocations().count(), 1);
        // NodeLost written late (the node came back before it applied) changes nothing.
        assert!(matches!(
            w.apply(Command::NodeLost { node: nid("n1") }),
            crate::state::Response::Rejected(_)
        ));
        assert_eq!(w.state.active_allocations().count(), 1);
    }

    #[test]
    fn nothing_is_granted_on_an_unreachable_node() {
        let mut w = World::new();
        w.node("n1", 0.0);
        w.container("n1", false);
        w.apply(Command::MarkUnreachable {
            node: nid("n1"),
            reason: Some(UnreachableReason::NoHeartbeat),
        });
        let r = w.apply(allocate());
        assert!(matches!(r, crate::state::Response::Rejected(_)), "{r:?}");
        w.apply(Command::MarkUnreachable {
            node: nid("n1"),
            reason: None,
        });
        let r = w.apply(allocate());
        assert!(
            matches!(r, crate::state::Response::Allocation { .. }),
            "{r:?}"
        );
    }
}
