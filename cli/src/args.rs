//! The command line of `poolctl`, as clap derive types.
//!
//! Values are parsed into the proto's validated types here (pool names, node ids, UUIDs,
//! event kinds), so a typo is a usage error (exit 2) before any request is made.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use warmpool_proto::api::{Role, MAX_DRAIN_DEADLINE_SECS, MAX_IDEMPOTENCY_KEY, MAX_WAIT_MS};
use warmpool_proto::TenantId;
use warmpool_proto::{
    AllocationId, ContainerId, ContainerState, EgressRule, EventKind, MemberId, NodeId, PoolName,
    SessionId, Timestamp,
};

use crate::spec::{parse_kv, Setting};

/// Operate a Warmpool cluster: pools, allocations, containers, nodes, events, membership.
#[derive(Debug, Parser)]
#[command(name = "poolctl", version, propagate_version = true)]
pub struct Cli {
    /// Control-plane URL; several, comma-separated, are tried in turn when one is unreachable
    /// or has no leader.
    #[arg(
        long,
        env = "POOLCTL_URL",
        default_value = "http://127.0.0.1:7070",
        value_delimiter = ',',
        global = true,
        help_heading = "Global options"
    )]
    pub url: Vec<String>,
    /// API token, sent as `Authorization: Bearer <token>`.
    #[arg(
        long,
        env = "POOLCTL_TOKEN",
        hide_env_values = true,
        global = true,
        help_heading = "Global options"
    )]
    pub token: Option<String>,
    /// CA certificate (PEM) to trust for `https://` members, besides the system's.
    #[arg(
        long,
        env = "POOLCTL_CA_CERT",
        value_name = "FILE",
        global = true,
        help_heading = "Global options"
    )]
    pub ca_cert: Option<std::path::PathBuf>,
    /// Output format: aligned tables for people, JSON for programs.
    #[arg(
        long,
        short = 'o',
        value_enum,
        default_value_t = Output::Table,
        global = true,
        help_heading = "Global options"
    )]
    pub output: Output,
    /// Show full ids in tables instead of their last 12 hex digits.
    #[arg(long, global = true, help_heading = "Global options")]
    pub wide: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns and `key: value` lines.
    Table,
    /// The API's JSON, pretty-printed; one object per line when following events.
    Json,
}

/// A `poolctl` command.
// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, list, show, update and delete pools.
    #[command(subcommand)]
    Pool(PoolCommand),
    /// Container counts over all pools and nodes.
    Status,
    /// Take a warm container from a pool for a session.
    Alloc(AllocArgs),
    /// Release an allocation; its container is destroyed and replaced.
    Release {
        /// The allocation's id.
        id: AllocationId,
    },
    /// Extend an allocation's lease, counted from now.
    Renew {
        /// The allocation's id.
        id: AllocationId,
        /// New lease length; the pool's default when absent.
        #[arg(long, value_name = "N")]
        lease_seconds: Option<u64>,
    },
    /// List allocations.
    Allocations(AllocationsArgs),
    /// Print an allocation's container output (stdout and stderr); `-f` follows it live.
    Logs {
        /// The allocation's id.
        id: AllocationId,
        /// Keep printing new lines until the container stops (Ctrl-C to stop).
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines before now.
        #[arg(long, value_name = "N")]
        tail: Option<u64>,
    },
    /// Run a command in an allocation's container; prints its output as it comes and exits
    /// with its exit code.
    Exec(ExecArgs),
    /// Copy a file (or, with a directory or --archive, a tar of it) into or out of an
    /// allocation's container: `poolctl cp LOCAL ID:/path` or `poolctl cp ID:/path LOCAL`.
    Cp {
        /// `LOCAL` or `ID:/path`.
        from: String,
        /// `ID:/path` or `LOCAL`.
        to: String,
        /// Copy a directory out as a tar archive (unpacked into LOCAL, a directory). Local
        /// directories are always sent as archives.
        #[arg(short = 'r', long)]
        archive: bool,
    },
    /// List containers.
    Containers(ContainersArgs),
    /// Show one container.
    Container {
        /// The container's id.
        id: ContainerId,
    },
    /// Show the event log, or follow it live.
    Events(EventsArgs),
    /// List the nodes (Docker hosts).
    Nodes,
    /// Cordon, uncordon or drain a node.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Control-plane membership and Raft state.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Container time and cost, per pool and for a session.
    Usage(UsageArgs),
    /// Make, list and revoke API keys (admin only).
    #[command(subcommand)]
    Key(KeyCommand),
    /// Tenants' limits: concurrent allocations and allocation rate.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Saved workspaces: list, show, delete (a tenant's key: its own).
    #[command(subcommand)]
    Workspace(WorkspaceCommand),
    /// The key this command sends, and what its role may do.
    Whoami,
    /// Replay a pool's recorded demand against a proposed policy, next to its current one.
    Simulate(SimulateArgs),
    /// Time allocate+release cycles against the cluster; optionally a cold-start baseline
    /// through Docker and the pool's replenish time, in the same run.
    Bench(BenchArgs),
}

