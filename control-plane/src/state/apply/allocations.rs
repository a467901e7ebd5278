//! Allocations: granted from the warm set or queued, waiting, released, renewed.

use std::collections::VecDeque;
use std::sync::Arc;

use warmpool_proto::records::{AllocationState, NodeStatus, ReleaseReason};
use warmpool_proto::{
    Allocation, AllocationId, ContainerEndReason, ContainerId, ContainerState, EventKind, Health,
    PoolName, Tier, Timestamp,
};

use super::{Ctx, EventBody};
use crate::placement::location_rank;
use crate::state::{
    scoped_key, touch, Abandonment, Pending, PoolState, RejectCode, Rejection, Response,
};
use warmpool_proto::api::Location;

impl PoolState {
    /// The container an allocation from `pool` would get: the longest-warm container of the
    /// pool's current generation that is healthy, on a node that is up and not draining; with
    /// a `location`, only on a node that matches it, the most preferred place first (then the
    /// longest warm there).
    pub(in crate::state) fn pick_warm(
        &self,
        pool: &PoolName,
        location: Option<&Location>,
    ) -> Option<ContainerId> {
        self.pick_in(pool, location, Tier::Warm)
    }

    /// The container an allocation from `pool` gets: a warm one ([`PoolState::pick_warm`]),
    /// else one of the paused tier picked the same way, with the tier it comes from.
    pub(in crate::state) fn pick(
        &self,
        pool: &PoolName,
        location: Option<&Location>,
    ) -> Option<(ContainerId, Tier)> {
        self.pick_in(pool, location, Tier::Warm)
            .map(|id| (id, Tier::Warm))
            .or_else(|| {
                self.pick_in(pool, location, Tier::Paused)
                    .map(|id| (id, Tier::Paused))
            })
    }

    fn pick_in(
        &self,
        pool: &PoolName,
        location: Option<&Location>,
        tier: Tier,
    ) -> Option<ContainerId> {
        let generation = self.pools.get(pool)?.generation;
        let (index, state) = match tier {
            Tier::Warm => (&self.warm_index, ContainerState::Warm),
            Tier::Paused => (&self.paused_index, ContainerState::Paused),
        };
        let mut offered = index.get(pool)?.iter().filter_map(|(_, id)| {
            let c = self.containers.get(id)?;
            let node = self.nodes.get(&c.node)?;
            let ok = c.state == state
                && c.generation == generation
                && c.health == Health::Healthy
                && matches!(node.status, NodeStatus::Ready | NodeStatus::Cordoned)
                && node.unreachable.is_none();
            ok.then_some((*id, node))
        });
        let Some(location) = location else {
            return offered.next().map(|(id, _)| id);
        };
        let mut best: Option<(Vec<usize>, ContainerId)> = None;
        for (id, node) in offered {
            let Some(rank) = location_rank(&node.labels, location) else {
                continue;
            };
            if best.as_ref().is_none_or(|(b, _)| rank < *b) {
                let top = rank.iter().all(|r| *r == 0);
                best = Some((rank, id));
                if top {
                    break;
                }
            }
        }
        best.map(|(_, id)| id)
    }

