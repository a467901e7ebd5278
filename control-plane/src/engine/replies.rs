//! What the engine makes of agents' answers to the commands it sent.

use tracing::{debug, warn};
use warmpool_proto::agent::{AgentCommand, AgentReply};
use warmpool_proto::{ContainerEndReason, ContainerId, NodeId};

use super::{Effect, Engine};
use crate::agents::AgentError;
use crate::state::{Command, PoolState};

/// A command that was sent, as the answer to it is matched with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sent {
    /// A create of this container.
    Create(ContainerId),
    /// A destroy of this container.
    Destroy(ContainerId),
    /// A restart of this container.
    Restart(ContainerId),
    /// A pause or unpause of this container.
    Pause(ContainerId),
    /// Anything else: the answer changes nothing.
    Other,
}

impl Sent {
    /// What `cmd` is, for matching its answer.
    pub fn of(cmd: &AgentCommand) -> Self {
        match cmd {
            AgentCommand::Create(spec) => Sent::Create(spec.id),
            AgentCommand::Destroy { id, .. } => Sent::Destroy(*id),
            AgentCommand::Restart { id } => Sent::Restart(*id),
            AgentCommand::Pause { id } | AgentCommand::Unpause { id } => Sent::Pause(*id),
            _ => Sent::Other,
        }
    }
}

impl Engine {
    /// Several answers at once, as they queue up under load: what each one asks, with the
    /// containers they report gone recorded in one write and each node's inventory asked
    /// for once. (One write per answer made a leader that destroys hundreds of containers a
    /// second fall behind: the answers waited for each other's commits.)
    pub fn on_replies(
        &mut self,
        state: &PoolState,
        replies: impl IntoIterator<Item = (NodeId, Sent, Result<AgentReply, AgentError>)>,
    ) -> Vec<Effect> {
        let mut gone = Vec::new();
        let mut pulls: Vec<NodeId> = Vec::new();
        let mut out = Vec::new();
        for (node, sent, reply) in replies {
            for effect in self.on_reply(state, &node, sent, reply) {
                match effect {
                    Effect::Propose {
                        cmd: Command::ContainersGone { gone: g },
                        then,
                    } if then.is_empty() => gone.extend(g),
                    Effect::Pull(n) => {
                        if !pulls.contains(&n) {
                            pulls.push(n);
                        }
                    }
                    other => out.push(other),
                }
            }
        }
        if !gone.is_empty() {
            out.insert(0, Effect::propose(Command::ContainersGone { gone }));
        }
        out.extend(pulls.into_iter().map(Effect::Pull));
        out
    }

    /// The agent of `node` answered `reply` to `sent` (or did not answer: `Err`).
    pub fn on_reply(
        &mut self,
        state: &PoolState,
        node: &NodeId,
        sent: Sent,
        reply: Result<AgentReply, AgentError>,
    ) -> Vec<Effect> {
        match (sent, reply) {
            (Sent::Create(_), Ok(AgentReply::Accepted)) => vec![],
            (Sent::Create(id), Ok(AgentReply::Error { message })) => {
                warn!(%node, container = %id, error = %message, "create refused");
                vec![Effect::propose(Command::ContainersGone {
                    gone: vec![(id, ContainerEndReason::CreateFailed { message })],
                })]
            }
            (Sent::Create(id), Err(e @ (AgentError::NoAgent(_) | AgentError::Timeout(..)))) => {
                // Sent again by reconciliation once the resend interval passes.
                debug!(%node, container = %id, error = %e, "create not delivered; will resend");
                vec![]
            }
            (Sent::Destroy(id), Ok(AgentReply::Destroyed { .. })) => {
                self.inflight.destroys.remove(&id);
                let mut out = vec![];
                if state.container(&id).is_some_and(|c| c.state.is_live()) {
                    out.push(Effect::propose(Command::ContainersGone {
                        gone: vec![(id, ContainerEndReason::Destroyed)],
                    }));
                }
                // The inventory held still lists it until the next pull.
                out.push(Effect::Pull(node.clone()));
                out
            }
            (Sent::Destroy(id), other) => {
                self.inflight.destroys.remove(&id);
                debug!(%node, container = %id, reply = ?other, "destroy not confirmed; will resend");
                vec![]
            }
            (Sent::Restart(_), Ok(AgentReply::Restarted)) => vec![Effect::Pull(node.clone())],
            (Sent::Pause(_), Ok(AgentReply::Paused | AgentReply::Unpaused)) => vec![],
            (Sent::Pause(id), other) => {
                // Reconciliation sends it again while the inventory disagrees with the record.
                debug!(%node, container = %id, reply = ?other, "pause or unpause not carried out");
                vec![]
            }
            (sent, other) => {
                warn!(%node, ?sent, reply = ?other, "unexpected answer from agent");
                vec![]
            }
        }
    }
}
