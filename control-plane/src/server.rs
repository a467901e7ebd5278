//! Starting and stopping one control-plane member.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use metrics_exporter_prometheus::PrometheusHandle;
use openraft::{BasicNode, SnapshotPolicy};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use warmpool_proto::{subjects, MemberId};

use crate::agents::{self, Agents, Fleet};
use crate::api::{self, App};
use crate::cluster::Cluster;
use crate::leader::{Leader, LeaderConfig};
use crate::raft::log_store::LogStore;
use crate::raft::network::NatsNetwork;
use crate::raft::state_machine::StateMachineStore;
use crate::raft::{self, Raft};
use crate::state::query::EVENT_PAGE_MAX;

/// Raft timing and compaction.
#[derive(Clone, Debug)]
pub struct RaftTuning {
    /// Leader heartbeat interval, ms.
    pub heartbeat_ms: u64,
    /// Election timeout range, ms.
    pub election_ms: (u64, u64),
    /// Take a snapshot after this many entries since the last one.
    pub snapshot_every: u64,
    /// Entries kept in the log behind the last snapshot, for lagging followers.
    pub keep_behind_snapshot: u64,
    /// Writes waiting to be proposed at most; beyond it a write is refused at once (503
    /// `overloaded`, Retry-After) instead of queueing without bound.
    pub max_queued_writes: usize,
    /// How long a write through the API waits to be committed before it answers 503 (the
    /// write may still commit: see [`Config::abandon_grace`]).
    pub write_timeout: Duration,
}

impl Default for RaftTuning {
    fn default() -> Self {
        RaftTuning {
            // A member stands for election after election_ms.1 (openraft's leader lease)
            // plus a random election_ms: 650-800 ms after the last heartbeat here. The
            // heartbeat is also openraft's time limit for every append (a follower answers
            // once the entries are flushed): 50 ms timed appends out under load.
            heartbeat_ms: 100,
            election_ms: (400, 800),
            snapshot_every: 5000,
            keep_behind_snapshot: 1000,
            max_queued_writes: 10_000,
            write_timeout: crate::cluster::WRITE_DEADLINE,
        }
    }
}

/// A member's configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Raft id of this member.
    pub id: MemberId,
    /// NATS server URLs, comma-separated: one server, or several of one NATS cluster (the
    /// client reconnects to another when its server goes away, and learns the rest of the
    /// cluster from the server it reaches).
    pub nats_url: String,
    /// NATS user, if the server wants one.
    pub nats_user: Option<String>,
    /// NATS password.
    pub nats_password: Option<String>,
    /// Where the REST API listens.
    pub api_addr: SocketAddr,
    /// The API address others should use for this member.
    pub advertise: String,
    /// Where Raft keeps its log and snapshots.
    pub data_dir: PathBuf,
    /// Initialize a new cluster with this member as its only voter, unless already initialized.
    pub bootstrap: bool,
    /// Ask the running cluster to take this member in, unless already a member.
    pub join: bool,
    /// Leader loop tunables.
    pub leader: LeaderConfig,
    /// Raft tunables.
    pub raft: RaftTuning,
    /// How long a command to an agent may take.
    pub agent_timeout: Duration,
    /// Require API keys.
    pub auth: bool,
    /// An admin token (`wpk_<id>_<secret>`) to store at first start, so there is a key to
    /// make other keys with.
    pub admin_key: Option<String>,
    /// Serve the dashboard's built files from here.
    pub dashboard_dir: Option<PathBuf>,
    /// Serve the API over HTTPS with this certificate chain and key (PEM files).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Trust these CA certificates (PEM) for NATS over TLS, besides the system's; TLS is then
    /// required.
    pub nats_ca: Option<PathBuf>,
    /// Where the gateway is, for the URLs in allocation answers.
    pub gateway: crate::api::gateway::GatewayLinks,
    /// How long the client of an allocation request that went unanswered (the write timed
    /// out, or the client hung up) has to come back for it with its idempotency key before
    /// the allocation, if the write committed after all, is released as `abandoned`.
    pub abandon_grace: Duration,
    /// Where workspaces are kept (`file:///dir` or `s3://bucket`): the agents save and
    /// restore them there; this member lists and deletes them.
    pub workspace_store: String,
    /// Options of an S3 workspace store (a JSON object of `object_store`'s S3 keys).
    pub workspace_store_config: Option<PathBuf>,
    /// Retention caps to propose to the cluster (unset ones keep the cluster's).
    pub retention: RetentionFlags,
    /// When this member's archive closes a file.
    pub archive_rotation: crate::archive::Rotation,
}

