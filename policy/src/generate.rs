//! Synthetic traces, deterministic for a seed: steady (Poisson), diurnal (a smoothly varying
//! rate) and bursty (quiet, with short heavy bursts). Times start at 0.

use serde::{Deserialize, Serialize};

use crate::rng::Rng;
use crate::trace::{Arrival, Trace};

/// How long sessions hold their containers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Hold {
    /// Always the same.
    Fixed {
        /// Hold, ms.
        ms: u64,
    },
    /// Exponentially distributed.
    Exponential {
        /// Mean hold, ms.
        mean_ms: u64,
    },
    /// Log-normally distributed: most sessions short, a few long.
    LogNormal {
        /// Median hold, ms.
        median_ms: u64,
        /// Standard deviation of the logarithm (1.0 is a wide spread).
        sigma: f64,
    },
}

impl Hold {
    fn sample(&self, rng: &mut Rng) -> u64 {
        let ms = match self {
            Hold::Fixed { ms } => return *ms,
            Hold::Exponential { mean_ms } => rng.exponential(*mean_ms as f64),
            Hold::LogNormal { median_ms, sigma } => {
                *median_ms as f64 * (sigma * rng.normal()).exp()
            }
        };
        if ms.is_finite() {
            ms.max(0.0).round() as u64
        } else {
            0
        }
    }
}

/// Poisson arrivals at a constant rate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Steady {
    /// Arrivals per second.
    pub rate_per_s: f64,
    /// Length of the trace, seconds.
    pub duration_s: f64,
    /// Hold times.
    pub hold: Hold,
}

/// Poisson arrivals whose rate follows a sine around its mean:
/// `mean × (1 + amplitude × sin(2π t / period))`, starting at the mean on the way up.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Diurnal {
    /// Mean arrivals per second.
    pub mean_rate_per_s: f64,
    /// Swing around the mean, 0..=1 (1: the rate touches zero at night).
    pub amplitude: f64,
    /// Length of one "day", seconds.
    pub period_s: f64,
    /// Length of the trace, seconds.
    pub duration_s: f64,
    /// Hold times.
    pub hold: Hold,
}

/// A quiet Poisson background with bursts: burst starts are a Poisson process with mean gap
/// `mean_gap_s` (counted from the end of the previous burst), each burst lasts uniformly
/// between half and one and a half times `burst_s`, and during it arrivals come at
/// `burst_rate_per_s` on top of the background.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bursty {
    /// Background arrivals per second.
    pub quiet_rate_per_s: f64,
    /// Extra arrivals per second during a burst.
    pub burst_rate_per_s: f64,
    /// Mean quiet time between bursts, seconds.
    pub mean_gap_s: f64,
    /// Mean length of a burst, seconds.
    pub burst_s: f64,
    /// Length of the trace, seconds.
    pub duration_s: f64,
    /// Hold times.
    pub hold: Hold,
}

/// Poisson arrival times at `rate` in `[from_s, to_s)`, seconds.
fn poisson(rng: &mut Rng, rate: f64, from_s: f64, to_s: f64, out: &mut Vec<f64>) {
    if !(rate > 0.0 && rate.is_finite()) {
        return;
    }
    let mut t = from_s;
    loop {
        t += rng.exponential(1.0 / rate);
        if t >= to_s {
            return;
        }
        out.push(t);
    }
}

fn finish(times: Vec<f64>, duration_s: f64, hold: &Hold, rng: &mut Rng) -> Trace {
    let arrivals = times
        .into_iter()
        .map(|t| Arrival {
            at_ms: (t * 1000.0) as u64,
            hold_ms: hold.sample(rng),
        })
        .collect();
    Trace::new(arrivals, 0, (duration_s.max(0.0) * 1000.0) as u64)
}

impl Steady {
    /// The trace for `seed`.
    pub fn generate(&self, seed: u64) -> Trace {
        let mut rng = Rng::new(seed);
        let mut times = Vec::new();
        poisson(&mut rng, self.rate_per_s, 0.0, self.duration_s, &mut times);
        finish(times, self.duration_s, &self.hold, &mut rng)
    }
}

impl Diurnal {
    /// The trace for `seed` (by thinning a Poisson process at the peak rate).
    pub fn generate(&self, seed: u64) -> Trace {
        let mut rng = Rng::new(seed);
        let a = self.amplitude.clamp(0.0, 1.0);
        let peak = self.mean_rate_per_s * (1.0 + a);
        let mut candidates = Vec::new();
        poisson(&mut rng, peak, 0.0, self.duration_s, &mut candidates);
        let period = self.period_s.max(1e-3);
        let times = candidates
            .into_iter()
            .filter(|t| {
                let rate =
                    self.mean_rate_per_s * (1.0 + a * (std::f64::consts::TAU * t / period).sin());
                rng.uniform() * peak < rate
            })
            .collect();
        finish(times, self.duration_s, &self.hold, &mut rng)
    }
}

