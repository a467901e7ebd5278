//! Several Docker hosts on this one machine, for multi-host tests.
//!
//! A [`HostCluster`] is a fleet in miniature:
//!
//! ```text
//!   root namespace: test process, control-plane member(s), nats-server on the bridge address
//!        │ bridge wpb<tag>  (transit /64: root side ::1, hosts ::10, ::11, ::12, ...)
//!   ┌────┴───────────┬────────────────┐
//!   veth             veth             veth
//!   netns wp<tag>a   netns wp<tag>b   netns wp<tag>c      each with its own dockerd,
//!   dockerd + agent  dockerd + agent  dockerd + agent     containerd, cgroup parent and
//!   containers on    containers on    containers on       warmpool-agent, and containers
//!   fd36:…:a/64      fd36:…:b/64      fd36:…:c/64         on its own random /64
//! ```
//!
//! Every host routes the other hosts' /64s via their transit addresses and forwards IPv6, and
//! the root namespace routes every host's /64 too, so the test process, the hosts and the
//! containers all reach each other by routed IPv6: no NAT, no port mapping, real source
//! addresses. NATS listens on the root side of the bridge (loopback is per namespace), the
//! control plane runs in the root namespace, and each agent runs inside its host's namespace
//! (`nsenter --net=…`, not `ip netns exec`, which remounts /sys and hides the cgroups dockerd
//! needs) against its own dockerd.
//!
//! Every name is unique per cluster (an 8-hex tag: interfaces, namespaces, cgroups, node ids,
//! prefixes, sockets), so tests run in parallel. Everything is torn down in `Drop`, panicking
//! or not; and a cluster left behind by a test process that was itself killed is swept by the
//! next [`HostCluster::start`] (its owner pid is recorded under `/run/wp/<tag>/owner`).
//!
//! Needs root, `ip`, `nsenter`, `dockerd`, `docker`, `nats-server` and busybox (for
//! [`Host::fetch`]); the binaries must be built (`cargo build --bins`).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use poolctl::Client;
use warmpool_proto::api::{NodeView, StatusView};
use warmpool_proto::records::NodeStatus;
use warmpool_proto::{LABEL_ID, LABEL_NODE};

use crate::{bin, ensure_demo_image, log_file, stop_child, tail, wait_until, Member, Nats};

/// Where per-cluster runtime state lives: dockerd exec roots and sockets (unix socket paths
/// are limited to 108 bytes, so this stays short) and the owner file used by the sweep.
const RUN_DIR: &str = "/run/wp";

/// Heartbeat interval of harness agents.
pub const HEARTBEAT_MS: u64 = 300;

/// Seconds without a heartbeat before the control plane declares a node down, as the harness
/// starts it.
pub const NODE_TIMEOUT_SECS: f64 = 3.0;

/// One host to create.
#[derive(Clone, Debug)]
pub struct HostSpec {
    /// Node labels (`k=v`).
    pub labels: Vec<String>,
    /// Whether [`HostCluster::start`] starts its agent (it always starts its dockerd).
    pub agent: bool,
    /// Its /64; default: a random one. Give another host's to test a misconfiguration.
    pub prefix: Option<String>,
    /// Its node id; default: `<name>-<tag>`. Give another host's to test a misconfiguration.
    pub node: Option<String>,
    /// Start its dockerd with `--live-restore` (containers outlive a dockerd stop).
    pub live_restore: bool,
    /// Extra flags for its agent.
    pub agent_args: Vec<String>,
    /// Extra flags for its dockerd (e.g. `--userns-remap=default`).
    pub dockerd_args: Vec<String>,
}

impl HostSpec {
    /// A host whose agent is started, without labels.
    pub fn new() -> HostSpec {
        HostSpec {
            labels: Vec::new(),
            agent: true,
            prefix: None,
            node: None,
            live_restore: false,
            agent_args: Vec::new(),
            dockerd_args: Vec::new(),
        }
    }

