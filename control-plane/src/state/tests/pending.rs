//! Pending (asynchronous) allocations, per-request location and lifetime.

use warmpool_proto::api::{Location, LocationValue, TenantQuota};

use super::*;

fn labelled(h: &mut Harness, name: &str, region: &str) -> NodeId {
    let node = NodeId::new(name).unwrap();
    h.apply(Command::NodeJoin {
        node: node.clone(),
        ipv6_prefix: format!(
            "fd36:{:x}::/64",
            name.bytes().map(usize::from).sum::<usize>()
        ),
        labels: BTreeMap::from([("region".to_string(), region.to_string())]),
        capacity: Resources {
            cpu_millis: 2000,
            memory_mb: 4096,
        },
        agent_version: "test".into(),
    });
    node
}

fn region(values: &[&str]) -> Location {
    let v = match values {
        [one] => LocationValue::One(one.to_string()),
        many => LocationValue::Prefer(many.iter().map(|s| s.to_string()).collect()),
    };
    BTreeMap::from([("region".to_string(), v)])
}

struct Ask {
    key: Option<&'static str>,
    asynchronous: bool,
    location: Option<Location>,
    max_lifetime_secs: Option<u64>,
    tenant: TenantId,
}

impl Default for Ask {
    fn default() -> Self {
        Ask {
            key: None,
            asynchronous: true,
            location: None,
            max_lifetime_secs: None,
            tenant: TenantId::default_tenant(),
        }
    }
}

fn ask(h: &mut Harness, pool: &PoolName, a: Ask) -> (AllocationId, Response) {
    let id = AllocationId::new();
    let r = h.apply(Command::Allocate {
        allocation_id: id,
        pool: pool.clone(),
        session: SessionId::new("s-async").unwrap(),
        lease_ms: 60_000,
        idempotency_key: a.key.map(str::to_string),
        wait_ms: 0,
        tenant: a.tenant,
        metadata: Default::default(),
        with_settings: false,
        token_sha256: None,
        workspace: None,
        asynchronous: a.asynchronous,
        location: a.location,
        max_lifetime_secs: a.max_lifetime_secs,
    });
    (id, r)
}

fn kinds_of(h: &Harness, id: AllocationId) -> Vec<EventKind> {
    h.state
        .events(None, None, 1000, &EventFilter::default())
        .iter()
        .filter(|e| e.allocation == Some(id))
        .map(|e| e.kind)
        .collect()
}

#[test]
fn an_async_allocation_is_pending_with_no_deadline_until_a_container_is_warm() {
    let mut h = Harness::new();
    let n = h.node("n1");
    let p = h.pool("demo", 0);
    let (id, r) = ask(&mut h, &p, Ask::default());
    assert!(matches!(r, Response::Queued { position: 0, .. }), "{r:?}");
    let pending = h.state.allocation_or_pending(&id).unwrap();
    assert_eq!(pending.state, AllocationState::Pending);
    assert!(pending.container_id.is_nil() && pending.node.is_unassigned());
    assert_eq!(h.state.pending_allocations().count(), 1);
    // Far past any wait_ms: still pending.
    h.now += 3_600_000;
    h.apply(Command::ExpireWaits);
    assert_eq!(h.state.waiting(&p), 1);
    h.warm(&p, &n, 1);
    let a = h.state.allocation(&id).unwrap();
    assert_eq!(a.state, AllocationState::Active);
    assert_eq!(a.node, n);
    assert!(h.state.pending_allocation(&id).is_none());
    assert_eq!(
        kinds_of(&h, id),
        [EventKind::AllocationPending, EventKind::ContainerAllocated]
    );
}

