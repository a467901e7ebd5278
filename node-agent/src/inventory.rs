//! The inventory: what this host runs, as the agent knows it. It is the agent's truth, and
//! what the control plane reconciles against.
//!
//! One `std::sync::Mutex` guards it; no `.await` ever happens under the lock (every method
//! here is synchronous), so the lock is held for microseconds and a std mutex is the right
//! tool. Every change that alters a container's [`InventoryEntry`] queues a
//! `Fact::Observed` *while still holding the lock*, so facts about one container leave in the
//! order the changes were made (see `outbox`).
//!
//! ## To ensure correctness
//!
//! Several tasks change the inventory concurrently: command handlers (create, destroy), the
//! Docker event watcher, the periodic resync and one probe task per container. The rules that
//! keep them from undoing each other:
//!
//! - **One create per id.** A create is admitted only if the id is neither known, nor being
//!   created, nor destroyed ([`Inventory::admit_create`]). The admitted create holds a
//!   [`CreateGuard`]; while it lives, the id is "in flight" and everything else (events,
//!   resync) leaves that id alone: the create task alone decides how it ends.
//! - **Destroyed ids are tombstoned.** [`Inventory::begin_destroy`] tombstones the id (for
//!   [`TOMBSTONE_TTL`]) *before* Docker removes the container, so neither the resync (which
//!   may still list the dying container) nor a late, duplicated `Create` can bring it back.
//!   The entry itself stays, frozen (events, probes and resync leave a tombstoned id alone),
//!   until Docker confirms the removal ([`Inventory::finish_destroy`]): the inventory never
//!   says a container is gone while it still exists, because the control plane concludes
//!   from an inventory that lacks a container that it is gone. If the removal fails, the
//!   tombstone is lifted and the entry lives on as before.
//! - **Stale observations lose.** Every change stamps the entry with a fresh version. A resync
//!   first takes a mark ([`Inventory::mark`]), then lists/inspects Docker, then applies what it
//!   saw only to entries not changed after the mark, and drops as vanished only entries that
//!   existed before the mark. An event handled while the resync was listing therefore wins.
//! - **Status follows Docker and the probes**: see [`status_of`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::Ipv6Addr;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::info;
use warmpool_proto::agent::{InventoryEntry, ObservedStatus};
use warmpool_proto::{ContainerEndReason, ContainerId, Health, HealthCheck};

use crate::docker::{DockerState, Observation};
use crate::health::{self, Outcome, ProbeState};
use crate::labels::ContainerLabels;
use crate::outbox::{Outbox, Outgoing};

/// How long a destroyed id stays refused for re-creation and re-adoption.
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(600);

/// The reported status, from what Docker says and whether a probe has passed since the
/// container (re)started: `Starting` until the first pass (as the protocol defines it:
/// "created or started, not yet probed healthy"), then `Running`, and `Exited` once Docker
/// says it is no longer running, whatever the probes said.
pub fn status_of(docker: DockerState, passed_once: bool) -> ObservedStatus {
    match docker {
        DockerState::Exited => ObservedStatus::Exited,
        DockerState::Created => ObservedStatus::Starting,
        DockerState::Running if passed_once => ObservedStatus::Running,
        DockerState::Running => ObservedStatus::Starting,
    }
}

/// One container the agent manages.
struct Tracked {
    entry: InventoryEntry,
    port: u16,
    check: HealthCheck,
    docker_state: DockerState,
    probe: ProbeState,
    /// When the current life started (start, restart or adoption), for the startup grace.
    started: Instant,
    /// Version of the last change.
    changed_at: u64,
    /// Version at insertion.
    inserted_at: u64,
    /// Stops this container's probe task.
    stop_probe: CancellationToken,
    /// Its init process while it runs, for the activity meter.
    pid: Option<u32>,
    /// Local ports the agent's own probes used lately, so the meter does not take them for
    /// traffic.
    probe_ports: VecDeque<(u16, Instant)>,
    /// Connections the agent's probes opened to it, ever (counted after they connect).
    probe_connects: u64,
    /// Probes under way: their connections may be counted by the kernel and not yet here.
    probes_in_flight: u32,
}

/// How long a probe's port is remembered: longer than a closed connection's TIME_WAIT.
const PROBE_PORT_MEMORY: Duration = Duration::from_secs(120);
/// Activity is reported in steps of at least this much, so an active container causes at most
/// one fact per step.
pub const ACTIVITY_STEP: Duration = Duration::from_secs(2);

