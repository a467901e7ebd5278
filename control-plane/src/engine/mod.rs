//! The leader's decisions, as a synchronous engine: the replicated state, what this member
//! heard from agents ([`Facts`]) and a clock ([`Now`]) go in; [`Effect`]s come out, for the
//! runner in [`crate::leader`] to carry out. Nothing here awaits, reads a clock or touches
//! the network, so every rule is tested with plain values.
//!
//! One engine lives for one term of leadership: it is made when this member starts leading
//! (picking up from the replicated state what an earlier leader left: wanted counts, backoff
//! conditions) and dropped when it stops. What it remembers is soft: a new engine, knowing
//! nothing, converges on the same fleet, because every duty looks at the whole state and every
//! inventory and does what is missing.
//!
//! The duties, each in its own module, run in the order of [`Duty::ALL`]. The runner carries
//! out one duty's effects before the next duty reads the state, so a duty sees what the ones
//! before it wrote (a node marked down is not placed on; a container recorded gone is
//! replaced in the same step).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tokio::time::Instant;
use warmpool_proto::agent::AgentCommand;
use warmpool_proto::{ContainerEndReason, ContainerId, NodeId, PoolName, Timestamp};

use crate::agents::{NatsLink, NodeSoft, Suspicion};
use crate::placement::Overcommit;
use crate::reconcile::{InFlight, Observed};
use crate::state::{Command, PoolState};

mod failures;
mod health;
mod leases;
mod nodes;
mod replies;
mod scaling;
#[cfg(test)]
mod tests;
mod warm;

pub use replies::Sent;

/// Tunables of the leader.
#[derive(Clone, Debug)]
pub struct Config {
    /// Longest pause between steps when nothing happens.
    pub tick: Duration,
    /// Shortest pause between steps, however busy.
    pub min_step: Duration,
    /// A node not heard from for this long is declared down.
    pub node_timeout: Duration,
    /// A node down for this long is given up on: the allocations still on it are lost.
    pub node_lost: Duration,
    /// Reservation overcommit for placement.
    pub overcommit: Overcommit,
    /// Container records and inventory entries one read of reconciliation looks at before
    /// it stops for the rest of the fleet (a node is never split). Writes wait while the
    /// leader reads the state, so a large fleet is compared in several short reads with
    /// writes in between, and an allocation never waits for the whole fleet's comparison.
    pub reconcile_read_budget: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            tick: Duration::from_millis(500),
            min_step: Duration::from_millis(25),
            node_timeout: Duration::from_secs(5),
            node_lost: Duration::from_secs(300),
            overcommit: Overcommit::default(),
            reconcile_read_budget: 256,
        }
    }
}

/// The time of one decision, on both clocks.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    /// Monotonic: for heartbeats, backoffs and resend intervals.
    pub mono: Instant,
    /// Wall clock: for times written into the state.
    pub wall: Timestamp,
}

impl Now {
    /// The clocks read now (the runner's job; tests build their own).
    pub fn read() -> Self {
        Now {
            mono: Instant::now(),
            wall: Timestamp::now(),
        }
    }

    /// `d` later on both clocks.
    pub fn plus(self, d: Duration) -> Self {
        Now {
            mono: self.mono + d,
            wall: self.wall.plus(d),
        }
    }
}

/// What this member knows from agents, as of one step: soft, never replicated.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    /// What was last heard from each node.
    pub nodes: HashMap<NodeId, NodeSoft>,
    /// Whether this member hears NATS, and since when.
    pub link: NatsLink,
    /// Containers agents said are gone or failed to create, not yet recorded.
    pub gone: Vec<(NodeId, ContainerId, ContainerEndReason)>,
}

impl Facts {
    /// Why `node`'s reports are not to be acted on at `now`, if they are not.
    pub fn suspicion(&self, node: &NodeId, now: Instant) -> Option<Suspicion> {
        self.nodes
            .get(node)?
            .suspect_until
            .as_ref()
            .filter(|(until, _)| *until > now)
            .map(|(_, why)| why.clone())
    }

