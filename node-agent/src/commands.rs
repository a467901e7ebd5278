//! Commands from the control plane on `pool.v1.node.<node>.cmd` (request/reply).
//!
//! Each request is handled in its own task, so a slow destroy never holds up an inventory
//! request. A request that does not parse is answered with `AgentReply::Error` and logged;
//! nothing a peer sends can stop the listener.
//!
//! - `Create` is idempotent by id and answered at once (`Accepted`); the container is made in
//!   the background, at most as many at a time as the adaptive limit says (`creates`), and its progress arrives as
//!   facts (`Observed` with `Starting`, then `Running`/`Healthy`, or `CreateFailed`).
//! - `Destroy` is answered once the container is gone (`Destroyed { existed }`).
//! - `Inventory` is answered with every entry, sorted by id; while dockerd does not answer,
//!   with an error instead (see [`inventory_reply`]).
//! - While dockerd does not answer, `Create` is refused with an error saying so.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, instrument, warn};
use warmpool_proto::agent::{AgentCommand, AgentReply, CreateSpec, Inventory, RuntimeOutage};
use warmpool_proto::{ContainerId, HealthProbe, Timestamp};

use crate::agent::Shared;
use crate::docker::{container_name, is_status, DockerError, Observation};
use crate::inventory::{Admission, CreateGuard, Upsert};
use crate::labels::{self, ContainerLabels};
use crate::prober;

const REPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// Containers removed at once ([`warmpool_proto::agent::DESTROY_SLOTS`]). The control plane's
/// reconciliation asks again for any destroy whose answer came too late.
pub const MAX_CONCURRENT_DESTROYS: usize = warmpool_proto::agent::DESTROY_SLOTS;

/// Serves commands from `sub` until `cancel`; handlers run on `handlers`, creates on
/// `shared.tasks`.
pub async fn listen(
    shared: Arc<Shared>,
    mut sub: async_nats::Subscriber,
    handlers: TaskTracker,
    cancel: CancellationToken,
) {
    loop {
        let msg = tokio::select! {
            _ = cancel.cancelled() => break,
            m = sub.next() => m,
        };
        let Some(msg) = msg else {
            warn!("command subscription ended");
            break;
        };
        let shared = shared.clone();
        let creates = cancel.clone();
        handlers.spawn(async move { handle(shared, msg, creates).await });
    }
    if let Err(e) = sub.unsubscribe().await {
        warn!(error = %e, "unsubscribing from commands failed");
    }
}

async fn handle(shared: Arc<Shared>, msg: async_nats::Message, cancel: CancellationToken) {
    let reply = match serde_json::from_slice::<AgentCommand>(&msg.payload) {
        Ok(cmd) => execute(&shared, cmd, cancel).await,
        Err(e) => {
            warn!(error = %e, bytes = msg.payload.len(), "malformed command refused");
            AgentReply::Error {
                message: format!("malformed command: {e}"),
            }
        }
    };
    let Some(to) = msg.reply else {
        warn!("command without a reply subject; nobody gets the answer");
        return;
    };
    let payload = match serde_json::to_vec(&reply) {
        Ok(p) => Bytes::from(p),
        Err(e) => {
            warn!(error = %e, "cannot serialise reply");
            return;
        }
    };
    match tokio::time::timeout(REPLY_TIMEOUT, shared.nats.publish(to, payload)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "sending reply failed"),
        Err(_) => warn!("sending reply timed out"),
    }
}

async fn execute(shared: &Arc<Shared>, cmd: AgentCommand, cancel: CancellationToken) -> AgentReply {
    match cmd {
        AgentCommand::Create(spec) => create(shared, spec, cancel),
        AgentCommand::Destroy { id, reason } => destroy(shared, id, reason).await,
        AgentCommand::Inventory => {
            inventory_reply(shared.runtime.outage().as_ref(), || inventory(shared))
        }
        AgentCommand::Restart { id } => restart(shared, id).await,
        AgentCommand::Pause { id } => crate::pause::pause(shared, id).await,
        AgentCommand::Unpause { id } => {
            match crate::pause::unpause(shared, id, true, Duration::from_secs(2)).await {
                Ok(_) => AgentReply::Unpaused,
                Err(message) => AgentReply::Error { message },
            }
        }
    }
}

