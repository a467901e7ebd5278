//! `poolctl simulate`: replay a pool's recorded demand against a proposed policy.
//!
//! The history comes from the control plane's event log (allocations with their holds, and
//! measured warm-up times; see [`History::from_events`]) or from a trace file. Both the pool's
//! current policy and the proposed one (the current spec with the flags applied) are replayed on
//! the same trace and pool model by the control plane's own leader engine and state machine
//! (`warmpool_control_plane::sim`), and shown side by side.
//!
//! When the history is the pool's own, the model has the fleet's limits as it is now (see
//! [`Fleet`]): how many containers of the pool its nodes hold, how many their agents make at
//! once, and how long a released container keeps its place. Without them a burst would be met
//! by a fleet that starts any number of containers at once.
//!
//! Everything but fetching is pure and tested here.

use std::collections::HashMap;

use serde::Serialize;
use warmpool_policy::{History, Policy, PoolModel, SimReport, Trace, WarmTime};
use warmpool_proto::api::{EventQuery, NodeView};
use warmpool_proto::records::NodeStatus;
use warmpool_proto::{Container, Event, EventKind, NodeId, PoolName, PoolSpec};

use crate::args::SimulateArgs;
use crate::client::Client;
use crate::error::ClientError;
use crate::render::{compact_secs, Align, Table};

/// Events asked for per page when reading a pool's history (the API's maximum).
pub const EVENT_PAGE: usize = 1000;

/// The event kinds a history is built from.
pub const HISTORY_KINDS: [EventKind; 6] = [
    EventKind::ContainerCreated,
    EventKind::ContainerWarm,
    EventKind::ContainerAllocated,
    EventKind::ContainerReleased,
    EventKind::ContainerTerminated,
    EventKind::ContainerFailed,
];

/// Agents that do not say how many containers they make at once make this many (the
/// agent's default).
pub const DEFAULT_CREATE_SLOTS: u32 = 4;

/// What the fleet can do for one pool, as it is now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fleet {
    /// Ready nodes.
    pub nodes: usize,
    /// Containers of the pool they hold at once: what each node's allocatable resources
    /// leave after the other pools' containers, in the pool's resource limits.
    pub slots: u32,
    /// Containers their agents make at once, per node.
    pub create_slots: HashMap<NodeId, u32>,
}

impl Fleet {
    /// The fleet for `spec` from the nodes and the pool's live containers. Only ready nodes
    /// with the pool's constraint labels take its new containers, so only they count.
    pub fn new(nodes: &[NodeView], spec: &PoolSpec, own: &[Container]) -> Fleet {
        let per = &spec.resources;
        let mut slots = 0u64;
        let mut create_slots = HashMap::new();
        let takes = |n: &NodeView| {
            n.node.status == NodeStatus::Ready
                && spec
                    .constraints
                    .iter()
                    .all(|(k, v)| n.node.labels.get(k) == Some(v))
        };
        for n in nodes.iter().filter(|n| takes(n)) {
            let mine = own
                .iter()
                .filter(|c| c.node == n.node.id && c.state.is_live())
                .count() as u64;
            // The pool's own containers are in `reserved`: add them back.
            let own = |one: u64, reserved: u64| reserved.saturating_sub(one.saturating_mul(mine));
            let fit = warmpool_policy::rules::fits(
                (n.allocatable.cpu_millis, n.allocatable.memory_mb),
                (
                    own(per.cpu_millis, n.reserved.cpu_millis),
                    own(per.memory_mb, n.reserved.memory_mb),
                ),
                (per.cpu_millis, per.memory_mb),
            );
            slots = slots.saturating_add(fit.count());
            create_slots.insert(
                n.node.id.clone(),
                n.create_slots.unwrap_or(DEFAULT_CREATE_SLOTS),
            );
        }
        Fleet {
            nodes: create_slots.len(),
            slots: u32::try_from(slots).unwrap_or(u32::MAX),
            create_slots,
        }
    }

    /// Create slots of `node`; a node not ready now (or unknown) counts as the default.
    pub fn create_slots_of(&self, node: Option<&NodeId>) -> u32 {
        node.and_then(|n| self.create_slots.get(n))
            .copied()
            .unwrap_or(DEFAULT_CREATE_SLOTS)
    }

    /// Create slots across the fleet.
    pub fn total_create_slots(&self) -> u32 {
        self.create_slots.values().sum()
    }
}

