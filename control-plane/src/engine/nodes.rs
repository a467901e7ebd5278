//! Nodes: which are alive (the rules are in [`crate::liveness`]), which are cordoned because
//! two agents claim them, and what each one's agent must be told so that its containers match
//! their records (the rules are in [`crate::reconcile`]).

use tracing::{info, warn};
use warmpool_proto::agent::AgentCommand;
use warmpool_proto::records::NodeStatus;
use warmpool_proto::{ContainerEndReason, ContainerId, ContainerState};

use super::{Effect, Engine, Facts, Now};
use crate::agents::Suspicion;
use crate::liveness;
use crate::reconcile::{self, Action};
use crate::state::{Command, PoolState};

/// Joins nodes that announce themselves, marks and downs nodes that went quiet (only on
/// silence heard while this member could hear them), gives up on nodes down too long, and
/// cordons a node two agents claim until an operator fixes it.
pub(super) fn liveness(e: &Engine, s: &PoolState, facts: &Facts, now: Now) -> Vec<Effect> {
    let link = facts.link;
    let clock = liveness::Clock {
        now: now.mono,
        wall: now.wall,
        hearing_since: link
            .connected
            .then(|| link.since.map_or(e.since, |t| t.max(e.since))),
        node_timeout: e.config.node_timeout,
        node_lost: e.config.node_lost,
    };
    let decided = liveness::plan(s, &facts.nodes, clock);
    let cordons = s
        .nodes()
        .filter(|n| n.status == NodeStatus::Ready)
        .filter_map(|n| match facts.suspicion(&n.id, now.mono) {
            Some(Suspicion::TwoAgents(why)) => Some(Command::SetNodeStatus {
                node: n.id.clone(),
                status: NodeStatus::Cordoned,
                reason: Some(why),
                drain_deadline: None,
            }),
            _ => None,
        });
    decided
        .into_iter()
        .chain(cordons)
        .inspect(|cmd| match cmd {
            Command::NodeDown { node, reason } => warn!(%node, %reason, "node down"),
            Command::NodeLost { node } => {
                warn!(%node, after = ?e.config.node_lost, "node down too long: its allocations are lost")
            }
            Command::MarkUnreachable {
                node,
                reason: Some(r),
            } => warn!(%node, reason = r.as_str(), "node unreachable: no grants on it"),
            Command::MarkUnreachable { node, reason: None } => {
                info!(%node, "node reachable again")
            }
            _ => {}
        })
        .map(Effect::propose)
        .collect()
}

/// Records what agents said of their own containers: gone, or failed to create.
pub(super) fn record_gone(s: &PoolState, facts: &Facts) -> Vec<Effect> {
    let gone: Vec<(ContainerId, ContainerEndReason)> = facts
        .gone
        .iter()
        .filter(|(node, id, _)| s.container(id).is_some_and(|c| &c.node == node))
        .map(|(_, id, reason)| (*id, reason.clone()))
        .collect();
    if gone.is_empty() {
        return vec![];
    }
    vec![Effect::propose(Command::ContainersGone { gone })]
}

/// Compares every node's records with its inventory, a part of the fleet per call (see
/// [`Engine::unfinished`]), in the order of node ids. A node found settled is not looked at
/// again until its inventory or its records change.
pub(super) fn reconcile(e: &mut Engine, s: &PoolState, facts: &Facts, now: Now) -> Vec<Effect> {
    let after = e.reconcile_after.take();
    if after.is_none() {
        // A new pass.
        // A create is in flight only while its record waits for it.
        e.inflight.creates.retain(|id, _| {
            s.container(id)
                .is_some_and(|c| c.state == ContainerState::Creating)
        });
        // A pause or unpause only while its container lives.
        e.inflight
            .pauses
            .retain(|id, _| s.container(id).is_some_and(|c| c.state.is_live()));
        // (A destroy is in flight until its agent answers, whatever the answer: see
        // `Engine::on_reply`.)
        e.settled
            .retain(|node, _| s.node(node).is_some_and(|n| n.status != NodeStatus::Down));
    }
    let nodes: Vec<_> = s
        .nodes()
        .filter(|n| n.status != NodeStatus::Down)
        .filter(|n| after.as_ref().is_none_or(|a| &n.id > a))
        .map(|n| (n.id.clone(), s.node_changed_at(&n.id)))
        .collect();
    let (mut looked_at, mut prev) = (0, None);
    let mut out = Vec::new();
    for (node, changed_at) in nodes {
        if looked_at >= e.config.reconcile_read_budget {
            // The rest after a fresh read.
            e.reconcile_after = prev;
            break;
        }
        prev = Some(node.clone());
        let (observed, version) = facts.observed(&node);
        if e.settled.get(&node) == Some(&(version, changed_at)) {
            continue;
        }
        looked_at += observed.map_or(0, |o| o.inventory.containers.len())
            + s.live_containers_on_count(&node);
        if facts.runtime_unavailable(&node) {
            // Its agent can neither make, destroy nor list containers now, and what it
            // listed before still runs (live restore): wait for it.
            continue;
        }
        e.settled.remove(&node);
        let actions = if facts.suspicion(&node, now.mono).is_some() {
            // Nothing it reports is trusted and a create would reach every agent claiming
            // it; only destroys (idempotent, harmless twice) go out.
            s.live_containers_on(&node)
                .filter(|c| c.state == ContainerState::Releasing)
                .filter(|c| !e.inflight.destroys.contains(&c.id))
                .map(|c| {
                    Action::Destroy(
                        c.id,
                        c.reason.clone().unwrap_or(ContainerEndReason::Released),
                    )
                })
                .collect()
        } else {
            let (actions, done) = reconcile::plan(s, &node, observed, &e.inflight, now.wall);
            if done {
                e.settled.insert(node.clone(), (version, changed_at));
            }
            actions
        };
        for action in actions {
            out.push(match action {
                Action::Observe(entries) => Effect::propose(Command::Observe {
                    node: node.clone(),
                    entries,
                }),
                Action::Gone(gone) => Effect::propose(Command::ContainersGone { gone }),
                Action::Create(spec) => Effect::Send {
                    node: node.clone(),
                    cmd: AgentCommand::Create(*spec),
                },
                Action::Destroy(id, reason) => Effect::Send {
                    node: node.clone(),
                    cmd: AgentCommand::Destroy { id, reason },
                },
                Action::Pause(id) => Effect::Send {
                    node: node.clone(),
                    cmd: AgentCommand::Pause { id },
                },
                Action::Unpause(id) => Effect::Send {
                    node: node.clone(),
                    cmd: AgentCommand::Unpause { id },
                },
            });
        }
    }
    out
}
