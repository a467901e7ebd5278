//! Allocations: granted from the warm set or queued, waiting, released, renewed.

use std::collections::VecDeque;
use std::sync::Arc;

use warmpool_proto::records::{AllocationState, NodeStatus, ReleaseReason};
use warmpool_proto::{
    Allocation, AllocationId, ContainerEndReason, ContainerId, ContainerState, EventKind, Health,
    PoolName, Timestamp,
};

use super::{Ctx, EventBody};
use crate::state::{
    scoped_key, touch, Pending, PoolState, RejectCode, Rejection, Response,
    RELEASED_ALLOCATION_RETENTION,
};

impl PoolState {
    /// The container an allocation from `pool` would get: the longest-warm container of the
    /// pool's current generation that is healthy, on a node that is up and not draining.
    pub(in crate::state) fn pick_warm(&self, pool: &PoolName) -> Option<ContainerId> {
        let generation = self.pools.get(pool)?.generation;
        self.warm_index
            .get(pool)?
            .iter()
            .map(|(_, id)| *id)
            .find(|id| {
                let Some(c) = self.containers.get(id) else {
                    return false;
                };
                c.state == ContainerState::Warm
                    && c.generation == generation
                    && c.health == Health::Healthy
                    && self.nodes.get(&c.node).is_some_and(|n| {
                        matches!(n.status, NodeStatus::Ready | NodeStatus::Cordoned)
                            && n.unreachable.is_none()
                    })
            })
    }

    /// An allocation request: served from a warm container, or queued when asked to wait,
    /// or refused. Never served ahead of an earlier waiter.
    pub(super) fn allocate(
        &mut self,
        ctx: Ctx,
        pool: PoolName,
        req: Pending,
        may_wait: bool,
    ) -> Response {
        let id = req.allocation_id;
        if let Some(key) = &req.idempotency_key {
            if let Some(&known) = self.idempotency.get(&scoped_key(&req.tenant, key)) {
                let known_pool = self
                    .allocations
                    .get(&known)
                    .map(|a| a.pool.clone())
                    .or_else(|| self.queue_of(&known));
                if known_pool.as_ref().is_some_and(|p| p != &pool) {
                    return Response::rejected(
                        RejectCode::Conflict,
                        format!("idempotency key {key:?} was used for another pool"),
                    );
                }
                return self.answer_known(known);
            }
        }
        if self.allocations.contains_key(&id) || self.queue_of(&id).is_some() {
            // A retried proposal of the same command: answer what it made.
            return self.answer_known(id);
        }
        if !self.pools.contains_key(&pool) {
            return Response::rejected(RejectCode::NotFound, format!("no pool named {pool:?}"));
        }
        // Quotas are checked here, in log order, so that concurrent requests through any
        // member can never together exceed them. A refusal changes nothing.
        if let Some(t) = self.tenants.get(&req.tenant) {
            if let Some(max) = t.quota.max_allocations {
                let held = self.tenant_allocations(&req.tenant);
                if held >= max {
                    return Response::rejected(
                        RejectCode::OverQuota,
                        format!(
                            "tenant {} holds {held} allocations, its limit is {max}: release one first",
                            req.tenant
                        ),
                    );
                }
            }
            let mut t = t.clone();
            if let Err(wait) = t.take(ctx.at) {
                return Response::Rejected(Rejection {
                    code: RejectCode::RateLimited,
                    message: format!(
                        "tenant {} asks faster than its {} allocations a minute",
                        req.tenant,
                        t.quota.allocations_per_minute.unwrap_or(0)
                    ),
                    retry_after_ms: Some(wait.as_millis() as u64),
                });
            }
            self.tenants.insert(req.tenant.clone(), t);
        }
        *self.arrivals.entry(pool.clone()).or_default() += 1;
        let queue_empty = self.waiting(&pool) == 0;
        if queue_empty {
            if let Some(cid) = self.pick_warm(&pool) {
                let allocation = self.grant(ctx, &pool, req, cid);
                return Response::Allocation {
                    allocation,
                    replayed: false,
                };
            }
        }
        if !may_wait {
            return Response::rejected(
                RejectCode::NoCapacity,
                format!("no warm container free in pool {:?}", pool.as_str()),
            );
        }
        if let Some(key) = &req.idempotency_key {
            self.idempotency.insert(scoped_key(&req.tenant, key), id);
        }
        let queue = self.pending.entry(pool).or_default();
        queue.push_back(req);
        Response::Queued {
            allocation_id: id,
            position: queue.len() - 1,
        }
    }