/// `poolctl bench`.
///
/// Without `--pool`, a temporary pool of `--image` is made with enough warm containers for
/// every allocation of the run, and deleted at the end. Progress goes to standard error; the
/// report to standard output (`-o json` for a program).
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Use this pool as it is instead of a temporary one.
    #[arg(long)]
    pub pool: Option<PoolName>,
    /// Image of the temporary pool.
    #[arg(long, default_value = crate::bench::DEFAULT_IMAGE, conflicts_with = "pool")]
    pub image: String,
    /// Measured allocate+release cycles.
    #[arg(long, short = 'n', value_name = "N", default_value_t = 200)]
    pub cycles: usize,
    /// Cycles in flight at once.
    #[arg(long, short = 'c', value_name = "C", default_value_t = 1, value_parser = parse_concurrency)]
    pub concurrency: usize,
    /// Unmeasured cycles run first.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub warmup: usize,
    /// `min_warm` of the temporary pool [default: every allocation the run makes].
    #[arg(long, value_name = "N", conflicts_with = "pool")]
    pub warm: Option<u32>,
    /// How long one allocation may wait for a warm container.
    #[arg(long, value_name = "MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(0..=MAX_WAIT_MS))]
    pub wait_ms: u64,
    /// Which member the measured requests go to.
    #[arg(long, value_enum, default_value_t = crate::bench::Via::Given)]
    pub via: crate::bench::Via,
    /// Also time cold starts through the Docker API in the same run.
    #[arg(long, value_enum)]
    pub baseline: Option<Baseline>,
    /// Cold starts to time with `--baseline cold`.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub cold_runs: usize,
    /// Docker API endpoint for the cold starts (a unix socket).
    #[arg(
        long,
        env = "DOCKER_HOST",
        default_value = "unix:///var/run/docker.sock"
    )]
    pub docker_host: String,
    /// IPv6 /64 of the cold starts' network [default: a random /64 under fd36::/16].
    #[arg(long, value_name = "PREFIX")]
    pub cold_prefix: Option<String>,
    /// After the cycles, take K allocations at once and time the pool's way back to its
    /// wanted warm count.
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub replenish: usize,
    /// Longest wait for the pool to fill or refill.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub fill_timeout_secs: u64,
    /// Keep the temporary pool at the end.
    #[arg(long)]
    pub keep_pool: bool,
    /// Measure a tier next to the others instead of the cycles: `paused` reports
    /// unpause-to-granted and warm allocation latency (each sample in the bucket of the tier
    /// its answer names) and the cold-start baseline, in one run; `-n` is then the samples
    /// wanted per tier.
    #[arg(long, value_enum, conflicts_with_all = ["burst", "replenish"])]
    pub tier: Option<BenchTier>,
    /// `min_paused` of the temporary pool of `--tier paused` (default min(N, 10): paused
    /// samples per round; `--warm` likewise) or `--burst` (default: the burst's size;
    /// `--warm` 3).
    #[arg(long, value_name = "N", conflicts_with = "pool", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub paused: Option<u32>,
    /// Instead of the cycles: with both tiers full, N allocations sent evenly within
    /// `--within`, one client (connection) each; reports each one's latency and tier, whether
    /// its container answers on its port, and the tiers' refill.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=10_000), conflicts_with = "replenish")]
    pub burst: Option<u64>,
    /// The window of `--burst` (e.g. 2s, 500ms).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_window, requires = "burst")]
    pub within: std::time::Duration,
    /// With `--burst`: the latency an allocation counts as fast under.
    #[arg(long, value_name = "MS", default_value_t = 100, requires = "burst")]
    pub fast_ms: u64,
    /// With `--burst`: exit 1 (after the report) when fewer than K were fast; a burst also
    /// fails when an allocation was refused, a container did not answer, or the tiers did
    /// not refill.
    #[arg(long, value_name = "K", requires = "burst")]
    pub expect_fast: Option<usize>,
}

/// A tier `poolctl bench --tier` measures against the others.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchTier {
    /// The paused tier, next to the warm tier and a cold start.
    Paused,
}

/// A window such as `2s` or `500ms` (at most an hour).
fn parse_window(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (e.g. 2s, 500ms)"))?;
    if d > std::time::Duration::from_secs(3600) {
        return Err(format!("{s:?}: at most an hour"));
    }
    Ok(d)
}

/// A baseline to measure next to warm allocations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Baseline {
    /// Create, start and wait for a first healthy answer, through the Docker API.
    Cold,
}

/// `poolctl pool ...`
#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// Create a pool from flags, a JSON spec file, or both (flags win).
    Create(CreateArgs),
    /// List pools with their counts.
    List,
    /// Show a pool's spec and counts.
    Show {
        /// The pool.
        name: PoolName,
    },
    /// Change a pool: the flags given are merged onto its current spec; `--file` replaces the
    /// spec (then the flags apply on top).
    Update(UpdateArgs),
    /// Delete a pool; its containers, allocated ones included, are destroyed.
    Delete {
        /// The pool.
        name: PoolName,
    },
}

