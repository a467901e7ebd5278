//! `warmpool-gateway`: flags, logs, start, wait for a signal.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Proxies per-allocation URLs (`/s/{allocation}/{port}/`, `{allocation}-{port}.{domain}`)
/// to the allocated containers, for holders of the allocation's access token.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Where to listen (IPv4, IPv6 or both with `[::]`).
    #[arg(long, env = "WARMPOOL_GATEWAY_LISTEN", default_value = "0.0.0.0:8000")]
    listen: SocketAddr,
    /// The control plane's API URLs (comma-separated: any member).
    #[arg(long, env = "WARMPOOL_API_URL", value_delimiter = ',', required = true)]
    api_url: Vec<String>,
    /// A file holding an admin key for the API (the gateway reads token hashes). Without
    /// one, the API must run without auth.
    #[arg(long, env = "WARMPOOL_GATEWAY_KEY_FILE")]
    api_key_file: Option<PathBuf>,
    /// Trust this CA (PEM) for the API besides the system's.
    #[arg(long, env = "WARMPOOL_API_CA")]
    api_ca: Option<PathBuf>,
    /// Serve host URLs `{allocation}-{port}.{domain}` for this domain (a wildcard DNS name
    /// pointing here).
    #[arg(long, env = "WARMPOOL_GATEWAY_DOMAIN")]
    domain: Option<String>,
    /// Serve HTTPS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "WARMPOOL_GATEWAY_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "WARMPOOL_GATEWAY_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve Prometheus metrics at /metrics on this address.
    #[arg(long, env = "WARMPOOL_GATEWAY_METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// Log as JSON lines.
    #[arg(long, env = "WARMPOOL_LOG_JSON")]
    log_json: bool,
    /// What to log (`info`, `debug`, or directives); RUST_LOG, when set, wins.
    #[arg(long, env = "WARMPOOL_LOG", default_value = "info")]
    log: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&args.log))
        .context("--log")?;
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if args.log_json {
        subscriber.json().init();
    } else {
        subscriber.init();
    }
    let _ = rustls::crypto::ring::default_provider().install_default();

    let key = match &args.api_key_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?
                .trim()
                .to_string(),
        ),
        None => {
            warn!("no --api-key-file: the control plane must run without auth");
            None
        }
    };
    let ca = match &args.api_ca {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?),
        None => None,
    };
    let api = poolctl::Client::builder(args.api_url.clone())
        .token(key)
        .ca_pem(ca)
        .request_timeout(Duration::from_secs(3))
        .build()
        .context("the API client")?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some(warmpool_gateway::server::tls_acceptor(c, k)?),
        _ => None,
    };
    let listener = warmpool_gateway::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let metrics = match args.metrics_addr {
        Some(addr) => {
            let l = warmpool_gateway::bind(addr)
                .await
                .with_context(|| format!("metrics on {addr}"))?;
            warmpool_gateway::telemetry::install().map(|h| (l, h))
        }
        None => None,
    };

    let stop = CancellationToken::new();
    let signal = stop.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "no SIGTERM handler");
                    let _ = tokio::signal::ctrl_c().await;
                    signal.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        info!("stopping");
        signal.cancel();
    });
    let config = warmpool_gateway::Config {
        api,
        domain: args.domain,
        tls,
    };
    warmpool_gateway::run(listener, metrics, config, stop).await;
    Ok(())
}
