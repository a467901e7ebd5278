//! Harness for the agent's integration tests: a real nats-server per test, the real agent
//! (as a process, or in-process through `warmpool_agent::run`), the real dockerd, and guards
//! that remove every container and network a test made, even when it fails.
//!
//! Every test gets its own node id, Docker network and random /64 under fd36::/16, so tests run
//! in parallel with each other and with the rest of the workspace's tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{Ipv6Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures::StreamExt;
use tokio::time::Instant;
use warmpool_proto::agent::{AgentCommand, AgentReply, CreateSpec, Fact, Heartbeat, Inventory};
use warmpool_proto::pool::ContainerResources;
use warmpool_proto::{subjects, ContainerId, HealthCheck, HealthProbe, NodeId, PoolName};

/// The demo image, built by `deploy/demo-image/build.sh`.
pub const IMAGE: &str = "warmpool-demo:latest";

/// Polls `check` until it returns `Some`, or fails after `timeout` with `what`.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Builds the demo image once per test binary (the script is idempotent and locked).
pub fn ensure_demo_image() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/demo-image/build.sh");
        let out = Command::new(&script)
            .arg(IMAGE)
            .output()
            .expect("run deploy/demo-image/build.sh");
        assert!(
            out.status.success(),
            "building the demo image failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// Runs `docker args`; its stdout, or an error with its stderr.
pub fn docker(args: &[&str]) -> Result<String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .context("run docker")?;
    if !out.status.success() {
        bail!(
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `docker inspect -f format target`.
pub fn inspect(target: &str, format: &str) -> Result<String> {
    docker(&["inspect", "-f", format, target])
}

fn random_u64() -> u64 {
    // A v7 UUID carries 74 random bits; the low 64 are random.
    ContainerId::new().0.as_u64_pair().1
}

/// A free TCP port on loopback, for a server started later.
///
/// Picked at random below the kernel's ephemeral range (32768 and up), never with a bind to
/// port 0: the kernel may hand a port it gave out to an outgoing connection of another test
/// once the probe closes, before the server binds it. Below the range only a bind that names
/// the port takes it.
pub fn free_port() -> u16 {
    for _ in 0..1_000 {
        let port = 10_000 + (random_u64() % 22_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on loopback below the ephemeral range");
}

/// A nats-server on a free port, killed on drop.
pub struct Nats {
    child: Option<Child>,
    port: u16,
    /// `nats://127.0.0.1:PORT`.
    pub url: String,
}

impl Nats {
    /// Starts one and waits until it accepts connections.
    pub async fn start() -> Result<Nats> {
        let port = free_port();
        let mut nats = Nats {
            child: None,
            port,
            url: format!("nats://127.0.0.1:{port}"),
        };
        nats.spawn().await?;
        Ok(nats)
    }

    async fn spawn(&mut self) -> Result<()> {
        let port = self.port;
        self.child = Some(
            Command::new("nats-server")
                .args(["-a", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("start nats-server")?,
        );
        wait_until("nats-server to listen", Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
        })
        .await?;
        Ok(())
    }

    /// Kills the server (an outage).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn().await
    }

    /// A client.
    pub async fn client(&self) -> Result<async_nats::Client> {
        Ok(async_nats::connect(&self.url).await?)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A test node: a unique id, network name and /64. Dropping it removes every container
/// labelled with the node and the network.
pub struct Node {
    /// Node id.
    pub id: NodeId,
    /// Its /64, e.g. `fd36:1a2b:3c4d:5e6f::/64`.
    pub prefix: String,
    /// Its Docker network.
    pub network: String,
}

impl Node {
    /// A fresh node.
    pub fn new() -> Node {
        static N: AtomicU32 = AtomicU32::new(0);
        let r = random_u64();
        let id = format!(
            "t{}-{}-{:x}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst),
            r & 0xffff_ffff
        );
        // Random fd36:a:b:c::/64, never fd36:1::/64 (development uses it).
        let (a, b, c) = (
            ((r >> 32) & 0xffff) as u16 | 0x8000,
            ((r >> 48) & 0xffff) as u16,
            (random_u64() & 0xffff) as u16,
        );
        Node {
            network: format!("warmpool-{id}"),
            id: NodeId::new(id).expect("valid node id"),
            prefix: format!("fd36:{a:x}:{b:x}:{c:x}::/64"),
        }
    }

    /// Whether `ip` is in this node's /64.
    pub fn owns(&self, ip: &Ipv6Addr) -> bool {
        let net: Ipv6Addr = self.prefix.trim_end_matches("/64").parse().expect("prefix");
        ip.segments()[..4] == net.segments()[..4]
    }

    /// Docker ids of the containers labelled with this node, running or not.
    pub fn docker_containers(&self) -> Result<Vec<String>> {
        let out = docker(&[
            "ps",
            "-aq",
            "--no-trunc",
            "--filter",
            &format!("label=io.warmpool.node={}", self.id),
        ])?;
        Ok(out.split_whitespace().map(str::to_string).collect())
    }

    /// Warmpool ids (labels) of this node's containers, sorted.
    pub fn docker_ids(&self) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        for c in self.docker_containers()? {
            ids.push(inspect(&c, "{{index .Config.Labels \"io.warmpool.id\"}}")?);
        }
        ids.sort();
        Ok(ids)
    }

    /// The agent's configuration for this node (as flags would give it).
    pub fn raw_config(&self, nats_url: &str) -> warmpool_agent::RawConfig {
        warmpool_agent::RawConfig {
            node_id: Some(self.id.to_string()),
            nats_url: nats_url.to_string(),
            ipv6_prefix: self.prefix.clone(),
            heartbeat_ms: 200,
            ..Default::default()
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Ok(ids) = self.docker_containers() {
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids.iter().map(String::as_str));
                let _ = docker(&args);
            }
        }
        let _ = docker(&["network", "rm", &self.network]);
        // The agent's isolation table goes with the network.
        let table = warmpool_agent::isolation::rules::table_name(&self.id);
        if let Ok(mut nft) = Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
        {
            if let Some(mut stdin) = nft.stdin.take() {
                use std::io::Write;
                let _ =
                    stdin.write_all(warmpool_agent::isolation::rules::teardown(&table).as_bytes());
            }
            let _ = nft.wait();
        }
    }
}

/// The agent binary running for a node; SIGKILLed on drop.
pub struct AgentProc {
    child: Option<Child>,
    /// Its log file.
    pub log: PathBuf,
}

impl AgentProc {
    /// Starts `warmpool-agent` for `node` with `extra` flags; logs go to a temp file.
    pub fn start(node: &Node, nats_url: &str, extra: &[&str]) -> Result<AgentProc> {
        static N: AtomicU32 = AtomicU32::new(0);
        let log = std::env::temp_dir().join(format!(
            "warmpool-agent-test-{}-{}.log",
            node.id,
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let file = std::fs::File::create(&log)?;
        let child = Command::new(env!("CARGO_BIN_EXE_warmpool-agent"))
            .args(["--node-id", node.id.as_str()])
            .args(["--nats-url", nats_url])
            .args(["--ipv6-prefix", &node.prefix])
            .args(["--heartbeat-ms", "200"])
            .args(extra)
            .env("RUST_LOG", "info,warmpool_agent=debug,async_nats=warn")
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .context("start warmpool-agent")?;
        Ok(AgentProc {
            child: Some(child),
            log,
        })
    }

    /// SIGKILL: no chance to clean up anything.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits for the exit; returns whether it exited successfully.
    pub fn terminate(&mut self) -> Result<bool> {
        let Some(mut c) = self.child.take() else {
            bail!("not running")
        };
        send_signal("-TERM", c.id())?;
        Ok(c.wait()?.success())
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn send_signal(signal: &str, pid: u32) -> Result<()> {
    let ok = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()?
        .success();
    if !ok {
        bail!("kill {signal} {pid} failed");
    }
    Ok(())
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill();
        // Printed whether the test panicked or returned an error: the test harness shows a
        // test's captured output only when it fails, so a passing test prints nothing.
        eprintln!(
            "----- agent log {} -----\n{}",
            self.log.display(),
            self.log()
        );
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A NATS client speaking the agent protocol for one node.
pub struct Control {
    /// The client.
    pub client: async_nats::Client,
    /// The node.
    pub node: NodeId,
}

impl Control {
    /// A client for `node`.
    pub async fn new(nats: &Nats, node: &Node) -> Result<Control> {
        Ok(Control {
            client: nats.client().await?,
            node: node.id.clone(),
        })
    }

    /// Sends raw bytes as a command; the raw reply.
    pub async fn request_raw(&self, payload: Vec<u8>) -> Result<AgentReply> {
        let msg = tokio::time::timeout(
            Duration::from_secs(20),
            self.client
                .request(subjects::cmd(&self.node), payload.into()),
        )
        .await
        .map_err(|_| anyhow!("no reply within 20s"))??;
        Ok(serde_json::from_slice(&msg.payload)?)
    }

    /// Sends a command; its reply.
    pub async fn request(&self, cmd: &AgentCommand) -> Result<AgentReply> {
        self.request_raw(serde_json::to_vec(cmd)?).await
    }

    /// The agent's inventory.
    pub async fn inventory(&self) -> Result<Inventory> {
        match self.request(&AgentCommand::Inventory).await? {
            AgentReply::Inventory(inv) => Ok(inv),
            other => bail!("inventory request answered {other:?}"),
        }
    }

    /// Waits until the agent answers commands.
    pub async fn wait_ready(&self) -> Result<Inventory> {
        wait_until("the agent to answer", Duration::from_secs(30), || async {
            let msg = tokio::time::timeout(
                Duration::from_millis(500),
                self.client.request(
                    subjects::cmd(&self.node),
                    serde_json::to_vec(&AgentCommand::Inventory).ok()?.into(),
                ),
            )
            .await
            .ok()?
            .ok()?;
            match serde_json::from_slice(&msg.payload).ok()? {
                AgentReply::Inventory(inv) => Some(inv),
                _ => None,
            }
        })
        .await
    }

    /// Subscribes to the node's facts.
    pub async fn facts(&self) -> Result<Facts> {
        let sub = self.client.subscribe(subjects::facts(&self.node)).await?;
        self.client.flush().await?;
        Ok(Facts {
            sub,
            seen: Vec::new(),
        })
    }

    /// Subscribes to the node's heartbeats.
    pub async fn heartbeats(&self) -> Result<async_nats::Subscriber> {
        let sub = self
            .client
            .subscribe(subjects::heartbeat(&self.node))
            .await?;
        self.client.flush().await?;
        Ok(sub)
    }
}

/// Facts as they arrive.
pub struct Facts {
    sub: async_nats::Subscriber,
    /// Every fact received so far.
    pub seen: Vec<Fact>,
}

impl Facts {
    /// Waits for a fact matching `pred` (earlier ones included), at most `timeout`.
    pub async fn wait(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Fact) -> bool,
    ) -> Result<Fact> {
        if let Some(f) = self.seen.iter().find(|f| pred(f)) {
            return Ok(f.clone());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.sub.next())
                .await
                .map_err(|_| {
                    anyhow!(
                        "timed out after {timeout:?} waiting for {what}; facts so far: {:#?}",
                        self.seen
                    )
                })?
                .ok_or_else(|| anyhow!("facts subscription ended"))?;
            let fact: Fact = serde_json::from_slice(&msg.payload).with_context(|| {
                format!("malformed fact {:?}", String::from_utf8_lossy(&msg.payload))
            })?;
            self.seen.push(fact.clone());
            if pred(&fact) {
                return Ok(fact);
            }
        }
    }
}

/// Reads the next heartbeat, at most `timeout`.
pub async fn next_heartbeat(
    sub: &mut async_nats::Subscriber,
    timeout: Duration,
) -> Result<Heartbeat> {
    let msg = tokio::time::timeout(timeout, sub.next())
        .await
        .map_err(|_| anyhow!("no heartbeat within {timeout:?}"))?
        .ok_or_else(|| anyhow!("heartbeat subscription ended"))?;
    Ok(serde_json::from_slice(&msg.payload)?)
}

/// A demo-image spec probing `/healthz`.
pub fn demo_spec() -> CreateSpec {
    CreateSpec {
        id: ContainerId::new(),
        pool: PoolName::new("demo").expect("pool name"),
        generation: 1,
        image: IMAGE.into(),
        pull: Default::default(),
        command: vec![],
        env: BTreeMap::from([("GREETING".to_string(), "hello".to_string())]),
        port: 8080,
        extra_ports: Vec::new(),
        resources: ContainerResources {
            cpu_millis: 250,
            memory_mb: 64,
            pids: 64,
        },
        health: HealthCheck {
            probe: HealthProbe::Http {
                path: "/healthz".into(),
            },
            interval_ms: 200,
            timeout_ms: 1000,
            failure_threshold: 2,
        },
        // Writable: the demo's fault scripts (`/cgi-bin/fail`) write to its root. Pools are
        // read-only by default; tests/tests/hardening.rs checks that.
        security: warmpool_proto::pool::Security {
            read_only_rootfs: false,
            tmpfs: Vec::new(),
            ..Default::default()
        },
        egress: Default::default(),
        stop_grace_secs: 0,
        pre_stop: vec![],
        workspace_path: None,
    }
}

/// A raw HTTP/1.0 GET to `[ip]:port path` from the host: (status, body).
pub async fn http_get(ip: Ipv6Addr, port: u16, path: &str) -> Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fut = async {
        let mut s = tokio::net::TcpStream::connect((ip, port)).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: [{ip}]\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| anyhow!("not HTTP: {text:?}"))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok::<_, anyhow::Error>((status, body))
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .map_err(|_| anyhow!("GET [{ip}]:{port}{path} timed out"))?
}

/// A unix-socket proxy in front of dockerd that a test can cut: every connection through it
/// (the agent's event stream included) breaks at once, and new ones are refused, until
/// [`DockerProxy::resume`].
pub struct DockerProxy {
    /// The proxy's socket path, for `--docker-host unix://…`.
    pub path: PathBuf,
    cut: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl DockerProxy {
    /// Starts one on a fresh socket.
    pub fn start(name: &str) -> Result<DockerProxy> {
        let path = std::env::temp_dir().join(format!("wp-docker-proxy-{name}.sock"));
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path)?;
        let (cut, _) = tokio::sync::watch::channel(false);
        let cut = std::sync::Arc::new(cut);
        let cut2 = cut.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if *cut2.borrow() {
                    continue; // refused: dropped at once
                }
                let mut stop = cut2.subscribe();
                tokio::spawn(async move {
                    let Ok(mut daemon) =
                        tokio::net::UnixStream::connect("/var/run/docker.sock").await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut daemon) => {}
                        _ = stop.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Ok(DockerProxy { path, cut, task })
    }

    /// `unix://<path>`.
    pub fn url(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    /// Breaks every connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Lets connections through again.
    pub fn resume(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for DockerProxy {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}