/// `poolctl pool create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The pool's name (taken from the file when absent).
    #[arg(required_unless_present = "file")]
    pub name: Option<PoolName>,
    /// The spec.
    #[command(flatten)]
    pub spec: SpecFlags,
}

/// `poolctl pool update`.
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// The pool.
    pub name: PoolName,
    /// Changes to the spec.
    #[command(flatten)]
    pub spec: SpecFlags,
    /// Remove an environment variable (repeatable).
    #[arg(long = "unset-env", value_name = "KEY")]
    pub unset_env: Vec<String>,
    /// Remove a placement constraint (repeatable).
    #[arg(long = "unset-constraint", value_name = "KEY")]
    pub unset_constraint: Vec<String>,
}

/// Pool spec fields as flags, shared by `pool create` and `pool update`. Every flag is
/// optional: what is not given keeps its value (the default, the file's, or the current one).
#[derive(Debug, Default, Args)]
pub struct SpecFlags {
    /// Read the spec from a JSON file ("-" for standard input). The output of
    /// `pool show -o json` is accepted too.
    #[arg(long, short = 'f', value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Docker image; must be present on every node.
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    /// Warm containers always kept.
    #[arg(long, value_name = "N")]
    pub min_warm: Option<u32>,
    /// Ceiling for warm containers (`none`: same as --min-warm).
    #[arg(long, value_name = "N|none")]
    pub max_warm: Option<Setting<u32>>,
    /// Hard limit on live containers of the pool.
    #[arg(long, value_name = "N")]
    pub max_total: Option<u32>,
    /// Service port inside the container.
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// CPU limit in thousandths of a core.
    #[arg(long, value_name = "N")]
    pub cpu_millis: Option<u64>,
    /// Memory limit in MiB.
    #[arg(long, value_name = "N")]
    pub memory_mb: Option<u64>,
    /// Process limit.
    #[arg(long, value_name = "N")]
    pub pids: Option<i64>,
    /// Environment variable (repeatable); replaces a variable of the same name.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_kv)]
    pub env: Vec<(String, String)>,
    /// Node label a node must carry (repeatable), e.g. region=eu.
    #[arg(long = "constraint", value_name = "KEY=VALUE", value_parser = parse_kv)]
    pub constraints: Vec<(String, String)>,
    /// Health check: HTTP GET of this path must answer 2xx or 3xx.
    #[arg(long, value_name = "PATH", conflicts_with = "health_tcp")]
    pub health_path: Option<String>,
    /// Health check: a TCP connection to the service port must be accepted.
    #[arg(long)]
    pub health_tcp: bool,
    /// Time between health probes.
    #[arg(long, value_name = "MS")]
    pub health_interval_ms: Option<u64>,
    /// Time a health probe may take.
    #[arg(long, value_name = "MS")]
    pub health_timeout_ms: Option<u64>,
    /// Consecutive failed probes that make a container unhealthy.
    #[arg(long, value_name = "N")]
    pub health_failures: Option<u32>,
    /// Lease of an allocation that asks for none.
    #[arg(long, value_name = "N")]
    pub lease_seconds: Option<u64>,
    /// Release an allocation after this long without network activity (`none`: never).
    #[arg(long, value_name = "SECS|none")]
    pub idle_timeout_secs: Option<Setting<u64>>,
    /// Cap on an allocation's life, renewals included (`none`: no cap).
    #[arg(long, value_name = "SECS|none")]
    pub max_lifetime_secs: Option<Setting<u64>>,
    /// Containers asked for at once when the pool grows.
    #[arg(long, value_name = "N")]
    pub batch_size: Option<u32>,
    /// Pause between batches.
    #[arg(long, value_name = "MS")]
    pub pacing_ms: Option<u64>,
    /// Where containers may open connections: nowhere, or the internet (everything except the
    /// fleet, link-local and private ranges). Other containers, the hosts and the fleet's
    /// prefixes are never reachable.
    #[arg(long, value_name = "none|internet", conflicts_with = "egress_allow")]
    pub egress: Option<EgressMode>,
    /// Allow outbound connections to this prefix, on these TCP/UDP ports if given (repeatable;
    /// the list replaces the pool's egress policy), e.g. 2001:db8::/48:443+80 or 203.0.113.0/24.
    #[arg(long = "egress-allow", value_name = "PREFIX[:PORT+PORT...]", value_parser = parse_egress_rule)]
    pub egress_allow: Vec<EgressRule>,
    /// Command and arguments, after `--`; replaces the image's command.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// `--egress`: the policies that need no list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EgressMode {
    /// No outbound connection at all.
    None,
    /// Everything except the fleet, link-local and private ranges.
    Internet,
}

fn parse_egress_rule(s: &str) -> Result<EgressRule, String> {
    s.parse()
}

