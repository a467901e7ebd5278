//! Prometheus metrics of the agent, served at `/metrics` on `--metrics-addr` (off unless set).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `warmpool_agent_docker_call_duration_seconds` | histogram | `op` (`create container`, `start container`, `inspect container`, `list containers`, `remove container`, `create network`, `inspect network`) |
//! | `warmpool_agent_docker_call_errors_total` | counter | `op` |
//! | `warmpool_agent_probes_total` | counter | `result` (`pass`, `fail`) |
//! | `warmpool_agent_containers` | gauge | `status` (`starting`, `running`, `exited`), `health` (`unknown`, `healthy`, `unhealthy`) |
//! | `warmpool_agent_facts_sent_total`, `warmpool_agent_heartbeats_sent_total` | counter | |
//! | `warmpool_agent_messages_dropped_total` | counter | `reason` (`publish_failed`, `timeout`, `queue_full`) |
//! | `warmpool_agent_nats_connected` | gauge | |
//! | `warmpool_agent_nats_reconnects_total` | counter | |
//!
//! The exporter's own HTTP listener would bring hyper's server (and HTTP/2) into the agent;
//! scrapes are one small `GET`, so a few lines over tokio's `TcpListener` serve them: HTTP/1.x,
//! one request per connection, `GET /metrics` (or `/`) only.
//!
//! The recorder is process-wide: the first [`install`] installs it, later ones (an agent
//! restarted in-process, as the tests do) share it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use warmpool_proto::agent::{InventoryEntry, ObservedStatus};

/// Bucket bounds of the Docker call histogram, seconds: from a fast inspect to a slow create.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Longest request head read from a scraper.
const MAX_REQUEST: usize = 8 * 1024;
/// Time a scraper has to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Installs the recorder once per process; `None` if another recorder was installed first.
pub fn install() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new().set_buckets(BUCKETS).ok()?;
            match builder.install_recorder() {
                Ok(h) => {
                    describe();
                    Some(h)
                }
                Err(e) => {
                    warn!(error = %e, "cannot install the metrics recorder; /metrics stays empty");
                    None
                }
            }
        })
        .clone()
}

/// HELP text of every agent metric. The recorder prints `# HELP` only for described metrics,
/// so this runs once, right after it is installed; `tests/tests/metrics.rs` fails on a metric
/// without one.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_histogram!(
        "warmpool_agent_docker_call_duration_seconds",
        Unit::Seconds,
        "Time of one Docker API call, by operation"
    );
    describe_counter!(
        "warmpool_agent_docker_call_errors_total",
        "Docker API calls that failed, by operation"
    );
    describe_histogram!(
        "warmpool_agent_isolation_apply_seconds",
        Unit::Seconds,
        "Time nft took to apply isolation rules, by how (rebuild: the whole rule set; change: new containers' elements added, removed ones' deleted, those queued up together)"
    );
    describe_counter!(
        "warmpool_agent_probes_total",
        "Health probes of containers, by result (pass, fail)"
    );
    describe_gauge!(
        "warmpool_agent_containers",
        "Containers this agent runs, by Docker status (starting, running, exited) and health (unknown, healthy, unhealthy)"
    );
    describe_counter!(
        "warmpool_agent_facts_sent_total",
        "Facts (container created, warm, unhealthy, exited, inventory) published to the control plane"
    );
    describe_counter!(
        "warmpool_agent_heartbeats_sent_total",
        "Heartbeats published to the control plane"
    );
    describe_counter!(
        "warmpool_agent_messages_dropped_total",
        "Messages to the control plane that were not published, by reason (queue_full, publish_failed, timeout)"
    );
    describe_gauge!(
        "warmpool_agent_nats_connected",
        "1 while the agent is connected to NATS, else 0"
    );
    describe_counter!(
        "warmpool_agent_nats_reconnects_total",
        "Connections to NATS made after losing one"
    );
    describe_gauge!(
        "warmpool_agent_create_limit",
        "Containers the agent makes at once now (adaptive, between --min- and --max-concurrent-creates)"
    );
    describe_gauge!(
        "warmpool_agent_runtime_available",
        "1 while dockerd answers the agent's pings, 0 during an outage (containers are kept)"
    );
}

