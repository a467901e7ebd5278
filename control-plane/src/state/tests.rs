//! State-machine tests: plain values in, plain values out.

use std::collections::BTreeMap;

use warmpool_proto::agent::{InventoryEntry, ObservedStatus};
use warmpool_proto::records::{AllocationState, NodeStatus, ReleaseReason, Resources};
use warmpool_proto::{
    AllocationId, ContainerId, ContainerState, EventKind, Health, NodeId, PoolName, PoolSpec,
    SessionId, TenantId, Timestamp,
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
            token_sha256: None,
        })
    }

    fn kinds_for(&self, id: ContainerId) -> Vec<EventKind> {
        let filter = EventFilter {
            container: Some(id.to_string()),
            ..Default::default()
        };
        self.state
            .events(None, None, 1000, &filter)
            .iter()
            .map(|e| e.kind)
            .collect()
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

#[test]
fn full_lifecycle_emits_events_in_order() {
    let mut h = Harness::new();
    let n = h.node("n1");
    let p = h.pool("demo", 1);
    let [id] = h.plan(&p, &n, 1)[..] else {
        unreachable!()
    };
    assert_eq!(
        h.state.container(&id).unwrap().state,
        ContainerState::Creating
    );

    // Running but not yet healthy: still creating.
    h.observe(&n, id, ObservedStatus::Running, Health::Unknown);
    assert_eq!(
        h.state.container(&id).unwrap().state,
        ContainerState::Creating
    );
    h.observe(&n, id, ObservedStatus::Running, Health::Healthy);
    assert_eq!(h.state.container(&id).unwrap().state, ContainerState::Warm);

    let (a, replayed) = allocation(h.allocate(&p, None));
    assert!(!replayed);
    assert_eq!(a.container_id, id);
    assert_eq!(a.url.as_deref(), Some("http://[fd36:1::10]:8080"));
    assert_eq!(a.expires_at, Timestamp(a.created_at.0 + 60_000));
    let c = h.state.container(&id).unwrap();
    assert_eq!(c.state, ContainerState::Allocated);
    assert_eq!(c.allocation, Some(a.id));

    let (released, _) = allocation(h.apply(Command::Release {
        allocation_id: a.id,
        reason: ReleaseReason::Client,
    }));
    assert_eq!(released.state, AllocationState::Released);
    assert_eq!(released.release_reason, Some(ReleaseReason::Client));
    assert_eq!(
        h.state.container(&id).unwrap().state,
        ContainerState::Releasing
    );

    h.apply(Command::ContainersGone {
        gone: vec![(id, "destroyed".into())],
    });
    let c = h.state.container(&id).unwrap();
    assert_eq!(c.state, ContainerState::Terminated);
    assert_eq!(
        c.reason.as_deref(),
        Some("client"),
        "the first reason sticks"
    );

    assert_eq!(
        h.kinds_for(id),
        vec![
            EventKind::ContainerCreated,
            EventKind::ContainerWarm,
            EventKind::ContainerAllocated,
            EventKind::ContainerReleased,
            EventKind::ContainerTerminated,
        ]
    );
}

#[test]
fn release_is_idempotent_and_unknown_release_is_not_found() {
    let mut h = Harness::new();
    let n = h.node("n1");
    let p = h.pool("demo", 1);
    h.warm(&p, &n, 1);
    let (a, _) = allocation(h.allocate(&p, None));
    let first = allocation(h.apply(Command::Release {
        allocation_id: a.id,
        reason: ReleaseReason::Client,
    }))
    .0;
    let events = h.state.last_event_seq();
    let again = allocation(h.apply(Command::Release {
        allocation_id: a.id,
        reason: ReleaseReason::Expired,
    }))
    .0;
    assert_eq!(first, again, "a second release changes nothing");
    assert_eq!(h.state.last_event_seq(), events);
    let r = h.apply(Command::Release {
        allocation_id: AllocationId::new(),
        reason: ReleaseReason::Client,
    });
    assert_eq!(rejection(r), RejectCode::NotFound);
}

#[test]
fn idempotency_key_yields_the_same_allocation() {
    let mut h = Harness::new();
    let n = h.node("n1");
    let p = h.pool("demo", 2);
    h.warm(&p, &n, 2);
    let (a, replayed_a) = allocation(h.allocate(&p, Some("key-1")));
    let (b, replayed_b) = allocation(h.allocate(&p, Some("key-1")));
    assert!(!replayed_a && replayed_b);
    assert_eq!(a, b);
    assert_eq!(
        h.state.pool_counts(&p).allocated,
        1,
        "one container, not two"
    );
    assert_eq!(h.state.pool_counts(&p).warm, 1);

    // After release the key still answers the same (now released) allocation.
    h.apply(Command::Release {
        allocation_id: a.id,
        reason: ReleaseReason::Client,
    });
    let (c, replayed) = allocation(h.allocate(&p, Some("key-1")));
    assert!(replayed);
    assert_eq!(c.id, a.id);
    assert_eq!(c.state, AllocationState::Released);

    let other = h.pool("other", 0);
    assert_eq!(
        rejection(h.allocate(&other, Some("key-1"))),
        RejectCode::Conflict
    );
}

#[test]
fn a_retried_allocate_proposal_is_answered_not_doubled() {
    let mut h = Harness::new();
    let n = h.node("n1");
    let p = h.pool("demo", 2);
    h.warm(&p, &n, 2);
    let cmd = Command::Allocate {
        allocation_id: AllocationId::new(),
        pool: p.clone(),
        session: SessionId::new("s").unwrap(),
        lease_ms: 1000,
        idempotency_key: None,
        wait_ms: 0,
        tenant: Default::default(),
        token_sha256: None,
    };
    let (a, _) = allocation(h.apply(cmd.clone()));
    let (b, replayed) = allocation(h.apply(cmd));
    assert!(replayed);
    assert_eq!(a.id, b.id);
    assert_eq!(h.state.pool_counts(&p).allocated, 1);
}

#[test]
fn allocations_never_share_a_container_and_empty_pool_is_no_capacity() {
    let mut h = Harness::new();
    let n = h.node("n1");
    let p = h.pool("demo", 3);
    let ids = h.warm(&p, &n, 3);
    let mut got: Vec<ContainerId> = (0..3)
        .map(|_| allocation(h.allocate(&p, None)).0.container_id)
        .collect();
    got.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(got, want, "each warm container handed out exactly once");

    let before = serde_json::to_string(&h.state).unwrap();
    let r = h.allocate(&p, None);
    assert_eq!(rejection(r), RejectCode::NoCapacity);
    let mut after: PoolState =
        serde_json::from_str(&serde_json::to_string(&h.state).unwrap()).unwrap();
    let was: PoolState = serde_json::from_str(&before).unwrap();
    // Only the log position and the demand counter (a refusal is demand) move.
    assert_eq!(after.arrivals(&p), was.arrivals(&p) + 1);
    after.applied_index = was.applied_index;
    after.arrivals = was.arrivals.clone();
    assert_eq!(
        serde_json::to_string(&after).unwrap(),
        before,
        "a refusal changes nothing else"
    );

    let unknown = PoolName::new("nope").unwrap();
    assert_eq!(rejection(h.allocate(&unknown, None)), RejectCode::NotFound);
}

#[test]
fn allocation_takes_the_longest_warm_first() {
    let mut h = Harness::new();
    let n = h.node("n1");
    let p = h.pool("demo", 2);
    let ids = h.plan(&p, &n, 2);
    h.observe(&n, ids[1], ObservedStatus::Running, Health::Healthy);
    h.observe(&n, ids[0], ObservedStatus::Running, Health::Healthy);
    assert_eq!(allocation(h.allocate(&p, None)).0.container_id, ids[1]);
}

#[test]
fn unhealthy_warm_container_is_retired_and_never_offered() {
    let mut h = Harness::new();
    let n = h.node("n1");
    let p = h.pool("demo", 1);
    let [id] = h.warm(&p, &n, 1)[..] else {
        unreachable!()
    };
    h.observe(
        &n,
        id,
        ObservedStatus::Running,
        Health::Unhealthy {
            consecutive_failures: 3,
        },
    );
    let c = h.state.container(&id).unwrap();
    assert_eq!(c.state, ContainerState::Releasing);
    assert_eq!(c.reason.as_deref(), Some("unhealthy"));
    assert_eq!(rejection(h.allocate(&p, None)), RejectCode::NoCapacity);
    assert!(h.kinds_for(id).contains(&EventKind::ContainerHealthChanged));
}

#[test]
fn a_killed_warm_container_leaves_the_pool() {
    let mut h = Harness::new();
    let n = h.node("n1");
    let p = h.pool("demo", 1);
    let [id] = h.warm(&p, &n, 1)[..] else {
        unreachable!()
    };
    h.observe(&n, id, ObservedStatus::Exited, Health::Healthy);
    assert_eq!(
        h.state.container(&id).unwrap().state,
        ContainerState::Releasing
    );
    assert_eq!(h.state.pool_counts(&p).warm, 0);
    h.apply(Command::ContainersGone {
        gone: vec![(id, "destroyed".into())],
    });
    let c = h.state.container(&id).unwrap();
    assert_eq!(c.state, ContainerState::Terminated);
    assert_eq!(c.reason.as_deref(), Some("exited (137)"));
}

#[test]
fn an_allocated_container_that_dies_is_reported_lost() {
    let mut h = Harness::new();
    let n = h.node("n1");
    let p = h.pool("demo", 1);
    let [id] = h.warm(&p, &n, 1)[..] else {
        unreachable!()
    };
    let (a, _) = allocation(h.allocate(&p, None));
    h.observe(&n, id, ObservedStatus::Exited, Health::Healthy);
    let a = h.state.allocation(&a.id).unwrap();
    assert_eq!(a.state, AllocationState::Released);
    assert_eq!(a.release_reason, Some(ReleaseReason::Lost));
    assert!(h.kinds_for(id).contains(&EventKind::AllocationLost));
}

#[test]
fn node_down_ends_what_no_session_holds_lost_ends_the_rest_and_rejoin_makes_it_ready() {
    let mut h = Harness::new();
    let n1 = h.node("n1");
    let n2 = h.node("n2");
    let p = h.pool("demo", 2);
    let on1 = h.warm(&p, &n1, 2);
    let on2 = h.warm(&p, &n2, 1);
    let (a, _) = allocation(h.allocate(&p, None));
    assert!(on1.contains(&a.container_id), "oldest warm first");
    h.apply(Command::NodeDown {
        node: n1.clone(),
        reason: "missed heartbeats".into(),
    });
    for id in &on1 {
        let want = if *id == a.container_id {
            // The session keeps it: the node may be alive behind a broken link.
            ContainerState::Allocated
        } else {
            ContainerState::Terminated
        };
        assert_eq!(h.state.container(id).unwrap().state, want);
    }
    assert_eq!(
        h.state.allocation(&a.id).unwrap().state,
        AllocationState::Active
    );
    // Given up on: the allocation is lost.
    h.apply(Command::NodeLost { node: n1.clone() });
    assert_eq!(
        h.state.container(&a.container_id).unwrap().state,
        ContainerState::Terminated
    );
    assert_eq!(
        h.state.allocation(&a.id).unwrap().release_reason,
        Some(ReleaseReason::Lost)
    );
    assert_eq!(
        h.state.container(&on2[0]).unwrap().state,
        ContainerState::Warm
    );
    // Planning onto a down node is refused silently (no container made).
    let before = h.state.containers().count();
    h.plan(&p, &n1, 1);
    assert_eq!(h.state.containers().count(), before);

    h.node("n1");
    assert_eq!(h.state.node(&n1).unwrap().status, NodeStatus::Ready);
    let kinds: Vec<_> = h
        .state
        .events(
            None,
            None,
            1000,
            &EventFilter {
                node: Some("n1".into()),
                ..Default::default()
            },
        )
        .iter()
        .map(|e| e.kind)
        .collect();
    assert!(kinds.contains(&EventKind::NodeDown));
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == EventKind::NodeJoined)
            .count(),
        2
    );
}

