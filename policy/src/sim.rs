//! What a replay of a pool is given and what it answers: the model of the world around the
//! control plane ([`PoolModel`]: warm-up and teardown times, the fleet's limits, how long
//! requesters wait) and the report of a run ([`SimReport`]).
//!
//! The replay itself is the control plane's: `warmpool_control_plane::sim` runs the leader's
//! engine and the replicated state machine on a virtual clock against a simulated fleet, so
//! every pool rule it applies is the one the control plane runs. These types live here, in
//! the pure crate, so that traces, histories and models are built and tested without it.

use crate::estimator::percentile_rank;
use crate::rng::Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Default warm-up time when nothing is measured, ms.
pub const DEFAULT_WARM_MS: u64 = 2_000;

/// How long a container takes from planned to warm.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum WarmTime {
    /// Always the same.
    Fixed {
        /// Warm-up, ms.
        ms: u64,
    },
    /// Uniform between two values.
    Uniform {
        /// Shortest, ms.
        min_ms: u64,
        /// Longest, ms.
        max_ms: u64,
    },
    /// Log-normal with this median and p99.
    LogNormal {
        /// Median, ms.
        median_ms: u64,
        /// 99th percentile, ms.
        p99_ms: u64,
    },
    /// Drawn from measured samples (e.g. from the event log).
    Samples {
        /// The samples, ms.
        ms: Vec<u64>,
    },
    /// Measured samples with when each was taken, ms: a container started at a time takes
    /// what the one measured nearest that time took. A host is slower while it is busy (with
    /// a burst of starts, or tearing down many containers at once); these keep that in the
    /// replay of its own history instead of spreading it over all of it.
    Timed {
        /// `[when, how long]` pairs, ms.
        samples: Vec<(u64, u64)>,
    },
}

impl WarmTime {
    /// Measured samples taken at these times; sorted by time.
    pub fn timed(mut samples: Vec<(u64, u64)>) -> WarmTime {
        samples.sort_unstable();
        WarmTime::Timed { samples }
    }

    /// Draws for one replay: see [`Draws`].
    pub fn draws(&self) -> Draws<'_> {
        Draws {
            time: self,
            unused: BTreeSet::new(),
        }
    }

    fn sample(&self, rng: &mut Rng) -> u64 {
        match self {
            WarmTime::Fixed { ms } => *ms,
            WarmTime::Uniform { min_ms, max_ms } => {
                let (lo, hi) = (*min_ms.min(max_ms), *min_ms.max(max_ms));
                lo + (rng.uniform() * (hi - lo) as f64) as u64
            }
            WarmTime::LogNormal { median_ms, p99_ms } => {
                let median = (*median_ms).max(1) as f64;
                let sigma = ((*p99_ms as f64 / median).max(1.0)).ln()
                    / crate::quantile::normal_quantile(0.99);
                let v = median * (sigma * rng.normal()).exp();
                if v.is_finite() {
                    v.round() as u64
                } else {
                    *median_ms
                }
            }
            WarmTime::Samples { ms } if ms.is_empty() => DEFAULT_WARM_MS,
            WarmTime::Samples { ms } => ms[rng.below(ms.len())],
            WarmTime::Timed { samples } if samples.is_empty() => DEFAULT_WARM_MS,
            WarmTime::Timed { samples } => samples[rng.below(samples.len())].1,
        }
    }

    /// A short description, e.g. `fixed 2000 ms` or `measured (340 samples, p50 1200 ms,
    /// p99 2300 ms)`.
    pub fn describe(&self) -> String {
        match self {
            WarmTime::Fixed { ms } => format!("fixed {ms} ms"),
            WarmTime::Uniform { min_ms, max_ms } => format!("uniform {min_ms}-{max_ms} ms"),
            WarmTime::LogNormal { median_ms, p99_ms } => {
                format!("log-normal, median {median_ms} ms, p99 {p99_ms} ms")
            }
            WarmTime::Samples { ms } if ms.is_empty() => {
                format!("no samples: fixed {DEFAULT_WARM_MS} ms")
            }
            WarmTime::Samples { ms } => describe_samples("measured", ms.clone()),
            WarmTime::Timed { samples } if samples.is_empty() => {
                format!("no samples: fixed {DEFAULT_WARM_MS} ms")
            }
            WarmTime::Timed { samples } => describe_samples(
                "measured, nearest in time",
                samples.iter().map(|(_, ms)| *ms).collect(),
            ),
        }
    }
}