#[derive(Default)]
struct Inner {
    entries: HashMap<ContainerId, Tracked>,
    /// Creates in flight; a destroy waits on the receiver until the create is over.
    creating: HashMap<ContainerId, InFlight>,
    tombstones: HashMap<ContainerId, Instant>,
    /// Containers being restarted on command: events and resync leave them alone until the
    /// restart is over (its own `die` must not read as a death).
    restarting: HashSet<ContainerId>,
    version: u64,
}

impl Inner {
    fn bump(&mut self) -> u64 {
        self.version += 1;
        self.version
    }

    fn tombstoned(&self, id: &ContainerId) -> bool {
        self.tombstones
            .get(id)
            .is_some_and(|at| at.elapsed() < TOMBSTONE_TTL)
    }

    /// Whether events and resync must leave `id` alone.
    fn busy(&self, id: &ContainerId) -> bool {
        self.creating.contains_key(id) || self.tombstoned(id) || self.restarting.contains(id)
    }
}

/// What pausing or unpausing a container needs ([`Inventory::pause_target`]).
pub struct PauseTarget {
    /// Docker's id.
    pub docker_id: String,
    /// Paused now, as far as the agent knows.
    pub paused: bool,
    /// Running and probed healthy.
    pub healthy: bool,
    /// Its address.
    pub addr: Option<std::net::Ipv6Addr>,
    /// Its service port.
    pub port: u16,
    /// Its pool's health check.
    pub check: HealthCheck,
}

/// The answer to a create request.
pub enum Admission {
    /// The id is new: create it, holding this guard until done.
    Admitted(CreateGuard),
    /// The container exists already.
    Known,
    /// A create of this id is already under way.
    InFlight,
    /// The id was destroyed; it is never created again.
    Destroyed,
}

/// A create in flight, as the inventory sees it.
struct InFlight {
    /// Closed when the create is over.
    done: watch::Receiver<()>,
    /// Cancelled by a destroy of the same id.
    destroyed: CancellationToken,
}

/// Marks a create as in flight; dropping it ends that (and wakes a waiting destroy).
pub struct CreateGuard {
    id: ContainerId,
    destroyed: CancellationToken,
    _done: watch::Sender<()>,
}

impl CreateGuard {
    /// The container being created.
    pub fn id(&self) -> ContainerId {
        self.id
    }

    /// Cancelled when a destroy of this id arrives: a create still waiting for its turn gives
    /// up at once instead of making a container only to remove it.
    pub fn destroyed(&self) -> &CancellationToken {
        &self.destroyed
    }
}

/// What an upsert did.
pub enum Upsert {
    /// A new entry: start probing it with this token.
    Inserted(CancellationToken),
    /// An existing entry was updated (or was already current).
    Updated,
    /// Nothing was done (the id is being created or destroyed, or the observation is stale).
    Skipped,
}

/// What the activity meter needs of one running container.
pub struct MeterTarget {
    /// The container.
    pub id: ContainerId,
    /// Its init process.
    pub pid: u32,
    /// Local ports of the agent's recent probes.
    pub probe_ports: HashSet<u16>,
    /// Connections the agent's probes opened to it, ever.
    pub probe_connects: u64,
    /// Probes under way when this was taken.
    pub probes_in_flight: u32,
}

/// Where and how to probe a container next.
pub struct ProbeTarget {
    /// Its address, if it has one.
    pub addr: Option<Ipv6Addr>,
    /// Service port.
    pub port: u16,
    /// The check.
    pub check: HealthCheck,
    /// Whether Docker says it runs (no probing otherwise).
    pub running: bool,
    /// Time to wait after this probe.
    pub delay: Duration,
}

/// The agent's inventory. See the module doc.
pub struct Inventory {
    inner: Mutex<Inner>,
    outbox: Outbox,
    grace: Duration,
    /// Parent of every probe task's token.
    probes: CancellationToken,
}

