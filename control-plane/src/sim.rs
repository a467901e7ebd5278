//! The leader's [`Engine`] and the replicated state machine, replayed against a simulated
//! fleet on a virtual clock: what `poolctl simulate` runs.
//!
//! Nothing here decides what a pool does. Every rule (scaling, keep-warm, pacing, placement,
//! the allocation queue, leases, the paused tier) is the control plane's own code: arrivals
//! are [`Command::Allocate`]s applied to a [`PoolState`], and the leader's steps are the
//! [`Engine`]'s, its effects carried out as the runner in [`crate::leader`] carries them out.
//! What is simulated is only what lies outside the control plane:
//!
//! - **The clock.** Virtual milliseconds; the leader steps as its loop does: after anything
//!   happens (a write, an agent's report, an answer), at most every
//!   [`Config::min_step`], and at least every [`Config::tick`].
//! - **Requesters.** An arrival asks with the model's `wait_ms`; one that is queued gives up
//!   with a [`Command::CancelWait`] when its time is up, as the API's handler does; a granted
//!   one releases its container after its hold.
//! - **The fleet.** One node, with room for the model's `fleet_slots` containers of the pool
//!   (or unbounded), whose agent starts at most `create_slots` containers at once, first asked
//!   first served. A started container is running and healthy after a warm-up time drawn from
//!   the model; a destroyed one is gone after a teardown time, at most `destroy_slots` at once.
//!   The agent's inventory is always
//!   current in the leader's view (a real one arrives within a heartbeat). Pauses and unpauses
//!   take no time.
//!
//! The report is [`SimReport`], with the costs integrated over the trace's span from what the
//! simulated host runs: a warm container that was retired costs until it is torn down.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use warmpool_policy::rng::Rng;
use warmpool_policy::{Draws, PoolModel, SimReport, Trace, WarmTime};
use warmpool_proto::agent::{
    AgentCommand, AgentReply, Heartbeat, Inventory, InventoryEntry, ObservedStatus, Usage,
};
use warmpool_proto::records::{ReleaseReason, Resources, Tier};
use warmpool_proto::{
    AllocationId, ContainerEndReason, ContainerId, ContainerState, Health, NodeId, PoolName,
    PoolSpec, SessionId, Timestamp,
};

use crate::agents::{NatsLink, NodeSoft};
use crate::engine::{Config, Duty, Effect, Engine, Facts, Now, Sent};
use crate::placement::Overcommit;
use crate::reconcile::Observed;
use crate::state::{Command, PoolState, Request, Response, Retention, RETENTION_MIN};

/// The simulated node's id.
const NODE: &str = "sim-1";

/// Replays `trace` on a pool with `spec`, in a fleet and with requesters as `model` says;
/// warm-up and teardown times are drawn with `model.seed`.
///
/// Everything about the pool (sizes, batches, pacing, tiers, policy) is the spec's, applied by
/// the control plane's own rules. The model's `start_warm` containers (or the pool's first
/// wanted count) are warm at the start, and the pool's paused tier is full; with `model.before.since_ms`
/// the replay begins there, as the pool's history did, so the scaler has watched the quiet
/// time before the first arrival, and the starting containers warm in the measured times.
pub fn simulate(trace: &Trace, model: &PoolModel, spec: &PoolSpec) -> SimReport {
    Sim::new(trace, model, spec).run()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    /// A container's warm-up ends: it runs and is healthy.
    Warm(ContainerId),
    /// A container's teardown ends: it is gone, and its destroy is answered.
    TornDown(ContainerId),
    /// A granted allocation's hold ends: it is released.
    Release(AllocationId),
    /// A queued allocation's wait ends.
    Deadline(AllocationId),
    /// The trace's `i`th arrival.
    Arrive(usize),
}

/// A container on the simulated host.
struct Held {
    entry: InventoryEntry,
    /// Being torn down.
    removing: bool,
}

/// The simulated node's agent.
struct Agent {
    node: NodeId,
    containers: BTreeMap<ContainerId, Held>,
    /// Creates waiting for a slot, in the order asked.
    queue: VecDeque<(ContainerId, PoolName, u64)>,
    /// Started and not yet warm.
    starting: u32,
    slots: Option<u32>,
    /// Destroys waiting for a slot, in the order asked.
    removals: VecDeque<ContainerId>,
    /// Being removed now.
    removing: u32,
    destroy_slots: Option<u32>,
    /// What the node offers (as its heartbeat says).
    capacity: Resources,
    /// Bumped whenever the inventory changes.
    version: u64,
}

impl Agent {
    fn changed(&mut self) {
        self.version += 1;
    }

