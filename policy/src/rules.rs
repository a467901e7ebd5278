//! The rules that decide what a pool does, defined once: the control plane's leader carries
//! them out, on the real fleet and in a replay against a simulated one (`poolctl simulate`,
//! which runs the leader's engine itself). Nothing else keeps a copy.
//!
//! - [`resize`]: given a pool's counts, how many containers to make or retire now (the target,
//!   the batch size and pacing, the cap on containers being made, `max_total`).
//! - [`WantedWrites`]: how often the scaler's decisions are written (growth at once, shrinking
//!   at most every [`SCALE_DOWN_EVERY_MS`]).
//! - [`fits`]: how many more containers of a size a node holds.

use serde::{Deserialize, Serialize};

use crate::scaler::SCALE_DOWN_EVERY_MS;

/// A pool's counts at one moment, of its current generation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolCounts {
    /// The wanted warm count (the scaler's, within the pool's bounds).
    pub wanted: u32,
    /// Allocations waiting for a container: demand to meet now, on top of `wanted`.
    pub waiting: u32,
    /// Warm containers that can be handed out.
    pub warm: u32,
    /// Containers being made.
    pub creating: u32,
    /// Every live container of the pool (being made, warm, allocated; all generations).
    pub live: u32,
}

/// A pool's limits on making containers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pacing {
    /// Containers asked for at once.
    pub batch_size: u32,
    /// Shortest pause between two batches, ms.
    pub pacing_ms: u64,
    /// Live containers at most.
    pub max_total: u32,
}

impl Pacing {
    /// The pacing of a pool with this spec.
    pub fn of(spec: &warmpool_proto::PoolSpec) -> Self {
        Pacing {
            batch_size: spec.scaling.batch_size.max(1),
            pacing_ms: spec.scaling.pacing_ms,
            max_total: spec.max_total,
        }
    }
}

/// What a pool does about its size now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resize {
    /// It is as it should be, or what is being made will do.
    Hold,
    /// Retire this many surplus warm containers (newest first).
    Retire(u32),
    /// Make this many.
    Create(u32),
    /// Short, but the last batch was too recent: not before this time, ms.
    Paced {
        /// When the next batch may go.
        until_ms: u64,
    },
    /// Short, and `max_total` (or `room`) leaves no place for another.
    Full,
}

/// The keep-warm rule. The pool aims at `wanted + waiting`. Over it (counting warm ones
/// only), the surplus is retired a batch at a time. Short of it (counting those being made),
/// it makes at most a batch per `pacing_ms`, none while two batches are still being made, and
/// never beyond `max_total` live, nor beyond `room` when the caller knows a tighter limit.
pub fn resize(
    c: PoolCounts,
    p: Pacing,
    last_batch_ms: Option<u64>,
    now_ms: u64,
    room: Option<u32>,
) -> Resize {
    let batch = p.batch_size.max(1);
    let target = c.wanted.saturating_add(c.waiting);
    let supply = c.warm.saturating_add(c.creating);
    if supply > target && c.warm > target {
        return Resize::Retire((c.warm - target).min(batch));
    }
    let deficit = target.saturating_sub(supply);
    if deficit == 0 || c.creating >= 2 * batch {
        return Resize::Hold;
    }
    if let Some(last) = last_batch_ms {
        let until_ms = last.saturating_add(p.pacing_ms);
        if now_ms < until_ms {
            return Resize::Paced { until_ms };
        }
    }
    let mut free = p.max_total.saturating_sub(c.live);
    if let Some(room) = room {
        free = free.min(room);
    }
    match deficit.min(batch).min(free) {
        0 => Resize::Full,
        n => Resize::Create(n),
    }
}

/// A pool's paused tier (`min_paused`..`max_paused`): how many containers it wants there.
/// The scaler sizes the warm tier from the measured rate; the paused tier is for bursts, and
/// keeps its floor, `min_paused` (`max_paused` bounds it).
pub fn paused_wanted(spec: &warmpool_proto::PoolSpec) -> u32 {
    spec.min_paused.min(spec.max_paused())
}

/// The counts [`resize`] works on for a pool with a paused tier: the tiers together. The
/// pool aims at `wanted` warm plus `paused_wanted` paused; paused containers are supply like
/// warm ones (they are handed out, after the warm ones).
pub fn tiered(c: PoolCounts, paused: u32, paused_wanted: u32) -> PoolCounts {
    PoolCounts {
        wanted: c.wanted.saturating_add(paused_wanted),
        warm: c.warm.saturating_add(paused),
        ..c
    }
}

