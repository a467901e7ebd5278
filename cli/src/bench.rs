//! `poolctl bench`: allocate+release cycles against a running cluster, measured from the
//! client, with a cold-start baseline and a replenish measurement in the same run.
//!
//! What is timed, from this process:
//!
//! - **allocation**: `POST /v1/allocations` sent until its `201` is read (one Raft write on
//!   the cluster; no Docker call on that path);
//! - **cycle**: allocation plus `DELETE /v1/allocations/{id}` (a second Raft write);
//! - **throughput**: completed cycles over the wall time of the measured phase;
//! - **cold start** (`--baseline cold`, [`crate::cold`]): on the Docker host given, the same
//!   image, command, limits and hardening as the pool's containers, on an IPv6 /64 bridge like
//!   an agent's: create, start, and poll until the container's own IPv6 address answers the
//!   pool's health check;
//! - **replenish** (`--replenish K`): K allocations at once, then the time until
//!   `/v1/status` shows the pool back at its wanted warm count.
//!
//! A temporary pool (the default) is made with `min_warm` covering every measured
//! allocation, so each one is served from a warm container rather than waiting for a new one;
//! it is deleted at the end. A named pool is used as it is.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use warmpool_proto::api::{BuildProfile, CreateAllocation};
use warmpool_proto::{Allocation, HealthProbe, PoolName, PoolSpec};

use crate::client::Client;
use crate::error::ClientError;
use crate::render::{kv_block, Align, Table};

/// The image of a temporary pool unless `--image` says otherwise.
pub const DEFAULT_IMAGE: &str = "warmpool-demo:latest";

/// p50 / p90 / p99 / max of a sample, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `samples`, in any order (all zero when empty).
    pub fn of(samples: &[Duration]) -> Percentiles {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| {
            if ms.is_empty() {
                return 0.0;
            }
            let rank = ((q * ms.len() as f64).ceil() as usize).clamp(1, ms.len());
            ms[rank - 1]
        };
        Percentiles {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: ms.last().copied().unwrap_or(0.0),
        }
    }
}

/// Which member the measured requests go to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// The URLs as given (the client sticks to the first that answers).
    Given,
    /// The current leader only (found with `GET /v1/cluster`).
    Leader,
    /// A follower only: every write is forwarded to the leader over NATS.
    Follower,
}

/// The measured allocate+release cycles.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WarmPhase {
    /// Cycles completed (failed ones are not counted).
    pub cycles: usize,
    /// Cycles in flight at once.
    pub concurrency: usize,
    /// Failed allocations or releases.
    pub errors: usize,
    /// The first error seen, for the reader.
    pub first_error: Option<String>,
    /// Wall time of the phase, s.
    pub wall_secs: f64,
    /// Completed cycles per second.
    pub cycles_per_sec: f64,
    /// Allocation latency.
    pub alloc_ms: Percentiles,
    /// Release latency.
    pub release_ms: Percentiles,
    /// Whole cycle latency.
    pub cycle_ms: Percentiles,
}

/// The cold-start baseline.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ColdPhase {
    /// Docker endpoint used.
    pub docker_host: String,
    /// dockerd's version.
    pub docker_version: String,
    /// The bridge network the containers ran on, and its IPv6 /64.
    pub network: String,
    /// Its IPv6 /64.
    pub prefix: String,
    /// Cold starts completed.
    pub runs: usize,
    /// Cold starts that failed (not counted in the figures).
    pub failures: usize,
    /// The first failure, for the reader.
    pub first_failure: Option<String>,
    /// `create` alone.
    pub create_ms: Percentiles,
    /// `create` + `start`.
    pub started_ms: Percentiles,
    /// `create` + `start` + first healthy answer from the container's IPv6 address.
    pub healthy_ms: Percentiles,
}

/// Cold start over warm allocation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Ratio {
    /// Cold median / warm allocation median.
    pub median: f64,
    /// Cold p99 / warm allocation p99.
    pub p99: f64,
}

