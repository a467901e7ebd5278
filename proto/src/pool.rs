//! Pool specifications.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::egress::Egress;
use crate::ids::PoolName;

/// What a pool's containers are and how many of them to keep warm.
///
/// Every field but `name` and `image` has a default, so `{"name":"demo","image":"busybox"}` is
/// a complete spec. Unknown fields are rejected: a misspelt `min_wram` must not silently mean 0.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    /// The pool's name, unique in the cluster.
    pub name: PoolName,
    /// Docker image reference. Each node's agent pulls it before the pool's first container
    /// there (see `pull`), with the registry credentials given to the agent
    /// (`--registry-auth`); the pool shows as `pulling` on a node until the image is there.
    #[cfg_attr(feature = "openapi", schema(min_length = 1, pattern = "\\S"))]
    pub image: String,
    /// When the agents pull `image`: `if_not_present` (the default, and every pool stored
    /// before pulls existed: an image already on the node is used as is), `always` (pulled
    /// again before a create when the node's last pull of it is over a minute old), or
    /// `never` (the image must already be on every node).
    #[serde(default, skip_serializing_if = "PullPolicy::is_default")]
    pub pull: PullPolicy,
    /// Command and arguments; empty means the image's own command.
    #[serde(default)]
    pub command: Vec<String>,
    /// The TCP port the workload serves on, inside the container.
    #[serde(default = "defaults::port")]
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 1, maximum = 65535, default = 8080)
    )]
    pub port: u16,
    /// More ports the workload serves on, by name (`{"web": 8080, "vnc": 6080}`), each
    /// reachable through the gateway at `/s/{allocation}/{name}/` and open to the gateway's
    /// hosts. Empty (the default, and every pool stored before it existed): the service port
    /// alone, named by its number.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, u16>,
    /// Environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Per-container resource limits.
    #[serde(default)]
    pub resources: ContainerResources,
    /// The floor: warm containers the pool always tries to keep.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(maximum = 100_000))]
    pub min_warm: u32,
    /// The ceiling for warm containers; defaults to `min_warm`.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(maximum = 100_000))]
    pub max_warm: Option<u32>,
    /// The paused tier's floor: containers started, probed healthy and then paused
    /// (`docker pause`: no CPU, memory kept), handed out after the warm ones are gone (the
    /// agent unpauses one and checks it answers before the allocation is granted). 0 (the
    /// default): no paused tier.
    #[serde(default, skip_serializing_if = "is_zero")]
    #[cfg_attr(feature = "openapi", schema(maximum = 100_000))]
    pub min_paused: u32,
    /// The paused tier's ceiling; defaults to `min_paused`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(maximum = 100_000))]
    pub max_paused: Option<u32>,
    /// Hard limit on live containers of this pool (warm, paused, creating and allocated
    /// together).
    #[serde(default = "defaults::max_total")]
    #[cfg_attr(feature = "openapi", schema(maximum = 100_000, default = 100))]
    pub max_total: u32,
    /// How the agent decides that a container is healthy.
    #[serde(default)]
    pub health: HealthCheck,
    /// Lease given to an allocation that asks for none.
    #[serde(default = "defaults::lease_seconds")]
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 1, maximum = 2_592_000, default = 600)
    )]
    pub lease_seconds: u64,
    /// Cap on an allocation's total life, renewals included. None: no cap.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(maximum = 31_536_000))]
    pub max_lifetime_secs: Option<u64>,
    /// Release an allocated container after this long without network activity.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(maximum = 31_536_000))]
    pub idle_timeout_secs: Option<u64>,
    /// What happens to a released container.
    #[serde(default)]
    pub reuse: ReusePolicy,
    /// Node labels a node must carry to host this pool, e.g. `{"region": "eu"}`.
    #[serde(default)]
    pub constraints: BTreeMap<String, String>,
    /// How fast the pool grows and shrinks.
    #[serde(default)]
    pub scaling: Scaling,
    /// Price of one container-hour, for usage accounting (any currency).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 0.0))]
    pub price_per_hour: Option<f64>,
    /// Privileges and hardening of the containers beyond the defaults (every capability
    /// dropped, no privilege escalation, a read-only root filesystem with a tmpfs `/tmp`).
    #[serde(default)]
    pub security: Security,
    /// Where the containers may open connections: `none` (the default), `internet`, or an
    /// allow-list of prefixes and ports. Other containers, the hosts and the fleet's own
    /// prefixes are never reachable, whatever this says.
    #[serde(default)]
    pub egress: Egress,
    /// Environment variables that are credentials: given to every container like `env`, but
    /// never shown by pool reads (`GET /v1/pools`, events, `poolctl`): their values answer as
    /// `"<redacted>"`. A `PUT` that sends `"<redacted>"` for a name keeps the value stored.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
    /// On release (and every other removal), the container gets SIGTERM and this long to
    /// exit before SIGKILL; 0 (the default) removes it at once, as before.
    #[serde(default, skip_serializing_if = "is_zero")]
    #[cfg_attr(feature = "openapi", schema(maximum = 300))]
    pub stop_grace_secs: u32,
    /// A command run in the container before it is stopped (a final sync, say), within
    /// `stop_grace_secs` (at least 1 s). Empty: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pre_stop: Vec<String>,
    /// A directory that outlives the container: restored into it for an allocation that
    /// names a `workspace`, synced every `sync_secs`, saved before the container goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<crate::workspace::PoolWorkspace>,
}

