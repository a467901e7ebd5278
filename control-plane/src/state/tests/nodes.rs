//! Nodes: down and lost, cordon and drain, conditions, prefix conflicts.

use super::*;

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
