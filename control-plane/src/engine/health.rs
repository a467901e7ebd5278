//! An allocated container failing its health check is restarted in place once (its session
//! keeps its address). The restart is recorded in the state first, so it happens at most once
//! whatever fails afterwards; a restart whose command was lost is asked for again now and then.

use std::time::Duration;

use tracing::info;
use warmpool_proto::agent::AgentCommand;
use warmpool_proto::{ContainerState, Health};

use super::{Effect, Engine, Facts, Now};
use crate::state::{Command, PoolState};

/// A restart not yet seen done is sent again after this long.
pub const RESTART_RESEND: Duration = Duration::from_secs(15);

pub(super) fn restart_unhealthy(
    e: &mut Engine,
    s: &PoolState,
    facts: &Facts,
    now: Now,
) -> Vec<Effect> {
    let allocated = || {
        s.containers()
            .filter(|c| c.state == ContainerState::Allocated)
    };
    let mut out = Vec::new();
    for c in allocated().filter(|c| c.restarts == 0 && matches!(c.health, Health::Unhealthy { .. }))
    {
        if facts.suspicion(&c.node, now.mono).is_some() {
            continue;
        }
        info!(container = %c.id, node = %c.node, "restarting an unhealthy allocated container in place");
        out.push(Effect::Propose {
            cmd: Command::RestartContainer { id: c.id },
            then: vec![Effect::Send {
                node: c.node.clone(),
                cmd: AgentCommand::Restart { id: c.id },
            }],
        });
    }
    let pending: Vec<_> = allocated().filter(|c| c.restart_pending).collect();
    e.restarts_sent
        .retain(|id, _| pending.iter().any(|c| &c.id == id));
    for c in pending {
        let due = e
            .restarts_sent
            .get(&c.id)
            .is_none_or(|at| now.mono.saturating_duration_since(*at) > RESTART_RESEND);
        if due {
            out.push(Effect::Send {
                node: c.node.clone(),
                cmd: AgentCommand::Restart { id: c.id },
            });
        }
    }
    out
}
