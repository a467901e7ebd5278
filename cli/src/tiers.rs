//! `poolctl bench --tier paused` and `poolctl bench --burst N`: the paused tier measured from
//! the client.
//!
//! **`--tier paused`** reports, in one run, the latency of allocations served by the paused
//! tier (unpause to granted: the agent unpauses the container and checks it answers before
//! the `201`), of allocations served by the warm tier, and the cold-start baseline. The run
//! goes in rounds: wait until the pool has its warm and paused tiers full with nothing being
//! made or destroyed, then take `warm + paused` allocations one after the other (each timed
//! alone), hold them, and release them all. The warm ones go first, so the tail of each round
//! comes from the paused tier; but every sample is put in the bucket of the tier its answer
//! names (`Allocation::tier`), never of the one it was expected from, and the counts per
//! bucket are in the report, so a small bucket is visible.
//!
//! **`--burst N --within D`**: with both tiers full, N allocations sent over D (evenly
//! spaced), each from its own client (its own connection), timed from that client; then each
//! granted container is checked to answer its pool's health check on its own address, and the
//! time until both tiers are full again is measured from the burst's start (the allocations
//! are held meanwhile, as users would).

use std::net::{SocketAddr, SocketAddrV6};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use warmpool_proto::{Allocation, PoolName, PoolSpec, Tier};

use crate::bench::{alloc_request, pool_status, BenchError, BenchPlan, BenchReport, Percentiles};
use crate::client::Client;
use crate::render::{kv_block, Align, Table};

/// The samples of one tier.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    /// Allocations this tier served.
    pub count: usize,
    /// Their latency, from the client.
    pub ms: Percentiles,
}

/// Latency samples put in the bucket of the tier each answer named.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Buckets {
    /// Served by the warm tier.
    pub warm: Bucket,
    /// Served by the paused tier (unpause to granted).
    pub paused: Bucket,
    /// Answers that named no tier (a control plane older than the tiers): in no bucket.
    pub untiered: usize,
}

/// Sorts `(tier the answer named, latency)` samples into buckets.
pub fn bucket(samples: &[(Option<Tier>, Duration)]) -> Buckets {
    let of = |tier: Tier| {
        let v: Vec<Duration> = samples
            .iter()
            .filter(|(t, _)| *t == Some(tier))
            .map(|(_, d)| *d)
            .collect();
        Bucket {
            count: v.len(),
            ms: Percentiles::of(&v),
        }
    };
    Buckets {
        warm: of(Tier::Warm),
        paused: of(Tier::Paused),
        untiered: samples.iter().filter(|(t, _)| t.is_none()).count(),
    }
}

/// What `--tier paused` measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TierPhase {
    /// The pool's warm tier (`min_warm`).
    pub warm_target: u32,
    /// The pool's paused tier (`min_paused`).
    pub paused_target: u32,
    /// Samples wanted in each bucket.
    pub samples: usize,
    /// Rounds run (each: fill both tiers, take them one by one, release).
    pub rounds: usize,
    /// Per tier.
    pub buckets: Buckets,
    /// Failed allocations.
    pub errors: usize,
    /// The first error seen, for the reader.
    pub first_error: Option<String>,
}

/// One allocation of a burst.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BurstAllocation {
    /// When it was sent, from the burst's start, ms.
    pub sent_ms: f64,
    /// From sending the request to reading the answer, ms (also for a failure).
    pub latency_ms: f64,
    /// The tier its answer named (None: failed, or no tier named).
    pub tier: Option<Tier>,
    /// `http://[ipv6]:port` of the container granted.
    pub url: Option<String>,
    /// Whether the container answered its pool's health check on its address (None: not
    /// granted).
    pub answered: Option<bool>,
    /// Why it failed.
    pub error: Option<String>,
}

