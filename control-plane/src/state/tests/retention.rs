//! Eviction to the archive and paged lists, with plain values.

use super::*;

/// A harness whose state keeps evicted records, with the caps set low through the log.
fn low_caps(caps: usize) -> Harness {
    let mut h = Harness::new();
    h.state.collect_evicted(true);
    let r = h.apply(Command::SetRetention {
        retention: Retention {
            events: caps,
            ended_containers: caps,
            released_allocations: caps,
        },
    });
    assert_eq!(r, Response::Ok);
    h
}

/// Allocates and releases `n` times in `pool` on `node`, each container ending after.
fn cycles(h: &mut Harness, pool: &PoolName, node: &NodeId, n: usize) -> Vec<AllocationId> {
    let mut ids = Vec::new();
    for _ in 0..n {
        h.warm(pool, node, 1);
        let (a, _) = allocation(h.allocate(pool, Some(&uuid::Uuid::now_v7().to_string())));
        h.apply(Command::Release {
            allocation_id: a.id,
            reason: ReleaseReason::Client,
        });
        h.apply(Command::ContainersGone {
            gone: vec![(a.container_id, ContainerEndReason::Destroyed)],
        });
        ids.push(a.id);
    }
    ids
}

#[test]
fn retention_out_of_range_is_refused_and_leaves_the_caps() {
    let mut h = Harness::new();
    for bad in [0, RETENTION_MIN - 1, RETENTION_MAX + 1] {
        let r = h.apply(Command::SetRetention {
            retention: Retention {
                events: bad,
                ..Retention::default()
            },
        });
        assert_eq!(rejection(r), RejectCode::Invalid);
    }
    assert_eq!(h.state.retention(), Retention::default());
}

#[test]
fn the_oldest_records_past_the_caps_are_evicted_once_each_and_handed_over_in_order() {
    let mut h = low_caps(10);
    let (n, p) = (h.node("n1"), h.pool("demo", 0));
    let released = cycles(&mut h, &p, &n, 30);
    let evicted = h.state.take_evicted();
    // The state is bounded by the caps.
    assert_eq!(
        h.state
            .events(None, None, 1000, &EventFilter::default())
            .len(),
        10
    );
    assert_eq!(
        h.state
            .allocations()
            .filter(|a| a.state == AllocationState::Released)
            .count(),
        10
    );
    assert!(h.state.containers().filter(|c| !c.state.is_live()).count() <= 10);
    // Every evicted allocation is an old released one, oldest first, none twice; the newest
    // ten are still in the state, and their keys are forgotten with them.
    let gone: Vec<AllocationId> = evicted
        .iter()
        .flat_map(|b| b.allocations.iter().map(|a| a.id))
        .collect();
    assert_eq!(gone, released[..20]);
    for b in &evicted {
        for a in &b.allocations {
            assert!(h.state.allocation(&a.id).is_none());
            let key = a.idempotency_key.as_deref().unwrap();
            assert!(h.state.allocation_by_key(&a.tenant, key).is_none());
        }
    }
    // Events leave in sequence, with no gap between the evicted and the kept.
    let seqs: Vec<u64> = evicted
        .iter()
        .flat_map(|b| b.events.iter().map(|(e, _)| e.seq))
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    let first_kept = h.state.events(Some(0), None, 1, &EventFilter::default())[0].seq;
    assert_eq!(seqs.last().copied(), Some(first_kept - 1));
    assert_eq!(seqs.first().copied(), Some(1));
    // Events of an allocation carry its tenant.
    assert!(evicted
        .iter()
        .flat_map(|b| &b.events)
        .filter(|(e, _)| e.allocation.is_some())
        .all(|(_, t)| t.is_some()));
    // Batches are in log order, one per entry that evicted something.
    assert!(evicted.windows(2).all(|w| w[0].index < w[1].index));
    assert!(h.state.take_evicted().is_empty(), "taken once");
}