#[test]
fn a_changed_spec_bumps_generation_and_old_containers_are_not_offered() {
    let mut h = Harness::new();
    let n = h.node("n1");
    let p = h.pool("demo", 1);
    h.warm(&p, &n, 1);
    let mut spec = h.state.pool(&p).unwrap().spec.clone();
    let same = h.apply(Command::PutPool { spec: spec.clone() });
    assert!(matches!(same, Response::Pool { ref pool, created: false } if pool.generation == 1));
    spec.image = "img:v2".into();
    h.apply(Command::PutPool { spec });
    assert_eq!(h.state.pool(&p).unwrap().generation, 2);
    assert_eq!(rejection(h.allocate(&p, None)), RejectCode::NoCapacity);
    // A plan made for the old generation is stale.
    let r = h.apply(Command::PlanContainers {
        pool: p.clone(),
        generation: 1,
        placements: vec![(ContainerId::new(), n.clone())],
    });
    assert_eq!(rejection(r), RejectCode::Conflict);
    let new = h.warm(&p, &n, 1);
    assert_eq!(allocation(h.allocate(&p, None)).0.container_id, new[0]);
}

#[test]
fn plan_never_exceeds_max_total() {
    let mut h = Harness::new();
    let n = h.node("n1");
    let name = PoolName::new("small").unwrap();
    let mut spec = PoolSpec::new(name.clone(), "img");
    spec.min_warm = 2;
    spec.max_total = 3;
    h.apply(Command::CreatePool { spec });
    h.plan(&name, &n, 5);
    assert_eq!(h.state.pool_counts(&name).total, 3);
}

