//! The failover benchmark: a 3-member control plane under allocation load loses its leader
//! to SIGKILL again and again; each time, how long until a write succeeds again.
//!
//! The approach of `tests/cluster.rs` (`losing_the_leader_under_load...`), repeated: clients
//! allocate and release through every member (with idempotency keys, retrying), a probe client
//! writes (creates an empty pool) every 10 ms from the kill until one succeeds, the killed
//! member is restarted and caught up before the next kill, so every kill starts from three
//! healthy members. `failover-bench` (`src/bin/failover-bench.rs`) is the command line.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use poolctl::Client;
use serde::Serialize;
use warmpool_proto::api::CreateAllocation;
use warmpool_proto::PoolName;

use crate::sim_agent::SimAgent;
use crate::{unique, wait_until, TestCluster};
use poolctl::bench::Percentiles;

/// What to run.
#[derive(Clone, Debug)]
pub struct FailoverConfig {
    /// Leader kills.
    pub kills: usize,
    /// Clients allocating and releasing meanwhile.
    pub clients: usize,
    /// Time between the killed member's return (caught up) and the next kill.
    pub between: Duration,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        FailoverConfig {
            kills: 10,
            clients: 8,
            between: Duration::from_millis(1500),
        }
    }
}

/// What was measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FailoverReport {
    /// Seconds from each SIGKILL until a write succeeded again.
    pub failovers_secs: Vec<f64>,
    /// Their percentiles, in milliseconds.
    pub percentiles_ms: Percentiles,
    /// Allocate+release cycles the clients completed over the whole run.
    pub cycles: usize,
    /// Client requests that failed (and were retried).
    pub client_errors: usize,
}

/// Runs the kills on a fresh cluster (the binaries from [`crate::bin_dir`]).
pub async fn run(
    cfg: &FailoverConfig,
    progress: &dyn Fn(String),
) -> anyhow::Result<FailoverReport> {
    let mut c = TestCluster::replicated(3, &[]).await;
    let _agent =
        SimAgent::start(&c.nats.url(), &unique("sim"), 7, Duration::from_millis(300)).await;
    let pool = unique("fo").replace('-', "");
    let mut spec = TestCluster::demo_spec(&pool, 24);
    spec.max_total = 10_000;
    spec.scaling.batch_size = 16;
    spec.scaling.pacing_ms = 50;
    c.client.create_pool(&spec).await?;
    c.wait_warm(&pool, 24, Duration::from_secs(30)).await;
    let pool = PoolName::new(pool)?;

    let stop = Arc::new(AtomicBool::new(false));
    let cycles = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for i in 0..cfg.clients {
        let mut urls: Vec<String> = c.members.iter().map(|m| m.url()).collect();
        urls.rotate_left(i % 3);
        let client = Client::new(urls, None)?;
        let (stop, cycles, errors, pool) =
            (stop.clone(), cycles.clone(), errors.clone(), pool.clone());
        load.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let req = CreateAllocation {
                    pool: pool.clone(),
                    session_id: None,
                    lease_seconds: None,
                    wait_ms: Some(2_000),
                    idempotency_key: Some(format!("c{i}-{n}")),
                    tenant: None,
                    env: Default::default(),
                    secrets: Default::default(),
                    metadata: Default::default(),
                    wait_for: None,
                    asynchronous: false,
                    location: None,
                    max_lifetime_secs: None,
                    workspace: None,
                };
                let a = loop {
                    match client.allocate(&req).await {
                        Ok(a) => break Some(a),
                        Err(_) if stop.load(Ordering::Relaxed) => break None,
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                };
                let Some(a) = a else { break };
                while client.release(a.id).await.is_err() && !stop.load(Ordering::Relaxed) {
                    errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                cycles.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    let probe = Client::new(c.members.iter().map(|m| m.url()).collect(), None)?;
    let mut failovers = Vec::new();
    for round in 0..cfg.kills {
        tokio::time::sleep(cfg.between).await;
        let view = wait_until(Duration::from_secs(20), "a leader", || {
            let probe = probe.clone();
            async move { probe.cluster().await.ok().filter(|v| v.leader.is_some()) }
        })
        .await;
        let leader = view.leader.context("a leader")?;
        let victim = c
            .members
            .iter()
            .position(|m| m.id == leader)
            .context("the leader is a member")?;
        c.members[victim].kill();
        let killed = Instant::now();
        let mut attempt = 0;
        let took = loop {
            attempt += 1;
            let spec = TestCluster::demo_spec(&format!("probe{round}x{attempt}"), 0);
            if probe.create_pool(&spec).await.is_ok() {
                break killed.elapsed();
            }
            anyhow::ensure!(
                killed.elapsed() < Duration::from_secs(60),
                "no write succeeded within 60 s of killing the leader"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        progress(format!(
            "kill {}: member {leader} killed; writes accepted again after {:.3}s",
            round + 1,
            took.as_secs_f64()
        ));
        failovers.push(took);
        // Bring it back and let it catch up, so the next kill starts from three members.
        c.members[victim].start();
        let back = c.client_of(victim);
        let target = probe.cluster().await?.applied_index.unwrap_or(0);
        wait_until(
            Duration::from_secs(60),
            "the restarted member to catch up",
            || {
                let back = back.clone();
                async move {
                    let v = back.cluster().await.ok()?;
                    (v.applied_index? >= target && v.leader.is_some()).then_some(())
                }
            },
        )
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        let _ = t.await;
    }
    Ok(FailoverReport {
        failovers_secs: failovers.iter().map(Duration::as_secs_f64).collect(),
        percentiles_ms: Percentiles::of(&failovers),
        cycles: cycles.load(Ordering::Relaxed),
        client_errors: errors.load(Ordering::Relaxed),
    })
}
