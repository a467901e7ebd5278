//! The engine driven with plain values: a state built by applying commands, facts written by
//! hand, and a clock that moves only when a test says so. `World::carry_out` plays the runner:
//! it applies proposals to the state (as a commit would) and records what would be sent.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;
use warmpool_proto::agent::{
    AgentCommand, AgentReply, Heartbeat, Inventory, InventoryEntry, ObservedStatus, Usage,
};
use warmpool_proto::records::{AllocationState, ReleaseReason, Resources};
use warmpool_proto::{
    AllocationId, ContainerId, ContainerState, Health, NodeId, PoolName, PoolSpec, SessionId,
    Timestamp,
};

use super::*;
use crate::agents::AgentError;
use crate::reconcile::{Observed, CREATE_RESEND_MS};
use crate::state::{Request, Response};

struct World {
    state: PoolState,
    index: u64,
    t0: Instant,
    wall0: u64,
    /// Seconds since the start of the test.
    secs: f64,
    facts: Facts,
    /// Commands sent to agents by `carry_out`, in order.
    sent: Vec<(NodeId, AgentCommand)>,
    pulls: Vec<NodeId>,
}

fn nid(name: &str) -> NodeId {
    NodeId::new(name).expect("node id")
}

fn pname(name: &str) -> PoolName {
    PoolName::new(name).expect("pool name")
}