#[test]
fn renew_extends_up_to_max_lifetime() {
    let mut h = Harness::new();
    let n = h.node("n1");
    let name = PoolName::new("leased").unwrap();
    let mut spec = PoolSpec::new(name.clone(), "img");
    spec.min_warm = 1;
    spec.max_lifetime_secs = Some(100);
    h.apply(Command::CreatePool { spec });
    h.warm(&name, &n, 1);
    let (a, _) = allocation(h.allocate(&name, None));
    let cap = a.max_expires_at.unwrap();
    assert_eq!(cap, a.created_at.plus_millis(100_000));
    let (renewed, _) = allocation(h.apply(Command::Renew {
        allocation_id: a.id,
        lease_ms: 80_000,
    }));
    assert!(renewed.expires_at > a.expires_at);
    let (capped, _) = allocation(h.apply(Command::Renew {
        allocation_id: a.id,
        lease_ms: 500_000,
    }));
    assert_eq!(capped.expires_at, cap);
    let r = h.apply(Command::Renew {
        allocation_id: a.id,
        lease_ms: 500_000,
    });
    assert_eq!(
        rejection(r),
        RejectCode::Conflict,
        "renewals stop at max_lifetime"
    );
}

#[test]
fn delete_pool_releases_its_containers() {
    let mut h = Harness::new();
    let n = h.node("n1");
    let p = h.pool("demo", 2);
    h.warm(&p, &n, 2);
    let (a, _) = allocation(h.allocate(&p, None));
    h.apply(Command::DeletePool { name: p.clone() });
    assert!(h.state.pool(&p).is_none());
    assert_eq!(
        h.state.allocation(&a.id).unwrap().release_reason,
        Some(ReleaseReason::PoolDeleted)
    );
    assert!(h
        .state
        .containers()
        .all(|c| c.state == ContainerState::Releasing));
    assert_eq!(
        rejection(h.apply(Command::DeletePool { name: p })),
        RejectCode::NotFound
    );
}

