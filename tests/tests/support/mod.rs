//! Helpers shared by the `metrics`, `nats_permissions` and `tls` modules: an agent process
//! started with arbitrary flags, and a nats-server started from a configuration file.

#![allow(dead_code)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use warmpool_tests::{bin, random_prefix, unique};

/// A `warmpool-agent` process with its own node id and /64; on drop it is killed and its
/// containers, network and nftables table are removed.
pub struct AgentProcess {
    /// Its node id.
    pub node: String,
    /// Its log file.
    pub log: PathBuf,
    child: Child,
}

impl AgentProcess {
    /// Starts an agent for a new node named `<prefix>-<random>` with `extra` flags.
    pub fn start(prefix: &str, nats_url: &str, dir: &Path, extra: &[&str]) -> AgentProcess {
        AgentProcess::start_as(&unique(prefix), nats_url, dir, extra)
    }

    /// Starts an agent for node `node` with `extra` flags.
    pub fn start_as(node: &str, nats_url: &str, dir: &Path, extra: &[&str]) -> AgentProcess {
        let log = dir.join(format!("{node}.log"));
        let file = std::fs::File::create(&log).expect("agent log");
        let child = Command::new(bin("warmpool-agent"))
            .args(["--node-id", node, "--nats-url", nats_url])
            .args(["--ipv6-prefix", &random_prefix(), "--heartbeat-ms", "300"])
            .args(extra)
            .env("RUST_LOG", "info,async_nats=warn")
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .expect("start warmpool-agent");
        AgentProcess {
            node: node.to_string(),
            log,
            child,
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!("----- agent {} -----", self.node);
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
        warmpool_tests::remove_node_docker(&self.node);
    }
}

/// A nats-server started with `-c config`, listening on 127.0.0.1:`port`; killed on drop.
pub struct ConfiguredNats {
    /// Its port.
    pub port: u16,
    child: Child,
}

impl ConfiguredNats {
    /// Starts the server and waits until it accepts connections.
    pub fn start(config: &Path, port: u16, dir: &Path) -> ConfiguredNats {
        let log = std::fs::File::create(dir.join("nats.log")).expect("nats log");
        let mut cmd = Command::new("nats-server");
        if std::env::var_os("WARMPOOL_NATS_TRACE").is_some() {
            cmd.arg("-DV");
        }
        let child = cmd
            .arg("-c")
            .arg(config)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("nats-server is installed");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        ConfiguredNats { port, child }
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for ConfiguredNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