/// How many warm containers to pause now: the warm surplus over `wanted + waiting`, as far
/// as the paused tier is short of `paused_wanted`, at most a batch. New containers always
/// start warm; the warm tier fills first, and what it has beyond its target goes to the
/// paused tier.
pub fn pause_count(c: PoolCounts, paused: u32, paused_wanted: u32, batch: u32) -> u32 {
    let warm_target = c.wanted.saturating_add(c.waiting);
    let surplus = c.warm.saturating_sub(warm_target);
    let short = paused_wanted.saturating_sub(paused);
    surplus.min(short).min(batch.max(1))
}

/// Of `surplus` containers to retire, how many come from the warm tier (its surplus over
/// `warm_target` first) and how many from the paused tier (its surplus over
/// `paused_wanted`), as `(warm, paused)`.
pub fn retire_split(
    surplus: u32,
    warm: u32,
    warm_target: u32,
    paused: u32,
    paused_wanted: u32,
) -> (u32, u32) {
    let from_warm = surplus.min(warm.saturating_sub(warm_target));
    let from_paused = (surplus - from_warm).min(paused.saturating_sub(paused_wanted));
    // Whatever is left over (both tiers at their targets, a smaller target overall) comes
    // from the warm tier, the costlier one.
    let rest = surplus - from_warm - from_paused;
    (from_warm + rest.min(warm - from_warm), from_paused)
}

/// When the scaler's wanted count is written: growth at once, a decrease at most every
/// [`SCALE_DOWN_EVERY_MS`], so a pool coming down from a burst writes a few steps, not one
/// per decision.
#[derive(Clone, Copy, Debug, Default)]
pub struct WantedWrites {
    last_down_ms: Option<u64>,
}

impl WantedWrites {
    /// Whether to write `decided` over `current` at `now_ms`: `Ok(true)` to write now,
    /// `Ok(false)` when there is nothing to write, `Err(at)` when a decrease must wait until
    /// `at`.
    pub fn admit(&mut self, current: u32, decided: u32, now_ms: u64) -> Result<bool, u64> {
        if decided == current {
            return Ok(false);
        }
        if decided < current {
            if let Some(last) = self.last_down_ms {
                let at = last.saturating_add(SCALE_DOWN_EVERY_MS);
                if now_ms < at {
                    return Err(at);
                }
            }
            self.last_down_ms = Some(now_ms);
        }
        Ok(true)
    }
}

/// How many more containers of `per` (cpu millis, memory MB) fit in what a node can reserve,
/// `allocatable`, beyond what is reserved already: the smaller of the two counts.
pub fn fits(allocatable: (u64, u64), reserved: (u64, u64), per: (u64, u64)) -> Fit {
    let count = |alloc: u64, used: u64, one: u64| match one {
        0 => u64::MAX,
        one => alloc.saturating_sub(used) / one,
    };
    Fit {
        cpu: count(allocatable.0, reserved.0, per.0),
        memory: count(allocatable.1, reserved.1, per.1),
    }
}

/// How many more containers a node holds, by each resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fit {
    /// By CPU.
    pub cpu: u64,
    /// By memory.
    pub memory: u64,
}

impl Fit {
    /// The smaller of the two.
    pub fn count(self) -> u64 {
        self.cpu.min(self.memory)
    }

