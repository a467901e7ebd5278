//! The demand estimator: allocation arrivals and warm-up times in, [`DemandInputs`] out.
//!
//! It is fed plain values with their timestamps, never reads a clock, and so can be driven by
//! the leader's loop, by a replay of the event log, or by the simulator's virtual clock alike.
//!
//! Three things are measured:
//!
//! - **Arrival rate**, as two exponentially weighted moving averages of the arrival count:
//!   a *steady* one with a half-life of 60 s and a *burst* one with a half-life of 5 s (the
//!   same two-window idea as Knative's stable and panic windows). Each arrival adds a weight of
//!   1 that halves every half-life, so the rate falls by half every half-life once traffic
//!   stops. A weight sum over an infinite past at a constant rate `r` is `r·H/ln 2`; the
//!   estimator divides by the weight of the time it has actually watched, so it is unbiased from
//!   the start instead of creeping up from zero (with a floor of 5 s on that watched time, so
//!   the first arrival does not read as an enormous rate).
//! - **Burstiness**, the index of dispersion (variance / mean) of arrival counts per 1 s
//!   bucket of the clock over the last 5 minutes: 1.0 for Poisson arrivals, larger when
//!   arrivals bunch.
//!   With little evidence it is shrunk towards 1 (a prior worth 10 arrivals), so two arrivals
//!   that happen to share a second do not make a pool look bursty.
//! - **Time to make a container warm**: the mean and the p99 of the last 200 samples
//!   (planned → warm), with a default of 2 s for both before the first sample (a cold
//!   `docker run` is about 0.5 s, plus the first passing health probe at the default 1 s
//!   interval). The scaler sizes with the mean (see [`scaler`](crate::scaler) for why); the
//!   p99 is reported with every decision.

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use warmpool_proto::Timestamp;

/// Tunables of the [`DemandEstimator`]. The defaults are documented on the module.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EstimatorConfig {
    /// Half-life of the steady arrival-rate average, ms.
    pub half_life_ms: u64,
    /// Half-life of the burst arrival-rate average, ms.
    pub burst_half_life_ms: u64,
    /// Width of a bucket for the dispersion measure, ms.
    pub bucket_ms: u64,
    /// How far back the dispersion measure looks, ms.
    pub window_ms: u64,
    /// How many recent warm-up times the p99 is taken over.
    pub warm_samples: usize,
    /// The warm-up time assumed before any has been measured, ms.
    pub default_warm_ms: u64,
    /// Arrivals' worth of confidence that traffic is Poisson, before any is seen.
    pub dispersion_prior: f64,
}

impl Default for EstimatorConfig {
    fn default() -> Self {
        EstimatorConfig {
            half_life_ms: 60_000,
            burst_half_life_ms: 5_000,
            bucket_ms: 1_000,
            window_ms: 300_000,
            warm_samples: 200,
            default_warm_ms: 2_000,
            dispersion_prior: 10.0,
        }
    }
}

/// What the scaler needs to know about a pool's demand, at one moment.
///
/// Serializable: it is part of the `detail` of the `pool_scaled` event that records a scaling
/// decision. Numbers are rounded to 4 decimals on the wire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DemandInputs {
    /// Allocation attempts per second, steady average (half-life 60 s by default).
    #[serde(serialize_with = "round4")]
    pub rate_per_s: f64,
    /// Allocation attempts per second, fast average (half-life 5 s by default).
    #[serde(serialize_with = "round4")]
    pub burst_rate_per_s: f64,
    /// How much the fast average wobbles when demand is steady at `rate_per_s`: its standard
    /// deviation for Poisson arrivals, `sqrt(rate × ln 2 / (2 × burst half-life))`. The
    /// scaler trusts the fast average only when it rises well above this noise.
    #[serde(serialize_with = "round4")]
    pub burst_noise_per_s: f64,
    /// Variance / mean of arrivals per bucket over the recent window; 1.0 for Poisson.
    #[serde(serialize_with = "round4")]
    pub dispersion: f64,
    /// Mean of recent times from planned to warm, seconds.
    #[serde(serialize_with = "round4")]
    pub warm_mean_s: f64,
    /// p99 of recent times from planned to warm, seconds.
    #[serde(serialize_with = "round4")]
    pub warm_p99_s: f64,
    /// Arrivals counted in the dispersion window: how much evidence there is.
    pub samples: u64,
    /// Warm-up times the p99 is taken over (0: the default is in use).
    pub warm_samples: u32,
}

pub(crate) fn round4<S: serde::Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    let r = (v * 10_000.0).round() / 10_000.0;
    s.serialize_f64(if r.is_finite() { r } else { 0.0 })
}

