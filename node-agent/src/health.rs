//! Health: the verdict (a pure function of probe outcomes) and the probe itself (IO).
//!
//! ## The verdict
//!
//! [`ProbeState::record`] folds one probe outcome into the state of one container:
//!
//! - Every container starts `Unknown`. A pass makes it `Healthy` at once.
//! - Before the first pass, failures do not count: the workload is still starting. They are
//!   only tallied. If no probe has passed within the startup grace (counted from when the
//!   container was started, or from when the agent adopted it), the next failure makes it
//!   `Unhealthy` with the tally, so a container that never comes up is not `Unknown` forever.
//! - After the first pass, `failure_threshold` consecutive failures make it
//!   `Unhealthy { consecutive_failures }`; fewer leave the verdict as it was. A pass resets
//!   the count and makes it `Healthy` again.
//!
//! Time enters only as a plain [`Duration`] argument, so the rules are tested with values.
//!
//! ## The probe
//!
//! [`probe`] sends one HTTP/1.0 `GET` (2xx or 3xx is a pass) or opens one TCP connection to
//! the container's IPv6 address, bounded as a whole by the check's timeout. Each container has
//! its own probe task (see `prober`), so probes of different containers run concurrently.

use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use warmpool_proto::{Health, HealthCheck, HealthProbe};

/// The result of one probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The container answered as wanted.
    Pass,
    /// It did not; why, for the log.
    Fail(String),
}

/// What the verdict needs to remember about one container's probes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeState {
    /// The verdict so far.
    pub verdict: Health,
    /// Whether any probe has passed since the container (re)started.
    pub passed_once: bool,
    /// Failures since the last pass (or since start).
    pub consecutive_failures: u32,
}

impl ProbeState {
    /// The state after one more probe `outcome`. `since_start` is how long ago the container
    /// started (or was adopted); `grace` is how long it may take to pass for the first time.
    pub fn record(
        self,
        outcome: &Outcome,
        check: &HealthCheck,
        since_start: Duration,
        grace: Duration,
    ) -> ProbeState {
        match outcome {
            Outcome::Pass => ProbeState {
                verdict: Health::Healthy,
                passed_once: true,
                consecutive_failures: 0,
            },
            Outcome::Fail(_) => {
                let failures = self.consecutive_failures.saturating_add(1);
                let verdict = if self.passed_once {
                    if failures >= check.failure_threshold.max(1) {
                        Health::Unhealthy {
                            consecutive_failures: failures,
                        }
                    } else {
                        self.verdict
                    }
                } else if since_start >= grace {
                    Health::Unhealthy {
                        consecutive_failures: failures,
                    }
                } else {
                    Health::Unknown
                };
                ProbeState {
                    verdict,
                    passed_once: self.passed_once,
                    consecutive_failures: failures,
                }
            }
        }
    }
}

/// The first retry of a new container's probe; each failed one doubles it, up to
/// [`STARTING_MAX`].
pub const STARTING_FIRST: Duration = Duration::from_millis(20);

/// The slowest a container that has not passed yet is probed.
pub const STARTING_MAX: Duration = Duration::from_millis(250);

/// How long to wait before the next probe. Until the first pass the agent probes fast, whatever
/// the pool's interval: how fast a new container is reported healthy is how fast it becomes
/// warm, and that is what the pool is for. Most workloads listen within tens of milliseconds of
/// their start, so the retries start at 20 ms and double (20, 40, 80, 160) up to every 250 ms
/// for one that takes its time. After the first pass, the pool's interval.
pub fn next_delay(state: &ProbeState, check: &HealthCheck) -> Duration {
    let interval = Duration::from_millis(check.interval_ms.max(1));
    if state.passed_once {
        return interval;
    }
    let starting = match state.consecutive_failures {
        // No probe yet (the container is not running): nothing to hurry.
        0 => STARTING_MAX,
        n => STARTING_FIRST
            .saturating_mul(1u32 << (n - 1).min(8))
            .min(STARTING_MAX),
    };
    interval.min(starting)
}

/// Probes `addr`:`port` once as `check` says, within `check.timeout_ms`.
#[cfg(test)]
pub async fn probe(addr: Ipv6Addr, port: u16, check: &HealthCheck) -> Outcome {
    probe_traced(addr, port, check).await.0
}

