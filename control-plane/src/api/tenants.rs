//! `/v1/tenants`: each tenant's limits (set by admins) and use. A user or viewer key sees its
//! own tenant only.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use warmpool_proto::api::{ErrorBody, TenantQuota, TenantView};
use warmpool_proto::TenantId;

use super::error::ApiError;
use super::extract::ApiJson;
use super::openapi::Consistency;
use super::{barrier_if_asked, AppState};
use crate::auth::Scope;
use crate::state::{Command, PoolState, Request, Response as Applied};

/// The largest limit accepted (a larger one is as good as none).
const MAX_LIMIT: u32 = 1_000_000;

fn parse(name: &str) -> Result<TenantId, ApiError> {
    TenantId::new(name).map_err(|e| ApiError::BadRequest(e.to_string()))
}

fn view(s: &PoolState, name: &TenantId) -> TenantView {
    TenantView {
        name: name.clone(),
        quota: s.tenant(name).map(|t| t.quota.clone()).unwrap_or_default(),
        allocations: s.tenant_allocations(name),
    }
}

/// Tenants with limits (for a tenant's key: its own tenant, limits or not).
#[utoipa::path(
    get, path = "/v1/tenants", tag = "tenants", params(Consistency),
    responses((status = 200, description = "Tenants", body = Vec<TenantView>))
)]
pub async fn list(
    State(app): State<AppState>,
    scope: Scope,
    headers: HeaderMap,
) -> Result<Json<Vec<TenantView>>, ApiError> {
    barrier_if_asked(&app, &headers).await?;
    Ok(Json(app.cluster.shared().read(|s| match &scope {
        Scope::All => s.tenants().map(|(name, _)| view(s, name)).collect(),
        Scope::Tenant(t) => vec![view(s, t)],
    })))
}

/// One tenant's limits and use: 404 for a tenant with neither limits nor allocations.
#[utoipa::path(
    get, path = "/v1/tenants/{name}", tag = "tenants",
    params(("name" = String, Path, description = "Tenant"), Consistency),
    responses(
        (status = 200, description = "The tenant", body = TenantView),
        (status = 400, description = "Not a tenant name (`bad_request`)", body = ErrorBody),
        (status = 404, description = "No limits and no allocations, or another tenant's for a tenant's key (`not_found`)", body = ErrorBody),
    )
)]
pub async fn get(
    State(app): State<AppState>,
    scope: Scope,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<TenantView>, ApiError> {
    let name = parse(&name)?;
    if !scope.sees(&name) {
        return Err(ApiError::NotFound(format!("no tenant {name}")));
    }
    barrier_if_asked(&app, &headers).await?;
    // A tenant is known while it has limits or allocations; past that it is a name like any.
    app.cluster
        .shared()
        .read(|s| {
            (s.tenant(&name).is_some() || s.tenant_allocations(&name) > 0).then(|| view(s, &name))
        })
        .map(Json)
        .ok_or_else(|| {
            ApiError::NotFound(format!("tenant {name} has no limits and no allocations"))
        })
}

/// Sets a tenant's limits, replacing those it had. Over `max_allocations` or the rate, an
/// allocation answers 429 with `Retry-After` and changes nothing.
#[utoipa::path(
    put, path = "/v1/tenants/{name}", tag = "tenants", request_body = TenantQuota,
    params(("name" = String, Path, description = "Tenant")),
    responses(
        (status = 200, description = "Set", body = TenantView),
        (status = 400, description = "Malformed body, bad name or a limit out of range (`bad_request`)", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB (`payload_too_large`)", body = ErrorBody),
        (status = 503, description = "No quorum (`no_quorum`)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds"))),
    )
)]
pub async fn put(
    State(app): State<AppState>,
    Path(name): Path<String>,
    ApiJson(quota): ApiJson<TenantQuota>,
) -> Result<Json<TenantView>, ApiError> {
    let name = parse(&name)?;
    for (field, v) in [
        ("allocations_per_minute", quota.allocations_per_minute),
        ("burst", quota.burst),
    ] {
        if v.is_some_and(|v| v == 0 || v > MAX_LIMIT) {
            return Err(ApiError::BadRequest(format!(
                "{field} must be 1..={MAX_LIMIT}"
            )));
        }
    }
    if quota.max_allocations.is_some_and(|v| v > MAX_LIMIT) {
        return Err(ApiError::BadRequest(format!(
            "max_allocations must be at most {MAX_LIMIT}"
        )));
    }
    if quota.burst.is_some() && quota.allocations_per_minute.is_none() {
        return Err(ApiError::BadRequest(
            "burst needs allocations_per_minute".into(),
        ));
    }
    let cmd = Command::PutTenant {
        tenant: name.clone(),
        quota: quota.clone(),
    };
    match app.cluster.write(Request::now(cmd)).await? {
        Applied::Rejected(r) => Err(r.into()),
        // The limits as written (this member's replica may not have applied them yet).
        _ => Ok(Json(TenantView {
            quota,
            ..app.cluster.shared().read(|s| view(s, &name))
        })),
    }
}

/// Removes a tenant's limits (its allocations stay).
#[utoipa::path(
    delete, path = "/v1/tenants/{name}", tag = "tenants",
    params(("name" = String, Path, description = "Tenant")),
    responses(
        (status = 200, description = "Removed: the tenant as it is now, without limits", body = TenantView),
        (status = 400, description = "Not a tenant name (`bad_request`)", body = ErrorBody),
        (status = 404, description = "The tenant has no limits (`not_found`)", body = ErrorBody),
        (status = 503, description = "No quorum (`no_quorum`)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds"))),
    )
)]
pub async fn delete(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<TenantView>, ApiError> {
    let name = parse(&name)?;
    match app
        .cluster
        .write(Request::now(Command::DeleteTenant {
            tenant: name.clone(),
        }))
        .await?
    {
        Applied::Rejected(r) => Err(r.into()),
        _ => Ok(Json(app.cluster.shared().read(|s| view(s, &name)))),
    }
}
