//! The REST API v1 and the event stream.
//!
//! Handlers read the local replica (answers carry the applied index they reflect) and write
//! through [`Cluster`], which forwards to the leader. A lookup by id that misses locally takes
//! a read barrier and looks again, so an allocation made through another member a moment ago
//! is found. Send `Warmpool-Consistency: linearizable` to take the barrier on any read.

mod allocations;
mod cluster;
mod dashboard;
pub mod error;
mod events;
mod extract;
mod fleet;
pub mod gateway;
mod keys;
pub mod openapi;
pub mod paging;
mod pools;
mod session;
mod settings;
mod tenants;
mod workspaces;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use tracing::{info, warn, Instrument};

use crate::agents::Fleet;
use crate::cluster::Cluster;
use error::ApiError;

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// Header asking for a linearizable read.
pub const CONSISTENCY_HEADER: &str = "warmpool-consistency";
/// Header on every answer: the leader the answering member knows, or `none` (then its reads
/// may be stale).
pub const LEADER_HEADER: &str = "warmpool-leader";
/// Header on every answer: the Raft index the answering member had applied.
pub const APPLIED_INDEX_HEADER: &str = "warmpool-applied-index";

/// What every handler shares.
pub struct App {
    /// The cluster through the local member.
    pub cluster: Cluster,
    /// What this member hears from agents.
    pub fleet: Arc<Fleet>,
    /// Renders `/metrics`, when a recorder is installed.
    pub metrics: Option<PrometheusHandle>,
    /// Fires when the member stops; long-lived answers (event streams) end then.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Whether requests need an API key.
    pub auth: bool,
    /// Where the dashboard's built files are, if it is served.
    pub dashboard: Option<std::path::PathBuf>,
    /// The placement overcommit, for what nodes show as allocatable.
    pub overcommit: crate::placement::Overcommit,
    /// Session requests (logs, exec, files, settings) to agents.
    pub sessions: crate::session::SessionClient,
    /// Where the gateway is, for the URLs in allocation answers.
    pub gateway: gateway::GatewayLinks,
    /// How long an unanswered allocation's client has to come back for it.
    pub abandon_grace: std::time::Duration,
    /// The workspace store (listing, deleting; the agents save and restore).
    pub workspaces: warmpool_workspace_store::Store,
    /// This member's archive of records evicted from the state.
    pub archive: Option<Arc<crate::archive::Archive>>,
}

/// Handler state.
pub type AppState = Arc<App>;

/// The API router.
pub fn router(app: AppState) -> Router {
    Router::new()
        .route("/v1/health", get(fleet::health))
        .route("/v1/ready", get(fleet::ready))
        .route("/v1/whoami", get(fleet::whoami))
        .route("/v1/status", get(fleet::status))
        .route("/v1/usage", get(fleet::usage))
        .route("/v1/pools", get(pools::list).post(pools::create))
        .route(
            "/v1/pools/{name}",
            get(pools::get).put(pools::put).delete(pools::delete),
        )
        .route("/v1/containers", get(fleet::containers))
        .route("/v1/containers/{id}", get(fleet::container))
        .route(
            "/v1/allocations",
            get(allocations::list).post(allocations::create),
        )
        .route(
            "/v1/allocations/{id}",
            get(allocations::get).delete(allocations::release),
        )
        .route("/v1/allocations/{id}/renew", post(allocations::renew))
        .route("/v1/allocations/{id}/logs", get(session::logs))
        .route("/v1/allocations/{id}/exec", post(session::exec))
        .route(
            "/v1/allocations/{id}/files",
            get(session::download).put(session::upload),
        )
        .route("/v1/gateway/allocations/{id}", get(gateway::route))
        .route("/v1/nodes", get(fleet::nodes))
        .route("/v1/nodes/{id}/{action}", post(fleet::node_action))
        .route("/v1/events", get(events::list))
        .route("/v1/events/stream", get(events::stream))
        .route("/v1/cluster", get(cluster::view))
        .route("/v1/cluster/members", post(cluster::add))
        .route(
            "/v1/cluster/members/{id}",
            axum::routing::delete(cluster::remove),
        )
        .route("/v1/keys", get(keys::list).post(keys::create))
        .route("/v1/keys/{id}", axum::routing::delete(keys::revoke))
        .route("/v1/tenants", get(tenants::list))
        .route(
            "/v1/tenants/{name}",
            get(tenants::get).put(tenants::put).delete(tenants::delete),
        )
        .route("/v1/workspaces", get(workspaces::list))
        .route(
            "/v1/workspaces/{id}",
            get(workspaces::get).delete(workspaces::delete),
        )
        .route("/v1/openapi.json", get(openapi::openapi_json))
        .route("/metrics", get(metrics))
        .fallback(dashboard::serve)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn(consistency_header))
        .layer(middleware::from_fn_with_state(
            app.clone(),
            crate::auth::authenticate,
        ))
        .layer(middleware::from_fn_with_state(app.clone(), observe))
        .with_state(app)
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::MethodNotAllowed(format!(
        "{} is not allowed on {}",
        req.method(),
        req.uri().path()
    ))
}