/// Restarts a container in place; its probes start over (the probe task keeps running and
/// sees the new life's verdict reset).
#[instrument(skip_all, fields(container = %id))]
async fn restart(shared: &Arc<Shared>, id: ContainerId) -> AgentReply {
    let Some(docker_id) = shared.inventory.begin_restart(&id) else {
        return AgentReply::Error {
            message: format!("container {id} is unknown here or busy"),
        };
    };
    let result = shared.driver.restart(&docker_id).await;
    let obs = match &result {
        Ok(()) => shared.driver.inspect(&docker_id).await.ok().flatten(),
        Err(_) => None,
    };
    shared.inventory.end_restart(&id, obs.as_ref());
    match result {
        Ok(()) => {
            info!("container restarted in place");
            AgentReply::Restarted
        }
        Err(e) => {
            warn!(error = %e, "restart failed");
            AgentReply::Error {
                message: e.to_string(),
            }
        }
    }
}

/// The full inventory now.
pub fn inventory(shared: &Shared) -> Inventory {
    Inventory {
        node: shared.config.node_id.clone(),
        boot_id: shared.boot_id,
        seq: shared.outbox.seq(),
        taken_at: Timestamp::now(),
        containers: shared.inventory.snapshot(),
    }
}

/// The answer to an inventory request: the inventory, unless the runtime is out. Then what
/// the agent holds is only what it last saw (a container may have died unseen meanwhile), and
/// an empty or stale list would read as containers gone or running: the leader gets an error
/// it treats as a failed pull, and pulls again once heartbeats say the runtime is back.
pub fn inventory_reply(
    outage: Option<&RuntimeOutage>,
    inventory: impl FnOnce() -> Inventory,
) -> AgentReply {
    match outage {
        None => AgentReply::Inventory(inventory()),
        Some(o) => AgentReply::Error {
            message: format!(
                "the container runtime is unavailable since {} ({}); the inventory cannot be read until it answers",
                o.since, o.error
            ),
        },
    }
}

/// What the control plane validated may still be wrong by the time it reaches a host; and the
/// health path goes into a raw HTTP request line, so it must hold no whitespace.
fn check_spec(spec: &CreateSpec) -> Result<(), String> {
    if spec.image.trim().is_empty() {
        return Err("image is empty".into());
    }
    if spec.port == 0 {
        return Err("port is 0".into());
    }
    let r = &spec.resources;
    if r.cpu_millis == 0 || r.memory_mb < 6 || r.pids < 1 {
        return Err("resources need cpu_millis >= 1, memory_mb >= 6, pids >= 1".into());
    }
    if let HealthProbe::Http { path } = &spec.health.probe {
        if !path.starts_with('/')
            || path
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(format!(
                "health path {path:?} must start with '/' and hold no whitespace"
            ));
        }
    }
    if spec.env.keys().any(|k| k.is_empty() || k.contains('=')) {
        return Err("env names must be non-empty and hold no '='".into());
    }
    spec.security.validate().map_err(|e| e.0)?;
    spec.egress.validate().map_err(|e| e.0)
}

#[instrument(skip_all, fields(container = %spec.id, pool = %spec.pool))]
fn create(shared: &Arc<Shared>, spec: CreateSpec, cancel: CancellationToken) -> AgentReply {
    if let Err(message) = check_spec(&spec) {
        warn!(reason = message.as_str(), "create refused");
        return AgentReply::Error { message };
    }
    if let Some(outage) = shared.runtime.outage() {
        return AgentReply::Error {
            message: format!(
                "the container runtime is unavailable ({}); nothing can be created here until it answers",
                outage.error
            ),
        };
    }
    let guard = match shared.inventory.admit_create(spec.id) {
        Admission::Admitted(g) => g,
        Admission::Known | Admission::InFlight => return AgentReply::Accepted,
        Admission::Destroyed => {
            return AgentReply::Error {
                message: format!("container {} was destroyed; ids are never reused", spec.id),
            }
        }
    };
    // Its place in line for a create slot, taken now, so that creates start in the order they
    // came (their image checks below may finish in any order).
    let ticket = shared.creates.ticket();
    let shared2 = shared.clone();
    shared.tasks.spawn(async move {
        // The image first, outside the create slots: a pull (or the wait for one another
        // create started) holds up only the creates of its image, as the ticket steps aside
        // for it. A destroy of this id or shutdown drops the create; the pull itself goes on
        // for the next one.
        let image = tokio::select! {
            r = crate::images::ensure(&shared2, &spec.image, &spec.pool, spec.pull, || ticket.step_aside()) => r,
            _ = cancel.cancelled() => {
                shared2.inventory.abandon_create(guard);
                return;
            }
            _ = guard.destroyed().cancelled() => {
                shared2.inventory.abandon_create(guard);
                return;
            }
        };
        if let Err((reason, message)) = image {
            warn!(container = %spec.id, pool = %spec.pool, image = %spec.image, %reason, error = %message, "create failed: the image is not here");
            shared2.inventory.fail_create(
                guard,
                format!("image {} could not be pulled ({reason}): {message}", spec.image),
                false,
            );
            return;
        }
        // Wait for a create slot; at shutdown, or when a destroy of this id arrives, a queued
        // create is dropped without ever being started (and gives up its place).
        let slot = tokio::select! {
            s = ticket.acquire() => s,
            _ = cancel.cancelled() => {
                shared2.inventory.abandon_create(guard);
                return;
            }
            _ = guard.destroyed().cancelled() => {
                shared2.inventory.abandon_create(guard);
                return;
            }
        };
        // How this create went moves the limit (a create cut short by a destroy or by dockerd
        // going away says nothing about the host's pace, and is not counted).
        match run_create(&shared2, guard, &spec).await {
            Some(ok) => slot.finish(ok),
            None => drop(slot),
        }
    });
    AgentReply::Accepted
}