/// After a burst of allocations, the way back to the wanted warm count.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Replenish {
    /// Allocations in the burst.
    pub burst: usize,
    /// Of which succeeded.
    pub allocated: usize,
    /// Time to get all the burst's allocations, ms.
    pub burst_ms: f64,
    /// Warm containers right after the burst.
    pub warm_after_burst: u32,
    /// The pool's wanted warm count when it was back (it may rise after a burst).
    pub wanted: u32,
    /// From the burst's start until `/v1/status` showed warm >= wanted, s.
    pub secs: f64,
    /// Whether it got back before the timeout.
    pub completed: bool,
}

/// Everything one `poolctl bench` run measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    /// The member URLs the measured requests went to.
    pub urls: Vec<String>,
    /// How they were chosen.
    pub via: Option<Via>,
    /// The leader when the run started.
    pub leader: Option<u64>,
    /// How the member that answered first was built (`debug` figures say little).
    pub server_build: Option<BuildProfile>,
    /// How the kernel schedules this `poolctl` (Linux only): under the normal scheduler on a
    /// host busy with Docker, its own waits for the CPU are part of the figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_scheduler: Option<Scheduler>,
    /// The pool.
    pub pool: String,
    /// Whether this run made (and deleted) the pool.
    pub temporary_pool: bool,
    /// Its image.
    pub image: String,
    /// Warm containers when the measured phase began.
    pub warm_at_start: u32,
    /// Unmeasured cycles run first.
    pub warmup: usize,
    /// The measured cycles.
    pub warm: WarmPhase,
    /// The cold-start baseline, when asked for.
    pub cold: Option<ColdPhase>,
    /// Cold over warm, when both were measured.
    pub ratio: Option<Ratio>,
    /// The replenish measurement, when asked for.
    pub replenish: Option<Replenish>,
    /// `--tier paused`: the tiers side by side (the cycles are not run then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tiers: Option<crate::tiers::TierPhase>,
    /// `--burst`: the burst (the cycles are not run then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<crate::tiers::BurstPhase>,
}

/// `--burst N --within D`: N allocations, one client each, sent evenly within D.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BurstPlan {
    /// Allocations.
    pub n: usize,
    /// The window they are sent in.
    pub within: Duration,
    /// The latency an allocation counts as fast under.
    pub fast: Duration,
    /// Fail the run (exit 1, after the report) with fewer fast allocations than this.
    pub expect_fast: Option<usize>,
}

/// What to run; built from the command line by [`crate::run`].
#[derive(Clone, Debug)]
pub struct BenchPlan {
    /// Use this pool; make a temporary one when None.
    pub pool: Option<PoolName>,
    /// Image of a temporary pool.
    pub image: String,
    /// Measured cycles.
    pub cycles: usize,
    /// Cycles in flight at once.
    pub concurrency: usize,
    /// Unmeasured cycles first.
    pub warmup: usize,
    /// `min_warm` of a temporary pool (None: cycles + warmup + replenish burst).
    pub warm: Option<u32>,
    /// `wait_ms` of each allocation.
    pub wait_ms: u64,
    /// Which member to send the measured requests to.
    pub via: Via,
    /// Cold starts to time (0: no baseline).
    pub cold_runs: usize,
    /// Docker endpoint for the cold starts.
    pub docker_host: String,
    /// IPv6 /64 of the cold-start network (None: a random one under fd36::/16).
    pub cold_prefix: Option<String>,
    /// Burst size for the replenish measurement (0: none).
    pub replenish: usize,
    /// Longest wait for a pool to fill or refill.
    pub fill_timeout: Duration,
    /// Keep a temporary pool instead of deleting it.
    pub keep_pool: bool,
    /// `--tier paused`: warm and paused tiers side by side, with the cold baseline; `cycles`
    /// is then the samples wanted per tier.
    pub tiers: bool,
    /// `--burst`: one burst on a tiered pool instead of the cycles.
    pub burst: Option<BurstPlan>,
    /// `min_paused` of a temporary tiered pool (None: see [`crate::tiers::tier_targets`]).
    pub paused: Option<u32>,
}

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The control plane said no or could not be reached.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Docker said no or could not be reached.
    #[error("docker: {0}")]
    Docker(String),
    /// Something did not happen in time, or the setup is unusable.
    #[error("{0}")]
    Setup(String),
}