/// Binds `addr` (so a taken port fails the start, not later).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `/metrics` on `listener` until `stop`, and drains histograms every few seconds so
/// they do not grow between scrapes.
pub async fn serve(listener: TcpListener, handle: PrometheusHandle, stop: CancellationToken) {
    let mut upkeep = tokio::time::interval(Duration::from_secs(5));
    loop {
        let conn = tokio::select! {
            _ = stop.cancelled() => return,
            _ = upkeep.tick() => {
                handle.run_upkeep();
                continue;
            }
            c = listener.accept() => c,
        };
        match conn {
            Ok((stream, peer)) => {
                let handle = handle.clone();
                tokio::spawn(async move {
                    if let Err(e) = answer(stream, &handle).await {
                        debug!(%peer, error = %e, "metrics request failed");
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "accepting a metrics connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(mut stream: TcpStream, handle: &PrometheusHandle) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let read = async {
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_REQUEST {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::time::timeout(READ_TIMEOUT, read)
        .await
        .map_err(|_| std::io::ErrorKind::TimedOut)??;
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next().unwrap_or_default().split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics" | "/") => {
            ("200 OK", "text/plain; version=0.0.4", handle.render())
        }
        ("GET" | "HEAD", _) => (
            "404 Not Found",
            "text/plain",
            "not found: try /metrics\n".into(),
        ),
        _ => ("405 Method Not Allowed", "text/plain", "only GET\n".into()),
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        response.extend_from_slice(body.as_bytes());
    }
    stream.write_all(&response).await?;
    stream.shutdown().await
}

/// Runs a Docker call, recording its duration (and failure) under `op`.
pub async fn docker_call<T, E>(
    op: &'static str,
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let start = Instant::now();
    let result = call.await;
    metrics::histogram!("warmpool_agent_docker_call_duration_seconds", "op" => op)
        .record(start.elapsed().as_secs_f64());
    if result.is_err() {
        metrics::counter!("warmpool_agent_docker_call_errors_total", "op" => op).increment(1);
    }
    result
}

/// Counts one probe.
pub fn probe(passed: bool) {
    let result = if passed { "pass" } else { "fail" };
    metrics::counter!("warmpool_agent_probes_total", "result" => result).increment(1);
}

/// Sets the container gauges from an inventory snapshot; every status and health pair is set,
/// zero included, so a pair that empties reads 0 rather than its last value.
pub fn containers(entries: &[InventoryEntry]) {
    for status in [
        ObservedStatus::Starting,
        ObservedStatus::Running,
        ObservedStatus::Exited,
    ] {
        for health in ["unknown", "healthy", "unhealthy"] {
            let n = entries
                .iter()
                .filter(|e| e.status == status && e.health.as_str() == health)
                .count();
            let status = match status {
                ObservedStatus::Starting => "starting",
                ObservedStatus::Running => "running",
                ObservedStatus::Exited => "exited",
            };
            metrics::gauge!("warmpool_agent_containers", "status" => status, "health" => health)
                .set(n as f64);
        }
    }
}

/// Counts a published fact or heartbeat.
pub fn sent(heartbeat: bool) {
    if heartbeat {
        metrics::counter!("warmpool_agent_heartbeats_sent_total").increment(1);
    } else {
        metrics::counter!("warmpool_agent_facts_sent_total").increment(1);
    }
}

/// Counts a message that was not published.
pub fn dropped(reason: &'static str) {
    metrics::counter!("warmpool_agent_messages_dropped_total", "reason" => reason).increment(1);
}

/// The adaptive create limit changed (or was set).
pub fn create_limit(limit: usize) {
    metrics::gauge!("warmpool_agent_create_limit").set(limit as f64);
}

/// Notes whether dockerd answers (1) or not (0).
pub fn runtime_available(up: bool) {
    metrics::gauge!("warmpool_agent_runtime_available").set(if up { 1.0 } else { 0.0 });
}

/// Notes a NATS connection change; `reconnect` when it is a connection after a loss.
pub fn nats_connected(connected: bool, reconnect: bool) {
    metrics::gauge!("warmpool_agent_nats_connected").set(if connected { 1.0 } else { 0.0 });
    // Incremented by 0 too, so the counter is exported (at 0) before the first reconnect.
    metrics::counter!("warmpool_agent_nats_reconnects_total").increment(u64::from(reconnect));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_metrics_and_refuses_other_paths() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            metrics::counter!("warmpool_agent_test_total").increment(3);
        });
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(listener, handle, stop.clone()));
        let get = |path: &'static str| async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let ok = get("/metrics").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("warmpool_agent_test_total 3"), "{ok}");
        assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
        stop.cancel();
        server.await.unwrap();
    }
}