    /// Whether `node`'s agent last said it cannot reach its container runtime.
    pub fn runtime_unavailable(&self, node: &NodeId) -> bool {
        self.nodes
            .get(node)
            .is_some_and(|n| n.heartbeat.runtime_unavailable.is_some())
    }

    /// Images `node`'s agent last said it cannot pull (and retries on its own).
    pub fn failed_images(&self, node: &NodeId) -> std::collections::BTreeSet<String> {
        self.nodes.get(node).map_or_else(Default::default, |n| {
            n.heartbeat
                .images
                .iter()
                .filter(|i| matches!(i.state, warmpool_proto::agent::ImageState::Failed { .. }))
                .map(|i| i.image.clone())
                .collect()
        })
    }

    /// Memory use of `node` from its last heartbeat.
    pub fn memory_fraction(&self, node: &NodeId) -> Option<f64> {
        self.nodes
            .get(node)
            .map(|n| n.heartbeat.usage.memory_fraction())
    }

    /// `node`'s inventory and its version.
    pub fn observed(&self, node: &NodeId) -> (Option<&Observed>, u64) {
        match self.nodes.get(node) {
            Some(n) => (n.observed.as_deref(), n.observed_version),
            None => (None, 0),
        }
    }

    /// When `node`'s agent last saw traffic on container `id`, and since when this member
    /// has known that agent process; `None` while no inventory of it is held.
    pub fn activity(
        &self,
        node: &NodeId,
        id: &ContainerId,
    ) -> Option<(Option<Timestamp>, Timestamp)> {
        let n = self.nodes.get(node)?;
        let obs = n.observed.as_ref()?;
        let entry = obs.inventory.containers.iter().find(|e| &e.id == id);
        Some((entry.and_then(|e| e.last_activity_at), n.boot_seen_at))
    }
}

/// Something the runner is to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Propose `cmd` to Raft; when it is committed and not refused, carry out `then`.
    Propose {
        /// The command.
        cmd: Command,
        /// Follow-ups that only make sense once the command is in the state.
        then: Vec<Effect>,
    },
    /// Send a command to a node's agent; its answer comes back through [`Engine::on_reply`].
    Send {
        /// The node.
        node: NodeId,
        /// The command.
        cmd: AgentCommand,
    },
    /// Ask a node's agent for its whole inventory again.
    Pull(NodeId),
}

impl Effect {
    /// Propose `cmd`, nothing after.
    pub fn propose(cmd: Command) -> Self {
        Effect::Propose { cmd, then: vec![] }
    }
}

/// The leader's duties, in the order one step runs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Duty {
    /// Joins, unreachable marks, downs, losses; cordons nodes two agents claim.
    Liveness,
    /// Records what agents said is gone.
    RecordGone,
    /// Compares each node's records with its inventory.
    Reconcile,
    /// Sizes each pool from its demand.
    Scale,
    /// Backs off pools and nodes whose creates keep failing.
    Failures,
    /// Plans creates and retirements (rollouts, scale-down).
    KeepWarm,
    /// Ends expired leases, overdue drains, stale waits and idle sessions.
    Leases,
    /// Restarts unhealthy allocated containers in place, once.
    Health,
}

impl Duty {
    /// Every duty, in the order of a step.
    pub const ALL: [Duty; 8] = [
        Duty::Liveness,
        Duty::RecordGone,
        Duty::Reconcile,
        Duty::Scale,
        Duty::Failures,
        Duty::KeepWarm,
        Duty::Leases,
        Duty::Health,
    ];

    /// Its name in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Duty::Liveness => "liveness",
            Duty::RecordGone => "record_gone",
            Duty::Reconcile => "reconcile",
            Duty::Scale => "scale",
            Duty::Failures => "failures",
            Duty::KeepWarm => "keep_warm",
            Duty::Leases => "leases",
            Duty::Health => "health",
        }
    }
}

