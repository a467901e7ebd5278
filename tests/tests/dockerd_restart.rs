//! A dockerd restart ends no session (issue 22): with live restore on (as
//! `deploy/install-agent.sh` and `deploy/dev.sh up` configure it), an active allocation and
//! warm containers, the host's dockerd is stopped for 10 s and started again. Meanwhile the
//! agent keeps reporting, with the runtime unavailable, and the control plane grants nothing
//! on the host and keeps its allocations; afterwards the allocation is active on the same
//! container, which answers on its address, and no container was made or destroyed.
//!
//! Also: the script that turns live restore on merges it into a daemon.json, keeping the rest.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use warmpool_proto::api::EventQuery;
use warmpool_proto::records::{AllocationState, UnreachableReason};
use warmpool_proto::{EventKind, PoolSpec};
use warmpool_tests::hosts::{HostCluster, HostSpec};
use warmpool_tests::{allocation, root, wait_until, TestCluster};

const OUTAGE: Duration = Duration::from_secs(10);

/// Runs `enable_live_restore FILE`; its status and output.
fn enable_live_restore(file: &std::path::Path) -> (i32, String) {
    let lib = root().join("deploy/lib/docker-live-restore.sh");
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            ". '{}' && enable_live_restore '{}'",
            lib.display(),
            file.display()
        ))
        .output()
        .expect("bash");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn live_restore_is_merged_into_daemon_json_and_nothing_else_changes() {
    let dir = tempfile::tempdir().unwrap();
    // No file: made.
    let fresh = dir.path().join("docker/daemon.json");
    let (code, out) = enable_live_restore(&fresh);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&fresh).unwrap()).unwrap();
    assert_eq!(v, serde_json::json!({"live-restore": true}));
    // Other settings kept, nested ones too.
    let kept = dir.path().join("kept.json");
    let before = serde_json::json!({
        "log-driver": "json-file",
        "log-opts": {"max-size": "5m"},
        "live-restore": false,
        "ipv6": true
    });
    std::fs::write(&kept, serde_json::to_vec_pretty(&before).unwrap()).unwrap();
    let (code, out) = enable_live_restore(&kept);
    assert_eq!(code, 0, "{out}");
    let mut want = before.clone();
    want["live-restore"] = serde_json::json!(true);
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&kept).unwrap()).unwrap();
    assert_eq!(v, want);
    // Again: nothing to do, the bytes stay as they are.
    let bytes = std::fs::read(&kept).unwrap();
    let (code, out) = enable_live_restore(&kept);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("already true"), "{out}");
    assert_eq!(std::fs::read(&kept).unwrap(), bytes);
    // Not JSON, or not an object: refused, untouched.
    for garbage in ["{\"log-driver\": ", "[1, 2]"] {
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, garbage).unwrap();
        let (code, out) = enable_live_restore(&bad);
        assert_eq!(code, 2, "{garbage}: {out}");
        assert!(out.contains("by hand"), "{out}");
        assert_eq!(std::fs::read_to_string(&bad).unwrap(), garbage);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allocation_and_warm_containers_survive_a_dockerd_restart() {
    let mut c = HostCluster::start(&[HostSpec::new().live_restore()]).await;
    let node = c.hosts[0].node.clone();
    let mut spec: PoolSpec = TestCluster::demo_spec("demo", 3);
    spec.max_warm = Some(3);
    c.client.create_pool(&spec).await.expect("create pool");
    let client = c.client.clone();
    wait_until(Duration::from_secs(60), "3 warm and one allocated", || {
        let client = client.clone();
        async move {
            let s = client.status().await.ok()?;
            (s.pools.first()?.counts.warm >= 3).then_some(())
        }
    })
    .await;
    let a = c
        .client
        .allocate(&allocation("demo", 10_000))
        .await
        .expect("allocate");
    let ip = a.ipv6.expect("an address");
    let client = c.client.clone();
    wait_until(Duration::from_secs(60), "the pool refilled", || {
        let client = client.clone();
        async move {
            let s = client.status().await.ok()?;
            (s.pools.first()?.counts.warm >= 3).then_some(())
        }
    })
    .await;
    let docker_ids = |h: &warmpool_tests::hosts::Host| -> BTreeSet<(String, String)> {
        h.warmpool_containers()
            .into_iter()
            .filter(|d| d.state == "running")
            .map(|d| (d.id, d.docker_id))
            .collect()
    };
    let before = docker_ids(&c.hosts[0]);
    assert_eq!(before.len(), 4, "{before:?}");
    assert!(c.hosts[0].fetch(ip, a.port, "/").await.is_ok());
    let last_seq = c
        .client
        .events(&EventQuery {
            limit: Some(1000),
            ..Default::default()
        })
        .await
        .expect("events")
        .last()
        .map_or(0, |e| e.seq);

    // dockerd stops (SIGTERM, as an upgrade would); the containers run on.
    c.hosts[0].stop_dockerd();
    let stopped = Instant::now();
    let view = c
        .wait_node(&node, Duration::from_secs(8), "runtime unavailable", |n| {
            n.node
                .unreachable
                .as_ref()
                .is_some_and(|u| u.reason == UnreachableReason::RuntimeUnavailable)
        })
        .await;
    assert_eq!(view.node.status, warmpool_proto::NodeStatus::Ready);
    // Nothing is granted on the host meanwhile, though its warm containers run.
    let e = c
        .client
        .allocate(&allocation("demo", 0))
        .await
        .expect_err("no grant while the runtime is down");
    assert_eq!(e.status(), Some(503), "{e}");
    // The session goes on: its container answers throughout.
    while stopped.elapsed() < OUTAGE {
        assert!(
            c.hosts[0].fetch(ip, a.port, "/").await.is_ok(),
            "the allocated container stopped answering while dockerd was down"
        );
        let now = c.client.get_allocation(a.id).await.expect("allocation");
        assert_eq!(now.state, AllocationState::Active);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    c.hosts[0].start_dockerd();

    c.wait_node(&node, Duration::from_secs(30), "reachable again", |n| {
        n.node.unreachable.is_none()
    })
    .await;
    let after_a = c.client.get_allocation(a.id).await.expect("allocation");
    assert_eq!(after_a.state, AllocationState::Active, "{after_a:?}");
    assert_eq!(after_a.container_id, a.container_id);
    assert_eq!(after_a.ipv6, a.ipv6);
    assert!(c.hosts[0].fetch(ip, a.port, "/").await.is_ok());
    assert_eq!(
        docker_ids(&c.hosts[0]),
        before,
        "the same Docker containers run: none recreated"
    );
    // Nothing was made, destroyed or lost over the restart; the node was marked and cleared.
    let events = c
        .client
        .events(&EventQuery {
            after: Some(last_seq),
            limit: Some(1000),
            ..Default::default()
        })
        .await
        .expect("events");
    let bad: Vec<_> = events
        .iter()
        .filter(|e| {
            matches!(
                e.kind,
                EventKind::ContainerCreated
                    | EventKind::ContainerTerminated
                    | EventKind::ContainerFailed
                    | EventKind::AllocationLost
                    | EventKind::NodeDown
            )
        })
        .collect();
    assert!(bad.is_empty(), "the restart cost something: {bad:#?}");
    let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
    assert!(kinds.contains(&EventKind::NodeUnreachable), "{kinds:?}");
    assert!(kinds.contains(&EventKind::NodeReachable), "{kinds:?}");
    // The pool is warm again with the containers that lived through it (none were made).
    let client = c.client.clone();
    wait_until(Duration::from_secs(30), "the pool warm again", || {
        let client = client.clone();
        async move {
            let s = client.status().await.ok()?;
            let p = s.pools.first()?;
            (p.counts.warm >= 3 && p.counts.creating == 0).then_some(())
        }
    })
    .await;
    // The agent saw the outage and its end itself (the marks above came from its heartbeats).
    let log = c.hosts[0].agent_log_tail(2000);
    assert!(log.contains("dockerd does not answer"), "{log}");
    assert!(log.contains("dockerd answers again"), "{log}");
    // Allocating works again, from the warm containers that lived through it.
    let again = c
        .client
        .allocate(&allocation("demo", 10_000))
        .await
        .expect("a grant once dockerd is back");
    assert!(before
        .iter()
        .any(|(id, _)| *id == again.container_id.to_string()));
    // And the dockerd that came back makes new containers: releasing both allocations has
    // them destroyed and replaced, and the replacements become warm without a failed create.
    let seq = warmpool_tests::events_after(&c.client, last_seq)
        .await
        .last()
        .map_or(last_seq, |e| e.seq);
    for id in [again.id, a.id] {
        c.client.release(id).await.expect("release");
    }
    wait_until(Duration::from_secs(60), "replacements warm", || {
        let client = c.client.clone();
        async move {
            let s = client.status().await.ok()?;
            let p = s.pools.first()?;
            (p.counts.warm >= 3 && p.counts.creating == 0 && p.counts.allocated == 0).then_some(())
        }
    })
    .await;
    let failed: Vec<_> = c
        .client
        .events(&EventQuery {
            after: Some(seq),
            limit: Some(1000),
            ..Default::default()
        })
        .await
        .expect("events")
        .into_iter()
        .filter(|e| matches!(e.kind, EventKind::ContainerFailed | EventKind::NodeBackoff))
        .collect();
    assert!(
        failed.is_empty(),
        "creates failed after dockerd came back: {failed:#?}\n{}",
        c.hosts[0].agent_log_tail(60)
    );
}
