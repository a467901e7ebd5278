//! The simulated node agent (`warmpool_tests::sim_agent`) as a process: it speaks the agent
//! protocol over NATS and "runs" containers in memory, healthy at once. For runs that exercise
//! the control plane's API without Docker, such as `deploy/fuzz-api.sh`.
//!
//! ```text
//! warmpool-sim-agent NATS_URL NODE_ID [HEARTBEAT_MS]
//! ```
//!
//! Runs until SIGINT or SIGTERM.

use std::process::ExitCode;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use warmpool_tests::sim_agent::SimAgent;

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(url), Some(node)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: warmpool-sim-agent NATS_URL NODE_ID [HEARTBEAT_MS]");
        return ExitCode::from(2);
    };
    let heartbeat = match args.get(3).map(|s| s.parse::<u64>()) {
        None => 500,
        Some(Ok(ms)) if ms > 0 => ms,
        Some(_) => {
            eprintln!("HEARTBEAT_MS must be a positive number of milliseconds");
            return ExitCode::from(2);
        }
    };
    let agent = SimAgent::start(url, node, 0x1d, Duration::from_millis(heartbeat)).await;
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("cannot install signal handlers");
        return ExitCode::FAILURE;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    drop(agent);
    ExitCode::SUCCESS
}