#[test]
fn cancelling_a_pending_allocation_answers_it_cancelled_and_frees_its_key() {
    let mut h = Harness::new();
    let n = h.node("n1");
    let p = h.pool("demo", 0);
    let (id, _) = ask(
        &mut h,
        &p,
        Ask {
            key: Some("k"),
            ..Default::default()
        },
    );
    let (a, _) = allocation(h.apply(Command::Release {
        allocation_id: id,
        reason: ReleaseReason::Client,
    }));
    assert_eq!(a.state, AllocationState::Cancelled);
    assert_eq!(a.id, id);
    assert_eq!(h.state.waiting(&p), 0);
    assert!(h.state.allocation_or_pending(&id).is_none());
    assert_eq!(
        kinds_of(&h, id),
        [EventKind::AllocationPending, EventKind::AllocationCancelled]
    );
    // A warm container now is not taken by the cancelled one.
    h.warm(&p, &n, 1);
    assert!(h.state.allocation(&id).is_none());
    assert_eq!(h.state.pool_counts(&p).warm, 1);
    // Renewing a pending one is a conflict, not a not-found.
    let (other, _) = ask(
        &mut h,
        &p,
        Ask {
            location: Some(region(&["nowhere"])),
            ..Default::default()
        },
    );
    assert!(h.state.allocation_or_pending(&other).is_none(), "refused");
}

#[test]
fn a_retry_of_a_pending_allocation_answers_the_same_one_and_quotas_count_it() {
    let mut h = Harness::new();
    let p = h.pool("demo", 0);
    let acme = TenantId::new("acme").unwrap();
    h.apply(Command::PutTenant {
        tenant: acme.clone(),
        quota: TenantQuota {
            max_allocations: Some(1),
            ..Default::default()
        },
    });
    let (id, _) = ask(
        &mut h,
        &p,
        Ask {
            key: Some("same"),
            tenant: acme.clone(),
            ..Default::default()
        },
    );
    let (_, again) = ask(
        &mut h,
        &p,
        Ask {
            key: Some("same"),
            tenant: acme.clone(),
            ..Default::default()
        },
    );
    assert_eq!(
        again,
        Response::Queued {
            allocation_id: id,
            position: 0
        }
    );
    let (_, over) = ask(
        &mut h,
        &p,
        Ask {
            tenant: acme.clone(),
            ..Default::default()
        },
    );
    assert_eq!(rejection(over), RejectCode::OverQuota);
    assert_eq!(h.state.tenant_allocations(&acme), 1);
    let r = h.apply(Command::Renew {
        allocation_id: id,
        lease_ms: 1000,
    });
    assert_eq!(rejection(r), RejectCode::Conflict);
}

#[test]
fn a_located_allocation_is_served_only_from_a_matching_node() {
    let mut h = Harness::new();
    let us = labelled(&mut h, "us1", "us");
    let eu = labelled(&mut h, "eu1", "eu");
    let p = h.pool("demo", 0);
    h.warm(&p, &us, 1);
    let (id, r) = ask(
        &mut h,
        &p,
        Ask {
            location: Some(region(&["eu"])),
            ..Default::default()
        },
    );
    assert!(
        matches!(r, Response::Queued { .. }),
        "us is warm, not eu: {r:?}"
    );
    // A request with no location behind it takes the us container: no one ahead wanted it.
    let (plain, r) = ask(&mut h, &p, Ask::default());
    assert_eq!(allocation(r).0.node, us);
    assert!(h.state.allocation(&plain).is_some());
    // Another us container does not serve the eu waiter; an eu one does.
    h.warm(&p, &us, 1);
    assert!(h.state.allocation(&id).is_none());
    h.warm(&p, &eu, 1);
    let a = h.state.allocation(&id).unwrap();
    assert_eq!(a.node, eu);
    assert_eq!(a.location, Some(region(&["eu"])));
}

#[test]
fn a_preference_order_takes_the_first_place_with_a_warm_container() {
    let mut h = Harness::new();
    let us = labelled(&mut h, "us1", "us");
    let eu = labelled(&mut h, "eu1", "eu");
    let p = h.pool("demo", 0);
    h.warm(&p, &us, 1);
    h.warm(&p, &eu, 1);
    let pref = || Ask {
        asynchronous: false,
        location: Some(region(&["eu", "us"])),
        ..Default::default()
    };
    let (_, r) = ask(&mut h, &p, pref());
    assert_eq!(
        allocation(r).0.node,
        eu,
        "eu first, though us was warm longer"
    );
    let (_, r) = ask(&mut h, &p, pref());
    assert_eq!(allocation(r).0.node, us, "then us");
}

