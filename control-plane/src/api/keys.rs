//! `/v1/keys`: API keys (admin only).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use warmpool_proto::api::{CreateKey, CreatedKey, KeyView};
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
        created_at: k.created_at,
        revoked_at: k.revoked_at,
    }
}

pub async fn list(State(app): State<AppState>) -> Json<Vec<KeyView>> {
    Json(app.cluster.shared().read(|s| s.keys().map(view).collect()))
}

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
    let new =
        crate::auth::generate().map_err(|e| ApiError::Internal(format!("no randomness: {e}")))?;
    let record = KeyRecord {
        id: new.id,
        name: name.to_string(),
        role: req.role,
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