/// What `--burst` measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BurstPhase {
    /// Allocations in the burst.
    pub n: usize,
    /// Over how long they were sent, ms.
    pub within_ms: u64,
    /// `wait_ms` of each.
    pub wait_ms: u64,
    /// The latency an allocation counts as fast under, ms.
    pub fast_ms: u64,
    /// The pool's warm tier (`min_warm`).
    pub warm_target: u32,
    /// The pool's paused tier (`min_paused`).
    pub paused_target: u32,
    /// Warm containers when the burst began.
    pub warm_at_start: u32,
    /// Paused containers when the burst began.
    pub paused_at_start: u32,
    /// Each allocation, in the order sent.
    pub allocations: Vec<BurstAllocation>,
    /// Granted.
    pub granted: usize,
    /// Granted within `fast_ms`.
    pub fast: usize,
    /// Granted containers that answered on their port.
    pub answered: usize,
    /// Latency of the granted ones, per tier.
    pub buckets: Buckets,
    /// Latency of every granted one.
    pub all_ms: Percentiles,
    /// From the burst's start until both tiers were full again, s.
    pub refill_secs: f64,
    /// Whether they were, before the timeout.
    pub refilled: bool,
    /// The least fast allocations `--expect-fast` asked for.
    pub expect_fast: Option<usize>,
}

impl BurstPhase {
    /// Why the burst falls short of what must hold, or None: every allocation granted, every
    /// granted container answering, the tiers refilled, and at least `expect_fast` fast.
    pub fn shortfall(&self) -> Option<String> {
        let mut why = Vec::new();
        if self.granted < self.n {
            why.push(format!("{} of {} granted", self.granted, self.n));
        }
        if self.answered < self.granted {
            why.push(format!(
                "{} of {} granted containers answered on their port",
                self.answered, self.granted
            ));
        }
        if !self.refilled {
            why.push("the tiers did not refill in time".to_string());
        }
        if let Some(k) = self.expect_fast {
            if self.fast < k {
                why.push(format!(
                    "{} in <= {} ms, fewer than the {k} expected",
                    self.fast, self.fast_ms
                ));
            }
        }
        (!why.is_empty()).then(|| format!("burst: {}", why.join("; ")))
    }
}

/// When the i-th of `n` allocations is sent: evenly over `within`, the first at once, the
/// last at `within` × (n-1)/n (so all are sent within it).
pub fn burst_offsets(n: usize, within: Duration) -> Vec<Duration> {
    (0..n)
        .map(|i| within.mul_f64(i as f64 / n.max(1) as f64))
        .collect()
}

/// How many of `latencies` are at most `limit`.
pub fn count_within(latencies: &[Duration], limit: Duration) -> usize {
    latencies.iter().filter(|d| **d <= limit).count()
}

/// The tiers of a temporary pool: for `--burst`, `--warm` (default [`DEFAULT_BURST_WARM`])
/// and `--paused` (default: the burst's size); for `--tier paused`, both default to
/// min(samples, [`DEFAULT_ROUND_PAUSED`]) (as many samples of each tier per round).
pub fn tier_targets(plan: &BenchPlan) -> (u32, u32) {
    let per_round = (plan.cycles.min(u32::MAX as usize) as u32).clamp(1, DEFAULT_ROUND_PAUSED);
    let (warm, paused) = match plan.burst {
        Some(b) => (DEFAULT_BURST_WARM, b.n.min(u32::MAX as usize) as u32),
        None => (per_round, per_round),
    };
    (
        plan.warm.unwrap_or(warm),
        plan.paused.unwrap_or(paused).max(1),
    )
}

/// `min_warm` of a temporary `--burst` pool unless `--warm` says otherwise (the burst
/// pool keeps 3).
pub const DEFAULT_BURST_WARM: u32 = 3;
/// `min_warm` and `min_paused` of a temporary `--tier paused` pool: samples per round.
pub const DEFAULT_ROUND_PAUSED: u32 = 10;

/// Sets a temporary pool's tiers for a tiered run.
pub fn tiered_spec(spec: &mut PoolSpec, plan: &BenchPlan) -> Result<(), BenchError> {
    let (warm, paused) = tier_targets(plan);
    spec.min_warm = warm;
    spec.max_warm = Some(warm);
    spec.min_paused = paused;
    spec.max_paused = Some(paused);
    // Held allocations and a full refill of both tiers at once.
    spec.max_total = (2 * (warm + paused) + 8).min(100_000);
    spec.validate()
        .map_err(|e| BenchError::Setup(e.to_string()))
}

/// The warm and paused tiers of `spec` (a named pool must have a paused tier).
fn targets_of(spec: &PoolSpec) -> Result<(u32, u32), BenchError> {
    if !spec.has_paused_tier() || spec.min_paused == 0 {
        return Err(BenchError::Setup(format!(
            "pool {} has no paused tier (min_paused is 0): give a pool with one, or none for a temporary one",
            spec.name
        )));
    }
    Ok((spec.min_warm, spec.min_paused))
}

