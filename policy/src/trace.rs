//! Traces of allocation arrivals: read from a file, or rebuilt from Warmpool's event log.
//!
//! A trace is a list of arrivals, each an allocation attempt at a time with how long its
//! container will be held, plus the span of time it covers (idle time before the first and
//! after the last arrival still costs warm containers).
//!
//! Files are JSON lines, `{"at_ms": 1200, "hold_ms": 30000}` (other fields are ignored), or
//! CSV, `at_ms,hold_ms` with an optional header line. Blank lines and lines starting with `#`
//! are skipped. Times may be absolute (ms since the epoch) or relative; only differences
//! matter.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use crate::sim::Before;
use serde::{Deserialize, Serialize};
use warmpool_proto::{AllocationId, ContainerId, Event, EventKind, NodeId, PoolName};

/// One allocation attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Arrival {
    /// When it was asked for, ms.
    pub at_ms: u64,
    /// How long the session holds its container once it gets one, ms.
    pub hold_ms: u64,
}

/// Arrivals in time order over a span of time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trace {
    /// The arrivals, sorted by time.
    pub arrivals: Vec<Arrival>,
    /// Start of the span, ms (at or before the first arrival).
    pub start_ms: u64,
    /// End of the span, ms (at or after the last arrival).
    pub end_ms: u64,
}

/// Why a trace could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceError {
    /// A line that is neither a JSON object with `at_ms` and `hold_ms` nor `at_ms,hold_ms`.
    #[error("line {line}: {message}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
    /// No arrivals at all.
    #[error("the trace holds no arrivals")]
    Empty,
    /// From the first arrival to the last release is longer than [`MAX_SPAN_MS`]: a replay
    /// steps through all of it, at least twice a second.
    #[error("the trace spans {days} days, from its first arrival to its last release; at most 366 are replayed")]
    TooLong {
        /// Its span, in whole days.
        days: u64,
    },
}

/// The longest span a trace file may cover: a year (and a day).
pub const MAX_SPAN_MS: u64 = 366 * 24 * 3_600_000;

#[derive(Deserialize)]
struct JsonLine {
    at_ms: u64,
    hold_ms: u64,
}

impl Trace {
    /// A trace over `start_ms..=end_ms` (widened to cover every arrival); sorts the arrivals.
    pub fn new(mut arrivals: Vec<Arrival>, start_ms: u64, end_ms: u64) -> Self {
        arrivals.sort();
        let start_ms = arrivals.first().map_or(start_ms, |a| a.at_ms.min(start_ms));
        let end_ms = arrivals.last().map_or(end_ms, |a| a.at_ms.max(end_ms));
        Trace {
            arrivals,
            start_ms,
            end_ms: end_ms.max(start_ms),
        }
    }

    /// A trace spanning from the first arrival until the last container is released.
    pub fn from_arrivals(arrivals: Vec<Arrival>) -> Self {
        let start = arrivals.iter().map(|a| a.at_ms).min().unwrap_or(0);
        let end = arrivals
            .iter()
            .map(|a| a.at_ms.saturating_add(a.hold_ms))
            .max()
            .unwrap_or(0);
        Trace::new(arrivals, start, end)
    }