/// `poolctl alloc`.
#[derive(Debug, Args)]
pub struct AllocArgs {
    /// The pool to allocate from.
    pub pool: PoolName,
    /// The session the container is for; the server makes one up when absent.
    #[arg(long, value_name = "SESSION")]
    pub session: Option<SessionId>,
    /// Lease length; the pool's default when absent.
    #[arg(long, value_name = "N")]
    pub lease_seconds: Option<u64>,
    /// How long to wait for a warm container when none is free.
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(0..=MAX_WAIT_MS))]
    pub wait_ms: Option<u64>,
    /// Retrying with the same key gives the same allocation, never a second one (one is made
    /// up when absent).
    #[arg(long, value_name = "KEY", value_parser = parse_idempotency_key)]
    pub idempotency_key: Option<String>,
    /// The tenant to allocate for (admin keys only; a user key allocates for its own).
    #[arg(long)]
    pub tenant: Option<TenantId>,
    /// Environment for the container, delivered after the grant (repeatable).
    #[arg(long = "env", short = 'e', value_name = "NAME=VALUE", value_parser = parse_pair)]
    pub env: Vec<(String, String)>,
    /// Like --env, for credentials: never stored by the control plane nor answered back
    /// (repeatable).
    #[arg(long = "secret", value_name = "NAME=VALUE", value_parser = parse_pair)]
    pub secrets: Vec<(String, String)>,
    /// A label stored with the allocation, filterable in lists (repeatable).
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_pair)]
    pub metadata: Vec<(String, String)>,
    /// Answer only once env and secrets are in the container.
    #[arg(long, conflicts_with = "wait_for_workspace")]
    pub wait_for_settings: bool,
    /// Answer at once: the allocation is `pending` until a container is warm for it.
    #[arg(long = "async")]
    pub asynchronous: bool,
    /// With --async: then wait until the allocation is active (or cancelled), however long.
    #[arg(long, requires = "asynchronous")]
    pub wait: bool,
    /// A node label the container's node must carry, `KEY=VALUE`; `KEY=V1,V2` is an order of
    /// preference (repeatable, every key must match).
    #[arg(long = "location", value_name = "KEY=VALUE[,VALUE]", value_parser = parse_location)]
    pub location: Vec<(String, warmpool_proto::api::LocationValue)>,
    /// Caps this allocation's lifetime (no longer than its pool's `max_lifetime_secs`).
    #[arg(long, value_name = "SECS")]
    pub max_lifetime_secs: Option<u64>,
    /// A workspace of the tenant's to restore into the container at the pool's
    /// `workspace.path` (saved again when the allocation ends).
    #[arg(long, value_name = "ID")]
    pub workspace: Option<String>,
    /// Answer only once the workspace is restored (or failed to be).
    #[arg(long, requires = "workspace")]
    pub wait_for_workspace: bool,
}

/// `KEY=VALUE` or `KEY=V1,V2,...` (an order of preference).
fn parse_location(s: &str) -> Result<(String, warmpool_proto::api::LocationValue), String> {
    use warmpool_proto::api::LocationValue;
    let (k, v) = parse_pair(s)?;
    let values: Vec<String> = v.split(',').map(str::to_string).collect();
    if values.iter().any(String::is_empty) {
        return Err(format!("{s:?}: empty value"));
    }
    let value = match values.as_slice() {
        [one] => LocationValue::One(one.clone()),
        _ => LocationValue::Prefer(values),
    };
    Ok((k, value))
}

fn parse_concurrency(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=10_000).contains(&n) => Ok(n),
        _ => Err("must be 1 to 10000".into()),
    }
}

fn parse_idempotency_key(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > MAX_IDEMPOTENCY_KEY {
        return Err(format!("must be 1 to {MAX_IDEMPOTENCY_KEY} bytes"));
    }
    Ok(s.to_string())
}

/// `poolctl exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The allocation's id.
    pub id: AllocationId,
    /// Extra environment, `NAME=VALUE` (repeatable).
    #[arg(long = "env", short = 'e', value_name = "NAME=VALUE", value_parser = parse_pair)]
    pub env: Vec<(String, String)>,
    /// Working directory in the container.
    #[arg(long, short = 'w', value_name = "DIR")]
    pub workdir: Option<String>,
    /// Kill the command after this many seconds (default 60, at most 3600).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// `NAME=VALUE`.
pub fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not NAME=VALUE")),
    }
}

/// `poolctl allocations`.
#[derive(Debug, Args)]
pub struct AllocationsArgs {
    /// Only this pool's.
    #[arg(long)]
    pub pool: Option<PoolName>,
    /// Only this session's.
    #[arg(long)]
    pub session: Option<SessionId>,
    /// Only in this state.
    #[arg(long, value_parser = ["active", "released"])]
    pub state: Option<String>,
    /// Only on this node.
    #[arg(long)]
    pub node: Option<NodeId>,
    /// Show a page of at most this many (1..=1000), then the cursor of the next page.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub limit: Option<u64>,
    /// Start at this page (the cursor a previous page printed).
    #[arg(long, value_name = "CURSOR")]
    pub cursor: Option<String>,
    /// Follow the pages to the end, --limit at a time (100 without --limit).
    #[arg(long)]
    pub all_pages: bool,
    /// Only this tenant's.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Released allocations from the answering member's archive (evicted from the
    /// replicated state), oldest first; with --since/--until.
    #[arg(long)]
    pub archived: bool,
    /// With --archived: released at or after this time (RFC 3339, or a duration ago: 2h).
    #[arg(long, requires = "archived", value_parser = parse_when)]
    pub since: Option<Timestamp>,
    /// With --archived: released at or before this time (RFC 3339, or a duration ago).
    #[arg(long, requires = "archived", value_parser = parse_when)]
    pub until: Option<Timestamp>,
}