    fn inventory(&self, now: Timestamp) -> Inventory {
        Inventory {
            node: self.node.clone(),
            boot_id: uuid::Uuid::nil(),
            seq: self.version,
            taken_at: now,
            containers: self.containers.values().map(|h| h.entry.clone()).collect(),
        }
    }
}

/// A requester.
struct Asker {
    at: u64,
    hold: u64,
}

struct Sim<'a> {
    trace: &'a Trace,
    model: &'a PoolModel,
    pool: PoolName,
    state: PoolState,
    index: u64,
    engine: Engine,
    config: Config,
    agent: Agent,
    rng: Rng,
    /// The model's warm-up and teardown times, drawn over this run.
    warm_ups: Draws<'a>,
    teardowns: Option<Draws<'a>>,
    t0: Instant,
    origin: u64,
    now: u64,
    events: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    seq: u64,
    next_step: u64,
    last_step: u64,
    /// Something happened since the last step began.
    dirty: bool,
    /// Answers of the agent not yet given to the engine.
    replies: Vec<(NodeId, Sent, Result<AgentReply, crate::agents::AgentError>)>,
    askers: HashMap<AllocationId, Asker>,
    /// Queued allocations.
    waiting: Vec<AllocationId>,
    waits: Vec<u64>,
    r: SimReport,
    wanted_integral: f64,
    /// Counting what the engine does (not the starting pool).
    counting: bool,
    /// The node's inventory as of an agent version, reused while the agent's containers do
    /// not change.
    seen: Option<(u64, Arc<Observed>)>,
    /// The last [`Sim::tally`], with what it was counted from.
    tallied: Option<(TallyKey, Tally)>,
}

/// Idle warm, paused, allocated, and being made.
type Tally = (u32, u32, u32, u32);

/// What a tally is counted from: the state (its index), and the agent's containers: its
/// version (bumped when one is added, removed, warm or paused), its queue (which a create
/// joins without a bump), and how many are starting (which drops, without a bump, when a
/// starting one is destroyed).
type TallyKey = (u64, u64, usize, u32);

impl<'a> Sim<'a> {
    fn new(trace: &'a Trace, model: &'a PoolModel, spec: &PoolSpec) -> Self {
        let start = trace.start_ms;
        let origin = model.before.since_ms.map_or(start, |t| t.min(start));
        let node = NodeId::new(NODE).expect("a valid node id");
        let config = Config::default();
        let capacity = capacity_for(
            model.fleet_slots,
            (spec.resources.cpu_millis, spec.resources.memory_mb),
            Overcommit::default(),
        );
        // The node and the pool, before the engine's term begins.
        let setup = [
            // The replay reads nothing old: ended records are let go soon, so that a long
            // replay's state stays as small as its first minutes'.
            Command::SetRetention {
                retention: Retention {
                    events: 1_000,
                    ended_containers: RETENTION_MIN,
                    released_allocations: RETENTION_MIN,
                },
            },
            Command::NodeJoin {
                node: node.clone(),
                ipv6_prefix: "fd36:5::/64".into(),
                labels: Default::default(),
                capacity,
                agent_version: "simulated".into(),
            },
            Command::PutPool { spec: spec.clone() },
        ];
        let mut state = PoolState::default();
        let mut index = 0;
        for cmd in setup {
            index += 1;
            let at = Timestamp(origin);
            state.apply(index, Request { at, cmd });
        }
        let t0 = Instant::now();
        let engine = Engine::new(
            &state,
            config.clone(),
            Now {
                mono: t0,
                wall: Timestamp(origin),
            },
        );
        let mut sim = Sim {
            trace,
            model,
            pool: spec.name.clone(),
            state,
            index,
            engine,
            config,
            agent: Agent {
                node,
                containers: BTreeMap::new(),
                queue: VecDeque::new(),
                starting: 0,
                slots: model.create_slots.map(|k| k.max(1)),
                removals: VecDeque::new(),
                removing: 0,
                destroy_slots: model.destroy_slots.map(|k| k.max(1)),
                capacity,
                version: 1,
            },
            rng: Rng::new(model.seed),
            warm_ups: model.warm_time.draws(),
            teardowns: model.teardown_time.as_ref().map(WarmTime::draws),
            t0,
            origin,
            now: origin,
            events: BinaryHeap::new(),
            seq: 0,
            next_step: origin,
            last_step: origin,
            dirty: false,
            replies: Vec::new(),
            askers: HashMap::new(),
            waiting: Vec::new(),
            waits: Vec::new(),
            r: SimReport::empty(trace.duration_ms() as f64 / 1000.0),
            wanted_integral: 0.0,
            counting: false,
            seen: None,
            tallied: None,
        };
        sim.seed_pool(spec);
        sim
    }