    /// Reads a JSON-lines or CSV trace (see the module docs); the format is recognised per
    /// line. Arrivals need not be in order.
    pub fn parse(text: &str) -> Result<Self, TraceError> {
        let mut arrivals = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            let n = i + 1;
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |message: String| TraceError::Line { line: n, message };
            if line.starts_with('{') {
                let v: JsonLine = serde_json::from_str(line).map_err(|e| {
                    err(format!(
                        "expected {{\"at_ms\": <ms>, \"hold_ms\": <ms>}}: {e}"
                    ))
                })?;
                arrivals.push(Arrival {
                    at_ms: v.at_ms,
                    hold_ms: v.hold_ms,
                });
                continue;
            }
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            if arrivals.is_empty() && fields.first().is_some_and(|f| f.starts_with("at_ms")) {
                if fields != ["at_ms", "hold_ms"] {
                    return Err(err(format!(
                        "a CSV header must be `at_ms,hold_ms`, not `{line}`"
                    )));
                }
                continue;
            }
            let [at, hold] = fields[..] else {
                return Err(err(format!(
                    "expected `at_ms,hold_ms` (2 fields), got {} field(s)",
                    fields.len()
                )));
            };
            let number = |name: &str, s: &str| {
                s.parse::<u64>().map_err(|_| {
                    err(format!(
                        "{name} must be a whole number of milliseconds, not {s:?}"
                    ))
                })
            };
            arrivals.push(Arrival {
                at_ms: number("at_ms", at)?,
                hold_ms: number("hold_ms", hold)?,
            });
        }
        if arrivals.is_empty() {
            return Err(TraceError::Empty);
        }
        let trace = Trace::from_arrivals(arrivals);
        if trace.duration_ms() > MAX_SPAN_MS {
            return Err(TraceError::TooLong {
                days: trace.duration_ms() / (24 * 3_600_000),
            });
        }
        Ok(trace)
    }

    /// The trace as JSON lines, one arrival per line: what [`Trace::parse`] reads.
    pub fn to_json_lines(&self) -> String {
        self.arrivals
            .iter()
            .map(|a| format!("{{\"at_ms\":{},\"hold_ms\":{}}}\n", a.at_ms, a.hold_ms))
            .collect()
    }

    /// The span, ms.
    pub fn duration_ms(&self) -> u64 {
        self.end_ms - self.start_ms
    }

    /// The same arrivals with every hold capped at `max_hold_ms` (as if each allocation ended at
    /// a lease of that length, never renewed).
    pub fn with_holds_capped(&self, max_hold_ms: u64) -> Trace {
        let mut t = self.clone();
        for a in &mut t.arrivals {
            a.hold_ms = a.hold_ms.min(max_hold_ms);
        }
        t
    }

    /// Mean arrivals per second over the span.
    pub fn mean_rate_per_s(&self) -> f64 {
        let secs = self.duration_ms() as f64 / 1000.0;
        if secs > 0.0 {
            self.arrivals.len() as f64 / secs
        } else {
            0.0
        }
    }
}

/// One container's making, as the event log tells it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Making {
    /// The node it was placed on.
    pub node: Option<NodeId>,
    /// When it was planned (`container_created`), ms.
    pub planned_ms: u64,
    /// When it was warm, ms.
    pub warm_ms: u64,
}

/// What a pool's event log says about its demand, its warm-up times and its teardowns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// Arrivals: allocation times (less the time they waited), with hold durations.
    pub trace: Trace,
    /// Measured times from `container_created` to `container_warm`, ms.
    pub warm_times_ms: Vec<u64>,
    /// The same containers, with where and when: for [`History::start_times_ms`].
    pub makings: Vec<Making>,
    /// Measured teardowns, `(released or retired at, until terminated)` in ms: how long a
    /// container let go of still held its place on its node.
    pub teardowns_ms: Vec<(u64, u64)>,
    /// Warm containers when the trace starts, when the log shows the pool before then.
    pub start_warm: Option<u32>,
    /// The first event given, ms: since when the log shows the pool.
    #[serde(default)]
    pub first_ms: Option<u64>,
    /// Allocations still open at the end, held until then.
    pub open_allocations: usize,
    /// Releases whose allocation is not in the events given (it started earlier); skipped.
    pub unmatched_releases: usize,
}

impl History {
    /// A history of a trace alone: no measured warm-up or teardown times.
    pub fn of_trace(trace: Trace) -> History {
        History {
            trace,
            warm_times_ms: Vec::new(),
            makings: Vec::new(),
            teardowns_ms: Vec::new(),
            start_warm: None,
            first_ms: None,
            open_allocations: 0,
            unmatched_releases: 0,
        }
    }

