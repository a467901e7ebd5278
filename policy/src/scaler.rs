//! The scaler: demand in, a pool's wanted warm count out.
//!
//! ## How many warm containers a pool needs
//!
//! Warmpool never reuses a container: every allocation takes one warm container out of the
//! pool and the keep-warm loop plans a replacement, which becomes warm after a warm-up time
//! `W` (plus up to one `pacing_ms` waiting for its creation batch). So with a wanted count `K`
//! the pool is, at any moment, short by the replacements still on their way, and an arriving
//! allocation finds a warm container exactly when fewer than `K` replacements are in flight.
//!
//! Replacements in flight form an M/G/∞ queue: for arrivals at rate `r` their number has mean
//! `m = r × (E[W] + pacing)`, whatever the distribution of `W` (Little's law), and for Poisson
//! arrivals it is Poisson. So the mean uses the **mean** warm-up, not its p99: the spread of
//! the count is what the quantile below is for, and a p99 on top would count the tail twice.
//! (Simulated, steady 1/s with warm-ups of median 1.2 s and p99 3 s: a fixed 5 served 99.0 %
//! warm and a fixed 6 99.8 %; the p99-based mean asked for 9 and held 12.6 on average.) The
//! p99 is still measured and reported, and the mean warm-up defaults to 2 s until the first
//! sample.
//!
//! The spread is measured, not assumed: the estimator's dispersion `D` (variance / mean of
//! counts) gives a variance `m·D`. For a target hit rate `p` the wanted count is the
//! `p`-quantile of that count plus one, `K = Q_p(m, m·D) + 1`: Poisson when `D ≤ 1`, negative
//! binomial when `D > 1`, computed exactly (see [`quantile`](crate::quantile) for why not the
//! normal approximation). The quantile's excess over the mean is the safety margin, and it
//! grows with burstiness: a pool whose recent past had bursts keeps a larger buffer in the
//! quiet between them, which is what absorbs the first seconds of the next burst. Without a
//! target hit rate the pool covers the mean only: `K = ⌈m⌉`.
//!
//! The rate `r` is the steady average, unless the burst average stands more than `burst_z`
//! (3) noise deviations above it: then a burst is under way, `r` is the burst average, and the
//! burst is sized as Poisson at its own rate (the window's dispersion mostly measured the
//! switching between quiet and burst, which that rate already follows). When the burst
//! average is *below* the steady one (a burst has ended), the lower one is used, so the pool
//! is not held up by a minute-long average for minutes after the traffic is gone. A rate below
//! `idle_rate_per_s` (default one allocation per 10 minutes) counts as no demand: the pool
//! falls to `min_warm`.
//!
//! ## When the count changes
//!
//! - **Up at once**: a larger count is adopted on the first call that computes it.
//! - **Down after the cool-down, with hysteresis**: every call also computes a *down* count
//!   for the rate plus `hysteresis` (15 % by default) and remembers it for `cooldown`. The
//!   pool shrinks to the largest down count of the last `cooldown`, only when that is below
//!   the current count. Demand must therefore stay low for a whole cool-down before anything is
//!   retired, then the pool follows the falling demand one cool-down behind (like the
//!   Kubernetes HPA's stabilization window), and a rate hovering at the edge between two
//!   counts never flips back and forth: to come down, it must fall 15 % below the edge.
//! - **Bounds at once**: always within `min_warm..=max_warm`; a changed spec takes effect on
//!   the next call.
//!
//! [`Scaler::decide`] answers only when the count changes. It keeps the recent down counts in
//! a monotonic deque, so memory stays small however often it is called.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use warmpool_proto::pool::Scaling;
use warmpool_proto::{PoolSpec, Timestamp};

use crate::estimator::{round4, DemandInputs};
use crate::quantile::arrivals_quantile;

/// Shortest time between two applied decreases of a pool's wanted count, ms: a pool coming
/// down from a burst steps down a few times, not once per leader step. The leader and the
/// simulator both keep to it.
pub const SCALE_DOWN_EVERY_MS: u64 = 2_000;

