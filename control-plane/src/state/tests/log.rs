//! The log as a whole: snapshots, replay, event pages, batches.

use super::*;

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
            cmd: Command::plain_allocate(p.clone(), SessionId::new("s").unwrap(), 1),
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
        metadata: Default::default(),
        with_settings: false,
        workspace: None,
        token_sha256: None,
        asynchronous: false,
        location: None,
        max_lifetime_secs: None,
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