/// `poolctl containers`.
#[derive(Debug, Args)]
pub struct ContainersArgs {
    /// Only this pool's.
    #[arg(long)]
    pub pool: Option<PoolName>,
    /// Only on this node.
    #[arg(long)]
    pub node: Option<NodeId>,
    /// Only in this state (creating, warm, allocated, releasing, terminated, failed).
    #[arg(long)]
    pub state: Option<ContainerState>,
    /// Only held by this session.
    #[arg(long)]
    pub session: Option<SessionId>,
    /// Show a page of at most this many (1..=1000), then the cursor of the next page.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub limit: Option<u64>,
    /// Start at this page (the cursor a previous page printed).
    #[arg(long, value_name = "CURSOR")]
    pub cursor: Option<String>,
    /// Follow the pages to the end, --limit at a time (100 without --limit).
    #[arg(long)]
    pub all_pages: bool,
    /// Only this tenant's.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Ended containers from the answering member's archive (evicted from the replicated
    /// state), oldest first; with --since/--until.
    #[arg(long)]
    pub archived: bool,
    /// With --archived: ended at or after this time (RFC 3339, or a duration ago: 2h).
    #[arg(long, requires = "archived", value_parser = parse_when)]
    pub since: Option<Timestamp>,
    /// With --archived: ended at or before this time (RFC 3339, or a duration ago).
    #[arg(long, requires = "archived", value_parser = parse_when)]
    pub until: Option<Timestamp>,
}

/// `poolctl events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only events after this sequence number (oldest first). Without it, the newest
    /// `--limit` events are shown.
    #[arg(long, value_name = "SEQ", conflicts_with = "before")]
    pub after: Option<u64>,
    /// Only events before this sequence number (the newest `--limit` of them).
    #[arg(long, value_name = "SEQ")]
    pub before: Option<u64>,
    /// At most this many [default: the server's page size; 10 with --follow].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub limit: Option<u64>,
    /// Only this pool's.
    #[arg(long)]
    pub pool: Option<PoolName>,
    /// Only this container's.
    #[arg(long)]
    pub container: Option<ContainerId>,
    /// Only this session's.
    #[arg(long)]
    pub session: Option<SessionId>,
    /// Only this node's.
    #[arg(long)]
    pub node: Option<NodeId>,
    /// Only these kinds (repeatable or comma-separated), e.g. container_allocated.
    #[arg(long, value_name = "KIND", value_delimiter = ',')]
    pub kind: Vec<EventKind>,
    /// Keep streaming new events until interrupted (Ctrl-C).
    #[arg(long, short = 'f', conflicts_with = "before")]
    pub follow: bool,
    /// Events evicted from the replicated state, from the answering member's archive, oldest
    /// first (page on with --after, the last seq shown); with --since/--until.
    #[arg(long, conflicts_with_all = ["follow", "before"])]
    pub archived: bool,
    /// With --archived: at or after this time (RFC 3339, or a duration ago: 2h, 30m).
    #[arg(long, requires = "archived", value_parser = parse_when)]
    pub since: Option<Timestamp>,
    /// With --archived: at or before this time (RFC 3339, or a duration ago).
    #[arg(long, requires = "archived", value_parser = parse_when)]
    pub until: Option<Timestamp>,
}

/// A time: RFC 3339, or a duration before now (`90s`, `30m`, `2h`, `1d`).
pub fn parse_when(s: &str) -> Result<Timestamp, String> {
    if let Ok(t) = s.parse::<Timestamp>() {
        return Ok(t);
    }
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is neither RFC 3339 nor a duration like 30m"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("{s:?}: a duration ends in s, m, h or d")),
    };
    Ok(Timestamp(
        Timestamp::now()
            .as_millis()
            .saturating_sub(secs.saturating_mul(1000)),
    ))
}