/// When a node's agent pulls a pool's image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum PullPolicy {
    /// Pulled only when the node does not have it.
    #[default]
    IfNotPresent,
    /// Pulled again before a create when the node's last pull is over a minute old (a moved
    /// tag is picked up); a failed pull fails the create even if an older copy is there.
    Always,
    /// Never pulled: the image must already be on the node.
    Never,
}

impl PullPolicy {
    /// Whether this is the default (not written out, so older readers keep reading specs).
    pub fn is_default(&self) -> bool {
        *self == PullPolicy::IfNotPresent
    }

    /// The wire form.
    pub fn as_str(&self) -> &'static str {
        match self {
            PullPolicy::IfNotPresent => "if_not_present",
            PullPolicy::Always => "always",
            PullPolicy::Never => "never",
        }
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// What pool reads show instead of a secret's value.
pub const REDACTED: &str = "<redacted>";

impl PoolSpec {
    /// This spec as reads show it: every secret's value replaced by [`REDACTED`].
    pub fn redacted(&self) -> PoolSpec {
        let mut s = self.clone();
        for v in s.secrets.values_mut() {
            *v = REDACTED.to_string();
        }
        s
    }

    /// `env` and `secrets` together (secrets win), as the containers get them.
    pub fn container_env(&self) -> BTreeMap<String, String> {
        let mut env = self.env.clone();
        env.extend(self.secrets.clone());
        env
    }

    /// Fills secrets sent back as [`REDACTED`] with the values `stored` holds, so that a
    /// spec read, changed and put back keeps its secrets.
    pub fn keep_redacted_secrets(&mut self, stored: &PoolSpec) {
        for (k, v) in self.secrets.iter_mut() {
            if v == REDACTED {
                if let Some(old) = stored.secrets.get(k) {
                    *v = old.clone();
                }
            }
        }
    }
}

/// A pool's container hardening. Every container starts with every Linux capability dropped
/// and `no-new-privileges`, on a read-only root filesystem with a tmpfs at `/tmp`; this section
/// gives some capabilities back and may make the root writable (pools stored before these
/// defaults keep what they had).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Security {
    /// Capabilities given back after all are dropped, e.g. `["NET_BIND_SERVICE"]` to bind a
    /// port below 1024. `ALL` is not accepted: name each one. Those that let a container
    /// reach past itself (`SYS_ADMIN`, `NET_ADMIN`, `SYS_PTRACE`, `SYS_MODULE`, and the
    /// others [`Capability::is_dangerous`] names) also need `privileged`.
    #[serde(default)]
    pub cap_add: Vec<Capability>,
    /// Mount the root filesystem read-only (the default).
    #[serde(default = "defaults::yes")]
    #[cfg_attr(feature = "openapi", schema(default = true))]
    pub read_only_rootfs: bool,
    /// Writable in-memory directories (absolute paths; `["/tmp"]` by default), for a
    /// read-only root filesystem. What is written there counts against the memory limit.
    #[serde(default = "defaults::tmpfs")]
    #[cfg_attr(feature = "openapi", schema(max_items = 16, value_type = Vec<TmpfsPath>))]
    pub tmpfs: Vec<String>,
    /// The escape hatch: allows the dangerous capabilities in `cap_add`. Pools are an
    /// admin's to change, so only an admin can set it. It does not run containers with
    /// Docker's `--privileged`.
    #[serde(default)]
    pub privileged: bool,
}