/// Runs the benchmark; `progress` hears what it is doing (for standard error).
pub async fn run(
    client: &Client,
    token: Option<String>,
    plan: &BenchPlan,
    progress: &mut dyn FnMut(String),
) -> Result<BenchReport, BenchError> {
    let view = client.cluster().await?;
    let target = match plan.via {
        Via::Given => client.clone(),
        Via::Leader | Via::Follower => {
            let leader = view
                .leader
                .ok_or_else(|| BenchError::Setup("the cluster has no leader".into()))?;
            let member = view
                .members
                .iter()
                .find(|m| (m.id == leader) == (plan.via == Via::Leader))
                .ok_or_else(|| BenchError::Setup("no such member in the cluster".into()))?;
            Client::new(vec![member.api_addr.clone()], token.clone())?
        }
    };
    if view.build == Some(BuildProfile::Debug) {
        progress(
            "warning: the control plane measured is a debug build; its figures say little about \
             a release build (deploy/bench/cluster.sh up runs release binaries)"
                .into(),
        );
    }
    let mut report = BenchReport {
        urls: target.urls(),
        via: Some(plan.via),
        leader: view.leader,
        server_build: view.build,
        client_scheduler: std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|stat| Scheduler::of_stat(&stat)),
        warmup: plan.warmup,
        ..Default::default()
    };

    let (spec, temporary) = match &plan.pool {
        Some(name) => (client.get_pool(name).await?.pool.spec, false),
        None => {
            let spec = temporary_spec(plan)?;
            progress(format!(
                "creating temporary pool {} ({} warm{} containers of {})",
                spec.name,
                spec.min_warm,
                if spec.min_paused > 0 {
                    format!(" and {} paused", spec.min_paused)
                } else {
                    String::new()
                },
                spec.image
            ));
            client.create_pool(&spec).await?;
            (spec, true)
        }
    };
    report.pool = spec.name.to_string();
    report.image = spec.image.clone();
    report.temporary_pool = temporary;

    let result = if plan.burst.is_some() {
        crate::tiers::measure_burst(client, &target, token, plan, &spec, &mut report, progress)
            .await
    } else if plan.tiers {
        crate::tiers::measure_tiers(client, &target, plan, &spec, &mut report, progress).await
    } else {
        measure(client, &target, plan, &spec, &mut report, progress).await
    };
    if temporary && !plan.keep_pool {
        progress(format!("deleting temporary pool {}", spec.name));
        if let Err(e) = client.delete_pool(&spec.name).await {
            progress(format!("warning: could not delete pool {}: {e}", spec.name));
        }
    }
    result.map(|()| report)
}

/// The temporary pool: enough warm containers for every allocation the run makes, an HTTP
/// health check at the default pace (the agent probes every warm container, and the run should
/// not measure probe load), quick batches so it fills soon, and small reservations (0.05 CPU,
/// 32 MiB: the demo workload uses far less) so a hundred or more fit on one small host.
pub fn temporary_spec(plan: &BenchPlan) -> Result<PoolSpec, BenchError> {
    let suffix = &uuid::Uuid::now_v7().simple().to_string()[24..];
    let name =
        PoolName::new(format!("bench-{suffix}")).map_err(|e| BenchError::Setup(e.to_string()))?;
    let mut spec = PoolSpec::new(name, plan.image.clone());
    let wanted = plan
        .warm
        .unwrap_or((plan.cycles + plan.warmup + plan.replenish) as u32)
        .max(1);
    spec.min_warm = wanted;
    spec.max_total = (wanted + wanted / 2 + 8).min(100_000);
    spec.health.probe = HealthProbe::Http {
        path: "/healthz".into(),
    };
    spec.resources.cpu_millis = 50;
    spec.resources.memory_mb = 32;
    spec.scaling.batch_size = 16;
    spec.scaling.pacing_ms = 50;
    if plan.tiers || plan.burst.is_some() {
        crate::tiers::tiered_spec(&mut spec, plan)?;
    }
    spec.validate()
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    Ok(spec)
}