    /// The resource that runs out first when none fits.
    pub fn short_of(self) -> Option<&'static str> {
        match (self.cpu, self.memory) {
            (0, _) => Some("cpu"),
            (_, 0) => Some("memory"),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Pacing = Pacing {
        batch_size: 4,
        pacing_ms: 200,
        max_total: 20,
    };

    fn counts(wanted: u32, warm: u32, creating: u32) -> PoolCounts {
        PoolCounts {
            wanted,
            waiting: 0,
            warm,
            creating,
            live: warm + creating,
        }
    }

    #[test]
    fn a_paused_tier_fills_from_the_warm_surplus_and_counts_as_supply() {
        // min_warm 3, min_paused 10: the pool aims at 13 in all.
        let c = tiered(counts(3, 0, 0), 0, 10);
        assert_eq!(resize(c, P, None, 0, None), Resize::Create(4));
        // 13 made, all warm: 10 beyond the warm target, paused a batch at a time.
        let c = counts(3, 13, 0);
        assert_eq!(pause_count(c, 0, 10, 4), 4);
        assert_eq!(pause_count(c, 8, 10, 4), 2);
        assert_eq!(pause_count(c, 10, 10, 4), 0);
        // The warm tier is never paused below its target.
        assert_eq!(pause_count(counts(3, 3, 0), 0, 10, 4), 0);
        // Waiting allocations keep warm ones warm.
        let waiting = PoolCounts {
            waiting: 2,
            ..counts(3, 5, 0)
        };
        assert_eq!(pause_count(waiting, 0, 10, 4), 0);
        // Full tiers: nothing to do; a burst that took the 3 warm and 5 paused refills 8.
        assert_eq!(
            resize(tiered(counts(3, 3, 0), 10, 10), P, None, 0, None),
            Resize::Hold
        );
        let after_burst = PoolCounts {
            live: 13,
            ..tiered(counts(3, 0, 0), 5, 10)
        };
        assert_eq!(resize(after_burst, P, None, 0, None), Resize::Create(4));
        // No tier: exactly as before.
        assert_eq!(tiered(counts(3, 1, 0), 0, 0), counts(3, 1, 0));
    }

    #[test]
    fn surplus_is_retired_from_the_warm_tier_first() {
        assert_eq!(retire_split(2, 5, 3, 10, 10), (2, 0));
        assert_eq!(retire_split(3, 4, 3, 12, 10), (1, 2));
        assert_eq!(retire_split(2, 3, 3, 10, 10), (2, 0));
        assert_eq!(retire_split(1, 0, 0, 4, 3), (0, 1));
    }

    #[test]
    fn a_short_pool_makes_a_batch_at_most() {
        assert_eq!(
            resize(counts(10, 0, 0), P, None, 0, None),
            Resize::Create(4)
        );
        assert_eq!(resize(counts(3, 1, 0), P, None, 0, None), Resize::Create(2));
    }

    #[test]
    fn waiting_allocations_add_to_the_target() {
        let c = PoolCounts {
            waiting: 2,
            ..counts(1, 1, 0)
        };
        assert_eq!(resize(c, P, None, 0, None), Resize::Create(2));
    }

    #[test]
    fn batches_are_paced_and_two_in_the_making_are_enough() {
        assert_eq!(
            resize(counts(10, 0, 4), P, Some(1_000), 1_100, None),
            Resize::Paced { until_ms: 1_200 }
        );
        assert_eq!(
            resize(counts(10, 0, 4), P, Some(1_000), 1_200, None),
            Resize::Create(4)
        );
        assert_eq!(resize(counts(20, 0, 8), P, None, 0, None), Resize::Hold);
    }

    #[test]
    fn max_total_and_room_cap_the_batch() {
        let c = PoolCounts {
            live: 19,
            ..counts(10, 0, 0)
        };
        assert_eq!(resize(c, P, None, 0, None), Resize::Create(1));
        let full = PoolCounts {
            live: 20,
            ..counts(10, 0, 0)
        };
        assert_eq!(resize(full, P, None, 0, None), Resize::Full);
        assert_eq!(resize(counts(10, 0, 0), P, None, 0, Some(0)), Resize::Full);
    }

    #[test]
    fn surplus_warm_containers_go_a_batch_at_a_time() {
        assert_eq!(resize(counts(2, 9, 0), P, None, 0, None), Resize::Retire(4));
        assert_eq!(resize(counts(2, 3, 0), P, None, 0, None), Resize::Retire(1));
        // Containers still being made are no surplus: only warm ones are retired.
        assert_eq!(resize(counts(2, 2, 3), P, None, 0, None), Resize::Hold);
    }

    #[test]
    fn decreases_are_written_at_most_every_two_seconds_growth_at_once() {
        let mut w = WantedWrites::default();
        assert_eq!(w.admit(10, 8, 0), Ok(true));
        assert_eq!(w.admit(8, 6, 1_000), Err(SCALE_DOWN_EVERY_MS));
        assert_eq!(w.admit(8, 12, 1_000), Ok(true));
        assert_eq!(w.admit(12, 6, SCALE_DOWN_EVERY_MS), Ok(true));
        assert_eq!(w.admit(6, 6, 10_000), Ok(false));
    }

    #[test]
    fn a_node_fits_what_both_resources_leave() {
        let f = fits((2_000, 4_096), (1_500, 1_024), (250, 512));
        assert_eq!((f.cpu, f.memory, f.count()), (2, 6, 2));
        assert_eq!(
            fits((1_000, 100), (1_000, 0), (250, 10)).short_of(),
            Some("cpu")
        );
        assert_eq!(
            fits((1_000, 100), (0, 95), (250, 10)).short_of(),
            Some("memory")
        );
    }
}
