//! The loop the leader runs: it turns the pure decisions of [`keepwarm`](crate::keepwarm) and
//! [`reconcile`](crate::reconcile) into Raft writes and agent commands.
//!
//! Level-triggered: each step looks at the whole state and every inventory and does what is
//! missing, so a lost message, a crashed agent or a new leader only delays convergence. The
//! loop runs on every member and acts only while the member leads. A new leader first waits
//! until it has applied everything committed (a read barrier), forgets the inventories it
//! held, and gives every node a full `node_timeout` of grace before declaring it down.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use warmpool_proto::agent::{AgentCommand, AgentReply};
use warmpool_proto::records::{NodeStatus, ReleaseReason};
use warmpool_proto::{
    ContainerEndReason, ContainerId, ContainerState, NodeId, PoolName, Timestamp,
};

use warmpool_policy::{DemandEstimator, Policy, Scaler};

use crate::agents::{AgentError, Agents, Fleet, Suspicion};
use crate::cluster::Cluster;
use crate::keepwarm::{self, Decision};
use crate::liveness;
use crate::placement::Overcommit;
use crate::reconcile::{self, Action, InFlight};
use crate::state::{Command, Request, Response};

/// Tunables of the leader loop.
#[derive(Clone, Debug)]
pub struct LeaderConfig {
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
}

impl Default for LeaderConfig {
    fn default() -> Self {
        LeaderConfig {
            tick: Duration::from_millis(500),
            min_step: Duration::from_millis(25),
            node_timeout: Duration::from_secs(5),
            node_lost: Duration::from_secs(300),
            overcommit: Overcommit::default(),
        }
    }
}

/// The scaler's memory of one pool: demand seen so far and the last decision.
struct PoolDemand {
    estimator: DemandEstimator,
    scaler: Scaler,
    /// The replicated arrivals counter when last read.
    arrivals_seen: u64,
    /// The scaler's latest decision (carried until written).
    latest: Option<warmpool_policy::ScaleDecision>,
    /// When a decrease was last written.
    last_down: Option<Instant>,
}

/// Creates that failed in a row for a pool or node, and when to try again.
#[derive(Clone, Debug, Default)]
struct Backoff {
    /// The pool generation the failures were of (a new spec starts afresh).
    generation: u64,
    failures: u32,
    retry_at: Option<Instant>,
    reason: String,
    /// For a node: the pool generations whose creates failed there (empty when unknown, as
    /// for a backoff resumed from the state). When every one of them is replaced by a new
    /// spec, the failures said nothing about the node and its backoff ends.
    sources: std::collections::BTreeSet<(PoolName, u64)>,
}

impl Backoff {
    /// 1 s after the first failure, doubling, at most a minute.
    fn record(&mut self, reason: &str) -> Duration {
        self.failures += 1;
        let delay =
            Duration::from_secs(1u64 << (self.failures - 1).min(6)).min(Duration::from_secs(60));
        self.retry_at = Some(Instant::now() + delay);
        self.reason = reason.to_string();
        delay
    }

    fn waiting(&self) -> bool {
        self.retry_at.is_some_and(|t| t > Instant::now())
    }

    /// As written to the state, for status and events.
    fn condition(&self) -> crate::state::Condition {
        let left = self.retry_at.map_or(Duration::ZERO, |t| {
            t.saturating_duration_since(Instant::now())
        });
        crate::state::Condition {
            reason: ContainerEndReason::parse(&self.reason),
            consecutive_failures: self.failures,
            retry_at: Timestamp::now().plus(left),
        }
    }

    /// A backoff a previous leader wrote to the state, picked up by a new one, so that it goes
    /// on where that one stopped (and clears the condition when creates work again).
    fn resume(c: &crate::state::Condition, generation: u64) -> Self {
        let left = c.retry_at.0.saturating_sub(Timestamp::now().0);
        Backoff {
            generation,
            failures: c.consecutive_failures,
            retry_at: Some(Instant::now() + Duration::from_millis(left)),
            reason: c.reason.to_string(),
            sources: Default::default(),
        }
    }
}

