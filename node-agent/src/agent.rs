//! Start-up, the shared state of the running agent, and shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};
use uuid::Uuid;
use warmpool_proto::subjects;

use crate::config::Config;
use crate::docker::{self, Driver};
use crate::inventory::Inventory;
use crate::isolation::{self, Isolation};
use crate::outbox::{self, Outbox};
use crate::{activity, commands, events, heartbeat, network, resync, Error};

/// Time shutdown waits for each group of tasks before moving on.
const STOP_DEADLINE: Duration = Duration::from_secs(10);

/// What every task of the agent shares. Built once: one NATS client, one Docker handle.
pub struct Shared {
    /// The validated configuration.
    pub config: Config,
    /// This process's boot id (new per start).
    pub boot_id: Uuid,
    /// The NATS client.
    pub nats: async_nats::Client,
    /// The Docker driver.
    pub driver: Driver,
    /// The inventory.
    pub inventory: Inventory,
    /// Facts and heartbeats to publish.
    pub outbox: Outbox,
    /// Bounds concurrent creates (an adaptive limit).
    pub creates: Arc<crate::creates::Gate>,
    /// Bounds concurrent destroys ([`crate::commands::MAX_CONCURRENT_DESTROYS`]).
    pub destroys: tokio::sync::Semaphore,
    /// Create and probe tasks.
    pub tasks: TaskTracker,
    /// Asks the resync loop for a pass now.
    pub resync_now: Notify,
    /// Whether dockerd answers.
    pub runtime: crate::runtime::Runtime,
    /// The node's network isolation rules.
    pub isolation: Isolation,
    /// Open log, exec and file streams, and the settings given at claim.
    pub sessions: crate::session::Sessions,
    /// The workspace store and the containers' workspaces.
    pub workspaces: crate::workspace::Workspaces,
    /// Image pulls: what each image's last pull did, one pull per image at a time.
    pub images: crate::images::Images,
    /// The paused tier: per-container locks, claims and check times.
    pub pauses: crate::pause::Pauses,
}