    /// Rebuilds a pool's history from its events (any order; other pools' events and other
    /// kinds are skipped when `pool` is given).
    ///
    /// - `container_allocated` gives an arrival; when it waited, its `detail.waited_ms` moves
    ///   the arrival back to when it was asked for.
    /// - The `container_released` event with the same `allocation` id gives its hold; an
    ///   allocation not released by the last event is held until then.
    /// - `container_created` → `container_warm` of the same container gives a warm-up time;
    ///   `container_released` → `container_terminated` a teardown time.
    ///
    /// Refused allocations leave no event, so demand that was turned away is not in the
    /// trace: a history with refusals understates demand.
    ///
    /// The span runs from the first arrival (or the first event, without arrivals) to the last
    /// event given. When events before the first arrival show the pool, `start_warm` is the
    /// number of containers warm then (warm, and neither allocated nor gone since). `None`
    /// when no event is given.
    pub fn from_events(events: &[Event], pool: Option<&PoolName>) -> Option<History> {
        let mut events: Vec<&Event> = events
            .iter()
            .filter(|e| pool.is_none() || e.pool.as_ref() == pool)
            .collect();
        events.sort_by_key(|e| e.seq);
        let first = events.iter().map(|e| e.at.as_millis()).min()?;
        let last = events.iter().map(|e| e.at.as_millis()).max()?;

        let mut open: HashMap<AllocationId, (u64, u64)> = HashMap::new(); // id → (asked, granted)
        let mut created: HashMap<ContainerId, (u64, Option<NodeId>)> = HashMap::new();
        let mut released: HashMap<ContainerId, u64> = HashMap::new();
        // Warm and unallocated, with when they turned warm.
        let mut warm: HashMap<ContainerId, u64> = HashMap::new();
        let mut arrivals = Vec::new();
        let mut makings = Vec::new();
        let mut teardowns_ms = Vec::new();
        let mut unmatched_releases = 0;
        // The first arrival: the first allocation, less the time it waited.
        let start = events
            .iter()
            .filter(|e| e.kind == EventKind::ContainerAllocated && e.allocation.is_some())
            .map(|e| e.at.as_millis().saturating_sub(waited_ms(e)))
            .min()
            .unwrap_or(first);
        let mut start_warm = None;
        let mut reached = false;
        for (i, e) in events.iter().enumerate() {
            let at = e.at.as_millis();
            if !reached && at >= start {
                reached = true;
                if i > 0 {
                    start_warm = Some(u32::try_from(warm.len()).unwrap_or(u32::MAX));
                }
            }
            match e.kind {
                EventKind::ContainerCreated => {
                    if let Some(c) = e.container {
                        created.insert(c, (at, e.node.clone()));
                    }
                }
                EventKind::ContainerWarm => {
                    let Some(c) = e.container else { continue };
                    warm.insert(c, at);
                    if let Some((t0, node)) = created.remove(&c) {
                        makings.push(Making {
                            node,
                            planned_ms: t0,
                            warm_ms: at,
                        });
                    }
                }
                EventKind::ContainerAllocated => {
                    if let Some(c) = e.container {
                        warm.remove(&c);
                    }
                    let Some(id) = e.allocation else { continue };
                    open.insert(id, (at.saturating_sub(waited_ms(e)), at));
                }
                EventKind::ContainerReleased => {
                    if let Some(c) = e.container {
                        released.insert(c, at);
                    }
                    let Some((asked, granted)) = e.allocation.and_then(|id| open.remove(&id))
                    else {
                        unmatched_releases += 1;
                        continue;
                    };
                    arrivals.push(Arrival {
                        at_ms: asked,
                        hold_ms: at.saturating_sub(granted),
                    });
                }
                EventKind::ContainerTerminated | EventKind::ContainerFailed => {
                    let Some(c) = e.container else { continue };
                    warm.remove(&c);
                    created.remove(&c);
                    // From its release, or from its retirement, which the event's detail
                    // gives (a container scaled down was never released).
                    let t0 = released.remove(&c).or_else(|| {
                        let took = e.detail.as_ref()?.get("teardown_ms")?.as_u64()?;
                        Some(at.saturating_sub(took))
                    });
                    if let Some(t0) = t0 {
                        teardowns_ms.push((t0, at.saturating_sub(t0)));
                    }
                }
                _ => {}
            }
        }
        let open_allocations = open.len();
        arrivals.extend(open.into_values().map(|(asked, granted)| Arrival {
            at_ms: asked,
            hold_ms: last.saturating_sub(granted),
        }));
        let warm_times_ms = makings
            .iter()
            .map(|m| m.warm_ms.saturating_sub(m.planned_ms))
            .collect();
        Some(History {
            trace: Trace::new(arrivals, start, last),
            warm_times_ms,
            makings,
            teardowns_ms,
            start_warm,
            first_ms: Some(first),
            open_allocations,
            unmatched_releases,
        })
    }
}