/// `poolctl simulate`.
///
/// The history is the pool's event log (allocations with their holds, and measured warm-up
/// and teardown times), or `--trace`. A pool's own history is replayed on the fleet as it is
/// now: the room its ready nodes have for the pool and how many containers their agents start
/// at once. The proposed policy is the pool's current spec with the flags applied.
/// Allocations refused in the past left no events, so a history with refusals understates
/// demand.
#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// The pool: its history is replayed and its spec is the current policy.
    #[arg(required_unless_present = "trace")]
    pub pool: Option<PoolName>,
    /// Replay this trace instead of the pool's history: JSON lines `{"at_ms":..,"hold_ms":..}`
    /// or CSV `at_ms,hold_ms` ("-" for standard input).
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    /// Proposed floor of warm containers.
    #[arg(long, value_name = "N")]
    pub min_warm: Option<u32>,
    /// Proposed ceiling of warm containers.
    #[arg(long, value_name = "N")]
    pub max_warm: Option<u32>,
    /// Proposed share of allocations to serve warm, e.g. 0.99.
    #[arg(long, value_name = "P", value_parser = parse_hit_rate)]
    pub target_hit_rate: Option<f64>,
    /// Proposed time demand must stay low before the pool shrinks.
    #[arg(long, value_name = "SECS")]
    pub cooldown_secs: Option<u64>,
    /// Propose a fixed target of N warm containers instead.
    #[arg(long, value_name = "N", conflicts_with_all = ["min_warm", "max_warm", "target_hit_rate", "cooldown_secs"])]
    pub fixed: Option<u32>,
    /// Proposed lease: the proposed run's holds are capped at it (as if never renewed).
    #[arg(long, value_name = "N")]
    pub lease_seconds: Option<u64>,
    /// Warm-up time for every container instead of the measured ones.
    #[arg(long, value_name = "MS")]
    pub warm_time_ms: Option<u64>,
    /// Replay on a fleet with room for N of the pool's containers (instead of what its ready
    /// nodes have now).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub fleet_slots: Option<u32>,
    /// Replay on a fleet whose agents start N containers at once in all (instead of theirs).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub create_slots: Option<u32>,
    /// How long a replayed allocation waits for a warm container before it is refused.
    #[arg(long, value_name = "MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(0..=MAX_WAIT_MS))]
    pub wait_ms: u64,
    /// Seed for drawing warm-up times.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub seed: u64,
    /// Replay this many times, with seeds from `--seed` on, and report the means: the draws
    /// of warm-up and teardown times make single runs differ by a few percent.
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub runs: u32,
    /// Show only the proposed policy's run.
    #[arg(long)]
    pub only_proposed: bool,
    /// With `--output json`: each run's warm, unallocated count over time (its first draw),
    /// as `idle_timeline` (`[ms from the trace's start, count]` at each change).
    #[arg(long)]
    pub timeline: bool,
}

fn parse_hit_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if p > 0.0 && p < 1.0 => Ok(p),
        _ => Err("must be a number between 0 and 1, e.g. 0.99".into()),
    }
}

/// `poolctl node ...`
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Take no new containers on the node; keep the ones it has.
    Cordon {
        /// The node.
        id: NodeId,
    },
    /// Take new containers on the node again.
    Uncordon {
        /// The node.
        id: NodeId,
    },
    /// Take no new containers on the node, move its warm ones elsewhere and wait for its
    /// allocations to end; `node_drained` is recorded once it holds nothing.
    Drain {
        /// The node.
        id: NodeId,
        /// Release the allocations still on the node this long from now (reason `drained`)
        /// instead of waiting for them however long they last.
        #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(0..=MAX_DRAIN_DEADLINE_SECS))]
        deadline_secs: Option<u64>,
    },
}

/// `poolctl usage`.
#[derive(Debug, Args)]
pub struct UsageArgs {
    /// Only this pool.
    #[arg(long)]
    pub pool: Option<PoolName>,
    /// Also this session's allocated time, per pool.
    #[arg(long)]
    pub session: Option<SessionId>,
}

/// `poolctl key ...`
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Make a key; its token is printed this once (the cluster keeps only a hash).
    Create {
        /// A name for people, e.g. who or what uses the key (1 to 64 characters).
        #[arg(value_parser = parse_key_name)]
        name: String,
        /// What the key may do: viewer (read), user (also allocate, release, renew) or
        /// admin (everything).
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// For user and viewer keys: the tenant whose allocations the key sees and makes
        /// (`default` when absent). Admin keys act for every tenant.
        #[arg(long)]
        tenant: Option<TenantId>,
    },
    /// List keys, revoked ones too (never their secrets).
    List,
    /// Revoke a key: it is refused from then on.
    Revoke {
        /// The key's id: the 12 hex digits after `wpk_` in its token (a whole token is
        /// accepted too).
        #[arg(value_parser = parse_key_id)]
        id: String,
    },
}

/// `poolctl tenant ...`.
#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Tenants with limits, with how many allocations each holds.
    List,
    /// One tenant's limits and use.
    Show {
        /// The tenant.
        name: TenantId,
    },
    /// Set a tenant's limits, replacing those it had (admin only). Over a limit, an
    /// allocation answers 429 with Retry-After.
    Set {
        /// The tenant.
        name: TenantId,
        /// Most allocations active or waiting at once.
        #[arg(long, value_name = "N")]
        max_allocations: Option<u32>,
        /// Allocation requests per minute, on average.
        #[arg(long, value_name = "N")]
        per_minute: Option<u32>,
        /// Requests allowed at once above the average (`--per-minute` when absent).
        #[arg(long, value_name = "N", requires = "per_minute")]
        burst: Option<u32>,
        /// Most bytes the tenant's saved workspaces may take together.
        #[arg(long, value_name = "BYTES")]
        workspace_max_bytes: Option<u64>,
    },
    /// Remove a tenant's limits (admin only).
    Delete {
        /// The tenant.
        name: TenantId,
    },
}