impl DemandInputs {
    /// Inputs for a pool with a steady `rate_per_s` (both averages equal, no noise), Poisson
    /// arrivals and every warm-up taking `warm_s`: handy for tests and what-if questions.
    pub fn steady(rate_per_s: f64, warm_s: f64) -> Self {
        DemandInputs {
            rate_per_s,
            burst_rate_per_s: rate_per_s,
            burst_noise_per_s: 0.0,
            dispersion: 1.0,
            warm_mean_s: warm_s,
            warm_p99_s: warm_s,
            samples: 0,
            warm_samples: 0,
        }
    }
}

/// An exponentially weighted sum of events, as of time `at`.
#[derive(Clone, Debug)]
struct DecayingSum {
    half_life_ms: f64,
    level: f64,
    at: u64,
}

impl DecayingSum {
    fn new(half_life_ms: u64, at: u64) -> Self {
        DecayingSum {
            half_life_ms: half_life_ms.max(1) as f64,
            level: 0.0,
            at,
        }
    }

    fn factor(&self, dt_ms: u64) -> f64 {
        (-(dt_ms as f64) / self.half_life_ms).exp2()
    }

    /// Adds `n` events at `at`. An `at` earlier than the newest seen adds the weight it would
    /// have today, so slightly out-of-order timestamps (proposers' clocks differ) are fine.
    fn add(&mut self, at: u64, n: f64) {
        if at >= self.at {
            self.level = self.level * self.factor(at - self.at) + n;
            self.at = at;
        } else {
            self.level += n * self.factor(self.at - at);
        }
    }

    /// The sum as of `now` (never in the past of the newest event).
    fn level_at(&self, now: u64) -> f64 {
        self.level * self.factor(now.saturating_sub(self.at))
    }

    /// Events per second, corrected for having watched only `watched_ms`.
    fn rate(&self, now: u64, watched_ms: u64) -> f64 {
        let lambda = std::f64::consts::LN_2 / (self.half_life_ms / 1000.0);
        let watched_s = watched_ms as f64 / 1000.0;
        let seen = 1.0 - (-lambda * watched_s).exp();
        self.level_at(now) * lambda / seen
    }
}

/// Measures one pool's demand. See the module docs for what and how.
#[derive(Clone, Debug)]
pub struct DemandEstimator {
    config: EstimatorConfig,
    start: u64,
    steady: DecayingSum,
    burst: DecayingSum,
    /// Non-empty buckets in the window, oldest first: (bucket index, count; bucket `i` spans
    /// `[i, i + 1) * bucket_ms` of the clock).
    buckets: VecDeque<(u64, u64)>,
    /// Sum of the counts in `buckets`, and of their squares.
    bucket_sum: u64,
    bucket_sum_sq: u64,
    /// Recent warm-up times, ms, oldest first, and the same sorted.
    warm: VecDeque<u64>,
    warm_sorted: Vec<u64>,
    warm_sum: u64,
}

impl DemandEstimator {
    /// An estimator with the default configuration that starts watching at `now`.
    pub fn new(now: Timestamp) -> Self {
        Self::with_config(EstimatorConfig::default(), now)
    }