impl History {
    /// What the control plane's scaler had seen of the pool at the trace's start: it watched
    /// the pool from its first event, and measured the warm-ups that ended before the start.
    pub fn before(&self) -> Before {
        let mut earlier: Vec<&Making> = self
            .makings
            .iter()
            .filter(|m| m.warm_ms < self.trace.start_ms)
            .collect();
        earlier.sort_by_key(|m| m.warm_ms);
        Before {
            since_ms: self.first_ms,
            warm_times_ms: earlier
                .iter()
                .map(|m| m.warm_ms.saturating_sub(m.planned_ms))
                .collect(),
        }
    }

    /// Each container's time from taking a create slot on its node to warm, with when it took
    /// the slot, `(at, how long)` in ms, sorted: the warm-up times less the wait for a slot,
    /// for a model that makes containers a few at a time ([`crate::PoolModel::create_slots`]).
    ///
    /// A node makes `slots(node)` containers at once, first planned first served (as its
    /// agent does). A container planned while every slot was busy started when the first of
    /// them came free. A slot counts as busy until its container is warm, so a replay of these
    /// times at those slots makes containers as fast as the node did.
    pub fn start_times_ms(&self, slots: impl Fn(Option<&NodeId>) -> u32) -> Vec<(u64, u64)> {
        let mut by_node: HashMap<Option<&NodeId>, Vec<&Making>> = HashMap::new();
        for m in &self.makings {
            by_node.entry(m.node.as_ref()).or_default().push(m);
        }
        let mut out = Vec::with_capacity(self.makings.len());
        for (node, mut makings) in by_node {
            makings.sort_by_key(|m| (m.planned_ms, m.warm_ms));
            let k = slots(node).max(1) as usize;
            // When each slot comes free; all free at first.
            let mut free: BinaryHeap<Reverse<u64>> = BinaryHeap::new();
            for m in makings {
                let began = if free.len() < k {
                    m.planned_ms
                } else {
                    free.pop()
                        .map_or(m.planned_ms, |Reverse(t)| t.max(m.planned_ms))
                };
                out.push((began, m.warm_ms.saturating_sub(began)));
                free.push(Reverse(m.warm_ms.max(began)));
            }
        }
        out.sort_unstable();
        out
    }
}

impl History {
    /// Each measured teardown's time from taking a destroy slot on its node to gone, with when
    /// it took the slot, `(at, how long)` in ms, sorted: the teardowns less the wait for a
    /// slot, for a model that removes containers `slots` at a time
    /// ([`crate::PoolModel::destroy_slots`]), as the agent does. A burst's releases queue for
    /// the slots, and counting that wait in every teardown would make a quiet time's few
    /// removals as slow as the burst's.
    pub fn destroy_times_ms(&self, slots: usize) -> Vec<(u64, u64)> {
        let mut teardowns = self.teardowns_ms.clone();
        teardowns.sort_unstable();
        let mut free: BinaryHeap<Reverse<u64>> = BinaryHeap::new();
        let mut out = Vec::with_capacity(teardowns.len());
        for (released, took) in teardowns {
            let gone = released + took;
            let began = if free.len() < slots.max(1) {
                released
            } else {
                free.pop().map_or(released, |Reverse(t)| t.max(released))
            };
            let began = began.min(gone);
            out.push((began, gone - began));
            free.push(Reverse(gone));
        }
        out.sort_unstable();
        out
    }
}

