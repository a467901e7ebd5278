//! Usage accounting end to end, against a real member and a simulated host: container time
//! per pool (warm overhead and allocated) and per session, their cost at the pool's price, in
//! `GET /v1/usage`, `poolctl usage` and `/metrics`.

use std::time::{Duration, Instant};

use warmpool_proto::api::{CreateAllocation, UsageQuery};
use warmpool_proto::{PoolName, SessionId};
use warmpool_tests::sim_agent::SimAgent;
use warmpool_tests::{bin, unique, wait_until, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_counts_container_time_per_pool_and_session_with_its_cost() {
    let c = TestCluster::replicated(1, &[]).await;
    let _host = SimAgent::start(&c.nats.url(), &unique("u"), 31, Duration::from_millis(300)).await;
    let pool = unique("u").replace('-', "");
    let mut spec = TestCluster::demo_spec(&pool, 2);
    spec.price_per_hour = Some(3.6); // 0.001 a container-second
    c.client.create_pool(&spec).await.unwrap();
    c.wait_warm(&pool, 2, Duration::from_secs(30)).await;

    let session = SessionId::new(unique("s")).unwrap();
    let a = c
        .client
        .allocate(&CreateAllocation {
            pool: PoolName::new(&pool).unwrap(),
            session_id: Some(session.clone()),
            lease_seconds: None,
            wait_ms: Some(5_000),
            idempotency_key: None,
            tenant: None,
            env: Default::default(),
            secrets: Default::default(),
            metadata: Default::default(),
            wait_for: None,
            asynchronous: false,
            location: None,
            max_lifetime_secs: None,
            workspace: None,
        })
        .await
        .unwrap();
    // Hold it for a measured while: that time is what is accounted.
    let held = Instant::now();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // While it runs, the answer says what it has cost so far at the pool's price.
    let running = c.client.get_allocation(a.id).await.unwrap();
    let so_far = running.cost.expect("a cost: the pool has a price");
    assert!(
        so_far > 0.0 && so_far <= held.elapsed().as_secs_f64() * 0.001 + 0.0005,
        "{so_far}"
    );
    let released = c.client.release(a.id).await.unwrap();
    let held = held.elapsed().as_secs_f64();

    let q = UsageQuery {
        pool: Some(pool.clone()),
        session: Some(session.to_string()),
    };
    let u = c.client.usage(&q).await.unwrap();
    assert_eq!(u.pools.len(), 1, "{u:?}");
    let p = &u.pools[0];
    let recorded = (released.released_at.unwrap().0 - released.created_at.0) as f64 / 1000.0;
    assert!(
        (p.allocated_seconds - recorded).abs() < 0.01,
        "pool allocated {} s, the allocation lasted {recorded} s",
        p.allocated_seconds
    );
    assert!(
        recorded >= 1.0 && recorded <= held + 0.5,
        "{recorded} s for {held} s held"
    );
    assert!(p.warm_seconds > 0.0, "warm overhead counted: {p:?}");
    assert_eq!(p.price_per_hour, Some(3.6));
    let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
    assert!(
        close(p.allocated_cost.unwrap(), p.allocated_seconds * 0.001),
        "{p:?}"
    );
    assert!(close(p.warm_cost.unwrap(), p.warm_seconds * 0.001), "{p:?}");
    assert_eq!(u.sessions.len(), 1, "{u:?}");
    let s = &u.sessions[0];
    assert_eq!(
        (s.session.as_str(), s.pool.as_str()),
        (session.as_str(), pool.as_str())
    );
    assert!((s.allocated_seconds - recorded).abs() < 0.01, "{s:?}");
    assert!(close(s.cost.unwrap(), s.allocated_seconds * 0.001), "{s:?}");
    // Released, its answer says what it cost, as the usage report does.
    assert!(
        close(released.cost.unwrap(), recorded * 0.001),
        "{released:?}"
    );

    // Another session has used nothing; a malformed session id is a 400.
    let other = c
        .client
        .usage(&UsageQuery {
            pool: None,
            session: Some("nobody".into()),
        })
        .await
        .unwrap();
    assert!(other.sessions.is_empty(), "{other:?}");
    let bad = c
        .client
        .usage(&UsageQuery {
            pool: None,
            session: Some("not a session id".into()),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.status(), Some(400), "{bad}");

    // poolctl shows the same, in hours.
    let out = std::process::Command::new(bin("poolctl"))
        .args(["--url", &c.members[0].url(), "usage", "--pool", &pool])
        .args(["--session", session.as_str()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("WARM H") && text.contains(session.as_str()),
        "{text}"
    );

    // /metrics mirrors the cost (every 2 s).
    let url = format!("{}/metrics", c.members[0].url());
    let line = wait_until(Duration::from_secs(10), "the cost in /metrics", || {
        let url = url.clone();
        let pool = pool.clone();
        async move {
            let text = warmpool_tests::http_client()
                .get(&url)
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            text.lines()
                .find(|l| {
                    l.starts_with("warmpool_pool_cost{")
                        && l.contains(&format!("pool=\"{pool}\""))
                        && l.contains("kind=\"allocated\"")
                })
                .map(str::to_string)
        }
    })
    .await;
    let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(
        (value - p.allocated_seconds * 0.001).abs() < 1e-6,
        "{line} for {} allocated seconds",
        p.allocated_seconds
    );
}
