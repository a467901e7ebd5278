//! `/v1/keys`: API keys (admin only).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use warmpool_proto::api::{CreateKey, CreatedKey, ErrorBody, KeyView};
use warmpool_proto::Timestamp;

use super::error::ApiError;
use super::extract::ApiJson;
use super::AppState;
use crate::state::{Command, KeyRecord, Request, Response as Applied};

fn view(k: &KeyRecord) -> KeyView {
    KeyView {
        id: k.id.clone(),
        name: k.name.clone(),
        role: k.role,
        tenant: k.tenant.clone(),
        created_at: k.created_at,
        revoked_at: k.revoked_at,
    }
}

/// Every key (never a secret), revoked ones too.
#[utoipa::path(
    get, path = "/v1/keys", tag = "keys",
    responses((status = 200, description = "Keys", body = Vec<KeyView>))
)]
pub async fn list(State(app): State<AppState>) -> Json<Vec<KeyView>> {
    Json(app.cluster.shared().read(|s| s.keys().map(view).collect()))
}

/// Makes a key. Its token is in this answer only; the cluster keeps a hash.
#[utoipa::path(
    post, path = "/v1/keys", tag = "keys", request_body = CreateKey,
    responses(
        (status = 201, description = "Made", body = CreatedKey),
        (status = 400, description = "Malformed request or bad name (`bad_request`)", body = ErrorBody),
        (status = 409, description = "Refused (`conflict`)", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB (`payload_too_large`)", body = ErrorBody),
        (status = 503, description = "No quorum (`no_quorum`)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds"))),
    )
)]
pub async fn create(
    State(app): State<AppState>,
    ApiJson(req): ApiJson<CreateKey>,
) -> Result<Response, ApiError> {
    let name = req.name.trim();
    if name.is_empty() || name.chars().count() > 64 {
        return Err(ApiError::BadRequest(
            "name must be 1..=64 characters".into(),
        ));
    }
    let tenant =
        match (req.role, req.tenant) {
            (warmpool_proto::api::Role::Admin, Some(_)) => return Err(ApiError::BadRequest(
                "an admin key acts for every tenant; give a tenant only to user and viewer keys"
                    .into(),
            )),
            (warmpool_proto::api::Role::Admin, None) => None,
            (_, t) => Some(t.unwrap_or_default()),
        };
    let new =
        crate::auth::generate().map_err(|e| ApiError::Internal(format!("no randomness: {e}")))?;
    let record = KeyRecord {
        id: new.id,
        name: name.to_string(),
        role: req.role,
        tenant,
        hash: new.hash,
        created_at: Timestamp::now(),
        revoked_at: None,
    };
    match app
        .cluster
        .write(Request::now(Command::CreateKey {
            key: record.clone(),
        }))
        .await?
    {
        Applied::Rejected(r) => Err(r.into()),
        _ => Ok((
            StatusCode::CREATED,
            Json(CreatedKey {
                key: view(&record),
                token: new.token,
            }),
        )
            .into_response()),
    }
}

/// Revokes a key; it answers 401 from then on. Revoking a revoked key changes nothing.
#[utoipa::path(
    delete, path = "/v1/keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "Key id (12 hex digits)")),
    responses(
        (status = 200, description = "Revoked", body = KeyView),
        (status = 404, description = "No such key (`not_found`)", body = ErrorBody),
        (status = 503, description = "No quorum (`no_quorum`)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds"))),
    )
)]
pub async fn revoke(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    if let Applied::Rejected(r) = app
        .cluster
        .write(Request::now(Command::RevokeKey { id: id.clone() }))
        .await?
    {
        return Err(r.into());
    }
    app.cluster
        .shared()
        .read(|s| s.key(&id).map(view))
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no key {id:?}")))
}
