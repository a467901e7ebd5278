//! The runner of the leader's [`Engine`]: it feeds the engine the replicated state, what this
//! member heard from agents and the clock, and carries out the effects: proposals to Raft,
//! commands to agents, inventory pulls. It decides nothing itself.
//!
//! The loop runs on every member and acts only while the member leads. A new leader first
//! waits until it has applied everything committed (a read barrier), forgets the inventories
//! it held, and starts a fresh engine, which gives every node a full `node_timeout` of grace
//! before declaring it down.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use warmpool_proto::agent::{AgentCommand, AgentReply};
use warmpool_proto::NodeId;

use crate::agents::{AgentError, Agents, Fleet};
use crate::cluster::Cluster;
use crate::engine::{Duty, Effect, Engine, Facts, Now, Sent};
use crate::state::{Command, PoolState, Request, Response};

/// Tunables of the leader loop.
pub type LeaderConfig = crate::engine::Config;

/// An agent's answer, for the engine of the term that sent the command.
type Reply = (u64, NodeId, Sent, Result<AgentReply, AgentError>);

/// The leader loop.
pub struct Leader {
    cluster: Cluster,
    fleet: Arc<Fleet>,
    agents: Agents,
    config: LeaderConfig,
    /// Nanoseconds of the current step spent reading the state (which holds off the writes).
    reading: AtomicU64,
    /// Nodes whose inventory is being asked for.
    pulls: Arc<Mutex<BTreeSet<NodeId>>>,
    replies: mpsc::UnboundedSender<Reply>,
}

impl Leader {
    /// A loop over `cluster`, acting on `fleet` through `agents`.
    pub fn new(cluster: Cluster, fleet: Arc<Fleet>, agents: Agents, config: LeaderConfig) -> Self {
        Leader {
            cluster,
            fleet,
            agents,
            config,
            reading: AtomicU64::new(0),
            pulls: Arc::default(),
            replies: mpsc::unbounded_channel().0,
        }
    }

    /// Reads the state, counting the time in [`Leader::reading`].
    fn read<R>(&self, f: impl FnOnce(&PoolState) -> R) -> R {
        let started = std::time::Instant::now();
        let r = self.cluster.shared().read(f);
        let nanos = started.elapsed().as_nanos() as u64;
        self.reading.fetch_add(nanos, Ordering::Relaxed);
        r
    }

