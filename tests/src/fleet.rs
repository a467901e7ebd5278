//! The fleet simulator: a real control plane (3 member processes, Raft over a real
//! nats-server) against many simulated agents in this process, each speaking the real agent
//! protocol ([`SimAgent`]: heartbeats with an inventory digest, command replies, facts) and
//! running its containers in memory.
//!
//! It is a load harness, not part of the product path. [`run`] fills the fleet through the
//! real path (keep-warm plans containers, commands go to agents, facts and inventories come
//! back, reconciliation observes them warm), then measures what the control plane costs with
//! that state: memory and CPU of each member, allocation latency, snapshot size, and the time
//! a new member takes to catch up by snapshot. `fleet-sim` (`src/bin/fleet-sim.rs`) is the
//! command line; `tests/fleet.rs` runs a small fleet in `cargo test` so none of this rots.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use poolctl::Client;
use serde::Serialize;
use warmpool_proto::api::StatusView;
use warmpool_proto::records::NodeStatus;
use warmpool_proto::{PoolName, PoolSpec};

pub use poolctl::bench::{Percentiles, WarmPhase};

use crate::sim_agent::SimAgent;
use crate::{Member, Nats, DEMO_IMAGE};

/// What to simulate and measure.
#[derive(Clone, Debug)]
pub struct FleetConfig {
    /// Simulated agents (nodes).
    pub agents: usize,
    /// Containers each node ends up running.
    pub containers_per_agent: usize,
    /// Pools the containers are split over.
    pub pools: usize,
    /// Agents' heartbeat interval.
    pub heartbeat: Duration,
    /// Agents per NATS connection (1: each agent has its own, like real agents).
    pub agents_per_connection: usize,
    /// Containers asked for at once per pool while filling.
    pub batch_size: u32,
    /// Pause between a pool's batches while filling, ms.
    pub pacing_ms: u64,
    /// Longest wait for the fleet to fill.
    pub fill_timeout: Duration,
    /// Quiet time after filling before measuring.
    pub settle: Duration,
    /// How long CPU is measured with only heartbeats going on.
    pub idle_window: Duration,
    /// Sequential allocate+release cycles.
    pub sequential_cycles: usize,
    /// Concurrent allocate+release cycles, and their concurrency.
    pub concurrent_cycles: usize,
    /// Concurrency of the concurrent cycles.
    pub concurrency: usize,
    /// Start a fourth member after the measurements and time its catch-up.
    pub join: bool,
    /// Members' `--snapshot-every`.
    pub snapshot_every: u64,
    /// Members' `--node-timeout-secs`.
    pub node_timeout_secs: f64,
    /// Members' `RUST_LOG`.
    pub log_filter: String,
    /// Allocate+release cycles of the memory soak (0: none), run after the other phases.
    pub soak_cycles: usize,
    /// Cycles run before the soak measures (to fill the retention caps).
    pub soak_warmup_cycles: usize,
    /// Where logs and Raft data go (a temporary directory when None, removed at the end).
    pub dir: Option<PathBuf>,
    /// Once filled, write the members' URLs (comma-separated) to this file and keep the
    /// fleet up, unmeasured, until SIGINT or SIGTERM: for `poolctl bench` from outside.
    pub hold: Option<PathBuf>,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            agents: 1000,
            containers_per_agent: 100,
            pools: 10,
            heartbeat: Duration::from_secs(1),
            agents_per_connection: 1,
            batch_size: 500,
            pacing_ms: 20,
            fill_timeout: Duration::from_secs(1800),
            settle: Duration::from_secs(10),
            idle_window: Duration::from_secs(20),
            sequential_cycles: 500,
            concurrent_cycles: 2000,
            concurrency: 8,
            join: true,
            snapshot_every: 5000,
            node_timeout_secs: 5.0,
            log_filter: "warn".into(),
            soak_cycles: 0,
            soak_warmup_cycles: 0,
            dir: None,
            hold: None,
        }
    }
}

/// Resident memory and CPU time of one process.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct ProcSample {
    /// Resident set size now, MiB.
    pub rss_mib: f64,
    /// Peak resident set size so far, MiB.
    pub peak_rss_mib: f64,
    /// User + system CPU seconds so far.
    pub cpu_secs: f64,
    /// Bytes it caused to be written to storage so far (`write_bytes` of `/proc/<pid>/io`).
    pub write_bytes: u64,
}

