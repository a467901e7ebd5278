//! `warmpool-agent`: flags, logging, run until SIGTERM or SIGINT.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;
use warmpool_agent::RawConfig;

/// Warmpool node agent: keeps warm containers on this Docker host.
///
/// Every flag can also be set with the environment variable shown.
#[derive(Parser, Debug)]
#[command(name = "warmpool-agent", version)]
struct Args {
    /// This host's id (letters, digits, '-', '_'); default: the hostname up to its first dot.
    #[arg(long, env = "WARMPOOL_NODE_ID")]
    node_id: Option<String>,
    /// NATS server URL(s), comma-separated.
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
    /// Connect to NATS over TLS, trusting this CA certificate (PEM) besides the system's.
    #[arg(long, env = "WARMPOOL_NATS_CA")]
    nats_ca: Option<std::path::PathBuf>,
    /// Registry credentials for image pulls: a JSON file, either Docker's config.json
    /// (`{"auths": {"registry.example:5000": {"auth": "<base64 user:password>"}}}`) or
    /// `{"registry.example:5000": {"username": "...", "password": "..."}}`. Read at start.
    #[arg(long, env = "WARMPOOL_REGISTRY_AUTH", value_name = "FILE")]
    registry_auth: Option<std::path::PathBuf>,
    /// Docker daemon socket.
    #[arg(
        long,
        env = "WARMPOOL_DOCKER_HOST",
        default_value = "unix:///var/run/docker.sock"
    )]
    docker_host: String,
    /// This host's container IPv6 /64, e.g. fd36:1::/64.
    #[arg(long, env = "WARMPOOL_IPV6_PREFIX")]
    ipv6_prefix: String,
    /// Docker network for the containers; default: warmpool-<node-id>.
    #[arg(long, env = "WARMPOOL_NETWORK")]
    network: Option<String>,
    /// Node label key=value, matched by pool constraints (repeatable; comma-separated in the
    /// environment).
    #[arg(long = "label", env = "WARMPOOL_LABELS", value_delimiter = ',')]
    labels: Vec<String>,
    /// Milliseconds between heartbeats.
    #[arg(long, env = "WARMPOOL_HEARTBEAT_MS", default_value_t = 1000)]
    heartbeat_ms: u64,
    /// CPU offered to containers, thousandths of a core; default: every core of the host.
    #[arg(long, env = "WARMPOOL_CPU_MILLIS")]
    cpu_millis: Option<u64>,
    /// Memory offered to containers, MiB; default: all of the host's.
    #[arg(long, env = "WARMPOOL_MEMORY_MB")]
    memory_mb: Option<u64>,
    /// The most container creations running at once. The agent adapts how many it runs
    /// between --min-concurrent-creates and this: more while a create takes about as long as
    /// the fastest seen, fewer when creates slow down or fail. Equal to the min: a fixed limit.
    #[arg(long, env = "WARMPOOL_MAX_CONCURRENT_CREATES", default_value_t = warmpool_agent::config::DEFAULT_MAX_CONCURRENT_CREATES)]
    max_concurrent_creates: usize,
    /// The fewest container creations the adaptive limit backs off to.
    #[arg(long, env = "WARMPOOL_MIN_CONCURRENT_CREATES", default_value_t = 1)]
    min_concurrent_creates: usize,
    /// Milliseconds between level-triggered resyncs with Docker.
    #[arg(long, env = "WARMPOOL_RESYNC_MS", default_value_t = 10_000)]
    resync_ms: u64,
    /// The OCI runtime containers are made with (one dockerd knows, e.g. `crun`); dockerd's
    /// default (runc) when absent.
    #[arg(long, env = "WARMPOOL_RUNTIME")]
    runtime: Option<String>,
    /// Milliseconds between passes of the activity meter (traffic for idle release).
    #[arg(long, env = "WARMPOOL_METER_MS", default_value_t = 2_000)]
    meter_ms: u64,
    /// Milliseconds a new container may take to pass its first health probe.
    #[arg(long, env = "WARMPOOL_STARTUP_GRACE_MS", default_value_t = 60_000)]
    startup_grace_ms: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9101 (default: off).
    #[arg(long, env = "WARMPOOL_METRICS_ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// A prefix (IPv6 or IPv4) whose addresses may open connections to containers' service
    /// ports (repeatable; comma-separated in the environment). The host itself always can;
    /// default: nothing else. Give the addresses clients and the control plane's side reach
    /// containers from, e.g. the hosts' transit network.
    #[arg(
        long = "ingress-from",
        env = "WARMPOOL_INGRESS_FROM",
        value_delimiter = ',',
        value_name = "PREFIX"
    )]
    ingress_from: Vec<String>,
    /// The fleet's prefixes, never reachable from a container whatever its pool's egress
    /// policy (repeatable; comma-separated in the environment). Default: fc00::/7 when the
    /// node's /64 is unique-local, else the /48 holding it. The node's /64 and IPv4 subnet,
    /// loopback and link-local are always closed too.
    #[arg(
        long = "fleet-prefix",
        env = "WARMPOOL_FLEET_PREFIXES",
        value_delimiter = ',',
        value_name = "PREFIX"
    )]
    fleet_prefixes: Vec<String>,
    /// Where workspaces are kept: `file:///dir` (made when missing) or `s3://bucket[/prefix]`.
    #[arg(long, env = "WARMPOOL_WORKSPACE_STORE", default_value = warmpool_workspace_store::DEFAULT_URL)]
    workspace_store: String,
    /// Options of an S3 workspace store: a JSON object of object_store's S3 keys
    /// (`aws_endpoint`, `aws_access_key_id`, `aws_secret_access_key`, `aws_region`,
    /// `aws_allow_http`, ...).
    #[arg(long, env = "WARMPOOL_WORKSPACE_STORE_CONFIG")]
    workspace_store_config: Option<std::path::PathBuf>,
    /// Where the agent keeps what must outlive its process (which workspace each container
    /// holds, so a restarted agent goes on syncing and saving them), in a directory per node.
    #[arg(long, env = "WARMPOOL_AGENT_STATE_DIR", default_value = warmpool_agent::config::DEFAULT_STATE_DIR)]
    state_dir: std::path::PathBuf,
    /// Run without network isolation (no nftables rules): containers then reach each other,
    /// the host and the fleet. For hosts without nftables only; the agent warns at start.
    #[arg(long, env = "WARMPOOL_NO_ISOLATION")]
    no_isolation: bool,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "WARMPOOL_LOG_JSON")]
    log_json: bool,
    /// What to log: a level (`info`, `debug`) or directives such as
    /// `info,warmpool_agent::health=debug`. RUST_LOG, when set, wins.
    #[arg(long, env = "WARMPOOL_LOG", default_value = "info")]
    log: String,
}

