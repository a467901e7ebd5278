//! Containers: planned, warm, unhealthy, killed, lost; the derived indexes and usage.

use super::*;

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
        c.reason,
        Some(ContainerEndReason::Client),
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
    assert_eq!(c.reason, Some(ContainerEndReason::Unhealthy));
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
    assert_eq!(
        c.reason,
        Some(ContainerEndReason::Exited { code: Some(137) })
    );
    // The ended record stays for history; the leader's reconciliation no longer reads it.
    assert_eq!(h.state.containers_on(&n).count(), 1);
    assert_eq!(h.state.live_containers_on(&n).count(), 0);
    assert_eq!(h.state.live_containers_on_count(&n), 0);
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
            .map(|id| (*id, ContainerEndReason::Destroyed))
            .collect();
        h.apply(Command::RetireContainers {
            ids: ids.clone(),
            reason: "scale_down".into(),
            timed: true,
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
fn a_retired_container_says_when_it_was_let_go_and_how_long_it_took_to_go() {
    let mut h = Harness::new();
    let n = h.node("n1");
    let p = h.pool("demo", 0);
    // Destroys `id` and reads its `container_terminated` event.
    let gone = |h: &mut Harness, id: ContainerId| {
        h.apply(Command::ContainersGone {
            gone: vec![(id, ContainerEndReason::Destroyed)],
        });
        h.events_for(id)
            .into_iter()
            .find(|e| e.kind == EventKind::ContainerTerminated)
            .unwrap()
    };
    let [id] = h.warm(&p, &n, 1)[..] else {
        unreachable!()
    };
    assert_eq!(h.state.container(&id).unwrap().released_at, None);
    h.apply(Command::RetireContainers {
        ids: vec![id],
        reason: "scale_down".into(),
        timed: true,
    });
    let retired = h.state.container(&id).unwrap().released_at.unwrap();
    assert_eq!(retired, Timestamp(h.now));
    h.now += 1_490;
    let e = gone(&mut h, id);
    assert_eq!(e.reason.as_deref(), Some("scale_down"));
    assert_eq!(
        e.detail.as_ref().unwrap()["teardown_ms"],
        1_500,
        "from its retirement to the write that recorded it gone: {e:?}"
    );

    // An entry written before the field existed is applied as it was then: no time kept, no
    // detail on the event (a log replayed by this version makes the events it made).
    let [old] = h.warm(&p, &n, 1)[..] else {
        unreachable!()
    };
    let entry: Command = serde_json::from_value(serde_json::json!({
        "cmd": "retire_containers", "ids": [old], "reason": "scale_down"
    }))
    .unwrap();
    h.apply(entry);
    assert_eq!(h.state.container(&old).unwrap().released_at, None);
    let e = gone(&mut h, old);
    assert_eq!(e.detail, None, "{e:?}");
}
