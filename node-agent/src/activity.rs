//! The activity meter: when did a container last have network traffic that was not the
//! agent's own health probes? The control plane releases an allocated container idle for its
//! pool's `idle_timeout_secs`.
//!
//! It reads the container's network namespace through `/proc/<pid>/net/`, which the host can
//! see without entering it: the TCP counters (`snmp`: connections accepted and opened, minus
//! those the agent's own probes made) catch short requests between passes; the socket tables
//! (`tcp6`, `tcp`) catch long connections: a socket that is not listening and whose remote
//! port is not one the probes used is traffic now, and one lingering in TIME_WAIT was active
//! when it closed, which its timer tells. UDP is not seen.
//!
//! A probe's connection is counted by the kernel a moment before the agent counts it; a pass
//! that read the counters while any probe of that container was under way cannot tell the
//! two apart, so it leaves the container's counters for the next pass.
//!
//! The counters are cheap; the socket tables are not: unless the host gives each namespace
//! its own TCP hash table (`net.ipv4.tcp_child_ehash_entries`), reading a namespace's table
//! walks the host's whole table. So the tables are read only for a container whose counters
//! show a connection established right now (`CurrEstab`), and the hundreds of idle warm
//! containers of a busy host cost one small read each per pass.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use warmpool_proto::{ContainerId, Timestamp};

use crate::agent::Shared;
use crate::inventory::MeterTarget;

/// How often containers are metered.
pub const METER_INTERVAL: Duration = Duration::from_secs(2);
/// How long the kernel keeps a closed connection in TIME_WAIT (`TCP_TIMEWAIT_LEN`).
const TIME_WAIT: Duration = Duration::from_secs(60);
/// Clock ticks per second in `/proc/net/tcp` timers (`USER_HZ`).
const USER_HZ: u64 = 100;

/// How long ago the last non-probe traffic was, from one `/proc/<pid>/net/tcp[6]` table:
/// `Some(ZERO)` for an open connection now, `Some(d)` for a connection closed `d` ago, `None`
/// when there is nothing but listeners and probes.
pub fn last_traffic(table: &str, probe_ports: &HashSet<u16>) -> Option<Duration> {
    let mut best: Option<Duration> = None;
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(remote), Some(state), Some(timer)) =
            (fields.get(2), fields.get(3), fields.get(5))
        else {
            continue;
        };
        let Some(port) = remote
            .rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
        else {
            continue;
        };
        // 0A: LISTEN. A socket with no remote end is not traffic either.
        if *state == "0A" || port == 0 || probe_ports.contains(&port) {
            continue;
        }
        let ago = if *state == "06" {
            // TIME_WAIT: "03:<ticks left>".
            let left = timer
                .split_once(':')
                .and_then(|(_, ticks)| u64::from_str_radix(ticks, 16).ok())
                .map_or(Duration::ZERO, |t| {
                    Duration::from_millis(t * 1000 / USER_HZ)
                });
            TIME_WAIT.saturating_sub(left)
        } else {
            Duration::ZERO
        };
        best = Some(best.map_or(ago, |b| b.min(ago)));
    }
    best
}

/// TCP counters of a network namespace, from `/proc/<pid>/net/snmp` (the TCP MIB counts IPv4
/// and IPv6 alike).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpCounters {
    /// Connections accepted (`PassiveOpens`).
    pub accepted: u64,
    /// Connections opened (`ActiveOpens`).
    pub opened: u64,
    /// Connections established or closing now (`CurrEstab`).
    pub established: u64,
}

/// Reads [`TcpCounters`] by name from an `snmp` file.
pub fn tcp_counters(snmp: &str) -> Option<TcpCounters> {
    let mut lines = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let names: Vec<&str> = lines.next()?.split_whitespace().collect();
    let values: Vec<&str> = lines.next()?.split_whitespace().collect();
    let get = |name: &str| -> Option<u64> {
        let i = names.iter().position(|n| *n == name)?;
        values.get(i)?.parse().ok()
    };
    Some(TcpCounters {
        accepted: get("PassiveOpens")?,
        opened: get("ActiveOpens")?,
        established: get("CurrEstab")?,
    })
}

