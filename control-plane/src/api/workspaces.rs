//! Workspaces: the restore an allocation naming one asks of its container's agent, and
//! `/v1/workspaces` (list, show, delete; tenant-scoped).
//!
//! The restore follows the settings' shape ([`super::settings`]): the member that granted the
//! allocation asks the agent (`restore_workspace` on the node's session subject), before
//! answering when the client asked `wait_for: "workspace"`, else in the background with the
//! allocation saying `workspace.state: restoring`; the outcome is one replicated write
//! ([`Command::WorkspaceRestored`]). From then on the agent syncs and saves on its own.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::Json;
use tracing::{info, warn};
use warmpool_proto::api::{CreateAllocation, ErrorBody, WaitFor};
use warmpool_proto::session::{SessionReply, SessionRequest};
use warmpool_proto::workspace::{
    check_id, WorkspaceBinding, WorkspaceKey, WorkspaceQuery, WorkspaceState, WorkspaceView,
};
use warmpool_proto::{Allocation, TenantId};

use super::error::ApiError;
use super::extract::ApiQuery;
use super::{read_fresh, AppState};
use crate::auth::Scope;
use crate::state::{Command, Request, Response as Applied};

/// Time an agent has to restore a workspace (download, unpack, copy in).
const RESTORE_TIMEOUT: Duration = Duration::from_secs(120);
/// Attempts to reach the agent before the restore counts as failed.
const ATTEMPTS: u32 = 2;

/// An allocation's workspace restore, taken from its request.
pub struct Restore {
    wait: bool,
}

impl Restore {
    /// Checks the workspace `req` names against its pool (which must declare one); `None`
    /// when it names none. A pool that does not exist is left to the claim (404).
    pub async fn check(
        app: &AppState,
        req: &CreateAllocation,
    ) -> Result<Option<Restore>, ApiError> {
        let Some(id) = &req.workspace else {
            return Ok(None);
        };
        check_id(id).map_err(ApiError::BadRequest)?;
        let pool = req.pool.clone();
        let declared = read_fresh(app, &Default::default(), |s| {
            s.pool(&pool).map(|p| p.spec.workspace.is_some())
        })
        .await?;
        if declared == Some(false) {
            return Err(ApiError::BadRequest(format!(
                "pool {} declares no workspace (set its spec's workspace.path)",
                req.pool
            )));
        }
        Ok(Some(Restore {
            wait: req.wait_for == Some(WaitFor::Workspace),
        }))
    }

    /// Restores `a`'s workspace: before answering when the client asked to wait, else in the
    /// background. An allocation whose restore is over already (a replay) is answered as it is.
    pub async fn deliver(self, app: &AppState, a: Allocation) -> Allocation {
        if !a
            .workspace
            .as_ref()
            .is_some_and(|w| w.state == WorkspaceState::Restoring)
        {
            return a;
        }
        if self.wait {
            return restore_now(app, a).await;
        }
        let (app, pending) = (app.clone(), a.clone());
        tokio::spawn(async move {
            restore_now(&app, pending).await;
        });
        a
    }
}

/// What the agent needs: the key, the pool's declaration, the tenant's cap.
fn binding(app: &AppState, a: &Allocation) -> Option<WorkspaceBinding> {
    let id = &a.workspace.as_ref()?.id;
    let key = WorkspaceKey::new(a.tenant.clone(), id).ok()?;
    app.cluster.shared().read(|s| {
        let spec = s.pool(&a.pool)?.spec.workspace.clone()?;
        let tenant_max_bytes = s
            .tenant(&a.tenant)
            .and_then(|t| t.quota.workspace_max_bytes);
        Some(WorkspaceBinding {
            key: key.clone(),
            spec,
            tenant_max_bytes,
        })
    })
}

async fn restore_now(app: &AppState, a: Allocation) -> Allocation {
    let mut state = WorkspaceState::Failed;
    if let Some(binding) = binding(app, &a) {
        let req = SessionRequest::RestoreWorkspace {
            container: a.container_id,
            binding,
        };
        for attempt in 1..=ATTEMPTS {
            match app.sessions.request(&a.node, &req, RESTORE_TIMEOUT).await {
                Ok(SessionReply::WorkspaceRestored { version }) => {
                    info!(allocation = %a.id, version = ?version, "workspace restored");
                    state = WorkspaceState::Restored;
                    break;
                }
                Ok(other) => {
                    warn!(allocation = %a.id, reply = ?other, "unexpected answer to a workspace restore");
                    break;
                }
                Err(e @ crate::session::SessionError::Refused { .. }) => {
                    warn!(allocation = %a.id, error = %e, "workspace restore refused by the agent");
                    break;
                }
                Err(e) => {
                    warn!(allocation = %a.id, attempt, error = %e, "workspace restore not delivered");
                    tokio::time::sleep(Duration::from_millis(300 * u64::from(attempt))).await;
                }
            }
        }
    } else {
        warn!(allocation = %a.id, "its pool no longer declares a workspace; not restored");
    }
    let outcome = match state {
        WorkspaceState::Restored => "restored",
        _ => "failed",
    };
    metrics::counter!("warmpool_workspace_restores_total", "outcome" => outcome).increment(1);
    let cmd = Command::WorkspaceRestored {
        allocation_id: a.id,
        state,
    };
    match app.cluster.write(Request::now(cmd)).await {
        Ok(Applied::Allocation { allocation, .. }) => allocation,
        other => {
            warn!(allocation = %a.id, answer = ?other.map(|_| ()), "recording the workspace's state failed");
            let mut a = a;
            if let Some(w) = a.workspace.as_mut() {
                w.state = state;
            }
            a
        }
    }
}

