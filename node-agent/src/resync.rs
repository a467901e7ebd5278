//! Level-triggered resync: list every container labelled with this node and make the inventory
//! match, so a lost Docker event is never permanent. The same pass adopts containers at start.
//!
//! Per pass: containers whose id label is garbage are removed (nobody could ever manage them);
//! two containers claiming one id keep the one named `wp-<id>` (else the oldest) and lose the
//! others; unknown ones are inspected and adopted; known ones whose Docker state differs from
//! the entry are inspected and updated; entries Docker no longer has are dropped with a
//! `Gone` fact. The stale-observation rules are in the `inventory` module doc.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use warmpool_proto::ContainerId;

use crate::agent::Shared;
use crate::docker::{container_name, DockerError, DockerState, Listed};
use crate::inventory::Upsert;
use crate::{labels, prober};

/// What one pass did, for the log.
#[derive(Debug, Default)]
pub struct Report {
    /// Containers adopted into the inventory.
    pub adopted: usize,
    /// Entries dropped because Docker no longer has them.
    pub vanished: usize,
    /// Containers removed (garbage labels, duplicates).
    pub removed: usize,
}

/// One resync pass.
pub async fn resync(shared: &Arc<Shared>) -> Result<Report, DockerError> {
    let mut report = Report::default();
    let mark = shared.inventory.mark();
    let listed = shared.driver.list().await?;

    let mut by_id: HashMap<ContainerId, Vec<Listed>> = HashMap::new();
    for c in listed {
        match labels::id_of(&c.labels) {
            Ok(id) => by_id.entry(id).or_default().push(c),
            Err(e) => {
                warn!(docker_id = c.docker_id, name = c.name, error = %e, "removing a container of this node whose id label is unusable");
                remove(shared, &c.docker_id, &mut report).await;
            }
        }
    }

    let seen: HashSet<ContainerId> = by_id.keys().copied().collect();
    for (id, mut copies) in by_id {
        if shared.inventory.is_busy(&id) {
            continue;
        }
        if copies.len() > 1 {
            let name = container_name(&id);
            copies.sort_by_key(|c| (c.name != name, c.created));
            for extra in copies.drain(1..) {
                warn!(container = %id, docker_id = extra.docker_id, name = extra.name, "removing a duplicate container of one id");
                remove(shared, &extra.docker_id, &mut report).await;
            }
        }
        let c = &copies[0];
        // Created and never started (its restart policy is `no`), and no create of it under
        // way here: a create cut off between Docker's create and start (the agent died). The
        // start is finished here, so it is adopted running rather than as starting for ever;
        // one that will not start goes, and the control plane sends its create again.
        if c.state == DockerState::Created && shared.inventory.docker_id_of(&id).is_none() {
            match shared.driver.start(&c.docker_id).await {
                Ok(()) => {
                    info!(container = %id, docker_id = c.docker_id, "started a container whose create was cut off before its start")
                }
                Err(e) => {
                    warn!(container = %id, docker_id = c.docker_id, error = %e, "removing a container whose create was cut off and which does not start");
                    remove(shared, &c.docker_id, &mut report).await;
                    continue;
                }
            }
        }
        if !shared.inventory.needs_inspect(&id, &c.docker_id, c.state) {
            continue;
        }
        let inspect_mark = shared.inventory.mark();
        let Some(obs) = shared.driver.inspect(&c.docker_id).await? else {
            continue; // removed meanwhile: its destroy event or the next pass handles it
        };
        match labels::parse(&obs.labels) {
            Ok(l) => match shared.inventory.upsert(&obs, &l, inspect_mark) {
                Upsert::Inserted(token) => {
                    report.adopted += 1;
                    prober::spawn(shared, id, token);
                }
                Upsert::Updated | Upsert::Skipped => {}
            },
            Err(e) => {
                warn!(container = %id, docker_id = obs.docker_id, error = %e, "removing a container of this node whose labels are unusable");
                remove(shared, &obs.docker_id, &mut report).await;
            }
        }
    }

    for id in shared.inventory.missing(&seen, mark) {
        if shared.inventory.remove_vanished(
            &id,
            None,
            warmpool_proto::ContainerEndReason::VanishedFromDocker,
            mark,
        ) {
            report.vanished += 1;
        }
    }
    Ok(report)
}

async fn remove(shared: &Arc<Shared>, docker_id: &str, report: &mut Report) {
    match shared.driver.remove(docker_id).await {
        Ok(_) => report.removed += 1,
        Err(e) => warn!(docker_id, error = %e, "could not remove container"),
    }
}

/// Resyncs every `shared.config.resync`, and at once when asked (`shared.resync_now`). While
/// dockerd does not answer, passes are skipped (a listing would only fail); the runtime watcher
/// asks for one as soon as it answers again.
pub async fn run(shared: Arc<Shared>, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(shared.config.resync) => {}
            _ = shared.resync_now.notified() => {}
        }
        if shared.runtime.outage().is_some() {
            debug!("resync skipped: dockerd does not answer");
            continue;
        }
        match resync(&shared).await {
            Ok(r) if r.adopted + r.vanished + r.removed > 0 => {
                info!(?r, "resync fixed the inventory")
            }
            Ok(r) => debug!(?r, "resync"),
            Err(e) => warn!(error = %e, "resync failed; retrying at the next pass"),
        }
    }
}