/// Per container, what the last meter pass saw.
#[derive(Clone, Copy, Default)]
struct Seen {
    /// Accepted connections minus the probes' attempts. Signed: an attempt the container
    /// never answered counts as a probe but was never accepted, and that offset must not hide
    /// later connections.
    others_accepted: i64,
    /// Connections the container opened itself.
    opened: u64,
}

/// Meters every running container every `config.meter` ([`METER_INTERVAL`] unless set)
/// until `stop`.
///
/// Traffic since the last pass is any of: more accepted connections than the agent's probes
/// opened (a short request that came and went between passes), a connection the container
/// opened, or a connection open right now that is not a probe. A container whose pass met one
/// of its probes under way is metered again [`RETRY_AFTER`] later, not a whole interval later:
/// with a short idle timeout, a skipped pass or two could otherwise make a busy container look
/// idle.
pub fn spawn(shared: &Arc<Shared>, stop: CancellationToken) {
    let shared = shared.clone();
    shared.tasks.clone().spawn(async move {
        let started = tokio::time::Instant::now();
        let mut seen: HashMap<ContainerId, Seen> = HashMap::new();
        let mut schedule = Schedule::new(started, shared.config.meter);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep_until(schedule.next_at()) => {}
            }
            let mut targets = shared.inventory.meter_targets();
            match schedule.pass(tokio::time::Instant::now()) {
                Pass::Full => seen.retain(|id, _| targets.iter().any(|t| &t.id == id)),
                Pass::Retry(ids) => targets.retain(|t| ids.contains(&t.id)),
            }
            for t in targets {
                let told = meter_one(&shared, &t, &mut seen, started.elapsed()).await;
                schedule.metered(t.id, told, tokio::time::Instant::now());
            }
        }
    });
}

/// How soon a container whose pass met one of its probes under way is metered again.
pub const RETRY_AFTER: Duration = Duration::from_millis(200);

/// When the meter runs next, and over which containers: every one each interval, and those a
/// pass could not tell about (a probe was under way) [`RETRY_AFTER`] later, until a pass can.
#[derive(Debug)]
struct Schedule {
    interval: Duration,
    next_full: tokio::time::Instant,
    /// Containers to meter again, and since when they wait.
    retry: HashMap<ContainerId, tokio::time::Instant>,
}

/// What one pass of the meter covers.
#[derive(Debug, PartialEq, Eq)]
enum Pass {
    Full,
    Retry(HashSet<ContainerId>),
}

impl Schedule {
    fn new(now: tokio::time::Instant, interval: Duration) -> Self {
        Schedule {
            interval,
            next_full: now + interval,
            retry: HashMap::new(),
        }
    }

    /// When the next pass is due.
    fn next_at(&self) -> tokio::time::Instant {
        let retry = self
            .retry
            .values()
            .min()
            .map(|since| *since + RETRY_AFTER.min(self.interval));
        retry.map_or(self.next_full, |r| r.min(self.next_full))
    }

    /// The pass to run at `now` (once [`Self::next_at`] has come).
    fn pass(&mut self, now: tokio::time::Instant) -> Pass {
        if now >= self.next_full {
            // Missed intervals (a host too busy to run the meter) are not made up in a rush.
            while self.next_full <= now {
                self.next_full += self.interval;
            }
            self.retry.clear();
            Pass::Full
        } else {
            Pass::Retry(self.retry.drain().map(|(id, _)| id).collect())
        }
    }

    /// The pass over `id` could tell (`told`) or met a probe under way and must be run again.
    fn metered(&mut self, id: ContainerId, told: bool, now: tokio::time::Instant) {
        if told {
            self.retry.remove(&id);
        } else {
            self.retry.insert(id, now);
        }
    }
}