impl Default for Security {
    fn default() -> Self {
        Security {
            cap_add: Vec::new(),
            read_only_rootfs: true,
            tmpfs: defaults::tmpfs(),
            privileged: false,
        }
    }
}

/// An absolute path for a tmpfs mount (schema only).
#[cfg(feature = "openapi")]
#[derive(utoipa::ToSchema)]
#[schema(pattern = "^/[A-Za-z0-9._/-]{1,255}$")]
#[allow(dead_code)]
struct TmpfsPath(String);

/// Longest lease an allocation may have (30 days).
pub const MAX_LEASE_SECONDS: u64 = 30 * 24 * 3600;

/// Most tmpfs mounts one pool may ask for.
pub const MAX_TMPFS: usize = 16;

macro_rules! capabilities {
    ($($variant:ident => $name:literal,)*) => {
        /// A Linux capability, by Docker's name (without `CAP_`).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
        #[allow(missing_docs)]
        pub enum Capability {
            $($variant,)*
        }

        impl Capability {
            /// Every capability Docker knows.
            pub const ALL: &'static [Capability] = &[$(Capability::$variant,)*];

            /// Docker's name, e.g. `NET_BIND_SERVICE`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Capability::$variant => $name,)*
                }
            }
        }
    };
}

capabilities! {
    AuditControl => "AUDIT_CONTROL",
    AuditRead => "AUDIT_READ",
    AuditWrite => "AUDIT_WRITE",
    BlockSuspend => "BLOCK_SUSPEND",
    Bpf => "BPF",
    CheckpointRestore => "CHECKPOINT_RESTORE",
    Chown => "CHOWN",
    DacOverride => "DAC_OVERRIDE",
    DacReadSearch => "DAC_READ_SEARCH",
    Fowner => "FOWNER",
    Fsetid => "FSETID",
    IpcLock => "IPC_LOCK",
    IpcOwner => "IPC_OWNER",
    Kill => "KILL",
    Lease => "LEASE",
    LinuxImmutable => "LINUX_IMMUTABLE",
    MacAdmin => "MAC_ADMIN",
    MacOverride => "MAC_OVERRIDE",
    Mknod => "MKNOD",
    NetAdmin => "NET_ADMIN",
    NetBindService => "NET_BIND_SERVICE",
    NetBroadcast => "NET_BROADCAST",
    NetRaw => "NET_RAW",
    Perfmon => "PERFMON",
    Setfcap => "SETFCAP",
    Setgid => "SETGID",
    Setpcap => "SETPCAP",
    Setuid => "SETUID",
    Syslog => "SYSLOG",
    SysAdmin => "SYS_ADMIN",
    SysBoot => "SYS_BOOT",
    SysChroot => "SYS_CHROOT",
    SysModule => "SYS_MODULE",
    SysNice => "SYS_NICE",
    SysPacct => "SYS_PACCT",
    SysPtrace => "SYS_PTRACE",
    SysRawio => "SYS_RAWIO",
    SysResource => "SYS_RESOURCE",
    SysTime => "SYS_TIME",
    SysTtyConfig => "SYS_TTY_CONFIG",
    WakeAlarm => "WAKE_ALARM",
}

impl std::fmt::Display for Capability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Capability {
    /// Whether the capability lets a container reach past itself (the host's mounts,
    /// network, other processes, the kernel, the clock): given back only with `privileged`.
    pub fn is_dangerous(self) -> bool {
        matches!(
            self,
            Capability::SysAdmin
                | Capability::NetAdmin
                | Capability::SysPtrace
                | Capability::SysModule
                | Capability::SysRawio
                | Capability::SysBoot
                | Capability::SysTime
                | Capability::DacReadSearch
                | Capability::MacAdmin
                | Capability::MacOverride
                | Capability::Bpf
                | Capability::Perfmon
        )
    }
}

