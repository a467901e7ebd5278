//! Demand-driven warm targets against fixed ones, on synthetic traces, replayed through the
//! control plane's own leader engine and state machine (`warmpool_control_plane::sim`: no
//! cluster, no Docker).
//!
//! Traces of an hour (bursty, diurnal, steady), each replayed on the same pool model under the
//! demand-driven scaler and under fixed targets:
//!
//! - **fixed N, same idle**: the smallest fixed target whose pool holds, on average, at least
//!   as many idle warm containers as the scaler's did. A fixed pool of N averages fewer than N
//!   warm (replacements are always on their way), so this is the honest "same average warm
//!   pool size": the fixed policy gets at least the scaler's idle budget.
//! - **fixed N-1, less idle**: the next smaller target, so each scaler row is bracketed by the
//!   fixed policies on either side of its cost.
//! - **fixed, mean target**: the scaler's average wanted count, rounded, when it is neither of
//!   the above.
//!
//! Each comparison runs twice: on a fleet that starts any number of containers at once, and
//! on one with a real fleet's limits (how many it starts at once, how many it holds, released
//! containers keeping their place while they are torn down).
//!
//! The suite replays the bursty trace, where the claim is asserted: the scaler serves more
//! allocations warm than a fixed target at equal or lower idle cost (and than one at its own
//! mean target). All three traces, for the table in the README:
//! `cargo test -p warmpool-tests --test suite simulation:: -- --include-ignored --nocapture`.

use poolctl::policy::generate::{Bursty, Diurnal, Hold, Steady};
use poolctl::policy::{PoolModel, SimReport, Trace, WarmTime};
use poolctl::render::{Align, Table};
use warmpool_control_plane::sim::simulate;
use warmpool_proto::{PoolName, PoolSpec};

/// Hours per trace.
const HOURS: f64 = 1.0;

/// The pool: a spec as an operator would write it for demand-driven scaling. Batches of 8
/// (not the default 4) so that two batches in flight can refill at the bursts' rate.
fn spec() -> PoolSpec {
    let mut s = PoolSpec::new(PoolName::new("sim").unwrap(), "img");
    s.min_warm = 1;
    s.max_warm = Some(100);
    s.max_total = 500;
    s.scaling.batch_size = 8;
    s.scaling.pacing_ms = 200;
    s.scaling.cooldown_secs = 60;
    s.scaling.target_hit_rate = Some(0.99);
    s
}

/// A fixed target of `n`: the pool's spec with `min_warm = max_warm = n`.
fn fixed(n: u32) -> PoolSpec {
    let mut s = spec();
    s.min_warm = n;
    s.max_warm = Some(n);
    s.scaling.target_hit_rate = None;
    s
}

/// Warm-up 1.2 s median, 3 s p99 (a cold `docker run` plus the first health probe); sessions
/// wait up to 5 s for a container.
fn model() -> PoolModel {
    let warm = WarmTime::LogNormal {
        median_ms: 1_200,
        p99_ms: 3_000,
    };
    let mut m = PoolModel::new(warm, 5_000);
    m.seed = 7;
    m
}

fn traces() -> Vec<(&'static str, Trace)> {
    // Sessions: median 20 s, a long tail (log-normal, sigma 1: mean 33 s).
    let hold = Hold::LogNormal {
        median_ms: 20_000,
        sigma: 1.0,
    };
    let secs = HOURS * 3600.0;
    vec![
        (
            "bursty",
            Bursty {
                quiet_rate_per_s: 0.2,
                burst_rate_per_s: 6.0,
                mean_gap_s: 600.0,
                burst_s: 60.0,
                duration_s: secs,
                hold: hold.clone(),
            }
            .generate(1),
        ),
        (
            "diurnal",
            Diurnal {
                mean_rate_per_s: 1.0,
                amplitude: 0.8,
                period_s: 7200.0,
                duration_s: secs,
                hold: hold.clone(),
            }
            .generate(2),
        ),
        (
            "steady",
            Steady {
                rate_per_s: 1.0,
                duration_s: secs,
                hold,
            }
            .generate(3),
        ),
    ]
}

struct Row {
    trace: &'static str,
    policy: String,
    r: SimReport,
}

/// The smallest fixed target whose mean idle warm pool is at least `mean_warm`, with `run`
/// replaying a fixed target. A fixed pool of N holds at most N warm, so the search starts at
/// the mean rounded up.
fn fixed_with_idle_at_least(
    run: &mut impl FnMut(u32) -> SimReport,
    mean_warm: f64,
) -> (u32, SimReport) {
    let mut n = mean_warm.ceil() as u32;
    loop {
        let r = run(n);
        if r.mean_warm >= mean_warm || n >= 100 {
            return (n, r);
        }
        n += 1;
    }
}