/// `poolctl workspace ...`.
#[derive(Debug, Subcommand)]
pub enum WorkspaceCommand {
    /// Saved workspaces (an admin key: every tenant's, or `--tenant`'s).
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<TenantId>,
    },
    /// One workspace's current version.
    Show {
        /// The workspace id.
        id: String,
        /// Its tenant (admin keys; `default` when absent).
        #[arg(long)]
        tenant: Option<TenantId>,
    },
    /// Delete a workspace and every version of it.
    Delete {
        /// The workspace id.
        id: String,
        /// Its tenant (admin keys; `default` when absent).
        #[arg(long)]
        tenant: Option<TenantId>,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
}

fn parse_key_name(s: &str) -> Result<String, String> {
    let name = s.trim();
    if name.is_empty() || name.chars().count() > 64 {
        return Err("must be 1 to 64 characters".into());
    }
    Ok(name.to_string())
}

/// A key id, or the id inside a whole token `wpk_<id>_<secret>` (so that an operator can
/// revoke a leaked token by pasting it).
fn parse_key_id(s: &str) -> Result<String, String> {
    let id = match s.strip_prefix("wpk_") {
        Some(rest) => rest.split('_').next().unwrap_or_default(),
        None => s,
    };
    if id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(id.to_string())
    } else {
        Err("a key id is 12 hex digits (see `poolctl key list`)".into())
    }
}