impl Security {
    /// Checks the tmpfs paths, and that dangerous capabilities come with `privileged`.
    pub fn validate(&self) -> Result<(), SpecError> {
        if !self.privileged {
            let dangerous: Vec<&str> = self
                .cap_add
                .iter()
                .filter(|c| c.is_dangerous())
                .map(|c| c.as_str())
                .collect();
            if !dangerous.is_empty() {
                return Err(SpecError(format!(
                    "security.cap_add: {} reach past the container; set security.privileged to allow them",
                    dangerous.join(", ")
                )));
            }
        }
        if self.tmpfs.len() > MAX_TMPFS {
            return Err(SpecError(format!(
                "security.tmpfs: at most {MAX_TMPFS} mounts"
            )));
        }
        let mut seen = std::collections::BTreeSet::new();
        for path in &self.tmpfs {
            let ok = path.len() >= 2
                && path.len() <= 256
                && path.starts_with('/')
                && path
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(&b))
                && !path.split('/').any(|part| part == "..");
            if !ok {
                return Err(SpecError(format!(
                    "security.tmpfs: {path:?} must be an absolute path of letters, digits, '.', '_', '-' and '/' (not / itself, no ..)"
                )));
            }
            if !seen.insert(path.trim_end_matches('/')) {
                return Err(SpecError(format!(
                    "security.tmpfs: {path:?} is listed twice"
                )));
            }
        }
        Ok(())
    }
}

/// Limits applied to each container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ContainerResources {
    /// CPU in thousandths of a core.
    #[serde(default = "defaults::cpu_millis")]
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 10, maximum = 1_024_000, default = 500)
    )]
    pub cpu_millis: u64,
    /// Memory limit in MiB.
    #[serde(default = "defaults::memory_mb")]
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 6, maximum = 16_777_216, default = 128)
    )]
    pub memory_mb: u64,
    /// Maximum number of processes.
    #[serde(default = "defaults::pids")]
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 1, maximum = 4_194_304, default = 256)
    )]
    pub pids: i64,
}

impl Default for ContainerResources {
    fn default() -> Self {
        ContainerResources {
            cpu_millis: defaults::cpu_millis(),
            memory_mb: defaults::memory_mb(),
            pids: defaults::pids(),
        }
    }
}

/// A health check: what to probe, how often, and when to give up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// What to probe.
    #[serde(default)]
    pub probe: HealthProbe,
    /// Time between probes.
    #[serde(default = "defaults::interval_ms")]
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 100, maximum = 3_600_000, default = 1000)
    )]
    pub interval_ms: u64,
    /// Time a probe may take.
    #[serde(default = "defaults::timeout_ms")]
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 1, maximum = 3_600_000, default = 1000)
    )]
    pub timeout_ms: u64,
    /// Consecutive failures that make a container unhealthy.
    #[serde(default = "defaults::failure_threshold")]
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 1, maximum = 10_000, default = 3)
    )]
    pub failure_threshold: u32,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            probe: HealthProbe::default(),
            interval_ms: defaults::interval_ms(),
            timeout_ms: defaults::timeout_ms(),
            failure_threshold: defaults::failure_threshold(),
        }
    }
}

/// The probe itself, sent to the container's IPv6 address and service port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum HealthProbe {
    /// `GET path` must answer 2xx or 3xx.
    Http {
        /// Request path, starting with `/`.
        #[cfg_attr(feature = "openapi", schema(pattern = "^/[!-~]*$"))]
        path: String,
    },
    /// A TCP connection must be accepted.
    Tcp,
}

impl Default for HealthProbe {
    fn default() -> Self {
        HealthProbe::Http { path: "/".into() }
    }
}

/// What happens to a container after its allocation ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ReusePolicy {
    /// Destroyed and replaced; never handed to another session.
    #[default]
    Never,
}

