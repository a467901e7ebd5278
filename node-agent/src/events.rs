//! The Docker event watcher: `start`, `die`, `oom` and `destroy` of this node's containers
//! change the inventory (and so publish a fact) as they happen, instead of at the next probe
//! or resync.
//!
//! When the stream breaks (dockerd restarted, socket hiccup), the watcher has the runtime
//! pinged at once (so an outage is reported without waiting for the next interval), reconnects
//! with exponential backoff (or as soon as dockerd answers again), asks Docker to replay
//! events since just before the break (`since`), and triggers a resync: replay covers
//! Docker's short memory, the resync covers the rest. Handlers are idempotent, so a replayed
//! event is harmless. A broken stream never says anything about the containers: under live
//! restore they run on while dockerd is away.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::models::EventMessage;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use warmpool_proto::{ContainerId, LABEL_ID};

use crate::agent::Shared;
use crate::inventory::Upsert;
use crate::{labels, prober};

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Docker's `since` for `t` minus a safety second (events are replayed, never skipped).
fn since(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    format!("{}", d.as_secs().saturating_sub(1))
}

/// Watches events until `cancel`. `started` is when the adoption pass began: events from then
/// on are replayed, so nothing that happened during adoption is missed.
pub async fn watch(shared: Arc<Shared>, started: SystemTime, cancel: CancellationToken) {
    let mut from = started;
    let mut backoff = BACKOFF_MIN;
    loop {
        let mut stream = Box::pin(shared.driver.events(Some(since(from))));
        loop {
            let item = tokio::select! {
                _ = cancel.cancelled() => return,
                item = stream.next() => item,
            };
            match item {
                Some(Ok(ev)) => {
                    backoff = BACKOFF_MIN;
                    handle(&shared, ev).await;
                }
                Some(Err(e)) => {
                    warn!(error = %e, "docker event stream broke; reconnecting");
                    break;
                }
                None => {
                    warn!("docker event stream ended; reconnecting");
                    break;
                }
            }
        }
        from = SystemTime::now();
        shared.runtime.check_soon();
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
            _ = shared.runtime.back() => backoff = BACKOFF_MIN,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
        shared.resync_now.notify_one();
        shared.isolation.poke();
    }
}

async fn handle(shared: &Arc<Shared>, ev: EventMessage) {
    let action = ev.action.unwrap_or_default();
    let actor = ev.actor.unwrap_or_default();
    let attrs = actor.attributes.unwrap_or_default();
    let docker_id = actor.id.unwrap_or_default();
    let id = match attrs.get(LABEL_ID).map(|s| s.parse::<ContainerId>()) {
        Some(Ok(id)) => id,
        _ => {
            // Not manageable; the resync removes such containers.
            debug!(
                action,
                docker_id, "event for a container without a usable id label"
            );
            if action == "start" {
                shared.resync_now.notify_one();
            }
            return;
        }
    };
    debug!(action, container = %id, docker_id, "docker event");
    match action.as_str() {
        "die" => {
            let code = attrs.get("exitCode").and_then(|c| c.parse().ok());
            if shared.inventory.on_die(&id, Some(&docker_id), code) {
                info!(container = %id, exit_code = ?code, "container died");
            }
        }
        "oom" if shared.inventory.on_oom(&id, Some(&docker_id)) => {
            warn!(container = %id, "container hit its memory limit (OOM)");
        }
        "destroy" => {
            shared.inventory.remove_vanished(
                &id,
                Some(&docker_id),
                warmpool_proto::ContainerEndReason::RemovedOutsideAgent,
                u64::MAX,
            );
        }
        "start"
            if shared
                .inventory
                .docker_id_of(&id)
                .is_some_and(|known| known != docker_id) =>
        {
            // Another container claims a known id: the resync keeps one and removes the rest.
            warn!(container = %id, docker_id, "a second container with a known id started");
            shared.resync_now.notify_one();
        }
        // A container the agent is creating (or destroying, or restarting) is inspected by
        // that operation itself, which then updates the inventory; an inspect here would be
        // skipped by the inventory anyway, and would take dockerd's time from the starts
        // under way (and hold up this stream's next events).
        "start" if shared.inventory.is_busy(&id) => {}
        "start" => match shared.driver.inspect(&docker_id).await {
            Ok(Some(obs)) => match labels::parse(&obs.labels) {
                Ok(l) => {
                    if let Upsert::Inserted(token) = shared.inventory.upsert(&obs, &l, u64::MAX) {
                        prober::spawn(shared, id, token);
                    }
                }
                Err(_) => shared.resync_now.notify_one(),
            },
            Ok(None) => {}
            Err(e) => {
                warn!(container = %id, error = %e, "inspect after start failed; resyncing");
                shared.resync_now.notify_one();
            }
        },
        _ => {}
    }
}