    /// The pool whose queue holds `id`.
    pub(super) fn queue_of(&self, id: &AllocationId) -> Option<PoolName> {
        self.pending
            .iter()
            .find(|(_, q)| q.iter().any(|p| &p.allocation_id == id))
            .map(|(pool, _)| pool.clone())
    }

    /// What a repeated request for a known allocation id is answered.
    pub(super) fn answer_known(&self, id: AllocationId) -> Response {
        if let Some(a) = self.allocations.get(&id) {
            return Response::Allocation {
                allocation: (**a).clone(),
                replayed: true,
            };
        }
        if let Some(pool) = self.queue_of(&id) {
            let position = self.pending[&pool]
                .iter()
                .position(|p| p.allocation_id == id)
                .unwrap_or(0);
            return Response::Queued {
                allocation_id: id,
                position,
            };
        }
        Response::rejected(
            RejectCode::NoCapacity,
            "the allocation gave up waiting".to_string(),
        )
    }

    /// Hands queued allocations the containers that became free, oldest waiter first, and
    /// drops waiters whose time is up.
    pub(super) fn serve_waiters(&mut self, ctx: Ctx) {
        let pools: Vec<PoolName> = self.pending().map(|(p, _)| p.clone()).collect();
        for pool in pools {
            while let Some(head) = self.pending.get(&pool).and_then(|q| q.front()) {
                if head.deadline < ctx.at {
                    self.drop_waiter(&pool, 0);
                    continue;
                }
                let Some(cid) = self.pick_warm(&pool) else {
                    break;
                };
                let Some(req) = self.pending.get_mut(&pool).and_then(VecDeque::pop_front) else {
                    break;
                };
                self.grant(ctx, &pool, req, cid);
            }
            if self.pending.get(&pool).is_some_and(VecDeque::is_empty) {
                self.pending.remove(&pool);
            }
        }
    }

    pub(super) fn drop_waiter(&mut self, pool: &PoolName, index: usize) -> Option<Pending> {
        let gone = self.pending.get_mut(pool)?.remove(index)?;
        if let Some(key) = &gone.idempotency_key {
            let key = scoped_key(&gone.tenant, key);
            if self.idempotency.get(&key) == Some(&gone.allocation_id) {
                self.idempotency.remove(&key);
            }
        }
        Some(gone)
    }

    pub(super) fn cancel_wait(&mut self, id: AllocationId) -> Response {
        if let Some(a) = self.allocations.get(&id) {
            return Response::Allocation {
                allocation: (**a).clone(),
                replayed: true,
            };
        }
        if let Some(pool) = self.queue_of(&id) {
            if let Some(i) = self.pending[&pool]
                .iter()
                .position(|p| p.allocation_id == id)
            {
                self.drop_waiter(&pool, i);
            }
        }
        Response::rejected(
            RejectCode::NoCapacity,
            "no warm container became free in time",
        )
    }

    pub(super) fn expire_waits(&mut self, now: Timestamp) {
        let pools: Vec<PoolName> = self.pending().map(|(p, _)| p.clone()).collect();
        for pool in pools {
            while let Some(i) = self
                .pending
                .get(&pool)
                .and_then(|q| q.iter().position(|p| p.deadline < now))
            {
                self.drop_waiter(&pool, i);
            }
        }
    }

