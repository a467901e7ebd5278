//! Where new containers go: a pure scoring of nodes.
//!
//! A node can take a container of a pool when it is `ready`, carries every label the pool's
//! constraints name, its memory use is under [`MEMORY_PRESSURE`], and the container's limits
//! fit in what is left of its capacity (times the overcommit factors). Among eligible nodes,
//! new containers go first to the node with the fewest of the pool's containers (spreading a
//! pool over the fleet), then to the least reserved node, then by id so the choice is
//! deterministic.

use std::collections::BTreeMap;

use warmpool_proto::api::Location;
use warmpool_proto::records::{NodeStatus, Resources};
use warmpool_proto::{NodeId, PoolSpec};

/// A node whose memory use is over this share takes no new containers.
pub const MEMORY_PRESSURE: f64 = 0.9;

/// What placement needs to know about a node.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeLoad {
    /// The node.
    pub id: NodeId,
    /// Its scheduling status.
    pub status: NodeStatus,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// What it offers.
    pub capacity: Resources,
    /// Host memory in use, 0.0..=1.0, from its last heartbeat (None: not heard yet).
    pub memory_fraction: Option<f64>,
    /// Limits of the live containers placed on it.
    pub reserved: Resources,
    /// Live containers of the pool being placed.
    pub pool_count: u32,
    /// Images its agent last said it cannot pull (it is waiting to retry): no container of a
    /// pool with one of these images is placed on it until they clear.
    pub failed_images: std::collections::BTreeSet<String>,
}

/// How far reservations may exceed capacity: warm containers are mostly idle.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Overcommit {
    /// CPU factor.
    pub cpu: f64,
    /// Memory factor.
    pub memory: f64,
}

impl Overcommit {
    /// What placement may reserve on a node of this capacity.
    pub fn allocatable(self, capacity: Resources) -> Resources {
        let scale = |v: u64, f: f64| (v as f64 * f).floor() as u64;
        Resources {
            cpu_millis: scale(capacity.cpu_millis, self.cpu),
            memory_mb: scale(capacity.memory_mb, self.memory),
        }
    }
}

impl Default for Overcommit {
    fn default() -> Self {
        Overcommit {
            cpu: 8.0,
            memory: 1.0,
        }
    }
}