/// Failures of a node's creates before the node itself is avoided for a while.
const NODE_FAILURES_TO_AVOID: u32 = 3;

/// Shortest time between two written decreases of one pool's wanted count (the simulator
/// keeps to the same).
const SCALE_DOWN_EVERY: Duration = Duration::from_millis(warmpool_policy::SCALE_DOWN_EVERY_MS);

/// Soft state of one term of leadership; dropped when leadership is lost.
struct Term {
    demand: HashMap<PoolName, PoolDemand>,
    /// Pools whose creates keep failing.
    pool_backoff: HashMap<PoolName, Backoff>,
    /// Nodes whose creates keep failing.
    node_backoff: HashMap<NodeId, Backoff>,
    /// Events read so far for failures.
    failures_seen: u64,
    /// When each pending restart was last sent to its agent.
    restarts_sent: HashMap<ContainerId, Instant>,
    /// Events read so far for warm-up times.
    events_seen: u64,
    since: Instant,
    inflight: Arc<Mutex<InFlight>>,
    last_batch: BTreeMap<PoolName, Timestamp>,
    pulls: Arc<Mutex<BTreeSet<NodeId>>>,
    stuck: HashMap<PoolName, String>,
    /// Nodes found settled by reconciliation, with the versions of their inventory and of
    /// their records then: not looked at again until one of them moves.
    settled: HashMap<NodeId, (u64, u64)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The leader loop.
pub struct Leader {
    cluster: Cluster,
    fleet: Arc<Fleet>,
    agents: Agents,
    config: LeaderConfig,
    /// Nanoseconds this loop has spent reading the state (which holds off the writes).
    reading: std::sync::atomic::AtomicU64,
}

impl Leader {
    /// A loop over `cluster`, acting on `fleet` through `agents`.
    pub fn new(cluster: Cluster, fleet: Arc<Fleet>, agents: Agents, config: LeaderConfig) -> Self {
        Leader {
            cluster,
            fleet,
            agents,
            config,
            reading: Default::default(),
        }
    }

