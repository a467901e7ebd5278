//! `failover-bench`: SIGKILL the leader of a 3-member control plane under load, again and
//! again, and time how long writes are refused each time; see [`warmpool_tests::failover`].
//!
//! ```sh
//! cargo build --release --bins
//! target/release/failover-bench --kills 10
//! ```
//!
//! The control-plane binaries are taken from the directory this binary is in, or from
//! `$WARMPOOL_BIN_DIR`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use warmpool_tests::failover::{self, FailoverConfig};

/// Leader kills under load; the time until writes succeed again.
#[derive(Debug, Parser)]
#[command(name = "failover-bench")]
struct Args {
    /// Leader kills.
    #[arg(long, default_value_t = 10)]
    kills: usize,
    /// Clients allocating and releasing meanwhile.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Milliseconds between the killed member's return and the next kill.
    #[arg(long, default_value_t = 1500)]
    between_ms: u64,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
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
    let cfg = FailoverConfig {
        kills: a.kills,
        clients: a.clients,
        between: Duration::from_millis(a.between_ms),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = rt.block_on(failover::run(&cfg, &|line| eprintln!("{line}")))?;
    let p = &report.percentiles_ms;
    println!(
        "failover over {} leader kills: median {:.2}s, p90 {:.2}s, max {:.2}s (each: {})",
        report.failovers_secs.len(),
        p.p50 / 1e3,
        p.p90 / 1e3,
        p.max / 1e3,
        report
            .failovers_secs
            .iter()
            .map(|s| format!("{s:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "{} allocate+release cycles completed by {} clients meanwhile ({} failed requests retried)",
        report.cycles, a.clients, report.client_errors
    );
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(())
}