/// Why a node cannot take a container.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Ineligible {
    /// Not ready (cordoned, draining or down).
    #[error("node {0} is {1}")]
    NotReady(NodeId, &'static str),
    /// Lacks a constraint label.
    #[error("node {0} lacks label {1}={2}")]
    Constraint(NodeId, String, String),
    /// Memory use over [`MEMORY_PRESSURE`].
    #[error("node {0} memory use is {1:.0}%")]
    MemoryPressure(NodeId, f64),
    /// Not enough cpu or memory left.
    #[error("node {0} has no {1} left")]
    Full(NodeId, &'static str),
}

/// Whether `node` can take one more container of `spec`.
pub fn eligible(node: &NodeLoad, spec: &PoolSpec, over: Overcommit) -> Result<(), Ineligible> {
    if node.status != NodeStatus::Ready {
        return Err(Ineligible::NotReady(node.id.clone(), node.status.as_str()));
    }
    for (k, v) in &spec.constraints {
        if node.labels.get(k) != Some(v) {
            return Err(Ineligible::Constraint(
                node.id.clone(),
                k.clone(),
                v.clone(),
            ));
        }
    }
    if let Some(f) = node.memory_fraction {
        if f > MEMORY_PRESSURE {
            return Err(Ineligible::MemoryPressure(node.id.clone(), f * 100.0));
        }
    }
    let allocatable = over.allocatable(node.capacity);
    let fit = warmpool_policy::rules::fits(
        (allocatable.cpu_millis, allocatable.memory_mb),
        (node.reserved.cpu_millis, node.reserved.memory_mb),
        (spec.resources.cpu_millis, spec.resources.memory_mb),
    );
    if let Some(short) = fit.short_of() {
        return Err(Ineligible::Full(node.id.clone(), short));
    }
    Ok(())
}

/// How well a node's `labels` meet an allocation's `location`: for each label the location
/// names (in name order), the position of the node's value among the accepted ones; `None`
/// when the node lacks one. Lower is better, compared in order, so `{"region": ["eu", "us"]}`
/// ranks an `eu` node `[0]`, a `us` node `[1]`, and any other node not at all.
pub fn location_rank(labels: &BTreeMap<String, String>, location: &Location) -> Option<Vec<usize>> {
    location
        .iter()
        .map(|(k, want)| {
            let have = labels.get(k)?;
            want.choices().iter().position(|v| v == have)
        })
        .collect()
}

/// Picks nodes for up to `n` new containers of `spec` for allocations asking for `location`:
/// only nodes that match it, and of those only the most preferred rank that has an eligible
/// node (`eu` nodes while one can take the container, `us` ones only when none can).
pub fn place_located(
    nodes: Vec<NodeLoad>,
    spec: &PoolSpec,
    n: usize,
    over: Overcommit,
    location: &Location,
) -> (Vec<NodeId>, Option<Ineligible>) {
    let ranked: Vec<(Vec<usize>, NodeLoad)> = nodes
        .into_iter()
        .filter_map(|l| location_rank(&l.labels, location).map(|r| (r, l)))
        .collect();
    let best = ranked
        .iter()
        .filter(|(_, l)| eligible(l, spec, over).is_ok())
        .map(|(r, _)| r.clone())
        .min();
    let why = ranked
        .iter()
        .find_map(|(_, l)| eligible(l, spec, over).err());
    let Some(best) = best else {
        return (Vec::new(), why);
    };
    let chosen = ranked
        .into_iter()
        .filter(|(r, _)| *r == best)
        .map(|(_, l)| l)
        .collect();
    place(chosen, spec, n, over)
}

/// Picks nodes for up to `n` new containers of `spec`, one entry per container. Fewer (even
/// none) when the fleet cannot hold them; the `Err` then says why the first refusal happened.
pub fn place(
    mut nodes: Vec<NodeLoad>,
    spec: &PoolSpec,
    n: usize,
    over: Overcommit,
) -> (Vec<NodeId>, Option<Ineligible>) {
    let mut out = Vec::with_capacity(n);
    let mut why = None;
    for _ in 0..n {
        let mut best: Option<usize> = None;
        for (i, node) in nodes.iter().enumerate() {
            if let Err(e) = eligible(node, spec, over) {
                why.get_or_insert(e);
                continue;
            }
            let better = match best {
                None => true,
                Some(b) => score(node) < score(&nodes[b]),
            };
            if better {
                best = Some(i);
            }
        }
        let Some(i) = best else { break };
        let node = &mut nodes[i];
        node.pool_count += 1;
        node.reserved.cpu_millis += spec.resources.cpu_millis;
        node.reserved.memory_mb += spec.resources.memory_mb;
        out.push(node.id.clone());
    }
    let why = if out.len() < n { why } else { None };
    (out, why)
}

/// Lower is better.
fn score(n: &NodeLoad) -> (u32, u64, &NodeId) {
    let mem = n.reserved.memory_mb.saturating_mul(1000) / n.capacity.memory_mb.max(1);
    (n.pool_count, mem, &n.id)
}

#[cfg(test)]
mod tests {
    use warmpool_proto::PoolName;

    use super::*;

    fn node(id: &str) -> NodeLoad {
        NodeLoad {
            id: NodeId::new(id).unwrap(),
            status: NodeStatus::Ready,
            labels: BTreeMap::new(),
            capacity: Resources {
                cpu_millis: 2000,
                memory_mb: 4096,
            },
            memory_fraction: Some(0.3),
            reserved: Resources::default(),
            pool_count: 0,
            failed_images: Default::default(),
        }
    }

    fn spec() -> PoolSpec {
        PoolSpec::new(PoolName::new("demo").unwrap(), "img")
    }

    fn ids(v: &[NodeId]) -> Vec<&str> {
        v.iter().map(|n| n.as_str()).collect()
    }

    #[test]
    fn spreads_a_pool_over_nodes() {
        let (got, why) = place(
            vec![node("a"), node("b"), node("c")],
            &spec(),
            6,
            Overcommit::default(),
        );
        assert_eq!(ids(&got), ["a", "b", "c", "a", "b", "c"]);
        assert!(why.is_none());
    }

    #[test]
    fn prefers_nodes_with_fewer_of_the_pool() {
        let mut a = node("a");
        a.pool_count = 2;
        let (got, _) = place(vec![a, node("b")], &spec(), 3, Overcommit::default());
        assert_eq!(ids(&got), ["b", "b", "a"]);
    }

    #[test]
    fn honours_constraints() {
        let mut eu = node("eu1");
        eu.labels.insert("region".into(), "eu".into());
        let mut s = spec();
        s.constraints.insert("region".into(), "eu".into());
        let (got, _) = place(
            vec![node("us1"), eu, node("us2")],
            &s,
            3,
            Overcommit::default(),
        );
        assert_eq!(ids(&got), ["eu1", "eu1", "eu1"]);
    }

    #[test]
    fn skips_memory_pressure_and_unready_nodes_and_says_why() {
        let mut hot = node("hot");
        hot.memory_fraction = Some(0.95);
        let mut cordoned = node("cordoned");
        cordoned.status = NodeStatus::Cordoned;
        let (got, why) = place(
            vec![hot.clone(), cordoned],
            &spec(),
            1,
            Overcommit::default(),
        );
        assert!(got.is_empty());
        assert_eq!(why, Some(Ineligible::MemoryPressure(hot.id, 95.0)));
    }

    fn located(pairs: &[(&str, &[&str])]) -> Location {
        use warmpool_proto::api::LocationValue;
        pairs
            .iter()
            .map(|(k, vs)| {
                let v = match vs {
                    [one] => LocationValue::One(one.to_string()),
                    many => LocationValue::Prefer(many.iter().map(|v| v.to_string()).collect()),
                };
                (k.to_string(), v)
            })
            .collect()
    }

    fn labelled(id: &str, labels: &[(&str, &str)]) -> NodeLoad {
        let mut n = node(id);
        n.labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        n
    }

    #[test]
    fn location_rank_follows_the_order_of_preference() {
        let eu = located(&[("region", &["eu"])]);
        let pref = located(&[("region", &["eu", "us"])]);
        let l = |r: &str| labelled("x", &[("region", r), ("zone", "a")]).labels;
        assert_eq!(location_rank(&l("eu"), &eu), Some(vec![0]));
        assert_eq!(location_rank(&l("us"), &eu), None);
        assert_eq!(location_rank(&l("us"), &pref), Some(vec![1]));
        assert_eq!(location_rank(&l("ap"), &pref), None);
        assert_eq!(location_rank(&BTreeMap::new(), &eu), None);
        // Every label must match; earlier label names weigh more.
        let both = located(&[("region", &["eu", "us"]), ("zone", &["b", "a"])]);
        assert_eq!(location_rank(&l("us"), &both), Some(vec![1, 1]));
        assert!(location_rank(&l("eu"), &both) < location_rank(&l("us"), &both));
    }

    #[test]
    fn located_creates_go_to_the_most_preferred_place_that_can_take_them() {
        let pref = located(&[("region", &["eu", "us"])]);
        let eu = labelled("eu1", &[("region", "eu")]);
        let us = labelled("us1", &[("region", "us")]);
        let ap = labelled("ap1", &[("region", "ap")]);
        let nodes = vec![ap.clone(), us.clone(), eu.clone()];
        let (got, _) = place_located(nodes.clone(), &spec(), 2, Overcommit::default(), &pref);
        assert_eq!(ids(&got), ["eu1", "eu1"]);
        // eu cannot take any: us is next.
        let mut hot = eu.clone();
        hot.memory_fraction = Some(0.99);
        let (got, _) = place_located(
            vec![ap.clone(), us.clone(), hot.clone()],
            &spec(),
            1,
            Overcommit::default(),
            &pref,
        );
        assert_eq!(ids(&got), ["us1"]);
        // Only eu asked for, and it cannot: nothing, with why.
        let (got, why) = place_located(
            vec![ap, us, hot.clone()],
            &spec(),
            1,
            Overcommit::default(),
            &located(&[("region", &["eu"])]),
        );
        assert!(got.is_empty());
        assert_eq!(why, Some(Ineligible::MemoryPressure(hot.id, 99.0)));
    }

    #[test]
    fn respects_capacity() {
        let mut small = node("small");
        small.capacity = Resources {
            cpu_millis: 10_000,
            memory_mb: 300,
        };
        let over = Overcommit {
            cpu: 1.0,
            memory: 1.0,
        };
        // 128 MiB each: two fit in 300 MiB, a third does not.
        let (got, why) = place(vec![small], &spec(), 3, over);
        assert_eq!(got.len(), 2);
        assert!(matches!(why, Some(Ineligible::Full(_, "memory"))));
    }
}