#[test]
fn every_member_evicts_the_same_records_at_the_same_index() {
    let mut h = low_caps(10);
    let (n, p) = (h.node("n1"), h.pool("demo", 0));
    cycles(&mut h, &p, &n, 15);
    let mine = h.state.take_evicted();
    // Another member applies the same log.
    let mut other = PoolState::default();
    other.collect_evicted(true);
    for (i, req) in h.log.clone() {
        other.apply(i, req);
    }
    assert_eq!(other.take_evicted(), mine);
    // A member restarted from a snapshot taken mid-way evicts the rest the same way.
    let mid = h.log.len() / 2;
    let mut early = PoolState::default();
    for (i, req) in h.log[..mid].iter().cloned() {
        early.apply(i, req);
    }
    let mut restored: PoolState =
        serde_json::from_str(&serde_json::to_string(&early).unwrap()).unwrap();
    restored.rebuild_indexes();
    restored.collect_evicted(true);
    for (i, req) in h.log[mid..].iter().cloned() {
        restored.apply(i, req);
    }
    let split = h.log[mid].0;
    let tail: Vec<Evicted> = mine.into_iter().filter(|b| b.index >= split).collect();
    assert_eq!(restored.take_evicted(), tail);
}

#[test]
fn without_collecting_nothing_is_kept_for_the_archive() {
    let mut h = Harness::new();
    h.apply(Command::SetRetention {
        retention: Retention {
            events: 10,
            ended_containers: 10,
            released_allocations: 10,
        },
    });
    let (n, p) = (h.node("n1"), h.pool("demo", 0));
    cycles(&mut h, &p, &n, 12);
    assert!(h.state.take_evicted().is_empty());
}

#[test]
fn pages_walk_a_list_in_id_order_without_loss_or_repeat() {
    let mut h = Harness::new();
    let (a, b) = (h.node("na"), h.node("nb"));
    let (p, q) = (h.pool("demo", 0), h.pool("other", 0));
    h.warm(&p, &a, 7);
    h.warm(&q, &b, 5);
    h.warm(&p, &b, 4);
    let all_of = |pool: &PoolName, node: Option<&NodeId>| {
        let mut ids: Vec<ContainerId> = h
            .state
            .containers()
            .filter(|c| &c.pool == pool && node.is_none_or(|n| &c.node == n))
            .map(|c| c.id)
            .collect();
        ids.sort();
        ids
    };
    for (pool, node) in [
        (Some(&p), None),
        (None, Some(&b)),
        (Some(&p), Some(&b)),
        (None, None),
    ] {
        for size in [1, 3, 100] {
            let mut got = Vec::new();
            let mut after = None;
            loop {
                let (page, more) = h.state.containers_page(after, pool, node, size, |c| {
                    pool.is_none_or(|p| &c.pool == p) && node.is_none_or(|n| &c.node == n)
                });
                assert!(page.len() <= size);
                got.extend(page.iter().map(|c| c.id));
                after = page.last().map(|c| c.id);
                if !more {
                    break;
                }
            }
            let want: Vec<ContainerId> = match pool {
                Some(pool) => all_of(pool, node),
                None => {
                    let mut v = all_of(&p, node);
                    v.extend(all_of(&q, node));
                    v.sort();
                    v
                }
            };
            assert_eq!(got, want, "pool {pool:?} node {node:?} page {size}");
        }
    }

    // Allocations: granted and waiting ones in one id order.
    let mut made = Vec::new();
    for _ in 0..5 {
        made.push(allocation(h.allocate(&q, None)).0.id);
    }
    // A sixth waits (the pool has five containers).
    let waiting = AllocationId::new();
    h.apply(Command::Allocate {
        allocation_id: waiting,
        pool: q.clone(),
        session: SessionId::new("s-w").unwrap(),
        lease_ms: 60_000,
        idempotency_key: None,
        wait_ms: 10_000,
        tenant: Default::default(),
        metadata: Default::default(),
        with_settings: false,
        workspace: None,
        token_sha256: None,
        asynchronous: false,
        location: None,
        max_lifetime_secs: None,
    });
    assert!(h.state.is_waiting(&waiting));
    made.push(waiting);
    made.sort();
    let mut got = Vec::new();
    let mut after = None;
    loop {
        let (page, more) = h.state.allocations_page(after, 2, |a| a.pool == q);
        got.extend(page.iter().map(|a| a.id));
        after = page.last().map(|a| a.id);
        if !more {
            break;
        }
    }
    assert_eq!(got, made);
    let (none, more) = h.state.allocations_page(None, 5, |_| false);
    assert!(none.is_empty() && !more);
}

#[test]
fn take_page_says_whether_another_item_passes() {
    let (page, more) = query::take_page(1..=10, 3, |n| n % 2 == 0);
    assert_eq!((page, more), (vec![2, 4, 6], true));
    let (page, more) = query::take_page(1..=10, 5, |n| n % 2 == 0);
    assert_eq!((page, more), (vec![2, 4, 6, 8, 10], false));
}