/// Retention caps a member was started with (`--retain-*`). The caps are replicated state:
/// the member proposes them once the cluster has a leader, so every member evicts the same
/// records; members started with different caps each propose theirs when they start, and
/// the last one applied holds.
#[derive(Clone, Copy, Debug, Default)]
pub struct RetentionFlags {
    /// Events.
    pub events: Option<usize>,
    /// Ended containers.
    pub ended_containers: Option<usize>,
    /// Released allocations.
    pub released_allocations: Option<usize>,
}

impl RetentionFlags {
    /// The caps `current` becomes with these set; none when nothing is set.
    pub fn apply_to(&self, current: crate::state::Retention) -> Option<crate::state::Retention> {
        if self.events.is_none()
            && self.ended_containers.is_none()
            && self.released_allocations.is_none()
        {
            return None;
        }
        Some(crate::state::Retention {
            events: self.events.unwrap_or(current.events),
            ended_containers: self.ended_containers.unwrap_or(current.ended_containers),
            released_allocations: self
                .released_allocations
                .unwrap_or(current.released_allocations),
        })
    }
}

/// Why a member could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The workspace store cannot be opened.
    #[error(transparent)]
    WorkspaceStore(#[from] warmpool_workspace_store::StoreError),
    /// The data directory could not be opened.
    #[error("cannot open data directory {0}: {1}")]
    Storage(PathBuf, String),
    /// Raft refused its configuration or failed to start.
    #[error("raft: {0}")]
    Raft(String),
    /// NATS could not be reached or subscribed.
    #[error("nats: {0}")]
    Nats(String),
    /// The bootstrap admin key is not a Warmpool key.
    #[error("the admin key is malformed: expected wpk_<12 hex>_<64 hex>")]
    AdminKey,
    /// The TLS certificate or key could not be used.
    #[error("tls: {0}")]
    Tls(String),
    /// The archive directory could not be opened.
    #[error("cannot open the archive in {0}: {1}")]
    Archive(PathBuf, std::io::Error),
    /// A retention cap is out of range.
    #[error("{0}")]
    Retention(String),
    /// The API address could not be bound.
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
}

