//! Session requests on `pool.v1.node.<node>.session`: live logs, exec, files and the settings
//! given at claim, for containers this agent runs (protocol: [`warmpool_proto::session`]).
//!
//! A stream is a bounded channel of output filled by one producer task (Docker's log stream,
//! or an exec's attached output) and emptied by the member's pulls. The channel holds at most
//! [`BUFFERED_ITEMS`] items of at most [`ITEM_BYTES`]: when the member stops pulling (its HTTP
//! client reads slowly), the producer waits, and Docker with it (an exec's process blocks on
//! its full pipe; a log follow stops reading the log file). Log follows also have a rate cap
//! ([`LogRate`]): lines beyond it are dropped and counted, and the count reaches the client as
//! a marker. A stream nobody pulled for [`STREAM_IDLE_MS`] is closed by [`reap`].
//!
//! Files go through processes in the container (`cat`, `tar`, `sh`), not Docker's archive
//! API: that API reads and writes the container's root filesystem layer, which is read-only
//! by default here and does not see the tmpfs mounts (`/tmp`) where a session's files live.
//! An image without a shell, `cat` or `tar` cannot use `/files` (the error says so).
//!
//! Docker cannot signal an exec's process; a timeout or a closed stream kills it by its host
//! pid (`kill -KILL`, the agent runs as root on the host).

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::ExecConfig;
use bollard::Docker;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use warmpool_proto::session::{
    parse_settings, render_settings, Chunk, ExecExit, ExecSpec, Output, OutputStream,
    SessionErrorKind, SessionReply, SessionRequest, StreamEnd, StreamId, MAX_CHUNK_BYTES,
    PULL_WAIT_MS, SETTINGS_PATH, STREAM_IDLE_MS,
};
use warmpool_proto::ContainerId;

use crate::agent::Shared;

/// Items a stream buffers before its producer waits.
pub const BUFFERED_ITEMS: usize = 64;
/// Largest item: output is cut into pieces of at most this.
pub const ITEM_BYTES: usize = 32 * 1024;
/// Most streams open at once on one agent.
pub const MAX_STREAMS: usize = 256;
/// Log lines a follow passes per second on average...
pub const LOG_LINES_PER_SEC: f64 = 1_000.0;
/// ...and at once after a quiet spell.
pub const LOG_LINES_BURST: f64 = 2_000.0;
/// Time a short helper process (a path check, the settings write) may take.
const HELPER_TIMEOUT: Duration = Duration::from_secs(30);
/// Reply publish deadline.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);

type Stdin = Pin<Box<dyn AsyncWrite + Send>>;

/// One open stream.
struct Open {
    container: ContainerId,
    out: tokio::sync::Mutex<mpsc::Receiver<Output>>,
    dropped: Arc<AtomicU64>,
    end: Arc<Mutex<Option<StreamEnd>>>,
    stdin: tokio::sync::Mutex<Option<Stdin>>,
    cancel: CancellationToken,
    last_used: Mutex<Instant>,
}

impl Open {
    fn touch(&self) {
        *lock(&self.last_used) = Instant::now();
    }
}

/// The agent's open streams and the settings it holds per container. `std::sync::Mutex`:
/// nothing awaits under them.
#[derive(Default)]
pub struct Sessions {
    streams: Mutex<HashMap<StreamId, Arc<Open>>>,
    settings: Mutex<HashMap<ContainerId, BTreeMap<String, String>>>,
    /// Graceful stops under way: a destroy repeated meanwhile (the leader's request timed
    /// out and it sent another) waits for the same stop instead of killing at once.
    stopping: Mutex<HashMap<ContainerId, tokio::sync::watch::Receiver<bool>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Sessions {
    fn get(&self, id: &StreamId) -> Option<Arc<Open>> {
        lock(&self.streams).get(id).cloned()
    }

    fn remove(&self, id: &StreamId) -> Option<Arc<Open>> {
        let s = lock(&self.streams).remove(id);
        metrics::gauge!("warmpool_agent_session_streams").set(self.len() as f64);
        s
    }

    fn len(&self) -> usize {
        lock(&self.streams).len()
    }

    /// Forgets a container's settings (it is gone).
    pub fn forget(&self, id: &ContainerId) {
        lock(&self.settings).remove(id);
    }
}

/// Producer side of a stream.
struct Feed {
    tx: mpsc::Sender<Output>,
    dropped: Arc<AtomicU64>,
    end: Arc<Mutex<Option<StreamEnd>>>,
    cancel: CancellationToken,
}

impl Feed {
    /// Sends `data` in pieces of at most [`ITEM_BYTES`]; false when the stream is gone.
    async fn send(&self, stream: OutputStream, data: &[u8]) -> bool {
        for piece in data.chunks(ITEM_BYTES) {
            let item = Output {
                stream,
                data: piece.to_vec(),
            };
            tokio::select! {
                r = self.tx.send(item) => if r.is_err() { return false },
                _ = self.cancel.cancelled() => return false,
            }
        }
        true
    }

