//! The paused tier on this host: pausing warm containers on the leader's command, unpausing
//! one for an allocation (and checking it answers on its port), and checking the health of
//! paused containers now and then by unpausing them briefly.
//!
//! Every operation on one container holds that container's lock, so a pause and an unpause
//! never interleave. A container unpaused for an allocation is *claimed*: a pause arriving
//! after that (the leader's, sent before the allocation took the container, delivered late)
//! is refused, so a session's container is never frozen under it. The leader's
//! reconciliation is the backstop: an allocated container its agent reports paused is
//! unpaused again.

use std::collections::HashMap;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use warmpool_proto::agent::AgentReply;
use warmpool_proto::ContainerId;

use crate::agent::Shared;
use crate::health::{self, Outcome};

/// How long an unpause for an allocation keeps later pauses of the container refused.
const CLAIM_TTL: Duration = Duration::from_secs(600);
/// How often each paused container is unpaused briefly to check it still answers.
pub const CHECK_EVERY: Duration = Duration::from_secs(60);
/// How often the paused tier's check looks for containers due.
const CHECK_TICK: Duration = Duration::from_secs(5);

/// Per-container locks, claims and check times.
#[derive(Default)]
pub struct Pauses {
    locks: Mutex<HashMap<ContainerId, Arc<tokio::sync::Mutex<()>>>>,
    claimed: Mutex<HashMap<ContainerId, Instant>>,
    /// When each paused container was paused or last checked.
    checked: Mutex<HashMap<ContainerId, Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pauses {
    fn container_lock(&self, id: &ContainerId) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.locks).entry(*id).or_default().clone()
    }

    fn claim(&self, id: &ContainerId) {
        let mut claimed = lock(&self.claimed);
        claimed.retain(|_, at| at.elapsed() < CLAIM_TTL);
        claimed.insert(*id, Instant::now());
    }

    fn is_claimed(&self, id: &ContainerId) -> bool {
        lock(&self.claimed)
            .get(id)
            .is_some_and(|at| at.elapsed() < CLAIM_TTL)
    }

    fn forget(&self, id: &ContainerId) {
        lock(&self.locks).remove(id);
        lock(&self.checked).remove(id);
    }
}

/// Pauses a warm container (the leader's [`AgentCommand::Pause`](warmpool_proto::agent::AgentCommand)).
pub async fn pause(shared: &Arc<Shared>, id: ContainerId) -> AgentReply {
    let error = |message: String| AgentReply::Error { message };
    let guard = shared.pauses.container_lock(&id);
    let _held = guard.lock().await;
    if shared.pauses.is_claimed(&id) {
        return error(format!(
            "container {id} was unpaused for an allocation; not paused again"
        ));
    }
    let Some(t) = shared.inventory.pause_target(&id) else {
        return error(format!("container {id} is unknown here or busy"));
    };
    if t.paused {
        return AgentReply::Paused;
    }
    if !t.healthy {
        return error(format!("container {id} does not run healthy; not paused"));
    }
    let start = Instant::now();
    match shared.driver.pause(&t.docker_id).await {
        Ok(()) => {
            shared.inventory.set_paused(&id, true);
            lock(&shared.pauses.checked).insert(id, Instant::now());
            metrics::counter!("warmpool_agent_pauses_total", "op" => "pause", "outcome" => "ok")
                .increment(1);
            info!(container = %id, took_ms = start.elapsed().as_millis() as u64, "container paused");
            AgentReply::Paused
        }
        Err(e) => {
            metrics::counter!("warmpool_agent_pauses_total", "op" => "pause", "outcome" => "error")
                .increment(1);
            warn!(container = %id, error = %e, "pause failed");
            error(e.to_string())
        }
    }
}

