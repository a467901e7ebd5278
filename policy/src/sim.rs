//! A trace-driven simulation of one pool under a policy, on a virtual clock.
//!
//! The model follows Warmpool's own rules, so that what it says about a policy carries over:
//!
//! - **Allocation.** An arrival takes a warm container if one is free: a *hit*, wait 0.
//!   Otherwise it joins the pool's FIFO queue and is served by the next container that becomes
//!   warm, unless `wait_ms` passes first: then it is *refused* (with `wait_ms = 0`, at once).
//! - **Release.** After its hold the container is destroyed, never reused.
//! - **Keep-warm** is [`rules::resize`], the rule the control plane's leader carries out: the
//!   pool aims at the policy's wanted count plus the allocations waiting; short of that, it
//!   plans at most `batch_size` containers per `pacing_ms`, none while two batches' worth are
//!   still being made, and never more than `max_total` live; over it, surplus warm containers
//!   are retired a batch at a time. A planned container becomes warm after a warm-up time
//!   drawn from the model.
//! - **The fleet** (when the model has its limits). At most `create_slots` containers are
//!   started at once, first planned first served; at most `fleet_slots` of the pool's
//!   containers exist at once, and a released one keeps its place for a teardown time drawn
//!   from the model (a retired one too). Without them, every planned container starts at once
//!   and a released or retired one is gone at once.
//! - **The scaler** is the real [`Scaler`] fed by the real [`DemandEstimator`]: every arrival
//!   and every warm-up is recorded, and the scaler decides after every event and at least
//!   every `step_ms` (the leader loop's tick). It starts with what the leader's scaler had
//!   seen before the trace ([`Before`]): since when it watched the pool, and the warm-ups
//!   measured then.
//!
//! The pool starts the trace holding `start_warm` warm containers, or else the policy's first
//! wanted count. Costs are
//! integrated over the trace's span: idle warm container-seconds (warm and not allocated:
//! the waste), allocated container-seconds (the useful part), creating container-seconds.
//! Runs are deterministic for a trace, a model and its seed.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use warmpool_proto::{PoolSpec, Timestamp};

use crate::estimator::{percentile_rank, DemandEstimator, EstimatorConfig};
use crate::rng::Rng;
use crate::rules::{self, Pacing, PoolCounts, Resize, WantedWrites};
use crate::scaler::{Policy, Scaler};
use crate::trace::Trace;

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

    /// A draw for something starting at `now` (only [`WarmTime::Timed`] looks at it).
    pub fn sample_at(&self, now: u64, rng: &mut Rng) -> u64 {
        let WarmTime::Timed { samples } = self else {
            return self.sample(rng);
        };
        if samples.is_empty() {
            return DEFAULT_WARM_MS;
        }
        // The samples nearest `now`: those at the time just before or just after it, whichever
        // is closer; one of them at random when several were taken at that time.
        let i = samples.partition_point(|(at, _)| *at < now);
        let at = match (i.checked_sub(1).map(|j| samples[j].0), samples.get(i)) {
            (Some(before), Some(&(after, _))) if now - before > after - now => after,
            (Some(before), _) => before,
            (None, Some(&(after, _))) => after,
            (None, None) => return DEFAULT_WARM_MS,
        };
        let lo = samples.partition_point(|(t, _)| *t < at);
        let hi = samples.partition_point(|(t, _)| *t <= at);
        samples[lo + rng.below(hi - lo)].1
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

fn describe_samples(what: &str, mut v: Vec<u64>) -> String {
    v.sort_unstable();
    format!(
        "{what} ({} samples, p50 {} ms, p99 {} ms)",
        v.len(),
        v[percentile_rank(v.len(), 0.5)],
        v[percentile_rank(v.len(), 0.99)]
    )
}

/// The pool being simulated: everything but the policy.
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
    /// Containers planned at once.
    pub batch_size: u32,
    /// Pause between batches, ms.
    pub pacing_ms: u64,
    /// Most live containers (creating, warm and allocated).
    pub max_total: u32,
    /// How long an allocation waits for a warm container before it is refused, ms.
    pub wait_ms: u64,
    /// Longest time between two scaler decisions, ms (the leader loop's tick).
    pub step_ms: u64,
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
    /// first asked first served. None: no limit. (Modelled by the control plane's replay of
    /// its engine, `warmpool_control_plane::sim`, not by [`simulate`].)
    #[serde(default)]
    pub destroy_slots: Option<u32>,
    /// Warm containers at the start. None: the policy's first wanted count.
    #[serde(default)]
    pub start_warm: Option<u32>,
    /// The pool's paused tier ([`rules::paused_wanted`]; 0: none). An arrival that finds no
    /// warm container takes a paused one, as the control plane's allocation does; the warm
    /// surplus is paused by [`rules::pause_count`] and the pool sized by [`rules::tiered`].
    /// The paused tier starts full.
    #[serde(default)]
    pub paused_wanted: u32,
    /// What the leader had seen of the pool before the trace starts.
    #[serde(default)]
    pub before: Before,
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
            batch_size: 4,
            pacing_ms: 200,
            max_total: 100,
            wait_ms: 5_000,
            step_ms: 500,
            seed: 0,
            create_slots: None,
            fleet_slots: None,
            teardown_time: None,
            destroy_slots: None,
            start_warm: None,
            paused_wanted: 0,
            before: Before::default(),
        }
    }
}

