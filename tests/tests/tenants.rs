//! Tenants that cannot touch each other (issue 15): a user or viewer key belongs to a tenant
//! and sees, renews, releases and replays only that tenant's allocations (another tenant's
//! answer 404, as if absent); lists, events and container addresses are filtered the same
//! way; quotas answer 429 with `Retry-After` and change nothing; an event stream ends when its
//! key is revoked. Real member with auth on, real agent, real dockerd.

use std::time::Duration;

use futures::StreamExt;
use poolctl::{Client, ClientError};
use reqwest::StatusCode;
use warmpool_proto::api::{ContainerQuery, CreateKey, EventQuery, Role, TenantQuota};
use warmpool_proto::records::AllocationState;
use warmpool_proto::{Allocation, TenantId};
use warmpool_tests::{allocation, wait_until, Agent, Member, Nats, TestCluster};

/// A member with auth on, an agent, and pool `demo` warm; the admin client and the URL.
struct Fleet {
    _nats: Nats,
    member: Member,
    _agent: Agent,
    admin: Client,
    _dir: tempfile::TempDir,
}

impl Fleet {
    async fn start(min_warm: u32) -> Fleet {
        warmpool_tests::ensure_demo_image();
        let dir = tempfile::tempdir().expect("temp dir");
        let nats = Nats::start(dir.path());
        let token = format!("wpk_{}_{}", "b1b2c3d4e5f6", "0123456789abcdef".repeat(4));
        let key_file = dir.path().join("admin.key");
        std::fs::write(&key_file, &token).expect("key file");
        let mut member = Member::new(1, &nats.url(), dir.path(), true).with_args(&[
            "--auth",
            "--admin-key-file",
            key_file.to_str().expect("utf-8 path"),
        ]);
        member.start();
        let mut agent = Agent::new(&nats.url(), dir.path());
        agent.start();
        let admin = Client::new(vec![member.url()], Some(token)).expect("client");
        let a = admin.clone();
        wait_until(Duration::from_secs(30), "the admin key to work", || {
            let a = a.clone();
            async move { a.whoami().await.ok().filter(|w| w.id.is_some()) }
        })
        .await;
        let mut spec = TestCluster::demo_spec("demo", min_warm);
        spec.max_warm = Some(min_warm);
        admin.create_pool(&spec).await.expect("create pool");
        let f = Fleet {
            _nats: nats,
            member,
            _agent: agent,
            admin,
            _dir: dir,
        };
        f.wait_warm(min_warm).await;
        f
    }

    async fn wait_warm(&self, n: u32) {
        let a = self.admin.clone();
        wait_until(Duration::from_secs(90), "warm containers", || {
            let a = a.clone();
            async move {
                let s = a.status().await.ok()?;
                (s.pools.first()?.counts.warm >= n).then_some(())
            }
        })
        .await;
    }

    /// A new key of `role` for `tenant`, as a client.
    async fn key(&self, role: Role, tenant: &str) -> Client {
        self.key_and_token(role, tenant).await.0
    }

    /// A new key of `role` for `tenant`: a client, and the token.
    async fn key_and_token(&self, role: Role, tenant: &str) -> (Client, String) {
        let made = self
            .admin
            .create_key(&CreateKey {
                name: format!("{}-{tenant}", role.as_str()),
                role,
                tenant: Some(TenantId::new(tenant).expect("tenant")),
            })
            .await
            .expect("create key");
        let client =
            Client::new(vec![self.member.url()], Some(made.token.clone())).expect("client");
        (client, made.token)
    }
}