/// Unpauses `id` if it is paused and waits until it accepts a connection on its service port
/// (at most `timeout`). With `claim`, later pauses of it are refused. Answers how long it
/// took and whether it was paused.
pub async fn unpause(
    shared: &Arc<Shared>,
    id: ContainerId,
    claim: bool,
    timeout: Duration,
) -> Result<(Duration, bool), String> {
    let start = Instant::now();
    if claim {
        // Before waiting for the lock: a pause queued behind us must see the claim.
        shared.pauses.claim(&id);
    }
    let guard = shared.pauses.container_lock(&id);
    let _held = guard.lock().await;
    let Some(t) = shared.inventory.pause_target(&id) else {
        return Err(format!("container {id} is unknown here or busy"));
    };
    // Docker, not the entry, says whether it is paused: unpause answers 409 when it is not.
    let locked_ms = start.elapsed().as_millis() as u64;
    let was_paused = shared
        .driver
        .unpause(&t.docker_id)
        .await
        .map_err(|e| e.to_string())?;
    let unpause_ms = start.elapsed().as_millis() as u64;
    if t.paused || was_paused {
        shared.inventory.set_paused(&id, false);
        lock(&shared.pauses.checked).remove(&id);
    }
    let Some(addr) = t.addr else {
        return Err(format!("container {id} has no IPv6 address"));
    };
    let answered = wait_for_port(addr, t.port, start + timeout).await;
    let outcome = if answered { "ok" } else { "no_answer" };
    metrics::counter!("warmpool_agent_pauses_total", "op" => "unpause", "outcome" => outcome)
        .increment(1);
    metrics::histogram!("warmpool_agent_unpause_seconds").record(start.elapsed().as_secs_f64());
    if !answered {
        return Err(format!(
            "container {id} did not accept a connection on port {} within {timeout:?} of its unpause",
            t.port
        ));
    }
    info!(container = %id, was_paused, locked_ms, unpause_ms, took_ms = start.elapsed().as_millis() as u64, "container unpaused and answering");
    Ok((start.elapsed(), was_paused))
}

/// Whether `[addr]:port` accepts a TCP connection before `deadline` (tried every few ms).
async fn wait_for_port(addr: Ipv6Addr, port: u16, deadline: Instant) -> bool {
    let target = SocketAddr::V6(SocketAddrV6::new(addr, port, 0, 0));
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let attempt = left.min(Duration::from_millis(250));
        if let Ok(Ok(_)) =
            tokio::time::timeout(attempt, tokio::net::TcpStream::connect(target)).await
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5).min(left)).await;
    }
}

/// Unpauses every paused container briefly, at most every [`CHECK_EVERY`], runs its pool's
/// health check (up to its failure threshold), and pauses it again; one that fails them all
/// is reported unhealthy and left running for the control plane to replace.
pub async fn check_paused(shared: Arc<Shared>, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(CHECK_TICK) => {}
        }
        for id in shared.inventory.paused_ids() {
            if cancel.is_cancelled() {
                return;
            }
            let due = {
                let mut checked = lock(&shared.pauses.checked);
                let at = *checked.entry(id).or_insert_with(Instant::now);
                at.elapsed() >= CHECK_EVERY
            };
            if due {
                check_one(&shared, id).await;
            }
        }
        // Forget containers no longer here.
        let known: Vec<ContainerId> = lock(&shared.pauses.locks).keys().copied().collect();
        for id in known {
            if shared.inventory.docker_id_of(&id).is_none() {
                shared.pauses.forget(&id);
            }
        }
    }
}

async fn check_one(shared: &Arc<Shared>, id: ContainerId) {
    let guard = shared.pauses.container_lock(&id);
    // The lock is held to unpause and to pause again, not while probing: an unpause for an
    // allocation must never wait for a health check (the allocation's client is waiting).
    let t = {
        let _held = guard.lock().await;
        lock(&shared.pauses.checked).insert(id, Instant::now());
        let Some(t) = shared.inventory.pause_target(&id) else {
            return;
        };
        if !t.paused || shared.pauses.is_claimed(&id) || t.addr.is_none() {
            return;
        }
        if let Err(e) = shared.driver.unpause(&t.docker_id).await {
            warn!(container = %id, error = %e, "unpausing for the paused tier's check failed");
            return;
        }
        t
    };
    let Some(addr) = t.addr else { return };
    let threshold = t.check.failure_threshold.max(1);
    let mut passed = false;
    for attempt in 0..threshold {
        if shared.pauses.is_claimed(&id) {
            break;
        }
        if health::probe_traced(addr, t.port, &t.check).await.0 == Outcome::Pass {
            passed = true;
            break;
        }
        if attempt + 1 < threshold {
            tokio::time::sleep(Duration::from_millis(t.check.interval_ms.min(1_000))).await;
        }
    }
    let _held = guard.lock().await;
    if shared.pauses.is_claimed(&id) {
        // Allocated while it was being checked: its unpause found it running; it stays so.
        shared.inventory.set_paused(&id, false);
        return;
    }
    metrics::counter!("warmpool_agent_paused_checks_total", "outcome" => if passed { "pass" } else { "fail" })
        .increment(1);
    if !passed {
        warn!(container = %id, "a paused container failed its check; left running for replacement");
        shared.inventory.set_paused(&id, false);
        shared.inventory.mark_unhealthy(&id, threshold);
        return;
    }
    if let Err(e) = shared.driver.pause(&t.docker_id).await {
        warn!(container = %id, error = %e, "pausing again after the check failed");
        shared.inventory.set_paused(&id, false);
    }
}