#[test]
fn cordoned_node_keeps_offering_draining_node_does_not() {
    let mut h = Harness::new();
    let n = h.node("n1");
    let p = h.pool("demo", 2);
    h.warm(&p, &n, 2);
    h.apply(Command::SetNodeStatus {
        drain_deadline: None,
        node: n.clone(),
        status: NodeStatus::Cordoned,
        reason: None,
    });
    assert!(h.state.has_allocatable(&p));
    h.apply(Command::SetNodeStatus {
        drain_deadline: None,
        node: n.clone(),
        status: NodeStatus::Draining,
        reason: None,
    });
    assert!(!h.state.has_allocatable(&p));
    let r = h.apply(Command::SetNodeStatus {
        drain_deadline: None,
        node: n,
        status: NodeStatus::Down,
        reason: None,
    });
    assert_eq!(rejection(r), RejectCode::Conflict);
}

#[test]
fn a_drain_waits_for_allocations_until_its_deadline_then_says_the_node_is_drained() {
    let mut h = Harness::new();
    let n = h.node("n1");
    let p = h.pool("demo", 2);
    let ids = h.warm(&p, &n, 2);
    let (a, _) = allocation(h.allocate(&p, None));
    let deadline = Timestamp(h.now + 5_000);
    h.apply(Command::SetNodeStatus {
        drain_deadline: Some(deadline),
        node: n.clone(),
        status: NodeStatus::Draining,
        reason: None,
    });
    assert_eq!(h.state.node(&n).unwrap().drain_deadline, Some(deadline));
    let draining = h
        .state
        .events_since(0, &EventFilter::default())
        .pop()
        .unwrap();
    assert_eq!(draining.kind, EventKind::NodeDraining);
    assert!(draining.detail.unwrap()["deadline"].is_string());

    // Before the deadline the allocation is left alone; at it, the leader is told to end it.
    assert!(h
        .state
        .overdue_drain_allocations(Timestamp(deadline.0 - 1))
        .is_empty());
    assert_eq!(h.state.overdue_drain_allocations(deadline), vec![a.id]);
    let (ended, _) = allocation(h.apply(Command::Release {
        allocation_id: a.id,
        reason: ReleaseReason::Drained,
    }));
    assert_eq!(ended.release_reason, Some(ReleaseReason::Drained));
    assert!(h.state.overdue_drain_allocations(deadline).is_empty());

    // `node_drained` comes once, when the last container on the node is gone.
    let drained = |h: &Harness| {
        h.state
            .events_since(0, &EventFilter::default())
            .iter()
            .filter(|e| e.kind == EventKind::NodeDrained)
            .count()
    };
    let warm = ids.into_iter().find(|id| *id != a.container_id).unwrap();
    h.apply(Command::ContainersGone {
        gone: vec![(a.container_id, "destroyed".into())],
    });
    assert_eq!(drained(&h), 0, "a warm container is still there");
    h.apply(Command::ContainersGone {
        gone: vec![(warm, "destroyed".into())],
    });
    assert_eq!(drained(&h), 1);

    // Draining again only moves the deadline; uncordoning clears it.
    h.apply(Command::SetNodeStatus {
        drain_deadline: None,
        node: n.clone(),
        status: NodeStatus::Draining,
        reason: None,
    });
    assert_eq!(h.state.node(&n).unwrap().drain_deadline, None);
    assert_eq!(drained(&h), 1, "not drained twice");
    h.apply(Command::SetNodeStatus {
        drain_deadline: Some(deadline),
        node: n.clone(),
        status: NodeStatus::Ready,
        reason: None,
    });
    let node = h.state.node(&n).unwrap();
    assert_eq!(
        (node.status, node.drain_deadline),
        (NodeStatus::Ready, None)
    );
}

#[test]
fn old_spec_containers_count_as_outdated_not_warm() {
    let mut h = Harness::new();
    let n = h.node("n1");
    let p = h.pool("demo", 2);
    h.warm(&p, &n, 2);
    let mut spec = h.state.pool(&p).unwrap().spec.clone();
    spec.image = "img:v2".into();
    h.apply(Command::PutPool { spec });
    // Kept as stand-ins while new ones are made, but nothing to hand out: status says so.
    let c = h.state.pool_counts(&p);
    assert_eq!((c.warm, c.outdated, c.total), (0, 2, 2));
    assert!(!h.state.has_allocatable(&p));
    let status = h.state.status(Timestamp(h.now));
    assert_eq!((status.totals.warm, status.totals.outdated), (0, 2));
    assert_eq!(status.nodes[0].counts.outdated, 2);
    // New ones of the current spec are warm.
    h.warm(&p, &n, 1);
    let c = h.state.pool_counts(&p);
    assert_eq!((c.warm, c.outdated), (1, 2));
}

