//! Reconciliation of one node: what the replicated state wants against what the node's agent
//! reports. Pure: state, inventory and timers in, actions out.
//!
//! The inventory is the level, so every rule here is safe to apply again and again:
//!
//! - An inventory entry with no live record on this node is an **orphan**: destroy it.
//! - A record in `releasing` is destroyed until its agent no longer has it; then it is gone.
//! - An entry that says more than its record (first seen, became healthy, health changed,
//!   exited) is **observed** into the state.
//! - A record in `creating` the agent does not have is (re)sent to the agent, at most every
//!   [`CREATE_RESEND_MS`], and given up after [`CREATE_DEADLINE_MS`].
//! - A record the agent once had (`observed_index` set) that is missing from an inventory
//!   requested *after* that index is **gone**: the agent had it, and no longer does.
//! - A record in `paused` whose entry runs (healthy, not paused) is paused, and a record that
//!   is not (allocated, warm) whose entry is paused is unpaused, each at most every
//!   [`PAUSE_RESEND_MS`]: an agent that died mid-unpause, or a pause that was lost, never
//!   leaves a session's container frozen or the paused tier running.

use std::collections::{BTreeMap, BTreeSet};

use warmpool_proto::agent::{CreateSpec, Inventory, InventoryEntry, ObservedStatus};
use warmpool_proto::{
    Container, ContainerEndReason, ContainerId, ContainerState, Health, NodeId, Timestamp,
};

use crate::state::PoolState;

/// A create the agent has not confirmed is sent again after this long.
pub const CREATE_RESEND_MS: u64 = 10_000;
/// A container not seen on its node this long after it was planned is given up.
pub const CREATE_DEADLINE_MS: u64 = 90_000;

/// A pause or unpause the agent has not been seen to carry out is sent again after this long.
pub const PAUSE_RESEND_MS: u64 = 3_000;

/// An agent's inventory as the leader holds it.
#[derive(Clone, Debug)]
pub struct Observed {
    /// The inventory (facts received since are merged in).
    pub inventory: Inventory,
    /// The leader's applied index when it asked for the inventory.
    pub requested_index: u64,
}

/// Something to do for one node.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Propose these entries into the state.
    Observe(Vec<InventoryEntry>),
    /// Propose that these containers are gone.
    Gone(Vec<(ContainerId, ContainerEndReason)>),
    /// Ask the agent to make a container.
    Create(Box<CreateSpec>),
    /// Ask the agent to destroy a container.
    Destroy(ContainerId, ContainerEndReason),
    /// Ask the agent to pause a container of the paused tier.
    Pause(ContainerId),
    /// Ask the agent to unpause a container that must run.
    Unpause(ContainerId),
}

/// What the leader has in flight, so nothing is sent twice at once.
#[derive(Debug, Default)]
pub struct InFlight {
    /// When each create was last sent.
    pub creates: BTreeMap<ContainerId, Timestamp>,
    /// Destroys awaiting an answer.
    pub destroys: BTreeSet<ContainerId>,
    /// When each pause or unpause was last sent.
    pub pauses: BTreeMap<ContainerId, Timestamp>,
}

/// Plans the actions for `node`.
pub fn reconcile(
    state: &PoolState,
    node: &NodeId,
    observed: Option<&Observed>,
    inflight: &InFlight,
    now: Timestamp,
) -> Vec<Action> {
    plan(state, node, observed, inflight, now).0
}

