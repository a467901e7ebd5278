//! Keeping pools warm: the plan of [`crate::keepwarm`] (how many containers each pool needs,
//! where they go, which to retire for a rollout or a smaller pool) turned into writes, with
//! pools and nodes whose creates keep failing held back.

use tracing::warn;
use warmpool_proto::agent::AgentCommand;
use warmpool_proto::records::NodeStatus;
use warmpool_proto::ContainerId;

use super::{Effect, Engine, Facts, Now};
use crate::keepwarm::{self, Decision};
use crate::reconcile::create_spec_for;
use crate::state::{Command, PoolState};

pub(super) fn keep_warm(e: &mut Engine, s: &PoolState, facts: &Facts, now: Now) -> Vec<Effect> {
    let mut loads = keepwarm::node_loads(s, |n| facts.memory_fraction(n));
    for l in loads.iter_mut() {
        l.failed_images = facts.failed_images(&l.id);
    }
    for l in loads.iter_mut().filter(|l| {
        facts.suspicion(&l.id, now.mono).is_some() || e.failures.node_avoided(&l.id, now.mono)
    }) {
        // Not to be placed on while its reports are not trusted or its creates keep failing.
        l.status = NodeStatus::Cordoned;
    }
    let decisions = keepwarm::plan(s, &loads, &e.last_batch, now.wall, e.config.overcommit);
    let mut out = Vec::new();
    for d in decisions {
        match d {
            Decision::Create { pool, .. } if e.failures.pool_waiting(&pool, now.mono) => {}
            Decision::Create {
                pool,
                generation,
                nodes,
            } => {
                e.last_batch.insert(pool.clone(), now.wall);
                e.stuck.remove(&pool);
                let placements: Vec<_> =
                    nodes.into_iter().map(|n| (ContainerId::new(), n)).collect();
                // The creates go out as soon as the plan is in the state rather than on the
                // next step: this is the refill path after an allocation.
                let then = placements
                    .iter()
                    .filter_map(|(id, node)| {
                        let spec = create_spec_for(s, &pool, generation, *id)?;
                        Some(Effect::Send {
                            node: node.clone(),
                            cmd: AgentCommand::Create(spec),
                        })
                    })
                    .collect();
                metrics::counter!("warmpool_keepwarm_planned_total", "pool" => pool.to_string())
                    .increment(placements.len() as u64);
                out.push(Effect::Propose {
                    cmd: Command::PlanContainers {
                        pool,
                        generation,
                        placements,
                    },
                    then,
                });
            }
            Decision::Retire { ids, reason } => {
                metrics::counter!("warmpool_keepwarm_retired_total", "reason" => reason.to_string())
                    .increment(ids.len() as u64);
                out.push(Effect::propose(Command::RetireContainers {
                    ids,
                    reason: reason.into(),
                    timed: true,
                }));
            }
            Decision::Pause { ids } => {
                // Written first, so no allocation takes them as warm while they freeze; the
                // agents pause them once the write is in (an allocation that takes one from
                // the paused tier meanwhile unpauses it, and the agent refuses a pause that
                // comes after that unpause).
                let then = ids
                    .iter()
                    .filter_map(|id| {
                        let node = s.container(id)?.node.clone();
                        Some(Effect::Send {
                            node,
                            cmd: AgentCommand::Pause { id: *id },
                        })
                    })
                    .collect();
                metrics::counter!("warmpool_keepwarm_paused_total").increment(ids.len() as u64);
                out.push(Effect::Propose {
                    cmd: Command::PauseContainers { ids },
                    then,
                });
            }
            Decision::Stuck { pool, reason } => {
                if e.stuck.get(&pool) != Some(&reason) {
                    warn!(%pool, %reason, "pool cannot grow");
                    e.stuck.insert(pool, reason);
                }
            }
        }
    }
    out
}