/// See [`crate::run`].
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let node = config.node_id.clone();
    let boot_id = Uuid::now_v7();
    info!(%node, %boot_id, prefix = %config.ipv6_prefix, network = config.network, "warmpool agent starting");

    // Metrics before anything is measured; a taken address is a configuration error.
    let metrics_stop = CancellationToken::new();
    let metrics_server = match config.metrics_addr {
        Some(addr) => {
            let listener = crate::telemetry::bind(addr)
                .await
                .map_err(|e| Error::Metrics(addr, e))?;
            crate::telemetry::install().map(|handle| {
                info!(%addr, "serving metrics at /metrics");
                tokio::spawn(crate::telemetry::serve(
                    listener,
                    handle,
                    metrics_stop.clone(),
                ))
            })
        }
        None => None,
    };
    // Stops the metrics listener however `run` returns.
    let _metrics_guard = metrics_stop.clone().drop_guard();

    // Docker first: without it there is nothing to manage, and a wrong network is a
    // configuration error the operator must see at once.
    let docker = docker::connect(&config.docker_socket).await?;
    if let Some(rt) = &config.runtime {
        let known = docker::runtimes(&docker).await?;
        if !known.contains(rt) {
            return Err(crate::Error::UnknownRuntime(rt.clone(), known.join(", ")));
        }
        info!(runtime = %rt, "containers are made with this OCI runtime");
    }
    network::ensure(&docker, &config.network, &config.ipv6_prefix, &node).await?;
    let driver = Driver::new(
        docker.clone(),
        node.clone(),
        config.network.clone(),
        config.ipv6_prefix,
    )
    .with_runtime(config.runtime.clone());
    // Without live restore, stopping dockerd (an upgrade, a crash) stops every container, and
    // every session on this host with them.
    match driver.live_restore().await {
        Ok(Some(true)) => info!("dockerd keeps containers running across its restarts (live restore)"),
        Ok(_) => warn!(
            "dockerd has live restore OFF: restarting dockerd will stop every container and end every session on this host; put \"live-restore\": true in /etc/docker/daemon.json and reload dockerd (deploy/install-agent.sh does)"
        ),
        Err(e) => warn!(error = %e, "could not ask dockerd whether live restore is on"),
    }
    // The rules before anything else touches a container: what already runs is closed (or
    // covered by its own rules) from here on.
    let isolation = Isolation::start(&config, &docker, &driver).await?;

    // Registry credentials: a file that does not read is a configuration error.
    let registry_auth = match &config.registry_auth {
        Some(path) => {
            let auth =
                crate::images::RegistryAuth::load(path).map_err(|reason| Error::RegistryAuth {
                    path: path.display().to_string(),
                    reason,
                })?;
            info!(registries = ?auth, "registry credentials read");
            auth
        }
        None => Default::default(),
    };

    // NATS connects (and reconnects) in the background, forever: an outage delays facts and
    // commands, it never stops the agent.
    let nats = connect_nats(&config).await?;
    let store = warmpool_workspace_store::Store::open(
        &config.workspace_store,
        config.workspace_store_config.as_deref(),
    )?;
    info!(store = store.url(), "workspaces are kept in this store");

    let bindings_dir = config.state_dir.join("workspaces");
    let (outbox, outbox_rx) = outbox::outbox();
    let background = CancellationToken::new();
    let shared = Arc::new(Shared {
        inventory: Inventory::new(
            outbox.clone(),
            config.startup_grace,
            background.child_token(),
        ),
        creates: Arc::new(crate::creates::Gate::new(
            config.min_concurrent_creates,
            config.max_concurrent_creates,
        )),
        destroys: tokio::sync::Semaphore::new(crate::commands::MAX_CONCURRENT_DESTROYS),
        config,
        boot_id,
        nats: nats.clone(),
        driver,
        outbox,
        tasks: TaskTracker::new(),
        resync_now: Notify::new(),
        runtime: Default::default(),
        isolation,
        sessions: Default::default(),
        workspaces: crate::workspace::Workspaces::new(store, bindings_dir),
        images: crate::images::Images::new(registry_auth, background.child_token()),
        pauses: Default::default(),
    });
    crate::telemetry::runtime_available(true);
    crate::telemetry::create_limit(shared.creates.limit());

    let publisher_stop = CancellationToken::new();
    let publisher = tokio::spawn(outbox::publish(
        nats.clone(),
        node.clone(),
        outbox_rx,
        publisher_stop.clone(),
    ));

    // Adopt what this node already runs before taking commands, so a create for an id that
    // exists is recognised as such. A failure here (or at subscribing) is fatal: stop what
    // was started (probes of adopted containers, the publisher) before returning it.
    let adopt_started = SystemTime::now();
    let abort = |e: Error| {
        background.cancel();
        publisher_stop.cancel();
        e
    };
    let report = resync::resync(&shared).await.map_err(|e| abort(e.into()))?;
    info!(
        adopted = report.adopted,
        removed = report.removed,
        "adopted existing containers"
    );
    let rebound = crate::workspace::readopt(&shared);
    if rebound > 0 {
        info!(
            rebound,
            "workspaces of re-adopted containers are synced and saved again"
        );
    }
    let sub = nats
        .subscribe(subjects::cmd(&node))
        .await
        .map_err(|e| abort(Error::Nats(e.to_string())))?;

    let session_sub = nats
        .subscribe(subjects::session(&node))
        .await
        .map_err(|e| abort(Error::Nats(e.to_string())))?;

    let loops = TaskTracker::new();
    loops.spawn(events::watch(
        shared.clone(),
        adopt_started,
        background.clone(),
    ));
    loops.spawn(resync::run(shared.clone(), background.clone()));
    loops.spawn(heartbeat::run(shared.clone(), background.clone()));
    loops.spawn(crate::pause::check_paused(
        shared.clone(),
        background.clone(),
    ));
    loops.spawn(crate::images::run(shared.clone(), background.clone()));
    loops.spawn(crate::runtime::watch(shared.clone(), background.clone()));
    loops.spawn(isolation::run(shared.clone(), background.clone()));
    activity::spawn(&shared, background.clone());

    let commands_stop = CancellationToken::new();
    let handlers = TaskTracker::new();
    let listener = tokio::spawn(commands::listen(
        shared.clone(),
        sub,
        handlers.clone(),
        commands_stop.clone(),
    ));
    let sessions_stop = CancellationToken::new();
    let session_handlers = TaskTracker::new();
    let session_listener = tokio::spawn(crate::session::listen(
        shared.clone(),
        session_sub,
        session_handlers.clone(),
        sessions_stop.clone(),
    ));
    info!(subject = subjects::cmd(&node), "ready for commands");

    shutdown.await;
    info!("shutting down; containers keep running and are adopted at the next start");

    // 1. No new commands; let the ones being handled (and creates under way) finish. Open
    // session streams end (their members see the stream gone and tell their clients).
    sessions_stop.cancel();
    let _ = session_listener.await;
    session_handlers.close();
    wait("session handlers", session_handlers.wait()).await;
    commands_stop.cancel();
    let _ = listener.await;
    handlers.close();
    wait("command handlers", handlers.wait()).await;
    // 2. Background loops and probes.
    background.cancel();
    loops.close();
    wait("background loops", loops.wait()).await;
    shared.tasks.close();
    wait("create and probe tasks", shared.tasks.wait()).await;
    // 3. Publish what is still queued, then flush.
    publisher_stop.cancel();
    wait("publisher", async {
        let _ = publisher.await;
    })
    .await;
    metrics_stop.cancel();
    if let Some(server) = metrics_server {
        let _ = server.await;
    }
    info!("stopped");
    Ok(())
}

async fn wait(what: &str, fut: impl Future<Output = ()>) {
    if tokio::time::timeout(STOP_DEADLINE, fut).await.is_err() {
        warn!(what, "did not stop within {STOP_DEADLINE:?}; leaving it");
    }
}

async fn connect_nats(config: &Config) -> Result<async_nats::Client, Error> {
    let node = config.node_id.to_string();
    // A connection after the first is a reconnect.
    let connected_once = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    crate::telemetry::nats_connected(false, false);
    let mut opts = async_nats::ConnectOptions::new()
        .name(format!("warmpool-agent {node}"))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(warmpool_proto::subjects::reconnect_delay)
        .event_callback(move |event| {
            let connected_once = connected_once.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        let again = connected_once.swap(true, std::sync::atomic::Ordering::SeqCst);
                        crate::telemetry::nats_connected(true, again);
                        info!("connected to NATS");
                    }
                    async_nats::Event::Disconnected => {
                        crate::telemetry::nats_connected(false, false);
                        warn!("disconnected from NATS; reconnecting");
                    }
                    // E.g. a permissions violation: this node's user may not do something.
                    async_nats::Event::ServerError(e) => warn!(error = %e, "NATS server error"),
                    other => info!(event = %other, "NATS event"),
                }
            }
        });
    if let Some((user, password)) = &config.nats_auth {
        opts = opts.user_and_password(user.clone(), password.clone());
    }
    if let Some(ca) = &config.nats_ca {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    opts.connect(config.nats_servers.clone())
        .await
        .map_err(|e| Error::Nats(e.to_string()))
}