/// [`reconcile`], also answering whether the node is settled: no actions, and none that time
/// or an answer to a command in flight could bring while the node's records and inventory
/// stay as they are. The leader does not look at a settled node again until one of the two
/// changes, which at a thousand nodes is most of them on most steps.
pub fn plan(
    state: &PoolState,
    node: &NodeId,
    observed: Option<&Observed>,
    inflight: &InFlight,
    now: Timestamp,
) -> (Vec<Action>, bool) {
    // Whether anything was held back by a command in flight or may come due with time.
    let mut pending = false;
    let mut actions = Vec::new();
    let mut observe = Vec::new();
    let mut gone = Vec::new();
    // Built at once (sorted, then filled in order) rather than an insert per entry.
    let seen: BTreeSet<ContainerId> = observed
        .map(|obs| obs.inventory.containers.iter().map(|e| e.id).collect())
        .unwrap_or_default();

    if let Some(obs) = observed {
        for entry in &obs.inventory.containers {
            let record = state
                .container(&entry.id)
                .filter(|c| c.state.is_live() && &c.node == node);
            match record {
                None => {
                    if inflight.destroys.contains(&entry.id) {
                        pending = true;
                    } else {
                        actions.push(Action::Destroy(entry.id, "orphan".into()));
                    }
                }
                Some(c) if c.state == ContainerState::Releasing => {
                    if inflight.destroys.contains(&entry.id) {
                        pending = true;
                    } else {
                        let why = c.reason.clone().unwrap_or(ContainerEndReason::Released);
                        actions.push(Action::Destroy(entry.id, why));
                    }
                }
                Some(c) => {
                    if says_more(c, entry) {
                        observe.push(entry.clone());
                    }
                    let wants_paused = c.state == ContainerState::Paused;
                    let runs = entry.status == ObservedStatus::Running;
                    let mismatch = if wants_paused {
                        !entry.paused && runs && entry.health == Health::Healthy
                    } else {
                        entry.paused && c.state != ContainerState::Creating
                    };
                    if mismatch {
                        pending = true;
                        let due = inflight.pauses.get(&c.id).is_none_or(|sent| {
                            now.since(*sent).as_millis() >= u128::from(PAUSE_RESEND_MS)
                        });
                        if due {
                            actions.push(if wants_paused {
                                Action::Pause(c.id)
                            } else {
                                Action::Unpause(c.id)
                            });
                        }
                    }
                }
            }
        }
    }

    for c in state.live_containers_on_except(node, &seen) {
        let had_it = match (observed, c.observed_index) {
            (Some(obs), Some(at)) => at <= obs.requested_index,
            _ => false,
        };
        match c.state {
            _ if had_it => gone.push((c.id, ContainerEndReason::Vanished)),
            // Never seen, or seen and since removed: either way the agent does not have it (an
            // inventory exists and lacks it). If a late create makes it appear, it is an
            // orphan then and destroyed.
            ContainerState::Releasing
                if observed.is_some() && !inflight.destroys.contains(&c.id) =>
            {
                gone.push((c.id, ContainerEndReason::Destroyed));
            }
            ContainerState::Releasing => pending = true,
            ContainerState::Creating if c.observed_index.is_none() => {
                pending = true;
                if now.since(c.created_at).as_millis() > u128::from(CREATE_DEADLINE_MS) {
                    gone.push((c.id, ContainerEndReason::CreateTimedOut));
                    continue;
                }
                let due = inflight.creates.get(&c.id).is_none_or(|sent| {
                    now.since(*sent).as_millis() >= u128::from(CREATE_RESEND_MS)
                });
                if due {
                    if let Some(spec) = create_spec(state, c) {
                        actions.push(Action::Create(Box::new(spec)));
                    }
                }
            }
            _ => {}
        }
    }

    if !observe.is_empty() {
        actions.insert(0, Action::Observe(observe));
    }
    if !gone.is_empty() {
        actions.insert(0, Action::Gone(gone));
    }
    let settled = actions.is_empty() && !pending;
    (actions, settled)
}

/// Whether `entry` tells the state something it does not know.
fn says_more(c: &Container, e: &InventoryEntry) -> bool {
    let becomes_warm = c.state == ContainerState::Creating
        && e.status == ObservedStatus::Running
        && e.health == Health::Healthy;
    becomes_warm
        || e.status == ObservedStatus::Exited
        || c.observed_index.is_none()
        || c.health.as_str() != e.health.as_str()
        || (e.ipv6.is_some() && c.ipv6 != e.ipv6)
        || c.docker_id.as_deref() != Some(e.docker_id.as_str())
}

