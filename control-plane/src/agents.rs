//! The NATS edge to node agents: what every member hears from them (heartbeats, facts) and
//! how the leader talks to them (commands).
//!
//! Everything here is soft state: it is rebuilt from the next heartbeat or inventory after a
//! restart or a leader change, and nothing in it is needed for correctness of the replicated
//! state, only for how fast it follows reality.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use warmpool_proto::agent::{AgentCommand, AgentReply, Fact, Heartbeat, Inventory};
use warmpool_proto::{subjects, ContainerEndReason, ContainerId, NodeId, Timestamp};

use crate::reconcile::Observed;

/// What this member last heard from one node.
#[derive(Clone, Debug)]
pub struct NodeSoft {
    /// The last heartbeat.
    pub heartbeat: Heartbeat,
    /// When it arrived (monotonic).
    pub received: Instant,
    /// When it arrived (wall clock).
    pub received_at: Timestamp,
    /// The last inventory, with facts merged in since. Shared, so that copying a node's soft
    /// state (every leader step does, for every node) does not copy its inventory.
    pub observed: Option<Arc<Observed>>,
    /// [`Inventory::digest`] of `observed`, kept so a heartbeat is compared without hashing
    /// the inventory again.
    pub observed_digest: Option<u64>,
    /// Bumped whenever `observed` changes (a new inventory, a fact merged in, forgotten), so
    /// the leader can tell whether it has reconciled this version already.
    pub observed_version: u64,
    /// The inventory is out of date and should be asked for.
    pub pull_wanted: bool,
    /// When this member first heard the agent's current process (its boot id): activity
    /// the agent measured before then is unknown.
    pub boot_seen_at: Timestamp,
    /// Agent processes (boot ids) heard lately under this node id, with when last heard.
    pub boots: Vec<(uuid::Uuid, Instant)>,
    /// Until then, nothing this node says is trusted (see [`Suspicion`]).
    pub suspect_until: Option<(Instant, Suspicion)>,
}

/// Why a node's reports are not acted on for now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Suspicion {
    /// Its agent process changed a moment ago: a restart, or a second agent claiming the same
    /// node id. Until a few heartbeats tell which, its inventory is not trusted.
    Unsettled,
    /// Two agent processes take turns heartbeating under one node id (cloned machines that
    /// share a hostname): commands to it reach both, so it gets no creates and no inventory
    /// decisions, and the leader cordons it.
    TwoAgents(String),
}

/// How long a new agent process is watched before its inventory is trusted.
pub const SETTLE: Duration = Duration::from_secs(2);
/// How long a node stays suspect after two agents were last seen taking turns.
pub const CONFLICT_HOLD: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Inner {
    nodes: HashMap<NodeId, NodeSoft>,
    /// Containers agents said are gone or failed to create, for the leader to record.
    gone: Vec<(NodeId, ContainerId, ContainerEndReason)>,
}

/// Whether this member hears NATS, and since when: heartbeats missed while it did not are no
/// evidence against any node.
#[derive(Clone, Copy, Debug)]
pub struct NatsLink {
    /// Connected now.
    pub connected: bool,
    /// When the connection was last (re)made; `None` for the first connection, counted from
    /// when leadership began.
    pub since: Option<Instant>,
}

impl Default for NatsLink {
    fn default() -> Self {
        NatsLink {
            connected: true,
            since: None,
        }
    }
}

/// Soft state about the fleet, shared by the listener, the leader loop and the API.
#[derive(Default)]
pub struct Fleet {
    inner: Mutex<Inner>,
    link: Mutex<NatsLink>,
    /// Woken when something arrived that the leader should act on.
    pub wake: Notify,
}

impl Fleet {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that this member's NATS connection went (`false`) or came back (`true`).
    pub fn on_nats(&self, connected: bool) {
        let mut link = self.link.lock().unwrap_or_else(|e| e.into_inner());
        if connected && !link.connected {
            link.since = Some(Instant::now());
        }
        link.connected = connected;
        drop(link);
        self.wake.notify_one();
    }