    /// Whether some ready node carries the labels `location` asks for and the pool's own
    /// constraints, so that an allocation asking for it can be served (now or once a
    /// container is made there).
    fn location_servable(&self, pool: &PoolName, location: &Location) -> bool {
        let Some(p) = self.pools.get(pool) else {
            return false;
        };
        self.pick(pool, Some(location)).is_some()
            || self.nodes.values().any(|n| {
                n.status == NodeStatus::Ready
                    && location_rank(&n.labels, location).is_some()
                    && p.spec
                        .constraints
                        .iter()
                        .all(|(k, v)| n.labels.get(k) == Some(v))
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
        if let Some(Abandonment::NeverMade(_)) = self.abandoned.get(&id) {
            // Its requester gave up before this entry was applied: nobody would hold it.
            return Response::rejected(
                RejectCode::Conflict,
                "the request for this allocation was abandoned before it was applied",
            );
        }
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
                // The client came back for it: an abandonment of the first request, applied
                // before or after this, no longer releases it.
                if self
                    .allocations
                    .get(&known)
                    .is_some_and(|a| a.state == AllocationState::Active)
                {
                    self.abandoned.insert(known, Abandonment::ClaimedBack(id));
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
        if let Some(location) = &req.location {
            if !self.location_servable(&pool, location) {
                return Response::rejected(
                    RejectCode::NoMatchingNode,
                    format!(
                        "no ready node of pool {:?} matches location {}: none has a warm container there and none can make one",
                        pool.as_str(),
                        serde_json::to_string(location).unwrap_or_default()
                    ),
                );
            }
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
        let recent = self.recent_arrivals.entry(pool.clone()).or_default();
        if recent.len() == crate::state::RECENT_ARRIVALS {
            recent.pop_front();
        }
        recent.push_back(ctx.at.0);
        // Every earlier waiter was offered every warm container after the last command (see
        // `serve_waiters`), so a container this request can take is one none of them can:
        // taking it serves no one ahead of an earlier waiter.
        if let Some((cid, tier)) = self.pick(&pool, req.location.as_ref()) {
            let allocation = self.grant(ctx, &pool, req, cid, tier);
            return Response::Allocation {
                allocation,
                replayed: false,
            };
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
        let body = EventBody {
            pool: Some(pool.clone()),
            session: Some(req.session.clone()),
            allocation: Some(id),
            detail: Some(serde_json::json!({
                "async": req.asynchronous,
                "location": req.location,
                "tenant": req.tenant,
            })),
            ..Default::default()
        };
        let queue = self.pending.entry(pool).or_default();
        queue.push_back(req);
        let position = queue.len() - 1;
        self.emit(ctx, EventKind::AllocationPending, body);
        Response::Queued {
            allocation_id: id,
            position,
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

    /// Hands queued allocations the containers that became free, oldest waiter first (each
    /// the first container it can take: one on a node its location matches), and drops
    /// waiters whose time is up.
    pub(super) fn serve_waiters(&mut self, ctx: Ctx) {
        let pools: Vec<PoolName> = self.pending().map(|(p, _)| p.clone()).collect();
        for pool in pools {
            let mut i = 0;
            while let Some(waiter) = self.pending.get(&pool).and_then(|q| q.get(i)) {
                if waiter.deadline < ctx.at {
                    self.drop_waiter(&pool, i);
                    continue;
                }
                let location = waiter.location.clone();
                // Nothing warm or paused at all: no one behind can be served either.
                if location.is_some() && self.pick(&pool, None).is_none() {
                    break;
                }
                let Some((cid, tier)) = self.pick(&pool, location.as_ref()) else {
                    if location.is_none() {
                        break;
                    }
                    i += 1;
                    continue;
                };
                let Some(req) = self.pending.get_mut(&pool).and_then(|q| q.remove(i)) else {
                    break;
                };
                self.grant(ctx, &pool, req, cid, tier);
            }
            if self.pending.get(&pool).is_some_and(VecDeque::is_empty) {
                self.pending.remove(&pool);
            }
        }
    }

    /// Cancels the waiting allocation at `index` of `pool`'s queue, answering it as it was
    /// (state `cancelled`).
    pub(super) fn cancel_pending(
        &mut self,
        ctx: Ctx,
        pool: &PoolName,
        index: usize,
        reason: &str,
    ) -> Option<Allocation> {
        let gone = self.drop_waiter(pool, index)?;
        let mut a = gone.to_allocation(pool);
        a.state = AllocationState::Cancelled;
        a.released_at = Some(ctx.at);
        let body = EventBody {
            pool: Some(pool.clone()),
            session: Some(gone.session),
            allocation: Some(gone.allocation_id),
            detail: Some(serde_json::json!({ "tenant": gone.tenant })),
            ..Default::default()
        }
        .reason(reason);
        self.emit(ctx, EventKind::AllocationCancelled, body);
        Some(a)
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

    /// [`Command::Abandon`]: a waiting allocation leaves its queue; an active one is released
    /// after `grace_ms` unless its client comes back for it; one not made yet is refused when
    /// its allocate is applied. When the unanswered request was a replay (its key names an
    /// allocation made before), that allocation is abandoned again, if this request was the
    /// latest to claim it.
    pub(super) fn abandon(
        &mut self,
        ctx: Ctx,
        id: AllocationId,
        grace_ms: u64,
        idempotency_key: Option<String>,
        tenant: warmpool_proto::TenantId,
    ) -> Response {
        // Marks of allocations never made are kept an hour: by then any entry proposed for
        // them has long been applied or dropped.
        let cutoff = Timestamp(ctx.at.0.saturating_sub(3_600_000));
        self.abandoned
            .retain(|_, m| !matches!(m, Abandonment::NeverMade(t) if *t < cutoff));
        let release_at = Abandonment::ReleaseAt(ctx.at.plus_millis(grace_ms));
        if let Some(a) = self.allocations.get(&id) {
            if a.state == AllocationState::Active {
                // A client that already came back with another request keeps it.
                self.abandoned.entry(id).or_insert(release_at);
            }
            return Response::Ok;
        }
        if let Some(pool) = self.queue_of(&id) {
            if let Some(i) = self.pending[&pool]
                .iter()
                .position(|p| p.allocation_id == id)
            {
                self.drop_waiter(&pool, i);
            }
            return Response::Ok;
        }
        let replayed =
            idempotency_key.and_then(|k| self.idempotency.get(&scoped_key(&tenant, &k)).copied());
        if let Some(known) = replayed {
            if self.abandoned.get(&known) == Some(&Abandonment::ClaimedBack(id)) {
                self.abandoned.insert(known, release_at);
            }
        }
        self.abandoned.insert(id, Abandonment::NeverMade(ctx.at));
        Response::Ok
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
        tier: Tier,
    ) -> Allocation {
        let pool_cap = self.pools.get(pool).and_then(|p| p.spec.max_lifetime_secs);
        // The request's own cap, never past the pool's (the API refuses a longer one).
        let max_lifetime = match (pool_cap, req.max_lifetime_secs) {
            (Some(p), Some(r)) => Some(p.min(r)),
            (p, r) => p.or(r),
        };
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
            location: req.location,
            tier: Some(tier),
        };
        let mut body = EventBody::of_container(c);
        let waited = ctx.at.since(req.since).as_millis() as u64;
        match (waited, tier) {
            (0, Tier::Warm) => {}
            (0, Tier::Paused) => body.detail = Some(serde_json::json!({ "tier": tier })),
            (w, Tier::Warm) => body.detail = Some(serde_json::json!({ "waited_ms": w })),
            (w, Tier::Paused) => {
                body.detail = Some(serde_json::json!({ "waited_ms": w, "tier": tier }))
            }
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

    /// See [`crate::state::Command::UnpauseFailed`].
    pub(super) fn unpause_failed(
        &mut self,
        ctx: Ctx,
        id: AllocationId,
        container: ContainerId,
    ) -> Response {
        let Some(a) = self.allocations.get(&id) else {
            return Response::rejected(RejectCode::NotFound, format!("no allocation {id}"));
        };
        let holds = a.state == AllocationState::Active
            && a.container_id == container
            && self
                .containers
                .get(&container)
                .is_some_and(|c| c.state == ContainerState::Allocated && c.allocation == Some(id));
        if !holds {
            return self.answer_known(id);
        }
        let pool = a.pool.clone();
        let location = a.location.clone();
        // The container goes: destroyed by its agent, replaced by keep-warm.
        let reason = ContainerEndReason::UnpauseFailed;
        if let Some(c) = self.containers.get_mut(&container).map(Arc::make_mut) {
            c.session = None;
            c.allocation = None;
            c.lease_expires_at = None;
            c.reason = Some(reason.clone());
            let mut body = EventBody::of_container(c).reason(reason.to_string());
            body.allocation = Some(id);
            self.set_state(container, ContainerState::Releasing, ctx.at);
            self.emit(ctx, EventKind::ContainerUnpauseFailed, body);
        }
        let Some((next, tier)) = self.pick(&pool, location.as_ref()) else {
            // Nothing left to move it to: the allocation ends, as for a lost container.
            self.end_allocation(ctx, id, ReleaseReason::Lost, Some(&reason));
            return self.answer_known(id);
        };
        let Some(a) = self.allocations.get_mut(&id).map(Arc::make_mut) else {
            return Response::rejected(RejectCode::NotFound, format!("no allocation {id}"));
        };
        let (session, expires_at) = (a.session_id.clone(), a.expires_at);
        self.set_state(next, ContainerState::Allocated, ctx.at);
        let Some(c) = self.containers.get_mut(&next).map(Arc::make_mut) else {
            return Response::rejected(RejectCode::NotFound, format!("no container {next}"));
        };
        c.session = Some(session);
        c.allocation = Some(id);
        c.allocated_at = Some(ctx.at);
        c.lease_expires_at = Some(expires_at);
        let mut body = EventBody::of_container(c);
        body.detail = Some(serde_json::json!({ "tier": tier, "replaces": container }));
        let (node, ipv6, port, url) = (c.node.clone(), c.ipv6, c.port, c.url());
        if let Some(a) = self.allocations.get_mut(&id).map(Arc::make_mut) {
            a.container_id = next;
            a.node = node;
            a.ipv6 = ipv6;
            a.port = port;
            a.url = url;
            a.tier = Some(tier);
        }
        self.emit(ctx, EventKind::ContainerAllocated, body);
        self.answer_known(id)
    }

    pub(super) fn release(
        &mut self,
        ctx: Ctx,
        id: AllocationId,
        reason: ReleaseReason,
    ) -> Response {
        let Some(a) = self.allocations.get(&id) else {
            // A pending one is cancelled.
            if let Some(pool) = self.queue_of(&id) {
                let index = self.pending[&pool]
                    .iter()
                    .position(|p| p.allocation_id == id);
                if let Some(a) =
                    index.and_then(|i| self.cancel_pending(ctx, &pool, i, reason.as_str()))
                {
                    return Response::Allocation {
                        allocation: a,
                        replayed: false,
                    };
                }
            }
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
        self.abandoned.remove(&id);
        let key = (a.expires_at, id);
        a.release_reason = Some(reason);
        let held = ctx.at.since(a.created_at).as_millis() as u64;
        self.usage.entry(a.pool.clone()).or_default().allocated_ms += held;
        let cid = a.container_id;
        self.active_by_expiry.remove(&key);
        // Evicted past the cap at the end of the entry (`evict`).
        self.released_allocations.push_back(id);
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
        if !self.allocations.contains_key(&id) && self.queue_of(&id).is_some() {
            return Response::rejected(
                RejectCode::Conflict,
                format!("allocation {id} is pending: its lease starts when it is granted"),
            );
        }
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
