//! Containers: planned, observed by their agent, restarted, retired, lost and gone.

use std::sync::Arc;

use warmpool_proto::agent::{InventoryEntry, ObservedStatus};
use warmpool_proto::records::{NodeStatus, ReleaseReason};
use warmpool_proto::{
    Container, ContainerEndReason, ContainerId, ContainerState, EventKind, Health, NodeId,
    PoolName, Timestamp,
};

use super::{Ctx, EventBody};
use crate::state::{retally, touch, PoolState, RejectCode, Response};

impl PoolState {
    /// Moves a container to `state`, keeping the warm index and the ended list in step.
    pub(super) fn set_state(&mut self, id: ContainerId, state: ContainerState, at: Timestamp) {
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
        let moved = (was.is_live() != state.is_live()).then(|| c.node.clone());
        if was == ContainerState::Warm {
            let warm_at = c.warm_at.unwrap_or(c.created_at);
            if let Some(set) = self.warm_index.get_mut(&c.pool) {
                set.remove(&(warm_at, c.id));
            }
            // The warm spell is over: it counts as pool overhead.
            self.usage.entry(c.pool.clone()).or_default().warm_ms +=
                at.since(warm_at).as_millis() as u64;
        }
        if was == ContainerState::Paused {
            let warm_at = c.warm_at.unwrap_or(c.created_at);
            if let Some(set) = self.paused_index.get_mut(&c.pool) {
                set.remove(&(warm_at, c.id));
            }
        }
        match state {
            ContainerState::Warm => {
                let at = *c.warm_at.get_or_insert(at);
                self.warm_index
                    .entry(c.pool.clone())
                    .or_default()
                    .insert((at, c.id));
            }
            ContainerState::Paused => {
                let at = *c.warm_at.get_or_insert(at);
                self.paused_index
                    .entry(c.pool.clone())
                    .or_default()
                    .insert((at, c.id));
            }
            ContainerState::Terminated | ContainerState::Failed => {
                c.ended_at = Some(at);
                // Evicted past the cap at the end of the entry (`evict`).
                self.ended_containers.push_back(id);
            }
            _ => {}
        }
        if let Some(node) = moved {
            self.index_liveness(&node, id, state.is_live());
        }
    }

    pub(super) fn plan(
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
    pub(in crate::state) fn live_count(&self, pool: &PoolName) -> usize {
        self.tallies_of(pool)
            .flat_map(|(_, gens)| gens.values())
            .map(|t| t.counted() as usize)
            .sum()
    }

    pub(super) fn observe(&mut self, ctx: Ctx, node: &NodeId, entry: InventoryEntry) {
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
                ContainerEndReason::OomKilled
            } else {
                ContainerEndReason::Exited {
                    code: entry.exit_code,
                }
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
            (
                ContainerState::Creating | ContainerState::Warm | ContainerState::Paused,
                Health::Unhealthy { .. },
            ) => {
                // Never offered again; destroyed and replaced.
                self.retire(ctx, id, &ContainerEndReason::Unhealthy, false);
            }
            (ContainerState::Allocated, Health::Unhealthy { .. }) if restarts > 0 => {
                // It was restarted once and fails again: its session loses it (the release
                // event says why) and the pool replaces it.
                self.retire(ctx, id, &ContainerEndReason::Unhealthy, false);
            }
            _ => {}
        }
    }

    /// A container stopped working on its own (exited, killed, lost with its node): an
    /// allocated one takes its allocation down with it; all are destroyed.
    pub(super) fn lose(&mut self, ctx: Ctx, id: ContainerId, reason: &ContainerEndReason) {
        let Some(c) = self.containers.get(&id) else {
            return;
        };
        match c.state {
            ContainerState::Allocated => {
                if let Some(a) = c.allocation {
                    self.end_allocation(ctx, a, ReleaseReason::Lost, Some(reason));
                }
            }
            ContainerState::Creating | ContainerState::Warm | ContainerState::Paused => {
                self.retire(ctx, id, reason, false)
            }
            _ => {}
        }
    }

    /// Takes a container out of service: it goes to `releasing`, and the leader has its agent
    /// destroy it.
    /// With `timed`, the container keeps when it was retired (see
    /// [`Command::RetireContainers`](crate::state::Command::RetireContainers)).
    pub(super) fn retire(
        &mut self,
        ctx: Ctx,
        id: ContainerId,
        reason: &ContainerEndReason,
        timed: bool,
    ) {
        let Some(c) = self.containers.get_mut(&id).map(Arc::make_mut) else {
            return;
        };
        match c.state {
            ContainerState::Creating | ContainerState::Warm | ContainerState::Paused => {
                c.reason = Some(reason.clone());
                if timed {
                    c.released_at = Some(ctx.at);
                }
                self.set_state(id, ContainerState::Releasing, ctx.at);
            }
            ContainerState::Allocated => {
                if let Some(a) = c.allocation {
                    let why = match reason {
                        ContainerEndReason::Unhealthy => ReleaseReason::Unhealthy,
                        _ => ReleaseReason::Lost,
                    };
                    self.end_allocation(ctx, a, why, Some(reason));
                }
            }
            _ => {}
        }
    }

    pub(super) fn container_gone(
        &mut self,
        ctx: Ctx,
        id: ContainerId,
        reason: &ContainerEndReason,
    ) {
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
        let reason = c.reason.clone().unwrap_or_else(|| reason.clone());
        c.reason = Some(reason.clone());
        let (state, kind) = if c.warm_at.is_some() {
            (ContainerState::Terminated, EventKind::ContainerTerminated)
        } else {
            (ContainerState::Failed, EventKind::ContainerFailed)
        };
        let mut body = EventBody::of_container(c).reason(reason);
        // A container retired unallocated: how long it took to go, which a replay of the
        // pool's history takes its teardowns from (a released one's `container_released`
        // event already says when it was let go).
        if let (Some(retired), None) = (c.released_at, c.allocated_at) {
            body.detail = Some(serde_json::json!({
                "teardown_ms": ctx.at.0.saturating_sub(retired.0),
            }));
        }
        let node = c.node.clone();
        self.set_state(id, state, ctx.at);
        self.emit(ctx, kind, body);
        self.note_if_drained(ctx, &node);
    }

    /// Moves warm containers to their pool's paused tier (the leader then has their agents
    /// pause them). Only healthy warm containers of their pool's current generation move;
    /// any other id (allocated meanwhile, retired, unknown) is skipped.
    pub(super) fn pause_containers(&mut self, ctx: Ctx, ids: Vec<ContainerId>) -> Response {
        for id in ids {
            let Some(c) = self.containers.get(&id) else {
                continue;
            };
            let current = self.pools.get(&c.pool).map(|p| p.generation);
            if c.state != ContainerState::Warm
                || c.health != Health::Healthy
                || Some(c.generation) != current
            {
                continue;
            }
            self.set_state(id, ContainerState::Paused, ctx.at);
            let body = EventBody::of_container(&self.containers[&id]);
            self.emit(ctx, EventKind::ContainerPaused, body);
        }
        Response::Ok
    }

    /// Restarts an allocated, unhealthy container in place, once.
    pub(super) fn restart_container(&mut self, ctx: Ctx, id: ContainerId) -> Response {
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
}