    /// Runs until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let (tx, mut replies) = mpsc::unbounded_channel();
        self.replies = tx;
        // The term number tells a late answer to an earlier term's command from a current one.
        let mut term: Option<(u64, Engine)> = None;
        let mut terms = 0u64;
        let mut applied = self.cluster.shared().subscribe();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.config.tick) => {}
                _ = self.fleet.wake.notified() => {}
                _ = applied.changed() => {}
                Some(reply) = replies.recv() => {
                    let mut batch = vec![reply];
                    while let Ok(r) = replies.try_recv() {
                        batch.push(r);
                    }
                    if let Some((t, engine)) = term.as_mut() {
                        let ours = batch
                            .into_iter()
                            .filter(|r| r.0 == *t)
                            .map(|(_, node, sent, reply)| (node, sent, reply));
                        let effects = self.read(|s| engine.on_replies(s, ours));
                        self.execute(*t, engine, effects).await;
                    }
                }
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
                terms += 1;
                let config = self.config.clone();
                term = Some((terms, self.read(|s| Engine::new(s, config, Now::read()))));
            }
            let Some((t, engine)) = term.as_mut() else {
                continue;
            };
            let started = std::time::Instant::now();
            self.reading.store(0, Ordering::Relaxed);
            self.step(*t, engine).await;
            metrics::histogram!("warmpool_leader_step_seconds")
                .record(started.elapsed().as_secs_f64());
            let read = Duration::from_nanos(self.reading.load(Ordering::Relaxed));
            metrics::histogram!("warmpool_leader_step_read_seconds").record(read.as_secs_f64());
            // A step reads the whole fleet's state; on a large fleet that takes milliseconds,
            // during which writes wait, and stepping after every write would crowd them out.
            // The loop rests nine times as long as its last step spent reading (reads take at
            // most a tenth of its time, and of the CPU it shares with the members' writes),
            // within `min_step..=tick` (time spent waiting for its own writes does not count).
            let rest = (read * 9).clamp(
                self.config.min_step,
                self.config.tick.max(self.config.min_step),
            );
            tokio::time::sleep(rest).await;
        }
    }

    /// Every duty in order, each one's effects carried out before the next reads the state.
    async fn step(&self, term: u64, engine: &mut Engine) {
        let facts = Facts {
            nodes: self.fleet.nodes(),
            link: self.fleet.nats(),
            gone: self.fleet.take_gone(),
        };
        for duty in Duty::ALL {
            // A duty may take several reads (reconciling a large fleet does), each short, so
            // that writes get in between; its effects go out together, after the last.
            let mut effects = Vec::new();
            loop {
                let started = std::time::Instant::now();
                effects.extend(self.read(|s| engine.decide(duty, s, &facts, Now::read())));
                metrics::histogram!("warmpool_leader_duty_read_seconds", "duty" => duty.as_str())
                    .record(started.elapsed().as_secs_f64());
                if !engine.unfinished(duty) {
                    break;
                }
                tokio::task::yield_now().await;
            }
            self.execute(term, engine, effects).await;
            if duty == Duty::Liveness {
                self.pull_inventories();
            }
        }
    }

    /// Carries out `effects`: the proposals together (the cluster batches writes that queue
    /// up into one entry), then what follows each one that was committed and not refused.
    async fn execute(&self, term: u64, engine: &mut Engine, effects: Vec<Effect>) {
        let mut queue = VecDeque::from(effects);
        while !queue.is_empty() {
            let mut proposals = Vec::new();
            while let Some(effect) = queue.pop_front() {
                match effect {
                    Effect::Propose { cmd, then } => proposals.push((cmd, then)),
                    Effect::Send { node, cmd } => self.send(term, engine, node, cmd),
                    Effect::Pull(node) => self.fleet.want_pull(&node),
                }
            }
            let writes = proposals.iter().map(|(cmd, _)| self.write(cmd.clone()));
            let answers = futures::future::join_all(writes).await;
            for ((_, then), committed) in proposals.into_iter().zip(answers) {
                if committed {
                    queue.extend(then);
                }
            }
        }
    }

    /// Whether `cmd` was committed and not refused.
    async fn write(&self, cmd: Command) -> bool {
        match self.cluster.write(Request::now(cmd)).await {
            Ok(Response::Rejected(r)) => {
                debug!(code = ?r.code, message = %r.message, "leader proposal refused");
                false
            }
            Ok(_) => true,
            Err(e) => {
                warn!(error = %e, "leader proposal failed");
                false
            }
        }
    }

    /// Sends `cmd` to `node`'s agent; the answer goes back to the engine of `term`.
    fn send(&self, term: u64, engine: &mut Engine, node: NodeId, cmd: AgentCommand) {
        engine.track_send(&node, &cmd, Now::read());
        let (agents, replies) = (self.agents.clone(), self.replies.clone());
        tokio::spawn(async move {
            let reply = agents.send(&node, &cmd).await;
            let _ = replies.send((term, node, Sent::of(&cmd), reply));
        });
    }

    /// Asks the agents the fleet wants inventories of, one request per node at a time.
    fn pull_inventories(&self) {
        for node in self.fleet.take_pulls() {
            if !lock(&self.pulls).insert(node.clone()) {
                continue;
            }
            let (agents, fleet, pulls) =
                (self.agents.clone(), self.fleet.clone(), self.pulls.clone());
            let requested_index = self.cluster.shared().applied_index();
            tokio::spawn(async move {
                match agents.send(&node, &AgentCommand::Inventory).await {
                    Ok(AgentReply::Inventory(inv)) if inv.node == node => {
                        fleet.store_inventory(inv, requested_index)
                    }
                    other => {
                        debug!(%node, reply = ?other.map(|_| ()), "inventory pull failed");
                        fleet.want_pull(&node);
                    }
                }
                lock(&pulls).remove(&node);
            });
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