/// Pacing of scale-ups.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Scaling {
    /// Containers asked for at once per pool.
    #[serde(default = "defaults::batch_size")]
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 1, maximum = 10_000, default = 4)
    )]
    pub batch_size: u32,
    /// Pause between batches.
    #[serde(default = "defaults::pacing_ms")]
    #[cfg_attr(feature = "openapi", schema(maximum = 3_600_000, default = 200))]
    pub pacing_ms: u64,
    /// How long demand must stay low before the pool shrinks.
    #[serde(default = "defaults::cooldown_secs")]
    #[cfg_attr(feature = "openapi", schema(maximum = 604_800, default = 60))]
    pub cooldown_secs: u64,
    /// Share of allocations to serve from a warm container (e.g. 0.99). When set, the scaler
    /// derives the warm count from the observed arrival rate, its burstiness and the p99 time
    /// to make a container warm, within `min_warm..=max_warm`.
    #[serde(default)]
    #[cfg_attr(
        feature = "openapi",
        schema(exclusive_minimum = 0.0, exclusive_maximum = 1.0)
    )]
    pub target_hit_rate: Option<f64>,
}

impl Default for Scaling {
    fn default() -> Self {
        Scaling {
            batch_size: defaults::batch_size(),
            pacing_ms: defaults::pacing_ms(),
            cooldown_secs: defaults::cooldown_secs(),
            target_hit_rate: None,
        }
    }
}

mod defaults {
    pub fn yes() -> bool {
        true
    }
    pub fn tmpfs() -> Vec<String> {
        vec!["/tmp".to_string()]
    }
    pub fn port() -> u16 {
        8080
    }
    pub fn max_total() -> u32 {
        100
    }
    pub fn lease_seconds() -> u64 {
        600
    }
    pub fn cpu_millis() -> u64 {
        500
    }
    pub fn memory_mb() -> u64 {
        128
    }
    pub fn pids() -> i64 {
        256
    }
    pub fn interval_ms() -> u64 {
        1000
    }
    pub fn timeout_ms() -> u64 {
        1000
    }
    pub fn failure_threshold() -> u32 {
        3
    }
    pub fn batch_size() -> u32 {
        4
    }
    pub fn pacing_ms() -> u64 {
        200
    }
    pub fn cooldown_secs() -> u64 {
        60
    }
}

/// Why a pool spec was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid pool spec: {0}")]
pub struct SpecError(pub String);

/// The most named ports a pool may have.
pub const MAX_NAMED_PORTS: usize = 16;

/// Whether `name` may name a port: it goes into URLs (`/s/{id}/{name}/`) and host names
/// (`{id}-{name}.{domain}`), and never reads as a number.
pub fn valid_port_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 15
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

impl PoolSpec {
    /// The ports a session may reach through the gateway, by name: the named `ports`, or,
    /// when there are none, the service port named by its number.
    pub fn reachable_ports(&self) -> BTreeMap<String, u16> {
        if self.ports.is_empty() {
            BTreeMap::from([(self.port.to_string(), self.port)])
        } else {
            self.ports.clone()
        }
    }