/// How a pool is sized: the parts of a [`PoolSpec`] the scaler reads, plus its tunables.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// The floor.
    pub min_warm: u32,
    /// The ceiling (at least `min_warm`).
    pub max_warm: u32,
    /// Share of allocations to serve from a warm container; `None`: cover the mean rate only.
    pub target_hit_rate: Option<f64>,
    /// How long demand must stay low before the pool shrinks, ms.
    pub cooldown_ms: u64,
    /// Containers the keep-warm loop asks for at once.
    pub batch_size: u32,
    /// Pause between creation batches, ms; part of the lead time.
    pub pacing_ms: u64,
    /// Relative rise in rate the down count is computed for (0.15 = 15 %).
    pub hysteresis: f64,
    /// Below this rate (per second) the pool counts as idle and falls to `min_warm`.
    pub idle_rate_per_s: f64,
    /// How many noise deviations the burst average must rise above the steady one to be
    /// sized for.
    pub burst_z: f64,
}

/// Default [`Policy::hysteresis`].
pub const DEFAULT_HYSTERESIS: f64 = 0.15;
/// Default [`Policy::idle_rate_per_s`]: one allocation per 10 minutes.
pub const DEFAULT_IDLE_RATE_PER_S: f64 = 1.0 / 600.0;
/// Default [`Policy::burst_z`].
pub const DEFAULT_BURST_Z: f64 = 3.0;

impl Policy {
    /// The policy of a pool spec: its bounds, cool-down, target hit rate, batch size and pacing,
    /// with the default hysteresis and idle rate.
    pub fn from_spec(spec: &PoolSpec) -> Self {
        Policy {
            min_warm: spec.min_warm,
            max_warm: spec.max_warm(),
            target_hit_rate: spec.scaling.target_hit_rate,
            cooldown_ms: spec.scaling.cooldown_secs.saturating_mul(1000),
            batch_size: spec.scaling.batch_size.max(1),
            pacing_ms: spec.scaling.pacing_ms,
            hysteresis: DEFAULT_HYSTERESIS,
            idle_rate_per_s: DEFAULT_IDLE_RATE_PER_S,
            burst_z: DEFAULT_BURST_Z,
        }
    }

    /// A fixed target of `n` warm containers (`min_warm = max_warm = n`), with the default batch
    /// size, pacing and cool-down.
    pub fn fixed(n: u32) -> Self {
        let scaling = Scaling::default();
        Policy {
            min_warm: n,
            max_warm: n,
            target_hit_rate: None,
            cooldown_ms: scaling.cooldown_secs.saturating_mul(1000),
            batch_size: scaling.batch_size,
            pacing_ms: scaling.pacing_ms,
            hysteresis: DEFAULT_HYSTERESIS,
            idle_rate_per_s: DEFAULT_IDLE_RATE_PER_S,
            burst_z: DEFAULT_BURST_Z,
        }
    }

    /// True when the bounds leave the scaler no choice.
    pub fn is_fixed(&self) -> bool {
        self.max_warm <= self.min_warm
    }

    fn clamp(&self, n: u64) -> u32 {
        let hi = self.max_warm.max(self.min_warm);
        (n.min(u64::from(hi)) as u32).max(self.min_warm)
    }

    /// The unbounded count the demand calls for, and how it was derived.
    pub fn need(&self, inputs: &DemandInputs) -> Need {
        let lead_time_s = finite(inputs.warm_mean_s).max(0.0) + self.pacing_ms as f64 / 1000.0;
        let steady = finite(inputs.rate_per_s).max(0.0);
        let fast = finite(inputs.burst_rate_per_s).max(0.0);
        let burst = fast > steady + self.burst_z * finite(inputs.burst_noise_per_s);
        let rate = if burst { fast } else { steady.min(fast) };
        let mean = rate * lead_time_s;
        // The refill runs at most two batches at once: beyond 2·batch per warm-up the pool
        // drains whatever its size.
        let saturated = rate * finite(inputs.warm_mean_s) > 2.0 * f64::from(self.batch_size.max(1));
        let cap = u64::from(self.max_warm) + 1;
        let count = |m: f64| -> u64 {
            if rate < self.idle_rate_per_s || m <= 0.0 {
                return 0;
            }
            // In a burst the rate is the burst's own; the window's dispersion mostly measured
            // the switching between quiet and burst, which that rate already follows.
            let dispersion = if burst { 1.0 } else { inputs.dispersion };
            match self.target_hit_rate {
                Some(p) => arrivals_quantile(m, dispersion, p, cap).saturating_add(1),
                None => (m.ceil() as u64).min(cap),
            }
        };
        let up = count(mean);
        let down = count(mean * (1.0 + self.hysteresis.max(0.0))).max(up);
        Need {
            rate_per_s: rate,
            burst,
            lead_time_s,
            expected_arrivals: mean,
            up,
            down,
            saturated,
        }
    }
}