/// Makes the container of `spec`; answers whether it was made, or `None` when the attempt
/// says nothing about the host's pace (abandoned, or dockerd unavailable).
async fn run_create(shared: &Arc<Shared>, guard: CreateGuard, spec: &CreateSpec) -> Option<bool> {
    if shared.inventory.is_destroyed(&guard.id()) {
        shared.inventory.abandon_create(guard);
        return None;
    }
    let started = tokio::time::Instant::now();
    // The container's own rules (its port open to the ingress prefixes, its egress policy)
    // go in before anyone hears of it; until then it is closed both ways.
    let made = match make(shared, spec).await {
        Ok(made) => match shared.isolation.admit(shared, &made.0).await {
            Ok(()) => Ok(made),
            Err(e) => Err(e.to_string()),
        },
        Err(e) => Err(e.to_string()),
    };
    match made {
        Ok((obs, labels)) => {
            info!(container = %spec.id, pool = %spec.pool, ipv6 = ?obs.ipv6, elapsed_ms = started.elapsed().as_millis() as u64, "container created and started");
            if let Upsert::Inserted(token) = shared.inventory.finish_create(guard, &obs, &labels) {
                prober::spawn(shared, spec.id, token);
            }
            Some(true)
        }
        Err(e) => {
            // A create cut off by dockerd going away (a restart, a hang) is not the
            // container's fault nor the node's: say so, so that the control plane does not
            // back the node off for it, and have the outage noticed at once.
            let runtime_unavailable = !crate::runtime::answers(shared).await;
            if runtime_unavailable {
                shared.runtime.check_soon();
            }
            warn!(container = %spec.id, pool = %spec.pool, error = %e, runtime_unavailable, "create failed");
            // Leave nothing behind: whatever part of the container exists goes.
            if let Err(e) = shared.driver.remove(&container_name(&spec.id)).await {
                warn!(container = %spec.id, error = %e, "removing the failed container failed; the resync will retry");
            }
            shared.inventory.fail_create(guard, e, runtime_unavailable);
            (!runtime_unavailable).then_some(false)
        }
    }
}

/// Creates, starts and inspects the container of `spec`.
async fn make(
    shared: &Shared,
    spec: &CreateSpec,
) -> Result<(Observation, ContainerLabels), DockerError> {
    let name = container_name(&spec.id);
    let docker_id = match shared.driver.create(spec).await {
        Ok(id) => id,
        // A container of that name exists: an earlier attempt of this very create (e.g. the
        // agent died between create and start). If it is ours, carry on with it.
        Err(DockerError::Api { cause, .. }) if is_status(&cause, 409) => {
            match shared.driver.inspect(&name).await? {
                Some(obs) if labels::id_of(&obs.labels).ok() == Some(spec.id) => obs.docker_id,
                _ => {
                    return Err(DockerError::Api {
                        op: "create container (name taken by another container)",
                        cause,
                    })
                }
            }
        }
        Err(e) => return Err(e),
    };
    shared.driver.start(&docker_id).await?;
    let obs = shared
        .driver
        .inspect(&docker_id)
        .await?
        .ok_or(DockerError::Vanished("create"))?;
    match obs.ipv6 {
        Some(ip) if shared.config.ipv6_prefix.contains(&ip) => {}
        _ => return Err(DockerError::NoAddress(shared.config.network.clone())),
    }
    let labels = labels::parse(&obs.labels).map_err(|e| DockerError::Labels(e.to_string()))?;
    Ok((obs, labels))
}

