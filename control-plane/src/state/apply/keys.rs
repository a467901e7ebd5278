//! API keys and tenants' limits.

use warmpool_proto::api::TenantQuota;
use warmpool_proto::{EventKind, TenantId};

use super::{Ctx, EventBody};
use crate::state::{KeyRecord, PoolState, RejectCode, Response, Tenant};

impl PoolState {
    /// Stores a new API key (an existing id is left as it is).
    pub(super) fn create_key(&mut self, ctx: Ctx, key: KeyRecord) -> Response {
        if !self.keys.contains_key(&key.id) {
            let detail = serde_json::json!({ "id": key.id, "name": key.name, "role": key.role });
            self.keys.insert(key.id.clone(), key);
            self.emit(
                ctx,
                EventKind::KeyCreated,
                EventBody {
                    detail: Some(detail),
                    ..Default::default()
                },
            );
        }
        Response::Ok
    }

    /// Revokes an API key.
    pub(super) fn revoke_key(&mut self, ctx: Ctx, id: String) -> Response {
        match self.keys.get_mut(&id) {
            None => Response::rejected(RejectCode::NotFound, format!("no key {id:?}")),
            Some(k) => {
                if k.revoked_at.is_none() {
                    k.revoked_at = Some(ctx.at);
                    let detail = serde_json::json!({ "id": id, "name": k.name });
                    self.emit(
                        ctx,
                        EventKind::KeyRevoked,
                        EventBody {
                            detail: Some(detail),
                            ..Default::default()
                        },
                    );
                }
                Response::Ok
            }
        }
    }

    /// Sets a tenant's limits, replacing what it had (the rate bucket starts full).
    pub(super) fn put_tenant(&mut self, tenant: TenantId, quota: TenantQuota) -> Response {
        self.tenants.insert(
            tenant,
            Tenant {
                quota,
                ..Default::default()
            },
        );
        Response::Ok
    }

    /// Removes a tenant's limits.
    pub(super) fn delete_tenant(&mut self, tenant: &TenantId) -> Response {
        match self.tenants.remove(tenant) {
            Some(_) => Response::Ok,
            None => Response::rejected(
                RejectCode::NotFound,
                format!("tenant {tenant} has no limits"),
            ),
        }
    }
}
