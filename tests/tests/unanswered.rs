//! Writes the client gave up on. A member that gives up on writes at once
//! (`--write-timeout-ms 1`) answers allocations 503 although the leader commits them: the
//! client has no answer and the cluster has an allocation nobody holds. A client that asks
//! again with the same idempotency key (here through another member) gets that same
//! allocation and keeps it; one that never returns leaves no active allocation once
//! `--abandon-grace-secs` has passed: it is released as `abandoned`.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use poolctl::{AllocationQuery, ClientError};
use warmpool_proto::api::ErrorCode;
use warmpool_proto::records::{AllocationState, ReleaseReason};
use warmpool_proto::{Allocation, AllocationId};
use warmpool_tests::sim_agent::SimAgent;
use warmpool_tests::{unique, wait_until, TestCluster};

const GRACE_SECS: u64 = 3;

/// Every allocation of `pool`, in any state.
async fn allocations_of(client: &poolctl::Client, pool: &str) -> Vec<Allocation> {
    client
        .list_allocations(&AllocationQuery {
            pool: Some(pool.to_string()),
            ..Default::default()
        })
        .await
        .expect("list allocations")
}

/// Asks `slow` for an allocation (under a fresh key made from `prefix` when `keyed`) until
/// its write times out after reaching the leader; returns the key and the allocation that
/// write made, as `observer` sees it.
///
/// A write through the slow member may, rarely, still be answered within its millisecond:
/// that allocation is released at once and another asked for. It may also fail before it
/// reaches the leader (a member that has just restarted may not know the leader yet): then
/// nothing is made (its abandonment refuses it should it arrive late), and another is asked
/// for.
async fn unanswered(
    slow: &poolctl::Client,
    fast: &poolctl::Client,
    observer: &poolctl::Client,
    pool: &str,
    prefix: &str,
    keyed: bool,
) -> (String, Allocation) {
    let mut seen: HashSet<AllocationId> = allocations_of(observer, pool)
        .await
        .into_iter()
        .map(|a| a.id)
        .collect();
    for _ in 0..20 {
        let key = unique(prefix);
        let mut req = warmpool_tests::allocation(pool, 0);
        req.idempotency_key = keyed.then(|| key.clone());
        match slow.allocate(&req).await {
            Err(e) if is_write_timeout(&e) => {}
            Err(e) => panic!("{e:?}"),
            Ok(a) => {
                seen.insert(a.id);
                fast.release(a.id).await.expect("release");
                continue;
            }
        }
        // A write that reached the leader commits within milliseconds.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let made = allocations_of(observer, pool).await.into_iter().find(|a| {
                !seen.contains(&a.id)
                    && (!keyed || a.idempotency_key.as_deref() == Some(key.as_str()))
            });
            if let Some(a) = made {
                return (key, a);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!("an unanswered write through the slow member made nothing; asking again");
    }
    panic!("no write through the slow member went unanswered after reaching the leader");
}

fn is_write_timeout(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Api {
            status: 503,
            code: ErrorCode::NoQuorum,
            ..
        }
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_allocation_is_kept_for_a_returning_client_and_released_otherwise() {
    let grace = GRACE_SECS.to_string();
    let mut c = TestCluster::replicated(3, &["--abandon-grace-secs", &grace]).await;
    let _agent = SimAgent::start(
        &c.nats.url(),
        &unique("sim"),
        11,
        Duration::from_millis(300),
    )
    .await;
    let pool = unique("unans").replace('-', "");
    let mut spec = TestCluster::demo_spec(&pool, 4);
    spec.max_total = 1_000;
    c.client.create_pool(&spec).await.expect("create pool");
    c.wait_warm(&pool, 4, Duration::from_secs(30)).await;

    // A follower that gives up on every write at once; the leader still commits them.
    let view = c.client.cluster().await.expect("cluster");
    let leader = view.leader.expect("a leader");
    let slow = c.members.iter().position(|m| m.id != leader).unwrap();
    let fast = c
        .members
        .iter()
        .position(|m| m.id != leader && m.id != c.members[slow].id)
        .unwrap();
    c.members[slow].kill();
    c.members[slow].add_args(&["--write-timeout-ms", "1"]);
    c.members[slow].start();
    let slow_client = c.client_of(slow);
    wait_until(Duration::from_secs(30), "the slow member to serve", || {
        let slow_client = slow_client.clone();
        async move { slow_client.cluster().await.ok()?.leader }
    })
    .await;
    let fast_client = c.client_of(fast);

    // 1. The client comes back, through another member, with its key.
    let (back_key, made) =
        unanswered(&slow_client, &fast_client, &c.client, &pool, "back", true).await;
    let mut req = warmpool_tests::allocation(&pool, 0);
    req.idempotency_key = Some(back_key.clone());
    let again = fast_client.allocate(&req).await.expect("asked again");
    assert_eq!(again.id, made.id, "the same allocation, not a second one");
    assert_eq!(again.container_id, made.container_id);

    // 2. Clients that never come back: with a key, and without one.
    let (gone_key, gone) =
        unanswered(&slow_client, &fast_client, &c.client, &pool, "gone", true).await;
    assert_eq!(gone.state, AllocationState::Active);
    let (_, keyless) = unanswered(
        &slow_client,
        &fast_client,
        &c.client,
        &pool,
        "keyless",
        false,
    )
    .await;
    assert_eq!(keyless.state, AllocationState::Active);

    // Both are released as abandoned once the grace has passed (and not long after).
    for id in [gone.id, keyless.id] {
        let ended = wait_until(
            Duration::from_secs(GRACE_SECS + 10),
            "the abandoned allocation to be released",
            || {
                let client = c.client.clone();
                async move {
                    let a = client.get_allocation(id).await.ok()?;
                    (a.state == AllocationState::Released).then_some(a)
                }
            },
        )
        .await;
        assert_eq!(ended.release_reason, Some(ReleaseReason::Abandoned), "{id}");
        let held = ended.released_at.unwrap().since(ended.created_at);
        assert!(
            held >= Duration::from_secs(GRACE_SECS),
            "{id} released after {held:?}, before the grace"
        );
    }
    // The one its client came back for is still held, well past its own grace.
    let kept = c.client.get_allocation(made.id).await.expect("get");
    assert_eq!(kept.state, AllocationState::Active, "{kept:?}");
    // And asking again for the released one answers it, released: the key still means it.
    let mut req = warmpool_tests::allocation(&pool, 0);
    req.idempotency_key = Some(gone_key);
    let replay = fast_client.allocate(&req).await.expect("replay");
    assert_eq!(replay.id, gone.id);
    assert_eq!(replay.state, AllocationState::Released);
}