    /// Records where an allocation's settings stand. Only an active allocation that was given
    /// settings changes; `applied` is never taken back by a late `failed`.
    pub(super) fn settings_delivered(
        &mut self,
        id: AllocationId,
        state: warmpool_proto::session::SettingsState,
    ) -> Response {
        use warmpool_proto::session::SettingsState;
        let Some(a) = self.allocations.get_mut(&id) else {
            return Response::rejected(RejectCode::NotFound, format!("no allocation {id}"));
        };
        if a.settings.is_some() && a.settings != Some(SettingsState::Applied) {
            Arc::make_mut(a).settings = Some(state);
        }
        Response::Allocation {
            allocation: (**a).clone(),
            replayed: false,
        }
    }

    /// Records where an allocation's workspace restore stands. Only an active allocation
    /// that named a workspace changes, and only from `restoring`.
    pub(super) fn workspace_restored(
        &mut self,
        id: AllocationId,
        state: warmpool_proto::workspace::WorkspaceState,
    ) -> Response {
        use warmpool_proto::workspace::WorkspaceState;
        let Some(a) = self.allocations.get_mut(&id) else {
            return Response::rejected(RejectCode::NotFound, format!("no allocation {id}"));
        };
        if a.workspace
            .as_ref()
            .is_some_and(|w| w.state == WorkspaceState::Restoring)
            && state != WorkspaceState::Restoring
        {
            if let Some(w) = Arc::make_mut(a).workspace.as_mut() {
                w.state = state;
            }
        }
        Response::Allocation {
            allocation: (**a).clone(),
            replayed: false,
        }
    }

    /// Hands container `cid` to the request.
    pub(super) fn grant(
        &mut self,
        ctx: Ctx,
        pool: &PoolName,
        req: Pending,
        cid: ContainerId,
    ) -> Allocation {
        let max_lifetime = self.pools.get(pool).and_then(|p| p.spec.max_lifetime_secs);
        let max_expires_at = max_lifetime.map(|s| ctx.at.plus_millis(s.saturating_mul(1000)));
        let expires_at = match max_expires_at {
            Some(cap) => ctx.at.plus_millis(req.lease_ms).min(cap),
            None => ctx.at.plus_millis(req.lease_ms),
        };
        self.set_state(cid, ContainerState::Allocated, ctx.at);
        let c = Arc::make_mut(
            self.containers
                .get_mut(&cid)
                .expect("picked container exists"),
        );
        c.session = Some(req.session.clone());
        c.allocation = Some(req.allocation_id);
        c.allocated_at = Some(ctx.at);
        c.lease_expires_at = Some(expires_at);
        let allocation = Allocation {
            id: req.allocation_id,
            session_id: req.session,
            tenant: req.tenant.clone(),
            pool: pool.clone(),
            container_id: cid,
            node: c.node.clone(),
            ipv6: c.ipv6,
            port: c.port,
            url: c.url(),
            created_at: ctx.at,
            expires_at,
            max_expires_at,
            idempotency_key: req.idempotency_key.clone(),
            state: AllocationState::Active,
            released_at: None,
            release_reason: None,
            metadata: req.metadata,
            settings: req
                .with_settings
                .then_some(warmpool_proto::session::SettingsState::Pending),
            workspace: req.workspace.clone().map(|id| {
                warmpool_proto::workspace::AllocationWorkspace {
                    id,
                    state: warmpool_proto::workspace::WorkspaceState::Restoring,
                }
            }),
            token_sha256: req.token_sha256.clone(),
            access: None,
            cost: None,
        };
        let mut body = EventBody::of_container(c);
        let waited = ctx.at.since(req.since).as_millis() as u64;
        if waited > 0 {
            body.detail = Some(serde_json::json!({ "waited_ms": waited }));
        }
        self.active_by_expiry
            .insert((expires_at, req.allocation_id));
        self.allocations
            .insert(req.allocation_id, Arc::new(allocation.clone()));
        if let Some(key) = req.idempotency_key {
            self.idempotency
                .insert(scoped_key(&req.tenant, &key), req.allocation_id);
        }
        self.emit(ctx, EventKind::ContainerAllocated, body);
        allocation
    }

    pub(super) fn release(
        &mut self,
        ctx: Ctx,
        id: AllocationId,
        reason: ReleaseReason,
    ) -> Response {
        let Some(a) = self.allocations.get(&id) else {
            return Response::rejected(RejectCode::NotFound, format!("no allocation {id}"));
        };
        if a.state == AllocationState::Active {
            self.end_allocation(ctx, id, reason, None);
        }
        Response::Allocation {
            allocation: (*self.allocations[&id]).clone(),
            replayed: false,
        }
    }

