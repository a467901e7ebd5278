//! The gateway's Prometheus metrics, each with its HELP text, served at `/metrics` on
//! `--metrics-addr` (a separate listener: the proxy's own address belongs to the containers).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Latency buckets, seconds: from a sub-millisecond hop to a slow container.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the recorder and describes every metric; `None` if a recorder was installed.
pub fn install() -> Option<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets(BUCKETS)
        .ok()?
        .install_recorder()
        .map_err(|e| warn!(error = %e, "cannot install the metrics recorder"))
        .ok()?;
    describe_counter!(
        "warmpool_gateway_requests_total",
        "Requests the gateway answered, by outcome: proxied, unauthorized (no or a wrong token), not_found (no such URL, allocation or port, or the allocation ended), bad_gateway (the container did not answer), unavailable (the control plane did not), bad_request."
    );
    describe_histogram!(
        "warmpool_gateway_response_seconds",
        Unit::Seconds,
        "Time from a proxied request's arrival to the container's answer head (the body streams after)."
    );
    describe_counter!(
        "warmpool_gateway_route_lookups_total",
        "Allocations the gateway asked the control plane about, by result: found, not_found, error."
    );
    describe_counter!(
        "warmpool_gateway_allocations_ended_total",
        "Allocations the gateway stopped serving because the control plane reported them ended."
    );
    describe_gauge!(
        "warmpool_gateway_allocations",
        "Allocations in the gateway's table."
    );
    describe_gauge!(
        "warmpool_gateway_upgraded_connections",
        "Upgraded connections (WebSocket) open through the gateway."
    );
    Some(handle)
}

/// Serves `/metrics` on `listener` until `stop`.
pub async fn serve(listener: TcpListener, handle: PrometheusHandle, stop: CancellationToken) {
    let handle = Arc::new(handle);
    loop {
        let (stream, peer): (_, SocketAddr) = tokio::select! {
            _ = stop.cancelled() => return,
            c = listener.accept() => match c {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "accepting a metrics connection failed");
                    continue;
                }
            },
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let handle = handle.clone();
                async move {
                    let resp = if req.uri().path() == "/metrics" {
                        handle.run_upkeep();
                        Response::builder()
                            .header("content-type", "text/plain; version=0.0.4")
                            .body(Full::new(Bytes::from(handle.render())))
                    } else {
                        Response::builder()
                            .status(StatusCode::NOT_FOUND)
                            .body(Full::new(Bytes::from_static(b"only /metrics here\n")))
                    };
                    Ok::<_, Infallible>(resp.unwrap_or_default())
                }
            });
            let conn = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = conn {
                debug!(%peer, error = %e, "metrics connection");
            }
        });
    }
}