/// A replay's draws from one [`WarmTime`].
///
/// Measured samples with their times ([`WarmTime::Timed`]) are replayed each once per pass
/// over them: something starting at `now` takes the unused sample taken nearest that time (the
/// earlier on a tie; one of those taken at that very time at random), and the samples are all
/// used again once every one has been. A node that started four containers at once, one of
/// them slow, thus starts four with the same four times in the replay, not four draws from
/// them: drawn with replacement, the first of the four to be warm is on average later than
/// the first was, and the slow one may come twice. The other kinds are independent draws.
#[derive(Debug)]
pub struct Draws<'a> {
    time: &'a WarmTime,
    /// Indexes of the samples not yet drawn in this pass ([`WarmTime::Timed`] only).
    unused: BTreeSet<usize>,
}

impl Draws<'_> {
    /// The time taken by something starting at `now`, ms.
    pub fn next(&mut self, now: u64, rng: &mut Rng) -> u64 {
        let WarmTime::Timed { samples } = self.time else {
            return self.time.sample(rng);
        };
        if samples.is_empty() {
            return DEFAULT_WARM_MS;
        }
        if self.unused.is_empty() {
            self.unused.extend(0..samples.len());
        }
        let i = samples.partition_point(|(at, _)| *at < now);
        let before = self.unused.range(..i).next_back().map(|&j| samples[j].0);
        let after = self.unused.range(i..).next().map(|&j| samples[j].0);
        let at = match (before, after) {
            (Some(b), Some(a)) if now - b > a - now => a,
            (Some(b), _) => b,
            (None, Some(a)) => a,
            (None, None) => return DEFAULT_WARM_MS,
        };
        let lo = samples.partition_point(|(t, _)| *t < at);
        let hi = samples.partition_point(|(t, _)| *t <= at);
        // One of the unused samples taken at that time; there is one at least (the one found).
        let k = rng.below(self.unused.range(lo..hi).count());
        let Some(&j) = self.unused.range(lo..hi).nth(k) else {
            return DEFAULT_WARM_MS;
        };
        self.unused.remove(&j);
        samples[j].1
    }
}

fn describe_samples(what: &str, mut v: Vec<u64>) -> String {
    v.sort_unstable();
    format!(
        "{what} ({} samples, p50 {} ms, p99 {} ms)",
        v.len(),
        v[percentile_rank(v.len(), 0.5)],
        v[percentile_rank(v.len(), 0.99)]
    )
}

/// The world around the control plane in a replay: how long containers take to start and to
/// go, what the fleet holds and starts at once, how long requesters wait. The pool itself
/// (its spec: sizes, batches, pacing, tiers, policy) is what the replay is given beside it.
///
/// Without `create_slots`, `fleet_slots` and `teardown_time` the fleet is unbounded: every
/// planned container starts at once and a released one is gone at once. With them, the model
/// has the limits a real fleet has: its agents make a few containers at a time, a node holds
/// so many, and a released container keeps its place until it is torn down.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoolModel {
    /// Warm-up times: from a container's start (at once when planned, or when it gets a
    /// create slot) to warm.
    pub warm_time: WarmTime,
    /// How long an allocation waits for a warm container before it is refused, ms.
    pub wait_ms: u64,
    /// Seed for warm-up times.
    pub seed: u64,
    /// Containers started at once across the fleet (its agents' create slots); the others
    /// planned wait their turn, first planned first served. None: no limit.
    #[serde(default)]
    pub create_slots: Option<u32>,
    /// Containers of this pool the fleet holds at once: creating, warm, allocated, and
    /// released ones until they are torn down. None: no limit but `max_total`.
    #[serde(default)]
    pub fleet_slots: Option<u32>,
    /// How long a released container keeps its place. None: it is gone at once.
    #[serde(default)]
    pub teardown_time: Option<WarmTime>,
    /// Containers removed at once, each for a `teardown_time`; the others wait their turn,
    /// first asked first served. None: no limit.
    #[serde(default)]
    pub destroy_slots: Option<u32>,
    /// Warm containers at the start (the paused tier, if the pool has one, starts full
    /// besides). None: the pool's first wanted count.
    #[serde(default)]
    pub start_warm: Option<u32>,
    /// What the leader had seen of the pool before the trace starts.
    #[serde(default)]
    pub before: Before,
    /// Whether the report keeps [`SimReport::idle_timeline`]: off unless asked, as a long
    /// trace changes the warm count millions of times.
    #[serde(default)]
    pub timeline: bool,
}