    /// This member's NATS connection as last reported by the client.
    pub fn nats(&self) -> NatsLink {
        *self.link.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a heartbeat; asks for the inventory when its digest differs from ours.
    pub fn on_heartbeat(&self, hb: Heartbeat) {
        let mut inner = self.lock();
        let now = Instant::now();
        let stale = |n: &NodeSoft| match (&n.observed, n.observed_digest) {
            (Some(o), Some(digest)) => {
                o.inventory.boot_id != hb.boot_id || digest != hb.inventory_digest
            }
            _ => true,
        };
        let (new, want) = match inner.nodes.get(&hb.node) {
            None => (true, true),
            Some(n) => (false, stale(n)),
        };
        let entry = inner
            .nodes
            .entry(hb.node.clone())
            .or_insert_with(|| NodeSoft {
                heartbeat: hb.clone(),
                received: now,
                received_at: Timestamp::now(),
                observed: None,
                observed_digest: None,
                observed_version: 0,
                pull_wanted: true,
                boot_seen_at: Timestamp::now(),
                boots: vec![(hb.boot_id, now)],
                suspect_until: None,
            });
        if entry.heartbeat.boot_id != hb.boot_id {
            let back = entry
                .boots
                .iter()
                .any(|(b, at)| *b == hb.boot_id && now.duration_since(*at) < CONFLICT_HOLD);
            if back {
                // A process heard before another is heard again: two agents take turns.
                let why = format!(
                    "two agents (boot ids {} and {}) heartbeat as node {}; give each host its own --node-id",
                    entry.heartbeat.boot_id, hb.boot_id, hb.node
                );
                if !matches!(entry.suspect_until, Some((_, Suspicion::TwoAgents(_)))) {
                    warn!(node = %hb.node, "{why}");
                }
                entry.suspect_until = Some((now + CONFLICT_HOLD, Suspicion::TwoAgents(why)));
                entry.observed = None;
                entry.observed_digest = None;
                entry.observed_version += 1;
            } else {
                entry.boot_seen_at = Timestamp::now();
                if !matches!(entry.suspect_until, Some((until, Suspicion::TwoAgents(_))) if until > now)
                {
                    entry.suspect_until = Some((now + SETTLE, Suspicion::Unsettled));
                }
            }
        }
        match entry.boots.iter_mut().find(|(b, _)| *b == hb.boot_id) {
            Some(seen) => seen.1 = now,
            None => entry.boots.push((hb.boot_id, now)),
        }
        entry
            .boots
            .retain(|(_, at)| now.duration_since(*at) < CONFLICT_HOLD);
        entry.heartbeat = hb;
        entry.received = now;
        entry.received_at = Timestamp::now();
        entry.pull_wanted |= want;
        drop(inner);
        if new || want {
            self.wake.notify_one();
        }
    }

    /// Merges a fact into the node's inventory and queues what the leader must record.
    pub fn on_fact(&self, fact: Fact) {
        let mut inner = self.lock();
        let node = fact.node().clone();
        if inner.nodes.get(&node).and_then(suspicion).is_some() {
            // Which agent said it is unknown; the inventory, once trusted again, tells.
            return;
        }
        match fact {
            Fact::Observed { entry, .. } => match inner.nodes.get_mut(&node) {
                Some(NodeSoft {
                    observed: Some(obs),
                    observed_digest,
                    observed_version,
                    ..
                }) => {
                    *observed_version += 1;
                    // Copies the inventory only if a leader step holds it right now.
                    let obs = Arc::make_mut(obs);
                    let list = &mut obs.inventory.containers;
                    match list.binary_search_by(|e| e.id.cmp(&entry.id)) {
                        Ok(i) => list[i] = entry,
                        Err(i) => list.insert(i, entry),
                    }
                    *observed_digest = Some(obs.inventory.digest());
                }
                Some(n) => n.pull_wanted = true,
                None => {}
            },
            Fact::Gone { id, reason, .. } => {
                if let Some(NodeSoft {
                    observed: Some(obs),
                    observed_digest,
                    observed_version,
                    ..
                }) = inner.nodes.get_mut(&node)
                {
                    *observed_version += 1;
                    let obs = Arc::make_mut(obs);
                    obs.inventory.containers.retain(|e| e.id != id);
                    *observed_digest = Some(obs.inventory.digest());
                }
                inner.gone.push((node, id, reason));
            }
            Fact::CreateFailed {
                id,
                error,
                runtime_unavailable,
                ..
            } => {
                let reason = if runtime_unavailable {
                    ContainerEndReason::RuntimeUnavailable
                } else {
                    ContainerEndReason::CreateFailed { message: error }
                };
                inner.gone.push((node, id, reason));
            }
        }
        drop(inner);
        self.wake.notify_one();
    }

    /// Stores an inventory the leader asked for when its applied index was `requested_index`.
    pub fn store_inventory(&self, inventory: Inventory, requested_index: u64) {
        let mut inner = self.lock();
        if let Some(n) = inner.nodes.get_mut(&inventory.node) {
            if suspicion(n).is_some() {
                n.pull_wanted = true;
                return;
            }
            let digest = inventory.digest();
            n.pull_wanted = n.heartbeat.boot_id != inventory.boot_id
                || n.heartbeat.inventory_digest != digest && n.heartbeat.seq > inventory.seq;
            n.observed_digest = Some(digest);
            n.observed_version += 1;
            n.observed = Some(Arc::new(Observed {
                inventory,
                requested_index,
            }));
        }
        drop(inner);
        self.wake.notify_one();
    }

    /// Marks every node's inventory as wanted (a new leader trusts nothing it held before).
    pub fn forget_inventories(&self) {
        let mut inner = self.lock();
        for n in inner.nodes.values_mut() {
            n.observed = None;
            n.observed_digest = None;
            n.observed_version += 1;
            n.pull_wanted = true;
        }
    }

    /// Nodes whose inventory should be asked for; clears their flag. A node whose agent says
    /// its container runtime does not answer keeps its flag for when it does: until then its
    /// agent could only answer that it cannot tell.
    pub fn take_pulls(&self) -> Vec<NodeId> {
        let mut inner = self.lock();
        let mut out = Vec::new();
        for (id, n) in inner.nodes.iter_mut() {
            if n.pull_wanted && suspicion(n).is_none() && n.heartbeat.runtime_unavailable.is_none()
            {
                n.pull_wanted = false;
                out.push(id.clone());
            }
        }
        out
    }

    /// Asks again for a node's inventory (after a failed pull).
    pub fn want_pull(&self, node: &NodeId) {
        if let Some(n) = self.lock().nodes.get_mut(node) {
            n.pull_wanted = true;
        }
    }

    /// Takes the queued gone and failed containers.
    pub fn take_gone(&self) -> Vec<(NodeId, ContainerId, ContainerEndReason)> {
        std::mem::take(&mut self.lock().gone)
    }

    /// A copy of what is known of `node`.
    pub fn node(&self, node: &NodeId) -> Option<NodeSoft> {
        self.lock().nodes.get(node).cloned()
    }

    /// A copy of what is known of every node.
    pub fn nodes(&self) -> HashMap<NodeId, NodeSoft> {
        self.lock().nodes.clone()
    }

    /// The node's observed inventory, if any.
    pub fn observed(&self, node: &NodeId) -> Option<Arc<Observed>> {
        self.lock().nodes.get(node).and_then(|n| n.observed.clone())
    }

    /// The node's observed inventory with its version, and why its reports are not to be
    /// trusted now, if they are not: what the leader reconciles a node against, in one lock.
    pub fn reconcile_view(&self, node: &NodeId) -> (Option<Arc<Observed>>, u64, Option<Suspicion>) {
        match self.lock().nodes.get(node) {
            Some(n) => (n.observed.clone(), n.observed_version, suspicion(n)),
            None => (None, 0, None),
        }
    }

    /// When `node`'s agent last saw traffic on container `id`, and since when this member
    /// has known that agent process; `None` while no inventory of it is held.
    pub fn activity(
        &self,
        node: &NodeId,
        id: &ContainerId,
    ) -> Option<(Option<Timestamp>, Timestamp)> {
        let inner = self.lock();
        let n = inner.nodes.get(node)?;
        let obs = n.observed.as_ref()?;
        let entry = obs.inventory.containers.iter().find(|e| &e.id == id);
        Some((entry.and_then(|e| e.last_activity_at), n.boot_seen_at))
    }

    /// Whether `node`'s agent last said it cannot reach its container runtime.
    pub fn runtime_unavailable(&self, node: &NodeId) -> bool {
        self.lock()
            .nodes
            .get(node)
            .is_some_and(|n| n.heartbeat.runtime_unavailable.is_some())
    }

    /// Why `node`'s reports are not to be acted on now, if they are not.
    pub fn suspicion(&self, node: &NodeId) -> Option<Suspicion> {
        self.lock().nodes.get(node).and_then(suspicion)
    }

    /// Memory use of `node` from its last heartbeat.
    pub fn memory_fraction(&self, node: &NodeId) -> Option<f64> {
        self.lock()
            .nodes
            .get(node)
            .map(|n| n.heartbeat.usage.memory_fraction())
    }
}

fn suspicion(n: &NodeSoft) -> Option<Suspicion> {
    n.suspect_until
        .as_ref()
        .filter(|(until, _)| *until > Instant::now())
        .map(|(_, why)| why.clone())
}

/// Listens to every agent's heartbeats and facts until `shutdown`.
///
/// A message whose payload names a different node than its subject is refused and logged:
/// NATS permissions let an agent publish only under its own subject, so the subject is the
/// trustworthy part. Malformed messages are logged and dropped, never fatal.
pub async fn listen(
    client: async_nats::Client,
    fleet: Arc<Fleet>,
    shutdown: CancellationToken,
) -> Result<(), async_nats::SubscribeError> {
    let mut heartbeats = client.subscribe(subjects::ALL_HEARTBEATS).await?;
    let mut facts = client.subscribe(subjects::ALL_FACTS).await?;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(msg) = heartbeats.next() => {
                let hb = parse::<Heartbeat>(&msg.subject, &msg.payload, |h| &h.node).and_then(|hb| {
                    warmpool_proto::agent::check_labels(&hb.labels)
                        .map(|()| hb)
                        .map_err(|e| format!("labels refused: {e}"))
                });
                match hb {
                    Ok(hb) => {
                        metrics::counter!("warmpool_agent_heartbeats_received_total").increment(1);
                        fleet.on_heartbeat(hb);
                    }
                    Err(e) => reject(&msg.subject, &e),
                }
            }
            Some(msg) = facts.next() => {
                match parse::<Fact>(&msg.subject, &msg.payload, |f| f.node()) {
                    Ok(fact) => {
                        metrics::counter!("warmpool_agent_facts_received_total").increment(1);
                        fleet.on_fact(fact);
                    }
                    Err(e) => reject(&msg.subject, &e),
                }
            }
            else => break,
        }
    }
    Ok(())
}