/// Meters one container: records its last traffic when seen. False when a probe of it was
/// under way and the pass could not tell a probe from traffic.
async fn meter_one(
    shared: &Shared,
    t: &MeterTarget,
    seen: &mut HashMap<ContainerId, Seen>,
    running_for: Duration,
) -> bool {
    let now = Timestamp::now();
    let mut ago: Option<Duration> = None;
    let mut told = true;
    let counters = tokio::fs::read_to_string(format!("/proc/{}/net/snmp", t.pid))
        .await
        .ok()
        .and_then(|snmp| tcp_counters(&snmp));
    let quiet = |shared: &Shared| {
        t.probes_in_flight == 0
            && shared.inventory.probe_counts(&t.id) == Some((t.probe_connects, 0))
    };
    if let Some(c) = counters {
        if quiet(shared) {
            let now_seen = Seen {
                others_accepted: c.accepted as i64 - t.probe_connects as i64,
                opened: c.opened,
            };
            if let Some(before) = seen.insert(t.id, now_seen) {
                if now_seen.others_accepted > before.others_accepted
                    || now_seen.opened > before.opened
                {
                    tracing::debug!(container = %t.id, accepted = c.accepted, probes = t.probe_connects, opened = c.opened, "new connections beyond the probes");
                    ago = Some(Duration::ZERO);
                }
            }
        } else {
            told = false;
        }
    }
    // Without counters, the tables are read anyway rather than miss a connection.
    let tables: &[&str] = match counters {
        Some(c) if c.established == 0 => &[],
        _ => &["tcp6", "tcp"],
    };
    let mut in_tables: Option<Duration> = None;
    for table in tables {
        let Ok(text) = tokio::fs::read_to_string(format!("/proc/{}/net/{table}", t.pid)).await
        else {
            continue;
        };
        // A closed connection from before this agent started may be an earlier agent's probe:
        // unknowable, so not counted.
        if let Some(d) = last_traffic(&text, &t.probe_ports).filter(|d| *d < running_for) {
            tracing::debug!(container = %t.id, table, ago_ms = d.as_millis() as u64, "traffic in the socket table");
            in_tables = Some(in_tables.map_or(d, |a| a.min(d)));
        }
    }
    // A probe under way while the tables were read shows as a connection from a port not yet
    // known as a probe's (on a loaded host, often): such a pass cannot tell.
    if let Some(d) = in_tables {
        if quiet(shared) {
            ago = Some(ago.map_or(d, |a| a.min(d)));
        } else {
            told = false;
        }
    }
    if let Some(d) = ago {
        let at = Timestamp(now.as_millis().saturating_sub(d.as_millis() as u64));
        shared.inventory.record_activity(&t.id, at);
    }
    told
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";

    fn table(rows: &[&str]) -> String {
        let mut s = HEADER.to_string();
        for r in rows {
            s.push_str(r);
            s.push('\n');
        }
        s
    }

    const LISTEN: &str = "   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0";
    const PROBE_TW: &str = "   1: 0000000000000000FFFF00000200A8C0:1F90 0000000000000000FFFF00000100A8C0:A1B2 06 00000000:00000000 03:00001000 00000000     0        0 0 3 0";
    const USER_OPEN: &str = "   2: 0000000000000000FFFF00000200A8C0:1F90 0000000000000000FFFF00000100A8C0:C350 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0";
    const USER_TW_50S_LEFT: &str = "   3: 0000000000000000FFFF00000200A8C0:1F90 0000000000000000FFFF00000100A8C0:C351 06 00000000:00000000 03:00001388 00000000     0        0 0 3 0";

    #[test]
    fn listeners_and_probes_are_not_traffic() {
        let probes = HashSet::from([0xA1B2]);
        assert_eq!(last_traffic(&table(&[LISTEN, PROBE_TW]), &probes), None);
    }

    #[test]
    fn an_open_connection_is_traffic_now() {
        let probes = HashSet::from([0xA1B2]);
        assert_eq!(
            last_traffic(&table(&[LISTEN, PROBE_TW, USER_OPEN]), &probes),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn a_closed_connection_dates_from_its_time_wait_timer() {
        // 0x1388 = 5000 ticks = 50 s left of 60: it closed 10 s ago.
        let d = last_traffic(&table(&[USER_TW_50S_LEFT]), &HashSet::new()).unwrap();
        assert_eq!(d, Duration::from_secs(10));
        let both = last_traffic(&table(&[USER_TW_50S_LEFT, USER_OPEN]), &HashSet::new());
        assert_eq!(both, Some(Duration::ZERO), "the most recent wins");
    }

    #[test]
    fn snmp_tcp_counters_are_read_by_name() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\nTcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab\nTcp: 1 200 120000 -1 7 42 0 1 2\nUdp: InDatagrams\nUdp: 3\n";
        assert_eq!(
            tcp_counters(snmp),
            Some(TcpCounters {
                accepted: 42,
                opened: 7,
                established: 2
            })
        );
        assert_eq!(tcp_counters("Tcp: ActiveOpens\n"), None);
        assert_eq!(tcp_counters(""), None);
    }

    #[test]
    fn a_pass_that_met_a_probe_is_run_again_soon_for_that_container_alone() {
        let start = tokio::time::Instant::now();
        let interval = Duration::from_secs(2);
        let (a, b) = (ContainerId::new(), ContainerId::new());
        let mut s = Schedule::new(start, interval);
        assert_eq!(s.next_at(), start + interval);
        let t = s.next_at();
        assert_eq!(s.pass(t), Pass::Full);
        s.metered(a, false, t);
        s.metered(b, true, t);
        // a alone, soon; then, once told, the next whole pass.
        assert_eq!(s.next_at(), t + RETRY_AFTER);
        assert_eq!(s.pass(t + RETRY_AFTER), Pass::Retry(HashSet::from([a])));
        s.metered(a, false, t + RETRY_AFTER);
        assert_eq!(s.next_at(), t + RETRY_AFTER * 2);
        assert_eq!(s.pass(t + RETRY_AFTER * 2), Pass::Retry(HashSet::from([a])));
        s.metered(a, true, t + RETRY_AFTER * 2);
        assert_eq!(s.next_at(), start + interval * 2);
        // A retry due after the next whole pass waits for it, and that pass covers it.
        let t = start + interval * 2;
        assert_eq!(s.pass(t), Pass::Full);
        s.metered(b, false, t + interval - Duration::from_millis(50));
        assert_eq!(s.next_at(), start + interval * 3);
        assert_eq!(s.pass(start + interval * 3), Pass::Full);
        assert_eq!(s.next_at(), start + interval * 4);
    }

    #[test]
    fn missed_passes_are_not_made_up_in_a_rush() {
        let start = tokio::time::Instant::now();
        let interval = Duration::from_secs(2);
        let mut s = Schedule::new(start, interval);
        assert_eq!(
            s.pass(start + interval * 5 + Duration::from_millis(300)),
            Pass::Full
        );
        assert_eq!(s.next_at(), start + interval * 6);
    }

    #[test]
    fn a_meter_interval_shorter_than_the_retry_retries_at_the_interval() {
        let start = tokio::time::Instant::now();
        let interval = Duration::from_millis(100);
        let mut s = Schedule::new(start, interval);
        assert_eq!(s.pass(start + interval), Pass::Full);
        s.metered(ContainerId::new(), false, start + interval);
        assert_eq!(s.next_at(), start + interval * 2);
    }

    #[test]
    fn garbage_lines_are_skipped() {
        assert_eq!(
            last_traffic("header\nnot a socket line\n\n", &HashSet::new()),
            None
        );
    }
}