/// What the control plane's scaler knows of a pool when the trace's first arrival comes: it
/// has watched the pool since the leader first saw it, so the quiet time before the first
/// arrival counts in how bursty arrivals look, and the warm-up times it measured then set
/// its lead time. The default knows nothing: the scaler starts watching at the trace's start.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Before {
    /// When the scaler began watching the pool's demand, ms (the pool's first event); a time
    /// after the trace's start is taken as its start.
    #[serde(default)]
    pub since_ms: Option<u64>,
    /// Warm-up times measured before the trace's start, oldest first, ms.
    #[serde(default)]
    pub warm_times_ms: Vec<u64>,
}

impl Default for PoolModel {
    fn default() -> Self {
        PoolModel {
            warm_time: WarmTime::Fixed {
                ms: DEFAULT_WARM_MS,
            },
            wait_ms: 5_000,
            seed: 0,
            create_slots: None,
            fleet_slots: None,
            teardown_time: None,
            destroy_slots: None,
            start_warm: None,
            before: Before::default(),
            timeline: false,
        }
    }
}

impl PoolModel {
    /// A model with these warm-up times and waits, and a fleet without limits.
    pub fn new(warm_time: WarmTime, wait_ms: u64) -> Self {
        PoolModel {
            warm_time,
            wait_ms,
            ..PoolModel::default()
        }
    }
}

/// What happened in one run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SimReport {
    /// Allocation attempts.
    pub arrivals: u64,
    /// Attempts that got a container (at once or after waiting).
    pub allocations: u64,
    /// Attempts served by a warm container at once.
    pub hits: u64,
    /// `hits / arrivals` (1.0 with no arrivals).
    pub hit_rate: f64,
    /// Attempts served after waiting.
    pub waited: u64,
    /// Attempts that gave up after `wait_ms`.
    pub refused: u64,
    /// Median wait of the allocations, hits counted as 0, ms.
    pub wait_p50_ms: u64,
    /// 99th percentile wait of the allocations, hits counted as 0, ms.
    pub wait_p99_ms: u64,
    /// Mean wait of the allocations, hits counted as 0, ms: steadier than the median over a
    /// few dozen allocations, whose neighbouring waits can lie a tenth apart.
    #[serde(default)]
    pub wait_mean_ms: u64,
    /// Warm containers not allocated, integrated over time: the cost of readiness.
    pub idle_container_seconds: f64,
    /// Allocated containers, integrated over time.
    pub allocated_container_seconds: f64,
    /// Containers being made, integrated over time.
    pub creating_container_seconds: f64,
    /// Average number of warm, unallocated containers.
    pub mean_warm: f64,
    /// Average wanted count.
    pub mean_wanted: f64,
    /// Largest wanted count.
    pub max_wanted: u32,
    /// Containers planned (the starting pool not counted).
    pub created: u64,
    /// Warm containers retired as surplus.
    pub retired: u64,
    /// Changes of the wanted count after the first.
    pub scale_changes: u64,
    /// The span simulated, seconds.
    pub duration_s: f64,
    /// Of the hits, those served from the paused tier.
    #[serde(default)]
    pub paused_hits: u64,
    /// Paused containers, integrated over time (they hold memory, no CPU).
    #[serde(default)]
    pub paused_container_seconds: f64,
    /// The warm, unallocated count each time it changed: `[ms from the trace's start,
    /// count]`, for comparing a replay with the run it replays; kept when the model asks
    /// ([`PoolModel::timeline`]). Of the first run in a mean; `poolctl simulate` shows it with
    /// `--timeline`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub idle_timeline: Vec<[u64; 2]>,
}

/// Adds `[at, n]` to a timeline of changes (as [`SimReport::idle_timeline`]): a second change
/// at the same `at` replaces the first, and a change undone within the millisecond leaves
/// nothing.
pub fn record_change(timeline: &mut Vec<[u64; 2]>, at: u64, n: u64) {
    match timeline.last_mut() {
        Some([t, last]) if *t == at => *last = n,
        Some([_, last]) if *last == n => {}
        _ => timeline.push([at, n]),
    }
    if let [.., [_, a], [_, b]] = timeline[..] {
        if a == b {
            timeline.pop();
        }
    }
}