/// The tenant a request is about: a tenant's key its own (naming another is a 404, as for
/// anything of another tenant's); an admin key the one named, or `default`.
fn tenant_of(scope: &Scope, asked: Option<TenantId>, id: &str) -> Result<TenantId, ApiError> {
    match (scope, asked) {
        (Scope::All, t) => Ok(t.unwrap_or_default()),
        (Scope::Tenant(own), Some(t)) if &t != own => {
            Err(ApiError::NotFound(format!("no workspace {id:?}")))
        }
        (Scope::Tenant(own), _) => Ok(own.clone()),
    }
}

fn store_error(e: warmpool_workspace_store::StoreError) -> ApiError {
    ApiError::Internal(e.to_string())
}

fn key_of(scope: &Scope, q: WorkspaceQuery, id: &str) -> Result<WorkspaceKey, ApiError> {
    let tenant = tenant_of(scope, q.tenant, id)?;
    WorkspaceKey::new(tenant, id).map_err(|_| ApiError::NotFound(format!("no workspace {id:?}")))
}

/// Saved workspaces: a tenant's key sees its own; an admin every tenant's (or `?tenant=`'s).
#[utoipa::path(
    get, path = "/v1/workspaces", tag = "workspaces", params(WorkspaceQuery),
    responses(
        (status = 200, description = "Workspaces, by tenant then id", body = Vec<WorkspaceView>),
        (status = 400, description = "Malformed query (`bad_request`)", body = ErrorBody),
        (status = 500, description = "The workspace store failed (`internal`)", body = ErrorBody),
    )
)]
pub async fn list(
    State(app): State<AppState>,
    scope: Scope,
    ApiQuery(q): ApiQuery<WorkspaceQuery>,
) -> Result<Json<Vec<WorkspaceView>>, ApiError> {
    let tenant = match (&scope, q.tenant) {
        (Scope::All, t) => t,
        (Scope::Tenant(own), Some(t)) if &t != own => return Ok(Json(Vec::new())),
        (Scope::Tenant(own), _) => Some(own.clone()),
    };
    app.workspaces
        .list(tenant.as_ref())
        .await
        .map(Json)
        .map_err(store_error)
}

/// One saved workspace.
#[utoipa::path(
    get, path = "/v1/workspaces/{id}", tag = "workspaces",
    params(("id" = String, Path, description = "Workspace id"), WorkspaceQuery),
    responses(
        (status = 200, description = "The workspace's current version", body = WorkspaceView),
        (status = 400, description = "A malformed id or query, e.g. an invalid `tenant` (`bad_request`)", body = ErrorBody),
        (status = 404, description = "Never saved, or another tenant's (`not_found`)", body = ErrorBody),
        (status = 500, description = "The workspace store failed (`internal`)", body = ErrorBody),
    )
)]
pub async fn get(
    State(app): State<AppState>,
    scope: Scope,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<WorkspaceQuery>,
) -> Result<Json<WorkspaceView>, ApiError> {
    let key = key_of(&scope, q, &id)?;
    match app.workspaces.manifest(&key).await.map_err(store_error)? {
        Some(m) => Ok(Json(WorkspaceView::of(&key, &m))),
        None => Err(ApiError::NotFound(format!("no workspace {id:?}"))),
    }
}

/// Deletes a saved workspace (every version). An allocation holding it still saves it when
/// it ends, which makes it again.
#[utoipa::path(
    delete, path = "/v1/workspaces/{id}", tag = "workspaces",
    params(("id" = String, Path, description = "Workspace id"), WorkspaceQuery),
    responses(
        (status = 200, description = "Deleted; its last version as it was", body = WorkspaceView),
        (status = 400, description = "A malformed id or query, e.g. an invalid `tenant` (`bad_request`)", body = ErrorBody),
        (status = 403, description = "A viewer key (`forbidden`)", body = ErrorBody),
        (status = 404, description = "Never saved, or another tenant's (`not_found`)", body = ErrorBody),
        (status = 500, description = "The workspace store failed (`internal`)", body = ErrorBody),
    )
)]
pub async fn delete(
    State(app): State<AppState>,
    scope: Scope,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<WorkspaceQuery>,
) -> Result<Json<WorkspaceView>, ApiError> {
    let key = key_of(&scope, q, &id)?;
    let Some(m) = app.workspaces.manifest(&key).await.map_err(store_error)? else {
        return Err(ApiError::NotFound(format!("no workspace {id:?}")));
    };
    app.workspaces.delete(&key).await.map_err(store_error)?;
    info!(workspace = %key.prefix(), "workspace deleted");
    Ok(Json(WorkspaceView::of(&key, &m)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_key_reaches_only_its_own_workspaces() {
        let acme: TenantId = "acme".parse().unwrap();
        let other: TenantId = "other".parse().unwrap();
        let own = Scope::Tenant(acme.clone());
        assert_eq!(tenant_of(&own, None, "w").unwrap(), acme);
        assert_eq!(tenant_of(&own, Some(acme.clone()), "w").unwrap(), acme);
        assert!(matches!(
            tenant_of(&own, Some(other.clone()), "w"),
            Err(ApiError::NotFound(_))
        ));
        assert_eq!(
            tenant_of(&Scope::All, Some(other.clone()), "w").unwrap(),
            other
        );
        assert_eq!(
            tenant_of(&Scope::All, None, "w").unwrap(),
            TenantId::default()
        );
        assert!(matches!(
            key_of(&own, WorkspaceQuery::default(), "../x"),
            Err(ApiError::NotFound(_))
        ));
    }
}