    /// An estimator with `config` that starts watching at `now`. "Watching" matters: an
    /// estimator that has seen no arrival for ten minutes knows the rate is low, one created a
    /// second ago does not.
    pub fn with_config(config: EstimatorConfig, now: Timestamp) -> Self {
        let start = now.as_millis();
        DemandEstimator {
            steady: DecayingSum::new(config.half_life_ms, start),
            burst: DecayingSum::new(config.burst_half_life_ms, start),
            config,
            start,
            buckets: VecDeque::new(),
            bucket_sum: 0,
            bucket_sum_sq: 0,
            warm: VecDeque::new(),
            warm_sorted: Vec::new(),
            warm_sum: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &EstimatorConfig {
        &self.config
    }

    /// One allocation attempt at `at`, whether it was served at once, waited, or was refused:
    /// demand is what was asked for, not what was got.
    pub fn record_arrival(&mut self, at: Timestamp) {
        self.record_arrivals(at, 1);
    }

    /// `n` allocation attempts at `at`, e.g. the growth of a replicated arrivals counter since
    /// the last look.
    pub fn record_arrivals(&mut self, at: Timestamp, n: u64) {
        if n == 0 {
            return;
        }
        let at = at.as_millis().max(self.start);
        self.steady.add(at, n as f64);
        self.burst.add(at, n as f64);
        let bucket = at / self.config.bucket_ms.max(1);
        // Almost always the newest bucket; an out-of-order arrival is put in its place.
        let pos = self
            .buckets
            .iter()
            .rposition(|(b, _)| *b <= bucket)
            .map_or(0, |i| i + 1);
        match self.buckets.get_mut(pos.wrapping_sub(1)) {
            Some((b, count)) if *b == bucket => {
                self.bucket_sum_sq += 2 * *count * n + n * n;
                *count += n;
            }
            _ => {
                self.buckets.insert(pos, (bucket, n));
                self.bucket_sum_sq += n * n;
            }
        }
        self.bucket_sum += n;
        let newest = self.buckets.back().map_or(bucket, |(b, _)| *b);
        let keep_from = newest.saturating_sub(self.window_buckets());
        while let Some(&(b, c)) = self.buckets.front() {
            if b >= keep_from {
                break;
            }
            self.buckets.pop_front();
            self.bucket_sum -= c;
            self.bucket_sum_sq -= c * c;
        }
    }

    /// One container's time from being planned to being warm.
    pub fn record_warm_time(&mut self, duration: Duration) {
        let ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        self.warm.push_back(ms);
        self.warm_sum = self.warm_sum.saturating_add(ms);
        let at = self.warm_sorted.partition_point(|&v| v < ms);
        self.warm_sorted.insert(at, ms);
        while self.warm.len() > self.config.warm_samples.max(1) {
            if let Some(old) = self.warm.pop_front() {
                self.warm_sum = self.warm_sum.saturating_sub(old);
                if let Ok(i) = self.warm_sorted.binary_search(&old) {
                    self.warm_sorted.remove(i);
                }
            }
        }
    }

    fn window_buckets(&self) -> u64 {
        (self.config.window_ms / self.config.bucket_ms.max(1)).max(2)
    }

    /// The demand as of `now`.
    pub fn inputs(&self, now: Timestamp) -> DemandInputs {
        let now = now.as_millis().max(self.start);
        let watched = (now - self.start).max(self.config.burst_half_life_ms);
        let (dispersion, samples) = self.dispersion(now);
        let rate = finite(self.steady.rate(now, watched));
        let burst_half_life_s = self.config.burst_half_life_ms.max(1) as f64 / 1000.0;
        let warm_mean_ms = if self.warm.is_empty() {
            self.config.default_warm_ms as f64
        } else {
            self.warm_sum as f64 / self.warm.len() as f64
        };
        DemandInputs {
            rate_per_s: rate,
            burst_rate_per_s: finite(self.burst.rate(now, watched)),
            burst_noise_per_s: finite(
                (rate * std::f64::consts::LN_2 / (2.0 * burst_half_life_s)).sqrt(),
            ),
            dispersion,
            warm_mean_s: warm_mean_ms / 1000.0,
            warm_p99_s: self.warm_p99_ms() as f64 / 1000.0,
            samples,
            warm_samples: self.warm.len() as u32,
        }
    }

    /// Index of dispersion over the complete buckets of the window, shrunk towards 1 by the
    /// prior; and the arrivals it was measured on.
    ///
    /// Buckets are aligned to the clock, not to when watching began: estimators fed the same
    /// arrivals count them alike whenever each started (the leader's and a replay's of its
    /// history, or a new leader's after a failover). Aligned to the start, a burst of two
    /// seconds fell into two or three buckets depending on the phase, and the dispersion moved
    /// by a tenth between runs of the same demand. The bucket watching began in is partial,
    /// and not counted.
    fn dispersion(&self, now: u64) -> (f64, u64) {
        let width = self.config.bucket_ms.max(1);
        let current = now / width;
        let lo = current
            .saturating_sub(self.window_buckets())
            .max(self.start.div_ceil(width));
        if current <= lo {
            return (1.0, 0);
        }
        let n = current - lo; // complete buckets in the window
                              // The running sums cover every bucket kept; take out the few outside the window
                              // (older than `lo` at the front, the current incomplete one at the back).
        let (mut sum, mut sum_sq) = (self.bucket_sum, self.bucket_sum_sq);
        for &(_, c) in self.buckets.iter().take_while(|(b, _)| *b < lo) {
            sum -= c;
            sum_sq -= c * c;
        }
        for &(_, c) in self.buckets.iter().rev().take_while(|(b, _)| *b >= current) {
            sum -= c;
            sum_sq -= c * c;
        }
        let arrivals = sum;
        let (sum, sum_sq) = (sum as f64, sum_sq as f64);
        if n < 2 || arrivals == 0 {
            return (1.0, arrivals);
        }
        let nf = n as f64;
        let mean = sum / nf;
        let var = ((sum_sq - nf * mean * mean) / (nf - 1.0)).max(0.0);
        let measured = var / mean;
        let prior = self.config.dispersion_prior.max(0.0);
        let a = arrivals as f64;
        (finite((a * measured + prior) / (a + prior)), arrivals)
    }

    /// p99 (nearest rank) of the recent warm-up times, or the default before any.
    fn warm_p99_ms(&self) -> u64 {
        if self.warm_sorted.is_empty() {
            return self.config.default_warm_ms;
        }
        self.warm_sorted[percentile_rank(self.warm_sorted.len(), 0.99)]
    }
}

/// Index of the nearest-rank percentile `q` in a sorted list of `n > 0` values.
pub(crate) fn percentile_rank(n: usize, q: f64) -> usize {
    let rank = (q * n as f64).ceil() as usize;
    rank.clamp(1, n) - 1
}

fn finite(v: f64) -> f64 {
    if v.is_finite() {
        v
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn t(s: f64) -> Timestamp {
        Timestamp(1_000_000 + (s * 1000.0) as u64)
    }

    #[test]
    fn steady_rate_is_measured_from_the_start() {
        let mut e = DemandEstimator::new(t(0.0));
        // 2 per second, evenly, for 30 s: already right, not creeping up from zero.
        for i in 0..60 {
            e.record_arrival(t(i as f64 * 0.5));
        }
        let d = e.inputs(t(30.0));
        assert!((d.rate_per_s - 2.0).abs() < 0.1, "{d:?}");
        assert!((d.burst_rate_per_s - 2.0).abs() < 0.3, "{d:?}");
        assert_eq!(d.samples, 60);
    }

    #[test]
    fn the_rate_decays_by_half_per_half_life_when_traffic_stops() {
        let mut e = DemandEstimator::new(t(0.0));
        for i in 0..1200 {
            e.record_arrival(t(i as f64 * 0.5)); // 2/s for 10 minutes
        }
        let at_stop = e.inputs(t(600.0));
        assert!((at_stop.rate_per_s - 2.0).abs() < 0.05, "{at_stop:?}");
        let later = e.inputs(t(660.0));
        assert!(
            (later.rate_per_s - 1.0).abs() < 0.03,
            "one half-life later: {later:?}"
        );
        assert!(later.burst_rate_per_s < 0.001, "burst average forgot fast");
        let much_later = e.inputs(t(1200.0));
        assert!(much_later.rate_per_s < 0.0025, "{much_later:?}");
    }

    #[test]
    fn the_first_arrival_is_not_an_enormous_rate() {
        let mut e = DemandEstimator::new(t(0.0));
        e.record_arrival(t(0.1));
        let d = e.inputs(t(0.2));
        assert!(d.rate_per_s <= 0.21, "{d:?}");
        assert_eq!(
            DemandEstimator::new(t(0.0)).inputs(t(100.0)).rate_per_s,
            0.0
        );
    }

    #[test]
    fn the_dispersion_does_not_depend_on_when_watching_began() {
        // A burst of 30 in 2 s, watched from two starts within one bucket (0.35 s apart).
        let burst = |e: &mut DemandEstimator| {
            for i in 0..30 {
                e.record_arrival(t(10.3 + f64::from(i) * 0.066));
            }
        };
        let (mut a, mut b) = (DemandEstimator::new(t(0.1)), DemandEstimator::new(t(0.45)));
        burst(&mut a);
        burst(&mut b);
        for at in [12.0, 13.5, 20.0, 40.0] {
            let (da, db) = (a.inputs(t(at)), b.inputs(t(at)));
            assert_eq!(da.dispersion, db.dispersion, "at {at} s");
            assert_eq!(da.samples, db.samples, "at {at} s");
        }
        // Only complete buckets count: none yet, then one.
        let e = DemandEstimator::new(t(0.45));
        assert_eq!(e.inputs(t(0.9)).samples, 0);
        assert_eq!(e.inputs(t(1.9)).dispersion, 1.0);
    }

    #[test]
    fn out_of_order_arrivals_count_the_same() {
        let mut a = DemandEstimator::new(t(0.0));
        let mut b = DemandEstimator::new(t(0.0));
        let times = [1.0, 2.0, 2.5, 7.0, 9.0];
        for s in times {
            a.record_arrival(t(s));
        }
        for s in [1.0, 2.5, 2.0, 9.0, 7.0] {
            b.record_arrival(t(s));
        }
        let (da, db) = (a.inputs(t(20.0)), b.inputs(t(20.0)));
        assert!((da.rate_per_s - db.rate_per_s).abs() < 1e-9);
        assert_eq!(da.dispersion, db.dispersion);
        // Before the start counts as the start.
        b.record_arrival(Timestamp(0));
        assert_eq!(b.inputs(t(20.0)).samples, 6);
    }

    #[test]
    fn poisson_arrivals_have_dispersion_near_one() {
        let mut r = Rng::new(3);
        let mut e = DemandEstimator::new(t(0.0));
        let mut now = 0.0;
        while now < 300.0 {
            now += r.exponential(1.0 / 3.0); // 3 per second
            e.record_arrival(t(now));
        }
        let d = e.inputs(t(300.0));
        assert!((d.dispersion - 1.0).abs() < 0.2, "{d:?}");
    }

    #[test]
    fn bursts_raise_the_dispersion_and_regular_arrivals_lower_it() {
        let mut e = DemandEstimator::new(t(0.0));
        // Quiet for 4 minutes at one every 10 s, then 40 arrivals in 4 seconds.
        for i in 0..24 {
            e.record_arrival(t(i as f64 * 10.0));
        }
        for i in 0..40 {
            e.record_arrival(t(240.0 + i as f64 * 0.1));
        }
        let d = e.inputs(t(245.0));
        assert!(d.dispersion > 5.0, "{d:?}");
        assert!(d.burst_rate_per_s > 3.0 * d.rate_per_s, "{d:?}");

        // Exactly one per second: no variance at all.
        let mut e = DemandEstimator::new(t(0.0));
        for i in 0..300 {
            e.record_arrival(t(i as f64 + 0.5));
        }
        let d = e.inputs(t(300.0));
        assert!(d.dispersion < 0.1, "{d:?}");
    }

    #[test]
    fn little_evidence_keeps_dispersion_near_one() {
        let mut e = DemandEstimator::new(t(0.0));
        e.record_arrival(t(100.2));
        e.record_arrival(t(100.4));
        let d = e.inputs(t(300.0));
        assert!(
            d.dispersion > 1.0 && d.dispersion < 1.4,
            "two arrivals in one bucket are weak evidence: {d:?}"
        );
        let nothing = DemandEstimator::new(t(0.0)).inputs(t(300.0));
        assert_eq!(nothing.dispersion, 1.0);
    }

    #[test]
    fn the_dispersion_window_forgets() {
        let mut e = DemandEstimator::new(t(0.0));
        for i in 0..50 {
            e.record_arrival(t(10.0 + i as f64 * 0.01));
        }
        assert!(e.inputs(t(20.0)).dispersion > 5.0);
        e.record_arrival(t(400.0));
        let d = e.inputs(t(401.0));
        assert_eq!(d.samples, 1, "the burst is older than the 5 minute window");
        assert!(e.buckets.len() <= 2);
    }

    #[test]
    fn warm_p99_defaults_then_tracks_recent_samples() {
        let mut e = DemandEstimator::new(t(0.0));
        assert_eq!(e.inputs(t(1.0)).warm_p99_s, 2.0);
        assert_eq!(e.inputs(t(1.0)).warm_mean_s, 2.0);
        assert_eq!(e.inputs(t(1.0)).warm_samples, 0);
        for ms in 1..=100u64 {
            e.record_warm_time(Duration::from_millis(ms * 10)); // 10 ms .. 1000 ms
        }
        let d = e.inputs(t(1.0));
        assert_eq!(d.warm_p99_s, 0.99);
        assert_eq!(d.warm_mean_s, 0.505);
        assert_eq!(d.warm_samples, 100);
        // Only the last 200 count: 200 fast ones push the slow ones out.
        for _ in 0..200 {
            e.record_warm_time(Duration::from_millis(300));
        }
        assert_eq!(e.inputs(t(1.0)).warm_p99_s, 0.3);
        assert_eq!(e.inputs(t(1.0)).warm_mean_s, 0.3);
    }

    #[test]
    fn inputs_serialize_rounded() {
        let d = DemandInputs {
            rate_per_s: 0.1 + 0.2,
            burst_rate_per_s: 1.0 / 3.0,
            burst_noise_per_s: 0.1,
            dispersion: 1.0,
            warm_mean_s: 1.5,
            warm_p99_s: 2.0,
            samples: 5,
            warm_samples: 0,
        };
        assert_eq!(
            serde_json::to_value(&d).unwrap(),
            serde_json::json!({"rate_per_s": 0.3, "burst_rate_per_s": 0.3333,
                "burst_noise_per_s": 0.1, "dispersion": 1.0, "warm_mean_s": 1.5,
                "warm_p99_s": 2.0, "samples": 5, "warm_samples": 0})
        );
    }
}