/// One term of leadership's decisions and soft memory.
pub struct Engine {
    config: Config,
    /// When this term began.
    since: Instant,
    scaling: scaling::Scaling,
    failures: failures::Failures,
    /// What was sent to agents and not yet answered or seen.
    inflight: InFlight,
    /// When each pending restart was last sent to its agent.
    restarts_sent: HashMap<ContainerId, Instant>,
    /// When each pool last asked for containers.
    last_batch: BTreeMap<PoolName, Timestamp>,
    /// Pools that cannot grow, with why (logged on change).
    stuck: HashMap<PoolName, String>,
    /// Nodes found settled by reconciliation, with the versions of their inventory and of
    /// their records then: not looked at again until one of them moves.
    settled: HashMap<NodeId, (u64, u64)>,
    /// Where an unfinished pass of reconciliation goes on: after this node.
    reconcile_after: Option<NodeId>,
}

impl Engine {
    /// The engine of a term beginning `now`, over a state that has applied everything
    /// committed (the runner waits for a read barrier first).
    pub fn new(state: &PoolState, config: Config, now: Now) -> Self {
        Engine {
            since: now.mono,
            scaling: scaling::Scaling::new(state),
            failures: failures::Failures::resume(state, now),
            inflight: InFlight::default(),
            restarts_sent: HashMap::new(),
            last_batch: BTreeMap::new(),
            stuck: HashMap::new(),
            settled: HashMap::new(),
            reconcile_after: None,
            config,
        }
    }

    /// The tunables.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether `duty`'s last decision covered only part of the fleet: call
    /// [`Engine::decide`] again, with a fresh read of the state, for the rest. Only
    /// reconciliation splits its pass ([`Config::reconcile_read_budget`]).
    pub fn unfinished(&self, duty: Duty) -> bool {
        duty == Duty::Reconcile && self.reconcile_after.is_some()
    }

    /// Decides one duty (or the next part of it: see [`Engine::unfinished`]).
    pub fn decide(
        &mut self,
        duty: Duty,
        state: &PoolState,
        facts: &Facts,
        now: Now,
    ) -> Vec<Effect> {
        match duty {
            Duty::Liveness => nodes::liveness(self, state, facts, now),
            Duty::RecordGone => nodes::record_gone(state, facts),
            Duty::Reconcile => nodes::reconcile(self, state, facts, now),
            Duty::Scale => self.scaling.decide(state, now),
            Duty::Failures => self.failures.decide(state, now),
            Duty::KeepWarm => warm::keep_warm(self, state, facts, now),
            Duty::Leases => leases::decide(self, state, facts, now),
            Duty::Health => health::restart_unhealthy(self, state, facts, now),
        }
    }

    /// Every duty against one state, in order: for tests, where effects are looked at rather
    /// than carried out between duties.
    #[cfg(test)]
    pub fn step(&mut self, state: &PoolState, facts: &Facts, now: Now) -> Vec<Effect> {
        let mut out = Vec::new();
        for duty in Duty::ALL {
            loop {
                out.extend(self.decide(duty, state, facts, now));
                if !self.unfinished(duty) {
                    break;
                }
            }
        }
        out
    }

    /// Notes that `effect` was carried out (sends are tracked from when they leave).
    pub(crate) fn track_send(&mut self, node: &NodeId, cmd: &AgentCommand, now: Now) {
        let _ = node;
        match cmd {
            AgentCommand::Create(spec) => {
                self.inflight.creates.insert(spec.id, now.wall);
            }
            AgentCommand::Destroy { id, .. } => {
                self.inflight.destroys.insert(*id);
            }
            AgentCommand::Restart { id } => {
                self.restarts_sent.insert(*id, now.mono);
            }
            AgentCommand::Pause { id } | AgentCommand::Unpause { id } => {
                self.inflight.pauses.insert(*id, now.wall);
            }
            _ => {}
        }
    }
}