    /// Reads the state, counting the time in [`Leader::reading`].
    fn read<R>(&self, f: impl FnOnce(&crate::state::PoolState) -> R) -> R {
        let started = std::time::Instant::now();
        let r = self.cluster.shared().read(f);
        self.reading.fetch_add(
            started.elapsed().as_nanos() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        r
    }

    /// Runs until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut term: Option<Term> = None;
        let mut applied = self.cluster.shared().subscribe();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.config.tick) => {}
                _ = self.fleet.wake.notified() => {}
                _ = applied.changed() => {}
            }
            if !self.cluster.is_leader() {
                if term.take().is_some() {
                    info!(
                        member = self.cluster.id(),
                        "no longer leader; leader loop idle"
                    );
                }
                continue;
            }
            if term.is_none() {
                if let Err(e) = self.cluster.read_barrier().await {
                    debug!(error = %e, "new leader not caught up yet");
                    continue;
                }
                info!(member = self.cluster.id(), "leading: reconciling the fleet");
                self.fleet.forget_inventories();
                let seq = self.read(|s| s.last_event_seq());
                let (pool_backoff, node_backoff) = self.read(|s| {
                    let pools = s
                        .pool_conditions()
                        .map(|(p, c)| {
                            let generation = s.pool(p).map_or(0, |p| p.generation);
                            (p.clone(), Backoff::resume(c, generation))
                        })
                        .collect();
                    let nodes = s
                        .node_conditions()
                        .map(|(n, c)| (n.clone(), Backoff::resume(c, 0)))
                        .collect();
                    (pools, nodes)
                });
                term = Some(Term {
                    demand: HashMap::new(),
                    pool_backoff,
                    node_backoff,
                    failures_seen: seq,
                    restarts_sent: HashMap::new(),
                    events_seen: self.read(|s| s.last_event_seq()),
                    since: Instant::now(),
                    inflight: Arc::default(),
                    last_batch: BTreeMap::new(),
                    pulls: Arc::default(),
                    stuck: HashMap::new(),
                    settled: HashMap::new(),
                });
            }
            let read = match term.as_mut() {
                Some(t) => {
                    let started = Instant::now();
                    self.reading.store(0, std::sync::atomic::Ordering::Relaxed);
                    self.step(t).await;
                    metrics::histogram!("warmpool_leader_step_seconds")
                        .record(started.elapsed().as_secs_f64());
                    let read = Duration::from_nanos(
                        self.reading.load(std::sync::atomic::Ordering::Relaxed),
                    );
                    metrics::histogram!("warmpool_leader_step_read_seconds")
                        .record(read.as_secs_f64());
                    read
                }
                None => Duration::ZERO,
            };
            // A step reads the whole fleet's state; on a large fleet that takes milliseconds,
            // during which writes wait, and stepping after every write would crowd them out.
            // The loop rests three times as long as its last step spent reading, within
            // `min_step..=tick` (time spent waiting for its own writes does not count).
            let rest = (read * 3).clamp(
                self.config.min_step,
                self.config.tick.max(self.config.min_step),
            );
            tokio::time::sleep(rest).await;
        }
    }

    async fn write(&self, cmd: Command) -> Option<Response> {
        match self.cluster.write(Request::now(cmd)).await {
            Ok(Response::Rejected(r)) => {
                debug!(code = ?r.code, message = %r.message, "leader proposal refused");
                None
            }
            Ok(r) => Some(r),
            Err(e) => {
                warn!(error = %e, "leader proposal failed");
                None
            }
        }
    }

    async fn step(&self, term: &mut Term) {
        self.liveness(term).await;
        self.pull_inventories(term);
        self.record_gone().await;
        self.reconcile_nodes(term).await;
        self.scale(term).await;
        self.track_failures(term).await;
        self.keep_warm(term).await;
        self.expire_leases().await;
        self.release_idle(term).await;
        self.restart_unhealthy(term).await;
    }

    /// An allocated container failing its health check is restarted in place once (its
    /// session keeps its address); the restart is recorded first, so it happens at most once
    /// whatever fails afterwards.
    async fn restart_unhealthy(&self, term: &mut Term) {
        type Placed = Vec<(ContainerId, NodeId)>;
        let (sick, pending): (Placed, Placed) = self.read(|s| {
            let allocated = || {
                s.containers()
                    .filter(|c| c.state == ContainerState::Allocated)
            };
            let sick = allocated()
                .filter(|c| {
                    c.restarts == 0 && matches!(c.health, warmpool_proto::Health::Unhealthy { .. })
                })
                .map(|c| (c.id, c.node.clone()))
                .collect();
            let pending = allocated()
                .filter(|c| c.restart_pending)
                .map(|c| (c.id, c.node.clone()))
                .collect();
            (sick, pending)
        });
        let mut send = Vec::new();
        for (id, node) in sick {
            if self.fleet.suspicion(&node).is_some() {
                continue;
            }
            if self.write(Command::RestartContainer { id }).await.is_some() {
                info!(container = %id, %node, "restarting an unhealthy allocated container in place");
                send.push((id, node));
            }
        }
        // A restart whose command was lost is asked for again now and then.
        term.restarts_sent
            .retain(|id, _| pending.iter().any(|(p, _)| p == id));
        for (id, node) in pending {
            if term
                .restarts_sent
                .get(&id)
                .is_none_or(|at| at.elapsed() > Duration::from_secs(15))
                && !send.iter().any(|(s, _)| *s == id)
            {
                send.push((id, node));
            }
        }
        for (id, node) in send {
            term.restarts_sent.insert(id, Instant::now());
            let (agents, fleet) = (self.agents.clone(), self.fleet.clone());
            tokio::spawn(async move {
                match agents.send(&node, &AgentCommand::Restart { id }).await {
                    Ok(AgentReply::Restarted) => fleet.want_pull(&node),
                    Ok(other) => warn!(container = %id, reply = ?other, "restart not done"),
                    Err(e) => warn!(container = %id, error = %e, "restart not delivered"),
                }
            });
        }
    }

    /// Releases allocated containers of pools with `idle_timeout_secs` that saw no traffic
    /// for that long. Idleness counts from the latest of: the allocation, the last traffic
    /// the agent measured, when this leader took over, and when it first heard the agent's
    /// current process (activity before either is unknown, so it is not held against anyone).
    async fn release_idle(&self, term: &Term) {
        let now = Timestamp::now();
        let took_over = Timestamp(
            now.as_millis()
                .saturating_sub(term.since.elapsed().as_millis() as u64),
        );
        let candidates: Vec<_> = self.read(|s| {
            s.active_allocations()
                .filter_map(|a| {
                    let timeout = s.pool(&a.pool)?.spec.idle_timeout_secs?;
                    Some((a.id, a.node.clone(), a.container_id, a.created_at, timeout))
                })
                .collect()
        });
        for (allocation_id, node, container, created_at, timeout) in candidates {
            let Some((last_activity, boot_seen_at)) = self.fleet.activity(&node, &container) else {
                continue;
            };
            let since = [
                Some(created_at),
                last_activity,
                Some(boot_seen_at),
                Some(took_over),
            ]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(created_at);
            if now.since(since).as_secs() >= timeout {
                info!(allocation = %allocation_id, %container, idle_secs = now.since(since).as_secs(), "releasing idle allocation");
                self.write(Command::Release {
                    allocation_id,
                    reason: ReleaseReason::Idle,
                })
                .await;
            }
        }
    }

    /// Joins nodes that announce themselves, marks and downs nodes that went quiet (only on
    /// silence heard while this member could hear them: see [`crate::liveness`]), and gives up
    /// on nodes down too long.
    async fn liveness(&self, term: &Term) {
        let heard = self.fleet.nodes();
        let link = self.fleet.nats();
        let clock = liveness::Clock {
            now: Instant::now(),
            wall: Timestamp::now(),
            hearing_since: link
                .connected
                .then(|| link.since.map_or(term.since, |s| s.max(term.since))),
            node_timeout: self.config.node_timeout,
            node_lost: self.config.node_lost,
        };
        let decided = self.read(|s| liveness::plan(s, &heard, clock));
        // Two agents claiming one node id: cordon it, saying why, until an operator fixes it.
        let cordons: Vec<Command> = self.read(|s| {
            s.nodes()
                .filter(|n| n.status == NodeStatus::Ready)
                .filter_map(|n| match self.fleet.suspicion(&n.id) {
                    Some(Suspicion::TwoAgents(why)) => Some(Command::SetNodeStatus {
                        node: n.id.clone(),
                        status: NodeStatus::Cordoned,
                        reason: Some(why),
                        drain_deadline: None,
                    }),
                    _ => None,
                })
                .collect()
        });
        for cmd in decided.into_iter().chain(cordons) {
            match &cmd {
                Command::NodeDown { node, reason } => warn!(%node, %reason, "node down"),
                Command::NodeLost { node } => {
                    warn!(%node, after = ?self.config.node_lost, "node down too long: its allocations are lost")
                }
                Command::MarkUnreachable {
                    node,
                    reason: Some(r),
                } => warn!(%node, reason = r.as_str(), "node unreachable: no grants on it"),
                Command::MarkUnreachable { node, reason: None } => {
                    info!(%node, "node reachable again")
                }
                _ => {}
            }
            self.write(cmd).await;
        }
    }

    fn pull_inventories(&self, term: &Term) {
        for node in self.fleet.take_pulls() {
            if !lock(&term.pulls).insert(node.clone()) {
                continue;
            }
            let (agents, fleet, pulls) =
                (self.agents.clone(), self.fleet.clone(), term.pulls.clone());
            let requested_index = self.cluster.shared().applied_index();
            tokio::spawn(async move {
                match agents.send(&node, &AgentCommand::Inventory).await {
                    Ok(AgentReply::Inventory(inv)) if inv.node == node => {
                        fleet.store_inventory(inv, requested_index)
                    }
                    Ok(other) => {
                        warn!(%node, reply = ?other, "unexpected inventory reply");
                        fleet.want_pull(&node);
                    }
                    Err(e) => {
                        debug!(%node, error = %e, "inventory pull failed");
                        fleet.want_pull(&node);
                    }
                }
                lock(&pulls).remove(&node);
            });
        }
    }

    async fn record_gone(&self) {
        let gone = self.fleet.take_gone();
        if gone.is_empty() {
            return;
        }
        // Only record what the agent says of its own containers.
        let gone: Vec<(ContainerId, ContainerEndReason)> = self.read(|s| {
            gone.into_iter()
                .filter(|(node, id, _)| s.container(id).is_some_and(|c| &c.node == node))
                .map(|(_, id, reason)| (id, reason))
                .collect()
        });
        if !gone.is_empty() {
            self.write(Command::ContainersGone { gone }).await;
        }
    }

    async fn reconcile_nodes(&self, term: &mut Term) {
        let now = Timestamp::now();
        let per_node: Vec<(NodeId, Vec<Action>)> = {
            let inflight = lock(&term.inflight);
            let nodes: Vec<(NodeId, u64)> = self.read(|s| {
                s.nodes()
                    .filter(|n| n.status != NodeStatus::Down)
                    .map(|n| (n.id.clone(), s.node_changed_at(&n.id)))
                    .collect()
            });
            let settled = &mut term.settled;
            settled.retain(|node, _| nodes.iter().any(|(n, _)| n == node));
            nodes
                .into_iter()
                .filter_map(|(node, changed_at)| {
                    let (observed, version, suspicion) = self.fleet.reconcile_view(&node);
                    if settled.get(&node) == Some(&(version, changed_at)) {
                        return None;
                    }
                    if self.fleet.runtime_unavailable(&node) {
                        // Its agent can neither make, destroy nor list containers now, and
                        // what it listed before still runs (live restore): wait for it.
                        return None;
                    }
                    settled.remove(&node);
                    let actions = if suspicion.is_some() {
                        // Nothing it reports is trusted and a create would reach every agent
                        // claiming it; only destroys (idempotent, harmless twice) go out.
                        self.read(|s| {
                            s.containers_on(&node)
                                .filter(|c| c.state == ContainerState::Releasing)
                                .filter(|c| !inflight.destroys.contains(&c.id))
                                .map(|c| {
                                    Action::Destroy(
                                        c.id,
                                        c.reason.clone().unwrap_or(ContainerEndReason::Released),
                                    )
                                })
                                .collect()
                        })
                    } else {
                        let (actions, done) = self.read(|s| {
                            reconcile::plan(s, &node, observed.as_deref(), &inflight, now)
                        });
                        if done {
                            settled.insert(node.clone(), (version, changed_at));
                        }
                        actions
                    };
                    Some((node, actions))
                })
                .collect()
        };
        for (node, actions) in per_node {
            for action in actions {
                match action {
                    Action::Observe(entries) => {
                        self.write(Command::Observe {
                            node: node.clone(),
                            entries,
                        })
                        .await;
                    }
                    Action::Gone(gone) => {
                        self.write(Command::ContainersGone { gone }).await;
                    }
                    Action::Create(spec) => self.send_create(term, &node, *spec),
                    Action::Destroy(id, reason) => self.send_destroy(term, &node, id, reason),
                }
            }
        }
    }

    fn send_create(&self, term: &Term, node: &NodeId, spec: warmpool_proto::agent::CreateSpec) {
        lock(&term.inflight)
            .creates
            .insert(spec.id, Timestamp::now());
        let (agents, cluster, node) = (self.agents.clone(), self.cluster.clone(), node.clone());
        tokio::spawn(async move {
            let id = spec.id;
            match agents.send(&node, &AgentCommand::Create(spec)).await {
                Ok(AgentReply::Accepted) => {}
                Ok(AgentReply::Error { message }) => {
                    warn!(%node, container = %id, error = %message, "create refused");
                    let gone = vec![(id, ContainerEndReason::CreateFailed { message })];
                    let _ = cluster
                        .write(Request::now(Command::ContainersGone { gone }))
                        .await;
                }
                Ok(other) => warn!(%node, reply = ?other, "unexpected create reply"),
                Err(e @ (AgentError::NoAgent(_) | AgentError::Timeout(..))) => {
                    debug!(%node, container = %id, error = %e, "create not delivered; will resend")
                }
                Err(e) => warn!(%node, container = %id, error = %e, "create failed"),
            }
        });
    }

    fn send_destroy(
        &self,
        term: &Term,
        node: &NodeId,
        id: ContainerId,
        reason: ContainerEndReason,
    ) {
        if !lock(&term.inflight).destroys.insert(id) {
            return;
        }
        let (agents, cluster, inflight, fleet) = (
            self.agents.clone(),
            self.cluster.clone(),
            term.inflight.clone(),
            self.fleet.clone(),
        );
        let node = node.clone();
        tokio::spawn(async move {
            let cmd = AgentCommand::Destroy {
                id,
                reason: reason.clone(),
            };
            match agents.send(&node, &cmd).await {
                Ok(AgentReply::Destroyed { .. }) => {
                    let is_record = cluster
                        .shared()
                        .read(|s| s.container(&id).is_some_and(|c| c.state.is_live()));
                    if is_record {
                        let gone = vec![(id, ContainerEndReason::Destroyed)];
                        let _ = cluster
                            .write(Request::now(Command::ContainersGone { gone }))
                            .await;
                    }
                    // The inventory we hold still lists it until the next pull.
                    fleet.want_pull(&node);
                }
                Ok(other) => warn!(%node, container = %id, reply = ?other, "destroy not confirmed"),
                Err(e) => {
                    debug!(%node, container = %id, error = %e, "destroy not delivered; will resend")
                }
            }
            lock(&inflight).destroys.remove(&id);
        });
    }

    /// Feeds each pool's demand estimator with new arrivals and warm-up times and proposes the
    /// scaler's decisions. A new leader resumes from the replicated wanted count, so a change
    /// of leader never shrinks a pool before a full cool-down.
    async fn scale(&self, term: &mut Term) {
        let now = Timestamp::now();
        let filter = crate::state::EventFilter {
            kinds: vec![warmpool_proto::EventKind::ContainerWarm],
            ..Default::default()
        };
        let (pools, warmed, last_seq) = self.read(|s| {
            let pools: Vec<_> = s
                .pools()
                .map(|p| (p.spec.clone(), s.arrivals(&p.spec.name), s.wanted(p)))
                .collect();
            let mut warmed = Vec::new();
            for e in s.events_since(term.events_seen, &filter) {
                let c = e.container.and_then(|id| s.container(&id));
                if let (Some(c), Some(warm_at)) = (c, c.and_then(|c| c.warm_at)) {
                    warmed.push((c.pool.clone(), warm_at.since(c.created_at)));
                }
            }
            (pools, warmed, s.last_event_seq())
        });
        term.events_seen = last_seq;
        term.demand
            .retain(|name, _| pools.iter().any(|(spec, ..)| &spec.name == name));
        for (spec, arrivals, wanted) in pools {
            let d = term
                .demand
                .entry(spec.name.clone())
                .or_insert_with(|| PoolDemand {
                    estimator: DemandEstimator::new(now),
                    scaler: Scaler::resume(wanted, now),
                    arrivals_seen: arrivals,
                    latest: None,
                    last_down: None,
                });
            let new = arrivals.saturating_sub(d.arrivals_seen);
            d.arrivals_seen = arrivals;
            if new > 0 {
                d.estimator.record_arrivals(now, new);
            }
            for (_, took) in warmed.iter().filter(|(pool, _)| pool == &spec.name) {
                d.estimator.record_warm_time(*took);
            }
            if let Some(decision) =
                d.scaler
                    .decide(&Policy::from_spec(&spec), &d.estimator.inputs(now), now)
            {
                d.latest = Some(decision);
            }
            let Some(decision) = d.latest.clone() else {
                continue;
            };
            if decision.wanted == wanted {
                continue;
            }
            // Growth goes out at once; shrinking, at most one step per SCALE_DOWN_EVERY, so
            // a pool coming down from a burst writes a few steps, not one per loop.
            if decision.wanted < wanted
                && d.last_down.is_some_and(|t| t.elapsed() < SCALE_DOWN_EVERY)
            {
                continue;
            }
            if decision.wanted < wanted {
                d.last_down = Some(Instant::now());
            }
            metrics::counter!("warmpool_scaler_decisions_total", "pool" => spec.name.to_string(), "reason" => decision.reason.as_str())
                .increment(1);
            info!(pool = %spec.name, from = wanted, to = decision.wanted, reason = decision.reason.as_str(), "scaling");
            let cmd = Command::SetWanted {
                pool: spec.name.clone(),
                wanted: decision.wanted,
                detail: Some(decision.detail()),
            };
            self.write(cmd).await;
        }
    }

    /// Reads containers that failed before becoming warm and containers that became warm, and
    /// backs off pools (and nodes) whose creates keep failing, instead of a create/destroy
    /// loop. A pool's condition is written to the state, so status and events say why.
    async fn track_failures(&self, term: &mut Term) {
        let filter = crate::state::EventFilter {
            kinds: vec![
                warmpool_proto::EventKind::ContainerFailed,
                warmpool_proto::EventKind::ContainerWarm,
            ],
            ..Default::default()
        };
        let (events, last) = self.read(|s| {
            (
                s.events_since(term.failures_seen, &filter),
                s.last_event_seq(),
            )
        });
        term.failures_seen = last;
        // A changed spec starts afresh (the state machine cleared the condition already).
        let generations: HashMap<PoolName, u64> = self.read(|s| {
            s.pools()
                .map(|p| (p.spec.name.clone(), p.generation))
                .collect()
        });
        term.pool_backoff
            .retain(|pool, b| generations.get(pool) == Some(&b.generation));
        let mut changed: Vec<PoolName> = Vec::new();
        let mut nodes_changed: Vec<NodeId> = Vec::new();
        // A node whose failing creates were all of specs since changed is not to blame.
        term.node_backoff.retain(|node, b| {
            let current = b.sources.is_empty()
                || b.sources.iter().any(|(p, g)| generations.get(p) == Some(g));
            if !current && b.failures >= NODE_FAILURES_TO_AVOID {
                nodes_changed.push(node.clone());
            }
            current
        });
        for e in events {
            let (Some(pool), node) = (e.pool.clone(), e.node.clone()) else {
                continue;
            };
            match e.kind {
                warmpool_proto::EventKind::ContainerWarm => {
                    if term.pool_backoff.remove(&pool).is_some() {
                        changed.push(pool);
                    }
                    if let Some(n) = node {
                        if term
                            .node_backoff
                            .remove(&n)
                            .is_some_and(|b| b.failures >= NODE_FAILURES_TO_AVOID)
                        {
                            nodes_changed.push(n);
                        }
                    }
                }
                _ => {
                    let reason = e.reason.clone().unwrap_or_default();
                    if !ContainerEndReason::parse(&reason).is_create_failure() {
                        continue;
                    }
                    let generation = generations.get(&pool).copied().unwrap_or(0);
                    let b = term
                        .pool_backoff
                        .entry(pool.clone())
                        .or_insert_with(|| Backoff {
                            generation,
                            ..Default::default()
                        });
                    let delay = b.record(&reason);
                    warn!(%pool, %reason, retry_in = ?delay, "create failed; backing off");
                    changed.push(pool.clone());
                    if let Some(n) = node {
                        let b = term.node_backoff.entry(n.clone()).or_default();
                        b.record(&reason);
                        b.sources.insert((pool.clone(), generation));
                        if b.failures == NODE_FAILURES_TO_AVOID {
                            warn!(node = %n, %reason, "creates keep failing on this node; avoiding it for a while");
                        }
                        if b.failures >= NODE_FAILURES_TO_AVOID {
                            nodes_changed.push(n);
                        }
                    }
                }
            }
        }
        changed.sort();
        changed.dedup();
        for pool in changed {
            let condition = term.pool_backoff.get(&pool).map(Backoff::condition);
            self.write(Command::SetPoolCondition { pool, condition })
                .await;
        }
        // A node's condition is written once it is avoided, and cleared when it works again.
        nodes_changed.sort();
        nodes_changed.dedup();
        for node in nodes_changed {
            let condition = term.node_backoff.get(&node).map(Backoff::condition);
            self.write(Command::SetNodeCondition { node, condition })
                .await;
        }
    }

    async fn keep_warm(&self, term: &mut Term) {
        let now = Timestamp::now();
        let decisions = self.read(|s| {
            let mut loads = keepwarm::node_loads(s, |n| self.fleet.memory_fraction(n));
            let avoided = |id: &NodeId| {
                term.node_backoff
                    .get(id)
                    .is_some_and(|b| b.failures >= NODE_FAILURES_TO_AVOID && b.waiting())
            };
            for l in loads
                .iter_mut()
                .filter(|l| self.fleet.suspicion(&l.id).is_some() || avoided(&l.id))
            {
                // Not to be placed on while its reports are not trusted.
                l.status = NodeStatus::Cordoned;
            }
            keepwarm::plan(s, &loads, &term.last_batch, now, self.config.overcommit)
        });
        for d in decisions {
            match d {
                Decision::Create { pool, .. }
                    if term.pool_backoff.get(&pool).is_some_and(Backoff::waiting) => {}
                Decision::Create {
                    pool,
                    generation,
                    nodes,
                } => {
                    term.last_batch.insert(pool.clone(), now);
                    term.stuck.remove(&pool);
                    let placements: Vec<(ContainerId, NodeId)> =
                        nodes.into_iter().map(|n| (ContainerId::new(), n)).collect();
                    let planned = metrics::counter!(
                        "warmpool_keepwarm_planned_total",
                        "pool" => pool.to_string()
                    );
                    let cmd = Command::PlanContainers {
                        pool,
                        generation,
                        placements: placements.clone(),
                    };
                    if self.write(cmd).await.is_none() {
                        continue;
                    }
                    planned.increment(placements.len() as u64);
                    // Send the creates now rather than on the next step: this is the refill
                    // path after an allocation.
                    for (id, node) in placements {
                        let spec = self
                            .read(|s| s.container(&id).and_then(|c| reconcile::create_spec(s, c)));
                        if let Some(spec) = spec {
                            self.send_create(term, &node, spec);
                        }
                    }
                }
                Decision::Retire { ids, reason } => {
                    let n = ids.len() as u64;
                    let retired = self
                        .write(Command::RetireContainers {
                            ids,
                            reason: reason.into(),
                        })
                        .await;
                    if retired.is_some() {
                        metrics::counter!(
                            "warmpool_keepwarm_retired_total",
                            "reason" => reason.to_string()
                        )
                        .increment(n);
                    }
                }
                Decision::Stuck { pool, reason } => {
                    if term.stuck.get(&pool) != Some(&reason) {
                        warn!(%pool, %reason, "pool cannot grow");
                        term.stuck.insert(pool, reason);
                    }
                }
            }
        }
    }

    async fn expire_leases(&self) {
        let now = Timestamp::now();
        let stale_waiters =
            self.read(|s| s.pending().any(|(_, q)| q.iter().any(|p| p.deadline < now)));
        if stale_waiters {
            self.write(Command::ExpireWaits).await;
        }
        let expired: Vec<_> = self.read(|s| s.expired_allocations(now).map(|a| a.id).collect());
        for allocation_id in expired {
            self.write(Command::Release {
                allocation_id,
                reason: ReleaseReason::Expired,
            })
            .await;
        }
        for allocation_id in self.read(|s| s.overdue_drain_allocations(now)) {
            self.write(Command::Release {
                allocation_id,
                reason: ReleaseReason::Drained,
            })
            .await;
        }
    }
}