impl SimReport {
    /// A report of nothing yet, over `duration_s`.
    pub fn empty(duration_s: f64) -> Self {
        SimReport {
            arrivals: 0,
            allocations: 0,
            hits: 0,
            hit_rate: 1.0,
            waited: 0,
            refused: 0,
            wait_p50_ms: 0,
            wait_p99_ms: 0,
            wait_mean_ms: 0,
            idle_container_seconds: 0.0,
            allocated_container_seconds: 0.0,
            creating_container_seconds: 0.0,
            mean_warm: 0.0,
            mean_wanted: 0.0,
            max_wanted: 0,
            created: 0,
            retired: 0,
            scale_changes: 0,
            duration_s,
            paused_hits: 0,
            paused_container_seconds: 0.0,
            idle_timeline: Vec::new(),
        }
    }

    /// Fills in what follows from the counts at the end of a run: the means over its span
    /// (`wanted_seconds`: the wanted count integrated over it), the hit rate and the wait
    /// percentiles of `waits` (ms, one per allocation).
    pub fn close(&mut self, mut waits: Vec<u64>, wanted_seconds: f64) {
        if self.duration_s > 0.0 {
            self.mean_warm = self.idle_container_seconds / self.duration_s;
            self.mean_wanted = wanted_seconds / self.duration_s;
        }
        if self.arrivals > 0 {
            self.hit_rate = self.hits as f64 / self.arrivals as f64;
        }
        waits.sort_unstable();
        if !waits.is_empty() {
            let n = waits.len();
            self.wait_p50_ms = waits[percentile_rank(n, 0.5)];
            self.wait_p99_ms = waits[percentile_rank(n, 0.99)];
            self.wait_mean_ms = (waits.iter().sum::<u64>() as f64 / n as f64).round() as u64;
        }
    }

