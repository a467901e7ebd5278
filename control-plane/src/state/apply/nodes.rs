//! Nodes: join, down, lost, unreachable, cordon and drain, and a node's failing condition.

use warmpool_proto::records::{NodeStatus, Unreachable, UnreachableReason};
use warmpool_proto::{
    ContainerEndReason, ContainerId, ContainerState, EventKind, Node, NodeId, Timestamp,
};

use super::{change_condition, Ctx, EventBody};
use crate::state::{touch, Condition, PoolState, RejectCode, Response};

impl PoolState {
    pub(super) fn node_join(
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

    pub(super) fn node_down(&mut self, ctx: Ctx, id: &NodeId, reason: &str) -> Response {
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
            .live_containers_on(id)
            .filter(|c| c.state != ContainerState::Allocated)
            .map(|c| c.id)
            .collect();
        for cid in on_node {
            self.container_gone(ctx, cid, &ContainerEndReason::NodeDown);
        }
        Response::Ok
    }

    pub(super) fn node_lost(&mut self, ctx: Ctx, id: &NodeId) -> Response {
        let Some(n) = self.nodes.get(id) else {
            return Response::rejected(RejectCode::NotFound, format!("no node {id}"));
        };
        if n.status != NodeStatus::Down {
            return Response::rejected(
                RejectCode::Conflict,
                format!("node {id} is {}, not down", n.status.as_str()),
            );
        }
        let on_node: Vec<ContainerId> = self.live_containers_on(id).map(|c| c.id).collect();
        for cid in on_node {
            self.container_gone(ctx, cid, &ContainerEndReason::NodeLost);
        }
        Response::Ok
    }

    pub(super) fn mark_unreachable(
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

    pub(super) fn set_node_status(
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
    pub(super) fn note_if_drained(&mut self, ctx: Ctx, id: &NodeId) {
        let draining = self
            .nodes
            .get(id)
            .is_some_and(|n| n.status == NodeStatus::Draining);
        if draining && self.live_containers_on_count(id) == 0 {
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
    pub(super) fn prefix_conflict(&self, id: &NodeId, prefix: &str) -> Option<String> {
        let other = self.nodes.values().find(|n| {
            &n.id != id && n.status != NodeStatus::Down && same_prefix(&n.ipv6_prefix, prefix)
        })?;
        Some(format!(
            "ipv6 prefix {prefix} is already node {}'s",
            other.id
        ))
    }

    /// A node's creates keep failing (`Some`) or work again (`None`).
    pub(super) fn set_node_condition(
        &mut self,
        ctx: Ctx,
        node: NodeId,
        condition: Option<Condition>,
    ) -> Response {
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
