//! Applying one command: every state transition and the events it derives.

use warmpool_proto::agent::{InventoryEntry, ObservedStatus};
use warmpool_proto::records::{
    AllocationState, NodeStatus, Pool, ReleaseReason, Unreachable, UnreachableReason,
};
use warmpool_proto::{
    Allocation, AllocationId, Container, ContainerId, ContainerState, Event, EventKind, Health,
    Node, NodeId, PoolName, PoolSpec, SessionId, Timestamp,
};

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use super::{
    retally, scoped_key, touch, Command, Condition, Pending, PoolState, RejectCode, Rejection,
    Request, Response, Tenant, ENDED_CONTAINER_RETENTION, EVENT_RETENTION,
    RELEASED_ALLOCATION_RETENTION, WAIT_GRACE_MS,
};

/// The log position and clock of the command being applied.
#[derive(Clone, Copy)]
struct Ctx {
    index: u64,
    at: Timestamp,
}

/// Fields of an event besides its position; filled by the `emit` helpers.
#[derive(Clone, Default)]
struct EventBody {
    pool: Option<PoolName>,
    container: Option<ContainerId>,
    node: Option<NodeId>,
    session: Option<SessionId>,
    allocation: Option<warmpool_proto::AllocationId>,
    reason: Option<String>,
    detail: Option<serde_json::Value>,
}

impl EventBody {
    fn of_container(c: &Container) -> Self {
        EventBody {
            pool: Some(c.pool.clone()),
            container: Some(c.id),
            node: Some(c.node.clone()),
            session: c.session.clone(),
            allocation: c.allocation,
            ..Default::default()
        }
    }

    fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }
}

impl PoolState {
    /// Applies the entry at log `index`. Never fails: a command that cannot be carried out
    /// answers [`Response::Rejected`] and leaves the state as it was.
    pub fn apply(&mut self, index: u64, req: Request) -> Response {
        self.applied_index = index;
        match req.cmd {
            Command::Batch { requests } => Response::Batch {
                responses: requests
                    .into_iter()
                    .map(|r| self.apply_one(index, r))
                    .collect(),
            },
            cmd => self.apply_one(index, Request { at: req.at, cmd }),
        }
    }

    fn apply_one(&mut self, index: u64, req: Request) -> Response {
        let ctx = Ctx { index, at: req.at };
        let response = self.apply_cmd(ctx, req.cmd);
        // Whatever changed, a waiting allocation gets the first container it can take.
        self.serve_waiters(ctx);
        response
    }