#[test]
fn a_location_no_ready_node_matches_is_refused_at_once() {
    let mut h = Harness::new();
    let eu = labelled(&mut h, "eu1", "eu");
    let p = h.pool("demo", 0);
    let (_, r) = ask(
        &mut h,
        &p,
        Ask {
            location: Some(region(&["ap"])),
            ..Default::default()
        },
    );
    let Response::Rejected(rej) = r else {
        panic!("{r:?}")
    };
    assert_eq!(rej.code, RejectCode::NoMatchingNode);
    assert!(rej.message.contains("ap"), "{}", rej.message);
    assert_eq!(h.state.waiting(&p), 0, "a refusal changes nothing");
    // A cordoned eu node can make none: refused too.
    h.apply(Command::SetNodeStatus {
        node: eu,
        status: NodeStatus::Cordoned,
        reason: None,
        drain_deadline: None,
    });
    let (_, r) = ask(
        &mut h,
        &p,
        Ask {
            location: Some(region(&["eu"])),
            ..Default::default()
        },
    );
    assert_eq!(rejection(r), RejectCode::NoMatchingNode);
}

#[test]
fn a_request_lifetime_caps_the_allocation_below_its_pool() {
    let mut h = Harness::new();
    let n = h.node("n1");
    let p = h.pool("demo", 0);
    h.warm(&p, &n, 1);
    let (_, r) = ask(
        &mut h,
        &p,
        Ask {
            asynchronous: false,
            max_lifetime_secs: Some(30),
            ..Default::default()
        },
    );
    let a = allocation(r).0;
    assert_eq!(a.max_expires_at, Some(a.created_at.plus_millis(30_000)));
    assert_eq!(
        a.expires_at,
        a.created_at.plus_millis(30_000),
        "lease 60 s, capped"
    );
}

#[test]
fn deleting_a_pool_cancels_its_pending_allocations() {
    let mut h = Harness::new();
    let p = h.pool("demo", 0);
    let (id, _) = ask(&mut h, &p, Ask::default());
    h.apply(Command::DeletePool { name: p.clone() });
    assert_eq!(h.state.waiting(&p), 0);
    assert!(kinds_of(&h, id).contains(&EventKind::AllocationCancelled));
}

#[test]
fn a_pending_allocation_stored_before_these_fields_loads() {
    // A queued waiter as an earlier version wrote it.
    let old = serde_json::json!({
        "allocation_id": AllocationId::new(),
        "session": "s",
        "lease_ms": 1000,
        "idempotency_key": null,
        "since": "2026-01-01T00:00:00.000Z",
        "deadline": "2026-01-01T00:00:05.000Z",
    });
    let p: Pending = serde_json::from_value(old).unwrap();
    assert!(!p.asynchronous && p.location.is_none() && p.max_lifetime_secs.is_none());
}

#[test]
fn a_tenant_sees_the_events_of_its_pending_and_cancelled_allocations_and_no_one_elses() {
    let mut h = Harness::new();
    let p = h.pool("demo", 0);
    let acme = TenantId::new("acme").unwrap();
    let (id, _) = ask(
        &mut h,
        &p,
        Ask {
            tenant: acme.clone(),
            ..Default::default()
        },
    );
    h.apply(Command::Release {
        allocation_id: id,
        reason: ReleaseReason::Client,
    });
    let seen_by = |tenant: &str| -> Vec<EventKind> {
        let filter = EventFilter {
            tenant: Some(TenantId::new(tenant).unwrap()),
            ..Default::default()
        };
        h.state
            .events(None, None, 1000, &filter)
            .iter()
            .filter(|e| e.allocation == Some(id))
            .map(|e| e.kind)
            .collect()
    };
    assert_eq!(
        seen_by("acme"),
        [EventKind::AllocationPending, EventKind::AllocationCancelled]
    );
    assert!(seen_by("bolt").is_empty());
}
