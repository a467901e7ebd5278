//! How many containers the agent makes at once: an adaptive limit between
//! `--min-concurrent-creates` and `--max-concurrent-creates`.
//!
//! dockerd starts containers at a rate its host sets (CPU, the storage driver, cgroups and
//! network setup). Below that rate, more creates at once means more containers per second at
//! the same latency each; above it, creates only queue inside dockerd and each one takes
//! longer. So [`Controller`] grows the limit while the time of a create (Docker's create,
//! start and inspect, and the container's isolation rules) holds near its baseline, and backs
//! off when it climbs or creates fail:
//!
//! - **Baseline**: the fastest create seen. When even the minimum limit is slow, the host got
//!   slower (another tenant, a bigger image): the baseline rises by a tenth per slow sample,
//!   so it follows a lasting change without being fooled by queueing.
//! - **Growth**: a create that ran while every slot was taken and took at most `tolerance`
//!   times the baseline is a sign the host has room. Until the first congestion signal the
//!   limit grows by one per such create (it doubles each round, as a TCP slow start); after
//!   it, by one per `limit` such creates (one per round). A create that ran while slots were
//!   free says nothing about more of them, so it grows nothing.
//! - **Back-off**: a slower create, or a failed one, cuts the limit by a quarter (at least one),
//!   at most once per round: the creates already under way started under the old limit, and
//!   their latencies are not news.
//!
//! The controller is pure (samples in, limit out) and tested with plain values; [`Gate`] applies
//! it to a FIFO semaphore, so creates are still served first planned, first started.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

/// A create slower than this many times the baseline (and [`SLACK`] slower) is a congestion
/// signal.
pub const TOLERANCE: f64 = 2.0;

/// Differences below this are noise, whatever the ratio (a 5 ms create after a 2 ms one).
pub const SLACK: Duration = Duration::from_millis(50);

/// The limit a controller starts at (the agent's fixed limit before it adapted), within its
/// bounds.
pub const INITIAL: usize = 4;

/// One finished create, as the controller sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// How long the create took.
    pub latency: Duration,
    /// Whether it made its container.
    pub ok: bool,
    /// Whether every slot was taken while it ran (only then does a fast create say the host
    /// has room for more).
    pub busy: bool,
}

/// The adaptive limit. See the module's documentation for the rules.
#[derive(Clone, Debug, PartialEq)]
pub struct Controller {
    min: usize,
    max: usize,
    limit: usize,
    /// The fastest create seen (adjusted, see the module doc); `None` before the first.
    baseline: Option<Duration>,
    /// Whether a congestion signal was seen yet (slow start until then).
    congested: bool,
    /// Fast busy creates since the limit last grew (congestion avoidance).
    credit: usize,
    /// Samples to ignore for back-off after one: the creates that were under way.
    cooldown: usize,
}

impl Controller {
    /// A controller between `min` and `max` (`min` at least 1, `max` at least `min`), starting
    /// at [`INITIAL`] within them. `min == max` is a fixed limit.
    pub fn new(min: usize, max: usize) -> Controller {
        let min = min.max(1);
        let max = max.max(min);
        Controller {
            min,
            max,
            limit: INITIAL.clamp(min, max),
            baseline: None,
            congested: false,
            credit: 0,
            cooldown: 0,
        }
    }

    /// The limit now.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The baseline latency, once there is one.
    #[cfg(test)]
    pub fn baseline(&self) -> Option<Duration> {
        self.baseline
    }

    /// Folds one finished create in; answers the new limit.
    pub fn record(&mut self, s: Sample) -> usize {
        let slow = s.ok
            && self.baseline.is_some_and(|b| {
                s.latency.as_secs_f64() > b.as_secs_f64() * TOLERANCE && s.latency > b + SLACK
            });
        if s.ok {
            self.baseline = Some(match self.baseline {
                None => s.latency,
                Some(b) if s.latency < b => s.latency,
                // Slow even at the minimum: the host got slower, not busier.
                Some(b) if slow && self.limit == self.min => b.mul_f64(1.1).min(s.latency),
                Some(b) => b,
            });
        }
        if self.cooldown > 0 {
            self.cooldown -= 1;
        }
        if !s.ok || slow {
            if self.cooldown == 0 {
                self.congested = true;
                self.credit = 0;
                let cut = (self.limit / 4).max(1);
                self.limit = self.limit.saturating_sub(cut).max(self.min);
                self.cooldown = self.limit;
            }
            return self.limit;
        }
        if s.busy && self.limit < self.max {
            if self.congested {
                self.credit += 1;
                if self.credit >= self.limit {
                    self.credit = 0;
                    self.limit += 1;
                }
            } else {
                self.limit += 1;
            }
        }
        self.limit
    }
}