impl PoolModel {
    /// Its batch size, pacing and `max_total`, as the keep-warm rule takes them.
    pub fn pacing(&self) -> Pacing {
        Pacing {
            batch_size: self.batch_size.max(1),
            pacing_ms: self.pacing_ms,
            max_total: self.max_total,
        }
    }

    /// The model of a pool with this spec: its batch size, pacing and `max_total`; the
    /// warm-up times and `wait_ms` given.
    pub fn from_spec(spec: &PoolSpec, warm_time: WarmTime, wait_ms: u64) -> Self {
        PoolModel {
            warm_time,
            batch_size: spec.scaling.batch_size.max(1),
            pacing_ms: spec.scaling.pacing_ms,
            max_total: spec.max_total,
            wait_ms,
            paused_wanted: rules::paused_wanted(spec),
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
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    /// A container planned at this time becomes warm.
    Warm { planned_at: u64 },
    /// An allocated container is released.
    Release,
    /// A released container is gone and frees its place.
    TornDown,
    /// A waiting allocation's time is up.
    Deadline { waiter: u64 },
    /// Pacing allows the next batch.
    Wake,
    /// The leader loop's tick.
    Tick,
}

struct Waiter {
    id: u64,
    since: u64,
    hold: u64,
}

/// Simulates `trace` on `model` under `policy`, with the default estimator.
pub fn simulate(trace: &Trace, model: &PoolModel, policy: &Policy) -> SimReport {
    simulate_with(trace, model, policy, &EstimatorConfig::default())
}

/// Simulates `trace` on `model` under `policy`, measuring demand with `estimator`.
pub fn simulate_with(
    trace: &Trace,
    model: &PoolModel,
    policy: &Policy,
    estimator: &EstimatorConfig,
) -> SimReport {
    Sim::new(trace, model, policy, estimator).run()
}

struct Sim<'a> {
    trace: &'a Trace,
    model: &'a PoolModel,
    policy: &'a Policy,
    rng: Rng,
    estimator: DemandEstimator,
    scaler: Scaler,
    events: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    seq: u64,
    now: u64,
    wanted: u32,
    warm: u32,
    /// In the paused tier.
    paused: u32,
    /// Being made: waiting for a create slot or started.
    creating: u32,
    /// Planned containers waiting for a create slot, by when they were planned.
    unstarted: VecDeque<u64>,
    /// Started and not yet warm.
    started: u32,
    allocated: u32,
    /// Released and not yet torn down.
    releasing: u32,
    queue: VecDeque<Waiter>,
    next_waiter: u64,
    last_batch: Option<u64>,
    wake_at: Option<u64>,
    waits: Vec<u64>,
    r: SimReport,
    wanted_integral: f64,
    /// The scaler's latest wanted count, applied as the leader applies it: growth at once,
    /// decreases at most every [`crate::SCALE_DOWN_EVERY_MS`] ([`WantedWrites`]).
    latest: Option<u32>,
    writes: WantedWrites,
}

impl<'a> Sim<'a> {
    fn new(
        trace: &'a Trace,
        model: &'a PoolModel,
        policy: &'a Policy,
        estimator: &EstimatorConfig,
    ) -> Self {
        let start = trace.start_ms;
        let watched_from = model.before.since_ms.map_or(start, |t| t.min(start));
        let mut estimator =
            DemandEstimator::with_config(estimator.clone(), Timestamp(watched_from));
        for &ms in &model.before.warm_times_ms {
            estimator.record_warm_time(Duration::from_millis(ms));
        }
        Sim {
            trace,
            model,
            policy,
            rng: Rng::new(model.seed),
            estimator,
            scaler: Scaler::new(),
            events: BinaryHeap::new(),
            seq: 0,
            now: start,
            wanted: 0,
            warm: 0,
            paused: model.paused_wanted.min(model.max_total),
            creating: 0,
            unstarted: VecDeque::new(),
            started: 0,
            allocated: 0,
            releasing: 0,
            queue: VecDeque::new(),
            next_waiter: 0,
            last_batch: None,
            wake_at: None,
            latest: None,
            writes: WantedWrites::default(),
            waits: Vec::new(),
            r: SimReport::empty(trace.duration_ms() as f64 / 1000.0),
            wanted_integral: 0.0,
        }
    }