fn finite(v: f64) -> f64 {
    if v.is_finite() {
        v
    } else {
        0.0
    }
}

/// The demand's call on a pool's size, before bounds and cool-down.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Need {
    /// The rate sized for: the burst average when `burst`, else the lower of the two.
    #[serde(serialize_with = "round4")]
    pub rate_per_s: f64,
    /// The burst average stands `burst_z` noise deviations above the steady one.
    pub burst: bool,
    /// Mean warm-up plus one pacing interval, seconds.
    #[serde(serialize_with = "round4")]
    pub lead_time_s: f64,
    /// Allocations expected during the lead time (`rate × lead time`).
    #[serde(serialize_with = "round4")]
    pub expected_arrivals: f64,
    /// The count for this demand.
    pub up: u64,
    /// The count for this demand plus the hysteresis: what the pool may shrink to.
    pub down: u64,
    /// The demand outruns what two batches in flight can refill.
    pub saturated: bool,
}

/// Why the wanted count changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScaleReason {
    /// The scaler's first decision for the pool.
    Initial,
    /// Demand rose.
    DemandUp,
    /// Demand stayed low for the cool-down.
    DemandDown,
    /// The pool's bounds changed and the count had to follow.
    Bounds,
}

impl ScaleReason {
    /// The reason's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ScaleReason::Initial => "initial",
            ScaleReason::DemandUp => "demand_up",
            ScaleReason::DemandDown => "demand_down",
            ScaleReason::Bounds => "bounds",
        }
    }
}

/// What a decision was based on: the `detail` of the `pool_scaled` event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DecisionInputs {
    /// The measured demand.
    #[serde(flatten)]
    pub demand: DemandInputs,
    /// The count derived from it.
    pub need: Need,
    /// The target hit rate, if the pool has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_hit_rate: Option<f64>,
    /// The pool's floor.
    pub min_warm: u32,
    /// The pool's ceiling.
    pub max_warm: u32,
    /// The cool-down, seconds.
    pub cooldown_secs: f64,
}

/// A change of a pool's wanted warm count.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScaleDecision {
    /// The new wanted count, within the policy's bounds.
    pub wanted: u32,
    /// Why it changed.
    pub reason: ScaleReason,
    /// What it was based on.
    pub inputs: DecisionInputs,
}

impl ScaleDecision {
    /// The JSON for the `pool_scaled` event's `detail`: the inputs, plus `reason`. (The state
    /// machine adds `from` and `to`.)
    pub fn detail(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.inputs).unwrap_or_else(|_| serde_json::json!({}));
        if let Some(obj) = v.as_object_mut() {
            obj.insert("reason".into(), self.reason.as_str().into());
        }
        v
    }
}

/// Decides one pool's wanted warm count over time. One per pool; see the module docs.
#[derive(Clone, Debug, Default)]
pub struct Scaler {
    current: Option<u32>,
    /// Down counts of the last cool-down, as (time, count), counts strictly decreasing from
    /// the front: the front is the largest still in the window.
    recent: VecDeque<(u64, u32)>,
}

impl Scaler {
    /// A scaler that has decided nothing yet: its first call answers [`ScaleReason::Initial`].
    pub fn new() -> Self {
        Scaler::default()
    }

    /// A scaler that takes over a pool already at `wanted` (e.g. on a new leader, from the
    /// replicated state): it grows at once if needed, but shrinks only after a full cool-down
    /// from `now`, as if it had computed `wanted` itself at `now`.
    pub fn resume(wanted: u32, now: Timestamp) -> Self {
        Scaler {
            current: Some(wanted),
            recent: VecDeque::from([(now.as_millis(), wanted)]),
        }
    }

