//! Workspaces of the containers this agent runs: restored after the grant, synced while
//! allocated, saved once more before the container is removed.
//!
//! The member that granted an allocation naming a workspace asks for the restore
//! ([`SessionRequest::RestoreWorkspace`](warmpool_proto::session::SessionRequest)); from then
//! on the agent holds the container's *binding* (which workspace, the pool's path, interval
//! and caps). A binding is only made by a restore that worked: a container whose restore
//! failed starts empty and is never saved, so it cannot overwrite the stored version.
//!
//! Files move through Docker's archive API on the workspace's own volume (see
//! [`crate::docker::Driver::create`]): it reads and writes a volume even with a read-only
//! root filesystem, and reads it after the container stopped, so the last save happens after
//! the pre-stop command and SIGTERM, when the session's processes are done writing.
//!
//! Saves of one container are serialised by its binding's lock; the final save marks it
//! finished, so a destroy repeated while one is under way waits for it instead of saving
//! twice, and the sync loop stops.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use warmpool_proto::session::{SessionErrorKind, SessionReply};
use warmpool_proto::workspace::{decide_save, SaveRefusal, WorkspaceBinding};
use warmpool_proto::ContainerId;
use warmpool_workspace_store::{pack, unpack, Store, StoreError};

use crate::agent::Shared;

/// One container's workspace.
struct Bound {
    binding: WorkspaceBinding,
    /// Held by a save; `true` once the final save ran.
    finished: tokio::sync::Mutex<bool>,
    /// Stops the sync loop.
    stop: CancellationToken,
}

/// The store and the bindings. `std::sync::Mutex`: nothing awaits under it.
///
/// Each binding is also written to a file of its own in `dir` (`<container>.json`, gone with
/// the final save), so that a restarted agent goes on syncing and saving the workspaces of the
/// containers it re-adopts: [`readopt`].
pub struct Workspaces {
    store: Store,
    bound: Mutex<HashMap<ContainerId, Arc<Bound>>>,
    dir: std::path::PathBuf,
}

/// How a save ended.
#[derive(Debug)]
pub enum SaveOutcome {
    /// Committed as this version.
    Saved(String),
    /// Over a cap: the previous version stays.
    Refused(SaveRefusal),
}

/// Why a save failed.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    /// Docker could not give the archive.
    #[error(transparent)]
    Docker(#[from] crate::docker::DockerError),
    /// The store or the archive failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Workspaces {
    /// Over `store`, with no bindings yet; bindings are kept in `dir` too.
    pub fn new(store: Store, dir: std::path::PathBuf) -> Workspaces {
        Workspaces {
            store,
            bound: Mutex::new(HashMap::new()),
            dir,
        }
    }

    fn file(&self, id: &ContainerId) -> std::path::PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Writes `id`'s binding to its file (a temporary file renamed over it). A failure is
    /// logged: the binding still holds while this process lives.
    fn persist(&self, id: &ContainerId, binding: &WorkspaceBinding) {
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(&self.dir)?;
            let tmp = self.dir.join(format!(".{id}.json.tmp"));
            std::fs::write(&tmp, serde_json::to_vec(binding)?)?;
            std::fs::rename(&tmp, self.file(id))
        };
        if let Err(e) = write() {
            warn!(container = %id, dir = %self.dir.display(), error = %e, "could not keep the workspace binding on disk; a restart of this agent would forget it");
        }
    }

    fn forget(&self, id: &ContainerId) {
        let _ = std::fs::remove_file(self.file(id));
    }

    fn get(&self, id: &ContainerId) -> Option<Arc<Bound>> {
        lock(&self.bound).get(id).cloned()
    }
}

/// Restores `binding`'s workspace into `container` and starts syncing it.
pub async fn restore(
    shared: &Arc<Shared>,
    container: ContainerId,
    binding: WorkspaceBinding,
) -> SessionReply {
    let ws = &shared.workspaces;
    if let Some(b) = ws.get(&container) {
        return if b.binding.key == binding.key {
            SessionReply::WorkspaceRestored { version: None }
        } else {
            SessionReply::error(
                SessionErrorKind::Invalid,
                format!(
                    "container {container} has workspace {} already",
                    b.binding.key.prefix()
                ),
            )
        };
    }
    let docker_id = match shared.inventory.docker_id_of(&container) {
        Some(d) => d,
        None => {
            return SessionReply::error(
                SessionErrorKind::NoSuchContainer,
                format!("container {container} does not run here"),
            )
        }
    };
    let started = tokio::time::Instant::now();
    let version = match ws.store.load(&binding.key).await {
        Ok(None) => None,
        Ok(Some((manifest, archive))) => {
            let tar = match tokio::task::spawn_blocking(move || unpack(&archive)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => return SessionReply::error(SessionErrorKind::Runtime, e.to_string()),
                Err(e) => return SessionReply::error(SessionErrorKind::Runtime, e.to_string()),
            };
            if let Err(e) = shared
                .driver
                .upload_archive(&docker_id, &binding.spec.path, tar)
                .await
            {
                metrics::counter!("warmpool_agent_workspace_restores_total", "outcome" => "failed")
                    .increment(1);
                return SessionReply::error(SessionErrorKind::Runtime, e.to_string());
            }
            Some(manifest.version)
        }
        Err(e) => {
            warn!(%container, workspace = %binding.key.prefix(), error = %e, "workspace restore failed");
            metrics::counter!("warmpool_agent_workspace_restores_total", "outcome" => "failed")
                .increment(1);
            return SessionReply::error(SessionErrorKind::Runtime, e.to_string());
        }
    };
    metrics::counter!("warmpool_agent_workspace_restores_total", "outcome" => "restored")
        .increment(1);
    info!(%container, workspace = %binding.key.prefix(), version = ?version, took_ms = started.elapsed().as_millis() as u64, "workspace restored");
    ws.persist(&container, &binding);
    bind(shared, container, binding);
    SessionReply::WorkspaceRestored { version }
}