impl Bursty {
    /// The trace for `seed`.
    pub fn generate(&self, seed: u64) -> Trace {
        let mut rng = Rng::new(seed);
        let mut times = Vec::new();
        poisson(
            &mut rng,
            self.quiet_rate_per_s,
            0.0,
            self.duration_s,
            &mut times,
        );
        let mut t = 0.0;
        loop {
            t += rng.exponential(self.mean_gap_s.max(0.0));
            if t >= self.duration_s {
                break;
            }
            let len = self.burst_s.max(0.0) * (0.5 + rng.uniform());
            let end = (t + len).min(self.duration_s);
            poisson(&mut rng, self.burst_rate_per_s, t, end, &mut times);
            t = end;
        }
        finish(times, self.duration_s, &self.hold, &mut rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOLD: Hold = Hold::Fixed { ms: 1000 };

    /// Variance / mean of arrivals per second over the whole trace.
    fn dispersion(t: &Trace) -> f64 {
        let mut counts = vec![0.0f64; (t.duration_ms() / 1000) as usize + 1];
        for a in &t.arrivals {
            counts[(a.at_ms / 1000) as usize] += 1.0;
        }
        let n = counts.len() as f64;
        let mean = counts.iter().sum::<f64>() / n;
        let var = counts.iter().map(|c| (c - mean).powi(2)).sum::<f64>() / (n - 1.0);
        var / mean
    }

    #[test]
    fn generators_are_deterministic_per_seed() {
        let s = Steady {
            rate_per_s: 2.0,
            duration_s: 100.0,
            hold: Hold::LogNormal {
                median_ms: 1000,
                sigma: 1.0,
            },
        };
        assert_eq!(s.generate(1), s.generate(1));
        assert_ne!(s.generate(1), s.generate(2));
        let b = Bursty {
            quiet_rate_per_s: 0.1,
            burst_rate_per_s: 5.0,
            mean_gap_s: 60.0,
            burst_s: 10.0,
            duration_s: 600.0,
            hold: HOLD,
        };
        assert_eq!(b.generate(9), b.generate(9));
    }

    #[test]
    fn steady_has_its_rate_and_poisson_dispersion() {
        let t = Steady {
            rate_per_s: 3.0,
            duration_s: 3600.0,
            hold: Hold::Exponential { mean_ms: 20_000 },
        }
        .generate(5);
        assert!((t.mean_rate_per_s() - 3.0).abs() < 0.1);
        assert_eq!((t.start_ms, t.end_ms), (0, 3_600_000));
        let mean_hold =
            t.arrivals.iter().map(|a| a.hold_ms as f64).sum::<f64>() / t.arrivals.len() as f64;
        assert!((mean_hold - 20_000.0).abs() < 1_000.0, "{mean_hold}");
        let d = dispersion(&t);
        assert!((d - 1.0).abs() < 0.1, "{d}");
    }

    #[test]
    fn diurnal_rate_rises_and_falls() {
        let t = Diurnal {
            mean_rate_per_s: 2.0,
            amplitude: 0.9,
            period_s: 4000.0,
            duration_s: 4000.0,
            hold: HOLD,
        }
        .generate(3);
        let count = |from: u64, to: u64| {
            t.arrivals
                .iter()
                .filter(|a| a.at_ms >= from * 1000 && a.at_ms < to * 1000)
                .count() as f64
        };
        // Around the peak (t = 1000 s) vs around the trough (t = 3000 s), 400 s each.
        let peak = count(800, 1200) / 400.0;
        let trough = count(2800, 3200) / 400.0;
        assert!(peak > 3.4 && trough < 0.5, "{peak} {trough}");
        assert!((t.mean_rate_per_s() - 2.0).abs() < 0.15);
    }

    #[test]
    fn bursty_is_bursty() {
        let t = Bursty {
            quiet_rate_per_s: 0.2,
            burst_rate_per_s: 6.0,
            mean_gap_s: 120.0,
            burst_s: 20.0,
            duration_s: 3600.0,
            hold: HOLD,
        }
        .generate(11);
        // Expected about 3600 / 140 ≈ 26 bursts of ~120 arrivals on top of 720 background.
        let n = t.arrivals.len();
        assert!((2500..5500).contains(&n), "{n}");
        assert!(dispersion(&t) > 3.0);
    }
}