/// The create slots: a FIFO semaphore whose size follows a [`Controller`].
pub struct Gate {
    slots: Semaphore,
    state: Mutex<GateState>,
}

struct GateState {
    ctl: Controller,
    /// Slots taken now.
    in_use: usize,
    /// Permits to retire as they come back, after the limit shrank below what was in use.
    debt: usize,
    /// Starts that took the last slot, ever.
    fulls: u64,
}

/// A create slot; give it back with [`Gate::finish`] (or drop it for a create that never ran).
pub struct Slot<'a> {
    permit: Option<SemaphorePermit<'a>>,
    gate: &'a Gate,
    started: Instant,
    /// Whether its own start took the last slot.
    busy: bool,
    /// [`GateState::fulls`] when it started: a later start that took the last slot means
    /// every slot was taken during its run too.
    fulls: u64,
}

impl Gate {
    /// Slots between `min` and `max`.
    pub fn new(min: usize, max: usize) -> Gate {
        let ctl = Controller::new(min, max);
        Gate {
            slots: Semaphore::new(ctl.limit()),
            state: Mutex::new(GateState {
                ctl,
                in_use: 0,
                debt: 0,
                fulls: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The limit now.
    pub fn limit(&self) -> usize {
        self.lock().ctl.limit()
    }

    /// Waits for a slot (first come, first served); `None` once the gate is closed.
    pub async fn acquire(&self) -> Option<Slot<'_>> {
        let permit = self.slots.acquire().await.ok()?;
        let mut st = self.lock();
        st.in_use += 1;
        let busy = st.in_use >= st.ctl.limit();
        if busy {
            st.fulls += 1;
        }
        Some(Slot {
            permit: Some(permit),
            gate: self,
            started: Instant::now(),
            busy,
            fulls: st.fulls,
        })
    }

    /// Gives `slot` back with what its create did; the limit moves as the controller says.
    pub fn finish(&self, mut slot: Slot<'_>, ok: bool) {
        let mut st = self.lock();
        let sample = Sample {
            latency: slot.started.elapsed(),
            ok,
            busy: slot.busy || st.fulls > slot.fulls,
        };
        let before = st.ctl.limit();
        let after = st.ctl.record(sample);
        if after > before {
            let mut grow = after - before;
            let paid = grow.min(st.debt);
            st.debt -= paid;
            grow -= paid;
            self.slots.add_permits(grow);
        } else if after < before {
            let shrink = before - after;
            let taken = self.slots.forget_permits(shrink);
            st.debt += shrink - taken;
        }
        crate::telemetry::create_limit(after);
        drop(st);
        self.release(&mut slot);
    }

    fn release(&self, slot: &mut Slot<'_>) {
        let Some(permit) = slot.permit.take() else {
            return;
        };
        let mut st = self.lock();
        st.in_use = st.in_use.saturating_sub(1);
        if st.debt > 0 {
            st.debt -= 1;
            permit.forget();
        } else {
            drop(permit);
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.gate.release(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn ok(latency_ms: u64) -> Sample {
        Sample {
            latency: ms(latency_ms),
            ok: true,
            busy: true,
        }
    }

    /// The limits after each of `latencies` (busy, successful creates).
    fn run(c: &mut Controller, latencies: &[u64]) -> Vec<usize> {
        latencies.iter().map(|&l| c.record(ok(l))).collect()
    }

    #[test]
    fn starts_at_four_within_its_bounds() {
        assert_eq!(Controller::new(1, 16).limit(), 4);
        assert_eq!(Controller::new(1, 2).limit(), 2);
        assert_eq!(Controller::new(6, 16).limit(), 6);
        // Nonsense bounds are made sane, never a zero limit.
        assert_eq!(Controller::new(0, 0).limit(), 1);
        assert_eq!(Controller::new(5, 3).limit(), 5);
    }

    #[test]
    fn grows_while_latency_holds_then_stops_at_the_max() {
        let mut c = Controller::new(1, 10);
        // Slow start: one more slot per fast create.
        assert_eq!(run(&mut c, &[300, 320, 310, 290, 330]), vec![5, 6, 7, 8, 9]);
        assert_eq!(run(&mut c, &[300, 300, 300]), vec![10, 10, 10]);
        assert_eq!(c.baseline(), Some(ms(290)));
    }

    #[test]
    fn backs_off_when_latency_climbs_once_per_round_then_grows_one_per_round() {
        let mut c = Controller::new(1, 16);
        assert_eq!(run(&mut c, &[300, 300, 300, 300]), vec![5, 6, 7, 8]);
        // Twice the baseline is still fine; more is congestion: 9 - 2 = 7, and the next 6
        // slow ones were under way already (the cooldown is the new limit, 7 samples in all).
        assert_eq!(run(&mut c, &[600, 700]), vec![9, 7]);
        assert_eq!(run(&mut c, &[900; 7]), vec![7, 7, 7, 7, 7, 7, 6]);
        // After congestion: one more slot per round of fast creates (6 of them at limit 6).
        assert_eq!(
            run(&mut c, &[300, 300, 300, 300, 300, 300, 300]),
            vec![6, 6, 6, 6, 6, 7, 7]
        );
    }

    #[test]
    fn failures_back_off_and_never_below_the_min() {
        let mut c = Controller::new(2, 16);
        let fail = Sample {
            latency: ms(50),
            ok: false,
            busy: true,
        };
        assert_eq!(c.record(fail), 3);
        // The cooldown (3 samples) absorbs failures of creates already under way.
        assert_eq!(c.record(fail), 3);
        assert_eq!(c.record(fail), 3);
        assert_eq!(c.record(fail), 2);
        c.cooldown = 0;
        assert_eq!(c.record(fail), 2, "the min holds");
        // A failure sets no baseline.
        assert_eq!(c.baseline(), None);
    }

    #[test]
    fn idle_slots_grow_nothing() {
        let mut c = Controller::new(1, 16);
        let idle = Sample {
            latency: ms(300),
            ok: true,
            busy: false,
        };
        for _ in 0..20 {
            assert_eq!(c.record(idle), 4);
        }
    }

    #[test]
    fn a_fixed_limit_never_moves() {
        let mut c = Controller::new(4, 4);
        assert_eq!(run(&mut c, &[300, 300, 2000, 5000, 300]), vec![4; 5]);
    }

    #[test]
    fn a_host_slow_even_at_the_minimum_moves_the_baseline_up() {
        let mut c = Controller::new(1, 4);
        assert_eq!(run(&mut c, &[100]), vec![4]);
        // Every create takes a second now: down to the minimum, then the baseline follows.
        let limits = run(&mut c, &[1000; 23]);
        assert_eq!(&limits[..6], &[3, 3, 3, 2, 2, 1], "one cut per round");
        assert_eq!(limits.last(), Some(&1));
        assert!(c.baseline().unwrap() >= ms(500), "{:?}", c.baseline());
        // Once the baseline has caught up, a second is no longer slow: it grows again, one
        // slot per round.
        let grown = run(&mut c, &[1000; 10]);
        assert_eq!(grown, vec![2, 2, 3, 3, 3, 4, 4, 4, 4, 4]);
    }

    #[tokio::test]
    async fn the_gate_follows_the_limit_and_serves_in_order() {
        let gate = Gate::new(1, 6);
        assert_eq!(gate.limit(), 4);
        let slots: Vec<_> = futures::future::join_all((0..4).map(|_| gate.acquire()))
            .await
            .into_iter()
            .map(Option::unwrap)
            .collect();
        assert!(slots[3].busy, "the fourth took the last slot");
        assert_eq!(gate.slots.available_permits(), 0);
        // Fast creates: the limit grows to 6, two more slots open.
        let mut slots = slots.into_iter();
        gate.finish(slots.next().unwrap(), true);
        assert_eq!(gate.limit(), 5);
        gate.finish(slots.next().unwrap(), true);
        assert_eq!(gate.limit(), 6);
        assert_eq!(gate.slots.available_permits(), 4, "two back, two new");
        // Failures cut it while slots are out: the debt is paid as they come back.
        let held: Vec<_> = futures::future::join_all((0..4).map(|_| gate.acquire()))
            .await
            .into_iter()
            .map(Option::unwrap)
            .collect();
        gate.finish(slots.next().unwrap(), false);
        assert_eq!(gate.limit(), 5);
        drop(slots);
        drop(held);
        assert_eq!(gate.slots.available_permits(), 5, "as many as the limit");
    }
}
