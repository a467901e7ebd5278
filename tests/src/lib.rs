//! Harness for whole-system tests: real nats-server, real control-plane and agent processes,
//! the real dockerd. Every test gets its own NATS server, ports, data directory, node ids,
//! IPv6 /64 and Docker network, so tests run in parallel and clean up after themselves, even
//! when they fail (everything is torn down in `Drop`).
//!
//! The binaries must be built first (`cargo build --bins`; `deploy/dev.sh test` does it).

use std::fs::File;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

pub mod failover;
pub mod fleet;
pub mod gateway;
pub mod hosts;
pub mod sim_agent;

use poolctl::Client;
use warmpool_proto::api::StatusView;
use warmpool_proto::{PoolName, PoolSpec};

pub use poolctl;
pub use warmpool_proto as proto;

/// The demo image every test pool uses.
pub const DEMO_IMAGE: &str = "warmpool-demo:latest";

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The directory the workspace binaries are taken from: `$WARMPOOL_BIN_DIR` when set (the
/// benchmark harnesses point it at a release build), else `$CARGO_TARGET_DIR/debug` (or
/// `target/debug`).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WARMPOOL_BIN_DIR") {
        return PathBuf::from(dir);
    }
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
        .join("debug")
}

/// Path of a workspace binary; panics with instructions when it was not built.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --bins` first (deploy/dev.sh test does)",
        path.display()
    );
    path
}

/// A plain HTTP client for tests that speak to the API without poolctl's client. reqwest is
/// built with rustls but no default crypto provider (the workspace uses ring, as async-nats
/// does): this installs ring for the process first, once.
pub fn http_client_builder() -> reqwest::ClientBuilder {
    static PROVIDER: Once = Once::new();
    PROVIDER.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder()
}

/// [`http_client_builder`] with the defaults.
pub fn http_client() -> reqwest::Client {
    http_client_builder().build().expect("an HTTP client")
}

/// A short random suffix for names that must not collide between tests.
pub fn unique(prefix: &str) -> String {
    let u = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &u[..8])
}

/// A random /64 under fd36::/16, never fd36:1::/64 (which `deploy/dev.sh up` uses).
pub fn random_prefix() -> String {
    let n = 0x100 + (uuid::Uuid::new_v4().as_u128() % 0xfe00) as u16;
    format!("fd36:{n:x}::/64")
}

/// Whether `ip` lies in the /64 `prefix` (e.g. `fd36:1a2::/64`).
pub fn in_prefix(ip: &Ipv6Addr, prefix: &str) -> bool {
    let net: Ipv6Addr = prefix
        .trim_end_matches("/64")
        .parse()
        .expect("a /64 prefix");
    ip.segments()[..4] == net.segments()[..4]
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    free_port_on(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// Builds the demo image once per test process.
pub fn ensure_demo_image() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let status = Command::new(root().join("deploy/demo-image/build.sh"))
            .arg(DEMO_IMAGE)
            .stdout(Stdio::null())
            .status()
            .expect("run deploy/demo-image/build.sh");
        assert!(status.success(), "building the demo image failed");
    });
}

/// Runs `docker` with `args`; returns stdout, panics on failure.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("run docker");
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Ids (Warmpool's, from labels) of the Docker containers of `node`, running or not.
pub fn docker_containers_of(node: &str) -> Vec<String> {
    let out = docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=io.warmpool.node={node}"),
        "--format",
        "{{.Label \"io.warmpool.id\"}}",
    ]);
    let mut ids: Vec<String> = out
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    ids.sort();
    ids
}

/// Every event after `seq`, oldest first, page by page.
pub async fn events_after(client: &Client, seq: u64) -> Vec<warmpool_proto::Event> {
    let mut all = Vec::new();
    let mut cursor = seq;
    loop {
        let page = client
            .events(&warmpool_proto::api::EventQuery {
                after: Some(cursor),
                limit: Some(1000),
                ..Default::default()
            })
            .await
            .expect("events");
        let Some(last) = page.last() else { break };
        cursor = last.seq;
        all.extend(page);
    }
    all
}

