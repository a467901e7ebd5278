//! Whether dockerd answers, watched by a ping every heartbeat interval (and at once when the
//! event stream breaks, the likeliest first sign of a stopped dockerd).
//!
//! While it does not (stopped for an upgrade, crashed, hung), the agent keeps running and
//! reporting: heartbeats carry the outage ([`warmpool_proto::agent::RuntimeOutage`]) so the
//! control plane grants and places nothing here, and nothing the agent knows is reported gone
//! because Docker calls fail (with Docker's live restore the containers run on; their probes go
//! straight to their addresses). Creates are refused at once with a clear error, and an
//! inventory request is answered with an error rather than with what the agent last knew: the
//! leader must not reconcile against a list nobody could check. Resyncs and isolation syncs
//! wait for the runtime instead of failing every pass. When dockerd answers again, the
//! inventory is re-read from it (a resync), the isolation rules are re-applied, and the event
//! watcher re-attaches at once instead of at the end of its backoff.
//!
//! The verdict is a pure state machine ([`RuntimeHealth`]); [`watch`] only pings and applies.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use warmpool_proto::agent::RuntimeOutage;
use warmpool_proto::Timestamp;

use crate::agent::Shared;

/// What one ping changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transition {
    /// No change.
    Same,
    /// The runtime stopped answering.
    Lost,
    /// It answers again after an outage that began at `since`.
    Back {
        /// When the outage began.
        since: Timestamp,
    },
}

/// The runtime's state as the agent last saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuntimeHealth {
    outage: Option<RuntimeOutage>,
}

impl RuntimeHealth {
    /// Applies one ping's result at `now`.
    pub fn observe(&mut self, result: Result<(), String>, now: Timestamp) -> Transition {
        match (result, &mut self.outage) {
            (Ok(()), None) => Transition::Same,
            (Ok(()), Some(o)) => {
                let since = o.since;
                self.outage = None;
                Transition::Back { since }
            }
            (Err(error), Some(o)) => {
                o.error = error;
                Transition::Same
            }
            (Err(error), None) => {
                self.outage = Some(RuntimeOutage { since: now, error });
                Transition::Lost
            }
        }
    }

    /// The outage under way, if any.
    pub fn outage(&self) -> Option<&RuntimeOutage> {
        self.outage.as_ref()
    }
}

/// How long a ping may take before dockerd counts as not answering. Far above what a busy
/// daemon needs for `GET /_ping`, far below the 60 s other calls may take: a hung dockerd is
/// reported within a few heartbeats.
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// The shared verdict, and the wake-ups around it. `std::sync::Mutex`: nothing awaits under it.
#[derive(Default)]
pub struct Runtime {
    health: Mutex<RuntimeHealth>,
    /// Asks [`watch`] for a ping now.
    check: Notify,
    /// Wakes whoever waits for dockerd to answer again.
    back: Notify,
}

impl Runtime {
    /// The outage under way, if any (for heartbeats and refusals).
    pub fn outage(&self) -> Option<RuntimeOutage> {
        self.lock().outage().cloned()
    }

    /// Asks for a ping now instead of at the next interval (a Docker call or the event stream
    /// just failed).
    pub fn check_soon(&self) {
        self.check.notify_one();
    }

    /// Completes when an outage ends (after the resync has been asked for). Only a waiter that
    /// exists when it ends is woken: use it beside a timer, never alone.
    pub async fn back(&self) {
        self.back.notified().await
    }

    fn observe(&self, result: Result<(), String>) -> Transition {
        self.lock().observe(result, Timestamp::now())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RuntimeHealth> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Whether dockerd answers a ping now (within the ping timeout).
pub async fn answers(shared: &Shared) -> bool {
    matches!(
        tokio::time::timeout(PING_TIMEOUT, shared.driver.ping()).await,
        Ok(Ok(()))
    )
}

/// Pings dockerd every heartbeat interval, and when asked ([`Runtime::check_soon`]), until
/// `cancel`.
pub async fn watch(shared: Arc<Shared>, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(shared.config.heartbeat) => {}
            _ = shared.runtime.check.notified() => {}
        }
        let result = match tokio::time::timeout(PING_TIMEOUT, shared.driver.ping()).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!(
                "dockerd did not answer a ping within {}s",
                PING_TIMEOUT.as_secs()
            )),
        };
        match shared.runtime.observe(result) {
            Transition::Same => {}
            Transition::Lost => {
                let error = shared.runtime.outage().map(|o| o.error).unwrap_or_default();
                warn!(%error, "dockerd does not answer: reporting the runtime unavailable; containers and their records are kept");
                crate::telemetry::runtime_available(false);
            }
            Transition::Back { since } => {
                info!(
                    down_secs = Timestamp::now().since(since).as_secs_f64(),
                    "dockerd answers again: re-reading the inventory, re-attaching the event stream"
                );
                crate::telemetry::runtime_available(true);
                shared.resync_now.notify_one();
                shared.isolation.poke();
                shared.runtime.back.notify_waiters();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_starts_at_the_first_failure_and_ends_at_the_first_answer() {
        let mut h = RuntimeHealth::default();
        assert_eq!(h.observe(Ok(()), Timestamp(1)), Transition::Same);
        assert_eq!(
            h.observe(Err("refused".into()), Timestamp(10)),
            Transition::Lost
        );
        assert_eq!(
            h.observe(Err("still refused".into()), Timestamp(20)),
            Transition::Same
        );
        let o = h.outage().expect("an outage");
        assert_eq!(
            (o.since, o.error.as_str()),
            (Timestamp(10), "still refused")
        );
        assert_eq!(
            h.observe(Ok(()), Timestamp(30)),
            Transition::Back {
                since: Timestamp(10)
            }
        );
        assert!(h.outage().is_none());
        assert_eq!(h.observe(Ok(()), Timestamp(40)), Transition::Same);
    }
}
