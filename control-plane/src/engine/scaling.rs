//! Sizing pools: each pool's demand estimator is fed with new arrivals and warm-up times, and
//! the scaler's decisions are written as the pool's wanted count. A new leader resumes from
//! the replicated wanted count, so a change of leader never shrinks a pool before a full
//! cool-down. When decisions are written is [`WantedWrites`]' rule.

use std::collections::HashMap;
use std::time::Duration;

use tracing::info;
use warmpool_policy::rules::WantedWrites;
use warmpool_policy::{DemandEstimator, Policy, ScaleDecision, Scaler};
use warmpool_proto::{EventKind, PoolName};

use super::{Effect, Now};
use crate::state::{Command, EventFilter, PoolState};

/// The scaler's memory of one pool: demand seen so far and the last decision.
struct PoolDemand {
    estimator: DemandEstimator,
    scaler: Scaler,
    /// The replicated arrivals counter when last read.
    arrivals_seen: u64,
    /// The scaler's latest decision (carried until written).
    latest: Option<ScaleDecision>,
    /// When its decisions are written.
    writes: WantedWrites,
}

/// The scaling memory of one term.
pub struct Scaling {
    demand: HashMap<PoolName, PoolDemand>,
    /// Events read so far for warm-up times.
    seen: u64,
}

impl Scaling {
    /// Starts reading events after those already in `state`.
    pub fn new(state: &PoolState) -> Self {
        Scaling {
            demand: HashMap::new(),
            seen: state.last_event_seq(),
        }
    }

    /// The writes of wanted counts due now.
    pub fn decide(&mut self, s: &PoolState, now: Now) -> Vec<Effect> {
        let filter = EventFilter {
            kinds: vec![EventKind::ContainerWarm],
            ..Default::default()
        };
        let mut warmed: Vec<(&PoolName, Duration)> = Vec::new();
        for e in s.events_since(self.seen, &filter) {
            let c = e.container.and_then(|id| s.container(&id));
            if let Some((c, warm_at)) = c.and_then(|c| Some((c, c.warm_at?))) {
                warmed.push((&c.pool, warm_at.since(c.created_at)));
            }
        }
        self.seen = s.last_event_seq();
        self.demand.retain(|name, _| s.pool(name).is_some());
        let mut out = Vec::new();
        for pool in s.pools() {
            let spec = &pool.spec;
            let (arrivals, wanted) = (s.arrivals(&spec.name), s.wanted(pool));
            let d = self
                .demand
                .entry(spec.name.clone())
                .or_insert_with(|| PoolDemand {
                    estimator: DemandEstimator::new(now.wall),
                    scaler: Scaler::resume(wanted, now.wall),
                    arrivals_seen: arrivals,
                    latest: None,
                    writes: WantedWrites::default(),
                });
            let new = arrivals.saturating_sub(d.arrivals_seen);
            d.arrivals_seen = arrivals;
            if new > 0 {
                // Each at the time it was made (a step may come tens of milliseconds after,
                // and several arrivals apart, which moved them between the estimator's
                // buckets); those the state has no time for, now.
                let (times, unknown) = s.arrival_times(&spec.name, new);
                for at in times {
                    d.estimator.record_arrival(at);
                }
                d.estimator.record_arrivals(now.wall, unknown);
            }
            for (_, took) in warmed.iter().filter(|(p, _)| *p == &spec.name) {
                d.estimator.record_warm_time(*took);
            }
            let inputs = d.estimator.inputs(now.wall);
            if let Some(decision) = d.scaler.decide(&Policy::from_spec(spec), &inputs, now.wall) {
                d.latest = Some(decision);
            }
            let Some(decision) = d.latest.as_ref() else {
                continue;
            };
            if d.writes
                .admit(wanted, decision.wanted, now.wall.as_millis())
                != Ok(true)
            {
                continue;
            }
            metrics::counter!("warmpool_scaler_decisions_total", "pool" => spec.name.to_string(), "reason" => decision.reason.as_str())
                .increment(1);
            info!(pool = %spec.name, from = wanted, to = decision.wanted, reason = decision.reason.as_str(), "scaling");
            out.push(Effect::propose(Command::SetWanted {
                pool: spec.name.clone(),
                wanted: decision.wanted,
                detail: Some(decision.detail()),
            }));
        }
        out
    }
}
