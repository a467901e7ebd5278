//! Consensus with real openraft members on real sled, in one process over the in-process
//! [`Router`]: leaders killed and cut off, members restarted from disk and caught up by a
//! snapshot. Every acknowledged write must be on every member in the end; a write that was
//! never acknowledged must not appear.

use std::time::Duration;

use tokio::time::Instant;
use warmpool_proto::{PoolName, PoolSpec};

use super::router::{members, Member, Router};
use super::{MemberId, Raft};
use crate::state::{Command, Request, Response};

const DEADLINE: Duration = Duration::from_secs(20);

async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn cluster(dir: &std::path::Path, router: &Router, snapshot_every: u64) -> Vec<Member> {
    let mut ms = Vec::new();
    for id in 1..=3 {
        ms.push(
            Member::start(id, dir, router, snapshot_every)
                .await
                .unwrap(),
        );
    }
    ms[0].raft.initialize(members(&[1, 2, 3])).await.unwrap();
    ms
}

fn leader_among(ms: &[Member], except: Option<MemberId>) -> Option<usize> {
    ms.iter().position(|m| {
        Some(m.id) != except && m.raft.metrics().borrow().current_leader == Some(m.id)
    })
}

fn pool(name: &str) -> Command {
    Command::PutPool {
        spec: PoolSpec::new(PoolName::new(name).unwrap(), "img"),
    }
}

/// Writes through `raft`, answering whether the write was acknowledged within `within`.
async fn write(raft: &Raft, cmd: Command, within: Duration) -> bool {
    match tokio::time::timeout(within, raft.client_write(Request::now(cmd))).await {
        Ok(Ok(r)) => !matches!(r.data, Response::Rejected(_)),
        _ => false,
    }
}

fn pools_of(m: &Member) -> Vec<String> {
    let mut v: Vec<String> = m
        .shared
        .read(|s| s.pools().map(|p| p.spec.name.to_string()).collect());
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_a_cut_off_leader_and_the_unacknowledged_one_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let router = Router::default();
    let ms = cluster(dir.path(), &router, 1_000).await;
    let first = eventually("a leader", || leader_among(&ms, None)).await;
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let name = format!("before-{i}");
        assert!(write(&ms[first].raft, pool(&name), DEADLINE).await);
        acknowledged.push(name);
    }

    // Cut the leader off from both followers: what it is asked now cannot commit.
    let old = ms[first].id;
    let others: Vec<MemberId> = ms.iter().map(|m| m.id).filter(|id| *id != old).collect();
    router.isolate(old, &others);
    assert!(
        !write(&ms[first].raft, pool("cut-off"), Duration::from_secs(1)).await,
        "a leader without a quorum acknowledged a write"
    );
    let second = eventually("a new leader among the other two", || {
        leader_among(&ms, Some(old))
    })
    .await;
    for i in 0..10 {
        let name = format!("after-{i}");
        assert!(write(&ms[second].raft, pool(&name), DEADLINE).await);
        acknowledged.push(name);
    }

    // Healed, the old leader steps down and every member converges on the same state.
    router.heal();
    acknowledged.sort();
    eventually("every member to hold every acknowledged write", || {
        ms.iter().all(|m| pools_of(m) == acknowledged).then_some(())
    })
    .await;
    assert!(ms
        .iter()
        .all(|m| !pools_of(m).contains(&"cut-off".to_string())));
    for m in ms {
        m.stop(&router).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_restarted_from_disk_catches_up_by_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let router = Router::default();
    let mut ms = cluster(dir.path(), &router, 10).await;
    eventually("a leader", || leader_among(&ms, None)).await;
    // Stop a follower, write past several snapshots (the log before them is purged).
    let follower = ms
        .iter()
        .position(|m| m.raft.metrics().borrow().current_leader != Some(m.id))
        .unwrap();
    let stopped = ms.remove(follower);
    let id = stopped.id;
    stopped.stop(&router).await;
    let leader = eventually("a leader", || leader_among(&ms, None)).await;
    let mut names = Vec::new();
    for i in 0..45 {
        let name = format!("p-{i}");
        assert!(write(&ms[leader].raft, pool(&name), DEADLINE).await);
        names.push(name);
    }
    eventually("a snapshot on the leader", || {
        ms[leader].raft.metrics().borrow().snapshot.map(|_| ())
    })
    .await;

    // It restarts from its own disk and is brought up to date.
    let back = Member::start(id, dir.path(), &router, 10).await.unwrap();
    names.sort();
    eventually("the restarted member to catch up", || {
        (pools_of(&back) == names).then_some(())
    })
    .await;
    assert_eq!(
        back.shared.applied_index(),
        ms[leader].shared.applied_index()
    );
    back.stop(&router).await;
    for m in ms {
        m.stop(&router).await;
    }
}