    fn finish(self, end: StreamEnd) {
        *lock(&self.end) = Some(end);
        // Dropping `tx` tells the puller the stream is over, after the items queued.
    }
}

/// Registers a new stream; its feed goes to the producer.
fn register(
    sessions: &Sessions,
    id: StreamId,
    container: ContainerId,
    stdin: Option<Stdin>,
) -> Result<Feed, SessionReply> {
    let mut streams = lock(&sessions.streams);
    if streams.contains_key(&id) {
        return Err(SessionReply::error(
            SessionErrorKind::StreamExists,
            format!("stream {id} is open already"),
        ));
    }
    if streams.len() >= MAX_STREAMS {
        return Err(SessionReply::error(
            SessionErrorKind::Busy,
            format!("this agent has {MAX_STREAMS} streams open; try again later"),
        ));
    }
    let (tx, rx) = mpsc::channel(BUFFERED_ITEMS);
    let dropped = Arc::new(AtomicU64::new(0));
    let end = Arc::new(Mutex::new(None));
    let cancel = CancellationToken::new();
    streams.insert(
        id,
        Arc::new(Open {
            container,
            out: tokio::sync::Mutex::new(rx),
            dropped: dropped.clone(),
            end: end.clone(),
            stdin: tokio::sync::Mutex::new(stdin),
            cancel: cancel.clone(),
            last_used: Mutex::new(Instant::now()),
        }),
    );
    let n = streams.len();
    drop(streams);
    metrics::gauge!("warmpool_agent_session_streams").set(n as f64);
    Ok(Feed {
        tx,
        dropped,
        end,
        cancel,
    })
}

/// HELP texts of this module's metrics.
fn describe_metrics() {
    metrics::describe_gauge!(
        "warmpool_agent_session_streams",
        "Log, exec and file streams open on this agent"
    );
    metrics::describe_counter!(
        "warmpool_agent_session_requests_total",
        "Session requests (logs, exec, files, settings) answered, by op and outcome"
    );
    metrics::describe_counter!(
        "warmpool_agent_log_lines_dropped_total",
        "Log lines left out of live log streams by the rate cap"
    );
}

/// Serves session requests from `sub` until `cancel`, each in its own task.
pub async fn listen(
    shared: Arc<Shared>,
    mut sub: async_nats::Subscriber,
    handlers: tokio_util::task::TaskTracker,
    cancel: CancellationToken,
) {
    describe_metrics();
    handlers.spawn(reap(shared.clone(), cancel.clone()));
    loop {
        let msg = tokio::select! {
            _ = cancel.cancelled() => break,
            m = sub.next() => m,
        };
        let Some(msg) = msg else {
            warn!("session subscription ended");
            break;
        };
        let shared = shared.clone();
        handlers.spawn(async move { handle(shared, msg).await });
    }
    // Every open stream ends with the agent.
    let open: Vec<Arc<Open>> = lock(&shared.sessions.streams)
        .drain()
        .map(|(_, s)| s)
        .collect();
    for s in open {
        s.cancel.cancel();
    }
    if let Err(e) = sub.unsubscribe().await {
        warn!(error = %e, "unsubscribing from session requests failed");
    }
}

/// Closes streams nobody pulled for [`STREAM_IDLE_MS`] (their member died or lost NATS).
async fn reap(shared: Arc<Shared>, cancel: CancellationToken) {
    let idle = Duration::from_millis(STREAM_IDLE_MS);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let stale: Vec<StreamId> = lock(&shared.sessions.streams)
            .iter()
            .filter(|(_, s)| lock(&s.last_used).elapsed() > idle)
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            if let Some(s) = shared.sessions.remove(&id) {
                info!(stream = %id, container = %s.container, "stream closed: not pulled for {idle:?}");
                s.cancel.cancel();
            }
        }
    }
}

async fn handle(shared: Arc<Shared>, msg: async_nats::Message) {
    let reply = match serde_json::from_slice::<SessionRequest>(&msg.payload) {
        Ok(req) => {
            let kind = req.kind();
            let reply = execute(&shared, req).await;
            let outcome = match &reply {
                SessionReply::Error { .. } => "error",
                _ => "ok",
            };
            metrics::counter!("warmpool_agent_session_requests_total", "op" => kind, "outcome" => outcome)
                .increment(1);
            reply
        }
        Err(e) => {
            warn!(error = %e, bytes = msg.payload.len(), "malformed session request refused");
            SessionReply::error(
                SessionErrorKind::Invalid,
                format!("malformed session request: {e}"),
            )
        }
    };
    let Some(to) = msg.reply else {
        return;
    };
    let payload = match serde_json::to_vec(&reply) {
        Ok(p) => Bytes::from(p),
        Err(e) => {
            warn!(error = %e, "cannot serialise session reply");
            return;
        }
    };
    match tokio::time::timeout(REPLY_TIMEOUT, shared.nats.publish(to, payload)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "sending session reply failed"),
        Err(_) => warn!("sending session reply timed out"),
    }
}