/// The create command for a planned container, from its pool's spec.
pub fn create_spec(state: &PoolState, c: &Container) -> Option<CreateSpec> {
    create_spec_for(state, &c.pool, c.generation, c.id)
}

/// The create command for container `id` of `pool` at `generation`, from the pool's spec.
pub fn create_spec_for(
    state: &PoolState,
    pool: &warmpool_proto::PoolName,
    generation: u64,
    id: ContainerId,
) -> Option<CreateSpec> {
    let s = &state.pool(pool)?.spec;
    Some(CreateSpec {
        id,
        pool: pool.clone(),
        generation,
        image: s.image.clone(),
        pull: s.pull,
        command: s.command.clone(),
        env: s.container_env(),
        port: s.port,
        extra_ports: s.extra_ports(),
        resources: s.resources.clone(),
        health: s.health.clone(),
        security: s.security.clone(),
        egress: s.egress.clone(),
        stop_grace_secs: s.stop_grace_secs,
        pre_stop: s.pre_stop.clone(),
        workspace_path: s.workspace.as_ref().map(|w| w.path.clone()),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use uuid::Uuid;
    use warmpool_proto::records::Resources;
    use warmpool_proto::{PoolName, PoolSpec};

    use super::*;
    use crate::state::{Command, Request};

    struct World {
        state: PoolState,
        index: u64,
        node: NodeId,
        pool: PoolName,
    }

    impl World {
        fn new() -> Self {
            let node = NodeId::new("n1").unwrap();
            let pool = PoolName::new("demo").unwrap();
            let mut w = World {
                state: PoolState::default(),
                index: 0,
                node: node.clone(),
                pool: pool.clone(),
            };
            w.apply(Command::NodeJoin {
                node,
                ipv6_prefix: "fd36:1::/64".into(),
                labels: BTreeMap::new(),
                capacity: Resources {
                    cpu_millis: 1000,
                    memory_mb: 1000,
                },
                agent_version: "t".into(),
            });
            w.apply(Command::PutPool {
                spec: PoolSpec::new(pool, "img"),
            });
            w
        }
        fn apply(&mut self, cmd: Command) {
            self.index += 1;
            self.state.apply(
                self.index,
                Request {
                    at: Timestamp(1_000 * self.index),
                    cmd,
                },
            );
            self.state.assert_indexes_consistent();
        }
        fn plan(&mut self) -> ContainerId {
            let id = ContainerId::new();
            self.apply(Command::PlanContainers {
                pool: self.pool.clone(),
                generation: 1,
                placements: vec![(id, self.node.clone())],
            });
            id
        }
        fn entry(&self, id: ContainerId, health: Health) -> InventoryEntry {
            InventoryEntry {
                id,
                pool: self.pool.clone(),
                generation: 1,
                docker_id: format!("d{id}"),
                ipv6: Some("fd36:1::9".parse().unwrap()),
                status: ObservedStatus::Running,
                health,
                exit_code: None,
                oom_killed: false,
                last_activity_at: None,
                paused: false,
            }
        }
        fn observed(&self, entries: Vec<InventoryEntry>) -> Observed {
            Observed {
                inventory: Inventory {
                    node: self.node.clone(),
                    boot_id: Uuid::nil(),
                    seq: 1,
                    taken_at: Timestamp(0),
                    containers: entries,
                },
                requested_index: self.index,
            }
        }
        fn run(&self, obs: Option<&Observed>, inflight: &InFlight, now: u64) -> Vec<Action> {
            reconcile(&self.state, &self.node, obs, inflight, Timestamp(now))
        }
    }

    #[test]
    fn a_node_is_settled_only_when_neither_time_nor_a_command_in_flight_can_bring_actions() {
        let mut w = World::new();
        let settled = |w: &World, obs: &Observed, inflight: &InFlight| {
            plan(&w.state, &w.node, Some(obs), inflight, Timestamp(0)).1
        };
        // A create sent and not yet answered: time will bring a resend.
        let id = w.plan();
        let mut inflight = InFlight::default();
        inflight.creates.insert(id, Timestamp(0));
        assert!(!settled(&w, &w.observed(vec![]), &inflight));
        // Warm and reported: nothing to do, and nothing will come by itself.
        w.apply(Command::Observe {
            node: w.node.clone(),
            entries: vec![w.entry(id, Health::Healthy)],
        });
        let obs = w.observed(vec![w.entry(id, Health::Healthy)]);
        assert!(settled(&w, &obs, &InFlight::default()));
        // An orphan whose destroy is in flight: held back now, due again if that fails.
        let stranger = ContainerId::new();
        let mut inflight = InFlight::default();
        inflight.destroys.insert(stranger);
        let obs = w.observed(vec![
            w.entry(id, Health::Healthy),
            w.entry(stranger, Health::Healthy),
        ]);
        assert!(w.run(Some(&obs), &inflight, 0).is_empty());
        assert!(!settled(&w, &obs, &inflight));
    }

    #[test]
    fn planned_container_is_created_then_resent_then_given_up() {
        let mut w = World::new();
        let id = w.plan();
        let created_at = w.state.container(&id).unwrap().created_at.0;
        let a = w.run(None, &InFlight::default(), created_at);
        assert!(matches!(&a[..], [Action::Create(s)] if s.id == id && s.image == "img"));

        let mut inflight = InFlight::default();
        inflight.creates.insert(id, Timestamp(created_at));
        assert!(
            w.run(None, &inflight, created_at + 1_000).is_empty(),
            "sent a second ago"
        );
        assert!(matches!(
            &w.run(None, &inflight, created_at + CREATE_RESEND_MS)[..],
            [Action::Create(_)]
        ));
        let late = w.run(None, &inflight, created_at + CREATE_DEADLINE_MS + 1);
        assert_eq!(
            late,
            vec![Action::Gone(vec![(id, "create_timed_out".into())])]
        );
    }

    #[test]
    fn healthy_entry_is_observed_once() {
        let mut w = World::new();
        let id = w.plan();
        let obs = w.observed(vec![w.entry(id, Health::Healthy)]);
        let a = w.run(Some(&obs), &InFlight::default(), 0);
        assert!(matches!(&a[..], [Action::Observe(e)] if e[0].id == id));
        let Action::Observe(entries) = a[0].clone() else {
            unreachable!()
        };
        w.apply(Command::Observe {
            node: w.node.clone(),
            entries,
        });
        assert_eq!(w.state.container(&id).unwrap().state, ContainerState::Warm);
        assert!(
            w.run(Some(&obs), &InFlight::default(), 0).is_empty(),
            "nothing new to say"
        );
    }

    #[test]
    fn orphans_and_released_containers_are_destroyed_once() {
        let mut w = World::new();
        let stranger = ContainerId::new();
        let obs = w.observed(vec![w.entry(stranger, Health::Healthy)]);
        assert_eq!(
            w.run(Some(&obs), &InFlight::default(), 0),
            vec![Action::Destroy(stranger, "orphan".into())]
        );
        let mut inflight = InFlight::default();
        inflight.destroys.insert(stranger);
        assert!(
            w.run(Some(&obs), &inflight, 0).is_empty(),
            "already being destroyed"
        );

        let id = w.plan();
        w.apply(Command::Observe {
            node: w.node.clone(),
            entries: vec![w.entry(id, Health::Healthy)],
        });
        w.apply(Command::RetireContainers {
            ids: vec![id],
            reason: "scale_down".into(),
            timed: true,
        });
        let obs = w.observed(vec![w.entry(id, Health::Healthy)]);
        assert_eq!(
            w.run(Some(&obs), &InFlight::default(), 0),
            vec![Action::Destroy(id, "scale_down".into())]
        );
        // Once the agent no longer has it, it is gone.
        let obs = w.observed(vec![]);
        assert_eq!(
            w.run(Some(&obs), &InFlight::default(), 0),
            vec![Action::Gone(vec![(id, "vanished".into())])]
        );
    }

    #[test]
    fn a_warm_container_missing_from_a_later_inventory_is_gone_but_not_from_an_earlier_one() {
        let mut w = World::new();
        let id = w.plan();
        let mut stale = w.observed(vec![]);
        w.apply(Command::Observe {
            node: w.node.clone(),
            entries: vec![w.entry(id, Health::Healthy)],
        });
        // Requested before the container was first seen: its absence proves nothing.
        assert!(w
            .run(Some(&stale), &InFlight::default(), 0)
            .iter()
            .all(|a| !matches!(a, Action::Gone(_))));
        stale.requested_index = w.index;
        assert_eq!(
            w.run(Some(&stale), &InFlight::default(), 0),
            vec![Action::Gone(vec![(id, "vanished".into())])]
        );
    }

    #[test]
    fn the_paused_tier_is_paused_and_an_allocated_container_is_never_left_paused() {
        let mut w = World::new();
        let id = w.plan();
        w.apply(Command::Observe {
            node: w.node.clone(),
            entries: vec![w.entry(id, Health::Healthy)],
        });
        w.apply(Command::PauseContainers { ids: vec![id] });
        assert_eq!(
            w.state.container(&id).unwrap().state,
            ContainerState::Paused
        );
        // Still running on its host (the pause was lost): paused, then resent only later.
        let obs = w.observed(vec![w.entry(id, Health::Healthy)]);
        assert_eq!(
            w.run(Some(&obs), &InFlight::default(), 0),
            vec![Action::Pause(id)]
        );
        let mut inflight = InFlight::default();
        inflight.pauses.insert(id, Timestamp(0));
        assert!(w.run(Some(&obs), &inflight, 1_000).is_empty());
        assert_eq!(
            w.run(Some(&obs), &inflight, PAUSE_RESEND_MS),
            vec![Action::Pause(id)]
        );
        // Paused on its host: settled.
        let mut paused = w.entry(id, Health::Healthy);
        paused.paused = true;
        let obs = w.observed(vec![paused.clone()]);
        assert!(
            plan(
                &w.state,
                &w.node,
                Some(&obs),
                &InFlight::default(),
                Timestamp(0)
            )
            .1
        );
        // Allocated from the paused tier, and its agent died before it unpaused: the
        // inventory of the restarted agent says paused, so it is unpaused.
        let r = w.state.apply(
            w.index + 1,
            Request {
                at: Timestamp(1_000 * (w.index + 1)),
                cmd: Command::plain_allocate(
                    w.pool.clone(),
                    warmpool_proto::SessionId::new("s1").unwrap(),
                    60_000,
                ),
            },
        );
        w.index += 1;
        assert!(
            matches!(&r, crate::state::Response::Allocation { allocation, .. } if allocation.tier == Some(warmpool_proto::Tier::Paused)),
            "{r:?}"
        );
        assert_eq!(
            w.run(Some(&obs), &InFlight::default(), 0),
            vec![Action::Unpause(id)]
        );
    }

    #[test]
    fn another_nodes_container_is_an_orphan_here() {
        let mut w = World::new();
        let id = w.plan();
        let other = NodeId::new("n2").unwrap();
        let obs = w.observed(vec![w.entry(id, Health::Healthy)]);
        let a = reconcile(
            &w.state,
            &other,
            Some(&obs),
            &InFlight::default(),
            Timestamp(0),
        );
        assert_eq!(a, vec![Action::Destroy(id, "orphan".into())]);
    }
}