    /// The starting pool: its warm containers and its full paused tier, made outside the
    /// engine (which then sees them as it would see any).
    fn seed_pool(&mut self, spec: &PoolSpec) {
        let Some(pool) = self.state.pool(&self.pool) else {
            return;
        };
        let generation = pool.generation;
        let warm = self
            .model
            .start_warm
            .unwrap_or_else(|| self.state.wanted(pool));
        let paused = warmpool_policy::rules::paused_wanted(spec);
        let room = self.model.fleet_slots.unwrap_or(u32::MAX);
        let n = warm.saturating_add(paused).min(spec.max_total).min(room);
        if n == 0 {
            return;
        }
        let placements: Vec<_> = (0..n)
            .map(|_| (ContainerId::new(), self.agent.node.clone()))
            .collect();
        self.apply(Command::PlanContainers {
            pool: self.pool.clone(),
            generation,
            placements: placements.clone(),
        });
        // Warm by the first arrival, in the warm-up times measured before it when there are
        // any (the scaler counts them as it counted them live).
        let lead = self.trace.start_ms - self.origin;
        let measured = &self.model.before.warm_times_ms;
        for (i, (id, _)) in placements.into_iter().enumerate() {
            let warm_in = measured
                .get(i % measured.len().max(1))
                .map_or(0, |ms| (*ms).min(lead));
            self.agent.containers.insert(
                id,
                Held {
                    entry: entry(id, &self.pool, generation, ObservedStatus::Starting),
                    removing: false,
                },
            );
            self.agent.starting += 1;
            self.schedule(self.origin + warm_in, Ev::Warm(id));
        }
        self.agent.changed();
    }

    fn clock(&self) -> Now {
        let d = Duration::from_millis(self.now - self.origin);
        Now {
            mono: self.t0 + d,
            wall: Timestamp(self.now),
        }
    }

    fn schedule(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.events.push(Reverse((at, self.seq, ev)));
    }

    /// Applies `cmd` as a commit would, at the current time.
    fn apply(&mut self, cmd: Command) -> Response {
        self.index += 1;
        self.dirty = true;
        let at = Timestamp(self.now);
        self.state.apply(self.index, Request { at, cmd })
    }

    fn run(mut self) -> SimReport {
        let end = self.trace.end_ms;
        for (i, a) in self.trace.arrivals.iter().enumerate() {
            let at = a.at_ms.max(self.trace.start_ms);
            if at <= end {
                self.schedule(at, Ev::Arrive(i));
            }
        }
        loop {
            let next_event = self.events.peek().map(|Reverse((t, _, _))| *t);
            // At equal times, what happens goes before the leader's step.
            let (t, is_event) = match next_event {
                Some(e) if e <= self.next_step => (e, true),
                _ => (self.next_step, false),
            };
            if t > end {
                break;
            }
            self.advance(t);
            if is_event {
                let Some(Reverse((_, _, ev))) = self.events.pop() else {
                    continue;
                };
                self.handle(ev);
                self.answer();
                self.settle_waiters();
                if matches!(ev, Ev::Warm(_)) {
                    // A warm-up time is measured up to the write that recorded the container
                    // warm, so it holds the leader's reaction already: it is recorded now.
                    self.next_step = self.now;
                } else if self.dirty {
                    // The loop wakes, after its rest.
                    let rest_until = self.last_step + self.config.min_step.as_millis() as u64;
                    self.next_step = self.next_step.min(self.now.max(rest_until));
                }
            } else {
                self.step();
            }
        }
        self.advance(end);
        self.finish()
    }

    /// Moves the clock to `t`, integrating the costs over the trace's span.
    fn advance(&mut self, t: u64) {
        let from = self.now.max(self.trace.start_ms);
        if t > from {
            let dt = (t - from) as f64 / 1000.0;
            let (idle, paused, allocated, creating) = self.tally();
            if self.model.timeline {
                let since_start = from - self.trace.start_ms;
                warmpool_policy::sim::record_change(
                    &mut self.r.idle_timeline,
                    since_start,
                    idle.into(),
                );
            }
            self.r.idle_container_seconds += f64::from(idle) * dt;
            self.r.paused_container_seconds += f64::from(paused) * dt;
            self.r.allocated_container_seconds += f64::from(allocated) * dt;
            self.r.creating_container_seconds += f64::from(creating) * dt;
            if let Some(pool) = self.state.pool(&self.pool) {
                self.wanted_integral += f64::from(self.state.wanted(pool)) * dt;
            }
        }
        self.now = self.now.max(t);
        if !self.counting && self.now >= self.trace.start_ms {
            self.counting = true;
            if let Some(pool) = self.state.pool(&self.pool) {
                self.r.max_wanted = self.state.wanted(pool);
            }
        }
    }

