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

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use warmpool_proto::{AllocationId, ContainerId, Event, EventKind, PoolName};

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
}

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
        Ok(Trace::from_arrivals(arrivals))
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

/// What a pool's event log says about its demand and its warm-up times.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// Arrivals: allocation times (less the time they waited), with hold durations.
    pub trace: Trace,
    /// Measured times from `container_created` to `container_warm`, ms.
    pub warm_times_ms: Vec<u64>,
    /// Allocations still open at the end, held until then.
    pub open_allocations: usize,
    /// Releases whose allocation is not in the events given (it started earlier); skipped.
    pub unmatched_releases: usize,
}

impl History {
    /// Rebuilds a pool's history from its events (any order; other pools' events and other
    /// kinds are skipped when `pool` is given).
    ///
    /// - `container_allocated` gives an arrival; when it waited, its `detail.waited_ms` moves
    ///   the arrival back to when it was asked for.
    /// - The `container_released` event with the same `allocation` id gives its hold; an
    ///   allocation not released by the last event is held until then.
    /// - `container_created` → `container_warm` of the same container gives a warm-up time.
    ///
    /// Refused allocations leave no event, so demand that was turned away is not in the
    /// trace: a history with refusals understates demand.
    ///
    /// The span runs from the first to the last event given. `None` when no event is given.
    pub fn from_events(events: &[Event], pool: Option<&PoolName>) -> Option<History> {
        let mut events: Vec<&Event> = events
            .iter()
            .filter(|e| pool.is_none() || e.pool.as_ref() == pool)
            .collect();
        events.sort_by_key(|e| e.seq);
        let first = events.iter().map(|e| e.at.as_millis()).min()?;
        let last = events.iter().map(|e| e.at.as_millis()).max()?;

        let mut open: HashMap<AllocationId, (u64, u64)> = HashMap::new(); // id → (asked, granted)
        let mut created: HashMap<ContainerId, u64> = HashMap::new();
        let mut arrivals = Vec::new();
        let mut warm_times_ms = Vec::new();
        let mut unmatched_releases = 0;
        for e in events {
            let at = e.at.as_millis();
            match e.kind {
                EventKind::ContainerCreated => {
                    if let Some(c) = e.container {
                        created.insert(c, at);
                    }
                }
                EventKind::ContainerWarm => {
                    if let Some(t0) = e.container.and_then(|c| created.remove(&c)) {
                        warm_times_ms.push(at.saturating_sub(t0));
                    }
                }
                EventKind::ContainerAllocated => {
                    let Some(id) = e.allocation else { continue };
                    let waited = e
                        .detail
                        .as_ref()
                        .and_then(|d| d.get("waited_ms"))
                        .and_then(serde_json::Value::as_u64)
                        .unwrap_or(0);
                    open.insert(id, (at.saturating_sub(waited), at));
                }
                EventKind::ContainerReleased => {
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
                _ => {}
            }
        }
        let open_allocations = open.len();
        arrivals.extend(open.into_values().map(|(asked, granted)| Arrival {
            at_ms: asked,
            hold_ms: last.saturating_sub(granted),
        }));
        Some(History {
            trace: Trace::new(arrivals, first, last),
            warm_times_ms,
            open_allocations,
            unmatched_releases,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
                ..event(5, 4_000, EventKind::ContainerAllocated)
            },
            Event {
                allocation: Some(a2),
                detail: Some(serde_json::json!({"waited_ms": 700})),
                ..event(6, 5_000, EventKind::ContainerAllocated)
            },
            Event {
                allocation: Some(a1),
                ..event(7, 9_000, EventKind::ContainerReleased)
            },
            Event {
                allocation: Some(a3),
                ..event(8, 9_500, EventKind::ContainerReleased)
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
        assert_eq!((h.trace.start_ms, h.trace.end_ms), (1_000, 10_000));
        assert_eq!((h.open_allocations, h.unmatched_releases), (1, 1));
        assert!(History::from_events(&[], None).is_none());
    }
}
