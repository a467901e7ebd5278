//! Allocations: grants, idempotency, renewals and the waiting queue.

use super::*;
use warmpool_proto::Tier;

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
    let cmd = Command::plain_allocate(p.clone(), SessionId::new("s").unwrap(), 1000);
    let (a, _) = allocation(h.apply(cmd.clone()));
    let (b, replayed) = allocation(h.apply(cmd));
    assert!(replayed);
    assert_eq!(a.id, b.id);
    assert_eq!(h.state.pool_counts(&p).allocated, 1);
}

#[test]
fn a_workspace_is_restoring_until_the_member_reports_and_then_stays() {
    use warmpool_proto::workspace::WorkspaceState;
    let mut h = Harness::new();
    let n = h.node("n1");
    let p = h.pool("demo", 1);
    h.warm(&p, &n, 1);
    let (a, _) = allocation(h.apply(Command::Allocate {
        allocation_id: AllocationId::new(),
        pool: p.clone(),
        session: SessionId::new("s").unwrap(),
        lease_ms: 1000,
        idempotency_key: None,
        wait_ms: 0,
        tenant: Default::default(),
        metadata: Default::default(),
        with_settings: false,
        workspace: Some("proj-1".into()),
        token_sha256: None,
        asynchronous: false,
        location: None,
        max_lifetime_secs: None,
    }));
    let w = a.workspace.clone().unwrap();
    assert_eq!(
        (w.id.as_str(), w.state),
        ("proj-1", WorkspaceState::Restoring)
    );
    let restored = |h: &mut Harness, state| {
        allocation(h.apply(Command::WorkspaceRestored {
            allocation_id: a.id,
            state,
        }))
        .0
        .workspace
        .unwrap()
        .state
    };
    assert_eq!(
        restored(&mut h, WorkspaceState::Restored),
        WorkspaceState::Restored
    );
    // A late report (a retry's) changes nothing.
    assert_eq!(
        restored(&mut h, WorkspaceState::Failed),
        WorkspaceState::Restored
    );
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
        metadata: Default::default(),
        with_settings: false,
        workspace: None,
        token_sha256: None,
        asynchronous: false,
        location: None,
        max_lifetime_secs: None,
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
fn a_waiter_whose_client_hung_up_leaves_the_queue_at_once() {
    let mut h = Harness::new();
    let n = h.node("n1");
    let p = h.pool("demo", 0);
    let (hung_up, _) = wait_for(&mut h, &p, Some("k1"), 60_000);
    let (stays, _) = wait_for(&mut h, &p, None, 60_000);
    let r = h.apply(Command::Abandon {
        allocation_id: hung_up,
        grace_ms: 30_000,
        idempotency_key: Some("k1".into()),
        tenant: Default::default(),
    });
    assert_eq!(r, Response::Ok);
    assert_eq!(
        h.state.waiting(&p),
        1,
        "gone from the queue, long before its deadline"
    );
    h.warm(&p, &n, 1);
    assert!(h.state.allocation(&hung_up).is_none(), "never served");
    assert!(
        h.state.allocation(&stays).is_some(),
        "the next waiter got the container"
    );
}

#[test]
fn allocation_takes_warm_first_then_paused_and_says_which() {
    let mut h = Harness::new();
    let n = h.node("n1");
    let p = h.pool("demo", 1);
    let ids = h.warm(&p, &n, 3);
    // The two newest go to the paused tier.
    h.apply(Command::PauseContainers {
        ids: vec![ids[1], ids[2]],
    });
    for id in &ids[1..] {
        assert_eq!(h.state.container(id).unwrap().state, ContainerState::Paused);
        assert!(h.kinds_for(*id).contains(&EventKind::ContainerPaused));
    }
    // A paused container is not paused twice, an allocated one never.
    let (first, _) = allocation(h.allocate(&p, None));
    assert_eq!((first.container_id, first.tier), (ids[0], Some(Tier::Warm)));
    h.apply(Command::PauseContainers { ids: vec![ids[0]] });
    assert_eq!(
        h.state.container(&ids[0]).unwrap().state,
        ContainerState::Allocated
    );
    let (second, _) = allocation(h.allocate(&p, None));
    assert_eq!(
        (second.container_id, second.tier),
        (ids[1], Some(Tier::Paused))
    );
    let (third, _) = allocation(h.allocate(&p, None));
    assert_eq!(
        (third.container_id, third.tier),
        (ids[2], Some(Tier::Paused))
    );
    assert_eq!(rejection(h.allocate(&p, None)), RejectCode::NoCapacity);
}

#[test]
fn a_paused_container_that_does_not_answer_is_replaced_and_the_allocation_moves() {
    let mut h = Harness::new();
    let n = h.node("n1");
    let p = h.pool("demo", 0);
    let ids = h.warm(&p, &n, 2);
    h.apply(Command::PauseContainers { ids: ids.clone() });
    let (a, _) = allocation(h.allocate(&p, None));
    assert_eq!((a.container_id, a.tier), (ids[0], Some(Tier::Paused)));

    // The agent could not make it answer: it is destroyed, the allocation moves.
    let (moved, _) = allocation(h.apply(Command::UnpauseFailed {
        allocation_id: a.id,
        container: ids[0],
    }));
    assert_eq!(moved.id, a.id);
    assert_eq!(
        (moved.container_id, moved.tier),
        (ids[1], Some(Tier::Paused))
    );
    assert_eq!(moved.state, AllocationState::Active);
    let failed = h.state.container(&ids[0]).unwrap();
    assert_eq!(failed.state, ContainerState::Releasing);
    assert_eq!(failed.reason, Some(ContainerEndReason::UnpauseFailed));
    assert_eq!(failed.allocation, None);
    assert!(h
        .kinds_for(ids[0])
        .contains(&EventKind::ContainerUnpauseFailed));
    let holder = h.state.container(&ids[1]).unwrap();
    assert_eq!(
        (holder.state, holder.allocation),
        (ContainerState::Allocated, Some(a.id))
    );
    // A repeat changes nothing.
    let (again, _) = allocation(h.apply(Command::UnpauseFailed {
        allocation_id: a.id,
        container: ids[0],
    }));
    assert_eq!(again.container_id, ids[1]);

    // With nothing left to move to, the allocation ends (lost).
    let (ended, _) = allocation(h.apply(Command::UnpauseFailed {
        allocation_id: a.id,
        container: ids[1],
    }));
    assert_eq!(ended.state, AllocationState::Released);
    assert_eq!(
        h.state.container(&ids[1]).unwrap().state,
        ContainerState::Releasing
    );
}

#[test]
fn each_request_keeps_its_time_for_the_scaler_until_a_snapshot() {
    let mut h = Harness::new();
    let p = h.pool("demo", 0);
    let mut made = Vec::new();
    for _ in 0..3 {
        h.now += 137;
        // Refused (no warm container, no wait): demand all the same.
        assert_eq!(rejection(h.allocate(&p, None)), RejectCode::NoCapacity);
        made.push(Timestamp(h.now));
    }
    assert_eq!(h.state.arrival_times(&p, 2), (made[1..].to_vec(), 0));
    assert_eq!(
        h.state.arrival_times(&p, 5),
        (made.clone(), 2),
        "two it never saw"
    );
    assert_eq!(h.state.arrival_times(&p, 0), (vec![], 0));
    // A state loaded from a snapshot knows the count, not the times.
    let loaded: PoolState =
        serde_json::from_str(&serde_json::to_string(&h.state).unwrap()).unwrap();
    assert_eq!(loaded.arrivals(&p), 3);
    assert_eq!(loaded.arrival_times(&p, 3), (vec![], 3));
    // A deleted pool's times go with it.
    h.apply(Command::DeletePool { name: p.clone() });
    assert_eq!(h.state.arrival_times(&p, 1), (vec![], 1));
}