/// The query for the page of `pool`'s history after event `after`.
pub fn history_query(pool: &PoolName, after: u64) -> EventQuery {
    EventQuery {
        after: Some(after),
        limit: Some(EVENT_PAGE),
        pool: Some(pool.to_string()),
        kind: Some(
            HISTORY_KINDS
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(","),
        ),
        ..EventQuery::default()
    }
}

/// Every retained event of `pool`'s history, oldest first, paging with `after`.
pub async fn fetch_history(client: &Client, pool: &PoolName) -> Result<Vec<Event>, ClientError> {
    let mut events: Vec<Event> = Vec::new();
    let mut after = 0;
    loop {
        let page = client.events(&history_query(pool, after)).await?;
        let full = page.len() >= EVENT_PAGE;
        match page.last() {
            // A server that answers the same page again would loop forever: stop instead.
            Some(last) if last.seq > after => after = last.seq,
            _ => break,
        }
        events.extend(page);
        if !full {
            break;
        }
    }
    Ok(events)
}

/// The proposed spec: `current` with the policy flags applied, checked.
pub fn proposed_spec(current: &PoolSpec, a: &SimulateArgs) -> Result<PoolSpec, String> {
    let mut spec = current.clone();
    if let Some(n) = a.fixed {
        spec.min_warm = n;
        spec.max_warm = Some(n);
        spec.scaling.target_hit_rate = None;
    }
    if let Some(n) = a.min_warm {
        spec.min_warm = n;
        if a.max_warm.is_none() && spec.max_warm.is_some_and(|m| m < n) {
            spec.max_warm = Some(n);
        }
    }
    if let Some(n) = a.max_warm {
        spec.max_warm = Some(n);
    }
    if let Some(p) = a.target_hit_rate {
        spec.scaling.target_hit_rate = Some(p);
    }
    if let Some(s) = a.cooldown_secs {
        spec.scaling.cooldown_secs = s;
    }
    if let Some(s) = a.lease_seconds {
        spec.lease_seconds = s;
    }
    if spec.max_warm() > spec.max_total {
        spec.max_total = spec.max_warm();
    }
    spec.validate()
        .map_err(|e| format!("the proposed policy: {}", e.0))?;
    Ok(spec)
}

/// One policy's run.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// `current` or `proposed`.
    pub name: String,
    /// The policy, in words.
    pub summary: String,
    /// The policy.
    pub policy: Policy,
    /// What happened.
    pub report: SimReport,
}

/// What was replayed.
#[derive(Debug, Clone, Serialize)]
pub struct TraceSummary {
    /// Where it came from: `events of pool demo` or a file name.
    pub source: String,
    /// Allocation attempts.
    pub arrivals: usize,
    /// Span, seconds.
    pub duration_s: f64,
    /// Start of the span, ms since the epoch for a pool's history.
    pub start_ms: u64,
    /// End of the span, ms.
    pub end_ms: u64,
    /// Warm containers at the start of the current policy's run, when the log shows them.
    pub start_warm: Option<u32>,
    /// Mean attempts per second.
    pub mean_rate_per_s: f64,
    /// Allocations still open at the end of the history (held until then).
    pub open_allocations: usize,
    /// The warm-up times used: from a container's start to warm.
    pub warm_time: String,
    /// The fleet as it is now, when the history is the pool's own.
    pub fleet: Option<Fleet>,
    /// Room for the pool's containers in the replay (the fleet's, or `--fleet-slots`).
    pub fleet_slots: Option<u32>,
    /// Containers started at once in the replay (the fleet's, or `--create-slots`).
    pub create_slots: Option<u32>,
    /// The teardown times used, when the fleet's limits are modelled.
    pub teardown_time: Option<String>,
    /// Containers removed at once in the replay (the agents' destroy slots, across the
    /// fleet's nodes), when the fleet's limits are modelled.
    pub destroy_slots: Option<u32>,
    /// How long a replayed allocation waits for a warm container, ms.
    pub wait_ms: u64,
    /// Replays per policy, averaged.
    pub runs: u32,
}

/// The answer of `poolctl simulate`.
#[derive(Debug, Clone, Serialize)]
pub struct SimulationView {
    /// The pool, when one was given.
    pub pool: Option<PoolName>,
    /// The trace.
    pub trace: TraceSummary,
    /// The runs, current first.
    pub runs: Vec<Run>,
}

/// A policy in a few words: `fixed 3`, or `2..20, target 99%, cool-down 1m`.
pub fn describe_policy(p: &Policy) -> String {
    if p.is_fixed() {
        return format!("fixed {}", p.min_warm);
    }
    let target = match p.target_hit_rate {
        Some(t) => format!("target {}", percent(t)),
        None => "cover the mean".to_string(),
    };
    format!(
        "{}..{}, {target}, cool-down {}",
        p.min_warm,
        p.max_warm,
        compact_secs(p.cooldown_ms / 1000)
    )
}

