//! `warmpool-gateway`: a URL per allocation, for clients that cannot reach the containers'
//! IPv6 addresses (or should not need to).
//!
//! A separate process rather than a part of every agent: any host with a route to the
//! containers' prefixes (an agent's host, a load-balanced edge host) runs it, as many times
//! as wanted; it holds no state beyond a cache, learns allocations from the control plane's
//! API and their ends from its event stream, and needs an admin key and the API's URLs, not
//! NATS credentials. `docs/gateway.md` argues the choice.
//!
//! - [`target`]: which allocation, port and token a request names (pure);
//! - [`routes`]: where allocations are, asked of the control plane and ended by its events;
//! - [`proxy`]: the hyper service that checks and forwards, streaming both ways;
//! - [`server`]: the listener, plain or TLS, HTTP/1.1 and HTTP/2;
//! - [`telemetry`]: Prometheus metrics.
#![warn(missing_docs)]

pub mod proxy;
pub mod routes;
pub mod server;
pub mod target;
pub mod telemetry;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// What a gateway needs to run.
pub struct Config {
    /// A client of the control plane (an admin key: the gateway reads token hashes).
    pub api: poolctl::Client,
    /// Host URLs' domain (`{allocation}-{port}.{domain}`); none: paths only.
    pub domain: Option<String>,
    /// Serve TLS with this.
    pub tls: Option<TlsAcceptor>,
}

/// Runs the gateway on `listener` (and metrics on `metrics`) until `stop`.
pub async fn run(
    listener: TcpListener,
    metrics: Option<(TcpListener, metrics_exporter_prometheus::PrometheusHandle)>,
    config: Config,
    stop: CancellationToken,
) {
    let routes = routes::Routes::new(config.api);
    let follow = tokio::spawn(routes.clone().follow(stop.clone()));
    let tls = config.tls.is_some();
    let proxy = Arc::new(proxy::Proxy::new(routes, config.domain, tls));
    if let Ok(addr) = listener.local_addr() {
        info!(listen = %server::shown(&addr, tls), "gateway up");
    }
    let metrics = metrics.map(|(l, h)| tokio::spawn(telemetry::serve(l, h, stop.clone())));
    server::serve(listener, config.tls, proxy, stop).await;
    let _ = follow.await;
    if let Some(m) = metrics {
        let _ = m.await;
    }
}

/// Binds `addr`, so that a taken port fails the start.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