/// Runs a member until `shutdown`, then stops it in order: the API stops taking requests,
/// background tasks end, Raft shuts down, the disk is flushed.
pub async fn run(
    config: Config,
    metrics: Option<PrometheusHandle>,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    if config
        .admin_key
        .as_deref()
        .is_some_and(|k| crate::auth::parse(k).is_none())
    {
        return Err(StartError::AdminKey);
    }
    let workspaces = warmpool_workspace_store::Store::open(
        &config.workspace_store,
        config.workspace_store_config.as_deref(),
    )?;
    let dir = config.data_dir.join("raft");
    let db = sled::Config::new()
        .path(&dir)
        .mode(sled::Mode::HighThroughput)
        .open()
        .map_err(|e| StartError::Storage(dir.clone(), e.to_string()))?;
    let log = LogStore::open(&db).map_err(|e| StartError::Storage(dir.clone(), e.to_string()))?;
    let commit_index = log.commit_index();
    if let Some(r) = config
        .retention
        .apply_to(crate::state::Retention::default())
    {
        r.validate().map_err(StartError::Retention)?;
    }
    let archive_dir = config.data_dir.join("archive");
    let archive = Arc::new(
        crate::archive::Archive::open(&archive_dir, config.archive_rotation)
            .map_err(|e| StartError::Archive(archive_dir.clone(), e))?,
    );
    let sm = StateMachineStore::open(&db)
        .map_err(|e| StartError::Storage(dir.clone(), e.to_string()))?
        .with_archive(crate::archive::spawn_writer(archive.clone()));
    let shared = sm.shared();

    // The leader must know when its own NATS link broke: heartbeats it missed then are no
    // evidence against the nodes (see `Leader::liveness`).
    let fleet = Arc::new(Fleet::default());
    let link = fleet.clone();
    let mut nats_opts = async_nats::ConnectOptions::new()
        .name(format!("warmpool-control-plane-{}", config.id))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(subjects::reconnect_delay)
        .connection_timeout(Duration::from_secs(2))
        .event_callback(move |event| {
            let link = link.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        info!("connected to NATS");
                        link.on_nats(true);
                    }
                    async_nats::Event::Disconnected => {
                        warn!("disconnected from NATS; reconnecting");
                        link.on_nats(false);
                    }
                    async_nats::Event::ServerError(e) => warn!(error = %e, "NATS server error"),
                    other => debug!(event = %other, "NATS event"),
                }
            }
        });
    if let (Some(user), Some(pass)) = (&config.nats_user, &config.nats_password) {
        nats_opts = nats_opts.user_and_password(user.clone(), pass.clone());
    }
    if let Some(ca) = &config.nats_ca {
        nats_opts = nats_opts
            .add_root_certificates(ca.clone())
            .require_tls(true);
    }
    let tls = match &config.tls {
        Some((cert, key)) => {
            Some(crate::tls::server_config(cert, key).map_err(|e| StartError::Tls(e.to_string()))?)
        }
        None => None,
    };
    let servers = nats_servers(&config.nats_url).map_err(StartError::Nats)?;
    let nats = nats_opts
        .connect(servers)
        .await
        .map_err(|e| StartError::Nats(e.to_string()))?;

    let t = &config.raft;
    let raft_config = openraft::Config {
        cluster_name: "warmpool".into(),
        heartbeat_interval: t.heartbeat_ms,
        election_timeout_min: t.election_ms.0,
        election_timeout_max: t.election_ms.1,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(t.snapshot_every),
        max_in_snapshot_log_to_keep: t.keep_behind_snapshot,
        // Chunks stay well under NATS's default 1 MiB payload limit.
        snapshot_max_chunk_size: 512 * 1024,
        ..Default::default()
    }
    .validate()
    .map_err(|e| StartError::Raft(e.to_string()))?;
    let raft = Raft::new(
        config.id,
        Arc::new(raft_config),
        NatsNetwork::new(nats.clone()),
        log,
        sm,
    )
    .await
    .map_err(|e| StartError::Raft(e.to_string()))?;

    let mut tasks = JoinSet::new();
    let stop = shutdown.child_token();
    {
        let heard = raft::watch::Heard::default();
        let (nats, raft, stop, id) = (nats.clone(), raft.clone(), stop.clone(), config.id);
        tasks.spawn(raft::watch::run(
            nats.clone(),
            raft.clone(),
            id,
            heard.clone(),
            stop.clone(),
        ));
        tasks.spawn(async move {
            if let Err(e) = raft::server::serve(nats, raft, id, heard, stop).await {
                warn!(error = %e, "raft rpc server stopped");
            }
        });
    }

    // Initialize only a brand-new member; a restarted one finds its vote and log on disk.
    let initialized = raft
        .is_initialized()
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;
    if config.bootstrap && !initialized {
        let members = std::collections::BTreeMap::from([(
            config.id,
            BasicNode::new(config.advertise.clone()),
        )]);
        raft.initialize(members)
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        info!(member = config.id, "initialized a new cluster");
    }

    let cluster = Cluster::new(
        config.id,
        raft.clone(),
        shared.clone(),
        nats.clone(),
        commit_index,
        t.max_queued_writes,
        t.write_timeout,
    );
    tasks.spawn(
        cluster
            .clone()
            .serve_forwards(stop.clone())
            .map_log("forward server"),
    );
    if config.join && !initialized {
        tasks.spawn(cluster.clone().join(config.advertise.clone(), stop.clone()));
    }
    tasks
        .spawn(agents::listen(nats.clone(), fleet.clone(), stop.clone()).map_log("agent listener"));
    let leader = Leader::new(
        cluster.clone(),
        fleet.clone(),
        Agents::new(nats.clone(), config.agent_timeout),
        config.leader.clone(),
    );
    tasks.spawn(leader.run(stop.clone()));
    tasks.spawn(publish_events(cluster.clone(), nats.clone(), stop.clone()));
    tasks.spawn(raft_metrics(raft.clone(), stop.clone()));
    tasks.spawn(propose_retention(
        cluster.clone(),
        config.retention,
        stop.clone(),
    ));
    if let Some(token) = config.admin_key.clone() {
        tasks.spawn(bootstrap_admin_key(cluster.clone(), token, stop.clone()));
    }
    if !config.auth {
        warn!("AUTH IS OFF: anyone who can reach {} can change this cluster; start with --auth for anything but local development", config.api_addr);
    }
    tasks.spawn(state_metrics(cluster.clone(), stop.clone()));

    let listener = tokio::net::TcpListener::bind(config.api_addr)
        .await
        .map_err(|e| StartError::Listen(config.api_addr, e))?;
    info!(member = config.id, api = %config.api_addr, nats = %config.nats_url, "control plane up");
    let app = Arc::new(App {
        cluster,
        fleet,
        metrics,
        shutdown: stop.clone(),
        auth: config.auth,
        dashboard: config.dashboard_dir.clone(),
        overcommit: config.leader.overcommit,
        sessions: crate::session::SessionClient::new(nats.clone()),
        gateway: config.gateway.clone(),
        abandon_grace: config.abandon_grace,
        workspaces,
        archive: Some(archive),
    });
    let serve_stop = stop.clone();
    let router = api::router(app);
    let served = match tls {
        Some(tls) => {
            let listener = crate::tls::TlsListener::new(listener, tls, stop.clone())
                .map_err(|e| StartError::Listen(config.api_addr, e))?;
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { serve_stop.cancelled().await })
                .await
        }
        None => {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { serve_stop.cancelled().await })
                .await
        }
    };
    if let Err(e) = served {
        warn!(error = %e, "api server failed");
    }

    // Ordered stop: everything else, then Raft, then the disk.
    stop.cancel();
    let drained = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!("background tasks did not stop within 5s; aborting them");
        tasks.abort_all();
    }
    if let Err(e) = raft.shutdown().await {
        warn!(error = %e, "raft shutdown");
    }
    let _ = db.flush_async().await;
    info!(member = config.id, "control plane stopped");
    Ok(())
}