    /// What the host runs now: idle warm, paused, allocated, and being made (waiting for a
    /// slot or starting). Counted again only when what it counts from has changed: the clock
    /// moves far more often than the state or the agent.
    fn tally(&mut self) -> Tally {
        let key = (
            self.index,
            self.agent.version,
            self.agent.queue.len(),
            self.agent.starting,
        );
        if let Some((k, t)) = self.tallied {
            if k == key {
                return t;
            }
        }
        let t = self.count_running();
        self.tallied = Some((key, t));
        t
    }

    fn count_running(&self) -> Tally {
        let (mut idle, mut paused, mut allocated) = (0, 0, 0);
        let mut creating = self.agent.queue.len() as u32;
        for (id, h) in &self.agent.containers {
            if h.entry.status == ObservedStatus::Starting {
                creating += 1;
                continue;
            }
            let Some(c) = self.state.container(id) else {
                continue;
            };
            match c.state {
                ContainerState::Allocated => allocated += 1,
                _ if h.entry.paused => paused += 1,
                ContainerState::Warm => idle += 1,
                // Retired while warm: it runs until it is torn down.
                ContainerState::Releasing
                    if matches!(
                        c.reason,
                        Some(
                            ContainerEndReason::ScaleDown
                                | ContainerEndReason::SpecChanged
                                | ContainerEndReason::Drain
                        )
                    ) =>
                {
                    idle += 1
                }
                _ => {}
            }
        }
        (idle, paused, allocated, creating)
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Arrive(i) => self.arrive(i),
            Ev::Deadline(id) => {
                if let Some(i) = self.waiting.iter().position(|w| *w == id) {
                    self.waiting.remove(i);
                    match self.apply(Command::CancelWait { allocation_id: id }) {
                        Response::Allocation { allocation, .. } => {
                            self.granted(id, allocation.tier)
                        }
                        _ => self.r.refused += 1,
                    }
                }
            }
            Ev::Release(id) => {
                self.apply(Command::Release {
                    allocation_id: id,
                    reason: ReleaseReason::Client,
                });
            }
            Ev::Warm(id) => {
                let Some(h) = self.agent.containers.get_mut(&id) else {
                    return;
                };
                if h.entry.status != ObservedStatus::Starting {
                    return;
                }
                h.entry.status = ObservedStatus::Running;
                h.entry.health = Health::Healthy;
                self.agent.starting -= 1;
                self.agent.changed();
                self.start_queued();
            }
            Ev::TornDown(id) => {
                self.agent.removing -= 1;
                self.start_removals();
                if self.agent.containers.remove(&id).is_some() {
                    self.agent.changed();
                    self.replies.push((
                        self.agent.node.clone(),
                        Sent::Destroy(id),
                        Ok(AgentReply::Destroyed { existed: true }),
                    ));
                }
            }
        }
    }

    fn arrive(&mut self, i: usize) {
        let a = &self.trace.arrivals[i];
        let id = AllocationId::new();
        self.askers.insert(
            id,
            Asker {
                at: self.now,
                hold: a.hold_ms,
            },
        );
        self.r.arrivals += 1;
        let response = self.apply(Command::simple_allocate(
            id,
            self.pool.clone(),
            SessionId::new(format!("s-{i}")).expect("a valid session id"),
            // Released by the requester after its hold, never by the lease.
            a.hold_ms.saturating_add(3_600_000),
            self.model.wait_ms,
        ));
        match response {
            Response::Allocation { allocation, .. } => self.granted(id, allocation.tier),
            Response::Queued { .. } => {
                self.waiting.push(id);
                self.schedule(
                    self.now.saturating_add(self.model.wait_ms),
                    Ev::Deadline(id),
                );
            }
            _ => self.r.refused += 1,
        }
    }

    /// Allocation `id` got a container now.
    fn granted(&mut self, id: AllocationId, tier: Option<Tier>) {
        let Some(a) = self.askers.get(&id) else {
            return;
        };
        let (wait, hold) = (self.now - a.at, a.hold);
        self.r.allocations += 1;
        if wait == 0 {
            self.r.hits += 1;
            if tier == Some(Tier::Paused) {
                self.r.paused_hits += 1;
            }
        } else {
            self.r.waited += 1;
        }
        self.waits.push(wait);
        self.schedule(self.now.saturating_add(hold), Ev::Release(id));
    }

    /// Queued allocations the state has granted since.
    fn settle_waiters(&mut self) {
        let mut served = Vec::new();
        self.waiting.retain(|id| match self.state.allocation(id) {
            Some(a) => {
                served.push((*id, a.tier));
                false
            }
            None => true,
        });
        for (id, tier) in served {
            self.granted(id, tier);
        }
    }

    /// The engine's answers from the agent, and what it makes of them.
    fn answer(&mut self) {
        while !self.replies.is_empty() {
            let replies = std::mem::take(&mut self.replies);
            let effects = self.engine.on_replies(&self.state, replies);
            self.execute(effects);
        }
    }

    /// One step of the leader: every duty, each one's effects carried out before the next.
    fn step(&mut self) {
        self.dirty = false;
        self.last_step = self.now;
        let facts = self.facts();
        for duty in Duty::ALL {
            let mut effects = Vec::new();
            loop {
                effects.extend(self.engine.decide(duty, &self.state, &facts, self.clock()));
                if !self.engine.unfinished(duty) {
                    break;
                }
            }
            self.execute(effects);
        }
        self.answer();
        self.settle_waiters();
        let wait = if self.dirty {
            self.config.min_step
        } else {
            self.config.tick
        };
        self.next_step = self.now + (wait.as_millis() as u64).max(1);
    }

    fn facts(&mut self) -> Facts {
        let now = self.clock();
        let version = self.agent.version;
        let observed = match &self.seen {
            Some((v, observed)) if *v == version => observed.clone(),
            _ => {
                let observed = Arc::new(Observed {
                    inventory: self.agent.inventory(now.wall),
                    requested_index: self.index,
                });
                self.seen = Some((version, observed.clone()));
                observed
            }
        };
        let heartbeat = Heartbeat {
            node: self.agent.node.clone(),
            boot_id: uuid::Uuid::nil(),
            seq: self.agent.version,
            sent_at: now.wall,
            agent_version: "simulated".into(),
            ipv6_prefix: "fd36:5::/64".into(),
            labels: Default::default(),
            capacity: self.agent.capacity,
            usage: Usage::default(),
            containers: observed.inventory.containers.len() as u32,
            // Only the members' intake of heartbeats compares digests; the engine reads the
            // inventory itself.
            inventory_digest: 0,
            create_slots: self.agent.slots,
            runtime_unavailable: None,
            images: Vec::new(),
        };
        let soft = NodeSoft {
            heartbeat,
            received: now.mono,
            received_at: now.wall,
            observed: Some(observed),
            observed_digest: None,
            observed_version: self.agent.version,
            pull_wanted: false,
            boot_seen_at: Timestamp(self.origin),
            boots: Vec::new(),
            suspect_until: None,
        };
        Facts {
            nodes: HashMap::from([(self.agent.node.clone(), soft)]),
            link: NatsLink::default(),
            gone: Vec::new(),
        }
    }

    /// Carries out `effects` as the runner does: proposals applied in order, what follows a
    /// committed one after it; sends to the simulated agent.
    fn execute(&mut self, effects: Vec<Effect>) {
        let mut queue = VecDeque::from(effects);
        while let Some(effect) = queue.pop_front() {
            match effect {
                Effect::Propose { cmd, then } => {
                    self.count(&cmd);
                    if !matches!(self.apply(cmd), Response::Rejected(_)) {
                        queue.extend(then);
                    }
                }
                Effect::Send { node, cmd } => {
                    self.engine.track_send(&node, &cmd, self.clock());
                    let sent = Sent::of(&cmd);
                    if let Some(reply) = self.send(cmd) {
                        self.replies.push((node, sent, Ok(reply)));
                    }
                }
                // The leader's view of the inventory is always current here.
                Effect::Pull(_) => {}
            }
        }
    }

    /// What the engine did, for the report.
    fn count(&mut self, cmd: &Command) {
        if !self.counting {
            return;
        }
        match cmd {
            Command::PlanContainers { placements, .. } => self.r.created += placements.len() as u64,
            Command::RetireContainers { ids, .. } => self.r.retired += ids.len() as u64,
            Command::SetWanted { wanted, .. } => {
                self.r.scale_changes += 1;
                self.r.max_wanted = self.r.max_wanted.max(*wanted);
            }
            _ => {}
        }
    }

    /// The agent carries out `cmd`; its answer, when it answers at once.
    fn send(&mut self, cmd: AgentCommand) -> Option<AgentReply> {
        match cmd {
            AgentCommand::Create(spec) => {
                let known = self.agent.containers.contains_key(&spec.id)
                    || self.agent.queue.iter().any(|(id, _, _)| *id == spec.id);
                if !known {
                    self.agent
                        .queue
                        .push_back((spec.id, spec.pool.clone(), spec.generation));
                    self.start_queued();
                }
                Some(AgentReply::Accepted)
            }
            AgentCommand::Destroy { id, .. } => {
                if let Some(i) = self.agent.queue.iter().position(|(q, _, _)| *q == id) {
                    self.agent.queue.remove(i);
                    return Some(AgentReply::Destroyed { existed: false });
                }
                let Some(h) = self.agent.containers.get_mut(&id) else {
                    return Some(AgentReply::Destroyed { existed: false });
                };
                if !h.removing {
                    h.removing = true;
                    if h.entry.status == ObservedStatus::Starting {
                        h.entry.status = ObservedStatus::Exited;
                        self.agent.starting -= 1;
                        self.start_queued();
                    }
                    self.agent.removals.push_back(id);
                    self.start_removals();
                }
                // Answered when it is gone.
                None
            }
            AgentCommand::Pause { id } => {
                self.set_paused(id, true);
                Some(AgentReply::Paused)
            }
            AgentCommand::Unpause { id } => {
                self.set_paused(id, false);
                Some(AgentReply::Unpaused)
            }
            AgentCommand::Restart { .. } => Some(AgentReply::Restarted),
            _ => None,
        }
    }

    fn set_paused(&mut self, id: ContainerId, paused: bool) {
        if let Some(h) = self.agent.containers.get_mut(&id) {
            if h.entry.paused != paused {
                h.entry.paused = paused;
                self.agent.changed();
            }
        }
    }

    /// Starts waiting destroys while slots are free.
    fn start_removals(&mut self) {
        while self
            .agent
            .destroy_slots
            .is_none_or(|k| self.agent.removing < k)
        {
            let Some(id) = self.agent.removals.pop_front() else {
                return;
            };
            let gone_in = self
                .teardowns
                .as_mut()
                .map_or(0, |t| t.next(self.now, &mut self.rng));
            self.agent.removing += 1;
            self.schedule(self.now.saturating_add(gone_in), Ev::TornDown(id));
        }
    }

    /// Starts waiting creates while slots are free.
    fn start_queued(&mut self) {
        while self.agent.slots.is_none_or(|k| self.agent.starting < k) {
            let Some((id, pool, generation)) = self.agent.queue.pop_front() else {
                return;
            };
            let warm_in = self.warm_ups.next(self.now, &mut self.rng);
            self.agent.containers.insert(
                id,
                Held {
                    entry: entry(id, &pool, generation, ObservedStatus::Starting),
                    removing: false,
                },
            );
            self.agent.starting += 1;
            self.agent.changed();
            self.schedule(self.now.saturating_add(warm_in), Ev::Warm(id));
        }
    }

    fn finish(mut self) -> SimReport {
        self.r.close(self.waits, self.wanted_integral);
        self.r
    }
}

