//! Pool policy for Warmpool: how many warm containers a pool should keep, and evidence that
//! the answer is good.
//!
//! A pool must be sufficient but not wasteful. A fixed target either wastes containers in
//! quiet hours or runs dry in busy ones; this crate sizes each pool from measured demand and
//! lets an operator replay history against a policy before adopting it. Everything here is
//! pure: plain values and timestamps in, values out; no clock, no IO, no async.
//!
//! - [`estimator`]: [`DemandEstimator`] turns allocation arrivals and warm-up times into
//!   [`DemandInputs`]: arrival rate (steady and burst averages), burstiness, warm-up p99.
//! - [`scaler`]: [`Scaler::decide`] turns a [`Policy`] (from a `PoolSpec`) and the inputs into a
//!   [`ScaleDecision`] when the wanted warm count changes: up at once, down after a cool-down
//!   with hysteresis, always within `min_warm..=max_warm`.
//! - [`rules`]: the pool rules, each defined once, that the control plane's leader applies:
//!   [`rules::resize`] (how many containers to make or retire now), [`rules::WantedWrites`],
//!   [`rules::fits`].
//! - [`quantile`]: the arithmetic behind the target hit rate (Poisson and negative binomial
//!   quantiles, the normal quantile).
//! - [`sim`]: what a replay is given besides the pool ([`PoolModel`]: warm-up and teardown
//!   times, the fleet's limits, waits) and what it reports ([`SimReport`]). The replay itself
//!   runs the control plane's engine and state machine (`warmpool_control_plane::sim`).
//! - [`trace`]: [`Trace`] files (JSON lines or CSV) and [`History`] rebuilt from the event log.
//! - [`generate`]: deterministic synthetic traces: steady, diurnal and bursty.
//!
//! ## Use in the control plane
//!
//! One [`DemandEstimator`] and one [`Scaler`] per pool, held by the leader. Feed the estimator
//! every allocation attempt ([`DemandEstimator::record_arrivals`] with the growth of the
//! replicated arrivals counter) and every warm-up time; on each keep-warm step call
//! [`Scaler::decide`] with [`Policy::from_spec`] and [`DemandEstimator::inputs`], and propose
//! `SetWanted { wanted, detail: Some(decision.detail()) }` when it answers.
#![warn(missing_docs)]

pub mod estimator;
pub mod generate;
pub mod quantile;
pub mod rng;
pub mod rules;
pub mod scaler;
pub mod sim;
pub mod trace;

pub use estimator::{DemandEstimator, DemandInputs, EstimatorConfig};
pub use scaler::{
    DecisionInputs, Need, Policy, ScaleDecision, ScaleReason, Scaler, SCALE_DOWN_EVERY_MS,
};
pub use sim::{Before, Draws, PoolModel, SimReport, WarmTime};
pub use trace::{Arrival, History, Trace, TraceError};