    fn schedule(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.events.push(Reverse((at, self.seq, ev)));
    }

    fn run(mut self) -> SimReport {
        let end = self.trace.end_ms;
        // The starting pool: the policy's first answer, already warm.
        if let Some(d) = self.scaler.decide(
            self.policy,
            &self.estimator.inputs(Timestamp(self.now)),
            Timestamp(self.now),
        ) {
            self.wanted = d.wanted;
        }
        self.warm = self
            .model
            .start_warm
            .unwrap_or(self.wanted)
            .min(self.model.max_total.saturating_sub(self.paused))
            .min(self.model.fleet_slots.unwrap_or(u32::MAX));
        self.r.max_wanted = self.wanted;
        let step = self.model.step_ms.max(1);
        self.schedule(self.now.saturating_add(step), Ev::Tick);

        let arrivals = &self.trace.arrivals;
        let mut next = 0;
        loop {
            let next_event = self.events.peek().map(|Reverse((t, _, _))| *t);
            let next_arrival = arrivals.get(next).map(|a| a.at_ms.max(self.trace.start_ms));
            // At equal times, what the pool does (warm-ups, releases, deadlines) goes first.
            let take_event = match (next_event, next_arrival) {
                (None, None) => break,
                (Some(e), Some(a)) => e <= a,
                (Some(_), None) => true,
                (None, Some(_)) => false,
            };
            let t = if take_event {
                next_event.unwrap_or(end)
            } else {
                next_arrival.unwrap_or(end)
            };
            if t > end {
                break;
            }
            self.advance(t);
            if take_event {
                if let Some(Reverse((_, _, ev))) = self.events.pop() {
                    self.handle(ev);
                }
            } else {
                let hold = arrivals[next].hold_ms;
                next += 1;
                self.arrive(hold);
            }
            self.control();
        }
        self.advance(end);
        self.finish()
    }

    /// Moves the clock to `t`, integrating the costs.
    fn advance(&mut self, t: u64) {
        if t > self.now {
            let dt = (t - self.now) as f64 / 1000.0;
            self.r.idle_container_seconds += f64::from(self.warm) * dt;
            self.r.paused_container_seconds += f64::from(self.paused) * dt;
            self.r.allocated_container_seconds += f64::from(self.allocated) * dt;
            self.r.creating_container_seconds += f64::from(self.creating) * dt;
            self.wanted_integral += f64::from(self.wanted) * dt;
            self.now = t;
        }
    }

    fn grant(&mut self, since: u64, hold: u64) {
        self.allocated += 1;
        self.r.allocations += 1;
        let wait = self.now - since;
        if wait == 0 {
            self.r.hits += 1;
        } else {
            self.r.waited += 1;
        }
        self.waits.push(wait);
        self.schedule(self.now.saturating_add(hold), Ev::Release);
    }

