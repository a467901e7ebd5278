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
//! it to slots served in the order the creates were admitted, so creates are still served
//! first planned, first started.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
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

/// The create slots: as many as a [`Controller`] says, served in the order the creates were
/// admitted.
///
/// A create takes a [`Ticket`] when the agent admits it, then checks its image, then waits for
/// a slot. A slot goes to the first ticket in line, and only to it: a later create whose image
/// check happened to finish first waits, so creates start in the order they were planned. A
/// create that must wait for a pull steps aside ([`Ticket::step_aside`]) and holds up no one;
/// when the pull is done it comes back with its old place, at the front.
pub struct Gate {
    state: Mutex<GateState>,
    changed: Notify,
}

struct GateState {
    ctl: Controller,
    /// Slots taken now (more than the limit after it shrank, until they come back).
    in_use: usize,
    /// Starts that took the last slot, ever.
    fulls: u64,
    /// The next ticket's number.
    next: u64,
    /// The tickets not yet served, by number; `true` for one that stepped aside.
    line: BTreeMap<u64, bool>,
}

impl GateState {
    /// The ticket a free slot goes to: the first in line that did not step aside.
    fn head(&self) -> Option<u64> {
        self.line
            .iter()
            .find(|(_, aside)| !**aside)
            .map(|(n, _)| *n)
    }
}

/// A create's place in line, from its admission until it gets a slot (or is dropped: then the
/// place is given up).
pub struct Ticket {
    gate: Arc<Gate>,
    n: u64,
}

/// A create slot, taken by [`Ticket::acquire`]; give it back with [`Slot::finish`] (or drop it
/// for a create that never ran: the slot comes back, the limit does not move).
pub struct Slot {
    gate: Arc<Gate>,
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
        Gate {
            state: Mutex::new(GateState {
                ctl: Controller::new(min, max),
                in_use: 0,
                fulls: 0,
                next: 0,
                line: BTreeMap::new(),
            }),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The limit now.
    pub fn limit(&self) -> usize {
        self.lock().ctl.limit()
    }

    /// A place in line, behind every create admitted before.
    pub fn ticket(self: &Arc<Self>) -> Ticket {
        let mut st = self.lock();
        let n = st.next;
        st.next += 1;
        st.line.insert(n, false);
        Ticket {
            gate: self.clone(),
            n,
        }
    }
}

impl Ticket {
    /// This create waits on something slow (a pull) before it can start: until it comes to
    /// [`Ticket::acquire`], the creates behind it may go first.
    pub fn step_aside(&self) {
        let moved = self.gate.lock().line.insert(self.n, true) == Some(false);
        if moved {
            self.gate.changed.notify_waiters();
        }
    }

    /// Waits until this ticket is first in line and a slot is free, and takes the slot. Back
    /// from a pull ([`Ticket::step_aside`]), it holds up the others again from now on.
    pub async fn acquire(self) -> Slot {
        self.gate.lock().line.insert(self.n, false);
        loop {
            let changed = self.gate.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut st = self.gate.lock();
                if st.head() == Some(self.n) && st.in_use < st.ctl.limit() {
                    st.in_use += 1;
                    let busy = st.in_use >= st.ctl.limit();
                    if busy {
                        st.fulls += 1;
                    }
                    let fulls = st.fulls;
                    drop(st);
                    // Dropping the ticket gives up its place and tells the next in line,
                    // which may find a slot free still.
                    return Slot {
                        gate: self.gate.clone(),
                        started: Instant::now(),
                        busy,
                        fulls,
                    };
                }
            }
            changed.await;
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.gate.lock().line.remove(&self.n);
        self.gate.changed.notify_waiters();
    }
}

impl Slot {
    /// Gives the slot back with what its create did; the limit moves as the controller says.
    pub fn finish(self, ok: bool) {
        let limit = {
            let mut st = self.gate.lock();
            let sample = Sample {
                latency: self.started.elapsed(),
                ok,
                busy: self.busy || st.fulls > self.fulls,
            };
            st.ctl.record(sample)
        };
        crate::telemetry::create_limit(limit);
        // The drop gives the slot back.
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        {
            let mut st = self.gate.lock();
            st.in_use = st.in_use.saturating_sub(1);
        }
        self.gate.changed.notify_waiters();
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

    /// Whether `f` is still waiting after one poll.
    async fn pending<F: std::future::Future>(f: std::pin::Pin<&mut F>) -> bool {
        futures::poll!(f).is_pending()
    }

    #[tokio::test]
    async fn the_gate_follows_the_limit() {
        let gate = Arc::new(Gate::new(1, 6));
        assert_eq!(gate.limit(), 4);
        let mut slots = Vec::new();
        for _ in 0..4 {
            let t = gate.ticket();
            slots.push(t.acquire().await);
        }
        assert!(slots[3].busy, "the fourth took the last slot");
        let fifth = gate.ticket();
        let fifth = fifth.acquire();
        tokio::pin!(fifth);
        assert!(pending(fifth.as_mut()).await, "no fifth slot at limit 4");
        // Fast creates: the limit grows to 6, two more slots open (two back, two new).
        let mut slots = slots.into_iter();
        slots.next().unwrap().finish(true);
        assert_eq!(gate.limit(), 5);
        slots.next().unwrap().finish(true);
        assert_eq!(gate.limit(), 6);
        let mut held = vec![fifth.await];
        for _ in 0..3 {
            let t = gate.ticket();
            held.push(t.acquire().await);
        }
        assert_eq!(gate.lock().in_use, 6);
        // A failure cuts it while 7 slots are out (6, then 5 with the failed one back): the
        // next waits until fewer than 5 are in use.
        let extra = gate.ticket();
        let extra = extra.acquire();
        tokio::pin!(extra);
        slots.next().unwrap().finish(false);
        assert_eq!(gate.limit(), 5);
        assert!(pending(extra.as_mut()).await, "5 in use at limit 5");
        drop(held.pop());
        let _extra = extra.await;
        assert_eq!(gate.lock().in_use, 5);
        drop(slots);
        drop(held);
        assert_eq!(gate.lock().in_use, 1);
    }

    #[tokio::test]
    async fn the_gate_serves_in_admission_order_and_a_pull_steps_aside() {
        let gate = Arc::new(Gate::new(1, 1));
        let (first, second, third) = (gate.ticket(), gate.ticket(), gate.ticket());
        // The third's image check finished first: it waits for the first two, though the one
        // slot is free.
        let third = third.acquire();
        tokio::pin!(third);
        assert!(pending(third.as_mut()).await);
        let second = second.acquire();
        tokio::pin!(second);
        assert!(pending(second.as_mut()).await);
        // The first must pull: it steps aside, and the second (the first in line) starts.
        first.step_aside();
        let slot = second.await;
        assert!(pending(third.as_mut()).await, "one slot");
        // The pull is done while the second runs: the first is back at the front.
        let first = first.acquire();
        tokio::pin!(first);
        assert!(pending(first.as_mut()).await);
        slot.finish(true);
        assert!(
            pending(third.as_mut()).await,
            "the first goes before the third"
        );
        let slot = first.await;
        drop(slot);
        let _slot = third.await;
        // A ticket given up (a create destroyed before its slot) holds up no one.
        let (gone, next) = (gate.ticket(), gate.ticket());
        let next = next.acquire();
        tokio::pin!(next);
        drop(_slot);
        assert!(
            pending(next.as_mut()).await,
            "behind a ticket still checking"
        );
        drop(gone);
        let _ = next.await;
    }
}
