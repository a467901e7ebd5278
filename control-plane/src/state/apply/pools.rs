//! Pools: create, change, delete, the scaler's wanted count, and a pool's failing condition.

use warmpool_proto::records::{Pool, ReleaseReason};
use warmpool_proto::{
    AllocationId, ContainerEndReason, ContainerId, EventKind, PoolName, PoolSpec,
};

use super::{change_condition, Ctx, EventBody};
use crate::state::{Condition, PoolState, RejectCode, Response};

impl PoolState {
    pub(super) fn create_pool(&mut self, ctx: Ctx, spec: PoolSpec) -> Response {
        if self.pools.contains_key(&spec.name) {
            return Response::rejected(
                RejectCode::Conflict,
                format!("pool {:?} already exists", spec.name.as_str()),
            );
        }
        self.put_pool(ctx, spec)
    }

    pub(super) fn put_pool(&mut self, ctx: Ctx, spec: PoolSpec) -> Response {
        if let Err(e) = spec.validate() {
            return Response::rejected(RejectCode::Invalid, e.to_string());
        }
        let name = spec.name.clone();
        let (pool, created, changed) = match self.pools.get(&name) {
            None => (
                Pool {
                    spec,
                    generation: 1,
                    created_at: ctx.at,
                    updated_at: ctx.at,
                },
                true,
                true,
            ),
            Some(old) if old.spec == spec => (old.clone(), false, false),
            Some(old) => (
                Pool {
                    spec,
                    generation: old.generation + 1,
                    created_at: old.created_at,
                    updated_at: ctx.at,
                },
                false,
                true,
            ),
        };
        if changed {
            // A new spec is a new start: whatever kept failing may be fixed.
            self.conditions.remove(&name);
            self.pools.insert(name.clone(), pool.clone());
            let kind = if created {
                EventKind::PoolCreated
            } else {
                EventKind::PoolUpdated
            };
            let detail = serde_json::json!({ "generation": pool.generation });
            self.emit(
                ctx,
                kind,
                EventBody {
                    pool: Some(name),
                    detail: Some(detail),
                    ..Default::default()
                },
            );
        }
        Response::Pool { pool, created }
    }

    pub(super) fn delete_pool(&mut self, ctx: Ctx, name: &PoolName) -> Response {
        if self.pools.remove(name).is_none() {
            return Response::rejected(
                RejectCode::NotFound,
                format!("no pool named {:?}", name.as_str()),
            );
        }
        self.wanted.remove(name);
        self.conditions.remove(name);
        self.recent_arrivals.remove(name);
        // Waiting allocations can never be served now.
        while self.pending.get(name).is_some_and(|q| !q.is_empty()) {
            self.cancel_pending(ctx, name, 0, "pool_deleted");
        }
        self.pending.remove(name);
        let live: Vec<(ContainerId, Option<AllocationId>)> = self
            .containers_of(name)
            .filter(|c| c.state.is_live())
            .map(|c| (c.id, c.allocation))
            .collect();
        for (id, allocation) in live {
            match allocation {
                Some(a) => {
                    self.release(ctx, a, ReleaseReason::PoolDeleted);
                }
                None => self.retire(ctx, id, &ContainerEndReason::PoolDeleted, false),
            }
        }
        self.emit(
            ctx,
            EventKind::PoolDeleted,
            EventBody {
                pool: Some(name.clone()),
                ..Default::default()
            },
        );
        Response::Ok
    }

    pub(super) fn set_wanted(
        &mut self,
        ctx: Ctx,
        pool: &PoolName,
        wanted: u32,
        detail: Option<serde_json::Value>,
    ) -> Response {
        let Some(p) = self.pools.get(pool) else {
            return Response::rejected(RejectCode::NotFound, format!("no pool named {pool:?}"));
        };
        let before = self.wanted(p);
        self.wanted.insert(pool.clone(), wanted);
        let after = self.wanted(&self.pools[pool]);
        if before != after {
            let mut detail = detail.unwrap_or_else(|| serde_json::json!({}));
            if let Some(obj) = detail.as_object_mut() {
                obj.insert("from".into(), before.into());
                obj.insert("to".into(), after.into());
            }
            self.emit(
                ctx,
                EventKind::PoolScaled,
                EventBody {
                    pool: Some(pool.clone()),
                    detail: Some(detail),
                    ..Default::default()
                },
            );
        }
        Response::Ok
    }

    /// A pool's creates keep failing (`Some`) or work again (`None`).
    pub(super) fn set_pool_condition(
        &mut self,
        ctx: Ctx,
        pool: PoolName,
        condition: Option<Condition>,
    ) -> Response {
        if !self.pools.contains_key(&pool) {
            return Response::rejected(RejectCode::NotFound, format!("no pool named {pool:?}"));
        }
        let ids = EventBody {
            pool: Some(pool.clone()),
            ..Default::default()
        };
        let kinds = (EventKind::PoolBackoff, EventKind::PoolRecovered);
        if let Some((kind, body)) =
            change_condition(&mut self.conditions, pool, condition, ids, kinds)
        {
            self.emit(ctx, kind, body);
        }
        Response::Ok
    }
}
