//! Applying one command: every state transition and the events it derives.
//!
//! This module dispatches each [`Command`] to the domain that owns it; the transitions live in
//! one file per domain: [`pools`], [`containers`], [`allocations`], [`nodes`], and [`keys`]
//! (API keys and tenants).

mod allocations;
mod containers;
mod evict;
pub use evict::tenant_sees_event;
mod keys;
mod nodes;
mod pools;

use warmpool_proto::{
    Container, ContainerId, Event, EventKind, NodeId, PoolName, SessionId, Timestamp,
};

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{Command, Condition, Pending, PoolState, RejectCode, Request, Response, WAIT_GRACE_MS};

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

    fn reason(mut self, reason: impl std::fmt::Display) -> Self {
        self.reason = Some(reason.to_string());
        self
    }
}

impl PoolState {
    /// Applies the entry at log `index`. Never fails: a command that cannot be carried out
    /// answers [`Response::Rejected`] and leaves the state as it was.
    pub fn apply(&mut self, index: u64, req: Request) -> Response {
        self.applied_index = index;
        let response = match req.cmd {
            Command::Batch { requests } => Response::Batch {
                responses: requests
                    .into_iter()
                    .map(|r| self.apply_one(index, r))
                    .collect(),
            },
            cmd => self.apply_one(index, Request { at: req.at, cmd }),
        };
        // Old records beyond the caps leave the state once per entry, in log order.
        self.evict(index);
        response
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
            Command::RetireContainers { ids, reason, timed } => {
                for id in ids {
                    self.retire(ctx, id, &reason, timed);
                }
                Response::Ok
            }
            Command::PauseContainers { ids } => self.pause_containers(ctx, ids),
            Command::UnpauseFailed {
                allocation_id,
                container,
            } => self.unpause_failed(ctx, allocation_id, container),
            Command::Allocate {
                allocation_id,
                pool,
                session,
                lease_ms,
                idempotency_key,
                wait_ms,
                tenant,
                metadata,
                with_settings,
                workspace,
                token_sha256,
                asynchronous,
                location,
                max_lifetime_secs,
            } => {
                let req = Pending {
                    allocation_id,
                    session,
                    lease_ms,
                    idempotency_key,
                    tenant,
                    metadata,
                    with_settings,
                    workspace,
                    token_sha256,
                    since: ctx.at,
                    // A little past the requester's own deadline, so its CancelWait lands
                    // first; this only matters when the requester is gone.
                    // An asynchronous one has no requester waiting: it stays until granted
                    // or cancelled.
                    deadline: if asynchronous {
                        Timestamp(u64::MAX)
                    } else {
                        ctx.at.plus_millis(wait_ms + WAIT_GRACE_MS)
                    },
                    asynchronous,
                    location,
                    max_lifetime_secs,
                };
                self.allocate(ctx, pool, req, wait_ms > 0 || asynchronous)
            }
            Command::CancelWait { allocation_id } => self.cancel_wait(allocation_id),
            Command::Abandon {
                allocation_id,
                grace_ms,
                idempotency_key,
                tenant,
            } => self.abandon(ctx, allocation_id, grace_ms, idempotency_key, tenant),
            // Session settings (issue 16): only the outcome is replicated, never the values.
            Command::SettingsDelivered {
                allocation_id,
                state,
            } => self.settings_delivered(allocation_id, state),
            Command::WorkspaceRestored {
                allocation_id,
                state,
            } => self.workspace_restored(allocation_id, state),
            Command::PutTenant { tenant, quota } => self.put_tenant(tenant, quota),
            Command::DeleteTenant { tenant } => self.delete_tenant(&tenant),
            Command::Batch { .. } => {
                Response::rejected(RejectCode::Invalid, "a batch cannot hold a batch")
            }
            Command::RestartContainer { id } => self.restart_container(ctx, id),
            Command::SetPoolCondition { pool, condition } => {
                self.set_pool_condition(ctx, pool, condition)
            }
            Command::SetNodeCondition { node, condition } => {
                self.set_node_condition(ctx, node, condition)
            }
            Command::CreateKey { key } => self.create_key(ctx, key),
            Command::RevokeKey { id } => self.revoke_key(ctx, id),
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
            Command::SetRetention { retention } => self.set_retention(retention),
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
                reason: Some(c.reason.to_string()),
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