    /// The mean of several runs (of one trace, under different seeds): every figure averaged,
    /// counts and milliseconds rounded. `None` for no runs.
    pub fn mean(runs: &[SimReport]) -> Option<SimReport> {
        let first = runs.first()?;
        let n = runs.len() as f64;
        let f = |get: fn(&SimReport) -> f64| runs.iter().map(get).sum::<f64>() / n;
        let u = |get: fn(&SimReport) -> u64| {
            (runs.iter().map(get).sum::<u64>() as f64 / n).round() as u64
        };
        let hits = u(|r| r.hits);
        let arrivals = u(|r| r.arrivals);
        Some(SimReport {
            arrivals,
            allocations: u(|r| r.allocations),
            hits,
            hit_rate: f(|r| r.hit_rate),
            waited: u(|r| r.waited),
            refused: u(|r| r.refused),
            wait_p50_ms: u(|r| r.wait_p50_ms),
            wait_p99_ms: u(|r| r.wait_p99_ms),
            wait_mean_ms: u(|r| r.wait_mean_ms),
            idle_container_seconds: f(|r| r.idle_container_seconds),
            allocated_container_seconds: f(|r| r.allocated_container_seconds),
            creating_container_seconds: f(|r| r.creating_container_seconds),
            mean_warm: f(|r| r.mean_warm),
            mean_wanted: f(|r| r.mean_wanted),
            max_wanted: (runs.iter().map(|r| f64::from(r.max_wanted)).sum::<f64>() / n).round()
                as u32,
            created: u(|r| r.created),
            retired: u(|r| r.retired),
            scale_changes: u(|r| r.scale_changes),
            duration_s: first.duration_s,
            paused_hits: u(|r| r.paused_hits),
            paused_container_seconds: f(|r| r.paused_container_seconds),
            idle_timeline: first.idle_timeline.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    fn report(hits: u64, refused: u64, idle: f64) -> SimReport {
        let mut r = SimReport::empty(10.0);
        r.arrivals = hits + refused;
        r.allocations = hits;
        r.hits = hits;
        r.refused = refused;
        r.idle_container_seconds = idle;
        r.close(vec![0; hits as usize], 20.0);
        r
    }

    #[test]
    fn a_report_closes_with_its_means_and_percentiles() {
        let mut r = SimReport::empty(10.0);
        r.arrivals = 4;
        r.allocations = 4;
        r.hits = 2;
        r.waited = 2;
        r.idle_container_seconds = 15.0;
        r.close(vec![300, 0, 0, 100], 30.0);
        assert_eq!(
            (r.wait_p50_ms, r.wait_p99_ms, r.wait_mean_ms),
            (0, 300, 100)
        );
        assert!(close(r.hit_rate, 0.5));
        assert!(close(r.mean_warm, 1.5));
        assert!(close(r.mean_wanted, 3.0));
    }

    #[test]
    fn reports_average() {
        let a = report(1, 2, 10.0);
        let b = report(3, 0, 30.0);
        let mean = SimReport::mean(&[a.clone(), b.clone()]).unwrap();
        assert_eq!((mean.hits, mean.refused, mean.arrivals), (2, 1, 3));
        assert!(close(mean.hit_rate, (a.hit_rate + b.hit_rate) / 2.0));
        assert!(close(mean.idle_container_seconds, 20.0));
        assert_eq!(SimReport::mean(std::slice::from_ref(&a)), Some(a));
        assert_eq!(SimReport::mean(&[]), None);
    }

    #[test]
    fn a_timeline_keeps_changes_only() {
        let mut t = Vec::new();
        for (at, n) in [
            (0, 3),
            (5, 3),
            (7, 2),
            (9, 4),
            (9, 2),
            (12, 1),
            (12, 2),
            (15, 0),
        ] {
            record_change(&mut t, at, n);
        }
        // 5: no change; 9: undone to 2 in the same millisecond; 12: back to 2, no change.
        assert_eq!(t, vec![[0, 3], [7, 2], [15, 0]]);
    }

    #[test]
    fn warm_time_samples_and_descriptions() {
        let mut rng = Rng::new(1);
        let s = WarmTime::Samples {
            ms: vec![100, 200, 300],
        };
        for _ in 0..100 {
            assert!([100, 200, 300].contains(&s.sample(&mut rng)));
        }
        assert_eq!(
            WarmTime::Samples { ms: vec![] }.sample(&mut rng),
            DEFAULT_WARM_MS
        );
        let ln = WarmTime::LogNormal {
            median_ms: 1_000,
            p99_ms: 4_000,
        };
        let mut v: Vec<u64> = (0..20_000).map(|_| ln.sample(&mut rng)).collect();
        v.sort_unstable();
        let (p50, p99) = (v[10_000], v[19_800]);
        assert!(
            (900..1100).contains(&p50) && (3500..4500).contains(&p99),
            "{p50} {p99}"
        );
        assert_eq!(s.describe(), "measured (3 samples, p50 200 ms, p99 300 ms)");

        // Timed: the unused sample nearest the time asked; each once per pass.
        let t = WarmTime::timed(vec![(5_000, 900), (1_000, 100), (1_000, 150), (9_000, 50)]);
        let mut d = t.draws();
        assert_eq!(d.next(5_100, &mut rng), 900);
        assert_eq!(
            d.next(5_100, &mut rng),
            50,
            "900 is used: the nearest left is 9 s"
        );
        let early = [d.next(5_100, &mut rng), d.next(5_100, &mut rng)];
        assert!(
            early == [100, 150] || early == [150, 100],
            "the two taken at 1 s, each once, in either order: {early:?}"
        );
        // A new pass: all four again.
        assert_eq!(d.next(20_000, &mut rng), 50);
        let mut d = t.draws();
        assert_eq!(d.next(7_000, &mut rng), 900, "a tie goes to the earlier");
        let mut d = t.draws();
        assert_eq!(d.next(7_001, &mut rng), 50);
        // Over many passes each of the two taken at the same time comes first in some.
        let firsts: std::collections::BTreeSet<u64> =
            (0..50).map(|_| t.draws().next(0, &mut rng)).collect();
        assert_eq!(firsts, [100, 150].into());
        // A pass replays the samples themselves: four draws at one time are the four samples.
        let mut d = t.draws();
        let mut pass: Vec<u64> = (0..4).map(|_| d.next(3_000, &mut rng)).collect();
        pass.sort_unstable();
        assert_eq!(pass, [50, 100, 150, 900]);
        assert_eq!(
            t.describe(),
            "measured, nearest in time (4 samples, p50 100 ms, p99 900 ms)"
        );
        assert_eq!(
            WarmTime::timed(Vec::new()).draws().next(1, &mut rng),
            DEFAULT_WARM_MS
        );
    }
}
