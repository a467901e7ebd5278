//! `/v1/pools`.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use warmpool_proto::api::{ErrorBody, NodeImage, PoolView};
use warmpool_proto::records::Pool;
use warmpool_proto::{PoolName, PoolSpec};

use super::error::ApiError;
use super::extract::ApiJson;
use super::openapi::Consistency;
use super::{barrier_if_asked, created, read_fresh, AppState};
use crate::state::{Command, PoolState, Request, Response as Applied};

/// A pool as answered: counts added, secrets' values redacted (they are never read back).
fn view(s: &PoolState, mut pool: Pool) -> PoolView {
    pool.spec = pool.spec.redacted();
    PoolView {
        counts: s.pool_counts(&pool.spec.name),
        wanted: s.wanted(&pool),
        images: Vec::new(),
        pool,
    }
}

/// `views` with the nodes where each pool's image is being pulled or failed, from the last
/// heartbeat of every agent this member hears (soft: not in the replicated state).
fn with_images(app: &AppState, mut views: Vec<PoolView>) -> Vec<PoolView> {
    let nodes = app.fleet.nodes();
    for v in &mut views {
        let spec = &v.pool.spec;
        let mut images: Vec<NodeImage> = nodes
            .iter()
            .flat_map(|(node, soft)| {
                soft.heartbeat
                    .images
                    .iter()
                    .filter(|i| i.image == spec.image && i.pools.contains(&spec.name))
                    .map(move |i| NodeImage {
                        node: node.clone(),
                        image: i.image.clone(),
                        state: i.state.clone(),
                    })
            })
            .collect();
        images.sort_by(|a, b| a.node.cmp(&b.node));
        v.images = images;
    }
    views
}

fn parse_name(name: &str) -> Result<PoolName, ApiError> {
    PoolName::new(name).map_err(|_| ApiError::NotFound(format!("no pool named {name:?}")))
}

/// Every pool, with its counts.
#[utoipa::path(
    get, path = "/v1/pools", tag = "pools", params(Consistency),
    responses(
        (status = 200, description = "Pools by name", body = Vec<PoolView>),
        (status = 503, description = "No quorum (`no_quorum`)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds"))),
    )
)]
pub async fn list(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Vec<PoolView>>, ApiError> {
    barrier_if_asked(&app, &headers).await?;
    let views = app
        .cluster
        .shared()
        .read(|s| s.pools().map(|p| view(s, p.clone())).collect());
    Ok(Json(with_images(&app, views)))
}

/// One pool.
#[utoipa::path(
    get, path = "/v1/pools/{name}", tag = "pools",
    params(("name" = PoolName, Path, description = "Pool name"), Consistency),
    responses(
        (status = 200, description = "The pool", body = PoolView),
        (status = 404, description = "No such pool (`not_found`)", body = ErrorBody),
        (status = 503, description = "No quorum (`no_quorum`)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds"))),
    )
)]
pub async fn get(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<PoolView>, ApiError> {
    let name = parse_name(&name)?;
    read_fresh(&app, &headers, |s| {
        s.pool(&name).map(|p| view(s, p.clone()))
    })
    .await?
    .and_then(|v| with_images(&app, vec![v]).pop())
    .map(Json)
    .ok_or_else(|| ApiError::NotFound(format!("no pool named {:?}", name.as_str())))
}

async fn write_pool(app: &AppState, cmd: Command) -> Result<Response, ApiError> {
    match app.cluster.write(Request::now(cmd)).await? {
        Applied::Pool {
            pool,
            created: was_created,
        } => {
            let v = app.cluster.shared().read(|s| view(s, pool));
            Ok(if was_created {
                created(v)
            } else {
                Json(v).into_response()
            })
        }
        Applied::Rejected(r) => Err(r.into()),
        other => Err(ApiError::Internal(format!("unexpected answer {other:?}"))),
    }
}

/// Creates a pool.
#[utoipa::path(
    post, path = "/v1/pools", tag = "pools", request_body = PoolSpec,
    responses(
        (status = 201, description = "Created", body = PoolView),
        (status = 400, description = "Malformed or invalid spec (`bad_request`)", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB (`payload_too_large`)", body = ErrorBody),
        (status = 409, description = "A pool of that name exists (`conflict`)", body = ErrorBody),
        (status = 503, description = "No quorum (`no_quorum`)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds"))),
    )
)]
pub async fn create(
    State(app): State<AppState>,
    ApiJson(spec): ApiJson<PoolSpec>,
) -> Result<Response, ApiError> {
    spec.validate_request()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    write_pool(&app, Command::CreatePool { spec }).await
}

/// Creates or replaces a pool's spec (a new generation: older containers are replaced).
#[utoipa::path(
    put, path = "/v1/pools/{name}", tag = "pools", request_body = PoolSpec,
    params(("name" = PoolName, Path, description = "Pool name; must be the body's `name`")),
    responses(
        (status = 200, description = "Replaced (or unchanged)", body = PoolView),
        (status = 201, description = "Created", body = PoolView),
        (status = 400, description = "Malformed or invalid spec (`bad_request`)", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB (`payload_too_large`)", body = ErrorBody),
        (status = 409, description = "The pool's state forbids it (`conflict`)", body = ErrorBody),
        (status = 503, description = "No quorum (`no_quorum`)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds"))),
    )
)]
pub async fn put(
    State(app): State<AppState>,
    Path(name): Path<String>,
    ApiJson(mut spec): ApiJson<PoolSpec>,
) -> Result<Response, ApiError> {
    if spec.name.as_str() != name {
        return Err(ApiError::BadRequest(format!(
            "the body names pool {:?} but the path names {name:?}",
            spec.name.as_str()
        )));
    }
    // A spec read (secrets redacted), changed and put back keeps the secrets it had.
    if let Some(stored) = app
        .cluster
        .shared()
        .read(|s| s.pool(&spec.name).map(|p| p.spec.clone()))
    {
        spec.keep_redacted_secrets(&stored);
    }
    spec.validate_request()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    write_pool(&app, Command::PutPool { spec }).await
}

/// Deletes a pool: its containers are destroyed, its allocations end (`pool_deleted`).
#[utoipa::path(
    delete, path = "/v1/pools/{name}", tag = "pools",
    params(("name" = PoolName, Path, description = "Pool name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such pool (`not_found`)", body = ErrorBody),
        (status = 409, description = "The pool's state forbids it (`conflict`)", body = ErrorBody),
        (status = 503, description = "No quorum (`no_quorum`)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds"))),
    )
)]
pub async fn delete(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let name = parse_name(&name)?;
    match app
        .cluster
        .write(Request::now(Command::DeletePool { name }))
        .await?
    {
        Applied::Rejected(r) => Err(r.into()),
        _ => Ok(StatusCode::NO_CONTENT),
    }
}
