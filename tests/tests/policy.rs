//! Issue 5's promises on a live cluster with a real agent and dockerd: a burst is served and
//! the pool grows then shrinks back, each step in the event log; leases expire and renew up
//! to `max_lifetime`; idle containers are released, busy ones are not; a container whose
//! health fails leaves the pool; an image change rolls out while allocations keep working;
//! `poolctl simulate` on the recorded history matches what the live run measured.

use std::time::{Duration, Instant};

use poolctl::policy::sim::record_change;
use warmpool_proto::api::{CreateAllocation, EventQuery, RenewAllocation};
use warmpool_proto::records::{AllocationState, ReleaseReason};
use warmpool_proto::{ContainerState, EventKind, PoolName, PoolSpec};
use warmpool_tests::{bin, docker, http_get, wait_until, TestCluster};

use warmpool_tests::allocation as alloc;

async fn all_events(c: &TestCluster, q: EventQuery) -> Vec<warmpool_proto::Event> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = c
            .client
            .events(&EventQuery {
                after,
                limit: Some(1000),
                ..q.clone()
            })
            .await
            .unwrap();
        let Some(last) = page.last() else { return out };
        after = Some(last.seq);
        out.extend(page);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_served_the_pool_grows_then_shrinks_back_and_simulate_agrees() {
    // The agent's create limit is fixed at 4 here. The simulator models the fleet with one
    // create limit, the agents' current one; an adaptive limit that moved during the run (a
    // run of the whole suite saw it at 2 at the end, after a burst made at more) is a fleet
    // the model does not have, and the comparison below would measure that, not the model.
    let c = TestCluster::single_with_agent_args(&[
        "--min-concurrent-creates",
        "4",
        "--max-concurrent-creates",
        "4",
    ])
    .await;
    let mut spec = TestCluster::demo_spec("burst", 3);
    spec.max_warm = Some(30);
    spec.max_total = 60;
    spec.scaling.cooldown_secs = 8;
    spec.scaling.target_hit_rate = Some(0.95);
    spec.scaling.batch_size = 8;
    spec.scaling.pacing_ms = 100;
    c.client.create_pool(&spec).await.unwrap();
    c.wait_warm("burst", 3, Duration::from_secs(60)).await;
    let t0 = Instant::now();

    // 30 allocations spread over 2 seconds, each ready to wait for a container.
    let mut tasks = Vec::new();
    for i in 0..30u64 {
        let client = c.client.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(i * 2000 / 30)).await;
            client.allocate(&alloc("burst", 45_000)).await
        }));
    }
    let mut allocations = Vec::new();
    for t in tasks {
        allocations.push(
            t.await
                .unwrap()
                .expect("every allocation of the burst is served"),
        );
    }
    eprintln!("burst of 30 served in {:?}", t0.elapsed());
    for a in &allocations {
        c.client.release(a.id).await.unwrap();
    }

    // The pool grew for the burst...
    let scaled = all_events(
        &c,
        EventQuery {
            kind: Some("pool_scaled".into()),
            pool: Some("burst".into()),
            ..Default::default()
        },
    )
    .await;
    let peak = scaled
        .iter()
        .filter_map(|e| e.detail.as_ref()?["to"].as_u64())
        .max()
        .unwrap_or(0);
    assert!(peak > 3, "the pool grew for the burst: {scaled:?}");
    // ...and shrinks back to its floor after the cool-down, each step in the log.
    let client = c.client.clone();
    wait_until(
        Duration::from_secs(90),
        "the pool to shrink back to min_warm",
        || {
            let client = client.clone();
            async move {
                let s = client.status().await.ok()?;
                let p = s.pools.iter().find(|p| p.name.as_str() == "burst")?;
                (p.wanted == 3 && p.counts.warm == 3).then_some(())
            }
        },
    )
    .await;
    let scaled = all_events(
        &c,
        EventQuery {
            kind: Some("pool_scaled".into()),
            pool: Some("burst".into()),
            ..Default::default()
        },
    )
    .await;
    let last = scaled.last().unwrap();
    assert_eq!(
        last.detail.as_ref().unwrap()["to"].as_u64(),
        Some(3),
        "{last:?}"
    );
    // It shrank only after the cool-down: no step down within `cooldown_secs` of the last
    // step up (demand was lower from then on at the earliest).
    let step = |e: &warmpool_proto::Event| {
        let d = e.detail.as_ref()?;
        Some((d["from"].as_u64()?, d["to"].as_u64()?))
    };
    let last_up = scaled
        .iter()
        .rfind(|e| step(e).is_some_and(|(from, to)| to > from))
        .expect("a step up");
    let first_down = scaled
        .iter()
        .find(|e| e.seq > last_up.seq && step(e).is_some_and(|(from, to)| to < from))
        .expect("a step down");
    let quiet = first_down.at.0 - last_up.at.0;
    assert!(
        quiet >= 8_000,
        "stepped down {quiet} ms after the last step up, within the 8 s cool-down"
    );
    for e in &scaled {
        let d = e
            .detail
            .as_ref()
            .expect("each scaling step keeps its inputs");
        assert!(
            d.get("from").is_some() && d.get("to").is_some() && d.get("reason").is_some(),
            "{d}"
        );
    }
    eprintln!(
        "scaling steps: {:?}",
        scaled
            .iter()
            .map(|e| (
                e.detail.as_ref().unwrap()["from"].clone(),
                e.detail.as_ref().unwrap()["to"].clone()
            ))
            .collect::<Vec<_>>()
    );

    // What the live run measured: allocations served without waiting.
    let allocated = all_events(
        &c,
        EventQuery {
            kind: Some("container_allocated".into()),
            pool: Some("burst".into()),
            ..Default::default()
        },
    )
    .await;
    let hits = allocated
        .iter()
        .filter(|e| {
            e.detail
                .as_ref()
                .and_then(|d| d["waited_ms"].as_u64())
                .is_none()
        })
        .count();
    let live_hit_rate = hits as f64 / allocated.len() as f64;
    let mut live_waits: Vec<u64> = allocated
        .iter()
        .map(|e| {
            e.detail
                .as_ref()
                .and_then(|d| d["waited_ms"].as_u64())
                .unwrap_or(0)
        })
        .collect();
    live_waits.sort_unstable();
    let rank = |q: f64| live_waits[((q * live_waits.len() as f64).ceil() as usize).max(1) - 1];
    let (live_p50, live_p99) = (rank(0.5), rank(0.99));
    let live_mean = live_waits.iter().sum::<u64>() as f64 / live_waits.len() as f64;

    // `poolctl simulate` on the recorded history, the live policy beside a proposed one.
    let out = std::process::Command::new(bin("poolctl"))
        .args([
            "--url",
            &c.members[0].url(),
            "--output",
            "json",
            "simulate",
            "burst",
            "--fixed",
            "3",
            "--wait-ms",
            "45000",
            // Ten draws of the fleet's times, averaged: the replay's own noise well inside
            // the 5% asked of its figures.
            "--runs",
            "10",
            "--timeline",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "poolctl simulate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The replay's warm count over time (of its first draw), printed beside the live one below.
    let sim_timeline: Vec<String> = report["runs"][0]["report"]["idle_timeline"]
        .as_array()
        .map(|points| {
            points
                .iter()
                .map(|p| format!("{}:{}", p[0], p[1]))
                .collect()
        })
        .unwrap_or_default();
    for run in report["runs"].as_array_mut().unwrap() {
        run["report"]
            .as_object_mut()
            .unwrap()
            .remove("idle_timeline");
    }
    eprintln!(
        "simulate: {}",
        serde_json::to_string_pretty(&report).unwrap()
    );
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "the live policy and the proposed one");
    for r in runs {
        assert!(r["report"]["hit_rate"].as_f64().is_some());
        assert!(
            r["report"]["idle_container_seconds"].as_f64().is_some(),
            "{r}"
        );
    }
    let sim_hit_rate = runs[0]["report"]["hit_rate"].as_f64().unwrap();
    eprintln!("hit rate: live {live_hit_rate:.3}, simulated {sim_hit_rate:.3}");
    let sim_wait = |k: &str| runs[0]["report"][k].as_u64().unwrap();
    eprintln!(
        "wait p50/p99 ms: live {live_p50}/{live_p99}, simulated {}/{}",
        sim_wait("wait_p50_ms"),
        sim_wait("wait_p99_ms")
    );
    eprintln!(
        "mean wait ms: live {live_mean:.0}, simulated {}",
        sim_wait("wait_mean_ms")
    );
    // Idle container-seconds the live run had over the span `simulate` replays (from the first
    // arrival to its last event): warm, unallocated containers, integrated between events.
    let mut history = all_events(
        &c,
        EventQuery {
            pool: Some("burst".into()),
            ..Default::default()
        },
    )
    .await;
    history.sort_by_key(|e| e.seq);
    let span = &report["trace"];
    let (start, end) = (
        span["start_ms"].as_u64().unwrap(),
        span["end_ms"].as_u64().unwrap(),
    );
    assert_eq!(
        span["start_warm"], 3,
        "the pool held its floor when the burst came"
    );
    // The fleet the model has is the one node: room for what its allocatable resources hold
    // of the pool's containers, and as many made at once as its agent's limit says (from its
    // heartbeat).
    let nodes = c.client.nodes().await.unwrap();
    let [n] = &nodes[..] else {
        panic!("one node: {nodes:?}")
    };
    let slots = n.create_slots.expect("the agent says its create limit");
    assert_eq!(slots, 4, "{n:?}");
    assert_eq!(
        n.allocatable.cpu_millis,
        n.node.capacity.cpu_millis * 8,
        "the default cpu overcommit"
    );
    let fits = (n.allocatable.cpu_millis / spec.resources.cpu_millis)
        .min(n.allocatable.memory_mb / spec.resources.memory_mb);
    assert_eq!(span["fleet"]["slots"].as_u64(), Some(fits), "{span}");
    // The simulation read the nodes before this test did; the limit may have moved since
    // only if a create finished in between (none do after the burst has settled).
    assert_eq!(
        span["fleet"]["create_slots"][n.node.id.as_str()],
        slots,
        "{span}"
    );
    let mut warm = std::collections::HashSet::new();
    let mut live_idle_ms = 0u64;
    let mut prev = start;
    // For a failure to say where the runs parted: the live warm count each time it changed
    // (ms from the first arrival), and what was made and ended.
    let (mut timeline, mut created, mut ended) = (Vec::new(), 0u32, 0u32);
    // The scaler's wanted counts (ms:wanted), and each retirement (retired ms + teardown ms).
    let (mut scaled, mut retired) = (Vec::new(), Vec::new());
    for e in &history {
        // Events are in log order; their times (when each command was proposed) may run a
        // few milliseconds backwards across it.
        let at = e.at.0.clamp(start, end).max(prev);
        live_idle_ms += warm.len() as u64 * (at - prev);
        prev = at;
        if let (EventKind::PoolScaled, Some(d)) = (e.kind, &e.detail) {
            scaled.push(format!(
                "{}:{}(warm {} rate {} disp {})",
                at - start,
                d["to"],
                d["warm_mean_s"],
                d["rate_per_s"],
                d["dispersion"],
            ));
        }
        let Some(id) = e.container else { continue };
        match e.kind {
            EventKind::ContainerWarm => {
                warm.insert(id);
            }
            EventKind::ContainerAllocated
            | EventKind::ContainerReleased
            | EventKind::ContainerTerminated
            | EventKind::ContainerFailed => {
                warm.remove(&id);
            }
            _ => {}
        }
        if let Some(ms) = e.detail.as_ref().and_then(|d| d["teardown_ms"].as_u64()) {
            retired.push(format!("{}+{ms}", (at - start).saturating_sub(ms)));
        }
        match e.kind {
            EventKind::ContainerCreated => created += 1,
            EventKind::ContainerTerminated | EventKind::ContainerFailed => ended += 1,
            _ => {}
        }
        record_change(&mut timeline, at - start, warm.len() as u64);
    }
    let live_idle = live_idle_ms as f64 / 1000.0;
    let timeline: Vec<String> = timeline.iter().map(|[t, n]| format!("{t}:{n}")).collect();
    eprintln!(
        "live: {created} created, {ended} ended; warm (ms:count) {}",
        timeline.join(" ")
    );
    eprintln!(
        "live: scaled (ms:wanted) {}; retired (ms+teardown) {}",
        scaled.join(" "),
        retired.join(" ")
    );
    eprintln!(
        "simulated: {}; warm (ms:count, first draw) {}",
        runs[0]["report"],
        sim_timeline.join(" ")
    );
    let sim_idle = runs[0]["report"]["idle_container_seconds"]
        .as_f64()
        .unwrap();
    eprintln!("idle container-seconds: live {live_idle:.1}, simulated {sim_idle:.1}");
    assert!(
        (sim_hit_rate - live_hit_rate).abs() <= 0.10,
        "simulated hit rate {sim_hit_rate:.3} is not within 10 points of the live {live_hit_rate:.3}"
    );
    // How long the burst's allocations waited, on average and at the median, and the idle
    // container-seconds: each within 5%. The replay draws each measured warm-up and teardown
    // once (nearest in time), and retirements' teardowns are measured too. Over six runs the
    // mean was within −0.7% to −0.1%, the median −0.8% to −0.1%, idle −2.4% to −0.1% (idle
    // was +4.1% to +6.5% while retirements were given releases' teardowns). On 2026-12-05,
    // five runs more gave idle −0.5% to +2.0%, and one CI-like run (a clean clone, the fuzzer
    // beside it) +9.6% with mean and median within 0.6%, which failed it, and on 2026-12-06
    // another +6.2%: the live and replayed estimators bucketed the burst's arrivals apart (see
    // the README). With buckets on the clock and arrivals recorded at their own times, twelve
    // runs gave idle −1.0% to +1.2%, mean −1.2% to +0.3%, median −6.2% once, else within 2.5%.
    let sim_mean = sim_wait("wait_mean_ms") as f64;
    assert!(
        (sim_mean - live_mean).abs() <= 0.05 * live_mean,
        "simulated mean wait {sim_mean} ms is not within 5% of the live {live_mean:.0} ms"
    );
    let sim_p50 = sim_wait("wait_p50_ms") as f64;
    let live_p50 = live_p50 as f64;
    assert!(
        (sim_p50 - live_p50).abs() <= 0.05 * live_p50,
        "simulated wait p50 {sim_p50} ms is not within 5% of the live {live_p50} ms"
    );
    assert!(
        (sim_idle - live_idle).abs() <= 0.05 * live_idle,
        "simulated idle container-seconds {sim_idle:.1} are not within 5% of the live {live_idle:.1}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_expire_renew_and_stop_at_max_lifetime() {
    let c = TestCluster::single().await;
    let mut spec = TestCluster::demo_spec("leases", 2);
    spec.max_lifetime_secs = Some(9);
    c.client.create_pool(&spec).await.unwrap();
    c.wait_warm("leases", 2, Duration::from_secs(60)).await;

    // A 2 s lease, not renewed, expires and releases.
    let short = c
        .client
        .allocate(&CreateAllocation {
            lease_seconds: Some(2),
            ..alloc("leases", 10_000)
        })
        .await
        .unwrap();
    // A 3 s lease, renewed, outlives it, until max_lifetime caps it.
    let kept = c
        .client
        .allocate(&CreateAllocation {
            lease_seconds: Some(3),
            ..alloc("leases", 10_000)
        })
        .await
        .unwrap();
    let client = c.client.clone();
    let expired = wait_until(Duration::from_secs(10), "the short lease to expire", || {
        let client = client.clone();
        async move {
            client
                .get_allocation(short.id)
                .await
                .ok()
                .filter(|a| a.state == AllocationState::Released)
        }
    })
    .await;
    assert_eq!(expired.release_reason, Some(ReleaseReason::Expired));
    let renewed = c
        .client
        .renew(
            kept.id,
            &RenewAllocation {
                lease_seconds: Some(3),
            },
        )
        .await
        .unwrap();
    assert!(
        renewed.expires_at > kept.expires_at,
        "renew extends the lease"
    );
    assert_eq!(
        c.client.get_allocation(kept.id).await.unwrap().state,
        AllocationState::Active
    );
    let cap = kept.max_expires_at.expect("max_lifetime sets a cap");
    let renewed = c
        .client
        .renew(
            kept.id,
            &RenewAllocation {
                lease_seconds: Some(60),
            },
        )
        .await
        .unwrap();
    assert_eq!(renewed.expires_at, cap, "renewals stop at max_lifetime");
    let refused = c
        .client
        .renew(
            kept.id,
            &RenewAllocation {
                lease_seconds: Some(60),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(refused.status(), Some(409), "{refused}");
    let events = all_events(
        &c,
        EventQuery {
            container: Some(short.container_id.to_string()),
            ..Default::default()
        },
    )
    .await;
    let released = events
        .iter()
        .find(|e| e.kind == EventKind::ContainerReleased)
        .unwrap();
    assert_eq!(released.reason.as_deref(), Some("expired"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_allocation_is_released_and_a_busy_one_is_not() {
    let c = TestCluster::single().await;
    let mut spec = TestCluster::demo_spec("idle", 2);
    spec.idle_timeout_secs = Some(8);
    c.client.create_pool(&spec).await.unwrap();
    c.wait_warm("idle", 2, Duration::from_secs(60)).await;
    let idle = c.client.allocate(&alloc("idle", 10_000)).await.unwrap();
    let busy = c.client.allocate(&alloc("idle", 10_000)).await.unwrap();
    let ip = busy.ipv6.unwrap();
    let start = Instant::now();
    let mut idle_released = None;
    while start.elapsed() < Duration::from_secs(24) {
        http_get(ip, busy.port, "/")
            .await
            .expect("the busy container answers");
        if idle_released.is_none() {
            let a = c.client.get_allocation(idle.id).await.unwrap();
            if a.state == AllocationState::Released {
                assert_eq!(a.release_reason, Some(ReleaseReason::Idle));
                idle_released = Some(start.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let after = idle_released.expect("the idle allocation was released");
    assert!(
        after >= Duration::from_secs(7),
        "released after {after:?}, before its idle timeout"
    );
    assert_eq!(
        c.client.get_allocation(busy.id).await.unwrap().state,
        AllocationState::Active,
        "traffic keeps it"
    );
    let events = all_events(
        &c,
        EventQuery {
            container: Some(idle.container_id.to_string()),
            ..Default::default()
        },
    )
    .await;
    assert!(events
        .iter()
        .any(|e| e.kind == EventKind::ContainerReleased && e.reason.as_deref() == Some("idle")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_whose_health_fails_leaves_the_pool_after_the_threshold() {
    let c = TestCluster::single().await;
    let mut spec = TestCluster::demo_spec("sick", 2);
    // The demo's fault scripts write to its root filesystem.
    spec.security = TestCluster::writable_root();
    spec.health.failure_threshold = 2;
    spec.health.interval_ms = 300;
    c.client.create_pool(&spec).await.unwrap();
    c.wait_warm("sick", 2, Duration::from_secs(60)).await;
    let victim = c
        .client
        .list_containers(&Default::default())
        .await
        .unwrap()
        .into_iter()
        .find(|x| x.state == ContainerState::Warm)
        .unwrap();
    let (status, _) = http_get(victim.ipv6.unwrap(), victim.port, "/cgi-bin/fail")
        .await
        .unwrap();
    assert_eq!(status, 200);
    let client = c.client.clone();
    let gone = wait_until(
        Duration::from_secs(15),
        "the sick container to leave the pool",
        || {
            let client = client.clone();
            async move {
                client
                    .get_container(victim.id)
                    .await
                    .ok()
                    .filter(|x| x.state != ContainerState::Warm)
            }
        },
    )
    .await;
    assert_eq!(
        gone.reason,
        Some(warmpool_proto::ContainerEndReason::Unhealthy)
    );
    let s = c.wait_warm("sick", 2, Duration::from_secs(60)).await;
    assert_eq!(s.pools[0].counts.warm, 2, "replaced");
    for _ in 0..3 {
        let a = c.client.allocate(&alloc("sick", 10_000)).await.unwrap();
        assert_ne!(a.container_id, victim.id, "never offered again");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_change_rolls_out_while_allocations_keep_succeeding() {
    let c = TestCluster::single().await;
    docker(&["tag", warmpool_tests::DEMO_IMAGE, "warmpool-demo:rollout"]);
    // One new container at a time, half a second apart: each one's old stand-in leaves when it
    // is warm, so old and new are warm side by side for a while whatever the host's speed
    // (with batches of 4, all three new ones may turn warm in one leader step, and the old
    // ones leave in the same step).
    let mut spec = TestCluster::demo_spec("roll", 3);
    spec.scaling.batch_size = 1;
    spec.scaling.pacing_ms = 500;
    c.client.create_pool(&spec).await.unwrap();
    c.wait_warm("roll", 3, Duration::from_secs(60)).await;

    // A changed spec (here its environment) is rolled out gradually: the old containers stay
    // warm, never offered, until new ones are warm in their places, so the pool never holds
    // fewer than its floor of warm containers. Sampled every 50 ms until no old one is left.
    let mut changed = spec.clone();
    changed.env.insert("ROLLOUT".into(), "1".into());
    let (view, _) = c.client.put_pool(&changed).await.unwrap();
    let g2 = view.pool.generation;
    let query = warmpool_proto::api::ContainerQuery {
        pool: Some("roll".into()),
        ..Default::default()
    };
    let (mut min_warm, mut overlap) = (usize::MAX, false);
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the rollout did not finish"
        );
        let all = c.client.list_containers(&query).await.unwrap();
        let warm: Vec<_> = all
            .iter()
            .filter(|x| x.state == ContainerState::Warm)
            .collect();
        let old_left = all.iter().any(|x| {
            x.generation != g2 && matches!(x.state, ContainerState::Creating | ContainerState::Warm)
        });
        min_warm = min_warm.min(warm.len());
        overlap |=
            warm.iter().any(|x| x.generation == g2) && warm.iter().any(|x| x.generation != g2);
        if !old_left && warm.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("rollout: at least {min_warm} warm throughout, old and new side by side: {overlap}");
    assert!(
        min_warm >= 3,
        "the pool fell to {min_warm} warm during the rollout"
    );
    assert!(overlap, "old containers left before new ones were warm");

    let new = PoolSpec {
        image: "warmpool-demo:rollout".into(),
        ..changed
    };
    let (view, created) = c.client.put_pool(&new).await.unwrap();
    assert!(!created);
    let generation = view.pool.generation;
    assert_eq!(generation, g2 + 1);
    // Allocations keep succeeding during the rollout, and never get an old container.
    for _ in 0..5 {
        let a = c
            .client
            .allocate(&alloc("roll", 30_000))
            .await
            .expect("allocation during the rollout");
        let x = c.client.get_container(a.container_id).await.unwrap();
        assert_eq!(
            x.generation, generation,
            "a container of the old spec was handed out"
        );
        c.client.release(a.id).await.unwrap();
    }
    let client = c.client.clone();
    wait_until(
        Duration::from_secs(60),
        "no old-image container left",
        || {
            let client = client.clone();
            async move {
                let all = client.list_containers(&Default::default()).await.ok()?;
                let warm = all
                    .iter()
                    .filter(|x| x.state == ContainerState::Warm)
                    .count();
                // Retired ones are `releasing` until their agent has removed them.
                let old_left = all.iter().any(|x| {
                    x.generation != generation
                        && !matches!(x.state, ContainerState::Terminated | ContainerState::Failed)
                });
                (warm >= 3 && !old_left).then_some(())
            }
        },
    )
    .await;
    let images = docker(&[
        "ps",
        "--filter",
        &format!("label=io.warmpool.node={}", c.agents[0].node),
        "--format",
        "{{.Image}}",
    ]);
    assert!(
        images.lines().all(|i| i == "warmpool-demo:rollout"),
        "only the new image runs: {images}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_that_keep_failing_back_off_and_say_why_instead_of_churning() {
    let c = TestCluster::single().await;
    // The image is there but its command is not: every start fails. (A missing image no
    // longer makes creates fail: the agent's pull fails first and the pool takes no creates
    // there at all, tests/image_pull.)
    let broken = PoolSpec {
        command: vec!["/no/such/binary".into()],
        ..TestCluster::demo_spec("broken", 2)
    };
    c.client.create_pool(&broken).await.unwrap();
    let client = c.client.clone();
    let condition = wait_until(
        Duration::from_secs(20),
        "the pool to say it is backing off",
        || {
            let client = client.clone();
            async move {
                client
                    .status()
                    .await
                    .ok()?
                    .pools
                    .into_iter()
                    .find(|p| p.name.as_str() == "broken")?
                    .condition
            }
        },
    )
    .await;
    assert!(condition.contains("creates are failing"), "{condition}");
    assert!(condition.contains("create_failed"), "{condition}");
    // Let it fail a fourth time in a row (1 + 2 + 4 s of backoff between): time to churn if
    // it would; it must not.
    let q = EventQuery {
        pool: Some("broken".into()),
        ..Default::default()
    };
    let events = wait_until(Duration::from_secs(40), "a fourth failure in a row", || {
        let (c, q) = (&c, q.clone());
        async move {
            let events = all_events(c, q).await;
            events
                .iter()
                .any(|e| {
                    e.kind == EventKind::PoolBackoff
                        && e.detail
                            .as_ref()
                            .and_then(|d| d["consecutive_failures"].as_u64())
                            >= Some(4)
                })
                .then_some(events)
        }
    })
    .await;
    let creates = events
        .iter()
        .filter(|e| e.kind == EventKind::ContainerCreated)
        .count();
    let backoffs: Vec<_> = events
        .iter()
        .filter(|e| e.kind == EventKind::PoolBackoff)
        .collect();
    eprintln!(
        "{creates} creates and {} back-offs by the fourth failure in a row",
        backoffs.len()
    );
    assert!(
        creates <= 16,
        "{creates} creates: the pool churns instead of backing off"
    );
    assert!(
        !backoffs.is_empty()
            && backoffs.iter().all(|e| e
                .reason
                .as_deref()
                .is_some_and(|r| r.starts_with("create_failed")))
    );
    let delays: Vec<u64> = backoffs
        .iter()
        .filter_map(|e| e.detail.as_ref()?["consecutive_failures"].as_u64())
        .collect();
    assert!(
        delays.windows(2).all(|w| w[1] >= w[0]),
        "failures count up: {delays:?}"
    );
    // Its only node failed every create too: it is avoided for a while, and says so.
    let node = c.agents[0].node.clone();
    let s = c.client.status().await.unwrap();
    let on_node = s.nodes.iter().find(|n| n.node.as_str() == node).unwrap();
    let why = on_node.condition.as_deref().unwrap_or_default();
    assert!(
        why.contains("creates are failing"),
        "node condition: {why:?}"
    );
    let node_events = |kind: &str| EventQuery {
        kind: Some(kind.into()),
        node: Some(node.clone()),
        ..Default::default()
    };
    assert!(!all_events(&c, node_events("node_backoff")).await.is_empty());

    // Fixing the spec clears the condition and the pool fills.
    let fixed = TestCluster::demo_spec("broken", 2);
    c.client.put_pool(&fixed).await.unwrap();
    c.wait_warm("broken", 2, Duration::from_secs(60)).await;
    let s = c.client.status().await.unwrap();
    assert_eq!(
        s.pools
            .iter()
            .find(|p| p.name.as_str() == "broken")
            .unwrap()
            .condition,
        None
    );
    // The node's creates work again: its condition is cleared, and the log says so.
    let on_node = s.nodes.iter().find(|n| n.node.as_str() == node).unwrap();
    assert_eq!(on_node.condition, None);
    assert_eq!(all_events(&c, node_events("node_recovered")).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_allocated_container_is_restarted_once_then_released_if_still_failing() {
    // A short startup grace, so a restarted container that never passes is judged quickly.
    let c = TestCluster::single_with_agent_args(&["--startup-grace-ms", "3000"]).await;
    let mut spec = TestCluster::demo_spec("heal", 2);
    // The demo's fault scripts write to its root filesystem.
    spec.security = TestCluster::writable_root();
    spec.health.failure_threshold = 2;
    spec.health.interval_ms = 300;
    c.client.create_pool(&spec).await.unwrap();
    c.wait_warm("heal", 2, Duration::from_secs(60)).await;

    // A fault a restart cures: restarted in place, the session keeps its container.
    let cured = c.client.allocate(&alloc("heal", 10_000)).await.unwrap();
    http_get(
        cured.ipv6.unwrap(),
        cured.port,
        "/cgi-bin/fail-until-restart",
    )
    .await
    .unwrap();
    let client = c.client.clone();
    wait_until(
        Duration::from_secs(30),
        "the restarted container to be healthy again",
        || {
            let client = client.clone();
            async move {
                let x = client.get_container(cured.container_id).await.ok()?;
                (x.restarts == 1 && x.health == warmpool_proto::Health::Healthy).then_some(())
            }
        },
    )
    .await;
    assert_eq!(
        c.client.get_allocation(cured.id).await.unwrap().state,
        AllocationState::Active
    );
    let (status, _) = http_get(cured.ipv6.unwrap(), cured.port, "/healthz")
        .await
        .unwrap();
    assert_eq!(status, 200, "same address, healthy again");
    let events = all_events(
        &c,
        EventQuery {
            container: Some(cured.container_id.to_string()),
            ..Default::default()
        },
    )
    .await;
    assert!(events
        .iter()
        .any(|e| e.kind == EventKind::ContainerRestarted));

    // A fault that outlives the restart: its session is told (the release says why) and the
    // pool replaces it.
    let doomed = c.client.allocate(&alloc("heal", 10_000)).await.unwrap();
    http_get(doomed.ipv6.unwrap(), doomed.port, "/cgi-bin/fail")
        .await
        .unwrap();
    let client = c.client.clone();
    let released = wait_until(
        Duration::from_secs(40),
        "the still-failing container's allocation to end",
        || {
            let client = client.clone();
            async move {
                client
                    .get_allocation(doomed.id)
                    .await
                    .ok()
                    .filter(|a| a.state == AllocationState::Released)
            }
        },
    )
    .await;
    assert_eq!(released.release_reason, Some(ReleaseReason::Unhealthy));
    let events = all_events(
        &c,
        EventQuery {
            container: Some(doomed.container_id.to_string()),
            ..Default::default()
        },
    )
    .await;
    let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
    assert!(kinds.contains(&EventKind::ContainerRestarted), "{kinds:?}");
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == EventKind::ContainerRestarted)
            .count(),
        1,
        "restarted once only"
    );
    let release = events
        .iter()
        .find(|e| e.kind == EventKind::ContainerReleased)
        .unwrap();
    assert_eq!(release.reason.as_deref(), Some("unhealthy"));
    assert_eq!(
        release.session.as_ref(),
        Some(&doomed.session_id),
        "its session is named in the event"
    );
    c.wait_warm("heal", 2, Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_pools_with_different_images_commands_resources_and_checks_live_side_by_side() {
    let c = TestCluster::single().await;
    docker(&["tag", warmpool_tests::DEMO_IMAGE, "warmpool-demo:other"]);
    let web = TestCluster::demo_spec("web", 2);
    let mut tcp = PoolSpec::new(PoolName::new("tcp").unwrap(), "warmpool-demo:other");
    tcp.min_warm = 1;
    tcp.port = 9090;
    tcp.command = ["/bin/busybox", "httpd", "-f", "-p", "9090", "-h", "/www"]
        .map(String::from)
        .to_vec();
    tcp.health.probe = warmpool_proto::HealthProbe::Tcp;
    tcp.health.interval_ms = 300;
    tcp.resources.memory_mb = 64;
    tcp.resources.cpu_millis = 250;
    c.client.create_pool(&web).await.unwrap();
    c.client.create_pool(&tcp).await.unwrap();
    c.wait_warm("web", 2, Duration::from_secs(60)).await;
    let s = c.wait_warm("tcp", 1, Duration::from_secs(60)).await;
    let by_name = |n: &str| {
        s.pools
            .iter()
            .find(|p| p.name.as_str() == n)
            .unwrap()
            .clone()
    };
    assert_eq!(by_name("web").counts.warm, 2);
    assert_eq!(
        by_name("tcp").counts.warm,
        1,
        "each pool has its own status"
    );

    let a = c.client.allocate(&alloc("tcp", 10_000)).await.unwrap();
    assert_eq!(a.port, 9090);
    let (status, _) = http_get(a.ipv6.unwrap(), 9090, "/").await.unwrap();
    assert_eq!(
        status, 200,
        "the tcp pool's container runs its own command on its own port"
    );
    let x = c.client.get_container(a.container_id).await.unwrap();
    let inspect = docker(&[
        "inspect",
        x.docker_id.as_deref().unwrap(),
        "--format",
        "{{.Config.Image}} {{.HostConfig.Memory}} {{.HostConfig.NanoCpus}}",
    ]);
    assert_eq!(
        inspect.trim(),
        format!("warmpool-demo:other {} 250000000", 64 * 1024 * 1024)
    );
    let b = c.client.allocate(&alloc("web", 10_000)).await.unwrap();
    assert_eq!(b.port, 8080);
    let y = c.client.get_container(b.container_id).await.unwrap();
    assert_eq!(y.pool.as_str(), "web");
}