fn percent(v: f64) -> String {
    let s = format!("{:.2}", v * 100.0);
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}%")
}

/// Runs the simulations: `current` (when there is a current spec) and `proposed`.
///
/// `warm_time_ms` overrides the measured warm-up times; `lease_seconds` caps the proposed run's
/// holds (as if no session renewed past that lease). With a `fleet`, the model has its limits:
/// its slots for the pool, its agents' create slots (the measured warm-ups are then counted
/// from when a container got a slot, see [`History::start_times_ms`]) and the measured
/// teardowns; both kinds of times are drawn nearest in time ([`WarmTime::Timed`]), so a
/// stretch when the host was slow stays where it was. The current run starts with the pool as
/// the log shows it at the first arrival; the proposed one with its own wanted count warm.
pub fn simulate(
    pool: Option<PoolName>,
    source: String,
    history: &History,
    current: Option<&PoolSpec>,
    proposed: &PoolSpec,
    fleet: Option<&Fleet>,
    a: &SimulateArgs,
) -> SimulationView {
    let samples = |ms: Vec<u64>| (!ms.is_empty()).then_some(WarmTime::Samples { ms });
    let timed = |v: Vec<(u64, u64)>| (!v.is_empty()).then(|| WarmTime::timed(v));
    let measured = match fleet {
        Some(f) => timed(history.start_times_ms(|n| f.create_slots_of(n))),
        None => samples(history.warm_times_ms.clone()),
    };
    let warm_time = match a.warm_time_ms {
        Some(ms) => WarmTime::Fixed { ms },
        None => measured.unwrap_or(WarmTime::Fixed {
            ms: warmpool_policy::sim::DEFAULT_WARM_MS,
        }),
    };
    let mut model = PoolModel::new(warm_time.clone(), a.wait_ms);
    model.seed = a.seed;
    // Either policy would have watched the pool as the live one did before the first arrival.
    model.before = history.before();
    if let Some(f) = fleet {
        // Each node's agent removes a few containers at once: the teardowns less the wait
        // for that, across the fleet's nodes (the replay's one node has all their slots, as it
        // has all their create slots).
        let slots = warmpool_proto::agent::DESTROY_SLOTS.saturating_mul(f.nodes.max(1));
        model.teardown_time = timed(history.destroy_times_ms(slots));
        model.destroy_slots = Some(u32::try_from(slots).unwrap_or(u32::MAX));
        model.fleet_slots = Some(f.slots);
        model.create_slots = Some(f.total_create_slots());
    }
    // What-ifs replace the fleet's numbers (or give a trace file some).
    model.fleet_slots = a.fleet_slots.or(model.fleet_slots);
    model.create_slots = a.create_slots.or(model.create_slots);
    let limited = model.fleet_slots.is_some() || model.create_slots.is_some();
    let teardown_time = limited.then(|| {
        model
            .teardown_time
            .as_ref()
            .map_or_else(|| "none measured: at once".to_string(), WarmTime::describe)
    });
    let mut runs = Vec::new();
    let mut run = |name: &str, spec: &PoolSpec, trace: &Trace, start_warm: Option<u32>| {
        let policy = Policy::from_spec(spec);
        let model = PoolModel {
            start_warm,
            ..model.clone()
        };
        // One run per seed, from `--seed` on, averaged.
        let reports: Vec<SimReport> = (0..a.runs.max(1))
            .map(|i| {
                let model = PoolModel {
                    seed: model.seed.wrapping_add(u64::from(i)),
                    // The mean shows the first run's.
                    timeline: a.timeline && i == 0,
                    ..model.clone()
                };
                warmpool_control_plane::sim::simulate(trace, &model, spec)
            })
            .collect();
        let report = SimReport::mean(&reports).expect("at least one run");
        runs.push(Run {
            name: name.to_string(),
            summary: describe_policy(&policy),
            policy,
            report,
        });
    };
    if let Some(spec) = current.filter(|_| !a.only_proposed) {
        run("current", spec, &history.trace, history.start_warm);
    }
    let capped;
    let proposed_trace = match a.lease_seconds {
        Some(s) => {
            capped = history.trace.with_holds_capped(s.saturating_mul(1000));
            &capped
        }
        None => &history.trace,
    };
    run("proposed", proposed, proposed_trace, None);
    let t = &history.trace;
    SimulationView {
        pool,
        trace: TraceSummary {
            source,
            arrivals: t.arrivals.len(),
            duration_s: t.duration_ms() as f64 / 1000.0,
            start_ms: t.start_ms,
            end_ms: t.end_ms,
            start_warm: history.start_warm,
            mean_rate_per_s: t.mean_rate_per_s(),
            open_allocations: history.open_allocations,
            warm_time: warm_time.describe(),
            fleet: fleet.cloned(),
            fleet_slots: model.fleet_slots,
            create_slots: model.create_slots,
            teardown_time,
            destroy_slots: model.destroy_slots,
            wait_ms: a.wait_ms,
            runs: a.runs.max(1),
        },
        runs,
    }
}