    /// The wanted count as last decided.
    pub fn current(&self) -> Option<u32> {
        self.current
    }

    /// Takes the demand as of `now` and answers the new wanted count if it changes. Call it
    /// regularly (each keep-warm step): the cool-down is measured over the calls it sees.
    pub fn decide(
        &mut self,
        policy: &Policy,
        inputs: &DemandInputs,
        now: Timestamp,
    ) -> Option<ScaleDecision> {
        let now_ms = now.as_millis();
        let need = policy.need(inputs);
        let up = policy.clamp(need.up);
        let down = policy.clamp(need.down);

        // Remember the down count for a cool-down; drop what it outranks or what is too old.
        while self.recent.back().is_some_and(|&(_, c)| c <= down) {
            self.recent.pop_back();
        }
        self.recent.push_back((now_ms, down));
        while self
            .recent
            .front()
            .is_some_and(|&(at, _)| at.saturating_add(policy.cooldown_ms) <= now_ms)
            && self.recent.len() > 1
        {
            self.recent.pop_front();
        }
        let held = self
            .recent
            .front()
            .map_or(down, |&(_, c)| policy.clamp(u64::from(c)));

        let (wanted, reason) = match self.current {
            None => (up, ScaleReason::Initial),
            Some(c) if c > policy.max_warm.max(policy.min_warm) => (held, ScaleReason::Bounds),
            Some(c) if c < policy.min_warm && up <= policy.min_warm => {
                (policy.min_warm, ScaleReason::Bounds)
            }
            Some(c) if up > c => (up, ScaleReason::DemandUp),
            Some(c) if held < c => (held, ScaleReason::DemandDown),
            Some(_) => return None,
        };
        if self.current == Some(wanted) {
            return None;
        }
        self.current = Some(wanted);
        Some(ScaleDecision {
            wanted,
            reason,
            inputs: DecisionInputs {
                demand: inputs.clone(),
                need,
                target_hit_rate: policy.target_hit_rate,
                min_warm: policy.min_warm,
                max_warm: policy.max_warm,
                cooldown_secs: policy.cooldown_ms as f64 / 1000.0,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warmpool_proto::PoolName;

    fn policy(min: u32, max: u32, target: Option<f64>) -> Policy {
        let mut spec = PoolSpec::new(PoolName::new("p").unwrap(), "img");
        spec.min_warm = min;
        spec.max_warm = Some(max);
        spec.scaling.target_hit_rate = target;
        spec.scaling.cooldown_secs = 60;
        spec.scaling.pacing_ms = 0;
        Policy::from_spec(&spec)
    }

    fn at(s: u64) -> Timestamp {
        Timestamp(1_000_000 + s * 1000)
    }

    /// A fake clock driving a scaler: steps of one second, the demand given per step.
    struct Run {
        scaler: Scaler,
        policy: Policy,
        now: u64,
        decisions: Vec<(u64, u32, ScaleReason)>,
    }

    impl Run {
        fn new(policy: Policy) -> Self {
            Run {
                scaler: Scaler::new(),
                policy,
                now: 0,
                decisions: Vec::new(),
            }
        }
        fn for_secs(&mut self, secs: u64, inputs: &DemandInputs) -> &mut Self {
            for _ in 0..secs {
                if let Some(d) = self.scaler.decide(&self.policy, inputs, at(self.now)) {
                    self.decisions.push((self.now, d.wanted, d.reason));
                }
                self.now += 1;
            }
            self
        }
        fn wanted(&self) -> u32 {
            self.scaler.current().unwrap()
        }
    }

    #[test]
    fn the_count_covers_the_lead_time_at_the_target_hit_rate() {
        let p = policy(0, 100, Some(0.99));
        // 0.5/s over a 2 s warm-up: one expected; Poisson(1)'s 0.99 quantile is 4, so 5.
        let n = p.need(&DemandInputs::steady(0.5, 2.0));
        assert_eq!((n.expected_arrivals, n.up), (1.0, 5));
        // Pacing is part of the lead time: 0.5/s × (1.5 s + 0.5 s).
        let mut paced = p.clone();
        paced.pacing_ms = 500;
        assert_eq!(paced.need(&DemandInputs::steady(0.5, 1.5)).up, 5);
        // A lower target needs fewer: Poisson(1)'s 0.9 quantile is 2.
        assert_eq!(
            policy(0, 100, Some(0.9))
                .need(&DemandInputs::steady(0.5, 2.0))
                .up,
            3
        );
        // Burstiness needs more: negative binomial mean 2, dispersion 2, 0.99 quantile 9.
        let mut bursty = DemandInputs::steady(1.0, 2.0);
        bursty.dispersion = 2.0;
        assert_eq!(p.need(&bursty).up, 10);
        // Without a target: the mean, rounded up.
        assert_eq!(
            policy(0, 100, None)
                .need(&DemandInputs::steady(1.2, 2.0))
                .up,
            3
        );
        // The burst average counts when it is the larger.
        let mut burst = DemandInputs::steady(0.1, 2.0);
        burst.burst_rate_per_s = 5.0;
        assert_eq!(policy(0, 100, None).need(&burst).up, 10);
        // Nothing to cover when idle.
        assert_eq!(p.need(&DemandInputs::steady(0.0, 2.0)).up, 0);
        assert_eq!(p.need(&DemandInputs::steady(0.001, 2.0)).up, 0);
        // Down counts are for 15 % more demand.
        let n = policy(0, 100, None).need(&DemandInputs::steady(1.0, 2.0));
        assert_eq!((n.up, n.down), (2, 3));
    }

    #[test]
    fn the_lead_time_is_the_mean_warm_up_not_the_p99() {
        let p = policy(0, 100, Some(0.99));
        let mut d = DemandInputs::steady(1.0, 1.3);
        d.warm_p99_s = 3.0;
        let n = p.need(&d);
        assert_eq!(n.lead_time_s, 1.3);
        // Poisson(1.3): P(≤4) = .9893, P(≤5) = .9977, so 5 + 1.
        assert_eq!(n.up, 6);
    }

    #[test]
    fn a_burst_is_sized_at_its_own_rate_and_only_when_it_stands_out() {
        let p = policy(0, 100, Some(0.99));
        let quiet = |burst_rate: f64| DemandInputs {
            rate_per_s: 0.2,
            burst_rate_per_s: burst_rate,
            burst_noise_per_s: 0.1,
            dispersion: 4.0,
            warm_mean_s: 1.0,
            warm_p99_s: 2.0,
            samples: 60,
            warm_samples: 10,
        };
        // Within noise (0.2 + 3 × 0.1 = 0.5): the steady rate, with the measured dispersion.
        // Negative binomial, mean 0.2, dispersion 4 (r = 1/15, q = 1/4): P(≤0) = .912,
        // P(≤3) = .985, P(≤4) = .990, so the 0.99 quantile is 4, and 4 + 1.
        let n = p.need(&quiet(0.45));
        assert!(!n.burst);
        assert_eq!((n.rate_per_s, n.up), (0.2, 5));
        // The same mean as Poisson needs less: bursty history buys a buffer.
        // Poisson(0.2): P(≤1) = .982, P(≤2) = .999, so 2 + 1.
        let mut poisson = quiet(0.2);
        poisson.dispersion = 1.0;
        assert_eq!(p.need(&poisson).up, 3);
        // Standing out: the burst rate, sized as Poisson at its own rate. Poisson(6):
        // P(≤11) = .980, P(≤12) = .991, so 12 + 1.
        let n = p.need(&quiet(6.0));
        assert!(n.burst);
        assert_eq!((n.rate_per_s, n.up), (6.0, 13));
        // A burst that ended: the lower, fast average.
        let mut after = quiet(0.05);
        after.rate_per_s = 1.5;
        assert_eq!(p.need(&after).rate_per_s, 0.05);
    }

    #[test]
    fn saturation_is_flagged_when_two_batches_cannot_keep_up() {
        let p = policy(0, 1000, Some(0.99)); // batch 4: 8 in flight at most
        assert!(!p.need(&DemandInputs::steady(3.0, 2.0)).saturated);
        assert!(p.need(&DemandInputs::steady(5.0, 2.0)).saturated);
    }

    #[test]
    fn first_decision_then_nothing_while_unchanged() {
        let mut run = Run::new(policy(2, 50, Some(0.99)));
        run.for_secs(10, &DemandInputs::steady(0.5, 2.0));
        assert_eq!(run.decisions, vec![(0, 5, ScaleReason::Initial)]);
    }

    #[test]
    fn up_at_once_down_only_after_the_cooldown() {
        let mut run = Run::new(policy(1, 50, Some(0.99)));
        run.for_secs(5, &DemandInputs::steady(0.5, 2.0));
        assert_eq!(run.wanted(), 5);
        run.for_secs(1, &DemandInputs::steady(5.0, 2.0));
        let up = run.decisions.last().copied().unwrap();
        assert_eq!(up.0, 5, "on the very step demand rose");
        assert_eq!(up.2, ScaleReason::DemandUp);
        assert!(up.1 > 15);
        let high = run.wanted();

        // Demand drops at t=6: nothing for a full cool-down (60 s) after the last high count.
        run.for_secs(59, &DemandInputs::steady(0.5, 2.0));
        assert_eq!(run.wanted(), high, "still cooling down at t=64");
        run.for_secs(2, &DemandInputs::steady(0.5, 2.0));
        let down = run.decisions.last().copied().unwrap();
        assert_eq!(down.0, 65, "a cool-down after the last high step (t=5)");
        assert_eq!(down.2, ScaleReason::DemandDown);
        // It comes down to the down count (with hysteresis): 0.575/s × 2 s = 1.15 expected,
        // Poisson(1.15)'s 0.99 quantile is 4, so 5 — the same as the up count here.
        assert_eq!(down.1, 5);
    }

    #[test]
    fn a_blip_of_demand_restarts_the_cooldown() {
        let mut run = Run::new(policy(0, 50, None));
        run.for_secs(1, &DemandInputs::steady(10.0, 2.0));
        assert_eq!(run.wanted(), 20);
        run.for_secs(40, &DemandInputs::steady(1.0, 2.0));
        run.for_secs(1, &DemandInputs::steady(10.0, 2.0)); // t=41
        run.for_secs(59, &DemandInputs::steady(1.0, 2.0)); // to t=100
        assert_eq!(run.wanted(), 20, "the blip at t=41 holds until t=101");
        run.for_secs(1, &DemandInputs::steady(1.0, 2.0));
        assert_eq!(
            run.decisions.last().unwrap(),
            &(101, 3, ScaleReason::DemandDown)
        );
    }

    #[test]
    fn the_pool_follows_falling_demand_one_cooldown_behind() {
        let mut run = Run::new(policy(0, 100, None));
        // Demand falls by 1/s every second from 20/s: counts 40, 38, ..., 2.
        for r in (1..=20).rev() {
            run.for_secs(1, &DemandInputs::steady(r as f64, 2.0));
        }
        run.for_secs(100, &DemandInputs::steady(1.0, 2.0));
        let downs: Vec<_> = run
            .decisions
            .iter()
            .filter(|d| d.2 == ScaleReason::DemandDown)
            .collect();
        assert!(downs.len() > 5, "steps down gradually: {downs:?}");
        // 40 was set for 20/s; the down count first drops below 40 at 16/s (t=4: 16 × 1.15 × 2
        // = 36.8), so the last step that still called for 40 was t=3, a cool-down before 63.
        assert_eq!(downs[0].0, 63);
        assert_eq!(run.wanted(), 3, "ends at the down count of 1/s (2.3 → 3)");
        for w in run.decisions.windows(2) {
            assert!(w[1].1 < w[0].1 || w[0].2 == ScaleReason::Initial);
        }
    }

    #[test]
    fn hysteresis_stops_flapping_at_a_boundary() {
        let mut p = policy(0, 50, None);
        p.cooldown_ms = 5_000;
        let mut run = Run::new(p);
        // The rate wobbles across the boundary between 4 and 5 (2.0/s × 2 s = 4 exactly)
        // for ten minutes, each side for longer than the cool-down.
        for i in 0..60 {
            let r = if i % 2 == 0 { 2.04 } else { 1.96 };
            run.for_secs(10, &DemandInputs::steady(r, 2.0));
        }
        assert_eq!(
            run.decisions,
            vec![(0, 5, ScaleReason::Initial)],
            "up to 5 once and never down: 1.96/s is not 15 % below the edge"
        );
        // Without hysteresis it would flap.
        let mut p = policy(0, 50, None);
        p.cooldown_ms = 5_000;
        p.hysteresis = 0.0;
        let mut run = Run::new(p);
        for i in 0..60 {
            let r = if i % 2 == 0 { 2.04 } else { 1.96 };
            run.for_secs(10, &DemandInputs::steady(r, 2.0));
        }
        assert!(run.decisions.len() > 50);
    }

    #[test]
    fn bounds_hold_and_follow_spec_changes_at_once() {
        let mut run = Run::new(policy(3, 8, Some(0.99)));
        run.for_secs(1, &DemandInputs::steady(0.0, 2.0));
        assert_eq!(run.wanted(), 3, "the floor with no demand");
        run.for_secs(1, &DemandInputs::steady(100.0, 2.0));
        assert_eq!(run.wanted(), 8, "the ceiling under any demand");
        // The ceiling is lowered: at once, cool-down or not.
        run.policy.max_warm = 6;
        run.for_secs(1, &DemandInputs::steady(100.0, 2.0));
        assert_eq!(run.decisions.last().unwrap(), &(2, 6, ScaleReason::Bounds));
        // The floor is raised above demand: at once.
        run.policy.min_warm = 6;
        run.policy.max_warm = 10;
        run.for_secs(1, &DemandInputs::steady(0.0, 2.0));
        run.policy.min_warm = 9;
        run.for_secs(1, &DemandInputs::steady(0.0, 2.0));
        assert_eq!(run.decisions.last().unwrap(), &(4, 9, ScaleReason::Bounds));
        // A fixed policy never moves.
        let mut run = Run::new(Policy::fixed(4));
        run.for_secs(100, &DemandInputs::steady(50.0, 2.0));
        run.for_secs(100, &DemandInputs::steady(0.0, 2.0));
        assert_eq!(run.decisions, vec![(0, 4, ScaleReason::Initial)]);
    }

    #[test]
    fn a_resumed_scaler_waits_a_cooldown_before_shrinking() {
        let p = policy(0, 50, Some(0.99));
        let mut s = Scaler::resume(12, at(0));
        let quiet = DemandInputs::steady(0.0, 2.0);
        assert!(s.decide(&p, &quiet, at(30)).is_none());
        let d = s.decide(&p, &quiet, at(60)).unwrap();
        assert_eq!((d.wanted, d.reason), (0, ScaleReason::DemandDown));
        let mut s = Scaler::resume(2, at(0));
        let d = s
            .decide(&p, &DemandInputs::steady(1.0, 2.0), at(1))
            .unwrap();
        assert_eq!(d.reason, ScaleReason::DemandUp);
    }

    #[test]
    fn the_decision_detail_is_the_event_json() {
        let mut s = Scaler::new();
        let mut inputs = DemandInputs::steady(0.5, 2.0);
        inputs.samples = 42;
        let d = s
            .decide(&policy(1, 20, Some(0.99)), &inputs, at(0))
            .unwrap();
        assert_eq!(
            d.detail(),
            serde_json::json!({
                "reason": "initial",
                "rate_per_s": 0.5, "burst_rate_per_s": 0.5, "burst_noise_per_s": 0.0,
                "dispersion": 1.0, "warm_mean_s": 2.0, "warm_p99_s": 2.0, "samples": 42,
                "warm_samples": 0,
                "need": {"rate_per_s": 0.5, "burst": false, "lead_time_s": 2.0,
                         "expected_arrivals": 1.0, "up": 5, "down": 5, "saturated": false},
                "target_hit_rate": 0.99, "min_warm": 1, "max_warm": 20, "cooldown_secs": 60.0
            })
        );
    }
}