fn reject(subject: &str, why: &str) {
    metrics::counter!("warmpool_agent_messages_rejected_total").increment(1);
    warn!(subject, reason = why, "agent message rejected");
}

fn parse<T: serde::de::DeserializeOwned>(
    subject: &str,
    payload: &[u8],
    node: impl Fn(&T) -> &NodeId,
) -> Result<T, String> {
    let from = subjects::node_of(subject).ok_or_else(|| "not a node subject".to_string())?;
    let msg: T = serde_json::from_slice(payload).map_err(|e| format!("malformed: {e}"))?;
    if node(&msg) != &from {
        return Err(format!(
            "names node {} but was published by node {from}",
            node(&msg)
        ));
    }
    Ok(msg)
}

/// Why a command to an agent got no useful answer.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No agent listens for the node.
    #[error("no agent is listening for node {0}")]
    NoAgent(NodeId),
    /// The agent did not answer in time.
    #[error("agent of node {0} did not answer within {1:?}")]
    Timeout(NodeId, Duration),
    /// NATS failed.
    #[error("nats: {0}")]
    Nats(String),
    /// The answer was not an `AgentReply`.
    #[error("malformed reply from node {0}: {1}")]
    Malformed(NodeId, String),
}

/// Sends commands to agents (request/reply on `pool.v1.node.<node>.cmd`).
#[derive(Clone)]
pub struct Agents {
    client: async_nats::Client,
    timeout: Duration,
}