/// The table of `poolctl simulate`.
pub fn render(v: &SimulationView) -> String {
    let t = &v.trace;
    let mut out = format!(
        "{}: {} allocations over {} ({:.3}/s){}\nwarm-up: {}; allocations wait up to {} ms{}\n",
        t.source,
        t.arrivals,
        compact_secs(t.duration_s.round() as u64),
        t.mean_rate_per_s,
        match t.open_allocations {
            0 => String::new(),
            n => format!(", {n} still open"),
        },
        t.warm_time,
        t.wait_ms,
        match t.runs {
            1 => String::new(),
            n => format!("; the mean of {n} runs"),
        },
    );
    if let Some(teardown) = &t.teardown_time {
        let any = |n: Option<u32>| n.map_or_else(|| "any number".to_string(), |n| n.to_string());
        let now = match &t.fleet {
            Some(f)
                if Some(f.slots) == t.fleet_slots
                    && Some(f.total_create_slots()) == t.create_slots =>
            {
                format!(
                    "now, {} ready node{}",
                    f.nodes,
                    if f.nodes == 1 { "" } else { "s" }
                )
            }
            _ => "as asked".to_string(),
        };
        out.push_str(&format!(
            "fleet ({now}): room for {} of the pool's containers, {} started at once; teardown: {teardown}\n",
            any(t.fleet_slots),
            any(t.create_slots),
        ));
    }
    out.push('\n');
    let mut cols: Vec<(&str, Align)> = vec![("", Align::Left)];
    cols.extend(v.runs.iter().map(|r| (r.name.as_str(), Align::Right)));
    let mut table = Table::new(&cols);
    let mut row = |label: &str, cell: &dyn Fn(&Run) -> String| {
        let mut cells = vec![label.to_string()];
        cells.extend(v.runs.iter().map(cell));
        table.row(cells);
    };
    row("policy", &|r| r.summary.clone());
    row("hit rate", &|r| percent_fixed(r.report.hit_rate));
    row("wait mean", &|r| format!("{} ms", r.report.wait_mean_ms));
    row("wait p50", &|r| format!("{} ms", r.report.wait_p50_ms));
    row("wait p99", &|r| format!("{} ms", r.report.wait_p99_ms));
    row("refused", &|r| r.report.refused.to_string());
    row("idle container-s", &|r| {
        format!("{:.0}", r.report.idle_container_seconds)
    });
    row("allocated container-s", &|r| {
        format!("{:.0}", r.report.allocated_container_seconds)
    });
    row("mean warm", &|r| format!("{:.2}", r.report.mean_warm));
    if v.runs
        .iter()
        .any(|r| r.report.paused_container_seconds > 0.0)
    {
        row("served paused", &|r| r.report.paused_hits.to_string());
        row("paused container-s", &|r| {
            format!("{:.0}", r.report.paused_container_seconds)
        });
    }
    row("mean wanted", &|r| format!("{:.2}", r.report.mean_wanted));
    row("containers made", &|r| r.report.created.to_string());
    out.push_str(&table.render());
    out
}