    fn arrive(&mut self, hold: u64) {
        self.r.arrivals += 1;
        self.estimator.record_arrival(Timestamp(self.now));
        if self.queue.is_empty() && self.warm > 0 {
            self.warm -= 1;
            self.grant(self.now, hold);
        } else if self.queue.is_empty() && self.paused > 0 {
            // Warm first, then paused (the unpause is part of the grant: milliseconds).
            self.paused -= 1;
            self.r.paused_hits += 1;
            self.grant(self.now, hold);
        } else if self.model.wait_ms == 0 {
            self.r.refused += 1;
        } else {
            let id = self.next_waiter;
            self.next_waiter += 1;
            self.queue.push_back(Waiter {
                id,
                since: self.now,
                hold,
            });
            self.schedule(
                self.now.saturating_add(self.model.wait_ms),
                Ev::Deadline { waiter: id },
            );
        }
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Warm { planned_at } => {
                self.creating -= 1;
                self.started -= 1;
                self.start_unstarted();
                self.estimator
                    .record_warm_time(Duration::from_millis(self.now - planned_at));
                match self.queue.pop_front() {
                    Some(w) => self.grant(w.since, w.hold),
                    None => self.warm += 1,
                }
            }
            Ev::Release => {
                self.allocated -= 1;
                if let Some(t) = &self.model.teardown_time {
                    let gone_in = t.sample_at(self.now, &mut self.rng);
                    self.releasing += 1;
                    self.schedule(self.now.saturating_add(gone_in), Ev::TornDown);
                }
            }
            Ev::TornDown => self.releasing -= 1,
            Ev::Deadline { waiter } => {
                if let Some(i) = self.queue.iter().position(|w| w.id == waiter) {
                    self.queue.remove(i);
                    self.r.refused += 1;
                }
            }
            Ev::Wake => self.wake_at = None,
            Ev::Tick => {
                let next = self.now.saturating_add(self.model.step_ms.max(1));
                if next <= self.trace.end_ms {
                    self.schedule(next, Ev::Tick);
                }
            }
        }
    }

    /// One step of the leader: scale, then keep warm.
    fn control(&mut self) {
        let now = Timestamp(self.now);
        let inputs = self.estimator.inputs(now);
        if let Some(d) = self.scaler.decide(self.policy, &inputs, now) {
            self.latest = Some(d.wanted);
        }
        if let Some(w) = self.latest {
            match self.writes.admit(self.wanted, w, self.now) {
                Ok(true) => {
                    self.wanted = w;
                    self.r.scale_changes += 1;
                    self.r.max_wanted = self.r.max_wanted.max(w);
                }
                Ok(false) => {}
                Err(at) => self.wake(at),
            }
        }
        let warm_counts = PoolCounts {
            wanted: self.wanted,
            waiting: self.queue.len() as u32,
            warm: self.warm,
            creating: self.creating,
            live: self.warm + self.paused + self.creating + self.allocated,
        };
        // The warm surplus joins the paused tier (a pause takes milliseconds: at once here).
        let batch = self.model.pacing().batch_size;
        let k = rules::pause_count(warm_counts, self.paused, self.model.paused_wanted, batch);
        self.warm -= k;
        self.paused += k;
        let warm_counts = PoolCounts {
            warm: self.warm,
            ..warm_counts
        };
        let counts = rules::tiered(warm_counts, self.paused, self.model.paused_wanted);
        // The fleet's limit, when modelled: released containers keep their places until torn
        // down.
        let room = self
            .model
            .fleet_slots
            .map(|slots| slots.saturating_sub(counts.live + self.releasing));
        let n = match rules::resize(counts, self.model.pacing(), self.last_batch, self.now, room) {
            Resize::Retire(n) => {
                let (from_warm, from_paused) = rules::retire_split(
                    n,
                    self.warm,
                    self.wanted + warm_counts.waiting,
                    self.paused,
                    self.model.paused_wanted,
                );
                self.r.retired += u64::from(from_warm + from_paused);
                self.warm -= from_warm;
                self.paused -= from_paused;
                // A retired container keeps its place until torn down, as a released one does.
                if let Some(t) = &self.model.teardown_time {
                    for _ in 0..from_warm + from_paused {
                        let gone_in = t.sample_at(self.now, &mut self.rng);
                        self.releasing += 1;
                        self.schedule(self.now.saturating_add(gone_in), Ev::TornDown);
                    }
                }
                return;
            }
            Resize::Paced { until_ms } => {
                self.wake(until_ms);
                return;
            }
            // At max_total or the fleet's limit: a release or a teardown makes room.
            Resize::Hold | Resize::Full => return,
            Resize::Create(n) => n,
        };
        self.unstarted.extend((0..n).map(|_| self.now));
        self.creating += n;
        self.r.created += u64::from(n);
        self.last_batch = Some(self.now);
        self.start_unstarted();
    }