/// How long an allocation waited for its container (0 when it did not, or says nothing
/// readable).
fn waited_ms(e: &Event) -> u64 {
    e.detail
        .as_ref()
        .and_then(|d| d.get("waited_ms"))
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destroy_times_leave_out_the_wait_for_a_slot() {
        let mut h = History::of_trace(Trace::new(
            vec![Arrival {
                at_ms: 0,
                hold_ms: 1,
            }],
            0,
            10,
        ));
        // Three released at once, gone after 1, 1.5 and 2 s, two removed at a time: the third
        // waited for the first's slot and took 1 s itself.
        h.teardowns_ms = vec![(0, 2_000), (0, 1_000), (0, 1_500)];
        assert_eq!(
            h.destroy_times_ms(2),
            vec![(0, 1_000), (0, 1_500), (1_000, 1_000)]
        );
        assert_eq!(
            h.destroy_times_ms(16),
            vec![(0, 1_000), (0, 1_500), (0, 2_000)]
        );
    }
    use warmpool_proto::Timestamp;

    #[test]
    fn json_lines_and_csv_read_the_same() {
        let json = "{\"at_ms\": 2000, \"hold_ms\": 500}\n\n# a comment\n{\"at_ms\":1000,\"hold_ms\":300,\"pool\":\"x\"}\n";
        let csv = "at_ms,hold_ms\n1000,300\n 2000 , 500 \n";
        let a = Trace::parse(json).unwrap();
        let b = Trace::parse(csv).unwrap();
        assert_eq!(a, b);
        assert_eq!(
            a.arrivals,
            vec![
                Arrival {
                    at_ms: 1000,
                    hold_ms: 300
                },
                Arrival {
                    at_ms: 2000,
                    hold_ms: 500
                }
            ]
        );
        assert_eq!((a.start_ms, a.end_ms), (1000, 2500));
        assert_eq!(Trace::parse(&a.to_json_lines()).unwrap(), a);
    }

    #[test]
    fn parse_errors_name_the_line() {
        let cases = [
            ("1000,300\n1000\n", 2, "2 fields"),
            ("1000,300\n1000,3,4\n", 2, "got 3"),
            ("1000,-5\n", 1, "hold_ms must be a whole number"),
            ("abc,5\n", 1, "at_ms must be"),
            ("{\"at_ms\": 1}\n", 1, "hold_ms"),
            ("{\"at_ms\": \"soon\", \"hold_ms\": 1}\n", 1, "expected"),
            ("{not json\n", 1, "expected"),
            ("at_ms,hold\n1,2\n", 1, "header"),
            ("1,2\n3,4\n5.5,6\n", 3, "at_ms must be"),
        ];
        for (text, line, needle) in cases {
            match Trace::parse(text) {
                Err(e @ TraceError::Line { line: l, .. }) => {
                    assert_eq!(l, line, "{text:?}: {e}");
                    assert!(e.to_string().contains(needle), "{text:?}: {e}");
                }
                other => panic!("{text:?} gave {other:?}"),
            }
        }
        assert_eq!(Trace::parse("# nothing\n\n"), Err(TraceError::Empty));
        assert_eq!(Trace::parse("at_ms,hold_ms\n"), Err(TraceError::Empty));
        // A hold or a gap of centuries would have the replay step through them.
        assert_eq!(
            Trace::parse("0,18446744073709551615\n"),
            Err(TraceError::TooLong {
                days: u64::MAX / (24 * 3_600_000)
            })
        );
        assert!(matches!(
            Trace::parse("0,1000\n40000000000,1000\n"),
            Err(TraceError::TooLong { days: 462 })
        ));
        assert!(Trace::parse(&format!("0,{MAX_SPAN_MS}\n")).is_ok());
    }

    #[test]
    fn holds_can_be_capped() {
        let t = Trace::parse("0,100\n10,5000\n").unwrap();
        let c = t.with_holds_capped(1000);
        assert_eq!(c.arrivals[1].hold_ms, 1000);
        assert_eq!(c.arrivals[0].hold_ms, 100);
    }

    fn event(seq: u64, at: u64, kind: EventKind) -> Event {
        Event {
            seq,
            log_index: seq,
            at: Timestamp(at),
            kind,
            pool: Some(PoolName::new("demo").unwrap()),
            container: None,
            node: None,
            session: None,
            allocation: None,
            reason: None,
            detail: None,
        }
    }

    #[test]
    fn history_pairs_allocations_with_releases_and_creations_with_warm() {
        let (c1, c2) = (ContainerId::new(), ContainerId::new());
        let (a1, a2, a3) = (
            AllocationId::new(),
            AllocationId::new(),
            AllocationId::new(),
        );
        let mut evs = vec![
            Event {
                container: Some(c1),
                ..event(1, 1_000, EventKind::ContainerCreated)
            },
            Event {
                container: Some(c2),
                ..event(2, 1_100, EventKind::ContainerCreated)
            },
            Event {
                container: Some(c1),
                ..event(3, 2_500, EventKind::ContainerWarm)
            },
            Event {
                container: Some(c2),
                ..event(4, 3_000, EventKind::ContainerWarm)
            },
            Event {
                allocation: Some(a1),
                container: Some(c1),
                ..event(5, 4_000, EventKind::ContainerAllocated)
            },
            Event {
                allocation: Some(a2),
                detail: Some(serde_json::json!({"waited_ms": 700})),
                ..event(6, 5_000, EventKind::ContainerAllocated)
            },
            Event {
                allocation: Some(a1),
                container: Some(c1),
                ..event(7, 9_000, EventKind::ContainerReleased)
            },
            // c1 is gone 400 ms after its release.
            Event {
                container: Some(c1),
                ..event(11, 9_400, EventKind::ContainerTerminated)
            },
            Event {
                allocation: Some(a3),
                ..event(8, 9_500, EventKind::ContainerReleased)
            },
            // c2, never released, is retired and gone 300 ms later, which the event says.
            Event {
                container: Some(c2),
                detail: Some(serde_json::json!({"teardown_ms": 300})),
                ..event(12, 9_800, EventKind::ContainerTerminated)
            },
            // Another pool's allocation: not ours.
            Event {
                allocation: Some(AllocationId::new()),
                pool: Some(PoolName::new("other").unwrap()),
                ..event(9, 9_700, EventKind::ContainerAllocated)
            },
            // A malformed detail is ignored, not fatal.
            Event {
                detail: Some(serde_json::json!({"waited_ms": "lots"})),
                ..event(10, 10_000, EventKind::PoolScaled)
            },
        ];
        evs.reverse(); // order does not matter
        let h = History::from_events(&evs, Some(&PoolName::new("demo").unwrap())).unwrap();
        assert_eq!(h.warm_times_ms, vec![1_500, 1_900]);
        assert_eq!(
            h.trace.arrivals,
            vec![
                Arrival {
                    at_ms: 4_000,
                    hold_ms: 5_000
                },
                Arrival {
                    at_ms: 4_300,
                    hold_ms: 5_000
                }, // asked 700 ms before it got one, held to the end
            ]
        );
        // The trace starts at the first arrival, with both containers warm then; the events
        // before it give warm-up times only.
        assert_eq!((h.trace.start_ms, h.trace.end_ms), (4_000, 10_000));
        assert_eq!(h.start_warm, Some(2));
        assert_eq!(h.teardowns_ms, vec![(9_000, 400), (9_500, 300)]);
        assert_eq!(h.makings.len(), 2);
        assert_eq!((h.open_allocations, h.unmatched_releases), (1, 1));
        // The scaler watched the pool from its first event and measured both warm-ups, which
        // ended before the first arrival, in the order they ended.
        assert_eq!(
            h.before(),
            Before {
                since_ms: Some(1_000),
                warm_times_ms: vec![1_500, 1_900],
            }
        );
        assert!(History::from_events(&[], None).is_none());

        // A log that begins with the first allocation says nothing of the pool before it.
        let h = History::from_events(
            &[Event {
                allocation: Some(a1),
                ..event(1, 4_000, EventKind::ContainerAllocated)
            }],
            None,
        )
        .unwrap();
        assert_eq!(h.start_warm, None);
    }

    fn making(node: &str, planned_ms: u64, warm_ms: u64) -> Making {
        Making {
            node: Some(NodeId::new(node).unwrap()),
            planned_ms,
            warm_ms,
        }
    }

    /// Node a makes two at a time. Four planned at 0: two warm at 500 and 600, the next
    /// two start as those slots free (500, 600) and are warm at 1000 and 1300: 500 and 700 ms.
    /// One planned at 5000 with the node idle: its whole warm-up, 300 ms. Node b, one slot:
    /// planned at 0 and 0, warm at 200 and 450: 200 and 250 ms.
    #[test]
    fn start_times_take_out_the_wait_for_a_create_slot() {
        let mut h = History::of_trace(Trace::new(Vec::new(), 0, 10_000));
        h.makings = vec![
            making("a", 0, 500),
            making("a", 0, 600),
            making("a", 0, 1_000),
            making("a", 0, 1_300),
            making("a", 5_000, 5_300),
            making("b", 0, 200),
            making("b", 0, 450),
        ];
        let slots = |n: Option<&NodeId>| match n.map(NodeId::as_str) {
            Some("a") => 2,
            _ => 1,
        };
        assert_eq!(
            h.start_times_ms(slots),
            vec![
                (0, 200),
                (0, 500),
                (0, 600),
                (200, 250),
                (500, 500),
                (600, 700),
                (5_000, 300)
            ]
        );
        // With slots enough for all, the wait is nothing and the times are the warm-ups.
        let all: Vec<u64> = h.start_times_ms(|_| 10).iter().map(|t| t.1).collect();
        assert_eq!(all, vec![200, 450, 500, 600, 1_000, 1_300, 300]);
    }
}