impl Inventory {
    /// An empty inventory publishing facts to `outbox`; `grace` is the health startup grace.
    pub fn new(outbox: Outbox, grace: Duration, probes: CancellationToken) -> Self {
        Inventory {
            inner: Mutex::new(Inner::default()),
            outbox,
            grace,
            probes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic under the lock leaves the data consistent enough (every method writes whole
        // values), so a poisoned lock is used as is rather than crashing the agent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every entry, sorted by id.
    pub fn snapshot(&self) -> Vec<InventoryEntry> {
        let inner = self.lock();
        let mut list: Vec<InventoryEntry> =
            inner.entries.values().map(|t| t.entry.clone()).collect();
        drop(inner);
        list.sort_by_key(|e| e.id);
        list
    }

    /// Number of entries.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Docker id of a known container.
    pub fn docker_id_of(&self, id: &ContainerId) -> Option<String> {
        self.lock()
            .entries
            .get(id)
            .map(|t| t.entry.docker_id.clone())
    }

    /// Decides whether a create of `id` goes ahead (see the module doc).
    pub fn admit_create(&self, id: ContainerId) -> Admission {
        let mut inner = self.lock();
        if inner.tombstoned(&id) {
            return Admission::Destroyed;
        }
        if inner.entries.contains_key(&id) {
            return Admission::Known;
        }
        if inner.creating.contains_key(&id) {
            return Admission::InFlight;
        }
        let (tx, rx) = watch::channel(());
        let destroyed = CancellationToken::new();
        inner.creating.insert(
            id,
            InFlight {
                done: rx,
                destroyed: destroyed.clone(),
            },
        );
        Admission::Admitted(CreateGuard {
            id,
            destroyed,
            _done: tx,
        })
    }

    /// Whether `id` was destroyed (a queued create checks before starting).
    pub fn is_destroyed(&self, id: &ContainerId) -> bool {
        self.lock().tombstoned(id)
    }

    /// Ends a successful create: the container becomes an entry (status `Starting` until its
    /// first probe passes) unless it was destroyed meanwhile, in which case the destroy that
    /// waits on the guard removes it.
    pub fn finish_create(
        &self,
        guard: CreateGuard,
        obs: &Observation,
        labels: &ContainerLabels,
    ) -> Upsert {
        let mut inner = self.lock();
        inner.creating.remove(&guard.id);
        if inner.tombstoned(&guard.id) {
            return Upsert::Skipped;
        }
        self.insert_locked(&mut inner, obs, labels)
    }

    /// Ends a failed create: reports it (unless the id was destroyed meanwhile), saying
    /// whether dockerd had stopped answering.
    pub fn fail_create(&self, guard: CreateGuard, error: String, runtime_unavailable: bool) {
        let mut inner = self.lock();
        inner.creating.remove(&guard.id);
        if !inner.tombstoned(&guard.id) {
            self.outbox.send(Outgoing::CreateFailed {
                id: guard.id,
                error,
                runtime_unavailable,
            });
        }
    }

    /// Forgets a create that never started (shutdown or destroy while it waited for its turn).
    pub fn abandon_create(&self, guard: CreateGuard) {
        self.lock().creating.remove(&guard.id);
    }

    /// Starts destroying `id`: tombstones it (freezing its entry) and, if a create of it is in
    /// flight, returns a receiver that resolves when that create is over. Returns the entry's
    /// Docker id, if it is known.
    pub fn begin_destroy(&self, id: ContainerId) -> (Option<String>, Option<watch::Receiver<()>>) {
        let mut inner = self.lock();
        // Expired tombstones are pruned here, where they are added, so the map stays as small
        // as the destroys of the last TTL.
        inner
            .tombstones
            .retain(|_, at| at.elapsed() < TOMBSTONE_TTL);
        inner.tombstones.insert(id, Instant::now());
        let known = inner.entries.get(&id).map(|t| t.entry.docker_id.clone());
        let creating = inner.creating.get(&id).map(|c| {
            c.destroyed.cancel();
            c.done.clone()
        });
        (known, creating)
    }

    /// Marks `id` as being restarted; its Docker id, if it is known and not otherwise busy.
    pub fn begin_restart(&self, id: &ContainerId) -> Option<String> {
        let mut inner = self.lock();
        if inner.busy(id) {
            return None;
        }
        let docker_id = inner.entries.get(id)?.entry.docker_id.clone();
        inner.restarting.insert(*id);
        Some(docker_id)
    }

    /// Ends a restart: with what Docker says now, the entry starts a new life (probed from
    /// scratch, with a new startup grace); without, it is left to the next resync.
    pub fn end_restart(&self, id: &ContainerId, obs: Option<&Observation>) {
        let mut inner = self.lock();
        inner.restarting.remove(id);
        let Some(obs) = obs else { return };
        let version = inner.bump();
        let Some(t) = inner.entries.get_mut(id) else {
            return;
        };
        let before = t.entry.clone();
        t.probe = ProbeState::default();
        t.started = Instant::now();
        t.docker_state = obs.state;
        t.pid = obs.pid;
        t.entry.ipv6 = obs.ipv6.or(t.entry.ipv6);
        t.entry.exit_code = None;
        t.entry.oom_killed = false;
        t.entry.health = t.probe.verdict;
        t.entry.status = status_of(t.docker_state, t.probe.passed_once);
        self.changed(t, &before, version);
    }

    /// Lifts the tombstone of a destroy that failed: the entry (if any) lives on, the resync
    /// adopts the container if it had none.
    pub fn destroy_failed(&self, id: &ContainerId) {
        self.lock().tombstones.remove(id);
    }

    /// Docker removed `id`: drops its entry (stopping its probes) and, with a reason, reports
    /// it gone.
    pub fn finish_destroy(&self, id: ContainerId, gone: Option<ContainerEndReason>) {
        let mut inner = self.lock();
        if let Some(t) = inner.entries.remove(&id) {
            t.stop_probe.cancel();
            inner.bump();
        }
        if let Some(reason) = gone {
            self.outbox.send(Outgoing::Gone { id, reason });
        }
    }

    /// A version mark; see the module doc.
    pub fn mark(&self) -> u64 {
        self.lock().bump()
    }

    /// Adds or updates the entry of an inspected container. For an existing entry, only when it
    /// was not changed after `mark` (pass `u64::MAX` for observations fresher than anything
    /// held, e.g. an inspect made right after a `start` event).
    pub fn upsert(&self, obs: &Observation, labels: &ContainerLabels, mark: u64) -> Upsert {
        let mut inner = self.lock();
        if inner.busy(&labels.id) {
            return Upsert::Skipped;
        }
        if !inner.entries.contains_key(&labels.id) {
            return self.insert_locked(&mut inner, obs, labels);
        }
        let version = inner.bump();
        let Some(t) = inner.entries.get_mut(&labels.id) else {
            return Upsert::Skipped;
        };
        if t.changed_at > mark {
            return Upsert::Skipped;
        }
        let before = t.entry.clone();
        if t.docker_state != DockerState::Running && obs.state == DockerState::Running {
            // A new life (restarted): probe it from scratch, with a new startup grace.
            t.probe = ProbeState::default();
            t.started = Instant::now();
            t.entry.exit_code = None;
            t.entry.oom_killed = false;
        }
        t.docker_state = obs.state;
        t.pid = obs.pid;
        t.entry.paused = obs.paused && obs.state == DockerState::Running;
        t.entry.docker_id = obs.docker_id.clone();
        // A stopped container loses its address in Docker; the entry keeps the last one.
        t.entry.ipv6 = obs.ipv6.or(t.entry.ipv6);
        if obs.state == DockerState::Exited {
            t.entry.exit_code = obs.exit_code.or(t.entry.exit_code);
            t.entry.oom_killed |= obs.oom_killed;
        }
        t.entry.health = t.probe.verdict;
        t.entry.status = status_of(t.docker_state, t.probe.passed_once);
        self.changed(t, &before, version);
        Upsert::Updated
    }

    fn insert_locked(
        &self,
        inner: &mut Inner,
        obs: &Observation,
        labels: &ContainerLabels,
    ) -> Upsert {
        let version = inner.bump();
        // A paused container found at adoption was healthy when it was paused (only healthy
        // ones are); it stays paused and is reported so, its health checked by the paused
        // tier's own check (a brief unpause), not by probes that would find it frozen.
        let paused = obs.paused && obs.state == DockerState::Running;
        let probe = if paused {
            ProbeState {
                verdict: Health::Healthy,
                passed_once: true,
                consecutive_failures: 0,
            }
        } else {
            ProbeState::default()
        };
        let entry = InventoryEntry {
            id: labels.id,
            pool: labels.pool.clone(),
            generation: labels.generation,
            docker_id: obs.docker_id.clone(),
            ipv6: obs.ipv6,
            status: status_of(obs.state, probe.passed_once),
            health: probe.verdict,
            exit_code: obs.exit_code,
            oom_killed: obs.oom_killed,
            last_activity_at: None,
            paused,
        };
        let token = self.probes.child_token();
        info!(container = %labels.id, pool = %labels.pool, status = ?entry.status, ipv6 = ?entry.ipv6, "container tracked");
        self.outbox.send(Outgoing::Observed(entry.clone()));
        inner.entries.insert(
            labels.id,
            Tracked {
                entry,
                port: labels.port,
                check: labels.health.clone(),
                docker_state: obs.state,
                probe,
                started: Instant::now(),
                changed_at: version,
                inserted_at: version,
                stop_probe: token.clone(),
                pid: obs.pid,
                probe_ports: VecDeque::new(),
                probe_connects: 0,
                probes_in_flight: 0,
            },
        );
        Upsert::Inserted(token)
    }

    /// Stamps and reports a change of `t`'s entry, if there is one.
    fn changed(&self, t: &mut Tracked, before: &InventoryEntry, version: u64) {
        if t.entry != *before {
            t.changed_at = version;
            if t.entry.status != before.status || t.entry.health != before.health {
                info!(container = %t.entry.id, status = ?t.entry.status, health = t.entry.health.as_str(), "container changed");
            }
            self.outbox.send(Outgoing::Observed(t.entry.clone()));
        }
    }

    /// Applies `f` to a known entry (not one being created or destroyed) and reports the change.
    /// With `docker_id`, only if the entry is that Docker container: an event about another
    /// container claiming the same id (a duplicate being removed) must not touch the entry.
    fn update(
        &self,
        id: &ContainerId,
        docker_id: Option<&str>,
        f: impl FnOnce(&mut Tracked),
    ) -> bool {
        let mut inner = self.lock();
        if inner.busy(id) {
            return false;
        }
        let version = inner.bump();
        let Some(t) = inner.entries.get_mut(id) else {
            return false;
        };
        if docker_id.is_some_and(|d| d != t.entry.docker_id) {
            return false;
        }
        let before = t.entry.clone();
        f(t);
        self.changed(t, &before, version);
        true
    }

    /// Docker says the container died with `exit_code`.
    pub fn on_die(
        &self,
        id: &ContainerId,
        docker_id: Option<&str>,
        exit_code: Option<i64>,
    ) -> bool {
        self.update(id, docker_id, |t| {
            t.docker_state = DockerState::Exited;
            t.entry.status = ObservedStatus::Exited;
            t.entry.exit_code = exit_code.or(t.entry.exit_code);
        })
    }

    /// Docker says the OOM killer hit the container.
    pub fn on_oom(&self, id: &ContainerId, docker_id: Option<&str>) -> bool {
        self.update(id, docker_id, |t| t.entry.oom_killed = true)
    }

    /// The container is gone from Docker without the agent removing it: drops the entry and
    /// reports it gone. Entries inserted after `mark` are kept (they may simply be newer than
    /// the listing that missed them); with `docker_id`, only that Docker container's entry goes.
    pub fn remove_vanished(
        &self,
        id: &ContainerId,
        docker_id: Option<&str>,
        reason: ContainerEndReason,
        mark: u64,
    ) -> bool {
        let mut inner = self.lock();
        if inner.busy(id) {
            return false;
        }
        match inner.entries.get(id) {
            Some(t)
                if t.inserted_at <= mark && docker_id.is_none_or(|d| d == t.entry.docker_id) => {}
            _ => return false,
        }
        inner.bump();
        if let Some(t) = inner.entries.remove(id) {
            t.stop_probe.cancel();
            info!(container = %id, %reason, "container gone");
            self.outbox.send(Outgoing::Gone { id: *id, reason });
        }
        true
    }

    /// Ids of the entries that existed at `mark` but are not in `seen`.
    pub fn missing(&self, seen: &HashSet<ContainerId>, mark: u64) -> Vec<ContainerId> {
        self.lock()
            .entries
            .values()
            .filter(|t| t.inserted_at <= mark && !seen.contains(&t.entry.id))
            .map(|t| t.entry.id)
            .collect()
    }

    /// Whether the resync should inspect a listed container: it is unknown (and not being
    /// created or destroyed), or Docker's state differs from the entry's.
    pub fn needs_inspect(&self, id: &ContainerId, docker_id: &str, state: DockerState) -> bool {
        let inner = self.lock();
        if inner.busy(id) {
            return false;
        }
        match inner.entries.get(id) {
            None => true,
            Some(t) => t.docker_state != state || t.entry.docker_id != docker_id,
        }
    }

    /// Whether `id` is being created or destroyed.
    pub fn is_busy(&self, id: &ContainerId) -> bool {
        self.lock().busy(id)
    }

    /// What the probe task of `id` should do next; `None` once the entry is gone.
    pub fn probe_target(&self, id: &ContainerId) -> Option<ProbeTarget> {
        let inner = self.lock();
        let t = inner.entries.get(id)?;
        Some(ProbeTarget {
            addr: t.entry.ipv6,
            port: t.port,
            check: t.check.clone(),
            // A paused container is not probed (it is frozen); the paused tier's check looks
            // at it now and then.
            running: t.docker_state == DockerState::Running && !t.entry.paused,
            delay: health::next_delay(&t.probe, &t.check),
        })
    }

    /// A probe of `id` is about to connect; [`Inventory::probe_finished`] follows.
    pub fn probe_started(&self, id: &ContainerId) {
        if let Some(t) = self.lock().entries.get_mut(id) {
            t.probes_in_flight += 1;
        }
    }

    /// A probe of `id` is over; it connected from these local `ports`.
    pub fn probe_finished(&self, id: &ContainerId, ports: &[u16]) {
        let mut inner = self.lock();
        if let Some(t) = inner.entries.get_mut(id) {
            let now = Instant::now();
            t.probes_in_flight = t.probes_in_flight.saturating_sub(1);
            t.probe_connects += ports.len() as u64;
            t.probe_ports.extend(ports.iter().map(|port| (*port, now)));
            while t
                .probe_ports
                .front()
                .is_some_and(|(_, at)| now.duration_since(*at) > PROBE_PORT_MEMORY)
            {
                t.probe_ports.pop_front();
            }
        }
    }

    /// What pausing or unpausing `id` needs: its Docker id, whether it is paused, whether it
    /// runs healthy, its address and port, its health check. `None` for a container that is
    /// unknown here or being created, destroyed or restarted.
    pub fn pause_target(&self, id: &ContainerId) -> Option<PauseTarget> {
        let inner = self.lock();
        if inner.busy(id) {
            return None;
        }
        let t = inner.entries.get(id)?;
        Some(PauseTarget {
            docker_id: t.entry.docker_id.clone(),
            paused: t.entry.paused,
            healthy: t.docker_state == DockerState::Running && t.entry.health == Health::Healthy,
            addr: t.entry.ipv6,
            port: t.port,
            check: t.check.clone(),
        })
    }

    /// Records that `id` is paused (or runs again) and reports it. A container unpaused is
    /// probed afresh from its current verdict (its probe task picks it up again).
    pub fn set_paused(&self, id: &ContainerId, paused: bool) {
        self.update(id, None, |t| t.entry.paused = paused);
    }

    /// Paused containers, for the paused tier's check.
    pub fn paused_ids(&self) -> Vec<ContainerId> {
        self.lock()
            .entries
            .values()
            .filter(|t| t.entry.paused)
            .map(|t| t.entry.id)
            .collect()
    }

    /// A paused container failed the paused tier's check `failures` times in a row: it is
    /// reported unhealthy (and the control plane replaces it).
    pub fn mark_unhealthy(&self, id: &ContainerId, failures: u32) {
        self.update(id, None, |t| {
            t.probe.verdict = Health::Unhealthy {
                consecutive_failures: failures,
            };
            t.probe.consecutive_failures = failures;
            t.entry.health = t.probe.verdict;
        });
    }

    /// Running containers to meter.
    pub fn meter_targets(&self) -> Vec<MeterTarget> {
        self.lock()
            .entries
            .values()
            .filter(|t| t.docker_state == DockerState::Running)
            .filter_map(|t| {
                Some(MeterTarget {
                    id: t.entry.id,
                    pid: t.pid?,
                    probe_ports: t.probe_ports.iter().map(|(p, _)| *p).collect(),
                    probe_connects: t.probe_connects,
                    probes_in_flight: t.probes_in_flight,
                })
            })
            .collect()
    }

    /// `(probe_connects, probes_in_flight)` of `id` now, for the meter to check that no probe
    /// connected while it read the container's counters.
    pub fn probe_counts(&self, id: &ContainerId) -> Option<(u64, u32)> {
        let inner = self.lock();
        let t = inner.entries.get(id)?;
        Some((t.probe_connects, t.probes_in_flight))
    }

    /// Records network activity of `id` at `at`, reported (as a fact) in steps of at least
    /// [`ACTIVITY_STEP`].
    pub fn record_activity(&self, id: &ContainerId, at: warmpool_proto::Timestamp) {
        self.update(id, None, |t| {
            let due = t
                .entry
                .last_activity_at
                .is_none_or(|last| at.since(last) >= ACTIVITY_STEP);
            if due {
                t.entry.last_activity_at = Some(at);
            }
        });
    }

    /// Folds one probe outcome into the verdict of `id` (ignored unless it is running: a probe
    /// that raced with the container's death says nothing).
    pub fn record_probe(&self, id: &ContainerId, outcome: &Outcome) {
        let grace = self.grace;
        self.update(id, None, |t| {
            if t.docker_state != DockerState::Running {
                return;
            }
            let since = Instant::now().duration_since(t.started);
            t.probe = t.probe.record(outcome, &t.check, since, grace);
            t.entry.health = t.probe.verdict;
            t.entry.status = status_of(t.docker_state, t.probe.passed_once);
        });
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use warmpool_proto::PoolName;

    use super::*;
    use crate::outbox::{outbox, OutboxReceiver};

    fn inv() -> (Inventory, OutboxReceiver) {
        let (tx, rx) = outbox();
        (
            Inventory::new(tx, Duration::from_secs(60), CancellationToken::new()),
            rx,
        )
    }

    fn labels(id: ContainerId) -> ContainerLabels {
        ContainerLabels {
            id,
            pool: PoolName::new("demo").unwrap(),
            generation: 1,
            health: HealthCheck::default(),
            port: 8080,
        }
    }

    fn obs(state: DockerState) -> Observation {
        Observation {
            docker_id: "d1".into(),
            name: "wp-x".into(),
            labels: HashMap::new(),
            state,
            exit_code: (state == DockerState::Exited).then_some(137),
            oom_killed: false,
            ipv6: Some("fd36:1::2".parse().unwrap()),
            ipv4: None,
            pid: None,
            paused: false,
        }
    }

    #[test]
    fn status_follows_docker_and_the_first_pass() {
        assert_eq!(
            status_of(DockerState::Created, true),
            ObservedStatus::Starting
        );
        assert_eq!(
            status_of(DockerState::Running, false),
            ObservedStatus::Starting
        );
        assert_eq!(
            status_of(DockerState::Running, true),
            ObservedStatus::Running
        );
        assert_eq!(status_of(DockerState::Exited, true), ObservedStatus::Exited);
    }

    #[test]
    fn one_create_per_id_and_no_resurrection() {
        let (inv, _rx) = inv();
        let id = ContainerId::new();
        let Admission::Admitted(guard) = inv.admit_create(id) else {
            panic!("first create is admitted")
        };
        assert!(matches!(inv.admit_create(id), Admission::InFlight));
        // The resync must not adopt what is being created.
        assert!(matches!(
            inv.upsert(&obs(DockerState::Running), &labels(id), u64::MAX),
            Upsert::Skipped
        ));
        assert!(matches!(
            inv.finish_create(guard, &obs(DockerState::Running), &labels(id)),
            Upsert::Inserted(_)
        ));
        assert!(matches!(inv.admit_create(id), Admission::Known));
        let (taken, wait) = inv.begin_destroy(id);
        assert_eq!(taken.as_deref(), Some("d1"));
        assert!(wait.is_none());
        assert!(matches!(inv.admit_create(id), Admission::Destroyed));
        // Until Docker confirms, the entry stays, frozen: no event or resync changes it.
        assert_eq!(inv.len(), 1);
        assert!(!inv.on_die(&id, None, Some(137)));
        assert!(!inv.remove_vanished(&id, None, ContainerEndReason::Vanished, u64::MAX));
        assert!(matches!(
            inv.upsert(&obs(DockerState::Running), &labels(id), u64::MAX),
            Upsert::Skipped
        ));
        inv.finish_destroy(id, Some(ContainerEndReason::Released));
        assert_eq!(inv.len(), 0);
        assert!(matches!(inv.admit_create(id), Admission::Destroyed));
    }

    #[test]
    fn destroy_during_create_waits_and_the_create_does_not_insert() {
        let (inv, _rx) = inv();
        let id = ContainerId::new();
        let Admission::Admitted(guard) = inv.admit_create(id) else {
            panic!()
        };
        let (taken, wait) = inv.begin_destroy(id);
        assert!(taken.is_none());
        assert!(guard.destroyed().is_cancelled(), "a queued create gives up");
        let mut wait = wait.expect("destroy waits for the create");
        assert!(matches!(
            inv.finish_create(guard, &obs(DockerState::Running), &labels(id)),
            Upsert::Skipped
        ));
        // The guard is dropped: the waiting destroy wakes (its channel is closed).
        assert!(futures::executor::block_on(wait.changed()).is_err());
        assert_eq!(inv.len(), 0);
    }

    #[test]
    fn stale_resync_observations_lose_to_newer_events() {
        let (inv, _rx) = inv();
        let id = ContainerId::new();
        inv.upsert(&obs(DockerState::Running), &labels(id), u64::MAX);
        let mark = inv.mark();
        // An event arrives while the resync is listing.
        assert!(inv.on_die(&id, None, Some(137)));
        // The resync's (older) observation says running: ignored.
        inv.upsert(&obs(DockerState::Running), &labels(id), mark);
        assert_eq!(inv.snapshot()[0].status, ObservedStatus::Exited);
        assert_eq!(inv.snapshot()[0].exit_code, Some(137));
        // An entry added after the mark is not "missing" from the older listing.
        let late = ContainerId::new();
        inv.upsert(&obs(DockerState::Running), &labels(late), u64::MAX);
        let seen = HashSet::from([id]);
        assert!(inv.missing(&seen, mark).is_empty());
        assert!(!inv.remove_vanished(&late, None, ContainerEndReason::Vanished, mark));
        // An event about another Docker container claiming the same id changes nothing.
        assert!(!inv.remove_vanished(&id, Some("other"), ContainerEndReason::Vanished, inv.mark()));
        assert!(!inv.on_die(&late, Some("other"), Some(1)));
        assert!(inv.remove_vanished(&id, Some("d1"), ContainerEndReason::Vanished, inv.mark()));
        assert_eq!(inv.len(), 1);
    }

    #[test]
    fn probes_drive_status_and_health_and_changes_become_facts() {
        let (inv, mut rx) = inv();
        let id = ContainerId::new();
        inv.upsert(&obs(DockerState::Running), &labels(id), u64::MAX);
        inv.record_probe(&id, &Outcome::Fail("refused".into()));
        inv.record_probe(&id, &Outcome::Pass);
        inv.record_probe(&id, &Outcome::Pass); // no change, no fact
        let e = &inv.snapshot()[0];
        assert_eq!(
            (e.status, e.health),
            (ObservedStatus::Running, Health::Healthy)
        );
        inv.on_oom(&id, Some("d1"));
        inv.on_die(&id, Some("d1"), Some(137));
        inv.record_probe(&id, &Outcome::Pass); // dead: ignored
        let mut facts = Vec::new();
        while let Ok(Outgoing::Observed(e)) = rx.rx_for_tests().try_recv() {
            facts.push((e.status, e.health, e.oom_killed));
        }
        assert_eq!(
            facts,
            vec![
                (ObservedStatus::Starting, Health::Unknown, false),
                (ObservedStatus::Running, Health::Healthy, false),
                (ObservedStatus::Running, Health::Healthy, true),
                (ObservedStatus::Exited, Health::Healthy, true),
            ]
        );
    }

    #[test]
    fn a_restart_starts_a_new_life() {
        let (inv, _rx) = inv();
        let id = ContainerId::new();
        inv.upsert(&obs(DockerState::Running), &labels(id), u64::MAX);
        inv.record_probe(&id, &Outcome::Pass);
        inv.on_die(&id, None, Some(1));
        inv.upsert(&obs(DockerState::Running), &labels(id), u64::MAX);
        let e = &inv.snapshot()[0];
        assert_eq!(
            (e.status, e.health, e.exit_code),
            (ObservedStatus::Starting, Health::Unknown, None)
        );
    }
}