/// Prometheus metrics of this member.
#[utoipa::path(
    get, path = "/metrics", tag = "meta",
    responses(
        (status = 200, description = "Prometheus text exposition format 0.0.4", content_type = "text/plain", body = String),
        (status = 404, description = "Metrics are not enabled on this member (`not_found`)", body = warmpool_proto::api::ErrorBody),
    )
)]
async fn metrics(State(app): State<AppState>) -> Response {
    match &app.metrics {
        Some(h) => ([("content-type", "text/plain; version=0.0.4")], h.render()).into_response(),
        None => ApiError::NotFound("metrics are not enabled on this member".into()).into_response(),
    }
}

/// One log line and one metric sample per request, with a request id (taken from
/// `x-request-id` or made up) echoed back.
async fn observe(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let path = req.uri().path().to_string();
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 128)
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_string);
    let span = tracing::info_span!("http", %method, path = %path, request_id = %request_id);
    let mut resp = next.run(req).instrument(span.clone()).await;
    let status = resp.status();
    let elapsed = start.elapsed();
    let _g = span.enter();
    if status.is_server_error() {
        warn!(
            status = status.as_u16(),
            ms = elapsed.as_secs_f64() * 1e3,
            "request"
        );
    } else {
        info!(
            status = status.as_u16(),
            ms = elapsed.as_secs_f64() * 1e3,
            "request"
        );
    }
    let labels = [
        ("method", method.to_string()),
        ("route", route),
        ("status", status.as_u16().to_string()),
    ];
    metrics::counter!("warmpool_http_requests_total", &labels).increment(1);
    metrics::histogram!("warmpool_http_request_duration_seconds", &labels[..2])
        .record(elapsed.as_secs_f64());
    let headers = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        headers.insert("x-request-id", v);
    }
    headers.insert(
        APPLIED_INDEX_HEADER,
        HeaderValue::from(app.cluster.shared().applied_index()),
    );
    // A member that knows no leader may be cut off: its reads may be stale.
    let leader = match app.cluster.leader() {
        Some(l) => HeaderValue::from(l),
        None => HeaderValue::from_static("none"),
    };
    headers.insert(LEADER_HEADER, leader);
    resp
}

/// Whether the caller asked for a linearizable read.
/// Whether `Warmpool-Consistency` asks for a linearizable read (`linearizable`) or not
/// (`local`, or no header); any other value is refused, so that a misspelt one never reads
/// stale data in silence.
fn wants_linearizable(headers: &HeaderMap) -> Result<bool, ApiError> {
    let Some(v) = headers.get(CONSISTENCY_HEADER) else {
        return Ok(false);
    };
    match v.to_str().map(str::trim) {
        Ok(v) if v.eq_ignore_ascii_case("linearizable") => Ok(true),
        Ok(v) if v.eq_ignore_ascii_case("local") => Ok(false),
        _ => Err(ApiError::BadRequest(format!(
            "{CONSISTENCY_HEADER} must be linearizable or local, not {v:?}"
        ))),
    }
}

/// Takes a read barrier when asked to.
/// Refuses a malformed consistency header on every route, before the handler: a handler
/// that answers early (an empty filter, an archive read) must not accept what another refuses.
async fn consistency_header(req: Request, next: Next) -> Response {
    match wants_linearizable(req.headers()) {
        Ok(_) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

async fn barrier_if_asked(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
    if wants_linearizable(headers)? {
        app.cluster.read_barrier().await?;
    }
    Ok(())
}

/// Looks `f` up locally; on a miss, takes a read barrier and looks again.
async fn read_fresh<T>(
    app: &App,
    headers: &HeaderMap,
    f: impl Fn(&crate::state::PoolState) -> Option<T>,
) -> Result<Option<T>, ApiError> {
    barrier_if_asked(app, headers).await?;
    if let Some(v) = app.cluster.shared().read(&f) {
        return Ok(Some(v));
    }
    if wants_linearizable(headers)? {
        return Ok(None);
    }
    app.cluster.read_barrier().await?;
    Ok(app.cluster.shared().read(&f))
}

fn created<T: serde::Serialize>(v: T) -> Response {
    (StatusCode::CREATED, Json(v)).into_response()
}
