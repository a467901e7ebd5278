//! One probe task per container: probes at its check's pace and folds each outcome into the
//! inventory. Tasks run independently, so one slow container never delays another's probes.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::debug;
use warmpool_proto::ContainerId;

use crate::agent::Shared;
use crate::health::{self, Outcome};

/// Starts probing `id` until `stop` is cancelled or its entry is gone.
pub fn spawn(shared: &Arc<Shared>, id: ContainerId, stop: CancellationToken) {
    let shared = shared.clone();
    shared.tasks.clone().spawn(async move {
        loop {
            let Some(target) = shared.inventory.probe_target(&id) else {
                return;
            };
            if target.running {
                let outcome = match target.addr {
                    Some(addr) => {
                        shared.inventory.probe_started(&id);
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            (o, ports) = health::probe_traced(addr, target.port, &target.check) => {
                                shared.inventory.probe_finished(&id, &ports);
                                o
                            }
                        }
                    }
                    None => Outcome::Fail("no IPv6 address".into()),
                };
                if let Outcome::Fail(why) = &outcome {
                    debug!(container = %id, reason = why.as_str(), "probe failed");
                }
                crate::telemetry::probe(outcome == Outcome::Pass);
                shared.inventory.record_probe(&id, &outcome);
            }
            // The delay depends on the verdict just recorded (fast until the first pass).
            let delay = shared
                .inventory
                .probe_target(&id)
                .map(|t| t.delay)
                .unwrap_or(target.delay);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    });
}