    fn apply_cmd(&mut self, ctx: Ctx, cmd: Command) -> Response {
        match cmd {
            Command::CreatePool { spec } => self.create_pool(ctx, spec),
            Command::PutPool { spec } => self.put_pool(ctx, spec),
            Command::DeletePool { name } => self.delete_pool(ctx, &name),
            Command::PlanContainers {
                pool,
                generation,
                placements,
            } => self.plan(ctx, &pool, generation, placements),
            Command::Observe { node, entries } => {
                for entry in entries {
                    self.observe(ctx, &node, entry);
                }
                Response::Ok
            }
            Command::ContainersGone { gone } => {
                for (id, reason) in gone {
                    self.container_gone(ctx, id, &reason);
                }
                Response::Ok
            }
            Command::RetireContainers { ids, reason } => {
                for id in ids {
                    self.retire(ctx, id, &reason);
                }
                Response::Ok
            }
            Command::Allocate {
                allocation_id,
                pool,
                session,
                lease_ms,
                idempotency_key,
                wait_ms,
                tenant,
                token_sha256,
            } => {
                let req = Pending {
                    allocation_id,
                    session,
                    lease_ms,
                    idempotency_key,
                    tenant,
                    token_sha256,
                    since: ctx.at,
                    // A little past the requester's own deadline, so its CancelWait lands
                    // first; this only matters when the requester is gone.
                    deadline: ctx.at.plus_millis(wait_ms + WAIT_GRACE_MS),
                };
                self.allocate(ctx, pool, req, wait_ms > 0)
            }
            Command::CancelWait { allocation_id } => self.cancel_wait(allocation_id),
            Command::PutTenant { tenant, quota } => {
                self.tenants.insert(
                    tenant,
                    Tenant {
                        quota,
                        ..Default::default()
                    },
                );
                Response::Ok
            }
            Command::DeleteTenant { tenant } => match self.tenants.remove(&tenant) {
                Some(_) => Response::Ok,
                None => Response::rejected(
                    RejectCode::NotFound,
                    format!("tenant {tenant} has no limits"),
                ),
            },
            Command::Batch { .. } => {
                Response::rejected(RejectCode::Invalid, "a batch cannot hold a batch")
            }
            Command::RestartContainer { id } => {
                let Some(c) = self.containers.get_mut(&id).map(Arc::make_mut) else {
                    return Response::rejected(RejectCode::NotFound, format!("no container {id}"));
                };
                if c.state != ContainerState::Allocated || c.restarts > 0 {
                    return Response::rejected(
                        RejectCode::Conflict,
                        format!(
                            "container {id} is {} and was restarted {} times",
                            c.state, c.restarts
                        ),
                    );
                }
                c.restarts += 1;
                c.restart_pending = true;
                retally(&mut self.tallies, c, false);
                c.health = Health::Unknown;
                retally(&mut self.tallies, c, true);
                let body = EventBody::of_container(c).reason("unhealthy");
                self.emit(ctx, EventKind::ContainerRestarted, body);
                Response::Ok
            }
            Command::SetPoolCondition { pool, condition } => {
                if !self.pools.contains_key(&pool) {
                    return Response::rejected(
                        RejectCode::NotFound,
                        format!("no pool named {pool:?}"),
                    );
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
            Command::SetNodeCondition { node, condition } => {
                if !self.nodes.contains_key(&node) {
                    return Response::rejected(RejectCode::NotFound, format!("no node {node}"));
                }
                let ids = EventBody {
                    node: Some(node.clone()),
                    ..Default::default()
                };
                let kinds = (EventKind::NodeBackoff, EventKind::NodeRecovered);
                if let Some((kind, body)) =
                    change_condition(&mut self.node_conditions, node, condition, ids, kinds)
                {
                    self.emit(ctx, kind, body);
                }
                Response::Ok
            }
            Command::CreateKey { key } => {
                if !self.keys.contains_key(&key.id) {
                    let detail =
                        serde_json::json!({ "id": key.id, "name": key.name, "role": key.role });
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
            Command::RevokeKey { id } => match self.keys.get_mut(&id) {
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
            },
            Command::ExpireWaits => {
                self.expire_waits(ctx.at);
                Response::Ok
            }
            Command::Release {
                allocation_id,
                reason,
            } => self.release(ctx, allocation_id, reason),
            Command::Renew {
                allocation_id,
                lease_ms,
            } => self.renew(ctx, allocation_id, lease_ms),
            Command::NodeJoin {
                node,
                ipv6_prefix,
                labels,
                capacity,
                agent_version,
            } => self.node_join(ctx, node, ipv6_prefix, labels, capacity, agent_version),
            Command::NodeDown { node, reason } => self.node_down(ctx, &node, &reason),
            Command::NodeLost { node } => self.node_lost(ctx, &node),
            Command::MarkUnreachable { node, reason } => self.mark_unreachable(ctx, &node, reason),
            Command::SetNodeStatus {
                node,
                status,
                reason,
                drain_deadline,
            } => self.set_node_status(ctx, &node, status, reason, drain_deadline),
            Command::SetWanted {
                pool,
                wanted,
                detail,
            } => self.set_wanted(ctx, &pool, wanted, detail),
        }
    }

    fn emit(&mut self, ctx: Ctx, kind: EventKind, body: EventBody) {
        self.next_event_seq += 1;
        self.events.push_back(Arc::new(Event {
            seq: self.next_event_seq,
            log_index: ctx.index,
            at: ctx.at,
            kind,
            pool: body.pool,
            container: body.container,
            node: body.node,
            session: body.session,
            allocation: body.allocation,
            reason: body.reason,
            detail: body.detail,
        }));
        while self.events.len() > EVENT_RETENTION {
            self.events.pop_front();
        }
    }

    // ---- pools ----

    fn create_pool(&mut self, ctx: Ctx, spec: PoolSpec) -> Response {
        if self.pools.contains_key(&spec.name) {
            return Response::rejected(
                RejectCode::Conflict,
                format!("pool {:?} already exists", spec.name.as_str()),
            );
        }
        self.put_pool(ctx, spec)
    }

    fn put_pool(&mut self, ctx: Ctx, spec: PoolSpec) -> Response {
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

    fn delete_pool(&mut self, ctx: Ctx, name: &PoolName) -> Response {
        if self.pools.remove(name).is_none() {
            return Response::rejected(
                RejectCode::NotFound,
                format!("no pool named {:?}", name.as_str()),
            );
        }
        self.wanted.remove(name);
        self.conditions.remove(name);
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
                None => self.retire(ctx, id, "pool_deleted"),
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

    fn set_wanted(
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

    // ---- containers ----

    /// Moves a container to `state`, keeping the warm index and the ended list in step.
    fn set_state(&mut self, id: ContainerId, state: ContainerState, at: Timestamp) {
        let Some(c) = self.containers.get_mut(&id).map(Arc::make_mut) else {
            return;
        };
        let was = c.state;
        if was == state {
            return;
        }
        touch(&mut self.node_changed, &c.node, self.applied_index);
        retally(&mut self.tallies, c, false);
        c.state = state;
        retally(&mut self.tallies, c, true);
        if was == ContainerState::Warm {
            let warm_at = c.warm_at.unwrap_or(c.created_at);
            if let Some(set) = self.warm_index.get_mut(&c.pool) {
                set.remove(&(warm_at, c.id));
            }
            // The warm spell is over: it counts as pool overhead.
            self.usage.entry(c.pool.clone()).or_default().warm_ms +=
                at.since(warm_at).as_millis() as u64;
        }
        match state {
            ContainerState::Warm => {
                let at = *c.warm_at.get_or_insert(at);
                self.warm_index
                    .entry(c.pool.clone())
                    .or_default()
                    .insert((at, c.id));
            }
            ContainerState::Terminated | ContainerState::Failed => {
                c.ended_at = Some(at);
                self.ended_containers.push_back(id);
                while self.ended_containers.len() > ENDED_CONTAINER_RETENTION {
                    if let Some(old) = self.ended_containers.pop_front() {
                        if let Some(gone) = self.containers.remove(&old) {
                            self.unindex_container(&gone);
                            touch(&mut self.node_changed, &gone.node, self.applied_index);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn plan(
        &mut self,
        ctx: Ctx,
        pool: &PoolName,
        generation: u64,
        placements: Vec<(ContainerId, NodeId)>,
    ) -> Response {
        let Some(p) = self.pools.get(pool) else {
            return Response::rejected(RejectCode::NotFound, format!("no pool named {pool:?}"));
        };
        if p.generation != generation {
            return Response::rejected(
                RejectCode::Conflict,
                format!(
                    "plan for generation {generation}, pool is at {}",
                    p.generation
                ),
            );
        }
        let port = p.spec.port;
        let max_total = p.spec.max_total as usize;
        let mut live = self.live_count(pool);
        for (id, node) in placements {
            let node_ready = self
                .nodes
                .get(&node)
                .is_some_and(|n| n.status == NodeStatus::Ready && n.unreachable.is_none());
            if live >= max_total || !node_ready || self.containers.contains_key(&id) {
                continue;
            }
            live += 1;
            let c = Container::planned(id, pool.clone(), node, generation, port, ctx.at);
            let body = EventBody::of_container(&c);
            self.index_container(&c.node, &c.pool, id);
            retally(&mut self.tallies, &c, true);
            touch(&mut self.node_changed, &c.node, ctx.index);
            self.containers.insert(id, Arc::new(c));
            self.emit(ctx, EventKind::ContainerCreated, body);
        }
        Response::Ok
    }

    /// Live containers of a pool that count against `max_total` (releasing ones are on their
    /// way out and do not block replacements).
    pub(super) fn live_count(&self, pool: &PoolName) -> usize {
        self.containers_of(pool)
            .filter(|c| {
                matches!(
                    c.state,
                    ContainerState::Creating | ContainerState::Warm | ContainerState::Allocated
                )
            })
            .count()
    }

    fn observe(&mut self, ctx: Ctx, node: &NodeId, entry: InventoryEntry) {
        let Some(c) = self.containers.get_mut(&entry.id).map(Arc::make_mut) else {
            return;
        };
        if &c.node != node || !c.state.is_live() {
            return;
        }
        touch(&mut self.node_changed, node, ctx.index);
        if entry.docker_id != c.docker_id.as_deref().unwrap_or_default() {
            c.docker_id = Some(entry.docker_id.clone());
        }
        if entry.ipv6.is_some() {
            c.ipv6 = entry.ipv6;
        }
        if c.observed_index.is_none() {
            c.observed_index = Some(ctx.index);
        }
        if let Some(t) = entry.last_activity_at {
            if c.last_activity_at.is_none_or(|old| t > old) {
                c.last_activity_at = Some(t);
            }
        }
        if c.restart_pending {
            // Until the agent reports the restarted life (starting again, or no longer
            // unhealthy), what it says is about the old one.
            let new_life = entry.status == ObservedStatus::Starting
                || !matches!(entry.health, Health::Unhealthy { .. });
            if !new_life {
                return;
            }
            c.restart_pending = false;
        }
        let id = c.id;
        let state = c.state;
        let restarts = c.restarts;

        if entry.status == ObservedStatus::Exited {
            let reason = if entry.oom_killed {
                "oom_killed".to_string()
            } else {
                format!(
                    "exited ({})",
                    entry.exit_code.map_or("?".into(), |c| c.to_string())
                )
            };
            self.lose(ctx, id, &reason);
            return;
        }

        let health_changed = c.health.as_str() != entry.health.as_str();
        retally(&mut self.tallies, c, false);
        c.health = entry.health;
        retally(&mut self.tallies, c, true);
        if health_changed && state != ContainerState::Creating {
            let body = EventBody::of_container(c).reason(entry.health.as_str());
            self.emit(ctx, EventKind::ContainerHealthChanged, body);
        }

        match (state, entry.health) {
            (ContainerState::Creating, Health::Healthy)
                if entry.status == ObservedStatus::Running && entry.ipv6.is_some() =>
            {
                self.set_state(id, ContainerState::Warm, ctx.at);
                let body = EventBody::of_container(&self.containers[&id]);
                self.emit(ctx, EventKind::ContainerWarm, body);
            }
            (ContainerState::Creating | ContainerState::Warm, Health::Unhealthy { .. }) => {
                // Never offered again; destroyed and replaced.
                self.retire(ctx, id, "unhealthy");
            }
            (ContainerState::Allocated, Health::Unhealthy { .. }) if restarts > 0 => {
                // It was restarted once and fails again: its session loses it (the release
                // event says why) and the pool replaces it.
                self.retire(ctx, id, "unhealthy");
            }
            _ => {}
        }
    }

    /// A container stopped working on its own (exited, killed, lost with its node): an
    /// allocated one takes its allocation down with it; all are destroyed.
    fn lose(&mut self, ctx: Ctx, id: ContainerId, reason: &str) {
        let Some(c) = self.containers.get(&id) else {
            return;
        };
        match c.state {
            ContainerState::Allocated => {
                if let Some(a) = c.allocation {
                    self.end_allocation(ctx, a, ReleaseReason::Lost, Some(reason));
                }
            }
            ContainerState::Creating | ContainerState::Warm => self.retire(ctx, id, reason),
            _ => {}
        }
    }

    /// Takes a container out of service: it goes to `releasing`, and the leader has its agent
    /// destroy it.
    fn retire(&mut self, ctx: Ctx, id: ContainerId, reason: &str) {
        let Some(c) = self.containers.get_mut(&id).map(Arc::make_mut) else {
            return;
        };
        match c.state {
            ContainerState::Creating | ContainerState::Warm => {
                c.reason = Some(reason.to_string());
                self.set_state(id, ContainerState::Releasing, ctx.at);
            }
            ContainerState::Allocated => {
                if let Some(a) = c.allocation {
                    let why = if reason == "unhealthy" {
                        ReleaseReason::Unhealthy
                    } else {
                        ReleaseReason::Lost
                    };
                    self.end_allocation(ctx, a, why, Some(reason));
                }
            }
            _ => {}
        }
    }

    fn container_gone(&mut self, ctx: Ctx, id: ContainerId, reason: &str) {
        let Some(c) = self.containers.get(&id) else {
            return;
        };
        if !c.state.is_live() {
            return;
        }
        if c.state == ContainerState::Allocated {
            // Gone while a session held it: that session lost it.
            self.lose(ctx, id, reason);
        }
        let Some(c) = self.containers.get_mut(&id).map(Arc::make_mut) else {
            return;
        };
        let reason = c.reason.clone().unwrap_or_else(|| reason.to_string());
        c.reason = Some(reason.clone());
        let (state, kind) = if c.warm_at.is_some() {
            (ContainerState::Terminated, EventKind::ContainerTerminated)
        } else {
            (ContainerState::Failed, EventKind::ContainerFailed)
        };
        let body = EventBody::of_container(c).reason(reason);
        let node = c.node.clone();
        self.set_state(id, state, ctx.at);
        self.emit(ctx, kind, body);
        self.note_if_drained(ctx, &node);
    }

    // ---- allocations ----

    /// The container an allocation from `pool` would get: the longest-warm container of the
    /// pool's current generation that is healthy, on a node that is up and not draining.
    pub(super) fn pick_warm(&self, pool: &PoolName) -> Option<ContainerId> {
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
    fn allocate(&mut self, ctx: Ctx, pool: PoolName, req: Pending, may_wait: bool) -> Response {
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
    fn queue_of(&self, id: &AllocationId) -> Option<PoolName> {
        self.pending
            .iter()
            .find(|(_, q)| q.iter().any(|p| &p.allocation_id == id))
            .map(|(pool, _)| pool.clone())
    }

    /// What a repeated request for a known allocation id is answered.
    fn answer_known(&self, id: AllocationId) -> Response {
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
    fn serve_waiters(&mut self, ctx: Ctx) {
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

    fn drop_waiter(&mut self, pool: &PoolName, index: usize) -> Option<Pending> {
        let gone = self.pending.get_mut(pool)?.remove(index)?;
        if let Some(key) = &gone.idempotency_key {
            let key = scoped_key(&gone.tenant, key);
            if self.idempotency.get(&key) == Some(&gone.allocation_id) {
                self.idempotency.remove(&key);
            }
        }
        Some(gone)
    }

    fn cancel_wait(&mut self, id: AllocationId) -> Response {
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

    fn expire_waits(&mut self, now: Timestamp) {
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

    /// Hands container `cid` to the request.
    fn grant(&mut self, ctx: Ctx, pool: &PoolName, req: Pending, cid: ContainerId) -> Allocation {
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
            token_sha256: req.token_sha256.clone(),
            access: None,
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

    fn release(&mut self, ctx: Ctx, id: AllocationId, reason: ReleaseReason) -> Response {
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
    fn end_allocation(
        &mut self,
        ctx: Ctx,
        id: AllocationId,
        reason: ReleaseReason,
        detail: Option<&str>,
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
        c.reason = Some(detail.unwrap_or(reason.as_str()).to_string());
        touch(&mut self.node_changed, &c.node, ctx.index);
        let mut body = EventBody::of_container(c).reason(reason.as_str());
        body.allocation = Some(id);
        if c.state == ContainerState::Allocated {
            self.set_state(cid, ContainerState::Releasing, ctx.at);
        }
        if reason == ReleaseReason::Lost {
            let mut lost = body.clone();
            lost.reason = Some(detail.unwrap_or("lost").to_string());
            self.emit(ctx, EventKind::AllocationLost, lost);
        }
        self.emit(ctx, EventKind::ContainerReleased, body);
    }

    fn renew(&mut self, ctx: Ctx, id: AllocationId, lease_ms: u64) -> Response {
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

    // ---- nodes ----

    fn node_join(
        &mut self,
        ctx: Ctx,
        id: NodeId,
        ipv6_prefix: String,
        labels: std::collections::BTreeMap<String, String>,
        capacity: warmpool_proto::records::Resources,
        agent_version: String,
    ) -> Response {
        let conflict = self.prefix_conflict(&id, &ipv6_prefix);
        let (status, joined_at, status_changed_at, reason, announce) = match self.nodes.get(&id) {
            None => (NodeStatus::Ready, ctx.at, ctx.at, None, Some("new")),
            Some(n) if n.status == NodeStatus::Down => (
                NodeStatus::Ready,
                n.joined_at,
                ctx.at,
                None,
                Some("returned"),
            ),
            Some(n) => (
                n.status,
                n.joined_at,
                n.status_changed_at,
                n.reason.clone(),
                None,
            ),
        };
        // A node whose /64 another live node owns joins cordoned: it is known and visible,
        // and takes nothing until an operator fixes its prefix and uncordons it.
        let cordon = conflict.filter(|_| status == NodeStatus::Ready);
        // A node still draining keeps its deadline when it announces itself again.
        let drain_deadline = self
            .nodes
            .get(&id)
            .filter(|n| n.status == NodeStatus::Draining && status == NodeStatus::Draining)
            .and_then(|n| n.drain_deadline);
        let unreachable = self
            .nodes
            .get(&id)
            .and_then(|n| n.unreachable.clone())
            .filter(|u| u.reason != UnreachableReason::NoHeartbeat);
        let (status, reason) = match &cordon {
            Some(why) => (NodeStatus::Cordoned, Some(why.clone())),
            None => (status, reason),
        };
        self.nodes.insert(
            id.clone(),
            Node {
                id: id.clone(),
                ipv6_prefix,
                labels,
                capacity,
                status,
                agent_version,
                joined_at,
                status_changed_at: if cordon.is_some() {
                    ctx.at
                } else {
                    status_changed_at
                },
                reason,
                drain_deadline,
                // Heard: no longer unheard; a runtime outage is the leader's to clear.
                unreachable,
            },
        );
        if let Some(why) = announce {
            self.emit(
                ctx,
                EventKind::NodeJoined,
                EventBody {
                    node: Some(id.clone()),
                    reason: Some(why.into()),
                    ..Default::default()
                },
            );
        }
        if let Some(why) = cordon {
            self.emit(
                ctx,
                EventKind::NodeCordoned,
                EventBody {
                    node: Some(id),
                    reason: Some(why),
                    ..Default::default()
                },
            );
        }
        Response::Ok
    }

    fn node_down(&mut self, ctx: Ctx, id: &NodeId, reason: &str) -> Response {
        let Some(n) = self.nodes.get_mut(id) else {
            return Response::rejected(RejectCode::NotFound, format!("no node {id}"));
        };
        if n.status == NodeStatus::Down {
            return Response::Ok;
        }
        n.status = NodeStatus::Down;
        n.status_changed_at = ctx.at;
        n.reason = Some(reason.to_string());
        self.emit(
            ctx,
            EventKind::NodeDown,
            EventBody {
                node: Some(id.clone()),
                reason: Some(reason.into()),
                ..Default::default()
            },
        );
        // What no session holds is gone as far as the pool is concerned, and is replaced
        // elsewhere; if the node comes back, its agent's leftovers have no live record and are
        // destroyed by reconciliation. Allocated containers stay: the node may be alive behind
        // a broken link (or a control plane that lost NATS), and its sessions with it. They
        // are given up on by `NodeLost` if the node stays down.
        let on_node: Vec<ContainerId> = self
            .containers_on(id)
            .filter(|c| c.state.is_live() && c.state != ContainerState::Allocated)
            .map(|c| c.id)
            .collect();
        for cid in on_node {
            self.container_gone(ctx, cid, "node_down");
        }
        Response::Ok
    }

    fn node_lost(&mut self, ctx: Ctx, id: &NodeId) -> Response {
        let Some(n) = self.nodes.get(id) else {
            return Response::rejected(RejectCode::NotFound, format!("no node {id}"));
        };
        if n.status != NodeStatus::Down {
            return Response::rejected(
                RejectCode::Conflict,
                format!("node {id} is {}, not down", n.status.as_str()),
            );
        }
        let on_node: Vec<ContainerId> = self
            .containers_on(id)
            .filter(|c| c.state.is_live())
            .map(|c| c.id)
            .collect();
        for cid in on_node {
            self.container_gone(ctx, cid, "node_lost");
        }
        Response::Ok
    }

    fn mark_unreachable(
        &mut self,
        ctx: Ctx,
        id: &NodeId,
        reason: Option<UnreachableReason>,
    ) -> Response {
        let Some(n) = self.nodes.get_mut(id) else {
            return Response::rejected(RejectCode::NotFound, format!("no node {id}"));
        };
        if n.unreachable.as_ref().map(|u| u.reason) == reason {
            return Response::Ok;
        }
        n.unreachable = reason.map(|reason| Unreachable {
            reason,
            since: ctx.at,
        });
        let (kind, why) = match reason {
            Some(r) => (EventKind::NodeUnreachable, Some(r.as_str().to_string())),
            None => (EventKind::NodeReachable, None),
        };
        touch(&mut self.node_changed, id, ctx.index);
        self.emit(
            ctx,
            kind,
            EventBody {
                node: Some(id.clone()),
                reason: why,
                ..Default::default()
            },
        );
        Response::Ok
    }

    fn set_node_status(
        &mut self,
        ctx: Ctx,
        id: &NodeId,
        status: NodeStatus,
        reason: Option<String>,
        drain_deadline: Option<Timestamp>,
    ) -> Response {
        if status == NodeStatus::Ready {
            if let Some(conflict) = self
                .nodes
                .get(id)
                .and_then(|n| self.prefix_conflict(id, &n.ipv6_prefix))
            {
                return Response::rejected(RejectCode::Conflict, conflict);
            }
        }
        let Some(n) = self.nodes.get_mut(id) else {
            return Response::rejected(RejectCode::NotFound, format!("no node {id}"));
        };
        if n.status == NodeStatus::Down || status == NodeStatus::Down {
            return Response::rejected(
                RejectCode::Conflict,
                format!(
                    "node {id} is {}; only heartbeats change that",
                    n.status.as_str()
                ),
            );
        }
        let drain_deadline = drain_deadline.filter(|_| status == NodeStatus::Draining);
        if n.status == status && n.drain_deadline == drain_deadline {
            return Response::Ok;
        }
        // Draining again with another deadline (or none) changes only the deadline.
        let redrain = n.status == status;
        n.status = status;
        if !redrain {
            n.status_changed_at = ctx.at;
        }
        n.reason = reason.clone();
        n.drain_deadline = drain_deadline;
        let kind = match status {
            NodeStatus::Ready => EventKind::NodeUncordoned,
            NodeStatus::Cordoned => EventKind::NodeCordoned,
            _ => EventKind::NodeDraining,
        };
        self.emit(
            ctx,
            kind,
            EventBody {
                node: Some(id.clone()),
                reason,
                detail: drain_deadline.map(|d| serde_json::json!({ "deadline": d.to_string() })),
                ..Default::default()
            },
        );
        if status == NodeStatus::Draining && !redrain {
            self.note_if_drained(ctx, id);
        }
        Response::Ok
    }

    /// Emits `node_drained` when `id` is draining and holds no live container any more.
    fn note_if_drained(&mut self, ctx: Ctx, id: &NodeId) {
        let draining = self
            .nodes
            .get(id)
            .is_some_and(|n| n.status == NodeStatus::Draining);
        if draining && !self.containers_on(id).any(|c| c.state.is_live()) {
            self.emit(
                ctx,
                EventKind::NodeDrained,
                EventBody {
                    node: Some(id.clone()),
                    ..Default::default()
                },
            );
        }
    }

    /// Why `id` may not take containers on `prefix`: another live node announced that /64
    /// already, and two containers with one address would be reachable only on one host.
    fn prefix_conflict(&self, id: &NodeId, prefix: &str) -> Option<String> {
        let other = self.nodes.values().find(|n| {
            &n.id != id && n.status != NodeStatus::Down && same_prefix(&n.ipv6_prefix, prefix)
        })?;
        Some(format!(
            "ipv6 prefix {prefix} is already node {}'s",
            other.id
        ))
    }
}

/// Sets (`Some`) or clears (`None`) the condition of `key` in `map`. Returns the event to
/// record: `set` with the reason and the next attempt, or `cleared` when there was one to
/// clear; `ids` names the pool or node.
fn change_condition<K: Ord>(
    map: &mut BTreeMap<K, Condition>,
    key: K,
    condition: Option<Condition>,
    ids: EventBody,
    (set, cleared): (EventKind, EventKind),
) -> Option<(EventKind, EventBody)> {
    match condition {
        Some(c) => {
            let body = EventBody {
                reason: Some(c.reason.clone()),
                detail: Some(serde_json::json!({
                    "consecutive_failures": c.consecutive_failures,
                    "retry_at": c.retry_at,
                })),
                ..ids
            };
            map.insert(key, c);
            Some((set, body))
        }
        None => map.remove(&key).map(|_| (cleared, ids)),
    }
}

/// Whether two `addr/len` prefixes are the same network, however they are written.
fn same_prefix(a: &str, b: &str) -> bool {
    fn parse(p: &str) -> Option<(std::net::Ipv6Addr, u8)> {
        let (addr, len) = p.split_once('/')?;
        let len: u8 = len.parse().ok().filter(|l| *l <= 128)?;
        let bits = u128::from(addr.parse::<std::net::Ipv6Addr>().ok()?);
        let mask = if len == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(len))
        };
        Some(((bits & mask).into(), len))
    }
    match (parse(a), parse(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a.trim() == b.trim(),
    }
}