trait LogErr {
    async fn map_log(self, what: &'static str);
}

impl<F, E> LogErr for F
where
    F: std::future::Future<Output = Result<(), E>> + Send,
    E: std::fmt::Display,
{
    async fn map_log(self, what: &'static str) {
        if let Err(e) = self.await {
            warn!(error = %e, "{what} stopped");
        }
    }
}

/// While leading, publishes each committed event on `pool.v1.events` for live views that
/// prefer NATS to SSE. At-least-once across leader changes: consumers dedupe by `seq`.
async fn publish_events(cluster: Cluster, nats: async_nats::Client, stop: CancellationToken) {
    let shared = cluster.shared().clone();
    let mut applied = shared.subscribe();
    let mut after = shared.read(|s| s.last_event_seq());
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = applied.changed() => if changed.is_err() { return },
        }
        if !cluster.is_leader() {
            after = shared.read(|s| s.last_event_seq());
            continue;
        }
        loop {
            let filter = crate::state::EventFilter::default();
            let batch = shared.read(|s| s.events(Some(after), None, EVENT_PAGE_MAX, &filter));
            let Some(last) = batch.last().map(|e| e.seq) else {
                break;
            };
            for e in batch {
                if let Ok(bytes) = serde_json::to_vec(&e) {
                    let _ = nats.publish(subjects::EVENTS, Bytes::from(bytes)).await;
                }
            }
            after = last;
        }
    }
}

/// Mirrors Raft's own metrics into Prometheus gauges.
async fn raft_metrics(raft: Raft, stop: CancellationToken) {
    let mut rx = raft.metrics();
    loop {
        {
            let m = rx.borrow_and_update();
            metrics::gauge!("warmpool_raft_term").set(m.current_term as f64);
            metrics::gauge!("warmpool_raft_is_leader").set(
                if m.state == openraft::ServerState::Leader {
                    1.0
                } else {
                    0.0
                },
            );
            metrics::gauge!("warmpool_raft_leader_id")
                .set(m.current_leader.map_or(-1.0, |l| l as f64));
            metrics::gauge!("warmpool_raft_last_log_index")
                .set(m.last_log_index.unwrap_or(0) as f64);
            metrics::gauge!("warmpool_raft_applied_index")
                .set(m.last_applied.map_or(0, |l| l.index) as f64);
            metrics::gauge!("warmpool_raft_snapshot_index")
                .set(m.snapshot.map_or(0, |l| l.index) as f64);
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = rx.changed() => if changed.is_err() { return },
        }
    }
}