fn entry(
    id: ContainerId,
    pool: &PoolName,
    generation: u64,
    status: ObservedStatus,
) -> InventoryEntry {
    InventoryEntry {
        id,
        pool: pool.clone(),
        generation,
        docker_id: format!("sim-{id}"),
        // An address in the node's /64 (`fd36:5::/64`).
        ipv6: Some(std::net::Ipv6Addr::from(
            0xfd36_0005_0000_0000_0000_0000_0000_0000u128 | u128::from(id.0.as_u128() as u64),
        )),
        status,
        health: Health::Unknown,
        exit_code: None,
        oom_killed: false,
        last_activity_at: None,
        paused: false,
    }
}

/// A node whose allocatable resources hold `slots` containers of `per` (CPU millis, memory
/// MiB); unbounded for `None`.
fn capacity_for(slots: Option<u32>, per: (u64, u64), overcommit: Overcommit) -> Resources {
    const PLENTY: u64 = 1 << 32;
    let Some(slots) = slots else {
        return Resources {
            cpu_millis: PLENTY,
            memory_mb: PLENTY,
        };
    };
    // The least capacity whose allocatable part fits `slots` of each resource (one the pool
    // does not ask for is plenty).
    let least = |one: u64, factor: f64| {
        if one == 0 {
            return PLENTY;
        }
        let want = one.saturating_mul(u64::from(slots));
        let mut c = (want as f64 / factor).floor() as u64;
        while ((c as f64) * factor).floor() < want as f64 {
            c += 1;
        }
        c
    };
    Resources {
        cpu_millis: least(per.0, overcommit.cpu),
        memory_mb: least(per.1, overcommit.memory),
    }
}