/// Polls `/v1/status` until the pool has `warm` warm and `paused` paused containers (and,
/// when `settled`, nothing being made or destroyed); answers the warm and paused counts.
async fn wait_tiers(
    client: &Client,
    pool: &PoolName,
    (warm, paused): (u32, u32),
    settled: bool,
    timeout: Duration,
) -> Result<(u32, u32), BenchError> {
    let deadline = Instant::now() + timeout;
    loop {
        let p = pool_status(client, pool).await?;
        let c = &p.counts;
        if c.warm >= warm
            && c.paused >= paused
            && (!settled || (c.creating == 0 && c.releasing == 0))
        {
            return Ok((c.warm, c.paused));
        }
        if Instant::now() > deadline {
            return Err(BenchError::Setup(format!(
                "pool {pool} has {} warm (of {warm}) and {} paused (of {paused}), {} creating, {} releasing after {timeout:?}{}",
                c.warm,
                c.paused,
                c.creating,
                c.releasing,
                p.condition.as_deref().map(|c| format!(": {c}")).unwrap_or_default()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `--tier paused`: rounds until each bucket has `plan.cycles` samples (or a bound on
/// rounds is reached: a bucket that stays small is reported as it is).
pub(crate) async fn measure_tiers(
    client: &Client,
    target: &Client,
    plan: &BenchPlan,
    spec: &PoolSpec,
    report: &mut BenchReport,
    progress: &mut dyn FnMut(String),
) -> Result<(), BenchError> {
    let name = &spec.name;
    let (warm, paused) = targets_of(spec)?;
    let want = plan.cycles.max(1);
    let per_round = warm.min(paused).max(1) as usize;
    let max_rounds = want.div_ceil(per_round) * 2 + 2;
    let mut samples: Vec<(Option<Tier>, Duration)> = Vec::new();
    let mut phase = TierPhase {
        warm_target: warm,
        paused_target: paused,
        samples: want,
        ..Default::default()
    };
    let mut errors = Vec::new();
    progress(format!(
        "{want} samples per tier, in rounds of {warm} warm + {paused} paused allocations one by one, via {}",
        target.urls().join(",")
    ));
    while phase.rounds < max_rounds {
        let b = bucket(&samples);
        if b.warm.count >= want && b.paused.count >= want {
            break;
        }
        let (w, _) = wait_tiers(client, name, (warm, paused), true, plan.fill_timeout).await?;
        if phase.rounds == 0 {
            report.warm_at_start = w;
        }
        phase.rounds += 1;
        let mut held = Vec::new();
        for _ in 0..(warm + paused) {
            let t0 = Instant::now();
            match target.allocate(&alloc_request(name, plan.wait_ms)).await {
                Ok(a) => {
                    samples.push((a.tier, t0.elapsed()));
                    held.push(a.id);
                }
                Err(e) => errors.push(format!("allocate: {e}")),
            }
        }
        for id in held {
            if let Err(e) = client.release(id).await {
                errors.push(format!("release: {e}"));
            }
        }
        let b = bucket(&samples);
        progress(format!(
            "round {}: {} warm, {} paused samples so far",
            phase.rounds, b.warm.count, b.paused.count
        ));
    }
    phase.buckets = bucket(&samples);
    phase.errors = errors.len();
    phase.first_error = errors.into_iter().next();
    report.tiers = Some(phase);

    if plan.cold_runs > 0 {
        // Fair to the baseline: the agent is done replacing the rounds' containers first.
        progress(format!(
            "waiting for {name} to settle before the cold starts"
        ));
        wait_tiers(client, name, (warm, paused), true, plan.fill_timeout).await?;
        progress(format!(
            "{} cold starts through Docker at {}",
            plan.cold_runs, plan.docker_host
        ));
        report.cold = Some(
            crate::cold::measure(
                &plan.docker_host,
                plan.cold_prefix.as_deref(),
                spec,
                plan.cold_runs,
            )
            .await?,
        );
    }
    Ok(())
}

/// `--burst`: see the module's documentation.
pub(crate) async fn measure_burst(
    client: &Client,
    target: &Client,
    token: Option<String>,
    plan: &BenchPlan,
    spec: &PoolSpec,
    report: &mut BenchReport,
    progress: &mut dyn FnMut(String),
) -> Result<(), BenchError> {
    let burst = plan
        .burst
        .ok_or_else(|| BenchError::Setup("no burst asked for".into()))?;
    let name = &spec.name;
    let targets = targets_of(spec)?;
    progress(format!(
        "waiting for {} warm and {} paused containers in {name}",
        targets.0, targets.1
    ));
    let (warm_at_start, paused_at_start) =
        wait_tiers(client, name, targets, true, plan.fill_timeout).await?;
    report.warm_at_start = warm_at_start;
    progress(format!(
        "burst: {} allocations within {:?}, one client each, wait_ms {}",
        burst.n, burst.within, plan.wait_ms
    ));

    // One client (its own connection pool) per allocation, made before the clock starts.
    let urls = target.urls();
    let clients: Vec<_> = (0..burst.n)
        .map(|_| Client::new(urls.clone(), token.clone()))
        .collect();
    let started = Instant::now();
    let tasks: Vec<_> = burst_offsets(burst.n, burst.within)
        .into_iter()
        .zip(clients)
        .map(|(offset, client)| {
            let req = alloc_request(name, plan.wait_ms);
            tokio::spawn(async move {
                tokio::time::sleep_until((started + offset).into()).await;
                let sent = started.elapsed();
                let t0 = Instant::now();
                let got = match client {
                    Ok(c) => c.allocate(&req).await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                (sent, t0.elapsed(), got)
            })
        })
        .collect();
    let mut allocations = Vec::new();
    let mut held: Vec<Allocation> = Vec::new();
    for t in tasks {
        let (sent, took, got) = t
            .await
            .map_err(|e| BenchError::Setup(format!("a burst client failed: {e}")))?;
        let mut row = BurstAllocation {
            sent_ms: sent.as_secs_f64() * 1e3,
            latency_ms: took.as_secs_f64() * 1e3,
            ..Default::default()
        };
        match got {
            Ok(a) => {
                row.tier = a.tier;
                row.url = a.url.clone();
                held.push(a);
            }
            Err(e) => row.error = Some(e),
        }
        allocations.push(row);
    }

    // Every granted container answers on its own address (as the suite's tests check).
    progress("checking that every granted container answers on its port".into());
    let mut rows = allocations.iter_mut().filter(|r| r.error.is_none());
    for a in &held {
        let answered = match a.ipv6 {
            Some(ip) => crate::cold::answers(
                SocketAddr::V6(SocketAddrV6::new(ip, a.port, 0, 0)),
                &spec.health.probe,
                ANSWER_DEADLINE,
            )
            .await
            .is_ok(),
            None => false,
        };
        if let Some(r) = rows.next() {
            r.answered = Some(answered);
        }
    }

    progress(format!(
        "waiting for {name} to refill {} warm and {} paused (allocations held)",
        targets.0, targets.1
    ));
    let refill = wait_tiers(client, name, targets, false, plan.fill_timeout).await;
    let refill_secs = started.elapsed().as_secs_f64();
    for a in &held {
        if let Err(e) = client.release(a.id).await {
            progress(format!("warning: could not release {}: {e}", a.id));
        }
    }

    let granted: Vec<(Option<Tier>, Duration)> = allocations
        .iter()
        .filter(|r| r.error.is_none())
        .map(|r| (r.tier, Duration::from_secs_f64(r.latency_ms / 1e3)))
        .collect();
    let latencies: Vec<Duration> = granted.iter().map(|(_, d)| *d).collect();
    report.burst = Some(BurstPhase {
        n: burst.n,
        within_ms: burst.within.as_millis() as u64,
        wait_ms: plan.wait_ms,
        fast_ms: burst.fast.as_millis() as u64,
        warm_target: targets.0,
        paused_target: targets.1,
        warm_at_start,
        paused_at_start,
        granted: granted.len(),
        fast: count_within(&latencies, burst.fast),
        answered: allocations
            .iter()
            .filter(|r| r.answered == Some(true))
            .count(),
        buckets: bucket(&granted),
        all_ms: Percentiles::of(&latencies),
        refill_secs,
        refilled: refill.is_ok(),
        expect_fast: burst.expect_fast,
        allocations,
    });
    Ok(())
}

/// How long a granted container may take to answer on its port before it counts as not
/// answering (it answered before it was granted; this is slack for a loaded host).
const ANSWER_DEADLINE: Duration = Duration::from_secs(2);

fn ms_row(name: &str, count: usize, p: &Percentiles) -> Vec<String> {
    vec![
        name.to_string(),
        count.to_string(),
        format!("{:.2}", p.p50),
        format!("{:.2}", p.p90),
        format!("{:.2}", p.p99),
        format!("{:.2}", p.max),
    ]
}

fn ms_table() -> Table {
    Table::new(&[
        ("ms", Align::Left),
        ("n", Align::Right),
        ("p50", Align::Right),
        ("p90", Align::Right),
        ("p99", Align::Right),
        ("max", Align::Right),
    ])
}

/// `--tier paused`, for people: the tiers and the cold start side by side.
pub fn render_tiers(r: &BenchReport, t: &TierPhase) -> String {
    let mut rows = crate::bench::summary_rows(r);
    rows.push((
        "tiers",
        format!(
            "{} warm + {} paused per round, {} rounds, {} samples per tier wanted",
            t.warm_target, t.paused_target, t.rounds, t.samples
        ),
    ));
    rows.push((
        "served by",
        format!(
            "paused tier {}, warm tier {}{}; {} errors",
            t.buckets.paused.count,
            t.buckets.warm.count,
            if t.buckets.untiered > 0 {
                format!(", no tier named {}", t.buckets.untiered)
            } else {
                String::new()
            },
            t.errors
        ),
    ));
    if let Some(e) = &t.first_error {
        rows.push(("first error", e.clone()));
    }
    let mut out = kv_block(&rows);
    out.push('\n');
    let mut table = ms_table();
    table.row(ms_row(
        "paused: unpause to granted",
        t.buckets.paused.count,
        &t.buckets.paused.ms,
    ));
    table.row(ms_row(
        "warm allocation",
        t.buckets.warm.count,
        &t.buckets.warm.ms,
    ));
    if let Some(c) = &r.cold {
        table.row(ms_row(
            "cold: to first healthy answer",
            c.runs,
            &c.healthy_ms,
        ));
    }
    out.push_str(&table.render());
    if let Some(c) = &r.cold {
        out.push('\n');
        let mut rows = vec![(
            "cold starts",
            format!(
                "{} on {} ({}), dockerd {}, {} failed",
                c.runs, c.network, c.prefix, c.docker_version, c.failures
            ),
        )];
        let ratio = |tier: &Bucket| {
            if tier.count == 0 || c.runs == 0 {
                "no samples".to_string()
            } else {
                format!(
                    "{:.0}x at the median, {:.0}x at p99",
                    c.healthy_ms.p50 / tier.ms.p50,
                    c.healthy_ms.p99 / tier.ms.p99
                )
            }
        };
        rows.push(("cold / paused", ratio(&t.buckets.paused)));
        rows.push(("cold / warm", ratio(&t.buckets.warm)));
        out.push_str(&kv_block(&rows));
    }
    out
}

/// `--burst`, for people: one line per allocation, then the summary.
pub fn render_burst(r: &BenchReport, b: &BurstPhase) -> String {
    let mut out = kv_block(&crate::bench::summary_rows(r));
    out.push('\n');
    let mut table = Table::new(&[
        ("#", Align::Right),
        ("sent at ms", Align::Right),
        ("latency ms", Align::Right),
        ("tier", Align::Left),
        ("answers", Align::Left),
        ("url or error", Align::Left),
    ]);
    for (i, a) in b.allocations.iter().enumerate() {
        table.row(vec![
            (i + 1).to_string(),
            format!("{:.1}", a.sent_ms),
            format!("{:.1}", a.latency_ms),
            a.tier.map_or("-".into(), |t| t.to_string()),
            match a.answered {
                Some(true) => "yes".into(),
                Some(false) => "NO".into(),
                None => "-".into(),
            },
            a.error
                .clone()
                .or_else(|| a.url.clone())
                .unwrap_or_default(),
        ]);
    }
    out.push_str(&table.render());
    out.push('\n');
    let mut table = ms_table();
    table.row(ms_row("burst: all granted", b.granted, &b.all_ms));
    table.row(ms_row(
        "burst: warm tier",
        b.buckets.warm.count,
        &b.buckets.warm.ms,
    ));
    table.row(ms_row(
        "burst: paused tier",
        b.buckets.paused.count,
        &b.buckets.paused.ms,
    ));
    out.push_str(&table.render());
    out.push('\n');
    out.push_str(&kv_block(&[
        (
            "burst",
            format!(
                "{} allocations within {} ms, one client each, wait_ms {}; tiers at start: {} warm (of {}), {} paused (of {})",
                b.n, b.within_ms, b.wait_ms, b.warm_at_start, b.warm_target, b.paused_at_start, b.paused_target
            ),
        ),
        (
            "fast",
            format!(
                "{} of {} in <= {} ms{}",
                b.fast,
                b.n,
                b.fast_ms,
                b.expect_fast
                    .map(|k| format!(" (expected >= {k})"))
                    .unwrap_or_default()
            ),
        ),
        (
            "served by",
            format!(
                "warm tier {}, paused tier {}, failed {}",
                b.buckets.warm.count,
                b.buckets.paused.count,
                b.n - b.granted
            ),
        ),
        (
            "answered",
            format!("{} of {} granted containers on their port", b.answered, b.granted),
        ),
        (
            "refill",
            if b.refilled {
                format!(
                    "{} warm and {} paused again {:.2}s after the burst's start",
                    b.warm_target, b.paused_target, b.refill_secs
                )
            } else {
                format!(
                    "NOT back at {} warm and {} paused after {:.2}s (timed out)",
                    b.warm_target, b.paused_target, b.refill_secs
                )
            },
        ),
    ]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn samples_go_to_the_tier_their_answer_named() {
        let samples = vec![
            (Some(Tier::Warm), ms(2)),
            (Some(Tier::Paused), ms(30)),
            (Some(Tier::Warm), ms(4)),
            (None, ms(1)),
            (Some(Tier::Paused), ms(50)),
            (Some(Tier::Paused), ms(40)),
        ];
        let b = bucket(&samples);
        assert_eq!((b.warm.count, b.paused.count, b.untiered), (2, 3, 1));
        // The percentiles are bench's own (nearest rank) over each bucket alone.
        assert_eq!(b.warm.ms, Percentiles::of(&[ms(2), ms(4)]));
        assert_eq!(b.paused.ms, Percentiles::of(&[ms(30), ms(40), ms(50)]));
        assert_eq!((b.paused.ms.p50, b.paused.ms.max), (40.0, 50.0));
        let empty = bucket(&[]);
        assert_eq!(empty, Buckets::default());
    }

    #[test]
    fn a_burst_is_sent_evenly_within_its_window() {
        let o = burst_offsets(4, Duration::from_secs(2));
        assert_eq!(o, vec![ms(0), ms(500), ms(1000), ms(1500)]);
        assert!(burst_offsets(30, Duration::from_secs(2))
            .iter()
            .all(|d| *d < Duration::from_secs(2)));
        assert_eq!(burst_offsets(1, ms(0)), vec![ms(0)]);
        assert!(burst_offsets(0, ms(10)).is_empty());
    }

    #[test]
    fn fast_counts_include_the_limit() {
        assert_eq!(count_within(&[ms(99), ms(100), ms(101), ms(5)], ms(100)), 3);
        assert_eq!(count_within(&[], ms(100)), 0);
    }

    fn plan() -> BenchPlan {
        BenchPlan {
            cycles: 50,
            ..crate::bench::tests::plan()
        }
    }

    #[test]
    fn a_temporary_tiered_pool_has_both_tiers_and_room_to_refill() {
        let mut spec = crate::bench::temporary_spec(&plan()).unwrap();
        tiered_spec(&mut spec, &plan()).unwrap();
        assert_eq!((spec.min_warm, spec.min_paused), (10, 10));
        assert_eq!((spec.max_warm(), spec.max_paused()), (10, 10));
        assert_eq!(spec.max_total, 48);
        let few = BenchPlan {
            cycles: 4,
            ..plan()
        };
        assert_eq!(tier_targets(&few), (4, 4));
        let burst = BenchPlan {
            burst: Some(crate::bench::BurstPlan {
                n: 30,
                within: Duration::from_secs(2),
                fast: ms(100),
                expect_fast: Some(27),
            }),
            ..plan()
        };
        let mut spec = crate::bench::temporary_spec(&burst).unwrap();
        tiered_spec(&mut spec, &burst).unwrap();
        assert_eq!(
            (spec.min_warm, spec.min_paused, spec.max_total),
            (3, 30, 74)
        );
        let given = BenchPlan {
            warm: Some(1),
            paused: Some(2),
            ..plan()
        };
        assert_eq!(tier_targets(&given), (1, 2));
        // A named pool without the tier is refused with a reason.
        let plain = crate::bench::temporary_spec(&plan()).unwrap();
        let err = targets_of(&plain).unwrap_err().to_string();
        assert!(err.contains("no paused tier"), "{err}");
    }

    fn burst_phase() -> BurstPhase {
        BurstPhase {
            n: 3,
            within_ms: 2000,
            wait_ms: 10_000,
            fast_ms: 100,
            warm_target: 1,
            paused_target: 2,
            warm_at_start: 1,
            paused_at_start: 2,
            allocations: vec![
                BurstAllocation {
                    sent_ms: 0.0,
                    latency_ms: 3.0,
                    tier: Some(Tier::Warm),
                    url: Some("http://[fd36::2]:8080".into()),
                    answered: Some(true),
                    error: None,
                },
                BurstAllocation {
                    sent_ms: 666.7,
                    latency_ms: 41.0,
                    tier: Some(Tier::Paused),
                    url: Some("http://[fd36::3]:8080".into()),
                    answered: Some(true),
                    error: None,
                },
                BurstAllocation {
                    sent_ms: 1333.3,
                    latency_ms: 250.0,
                    tier: Some(Tier::Paused),
                    url: Some("http://[fd36::4]:8080".into()),
                    answered: Some(true),
                    error: None,
                },
            ],
            granted: 3,
            fast: 2,
            answered: 3,
            buckets: bucket(&[
                (Some(Tier::Warm), ms(3)),
                (Some(Tier::Paused), ms(41)),
                (Some(Tier::Paused), ms(250)),
            ]),
            all_ms: Percentiles::of(&[ms(3), ms(41), ms(250)]),
            refill_secs: 4.5,
            refilled: true,
            expect_fast: None,
        }
    }

    #[test]
    fn a_burst_falls_short_only_of_what_must_hold() {
        let b = burst_phase();
        assert_eq!(b.shortfall(), None);
        let short = BurstPhase {
            expect_fast: Some(3),
            answered: 2,
            refilled: false,
            ..burst_phase()
        };
        let why = short.shortfall().unwrap();
        assert!(why.contains("2 of 3 granted containers answered"), "{why}");
        assert!(why.contains("did not refill"), "{why}");
        assert!(
            why.contains("2 in <= 100 ms, fewer than the 3 expected"),
            "{why}"
        );
        let failed = BurstPhase {
            granted: 2,
            answered: 2,
            ..burst_phase()
        };
        assert!(failed.shortfall().unwrap().contains("2 of 3 granted"));
    }

    #[test]
    fn the_tables_show_each_tier_with_its_count() {
        let mut r = BenchReport {
            pool: "bench-x".into(),
            image: "img".into(),
            ..Default::default()
        };
        let t = TierPhase {
            warm_target: 3,
            paused_target: 10,
            samples: 20,
            rounds: 2,
            buckets: bucket(&[(Some(Tier::Warm), ms(2)), (Some(Tier::Paused), ms(30))]),
            ..Default::default()
        };
        r.cold = Some(crate::bench::ColdPhase {
            runs: 2,
            healthy_ms: Percentiles::of(&[ms(600), ms(600)]),
            ..Default::default()
        });
        let text = render_tiers(&r, &t);
        assert!(text.contains("paused: unpause to granted"), "{text}");
        assert!(text.contains("paused tier 1, warm tier 1"), "{text}");
        assert!(text.contains("cold / paused:  20x at the median"), "{text}");
        assert!(
            text.contains("cold / warm:    300x at the median"),
            "{text}"
        );
        let text = render_burst(&r, &burst_phase());
        assert!(text.contains("2 of 3 in <= 100 ms"), "{text}");
        assert!(
            text.contains("warm tier 1, paused tier 2, failed 0"),
            "{text}"
        );
        assert!(text.contains("1 warm and 2 paused again 4.50s"), "{text}");
        assert!(text.contains("http://[fd36::4]:8080"), "{text}");
    }
}