#[test]
fn a_node_condition_shows_in_status_and_events_until_cleared() {
    let mut h = Harness::new();
    let n = h.node("n1");
    let cond = Condition {
        reason: "create_failed: no such image".into(),
        consecutive_failures: 3,
        retry_at: Timestamp(h.now + 4_000),
    };
    h.apply(Command::SetNodeCondition {
        node: n.clone(),
        condition: Some(cond.clone()),
    });
    let status = h.state.status(Timestamp(h.now));
    assert_eq!(status.nodes[0].condition, Some(cond.describe()));
    let kinds = |h: &Harness| -> Vec<EventKind> {
        h.state
            .events_since(0, &EventFilter::default())
            .iter()
            .map(|e| e.kind)
            .filter(|k| matches!(k, EventKind::NodeBackoff | EventKind::NodeRecovered))
            .collect()
    };
    assert_eq!(kinds(&h), vec![EventKind::NodeBackoff]);
    // Clearing twice says it once.
    for _ in 0..2 {
        h.apply(Command::SetNodeCondition {
            node: n.clone(),
            condition: None,
        });
    }
    assert_eq!(h.state.status(Timestamp(h.now)).nodes[0].condition, None);
    assert_eq!(
        kinds(&h),
        vec![EventKind::NodeBackoff, EventKind::NodeRecovered]
    );
    let r = h.apply(Command::SetNodeCondition {
        node: NodeId::new("nobody").unwrap(),
        condition: Some(cond),
    });
    assert_eq!(rejection(r), RejectCode::NotFound);
}

#[test]
fn snapshot_round_trip_restores_indexes_and_replay_is_deterministic() {
    let mut h = Harness::new();
    let n = h.node("n1");
    let p = h.pool("demo", 3);
    h.warm(&p, &n, 3);
    allocation(h.allocate(&p, Some("k")));

    let mut replayed = PoolState::default();
    for (index, req) in h.log.clone() {
        replayed.apply(index, req);
    }
    let json = serde_json::to_vec(&h.state).unwrap();
    assert_eq!(
        serde_json::to_vec(&replayed).unwrap(),
        json,
        "same log, same state"
    );

    let mut restored: PoolState = serde_json::from_slice(&json).unwrap();
    restored.rebuild_indexes();
    assert_eq!(serde_json::to_vec(&restored).unwrap(), json);
    assert!(restored.has_allocatable(&p), "warm index rebuilt");
    assert_eq!(restored.pool_counts(&p).warm, 2);
    let before = restored.pool_counts(&p).allocated;
    restored.apply(
        99,
        Request {
            at: Timestamp(2_000_000),
            cmd: Command::Allocate {
                allocation_id: AllocationId::new(),
                pool: p.clone(),
                session: SessionId::new("s").unwrap(),
                lease_ms: 1,
                idempotency_key: None,
                wait_ms: 0,
                tenant: Default::default(),
                token_sha256: None,
            },
        },
    );
    assert_eq!(restored.pool_counts(&p).allocated, before + 1);
}

#[test]
fn events_page_forward_and_back_with_filters() {
    let mut h = Harness::new();
    let n = h.node("n1");
    let p = h.pool("demo", 5);
    h.warm(&p, &n, 5);
    let all = h.state.events(None, None, 1000, &EventFilter::default());
    assert_eq!(
        all.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=all.len() as u64).collect::<Vec<_>>()
    );
    let page = h.state.events(Some(3), None, 2, &EventFilter::default());
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![4, 5]);
    let back = h.state.events(None, Some(5), 2, &EventFilter::default());
    assert_eq!(back.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 4]);
    let warm = EventFilter {
        kinds: vec![EventKind::ContainerWarm],
        ..Default::default()
    };
    assert_eq!(h.state.events(None, None, 1000, &warm).len(), 5);
}

fn wait_for(
    h: &mut Harness,
    pool: &PoolName,
    key: Option<&str>,
    wait_ms: u64,
) -> (AllocationId, Response) {
    let id = AllocationId::new();
    let r = h.apply(Command::Allocate {
        allocation_id: id,
        pool: pool.clone(),
        session: SessionId::new("w").unwrap(),
        lease_ms: 60_000,
        idempotency_key: key.map(str::to_string),
        wait_ms,
        tenant: Default::default(),
        token_sha256: None,
    });
    (id, r)
}

#[test]
fn waiting_allocations_are_served_first_come_first_served() {
    let mut h = Harness::new();
    let n = h.node("n1");
    let p = h.pool("demo", 0);
    let (first, r1) = wait_for(&mut h, &p, None, 5_000);
    let (second, r2) = wait_for(&mut h, &p, None, 5_000);
    assert!(matches!(r1, Response::Queued { position: 0, .. }), "{r1:?}");
    assert!(matches!(r2, Response::Queued { position: 1, .. }), "{r2:?}");
    assert_eq!(h.state.waiting(&p), 2);
    assert_eq!(h.state.arrivals(&p), 2);

    // A newcomer that will not wait is refused rather than jumping the queue.
    h.warm(&p, &n, 1);
    assert!(
        h.state.allocation(&first).is_some(),
        "the oldest waiter got the first warm container"
    );
    assert!(h.state.allocation(&second).is_none());
    let ids = h.plan(&p, &n, 1);
    let (third, r3) = wait_for(&mut h, &p, None, 5_000);
    assert!(
        matches!(r3, Response::Queued { position: 1, .. }),
        "behind the second: {r3:?}"
    );
    h.observe(&n, ids[0], ObservedStatus::Running, Health::Healthy);
    assert!(h.state.allocation(&second).is_some());
    assert!(h.state.allocation(&third).is_none());
    let waited = h.state.events(
        None,
        None,
        1000,
        &EventFilter {
            kinds: vec![EventKind::ContainerAllocated],
            ..Default::default()
        },
    );
    assert!(waited.iter().all(|e| e
        .detail
        .as_ref()
        .is_some_and(|d| d["waited_ms"].as_u64().is_some())));
}