#[cfg(test)]
mod tests {
    use warmpool_policy::{Arrival, Before};

    use super::*;

    fn spec(min_warm: u32) -> PoolSpec {
        let mut s = PoolSpec::new(PoolName::new("demo").unwrap(), "img");
        s.min_warm = min_warm;
        s
    }

    fn model(warm_ms: u64) -> PoolModel {
        PoolModel {
            warm_time: WarmTime::Fixed { ms: warm_ms },
            wait_ms: 5_000,
            seed: 1,
            ..PoolModel::default()
        }
    }

    fn trace(arrivals: &[(u64, u64)], end: u64) -> Trace {
        Trace::new(
            arrivals
                .iter()
                .map(|&(at_ms, hold_ms)| Arrival { at_ms, hold_ms })
                .collect(),
            0,
            end,
        )
    }

    fn close(a: f64, b: f64, within: f64) -> bool {
        (a - b).abs() <= within
    }

    /// A pool of 2, warm-up 1 s, over 10 s: A (hold 3 s) at 1 s and B (hold 1 s) at 1.5 s
    /// are served at once, and each is replaced. The leader's steps add milliseconds, not
    /// seconds: idle about 2·1 + 1·0.5 + 0·0.5 + 1·0.5 + 2·7.5 = 18 container-seconds,
    /// allocated exactly 3 + 1.
    #[test]
    fn warm_containers_serve_arrivals_at_once_and_are_replaced() {
        let r = simulate(
            &trace(&[(1_000, 3_000), (1_500, 1_000)], 10_000),
            &model(1_000),
            &spec(2),
        );
        assert_eq!(
            (r.arrivals, r.allocations, r.hits, r.refused),
            (2, 2, 2, 0),
            "{r:?}"
        );
        assert_eq!(r.hit_rate, 1.0);
        assert!(close(r.allocated_container_seconds, 4.0, 1e-9), "{r:?}");
        assert!(close(r.idle_container_seconds, 18.0, 0.2), "{r:?}");
        assert!(close(r.creating_container_seconds, 2.0, 0.2), "{r:?}");
        assert_eq!((r.created, r.retired, r.scale_changes), (2, 0, 0), "{r:?}");
        assert_eq!(r.duration_s, 10.0);
    }