    /// With these extra dockerd flags.
    pub fn dockerd_args(mut self, args: &[&str]) -> HostSpec {
        self.dockerd_args = args.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Its dockerd keeps containers running while it is stopped (`--live-restore`), as
    /// `deploy/install-agent.sh` configures real hosts.
    pub fn live_restore(mut self) -> HostSpec {
        self.live_restore = true;
        self
    }

    /// With these node labels.
    pub fn labels(mut self, labels: &[&str]) -> HostSpec {
        self.labels = labels.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Its dockerd runs but no agent is started (e.g. to install one with a script).
    pub fn without_agent(mut self) -> HostSpec {
        self.agent = false;
        self
    }

    /// With this /64 instead of a random one.
    pub fn prefix(mut self, prefix: &str) -> HostSpec {
        self.prefix = Some(prefix.to_string());
        self
    }

    /// With these extra flags for its agent.
    pub fn agent_args(mut self, args: &[&str]) -> HostSpec {
        self.agent_args = args.iter().map(|s| s.to_string()).collect();
        self
    }

    /// With this node id instead of a unique one.
    pub fn node(mut self, node: &str) -> HostSpec {
        self.node = Some(node.to_string());
        self
    }
}

impl Default for HostSpec {
    fn default() -> Self {
        HostSpec::new()
    }
}

/// A random /64 under fd36::/16 with 48 random bits (the low 48 bits of a v4 UUID are all
/// random): practically never another test's, and never one of the short `fd36:N::/64`s of
/// `deploy/dev.sh` and [`crate::random_prefix`], whose last two groups are zero.
pub fn random_fd36_64() -> [u16; 4] {
    let r = uuid::Uuid::new_v4().as_u128();
    let mut s = [0xfd36, (r >> 32) as u16, (r >> 16) as u16, r as u16];
    if s[2] == 0 && s[3] == 0 {
        s[3] = 1;
    }
    s
}

fn prefix_string(p: [u16; 4]) -> String {
    format!("{}/64", Ipv6Addr::new(p[0], p[1], p[2], p[3], 0, 0, 0, 0))
}

fn addr_in(p: [u16; 4], host: u16) -> Ipv6Addr {
    Ipv6Addr::new(p[0], p[1], p[2], p[3], 0, 0, 0, host)
}

/// Runs a command to completion; its stdout, or an error naming it with its stderr.
fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `ip ARGS`, panicking with the error: set-up steps that must work.
fn ip(args: &[&str]) {
    run(Command::new("ip").args(args)).unwrap_or_else(|e| panic!("{e}"));
}

/// `ip ARGS`, ignoring failure: teardown steps.
fn ip_quiet(args: &[&str]) {
    let _ = Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn kill_pids(pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg("-9")
        .args(pids.iter().map(u32::to_string))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Pids of processes in network namespace `netns`.
fn netns_pids(netns: &str) -> Vec<u32> {
    run(Command::new("ip").args(["netns", "pids", netns]))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Directories of cgroup `name` (directly under each v1 hierarchy root), if they exist.
fn cgroup_dirs(name: &str) -> Vec<PathBuf> {
    let Ok(roots) = std::fs::read_dir("/sys/fs/cgroup") else {
        return Vec::new();
    };
    roots
        .filter_map(Result::ok)
        .map(|e| e.path().join(name))
        .filter(|p| p.is_dir())
        .collect()
}

/// Every directory below (and including) `dir`, deepest first.
fn dirs_deepest_first(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.filter_map(Result::ok) {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
        out.push(d);
    }
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out
}

/// Pids in cgroup `name` or below it, in any hierarchy.
fn cgroup_pids(name: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for root in cgroup_dirs(name) {
        for d in dirs_deepest_first(&root) {
            if let Ok(text) = std::fs::read_to_string(d.join("cgroup.procs")) {
                pids.extend(
                    text.split_whitespace()
                        .filter_map(|p| p.parse::<u32>().ok()),
                );
            }
        }
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Kills every process of a host's Docker (those in its network namespace: dockerd,
/// containerd, shims, the agent; and those in its cgroup parent: the containers) and waits
/// until they are gone, at most a few seconds.
fn kill_host_processes(netns: &str, cgroup: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut pids = netns_pids(netns);
        pids.extend(cgroup_pids(cgroup));
        pids.retain(|p| *p != std::process::id());
        if pids.is_empty() || Instant::now() > deadline {
            return;
        }
        kill_pids(&pids);
        std::thread::sleep(Duration::from_millis(30));
    }
}

/// Lazily unmounts everything mounted under any of `prefixes` (overlay roots, shm, the netns
/// bind mounts of container sandboxes) that a killed dockerd left behind, deepest first.
fn unmount_under(prefixes: &[PathBuf]) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<&str> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| prefixes.iter().any(|pre| Path::new(p).starts_with(pre)))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    points.dedup();
    for p in points {
        let _ = Command::new("umount")
            .args(["-l", p])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn remove_cgroups(name: &str) {
    for root in cgroup_dirs(name) {
        for d in dirs_deepest_first(&root) {
            let _ = std::fs::remove_dir(&d);
        }
    }
}

/// Tears down whatever of host `netns` exists: processes, mounts, namespace, cgroups.
fn teardown_host(netns: &str, cgroup: &str, mounts: &[PathBuf]) {
    kill_host_processes(netns, cgroup);
    unmount_under(mounts);
    ip_quiet(&["netns", "del", netns]);
    remove_cgroups(cgroup);
}

/// Pids of processes one of whose arguments contains one of `marks`.
fn pids_mentioning(marks: &[String]) -> Vec<u32> {
    if marks.is_empty() {
        return Vec::new();
    }
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id())
        .filter(|pid| {
            let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            cmd.split(|b| *b == 0).any(|arg| {
                let arg = String::from_utf8_lossy(arg);
                marks.iter().any(|m| arg.contains(m.as_str()))
            })
        })
        .collect()
}

/// Removes clusters whose test process died without tearing them down (SIGKILLed by a test
/// runner's timeout, say). A cluster's owner file holds its pid, its data directory and its
/// bridge address.
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir(RUN_DIR) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        let dir = e.path();
        let Ok(owner) = std::fs::read_to_string(dir.join("owner")) else {
            continue;
        };
        let mut lines = owner.lines();
        let Some(pid) = lines.next().and_then(|l| l.trim().parse::<u32>().ok()) else {
            continue;
        };
        if pid_alive(pid) {
            continue;
        }
        let tag = e.file_name().to_string_lossy().into_owned();
        let mut mounts: Vec<PathBuf> = Vec::new();
        let mut marks: Vec<String> = Vec::new();
        for l in lines {
            match l.split_once(' ') {
                Some(("data", d)) => {
                    mounts.push(PathBuf::from(d));
                    marks.push(d.to_string());
                }
                Some(("addr", a)) => marks.push(a.to_string()),
                _ => {}
            }
        }
        mounts.push(dir.clone());
        eprintln!("hosts: sweeping cluster {tag} left behind by dead process {pid}");
        // Its root-namespace processes (NATS, control plane) name its data directory or
        // its bridge address on their command lines.
        kill_pids(&pids_mentioning(&marks));
        let hosts: Vec<String> = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .filter(|h| h.path().is_dir())
                    .map(|h| h.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        for h in hosts {
            let name = format!("wp{tag}{h}");
            teardown_host(&name, &name, &mounts);
        }
        ip_quiet(&["link", "del", &format!("wpb{tag}")]);
        for m in &mounts {
            let _ = std::fs::remove_dir_all(m);
        }
    }
}

/// The transit network: a bridge in the root namespace with the root side's address, plus
/// the cluster's runtime directory. Dropping it deletes both.
struct Transit {
    tag: String,
    bridge: String,
    prefix: [u16; 4],
    run_dir: PathBuf,
}

impl Transit {
    fn create(tag: &str, data_dir: &Path) -> Transit {
        let run_dir = Path::new(RUN_DIR).join(tag);
        std::fs::create_dir_all(&run_dir).expect("create /run/wp/<tag>");
        // The owner file first, so that a sweep never takes a cluster being built for dead.
        let t = Transit {
            tag: tag.to_string(),
            bridge: format!("wpb{tag}"),
            prefix: random_fd36_64(),
            run_dir,
        };
        std::fs::write(
            t.run_dir.join("owner"),
            format!(
                "{}\ndata {}\naddr {}\n",
                std::process::id(),
                data_dir.display(),
                t.root_addr()
            ),
        )
        .expect("write owner file");
        ip(&["link", "add", &t.bridge, "type", "bridge"]);
        // nodad: usable at once (no 1-2 s of tentative duplicate address detection).
        let addr = format!("{}/64", t.root_addr());
        ip(&["-6", "addr", "add", &addr, "dev", &t.bridge, "nodad"]);
        ip(&["link", "set", &t.bridge, "up"]);
        t
    }

    /// The root namespace's address on the bridge: NATS listens here.
    fn root_addr(&self) -> Ipv6Addr {
        addr_in(self.prefix, 1)
    }
}

impl Drop for Transit {
    fn drop(&mut self) {
        ip_quiet(&["link", "del", &self.bridge]);
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}

/// A Warmpool container as one host's dockerd sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DockerContainer {
    /// Warmpool's id (the `io.warmpool.id` label).
    pub id: String,
    /// The node label.
    pub node: String,
    /// Docker's id.
    pub docker_id: String,
    /// Docker's state: `running`, `exited`, `created`, ...
    pub state: String,
}

/// One "host": a network namespace with its own dockerd and (usually) a `warmpool-agent`.
pub struct Host {
    /// Short name within the cluster: `a`, `b`, `c`, ...
    pub name: String,
    /// Its node id (unique per cluster: `<name>-<tag>`).
    pub node: String,
    /// The network namespace (`/run/netns/<netns>`).
    pub netns: String,
    /// Its transit address on the bridge: the source of its traffic to other hosts, and the
    /// next hop others use for its /64.
    pub transit: Ipv6Addr,
    /// Its containers' /64, e.g. `fd36:1a2b:3c4d:5e6f::/64`.
    pub prefix: String,
    /// `unix://…` address of its dockerd.
    pub docker_host: String,
    /// NATS URL reachable from inside the namespace.
    pub nats_url: String,
    /// Node labels passed to its agent.
    pub labels: Vec<String>,
    /// Whether its dockerd runs with `--live-restore`.
    pub live_restore: bool,
    /// Extra flags for its dockerd.
    pub dockerd_args: Vec<String>,
    /// The transit network's /64 (the root namespace and every host): its agent lets it reach
    /// containers' service ports (`--ingress-from`).
    pub transit_net: String,
    /// Extra flags for its agent.
    pub extra_agent_args: Vec<String>,
    /// Root-namespace end of its veth pair (on the bridge).
    veth: String,
    cgroup: String,
    /// `/run/wp/<tag>/<name>`: dockerd's exec root, socket, pidfile.
    run_dir: PathBuf,
    /// Data root, logs.
    data_dir: PathBuf,
    log_dir: PathBuf,
    dockerd: Option<Child>,
    agent: Option<Child>,
}

impl Host {
    fn create(t: &Transit, index: usize, spec: &HostSpec, nats_url: &str, log_dir: &Path) -> Host {
        let name = ((b'a' + index as u8) as char).to_string();
        let netns = format!("wp{}{name}", t.tag);
        let run_dir = t.run_dir.join(&name);
        let h = Host {
            node: spec
                .node
                .clone()
                .unwrap_or_else(|| format!("{name}-{}", t.tag)),
            transit: addr_in(t.prefix, 0x10 + index as u16),
            prefix: spec
                .prefix
                .clone()
                .unwrap_or_else(|| prefix_string(random_fd36_64())),
            docker_host: format!("unix://{}", run_dir.join("docker.sock").display()),
            nats_url: nats_url.to_string(),
            labels: spec.labels.clone(),
            live_restore: spec.live_restore,
            dockerd_args: spec.dockerd_args.clone(),
            transit_net: prefix_string(t.prefix),
            extra_agent_args: spec.agent_args.clone(),
            veth: format!("wpv{}{name}", t.tag),
            cgroup: netns.clone(),
            netns,
            run_dir,
            data_dir: log_dir.join(format!("host-{name}")),
            log_dir: log_dir.to_path_buf(),
            dockerd: None,
            agent: None,
            name,
        };
        std::fs::create_dir_all(&h.run_dir).expect("create host run dir");
        std::fs::create_dir_all(&h.data_dir).expect("create host data dir");
        ip(&["netns", "add", &h.netns]);
        ip(&[
            "link", "add", &h.veth, "type", "veth", "peer", "name", "eth0", "netns", &h.netns,
        ]);
        ip(&["link", "set", &h.veth, "master", &t.bridge, "up"]);
        ip(&["-n", &h.netns, "link", "set", "lo", "up"]);
        ip(&["-n", &h.netns, "link", "set", "eth0", "up"]);
        let addr = format!("{}/64", h.transit);
        ip(&[
            "-n", &h.netns, "-6", "addr", "add", &addr, "dev", "eth0", "nodad",
        ]);
        // The host forwards between its uplink and its containers' bridge. Writes under
        // /proc/sys/net act on the writer's network namespace.
        run(h
            .command("sysctl")
            .args(["-qw", "net.ipv6.conf.all.forwarding=1"]))
        .unwrap_or_else(|e| panic!("{e}"));
        // The test process reaches this host's containers directly. (`replace`: with a /64
        // given to two hosts on purpose, the later host wins.)
        let via = h.transit.to_string();
        ip(&[
            "-6", "route", "replace", &h.prefix, "via", &via, "dev", &t.bridge,
        ]);
        h
    }

    /// `program` to be run inside this host's network namespace (with `nsenter`, which execs
    /// it: the child's pid is the program's).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.netns))
            .arg(program);
        c
    }

    /// Runs `args` inside this host's network namespace and waits for it.
    pub async fn exec(&self, args: &[&str]) -> std::io::Result<Output> {
        let (program, rest) = args.split_first().expect("a program");
        let std_cmd = {
            let mut c = self.command(program);
            c.args(rest);
            c
        };
        tokio::process::Command::from(std_cmd)
            .stdin(Stdio::null())
            .output()
            .await
    }

    /// `GET http://[ip]:port/path` from inside this host (with busybox wget, bounded by
    /// `timeout 5`: busybox 1.35's own `wget -T` crashes on answers without a length); the
    /// body, or an error with what wget said.
    pub async fn fetch(&self, ip: Ipv6Addr, port: u16, path: &str) -> Result<String, String> {
        let url = format!("http://[{ip}]:{port}{path}");
        let out = self
            .exec(&["timeout", "5", "busybox", "wget", "-q", "-O-", &url])
            .await
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "wget {url} from host {} failed ({}): {}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    fn socket(&self) -> PathBuf {
        self.run_dir.join("docker.sock")
    }

    fn exec_root(&self) -> PathBuf {
        // Short: dockerd puts containerd's socket below it.
        self.run_dir.join("x")
    }

    fn docker_root(&self) -> PathBuf {
        self.data_dir.join("docker")
    }

    /// Starts this host's dockerd inside its namespace; [`Host::wait_dockerd`] waits for it.
    pub fn spawn_dockerd(&mut self) {
        assert!(self.dockerd.is_none(), "dockerd of {} runs", self.name);
        let (log, _) = log_file(&self.log_dir, &format!("dockerd-{}", self.name));
        // Its own (empty) configuration: the machine's /etc/docker/daemon.json (which
        // `deploy/dev.sh up` gives live restore) is not this host's, and a setting there that
        // a flag repeats stops dockerd from starting.
        let config = self.run_dir.join("daemon.json");
        std::fs::write(&config, "{}\n").expect("write the host's daemon.json");
        let mut cmd = self.command("dockerd");
        cmd.arg("--config-file")
            .arg(&config)
            .arg("--data-root")
            .arg(self.docker_root())
            .arg("--exec-root")
            .arg(self.exec_root())
            .arg("-H")
            .arg(&self.docker_host)
            .arg("--pidfile")
            .arg(self.run_dir.join("dockerd.pid"))
            .args(["--bridge", "none"])
            .args(["--cgroup-parent", &format!("/{}", self.cgroup)])
            .args(["--shutdown-timeout", "2"])
            .args(self.live_restore.then_some("--live-restore"))
            .args(&self.dockerd_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        self.dockerd = Some(cmd.spawn().expect("start dockerd"));
    }

    /// Waits until this host's dockerd answers `/_ping`; panics with its log after 30 s.
    pub fn wait_dockerd(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.ping_docker() {
                return;
            }
            let exited = self
                .dockerd
                .as_mut()
                .is_none_or(|c| c.try_wait().ok().flatten().is_some());
            assert!(
                !exited && Instant::now() < deadline,
                "dockerd of host {} did not come up:\n{}",
                self.name,
                self.dockerd_log_tail(30)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn ping_docker(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::os::unix::net::UnixStream::connect(self.socket()) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /_ping HTTP/1.0\r\n\r\n").is_err() {
            return false;
        }
        let mut buf = String::new();
        let _ = s.read_to_string(&mut buf);
        buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200")
    }

    /// Starts dockerd again (after [`Host::stop_dockerd`] or [`Host::crash_docker`]) and waits
    /// until it answers.
    pub fn start_dockerd(&mut self) {
        self.spawn_dockerd();
        self.wait_dockerd();
    }

    /// Stops dockerd gracefully (SIGTERM) and waits for it. Docker stops every container
    /// first, giving each its stop timeout (10 s unless the container says otherwise).
    pub fn stop_dockerd(&mut self) {
        if let Some(mut c) = self.dockerd.take() {
            crate::signal(&c, "TERM");
            let deadline = Instant::now() + Duration::from_secs(40);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The host's Docker dies as in a power cut: SIGKILL to dockerd, containerd, the shims
    /// and every container process; the mounts they held go and the exec root (`/run` on a
    /// real host) is wiped. The data root stays, so a restarted dockerd finds its containers
    /// (exited). The agent, if running, is left alone: kill it first for a whole-host death.
    pub fn crash_docker(&mut self) {
        if let Some(mut c) = self.dockerd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let agent = self.agent.as_ref().map(Child::id);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut pids = netns_pids(&self.netns);
            pids.extend(cgroup_pids(&self.cgroup));
            pids.retain(|p| Some(*p) != agent && *p != std::process::id());
            if pids.is_empty() || Instant::now() > deadline {
                break;
            }
            kill_pids(&pids);
            std::thread::sleep(Duration::from_millis(30));
        }
        unmount_under(&[self.run_dir.clone(), self.data_dir.clone()]);
        let _ = std::fs::remove_dir_all(self.exec_root());
        let _ = std::fs::remove_file(self.socket());
        let _ = std::fs::remove_file(self.run_dir.join("dockerd.pid"));
    }

    /// Whether its dockerd process runs.
    pub fn dockerd_running(&mut self) -> bool {
        self.dockerd
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// The agent's command line: what [`Host::start_agent`] runs inside the namespace.
    pub fn agent_args(&self) -> Vec<String> {
        let mut a: Vec<String> = [
            "--node-id",
            &self.node,
            "--nats-url",
            &self.nats_url,
            "--docker-host",
            &self.docker_host,
            "--ipv6-prefix",
            &self.prefix,
            "--heartbeat-ms",
            &HEARTBEAT_MS.to_string(),
            // The test process, the control plane's side and the other hosts reach containers
            // from the transit network.
            "--ingress-from",
            &self.transit_net,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for l in &self.labels {
            a.push("--label".into());
            a.push(l.clone());
        }
        a.extend(self.extra_agent_args.iter().cloned());
        a
    }

    /// Starts `warmpool-agent` inside the namespace, against this host's dockerd and /64.
    pub fn start_agent(&mut self) {
        let mut cmd = self.command(bin("warmpool-agent"));
        cmd.args(self.agent_args())
            .env("RUST_LOG", "info,async_nats=warn");
        self.spawn_agent(cmd);
    }

    /// Starts `cmd` (built with [`Host::command`]) as this host's agent: logged, killed by
    /// [`Host::kill_agent`] and at teardown. For agents started another way (e.g. as an
    /// installed unit's `ExecStart` would).
    pub fn spawn_agent(&mut self, mut cmd: Command) {
        assert!(self.agent.is_none(), "agent of {} runs", self.name);
        let (log, _) = log_file(&self.log_dir, &format!("agent-{}", self.name));
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        self.agent = Some(cmd.spawn().expect("start warmpool-agent"));
    }

    /// SIGKILLs the agent; its containers keep running.
    pub fn kill_agent(&mut self) {
        stop_child(&mut self.agent, "KILL");
    }

    /// SIGTERMs the agent and waits for it to exit.
    pub fn stop_agent(&mut self) {
        stop_child(&mut self.agent, "TERM");
    }

    /// Whether the agent process runs (it exits by itself on a fatal error).
    pub fn agent_running(&mut self) -> bool {
        self.agent
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Cuts the host off the network (its end on the bridge goes down): no NATS, no traffic
    /// to or from its containers. Its processes keep running.
    pub fn cut_link(&self) {
        ip(&["link", "set", &self.veth, "down"]);
    }

    /// Undoes [`Host::cut_link`].
    pub fn restore_link(&self) {
        ip(&["link", "set", &self.veth, "up"]);
    }

    /// Runs `docker ARGS` against this host's dockerd.
    pub fn try_docker(&self, args: &[&str]) -> Result<String, String> {
        run(Command::new("docker")
            .args(["-H", &self.docker_host])
            .args(args))
    }

    /// Runs `docker ARGS` against this host's dockerd; panics on failure.
    pub fn docker(&self, args: &[&str]) -> String {
        self.try_docker(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Every Warmpool container this host's dockerd has, running or not, by Warmpool id.
    pub fn warmpool_containers(&self) -> Vec<DockerContainer> {
        let format = format!(
            "{{{{.ID}}}}\t{{{{.Label \"{LABEL_ID}\"}}}}\t{{{{.Label \"{LABEL_NODE}\"}}}}\t{{{{.State}}}}"
        );
        let out = self.docker(&[
            "ps",
            "-a",
            "--no-trunc",
            "--filter",
            &format!("label={LABEL_ID}"),
            "--format",
            &format,
        ]);
        let mut v: Vec<DockerContainer> = out
            .lines()
            .filter_map(|l| {
                let mut f = l.split('\t');
                Some(DockerContainer {
                    docker_id: f.next()?.to_string(),
                    id: f.next()?.to_string(),
                    node: f.next()?.to_string(),
                    state: f.next()?.to_string(),
                })
            })
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Warmpool ids of the containers running on this host.
    pub fn running_ids(&self) -> Vec<String> {
        self.warmpool_containers()
            .into_iter()
            .filter(|c| c.state == "running")
            .map(|c| c.id)
            .collect()
    }

    /// The end of the agent's log.
    pub fn agent_log_tail(&self, lines: usize) -> String {
        tail(
            &self.log_dir.join(format!("agent-{}.log", self.name)),
            lines,
        )
    }

    /// The end of dockerd's log.
    pub fn dockerd_log_tail(&self, lines: usize) -> String {
        tail(
            &self.log_dir.join(format!("dockerd-{}.log", self.name)),
            lines,
        )
    }

    /// Routes this host's namespace to `other`'s /64 via `other`'s transit address.
    fn route_to(&self, other: &Host) {
        if other.prefix == self.prefix {
            return; // a deliberately duplicated /64: this host's own bridge has it
        }
        let via = other.transit.to_string();
        ip(&[
            "-n",
            &self.netns,
            "-6",
            "route",
            "replace",
            &other.prefix,
            "via",
            &via,
            "dev",
            "eth0",
        ]);
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        stop_child(&mut self.agent, "KILL");
        if let Some(mut c) = self.dockerd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        teardown_host(
            &self.netns,
            &self.cgroup,
            &[self.run_dir.clone(), self.data_dir.clone()],
        );
    }
}

/// A fleet on this machine: NATS on the bridge, one control-plane member, and hosts.
///
/// Fields drop in order: members, then hosts (agents, Docker, namespaces), then the bridge,
/// then NATS and the directory holding every log.
pub struct HostCluster {
    /// Control-plane members (one, bootstrapped, unless a test adds more).
    pub members: Vec<Member>,
    /// The hosts, `a`, `b`, `c`, ... in order.
    pub hosts: Vec<Host>,
    transit: Transit,
    /// The NATS server, on the bridge's root-side address.
    pub nats: Nats,
    /// A client with every member's URL.
    pub client: Client,
    dir: tempfile::TempDir,
}

impl HostCluster {
    /// Creates the bridge, NATS, one control-plane member (`--bootstrap`, node timeout
    /// [`NODE_TIMEOUT_SECS`]) and one host per spec with its dockerd (demo image imported),
    /// routes between every pair, and starts the agents the specs ask for; returns once every
    /// such agent's node is `ready`.
    pub async fn start(specs: &[HostSpec]) -> HostCluster {
        HostCluster::start_full(specs, 1, 1, &[]).await
    }

    /// [`HostCluster::start`], with extra flags for the control-plane member.
    pub async fn start_with_member_args(specs: &[HostSpec], member_args: &[&str]) -> HostCluster {
        HostCluster::start_full(specs, 1, 1, member_args).await
    }

    /// [`HostCluster::start`] with `members` control-plane members (all voters before the
    /// hosts start) and NATS as a cluster of `nats_servers` servers when more than one.
    pub async fn start_with(specs: &[HostSpec], members: u64, nats_servers: usize) -> HostCluster {
        HostCluster::start_full(specs, members, nats_servers, &[]).await
    }

    async fn start_full(
        specs: &[HostSpec],
        members: u64,
        nats_servers: usize,
        member_args: &[&str],
    ) -> HostCluster {
        assert!(specs.len() <= 26, "at most 26 hosts");
        ensure_demo_image();
        sweep_stale();
        let dir = tempfile::tempdir().expect("temp dir");
        let tag = crate::unique("x")[2..].to_string();
        let transit = Transit::create(&tag, dir.path());
        let root = IpAddr::V6(transit.root_addr());
        let nats = if nats_servers > 1 {
            Nats::cluster_on(dir.path(), root, nats_servers)
        } else {
            Nats::start_on(dir.path(), root)
        };
        let timeout = NODE_TIMEOUT_SECS.to_string();
        let started: Vec<Member> = (1..=members.max(1))
            .map(|id| {
                let m = if id == 1 {
                    Member::new(1, &nats.url(), dir.path(), true)
                } else {
                    Member::joining(id, &nats.url(), dir.path())
                };
                let mut args = vec!["--node-timeout-secs", timeout.as_str()];
                args.extend_from_slice(member_args);
                let mut m = m.with_args(&args);
                m.start();
                m
            })
            .collect();
        let client = Client::new(started.iter().map(Member::url).collect(), None).expect("client");
        let voters = started.len();
        let mut c = HostCluster {
            members: started,
            hosts: Vec::new(),
            transit,
            nats,
            client,
            dir,
        };
        let nats_url = c.nats.url();
        for (i, spec) in specs.iter().enumerate() {
            let h = Host::create(&c.transit, i, spec, &nats_url, c.dir.path());
            c.hosts.push(h);
        }
        for i in 0..c.hosts.len() {
            for j in 0..c.hosts.len() {
                if i != j {
                    c.hosts[i].route_to(&c.hosts[j]);
                }
            }
        }
        // dockerds start in parallel; each needs the demo image (no registry here).
        for h in &mut c.hosts {
            h.spawn_dockerd();
        }
        for h in &mut c.hosts {
            h.wait_dockerd();
            import_demo_image(h);
        }
        c.wait_ready().await;
        let client = c.client.clone();
        wait_until(
            Duration::from_secs(60),
            "every member to be a voter",
            || {
                let client = client.clone();
                async move {
                    let view = client.cluster().await.ok()?;
                    (view.members.iter().filter(|m| m.role == "voter").count() == voters)
                        .then_some(())
                }
            },
        )
        .await;
        for (h, spec) in c.hosts.iter_mut().zip(specs) {
            if spec.agent {
                h.start_agent();
            }
        }
        let started: Vec<String> = c
            .hosts
            .iter()
            .zip(specs)
            .filter(|(_, s)| s.agent)
            .map(|(h, _)| h.node.clone())
            .collect();
        for node in started {
            c.wait_node(&node, Duration::from_secs(30), "ready", |n| {
                n.node.status == NodeStatus::Ready && n.heartbeat_age_ms.is_some()
            })
            .await;
        }
        c
    }

    /// The directory holding logs and data.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The bridge's root-side address (where NATS listens; the source of the test process's
    /// traffic to containers).
    pub fn root_addr(&self) -> Ipv6Addr {
        self.transit.root_addr()
    }

    /// Gives the transit bridge an IPv4 /24 too (`net`: its first three octets): the root
    /// side gets `.1`, the hosts `.10`, `.11`, ... in order. For a service the hosts'
    /// dockerds must reach by an IPv4 literal (dockerd 20.10 takes no IPv6 address in an image
    /// reference), such as a test registry. Returns the root side's address. Goes with the
    /// bridge and the namespaces.
    pub fn add_ipv4(&self, net: [u8; 3]) -> std::net::Ipv4Addr {
        let [a, b, c] = net;
        let root = std::net::Ipv4Addr::new(a, b, c, 1);
        ip(&[
            "addr",
            "add",
            &format!("{root}/24"),
            "dev",
            &self.transit.bridge,
        ]);
        for (i, h) in self.hosts.iter().enumerate() {
            let addr = format!("{a}.{b}.{c}.{}/24", 10 + i);
            ip(&["-n", &h.netns, "addr", "add", &addr, "dev", "eth0"]);
        }
        root
    }

    /// An address outside the fleet (in a random /64 of 2001:db8::/32, the documentation
    /// range, so never fd36::/16 nor any real network), on the root side of the bridge, and
    /// routed from every host: a stand-in for a service on the internet that a pool's egress
    /// allow-list can name. Goes with the bridge.
    pub fn add_outside_address(&self) -> (Ipv6Addr, String) {
        let mut p = random_fd36_64();
        p[0] = 0x2001;
        p[1] = 0x0db8;
        let addr = addr_in(p, 1);
        let prefix = prefix_string(p);
        ip(&[
            "-6",
            "addr",
            "add",
            &format!("{addr}/64"),
            "dev",
            &self.transit.bridge,
            "nodad",
        ]);
        let via = self.root_addr().to_string();
        for h in &self.hosts {
            ip(&[
                "-n", &h.netns, "-6", "route", "replace", &prefix, "via", &via, "dev", "eth0",
            ]);
        }
        (addr, prefix)
    }

    /// The host named `name` (`a`, `b`, ...).
    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    /// The host named `name`, mutably.
    pub fn host_mut(&mut self, name: &str) -> &mut Host {
        self.hosts
            .iter_mut()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    /// The host whose node id is `node`.
    pub fn host_of(&self, node: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.node == node)
            .unwrap_or_else(|| panic!("no host runs node {node}"))
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

    /// Waits until `GET /v1/nodes` shows `node` satisfying `ok`; returns that view.
    pub async fn wait_node(
        &self,
        node: &str,
        timeout: Duration,
        what: &str,
        ok: impl Fn(&NodeView) -> bool,
    ) -> NodeView {
        let client = self.client.clone();
        let ok = &ok;
        wait_until(timeout, &format!("node {node} to be {what}"), || {
            let client = client.clone();
            async move {
                let nodes = client.nodes().await.ok()?;
                nodes
                    .into_iter()
                    .find(|n| n.node.id.as_str() == node)
                    .filter(|n| ok(n))
            }
        })
        .await
    }

    /// Waits until `GET /v1/status` satisfies `ok`; returns it.
    pub async fn wait_status(
        &self,
        timeout: Duration,
        what: &str,
        ok: impl Fn(&StatusView) -> bool,
    ) -> StatusView {
        let client = self.client.clone();
        let ok = &ok;
        wait_until(timeout, what, || {
            let client = client.clone();
            async move { client.status().await.ok().filter(|s| ok(s)) }
        })
        .await
    }

    /// Every Warmpool container per host name, as the hosts' dockerds see them (a host whose
    /// dockerd is down has none listed).
    pub fn docker_by_host(&self) -> BTreeMap<String, Vec<DockerContainer>> {
        self.hosts
            .iter()
            .map(|h| {
                let all = if h.ping_docker() {
                    h.warmpool_containers()
                } else {
                    Vec::new()
                };
                (h.name.clone(), all)
            })
            .collect()
    }

    /// Copies every log (control plane, agents, dockerds, NATS) to `/tmp/warmpool-hosts-<tag>`
    /// and says where; runs by itself when a test panics or `WARMPOOL_KEEP_LOGS` is set.
    pub fn keep_logs(&self) {
        let to = std::env::temp_dir().join(format!("warmpool-hosts-{}", self.transit.tag));
        let _ = std::fs::create_dir_all(&to);
        if let Ok(rd) = std::fs::read_dir(self.dir.path()) {
            for e in rd.filter_map(Result::ok) {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "log") {
                    let _ = std::fs::copy(&p, to.join(e.file_name()));
                }
            }
        }
        eprintln!("hosts: logs kept in {}", to.display());
    }

    /// Prints every log's tail; runs by itself when a test panics.
    pub fn dump_logs(&self) {
        for m in &self.members {
            eprintln!("----- control plane {} -----\n{}", m.id, m.log_tail(80));
        }
        for h in &self.hosts {
            eprintln!(
                "----- host {} ({}, {} via {}) agent -----\n{}",
                h.name,
                h.node,
                h.prefix,
                h.transit,
                h.agent_log_tail(60)
            );
            eprintln!(
                "----- host {} dockerd -----\n{}",
                h.name,
                h.dockerd_log_tail(15)
            );
        }
    }
}

impl Drop for HostCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        if std::thread::panicking() || std::env::var_os("WARMPOOL_KEEP_LOGS").is_some() {
            self.keep_logs();
        }
        // Stop the control plane before the agents go, so that nothing reacts to teardown.
        for m in &mut self.members {
            m.kill();
        }
    }
}

/// Polls `f` every 100 ms until it yields `Ok`, or panics after `timeout` naming `what` and
/// the last `Err` it gave: a failed wait then says what was seen, not only that time ran out.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(last) => assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; last seen: {last}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Imports the demo image into `host`'s dockerd (no registry: the build script imports a
/// busybox rootfs, and recognises an up-to-date image).
pub fn import_demo_image(host: &Host) {
    let status = Command::new(crate::root().join("deploy/demo-image/build.sh"))
        .arg(crate::DEMO_IMAGE)
        .env("DOCKER_HOST", &host.docker_host)
        .stdout(Stdio::null())
        .status()
        .expect("run deploy/demo-image/build.sh");
    assert!(
        status.success(),
        "importing the demo image into host {} failed",
        host.name
    );
}