#[test]
fn a_waiter_that_gives_up_leaves_the_queue_and_a_served_one_is_answered() {
    let mut h = Harness::new();
    let n = h.node("n1");
    let p = h.pool("demo", 0);
    let (gave_up, _) = wait_for(&mut h, &p, Some("k1"), 5_000);
    let (served, _) = wait_for(&mut h, &p, None, 5_000);
    let r = h.apply(Command::CancelWait {
        allocation_id: gave_up,
    });
    assert_eq!(rejection(r), RejectCode::NoCapacity);
    assert_eq!(h.state.waiting(&p), 1);
    assert!(
        h.state
            .allocation_by_key(&Default::default(), "k1")
            .is_none(),
        "its key is free again"
    );
    h.warm(&p, &n, 1);
    let (a, replayed) = allocation(h.apply(Command::CancelWait {
        allocation_id: served,
    }));
    assert!(
        replayed,
        "served before it gave up: the cancel answers the allocation"
    );
    assert_eq!(a.id, served);
}

#[test]
fn a_retry_of_a_queued_request_stays_in_its_place() {
    let mut h = Harness::new();
    let p = h.pool("demo", 0);
    let (id, _) = wait_for(&mut h, &p, Some("same"), 5_000);
    wait_for(&mut h, &p, None, 5_000);
    let (_, again) = wait_for(&mut h, &p, Some("same"), 5_000);
    assert_eq!(
        again,
        Response::Queued {
            allocation_id: id,
            position: 0
        }
    );
    assert_eq!(h.state.waiting(&p), 2, "not queued twice");
    assert_eq!(h.state.arrivals(&p), 2, "a retry is not new demand");
}

#[test]
fn waiters_whose_requester_vanished_expire() {
    let mut h = Harness::new();
    let n = h.node("n1");
    let p = h.pool("demo", 0);
    let (id, _) = wait_for(&mut h, &p, None, 100);
    h.now += 100 + WAIT_GRACE_MS + 1;
    h.apply(Command::ExpireWaits);
    assert_eq!(h.state.waiting(&p), 0);
    h.warm(&p, &n, 1);
    assert!(
        h.state.allocation(&id).is_none(),
        "an expired waiter is never served"
    );
    assert_eq!(h.state.pool_counts(&p).warm, 1);
}

#[test]
fn usage_counts_warm_overhead_and_allocated_time() {
    let mut h = Harness::new();
    let n = h.node("n1");
    let p = h.pool("demo", 2);
    h.warm(&p, &n, 2);
    let warm_since = h.now;
    h.now += 1_000;
    let (a, _) = allocation(h.allocate(&p, None)); // one container leaves warm here
    let allocated_at = h.now;
    h.now += 5_000;
    h.apply(Command::Release {
        allocation_id: a.id,
        reason: ReleaseReason::Client,
    });
    let released_at = h.now;
    let now = Timestamp(released_at + 2_000);
    let u = h.state.usage(&p, now);
    assert_eq!(u.allocated_ms, released_at - allocated_at);
    // The allocated container was warm from (about) warm_since to allocated_at; the other is
    // still warm at `now`.
    let first_warm = h
        .state
        .container(&a.container_id)
        .unwrap()
        .warm_at
        .unwrap()
        .0;
    let other_warm = h
        .state
        .containers()
        .find(|c| c.id != a.container_id)
        .unwrap()
        .warm_at
        .unwrap()
        .0;
    assert!(first_warm <= warm_since && other_warm <= warm_since);
    assert_eq!(
        u.warm_ms,
        (allocated_at - first_warm) + (now.0 - other_warm)
    );
    let by_session = h.state.session_usage("s-1", None, now);
    assert_eq!(by_session[&p], released_at - allocated_at);
}

#[test]
fn a_node_announcing_another_nodes_prefix_joins_cordoned_and_cannot_be_uncordoned() {
    let mut h = Harness::new();
    let n1 = h.node("n1");
    let taken = h.state.node(&n1).unwrap().ipv6_prefix.clone();
    let n2 = NodeId::new("n2").unwrap();
    h.apply(Command::NodeJoin {
        node: n2.clone(),
        // The same /64, written differently.
        ipv6_prefix: taken.replace("::/64", ":0:0::/64"),
        labels: BTreeMap::new(),
        capacity: Resources {
            cpu_millis: 2000,
            memory_mb: 4096,
        },
        agent_version: "test".into(),
    });
    let n = h.state.node(&n2).unwrap();
    assert_eq!(n.status, NodeStatus::Cordoned);
    assert!(
        n.reason.as_deref().unwrap().contains("n1"),
        "{:?}",
        n.reason
    );
    let r = h.apply(Command::SetNodeStatus {
        drain_deadline: None,
        node: n2.clone(),
        status: NodeStatus::Ready,
        reason: None,
    });
    assert_eq!(rejection(r), RejectCode::Conflict);
    // Once the owner is gone, the operator may uncordon it.
    h.apply(Command::NodeDown {
        node: NodeId::new("n1").unwrap(),
        reason: "gone".into(),
    });
    h.apply(Command::SetNodeStatus {
        drain_deadline: None,
        node: n2.clone(),
        status: NodeStatus::Ready,
        reason: None,
    });
    assert_eq!(h.state.node(&n2).unwrap().status, NodeStatus::Ready);
}