/// [`probe`], also answering the local TCP ports of every connection attempt it made, so the
/// activity meter can tell the agent's own probes from real traffic.
pub async fn probe_traced(addr: Ipv6Addr, port: u16, check: &HealthCheck) -> (Outcome, Vec<u16>) {
    let target = SocketAddr::V6(SocketAddrV6::new(addr, port, 0, 0));
    let timeout = Duration::from_millis(check.timeout_ms.max(1));
    let deadline = Instant::now() + timeout;
    let mut ports = Vec::new();
    let attempt = async {
        match &check.probe {
            HealthProbe::Tcp => match connect(target, deadline, &mut ports).await {
                Ok(_) => Outcome::Pass,
                Err(e) => Outcome::Fail(format!("connect: {e}")),
            },
            HealthProbe::Http { path } => http_get(target, deadline, path, &mut ports).await,
        }
    };
    let outcome = match tokio::time::timeout(timeout, attempt).await {
        Ok(outcome) => outcome,
        Err(_) => Outcome::Fail(format!("no answer within {timeout:?}")),
    };
    (outcome, ports)
}

/// Time one connection attempt may go unanswered before it is tried again.
const CONNECT_RETRY: Duration = Duration::from_millis(250);

/// Connects to `target`, trying again every [`CONNECT_RETRY`] while a SYN goes unanswered, until
/// `deadline`. Why: when the first container joins a fresh (or idle) bridge, the bridge's own
/// IPv6 address is still tentative (duplicate address detection) for a second or two and the
/// first SYNs get no answer; the kernel itself would retry only after a full second, then two.
/// A refused connection is an answer and fails at once.
///
/// Every attempt's local port goes into `ports` before it connects (the socket is bound first),
/// so the activity meter knows all the probe's connections, even an abandoned attempt whose
/// handshake the kernel completed after all.
async fn connect(
    target: SocketAddr,
    deadline: Instant,
    ports: &mut Vec<u16>,
) -> std::io::Result<TcpStream> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let socket = if target.is_ipv6() {
            TcpSocket::new_v6()?
        } else {
            TcpSocket::new_v4()?
        };
        let any: SocketAddr = if target.is_ipv6() {
            "[::]:0".parse()
        } else {
            "0.0.0.0:0".parse()
        }
        .map_err(std::io::Error::other)?;
        socket.bind(any)?;
        ports.push(socket.local_addr()?.port());
        match tokio::time::timeout(left.min(CONNECT_RETRY), socket.connect(target)).await {
            Ok(result) => return result,
            Err(_) if Instant::now() < deadline => continue,
            Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no answer",
                ))
            }
        }
    }
}

async fn http_get(
    target: SocketAddr,
    deadline: Instant,
    path: &str,
    ports: &mut Vec<u16>,
) -> Outcome {
    let mut stream = match connect(target, deadline, ports).await {
        Ok(s) => s,
        Err(e) => return Outcome::Fail(format!("connect: {e}")),
    };
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {target}\r\nUser-Agent: warmpool-agent\r\nConnection: close\r\n\r\n"
    );
    if let Err(e) = stream.write_all(request.as_bytes()).await {
        return Outcome::Fail(format!("write: {e}"));
    }
    // Only the status line matters; read until its end (or 512 bytes, or EOF).
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < 512 {
        match stream.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Outcome::Fail(format!("read: {e}")),
        }
    }
    match parse_status(&buf) {
        Some(code) if (200..400).contains(&code) => Outcome::Pass,
        Some(code) => Outcome::Fail(format!("HTTP status {code}")),
        None => Outcome::Fail("not an HTTP answer".into()),
    }
}