fn report(rows: &[Row]) -> String {
    let mut t = Table::new(&[
        ("trace", Align::Left),
        ("policy", Align::Left),
        ("arrivals", Align::Right),
        ("hit rate", Align::Right),
        ("p99 wait", Align::Right),
        ("refused", Align::Right),
        ("idle container-s", Align::Right),
        ("mean warm", Align::Right),
        ("mean wanted", Align::Right),
    ]);
    for row in rows {
        let r = &row.r;
        t.row(vec![
            row.trace.to_string(),
            row.policy.clone(),
            r.arrivals.to_string(),
            format!("{:.2}%", r.hit_rate * 100.0),
            format!("{} ms", r.wait_p99_ms),
            r.refused.to_string(),
            format!("{:.0}", r.idle_container_seconds),
            format!("{:.2}", r.mean_warm),
            format!("{:.2}", r.mean_wanted),
        ]);
    }
    t.render()
}

/// Runs every trace under the scaler and the fixed policies on `m`, prints the report, and
/// checks the claim on the bursty trace.
fn compare(m: &PoolModel, fleet: &str, traces: Vec<(&'static str, Trace)>) {
    let scaler = spec();
    let mut rows = Vec::new();
    let mut bursty = None;
    for (name, trace) in traces {
        let s = simulate(&trace, m, &scaler);
        // Each fixed target replayed once, however many rows show it.
        let mut replayed = std::collections::BTreeMap::new();
        let mut run = |n: u32| {
            replayed
                .entry(n)
                .or_insert_with(|| simulate(&trace, m, &fixed(n)))
                .clone()
        };
        let (n_idle, same_idle) = fixed_with_idle_at_least(&mut run, s.mean_warm);
        let n_mean = s.mean_wanted.round() as u32;
        let mean_target = run(n_mean);
        if name == "bursty" {
            bursty = Some((s.clone(), same_idle.clone(), mean_target.clone()));
        }
        rows.push(Row {
            trace: name,
            policy: "scaler 1..100, target 99%".into(),
            r: s,
        });
        if let Some(n) = n_idle.checked_sub(1) {
            rows.push(Row {
                trace: name,
                policy: format!("fixed {n} (less idle)"),
                r: run(n),
            });
        }
        rows.push(Row {
            trace: name,
            policy: format!("fixed {n_idle} (same idle)"),
            r: same_idle,
        });
        if n_mean != n_idle && n_mean + 1 != n_idle {
            rows.push(Row {
                trace: name,
                policy: format!("fixed {n_mean} (mean target)"),
                r: mean_target,
            });
        }
    }
    println!(
        "\n{HOURS} h per trace; {fleet}; warm-up {}; batches of {} every {} ms; sessions wait up to {} ms\n\n{}",
        m.warm_time.describe(),
        scaler.scaling.batch_size,
        scaler.scaling.pacing_ms,
        m.wait_ms,
        report(&rows)
    );

    let (s, same_idle, mean_target) = bursty.expect("the bursty trace ran");
    assert!(
        s.idle_container_seconds <= same_idle.idle_container_seconds,
        "the fixed pool had at least the scaler's idle budget"
    );
    assert!(
        s.hit_rate > same_idle.hit_rate,
        "bursty: the scaler must serve more warm than a fixed target at the same idle cost \
         ({:.4} vs {:.4})",
        s.hit_rate,
        same_idle.hit_rate
    );
    assert!(
        s.hit_rate > mean_target.hit_rate,
        "bursty: the scaler must beat a fixed target at its own mean target"
    );
}

/// Two hosts that start four containers each at once, with room for 400 of the pool's
/// containers, and released ones holding their place for 1.5 s. The bursts then ask for more
/// than the fleet makes, which a fixed pool cannot make up for either.
fn limited() -> PoolModel {
    PoolModel {
        create_slots: Some(8),
        fleet_slots: Some(400),
        teardown_time: Some(WarmTime::Fixed { ms: 1_500 }),
        ..model()
    }
}

const UNLIMITED: &str = "a fleet that starts any number at once";
const LIMITED: &str = "2 hosts, 8 started at once, room for 400, teardowns 1.5 s";

fn bursty() -> Vec<(&'static str, Trace)> {
    traces()
        .into_iter()
        .filter(|(n, _)| *n == "bursty")
        .collect()
}

#[test]
fn demand_driven_scaling_beats_fixed_targets_on_bursty_traffic() {
    compare(&model(), UNLIMITED, bursty());
}

#[test]
fn demand_driven_scaling_beats_fixed_targets_on_a_limited_fleet() {
    compare(&limited(), LIMITED, bursty());
}

/// Every trace on both fleets: the README's table.
#[test]
#[ignore]
fn every_trace_on_both_fleets() {
    compare(&model(), UNLIMITED, traces());
    compare(&limited(), LIMITED, traces());
}

#[test]
fn simulations_are_deterministic() {
    // The bursty trace's first ten minutes: a burst and the quiet after it.
    let (_, whole) = traces().remove(0);
    let end = whole.start_ms + 600_000;
    let trace = Trace::new(
        whole
            .arrivals
            .into_iter()
            .filter(|a| a.at_ms < end)
            .collect(),
        whole.start_ms,
        end,
    );
    let p = spec();
    assert_eq!(
        simulate(&trace, &model(), &p),
        simulate(&trace, &model(), &p)
    );
}
