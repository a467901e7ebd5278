//! Env and secrets given at claim: delivered by the member that took the claim straight to the
//! container's agent, which writes them to `/run/warmpool/env` (a tmpfs in the container, mode
//! 0400) and sets them for every exec.
//!
//! Where the values live, and why: only in this member's memory while it delivers them, in
//! the agent's memory, and in the container's tmpfs. Never in a Raft command, so never in the
//! log, a snapshot, the state any member answers from, or an event: what is replicated is only
//! that the allocation has settings and where they stand (`settings: pending | applied |
//! failed`, [`Command::SettingsDelivered`]). The cost: if this member dies between the grant
//! and the delivery, the settings stay `pending`; the client retries with the same
//! idempotency key and the same settings, and the member answering the retry delivers them.

use std::collections::BTreeMap;
use std::time::Duration;

use tracing::{info, warn};
use warmpool_proto::api::{CreateAllocation, WaitFor};
use warmpool_proto::session::{SessionReply, SessionRequest, SettingsState};
use warmpool_proto::Allocation;

use super::AppState;
use crate::state::{Command, Request, Response as Applied};

/// Attempts to reach the agent before the settings count as failed.
const ATTEMPTS: u32 = 3;
/// Time an agent has to write the settings.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// The settings of one claim, taken out of its request.
pub struct Settings {
    env: BTreeMap<String, String>,
    wait: bool,
}

impl Settings {
    /// Takes env and secrets out of `req` (secrets win on a clash); `None` when it has none.
    pub fn take(req: &mut CreateAllocation) -> Option<Settings> {
        if req.env.is_empty() && req.secrets.is_empty() {
            return None;
        }
        let mut env = std::mem::take(&mut req.env);
        env.append(&mut std::mem::take(&mut req.secrets));
        Some(Settings {
            env,
            wait: req.wait_for == Some(WaitFor::Settings),
        })
    }

    /// Delivers the settings to `a`'s container: before answering when the client asked to
    /// wait, else in the background (the answer says `pending`). An allocation whose settings
    /// are in place already (a replay) is answered as it is.
    pub async fn deliver(self, app: &AppState, a: Allocation) -> Allocation {
        match a.settings {
            Some(SettingsState::Pending) | Some(SettingsState::Failed) => {}
            // Applied already, or made without settings (a replay of another request).
            _ => return a,
        }
        if self.wait {
            return deliver_now(app, a, self.env).await;
        }
        let (app, pending) = (app.clone(), a.clone());
        tokio::spawn(async move {
            deliver_now(&app, pending, self.env).await;
        });
        a
    }
}

async fn deliver_now(app: &AppState, a: Allocation, env: BTreeMap<String, String>) -> Allocation {
    let req = SessionRequest::ApplySettings {
        container: a.container_id,
        env,
    };
    let mut state = SettingsState::Failed;
    for attempt in 1..=ATTEMPTS {
        match app.sessions.request(&a.node, &req, DELIVERY_TIMEOUT).await {
            Ok(SessionReply::Applied) => {
                state = SettingsState::Applied;
                break;
            }
            Ok(other) => {
                warn!(allocation = %a.id, reply = ?other, "unexpected answer to settings");
                break;
            }
            Err(e @ crate::session::SessionError::Refused { .. }) => {
                warn!(allocation = %a.id, error = %e, "settings refused by the agent");
                break;
            }
            Err(e) => {
                warn!(allocation = %a.id, attempt, error = %e, "settings not delivered");
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            }
        }
    }
    let outcome = match state {
        SettingsState::Applied => "applied",
        _ => "failed",
    };
    metrics::counter!("warmpool_settings_deliveries_total", "outcome" => outcome).increment(1);
    info!(allocation = %a.id, outcome, "settings delivered");
    let cmd = Command::SettingsDelivered {
        allocation_id: a.id,
        state,
    };
    match app.cluster.write(Request::now(cmd)).await {
        Ok(Applied::Allocation { allocation, .. }) => allocation,
        other => {
            warn!(allocation = %a.id, answer = ?other.map(|_| ()), "recording the settings' state failed");
            Allocation {
                settings: Some(state),
                ..a
            }
        }
    }
}
