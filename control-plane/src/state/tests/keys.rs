//! Tenants: quotas, rates and idempotency keys of their own.

use super::*;

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
            metadata: Default::default(),
            with_settings: false,
            workspace: None,
            token_sha256: None,
            asynchronous: false,
            location: None,
            max_lifetime_secs: None,
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