async fn execute(shared: &Arc<Shared>, req: SessionRequest) -> SessionReply {
    match req {
        SessionRequest::OpenLogs {
            stream,
            container,
            tail,
            follow,
        } => open_logs(shared, stream, container, tail, follow),
        SessionRequest::OpenExec {
            stream,
            container,
            exec,
        } => open_exec(shared, stream, container, exec).await,
        SessionRequest::OpenRead {
            stream,
            container,
            path,
            archive,
            max_bytes,
        } => open_read(shared, stream, container, &path, archive, max_bytes).await,
        SessionRequest::OpenWrite {
            stream,
            container,
            path,
            archive,
        } => open_write(shared, stream, container, &path, archive).await,
        SessionRequest::Write { stream, data, eof } => write(shared, stream, data, eof).await,
        SessionRequest::Pull { stream, wait_ms } => pull(shared, stream, wait_ms).await,
        SessionRequest::Close { stream } => {
            if let Some(s) = shared.sessions.remove(&stream) {
                debug!(%stream, container = %s.container, "stream closed by its member");
                s.cancel.cancel();
            }
            SessionReply::Closed
        }
        SessionRequest::ApplySettings { container, env } => {
            apply_settings(shared, container, env).await
        }
        SessionRequest::RestoreWorkspace { container, binding } => {
            crate::workspace::restore(shared, container, binding).await
        }
        SessionRequest::Unpause {
            container,
            timeout_ms,
        } => {
            let timeout = Duration::from_millis(timeout_ms.clamp(1, 30_000));
            match crate::pause::unpause(shared, container, true, timeout).await {
                Ok((took, was_paused)) => SessionReply::Unpaused {
                    took_ms: took.as_millis() as u64,
                    was_paused,
                },
                Err(message) => SessionReply::error(SessionErrorKind::Runtime, message),
            }
        }
    }
}

/// The Docker id of a container this agent runs.
fn docker_id(shared: &Shared, container: &ContainerId) -> Result<String, SessionReply> {
    if let Some(o) = shared.runtime.outage() {
        return Err(SessionReply::error(
            SessionErrorKind::Runtime,
            format!("the container runtime is unavailable ({})", o.error),
        ));
    }
    shared.inventory.docker_id_of(container).ok_or_else(|| {
        SessionReply::error(
            SessionErrorKind::NoSuchContainer,
            format!("container {container} does not run here"),
        )
    })
}

/// Before a container is removed: its pool's pre-stop command (within the grace), then
/// SIGTERM and up to the rest of the grace for it to exit (`docker stop`). Nothing to do for a
/// container whose pool asks for neither (the common case: removed at once, as before).
/// Concurrent calls for one container share one stop.
pub async fn stop_gracefully(shared: &Arc<Shared>, id: ContainerId, docker_id: &str) {
    let mut done = {
        let mut stopping = lock(&shared.sessions.stopping);
        match stopping.get(&id) {
            Some(rx) => rx.clone(),
            None => {
                let (tx, rx) = tokio::sync::watch::channel(false);
                stopping.insert(id, rx.clone());
                let (shared2, docker_id) = (shared.clone(), docker_id.to_string());
                shared.tasks.spawn(async move {
                    stop_now(&shared2, id, &docker_id).await;
                    lock(&shared2.sessions.stopping).remove(&id);
                    let _ = tx.send(true);
                });
                rx
            }
        }
    };
    let _ = done.wait_for(|d| *d).await;
}

async fn stop_now(shared: &Shared, id: ContainerId, docker_id: &str) {
    let labels = match shared.driver.inspect(docker_id).await {
        Ok(Some(obs)) if obs.state == crate::docker::DockerState::Running => obs.labels,
        _ => return,
    };
    let (grace, pre_stop) = crate::labels::stop_of(&labels);
    if grace == 0 && pre_stop.is_empty() {
        return;
    }
    let started = Instant::now();
    let budget = Duration::from_secs(u64::from(grace.max(1)));
    if !pre_stop.is_empty() {
        let docker = shared.driver.docker();
        let run = run_to_end(docker, docker_id, pre_stop, None);
        match tokio::time::timeout(budget, run).await {
            Ok(Ok((code, _, err))) => {
                info!(container = %id, exit_code = ?code, stderr = %String::from_utf8_lossy(&err).trim(), "pre-stop command ran")
            }
            Ok(Err(e)) => warn!(container = %id, error = ?e, "pre-stop command failed"),
            Err(_) => warn!(container = %id, "pre-stop command ran out of the grace period"),
        }
    }
    let left = budget.saturating_sub(started.elapsed()).as_secs() as u32;
    let left = if grace == 0 { 0 } else { left };
    match shared.driver.stop(docker_id, left).await {
        Ok(()) => {
            info!(container = %id, grace_secs = left, took_ms = started.elapsed().as_millis() as u64, "container stopped (SIGTERM, then SIGKILL after the grace)")
        }
        Err(e) => {
            warn!(container = %id, error = %e, "stopping gracefully failed; removing it anyway")
        }
    }
}