/// `poolctl cluster ...`
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Raft state and members, as the answering member sees them.
    Status,
    /// Add a control-plane member (it joins as a learner and is promoted).
    Add {
        /// The new member's Raft id.
        id: MemberId,
        /// Its REST API address, e.g. http://10.0.0.2:7070.
        api_addr: String,
    },
    /// Remove a control-plane member.
    Remove {
        /// The member's Raft id.
        id: MemberId,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("poolctl").chain(args.iter().copied()))
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn alloc_async_wait_location_and_lifetime() {
        use warmpool_proto::api::LocationValue;
        let cli = parse(&[
            "alloc",
            "demo",
            "--async",
            "--wait",
            "--location",
            "region=eu,us",
            "--location",
            "zone=a",
            "--max-lifetime-secs",
            "60",
        ])
        .unwrap();
        let Command::Alloc(a) = cli.command else {
            panic!("not alloc")
        };
        assert!(a.asynchronous && a.wait);
        assert_eq!(
            a.location,
            vec![
                (
                    "region".to_string(),
                    LocationValue::Prefer(vec!["eu".into(), "us".into()])
                ),
                ("zone".to_string(), LocationValue::One("a".into())),
            ]
        );
        assert_eq!(a.max_lifetime_secs, Some(60));
        assert!(
            parse(&["alloc", "demo", "--wait"]).is_err(),
            "--wait needs --async"
        );
        assert!(parse(&["alloc", "demo", "--location", "region"]).is_err());
        assert!(parse(&["alloc", "demo", "--location", "region=eu,"]).is_err());
    }

    #[test]
    fn global_flags_anywhere_and_url_lists() {
        let cli = parse(&["status", "--url", "http://a:1,http://b:2", "-o", "json"]).unwrap();
        assert_eq!(cli.url, vec!["http://a:1", "http://b:2"]);
        assert_eq!(cli.output, Output::Json);
        assert!(matches!(cli.command, Command::Status));
    }

    #[test]
    fn pool_create_takes_flags_and_trailing_command() {
        let cli = parse(&[
            "pool",
            "create",
            "demo",
            "--image",
            "img:1",
            "--min-warm",
            "2",
            "--env",
            "A=1",
            "--env",
            "B=x=y",
            "--constraint",
            "region=eu",
            "--health-tcp",
            "--max-warm",
            "none",
            "--",
            "/bin/httpd",
            "-f",
            "-p",
            "8080",
        ])
        .unwrap();
        let Command::Pool(PoolCommand::Create(c)) = cli.command else {
            panic!()
        };
        assert_eq!(c.name.unwrap().as_str(), "demo");
        assert_eq!(c.spec.image.as_deref(), Some("img:1"));
        assert_eq!(
            c.spec.env,
            vec![("A".into(), "1".into()), ("B".into(), "x=y".into())]
        );
        assert_eq!(c.spec.max_warm, Some(Setting::Clear));
        assert!(c.spec.health_tcp);
        assert_eq!(c.spec.command, vec!["/bin/httpd", "-f", "-p", "8080"]);
    }

    #[test]
    fn usage_errors_are_caught_by_the_parser() {
        use clap::error::ErrorKind;
        let bad = [
            vec!["pool", "create", "Demo", "--image", "i"],
            vec!["pool", "create", "demo", "--env", "NOEQUALS"],
            vec![
                "pool",
                "create",
                "demo",
                "--health-tcp",
                "--health-path",
                "/",
            ],
            vec!["pool", "create"],
            vec!["release", "not-a-uuid"],
            vec!["alloc", "demo", "--wait-ms", "60001"],
            vec!["events", "--kind", "container_exploded"],
            vec!["events", "--follow", "--before", "3"],
            vec!["containers", "--state", "sleeping"],
            vec!["node", "reboot", "n1"],
            vec!["key", "create", "ci"],
            vec!["key", "create", "ci", "--role", "root"],
            vec!["key", "create", " ", "--role", "user"],
            vec!["key", "revoke", "abc"],
            vec!["key", "revoke", "wpk_nothex123456_00"],
        ];
        for args in bad {
            let err = parse(&args).expect_err(&format!("{args:?} parsed"));
            assert_ne!(err.kind(), ErrorKind::DisplayHelp);
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
        // --file stands in for the name.
        assert!(parse(&["pool", "create", "--file", "spec.json"]).is_ok());
        for args in [
            vec!["bench", "-c", "0"],
            vec!["bench", "--pool", "demo", "--warm", "5"],
            vec!["bench", "--baseline", "hot"],
            vec!["bench", "--via", "nobody"],
            vec!["bench", "--tier", "frozen"],
            vec!["bench", "--tier", "paused", "--burst", "30"],
            vec!["bench", "--burst", "0"],
            vec!["bench", "--burst", "30", "--within", "soon"],
            vec!["bench", "--within", "2s"],
            vec!["bench", "--pool", "demo", "--paused", "5"],
        ] {
            let err = parse(&args).expect_err(&format!("{args:?} parsed"));
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn key_commands_take_roles_and_ids_or_whole_tokens() {
        let Command::Key(KeyCommand::Create { name, role, tenant }) = parse(&[
            "key",
            "create",
            " ci runner ",
            "--role",
            "user",
            "--tenant",
            "acme",
        ])
        .unwrap()
        .command
        else {
            panic!()
        };
        assert_eq!((name.as_str(), role), ("ci runner", Role::User));
        assert_eq!(tenant.as_ref().map(|t| t.as_str()), Some("acme"));
        assert!(parse(&["key", "create", "x", "--role", "user", "--tenant", "a.b"]).is_err());
        let token = format!("wpk_a1b2c3d4e5f6_{}", "0".repeat(64));
        for given in ["a1b2c3d4e5f6", token.as_str()] {
            let Command::Key(KeyCommand::Revoke { id }) =
                parse(&["key", "revoke", given]).unwrap().command
            else {
                panic!()
            };
            assert_eq!(id, "a1b2c3d4e5f6", "{given}");
        }
    }

    #[test]
    fn bench_flags_have_useful_defaults() {
        let Command::Bench(b) = parse(&["bench", "-n", "50", "-c", "4", "--baseline", "cold"])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert_eq!((b.cycles, b.concurrency, b.warmup), (50, 4, 10));
        assert_eq!(b.baseline, Some(Baseline::Cold));
        assert_eq!(b.image, "warmpool-demo:latest");
        assert_eq!(b.via, crate::bench::Via::Given);
        assert!(b.pool.is_none() && b.warm.is_none() && b.replenish == 0);
        assert!(b.tier.is_none() && b.burst.is_none() && b.paused.is_none());
    }

    #[test]
    fn bench_takes_a_tier_or_a_burst() {
        let Command::Bench(b) = parse(&["bench", "--tier", "paused", "-n", "4"])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert_eq!((b.tier, b.cycles), (Some(BenchTier::Paused), 4));
        let Command::Bench(b) = parse(&[
            "bench",
            "--burst",
            "30",
            "--within",
            "2s",
            "--warm",
            "3",
            "--paused",
            "30",
            "--wait-ms",
            "10000",
            "--expect-fast",
            "27",
        ])
        .unwrap()
        .command
        else {
            panic!()
        };
        assert_eq!(b.burst, Some(30));
        assert_eq!(b.within, std::time::Duration::from_secs(2));
        assert_eq!((b.warm, b.paused, b.wait_ms), (Some(3), Some(30), 10_000));
        assert_eq!((b.fast_ms, b.expect_fast), (100, Some(27)));
        let Command::Bench(b) = parse(&["bench", "--burst", "5", "--within", "500ms"])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert_eq!(b.within, std::time::Duration::from_millis(500));
    }

    #[test]
    fn event_kinds_split_on_commas() {
        let cli = parse(&[
            "events",
            "--kind",
            "pool_created,node_down",
            "--kind",
            "container_warm",
        ])
        .unwrap();
        let Command::Events(e) = cli.command else {
            panic!()
        };
        assert_eq!(
            e.kind,
            vec![
                EventKind::PoolCreated,
                EventKind::NodeDown,
                EventKind::ContainerWarm
            ]
        );
    }
}
