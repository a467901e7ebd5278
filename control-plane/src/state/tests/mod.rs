//! State-machine tests: plain values in, plain values out.

mod allocations;
mod containers;
mod keys;
mod log;
mod nodes;
mod pending;
mod pools;
mod retention;
mod size;

use std::collections::BTreeMap;

use warmpool_proto::agent::{InventoryEntry, ObservedStatus};
use warmpool_proto::records::{AllocationState, NodeStatus, ReleaseReason, Resources};
use warmpool_proto::{
    AllocationId, ContainerEndReason, ContainerId, ContainerState, EventKind, Health, NodeId,
    PoolName, PoolSpec, SessionId, TenantId, Timestamp,
};

use super::*;

/// A state plus a log cursor, so tests read as a sequence of commands.
struct Harness {
    state: PoolState,
    index: u64,
    now: u64,
    log: Vec<(u64, Request)>,
}

impl Harness {
    fn new() -> Self {
        Harness {
            state: PoolState::default(),
            index: 0,
            now: 1_000_000,
            log: Vec::new(),
        }
    }

    fn apply(&mut self, cmd: Command) -> Response {
        self.index += 1;
        self.now += 10;
        let req = Request {
            at: Timestamp(self.now),
            cmd,
        };
        self.log.push((self.index, req.clone()));
        // Every test is also a test of the derived indexes and of the change markers: a node
        // whose container records changed must be marked changed at this index.
        let small = self.state.containers().count() <= 300;
        let before = if small {
            records_by_node(&self.state)
        } else {
            BTreeMap::new()
        };
        let response = self.state.apply(self.index, req);
        self.state.assert_indexes_consistent();
        if small {
            let after = records_by_node(&self.state);
            for (node, records) in &after {
                if before.get(node) != Some(records) {
                    assert_eq!(
                        self.state.node_changed_at(node),
                        self.index,
                        "node {node}'s containers changed but it was not marked"
                    );
                }
            }
        }
        response
    }

    fn node(&mut self, name: &str) -> NodeId {
        let node = NodeId::new(name).unwrap();
        self.apply(Command::NodeJoin {
            node: node.clone(),
            ipv6_prefix: format!(
                "fd36:{:x}::/64",
                name.len() * 256 + name.bytes().map(usize::from).sum::<usize>()
            ),
            labels: BTreeMap::new(),
            capacity: Resources {
                cpu_millis: 2000,
                memory_mb: 4096,
            },
            agent_version: "test".into(),
        });
        node
    }

    fn pool(&mut self, name: &str, min_warm: u32) -> PoolName {
        let name = PoolName::new(name).unwrap();
        let mut spec = PoolSpec::new(name.clone(), "img");
        spec.min_warm = min_warm;
        assert!(matches!(
            self.apply(Command::CreatePool { spec }),
            Response::Pool { created: true, .. }
        ));
        name
    }

    fn plan(&mut self, pool: &PoolName, node: &NodeId, n: usize) -> Vec<ContainerId> {
        let ids: Vec<ContainerId> = (0..n).map(|_| ContainerId::new()).collect();
        let generation = self.state.pool(pool).unwrap().generation;
        self.apply(Command::PlanContainers {
            pool: pool.clone(),
            generation,
            placements: ids.iter().map(|id| (*id, node.clone())).collect(),
        });
        ids
    }

    fn observe(&mut self, node: &NodeId, id: ContainerId, status: ObservedStatus, health: Health) {
        let c = self.state.container(&id).unwrap().clone();
        self.apply(Command::Observe {
            node: node.clone(),
            entries: vec![InventoryEntry {
                id,
                pool: c.pool,
                generation: c.generation,
                docker_id: format!("d-{id}"),
                ipv6: Some("fd36:1::10".parse().unwrap()),
                status,
                health,
                exit_code: (status == ObservedStatus::Exited).then_some(137),
                oom_killed: false,
                last_activity_at: None,
                paused: false,
            }],
        });
    }

    fn warm(&mut self, pool: &PoolName, node: &NodeId, n: usize) -> Vec<ContainerId> {
        let ids = self.plan(pool, node, n);
        for id in &ids {
            self.observe(node, *id, ObservedStatus::Running, Health::Healthy);
        }
        ids
    }

    fn allocate(&mut self, pool: &PoolName, key: Option<&str>) -> Response {
        self.apply(Command::Allocate {
            allocation_id: AllocationId::new(),
            pool: pool.clone(),
            session: SessionId::new("s-1").unwrap(),
            lease_ms: 60_000,
            idempotency_key: key.map(str::to_string),
            wait_ms: 0,
            tenant: Default::default(),
            metadata: Default::default(),
            with_settings: false,
            workspace: None,
            token_sha256: None,
            asynchronous: false,
            location: None,
            max_lifetime_secs: None,
        })
    }

    fn events_for(&self, id: ContainerId) -> Vec<Event> {
        let filter = EventFilter {
            container: Some(id.to_string()),
            ..Default::default()
        };
        self.state.events(None, None, 1000, &filter)
    }

    fn kinds_for(&self, id: ContainerId) -> Vec<EventKind> {
        self.events_for(id).iter().map(|e| e.kind).collect()
    }
}

/// Every container record on each node, as JSON, to see which nodes a command changed.
fn records_by_node(state: &PoolState) -> BTreeMap<NodeId, Vec<String>> {
    let mut out: BTreeMap<NodeId, Vec<String>> = BTreeMap::new();
    for c in state.containers() {
        out.entry(c.node.clone())
            .or_default()
            .push(serde_json::to_string(c).unwrap());
    }
    out
}

fn allocation(r: Response) -> (warmpool_proto::Allocation, bool) {
    match r {
        Response::Allocation {
            allocation,
            replayed,
        } => (allocation, replayed),
        other => panic!("expected an allocation, got {other:?}"),
    }
}

fn rejection(r: Response) -> RejectCode {
    match r {
        Response::Rejected(rej) => rej.code,
        other => panic!("expected a rejection, got {other:?}"),
    }
}
