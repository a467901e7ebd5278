//! One clock for time in the state: a member whose wall clock is 30 s ahead (libfaketime)
//! takes allocations and renewals, and no lease is shortened or lengthened by it. Leases,
//! deadlines and lifetimes count from the leader's stamp on each entry, never the clock of the
//! member that took the request.

use std::time::Duration;

use warmpool_proto::records::{AllocationState, ReleaseReason};
use warmpool_proto::Timestamp;
use warmpool_tests::poolctl::Client;
use warmpool_tests::proto::api::{CreateAllocation, RenewAllocation};
use warmpool_tests::{allocation, ensure_demo_image, wait_until, Agent, Member, Nats, TestCluster};

const AHEAD_SECS: i64 = 30;
const LEASE_SECS: u64 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_with_its_clock_30_s_ahead_neither_shortens_nor_lengthens_a_lease() {
    ensure_demo_image();
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    // Member 1 bootstraps and leads; member 3, 30 s ahead, joins as a follower.
    let mut members = vec![Member::new(1, &nats.url(), dir.path(), true)];
    members[0].start();
    members[0].wait_up().await;
    let leader = Client::new(vec![members[0].url()], None).unwrap();
    wait_until(Duration::from_secs(30), "a leader", || {
        let c = leader.clone();
        async move { c.ready().await.ok().filter(|r| *r) }
    })
    .await;
    for id in 2..=3 {
        let m = Member::joining(id, &nats.url(), dir.path());
        let mut m = if id == 3 {
            m.with_clock_ahead(AHEAD_SECS)
        } else {
            m
        };
        m.start();
        members.push(m);
    }
    wait_until(Duration::from_secs(60), "three voters", || {
        let c = leader.clone();
        async move {
            let v = c.cluster().await.ok()?;
            (v.members.iter().filter(|m| m.role == "voter").count() == 3).then_some(())
        }
    })
    .await;
    let mut agent = Agent::new(&nats.url(), dir.path());
    agent.start();
    let ahead = Client::new(vec![members[2].url()], None).unwrap();
    leader
        .create_pool(&TestCluster::demo_spec("clock", 2))
        .await
        .unwrap();
    wait_until(Duration::from_secs(60), "2 warm", || {
        let c = leader.clone();
        async move {
            let s = c.status().await.ok()?;
            (s.pools.first()?.counts.warm == 2).then_some(())
        }
    })
    .await;
    assert_eq!(
        leader.cluster().await.unwrap().leader,
        Some(1),
        "member 1 still leads"
    );

    // Allocated through the member that is ahead: stamped by the leader's clock.
    let before = Timestamp::now();
    let a = ahead
        .allocate(&CreateAllocation {
            lease_seconds: Some(LEASE_SECS),
            ..allocation("clock", 10_000)
        })
        .await
        .unwrap();
    let after = Timestamp::now();
    assert!(
        a.created_at >= Timestamp(before.0.saturating_sub(1_000)) && a.created_at <= after.plus(Duration::from_secs(1)),
        "created at {:?}, asked between {before:?} and {after:?}: the other member's clock stamped it",
        a.created_at
    );
    assert_eq!(a.expires_at.0 - a.created_at.0, LEASE_SECS * 1000);

    // Renewed through it too: the lease runs from the leader's now.
    let renewed = ahead
        .renew(
            a.id,
            &RenewAllocation {
                lease_seconds: Some(LEASE_SECS),
            },
        )
        .await
        .unwrap();
    let now = Timestamp::now();
    assert!(
        renewed.expires_at.0 <= now.0 + LEASE_SECS * 1000 + 1_000,
        "renewed to {:?} at {now:?}: lengthened by the other member's clock",
        renewed.expires_at
    );

    // It expires when its lease runs out by the leader's clock: not before, not 30 s after.
    let released = wait_until(
        Duration::from_secs(LEASE_SECS + 10),
        "the lease to expire",
        || {
            let c = leader.clone();
            async move {
                c.get_allocation(a.id)
                    .await
                    .ok()
                    .filter(|a| a.state == AllocationState::Released)
            }
        },
    )
    .await;
    assert_eq!(released.release_reason, Some(ReleaseReason::Expired));
    let at = released.released_at.unwrap();
    assert!(
        at >= renewed.expires_at && at.0 <= renewed.expires_at.0 + 3_000,
        "released at {at:?} for a lease to {:?}",
        renewed.expires_at
    );
}