async fn measure(
    client: &Client,
    target: &Client,
    plan: &BenchPlan,
    spec: &PoolSpec,
    report: &mut BenchReport,
    progress: &mut dyn FnMut(String),
) -> Result<(), BenchError> {
    let name = &spec.name;
    let want_warm = if report.temporary_pool {
        spec.min_warm
    } else {
        plan.concurrency as u32
    };
    progress(format!("waiting for {want_warm} warm containers in {name}"));
    let mut last = Instant::now();
    report.warm_at_start = wait_warm(
        client,
        name,
        |warm, _| {
            if last.elapsed() >= Duration::from_secs(5) {
                last = Instant::now();
                eprintln!("bench:   {warm} of {want_warm} warm");
            }
            warm >= want_warm
        },
        plan.fill_timeout,
    )
    .await?
    .0;

    if plan.warmup > 0 {
        progress(format!("{} warm-up cycles", plan.warmup));
        cycles(target, name, plan.warmup, plan.concurrency, plan.wait_ms).await;
    }
    progress(format!(
        "{} allocate+release cycles, {} at a time, via {}",
        plan.cycles,
        plan.concurrency,
        target.urls().join(",")
    ));
    report.warm = cycles(target, name, plan.cycles, plan.concurrency, plan.wait_ms).await;

    if plan.cold_runs > 0 {
        // Fair to the baseline: the agent is done destroying and replacing the measured
        // cycles' containers before dockerd is timed.
        progress(format!(
            "waiting for {name} to settle before the cold starts"
        ));
        wait_settled(client, name, plan.fill_timeout).await?;
        progress(format!(
            "{} cold starts through Docker at {}",
            plan.cold_runs, plan.docker_host
        ));
        let cold = crate::cold::measure(
            &plan.docker_host,
            plan.cold_prefix.as_deref(),
            spec,
            plan.cold_runs,
        )
        .await?;
        if cold.runs > 0 && report.warm.cycles > 0 {
            report.ratio = Some(Ratio {
                median: cold.healthy_ms.p50 / report.warm.alloc_ms.p50,
                p99: cold.healthy_ms.p99 / report.warm.alloc_ms.p99,
            });
        }
        report.cold = Some(cold);
    }

    if plan.replenish > 0 {
        progress(format!(
            "waiting for {name} to settle at its wanted warm count"
        ));
        wait_settled(client, name, plan.fill_timeout).await?;
        progress(format!("replenish: {} allocations at once", plan.replenish));
        report.replenish = Some(replenish(client, target, name, plan).await?);
    }
    Ok(())
}