#[test]
fn indexes_follow_every_transition_and_the_pruning_of_old_records() {
    let mut h = Harness::new();
    let (a, b) = (h.node("na"), h.node("nb"));
    let p = h.pool("demo", 0);
    let q = h.pool("other", 0);
    // Enough ended containers to prune the oldest records out of the state (and the indexes).
    for round in 0..(ENDED_CONTAINER_RETENTION / 50 + 3) {
        let node = if round % 2 == 0 { &a } else { &b };
        let pool = if round % 3 == 0 { &q } else { &p };
        let ids = h.warm(pool, node, 50);
        let gone = ids
            .iter()
            .map(|id| (*id, "destroyed".to_string()))
            .collect();
        h.apply(Command::RetireContainers {
            ids: ids.clone(),
            reason: "scale_down".into(),
        });
        h.apply(Command::ContainersGone { gone });
    }
    assert!(h.state.containers().count() <= ENDED_CONTAINER_RETENTION);
    assert!(h.state.containers_of(&p).all(|c| c.pool == p));
    assert!(h.state.containers_on(&a).all(|c| c.node == a));

    // Allocations: active ones are indexed by expiry; renew moves them; release drops them.
    h.warm(&p, &a, 4);
    let (first, _) = allocation(h.allocate(&p, None));
    let (second, _) = allocation(h.allocate(&p, Some("k")));
    h.apply(Command::Renew {
        allocation_id: first.id,
        lease_ms: 600_000,
    });
    let order: Vec<_> = h.state.active_allocations().map(|x| x.id).collect();
    assert_eq!(order, vec![second.id, first.id], "soonest expiry first");
    let later = Timestamp(second.expires_at.0 + 1);
    let expired: Vec<_> = h.state.expired_allocations(later).map(|x| x.id).collect();
    assert_eq!(expired, vec![second.id]);
    h.apply(Command::Release {
        allocation_id: second.id,
        reason: ReleaseReason::Expired,
    });
    assert_eq!(h.state.active_allocations().count(), 1);

    // A node going down, a pool deleted, a container lost while allocated.
    h.warm(&q, &b, 3);
    h.apply(Command::NodeDown {
        node: b.clone(),
        reason: "test".into(),
    });
    assert!(h.state.containers_on(&b).all(|c| !c.state.is_live()));
    let [lost] = h.warm(&p, &a, 1)[..] else {
        unreachable!()
    };
    let (held, _) = allocation(h.allocate(&p, None));
    let holder = h.state.allocation(&held.id).unwrap().container_id;
    h.observe(&a, holder, ObservedStatus::Exited, Health::Healthy);
    assert!(h.state.active_allocations().all(|x| x.id != held.id));
    h.apply(Command::DeletePool { name: q.clone() });
    h.apply(Command::DeletePool { name: p.clone() });
    assert_eq!(h.state.active_allocations().count(), 0);
    let _ = lost;

    // Snapshots do not carry the indexes; loading one rebuilds them.
    let json = serde_json::to_vec(&h.state).unwrap();
    let mut loaded: PoolState = serde_json::from_slice(&json).unwrap();
    loaded.rebuild_indexes();
    loaded.assert_indexes_consistent();
    assert_eq!(
        loaded.containers_on(&a).map(|c| c.id).collect::<Vec<_>>(),
        h.state.containers_on(&a).map(|c| c.id).collect::<Vec<_>>()
    );
}

#[test]
fn counts_and_usage_from_the_indexes_match_a_full_scan() {
    let mut h = Harness::new();
    let (a, b) = (h.node("na"), h.node("nb"));
    let p = h.pool("demo", 0);
    let q = h.pool("other", 0);
    h.warm(&p, &a, 5);
    h.warm(&q, &b, 3);
    h.plan(&p, &b, 2);
    allocation(h.allocate(&p, None));
    allocation(h.allocate(&q, None));
    let now = Timestamp(h.now + 5_000);
    for pool in [&p, &q] {
        let mut scan = warmpool_proto::api::Counts::default();
        for c in h.state.containers().filter(|c| &c.pool == pool) {
            super::query::count_for_tests(&mut scan, c);
        }
        assert_eq!(h.state.pool_counts(pool), scan, "{pool}");
        let warm: u64 = h
            .state
            .containers()
            .filter(|c| &c.pool == pool && c.state == ContainerState::Warm)
            .map(|c| now.since(c.warm_at.unwrap()).as_millis() as u64)
            .sum();
        let held: u64 = h
            .state
            .allocations()
            .filter(|x| &x.pool == pool && x.state == AllocationState::Active)
            .map(|x| now.since(x.created_at).as_millis() as u64)
            .sum();
        // Closed intervals (the allocated container's warm spell) come from the totals.
        let closed = h.state.usage.get(pool).copied().unwrap_or_default();
        let u = h.state.usage(pool, now);
        assert_eq!(
            (u.warm_ms, u.allocated_ms),
            (closed.warm_ms + warm, closed.allocated_ms + held),
            "{pool}"
        );
    }
    for node in [&a, &b] {
        let mut scan = warmpool_proto::api::Counts::default();
        for c in h.state.containers().filter(|c| &c.node == node) {
            super::query::count_for_tests(&mut scan, c);
        }
        assert_eq!(h.state.node_counts(node), scan, "{node}");
    }
}