    /// The ports a container of this pool listens on besides its service port (the named
    /// ones), each once, sorted.
    pub fn extra_ports(&self) -> Vec<u16> {
        let mut v: Vec<u16> = self
            .ports
            .values()
            .copied()
            .filter(|p| *p != self.port)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// A spec with every default, for `image`.
    pub fn new(name: PoolName, image: impl Into<String>) -> Self {
        PoolSpec {
            name,
            image: image.into(),
            pull: PullPolicy::default(),
            command: Vec::new(),
            port: defaults::port(),
            ports: BTreeMap::new(),
            env: BTreeMap::new(),
            resources: ContainerResources::default(),
            min_warm: 0,
            max_warm: None,
            min_paused: 0,
            max_paused: None,
            max_total: defaults::max_total(),
            health: HealthCheck::default(),
            lease_seconds: defaults::lease_seconds(),
            max_lifetime_secs: None,
            idle_timeout_secs: None,
            reuse: ReusePolicy::Never,
            constraints: BTreeMap::new(),
            scaling: Scaling::default(),
            price_per_hour: None,
            security: Security::default(),
            egress: Egress::None,
            secrets: BTreeMap::new(),
            stop_grace_secs: 0,
            pre_stop: Vec::new(),
            workspace: None,
        }
    }

    /// [`PoolSpec::validate`], and the upper bounds a new or changed spec must keep (the
    /// OpenAPI document states them). The replicated state machine checks only `validate`,
    /// so a spec committed before a bound existed stays valid when the log is replayed.
    pub fn validate_request(&self) -> Result<(), SpecError> {
        self.validate()?;
        let over = |what: &str, value: u64, max: u64| {
            if value > max {
                Err(SpecError(format!(
                    "{what} must be at most {max} (got {value})"
                )))
            } else {
                Ok(())
            }
        };
        let h = &self.health;
        let r = &self.resources;
        over("min_warm", self.min_warm.into(), 100_000)?;
        over("stop_grace_secs", self.stop_grace_secs.into(), 300)?;
        if self.secrets.keys().any(|k| k.is_empty() || k.contains('=')) {
            return Err(SpecError(
                "secret names must be non-empty and hold no '='".into(),
            ));
        }
        if self.pre_stop.first().is_some_and(|c| c.is_empty()) {
            return Err(SpecError("pre_stop must name a program first".into()));
        }
        if let Some(ws) = &self.workspace {
            ws.validate().map_err(SpecError)?;
        }
        over("max_warm", self.max_warm.unwrap_or(0).into(), 100_000)?;
        over("min_paused", self.min_paused.into(), 100_000)?;
        over("max_paused", self.max_paused.unwrap_or(0).into(), 100_000)?;
        // An allocation may ask for at most this lease; a longer default would make every
        // allocation that asks for none fail.
        over("lease_seconds", self.lease_seconds, MAX_LEASE_SECONDS)?;
        over(
            "max_lifetime_secs",
            self.max_lifetime_secs.unwrap_or(0),
            31_536_000,
        )?;
        over(
            "idle_timeout_secs",
            self.idle_timeout_secs.unwrap_or(0),
            31_536_000,
        )?;
        over("resources.cpu_millis", r.cpu_millis, 1_024_000)?;
        over("resources.memory_mb", r.memory_mb, 16_777_216)?;
        over(
            "resources.pids",
            u64::try_from(r.pids).unwrap_or(0),
            4_194_304,
        )?;
        over("health.interval_ms", h.interval_ms, 3_600_000)?;
        over("health.timeout_ms", h.timeout_ms, 3_600_000)?;
        over(
            "health.failure_threshold",
            h.failure_threshold.into(),
            10_000,
        )?;
        over("scaling.batch_size", self.scaling.batch_size.into(), 10_000)?;
        over("scaling.pacing_ms", self.scaling.pacing_ms, 3_600_000)?;
        over("scaling.cooldown_secs", self.scaling.cooldown_secs, 604_800)?;
        Ok(())
    }

    /// The ceiling for warm containers (`max_warm`, or `min_warm` when unset).
    pub fn max_warm(&self) -> u32 {
        self.max_warm.unwrap_or(self.min_warm).max(self.min_warm)
    }

    /// The ceiling for paused containers (`max_paused`, or `min_paused` when unset).
    pub fn max_paused(&self) -> u32 {
        self.max_paused
            .unwrap_or(self.min_paused)
            .max(self.min_paused)
    }

    /// Whether the pool keeps a paused tier.
    pub fn has_paused_tier(&self) -> bool {
        self.max_paused() > 0
    }

    /// Checks the relations between fields that serde cannot.
    pub fn validate(&self) -> Result<(), SpecError> {
        let fail = |m: String| Err(SpecError(m));
        if self.image.trim().is_empty() {
            return fail("image must not be empty".into());
        }
        if self.port == 0 {
            return fail("port must be 1..=65535".into());
        }
        if self.ports.len() > MAX_NAMED_PORTS {
            return fail(format!("at most {MAX_NAMED_PORTS} named ports"));
        }
        for (name, port) in &self.ports {
            if !valid_port_name(name) {
                return fail(format!(
                    "port name {name:?}: 1-15 lowercase letters, digits and '-', starting with a letter"
                ));
            }
            if *port == 0 {
                return fail(format!("port {name:?} must be 1..=65535"));
            }
        }
        if let Some(max) = self.max_warm {
            if max < self.min_warm {
                return fail(format!(
                    "max_warm ({max}) is below min_warm ({})",
                    self.min_warm
                ));
            }
        }
        if let Some(max) = self.max_paused {
            if max < self.min_paused {
                return fail(format!(
                    "max_paused ({max}) is below min_paused ({})",
                    self.min_paused
                ));
            }
        }
        if self.max_warm() > self.max_total {
            return fail(format!(
                "max_total ({}) is below the warm ceiling ({})",
                self.max_total,
                self.max_warm()
            ));
        }
        if u64::from(self.max_warm()) + u64::from(self.max_paused()) > u64::from(self.max_total) {
            return fail(format!(
                "max_total ({}) is below the warm and paused ceilings together ({} + {})",
                self.max_total,
                self.max_warm(),
                self.max_paused()
            ));
        }
        if self.max_total > 100_000 {
            return fail("max_total must be at most 100000".into());
        }
        if self.resources.cpu_millis < 10 {
            return fail("resources.cpu_millis must be at least 10".into());
        }
        if self.resources.memory_mb < 6 {
            return fail("resources.memory_mb must be at least 6 (Docker's minimum)".into());
        }
        if self.resources.pids < 1 {
            return fail("resources.pids must be at least 1".into());
        }
        let h = &self.health;
        if h.interval_ms < 100 || h.timeout_ms == 0 || h.failure_threshold == 0 {
            return fail(
                "health needs interval_ms >= 100, timeout_ms >= 1 and failure_threshold >= 1"
                    .into(),
            );
        }
        if let HealthProbe::Http { path } = &h.probe {
            if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_whitespace()) {
                return fail(format!(
                    "health.probe.path {path:?} must start with '/' and hold no spaces"
                ));
            }
        }
        if self.lease_seconds == 0 {
            return fail("lease_seconds must be at least 1".into());
        }
        if let Some(t) = self.scaling.target_hit_rate {
            if !(t > 0.0 && t < 1.0) {
                return fail("scaling.target_hit_rate must be between 0 and 1 (e.g. 0.99)".into());
            }
        }
        if self
            .price_per_hour
            .is_some_and(|p| !(p >= 0.0 && p.is_finite()))
        {
            return fail("price_per_hour must be a non-negative number".into());
        }
        if self.scaling.batch_size == 0 {
            return fail("scaling.batch_size must be at least 1".into());
        }
        if self.env.keys().any(|k| k.is_empty() || k.contains('=')) {
            return fail("env names must be non-empty and hold no '='".into());
        }
        if self.constraints.keys().any(|k| k.is_empty()) {
            return fail("constraint keys must be non-empty".into());
        }
        self.security.validate()?;
        self.egress.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_ports_are_optional_checked_and_reachable_by_name() {
        // A spec stored before named ports existed loads, and writes none back.
        let old: PoolSpec = serde_json::from_str(r#"{"name":"p","image":"i"}"#).unwrap();
        assert!(old.ports.is_empty());
        assert!(!serde_json::to_string(&old).unwrap().contains("ports"));
        assert_eq!(
            old.reachable_ports(),
            BTreeMap::from([("8080".to_string(), 8080)])
        );
        assert!(old.extra_ports().is_empty());

        let mut s = old.clone();
        s.ports = BTreeMap::from([("web".into(), 8080), ("vnc-1".into(), 6080)]);
        assert_eq!(s.validate(), Ok(()));
        assert_eq!(s.reachable_ports(), s.ports);
        assert_eq!(s.extra_ports(), vec![6080]);
        for bad in ["", "8080", "Web", "a_b", "abcdefghijklmnop"] {
            let mut b = s.clone();
            b.ports.insert(bad.into(), 1);
            assert!(b.validate().is_err(), "{bad:?}");
        }
        s.ports.insert("zero".into(), 0);
        assert!(s.validate().is_err());
    }

    fn demo() -> PoolSpec {
        PoolSpec::new(PoolName::new("demo").unwrap(), "warmpool-demo:latest")
    }

    #[test]
    fn minimal_json_gets_every_default() {
        let spec: PoolSpec =
            serde_json::from_str(r#"{"name":"demo","image":"warmpool-demo:latest"}"#).unwrap();
        assert_eq!(spec, demo());
        spec.validate().unwrap();
    }

    #[test]
    fn round_trips_with_every_field() {
        let mut spec = demo();
        spec.command = vec!["/bin/busybox".into(), "httpd".into()];
        spec.env.insert("A".into(), "1".into());
        spec.min_warm = 3;
        spec.max_warm = Some(5);
        spec.health.probe = HealthProbe::Tcp;
        spec.constraints.insert("region".into(), "eu".into());
        spec.idle_timeout_secs = Some(30);
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<PoolSpec>(&json).unwrap(), spec);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_str::<PoolSpec>(r#"{"name":"d","image":"i","min_wram":3}"#)
            .unwrap_err();
        assert!(err.to_string().contains("min_wram"), "{err}");
    }

    #[test]
    fn containers_are_read_only_with_a_tmp_unless_a_pool_says_otherwise() {
        let spec: PoolSpec = serde_json::from_str(r#"{"name":"d","image":"i"}"#).unwrap();
        assert!(spec.security.read_only_rootfs);
        assert_eq!(spec.security.tmpfs, vec!["/tmp".to_string()]);
        assert!(!spec.security.privileged);
        assert_eq!(spec.security, Security::default());
        // What an older version stored says what it says.
        let old: PoolSpec = serde_json::from_str(
            r#"{"name":"d","image":"i","security":{"cap_add":[],"read_only_rootfs":false,"tmpfs":[]}}"#,
        )
        .unwrap();
        assert!(!old.security.read_only_rootfs && old.security.tmpfs.is_empty());
        // Dangerous capabilities need the escape hatch.
        let mut sec = Security {
            cap_add: vec![Capability::NetBindService, Capability::SysAdmin],
            ..Default::default()
        };
        let e = sec.validate().unwrap_err().to_string();
        assert!(e.contains("SYS_ADMIN") && !e.contains("NET_BIND"), "{e}");
        sec.privileged = true;
        sec.validate().unwrap();
    }

    #[test]
    fn security_parses_known_capabilities_and_checks_tmpfs() {
        let spec: PoolSpec = serde_json::from_str(
            r#"{"name":"d","image":"i","security":{"cap_add":["NET_BIND_SERVICE"],"read_only_rootfs":true,"tmpfs":["/tmp"]}}"#,
        )
        .unwrap();
        assert_eq!(spec.security.cap_add, vec![Capability::NetBindService]);
        spec.validate().unwrap();
        for bad in [
            r#"["ALL"]"#,
            r#"["net_bind_service"]"#,
            r#"["CAP_CHOWN"]"#,
            r#"["NOPE"]"#,
        ] {
            let json = format!(r#"{{"name":"d","image":"i","security":{{"cap_add":{bad}}}}}"#);
            assert!(serde_json::from_str::<PoolSpec>(&json).is_err(), "{bad}");
        }
        for c in Capability::ALL {
            let json = serde_json::to_string(c).unwrap();
            assert_eq!(json, format!("\"{}\"", c.as_str()));
        }
        let mut spec = demo();
        for bad in ["tmp", "/", "/a b", "/a/../etc", "/a:b"] {
            spec.security.tmpfs = vec![bad.into()];
            assert!(spec.validate().is_err(), "{bad}");
        }
        spec.security.tmpfs = vec!["/tmp".into(), "/tmp/".into()];
        assert!(spec.validate().is_err(), "duplicates");
        spec.security.tmpfs = vec!["/tmp".into(), "/var/run".into()];
        spec.validate().unwrap();
    }

    #[test]
    fn requests_keep_the_upper_bounds() {
        let mut spec = demo();
        spec.validate_request().unwrap();
        spec.lease_seconds = MAX_LEASE_SECONDS + 1;
        spec.validate().unwrap();
        assert!(
            spec.validate_request().is_err(),
            "longer than any allocation may be"
        );
        let mut spec = demo();
        spec.health.interval_ms = u64::MAX;
        assert!(spec.validate_request().is_err());
    }

    #[test]
    fn validate_catches_inconsistent_sizes() {
        let mut spec = demo();
        spec.min_warm = 5;
        spec.max_warm = Some(2);
        assert!(spec.validate().is_err());
        spec.max_warm = None;
        spec.max_total = 4;
        assert!(spec.validate().is_err());
        spec.max_total = 5;
        spec.validate().unwrap();
        spec.health.probe = HealthProbe::Http {
            path: "no-slash".into(),
        };
        assert!(spec.validate().is_err());
    }
}