    /// Makes sure the leader steps again at `at` (the leader wakes on its timers too).
    fn wake(&mut self, at: u64) {
        if self.wake_at.is_none_or(|w| w > at) {
            self.wake_at = Some(at);
            self.schedule(at, Ev::Wake);
        }
    }

    /// Starts planned containers while create slots are free.
    fn start_unstarted(&mut self) {
        while self.model.create_slots.is_none_or(|k| self.started < k) {
            let Some(planned_at) = self.unstarted.pop_front() else {
                return;
            };
            let warm_in = self.model.warm_time.sample_at(self.now, &mut self.rng);
            self.started += 1;
            self.schedule(self.now.saturating_add(warm_in), Ev::Warm { planned_at });
        }
    }

    fn finish(mut self) -> SimReport {
        if self.r.duration_s <= 0.0 {
            self.r.mean_warm = f64::from(self.warm);
            self.r.mean_wanted = f64::from(self.wanted);
        }
        self.r.close(self.waits, self.wanted_integral);
        self.r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::Arrival;

    fn model(warm_ms: u64) -> PoolModel {
        PoolModel {
            warm_time: WarmTime::Fixed { ms: warm_ms },
            batch_size: 4,
            pacing_ms: 0,
            max_total: 100,
            wait_ms: 5_000,
            step_ms: 500,
            seed: 1,
            ..PoolModel::default()
        }
    }

    fn trace(arrivals: &[(u64, u64)], end: u64) -> Trace {
        Trace::new(
            arrivals
                .iter()
                .map(|&(at_ms, hold_ms)| Arrival { at_ms, hold_ms })
                .collect(),
            0,
            end,
        )
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn a_burst_takes_the_warm_tier_then_the_paused_one_and_both_refill() {
        // 3 warm and 10 paused; 13 arrivals within 0.6 s, each holding 20 s; warm-up 1 s.
        let burst: Vec<(u64, u64)> = (0..13).map(|i| (1_000 + i * 50, 20_000)).collect();
        let mut m = model(1_000);
        m.paused_wanted = 10;
        let r = simulate(&trace(&burst, 10_000), &m, &Policy::fixed(3));
        assert_eq!((r.hits, r.paused_hits, r.waited), (13, 10, 0), "{r:?}");
        // Refilled within the trace: 13 made, the paused tier full again at the end.
        assert_eq!(r.created, 13);
        assert!(r.paused_container_seconds > 0.0);
        // Without the tier the same burst waits for new containers.
        let plain = simulate(&trace(&burst, 10_000), &model(1_000), &Policy::fixed(3));
        assert_eq!((plain.hits, plain.paused_hits), (3, 0));
        assert_eq!(plain.waited, 10);
    }

    /// Fixed pool of 2, warm-up 1 s, over 10 s:
    /// t=1 A (hold 3 s) hit: warm 1, a replacement is planned, warm at t=2;
    /// t=1.5 B (hold 1 s) hit: warm 0, replacement warm at t=2.5;
    /// t=2 warm 1; t=2.5 warm 2 (B released at t=2.5); t=4 A released.
    /// Idle: 2·1 + 1·0.5 + 0·0.5 + 1·0.5 + 2·7.5 = 18 container-seconds;
    /// allocated: A 3 s + B 1 s = 4.
    #[test]
    fn accounting_on_a_tiny_trace() {
        let r = simulate(
            &trace(&[(1_000, 3_000), (1_500, 1_000)], 10_000),
            &model(1_000),
            &Policy::fixed(2),
        );
        assert_eq!((r.arrivals, r.allocations, r.hits, r.refused), (2, 2, 2, 0));
        assert_eq!(r.hit_rate, 1.0);
        assert!(close(r.idle_container_seconds, 18.0), "{r:?}");
        assert!(close(r.allocated_container_seconds, 4.0), "{r:?}");
        assert!(close(r.creating_container_seconds, 2.0), "{r:?}");
        assert!(close(r.mean_warm, 1.8));
        assert_eq!((r.created, r.retired, r.scale_changes), (2, 0, 0));
        assert_eq!((r.wait_p50_ms, r.wait_p99_ms), (0, 0));
        assert_eq!(r.duration_s, 10.0);
    }

    /// Fixed pool of 1, warm-up 2 s, wait up to 5 s:
    /// t=0 A hit, replacement planned (warm at 2);
    /// t=0.5 B waits; the keep-warm aims at 1 + 1 waiting, so a second container is planned
    /// at 0.5 (warm at 2.5);
    /// t=2 the first replacement serves B after 1.5 s; t=2.5 the other one is warm.
    #[test]
    fn a_waiter_is_served_by_the_next_warm_container() {
        let r = simulate(
            &trace(&[(0, 10_000), (500, 10_000)], 4_000),
            &model(2_000),
            &Policy::fixed(1),
        );
        assert_eq!((r.hits, r.waited, r.refused), (1, 1, 0));
        assert_eq!(r.wait_p99_ms, 1_500);
        assert_eq!(r.wait_p50_ms, 0);
        assert_eq!(r.hit_rate, 0.5);
        assert_eq!(r.created, 2);
        // Warm: 1 until 0, then 0 until 2.5, then 1 until 4: 1.5 container-seconds.
        assert!(close(r.idle_container_seconds, 1.5), "{r:?}");
    }

    #[test]
    fn without_waiting_an_empty_pool_refuses() {
        let mut m = model(2_000);
        m.wait_ms = 0;
        let r = simulate(
            &trace(&[(0, 1_000), (100, 1_000), (200, 1_000)], 3_000),
            &m,
            &Policy::fixed(1),
        );
        assert_eq!((r.hits, r.refused, r.allocations), (1, 2, 1));
        // With a short wait, the waiter gives up before the warm-up ends.
        let mut m = model(2_000);
        m.wait_ms = 1_000;
        let r = simulate(
            &trace(&[(0, 1_000), (100, 1_000)], 3_000),
            &m,
            &Policy::fixed(1),
        );
        assert_eq!((r.hits, r.refused, r.waited), (1, 1, 0));
    }

    #[test]
    fn max_total_and_batches_limit_the_refill() {
        // Six arrivals at once on a pool of 1 with max_total 3 and a 1 s warm-up.
        let mut m = model(1_000);
        m.max_total = 3;
        let arrivals: Vec<_> = (0..6).map(|i| (i, 60_000)).collect();
        let r = simulate(&trace(&arrivals, 20_000), &m, &Policy::fixed(1));
        // One hit, two served from the containers max_total allows, three refused after 5 s.
        assert_eq!((r.hits, r.waited, r.refused), (1, 2, 3));
        assert_eq!(r.created, 2);

        // Ten waiters on an empty pool; batches of 2, 500 ms apart, none while 4 are being
        // made; warm-up 3 s. Planned at 0 (1: only one was waiting yet), 0.5 (2), 1 (2), then
        // as they turn warm: 3.5 (2), 4 (2), 6.5 (1, all the queue still lacks). Waits, in ms:
        // 3000, 3499, 3498, 3997, 3996, 6495, 6494, 6993, 6992, 9491; the median (nearest
        // rank, 5th of 10) is 3997.
        let mut m = model(3_000);
        m.batch_size = 2;
        m.pacing_ms = 500;
        m.wait_ms = 60_000;
        let arrivals: Vec<_> = (0..10).map(|i| (i, 60_000)).collect();
        let r = simulate(&trace(&arrivals, 30_000), &m, &Policy::fixed(0));
        assert_eq!((r.waited, r.hits), (10, 0));
        assert_eq!((r.wait_p50_ms, r.wait_p99_ms), (3_997, 9_491), "{r:?}");
        assert_eq!((r.created, r.retired), (10, 0), "exactly one per waiter");
    }

    #[test]
    fn create_slots_make_containers_a_few_at_a_time() {
        // Four waiters on an empty pool, a batch of four planned at once, two started at a
        // time: warm at 1 s, 1 s, 2 s, 2 s.
        let mut m = model(1_000);
        m.create_slots = Some(2);
        let arrivals: Vec<_> = (0..4).map(|_| (0, 60_000)).collect();
        let r = simulate(&trace(&arrivals, 10_000), &m, &Policy::fixed(0));
        assert_eq!((r.waited, r.created), (4, 4));
        assert_eq!((r.wait_p50_ms, r.wait_p99_ms), (1_000, 2_000), "{r:?}");
        // Each container counts as being made from its plan, slot or no slot: 1+1+2+2.
        assert!(close(r.creating_container_seconds, 6.0), "{r:?}");
        m.create_slots = None;
        let r = simulate(&trace(&arrivals, 10_000), &m, &Policy::fixed(0));
        assert_eq!((r.wait_p50_ms, r.wait_p99_ms), (1_000, 1_000), "{r:?}");
    }

    /// A fleet of two places, fixed pool of 1, warm-up 1 s:
    /// t=0 A (hold 1 s) hit, its replacement warm at 1; t=1 A released;
    /// t=1.5 B (hold 10 s) hit, the pool is short one;
    /// t=2 C waits.
    /// With teardowns of 3 s, A keeps its place until 4: C's container is planned then and
    /// serves it at 5 (wait 3 s). Gone at once, B's replacement is planned at 1.5 and serves
    /// C at 2.5 (wait 0.5 s).
    #[test]
    fn released_containers_hold_their_place_until_torn_down() {
        let mut m = model(1_000);
        m.fleet_slots = Some(2);
        m.teardown_time = Some(WarmTime::Fixed { ms: 3_000 });
        let t = trace(&[(0, 1_000), (1_500, 10_000), (2_000, 10_000)], 12_000);
        let r = simulate(&t, &m, &Policy::fixed(1));
        assert_eq!((r.hits, r.waited), (2, 1), "{r:?}");
        assert_eq!(r.wait_p99_ms, 3_000, "{r:?}");
        m.teardown_time = None;
        let r = simulate(&t, &m, &Policy::fixed(1));
        assert_eq!(r.wait_p99_ms, 500, "{r:?}");
        // The fleet's limit caps the starting pool too: 2 of the 5 asked for, one of them
        // retired as surplus at the first step (0.5 s).
        m.start_warm = Some(5);
        let r = simulate(&trace(&[], 1_000), &m, &Policy::fixed(1));
        assert!(close(r.idle_container_seconds, 1.5), "{r:?}");
        assert_eq!(r.retired, 1);
    }

    /// Retired surplus keeps its place too. Fleet of 2, fixed pool of 1, two warm at the
    /// start: one is retired at the first step (0.5 s). t=1 A (hold 10 s) takes the other;
    /// t=2 B waits. Torn down in 3 s, the retired one leaves room at 3.5: B's container is
    /// planned then and serves it at 4.5 (wait 2.5 s). Gone at once, A's replacement is
    /// planned at 1 and serves B at 2 (a hit).
    #[test]
    fn retired_containers_hold_their_place_until_torn_down() {
        let mut m = model(1_000);
        m.fleet_slots = Some(2);
        m.start_warm = Some(2);
        m.teardown_time = Some(WarmTime::Fixed { ms: 3_000 });
        let t = trace(&[(1_000, 10_000), (2_000, 10_000)], 12_000);
        let r = simulate(&t, &m, &Policy::fixed(1));
        assert_eq!(r.retired, 1, "{r:?}");
        assert_eq!((r.hits, r.waited, r.wait_p99_ms), (1, 1, 2_500), "{r:?}");
        m.teardown_time = None;
        let r = simulate(&t, &m, &Policy::fixed(1));
        assert_eq!((r.hits, r.waited), (2, 0), "{r:?}");
    }

    #[test]
    fn the_pool_may_start_other_than_warm() {
        let mut m = model(2_000);
        m.start_warm = Some(0);
        let r = simulate(&trace(&[(0, 1_000)], 5_000), &m, &Policy::fixed(3));
        assert_eq!((r.hits, r.waited, r.wait_p99_ms), (0, 1, 2_000), "{r:?}");
        m.start_warm = None;
        let r = simulate(&trace(&[(0, 1_000)], 5_000), &m, &Policy::fixed(3));
        assert_eq!(r.hits, 1, "{r:?}");
    }

    #[test]
    fn the_scaler_grows_the_pool_under_load_and_shrinks_it_after() {
        let mut p = Policy::fixed(0);
        p.max_warm = 50;
        p.target_hit_rate = Some(0.99);
        p.cooldown_ms = 30_000;
        // 2/s for a minute.
        let arrivals: Vec<_> = (0..120).map(|i| (10_000 + i * 500, 5_000)).collect();
        let r = simulate(&trace(&arrivals, 300_000), &model(2_000), &p);
        assert!(r.max_wanted >= 8, "2/s over 2.2 s: {r:?}");
        assert!(r.hit_rate > 0.8, "{r:?}");
        assert!(r.retired > 0, "shrank after the load: {r:?}");
        assert!(r.mean_wanted < 10.0, "{r:?}");
    }

    /// The control plane's scaler has watched a pool since the leader first saw it: the quiet
    /// time before a burst counts in how bursty arrivals look, and the warm-ups measured then
    /// set its lead time. A run told so starts from that knowledge.
    #[test]
    fn what_the_scaler_saw_before_the_trace_carries_into_it() {
        let mut p = Policy::fixed(3);
        p.max_warm = 60;
        p.target_hit_rate = Some(0.95);
        // 30 arrivals within 2 s, a minute after the pool was made; each held 20 s.
        let t = Trace::new(
            (0..30)
                .map(|i| Arrival {
                    at_ms: 60_000 + i * 66,
                    hold_ms: 20_000,
                })
                .collect(),
            60_000,
            90_000,
        );
        let mut m = model(1_000);
        m.start_warm = Some(3);
        let blind = simulate(&t, &m, &p);
        // Slow warm-ups measured earlier: a longer lead time, so a bigger pool for the burst
        // from its first arrivals.
        m.before.warm_times_ms = vec![6_000; 10];
        let slow = simulate(&t, &m, &p);
        assert!(
            slow.max_wanted > blind.max_wanted,
            "{slow:?} against {blind:?}"
        );
        // The quiet minute before is seen: another estimate of the same arrivals.
        m.before = Before {
            since_ms: Some(0),
            warm_times_ms: Vec::new(),
        };
        let watched = simulate(&t, &m, &p);
        assert_ne!(watched, blind);
        // A start after the trace's own is the trace's start.
        m.before.since_ms = Some(120_000);
        assert_eq!(simulate(&t, &m, &p), blind);
    }

    #[test]
    fn reports_average() {
        let t = trace(&[(0, 1_000), (100, 1_000), (200, 1_000)], 3_000);
        let mut m = model(2_000);
        m.wait_ms = 0;
        let a = simulate(&t, &m, &Policy::fixed(1)); // 1 hit, 2 refused
        let b = simulate(&t, &m, &Policy::fixed(3)); // 3 hits
        let mean = SimReport::mean(&[a.clone(), b.clone()]).unwrap();
        assert_eq!((mean.hits, mean.refused, mean.arrivals), (2, 1, 3));
        assert!(close(mean.hit_rate, (a.hit_rate + b.hit_rate) / 2.0));
        assert!(close(
            mean.idle_container_seconds,
            (a.idle_container_seconds + b.idle_container_seconds) / 2.0
        ));
        assert_eq!(SimReport::mean(std::slice::from_ref(&a)), Some(a));
        assert_eq!(SimReport::mean(&[]), None);
    }

    #[test]
    fn runs_are_deterministic() {
        let m = PoolModel {
            warm_time: WarmTime::LogNormal {
                median_ms: 1_000,
                p99_ms: 3_000,
            },
            ..model(0)
        };
        let arrivals: Vec<_> = (0..500).map(|i| (i * 137 % 60_000, 2_000)).collect();
        let t = trace(&arrivals, 70_000);
        let mut p = Policy::fixed(1);
        p.max_warm = 20;
        p.target_hit_rate = Some(0.95);
        assert_eq!(simulate(&t, &m, &p), simulate(&t, &m, &p));
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

        // Timed: the sample nearest the time asked; one of those taken then, at random.
        let t = WarmTime::timed(vec![(5_000, 900), (1_000, 100), (1_000, 150), (9_000, 50)]);
        assert_eq!(t.sample_at(5_100, &mut rng), 900);
        assert_eq!(t.sample_at(20_000, &mut rng), 50);
        assert_eq!(
            t.sample_at(7_000, &mut rng),
            900,
            "a tie goes to the earlier"
        );
        assert_eq!(t.sample_at(7_001, &mut rng), 50);
        let early: std::collections::BTreeSet<u64> =
            (0..50).map(|_| t.sample_at(0, &mut rng)).collect();
        assert_eq!(early, [100, 150].into());
        assert_eq!(
            t.describe(),
            "measured, nearest in time (4 samples, p50 100 ms, p99 900 ms)"
        );
        assert_eq!(
            WarmTime::timed(Vec::new()).sample_at(1, &mut rng),
            DEFAULT_WARM_MS
        );
    }
}