impl ProcSample {
    /// Reads `/proc/<pid>/status` and `/proc/<pid>/stat`; None once the process is gone.
    pub fn of(pid: u32) -> Option<ProcSample> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kib = |key: &str| {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which may hold spaces) start after the last ')'.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the whole line, 12 and 13 of `rest`.
        let ticks: f64 =
            fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        Some(ProcSample {
            rss_mib: kib("VmRSS:") / 1024.0,
            peak_rss_mib: kib("VmHWM:") / 1024.0,
            cpu_secs: ticks / clock_ticks(),
            write_bytes: std::fs::read_to_string(format!("/proc/{pid}/io"))
                .ok()
                .and_then(|io| {
                    io.lines()
                        .find_map(|l| l.strip_prefix("write_bytes:"))
                        .and_then(|v| v.trim().parse().ok())
                })
                .unwrap_or(0),
        })
    }
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`; 100 on every Linux we run on).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// A byte count over a window as a rate per hour.
fn per_hour(bytes: u64, window: Duration) -> f64 {
    bytes as f64 / window.as_secs_f64() * 3600.0
}

/// CPU use of a process over a window, in percent of one core.
fn cpu_percent(before: &ProcSample, after: &ProcSample, window: Duration) -> f64 {
    (after.cpu_secs - before.cpu_secs) / window.as_secs_f64() * 100.0
}

/// One member's figures.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MemberReport {
    /// Raft id.
    pub id: u64,
    /// Whether it led during the measurements.
    pub leader: bool,
    /// Resident memory after filling and measuring, MiB.
    pub rss_mib: f64,
    /// Peak resident memory, MiB.
    pub peak_rss_mib: f64,
    /// CPU while only heartbeats arrive, % of one core.
    pub idle_cpu_percent: f64,
    /// CPU during the concurrent allocation phase, % of one core.
    pub alloc_cpu_percent: f64,
    /// Size of its latest snapshot, bytes (from `warmpool_raft_snapshot_bytes`; 0: none built).
    pub snapshot_bytes: u64,
    /// Bytes written to disk per hour while only heartbeats arrive (the idle window's rate).
    pub idle_write_bytes_per_hour: f64,
    /// Bytes written to disk per hour during the concurrent allocation phase.
    pub alloc_write_bytes_per_hour: f64,
}

/// The leader's memory over a long run of allocate+release cycles (each release destroys a
/// container and keep-warm has the simulated agents make another).
#[derive(Clone, Debug, Default, Serialize)]
pub struct SoakReport {
    /// Cycles run before measuring, to fill the retention caps (released allocations, ended
    /// containers, events): until they are full, memory grows by design.
    pub warmup_cycles: usize,
    /// Leader RSS after the warm-up, MiB: the base of [`SoakReport::drift_percent`].
    pub rss_after_warmup_mib: f64,
    /// Cycles measured.
    pub cycles: usize,
    /// `(cycles done, leader RSS MiB)` after each tenth of the run.
    pub rss_mib: Vec<(usize, f64)>,
    /// The leader's heap as its allocator counts it (`warmpool_heap_allocated_bytes`), MiB,
    /// after the warm-up and then with each RSS sample: what the program holds, apart from
    /// what the allocator keeps.
    pub heap_after_warmup_mib: f64,
    pub heap_mib: Vec<(usize, f64)>,
    /// Cycles per second over the run.
    pub cycles_per_sec: f64,
    /// Errors (retried by the loop) over the run.
    pub errors: usize,
}

impl SoakReport {
    /// The largest change of resident memory from the end of the warm-up, in percent: a
    /// sample taken while a snapshot is built shows its transient buffers.
    pub fn drift_percent(&self) -> f64 {
        let base = self.rss_after_warmup_mib;
        if base <= 0.0 {
            return 0.0;
        }
        self.rss_mib
            .iter()
            .map(|(_, r)| (r - base).abs() / base * 100.0)
            .fold(0.0, f64::max)
    }

    /// The change of resident memory from the end of the warm-up to the end of the run, in
    /// percent: growth that stays.
    pub fn end_drift_percent(&self) -> f64 {
        let base = self.rss_after_warmup_mib;
        match self.rss_mib.last() {
            Some((_, end)) if base > 0.0 => (end - base) / base * 100.0,
            _ => 0.0,
        }
    }
}

/// Everything [`run`] measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FleetReport {
    /// Agents simulated.
    pub agents: usize,
    /// Containers per agent asked for.
    pub containers_per_agent: usize,
    /// Pools.
    pub pools: usize,
    /// Containers warm when filling ended.
    pub containers_warm: u32,
    /// Whether the fleet filled completely before the timeout.
    pub filled: bool,
    /// Time to fill, s.
    pub fill_secs: f64,
    /// Raft log index after filling.
    pub applied_index_after_fill: u64,
    /// Nodes `ready` at the end (a node declared down shows here).
    pub nodes_ready_at_end: usize,
    /// Per member.
    pub members: Vec<MemberReport>,
    /// The simulator process itself (agents and clients): CPU while idle, % of one core.
    pub simulator_idle_cpu_percent: f64,
    /// nats-server: CPU while idle, % of one core.
    pub nats_idle_cpu_percent: f64,
    /// Sequential allocations.
    pub sequential: WarmPhase,
    /// Concurrent allocations.
    pub concurrent: WarmPhase,
    /// Time a fourth member took from start to caught up and voting, s.
    pub join_secs: Option<f64>,
    /// Whether it caught up by snapshot (its snapshot index was set).
    pub join_by_snapshot: Option<bool>,
    /// Its resident memory once caught up, MiB.
    pub join_rss_mib: Option<f64>,
    /// `GET /v1/status` latency with the fleet up (median of 5), ms.
    pub status_ms: f64,
    /// The memory soak, when asked for.
    pub soak: Option<SoakReport>,
    /// What failed after the measurements that were made (they are kept).
    pub error: Option<String>,
}

/// The pools of the fleet: `pools` pools whose `min_warm` add up to the fleet's containers.
pub fn fleet_pools(cfg: &FleetConfig) -> Vec<PoolSpec> {
    let total = cfg.agents * cfg.containers_per_agent;
    let n = cfg.pools.max(1);
    (0..n)
        .map(|i| {
            let mut spec = PoolSpec::new(
                PoolName::new(format!("fleet{i}")).expect("pool name"),
                DEMO_IMAGE,
            );
            let share = total / n + usize::from(i < total % n);
            spec.min_warm = share as u32;
            spec.max_total = (share + share / 10 + 100).min(100_000) as u32;
            spec.scaling.batch_size = cfg.batch_size;
            spec.scaling.pacing_ms = cfg.pacing_ms;
            spec
        })
        .collect()
}

/// A running fleet: NATS, members, agents, and a client on every member.
pub struct Fleet {
    /// The NATS server.
    pub nats: Nats,
    /// Control-plane members.
    pub members: Vec<Member>,
    /// The simulated agents.
    pub agents: Vec<SimAgent>,
    /// A client of every member.
    pub client: Client,
    _tmp: Option<tempfile::TempDir>,
    dir: PathBuf,
}

impl Fleet {
    /// Starts NATS and `cfg`'s 3 members and waits until they are voters.
    pub async fn start(cfg: &FleetConfig) -> anyhow::Result<Fleet> {
        let (tmp, dir) = match &cfg.dir {
            Some(d) => {
                std::fs::create_dir_all(d)?;
                (None, d.clone())
            }
            None => {
                let t = tempfile::tempdir()?;
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        let nats = Nats::start(&dir);
        let args = member_args(cfg);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut members = Vec::new();
        for id in 1..=3 {
            let m = if id == 1 {
                Member::new(1, &nats.url(), &dir, true)
            } else {
                Member::joining(id, &nats.url(), &dir)
            };
            let mut m = m.with_args(&args).with_log_filter(&cfg.log_filter);
            m.start();
            members.push(m);
        }
        let client = Client::new(members.iter().map(Member::url).collect(), None)?;
        let fleet = Fleet {
            nats,
            members,
            agents: Vec::new(),
            client,
            _tmp: tmp,
            dir,
        };
        fleet
            .wait(Duration::from_secs(60), "three voters", |c| async move {
                let v = c.cluster().await.ok()?;
                (v.leader.is_some() && v.members.iter().filter(|m| m.role == "voter").count() == 3)
                    .then_some(())
            })
            .await?;
        Ok(fleet)
    }

    /// Where logs and data are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Polls `f` with the fleet's client every 250 ms until it yields `Some`.
    pub async fn wait<T, F, Fut>(&self, timeout: Duration, what: &str, f: F) -> anyhow::Result<T>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f(self.client.clone()).await {
                return Ok(v);
            }
            if Instant::now() > deadline {
                bail!("timed out after {timeout:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Starts `cfg.agents` simulated agents, `sim-0000`, `sim-0001`, ..., each on its own
    /// /64, and waits until every one has joined as a ready node.
    pub async fn start_agents(&mut self, cfg: &FleetConfig) -> anyhow::Result<()> {
        let per = cfg.agents_per_connection.max(1);
        let mut conn: Option<async_nats::Client> = None;
        for i in 0..cfg.agents {
            if i % per == 0 || conn.is_none() {
                conn = Some(
                    async_nats::ConnectOptions::new()
                        .connect(self.nats.url())
                        .await
                        .context("connecting an agent to NATS")?,
                );
            }
            let client = conn.clone().expect("connected");
            let index = u16::try_from(i + 1).context("at most 65,534 agents")?;
            self.agents.push(
                SimAgent::start_on(client, &format!("sim-{i:05}"), index, cfg.heartbeat).await,
            );
        }
        let n = cfg.agents;
        self.wait(
            Duration::from_secs(120 + n as u64 / 10),
            "every node to join",
            |c| async move {
                let s = c.status().await.ok()?;
                (ready_nodes(&s) >= n).then_some(())
            },
        )
        .await
    }

    /// The index (into `members`) of the member that leads now.
    pub async fn leader_index(&self) -> anyhow::Result<usize> {
        let leader = self
            .wait(Duration::from_secs(20), "a leader", |c| async move {
                c.cluster().await.ok()?.leader
            })
            .await?;
        self.members
            .iter()
            .position(|m| m.id == leader)
            .context("the leader is one of our members")
    }
}

fn member_args(cfg: &FleetConfig) -> Vec<String> {
    vec![
        "--snapshot-every".into(),
        cfg.snapshot_every.to_string(),
        "--node-timeout-secs".into(),
        cfg.node_timeout_secs.to_string(),
    ]
}

fn ready_nodes(s: &StatusView) -> usize {
    s.nodes
        .iter()
        .filter(|n| n.status == NodeStatus::Ready)
        .count()
}

/// Runs allocate+release cycles on `pool` through `client` with `poolctl bench`'s own loop,
/// on a runtime of its own (so the agents' tasks do not sit in the measured path).
pub fn allocation_phase(
    client: &Client,
    pool: &PoolName,
    cycles: usize,
    concurrency: usize,
) -> WarmPhase {
    let (client, pool) = (client.clone(), pool.clone());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(poolctl::bench::cycles(
            &client,
            &pool,
            cycles,
            concurrency,
            5_000,
        ))
    })
    .join()
    .expect("allocation thread")
}

/// `warmpool_raft_snapshot_bytes` from a member's `/metrics` (0 when absent).
async fn snapshot_bytes(url: &str) -> u64 {
    gauge(url, "warmpool_raft_snapshot_bytes")
        .await
        .map_or(0, |v| v as u64)
}

/// One unlabelled gauge from a member's `/metrics`.
async fn gauge(url: &str, name: &str) -> Option<f64> {
    let Ok(resp) = crate::http_client()
        .get(format!("{url}/metrics"))
        .send()
        .await
    else {
        return None;
    };
    let text = resp.text().await.unwrap_or_default();
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
}

/// Fills the fleet and measures it; `progress` hears what is going on.
pub async fn run(cfg: &FleetConfig, progress: &dyn Fn(String)) -> anyhow::Result<FleetReport> {
    let mut report = FleetReport {
        agents: cfg.agents,
        containers_per_agent: cfg.containers_per_agent,
        pools: cfg.pools,
        ..Default::default()
    };
    progress(format!(
        "starting nats and 3 members (bins from {})",
        crate::bin_dir().display()
    ));
    let mut fleet = Fleet::start(cfg).await?;
    progress(format!(
        "starting {} simulated agents (logs: {})",
        cfg.agents,
        fleet.dir().display()
    ));
    let t = Instant::now();
    fleet.start_agents(cfg).await?;
    progress(format!(
        "{} nodes joined in {:.1}s",
        cfg.agents,
        t.elapsed().as_secs_f64()
    ));

    let pools = fleet_pools(cfg);
    let target: u32 = pools.iter().map(|p| p.min_warm).sum();
    for spec in &pools {
        fleet.client.create_pool(spec).await?;
    }
    progress(format!(
        "filling {target} containers over {} pools",
        pools.len()
    ));
    let fill_start = Instant::now();
    let mut last_print = Instant::now();
    let mut status = fleet.client.status().await?;
    while status.totals.warm < target && fill_start.elapsed() < cfg.fill_timeout {
        tokio::time::sleep(Duration::from_secs(1)).await;
        match fleet.client.status().await {
            Ok(s) => status = s,
            Err(e) => progress(format!("status: {e}")),
        }
        if last_print.elapsed() >= Duration::from_secs(10) {
            last_print = Instant::now();
            progress(format!(
                "  {:>6.0}s: warm {} creating {} (index {}, nodes ready {})",
                fill_start.elapsed().as_secs_f64(),
                status.totals.warm,
                status.totals.creating,
                status.applied_index,
                ready_nodes(&status)
            ));
        }
    }
    report.fill_secs = fill_start.elapsed().as_secs_f64();
    report.containers_warm = status.totals.warm;
    report.filled = status.totals.warm >= target;
    report.applied_index_after_fill = status.applied_index;
    progress(format!(
        "filled: {} warm of {target} in {:.1}s",
        status.totals.warm, report.fill_secs
    ));

    if let Some(path) = &cfg.hold {
        let urls: Vec<String> = fleet.members.iter().map(Member::url).collect();
        std::fs::write(path, urls.join(","))?;
        progress(format!(
            "holding the fleet (URLs in {}) until SIGINT or SIGTERM",
            path.display()
        ));
        wait_for_signal().await;
        let _ = std::fs::remove_file(path);
        return Ok(report);
    }

    tokio::time::sleep(cfg.settle).await;
    let leader = fleet.leader_index().await?;
    let pids: Vec<Option<u32>> = fleet.members.iter().map(Member::pid).collect();
    let me = std::process::id();
    let sample = |pids: &[Option<u32>]| -> Vec<ProcSample> {
        pids.iter()
            .map(|p| p.and_then(ProcSample::of).unwrap_or_default())
            .collect()
    };
    progress(format!("measuring idle CPU for {:?}", cfg.idle_window));
    let before = sample(&pids);
    let (sim0, nats0) = (
        ProcSample::of(me),
        fleet.nats.pid().and_then(ProcSample::of),
    );
    tokio::time::sleep(cfg.idle_window).await;
    let after_idle = sample(&pids);
    let (sim1, nats1) = (
        ProcSample::of(me),
        fleet.nats.pid().and_then(ProcSample::of),
    );
    if let (Some(a), Some(b)) = (sim0, sim1) {
        report.simulator_idle_cpu_percent = cpu_percent(&a, &b, cfg.idle_window);
    }
    if let (Some(a), Some(b)) = (nats0, nats1) {
        report.nats_idle_cpu_percent = cpu_percent(&a, &b, cfg.idle_window);
    }

    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        fleet.client.status().await?;
        times.push(t.elapsed());
    }
    report.status_ms = Percentiles::of(&times).p50;

    let pool = pools[0].name.clone();
    progress(format!(
        "{} sequential allocate+release cycles",
        cfg.sequential_cycles
    ));
    report.sequential = allocation_phase(&fleet.client, &pool, cfg.sequential_cycles, 1);
    progress(format!(
        "{} allocate+release cycles, {} at a time",
        cfg.concurrent_cycles, cfg.concurrency
    ));
    let before_alloc = sample(&pids);
    let t = Instant::now();
    report.concurrent =
        allocation_phase(&fleet.client, &pool, cfg.concurrent_cycles, cfg.concurrency);
    let alloc_window = t.elapsed();
    let after_alloc = sample(&pids);

    for (i, m) in fleet.members.iter().enumerate() {
        report.members.push(MemberReport {
            id: m.id,
            leader: i == leader,
            rss_mib: after_alloc[i].rss_mib,
            peak_rss_mib: after_alloc[i].peak_rss_mib,
            idle_cpu_percent: cpu_percent(&before[i], &after_idle[i], cfg.idle_window),
            alloc_cpu_percent: cpu_percent(&before_alloc[i], &after_alloc[i], alloc_window),
            snapshot_bytes: snapshot_bytes(&m.url()).await,
            idle_write_bytes_per_hour: per_hour(
                after_idle[i].write_bytes - before[i].write_bytes,
                cfg.idle_window,
            ),
            alloc_write_bytes_per_hour: per_hour(
                after_alloc[i].write_bytes - before_alloc[i].write_bytes,
                alloc_window,
            ),
        });
    }

    if cfg.soak_cycles > 0 {
        let pid = pids[leader];
        let chunk = cfg.soak_cycles.div_ceil(10);
        let mut soak = SoakReport {
            warmup_cycles: cfg.soak_warmup_cycles,
            ..SoakReport::default()
        };
        if cfg.soak_warmup_cycles > 0 {
            progress(format!("soak: {} warm-up cycles", cfg.soak_warmup_cycles));
            let phase = allocation_phase(
                &fleet.client,
                &pool,
                cfg.soak_warmup_cycles,
                cfg.concurrency,
            );
            soak.errors += phase.errors;
        }
        let leader_url = fleet.members[leader].url();
        let heap = || async {
            gauge(&leader_url, "warmpool_heap_allocated_bytes")
                .await
                .map_or(0.0, |b| b / 1048576.0)
        };
        soak.rss_after_warmup_mib = pid.and_then(ProcSample::of).map_or(0.0, |s| s.rss_mib);
        soak.heap_after_warmup_mib = heap().await;
        let t = Instant::now();
        while soak.cycles < cfg.soak_cycles {
            let n = chunk.min(cfg.soak_cycles - soak.cycles);
            let phase = allocation_phase(&fleet.client, &pool, n, cfg.concurrency);
            soak.cycles += n;
            soak.errors += phase.errors;
            let rss = pid.and_then(ProcSample::of).map_or(0.0, |s| s.rss_mib);
            let all: Vec<String> = sample(&pids)
                .iter()
                .map(|s| format!("{:.1}", s.rss_mib))
                .collect();
            let heap = heap().await;
            progress(format!(
                "  soak: {} cycles, leader rss {rss:.1} MiB, heap {heap:.1} MiB (members' rss: {})",
                soak.cycles,
                all.join(", ")
            ));
            soak.rss_mib.push((soak.cycles, rss));
            soak.heap_mib.push((soak.cycles, heap));
        }
        soak.cycles_per_sec = soak.cycles as f64 / t.elapsed().as_secs_f64();
        report.soak = Some(soak);
    }

    if cfg.join {
        if let Err(e) = join_fourth(&mut fleet, cfg, &mut report, progress).await {
            progress(format!("joining a fourth member failed: {e:#}"));
            report.error = Some(format!("join: {e:#}"));
        }
    }
    match fleet.client.status().await {
        Ok(end) => report.nodes_ready_at_end = ready_nodes(&end),
        Err(e) => report.error = report.error.clone().or(Some(format!("final status: {e}"))),
    }
    Ok(report)
}

async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Starts a fourth member and times it until it has caught up and votes.
async fn join_fourth(
    fleet: &mut Fleet,
    cfg: &FleetConfig,
    report: &mut FleetReport,
    progress: &dyn Fn(String),
) -> anyhow::Result<()> {
    {
        progress("starting a fourth member".into());
        let args = member_args(cfg);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut joiner = Member::joining(4, &fleet.nats.url(), fleet.dir())
            .with_args(&args)
            // Its state machine says when it installs a snapshot: that is how it caught up.
            .with_log_filter(&format!(
                "{},warmpool_control_plane::raft::state_machine=info",
                cfg.log_filter
            ));
        let target_index = fleet.client.cluster().await?.applied_index.unwrap_or(0);
        let t = Instant::now();
        joiner.start();
        let c4 = Client::new(vec![joiner.url()], None)?;
        let view = fleet
            .wait(
                Duration::from_secs(600),
                "the fourth member to catch up",
                |_| {
                    let c4 = c4.clone();
                    async move {
                        let v = c4.cluster().await.ok()?;
                        (v.applied_index? >= target_index
                            && v.members.iter().any(|m| m.id == 4 && m.role == "voter"))
                        .then_some(v)
                    }
                },
            )
            .await?;
        report.join_secs = Some(t.elapsed().as_secs_f64());
        report.join_by_snapshot = Some(
            view.snapshot_index.is_some_and(|s| s > 0)
                && joiner.log_tail(100_000).contains("snapshot installed"),
        );
        report.join_rss_mib = joiner.pid().and_then(ProcSample::of).map(|s| s.rss_mib);
        fleet.members.push(joiner);
    }
    Ok(())
}

/// The report as aligned lines for people.
pub fn render(r: &FleetReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "fleet: {} agents x {} containers, {} pools: {} warm ({}), filled in {:.1}s, {} nodes ready at the end",
        r.agents,
        r.containers_per_agent,
        r.pools,
        r.containers_warm,
        if r.filled { "complete" } else { "INCOMPLETE" },
        r.fill_secs,
        r.nodes_ready_at_end
    );
    let _ = writeln!(
        out,
        "member  leader  rss MiB  peak MiB  idle cpu %  alloc cpu %  snapshot bytes  disk MB/h idle  disk MB/h alloc"
    );
    for m in &r.members {
        let _ = writeln!(
            out,
            "{:>6}  {:>6}  {:>7.0}  {:>8.0}  {:>10.1}  {:>11.1}  {:>14}  {:>14.0}  {:>15.0}",
            m.id,
            if m.leader { "yes" } else { "" },
            m.rss_mib,
            m.peak_rss_mib,
            m.idle_cpu_percent,
            m.alloc_cpu_percent,
            m.snapshot_bytes,
            m.idle_write_bytes_per_hour / 1e6,
            m.alloc_write_bytes_per_hour / 1e6
        );
    }
    let _ = writeln!(
        out,
        "simulator idle cpu {:.1}%, nats-server idle cpu {:.1}%, GET /v1/status {:.1} ms",
        r.simulator_idle_cpu_percent, r.nats_idle_cpu_percent, r.status_ms
    );
    for (name, l) in [("sequential", &r.sequential), ("concurrent", &r.concurrent)] {
        let _ = writeln!(
            out,
            "{name}: {} cycles at concurrency {}: allocation p50 {:.2} p90 {:.2} p99 {:.2} max {:.2} ms; cycle p50 {:.2} p99 {:.2} ms; {:.0} cycles/s; {} errors",
            l.cycles,
            l.concurrency,
            l.alloc_ms.p50,
            l.alloc_ms.p90,
            l.alloc_ms.p99,
            l.alloc_ms.max,
            l.cycle_ms.p50,
            l.cycle_ms.p99,
            l.cycles_per_sec,
            l.errors
        );
    }
    if let Some(soak) = &r.soak {
        let samples: Vec<String> = soak
            .rss_mib
            .iter()
            .map(|(n, rss)| format!("{n}: {rss:.0}"))
            .collect();
        let _ = writeln!(
            out,
            "soak: {} warm-up cycles, then {} at {:.0}/s, {} errors; leader rss MiB after the warm-up {:.0}, then by cycles {}; at the end {:+.1}%, largest change {:.1}%",
            soak.warmup_cycles,
            soak.cycles,
            soak.cycles_per_sec,
            soak.errors,
            soak.rss_after_warmup_mib,
            samples.join(", "),
            soak.end_drift_percent(),
            soak.drift_percent()
        );
        let heap: Vec<String> = soak
            .heap_mib
            .iter()
            .map(|(n, h)| format!("{n}: {h:.0}"))
            .collect();
        let _ = writeln!(
            out,
            "soak: leader heap MiB (allocator's count) after the warm-up {:.0}, then by cycles {}",
            soak.heap_after_warmup_mib,
            heap.join(", ")
        );
    }
    if let Some(e) = &r.error {
        let _ = writeln!(out, "error: {e}");
    }
    if let Some(s) = r.join_secs {
        let _ = writeln!(
            out,
            "a fourth member caught up in {s:.2}s ({}), rss {:.0} MiB",
            if r.join_by_snapshot == Some(true) {
                "by snapshot"
            } else {
                "by log"
            },
            r.join_rss_mib.unwrap_or(0.0)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::SoakReport;

    #[test]
    fn a_transient_peak_is_the_largest_change_but_not_growth_that_stays() {
        let soak = SoakReport {
            rss_after_warmup_mib: 50.0,
            rss_mib: vec![(10, 52.0), (20, 75.0), (30, 51.0)],
            ..SoakReport::default()
        };
        assert!((soak.drift_percent() - 50.0).abs() < 1e-9);
        assert!((soak.end_drift_percent() - 2.0).abs() < 1e-9);
        assert_eq!(SoakReport::default().end_drift_percent(), 0.0);
    }
}
