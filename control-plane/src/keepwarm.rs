//! Keep-warm: how many containers each pool should make or retire now. Pure: state and loads
//! in, decisions out; the leader loop carries them out.
//!
//! Per pool, the *supply* is warm, healthy containers of the current generation on nodes that
//! may hand them out, plus those being made. Below the wanted count the pool grows by at most
//! `batch_size` per `pacing_ms`, with at most two batches being made at once, never past
//! `max_total`. It retires, a batch at a time: containers of an older generation (never handed
//! out; warm ones stay as stand-ins until new ones are warm in their places), warm containers
//! beyond what is wanted, and warm containers on draining nodes once the rest of the fleet
//! holds enough.

use std::collections::{BTreeMap, HashMap, HashSet};

use warmpool_proto::records::{NodeStatus, Pool, Resources};
use warmpool_proto::{
    Container, ContainerId, ContainerState, Health, NodeId, PoolName, RetireReason, Timestamp,
};

use warmpool_policy::rules::{self, Pacing, PoolCounts, Resize};

use warmpool_proto::api::Location;

use crate::placement::{self, NodeLoad, Overcommit};
use crate::state::PoolState;

/// A decision for the leader loop to carry out.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Plan new containers of `pool` on these nodes (one entry per container).
    Create {
        /// The pool.
        pool: PoolName,
        /// The generation they are for.
        generation: u64,
        /// One node per new container.
        nodes: Vec<NodeId>,
    },
    /// Take these containers out of the pool.
    Retire {
        /// The containers.
        ids: Vec<ContainerId>,
        /// Why.
        reason: RetireReason,
    },
    /// Move these warm containers to the pool's paused tier (written, then their agents
    /// pause them).
    Pause {
        /// The containers.
        ids: Vec<ContainerId>,
    },
    /// The pool is short and no node can take more; the reason is for logs and status.
    Stuck {
        /// The pool.
        pool: PoolName,
        /// Why.
        reason: String,
    },
}