/// Every few seconds, mirrors the replicated state into Prometheus: containers by pool, node
/// and state, wanted and waiting counts, and container-seconds.
async fn state_metrics(cluster: Cluster, stop: CancellationToken) {
    loop {
        let now = warmpool_proto::Timestamp::now();
        let status = cluster.shared().read(|s| {
            let usage: Vec<_> = s
                .pools()
                .map(|p| {
                    let name = p.spec.name.clone();
                    (s.usage(&name, now), p.spec.price_per_hour, name)
                })
                .collect();
            (s.status(now), usage, s.last_event_seq())
        });
        let (status, usage, events) = status;
        for p in &status.pools {
            let pool = p.name.to_string();
            let c = &p.counts;
            for (state, n) in [
                ("creating", c.creating),
                ("warm", c.warm),
                ("allocated", c.allocated),
                ("releasing", c.releasing),
                ("unhealthy", c.unhealthy),
                ("outdated", c.outdated),
            ] {
                metrics::gauge!("warmpool_pool_containers", "pool" => pool.clone(), "state" => state).set(f64::from(n));
            }
            metrics::gauge!("warmpool_pool_wanted", "pool" => pool.clone())
                .set(f64::from(p.wanted));
            metrics::gauge!("warmpool_pool_queue_length", "pool" => pool.clone())
                .set(f64::from(p.waiting));
        }
        for n in &status.nodes {
            let node = n.node.to_string();
            let c = &n.counts;
            for (state, v) in [
                ("creating", c.creating),
                ("warm", c.warm),
                ("allocated", c.allocated),
                ("unhealthy", c.unhealthy),
            ] {
                metrics::gauge!("warmpool_node_containers", "node" => node.clone(), "state" => state).set(f64::from(v));
            }
        }
        for (u, price, pool) in usage {
            let pool = pool.to_string();
            metrics::counter!("warmpool_pool_container_seconds_total", "pool" => pool.clone(), "kind" => "warm")
                .absolute(u.warm_ms / 1000);
            metrics::counter!("warmpool_pool_container_seconds_total", "pool" => pool.clone(), "kind" => "allocated")
                .absolute(u.allocated_ms / 1000);
            if let Some(price) = price {
                // Cost so far at the pool's price per container-hour (a float, so a gauge that
                // only grows, like the counters above).
                let cost = |ms: u64| ms as f64 / 3_600_000.0 * price;
                metrics::gauge!("warmpool_pool_cost", "pool" => pool.clone(), "kind" => "warm")
                    .set(cost(u.warm_ms));
                metrics::gauge!("warmpool_pool_cost", "pool" => pool, "kind" => "allocated")
                    .set(cost(u.allocated_ms));
            }
        }
        metrics::counter!("warmpool_events_total").absolute(events);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

/// Stores the bootstrap admin key once the cluster can take writes, unless a key with its id
/// is already known (then it is left alone, revoked or not: the file cannot resurrect it).
async fn bootstrap_admin_key(cluster: Cluster, token: String, stop: CancellationToken) {
    let Some((id, secret)) = crate::auth::parse(&token) else {
        return;
    };
    let key = crate::state::KeyRecord {
        id: id.to_string(),
        name: "bootstrap-admin".into(),
        role: warmpool_proto::api::Role::Admin,
        tenant: None,
        hash: crate::auth::hash(secret),
        created_at: warmpool_proto::Timestamp::now(),
        revoked_at: None,
    };
    loop {
        if cluster.shared().read(|s| s.key(id).is_some()) {
            return;
        }
        if cluster.leader().is_some() {
            let cmd = crate::state::Command::CreateKey { key: key.clone() };
            if cluster.write(crate::state::Request::now(cmd)).await.is_ok() {
                info!(key = id, "bootstrap admin key stored");
                return;
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// Proposes this member's `--retain-*` caps once the cluster can take writes, unless the
/// cluster has them already.
async fn propose_retention(cluster: Cluster, flags: RetentionFlags, stop: CancellationToken) {
    loop {
        let current = cluster.shared().read(|s| s.retention());
        let Some(wanted) = flags.apply_to(current) else {
            return;
        };
        if wanted == current {
            return;
        }
        if cluster.leader().is_some() {
            let cmd = crate::state::Command::SetRetention { retention: wanted };
            match cluster.write(crate::state::Request::now(cmd)).await {
                Ok(crate::state::Response::Rejected(r)) => {
                    warn!(reason = ?r, "retention refused");
                    return;
                }
                Ok(_) => {
                    info!(?wanted, "retention set");
                    return;
                }
                Err(_) => {}
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// The servers `--nats-url` names: one URL, or several separated by commas.
pub fn nats_servers(urls: &str) -> Result<Vec<async_nats::ServerAddr>, String> {
    urls.split(',')
        .map(str::trim)
        .map(|u| match u.parse::<async_nats::ServerAddr>() {
            Ok(a) if !a.host().is_empty() => Ok(a),
            Ok(_) => Err(format!("--nats-url {u:?}: no server address")),
            Err(e) => Err(format!("--nats-url {u:?}: {e}")),
        })
        .collect()
}

#[cfg(test)]
mod nats_url_tests {
    use super::nats_servers;

    #[test]
    fn one_or_several_comma_separated_urls() {
        assert_eq!(nats_servers("nats://a:4222").unwrap().len(), 1);
        let three = nats_servers("nats://a:4222, nats://b:4223,nats://[fd36::1]:4224").unwrap();
        assert_eq!(three.len(), 3);
        assert_eq!(three[1].port(), 4223);
        assert!(nats_servers("nats://a:4222,").unwrap_err().contains("\"\""));
        assert!(nats_servers("http://a:4222").is_err());
    }
}