fn heartbeat(node: &NodeId) -> Heartbeat {
    Heartbeat {
        node: node.clone(),
        boot_id: Uuid::nil(),
        seq: 1,
        sent_at: Timestamp(0),
        agent_version: "test".into(),
        ipv6_prefix: "fd36:1::/64".into(),
        labels: BTreeMap::new(),
        capacity: Resources {
            cpu_millis: 4000,
            memory_mb: 8192,
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
    fn new() -> Self {
        World {
            state: PoolState::default(),
            index: 0,
            t0: Instant::now(),
            wall0: 1_000_000,
            secs: 0.0,
            facts: Facts::default(),
            sent: vec![],
            pulls: vec![],
        }
    }

    fn now(&self) -> Now {
        let d = Duration::from_secs_f64(self.secs);
        Now {
            mono: self.t0 + d,
            wall: Timestamp(self.wall0).plus(d),
        }
    }

    fn advance(&mut self, secs: f64) {
        self.secs += secs;
        // Every node keeps heartbeating while time passes.
        let now = self.now();
        for n in self.facts.nodes.values_mut() {
            n.received = now.mono;
            n.received_at = now.wall;
        }
    }

    fn apply(&mut self, cmd: Command) -> Response {
        self.index += 1;
        let at = self.now().wall;
        self.state.apply(self.index, Request { at, cmd })
    }

    /// A node joined and is heard, with an empty inventory.
    fn node(&mut self, name: &str) -> NodeId {
        let id = nid(name);
        // Each node its own prefix: two claiming one are cordoned.
        let prefix = format!("fd36:{}::/64", self.state.nodes().count() + 1);
        self.apply(Command::NodeJoin {
            node: id.clone(),
            ipv6_prefix: prefix.clone(),
            labels: BTreeMap::new(),
            capacity: Resources {
                cpu_millis: 4000,
                memory_mb: 8192,
            },
            agent_version: "test".into(),
        });
        let now = self.now();
        self.facts.nodes.insert(
            id.clone(),
            NodeSoft {
                heartbeat: Heartbeat {
                    ipv6_prefix: prefix,
                    ..heartbeat(&id)
                },
                received: now.mono,
                received_at: now.wall,
                observed: None,
                observed_digest: None,
                observed_version: 0,
                pull_wanted: false,
                boot_seen_at: now.wall,
                boots: vec![],
                suspect_until: None,
            },
        );
        self.inventory(&id, vec![]);
        id
    }

    /// The node's agent reports these containers.
    fn inventory(&mut self, node: &NodeId, containers: Vec<InventoryEntry>) {
        let requested_index = self.index;
        let n = self.facts.nodes.get_mut(node).expect("node heard");
        n.observed = Some(Arc::new(Observed {
            inventory: Inventory {
                node: node.clone(),
                boot_id: Uuid::nil(),
                seq: 1,
                taken_at: Timestamp(0),
                containers,
            },
            requested_index,
        }));
        n.observed_version += 1;
    }

    fn pool(&mut self, name: &str, min_warm: u32, edit: impl FnOnce(&mut PoolSpec)) -> PoolName {
        let mut spec = PoolSpec::new(pname(name), "img");
        spec.min_warm = min_warm;
        edit(&mut spec);
        self.apply(Command::PutPool { spec });
        pname(name)
    }

    /// Plays the runner: proposals are applied (then their follow-ups run), sends recorded.
    fn carry_out(&mut self, engine: &mut Engine, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Propose { cmd, then } => {
                    if !matches!(self.apply(cmd), Response::Rejected(_)) {
                        self.carry_out(engine, then);
                    }
                }
                Effect::Send { node, cmd } => {
                    engine.track_send(&node, &cmd, self.now());
                    self.sent.push((node, cmd));
                }
                Effect::Pull(node) => self.pulls.push(node),
            }
        }
    }

    /// One whole step, carried out duty by duty (a duty part by part) as the runner does.
    fn step(&mut self, engine: &mut Engine) {
        for duty in Duty::ALL {
            loop {
                let effects = engine.decide(duty, &self.state, &self.facts, self.now());
                self.carry_out(engine, effects);
                if !engine.unfinished(duty) {
                    break;
                }
            }
        }
    }

    fn engine(&self) -> Engine {
        Engine::new(&self.state, Config::default(), self.now())
    }

    fn entry(&self, id: ContainerId, health: Health) -> InventoryEntry {
        let c = self.state.container(&id).expect("a record");
        InventoryEntry {
            id,
            pool: c.pool.clone(),
            generation: c.generation,
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

    fn creates(&self) -> Vec<ContainerId> {
        self.sent
            .iter()
            .filter_map(|(_, c)| match c {
                AgentCommand::Create(spec) => Some(spec.id),
                _ => None,
            })
            .collect()
    }

    fn of_state(&self, state: ContainerState) -> Vec<ContainerId> {
        self.state
            .containers()
            .filter(|c| c.state == state)
            .map(|c| c.id)
            .collect()
    }

    /// Makes every creating container warm on `node`, as its agent would report.
    fn all_warm(&mut self, engine: &mut Engine, node: &NodeId) {
        let entries: Vec<_> = self
            .state
            .containers_on(node)
            .filter(|c| c.state.is_live())
            .map(|c| c.id)
            .collect::<Vec<_>>()
            .into_iter()
            .map(|id| self.entry(id, Health::Healthy))
            .collect();
        self.inventory(node, entries);
        self.step(engine);
    }

    fn allocate(&mut self, pool: &PoolName) -> AllocationId {
        let allocation_id = AllocationId::new();
        let r = self.apply(Command::Allocate {
            allocation_id,
            pool: pool.clone(),
            session: SessionId::new("s").unwrap(),
            lease_ms: 60_000,
            idempotency_key: None,
            wait_ms: 0,
            tenant: Default::default(),
            metadata: Default::default(),
            with_settings: false,
            workspace: None,
            token_sha256: None,
            asynchronous: false,
            location: None,
            max_lifetime_secs: None,
        });
        assert!(matches!(r, Response::Allocation { .. }), "{r:?}");
        allocation_id
    }
}

fn planned(effects: &[Effect]) -> Vec<(ContainerId, NodeId)> {
    effects
        .iter()
        .flat_map(|e| match e {
            Effect::Propose {
                cmd: Command::PlanContainers { placements, .. },
                ..
            } => placements.clone(),
            _ => vec![],
        })
        .collect()
}

#[test]
fn a_new_pool_is_planned_and_its_creates_follow_the_commit() {
    let mut w = World::new();
    let n = w.node("n1");
    w.pool("demo", 2, |_| {});
    let mut e = w.engine();
    let effects = e.decide(Duty::KeepWarm, &w.state, &w.facts, w.now());
    let plan = planned(&effects);
    assert_eq!(plan.len(), 2, "{effects:?}");
    // The creates are follow-ups of the plan, not sent on their own: a plan that is never
    // committed sends nothing.
    let [Effect::Propose { then, .. }] = &effects[..] else {
        panic!("one proposal: {effects:?}");
    };
    let sends: Vec<_> = then
        .iter()
        .map(|t| match t {
            Effect::Send {
                node,
                cmd: AgentCommand::Create(spec),
            } => (spec.id, node.clone()),
            other => panic!("only creates follow: {other:?}"),
        })
        .collect();
    assert_eq!(sends, plan);
    assert!(plan.iter().all(|(_, node)| node == &n));
    w.carry_out(&mut e, effects);
    assert_eq!(w.creates().len(), 2);
    // The next step sends nothing again while the creates are in flight.
    w.advance(0.1);
    w.step(&mut e);
    assert_eq!(w.creates().len(), 2, "{:?}", w.sent);
}

#[test]
fn a_leadership_change_mid_create_leaves_no_orphan_and_no_double_create() {
    // The old leader's plan is committed, but it dies before its creates go out.
    let mut w = World::new();
    let n = w.node("n1");
    let pool = w.pool("demo", 2, |_| {});
    let mut old = w.engine();
    let effects = old.decide(Duty::KeepWarm, &w.state, &w.facts, w.now());
    let plan = planned(&effects);
    for e in effects {
        if let Effect::Propose { cmd, .. } = e {
            w.apply(cmd); // committed; the follow-ups are lost with the leader
        }
    }
    drop(old);
    w.facts.nodes.values_mut().for_each(|n| n.observed = None);
    w.inventory(&n, vec![]);

    // The new leader plans nothing more and sends the planned containers, by the same ids.
    w.advance(1.0);
    let mut new = w.engine();
    w.step(&mut new);
    let ids: Vec<_> = plan.iter().map(|(id, _)| *id).collect();
    assert_eq!(w.creates(), ids, "{:?}", w.sent);
    assert_eq!(w.state.containers().count(), 2, "no second plan");
    // Not again while in flight; again, by the same ids, after the resend interval.
    w.advance(1.0);
    w.step(&mut new);
    assert_eq!(w.creates().len(), 2);
    w.advance(CREATE_RESEND_MS as f64 / 1000.0 + 1.0);
    w.step(&mut new);
    assert_eq!(w.creates(), [ids.clone(), ids.clone()].concat());

    // The agent made them (whichever create reached it): they are observed, never doubled.
    w.all_warm(&mut new, &n);
    assert_eq!(w.of_state(ContainerState::Warm).len(), 2);
    let before = w.sent.len();
    w.advance(1.0);
    w.step(&mut new);
    assert_eq!(w.sent.len(), before, "settled: {:?}", &w.sent[before..]);

    // A container the agent has but the state never planned (say, made from a plan that a
    // new term refused) is an orphan: destroyed.
    let stray = ContainerId::new();
    let mut entries: Vec<_> = ids.iter().map(|id| w.entry(*id, Health::Healthy)).collect();
    let mut orphan = entries[0].clone();
    orphan.id = stray;
    entries.push(orphan);
    w.inventory(&n, entries);
    w.advance(0.5);
    w.step(&mut new);
    assert!(
        w.sent
            .iter()
            .any(|(_, c)| matches!(c, AgentCommand::Destroy { id, .. } if *id == stray)),
        "{:?}",
        w.sent
    );
    assert_eq!(w.creates().len(), 4, "nothing else created");
    let _ = pool;
}

#[test]
fn a_plan_that_never_commits_sends_nothing_and_a_new_leader_plans_afresh() {
    let mut w = World::new();
    w.node("n1");
    w.pool("demo", 1, |_| {});
    let mut old = w.engine();
    let lost = planned(&old.decide(Duty::KeepWarm, &w.state, &w.facts, w.now()));
    drop(old); // the proposal never committed
    let mut new = w.engine();
    w.step(&mut new);
    let creates = w.creates();
    assert_eq!(creates.len(), 1);
    assert_ne!(creates[0], lost[0].0, "the uncommitted id is never sent");
}

#[test]
fn failing_creates_back_the_pool_off_and_a_warm_container_clears_it() {
    let mut w = World::new();
    let n = w.node("n1");
    let pool = w.pool("demo", 1, |_| {});
    let mut e = w.engine();
    w.step(&mut e);
    let first = w.creates()[0];
    // The agent refuses the create.
    let effects = e.on_reply(
        &w.state,
        &n,
        Sent::Create(first),
        Ok(AgentReply::Error {
            message: "no such image".into(),
        }),
    );
    w.carry_out(&mut e, effects);
    assert_eq!(
        w.state.container(&first).map(|c| c.state),
        Some(ContainerState::Failed)
    );
    w.step(&mut e);
    let condition = w.state.pool_conditions().find(|(p, _)| **p == pool);
    assert!(condition.is_some(), "the pool's condition says why");
    assert_eq!(w.creates().len(), 1, "no create while backing off");
    // After the backoff (1 s after the first failure) it tries again.
    w.advance(1.5);
    w.step(&mut e);
    assert_eq!(w.creates().len(), 2);
    let second = w.creates()[1];
    w.all_warm(&mut e, &n);
    assert_eq!(
        w.state.container(&second).map(|c| c.state),
        Some(ContainerState::Warm)
    );
    w.step(&mut e);
    assert!(
        w.state.pool_conditions().all(|(p, _)| *p != pool),
        "cleared once a container is warm"
    );
}

#[test]
fn a_new_leader_resumes_a_backoff_from_the_state() {
    let mut w = World::new();
    let n = w.node("n1");
    w.pool("demo", 1, |_| {});
    let mut e = w.engine();
    w.step(&mut e);
    let id = w.creates()[0];
    let effects = e.on_reply(
        &w.state,
        &n,
        Sent::Create(id),
        Ok(AgentReply::Error {
            message: "x".into(),
        }),
    );
    w.carry_out(&mut e, effects);
    w.step(&mut e);
    drop(e);
    let mut new = w.engine();
    w.step(&mut new);
    assert_eq!(
        w.creates().len(),
        1,
        "the new leader waits out the backoff too"
    );
    w.advance(1.5);
    w.step(&mut new);
    assert_eq!(w.creates().len(), 2);
}

#[test]
fn leases_end_on_expiry_drain_and_idleness_once_each() {
    let mut w = World::new();
    let n = w.node("n1");
    let pool = w.pool("demo", 2, |s| s.idle_timeout_secs = Some(30));
    let mut e = w.engine();
    w.step(&mut e);
    w.all_warm(&mut e, &n);
    let a = w.allocate(&pool);
    let b = w.allocate(&pool);
    // `a` sees traffic; `b` does not.
    w.advance(20.0);
    let traffic = w.now().wall;
    let ca = w.state.allocation(&a).unwrap().container_id;
    let mut entries: Vec<_> = w
        .state
        .containers_on(&n)
        .map(|c| c.id)
        .collect::<Vec<_>>()
        .into_iter()
        .map(|id| w.entry(id, Health::Healthy))
        .collect();
    entries
        .iter_mut()
        .filter(|x| x.id == ca)
        .for_each(|x| x.last_activity_at = Some(traffic));
    w.inventory(&n, entries);
    w.advance(11.0);
    let effects = e.decide(Duty::Leases, &w.state, &w.facts, w.now());
    assert_eq!(
        effects,
        vec![Effect::propose(Command::Release {
            allocation_id: b,
            reason: ReleaseReason::Idle
        })]
    );
    // Past its lease (60 s), `a` expires: one release, for the first reason that applies.
    w.carry_out(&mut e, effects);
    w.advance(40.0);
    let effects = e.decide(Duty::Leases, &w.state, &w.facts, w.now());
    assert_eq!(
        effects,
        vec![Effect::propose(Command::Release {
            allocation_id: a,
            reason: ReleaseReason::Expired
        })]
    );
}

#[test]
fn an_unhealthy_allocated_container_is_restarted_once_and_the_restart_resent_if_lost() {
    let mut w = World::new();
    let n = w.node("n1");
    let pool = w.pool("demo", 1, |_| {});
    let mut e = w.engine();
    w.step(&mut e);
    w.all_warm(&mut e, &n);
    let a = w.allocate(&pool);
    let c = w.state.allocation(&a).unwrap().container_id;
    let sick = Health::Unhealthy {
        consecutive_failures: 3,
    };
    let entry = w.entry(c, sick);
    w.inventory(&n, vec![entry]);
    w.advance(0.5);
    w.step(&mut e);
    let restarts = |w: &World| {
        w.sent
            .iter()
            .filter(|(_, cmd)| matches!(cmd, AgentCommand::Restart { id } if *id == c))
            .count()
    };
    assert_eq!(restarts(&w), 1);
    assert!(w.state.container(&c).unwrap().restart_pending);
    w.advance(5.0);
    w.step(&mut e);
    assert_eq!(
        restarts(&w),
        1,
        "once, while the first may still be on its way"
    );
    w.advance(health::RESTART_RESEND.as_secs_f64() + 1.0);
    w.step(&mut e);
    assert_eq!(restarts(&w), 2, "asked again: the first was lost");
}

#[test]
fn a_destroy_answered_records_the_container_gone_and_pulls_the_inventory() {
    let mut w = World::new();
    let n = w.node("n1");
    let pool = w.pool("demo", 1, |_| {});
    let mut e = w.engine();
    w.step(&mut e);
    w.all_warm(&mut e, &n);
    let a = w.allocate(&pool);
    let c = w.state.allocation(&a).unwrap().container_id;
    w.apply(Command::Release {
        allocation_id: a,
        reason: ReleaseReason::Client,
    });
    w.step(&mut e);
    assert!(w
        .sent
        .iter()
        .any(|(_, cmd)| matches!(cmd, AgentCommand::Destroy { id, .. } if *id == c)));
    let effects = e.on_reply(
        &w.state,
        &n,
        Sent::Destroy(c),
        Ok(AgentReply::Destroyed { existed: true }),
    );
    assert!(effects.contains(&Effect::Pull(n.clone())));
    w.carry_out(&mut e, effects);
    assert!(!w.state.container(&c).is_some_and(|c| c.state.is_live()));
    // An undelivered destroy is free to go again.
    let effects = e.on_reply(
        &w.state,
        &n,
        Sent::Destroy(c),
        Err(AgentError::Timeout(n.clone(), Duration::from_secs(1))),
    );
    assert!(effects.is_empty());
}

#[test]
fn answers_that_queue_up_are_recorded_in_one_write_and_one_pull_per_node() {
    let mut w = World::new();
    let n = w.node("n1");
    let pool = w.pool("demo", 3, |_| {});
    let mut e = w.engine();
    w.step(&mut e);
    w.all_warm(&mut e, &n);
    let ids: Vec<ContainerId> = (0..3)
        .map(|_| {
            let a = w.allocate(&pool);
            w.apply(Command::Release {
                allocation_id: a,
                reason: ReleaseReason::Client,
            });
            w.state.allocation(&a).unwrap().container_id
        })
        .collect();
    w.step(&mut e);
    // Three destroys answered, and a create the agent refused, all at once.
    let refused = ContainerId::new();
    let mut answers: Vec<_> = ids
        .iter()
        .map(|id| {
            (
                n.clone(),
                Sent::Destroy(*id),
                Ok(AgentReply::Destroyed { existed: true }),
            )
        })
        .collect();
    answers.push((
        n.clone(),
        Sent::Create(refused),
        Ok(AgentReply::Error {
            message: "no such image".into(),
        }),
    ));
    let effects = e.on_replies(&w.state, answers);
    let [Effect::Propose {
        cmd: Command::ContainersGone { gone },
        then,
    }, Effect::Pull(pulled)] = &effects[..]
    else {
        panic!("one write and one pull: {effects:?}");
    };
    assert!(then.is_empty());
    assert_eq!(pulled, &n);
    let mut recorded: Vec<ContainerId> = gone.iter().map(|(id, _)| *id).collect();
    recorded.sort();
    let mut expected = ids.clone();
    expected.push(refused);
    expected.sort();
    assert_eq!(recorded, expected);
    w.carry_out(&mut e, effects);
    assert!(ids
        .iter()
        .all(|id| !w.state.container(id).is_some_and(|c| c.state.is_live())));
}

#[test]
fn no_node_is_judged_while_the_leader_cannot_hear_nats() {
    let mut w = World::new();
    w.node("n1");
    let mut e = w.engine();
    w.facts.link.connected = false;
    // Silence far past the node timeout, heard by nobody.
    w.secs += 60.0;
    let effects = e.decide(Duty::Liveness, &w.state, &w.facts, w.now());
    assert!(effects.is_empty(), "{effects:?}");
    w.facts.link = crate::agents::NatsLink {
        connected: true,
        since: Some(w.now().mono),
    };
    let effects = e.decide(Duty::Liveness, &w.state, &w.facts, w.now());
    assert!(
        !effects.iter().any(|e| matches!(
            e,
            Effect::Propose {
                cmd: Command::NodeDown { .. },
                ..
            }
        )),
        "a full grace after the link returns: {effects:?}"
    );
}

#[test]
fn demand_grows_the_pool_and_the_growth_is_written() {
    let mut w = World::new();
    let n = w.node("n1");
    let pool = w.pool("demo", 2, |s| {
        s.max_warm = Some(20);
        s.scaling.target_hit_rate = Some(0.99);
    });
    let mut e = w.engine();
    w.step(&mut e);
    w.all_warm(&mut e, &n);
    for _ in 0..30 {
        w.advance(0.1);
        let _ = w.apply(Command::plain_allocate(
            pool.clone(),
            SessionId::new("s").unwrap(),
            60_000,
        ));
        let effects = e.decide(Duty::Scale, &w.state, &w.facts, w.now());
        w.carry_out(&mut e, effects);
    }
    let wanted = w.state.wanted(w.state.pool(&pool).unwrap());
    assert!(
        wanted > 2,
        "the scaler asked for more than the floor: {wanted}"
    );
}

#[test]
fn an_unanswered_allocation_is_released_after_the_grace_unless_its_client_comes_back() {
    let mut w = World::new();
    let n = w.node("n1");
    let pool = w.pool("demo", 4, |_| {});
    let mut e = w.engine();
    w.step(&mut e);
    w.all_warm(&mut e, &n);
    let allocate = |w: &mut World, id: AllocationId, key: &str| {
        w.apply(Command::Allocate {
            allocation_id: id,
            pool: pool.clone(),
            session: SessionId::new("s").unwrap(),
            lease_ms: 600_000,
            idempotency_key: Some(key.to_string()),
            wait_ms: 0,
            tenant: Default::default(),
            metadata: Default::default(),
            with_settings: false,
            token_sha256: None,
            workspace: None,
            asynchronous: false,
            location: None,
            max_lifetime_secs: None,
        })
    };
    let abandon = |w: &mut World, id: AllocationId, key: &str| {
        w.apply(Command::Abandon {
            allocation_id: id,
            grace_ms: 10_000,
            idempotency_key: Some(key.to_string()),
            tenant: Default::default(),
        })
    };
    // Nobody came back for `gone`. `back` was asked for again after its abandonment, `early`
    // before it (the order two members' writes may land in). `again` was asked for again,
    // and that request went unanswered too.
    let [gone, back, early, again] = [(); 4].map(|_| AllocationId::new());
    for (id, key) in [
        (gone, "k-gone"),
        (back, "k-back"),
        (early, "k-early"),
        (again, "k-again"),
    ] {
        assert!(matches!(
            allocate(&mut w, id, key),
            Response::Allocation { .. }
        ));
    }
    abandon(&mut w, gone, "k-gone");
    abandon(&mut w, back, "k-back");
    let replay = allocate(&mut w, AllocationId::new(), "k-back");
    assert!(
        matches!(&replay, Response::Allocation { allocation, replayed: true } if allocation.id == back),
        "{replay:?}"
    );
    allocate(&mut w, AllocationId::new(), "k-early");
    abandon(&mut w, early, "k-early");
    abandon(&mut w, again, "k-again");
    let lost_replay = AllocationId::new();
    allocate(&mut w, lost_replay, "k-again");
    abandon(&mut w, lost_replay, "k-again");
    // An older request's abandonment, landing after a newer claim, changes nothing.
    abandon(&mut w, back, "k-back");
    // An abandonment that lands before its allocate: the allocate is refused when applied.
    let late = AllocationId::new();
    abandon(&mut w, late, "k-late");
    assert!(matches!(
        allocate(&mut w, late, "k-late"),
        Response::Rejected(_)
    ));
    assert!(w.state.allocation(&late).is_none());

    w.advance(9.0);
    assert_eq!(e.decide(Duty::Leases, &w.state, &w.facts, w.now()), vec![]);
    w.advance(2.0);
    let effects = e.decide(Duty::Leases, &w.state, &w.facts, w.now());
    let mut released: Vec<_> = effects
        .iter()
        .map(|e| match e {
            Effect::Propose {
                cmd:
                    Command::Release {
                        allocation_id,
                        reason: ReleaseReason::Abandoned,
                    },
                ..
            } => *allocation_id,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    released.sort();
    let mut want = vec![gone, again];
    want.sort();
    assert_eq!(released, want);
    w.carry_out(&mut e, effects);
    for id in [gone, again] {
        assert_eq!(
            w.state.allocation(&id).unwrap().release_reason,
            Some(ReleaseReason::Abandoned)
        );
    }
    for id in [back, early] {
        assert_eq!(
            w.state.allocation(&id).unwrap().state,
            AllocationState::Active
        );
    }
    assert_eq!(e.decide(Duty::Leases, &w.state, &w.facts, w.now()), vec![]);
}

#[test]
fn the_record_of_commands_in_flight_stays_bounded_over_many_cycles() {
    let mut w = World::new();
    let n = w.node("n1");
    let pool = w.pool("demo", 2, |_| {});
    let mut e = w.engine();
    w.step(&mut e);
    w.all_warm(&mut e, &n);
    let mut answered = w.sent.len();
    for cycle in 0..300 {
        let a = w.allocate(&pool);
        w.apply(Command::Release {
            allocation_id: a,
            reason: ReleaseReason::Client,
        });
        w.step(&mut e);
        // The agent answers every destroy sent since: one in three is lost on the way (the
        // request times out) and sent again later.
        let sent: Vec<_> = w.sent[answered..].to_vec();
        answered = w.sent.len();
        for (i, (node, cmd)) in sent.into_iter().enumerate() {
            let AgentCommand::Destroy { id, .. } = cmd else {
                continue;
            };
            let reply = if (cycle + i) % 3 == 0 {
                Err(AgentError::Timeout(node.clone(), Duration::from_secs(1)))
            } else {
                Ok(AgentReply::Destroyed { existed: true })
            };
            let effects = e.on_reply(&w.state, &node, Sent::Destroy(id), reply);
            w.carry_out(&mut e, effects);
        }
        w.advance(1.0);
        // The agent's inventory: what still runs, the replacement made warm.
        w.all_warm(&mut e, &n);
        assert!(
            e.inflight.creates.len() <= 2 && e.inflight.destroys.len() <= 2,
            "cycle {cycle}: {} creates and {} destroys in flight",
            e.inflight.creates.len(),
            e.inflight.destroys.len()
        );
    }
    w.all_warm(&mut e, &n);
    assert_eq!(w.state.pool_counts(&pool).warm, 2, "the pool kept its size");
}

#[test]
fn a_large_fleet_is_reconciled_in_parts_each_on_a_fresh_read() {
    // A committed plan (two containers on each of three nodes of four) whose creates were
    // lost with its leader: reconciliation sends them.
    let mut w = World::new();
    let nodes: Vec<NodeId> = (1..=4).map(|i| w.node(&format!("n{i}"))).collect();
    let pool = w.pool("demo", 0, |spec| spec.max_total = 10);
    let generation = w.state.pool(&pool).expect("the pool").generation;
    let plan: Vec<(ContainerId, NodeId)> = nodes[..3]
        .iter()
        .flat_map(|n| {
            [
                (ContainerId::new(), n.clone()),
                (ContainerId::new(), n.clone()),
            ]
        })
        .collect();
    let r = w.apply(Command::PlanContainers {
        pool,
        generation,
        placements: plan.clone(),
    });
    assert!(!matches!(r, Response::Rejected(_)), "{r:?}");
    let with_records: Vec<&NodeId> = nodes[..3].iter().collect();
    assert!(with_records
        .iter()
        .all(|n| w.state.live_containers_on_count(n) == 2));
    // A budget of one record per read: each read compares one node that has any.
    let mut e = Engine::new(
        &w.state,
        Config {
            reconcile_read_budget: 1,
            ..Config::default()
        },
        w.now(),
    );
    let mut reads = 0;
    let mut created = Vec::new();
    loop {
        reads += 1;
        let effects = e.decide(Duty::Reconcile, &w.state, &w.facts, w.now());
        let mut nodes_sent: Vec<&NodeId> = Vec::new();
        for effect in &effects {
            if let Effect::Send {
                node,
                cmd: AgentCommand::Create(spec),
            } = effect
            {
                nodes_sent.push(node);
                created.push(spec.id);
            }
        }
        nodes_sent.dedup();
        assert!(nodes_sent.len() <= 1, "one node per read: {effects:?}");
        w.carry_out(&mut e, effects);
        if reads == 1 {
            // A write between two reads is seen by the next: the last node's containers are
            // retired, and their creates are not sent.
            let last = with_records.last().expect("a node");
            let ids: Vec<ContainerId> = w.state.containers_on(last).map(|c| c.id).collect();
            w.apply(Command::RetireContainers {
                ids,
                reason: warmpool_proto::ContainerEndReason::ScaleDown,
                timed: true,
            });
        }
        if !e.unfinished(Duty::Reconcile) {
            break;
        }
    }
    // One read per node: each with records fills the budget, so the next node waits for the
    // next read. The retired node's read found its records were never made and sent no
    // create.
    assert_eq!(reads, nodes.len());
    let last = with_records.last().expect("a node");
    let mut expected: Vec<ContainerId> = plan
        .iter()
        .filter(|(_, n)| n != *last)
        .map(|(id, _)| *id)
        .collect();
    expected.sort();
    created.sort();
    assert_eq!(created, expected, "each create sent once");
    // The next pass starts over from the first node, and everything is in flight now.
    let effects = e.decide(Duty::Reconcile, &w.state, &w.facts, w.now());
    assert!(
        !effects.iter().any(|e| matches!(
            e,
            Effect::Send {
                cmd: AgentCommand::Create(_),
                ..
            }
        )),
        "{effects:?}"
    );
}
