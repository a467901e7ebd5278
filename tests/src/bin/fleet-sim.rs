//! `fleet-sim`: a simulated fleet against a real 3-member control plane; see
//! [`warmpool_tests::fleet`].
//!
//! ```sh
//! cargo build --release --bins
//! target/release/fleet-sim --agents 1000 --containers-per-agent 100 --json fleet.json
//! ```
//!
//! The control-plane binaries are taken from the directory this binary is in (so a release
//! `fleet-sim` runs release members), or from `$WARMPOOL_BIN_DIR`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use warmpool_tests::fleet::{self, FleetConfig};

/// Simulated agents against a real control plane: memory, CPU, allocation latency, snapshot.
#[derive(Debug, Parser)]
#[command(name = "fleet-sim")]
struct Args {
    /// Simulated agents (nodes).
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Containers per agent.
    #[arg(long, default_value_t = 100)]
    containers_per_agent: usize,
    /// Pools the containers are split over.
    #[arg(long, default_value_t = 10)]
    pools: usize,
    /// Agents' heartbeat interval, ms.
    #[arg(long, default_value_t = 1000)]
    heartbeat_ms: u64,
    /// Agents sharing one NATS connection (1: one each, like real agents).
    #[arg(long, default_value_t = 1)]
    agents_per_connection: usize,
    /// Pools' scale-up batch while filling.
    #[arg(long, default_value_t = 500)]
    batch_size: u32,
    /// Pools' pause between batches, ms.
    #[arg(long, default_value_t = 20)]
    pacing_ms: u64,
    /// Give up filling after this many seconds (and measure what there is).
    #[arg(long, default_value_t = 1800)]
    fill_timeout_secs: u64,
    /// Quiet seconds after filling.
    #[arg(long, default_value_t = 10)]
    settle_secs: u64,
    /// Seconds of idle CPU measurement.
    #[arg(long, default_value_t = 20)]
    idle_secs: u64,
    /// Sequential allocate+release cycles.
    #[arg(long, default_value_t = 500)]
    sequential: usize,
    /// Concurrent allocate+release cycles.
    #[arg(long, default_value_t = 2000)]
    concurrent: usize,
    /// Concurrency of those.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Allocate+release cycles of a memory soak after the other phases (0: none); the
    /// leader's resident memory is sampled after every tenth.
    #[arg(long, default_value_t = 0)]
    soak_cycles: usize,
    /// Cycles before the soak measures, to fill the retention caps (memory grows by design
    /// until they are full).
    #[arg(long, default_value_t = 0)]
    soak_warmup_cycles: usize,
    /// Do not time a fourth member joining.
    #[arg(long)]
    no_join: bool,
    /// Members' --snapshot-every.
    #[arg(long, default_value_t = 5000)]
    snapshot_every: u64,
    /// Members' --node-timeout-secs.
    #[arg(long, default_value_t = 5.0)]
    node_timeout_secs: f64,
    /// Members' RUST_LOG (warnings, and snapshot timings).
    #[arg(
        long,
        default_value = "warn,warmpool_control_plane::raft::state_machine=info"
    )]
    log: String,
    /// Keep logs and Raft data here instead of a temporary directory.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Once filled, write the members' URLs to this file and keep the fleet up, unmeasured,
    /// until SIGINT or SIGTERM (for `poolctl bench --url "$(cat FILE)"`).
    #[arg(long, value_name = "FILE")]
    hold: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    if std::env::var_os("WARMPOOL_BIN_DIR").is_none() {
        if let Some(dir) = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(PathBuf::from))
        {
            std::env::set_var("WARMPOOL_BIN_DIR", dir);
        }
    }
    let cfg = FleetConfig {
        agents: a.agents,
        containers_per_agent: a.containers_per_agent,
        pools: a.pools,
        heartbeat: Duration::from_millis(a.heartbeat_ms),
        agents_per_connection: a.agents_per_connection,
        batch_size: a.batch_size,
        pacing_ms: a.pacing_ms,
        fill_timeout: Duration::from_secs(a.fill_timeout_secs),
        settle: Duration::from_secs(a.settle_secs),
        idle_window: Duration::from_secs(a.idle_secs),
        sequential_cycles: a.sequential,
        concurrent_cycles: a.concurrent,
        concurrency: a.concurrency,
        join: !a.no_join,
        snapshot_every: a.snapshot_every,
        node_timeout_secs: a.node_timeout_secs,
        log_filter: a.log,
        soak_cycles: a.soak_cycles,
        soak_warmup_cycles: a.soak_warmup_cycles,
        dir: a.dir,
        hold: a.hold.clone(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let started = std::time::Instant::now();
    let report = rt.block_on(fleet::run(&cfg, &|line| {
        eprintln!("[{:>7.1}s] {line}", started.elapsed().as_secs_f64())
    }))?;
    if a.hold.is_some() {
        return Ok(());
    }
    print!("{}", fleet::render(&report));
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(())
}
