//! `warmpool-control-plane`: flags, logging, metrics, then [`server::run`] until a signal.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;
use warmpool_control_plane::leader::LeaderConfig;
use warmpool_control_plane::server::{self, Config, RaftTuning};

/// A Warmpool control-plane member.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Raft id of this member (1, 2, 3, ...).
    #[arg(long, env = "WARMPOOL_MEMBER_ID")]
    id: u64,
    /// NATS server URL; several, comma-separated, for a NATS cluster.
    #[arg(
        long,
        env = "WARMPOOL_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    nats_url: String,
    /// NATS user.
    #[arg(long, env = "WARMPOOL_NATS_USER")]
    nats_user: Option<String>,
    /// NATS password.
    #[arg(long, env = "WARMPOOL_NATS_PASSWORD", hide_env_values = true)]
    nats_password: Option<String>,
    /// REST API listen address.
    #[arg(long, env = "WARMPOOL_API_ADDR", default_value = "127.0.0.1:7070")]
    api_addr: SocketAddr,
    /// API URL other members and clients should use (default: http://<api-addr>).
    #[arg(long, env = "WARMPOOL_ADVERTISE")]
    advertise: Option<String>,
    /// Data directory (Raft log and snapshots).
    #[arg(long, env = "WARMPOOL_DATA_DIR", default_value = "./warmpool-data")]
    data_dir: PathBuf,
    /// Start a new cluster with this member as its only voter (ignored once initialized).
    #[arg(long, env = "WARMPOOL_BOOTSTRAP")]
    bootstrap: bool,
    /// Join the running cluster (found over NATS) as a new member (ignored once a member).
    #[arg(long, env = "WARMPOOL_JOIN", conflicts_with = "bootstrap")]
    join: bool,
    /// Seconds without a heartbeat before a node is declared down.
    #[arg(long, env = "WARMPOOL_NODE_TIMEOUT_SECS", default_value_t = 5.0)]
    node_timeout_secs: f64,
    /// Seconds a node may stay down before the allocations still on it are declared lost.
    /// Until then a down node's sessions are kept (it may be alive behind a broken link) and
    /// get their containers back when it returns.
    #[arg(long, env = "WARMPOOL_NODE_LOST_SECS", default_value_t = 300.0)]
    node_lost_secs: f64,
    /// Reservation overcommit for CPU when placing containers.
    #[arg(long, env = "WARMPOOL_CPU_OVERCOMMIT", default_value_t = 8.0)]
    cpu_overcommit: f64,
    /// Raft: the leader's heartbeat interval to the other members, ms. It is also the time
    /// limit of every append to a member (which answers once the entries are on its disk).
    #[arg(long, env = "WARMPOOL_RAFT_HEARTBEAT_MS", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(10..=10_000))]
    raft_heartbeat_ms: u64,
    /// Raft: the election timeout range, `MIN,MAX` ms. A member stands for election once it
    /// has heard no leader for MAX (the leader's lease) plus a random MIN..MAX, so a leader's
    /// death costs MAX + MIN..MAX before writes resume. MIN must exceed the heartbeat interval
    /// well (3x at least: a lost heartbeat or two must not start an election).
    #[arg(long, env = "WARMPOOL_RAFT_ELECTION_MS", default_value = "400,800",
          value_parser = parse_election_ms)]
    raft_election_ms: (u64, u64),
    /// Raft: take a snapshot after this many log entries.
    #[arg(long, env = "WARMPOOL_SNAPSHOT_EVERY", default_value_t = 5000)]
    snapshot_every: u64,
    /// Writes waiting to be proposed at most; beyond it writes are refused at once with 503
    /// `overloaded` and Retry-After.
    #[arg(long, env = "WARMPOOL_MAX_QUEUED_WRITES", default_value_t = 10_000)]
    max_queued_writes: usize,
    /// How long a write through the API waits to be committed before answering 503
    /// `no_quorum` (it may still commit; see --abandon-grace-secs).
    #[arg(long, env = "WARMPOOL_WRITE_TIMEOUT_MS", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    write_timeout_ms: u64,
    /// An allocation whose request went unanswered (it timed out, or the client hung up) and
    /// committed anyway is released as `abandoned` unless its client asks again with the same
    /// idempotency key within this many seconds.
    #[arg(long, env = "WARMPOOL_ABANDON_GRACE_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    abandon_grace_secs: u64,
    /// Events kept in the replicated state; older ones go to each member's archive
    /// (replicated: this member proposes it to the cluster; unset keeps the cluster's,
    /// default 10000).
    #[arg(long, env = "WARMPOOL_RETAIN_EVENTS", value_name = "N",
          value_parser = clap::value_parser!(u64).range(10..=1_000_000))]
    retain_events: Option<u64>,
    /// Ended containers kept in the replicated state (default 2000); see --retain-events.
    #[arg(long, env = "WARMPOOL_RETAIN_ENDED_CONTAINERS", value_name = "N",
          value_parser = clap::value_parser!(u64).range(10..=1_000_000))]
    retain_ended_containers: Option<u64>,
    /// Released allocations (and their idempotency keys) kept in the replicated state
    /// (default 10000); see --retain-events.
    #[arg(long, env = "WARMPOOL_RETAIN_RELEASED_ALLOCATIONS", value_name = "N",
          value_parser = clap::value_parser!(u64).range(10..=1_000_000))]
    retain_released_allocations: Option<u64>,
    /// Records per archive file before it is closed and compressed.
    #[arg(long, env = "WARMPOOL_ARCHIVE_SEGMENT_RECORDS", default_value_t = 50_000,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    archive_segment_records: u64,
    /// Bytes this member's archive may take on disk; beyond them its oldest closed files are
    /// deleted (the newest of each kind is always kept).
    #[arg(long, env = "WARMPOOL_ARCHIVE_MAX_BYTES", value_name = "BYTES", default_value_t = 1 << 30,
          value_parser = clap::value_parser!(u64).range(1..))]
    archive_max_bytes: u64,
    /// Archive files whose newest record is older than this many days are deleted (0 keeps
    /// them however old; --archive-max-bytes still applies).
    #[arg(long, env = "WARMPOOL_ARCHIVE_MAX_AGE_DAYS", value_name = "DAYS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(0..=36_500))]
    archive_max_age_days: u64,
    /// Kept for older command lines: auth is on unless --insecure-no-auth.
    #[arg(
        long,
        env = "WARMPOOL_AUTH",
        hide = true,
        conflicts_with = "insecure_no_auth"
    )]
    auth: bool,
    /// Serve the API without keys: anyone who reaches it may do anything. For local
    /// experiments only.
    #[arg(long, env = "WARMPOOL_INSECURE_NO_AUTH")]
    insecure_no_auth: bool,
    /// File holding an admin key (wpk_<id>_<secret>) to store at first start.
    #[arg(long, env = "WARMPOOL_ADMIN_KEY_FILE")]
    admin_key_file: Option<PathBuf>,
    /// Serve the API over HTTPS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "WARMPOOL_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "WARMPOOL_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The gateway's public URL (`https://gw.example.com`): allocation answers carry
    /// `{url}/s/{allocation}/{port}/` per port.
    #[arg(long, env = "WARMPOOL_GATEWAY_URL")]
    gateway_url: Option<String>,
    /// The gateway's domain: allocation answers carry `{allocation}-{port}.{domain}` too.
    #[arg(long, env = "WARMPOOL_GATEWAY_DOMAIN")]
    gateway_domain: Option<String>,
    /// Where workspaces are kept, as the agents are told: `file:///dir` (made when missing;
    /// it must be the agents' directory, e.g. shared storage) or `s3://bucket[/prefix]`.
    #[arg(long, env = "WARMPOOL_WORKSPACE_STORE", default_value = warmpool_workspace_store::DEFAULT_URL)]
    workspace_store: String,
    /// Options of an S3 workspace store: a JSON object of object_store's S3 keys
    /// (`aws_endpoint`, `aws_access_key_id`, `aws_secret_access_key`, `aws_region`,
    /// `aws_allow_http`, ...).
    #[arg(long, env = "WARMPOOL_WORKSPACE_STORE_CONFIG")]
    workspace_store_config: Option<PathBuf>,
    /// Connect to NATS over TLS, trusting this CA certificate (PEM) besides the system's.
    #[arg(long, env = "WARMPOOL_NATS_CA")]
    nats_ca: Option<PathBuf>,
    /// Serve the dashboard's built files (dashboard/dist) at /.
    #[arg(long, env = "WARMPOOL_DASHBOARD_DIR")]
    dashboard_dir: Option<PathBuf>,
    /// Log as JSON lines.
    #[arg(long, env = "WARMPOOL_LOG_JSON")]
    log_json: bool,
    /// What to log: a level (`info`, `debug`) or directives such as
    /// `info,warmpool_control_plane::leader=debug`. RUST_LOG, when set, wins.
    #[arg(
        long,
        env = "WARMPOOL_LOG",
        default_value = "info,openraft=warn,sled=warn,async_nats=warn"
    )]
    log: String,
}