/// A token bucket of log lines: refilled at `rate` a second up to `burst`.
#[derive(Debug, Clone)]
pub struct LogRate {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Instant,
}

impl LogRate {
    /// A full bucket at `now`.
    pub fn new(rate: f64, burst: f64, now: Instant) -> Self {
        LogRate {
            tokens: burst,
            rate,
            burst,
            at: now,
        }
    }

    /// Whether one more line may pass at `now`.
    pub fn admit(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn open_logs(
    shared: &Arc<Shared>,
    stream: StreamId,
    container: ContainerId,
    tail: Option<u64>,
    follow: bool,
) -> SessionReply {
    let docker_id = match docker_id(shared, &container) {
        Ok(d) => d,
        Err(e) => return e,
    };
    let feed = match register(&shared.sessions, stream, container, None) {
        Ok(f) => f,
        Err(e) => return e,
    };
    // "New lines only" must mean every line printed from now on, even those printed before
    // dockerd serves the request: so from this second on, with timestamps, and those before
    // this instant dropped (Docker's `tail=0` would lose a line printed meanwhile).
    let cutoff = (follow && tail == Some(0)).then(unix_nanos_now);
    let tail = match (cutoff, tail) {
        (Some(_), _) | (None, None) => "all".to_string(),
        (None, Some(n)) => n.to_string(),
    };
    let mut opts = bollard::query_parameters::LogsOptionsBuilder::new()
        .follow(follow)
        .stdout(true)
        .stderr(true)
        .tail(&tail);
    if let Some(c) = cutoff {
        let secs = i32::try_from(c / 1_000_000_000).unwrap_or(i32::MAX);
        opts = opts.since(secs).timestamps(true);
    }
    let logs = shared.driver.docker().logs(&docker_id, Some(opts.build()));
    tokio::spawn(async move {
        let end = pump_logs(logs, &feed, cutoff).await;
        feed.finish(end);
    });
    SessionReply::Opened { size: None }
}

async fn pump_logs(
    mut logs: impl Stream<Item = Result<bollard::container::LogOutput, bollard::errors::Error>> + Unpin,
    feed: &Feed,
    cutoff: Option<i128>,
) -> StreamEnd {
    let mut rate = LogRate::new(LOG_LINES_PER_SEC, LOG_LINES_BURST, Instant::now());
    loop {
        let next = tokio::select! {
            n = logs.next() => n,
            _ = feed.cancel.cancelled() => return StreamEnd::Logs,
        };
        let (stream, data) = match next {
            None => return StreamEnd::Logs,
            Some(Ok(bollard::container::LogOutput::StdOut { message })) => {
                (OutputStream::Stdout, message)
            }
            Some(Ok(bollard::container::LogOutput::StdErr { message })) => {
                (OutputStream::Stderr, message)
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                return StreamEnd::Failed {
                    kind: SessionErrorKind::Runtime,
                    message: format!("reading the container's log: {e}"),
                }
            }
        };
        // With a cutoff the lines carry Docker's timestamp: earlier ones are not wanted.
        let data = match cutoff {
            Some(c) => match split_timestamp(&data) {
                Some((at, _)) if at < c => continue,
                Some((_, line)) => bytes::Bytes::copy_from_slice(line),
                None => data,
            },
            None => data,
        };
        // Docker's json-file log gives one entry per line.
        if !rate.admit(Instant::now()) {
            feed.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("warmpool_agent_log_lines_dropped_total").increment(1);
            continue;
        }
        if !feed.send(stream, &data).await {
            return StreamEnd::Logs;
        }
    }
}

/// Now, in nanoseconds since the Unix epoch.
fn unix_nanos_now() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

/// A log line Docker stamped (`2026-12-04T07:08:13.6757Z line`): the stamp in nanoseconds
/// since the epoch, and the line.
fn split_timestamp(data: &[u8]) -> Option<(i128, &[u8])> {
    let space = data.iter().position(|b| *b == b' ')?;
    let at = parse_rfc3339_nanos(std::str::from_utf8(&data[..space]).ok()?)?;
    Some((at, &data[space + 1..]))
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z` (UTC, as Docker writes it) in nanoseconds since the epoch.
fn parse_rfc3339_nanos(s: &str) -> Option<i128> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || frac.len() > 9 {
        return None;
    }
    let nanos: i128 = if frac.is_empty() {
        0
    } else {
        frac.parse::<i128>().ok()? * 10i128.pow(9 - frac.len() as u32)
    };
    // Days since the epoch of a civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3_600 + mm * 60 + ss;
    Some(i128::from(secs) * 1_000_000_000 + nanos)
}

/// Starts `cmd` in the container, attached; stdin is kept open when asked.
async fn start_exec(
    docker: &Docker,
    docker_id: &str,
    cmd: Vec<String>,
    env: &BTreeMap<String, String>,
    working_dir: Option<String>,
    with_stdin: bool,
) -> Result<
    (
        String,
        Pin<
            Box<
                dyn Stream<Item = Result<bollard::container::LogOutput, bollard::errors::Error>>
                    + Send,
            >,
        >,
        Option<Stdin>,
    ),
    SessionReply,
> {
    let config = ExecConfig {
        cmd: Some(cmd),
        env: (!env.is_empty()).then(|| env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        working_dir,
        attach_stdin: Some(with_stdin),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(false),
        ..Default::default()
    };
    let runtime = |what: &str, e: bollard::errors::Error| {
        let kind = if crate::docker::is_status(&e, 404) {
            SessionErrorKind::NoSuchContainer
        } else {
            SessionErrorKind::Runtime
        };
        SessionReply::error(kind, format!("{what}: {e}"))
    };
    let exec = docker
        .create_exec(docker_id, config)
        .await
        .map_err(|e| runtime("creating the exec", e))?;
    let started = docker
        .start_exec(
            &exec.id,
            Some(StartExecOptions {
                detach: false,
                tty: false,
                output_capacity: None,
            }),
        )
        .await
        .map_err(|e| runtime("starting the exec", e))?;
    match started {
        StartExecResults::Attached { output, input } => {
            Ok((exec.id, output, with_stdin.then_some(input)))
        }
        StartExecResults::Detached => Err(SessionReply::error(
            SessionErrorKind::Runtime,
            "the exec started detached",
        )),
    }
}

/// Kills an exec's process by its host pid.
async fn kill_exec(docker: &Docker, exec_id: &str) {
    let pid = match docker.inspect_exec(exec_id).await {
        Ok(i) if i.running == Some(true) => i.pid.filter(|p| *p > 1),
        _ => None,
    };
    if let Some(pid) = pid {
        match tokio::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .await
        {
            Ok(s) if s.success() => debug!(pid, "exec process killed"),
            Ok(s) => debug!(pid, status = %s, "kill did not succeed (already gone?)"),
            Err(e) => warn!(pid, error = %e, "cannot run kill"),
        }
    }
}

/// Copies an exec's output into the feed until it ends, times out or the stream is closed.
async fn pump_exec(
    docker: Docker,
    exec_id: String,
    mut output: Pin<
        Box<
            dyn Stream<Item = Result<bollard::container::LogOutput, bollard::errors::Error>> + Send,
        >,
    >,
    feed: Feed,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let end = loop {
        let next = tokio::select! {
            n = output.next() => n,
            _ = tokio::time::sleep_until(deadline), if !timed_out => {
                timed_out = true;
                kill_exec(&docker, &exec_id).await;
                continue;
            }
            _ = feed.cancel.cancelled() => {
                kill_exec(&docker, &exec_id).await;
                return;
            }
        };
        let (stream, data) = match next {
            None => break None,
            Some(Ok(bollard::container::LogOutput::StdOut { message })) => {
                (OutputStream::Stdout, message)
            }
            Some(Ok(bollard::container::LogOutput::StdErr { message })) => {
                (OutputStream::Stderr, message)
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                break Some(StreamEnd::Failed {
                    kind: SessionErrorKind::Runtime,
                    message: format!("reading the exec's output: {e}"),
                })
            }
        };
        if !feed.send(stream, &data).await {
            kill_exec(&docker, &exec_id).await;
            return;
        }
    };
    let end = match end {
        Some(failed) => failed,
        None => {
            let exit_code = if timed_out {
                None
            } else {
                docker
                    .inspect_exec(&exec_id)
                    .await
                    .ok()
                    .and_then(|i| i.exit_code)
            };
            StreamEnd::Exit(ExecExit {
                exit_code,
                timed_out,
            })
        }
    };
    feed.finish(end);
}

/// The settings held for a container: from memory, or (after an agent restart) read back
/// from the file in the container.
async fn settings_of(
    shared: &Shared,
    container: &ContainerId,
    docker_id: &str,
) -> BTreeMap<String, String> {
    if let Some(env) = lock(&shared.sessions.settings).get(container) {
        return env.clone();
    }
    let docker = shared.driver.docker();
    let read = run_to_end(
        docker,
        docker_id,
        vec!["cat".into(), SETTINGS_PATH.into()],
        None,
    )
    .await;
    let env = match read {
        Ok((Some(0), out, _)) => parse_settings(&String::from_utf8_lossy(&out)),
        _ => BTreeMap::new(),
    };
    lock(&shared.sessions.settings).insert(*container, env.clone());
    env
}

async fn open_exec(
    shared: &Arc<Shared>,
    stream: StreamId,
    container: ContainerId,
    exec: ExecSpec,
) -> SessionReply {
    let docker_id = match docker_id(shared, &container) {
        Ok(d) => d,
        Err(e) => return e,
    };
    if exec.command.is_empty() {
        return SessionReply::error(SessionErrorKind::Invalid, "command is empty");
    }
    let mut env = settings_of(shared, &container, &docker_id).await;
    env.extend(exec.env);
    let docker = shared.driver.docker().clone();
    let (exec_id, output, _) = match start_exec(
        &docker,
        &docker_id,
        exec.command,
        &env,
        exec.working_dir,
        false,
    )
    .await
    {
        Ok(x) => x,
        Err(e) => return e,
    };
    let feed = match register(&shared.sessions, stream, container, None) {
        Ok(f) => f,
        Err(e) => {
            kill_exec(&docker, &exec_id).await;
            return e;
        }
    };
    let timeout = Duration::from_millis(exec.timeout_ms.max(1));
    tokio::spawn(pump_exec(docker, exec_id, output, feed, timeout));
    SessionReply::Opened { size: None }
}

/// Runs a short helper to its end: exit code, stdout, stderr (each capped at 1 MiB).
async fn run_to_end(
    docker: &Docker,
    docker_id: &str,
    cmd: Vec<String>,
    stdin: Option<Vec<u8>>,
) -> Result<(Option<i64>, Vec<u8>, Vec<u8>), SessionReply> {
    const CAP: usize = 1024 * 1024;
    let (exec_id, mut output, input) = start_exec(
        docker,
        docker_id,
        cmd,
        &BTreeMap::new(),
        None,
        stdin.is_some(),
    )
    .await?;
    let work = async {
        if let (Some(mut input), Some(bytes)) = (input, stdin) {
            input.write_all(&bytes).await.ok();
            input.shutdown().await.ok();
        }
        let (mut out, mut err) = (Vec::new(), Vec::new());
        while let Some(item) = output.next().await {
            match item {
                Ok(bollard::container::LogOutput::StdOut { message }) if out.len() < CAP => {
                    out.extend_from_slice(&message)
                }
                Ok(bollard::container::LogOutput::StdErr { message }) if err.len() < CAP => {
                    err.extend_from_slice(&message)
                }
                Ok(_) => {}
                Err(e) => {
                    return Err(SessionReply::error(
                        SessionErrorKind::Runtime,
                        format!("reading a helper's output: {e}"),
                    ))
                }
            }
        }
        Ok((out, err))
    };
    let (out, err) = match tokio::time::timeout(HELPER_TIMEOUT, work).await {
        Ok(r) => r?,
        Err(_) => {
            kill_exec(docker, &exec_id).await;
            return Err(SessionReply::error(
                SessionErrorKind::Runtime,
                format!("a helper process in the container took over {HELPER_TIMEOUT:?}"),
            ));
        }
    };
    let code = docker
        .inspect_exec(&exec_id)
        .await
        .ok()
        .and_then(|i| i.exit_code);
    Ok((code, out, err))
}

/// What a path in the container is, by a helper shell.
#[derive(Debug, PartialEq, Eq)]
pub enum PathKind {
    /// Nothing there.
    Missing,
    /// A directory.
    Dir,
    /// A file of this size.
    File(u64),
}

/// Parses the path check's output.
pub fn parse_path_kind(out: &str) -> Option<PathKind> {
    let out = out.trim();
    match out {
        "missing" => Some(PathKind::Missing),
        "dir" => Some(PathKind::Dir),
        _ => out
            .strip_prefix("file ")
            .and_then(|n| n.trim().parse().ok())
            .map(PathKind::File),
    }
}

const PATH_CHECK: &str = r#"if [ -d "$1" ]; then echo dir; elif [ -e "$1" ]; then echo "file $(wc -c < "$1")"; else echo missing; fi"#;
const WRITE_FILE: &str =
    r#"set -e; mkdir -p "$(dirname "$1")"; cat > "$1.wp-part"; mv -f "$1.wp-part" "$1""#;
const WRITE_ARCHIVE: &str = r#"set -e; mkdir -p "$1"; tar -x -f - -C "$1""#;
const WRITE_SETTINGS: &str = r#"set -e; umask 077; cat > /run/warmpool/env.part; chmod 0400 /run/warmpool/env.part; mv -f /run/warmpool/env.part /run/warmpool/env"#;

fn missing_tools(stderr: &[u8]) -> SessionReply {
    SessionReply::error(
        SessionErrorKind::Runtime,
        format!(
            "the container could not run the helper (files need sh, cat, wc and tar in the image): {}",
            String::from_utf8_lossy(stderr).trim()
        ),
    )
}

/// Splits an absolute path into its directory and last part (`/a/b` → `/a`, `b`).
pub fn split_path(path: &str) -> (String, String) {
    let trimmed = path.trim_end_matches('/');
    match trimmed.rsplit_once('/') {
        Some(("", name)) => ("/".into(), name.into()),
        Some((dir, name)) => (dir.into(), name.into()),
        None => ("/".into(), ".".into()),
    }
}

async fn open_read(
    shared: &Arc<Shared>,
    stream: StreamId,
    container: ContainerId,
    path: &str,
    archive: bool,
    max_bytes: u64,
) -> SessionReply {
    if let Err(e) = warmpool_proto::session::check_path(path) {
        return SessionReply::error(SessionErrorKind::Invalid, e);
    }
    let docker_id = match docker_id(shared, &container) {
        Ok(d) => d,
        Err(e) => return e,
    };
    let docker = shared.driver.docker().clone();
    let check = vec![
        "sh".into(),
        "-c".into(),
        PATH_CHECK.into(),
        "sh".into(),
        path.into(),
    ];
    let kind = match run_to_end(&docker, &docker_id, check, None).await {
        Ok((Some(0), out, _)) => match parse_path_kind(&String::from_utf8_lossy(&out)) {
            Some(k) => k,
            None => return missing_tools(&out),
        },
        Ok((_, _, err)) => return missing_tools(&err),
        Err(e) => return e,
    };
    let (cmd, size) = match (kind, archive) {
        (PathKind::Missing, _) => {
            return SessionReply::error(SessionErrorKind::NotFound, format!("no file {path}"))
        }
        (PathKind::Dir, false) => {
            return SessionReply::error(
                SessionErrorKind::IsADirectory,
                format!("{path} is a directory: ask for a tar archive (archive=true)"),
            )
        }
        (PathKind::File(n), false) if n > max_bytes => {
            return SessionReply::error(
                SessionErrorKind::TooLarge,
                format!("{path} holds {n} bytes, over the limit of {max_bytes}"),
            )
        }
        (PathKind::File(n), false) => (vec!["cat".to_string(), path.to_string()], Some(n)),
        (PathKind::Dir, true) => (
            ["tar", "-c", "-f", "-", "-C", path, "."]
                .map(String::from)
                .to_vec(),
            None,
        ),
        (PathKind::File(_), true) => {
            let (dir, name) = split_path(path);
            (
                vec![
                    "tar".into(),
                    "-c".into(),
                    "-f".into(),
                    "-".into(),
                    "-C".into(),
                    dir,
                    name,
                ],
                None,
            )
        }
    };
    let (exec_id, output, _) =
        match start_exec(&docker, &docker_id, cmd, &BTreeMap::new(), None, false).await {
            Ok(x) => x,
            Err(e) => return e,
        };
    let feed = match register(&shared.sessions, stream, container, None) {
        Ok(f) => f,
        Err(e) => {
            kill_exec(&docker, &exec_id).await;
            return e;
        }
    };
    tokio::spawn(pump_exec(
        docker,
        exec_id,
        output,
        feed,
        Duration::from_secs(3_600),
    ));
    SessionReply::Opened { size }
}

async fn open_write(
    shared: &Arc<Shared>,
    stream: StreamId,
    container: ContainerId,
    path: &str,
    archive: bool,
) -> SessionReply {
    if let Err(e) = warmpool_proto::session::check_path(path) {
        return SessionReply::error(SessionErrorKind::Invalid, e);
    }
    let docker_id = match docker_id(shared, &container) {
        Ok(d) => d,
        Err(e) => return e,
    };
    let docker = shared.driver.docker().clone();
    let script = if archive { WRITE_ARCHIVE } else { WRITE_FILE };
    let cmd = vec![
        "sh".into(),
        "-c".into(),
        script.into(),
        "sh".into(),
        path.into(),
    ];
    let (exec_id, output, stdin) =
        match start_exec(&docker, &docker_id, cmd, &BTreeMap::new(), None, true).await {
            Ok(x) => x,
            Err(e) => return e,
        };
    let feed = match register(&shared.sessions, stream, container, stdin) {
        Ok(f) => f,
        Err(e) => {
            kill_exec(&docker, &exec_id).await;
            return e;
        }
    };
    tokio::spawn(pump_exec(
        docker,
        exec_id,
        output,
        feed,
        Duration::from_secs(3_600),
    ));
    SessionReply::Opened { size: None }
}

async fn write(shared: &Arc<Shared>, stream: StreamId, data: Vec<u8>, eof: bool) -> SessionReply {
    let Some(open) = shared.sessions.get(&stream) else {
        return SessionReply::error(
            SessionErrorKind::NoSuchStream,
            format!("no open stream {stream}"),
        );
    };
    open.touch();
    let mut stdin = open.stdin.lock().await;
    let Some(input) = stdin.as_mut() else {
        return SessionReply::error(
            SessionErrorKind::Invalid,
            format!("stream {stream} takes no input"),
        );
    };
    if let Err(e) = input.write_all(&data).await {
        return SessionReply::error(
            SessionErrorKind::Runtime,
            format!("writing to the process in the container: {e}"),
        );
    }
    if eof {
        if let Err(e) = input.shutdown().await {
            return SessionReply::error(
                SessionErrorKind::Runtime,
                format!("closing the process's input: {e}"),
            );
        }
        *stdin = None;
    }
    SessionReply::Written
}

async fn pull(shared: &Arc<Shared>, stream: StreamId, wait_ms: u64) -> SessionReply {
    let Some(open) = shared.sessions.get(&stream) else {
        return SessionReply::error(
            SessionErrorKind::NoSuchStream,
            format!("no open stream {stream}"),
        );
    };
    open.touch();
    let wait = Duration::from_millis(wait_ms.min(PULL_WAIT_MS));
    let mut rx = open.out.lock().await;
    let mut chunk = Chunk::default();
    let mut bytes = 0usize;
    let mut closed = false;
    match tokio::time::timeout(wait, rx.recv()).await {
        Err(_) => {}
        Ok(None) => closed = true,
        Ok(Some(item)) => {
            bytes += item.data.len();
            chunk.items.push(item);
        }
    }
    while !closed && bytes + ITEM_BYTES <= MAX_CHUNK_BYTES {
        match rx.try_recv() {
            Ok(item) => {
                bytes += item.data.len();
                chunk.items.push(item);
            }
            Err(mpsc::error::TryRecvError::Empty) => break,
            Err(mpsc::error::TryRecvError::Disconnected) => closed = true,
        }
    }
    drop(rx);
    chunk.dropped = open.dropped.swap(0, Ordering::Relaxed);
    if closed {
        chunk.end = Some(lock(&open.end).take().unwrap_or(StreamEnd::Failed {
            kind: SessionErrorKind::Runtime,
            message: "the stream ended without an outcome".into(),
        }));
        shared.sessions.remove(&stream);
    }
    open.touch();
    SessionReply::Chunk(chunk)
}

async fn apply_settings(
    shared: &Arc<Shared>,
    container: ContainerId,
    env: BTreeMap<String, String>,
) -> SessionReply {
    if let Err(e) = warmpool_proto::session::check_env_names(env.keys()) {
        return SessionReply::error(SessionErrorKind::Invalid, e);
    }
    let docker_id = match docker_id(shared, &container) {
        Ok(d) => d,
        Err(e) => return e,
    };
    let text = render_settings(&env);
    let cmd = vec!["sh".into(), "-c".into(), WRITE_SETTINGS.into()];
    match run_to_end(
        shared.driver.docker(),
        &docker_id,
        cmd,
        Some(text.into_bytes()),
    )
    .await
    {
        Ok((Some(0), _, _)) => {
            // Names only: values may be secrets.
            info!(%container, variables = env.len(), "settings written to {SETTINGS_PATH}");
            lock(&shared.sessions.settings).insert(container, env);
            SessionReply::Applied
        }
        Ok((code, _, err)) => SessionReply::error(
            SessionErrorKind::Runtime,
            format!(
                "writing {SETTINGS_PATH} failed (exit {code:?}): {}",
                String::from_utf8_lossy(&err).trim()
            ),
        ),
        Err(e) => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_log_stamps_are_read_to_the_nanosecond() {
        assert_eq!(parse_rfc3339_nanos("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_nanos("2026-12-04T07:08:13.6757Z"),
            Some(1_796_368_093_675_700_000)
        );
        assert_eq!(
            parse_rfc3339_nanos("2000-02-29T23:59:59.000000001Z"),
            Some(951_868_799_000_000_001)
        );
        assert_eq!(parse_rfc3339_nanos("2026-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339_nanos("garbage"), None);
        let (at, line) = split_timestamp(b"2026-12-04T07:08:13.6757Z hello world\n").unwrap();
        assert_eq!(
            (at, line),
            (1_796_368_093_675_700_000, &b"hello world\n"[..])
        );
    }

    #[test]
    fn the_rate_cap_passes_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut r = LogRate::new(10.0, 5.0, t0);
        let passed = (0..20).filter(|_| r.admit(t0)).count();
        assert_eq!(passed, 5, "the burst");
        assert!(!r.admit(t0));
        let t1 = t0 + Duration::from_millis(500);
        let passed = (0..20).filter(|_| r.admit(t1)).count();
        assert_eq!(passed, 5, "half a second at 10/s");
        let t2 = t1 + Duration::from_secs(60);
        let passed = (0..20).filter(|_| r.admit(t2)).count();
        assert_eq!(passed, 5, "never more than the burst");
    }

    #[test]
    fn path_checks_parse() {
        assert_eq!(parse_path_kind("missing\n"), Some(PathKind::Missing));
        assert_eq!(parse_path_kind("dir\n"), Some(PathKind::Dir));
        assert_eq!(parse_path_kind("file 42\n"), Some(PathKind::File(42)));
        assert_eq!(parse_path_kind("file    7"), Some(PathKind::File(7)));
        assert_eq!(parse_path_kind("sh: not found"), None);
    }

    #[test]
    fn paths_split() {
        assert_eq!(split_path("/tmp/a.txt"), ("/tmp".into(), "a.txt".into()));
        assert_eq!(split_path("/a"), ("/".into(), "a".into()));
        assert_eq!(split_path("/tmp/dir/"), ("/tmp".into(), "dir".into()));
    }
}