    /// Ends an active allocation and sends its container to be destroyed (containers are never
    /// reused across sessions).
    pub(super) fn end_allocation(
        &mut self,
        ctx: Ctx,
        id: AllocationId,
        reason: ReleaseReason,
        detail: Option<&ContainerEndReason>,
    ) {
        let Some(a) = self.allocations.get_mut(&id).map(Arc::make_mut) else {
            return;
        };
        if a.state != AllocationState::Active {
            return;
        }
        a.state = AllocationState::Released;
        a.released_at = Some(ctx.at);
        let key = (a.expires_at, id);
        a.release_reason = Some(reason);
        let held = ctx.at.since(a.created_at).as_millis() as u64;
        self.usage.entry(a.pool.clone()).or_default().allocated_ms += held;
        let cid = a.container_id;
        self.active_by_expiry.remove(&key);
        self.released_allocations.push_back(id);
        while self.released_allocations.len() > RELEASED_ALLOCATION_RETENTION {
            if let Some(old) = self.released_allocations.pop_front() {
                if let Some(gone) = self.allocations.remove(&old) {
                    if let Some(key) = &gone.idempotency_key {
                        self.idempotency.remove(&scoped_key(&gone.tenant, key));
                    }
                }
            }
        }
        let Some(c) = self.containers.get_mut(&cid).map(Arc::make_mut) else {
            return;
        };
        c.released_at = Some(ctx.at);
        c.reason = Some(detail.cloned().unwrap_or_else(|| reason.into()));
        touch(&mut self.node_changed, &c.node, ctx.index);
        let mut body = EventBody::of_container(c).reason(reason.as_str());
        body.allocation = Some(id);
        if c.state == ContainerState::Allocated {
            self.set_state(cid, ContainerState::Releasing, ctx.at);
        }
        if reason == ReleaseReason::Lost {
            let mut lost = body.clone();
            lost.reason = Some(detail.unwrap_or(&ContainerEndReason::Lost).to_string());
            self.emit(ctx, EventKind::AllocationLost, lost);
        }
        self.emit(ctx, EventKind::ContainerReleased, body);
    }

    pub(super) fn renew(&mut self, ctx: Ctx, id: AllocationId, lease_ms: u64) -> Response {
        let Some(a) = self.allocations.get_mut(&id).map(Arc::make_mut) else {
            return Response::rejected(RejectCode::NotFound, format!("no allocation {id}"));
        };
        if a.state != AllocationState::Active {
            return Response::rejected(
                RejectCode::Conflict,
                format!("allocation {id} is released and cannot be renewed"),
            );
        }
        let wanted = ctx.at.plus_millis(lease_ms);
        let new_expiry = a.max_expires_at.map_or(wanted, |cap| wanted.min(cap));
        if new_expiry <= a.expires_at && a.max_expires_at.is_some_and(|cap| a.expires_at >= cap) {
            return Response::rejected(
                RejectCode::Conflict,
                format!("allocation {id} has reached its pool's max_lifetime_secs"),
            );
        }
        let before = a.expires_at;
        a.expires_at = new_expiry.max(a.expires_at);
        let (cid, expires_at) = (a.container_id, a.expires_at);
        if expires_at != before {
            self.active_by_expiry.remove(&(before, id));
            self.active_by_expiry.insert((expires_at, id));
        }
        let allocation = a.clone();
        if let Some(c) = self.containers.get_mut(&cid).map(Arc::make_mut) {
            c.lease_expires_at = Some(expires_at);
            touch(&mut self.node_changed, &c.node, ctx.index);
            let mut body = EventBody::of_container(c);
            body.allocation = Some(id);
            body.detail = Some(serde_json::json!({ "expires_at": expires_at }));
            self.emit(ctx, EventKind::AllocationRenewed, body);
        }
        Response::Allocation {
            allocation,
            replayed: false,
        }
    }
}