#[test]
fn a_batch_applies_its_requests_in_order_like_separate_entries() {
    let alloc = |key: &str, pool: &PoolName| Command::Allocate {
        allocation_id: AllocationId::new(),
        pool: pool.clone(),
        session: SessionId::new("s").unwrap(),
        lease_ms: 60_000,
        idempotency_key: Some(key.to_string()),
        wait_ms: 0,
        tenant: Default::default(),
        token_sha256: None,
    };
    let mut h = Harness::new();
    let n = h.node("n1");
    let p = h.pool("demo", 2);
    h.warm(&p, &n, 2);
    let at = Timestamp(h.now + 5);
    let requests = vec![
        Request {
            at,
            cmd: alloc("a", &p),
        },
        Request {
            at,
            cmd: alloc("a", &p),
        },
        Request {
            at,
            cmd: alloc("b", &p),
        },
        Request {
            at,
            cmd: alloc("c", &p),
        },
        Request {
            at,
            cmd: Command::Batch { requests: vec![] },
        },
    ];
    let Response::Batch { responses } = h.apply(Command::Batch { requests }) else {
        panic!("a batch is answered with a batch");
    };
    assert_eq!(responses.len(), 5);
    let mut it = responses.into_iter();
    let (first, replayed) = allocation(it.next().unwrap());
    assert!(!replayed);
    let (again, replayed) = allocation(it.next().unwrap());
    assert!(
        replayed,
        "the same key within one batch is answered, not doubled"
    );
    assert_eq!(first.id, again.id);
    let (second, _) = allocation(it.next().unwrap());
    assert_ne!(first.container_id, second.container_id);
    assert_eq!(rejection(it.next().unwrap()), RejectCode::NoCapacity);
    assert_eq!(rejection(it.next().unwrap()), RejectCode::Invalid);
    assert_eq!(h.state.pool_counts(&p).allocated, 2);
}

#[test]
fn tenants_quotas_and_idempotency_keys_are_their_own() {
    let mut h = Harness::new();
    let n = h.node("n1");
    let p = h.pool("demo", 4);
    h.warm(&p, &n, 4);
    let acme = TenantId::new("acme").unwrap();
    let bolt = TenantId::new("bolt").unwrap();
    let alloc = |h: &mut Harness, tenant: &TenantId, key: Option<&str>| {
        h.apply(Command::Allocate {
            allocation_id: AllocationId::new(),
            pool: p.clone(),
            session: SessionId::new("s").unwrap(),
            lease_ms: 60_000,
            idempotency_key: key.map(str::to_string),
            wait_ms: 0,
            tenant: tenant.clone(),
            token_sha256: None,
        })
    };
    // The same key in two tenants: two allocations; in one tenant: a replay.
    let (a, _) = allocation(alloc(&mut h, &acme, Some("k")));
    let (b, _) = allocation(alloc(&mut h, &bolt, Some("k")));
    assert_ne!(a.id, b.id);
    assert_eq!(
        (a.tenant.clone(), b.tenant.clone()),
        (acme.clone(), bolt.clone())
    );
    let (again, replayed) = allocation(alloc(&mut h, &acme, Some("k")));
    assert!(replayed && again.id == a.id);
    assert_eq!(
        h.state.allocation_by_key(&bolt, "k").map(|x| x.id),
        Some(b.id)
    );

    // At its max, a tenant is refused and nothing changes; a release frees the quota.
    h.apply(Command::PutTenant {
        tenant: acme.clone(),
        quota: warmpool_proto::api::TenantQuota {
            max_allocations: Some(1),
            ..Default::default()
        },
    });
    let warm_before = h.state.pool_counts(&p).warm;
    match alloc(&mut h, &acme, None) {
        Response::Rejected(r) => assert_eq!(r.code, RejectCode::OverQuota),
        other => panic!("{other:?}"),
    }
    assert_eq!(h.state.pool_counts(&p).warm, warm_before);
    assert_eq!(h.state.tenant_allocations(&acme), 1);
    allocation(alloc(&mut h, &bolt, None));
    h.apply(Command::Release {
        allocation_id: a.id,
        reason: ReleaseReason::Client,
    });
    allocation(alloc(&mut h, &acme, None));

    // A rate of 60 a minute, burst 1: one now, the next refused with the wait until a token.
    h.apply(Command::PutTenant {
        tenant: bolt.clone(),
        quota: warmpool_proto::api::TenantQuota {
            allocations_per_minute: Some(60),
            burst: Some(1),
            ..Default::default()
        },
    });
    h.warm(&p, &n, 2);
    allocation(alloc(&mut h, &bolt, None));
    match alloc(&mut h, &bolt, None) {
        Response::Rejected(r) => {
            assert_eq!(r.code, RejectCode::RateLimited);
            let wait = r.retry_after_ms.unwrap();
            assert!(wait > 900 && wait <= 1000, "{wait}");
        }
        other => panic!("{other:?}"),
    }
    h.now += 1_000;
    allocation(alloc(&mut h, &bolt, None));
}