/// Holds `binding` for `container` and starts its sync loop.
fn bind(shared: &Arc<Shared>, container: ContainerId, binding: WorkspaceBinding) {
    let sync = binding.spec.sync_secs;
    let bound = Arc::new(Bound {
        binding,
        finished: tokio::sync::Mutex::new(false),
        stop: CancellationToken::new(),
    });
    lock(&shared.workspaces.bound).insert(container, bound.clone());
    if sync > 0 {
        let shared2 = shared.clone();
        shared.tasks.spawn(async move {
            sync_loop(&shared2, container, bound, Duration::from_secs(sync)).await;
        });
    }
}

/// After a restart, once the containers are re-adopted: takes back the binding of every
/// container still here (its workspace is synced and saved again, never restored over what
/// the session wrote) and drops the files of the others. Answers how many were taken back.
pub fn readopt(shared: &Arc<Shared>) -> usize {
    let ws = &shared.workspaces;
    let Ok(entries) = std::fs::read_dir(&ws.dir) else {
        return 0;
    };
    let mut taken = 0;
    for e in entries.filter_map(Result::ok) {
        let path = e.path();
        let Some(id) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".json"))
            .and_then(|n| n.parse::<ContainerId>().ok())
        else {
            // A temporary file of a write that did not finish, or a stranger.
            let _ = std::fs::remove_file(&path);
            continue;
        };
        let binding = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<WorkspaceBinding>(&b).ok());
        match binding {
            Some(b) if shared.inventory.docker_id_of(&id).is_some() && ws.get(&id).is_none() => {
                info!(container = %id, workspace = %b.key.prefix(), "workspace binding taken back after a restart");
                bind(shared, id, b);
                taken += 1;
            }
            _ => ws.forget(&id),
        }
    }
    taken
}

async fn sync_loop(shared: &Arc<Shared>, id: ContainerId, bound: Arc<Bound>, every: Duration) {
    loop {
        tokio::select! {
            _ = bound.stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let finished = bound.finished.lock().await;
        if *finished {
            return;
        }
        let Some(docker_id) = shared.inventory.docker_id_of(&id) else {
            return;
        };
        log_save(
            &id,
            &bound,
            save(shared, &docker_id, &bound, id).await,
            "sync",
        );
        drop(finished);
    }
}

/// The final save of `id`'s workspace, before the container is removed; nothing for a
/// container without one. Runs once: a second call waits for the first.
pub async fn finish(shared: &Arc<Shared>, id: ContainerId, docker_id: &str) {
    let Some(bound) = shared.workspaces.get(&id) else {
        return;
    };
    bound.stop.cancel();
    let mut finished = bound.finished.lock().await;
    if !*finished {
        log_save(
            &id,
            &bound,
            save(shared, docker_id, &bound, id).await,
            "final",
        );
        *finished = true;
    }
    drop(finished);
    lock(&shared.workspaces.bound).remove(&id);
    shared.workspaces.forget(&id);
}

fn log_save(id: &ContainerId, b: &Bound, r: Result<SaveOutcome, SaveError>, kind: &'static str) {
    let ws = b.binding.key.prefix();
    let outcome = match &r {
        Ok(SaveOutcome::Saved(version)) => {
            info!(container = %id, workspace = %ws, %version, kind, "workspace saved");
            "saved"
        }
        Ok(SaveOutcome::Refused(why)) => {
            warn!(container = %id, workspace = %ws, reason = ?why, kind, "workspace save refused: over its cap; the previous version stays");
            "refused"
        }
        Err(e) => {
            warn!(container = %id, workspace = %ws, error = %e, kind, "workspace save failed; the previous version stays");
            "failed"
        }
    };
    metrics::counter!("warmpool_agent_workspace_saves_total", "kind" => kind, "outcome" => outcome)
        .increment(1);
}

async fn save(
    shared: &Shared,
    docker_id: &str,
    b: &Bound,
    id: ContainerId,
) -> Result<SaveOutcome, SaveError> {
    let spec = &b.binding.spec;
    let pool_max = spec.max_bytes();
    let Some(tar) = shared
        .driver
        .download_archive(docker_id, &spec.path, pool_max)
        .await?
    else {
        return Ok(SaveOutcome::Refused(SaveRefusal::OverPoolCap));
    };
    let archive = tokio::task::spawn_blocking(move || pack(&tar))
        .await
        .map_err(|e| StoreError::Archive(e.to_string()))??;
    let key = &b.binding.key;
    let others = match b.binding.tenant_max_bytes {
        Some(_) => {
            shared
                .workspaces
                .store
                .tenant_bytes(&key.tenant, &key.workspace)
                .await?
        }
        None => 0,
    };
    // The content's size is the tar's, less its end blocks: close enough against a cap
    // measured in bytes of files.
    if let Err(why) = decide_save(
        archive.content_bytes.saturating_sub(1024),
        archive.bytes.len() as u64,
        pool_max,
        b.binding.tenant_max_bytes,
        others,
    ) {
        return Ok(SaveOutcome::Refused(why));
    }
    let m = shared
        .workspaces
        .store
        .save(key, &archive, Some(id))
        .await?;
    Ok(SaveOutcome::Saved(m.version))
}
