//! Creates that keep failing: a pool (or node) whose containers fail before ever becoming
//! warm is backed off, instead of a create/destroy loop. A pool's condition is written to the
//! state, so status and events say why, and a new leader resumes the backoff from there.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use tokio::time::Instant;
use tracing::warn;
use warmpool_proto::{ContainerEndReason, EventKind, NodeId, PoolName};

use super::{Effect, Now};
use crate::state::{Command, Condition, EventFilter, PoolState};

/// Failures of a node's creates before the node itself is avoided for a while.
pub const NODE_FAILURES_TO_AVOID: u32 = 3;

/// Creates that failed in a row for a pool or node, and when to try again.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Backoff {
    /// The pool generation the failures were of (a new spec starts afresh).
    pub generation: u64,
    /// Failures in a row.
    pub failures: u32,
    /// Not before then.
    pub retry_at: Option<Instant>,
    /// The last failure's reason.
    pub reason: String,
    /// For a node: the pool generations whose creates failed there (empty when unknown, as
    /// for a backoff resumed from the state). When every one of them is replaced by a new
    /// spec, the failures said nothing about the node and its backoff ends.
    pub sources: BTreeSet<(PoolName, u64)>,
}

impl Backoff {
    /// Records a failure at `now`: 1 s after the first, doubling, at most a minute.
    pub fn record(&mut self, reason: &str, now: Instant) -> Duration {
        self.failures += 1;
        let delay =
            Duration::from_secs(1u64 << (self.failures - 1).min(6)).min(Duration::from_secs(60));
        self.retry_at = Some(now + delay);
        self.reason = reason.to_string();
        delay
    }

    /// Whether it is still too early to try again.
    pub fn waiting(&self, now: Instant) -> bool {
        self.retry_at.is_some_and(|t| t > now)
    }

    /// As written to the state, for status and events.
    fn condition(&self, now: Now) -> Condition {
        let left = self
            .retry_at
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(now.mono));
        Condition {
            reason: ContainerEndReason::parse(&self.reason),
            consecutive_failures: self.failures,
            retry_at: now.wall.plus(left),
        }
    }

    /// A backoff an earlier leader wrote to the state, picked up so that it goes on where
    /// that one stopped (and clears the condition when creates work again).
    fn resume(c: &Condition, generation: u64, now: Now) -> Self {
        let left = c.retry_at.0.saturating_sub(now.wall.0);
        Backoff {
            generation,
            failures: c.consecutive_failures,
            retry_at: Some(now.mono + Duration::from_millis(left)),
            reason: c.reason.to_string(),
            sources: Default::default(),
        }
    }
}

/// The backoffs of one term.
pub struct Failures {
    pub(super) pools: HashMap<PoolName, Backoff>,
    pub(super) nodes: HashMap<NodeId, Backoff>,
    /// Events read so far.
    seen: u64,
}

impl Failures {
    /// Picks up the conditions in the state; events before now are not read again.
    pub fn resume(s: &PoolState, now: Now) -> Self {
        Failures {
            pools: s
                .pool_conditions()
                .map(|(p, c)| {
                    let generation = s.pool(p).map_or(0, |p| p.generation);
                    (p.clone(), Backoff::resume(c, generation, now))
                })
                .collect(),
            nodes: s
                .node_conditions()
                .map(|(n, c)| (n.clone(), Backoff::resume(c, 0, now)))
                .collect(),
            seen: s.last_event_seq(),
        }
    }

    /// Whether creates of `pool` wait now.
    pub fn pool_waiting(&self, pool: &PoolName, now: Instant) -> bool {
        self.pools.get(pool).is_some_and(|b| b.waiting(now))
    }

    /// Whether `node` is avoided now.
    pub fn node_avoided(&self, node: &NodeId, now: Instant) -> bool {
        self.nodes
            .get(node)
            .is_some_and(|b| b.failures >= NODE_FAILURES_TO_AVOID && b.waiting(now))
    }

    /// Reads the containers that failed before becoming warm and those that became warm
    /// since the last call, and writes the conditions that changed.
    pub fn decide(&mut self, s: &PoolState, now: Now) -> Vec<Effect> {
        let filter = EventFilter {
            kinds: vec![EventKind::ContainerFailed, EventKind::ContainerWarm],
            ..Default::default()
        };
        let events = s.events_since(self.seen, &filter);
        self.seen = s.last_event_seq();
        // A changed spec starts afresh (the state machine cleared the condition already).
        let generations: HashMap<&PoolName, u64> =
            s.pools().map(|p| (&p.spec.name, p.generation)).collect();
        self.pools
            .retain(|pool, b| generations.get(pool) == Some(&b.generation));
        let mut changed: Vec<PoolName> = Vec::new();
        let mut nodes_changed: Vec<NodeId> = Vec::new();
        // A node whose failing creates were all of specs since changed is not to blame.
        self.nodes.retain(|node, b| {
            let current = b.sources.is_empty()
                || b.sources.iter().any(|(p, g)| generations.get(p) == Some(g));
            if !current && b.failures >= NODE_FAILURES_TO_AVOID {
                nodes_changed.push(node.clone());
            }
            current
        });
        for e in events {
            let (Some(pool), node) = (e.pool.clone(), e.node.clone()) else {
                continue;
            };
            if e.kind == EventKind::ContainerWarm {
                if self.pools.remove(&pool).is_some() {
                    changed.push(pool);
                }
                if let Some(n) = node {
                    if self
                        .nodes
                        .remove(&n)
                        .is_some_and(|b| b.failures >= NODE_FAILURES_TO_AVOID)
                    {
                        nodes_changed.push(n);
                    }
                }
                continue;
            }
            let reason = e.reason.clone().unwrap_or_default();
            // Only a container that ended before it was ever warm for a reason that says
            // making containers fails (not that it was no longer wanted).
            if !ContainerEndReason::parse(&reason).is_create_failure() {
                continue;
            }
            let generation = generations.get(&pool).copied().unwrap_or(0);
            let b = self.pools.entry(pool.clone()).or_insert_with(|| Backoff {
                generation,
                ..Default::default()
            });
            let delay = b.record(&reason, now.mono);
            warn!(%pool, %reason, retry_in = ?delay, "create failed; backing off");
            changed.push(pool.clone());
            if let Some(n) = node {
                let b = self.nodes.entry(n.clone()).or_default();
                b.record(&reason, now.mono);
                b.sources.insert((pool.clone(), generation));
                if b.failures == NODE_FAILURES_TO_AVOID {
                    warn!(node = %n, %reason, "creates keep failing on this node; avoiding it for a while");
                }
                if b.failures >= NODE_FAILURES_TO_AVOID {
                    nodes_changed.push(n);
                }
            }
        }
        changed.sort();
        changed.dedup();
        nodes_changed.sort();
        nodes_changed.dedup();
        let pools = changed.into_iter().map(|pool| {
            let condition = self.pools.get(&pool).map(|b| b.condition(now));
            Effect::propose(Command::SetPoolCondition { pool, condition })
        });
        // A node's condition is written once it is avoided, and cleared when it works again.
        let nodes = nodes_changed.into_iter().map(|node| {
            let condition = self.nodes.get(&node).map(|b| b.condition(now));
            Effect::propose(Command::SetNodeCondition { node, condition })
        });
        pools.chain(nodes).collect()
    }
}
