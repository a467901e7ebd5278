//! Eviction: the oldest events, ended containers and released allocations beyond the
//! [`Retention`] caps leave the state at the end of every applied entry.
//!
//! Deterministic: what is evicted depends only on the state and the caps, both replicated,
//! so every member evicts the same records at the same log index, and hands them to its own
//! archive ([`PoolState::take_evicted`]).

use warmpool_proto::{Event, EventKind, TenantId};

use super::super::{scoped_key, Evicted, PoolState, Response, Retention};

impl PoolState {
    /// Evicts down to the caps; the records go to the evicted buffer when collecting.
    pub(super) fn evict(&mut self, index: u64) {
        let caps = self.retention;
        let mut out = Evicted {
            index,
            ..Default::default()
        };
        // Events first: their tenant is looked up among allocations still held.
        while self.events.len() > caps.events {
            let Some(e) = self.events.pop_front() else {
                break;
            };
            if self.collect_evicted {
                let tenant = self.event_tenant(&e);
                out.events.push((e, tenant));
            }
        }
        while self.ended_containers.len() > caps.ended_containers {
            let Some(old) = self.ended_containers.pop_front() else {
                break;
            };
            if let Some(gone) = self.containers.remove(&old) {
                self.unindex_container(&gone);
                super::super::touch(&mut self.node_changed, &gone.node, index);
                if self.collect_evicted {
                    let tenant = gone
                        .allocation
                        .and_then(|a| self.allocations.get(&a))
                        .map(|a| a.tenant.clone());
                    out.containers.push((gone, tenant));
                }
            }
        }
        while self.released_allocations.len() > caps.released_allocations {
            let Some(old) = self.released_allocations.pop_front() else {
                break;
            };
            if let Some(gone) = self.allocations.remove(&old) {
                if let Some(key) = &gone.idempotency_key {
                    self.idempotency.remove(&scoped_key(&gone.tenant, key));
                }
                if self.collect_evicted {
                    out.allocations.push(gone);
                }
            }
        }
        if !out.is_empty() {
            self.evicted.push(out);
        }
    }

    /// The tenant an event belongs to: its allocation's (from the record, or for one never
    /// granted, from the tenant its event carries); none for events of no allocation.
    pub(crate) fn event_tenant(&self, e: &Event) -> Option<TenantId> {
        let a = e.allocation?;
        if let Some(a) = self.allocations.get(&a) {
            return Some(a.tenant.clone());
        }
        e.detail
            .as_ref()
            .and_then(|d| d.get("tenant"))
            .and_then(|t| t.as_str())
            .and_then(|t| TenantId::new(t).ok())
    }

    pub(super) fn set_retention(&mut self, retention: Retention) -> Response {
        if let Err(e) = retention.validate() {
            return Response::rejected(super::super::RejectCode::Invalid, e);
        }
        self.retention = retention;
        Response::Ok
    }

    /// Starts (or stops) keeping evicted records for [`PoolState::take_evicted`]. A member
    /// that archives turns it on; tests of the state alone leave it off, and evicted records
    /// are dropped.
    pub fn collect_evicted(&mut self, on: bool) {
        self.collect_evicted = on;
        if !on {
            self.evicted.clear();
        }
    }

    /// The records evicted since the last call, oldest first.
    pub fn take_evicted(&mut self) -> Vec<Evicted> {
        std::mem::take(&mut self.evicted)
    }

    /// The caps in force.
    pub fn retention(&self) -> Retention {
        self.retention
    }
}

/// Whether a tenant-scoped reader may see an archived event of `tenant` (none: of no
/// allocation): the rule of the live event log, for records no longer in the state.
pub fn tenant_sees_event(reader: &TenantId, e: &Event, tenant: Option<&TenantId>) -> bool {
    if matches!(e.kind, EventKind::KeyCreated | EventKind::KeyRevoked) {
        return false;
    }
    match (tenant, &e.allocation, &e.session) {
        (Some(t), _, _) => t == reader,
        (None, None, None) => true,
        _ => false,
    }
}