/// `MIN,MAX` milliseconds of `--raft-election-ms`.
fn parse_election_ms(s: &str) -> Result<(u64, u64), String> {
    let (min, max) = s
        .split_once(',')
        .ok_or_else(|| format!("expected MIN,MAX in ms, e.g. 200,400; got {s:?}"))?;
    let ms = |v: &str| {
        v.trim()
            .parse::<u64>()
            .map_err(|e| format!("{v:?} is not a number of ms: {e}"))
    };
    let (min, max) = (ms(min)?, ms(max)?);
    if min == 0 || min >= max {
        return Err(format!(
            "MIN must be above 0 and below MAX; got {min},{max}"
        ));
    }
    Ok((min, max))
}

/// jemalloc, whose background threads hand freed pages back to the system within a second
/// (its options are set where it is built: `.cargo/config.toml`). Under glibc's allocator a
/// member's resident memory grew by about a fifth over 30,000 allocate/release cycles while its
/// heap stayed flat (docs/BENCHMARKS.md, "Memory over a long run"). Feature `jemalloc`, on by
/// default; the project's debug builds leave it out (control-plane/Cargo.toml says why).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The allocator this member was built with, for its first log line.
const ALLOCATOR_NAME: &str = if cfg!(feature = "jemalloc") {
    "jemalloc"
} else {
    "the system's (built without feature jemalloc; the heap gauges stay unset)"
};