/// The status code of an HTTP/1.x status line at the start of `buf`.
pub fn parse_status(buf: &[u8]) -> Option<u16> {
    let line = buf.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end();
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(60);

    fn check(threshold: u32) -> HealthCheck {
        HealthCheck {
            failure_threshold: threshold,
            ..HealthCheck::default()
        }
    }

    fn fail() -> Outcome {
        Outcome::Fail("refused".into())
    }

    fn run(outcomes: &[Outcome], check: &HealthCheck, at: Duration) -> ProbeState {
        outcomes
            .iter()
            .fold(ProbeState::default(), |s, o| s.record(o, check, at, GRACE))
    }

    #[test]
    fn unknown_until_the_first_pass_and_startup_failures_do_not_count() {
        let c = check(3);
        let s = run(
            &[fail(), fail(), fail(), fail(), fail()],
            &c,
            Duration::from_secs(5),
        );
        assert_eq!(s.verdict, Health::Unknown);
        assert!(!s.passed_once);
        let s = s.record(&Outcome::Pass, &c, Duration::from_secs(6), GRACE);
        assert_eq!(s.verdict, Health::Healthy);
        assert_eq!(s.consecutive_failures, 0);
    }

    #[test]
    fn never_passing_within_the_grace_is_unhealthy() {
        let c = check(3);
        let s = run(&[fail(), fail()], &c, Duration::from_secs(1));
        assert_eq!(s.verdict, Health::Unknown);
        let s = s.record(&fail(), &c, GRACE, GRACE);
        assert_eq!(
            s.verdict,
            Health::Unhealthy {
                consecutive_failures: 3
            }
        );
    }

    #[test]
    fn threshold_consecutive_failures_after_a_pass_make_it_unhealthy() {
        let c = check(3);
        let t = Duration::from_secs(1);
        let s = run(&[Outcome::Pass, fail(), fail()], &c, t);
        assert_eq!(
            s.verdict,
            Health::Healthy,
            "two failures are under the threshold"
        );
        let s = s.record(&fail(), &c, t, GRACE);
        assert_eq!(
            s.verdict,
            Health::Unhealthy {
                consecutive_failures: 3
            }
        );
        let s = s.record(&fail(), &c, t, GRACE);
        assert_eq!(
            s.verdict,
            Health::Unhealthy {
                consecutive_failures: 4
            }
        );
        let s = s.record(&Outcome::Pass, &c, t, GRACE);
        assert_eq!(s.verdict, Health::Healthy);
    }

    #[test]
    fn a_pass_in_between_resets_the_count() {
        let c = check(2);
        let t = Duration::from_secs(1);
        let s = run(&[Outcome::Pass, fail(), Outcome::Pass, fail()], &c, t);
        assert_eq!(s.verdict, Health::Healthy);
        assert_eq!(s.consecutive_failures, 1);
    }

    #[test]
    fn a_threshold_of_zero_acts_as_one() {
        let c = check(0);
        let s = run(&[Outcome::Pass, fail()], &c, Duration::ZERO);
        assert_eq!(
            s.verdict,
            Health::Unhealthy {
                consecutive_failures: 1
            }
        );
    }

    #[test]
    fn probes_are_fast_until_the_first_pass() {
        let c = HealthCheck {
            interval_ms: 5000,
            ..HealthCheck::default()
        };
        let mut s = ProbeState::default();
        assert_eq!(next_delay(&s, &c), Duration::from_millis(250));
        s.passed_once = true;
        assert_eq!(next_delay(&s, &c), Duration::from_secs(5));
        let fast = HealthCheck {
            interval_ms: 100,
            ..HealthCheck::default()
        };
        assert_eq!(
            next_delay(&ProbeState::default(), &fast),
            Duration::from_millis(100)
        );
        // Right after the start, failed probes are retried fast, then slower.
        let delays: Vec<u64> = (1..=7)
            .map(|n| {
                let s = ProbeState {
                    consecutive_failures: n,
                    ..ProbeState::default()
                };
                next_delay(&s, &c).as_millis() as u64
            })
            .collect();
        assert_eq!(delays, vec![20, 40, 80, 160, 250, 250, 250]);
        let s = ProbeState {
            consecutive_failures: u32::MAX,
            ..ProbeState::default()
        };
        assert_eq!(next_delay(&s, &c), STARTING_MAX, "no overflow");
        assert_eq!(next_delay(&s, &fast), Duration::from_millis(100));
    }

    #[test]
    fn status_lines_parse() {
        assert_eq!(parse_status(b"HTTP/1.0 200 OK\r\nDate: x\r\n"), Some(200));
        assert_eq!(parse_status(b"HTTP/1.1 404 Not Found\r\n"), Some(404));
        assert_eq!(parse_status(b"HTTP/1.1 302\r\n"), Some(302));
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status(b"HTTP/1.1 2000 what\r\n"), None);
        assert_eq!(parse_status(b""), None);
    }

    #[tokio::test]
    async fn probes_a_real_socket() {
        use tokio::net::TcpListener;
        let listener = match TcpListener::bind("[::1]:0").await {
            Ok(l) => l,
            Err(_) => return, // no IPv6 loopback here; the integration tests cover probing
        };
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            for answer in [
                "HTTP/1.0 204 No Content\r\n\r\n",
                "HTTP/1.0 503 Busy\r\n\r\n",
            ] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap();
                assert!(buf[..n].starts_with(b"GET /healthz HTTP/1.0\r\n"));
                s.write_all(answer.as_bytes()).await.unwrap();
            }
        });
        let c = HealthCheck {
            probe: HealthProbe::Http {
                path: "/healthz".into(),
            },
            ..HealthCheck::default()
        };
        assert_eq!(probe(Ipv6Addr::LOCALHOST, port, &c).await, Outcome::Pass);
        assert!(
            matches!(probe(Ipv6Addr::LOCALHOST, port, &c).await, Outcome::Fail(m) if m.contains("503"))
        );
        let tcp = HealthCheck {
            probe: HealthProbe::Tcp,
            ..HealthCheck::default()
        };
        let open = TcpListener::bind("[::1]:0").await.unwrap();
        let open_port = open.local_addr().unwrap().port();
        assert_eq!(
            probe(Ipv6Addr::LOCALHOST, open_port, &tcp).await,
            Outcome::Pass
        );
        drop(open);
        assert!(matches!(
            probe(Ipv6Addr::LOCALHOST, open_port, &tcp).await,
            Outcome::Fail(_)
        ));
    }
}
