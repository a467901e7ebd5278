//! Facts about the host read from `/proc`: capacity, memory use, load, hostname.
//!
//! The parsers are pure functions over the files' text; only the `read_*` helpers do IO, and
//! they degrade to zeros (logged by the caller) rather than fail: a heartbeat with unknown load
//! is better than no heartbeat.

use warmpool_proto::agent::Usage;
use warmpool_proto::records::Resources;

/// The hostname, from `/proc/sys/kernel/hostname` (or `/etc/hostname`).
pub fn hostname() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .find(|s| !s.is_empty())
}

/// What the host offers: every core and all memory, unless overridden.
pub fn capacity(cpu_override: Option<u64>, memory_override: Option<u64>) -> Resources {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or(1);
    let memory_mb = memory_override.unwrap_or_else(|| read_usage().memory_total_mb);
    Resources {
        cpu_millis: cpu_override.unwrap_or(cpus * 1000),
        memory_mb,
    }
}

/// Memory and load now.
pub fn read_usage() -> Usage {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let (total, used) = parse_meminfo(&meminfo);
    Usage {
        memory_used_mb: used,
        memory_total_mb: total,
        load1: parse_load1(&loadavg),
    }
}

/// `(total, used)` MiB from `/proc/meminfo`; used is total minus `MemAvailable`.
pub fn parse_meminfo(text: &str) -> (u64, u64) {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
    };
    let total_kb = field("MemTotal").unwrap_or(0);
    let avail_kb = field("MemAvailable")
        .or_else(|| field("MemFree"))
        .unwrap_or(total_kb);
    (total_kb / 1024, total_kb.saturating_sub(avail_kb) / 1024)
}

/// The one-minute load average from `/proc/loadavg`.
pub fn parse_load1(text: &str) -> f64 {
    text.split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_and_loadavg_parse() {
        let meminfo = "MemTotal:        4096000 kB\nMemFree:          100000 kB\nMemAvailable:    3072000 kB\n";
        assert_eq!(parse_meminfo(meminfo), (4000, 1000));
        assert_eq!(
            parse_meminfo("MemTotal: 2048 kB\nMemFree: 1024 kB\n"),
            (2, 1)
        );
        assert_eq!(parse_meminfo("garbage"), (0, 0));
        assert!((parse_load1("0.52 0.40 0.30 1/200 12345\n") - 0.52).abs() < 1e-9);
        assert_eq!(parse_load1(""), 0.0);
    }

    #[test]
    fn capacity_overrides_win() {
        let c = capacity(Some(1500), Some(512));
        assert_eq!((c.cpu_millis, c.memory_mb), (1500, 512));
        assert!(capacity(None, None).cpu_millis >= 1000);
    }
}
