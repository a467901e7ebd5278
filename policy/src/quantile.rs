//! Quantiles of arrival counts: how many allocations may arrive in a window, at a given
//! confidence.
//!
//! The scaler asks: "with `mean` arrivals expected in the window and a variance of
//! `mean × dispersion`, what count is not exceeded with probability `p`?" The answer comes from
//! a discrete distribution matched to those two moments:
//!
//! - dispersion ≤ 1: **Poisson**(mean). Arrivals of independent clients are Poisson; counts
//!   that look *less* variable than Poisson (a perfectly regular client) are treated as Poisson
//!   anyway, which errs towards more warm containers.
//! - dispersion > 1: **negative binomial** with that mean and variance. It is the Poisson whose
//!   rate itself varies (a gamma-mixed Poisson), which is what bursty traffic is: quiet
//!   stretches and bursts. Its right tail is heavier than the Poisson's, so bursty pools keep a
//!   larger buffer.
//!
//! Both are computed exactly by summing the probability mass function, which matters because
//! the interesting pools are small: with a mean of 1.5 arrivals the normal approximation's
//! symmetric tail is badly wrong. Only when the mass at zero underflows (mean in the hundreds)
//! do we switch to the normal approximation with a continuity correction, where it is accurate.

/// The standard normal quantile function Φ⁻¹(p), for `p` in `(0, 1)`.
///
/// Acklam's rational approximation (relative error below 1.2e-9), which is plenty for
/// turning a hit-rate target into a z-score. Values of `p` outside `(0, 1)` are clamped to the
/// nearest representable open-interval values.
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    const P_LOW: f64 = 0.024_25;
    let p = if p.is_nan() {
        0.5
    } else {
        p.clamp(1e-15, 1.0 - 1e-15)
    };
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < P_LOW {
        tail((-2.0 * p.ln()).sqrt())
    } else if p <= 1.0 - P_LOW {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    }
}

/// The smallest count `k` with `P(X ≤ k) ≥ p`, where `X` counts arrivals with this `mean` and
/// a variance of `mean × dispersion` (Poisson or negative binomial, see the module docs).
///
/// Never more than `cap`: the search stops there, so a pool's ceiling bounds the work.
/// A non-positive or non-finite mean gives 0.
pub fn arrivals_quantile(mean: f64, dispersion: f64, p: f64, cap: u64) -> u64 {
    if !(mean > 0.0 && mean.is_finite()) {
        return 0;
    }
    let p = if p.is_nan() {
        0.5
    } else {
        p.clamp(0.0, 1.0 - 1e-12)
    };
    let d = if dispersion.is_finite() {
        dispersion.max(1.0)
    } else {
        1.0
    };
    // Mass at zero, and the ratio P(k+1)/P(k).
    let negative_binomial = d > 1.0 + 1e-9;
    let (log_p0, r, q) = if negative_binomial {
        // Shape r and success probability q give mean r(1-q)/q = mean and variance
        // r(1-q)/q² = mean × d.
        let r = mean / (d - 1.0);
        let q = 1.0 / d;
        (r * q.ln(), r, q)
    } else {
        (-mean, 0.0, 0.0)
    };
    if log_p0 < -700.0 {
        // exp() would underflow: the distribution is far from zero and close to normal.
        let sigma = (mean * d).sqrt();
        let k = (mean + normal_quantile(p) * sigma - 0.5).ceil().max(0.0);
        return (k as u64).min(cap);
    }
    let mut pk = log_p0.exp();
    let mut cdf = pk;
    let mut k: u64 = 0;
    while cdf < p && k < cap {
        let kf = k as f64;
        pk *= if negative_binomial {
            (kf + r) / (kf + 1.0) * (1.0 - q)
        } else {
            mean / (kf + 1.0)
        };
        k += 1;
        cdf += pk;
        if pk == 0.0 && kf > mean {
            // The remaining mass is below f64 precision; rounding kept cdf just under p.
            break;
        }
    }
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_quantile_matches_tables() {
        let cases = [
            (0.5, 0.0),
            (0.8413447460685429, 1.0),
            (0.975, 1.959963984540054),
            (0.99, 2.326347874040841),
            (0.999, 3.090232306167814),
            (0.01, -2.326347874040841),
            (0.001, -3.090232306167814),
        ];
        for (p, z) in cases {
            let got = normal_quantile(p);
            assert!((got - z).abs() < 1e-6, "Φ⁻¹({p}) = {got}, want {z}");
        }
        assert!(normal_quantile(0.0).is_finite());
        assert!(normal_quantile(1.0).is_finite());
    }

    /// Poisson quantiles from the cumulative distribution, checked by hand:
    /// Poisson(1): P(≤0)=.368 P(≤1)=.736 P(≤2)=.920 P(≤3)=.981 P(≤4)=.996.
    #[test]
    fn poisson_quantiles_by_hand() {
        assert_eq!(arrivals_quantile(1.0, 1.0, 0.5, 100), 1);
        assert_eq!(arrivals_quantile(1.0, 1.0, 0.9, 100), 2);
        assert_eq!(arrivals_quantile(1.0, 1.0, 0.95, 100), 3);
        assert_eq!(arrivals_quantile(1.0, 1.0, 0.99, 100), 4);
        assert_eq!(arrivals_quantile(1.0, 1.0, 0.3, 100), 0);
        // Poisson(10): the 0.99 quantile is 18 (P(≤17)=.9857, P(≤18)=.9928).
        assert_eq!(arrivals_quantile(10.0, 1.0, 0.99, 100), 18);
        // Under-dispersed counts are treated as Poisson.
        assert_eq!(arrivals_quantile(10.0, 0.3, 0.99, 100), 18);
        assert_eq!(arrivals_quantile(0.0, 1.0, 0.99, 100), 0);
        assert_eq!(arrivals_quantile(f64::NAN, 1.0, 0.99, 100), 0);
    }

    /// Negative binomial with mean 2 and dispersion 2: r = 2, q = 1/2, so
    /// P(k) = (k+1)/2^(k+2): P(≤k) = .25 .50 .6875 .8125 .8906 .9375 .9648 .9805 .9893 .9941.
    #[test]
    fn negative_binomial_quantiles_by_hand() {
        assert_eq!(arrivals_quantile(2.0, 2.0, 0.5, 100), 1);
        assert_eq!(arrivals_quantile(2.0, 2.0, 0.9, 100), 5);
        assert_eq!(arrivals_quantile(2.0, 2.0, 0.98, 100), 7);
        assert_eq!(arrivals_quantile(2.0, 2.0, 0.99, 100), 9);
        // Burstier traffic needs more at the same mean.
        assert!(arrivals_quantile(2.0, 4.0, 0.99, 100) > arrivals_quantile(2.0, 2.0, 0.99, 100));
    }

    #[test]
    fn large_means_use_the_normal_approximation_and_the_cap_holds() {
        // Poisson(1000): mean + 2.326σ ≈ 1073.6.
        let k = arrivals_quantile(1000.0, 1.0, 0.99, 100_000);
        assert!((1072..=1075).contains(&k), "{k}");
        // The exact sum and the approximation agree where both work (Poisson(600)).
        let exact = arrivals_quantile(600.0, 1.0, 0.99, 100_000);
        let approx = (600.0 + normal_quantile(0.99) * 600f64.sqrt() - 0.5).ceil() as u64;
        assert!(exact.abs_diff(approx) <= 1, "{exact} vs {approx}");
        assert_eq!(arrivals_quantile(1000.0, 1.0, 0.99, 50), 50);
        assert_eq!(arrivals_quantile(5.0, 3.0, 0.99, 4), 4);
    }
}