/// Polls `f` every 50 ms until it yields `Some`, or panics after `timeout` naming `what`.
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET http://[ip]:port/path` with a plain HTTP/1.0 request; the status and body.
pub async fn http_get(ip: Ipv6Addr, port: u16, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let connect = tokio::net::TcpStream::connect((ip, port));
    let mut s = tokio::time::timeout(Duration::from_secs(2), connect)
        .await
        .map_err(|_| std::io::ErrorKind::TimedOut)??;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: [{ip}]\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf))
        .await
        .map_err(|_| std::io::ErrorKind::TimedOut)??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

pub(crate) fn log_file(dir: &Path, name: &str) -> (File, PathBuf) {
    let path = dir.join(format!("{name}.log"));
    let f = File::options()
        .create(true)
        .append(true)
        .open(&path)
        .expect("open log file");
    (f, path)
}

fn signal(child: &Child, sig: &str) {
    let _ = Command::new("kill")
        .args(["-s", sig, &child.id().to_string()])
        .status();
}

pub(crate) fn stop_child(child: &mut Option<Child>, sig: &str) {
    if let Some(mut c) = child.take() {
        signal(&c, sig);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match c.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A free TCP port on `addr`, for a process started later to listen on.
///
/// Picked at random below the kernel's ephemeral range (`ip_local_port_range`, 32768 and up
/// here), never with a bind to port 0: a port the kernel hands out is free again once this
/// probe closes, and the kernel may then give it to any outgoing connection (the suite opens
/// thousands, several binaries at once) before the server binds it. A port below the range
/// is taken only by a bind that names it; one already bound fails the probe and another is
/// tried, and each port is handed out once per process.
fn free_port_on(addr: IpAddr) -> u16 {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    const LOW: u16 = 10_000;
    const HIGH: u16 = 32_000;
    for _ in 0..1_000 {
        let port = LOW + (uuid::Uuid::new_v4().as_u128() % u128::from(HIGH - LOW)) as u16;
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        let given = given.get_or_insert_with(HashSet::new);
        if given.contains(&port) {
            continue;
        }
        // Free on `addr` and on the wildcard address (a server may listen on either).
        let bound = |ip: IpAddr| TcpListener::bind(SocketAddr::new(ip, port)).is_ok();
        if bound(addr) && bound(IpAddr::V6(Ipv6Addr::UNSPECIFIED)) {
            given.insert(port);
            return port;
        }
    }
    panic!("no free port on {addr} below the ephemeral range");
}

/// One nats-server process of a [`Nats`].
struct NatsServer {
    child: Option<Child>,
    port: u16,
    /// The port of its cluster routes and of its monitoring endpoint; both unused when the
    /// server is alone.
    route_port: u16,
    monitor_port: u16,
}

/// A nats-server on a free port, or several joined into one NATS cluster by real routes
/// ([`Nats::cluster`]).
pub struct Nats {
    servers: Vec<NatsServer>,
    /// The address they listen on.
    pub addr: IpAddr,
    dir: PathBuf,
}

impl Nats {
    /// Starts a server on 127.0.0.1 and waits until it accepts connections.
    pub fn start(dir: &Path) -> Nats {
        Nats::start_on(dir, IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    /// Starts a server listening on `addr` only (e.g. the multi-host bridge address, which
    /// every network namespace can reach) and waits until it accepts connections.
    pub fn start_on(dir: &Path, addr: IpAddr) -> Nats {
        Nats::launch(dir, addr, 1)
    }

    /// Starts `n` servers on 127.0.0.1, each routed to every other (a full mesh, as a NATS
    /// cluster runs in production), and waits until every route is up. [`Nats::url`] names
    /// them all.
    pub fn cluster(dir: &Path, n: usize) -> Nats {
        assert!(n >= 2, "a cluster has at least two servers");
        Nats::launch(dir, IpAddr::V4(Ipv4Addr::LOCALHOST), n)
    }

    /// [`Nats::cluster`] listening on `addr` (e.g. the multi-host bridge address).
    pub fn cluster_on(dir: &Path, addr: IpAddr, n: usize) -> Nats {
        assert!(n >= 2, "a cluster has at least two servers");
        Nats::launch(dir, addr, n)
    }

    fn launch(dir: &Path, addr: IpAddr, n: usize) -> Nats {
        let servers = (0..n)
            .map(|_| NatsServer {
                child: None,
                port: free_port_on(addr),
                route_port: free_port_on(addr),
                monitor_port: free_port_on(addr),
            })
            .collect();
        let mut nats = Nats {
            servers,
            addr,
            dir: dir.to_path_buf(),
        };
        nats.restart();
        nats
    }

    /// Starts every server that is not running again, on its old ports (after
    /// [`Nats::kill`]), and waits until each accepts connections and, in a cluster, has its
    /// routes to the others.
    pub fn restart(&mut self) {
        for i in 0..self.servers.len() {
            if self.servers[i].child.is_none() {
                self.restart_server(i);
            }
        }
    }

    /// Starts server `i` again (after [`Nats::kill_server`]) and waits until it accepts
    /// connections and, in a cluster, has a route to every other running server.
    pub fn restart_server(&mut self, i: usize) {
        let clustered = self.servers.len() > 1;
        let addr = self.addr.to_string();
        let route = |port: u16| format!("nats://{}", SocketAddr::new(self.addr, port));
        let routes: Vec<String> = self
            .servers
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, s)| route(s.route_port))
            .collect();
        let s = &self.servers[i];
        let name = if clustered {
            format!("nats-{i}")
        } else {
            "nats".to_string()
        };
        let (log, _) = log_file(&self.dir, &name);
        let mut cmd = Command::new("nats-server");
        cmd.args(["-a", &addr, "-p", &s.port.to_string()]);
        if clustered {
            cmd.args(["-n", &name])
                .args(["-m", &s.monitor_port.to_string()])
                .args(["--cluster_name", "warmpool-test"])
                .args(["--cluster", &route(s.route_port)])
                .args(["--routes", &routes.join(",")]);
        }
        let child = cmd
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("nats-server is installed (deploy/dev.sh test installs it)");
        self.servers[i].child = Some(child);
        let port = self.servers[i].port;
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect((self.addr, port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        if clustered {
            let want = self.running() - 1;
            while self.routes(i) < want {
                assert!(
                    Instant::now() < deadline,
                    "nats-server {i} did not route to its {want} peers"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// How many of the servers run.
    pub fn running(&self) -> usize {
        self.servers.iter().filter(|s| s.child.is_some()).count()
    }

    /// `nats://<addr>:<port>` (`nats://[addr]:<port>` for IPv6); for a cluster, every
    /// server's URL, comma-separated, as `--nats-url` takes them.
    pub fn url(&self) -> String {
        (0..self.servers.len())
            .map(|i| self.server_url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Server `i`'s URL alone.
    pub fn server_url(&self, i: usize) -> String {
        format!(
            "nats://{}",
            SocketAddr::new(self.addr, self.servers[i].port)
        )
    }

    /// SIGKILLs every server.
    pub fn kill(&mut self) {
        for s in &mut self.servers {
            stop_child(&mut s.child, "KILL");
        }
    }

    /// SIGKILLs server `i` alone.
    pub fn kill_server(&mut self, i: usize) {
        stop_child(&mut self.servers[i].child, "KILL");
    }

    /// The first server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.servers[0].child.as_ref().map(Child::id)
    }

    /// The names of the clients connected to server `i` of a cluster (its `/connz`
    /// monitoring page), e.g. `warmpool-control-plane-1` or `warmpool-agent <node>`.
    pub fn client_names(&self, i: usize) -> Vec<String> {
        let body = self.monitor(i, "/connz?limit=1000");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        v["connections"]
            .as_array()
            .map(|cs| {
                cs.iter()
                    .filter_map(|c| c["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// How many routes server `i` of a cluster has up (0 when it does not answer).
    fn routes(&self, i: usize) -> usize {
        let body = self.monitor(i, "/routez");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        v["num_routes"].as_u64().unwrap_or(0) as usize
    }

    /// A plain HTTP/1.0 GET of server `i`'s monitoring endpoint; empty when it does not answer.
    fn monitor(&self, i: usize, path: &str) -> String {
        use std::io::{Read, Write};
        let Ok(mut s) = TcpStream::connect((self.addr, self.servers[i].monitor_port)) else {
            return String::new();
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if write!(s, "GET {path} HTTP/1.0\r\nHost: nats\r\n\r\n").is_err() {
            return String::new();
        }
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        text.split_once("\r\n\r\n")
            .map(|(_, body)| body.to_string())
            .unwrap_or_default()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One control-plane member process.
pub struct Member {
    /// Raft id.
    pub id: u64,
    /// API port on 127.0.0.1.
    pub api_port: u16,
    nats_url: String,
    data_dir: PathBuf,
    log_dir: PathBuf,
    bootstrap: bool,
    join: bool,
    extra: Vec<String>,
    env: Vec<(String, String)>,
    log_filter: String,
    child: Option<Child>,
}

/// `RUST_LOG` of control-plane members unless [`Member::with_log_filter`] says otherwise.
pub const MEMBER_LOG_FILTER: &str = "info,openraft=warn,sled=warn,async_nats=warn";

impl Member {
    /// A member that will bootstrap a new cluster when `bootstrap`.
    pub fn new(id: u64, nats_url: &str, dir: &Path, bootstrap: bool) -> Member {
        Member {
            id,
            api_port: free_port(),
            nats_url: nats_url.to_string(),
            data_dir: dir.join(format!("cp{id}")),
            log_dir: dir.to_path_buf(),
            bootstrap,
            join: false,
            extra: Vec::new(),
            env: Vec::new(),
            log_filter: std::env::var("WARMPOOL_TEST_MEMBER_LOG")
                .unwrap_or_else(|_| MEMBER_LOG_FILTER.to_string()),
            child: None,
        }
    }

    /// A new member that joins the running cluster on start.
    pub fn joining(id: u64, nats_url: &str, dir: &Path) -> Member {
        let mut m = Member::new(id, nats_url, dir, false);
        m.join = true;
        m
    }

    /// Extra command-line flags for later starts.
    pub fn with_args(mut self, args: &[&str]) -> Self {
        self.extra = args.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Adds flags to the ones it starts with (from its next start on).
    pub fn add_args(&mut self, args: &[&str]) {
        self.extra.extend(args.iter().map(|s| s.to_string()));
    }

    /// Its wall clock `secs` ahead of the machine's (behind when negative), through
    /// libfaketime (Debian's `faketime`); its monotonic clock is left alone.
    pub fn with_clock_ahead(mut self, secs: i64) -> Self {
        self.set_clock_ahead(secs);
        self
    }

    /// [`Member::with_clock_ahead`] for its next start; 0 gives it the machine's clock again.
    pub fn set_clock_ahead(&mut self, secs: i64) {
        if secs == 0 {
            self.env.clear();
            return;
        }
        let lib = [
            "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
            "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        ]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("libfaketime is missing: apt-get install faketime (deploy/dev.sh test does)");
        self.env = vec![
            ("LD_PRELOAD".into(), lib.into()),
            ("FAKETIME".into(), format!("{secs:+}s")),
            ("DONT_FAKE_MONOTONIC".into(), "1".into()),
        ];
    }

    /// `RUST_LOG` for later starts (benchmarks use `warn`: an `info` line per request costs
    /// CPU that the control plane would otherwise spend serving).
    pub fn with_log_filter(mut self, filter: &str) -> Self {
        self.log_filter = filter.to_string();
        self
    }

    /// Its process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its data directory (Raft log and snapshots).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    /// Starts the process.
    pub fn start(&mut self) {
        assert!(
            self.child.is_none(),
            "member {} is already running",
            self.id
        );
        let (log, _) = log_file(&self.log_dir, &format!("cp{}", self.id));
        let mut cmd = Command::new(bin("warmpool-control-plane"));
        // Auth is on by default; tests that do not test it run without, unless they ask.
        if !self
            .extra
            .iter()
            .any(|a| a == "--auth" || a == "--admin-key-file")
        {
            cmd.arg("--insecure-no-auth");
        }
        cmd.args(["--id", &self.id.to_string(), "--nats-url", &self.nats_url])
            .args(["--api-addr", &format!("127.0.0.1:{}", self.api_port)])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.extra)
            .env("RUST_LOG", &self.log_filter)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        if self.bootstrap {
            cmd.arg("--bootstrap");
        }
        if self.join {
            cmd.arg("--join");
        }
        self.child = Some(cmd.spawn().expect("start warmpool-control-plane"));
    }

    /// SIGKILLs the process: no shutdown, no flush beyond what Raft already made durable.
    pub fn kill(&mut self) {
        stop_child(&mut self.child, "KILL");
    }

    /// SIGTERMs the process and waits for it to exit.
    pub fn stop(&mut self) {
        stop_child(&mut self.child, "TERM");
    }

    /// Whether the process runs.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The end of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_dir.join(format!("cp{}.log", self.id)), lines)
    }

    /// Waits until its API answers `GET /v1/health` (whether or not it knows a leader).
    pub async fn wait_up(&self) {
        let url = format!("{}/v1/health", self.url());
        let http = http_client();
        wait_until(Duration::from_secs(30), "the member to answer", || {
            let r = http.get(&url).send();
            async move { r.await.ok()?.status().is_success().then_some(()) }
        })
        .await;
    }
}

/// An allocation from `pool` that waits up to `wait_ms` for a container, nothing else set.
pub fn allocation(pool: &str, wait_ms: u64) -> warmpool_proto::api::CreateAllocation {
    warmpool_proto::api::CreateAllocation {
        pool: PoolName::new(pool).expect("pool name"),
        session_id: None,
        lease_seconds: None,
        wait_ms: Some(wait_ms),
        idempotency_key: None,
        tenant: None,
        env: Default::default(),
        secrets: Default::default(),
        metadata: Default::default(),
        wait_for: None,
        asynchronous: false,
        location: None,
        max_lifetime_secs: None,
        workspace: None,
    }
}

/// Runs the `poolctl` binary against `url` with `token` (none: no key, whatever the
/// environment says): its exit code, standard output and standard error.
pub fn run_poolctl(url: &str, token: Option<&str>, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(bin("poolctl"));
    cmd.args(["--url", url])
        .args(args)
        .env_remove("POOLCTL_TOKEN");
    if let Some(t) = token {
        cmd.env("POOLCTL_TOKEN", t);
    }
    let out = cmd.output().expect("run poolctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One node agent process with its own node id, /64 and Docker network.
pub struct Agent {
    /// Node id.
    pub node: String,
    /// Its IPv6 /64.
    pub prefix: String,
    nats_url: String,
    log_dir: PathBuf,
    labels: Vec<String>,
    extra: Vec<String>,
    child: Option<Child>,
}

impl Agent {
    /// An agent for a fresh node.
    pub fn new(nats_url: &str, dir: &Path) -> Agent {
        Agent {
            node: unique("node"),
            prefix: random_prefix(),
            nats_url: nats_url.to_string(),
            log_dir: dir.to_path_buf(),
            labels: Vec::new(),
            extra: Vec::new(),
            child: None,
        }
    }

    /// Extra command-line flags for later starts.
    pub fn with_args(mut self, args: &[&str]) -> Self {
        self.extra = args.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Node labels (`k=v`) for later starts.
    pub fn with_labels(mut self, labels: &[&str]) -> Self {
        self.labels = labels.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Starts the process.
    pub fn start(&mut self) {
        assert!(
            self.child.is_none(),
            "agent {} is already running",
            self.node
        );
        let (log, _) = log_file(&self.log_dir, &self.node);
        let mut cmd = Command::new(bin("warmpool-agent"));
        cmd.args([
            "--node-id",
            &self.node,
            "--nats-url",
            &self.nats_url,
            "--ipv6-prefix",
            &self.prefix,
        ])
        .args(["--heartbeat-ms", "500"])
        .env("RUST_LOG", "info,async_nats=warn")
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
        for l in &self.labels {
            cmd.args(["--label", l]);
        }
        cmd.args(&self.extra);
        self.child = Some(cmd.spawn().expect("start warmpool-agent"));
    }

    /// SIGKILLs the process; its containers keep running.
    pub fn kill(&mut self) {
        stop_child(&mut self.child, "KILL");
    }

    /// The end of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_dir.join(format!("{}.log", self.node)), lines)
    }

    /// Removes every container and the network of this node (see [`remove_node_docker`]).
    pub fn cleanup_docker(&self) {
        remove_node_docker(&self.node);
    }
}

/// Removes every container and the network of node `node` from this host's dockerd, and its
/// agent's nftables table. Containers dockerd is still removing (destroys the killed agent had
/// asked for: `docker rm -f` refuses those as "already in progress"), or a create it had asked
/// for that finishes after the listing, keep the network: the removal is tried again until the
/// network is gone (or was never made), for up to 30 s (a network was seen left behind with
/// 5 s, after the burst test's tens of containers), or 5 s once dockerd says it has endpoints
/// while no container is attached: a stale endpoint that only a restart of dockerd clears
/// (`deploy/dev.sh test` removes such networks before its next run).
pub fn remove_node_docker(node: &str) {
    let network = format!("warmpool-{node}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut stale_since: Option<Instant> = None;
    loop {
        let ids = Command::new("docker")
            .args(["ps", "-aq", "--filter"])
            .arg(format!("label=io.warmpool.node={node}"))
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .arg("rm")
                .arg("-f")
                .args(&ids)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let removed = Command::new("docker")
            .args(["network", "rm", &network])
            .output();
        let (done, err) = match removed {
            Ok(o) => {
                let err = String::from_utf8_lossy(&o.stderr).trim().to_string();
                let gone = err.contains("not found") || err.contains("No such network");
                (o.status.success() || gone, err)
            }
            // No docker CLI: nothing to remove.
            Err(_) => (true, String::new()),
        };
        if done {
            break;
        }
        let attached = || {
            Command::new("docker")
                .args([
                    "network",
                    "inspect",
                    "--format",
                    "{{json .Containers}}",
                    &network,
                ])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default()
        };
        // Dockerd can keep an endpoint on the network after its container is gone (seen after
        // a killed agent's creates were still under way): "has active endpoints" with nothing
        // attached, until dockerd restarts. Trying longer than a moment does not help.
        let stale = ids.is_empty() && err.contains("active endpoints") && attached() == "{}";
        stale_since = if stale {
            stale_since.or(Some(Instant::now()))
        } else {
            None
        };
        let stuck = stale_since.is_some_and(|t| t.elapsed() > Duration::from_secs(5));
        if stuck || Instant::now() > deadline {
            // Said where a passing test's output is not swallowed, when the runner asks.
            let why = if stuck {
                "dockerd keeps an endpoint with no container (until it restarts)"
            } else {
                "still there after 30 s of trying"
            };
            let said = format!(
                "network {network} left behind, {why}: {err}; attached: {}",
                attached()
            );
            eprintln!("{said}");
            if let Some(path) = std::env::var_os("WARMPOOL_CLEANUP_LOG") {
                if let Ok(mut f) = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                {
                    use std::io::Write;
                    let _ = writeln!(f, "{said}");
                }
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    remove_isolation_table(node);
}

/// Deletes the nftables table of node `node`'s agent in this namespace (`warmpool_<id>`, with
/// anything but letters and digits in the id made `_`, and maybe a hash after it), as the
/// agent's isolation leaves it behind with its network. A missing `nft` or table is fine.
pub fn remove_isolation_table(node: &str) {
    let clean: String = node
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let want = format!("warmpool_{clean}");
    let Ok(out) = Command::new("nft")
        .args(["list", "tables", "inet"])
        .output()
    else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.trim().strip_prefix("table inet ") else {
            continue;
        };
        if name == want || name.starts_with(&format!("{want}_")) {
            let _ = Command::new("nft")
                .args(["delete", "table", "inet", name])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
        self.cleanup_docker();
    }
}

/// NATS, control-plane members and agents of one test, with a client on every member.
pub struct TestCluster {
    /// The NATS server.
    pub nats: Nats,
    /// Control-plane members.
    pub members: Vec<Member>,
    /// Agents.
    pub agents: Vec<Agent>,
    /// A client with every member's URL.
    pub client: Client,
    dir: tempfile::TempDir,
}

impl TestCluster {
    /// One member (bootstrapped) and one agent, with the demo image built.
    pub async fn single() -> TestCluster {
        Self::single_with_agent_args(&[]).await
    }

    /// [`TestCluster::single`] with extra flags for the agent.
    pub async fn single_with_agent_args(agent_args: &[&str]) -> TestCluster {
        ensure_demo_image();
        let dir = tempfile::tempdir().expect("temp dir");
        let nats = Nats::start(dir.path());
        let mut m = Member::new(1, &nats.url(), dir.path(), true);
        m.start();
        let mut a = Agent::new(&nats.url(), dir.path()).with_args(agent_args);
        a.start();
        let client = Client::new(vec![m.url()], None).expect("client");
        let c = TestCluster {
            nats,
            members: vec![m],
            agents: vec![a],
            client,
            dir,
        };
        c.wait_ready().await;
        c
    }

    /// `n` members (the first bootstraps, the others join) and no agents; waits until all
    /// `n` are voters.
    pub async fn replicated(n: u64, extra_args: &[&str]) -> TestCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let nats = Nats::start(dir.path());
        Self::replicated_on(dir, nats, n, extra_args).await
    }

    /// [`TestCluster::replicated`] on a NATS (one server or a cluster) started in `dir`,
    /// which the cluster then owns.
    pub async fn replicated_on(
        dir: tempfile::TempDir,
        nats: Nats,
        n: u64,
        extra_args: &[&str],
    ) -> TestCluster {
        let mut members = Vec::new();
        for id in 1..=n {
            let m = if id == 1 {
                Member::new(1, &nats.url(), dir.path(), true)
            } else {
                Member::joining(id, &nats.url(), dir.path())
            };
            let mut m = m.with_args(extra_args);
            m.start();
            members.push(m);
        }
        let client = Client::new(members.iter().map(Member::url).collect(), None).expect("client");
        let c = TestCluster {
            nats,
            members,
            agents: Vec::new(),
            client,
            dir,
        };
        c.wait_ready().await;
        let client = c.client.clone();
        wait_until(
            Duration::from_secs(60),
            "every member to be a voter",
            || {
                let client = client.clone();
                async move {
                    let view = client.cluster().await.ok()?;
                    (view.members.iter().filter(|m| m.role == "voter").count() == n as usize)
                        .then_some(())
                }
            },
        )
        .await;
        // A member's voters include both halves of a joint configuration, so "n voters" can
        // be seen while the change is still in flight, and a follower may not have the final
        // configuration yet. Stopping the leader then leaves a joint configuration whose old
        // half needs it to elect anyone. Wait until every member holds the same log, all of
        // it committed, on two reads in a row: the final configuration is then everywhere.
        let clients: Vec<Client> = (0..c.members.len()).map(|i| c.client_of(i)).collect();
        let settled = || async {
            let mut logs = std::collections::BTreeSet::new();
            for client in &clients {
                let Ok(view) = client.cluster().await else {
                    return false;
                };
                if view.members.iter().filter(|m| m.role == "voter").count() != n as usize
                    || view.last_log_index != view.applied_index
                {
                    return false;
                }
                logs.insert(view.last_log_index);
            }
            logs.len() == 1
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut in_a_row = 0;
        while in_a_row < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out after 60s waiting for every member to hold the whole, committed \
                 membership change"
            );
            in_a_row = if settled().await { in_a_row + 1 } else { 0 };
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        c
    }

    /// A client talking to member `i` (0-based) only.
    pub fn client_of(&self, i: usize) -> Client {
        Client::new(vec![self.members[i].url()], None).expect("client")
    }

    /// The directory holding logs and data.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Waits until some member knows a leader.
    pub async fn wait_ready(&self) {
        let client = self.client.clone();
        wait_until(Duration::from_secs(30), "a leader", || {
            let client = client.clone();
            async move { client.ready().await.ok().filter(|r| *r) }
        })
        .await;
    }

    /// The demo pool spec named `name`, with a fast health check.
    pub fn demo_spec(name: &str, min_warm: u32) -> PoolSpec {
        let mut spec = PoolSpec::new(PoolName::new(name).expect("pool name"), DEMO_IMAGE);
        spec.min_warm = min_warm;
        spec.health.probe = warmpool_proto::HealthProbe::Http {
            path: "/healthz".into(),
        };
        spec.health.interval_ms = 300;
        spec
    }

    /// A writable root filesystem (pools are read-only by default), for tests that inject
    /// faults through the demo image's `/cgi-bin/fail` scripts, which write to it.
    pub fn writable_root() -> warmpool_proto::pool::Security {
        warmpool_proto::pool::Security {
            read_only_rootfs: false,
            tmpfs: Vec::new(),
            ..Default::default()
        }
    }

    /// Waits until `pool` has at least `n` warm containers; returns the status then.
    pub async fn wait_warm(&self, pool: &str, n: u32, timeout: Duration) -> StatusView {
        let client = self.client.clone();
        let what = format!("{n} warm containers in pool {pool}");
        wait_until(timeout, &what, || {
            let client = client.clone();
            async move {
                let s = client.status().await.ok()?;
                let warm = s
                    .pools
                    .iter()
                    .find(|p| p.name.as_str() == pool)?
                    .counts
                    .warm;
                (warm >= n).then_some(s)
            }
        })
        .await
    }

    /// Prints every log's tail; call when a test is about to fail.
    pub fn dump_logs(&self) {
        for m in &self.members {
            eprintln!("----- control plane {} -----\n{}", m.id, m.log_tail(60));
        }
        for a in &self.agents {
            eprintln!("----- agent {} -----\n{}", a.node, a.log_tail(60));
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
            // Whole logs of a failed test, kept when asked (the directory goes with the test).
            if let Some(keep) = std::env::var_os("WARMPOOL_KEEP_FAILED_LOGS") {
                let to = PathBuf::from(keep).join(unique("failed"));
                let _ = std::fs::create_dir_all(&to);
                if let Ok(entries) = std::fs::read_dir(self.dir.path()) {
                    for e in entries.flatten() {
                        if e.path().extension().is_some_and(|x| x == "log") {
                            let _ = std::fs::copy(e.path(), to.join(e.file_name()));
                        }
                    }
                }
                eprintln!("logs kept in {}", to.display());
            }
        }
        for a in &mut self.agents {
            a.kill();
        }
        for m in &mut self.members {
            m.kill();
        }
    }
}