/// Plans every pool. `last_batch` holds when each pool last asked for containers.
pub fn plan(
    state: &PoolState,
    loads: &[NodeLoad],
    last_batch: &BTreeMap<PoolName, Timestamp>,
    now: Timestamp,
    over: Overcommit,
) -> Vec<Decision> {
    let mut out = Vec::new();
    // Nodes whose warm containers may be handed out (looked up once per container below).
    let offering: HashSet<&NodeId> = state
        .nodes()
        .filter(|n| matches!(n.status, NodeStatus::Ready | NodeStatus::Cordoned))
        .map(|n| &n.id)
        .collect();
    for pool in state.pools() {
        plan_pool(
            state,
            pool,
            &offering,
            loads,
            last_batch.get(&pool.spec.name).copied(),
            now,
            over,
            &mut out,
        );
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn plan_pool(
    state: &PoolState,
    pool: &Pool,
    offering: &HashSet<&NodeId>,
    loads: &[NodeLoad],
    last_batch: Option<Timestamp>,
    now: Timestamp,
    over: Overcommit,
    out: &mut Vec<Decision>,
) {
    let spec = &pool.spec;
    let name = &spec.name;
    let batch = spec.scaling.batch_size as usize;

    // Counts first, from the tallies (no scan of the pool's containers): what the decisions
    // below need in the common case. Ids are looked up only for a decision that retires some.
    let current = pool.generation;
    let (mut live, mut creating, mut warm_current, mut draining_warm) = (0, 0, 0, 0);
    // The paused tier (healthy, current generation, on nodes that may hand them out).
    let mut paused_current = 0;
    // Older generations: warm healthy ones (stand-ins while the rollout goes on), and the rest
    // (being made, or unhealthy), which nothing is waiting for.
    let (mut stale_warm, mut stale_other) = (0, 0);
    let mut per_node: HashMap<&NodeId, u32> = HashMap::new();
    // Warm (offered) and being made, of the current generation, per node: what allocations
    // asking for a location may get there.
    let mut supply_on: HashMap<&NodeId, usize> = HashMap::new();
    for (node, gens) in state.tallies_of(name) {
        let offers = offering.contains(node);
        if let Some(t) = gens.get(&current) {
            let warm = if offers { t.warm() + t.paused() } else { 0 };
            supply_on.insert(node, (warm + t.creating()) as usize);
        }
        let mut on_node = 0;
        for (generation, t) in gens {
            live += (t.creating() + t.warm_any() + t.paused_any() + t.allocated()) as usize;
            on_node += t.live();
            if *generation != current {
                stale_warm += t.warm() as usize;
                // Paused ones of an older spec are not stand-ins (they would need unpausing
                // to serve, and are never handed out): they go at once.
                stale_other += (t.creating() + t.warm_any() - t.warm() + t.paused_any()) as usize;
            } else {
                creating += t.creating() as usize;
                // Unhealthy warm containers are neither offered nor drained: they are retired.
                if offers {
                    warm_current += t.warm() as usize;
                    paused_current += t.paused() as usize;
                } else {
                    draining_warm += (t.warm() + t.paused()) as usize;
                }
            }
        }
        per_node.insert(node, on_node);
    }
    let usable_in = |c: &Container, state: ContainerState| {
        c.state == state && c.generation == current && !matches!(c.health, Health::Unhealthy { .. })
    };
    let usable = |c: &Container| usable_in(c, ContainerState::Warm);
    let paused_wanted = rules::paused_wanted(spec) as usize;

    // Waiting allocations are demand the pool must meet now, on top of its warm target; those
    // asking for a location are met on matching nodes (below), the rest anywhere.
    let located = located_demand(state, name);
    let located_waiting: usize = located.iter().map(|(_, n)| n).sum();
    let wanted = state.wanted(pool) as usize + state.waiting(name) - located_waiting;
    let supply = warm_current + creating;

    // A rolling update. Containers of an older generation are never handed out, but the warm
    // healthy ones stay, as stand-ins, until warm containers of the current one take their
    // places: the pool never holds fewer warm containers than it wants while the new ones are
    // made (at the pool's batch size and pacing, like any growth). What nothing waits for goes
    // at once, a batch at a time: old containers still being made or unhealthy, stand-ins
    // beyond what is wanted, and stand-ins whose slots under `max_total` the next batch needs.
    let stale = stale_warm + stale_other;
    let mut making_room = false;
    if stale > 0 {
        let stand_ins =
            stale_warm.min((wanted + paused_wanted).saturating_sub(warm_current + paused_current));
        let next_batch = (wanted + paused_wanted)
            .saturating_sub(supply + paused_current)
            .min(batch);
        let room_needed = (live + next_batch).saturating_sub(spec.max_total as usize);
        let n = (stale - stand_ins).max(room_needed.min(stale)).min(batch);
        making_room = room_needed > 0;
        if n > 0 {
            // Those nothing waits for first, then the stand-ins that have been warm longest.
            let rank = |c: &Container| match (c.state, c.health) {
                (ContainerState::Creating, _) | (_, Health::Unhealthy { .. }) => 0,
                _ => 1,
            };
            let mut old: Vec<&Container> = state
                .containers_of(name)
                .filter(|c| {
                    matches!(
                        c.state,
                        ContainerState::Creating | ContainerState::Warm | ContainerState::Paused
                    ) && c.generation != current
                })
                .collect();
            old.sort_by_key(|c| (rank(c), c.warm_at.unwrap_or(c.created_at)));
            out.push(Decision::Retire {
                ids: old.into_iter().take(n).map(|c| c.id).collect(),
                reason: RetireReason::SpecChanged,
            });
        }
    }

    // Draining nodes give up their warm containers once the rest holds enough.
    if draining_warm > 0 && warm_current + paused_current >= wanted + paused_wanted {
        let ids = state
            .containers_of(name)
            .filter(|c| {
                (usable(c) || usable_in(c, ContainerState::Paused)) && !offering.contains(&c.node)
            })
            .map(|c| c.id)
            .take(batch)
            .collect();
        out.push(Decision::Retire {
            ids,
            reason: RetireReason::Drain,
        });
    }

    let mut pool_loads = loads.to_vec();
    for l in &mut pool_loads {
        l.pool_count = per_node.get(&l.id).copied().unwrap_or(0);
        // Its agent cannot pull the pool's image now: creates there would only fail (it
        // retries the pull on its own, and the node takes the pool again once it works).
        if l.failed_images.contains(&spec.image) && l.status == NodeStatus::Ready {
            l.status = NodeStatus::Cordoned;
        }
    }
    let mut room = (spec.max_total as usize).saturating_sub(live);
    for (location, count) in located {
        let supply: usize = pool_loads
            .iter()
            .filter(|l| placement::location_rank(&l.labels, location).is_some())
            .map(|l| supply_on.get(&l.id).copied().unwrap_or(0))
            .sum();
        let n = count.saturating_sub(supply).min(batch).min(room);
        if n == 0 {
            continue;
        }
        let (nodes, why) = placement::place_located(pool_loads.clone(), spec, n, over, location);
        room -= nodes.len();
        if !nodes.is_empty() {
            for l in &mut pool_loads {
                l.pool_count += nodes.iter().filter(|n| **n == l.id).count() as u32;
            }
            out.push(Decision::Create {
                pool: name.clone(),
                generation: pool.generation,
                nodes,
            });
        }
        if let Some(why) = why {
            out.push(Decision::Stuck {
                pool: name.clone(),
                reason: format!("for location {location:?}: {why}"),
            });
        }
    }

    let warm_counts = PoolCounts {
        wanted: wanted as u32,
        waiting: 0, // already in `wanted`
        warm: warm_current as u32,
        creating: creating as u32,
        // Containers just planned for located waiters count against `max_total` too.
        live: (live + (spec.max_total as usize).saturating_sub(live) - room) as u32,
    };
    // The paused tier fills from the warm tier's surplus (new containers start warm).
    let to_pause = rules::pause_count(
        warm_counts,
        paused_current as u32,
        paused_wanted as u32,
        batch as u32,
    );
    if to_pause > 0 {
        // The newest warm ones: allocations take the longest-warm first.
        let ids: Vec<ContainerId> = state
            .warm_of(name)
            .rev()
            .filter(|c| usable(c) && c.health == Health::Healthy && offering.contains(&c.node))
            .map(|c| c.id)
            .take(to_pause as usize)
            .collect();
        if !ids.is_empty() {
            out.push(Decision::Pause { ids });
        }
    }
    let counts = rules::tiered(warm_counts, paused_current as u32, paused_wanted as u32);
    let pacing = Pacing::of(spec);
    let n = match rules::resize(
        counts,
        pacing,
        last_batch.map(|t| t.as_millis()),
        now.as_millis(),
        None,
    ) {
        Resize::Retire(surplus) => {
            // Scale down: retire the newest warm containers first, keeping the longest-warm
            // ones that allocations take first (the warm index is ordered by when they
            // became warm); the paused tier gives up only its own surplus.
            let (from_warm, from_paused) = rules::retire_split(
                surplus,
                warm_current as u32,
                wanted as u32,
                paused_current as u32,
                paused_wanted as u32,
            );
            let mut ids: Vec<ContainerId> = state
                .warm_of(name)
                .rev()
                .filter(|c| usable(c) && offering.contains(&c.node))
                .map(|c| c.id)
                .take(from_warm as usize)
                .collect();
            ids.extend(
                state
                    .paused_of(name)
                    .rev()
                    .filter(|c| usable_in(c, ContainerState::Paused) && offering.contains(&c.node))
                    .map(|c| c.id)
                    .take(from_paused as usize),
            );
            out.push(Decision::Retire {
                ids,
                reason: RetireReason::ScaleDown,
            });
            return;
        }
        Resize::Hold | Resize::Paced { .. } => return,
        // Old containers are leaving to make room: not stuck.
        Resize::Full if making_room => return,
        Resize::Full => {
            out.push(Decision::Stuck {
                pool: name.clone(),
                reason: format!("at max_total ({})", spec.max_total),
            });
            return;
        }
        Resize::Create(n) => n as usize,
    };
    let (nodes, why) = placement::place(pool_loads, spec, n, over);
    if !nodes.is_empty() {
        out.push(Decision::Create {
            pool: name.clone(),
            generation: pool.generation,
            nodes,
        });
    }
    if let Some(why) = why {
        let reason = if loads.is_empty() {
            "no nodes have joined".to_string()
        } else {
            why.to_string()
        };
        out.push(Decision::Stuck {
            pool: name.clone(),
            reason,
        });
    }
}

/// Waiting allocations of `pool` that ask for a location, counted per location (in the order
/// their first waiter came).
fn located_demand<'a>(state: &'a PoolState, pool: &PoolName) -> Vec<(&'a Location, usize)> {
    let mut out: Vec<(&Location, usize)> = Vec::new();
    let waiters = state
        .pending()
        .filter(|(p, _)| *p == pool)
        .flat_map(|(_, q)| q.iter());
    for w in waiters {
        let Some(loc) = &w.location else { continue };
        match out.iter_mut().find(|(l, _)| *l == loc) {
            Some((_, n)) => *n += 1,
            None => out.push((loc, 1)),
        }
    }
    out
}

/// What the live containers on each node reserve (releasing ones included): their pools'
/// resource limits. Nodes holding nothing are absent.
pub fn reservations(state: &PoolState) -> HashMap<&NodeId, Resources> {
    let mut reserved: HashMap<&NodeId, Resources> = HashMap::new();
    for pool in state.pools() {
        let per = &pool.spec.resources;
        for (node, gens) in state.tallies_of(&pool.spec.name) {
            let n = u64::from(gens.values().map(|t| t.live()).sum::<u32>());
            let r = reserved.entry(node).or_default();
            r.cpu_millis += per.cpu_millis * n;
            r.memory_mb += per.memory_mb * n;
        }
    }
    reserved
}

/// Loads of every node for placement: reservations from the state, memory from heartbeats.
pub fn node_loads(
    state: &PoolState,
    memory_fraction: impl Fn(&NodeId) -> Option<f64>,
) -> Vec<NodeLoad> {
    let reserved = reservations(state);
    state
        .nodes()
        .map(|n| NodeLoad {
            id: n.id.clone(),
            // A node marked unreachable keeps what it has and takes nothing new, as a
            // cordoned one.
            status: match (n.status, &n.unreachable) {
                (NodeStatus::Ready, Some(_)) => NodeStatus::Cordoned,
                (status, _) => status,
            },
            labels: n.labels.clone(),
            capacity: n.capacity,
            memory_fraction: memory_fraction(&n.id),
            reserved: reserved.get(&n.id).copied().unwrap_or_default(),
            pool_count: 0,
            failed_images: Default::default(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use warmpool_proto::agent::{InventoryEntry, ObservedStatus};
    use warmpool_proto::records::Resources;
    use warmpool_proto::{AllocationId, PoolSpec, SessionId};

    use super::*;
    use crate::state::{Command, Request};

    struct World {
        state: PoolState,
        index: u64,
    }

    impl World {
        fn new(nodes: &[&str]) -> Self {
            let mut w = World {
                state: PoolState::default(),
                index: 0,
            };
            for n in nodes {
                w.apply(Command::NodeJoin {
                    node: NodeId::new(*n).unwrap(),
                    ipv6_prefix: format!(
                        "fd36:{:x}::/64",
                        n.len() * 256 + n.bytes().map(usize::from).sum::<usize>()
                    ),
                    labels: BTreeMap::new(),
                    capacity: Resources {
                        cpu_millis: 2000,
                        memory_mb: 8192,
                    },
                    agent_version: "t".into(),
                });
            }
            w
        }
        fn apply(&mut self, cmd: Command) {
            self.index += 1;
            self.state.apply(
                self.index,
                Request {
                    at: Timestamp(self.index * 1000),
                    cmd,
                },
            );
            self.state.assert_indexes_consistent();
        }
        fn pool(&mut self, min_warm: u32, batch: u32) -> PoolName {
            let name = PoolName::new("demo").unwrap();
            let mut spec = PoolSpec::new(name.clone(), "img");
            spec.min_warm = min_warm;
            spec.scaling.batch_size = batch;
            self.apply(Command::PutPool { spec });
            name
        }
        fn decide(&self) -> Vec<Decision> {
            let loads = node_loads(&self.state, |_| Some(0.2));
            plan(
                &self.state,
                &loads,
                &BTreeMap::new(),
                Timestamp(10_000_000),
                Overcommit::default(),
            )
        }
        /// Carries out create decisions and makes every new container warm.
        fn carry_out(&mut self) {
            let planned = self.plan_creates(&self.decide());
            self.warm_up(planned);
        }
        /// Plans the containers these decisions create; they are `creating` until
        /// [`World::warm_up`].
        fn plan_creates(&mut self, ds: &[Decision]) -> Vec<(PoolName, u64, ContainerId, NodeId)> {
            let mut planned = Vec::new();
            for d in ds {
                if let Decision::Create {
                    pool,
                    generation,
                    nodes,
                } = d
                {
                    let placements: Vec<_> = nodes
                        .iter()
                        .map(|n| (ContainerId::new(), n.clone()))
                        .collect();
                    self.apply(Command::PlanContainers {
                        pool: pool.clone(),
                        generation: *generation,
                        placements: placements.clone(),
                    });
                    planned.extend(
                        placements
                            .into_iter()
                            .map(|(id, n)| (pool.clone(), *generation, id, n)),
                    );
                }
            }
            planned
        }
        /// The agent reports these containers running and healthy.
        fn warm_up(&mut self, planned: Vec<(PoolName, u64, ContainerId, NodeId)>) {
            for (pool, generation, id, node) in planned {
                self.apply(Command::Observe {
                    node,
                    entries: vec![InventoryEntry {
                        id,
                        pool,
                        generation,
                        docker_id: "d".into(),
                        ipv6: Some("fd36:1::5".parse().unwrap()),
                        status: ObservedStatus::Running,
                        health: Health::Healthy,
                        exit_code: None,
                        oom_killed: false,
                        last_activity_at: None,
                        paused: false,
                    }],
                });
            }
        }
    }

    #[test]
    fn a_tiered_pool_fills_both_tiers_pausing_the_warm_surplus() {
        let mut w = World::new(&["a"]);
        let name = PoolName::new("demo").unwrap();
        let mut spec = PoolSpec::new(name.clone(), "img");
        spec.min_warm = 2;
        spec.min_paused = 3;
        spec.scaling.batch_size = 10;
        w.apply(Command::PutPool { spec });
        // Both tiers' worth is made, all starting warm.
        assert_eq!(created(&w.decide()), 5);
        w.carry_out();
        // The warm surplus goes to the paused tier; nothing more is made.
        let d = w.decide();
        assert_eq!(created(&d), 0, "{d:?}");
        let paused: Vec<ContainerId> = d
            .iter()
            .find_map(|d| match d {
                Decision::Pause { ids } => Some(ids.clone()),
                _ => None,
            })
            .expect("a pause");
        assert_eq!(paused.len(), 3);
        w.apply(Command::PauseContainers { ids: paused });
        assert!(w.decide().is_empty(), "both tiers full");
        // A burst takes the 2 warm and 2 paused: 4 are made; once warm, 2 of them go to the
        // paused tier (the warm tier fills first).
        for i in 0..4 {
            w.apply(Command::plain_allocate(
                name.clone(),
                SessionId::new(format!("s{i}")).unwrap(),
                60_000,
            ));
        }
        assert_eq!(created(&w.decide()), 4);
        w.carry_out();
        let pauses: usize = w
            .decide()
            .iter()
            .map(|d| match d {
                Decision::Pause { ids } => ids.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(pauses, 2);
    }

    #[test]
    fn a_pool_without_the_tier_never_pauses() {
        let mut w = World::new(&["a"]);
        w.pool(3, 10);
        w.carry_out();
        assert!(w
            .decide()
            .iter()
            .all(|d| !matches!(d, Decision::Pause { .. })));
    }

    fn created(ds: &[Decision]) -> usize {
        ds.iter()
            .map(|d| {
                if let Decision::Create { nodes, .. } = d {
                    nodes.len()
                } else {
                    0
                }
            })
            .sum()
    }

    #[test]
    fn fills_a_pool_in_batches_spread_over_nodes() {
        let mut w = World::new(&["a", "b"]);
        w.pool(5, 2);
        let d = w.decide();
        assert_eq!(created(&d), 2, "one batch at a time: {d:?}");
        let Decision::Create { nodes, .. } = &d[0] else {
            panic!()
        };
        assert_ne!(nodes[0], nodes[1], "spread over nodes");
        w.carry_out();
        w.carry_out();
        w.carry_out();
        assert_eq!(w.state.pool_counts(&PoolName::new("demo").unwrap()).warm, 5);
        assert!(w.decide().is_empty(), "full pool: nothing to do");
    }

    #[test]
    fn a_located_waiter_has_a_container_made_on_a_matching_node() {
        use warmpool_proto::api::LocationValue;
        let mut w = World::new(&[]);
        for (n, region) in [("us1", "us"), ("eu1", "eu")] {
            w.apply(Command::NodeJoin {
                node: NodeId::new(n).unwrap(),
                ipv6_prefix: format!("fd36:{:x}::/64", n.bytes().map(u32::from).sum::<u32>()),
                labels: BTreeMap::from([("region".to_string(), region.to_string())]),
                capacity: Resources {
                    cpu_millis: 2000,
                    memory_mb: 8192,
                },
                agent_version: "t".into(),
            });
        }
        let p = w.pool(0, 4);
        let eu = BTreeMap::from([("region".to_string(), LocationValue::One("eu".into()))]);
        w.apply(Command::Allocate {
            allocation_id: AllocationId::new(),
            pool: p.clone(),
            session: SessionId::new("s").unwrap(),
            lease_ms: 60_000,
            idempotency_key: None,
            wait_ms: 0,
            tenant: Default::default(),
            metadata: Default::default(),
            with_settings: false,
            token_sha256: None,
            workspace: None,
            asynchronous: true,
            location: Some(eu),
            max_lifetime_secs: None,
        });
        let d = w.decide();
        assert_eq!(
            d,
            vec![Decision::Create {
                pool: p.clone(),
                generation: 1,
                nodes: vec![NodeId::new("eu1").unwrap()],
            }],
            "one container, in eu, for the one waiter"
        );
        let planned = w.plan_creates(&d);
        assert!(w.decide().is_empty(), "the one being made covers it");
        w.warm_up(planned);
        assert_eq!(w.state.waiting(&p), 0, "granted once warm");
        let a = w.state.allocations().next().unwrap();
        assert_eq!(a.node.as_str(), "eu1");
    }

    #[test]
    fn creating_containers_count_as_supply() {
        let mut w = World::new(&["a"]);
        let p = w.pool(3, 4);
        let d = w.decide();
        let Decision::Create {
            generation, nodes, ..
        } = d[0].clone()
        else {
            panic!()
        };
        w.apply(Command::PlanContainers {
            pool: p,
            generation,
            placements: nodes.into_iter().map(|n| (ContainerId::new(), n)).collect(),
        });
        assert!(
            w.decide().is_empty(),
            "three being made already cover min_warm 3"
        );
    }

    #[test]
    fn an_allocation_is_replaced() {
        let mut w = World::new(&["a"]);
        let p = w.pool(3, 4);
        w.carry_out();
        w.apply(Command::plain_allocate(
            p,
            SessionId::new("s").unwrap(),
            1000,
        ));
        assert_eq!(created(&w.decide()), 1);
    }

    #[test]
    fn never_beyond_max_total() {
        let mut w = World::new(&["a"]);
        let name = PoolName::new("demo").unwrap();
        let mut spec = PoolSpec::new(name.clone(), "img");
        spec.min_warm = 2;
        spec.max_total = 2;
        w.apply(Command::PutPool { spec });
        w.carry_out();
        for _ in 0..2 {
            w.apply(Command::plain_allocate(
                name.clone(),
                SessionId::new("s").unwrap(),
                1000,
            ));
        }
        let d = w.decide();
        assert_eq!(created(&d), 0);
        assert!(matches!(&d[..], [Decision::Stuck { .. }]), "{d:?}");
    }

    fn retired(ds: &[Decision], why: &str) -> Vec<ContainerId> {
        ds.iter()
            .flat_map(|d| match d {
                Decision::Retire { ids, reason } if reason.as_str() == why => ids.clone(),
                _ => vec![],
            })
            .collect()
    }

    /// Carries out retire decisions as the leader does.
    fn retire(w: &mut World, ids: &[ContainerId]) {
        if !ids.is_empty() {
            w.apply(Command::RetireContainers {
                ids: ids.to_vec(),
                reason: "spec_changed".into(),
                timed: true,
            });
        }
    }

    #[test]
    fn a_spec_change_makes_new_containers_before_it_retires_the_old_ones() {
        let mut w = World::new(&["a"]);
        let p = w.pool(2, 4);
        w.carry_out();
        let old: Vec<ContainerId> = w.state.containers_of(&p).map(|c| c.id).collect();
        let mut spec = w.state.pool(&p).unwrap().spec.clone();
        spec.image = "img:v2".into();
        w.apply(Command::PutPool { spec });

        // First the replacements; the old ones stand in while they are made.
        let d = w.decide();
        assert_eq!(created(&d), 2, "{d:?}");
        assert!(retired(&d, "spec_changed").is_empty(), "{d:?}");
        w.carry_out();
        // With the new ones warm, the old ones go, and nothing more is made.
        let d = w.decide();
        let mut gone = retired(&d, "spec_changed");
        gone.sort();
        let mut want = old.clone();
        want.sort();
        assert_eq!(gone, want, "{d:?}");
        assert_eq!(created(&d), 0);
    }

    #[test]
    fn a_rollout_goes_a_batch_at_a_time_and_never_below_the_floor() {
        let mut w = World::new(&["a", "b"]);
        let p = w.pool(6, 2);
        for _ in 0..3 {
            w.carry_out();
        }
        let mut spec = w.state.pool(&p).unwrap().spec.clone();
        spec.image = "img:v2".into();
        w.apply(Command::PutPool { spec });
        let generation = w.state.pool(&p).unwrap().generation;
        for step in 0.. {
            assert!(step < 20, "the rollout does not finish");
            // Each step: what the leader decides is carried out, and only then do the
            // containers it asked for become warm (making one takes time).
            let d = w.decide();
            assert!(created(&d) <= 2, "batches of 2: {d:?}");
            let gone = retired(&d, "spec_changed");
            assert!(gone.len() <= 2, "batches of 2: {d:?}");
            retire(&mut w, &gone);
            let planned = w.plan_creates(&d);
            // Warm containers of either spec: the new ones and the old stand-ins.
            let counts = w.state.pool_counts(&p);
            let warm = counts.warm + counts.outdated;
            assert!(warm >= 6, "step {step}: {warm} warm, below the floor");
            w.warm_up(planned);
            if w.state.containers_of(&p).all(|c| {
                c.generation == generation
                    || !matches!(c.state, ContainerState::Creating | ContainerState::Warm)
            }) {
                break;
            }
        }
        assert_eq!(w.state.pool_counts(&p).warm, 6);
    }

    #[test]
    fn a_rollout_at_max_total_retires_old_containers_to_make_room() {
        let mut w = World::new(&["a"]);
        let name = PoolName::new("demo").unwrap();
        let mut spec = PoolSpec::new(name.clone(), "img");
        spec.min_warm = 3;
        spec.max_total = 3;
        spec.scaling.batch_size = 2;
        w.apply(Command::PutPool { spec: spec.clone() });
        w.carry_out();
        w.carry_out();
        assert_eq!(w.state.pool_counts(&name).warm, 3);
        spec.image = "img:v2".into();
        w.apply(Command::PutPool { spec });
        let d = w.decide();
        assert_eq!(
            retired(&d, "spec_changed").len(),
            2,
            "room for a batch: {d:?}"
        );
        assert_eq!(created(&d), 0, "never past max_total: {d:?}");
        assert!(
            !d.iter().any(|d| matches!(d, Decision::Stuck { .. })),
            "making room is not stuck: {d:?}"
        );
        retire(&mut w, &retired(&d, "spec_changed"));
        assert_eq!(created(&w.decide()), 2);
    }

    #[test]
    fn scale_down_retires_the_surplus() {
        let mut w = World::new(&["a"]);
        let p = w.pool(1, 4);
        let mut spec = w.state.pool(&p).unwrap().spec.clone();
        spec.max_warm = Some(4);
        w.apply(Command::PutPool { spec });
        w.apply(Command::SetWanted {
            pool: p.clone(),
            wanted: 4,
            detail: None,
        });
        w.carry_out();
        assert_eq!(w.state.pool_counts(&p).warm, 4);
        w.apply(Command::SetWanted {
            pool: p,
            wanted: 1,
            detail: None,
        });
        let d = w.decide();
        assert!(
            matches!(&d[..], [Decision::Retire { ids, reason: RetireReason::ScaleDown }] if ids.len() == 3),
            "{d:?}"
        );
    }

    #[test]
    fn draining_node_hands_over_once_others_hold_enough() {
        let mut w = World::new(&["a", "b"]);
        let p = w.pool(2, 4);
        w.carry_out();
        w.apply(Command::SetNodeStatus {
            drain_deadline: None,
            node: NodeId::new("a").unwrap(),
            status: NodeStatus::Draining,
            reason: None,
        });
        let d = w.decide();
        assert_eq!(
            created(&d),
            1,
            "replacement for the draining node's container: {d:?}"
        );
        let Decision::Create { nodes, .. } = d
            .iter()
            .find(|d| matches!(d, Decision::Create { .. }))
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(nodes[0].as_str(), "b");
        w.carry_out();
        let d = w.decide();
        assert!(
            matches!(
                &d[..],
                [Decision::Retire {
                    reason: RetireReason::Drain,
                    ..
                }]
            ),
            "{d:?}"
        );
        let _ = p;
    }

    #[test]
    fn pacing_holds_the_next_batch() {
        let mut w = World::new(&["a"]);
        let p = w.pool(8, 2);
        let loads = node_loads(&w.state, |_| None);
        let last = BTreeMap::from([(p, Timestamp(10_000_000 - 50))]);
        let d = plan(
            &w.state,
            &loads,
            &last,
            Timestamp(10_000_000),
            Overcommit::default(),
        );
        assert!(d.is_empty(), "a batch went out 50 ms ago; pacing is 200 ms");
    }

    /// keep-warm as it was before the tallies: every decision from a full scan of the
    /// containers. The tallies must give exactly the same decisions.
    mod oracle {
        use super::*;

        pub(super) fn plan(
            state: &PoolState,
            loads: &[NodeLoad],
            now: Timestamp,
            over: Overcommit,
        ) -> Vec<Decision> {
            let mut out = Vec::new();
            for pool in state.pools() {
                plan_pool(state, pool, loads, None, now, over, &mut out);
            }
            out
        }

        pub(super) fn node_loads(state: &PoolState) -> Vec<NodeLoad> {
            let mut reserved: BTreeMap<&NodeId, Resources> = BTreeMap::new();
            for c in state.containers().filter(|c| c.state.is_live()) {
                if let Some(pool) = state.pool(&c.pool) {
                    let r = reserved.entry(&c.node).or_default();
                    r.cpu_millis += pool.spec.resources.cpu_millis;
                    r.memory_mb += pool.spec.resources.memory_mb;
                }
            }
            state
                .nodes()
                .map(|n| NodeLoad {
                    id: n.id.clone(),
                    status: n.status,
                    labels: n.labels.clone(),
                    capacity: n.capacity,
                    memory_fraction: Some(0.2),
                    reserved: reserved.get(&n.id).copied().unwrap_or_default(),
                    pool_count: 0,
                    failed_images: Default::default(),
                })
                .collect()
        }

        pub(super) fn plan_pool(
            state: &PoolState,
            pool: &Pool,
            loads: &[NodeLoad],
            last_batch: Option<Timestamp>,
            now: Timestamp,
            over: Overcommit,
            out: &mut Vec<Decision>,
        ) {
            let spec = &pool.spec;
            let name = &spec.name;
            let batch = spec.scaling.batch_size as usize;
            let offering = |node: &NodeId| {
                state
                    .node(node)
                    .is_some_and(|n| matches!(n.status, NodeStatus::Ready | NodeStatus::Cordoned))
            };

            let mut warm_current = Vec::new(); // (warm_at, id) of usable warm containers
            let mut draining_warm = Vec::new();
            let mut creating = 0usize;
            let mut stale = Vec::new();
            let mut live = 0usize;
            for c in state.containers().filter(|c| &c.pool == name) {
                if matches!(
                    c.state,
                    ContainerState::Creating | ContainerState::Warm | ContainerState::Allocated
                ) {
                    live += 1;
                }
                let current = c.generation == pool.generation;
                match c.state {
                    ContainerState::Creating | ContainerState::Warm if !current => stale.push(c.id),
                    ContainerState::Creating => creating += 1,
                    ContainerState::Warm if matches!(c.health, Health::Unhealthy { .. }) => {}
                    ContainerState::Warm if offering(&c.node) => {
                        warm_current.push((c.warm_at, c.id))
                    }
                    ContainerState::Warm => draining_warm.push(c.id),
                    _ => {}
                }
            }

            if !stale.is_empty() {
                stale.truncate(batch);
                out.push(Decision::Retire {
                    ids: stale,
                    reason: RetireReason::SpecChanged,
                });
            }

            // Waiting allocations are demand the pool must meet now, on top of its warm target.
            let wanted = state.wanted(pool) as usize + state.waiting(name);
            let supply = warm_current.len() + creating;

            // Draining nodes give up their warm containers once the rest holds enough.
            if !draining_warm.is_empty() && warm_current.len() >= wanted {
                draining_warm.truncate(batch);
                out.push(Decision::Retire {
                    ids: draining_warm,
                    reason: RetireReason::Drain,
                });
            }

            if supply > wanted && warm_current.len() > wanted {
                // Scale down: retire the newest warm containers first, keeping the longest-warm ones
                // that allocations take first.
                warm_current.sort();
                let surplus = (warm_current.len() - wanted).min(batch);
                let ids = warm_current
                    .iter()
                    .rev()
                    .take(surplus)
                    .map(|(_, id)| *id)
                    .collect();
                out.push(Decision::Retire {
                    ids,
                    reason: RetireReason::ScaleDown,
                });
                return;
            }

            let deficit = wanted.saturating_sub(supply);
            if deficit == 0 {
                return;
            }
            let paced = last_batch
                .is_some_and(|t| now.since(t).as_millis() < u128::from(spec.scaling.pacing_ms));
            if paced || creating >= 2 * batch {
                return;
            }
            let room = (spec.max_total as usize).saturating_sub(live);
            let n = deficit.min(batch).min(room);
            if n == 0 {
                out.push(Decision::Stuck {
                    pool: name.clone(),
                    reason: format!("at max_total ({})", spec.max_total),
                });
                return;
            }
            let mut pool_loads = loads.to_vec();
            for l in &mut pool_loads {
                l.pool_count = state
                    .containers()
                    .filter(|c| &c.pool == name && c.node == l.id && c.state.is_live())
                    .count() as u32;
            }
            let (nodes, why) = placement::place(pool_loads, spec, n, over);
            if !nodes.is_empty() {
                out.push(Decision::Create {
                    pool: name.clone(),
                    generation: pool.generation,
                    nodes,
                });
            }
            if let Some(why) = why {
                let reason = if loads.is_empty() {
                    "no nodes have joined".to_string()
                } else {
                    why.to_string()
                };
                out.push(Decision::Stuck {
                    pool: name.clone(),
                    reason,
                });
            }
        }
    }

    /// A small deterministic generator for the random worlds below.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n.max(1)
        }
    }

    #[test]
    fn tallies_decide_exactly_as_a_full_scan_did() {
        let mut seen = std::collections::BTreeSet::new();
        for seed in 1..=40u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut w = World::new(&["a", "b", "c", "d"]);
            let nodes: Vec<NodeId> = ["a", "b", "c", "d"]
                .iter()
                .map(|n| NodeId::new(*n).unwrap())
                .collect();
            let pools: Vec<PoolName> = ["p0", "p1"]
                .iter()
                .map(|p| PoolName::new(*p).unwrap())
                .collect();
            for p in &pools {
                let mut spec = PoolSpec::new(p.clone(), "img");
                spec.min_warm = 1 + rng.below(6) as u32;
                spec.max_warm = Some(12);
                spec.max_total = 12 + rng.below(8) as u32;
                spec.scaling.batch_size = 1 + rng.below(4) as u32;
                w.apply(Command::PutPool { spec });
            }
            let mut allocations = Vec::new();
            for step in 0..120 {
                let pool = pools[rng.below(2) as usize].clone();
                let node = nodes[rng.below(4) as usize].clone();
                let live: Vec<ContainerId> = w
                    .state
                    .containers_of(&pool)
                    .filter(|c| c.state.is_live())
                    .map(|c| c.id)
                    .collect();
                let pick = (!live.is_empty()).then(|| live[rng.below(live.len() as u64) as usize]);
                let generation = w.state.pool(&pool).unwrap().generation;
                let entry =
                    |id: ContainerId, health: Health, status: ObservedStatus| InventoryEntry {
                        id,
                        pool: pool.clone(),
                        generation,
                        docker_id: "d".into(),
                        ipv6: Some("fd36:1::5".parse().unwrap()),
                        status,
                        health,
                        exit_code: None,
                        oom_killed: false,
                        last_activity_at: None,
                        paused: false,
                    };
                match rng.below(13) {
                    0..=2 => {
                        let ids: Vec<_> = (0..1 + rng.below(3))
                            .map(|_| (ContainerId::new(), node.clone()))
                            .collect();
                        w.apply(Command::PlanContainers {
                            pool: pool.clone(),
                            generation,
                            placements: ids,
                        });
                    }
                    3..=4 => {
                        if let Some(id) = pick {
                            let node = w.state.container(&id).unwrap().node.clone();
                            let health = match rng.below(4) {
                                0 => Health::Unhealthy {
                                    consecutive_failures: 3,
                                },
                                1 => Health::Unknown,
                                _ => Health::Healthy,
                            };
                            let status = if rng.below(10) == 0 {
                                ObservedStatus::Exited
                            } else {
                                ObservedStatus::Running
                            };
                            w.apply(Command::Observe {
                                node,
                                entries: vec![entry(id, health, status)],
                            });
                        }
                    }
                    5 => {
                        w.apply(Command::plain_allocate(
                            pool.clone(),
                            SessionId::new("s").unwrap(),
                            1000,
                        ));
                        allocations.extend(w.state.active_allocations().map(|a| a.id).last());
                    }
                    6 => {
                        if let Some(a) = allocations.pop() {
                            w.apply(Command::Release {
                                allocation_id: a,
                                reason: warmpool_proto::records::ReleaseReason::Client,
                            });
                        }
                    }
                    7 => {
                        if let Some(id) = pick {
                            w.apply(Command::ContainersGone {
                                gone: vec![(id, "gone".into())],
                            });
                        }
                    }
                    8 => {
                        let status = [
                            NodeStatus::Ready,
                            NodeStatus::Cordoned,
                            NodeStatus::Draining,
                        ][rng.below(3) as usize];
                        w.apply(Command::SetNodeStatus {
                            drain_deadline: None,
                            node,
                            status,
                            reason: None,
                        });
                    }
                    9 => {
                        w.apply(Command::SetWanted {
                            pool: pool.clone(),
                            wanted: rng.below(14) as u32,
                            detail: None,
                        });
                    }
                    10 | 11 if step % 3 == 0 => {
                        // Carry out what keep-warm decides, as the leader would.
                        w.carry_out();
                        let loads = node_loads(&w.state, |_| Some(0.2));
                        for d in plan(
                            &w.state,
                            &loads,
                            &BTreeMap::new(),
                            Timestamp(10_000_000),
                            Overcommit::default(),
                        ) {
                            if let Decision::Retire { ids, reason } = d {
                                w.apply(Command::RetireContainers {
                                    ids,
                                    reason: reason.into(),
                                    timed: true,
                                });
                            }
                        }
                    }
                    10 if step % 40 == 1 => {
                        let mut spec = w.state.pool(&pool).unwrap().spec.clone();
                        spec.image = format!("img:{step}");
                        w.apply(Command::PutPool { spec });
                    }
                    _ => {
                        if let Some(id) = pick {
                            w.apply(Command::RetireContainers {
                                ids: vec![id],
                                reason: "test".into(),
                                timed: true,
                            });
                        }
                    }
                }
                let loads = node_loads(&w.state, |_| Some(0.2));
                let expected_loads = oracle::node_loads(&w.state);
                assert_eq!(loads, expected_loads, "seed {seed} step {step}: node loads");
                let now = Timestamp(10_000_000);
                let got = plan(
                    &w.state,
                    &loads,
                    &BTreeMap::new(),
                    now,
                    Overcommit::default(),
                );
                let want = oracle::plan(&w.state, &loads, now, Overcommit::default());
                assert_eq!(got, want, "seed {seed} step {step}");
                for d in got {
                    seen.insert(match d {
                        Decision::Create { .. } => "create",
                        Decision::Retire { reason, .. } => reason.as_str(),
                        Decision::Stuck { .. } => "stuck",
                        Decision::Pause { .. } => "pause",
                    });
                }
            }
            // Finally a drain, carried out step by step.
            for n in &nodes {
                w.apply(Command::SetNodeStatus {
                    drain_deadline: None,
                    node: n.clone(),
                    status: NodeStatus::Ready,
                    reason: None,
                });
            }
            for p in &pools {
                w.apply(Command::SetWanted {
                    pool: p.clone(),
                    wanted: 2,
                    detail: None,
                });
            }
            w.carry_out();
            w.apply(Command::SetNodeStatus {
                drain_deadline: None,
                node: nodes[0].clone(),
                status: NodeStatus::Draining,
                reason: None,
            });
            for _ in 0..4 {
                let loads = node_loads(&w.state, |_| Some(0.2));
                let now = Timestamp(10_000_000);
                let got = plan(
                    &w.state,
                    &loads,
                    &BTreeMap::new(),
                    now,
                    Overcommit::default(),
                );
                assert_eq!(
                    got,
                    oracle::plan(&w.state, &loads, now, Overcommit::default()),
                    "seed {seed}: drain"
                );
                for d in got {
                    if let Decision::Retire { ids, reason } = d {
                        seen.insert(reason.as_str());
                        w.apply(Command::RetireContainers {
                            ids,
                            reason: reason.into(),
                            timed: true,
                        });
                    }
                }
                w.carry_out();
            }
        }
        // The worlds were varied enough to reach every kind of decision.
        let all = ["create", "spec_changed", "drain", "scale_down", "stuck"];
        assert!(
            all.iter().all(|k| seen.contains(k)),
            "decisions seen: {seen:?}"
        );
    }
}
