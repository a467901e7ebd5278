//! Small runs of the benchmark harnesses, so they keep working between the real runs
//! (`docs/BENCHMARKS.md`): the fleet simulator with 20 agents, the failover benchmark with one
//! kill, `poolctl bench` against simulated agents with a two-run cold-start baseline
//! through the real dockerd, `poolctl bench --tier paused` and `--burst` against a real agent,
//! and `deploy/bench/refill.sh` with 10 containers on a debug build.
//! They check that each harness runs and reports, not figures.

use std::time::Duration;

use poolctl::bench::{BenchPlan, BurstPlan, Via};
use warmpool_tests::failover::{self, FailoverConfig};
use warmpool_tests::fleet::{self, FleetConfig};
use warmpool_tests::sim_agent::SimAgent;
use warmpool_tests::{ensure_demo_image, unique, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_simulator_fills_a_small_fleet_and_reports() {
    let cfg = FleetConfig {
        agents: 20,
        containers_per_agent: 10,
        pools: 2,
        batch_size: 50,
        fill_timeout: Duration::from_secs(60),
        settle: Duration::from_millis(500),
        idle_window: Duration::from_secs(1),
        sequential_cycles: 20,
        concurrent_cycles: 40,
        concurrency: 4,
        soak_cycles: 50,
        soak_warmup_cycles: 10,
        log_filter: "info,openraft=warn,sled=warn,async_nats=warn".into(),
        ..FleetConfig::default()
    };
    let report = fleet::run(&cfg, &|line| eprintln!("fleet: {line}"))
        .await
        .expect("fleet run");
    eprint!("{}", fleet::render(&report));
    assert!(report.filled, "{report:?}");
    assert_eq!(report.containers_warm, 200);
    assert_eq!(report.nodes_ready_at_end, 20);
    assert_eq!(report.members.len(), 3);
    assert!(report.members.iter().all(|m| m.rss_mib > 0.0));
    assert_eq!(report.members.iter().filter(|m| m.leader).count(), 1);
    assert_eq!(report.sequential.cycles, 20);
    assert_eq!(report.concurrent.cycles, 40);
    assert_eq!(report.sequential.errors + report.concurrent.errors, 0);
    assert!(report.sequential.alloc_ms.p50 > 0.0);
    let soak = report.soak.as_ref().expect("the soak ran");
    assert_eq!((soak.cycles, soak.rss_mib.len(), soak.errors), (50, 10, 0));
    assert!(soak.rss_after_warmup_mib > 0.0);
    assert!(soak.rss_mib.iter().all(|(_, rss)| *rss > 0.0));
    assert!(report
        .members
        .iter()
        .any(|m| m.alloc_write_bytes_per_hour > 0.0));
    assert!(report.join_secs.is_some(), "{:?}", report.error);
    assert!(report.error.is_none(), "{:?}", report.error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_failover_benchmark_times_a_leader_kill() {
    let cfg = FailoverConfig {
        kills: 1,
        clients: 2,
        between: Duration::from_millis(500),
    };
    let report = failover::run(&cfg, &|line| eprintln!("failover: {line}"))
        .await
        .expect("failover run");
    assert_eq!(report.failovers_secs.len(), 1);
    assert!(report.failovers_secs[0] > 0.0 && report.failovers_secs[0] < 30.0);
    assert!(report.cycles > 0, "the clients kept working");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poolctl_bench_measures_cycles_replenish_and_a_cold_start() {
    ensure_demo_image();
    let c = TestCluster::replicated(3, &[]).await;
    let _agent = SimAgent::start(
        &c.nats.url(),
        &unique("sim"),
        11,
        Duration::from_millis(300),
    )
    .await;
    let pool = unique("bp").replace('-', "");
    let mut spec = TestCluster::demo_spec(&pool, 8);
    spec.max_total = 1_000;
    spec.scaling.batch_size = 8;
    spec.scaling.pacing_ms = 20;
    c.client.create_pool(&spec).await.unwrap();
    c.wait_warm(&pool, 8, Duration::from_secs(30)).await;
    let plan = BenchPlan {
        pool: Some(spec.name.clone()),
        image: spec.image.clone(),
        cycles: 30,
        concurrency: 2,
        warmup: 2,
        warm: None,
        wait_ms: 5_000,
        via: Via::Follower,
        cold_runs: 2,
        docker_host: "unix:///var/run/docker.sock".into(),
        cold_prefix: None,
        replenish: 4,
        fill_timeout: Duration::from_secs(60),
        keep_pool: false,
        tiers: false,
        burst: None,
        paused: None,
    };
    let report = poolctl::bench::run(&c.client, None, &plan, &mut |l| eprintln!("bench: {l}"))
        .await
        .expect("bench");
    eprint!("{}", poolctl::bench::render(&report));
    assert_eq!(report.warm.cycles, 30);
    assert_eq!(report.warm.errors, 0, "{:?}", report.warm.first_error);
    assert!(report.warm.alloc_ms.p50 > 0.0 && report.warm.cycles_per_sec > 0.0);
    assert_eq!(report.urls.len(), 1, "one follower");
    // How the kernel schedules the measuring process is in the report: on a host busy with
    // Docker, its own waits for the CPU are in the figures.
    let sched = report.client_scheduler.expect("the client's scheduler");
    let shown = poolctl::bench::render(&report);
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("client:") && l.contains(&sched.to_string())),
        "{shown}"
    );
    let cold = report.cold.as_ref().expect("a cold baseline");
    assert_eq!(cold.runs, 2, "{:?}", cold.first_failure);
    assert!(
        cold.healthy_ms.p50 >= cold.started_ms.p50 && cold.started_ms.p50 >= cold.create_ms.p50
    );
    assert!(
        report.ratio.is_some_and(|r| r.median > 1.0),
        "{:?}",
        report.ratio
    );
    let r = report.replenish.as_ref().expect("replenish");
    assert_eq!(r.allocated, 4);
    assert!(r.completed, "{r:?}");
    // The pool named was used as it is, and is still there.
    assert!(!report.temporary_pool);
    assert!(c.client.get_pool(&spec.name).await.is_ok());
}

/// `poolctl bench --tier paused` (what `docs/BENCHMARKS.md` runs with `-n 200`) and
/// `poolctl bench --burst` (what `deploy/bench/burst.sh` runs with 30) in short form, against
/// a real agent that pauses through the cgroup freezer: each reports its buckets by the tier
/// each answer named, and the burst's containers answer and the tiers refill. Timings are
/// printed, not asserted (debug builds on a shared 2-core host).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poolctl_bench_reports_the_paused_tier_and_a_burst() {
    let c = TestCluster::single().await;
    let plan = BenchPlan {
        pool: None,
        image: warmpool_tests::DEMO_IMAGE.into(),
        cycles: 2,
        concurrency: 1,
        warmup: 0,
        warm: Some(1),
        wait_ms: 10_000,
        via: Via::Given,
        cold_runs: 1,
        docker_host: "unix:///var/run/docker.sock".into(),
        cold_prefix: None,
        replenish: 0,
        fill_timeout: Duration::from_secs(120),
        keep_pool: false,
        tiers: true,
        burst: None,
        paused: Some(2),
    };
    let report = poolctl::bench::run(&c.client, None, &plan, &mut |l| eprintln!("bench: {l}"))
        .await
        .expect("bench --tier paused");
    let text = poolctl::bench::render(&report);
    eprint!("{text}");
    let t = report.tiers.as_ref().expect("the tiers were measured");
    assert_eq!((t.warm_target, t.paused_target), (1, 2));
    assert_eq!(t.errors, 0, "{:?}", t.first_error);
    assert_eq!(t.buckets.untiered, 0, "every answer names its tier");
    assert!(t.buckets.paused.count >= 2, "{t:?}");
    assert!(t.buckets.warm.count >= 2, "{t:?}");
    assert!(t.buckets.paused.ms.p50 > 0.0 && t.buckets.warm.ms.p50 > 0.0);
    let cold = report
        .cold
        .as_ref()
        .expect("a cold baseline in the same run");
    assert_eq!(cold.runs, 1, "{:?}", cold.first_failure);
    for row in [
        "paused: unpause to granted",
        "warm allocation",
        "cold: to first healthy answer",
    ] {
        assert!(text.contains(row), "no {row:?} in:\n{text}");
    }
    assert!(report.temporary_pool);

    let plan = BenchPlan {
        tiers: false,
        cold_runs: 0,
        burst: Some(BurstPlan {
            n: 4,
            within: Duration::from_millis(500),
            fast: Duration::from_millis(100),
            expect_fast: None,
        }),
        paused: Some(3),
        ..plan
    };
    let report = poolctl::bench::run(&c.client, None, &plan, &mut |l| eprintln!("bench: {l}"))
        .await
        .expect("bench --burst");
    eprint!("{}", poolctl::bench::render(&report));
    let b = report.burst.as_ref().expect("the burst ran");
    assert_eq!(b.allocations.len(), 4);
    assert_eq!(b.granted, 4, "{:?}", b.allocations);
    assert_eq!(b.answered, 4, "{:?}", b.allocations);
    assert_eq!(b.buckets.warm.count + b.buckets.paused.count, 4);
    assert!(b.buckets.paused.count >= 2, "{b:?}");
    assert!(b.refilled, "{b:?}");
    assert_eq!(b.shortfall(), None);
    // Both temporary pools are gone.
    let status = c.client.status().await.expect("status");
    assert!(status.pools.is_empty(), "{:?}", status.pools);
}

/// `deploy/bench/refill.sh` short form: the raw `docker run` rate and a real agent's refill
/// of a 10-container pool, with the binaries the suite built (debug, no build of its own). Ratios on a busy 2-core host are not asserted:
/// only that both phases ran and printed their figures.
#[test]
fn the_refill_benchmark_measures_docker_and_the_agent() {
    ensure_demo_image();
    let script = warmpool_tests::root().join("deploy/bench/refill.sh");
    let out = std::process::Command::new(&script)
        // It runs beside the suite's other tests; figures are not its point.
        .env("WARMPOOL_BENCH_SHARED", "1")
        .args(["-n", "10", "-p", "4", "--bin-dir"])
        .arg(warmpool_tests::bin_dir())
        .output()
        .expect("run refill.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    eprint!("{stdout}");
    assert!(out.status.success(), "refill.sh failed: {}", out.status);
    let rate = |prefix: &str| -> f64 {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{stdout}"));
        let before = line
            .strip_suffix(" containers/s")
            .unwrap_or_else(|| panic!("no rate in {line:?}"));
        before
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no rate in {line:?}"))
    };
    assert!(rate("raw:") > 0.0);
    assert!(rate("agent:") > 0.0);
    assert!(stdout.contains("create limit at the end: "), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("ratio:") && l.ends_with("% of the raw rate")),
        "{stdout}"
    );
    // Nothing of the run is left behind: the agent's containers carry its node's label, the raw
    // ones their run's.
    let node = stderr
        .split("(node ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .unwrap_or_else(|| panic!("no node id in:\n{stderr}"));
    let run = node.trim_start_matches("refill");
    for label in [
        format!("label=io.warmpool.node={node}"),
        format!("label=io.warmpool.bench=refill-{run}"),
    ] {
        let left = std::process::Command::new("docker")
            .args(["ps", "-aq", "--filter", &label])
            .output()
            .expect("docker ps");
        assert!(left.stdout.is_empty(), "left behind ({label}): {left:?}");
    }
}