#[instrument(skip_all, fields(container = %id))]
async fn destroy(
    shared: &Arc<Shared>,
    id: ContainerId,
    reason: warmpool_proto::ContainerEndReason,
) -> AgentReply {
    let (docker_id, creating) = shared.inventory.begin_destroy(id);
    if let Some(mut done) = creating {
        // Let the create finish (it sees the tombstone and does not insert); then remove what
        // it made. `changed` errs when the create's guard is dropped: that is the signal.
        let _ = done.changed().await;
    }
    // The tombstone is in (a create still queued will not start); the work with Docker waits
    // for a slot. The semaphore is never closed: no permit would change only the pace.
    let _slot = shared.destroys.acquire().await.ok();
    let mut existed = docker_id.is_some();
    let mut result = Ok(());
    if let Some(docker_id) = &docker_id {
        crate::session::stop_gracefully(shared, id, docker_id).await;
        // After the stop (the session's processes are done writing), before the removal
        // (which takes the workspace's volume with it).
        crate::workspace::finish(shared, id, docker_id).await;
    }
    if let Some(docker_id) = &docker_id {
        match shared.driver.remove(docker_id).await {
            Ok(removed) => existed |= removed,
            Err(e) => result = Err(e),
        }
    }
    // By name too: covers a create that was in flight, and a copy the inventory did not know.
    if result.is_ok() {
        match shared.driver.remove(&container_name(&id)).await {
            Ok(removed) => existed |= removed,
            Err(e) => result = Err(e),
        }
    }
    match result {
        Ok(()) => {
            if existed {
                info!(%reason, "container destroyed");
            }
            shared
                .inventory
                .finish_destroy(id, existed.then_some(reason));
            shared.sessions.forget(&id);
            // Its rules go now, without holding up the answer. A container admitted meanwhile
            // with its (IPv4) address has the whole rule set rebuilt instead.
            let shared2 = shared.clone();
            tokio::spawn(async move { shared2.isolation.forget(&id.to_string()).await });
            AgentReply::Destroyed { existed }
        }
        Err(e) => {
            warn!(error = %e, "destroy failed");
            shared.inventory.destroy_failed(&id);
            shared.resync_now.notify_one();
            AgentReply::Error {
                message: format!("destroying {id}: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use warmpool_proto::pool::ContainerResources;
    use warmpool_proto::{HealthCheck, PoolName};

    use super::*;

    #[test]
    fn an_inventory_is_not_answered_while_the_runtime_is_out() {
        let inv = || Inventory {
            node: warmpool_proto::NodeId::new("n1").unwrap(),
            boot_id: Default::default(),
            seq: 7,
            taken_at: Timestamp(5),
            containers: vec![],
        };
        assert!(matches!(
            inventory_reply(None, inv),
            AgentReply::Inventory(i) if i.seq == 7
        ));
        let outage = RuntimeOutage {
            since: Timestamp(1_000),
            error: "connection refused".into(),
        };
        match inventory_reply(Some(&outage), || panic!("not read during an outage")) {
            AgentReply::Error { message } => {
                assert!(message.contains("runtime is unavailable"), "{message}");
                assert!(message.contains("connection refused"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn specs_are_checked_before_anything_is_made() {
        let good = CreateSpec {
            id: ContainerId::new(),
            pool: PoolName::new("demo").unwrap(),
            generation: 1,
            image: "warmpool-demo:latest".into(),
            pull: Default::default(),
            command: vec![],
            env: BTreeMap::new(),
            port: 8080,
            extra_ports: Vec::new(),
            resources: ContainerResources::default(),
            health: HealthCheck::default(),
            security: Default::default(),
            egress: Default::default(),
            stop_grace_secs: 0,
            pre_stop: vec![],
            workspace_path: None,
        };
        check_spec(&good).unwrap();
        let mut s = good.clone();
        s.health.probe = HealthProbe::Http {
            path: "/x HTTP/1.0\r\nHost: evil".into(),
        };
        assert!(check_spec(&s).is_err());
        let mut s = good.clone();
        s.image = " ".into();
        assert!(check_spec(&s).is_err());
        let mut s = good.clone();
        s.resources.memory_mb = 1;
        assert!(check_spec(&s).is_err());
        let mut s = good.clone();
        s.env.insert("A=B".into(), "1".into());
        assert!(check_spec(&s).is_err());
        let mut s = good.clone();
        s.security.tmpfs = vec!["/tmp:exec".into()];
        assert!(check_spec(&s).is_err());
        let mut s = good;
        s.egress = warmpool_proto::Egress::Allow(vec![warmpool_proto::EgressRule {
            prefix: "2001:db8::1/32".into(),
            ports: vec![],
        }]);
        assert!(check_spec(&s).is_err(), "host bits set");
    }
}