/// The allocator's own figures: what the program holds, and what the allocator keeps
/// resident for it (their gap is memory freed but not yet given back).
#[cfg(feature = "jemalloc")]
fn heap_gauges() {
    use tikv_jemalloc_ctl::{epoch, stats};
    if epoch::advance().is_err() {
        return;
    }
    if let (Ok(allocated), Ok(resident)) = (stats::allocated::read(), stats::resident::read()) {
        metrics::gauge!("warmpool_heap_allocated_bytes").set(allocated as f64);
        metrics::gauge!("warmpool_heap_resident_bytes").set(resident as f64);
    }
}

/// The system's allocator has no figures to give.
#[cfg(not(feature = "jemalloc"))]
fn heap_gauges() {}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = match EnvFilter::try_from_default_env() {
        Ok(f) => f,
        Err(_) => match EnvFilter::try_new(&args.log) {
            Ok(f) => f,
            Err(e) => {
                // Nothing logs yet: say it plainly, as clap does for a bad flag.
                eprintln!("error: --log {:?}: {e}", args.log);
                std::process::exit(2);
            }
        },
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if args.log_json {
        fmt.json().init();
    } else {
        fmt.with_ansi(ansi).init();
    }
    tracing::info!(
        build = warmpool_proto::api::BuildProfile::current().as_str(),
        allocator = ALLOCATOR_NAME,
        "starting"
    );
    if !(args.node_timeout_secs > 0.0 && args.cpu_overcommit > 0.0 && args.node_lost_secs >= 0.0) {
        anyhow::bail!(
            "--node-timeout-secs and --cpu-overcommit must be positive, --node-lost-secs not negative"
        );
    }
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        // Histograms (not the exporter's default summaries), so Prometheus can aggregate
        // latencies over members and pools. From 0.5 ms (a warm allocation) to 60 s (the
        // longest wait an allocation may ask for).
        .set_buckets(&[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0, 60.0,
        ])
        .context("histogram buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    warmpool_control_plane::telemetry::describe();
    warmpool_control_plane::session::describe_metrics();
    // Histogram samples wait in the recorder until drained: drain them even when nobody scrapes.
    let upkeep = metrics.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
            heap_gauges();
        }
    });

    // The key may come from the environment (never logged) or a file.
    let admin_key = match (
        std::env::var("WARMPOOL_ADMIN_KEY").ok(),
        &args.admin_key_file,
    ) {
        (Some(k), _) => Some(k.trim().to_string()),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading the admin key file {}", path.display()))?
                .trim()
                .to_string(),
        ),
        (None, None) => None,
    };
    let auth = !args.insecure_no_auth;
    // A new cluster with auth on and no admin key given makes its own, in a file only root
    // reads, where poolctl on this host finds it (as k3s and Vault do).
    let admin_key = match admin_key {
        Some(k) => Some(k),
        None if auth && args.bootstrap => {
            let path = args.data_dir.join(warmpool_control_plane::auth::TOKEN_FILE);
            let token = warmpool_control_plane::auth::bootstrap_token(&path)
                .with_context(|| format!("the bootstrap admin token at {}", path.display()))?;
            tracing::info!(file = %path.display(), "bootstrap admin token (poolctl on this host finds it)");
            Some(token)
        }
        None => None,
    };
    let leader = LeaderConfig {
        node_timeout: Duration::from_secs_f64(args.node_timeout_secs),
        node_lost: Duration::from_secs_f64(args.node_lost_secs),
        overcommit: warmpool_control_plane::placement::Overcommit {
            cpu: args.cpu_overcommit,
            memory: 1.0,
        },
        ..LeaderConfig::default()
    };
    let config = Config {
        id: args.id,
        nats_url: args.nats_url,
        nats_user: args.nats_user,
        nats_password: args.nats_password,
        advertise: args
            .advertise
            .unwrap_or_else(|| format!("http://{}", args.api_addr)),
        api_addr: args.api_addr,
        data_dir: args.data_dir,
        bootstrap: args.bootstrap,
        join: args.join,
        leader,
        raft: RaftTuning {
            heartbeat_ms: args.raft_heartbeat_ms,
            election_ms: args.raft_election_ms,
            snapshot_every: args.snapshot_every,
            max_queued_writes: args.max_queued_writes,
            write_timeout: Duration::from_millis(args.write_timeout_ms),
            ..RaftTuning::default()
        },
        agent_timeout: Duration::from_secs(5),
        auth,
        admin_key,
        dashboard_dir: args.dashboard_dir,
        tls: args.tls_cert.zip(args.tls_key),
        nats_ca: args.nats_ca,
        gateway: warmpool_control_plane::api::gateway::GatewayLinks::new(
            args.gateway_url,
            args.gateway_domain,
        ),
        abandon_grace: Duration::from_secs(args.abandon_grace_secs),
        workspace_store: args.workspace_store,
        workspace_store_config: args.workspace_store_config,
        retention: server::RetentionFlags {
            events: args.retain_events.map(|n| n as usize),
            ended_containers: args.retain_ended_containers.map(|n| n as usize),
            released_allocations: args.retain_released_allocations.map(|n| n as usize),
        },
        archive_rotation: warmpool_control_plane::archive::Rotation {
            records: args.archive_segment_records as usize,
            max_bytes: args.archive_max_bytes,
            max_age: (args.archive_max_age_days > 0)
                .then(|| Duration::from_secs(args.archive_max_age_days * 86_400)),
            ..Default::default()
        },
    };

    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received; stopping");
        signal.cancel();
    });
    server::run(config, Some(metrics), shutdown)
        .await
        .context("control plane failed")
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return ctrl_c.await.unwrap_or(()),
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use super::parse_election_ms;

    #[test]
    fn election_ms_is_a_min_below_a_max() {
        assert_eq!(parse_election_ms("200,400"), Ok((200, 400)));
        assert_eq!(parse_election_ms(" 150 , 300 "), Ok((150, 300)));
        for bad in ["400", "400,200", "300,300", "0,100", "a,b", ""] {
            assert!(parse_election_ms(bad).is_err(), "{bad:?}");
        }
    }
}