/// Polls `/v1/status` until `done(warm, wanted)` holds for the pool; answers warm and wanted.
/// The pool's line of `/v1/status`. Status is read from any member, and one that has not yet
/// applied the pool's creation does not know it for a moment: only a pool missing for
/// [`MISSING`] is gone.
pub(crate) async fn pool_status(
    client: &Client,
    pool: &PoolName,
) -> Result<warmpool_proto::api::PoolStatus, BenchError> {
    let since = Instant::now();
    loop {
        let status = client.status().await?;
        if let Some(p) = status.pools.into_iter().find(|p| &p.name == pool) {
            return Ok(p);
        }
        if since.elapsed() > MISSING {
            return Err(BenchError::Setup(format!("pool {pool} is gone")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How long a pool may be missing from status before it counts as gone.
const MISSING: Duration = Duration::from_secs(5);

/// How long a pool may show no progress towards its warm count before the run gives up.
const STALL: Duration = Duration::from_secs(20);

async fn wait_warm(
    client: &Client,
    pool: &PoolName,
    mut done: impl FnMut(u32, u32) -> bool,
    timeout: Duration,
) -> Result<(u32, u32), BenchError> {
    let deadline = Instant::now() + timeout;
    let mut progress = (0, Instant::now());
    loop {
        let p = pool_status(client, pool).await?;
        if done(p.counts.warm, p.wanted) {
            return Ok((p.counts.warm, p.wanted));
        }
        if p.counts.warm != progress.0 || p.counts.creating > 0 {
            progress = (p.counts.warm, Instant::now());
        } else if progress.1.elapsed() > STALL {
            return Err(BenchError::Setup(format!(
                "pool {pool} stopped growing at {} warm containers (wanted {}) with none being made: {}",
                p.counts.warm,
                p.wanted,
                p.condition.as_deref().unwrap_or(
                    "the nodes may be full (poolctl nodes shows their capacity); ask for fewer with --warm"
                )
            )));
        }
        if Instant::now() > deadline {
            return Err(BenchError::Setup(format!(
                "pool {pool} has {} warm containers (wanted {}) after {timeout:?}",
                p.counts.warm, p.wanted
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `/v1/status` until the pool is at its wanted warm count with nothing being created
/// or destroyed.
async fn wait_settled(
    client: &Client,
    pool: &PoolName,
    timeout: Duration,
) -> Result<(), BenchError> {
    let deadline = Instant::now() + timeout;
    loop {
        let p = pool_status(client, pool).await?;
        let c = &p.counts;
        if c.warm >= p.wanted && c.creating == 0 && c.releasing == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(BenchError::Setup(format!(
                "pool {pool} did not settle within {timeout:?}: {} warm (wanted {}), {} creating, {} releasing",
                c.warm, p.wanted, c.creating, c.releasing
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) fn alloc_request(pool: &PoolName, wait_ms: u64) -> CreateAllocation {
    CreateAllocation {
        pool: pool.clone(),
        session_id: None,
        lease_seconds: None,
        wait_ms: Some(wait_ms),
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
    }
}

/// `n` allocate+release cycles, `concurrency` at a time, on one task each.
pub async fn cycles(
    client: &Client,
    pool: &PoolName,
    n: usize,
    concurrency: usize,
    wait_ms: u64,
) -> WarmPhase {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers = (0..concurrency.max(1)).map(|_| {
        let (client, pool, next) = (client.clone(), pool.clone(), next.clone());
        async move {
            let mut samples = Vec::new();
            let mut errors = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let t0 = Instant::now();
                let a = match client.allocate(&alloc_request(&pool, wait_ms)).await {
                    Ok(a) => a,
                    Err(e) => {
                        errors.push(format!("allocate: {e}"));
                        continue;
                    }
                };
                let t1 = Instant::now();
                if let Err(e) = client.release(a.id).await {
                    errors.push(format!("release: {e}"));
                    continue;
                }
                let t2 = Instant::now();
                samples.push((t1 - t0, t2 - t1, t2 - t0));
            }
            (samples, errors)
        }
    });
    let results = futures::future::join_all(workers).await;
    let wall = started.elapsed();
    let mut samples = Vec::new();
    let mut errors = Vec::new();
    for (s, e) in results {
        samples.extend(s);
        errors.extend(e);
    }
    let pick = |f: fn(&(Duration, Duration, Duration)) -> Duration| {
        Percentiles::of(&samples.iter().map(f).collect::<Vec<_>>())
    };
    WarmPhase {
        cycles: samples.len(),
        concurrency: concurrency.max(1),
        errors: errors.len(),
        first_error: errors.into_iter().next(),
        wall_secs: wall.as_secs_f64(),
        cycles_per_sec: samples.len() as f64 / wall.as_secs_f64().max(1e-9),
        alloc_ms: pick(|s| s.0),
        release_ms: pick(|s| s.1),
        cycle_ms: pick(|s| s.2),
    }
}

async fn replenish(
    client: &Client,
    target: &Client,
    pool: &PoolName,
    plan: &BenchPlan,
) -> Result<Replenish, BenchError> {
    let started = Instant::now();
    let req = alloc_request(pool, plan.wait_ms);
    let burst = (0..plan.replenish).map(|_| target.allocate(&req));
    let got: Vec<Result<Allocation, ClientError>> = futures::future::join_all(burst).await;
    let burst_ms = started.elapsed().as_secs_f64() * 1e3;
    let held: Vec<Allocation> = got.into_iter().filter_map(Result::ok).collect();
    let after = wait_warm(client, pool, |_, _| true, plan.fill_timeout).await?;
    let back = wait_warm(
        client,
        pool,
        |warm, wanted| warm >= wanted,
        plan.fill_timeout,
    )
    .await;
    let secs = started.elapsed().as_secs_f64();
    for a in &held {
        let _ = client.release(a.id).await;
    }
    let (completed, wanted) = match back {
        Ok((_, wanted)) => (true, wanted),
        Err(_) => (false, after.1),
    };
    Ok(Replenish {
        burst: plan.replenish,
        allocated: held.len(),
        burst_ms,
        warm_after_burst: after.0,
        wanted,
        secs,
        completed,
    })
}

/// The first lines of every report: what was measured, where, on which build.
pub(crate) fn summary_rows(r: &BenchReport) -> Vec<(&'static str, String)> {
    vec![
        (
            "pool",
            format!(
                "{}{}",
                r.pool,
                if r.temporary_pool { " (temporary)" } else { "" }
            ),
        ),
        ("image", r.image.clone()),
        ("via", r.urls.join(", ")),
        ("leader", r.leader.map_or("none".into(), |l| l.to_string())),
        (
            "build",
            match r.server_build {
                Some(BuildProfile::Debug) => {
                    "debug (figures say little about a release build)".into()
                }
                Some(b) => b.as_str().to_string(),
                None => "unknown".into(),
            },
        ),
        (
            "client",
            match r.client_scheduler {
                Some(s) if s.policy.is_real_time() => format!("{s}"),
                Some(s) => format!(
                    "{s} (on a busy host, poolctl's own waits for the CPU are in the figures; \
                     chrt -r 10 poolctl ... runs it first)"
                ),
                None => "scheduler unknown".into(),
            },
        ),
    ]
}

/// A Linux scheduling policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchedPolicy {
    /// `SCHED_OTHER`: the normal, fair scheduler.
    Normal,
    /// `SCHED_FIFO`: real-time, first in first out.
    Fifo,
    /// `SCHED_RR`: real-time, round robin.
    RoundRobin,
    /// `SCHED_BATCH`.
    Batch,
    /// `SCHED_IDLE`.
    Idle,
    /// `SCHED_DEADLINE`.
    Deadline,
}

impl SchedPolicy {
    /// Whether a thread under it runs before every normal one.
    pub fn is_real_time(self) -> bool {
        matches!(
            self,
            SchedPolicy::Fifo | SchedPolicy::RoundRobin | SchedPolicy::Deadline
        )
    }
}

/// How the kernel schedules a process: its policy and real-time priority (0 for the others).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scheduler {
    /// The policy.
    pub policy: SchedPolicy,
    /// The real-time priority, 1-99 (0 for the normal policies).
    pub priority: u32,
}

impl Scheduler {
    /// Reads the policy and priority from the text of `/proc/<pid>/stat` (fields 40 and 41,
    /// counted after the command name, which may itself hold spaces and parentheses).
    /// `None` when the text is not such a line.
    pub fn of_stat(stat: &str) -> Option<Scheduler> {
        let rest = &stat[stat.rfind(')')? + 1..];
        // `rest` starts at field 3 (the state): field n is rest's (n - 3)th.
        let mut fields = rest.split_whitespace().skip(40 - 3);
        let priority = fields.next()?.parse().ok()?;
        let policy = match fields.next()?.parse::<u32>().ok()? {
            0 => SchedPolicy::Normal,
            1 => SchedPolicy::Fifo,
            2 => SchedPolicy::RoundRobin,
            3 => SchedPolicy::Batch,
            5 => SchedPolicy::Idle,
            6 => SchedPolicy::Deadline,
            _ => return None,
        };
        Some(Scheduler { policy, priority })
    }
}

impl std::fmt::Display for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.policy {
            SchedPolicy::Normal => f.write_str("normal scheduler"),
            SchedPolicy::Batch => f.write_str("batch scheduler"),
            SchedPolicy::Idle => f.write_str("idle scheduler"),
            SchedPolicy::Deadline => f.write_str("real-time (SCHED_DEADLINE)"),
            SchedPolicy::Fifo => write!(f, "real-time (SCHED_FIFO {})", self.priority),
            SchedPolicy::RoundRobin => write!(f, "real-time (SCHED_RR {})", self.priority),
        }
    }
}

/// The report for people: a summary block and a latency table.
pub fn render(r: &BenchReport) -> String {
    if let Some(t) = &r.tiers {
        return crate::tiers::render_tiers(r, t);
    }
    if let Some(b) = &r.burst {
        return crate::tiers::render_burst(r, b);
    }
    let mut rows = summary_rows(r);
    rows.extend([
        ("warm at start", r.warm_at_start.to_string()),
        (
            "cycles",
            format!(
                "{} at concurrency {} ({} warm-up cycles before), {} errors",
                r.warm.cycles, r.warm.concurrency, r.warmup, r.warm.errors
            ),
        ),
        (
            "throughput",
            format!(
                "{:.0} cycles/s over {:.2}s",
                r.warm.cycles_per_sec, r.warm.wall_secs
            ),
        ),
    ]);
    if let Some(e) = &r.warm.first_error {
        rows.push(("first error", e.clone()));
    }
    let mut out = kv_block(&rows);
    out.push('\n');
    let mut t = Table::new(&[
        ("ms", Align::Left),
        ("p50", Align::Right),
        ("p90", Align::Right),
        ("p99", Align::Right),
        ("max", Align::Right),
    ]);
    let row = |name: &str, p: &Percentiles| {
        vec![
            name.to_string(),
            format!("{:.2}", p.p50),
            format!("{:.2}", p.p90),
            format!("{:.2}", p.p99),
            format!("{:.2}", p.max),
        ]
    };
    t.row(row("warm allocation", &r.warm.alloc_ms));
    t.row(row("release", &r.warm.release_ms));
    t.row(row("allocate+release", &r.warm.cycle_ms));
    if let Some(c) = &r.cold {
        t.row(row("cold: create", &c.create_ms));
        t.row(row("cold: create+start", &c.started_ms));
        t.row(row("cold: to first healthy answer", &c.healthy_ms));
    }
    out.push_str(&t.render());
    if let Some(c) = &r.cold {
        out.push('\n');
        let mut rows = vec![(
            "cold starts",
            format!(
                "{} on {} ({}), dockerd {}, {} failed",
                c.runs, c.network, c.prefix, c.docker_version, c.failures
            ),
        )];
        if let Some(f) = &c.first_failure {
            rows.push(("first failure", f.clone()));
        }
        if let Some(ratio) = &r.ratio {
            rows.push((
                "cold / warm",
                format!(
                    "{:.0}x at the median, {:.0}x at p99",
                    ratio.median, ratio.p99
                ),
            ));
        }
        out.push_str(&kv_block(&rows));
    }
    if let Some(p) = &r.replenish {
        out.push('\n');
        out.push_str(&kv_block(&[(
            "replenish",
            format!(
                "{} allocations ({} served) in {:.1} ms left {} warm; back at {} warm after {:.2}s{}",
                p.burst,
                p.allocated,
                p.burst_ms,
                p.warm_after_burst,
                p.wanted,
                p.secs,
                if p.completed { "" } else { " (NOT back: timed out)" }
            ),
        )]));
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|m| Duration::from_millis(*m)).collect()
    }

    #[test]
    fn the_scheduler_is_read_from_a_stat_line() {
        // Field 40 is the real-time priority, 41 the policy; a command name may hold spaces
        // and parentheses.
        let line = |name: &str, prio: u32, policy: u32| {
            let mut fields: Vec<String> = (3..=52).map(|n| n.to_string()).collect();
            fields[40 - 3] = prio.to_string();
            fields[41 - 3] = policy.to_string();
            format!("4242 ({name}) {}", fields.join(" "))
        };
        let rr = Scheduler::of_stat(&line("poolctl", 10, 2)).unwrap();
        assert_eq!(
            rr,
            Scheduler {
                policy: SchedPolicy::RoundRobin,
                priority: 10
            }
        );
        assert!(rr.policy.is_real_time());
        assert_eq!(rr.to_string(), "real-time (SCHED_RR 10)");
        let normal = Scheduler::of_stat(&line("a) b (c", 0, 0)).unwrap();
        assert_eq!(normal.policy, SchedPolicy::Normal);
        assert!(!normal.policy.is_real_time());
        assert_eq!(
            Scheduler::of_stat(&line("x", 0, 1)).map(|s| s.policy),
            Some(SchedPolicy::Fifo)
        );
        // Not such a line: too short, no name, an unknown policy, a word for a number.
        assert_eq!(Scheduler::of_stat("4242 (poolctl) R 1 2 3"), None);
        assert_eq!(Scheduler::of_stat("no name here"), None);
        assert_eq!(Scheduler::of_stat(&line("x", 0, 4)), None);
        assert_eq!(
            Scheduler::of_stat(&line("x", 0, 0).replace(" 0 0 ", " zero 0 ")),
            None
        );
    }

    #[test]
    fn this_process_has_a_scheduler() {
        // What the kernel says of this test process: read, not set by anything here.
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(Scheduler::of_stat(&stat).is_some(), "{stat}");
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let p = Percentiles::of(&ms(&(1..=100).rev().collect::<Vec<_>>()));
        assert_eq!((p.p50, p.p90, p.p99, p.max), (50.0, 90.0, 99.0, 100.0));
        let one = Percentiles::of(&ms(&[7]));
        assert_eq!((one.p50, one.p99, one.max), (7.0, 7.0, 7.0));
        assert_eq!(Percentiles::of(&[]), Percentiles::default());
        let ten = Percentiles::of(&ms(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]));
        assert_eq!((ten.p50, ten.p90, ten.p99), (5.0, 9.0, 10.0));
    }

    pub(crate) fn plan() -> BenchPlan {
        BenchPlan {
            pool: None,
            image: "img:1".into(),
            cycles: 100,
            concurrency: 4,
            warmup: 10,
            warm: None,
            wait_ms: 5000,
            via: Via::Given,
            cold_runs: 0,
            docker_host: "unix:///var/run/docker.sock".into(),
            cold_prefix: None,
            replenish: 20,
            fill_timeout: Duration::from_secs(60),
            keep_pool: false,
            tiers: false,
            burst: None,
            paused: None,
        }
    }

    #[test]
    fn a_temporary_pool_holds_every_allocation_of_the_run() {
        let spec = temporary_spec(&plan()).unwrap();
        assert!(spec.name.as_str().starts_with("bench-"));
        assert_eq!(spec.min_warm, 130, "cycles + warm-up + replenish burst");
        assert!(spec.max_total >= spec.min_warm);
        assert_eq!(spec.image, "img:1");
        let small = temporary_spec(&BenchPlan {
            warm: Some(5),
            ..plan()
        })
        .unwrap();
        assert_eq!(small.min_warm, 5);
    }

    #[test]
    fn the_table_shows_the_figures_and_the_ratio() {
        let r = BenchReport {
            urls: vec!["http://127.0.0.1:7070".into()],
            via: Some(Via::Leader),
            leader: Some(1),
            server_build: Some(BuildProfile::Release),
            pool: "bench-x".into(),
            temporary_pool: true,
            image: "img".into(),
            warm_at_start: 10,
            warmup: 2,
            warm: WarmPhase {
                cycles: 10,
                concurrency: 1,
                alloc_ms: Percentiles {
                    p50: 1.5,
                    p90: 2.0,
                    p99: 3.0,
                    max: 3.5,
                },
                cycles_per_sec: 250.0,
                wall_secs: 0.04,
                ..Default::default()
            },
            cold: Some(ColdPhase {
                runs: 5,
                healthy_ms: Percentiles {
                    p50: 450.0,
                    p90: 500.0,
                    p99: 600.0,
                    max: 600.0,
                },
                ..Default::default()
            }),
            ratio: Some(Ratio {
                median: 300.0,
                p99: 200.0,
            }),
            replenish: None,
            ..Default::default()
        };
        let text = render(&r);
        assert!(text.contains("warm allocation"), "{text}");
        assert!(text.contains("1.50"), "{text}");
        assert!(text.contains("300x at the median, 200x at p99"), "{text}");
        assert!(text.contains("250 cycles/s"), "{text}");
    }
}