    /// A pool of 1, warm-up 1 s: A takes the warm one at 1 s; B at 1.2 s waits in the
    /// state's queue, the pool makes one for it (it aims at wanted plus waiting) and B is
    /// served when that one is warm. With a 100 ms wait, B gives up instead.
    #[test]
    fn a_waiter_is_served_by_the_next_warm_container_or_gives_up_at_its_deadline() {
        let t = trace(&[(1_000, 5_000), (1_200, 5_000)], 10_000);
        let r = simulate(&t, &model(1_000), &spec(1));
        assert_eq!((r.hits, r.waited, r.refused), (1, 1, 0), "{r:?}");
        assert!(
            (800..1_100).contains(&r.wait_p99_ms),
            "B waits for a warm-up less the 200 ms since A, plus a step: {r:?}"
        );
        let impatient = PoolModel {
            wait_ms: 100,
            ..model(1_000)
        };
        let r = simulate(&t, &impatient, &spec(1));
        assert_eq!((r.hits, r.waited, r.refused), (1, 0, 1), "{r:?}");
    }

    /// 3 warm and 10 paused; 13 arrivals within 0.6 s: the warm tier serves 3, the paused one
    /// 10, nobody waits, and both tiers refill.
    #[test]
    fn a_burst_takes_the_warm_tier_then_the_paused_one() {
        let burst: Vec<(u64, u64)> = (0..13).map(|i| (1_000 + i * 50, 20_000)).collect();
        let mut tiered = spec(3);
        tiered.min_paused = 10;
        tiered.max_total = 100;
        let r = simulate(&trace(&burst, 10_000), &model(1_000), &tiered);
        assert_eq!((r.hits, r.paused_hits, r.waited), (13, 10, 0), "{r:?}");
        assert_eq!(r.created, 13, "{r:?}");
        assert!(r.paused_container_seconds > 0.0, "{r:?}");
        let plain = simulate(&trace(&burst, 10_000), &model(1_000), &spec(3));
        assert_eq!((plain.hits, plain.paused_hits, plain.waited), (3, 0, 10));
    }

    /// Ten arrivals at once on a pool of 3, warm-up 1 s: a host that starts two containers
    /// at a time serves the seven waiters over about 4 s instead of about 1.
    #[test]
    fn the_hosts_create_slots_pace_the_refill() {
        let t = trace(
            &(0..10).map(|_| (1_000, 30_000)).collect::<Vec<_>>(),
            60_000,
        );
        let m = PoolModel {
            wait_ms: 20_000,
            ..model(1_000)
        };
        let unbounded = simulate(&t, &m, &spec(3));
        let two = simulate(
            &t,
            &PoolModel {
                create_slots: Some(2),
                ..m.clone()
            },
            &spec(3),
        );
        assert!(unbounded.wait_p99_ms < 2_000, "{unbounded:?}");
        assert!((4_000..4_500).contains(&two.wait_p99_ms), "{two:?}");
    }