impl Args {
    fn into_raw(self) -> RawConfig {
        RawConfig {
            node_id: self.node_id,
            nats_url: self.nats_url,
            nats_user: self.nats_user,
            nats_password: self.nats_password,
            nats_ca: self.nats_ca,
            registry_auth: self.registry_auth,
            docker_host: self.docker_host,
            ipv6_prefix: self.ipv6_prefix,
            network: self.network,
            labels: self.labels,
            heartbeat_ms: self.heartbeat_ms,
            cpu_millis: self.cpu_millis,
            memory_mb: self.memory_mb,
            max_concurrent_creates: self.max_concurrent_creates,
            min_concurrent_creates: self.min_concurrent_creates,
            resync_ms: self.resync_ms,
            meter_ms: self.meter_ms,
            runtime: self.runtime,
            startup_grace_ms: self.startup_grace_ms,
            metrics_addr: self.metrics_addr,
            isolation: !self.no_isolation,
            ingress_from: self.ingress_from,
            fleet_prefixes: self.fleet_prefixes,
            workspace_store: self.workspace_store,
            workspace_store_config: self.workspace_store_config,
            state_dir: self.state_dir,
        }
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The whole cause chain on one line.
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn run() -> anyhow::Result<()> {
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
    if args.log_json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        let ansi = std::io::stdout().is_terminal();
        tracing_subscriber::fmt()
            .with_ansi(ansi)
            .with_env_filter(filter)
            .init();
    }
    let config = args
        .into_raw()
        .validate(warmpool_agent::host::hostname().as_deref())
        .context("invalid configuration")?;
    warmpool_agent::run(config, shutdown_signal())
        .await
        .context("warmpool-agent failed")
}

/// Resolves at the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Cannot install handlers: fall back to Ctrl-C only.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