impl Agents {
    /// Commands over `client`, each waiting at most `timeout` for its answer.
    pub fn new(client: async_nats::Client, timeout: Duration) -> Self {
        Agents { client, timeout }
    }

    /// Sends `cmd` to `node` and waits for its answer.
    pub async fn send(&self, node: &NodeId, cmd: &AgentCommand) -> Result<AgentReply, AgentError> {
        let payload = serde_json::to_vec(cmd).map_err(|e| AgentError::Nats(e.to_string()))?;
        let req = self
            .client
            .request(subjects::cmd(node), Bytes::from(payload));
        let msg = match tokio::time::timeout(self.timeout, req).await {
            Err(_) => return Err(AgentError::Timeout(node.clone(), self.timeout)),
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                return Err(AgentError::NoAgent(node.clone()))
            }
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::TimedOut => {
                return Err(AgentError::Timeout(node.clone(), self.timeout))
            }
            Ok(Err(e)) => return Err(AgentError::Nats(e.to_string())),
            Ok(Ok(msg)) => msg,
        };
        let reply = serde_json::from_slice(&msg.payload)
            .map_err(|e| AgentError::Malformed(node.clone(), e.to_string()));
        if let Err(e) = &reply {
            debug!(error = %e, "agent reply rejected");
        }
        reply
    }
}