    /// Room for 2 containers; a released one keeps its place for its 5 s teardown, so the
    /// replacement for A cannot start until A is gone, and B, arriving meanwhile, waits.
    #[test]
    fn a_released_container_keeps_its_place_until_torn_down() {
        let t = trace(&[(1_000, 1_000), (1_100, 500), (3_000, 1_000)], 20_000);
        let m = PoolModel {
            fleet_slots: Some(2),
            teardown_time: Some(WarmTime::Fixed { ms: 5_000 }),
            wait_ms: 20_000,
            ..model(1_000)
        };
        let r = simulate(&t, &m, &spec(2));
        assert_eq!((r.hits, r.waited), (2, 1), "{r:?}");
        // A and B are released at 2 s and 1.6 s, gone 5 s later; C at 3 s waits for a place,
        // then a warm-up: served after about 1.6 + 5 + 1 - 3 = 4.6 s.
        assert!((4_500..5_000).contains(&r.wait_p99_ms), "{r:?}");
        let at_once = simulate(
            &t,
            &PoolModel {
                teardown_time: None,
                ..m
            },
            &spec(2),
        );
        assert_eq!(at_once.hits, 3, "{at_once:?}");
    }

    /// Without waiting, an arrival that finds no warm container is refused at once; with a
    /// wait shorter than a warm-up, it gives up.
    #[test]
    fn without_waiting_an_empty_pool_refuses() {
        let t = trace(&[(0, 1_000), (100, 1_000), (200, 1_000)], 3_000);
        let now = PoolModel {
            wait_ms: 0,
            ..model(2_000)
        };
        let r = simulate(&t, &now, &spec(1));
        assert_eq!((r.hits, r.refused, r.allocations), (1, 2, 1), "{r:?}");
        let short = PoolModel {
            wait_ms: 1_000,
            ..model(2_000)
        };
        let r = simulate(&trace(&[(0, 1_000), (100, 1_000)], 3_000), &short, &spec(1));
        assert_eq!((r.hits, r.refused, r.waited), (1, 1, 0), "{r:?}");
    }

    /// A pool told to start empty makes its first containers only once the replay begins.
    #[test]
    fn the_pool_may_start_other_than_warm() {
        let t = trace(&[(0, 1_000)], 5_000);
        let empty = PoolModel {
            start_warm: Some(0),
            ..model(2_000)
        };
        let r = simulate(&t, &empty, &spec(3));
        assert_eq!((r.hits, r.waited), (0, 1), "{r:?}");
        assert!((2_000..2_200).contains(&r.wait_p99_ms), "{r:?}");
        let r = simulate(&t, &model(2_000), &spec(3));
        assert_eq!(r.hits, 1, "{r:?}");
    }

    /// The control plane's scaler, run by the leader's engine: two arrivals a second for a
    /// minute grow the pool; after the cool-down it shrinks again.
    #[test]
    fn the_scaler_grows_the_pool_under_load_and_shrinks_it_after() {
        let mut s = spec(0);
        s.max_warm = Some(50);
        s.scaling.target_hit_rate = Some(0.99);
        s.scaling.cooldown_secs = 30;
        let arrivals: Vec<_> = (0..120).map(|i| (10_000 + i * 500, 5_000)).collect();
        let r = simulate(&trace(&arrivals, 300_000), &model(2_000), &s);
        assert!(r.max_wanted >= 5, "2/s over 2 s warm-ups: {r:?}");
        assert!(r.hit_rate > 0.8, "{r:?}");
        assert!(r.retired > 0, "shrank after the load: {r:?}");
        assert!(r.scale_changes >= 2, "{r:?}");
    }

    /// With the pool's history before the first arrival, the replay begins where the history
    /// does: the scaler has watched the quiet time, and measured the starting containers'
    /// warm-ups (slow ones here: a longer lead time, so a bigger pool for the burst).
    #[test]
    fn what_the_scaler_saw_before_the_trace_carries_into_it() {
        let mut s = spec(3);
        s.max_warm = Some(60);
        s.max_total = 100;
        s.scaling.target_hit_rate = Some(0.95);
        // 30 arrivals within 2 s, a minute after the pool was made; each held 20 s.
        let t = Trace::new(
            (0..30)
                .map(|i| Arrival {
                    at_ms: 60_000 + i * 66,
                    hold_ms: 20_000,
                })
                .collect(),
            60_000,
            90_000,
        );
        let m = PoolModel {
            start_warm: Some(10),
            ..model(1_000)
        };
        let blind = simulate(&t, &m, &s);
        let watched = PoolModel {
            before: Before {
                since_ms: Some(0),
                warm_times_ms: vec![6_000; 10],
            },
            ..m.clone()
        };
        let slow = simulate(&t, &watched, &s);
        assert!(
            slow.max_wanted > blind.max_wanted,
            "{slow:?} against {blind:?}"
        );
        // A start after the trace's own is the trace's start.
        let late = PoolModel {
            before: Before {
                since_ms: Some(120_000),
                warm_times_ms: Vec::new(),
            },
            ..m
        };
        assert_eq!(simulate(&t, &late, &s), blind);
    }
}