fn percent_fixed(v: f64) -> String {
    format!("{:.2}%", v * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::{Cli, Command};
    use clap::Parser;
    use warmpool_policy::Arrival;

    fn args(extra: &[&str]) -> SimulateArgs {
        let cli = Cli::try_parse_from(["poolctl", "simulate", "demo"].iter().chain(extra)).unwrap();
        match cli.command {
            Command::Simulate(a) => a,
            other => panic!("{other:?}"),
        }
    }

    fn spec() -> PoolSpec {
        let mut s = PoolSpec::new(PoolName::new("demo").unwrap(), "img");
        s.min_warm = 3;
        s
    }

    #[test]
    fn flags_make_the_proposed_spec() {
        let p = proposed_spec(
            &spec(),
            &args(&[
                "--min-warm",
                "1",
                "--max-warm",
                "20",
                "--target-hit-rate",
                "0.99",
                "--cooldown-secs",
                "30",
            ]),
        )
        .unwrap();
        assert_eq!((p.min_warm, p.max_warm()), (1, 20));
        assert_eq!(p.scaling.target_hit_rate, Some(0.99));
        assert_eq!(p.scaling.cooldown_secs, 30);

        let p = proposed_spec(&p, &args(&["--fixed", "7"])).unwrap();
        assert_eq!(
            (p.min_warm, p.max_warm(), p.scaling.target_hit_rate),
            (7, 7, None)
        );

        // Raising the floor above an old ceiling lifts the ceiling with it.
        let mut s = spec();
        s.max_warm = Some(4);
        let p = proposed_spec(&s, &args(&["--min-warm", "6"])).unwrap();
        assert_eq!(p.max_warm(), 6);
        // A ceiling beyond max_total raises max_total: the proposal is about warm counts.
        let p = proposed_spec(&spec(), &args(&["--max-warm", "500"])).unwrap();
        assert_eq!(p.max_total, 500);

        let err = proposed_spec(&spec(), &args(&["--min-warm", "5", "--max-warm", "2"]));
        assert!(err
            .unwrap_err()
            .contains("max_warm (2) is below min_warm (5)"));
    }

    #[test]
    fn bad_flags_are_usage_errors() {
        for bad in [
            vec!["simulate"],
            vec!["simulate", "demo", "--target-hit-rate", "1.5"],
            vec!["simulate", "demo", "--target-hit-rate", "x"],
            vec!["simulate", "demo", "--fixed", "3", "--min-warm", "1"],
            vec!["simulate", "demo", "--create-slots", "0"],
            vec!["simulate", "demo", "--runs", "0"],
            vec!["simulate", "demo", "--fleet-slots", "-1"],
        ] {
            let err = Cli::try_parse_from(std::iter::once("poolctl").chain(bad.iter().copied()))
                .expect_err(&format!("{bad:?}"));
            assert_eq!(err.exit_code(), 2, "{bad:?}");
        }
        assert!(Cli::try_parse_from(["poolctl", "simulate", "--trace", "t.csv"]).is_ok());
    }

    #[test]
    fn history_pages_ask_for_the_right_events() {
        let q = history_query(&PoolName::new("demo").unwrap(), 41);
        assert_eq!(q.after, Some(41));
        assert_eq!(q.limit, Some(1000));
        assert_eq!(q.pool.as_deref(), Some("demo"));
        assert_eq!(
            q.kind.as_deref(),
            Some(
                "container_created,container_warm,container_allocated,container_released,\
                 container_terminated,container_failed"
            )
        );
        assert_eq!(q.before, None);
    }

    fn history() -> History {
        // One allocation every 10 s for 10 minutes, each held 5 s.
        let arrivals = (0..60)
            .map(|i| Arrival {
                at_ms: i * 10_000,
                hold_ms: 5_000,
            })
            .collect();
        History {
            warm_times_ms: vec![900, 1_100, 1_000],
            open_allocations: 1,
            ..History::of_trace(Trace::new(arrivals, 0, 600_000))
        }
    }

    /// The pool's history replayed under its current spec, with `flags`.
    fn replay_current(flags: &[&str]) -> SimulationView {
        let current = spec();
        let a = args(flags);
        simulate(
            None,
            "t".into(),
            &history(),
            Some(&current),
            &current,
            None,
            &a,
        )
    }

    #[test]
    fn the_timeline_is_the_idle_count_the_report_integrates() {
        let run = replay_current;
        assert!(run(&["--runs", "1"]).runs[0]
            .report
            .idle_timeline
            .is_empty());
        let r = run(&["--runs", "1", "--timeline"]).runs[0].report.clone();
        let t = &r.idle_timeline;
        assert_eq!(
            t[0],
            [0, 2],
            "three warm, one taken at once by the arrival at 0: {t:?}"
        );
        assert!(
            t.windows(2)
                .all(|w| w[0][0] < w[1][0] && w[0][1] != w[1][1]),
            "{t:?}"
        );
        // Integrated over the span, it is the report's idle container-seconds.
        let end = (r.duration_s * 1000.0).round() as u64;
        let integral: u64 = t
            .iter()
            .zip(t.iter().skip(1).map(|p| p[0]).chain([end]))
            .map(|(p, until)| p[1] * (until - p[0]))
            .sum();
        assert!(
            (integral as f64 / 1000.0 - r.idle_container_seconds).abs() < 1e-6,
            "{integral} ms against {r:?}"
        );
        // Of the first draw, in a mean of several.
        let three = run(&["--runs", "3", "--timeline"]).runs[0].report.clone();
        assert_eq!(three.idle_timeline, r.idle_timeline);
    }

    #[test]
    fn current_and_proposed_side_by_side() {
        let current = spec();
        let a = args(&["--fixed", "0", "--lease-seconds", "2"]);
        let proposed = proposed_spec(&current, &a).unwrap();
        let v = simulate(
            Some(PoolName::new("demo").unwrap()),
            "events of pool demo".into(),
            &history(),
            Some(&current),
            &proposed,
            None,
            &a,
        );
        assert_eq!(v.runs.len(), 2);
        let (cur, prop) = (&v.runs[0].report, &v.runs[1].report);
        assert_eq!(cur.hit_rate, 1.0, "3 warm cover one arrival per 10 s");
        assert_eq!(prop.hits, 0, "an empty pool never hits");
        assert!(
            (prop.allocated_container_seconds - 120.0).abs() < 1e-6,
            "holds capped at the 2 s lease: {prop:?}"
        );
        assert!(cur.idle_container_seconds > 1700.0);
        assert_eq!(
            v.trace.warm_time,
            "measured (3 samples, p50 1000 ms, p99 1100 ms)"
        );

        let text = render(&v);
        assert!(
            text.starts_with(
                "events of pool demo: 60 allocations over 10m (0.100/s), 1 still open\n\
                 warm-up: measured (3 samples, p50 1000 ms, p99 1100 ms); allocations wait up to 5000 ms; \
                 the mean of 5 runs\n"
            ),
            "{text}"
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[3].split_whitespace().collect::<Vec<_>>(),
            ["current", "proposed"]
        );
        let words = |i: usize| lines[i].split_whitespace().collect::<Vec<_>>();
        assert_eq!(words(4), ["policy", "fixed", "3", "fixed", "0"], "{text}");
        assert_eq!(words(5), ["hit", "rate", "100.00%", "0.00%"], "{text}");
        assert_eq!(words(6)[..2], ["wait", "mean"], "{text}");
        assert_eq!(words(9), ["refused", "0", "0"], "{text}");

        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["runs"][1]["name"], "proposed");
        assert_eq!(json["runs"][0]["report"]["hits"], 60);
        assert_eq!(json["trace"]["arrivals"], 60);

        // --only-proposed, and a warm-up override.
        let a = args(&["--only-proposed", "--warm-time-ms", "1500"]);
        let v = simulate(
            None,
            "t.csv".into(),
            &history(),
            Some(&current),
            &current,
            None,
            &a,
        );
        assert_eq!(v.runs.len(), 1);
        assert_eq!(v.trace.warm_time, "fixed 1500 ms");

        // --runs averages over seeds: one run is that seed's alone, three the mean of three.
        let run_with = replay_current;
        let one = |seed: &str| {
            run_with(&["--runs", "1", "--seed", seed]).runs[0]
                .report
                .clone()
        };
        let three = run_with(&["--runs", "3", "--seed", "4"]);
        assert_eq!(
            three.runs[0].report,
            SimReport::mean(&[one("4"), one("5"), one("6")]).unwrap()
        );
    }

    fn node(
        id: &str,
        status: NodeStatus,
        reserved_cpu: u64,
        reserved_mem: u64,
        slots: Option<u32>,
    ) -> NodeView {
        use warmpool_proto::records::{Node, Resources};
        NodeView {
            node: Node {
                id: NodeId::new(id).unwrap(),
                ipv6_prefix: "fd36:1::/64".into(),
                labels: Default::default(),
                capacity: Resources {
                    cpu_millis: 2_000,
                    memory_mb: 4_096,
                },
                status,
                agent_version: "0.1.0".into(),
                joined_at: warmpool_proto::Timestamp(0),
                status_changed_at: warmpool_proto::Timestamp(0),
                reason: None,
                drain_deadline: None,
                unreachable: None,
            },
            last_heartbeat_at: None,
            heartbeat_age_ms: None,
            memory_fraction: None,
            create_slots: slots,
            allocatable: Resources {
                cpu_millis: 16_000,
                memory_mb: 4_096,
            },
            reserved: Resources {
                cpu_millis: reserved_cpu,
                memory_mb: reserved_mem,
            },
            counts: Default::default(),
            condition: None,
        }
    }

    #[test]
    fn the_fleet_is_what_ready_nodes_leave_for_the_pool() {
        // Pool containers of 500 millicores and 128 MiB: 16 000 allocatable millicores hold
        // 32, 4 096 MiB hold 32. Node a reserves 5000 millicores: two of the pool's own
        // containers (1000, added back) and 4000 of other pools, which leave room for 24.
        // Node b is empty: 32. Node c drains: none.
        let mut spec = spec();
        spec.resources.cpu_millis = 500;
        spec.resources.memory_mb = 128;
        let nodes = [
            node("a", NodeStatus::Ready, 5_000, 256, Some(2)),
            node("b", NodeStatus::Ready, 0, 0, None),
            node("c", NodeStatus::Draining, 0, 0, Some(9)),
        ];
        let own: Vec<Container> = ["a", "a", "c"]
            .into_iter()
            .map(|n| Container {
                state: warmpool_proto::ContainerState::Warm,
                ..Container::planned(
                    warmpool_proto::ContainerId::new(),
                    PoolName::new("demo").unwrap(),
                    NodeId::new(n).unwrap(),
                    1,
                    8080,
                    warmpool_proto::Timestamp(0),
                )
            })
            .collect();
        let f = Fleet::new(&nodes, &spec, &own);
        assert_eq!((f.nodes, f.slots), (2, 24 + 32));
        assert_eq!(f.total_create_slots(), 2 + DEFAULT_CREATE_SLOTS);
        assert_eq!(f.create_slots_of(Some(&NodeId::new("a").unwrap())), 2);
        assert_eq!(f.create_slots_of(None), DEFAULT_CREATE_SLOTS);
        // A constraint leaves out the nodes without its label.
        let mut eu = spec.clone();
        eu.constraints.insert("region".into(), "eu".into());
        let mut labelled = nodes.clone();
        labelled[1].node.labels.insert("region".into(), "eu".into());
        let f = Fleet::new(&labelled, &eu, &own);
        assert_eq!((f.nodes, f.slots), (1, 32));
        // Memory binds when it is the scarcer: 1 GiB containers, 4 per empty node.
        spec.resources.memory_mb = 1_024;
        let empty = [nodes[1].clone(), nodes[1].clone()];
        assert_eq!(Fleet::new(&empty, &spec, &[]).slots, 4 + 4);
    }

    #[test]
    fn a_fleet_limits_how_fast_the_pool_refills() {
        // Ten allocations at once on a pool of 3; each container takes 1 s once started.
        let current = spec();
        let arrivals = (0..10)
            .map(|_| Arrival {
                at_ms: 1_000,
                hold_ms: 30_000,
            })
            .collect();
        let history = History::of_trace(Trace::new(arrivals, 1_000, 60_000));
        let a = args(&["--warm-time-ms", "1000", "--wait-ms", "20000"]);
        let on_with = |fleet: Option<&Fleet>, a: &SimulateArgs| {
            simulate(
                None,
                "t".into(),
                &history,
                Some(&current),
                &current,
                fleet,
                a,
            )
        };
        let on = |fleet: Option<&Fleet>| on_with(fleet, &a);
        let unbounded = on(None);
        let mut fleet = Fleet {
            nodes: 1,
            slots: 100,
            create_slots: HashMap::from([(NodeId::new("a").unwrap(), 2)]),
        };
        let bounded = on(Some(&fleet));
        let p99 = |v: &SimulationView| v.runs[0].report.wait_p99_ms;
        // Unbounded: batches of up to 4, 200 ms apart, each warm 1 s after it is planned.
        // Two at a time: the seven waiters are served from 1 s to 4 s after they came, plus
        // what the leader's steps and its pacing of batches add (the replay runs its engine).
        assert!(p99(&unbounded) < 2_000, "{:?}", unbounded.runs[0].report);
        assert!(
            (4_000..4_500).contains(&p99(&bounded)),
            "{:?}",
            bounded.runs[0].report
        );
        assert!(render(&bounded).contains(
            "fleet (now, 1 ready node): room for 100 of the pool's containers, 2 started at once; \
             teardown: none measured: at once\n"
        ));
        // Each node's agent removes 16 at once; the replay has them all.
        assert_eq!(bounded.trace.destroy_slots, Some(16));
        assert_eq!(unbounded.trace.destroy_slots, None);
        let two = Fleet {
            nodes: 2,
            ..fleet.clone()
        };
        assert_eq!(on(Some(&two)).trace.destroy_slots, Some(32));
        // What-ifs: more room and more starts at once than the fleet has.
        let more = args(&[
            "--warm-time-ms",
            "1000",
            "--wait-ms",
            "20000",
            "--create-slots",
            "8",
        ]);
        let v = on_with(Some(&fleet), &more);
        assert!(p99(&v) < p99(&bounded), "{:?}", v.runs[0].report);
        assert!(render(&v).contains(
            "fleet (as asked): room for 100 of the pool's containers, 8 started at once"
        ));
        // ...and for a trace file, which has no fleet.
        let v = on_with(None, &more);
        assert_eq!(
            p99(&v),
            p99(&on(Some(&Fleet {
                create_slots: HashMap::from([(NodeId::new("a").unwrap(), 8)]),
                ..fleet.clone()
            })))
        );
        assert!(render(&v).contains(
            "fleet (as asked): room for any number of the pool's containers, 8 started at once"
        ));
        // A fleet with room for 5 serves two of the seven, and no more until a release.
        fleet.slots = 5;
        let full = on(Some(&fleet));
        assert_eq!(full.runs[0].report.refused, 5, "{:?}", full.runs[0].report);
    }

    /// A one-route HTTP server answering `GET /v1/events?after=N&limit=M...` from `events`
    /// (or, with `stuck`, always the first page); returns its URL and the `after`s asked for.
    async fn event_server(
        events: Vec<Event>,
        stuck: bool,
    ) -> (String, std::sync::Arc<std::sync::Mutex<Vec<u64>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = asked.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                let target = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                let param = |name: &str| {
                    target
                        .split(['?', '&'])
                        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                        .and_then(|v| v.parse::<u64>().ok())
                };
                let after = if stuck {
                    0
                } else {
                    param("after").unwrap_or(0)
                };
                log.lock().unwrap().push(param("after").unwrap_or(0));
                let limit = param("limit").unwrap_or(100) as usize;
                let page: Vec<&Event> = events
                    .iter()
                    .filter(|e| e.seq > after)
                    .take(limit)
                    .collect();
                let body = serde_json::to_vec(&page).unwrap();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.write_all(&body).await;
            }
        });
        (url, asked)
    }

    fn allocation_events(n: u64) -> Vec<Event> {
        let pool = PoolName::new("demo").unwrap();
        let mut out = Vec::new();
        for i in 0..n {
            let id = warmpool_proto::AllocationId::new();
            for (k, kind, at) in [
                (0, EventKind::ContainerAllocated, i * 1_000),
                (1, EventKind::ContainerReleased, i * 1_000 + 400),
            ] {
                out.push(Event {
                    seq: 2 * i + k + 1,
                    log_index: 2 * i + k + 1,
                    at: warmpool_proto::Timestamp(at),
                    kind,
                    pool: Some(pool.clone()),
                    container: None,
                    node: None,
                    session: None,
                    allocation: Some(id),
                    reason: None,
                    detail: None,
                });
            }
        }
        out
    }

    #[tokio::test]
    async fn the_history_is_read_page_by_page() {
        let (url, asked) = event_server(allocation_events(1_200), false).await;
        let client = Client::new(vec![url], None).unwrap();
        let pool = PoolName::new("demo").unwrap();
        let events = fetch_history(&client, &pool).await.unwrap();
        assert_eq!(events.len(), 2_400);
        assert_eq!(*asked.lock().unwrap(), vec![0, 1_000, 2_000]);
        let h = History::from_events(&events, Some(&pool)).unwrap();
        assert_eq!(h.trace.arrivals.len(), 1_200);
        assert!(h.trace.arrivals.iter().all(|a| a.hold_ms == 400));

        // A server that keeps answering the first page does not make us loop.
        let (url, asked) = event_server(allocation_events(600), true).await;
        let client = Client::new(vec![url], None).unwrap();
        let events = fetch_history(&client, &pool).await.unwrap();
        assert_eq!(events.len(), 1_000);
        assert_eq!(asked.lock().unwrap().len(), 2);
    }

    #[test]
    fn policies_in_words() {
        assert_eq!(describe_policy(&Policy::fixed(3)), "fixed 3");
        let mut s = spec();
        s.min_warm = 1;
        s.max_warm = Some(20);
        s.scaling.target_hit_rate = Some(0.995);
        assert_eq!(
            describe_policy(&Policy::from_spec(&s)),
            "1..20, target 99.5%, cool-down 1m"
        );
        s.scaling.target_hit_rate = None;
        assert_eq!(
            describe_policy(&Policy::from_spec(&s)),
            "1..20, cover the mean, cool-down 1m"
        );
    }
}