fn status_of(e: &ClientError) -> Option<u16> {
    match e {
        ClientError::Api { status, .. } => Some(*status),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_key_cannot_see_renew_release_or_replay_an_allocation() {
    let f = Fleet::start(3).await;
    let (a, b) = (
        f.key(Role::User, "acme").await,
        f.key(Role::User, "bolt").await,
    );
    let a_viewer = f.key(Role::Viewer, "acme").await;
    let who = b.whoami().await.expect("whoami");
    assert_eq!(who.tenant.as_ref().map(|t| t.as_str()), Some("bolt"));

    let mut req = allocation("demo", 10_000);
    req.idempotency_key = Some("job-1".into());
    let mine: Allocation = a.allocate(&req).await.expect("A allocates");
    assert_eq!(mine.tenant.as_str(), "acme");

    // B, by id: 404 for reading, renewing and releasing, exactly as for an id that is not.
    let e = b.get_allocation(mine.id).await.expect_err("B reads A's");
    assert_eq!(status_of(&e), Some(404), "{e}");
    let e = b
        .renew(
            mine.id,
            &warmpool_proto::api::RenewAllocation {
                lease_seconds: Some(3600),
            },
        )
        .await
        .expect_err("B renews A's");
    assert_eq!(status_of(&e), Some(404), "{e}");
    let e = b.release(mine.id).await.expect_err("B releases A's");
    assert_eq!(status_of(&e), Some(404), "{e}");
    // B, by A's idempotency key: B's own key space, so a new allocation, never A's.
    let theirs = b.allocate(&req).await.expect("B allocates");
    assert_ne!(theirs.id, mine.id);
    assert_ne!(theirs.container_id, mine.container_id);
    assert_eq!(theirs.tenant.as_str(), "bolt");
    // A's replay is A's.
    let again = a.allocate(&req).await.expect("A replays");
    assert_eq!(again.id, mine.id);

    // Nothing of A's changed.
    let now = a.get_allocation(mine.id).await.expect("A reads its own");
    assert_eq!(now.state, AllocationState::Active);
    assert_eq!(now.expires_at, mine.expires_at, "B's renew changed nothing");
    // A user key may not allocate for another tenant.
    let mut other = allocation("demo", 0);
    other.tenant = Some(TenantId::new("bolt").expect("tenant"));
    let e = a.allocate(&other).await.expect_err("A allocates as B");
    assert_eq!(status_of(&e), Some(403), "{e}");

    // Lists: each tenant sees its own; an admin sees both.
    let ids = |l: Vec<Allocation>| l.into_iter().map(|x| x.id).collect::<Vec<_>>();
    let q = Default::default();
    assert_eq!(
        ids(a.list_allocations(&q).await.expect("list")),
        vec![mine.id]
    );
    assert_eq!(
        ids(b.list_allocations(&q).await.expect("list")),
        vec![theirs.id]
    );
    assert_eq!(
        ids(a_viewer.list_allocations(&q).await.expect("list")),
        vec![mine.id]
    );
    let all = ids(f.admin.list_allocations(&q).await.expect("list"));
    assert!(
        all.contains(&mine.id) && all.contains(&theirs.id),
        "{all:?}"
    );

    // Containers: a viewer of A sees B's container, but not its address or session.
    let cs = a_viewer
        .list_containers(&ContainerQuery::default())
        .await
        .expect("containers");
    let b_c = cs
        .iter()
        .find(|c| c.id == theirs.container_id)
        .expect("B's container is listed");
    assert!(
        b_c.ipv6.is_none() && b_c.session.is_none() && b_c.allocation.is_none(),
        "{b_c:?}"
    );
    let a_c = cs.iter().find(|c| c.id == mine.container_id).expect("A's");
    assert_eq!(a_c.ipv6, mine.ipv6);
    let one = a_viewer
        .get_container(theirs.container_id)
        .await
        .expect("container");
    assert!(one.ipv6.is_none());

    // Events: none of B's allocation in A's log; the admin's has both.
    let events = |c: Client| async move {
        c.events(&EventQuery {
            limit: Some(1000),
            ..Default::default()
        })
        .await
        .expect("events")
    };
    let a_events = events(a.clone()).await;
    assert!(a_events.iter().any(|e| e.allocation == Some(mine.id)));
    assert!(
        !a_events.iter().any(|e| e.allocation == Some(theirs.id)),
        "A sees B's allocation in the log"
    );
    let admin_events = events(f.admin.clone()).await;
    assert!(admin_events.iter().any(|e| e.allocation == Some(theirs.id)));

    // And A may release its own.
    let done = a.release(mine.id).await.expect("A releases");
    assert_eq!(done.state, AllocationState::Released);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_quota_gets_429_and_nothing_is_allocated() {
    let f = Fleet::start(4).await;
    let (q, q_token) = f.key_and_token(Role::User, "quota").await;
    let tenant = TenantId::new("quota").expect("tenant");
    f.admin
        .put_tenant(
            &tenant,
            &TenantQuota {
                max_allocations: Some(1),
                ..Default::default()
            },
        )
        .await
        .expect("set quota");
    let first = q.allocate(&allocation("demo", 5_000)).await.expect("first");
    let before = f
        .admin
        .list_allocations(&Default::default())
        .await
        .expect("list")
        .len();
    // The raw answer: status, code and Retry-After.
    let http = warmpool_tests::http_client();
    let raw_allocate = || {
        http.post(format!("{}/v1/allocations", f.member.url()))
            .bearer_auth(&q_token)
            .body(r#"{"pool":"demo"}"#)
            .send()
    };
    let resp = raw_allocate().await.expect("send");
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(resp.headers().contains_key("retry-after"));
    let body: warmpool_proto::api::ErrorBody = resp.json().await.expect("error body");
    assert_eq!(body.error.code, "over_quota");
    let after = f
        .admin
        .list_allocations(&Default::default())
        .await
        .expect("list")
        .len();
    assert_eq!(after, before, "a refused allocation allocated nothing");
    assert_eq!(
        f.admin
            .get_tenant(&tenant)
            .await
            .expect("tenant")
            .allocations,
        1
    );
    // The quota frees when an allocation is released.
    q.release(first.id).await.expect("release");
    q.allocate(&allocation("demo", 5_000))
        .await
        .expect("allowed again once released");

    // A rate: one a minute with a burst of 1: the second request at once is refused, with
    // the wait in Retry-After.
    f.admin
        .put_tenant(
            &tenant,
            &TenantQuota {
                allocations_per_minute: Some(1),
                burst: Some(1),
                ..Default::default()
            },
        )
        .await
        .expect("set rate");
    let ok = q
        .allocate(&allocation("demo", 5_000))
        .await
        .expect("within rate");
    let resp = raw_allocate().await.expect("send");
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!((1..=60).contains(&wait), "Retry-After {wait}");
    let body: warmpool_proto::api::ErrorBody = resp.json().await.expect("error body");
    assert_eq!(body.error.code, "rate_limited");
    // Another tenant is not limited by this one's bucket.
    let other = f.key(Role::User, "free").await;
    other
        .allocate(&allocation("demo", 5_000))
        .await
        .expect("another tenant allocates");
    // Bad limits are refused.
    let e = f
        .admin
        .put_tenant(
            &tenant,
            &TenantQuota {
                allocations_per_minute: Some(0),
                ..Default::default()
            },
        )
        .await
        .expect_err("zero rate");
    assert_eq!(status_of(&e), Some(400), "{e}");
    let _ = ok;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_ends_when_its_key_is_revoked() {
    let f = Fleet::start(1).await;
    let made = f
        .admin
        .create_key(&CreateKey {
            name: "watcher".into(),
            role: Role::Viewer,
            tenant: Some(TenantId::new("acme").expect("tenant")),
        })
        .await
        .expect("key");
    let resp = warmpool_tests::http_client()
        .get(format!("{}/v1/events/stream?after=0", f.member.url()))
        .bearer_auth(&made.token)
        .send()
        .await
        .expect("stream");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.bytes_stream();
    // The stream is open: the pool's events of no tenant arrive.
    let first = tokio::time::timeout(Duration::from_secs(10), body.next())
        .await
        .expect("an event within 10 s");
    assert!(first.is_some());
    f.admin.revoke_key(&made.key.id).await.expect("revoke");
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = body.next().await {
            if chunk.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream outlived its key by 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenant_gets_404_for_a_pending_allocation_and_lists_hide_it() {
    let f = Fleet::start(0).await;
    // A pool no node may host: what is asked of it stays pending.
    let mut spec = TestCluster::demo_spec("stuck", 0);
    spec.constraints.insert("region".into(), "mars".into());
    f.admin.create_pool(&spec).await.expect("create pool");
    let (a, b) = (
        f.key(Role::User, "acme").await,
        f.key(Role::User, "bolt").await,
    );
    let mut req = allocation("stuck", 0);
    req.asynchronous = true;
    let pending: Allocation = a.allocate(&req).await.expect("A asks");
    assert_eq!(pending.state, AllocationState::Pending);
    assert_eq!(pending.tenant.as_str(), "acme");
    let e = b.get_allocation(pending.id).await.expect_err("B reads A's");
    assert_eq!(status_of(&e), Some(404), "{e}");
    let e = b.release(pending.id).await.expect_err("B cancels A's");
    assert_eq!(status_of(&e), Some(404), "{e}");
    let q = poolctl::AllocationQuery {
        state: Some("pending".into()),
        ..Default::default()
    };
    assert!(b.list_allocations(&q).await.expect("B lists").is_empty());
    let seen = a.list_allocations(&q).await.expect("A lists");
    assert_eq!(seen.iter().map(|x| x.id).collect::<Vec<_>>(), [pending.id]);
    let cancelled = a.release(pending.id).await.expect("A cancels");
    assert_eq!(cancelled.state, AllocationState::Cancelled);
}
