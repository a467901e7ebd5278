//! Human-readable output: aligned tables and `key: value` blocks. Pure functions from API
//! values (and the current time, for "5s ago") to text, so they are tested by comparing
//! strings.

use std::fmt::Display;

use warmpool_proto::api::TenantView;
use warmpool_proto::api::{
    ClusterView, Counts, CreatedKey, KeyView, NodeView, PoolView, StatusView, UsageView, WhoamiView,
};
use warmpool_proto::records::AllocationState;
use warmpool_proto::{Allocation, Container, Event, Health, HealthProbe, Timestamp};

/// How to render: full or short ids, and what "now" is.
#[derive(Clone, Copy, Debug)]
pub struct Style {
    /// Full ids instead of their last 12 hex digits.
    pub wide: bool,
    /// The time relative times are counted from.
    pub now: Timestamp,
}

/// Column alignment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    /// Text.
    Left,
    /// Numbers.
    Right,
}

/// A table with a header row, columns two spaces apart, no trailing spaces.
#[derive(Debug)]
pub struct Table {
    cols: Vec<(String, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these columns.
    pub fn new(cols: &[(&str, Align)]) -> Self {
        Table {
            cols: cols.iter().map(|(h, a)| (h.to_string(), *a)).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are blank, extra ones dropped.
    pub fn row(&mut self, mut cells: Vec<String>) {
        cells.resize(self.cols.len(), String::new());
        self.rows.push(cells);
    }

    /// The text, one line per row, each ending in `\n`.
    pub fn render(&self) -> String {
        let width = |s: &str| s.chars().count();
        let mut widths: Vec<usize> = self.cols.iter().map(|(h, _)| width(h)).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(cell));
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.cols.iter().map(|(h, _)| h.clone()).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = " ".repeat(widths[i] - width(cell));
                match self.cols[i].1 {
                    Align::Left => {
                        line.push_str(cell);
                        line.push_str(&pad);
                    }
                    Align::Right => {
                        line.push_str(&pad);
                        line.push_str(cell);
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `key:  value` lines with the values aligned.
pub fn kv_block(rows: &[(&str, String)]) -> String {
    let w = rows
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (k, v) in rows {
        let pad = " ".repeat(w - k.chars().count());
        out.push_str(format!("{k}:{pad}  {v}").trim_end());
        out.push('\n');
    }
    out
}

/// An id as shown in tables: whole when `wide`, else its last 12 characters. (Ids are UUID
/// v7, whose leading digits are a timestamp shared by everything made in the same minute; the
/// trailing ones are random.)
pub fn short_id(id: impl Display, wide: bool) -> String {
    let s = id.to_string();
    let n = s.chars().count();
    if wide || n <= 12 {
        s
    } else {
        s.chars().skip(n - 12).collect()
    }
}

/// A duration in seconds as `45s`, `3m20s`, `2h5m`, `3d4h`.
pub fn compact_secs(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => match secs % 60 {
            0 => format!("{}m", secs / 60),
            s => format!("{}m{s}s", secs / 60),
        },
        3600..=86_399 => match (secs % 3600) / 60 {
            0 => format!("{}h", secs / 3600),
            m => format!("{}h{m}m", secs / 3600),
        },
        _ => match (secs % 86_400) / 3600 {
            0 => format!("{}d", secs / 86_400),
            h => format!("{}d{h}h", secs / 86_400),
        },
    }
}

/// `5s ago`, `in 10m`, or `now`.
pub fn relative(now: Timestamp, t: Timestamp) -> String {
    if t.0 + 500 < now.0 {
        format!("{} ago", compact_secs((now.0 - t.0 + 500) / 1000))
    } else if t.0 > now.0 + 500 {
        format!("in {}", compact_secs((t.0 - now.0 + 500) / 1000))
    } else {
        "now".into()
    }
}

/// A timestamp with its relative time: `2026-01-31T12:00:00.000Z (5s ago)`.
pub fn when(now: Timestamp, t: Timestamp) -> String {
    format!("{t} ({})", relative(now, t))
}

fn opt<T: Display>(v: &Option<T>) -> String {
    v.as_ref()
        .map(|v| v.to_string())
        .unwrap_or_else(|| "-".into())
}

fn health(h: Health) -> String {
    match h {
        Health::Unhealthy {
            consecutive_failures,
        } => format!("unhealthy({consecutive_failures})"),
        other => other.as_str().to_string(),
    }
}

fn counts_line(c: &Counts) -> String {
    let mut line = format!(
        "{} live: {} warm, {} allocated, {} creating, {} releasing, {} unhealthy",
        c.total, c.warm, c.allocated, c.creating, c.releasing, c.unhealthy
    );
    if c.paused > 0 {
        // Only for pools with a paused tier.
        line.push_str(&format!(", {} paused", c.paused));
    }
    if c.outdated > 0 {
        // Only while a rollout replaces them: old-spec containers, never handed out.
        line.push_str(&format!(", {} outdated", c.outdated));
    }
    line
}

fn map_line(m: &std::collections::BTreeMap<String, String>) -> String {
    if m.is_empty() {
        return "-".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `poolctl pool list`.
pub fn pools_table(pools: &[PoolView]) -> String {
    use Align::*;
    let mut t = Table::new(&[
        ("NAME", Left),
        ("IMAGE", Left),
        ("GEN", Right),
        ("WARM", Right),
        ("WANTED", Right),
        ("ALLOCATED", Right),
        ("CREATING", Right),
        ("TOTAL", Right),
        ("MIN", Right),
        ("MAX", Right),
        ("LIMIT", Right),
    ]);
    for p in pools {
        let s = &p.pool.spec;
        t.row(vec![
            s.name.to_string(),
            image_cell(p),
            p.pool.generation.to_string(),
            p.counts.warm.to_string(),
            p.wanted.to_string(),
            p.counts.allocated.to_string(),
            p.counts.creating.to_string(),
            p.counts.total.to_string(),
            s.min_warm.to_string(),
            s.max_warm().to_string(),
            s.max_total.to_string(),
        ]);
    }
    t.render()
}

/// The pool's image, with where it is being pulled or failed: `app:2 (pulling on 1 node)`.
fn image_cell(p: &PoolView) -> String {
    use warmpool_proto::agent::ImageState;
    let image = &p.pool.spec.image;
    let pulling = p
        .images
        .iter()
        .filter(|i| matches!(i.state, ImageState::Pulling { .. }))
        .count();
    let failed = p.images.len() - pulling;
    let nodes = |n: usize| if n == 1 { "node" } else { "nodes" };
    match (pulling, failed) {
        (0, 0) => image.clone(),
        (n, 0) => format!("{image} (pulling on {n} {})", nodes(n)),
        (0, f) => format!("{image} (pull failed on {f} {})", nodes(f)),
        (n, f) => format!("{image} (pulling on {n}, pull failed on {f})"),
    }
}

/// One line per node where the pool's image is not ready:
/// `n1 pulling since …`, `n2 failed (not_found): …, retry at …`.
fn image_lines(p: &PoolView) -> String {
    use warmpool_proto::agent::ImageState;
    if p.images.is_empty() {
        return format!(
            "ready on every node that runs it (pull: {})",
            p.pool.spec.pull.as_str()
        );
    }
    p.images
        .iter()
        .map(|i| match &i.state {
            ImageState::Pulling { since } => format!("{} pulling since {}", i.node, since),
            ImageState::Failed {
                reason,
                message,
                attempts,
                retry_at,
            } => format!(
                "{} failed ({reason}, {attempts} attempts, retry at {retry_at}): {message}",
                i.node
            ),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// `poolctl pool show|create|update`.
pub fn pool_detail(p: &PoolView, style: Style) -> String {
    let s = &p.pool.spec;
    let probe = match &s.health.probe {
        HealthProbe::Http { path } => format!("http GET {path}"),
        HealthProbe::Tcp => "tcp connect".to_string(),
    };
    let secs = |v: Option<u64>| v.map(compact_secs).unwrap_or_else(|| "none".into());
    kv_block(&[
        ("name", s.name.to_string()),
        ("image", s.image.clone()),
        ("pull", image_lines(p)),
        (
            "command",
            if s.command.is_empty() {
                "(the image's)".into()
            } else {
                s.command.join(" ")
            },
        ),
        ("port", s.port.to_string()),
        ("generation", p.pool.generation.to_string()),
        (
            "warm",
            format!(
                "{} of {} wanted (min {}, max {}, limit {} live)",
                p.counts.warm,
                p.wanted,
                s.min_warm,
                s.max_warm(),
                s.max_total
            ),
        ),
        ("containers", counts_line(&p.counts)),
        (
            "resources",
            format!(
                "{} mCPU, {} MiB, {} pids",
                s.resources.cpu_millis, s.resources.memory_mb, s.resources.pids
            ),
        ),
        (
            "health",
            format!(
                "{probe} every {}ms, timeout {}ms, unhealthy after {} failures",
                s.health.interval_ms, s.health.timeout_ms, s.health.failure_threshold
            ),
        ),
        (
            "lease",
            format!(
                "{} (max lifetime {}, idle timeout {})",
                compact_secs(s.lease_seconds),
                secs(s.max_lifetime_secs),
                secs(s.idle_timeout_secs)
            ),
        ),
        ("env", map_line(&s.env)),
        ("constraints", map_line(&s.constraints)),
        ("egress", s.egress.to_string()),
        (
            "scaling",
            format!(
                "batches of {}, {}ms apart",
                s.scaling.batch_size, s.scaling.pacing_ms
            ),
        ),
        ("created", when(style.now, p.pool.created_at)),
        ("updated", when(style.now, p.pool.updated_at)),
    ])
}

/// `poolctl status`.
pub fn status_view(s: &StatusView) -> String {
    use Align::*;
    let mut out = format!(
        "totals: {} (applied index {})\n\n",
        counts_line(&s.totals),
        s.applied_index
    );
    let mut pools = Table::new(&[
        ("POOL", Left),
        ("GEN", Right),
        ("WANTED", Right),
        ("WARM", Right),
        ("ALLOCATED", Right),
        ("CREATING", Right),
        ("RELEASING", Right),
        ("UNHEALTHY", Right),
        ("TOTAL", Right),
        ("MIN", Right),
        ("MAX", Right),
        ("LIMIT", Right),
    ]);
    for p in &s.pools {
        let c = &p.counts;
        pools.row(vec![
            p.name.to_string(),
            p.generation.to_string(),
            p.wanted.to_string(),
            c.warm.to_string(),
            c.allocated.to_string(),
            c.creating.to_string(),
            c.releasing.to_string(),
            c.unhealthy.to_string(),
            c.total.to_string(),
            p.min_warm.to_string(),
            p.max_warm.to_string(),
            p.max_total.to_string(),
        ]);
    }
    out.push_str(&pools.render());
    out.push('\n');
    let mut nodes = Table::new(&[
        ("NODE", Left),
        ("STATUS", Left),
        ("WARM", Right),
        ("ALLOCATED", Right),
        ("CREATING", Right),
        ("RELEASING", Right),
        ("UNHEALTHY", Right),
        ("TOTAL", Right),
    ]);
    for n in &s.nodes {
        let c = &n.counts;
        nodes.row(vec![
            n.node.to_string(),
            n.status.as_str().to_string(),
            c.warm.to_string(),
            c.allocated.to_string(),
            c.creating.to_string(),
            c.releasing.to_string(),
            c.unhealthy.to_string(),
            c.total.to_string(),
        ]);
    }
    out.push_str(&nodes.render());
    // What is wrong, where something is: one line each, under the tables.
    let conditions: Vec<String> = s
        .pools
        .iter()
        .filter_map(|p| Some(format!("pool {}: {}", p.name, p.condition.as_ref()?)))
        .chain(
            s.nodes
                .iter()
                .filter_map(|n| Some(format!("node {}: {}", n.node, n.condition.as_ref()?))),
        )
        .collect();
    if !conditions.is_empty() {
        out.push('\n');
        for c in conditions {
            out.push_str(&c);
            out.push('\n');
        }
    }
    out
}

fn allocation_state(a: &Allocation) -> String {
    match (a.state, a.release_reason) {
        (AllocationState::Active, _) => "active".into(),
        (AllocationState::Released, Some(r)) => format!("released({})", r.as_str()),
        (AllocationState::Released, None) => "released".into(),
        (AllocationState::Pending, _) => "pending".into(),
        (AllocationState::Cancelled, _) => "cancelled".into(),
    }
}

/// `poolctl alloc|release|renew`: everything needed to use the container, full ids.
pub fn allocation_detail(a: &Allocation, style: Style) -> String {
    let granted = !a.container_id.is_nil();
    let mut rows = vec![
        ("allocation", a.id.to_string()),
        ("session", a.session_id.to_string()),
        ("pool", a.pool.to_string()),
    ];
    if granted {
        rows.extend([
            ("container", a.container_id.to_string()),
            ("node", a.node.to_string()),
            ("url", opt(&a.url)),
        ]);
    }
    rows.push(("state", allocation_state(a)));
    if granted {
        rows.push(("expires", when(style.now, a.expires_at)));
    }
    if let Some(cost) = a.cost {
        rows.push(("cost", format!("{cost:.4}")));
    }
    if let Some(max) = a.max_expires_at {
        rows.push(("max expiry", when(style.now, max)));
    }
    if let Some(t) = a.released_at {
        rows.push(("released", when(style.now, t)));
    }
    if let Some(k) = &a.idempotency_key {
        rows.push(("idempotency key", k.clone()));
    }
    if let Some(access) = &a.access {
        for (port, url) in access.urls.iter().chain(&access.host_urls) {
            rows.push(("gateway", format!("{url} ({port})")));
        }
        if let Some(t) = &access.token {
            rows.push(("access token", t.clone()));
        }
    }
    kv_block(&rows)
}

/// `poolctl allocations`.
pub fn allocations_table(list: &[Allocation], style: Style) -> String {
    use Align::*;
    let mut t = Table::new(&[
        ("ID", Left),
        ("SESSION", Left),
        ("POOL", Left),
        ("CONTAINER", Left),
        ("NODE", Left),
        ("URL", Left),
        ("STATE", Left),
        ("EXPIRES", Left),
    ]);
    for a in list {
        t.row(vec![
            short_id(a.id, style.wide),
            a.session_id.to_string(),
            a.pool.to_string(),
            if a.container_id.is_nil() {
                "-".into()
            } else {
                short_id(a.container_id, style.wide)
            },
            if a.node.is_unassigned() {
                "-".into()
            } else {
                a.node.to_string()
            },
            opt(&a.url),
            allocation_state(a),
            match a.state {
                AllocationState::Active => relative(style.now, a.expires_at),
                _ => "-".into(),
            },
        ]);
    }
    t.render()
}

fn address(c: &Container) -> String {
    match c.ipv6 {
        Some(ip) => format!("[{ip}]:{}", c.port),
        None => "-".into(),
    }
}

/// `poolctl containers`.
pub fn containers_table(list: &[Container], style: Style) -> String {
    use Align::*;
    let mut t = Table::new(&[
        ("ID", Left),
        ("POOL", Left),
        ("NODE", Left),
        ("STATE", Left),
        ("HEALTH", Left),
        ("SESSION", Left),
        ("ADDRESS", Left),
        ("AGE", Right),
    ]);
    for c in list {
        t.row(vec![
            short_id(c.id, style.wide),
            c.pool.to_string(),
            c.node.to_string(),
            c.state.as_str().to_string(),
            health(c.health),
            opt(&c.session),
            address(c),
            compact_secs(style.now.since(c.created_at).as_secs()),
        ]);
    }
    t.render()
}

/// `poolctl container <id>`.
pub fn container_detail(c: &Container, style: Style) -> String {
    let at = |t: Option<Timestamp>| t.map(|t| when(style.now, t)).unwrap_or_else(|| "-".into());
    kv_block(&[
        ("id", c.id.to_string()),
        ("pool", format!("{} (generation {})", c.pool, c.generation)),
        ("node", c.node.to_string()),
        ("state", c.state.as_str().to_string()),
        ("health", health(c.health)),
        ("url", c.url().unwrap_or_else(|| "-".into())),
        ("docker id", opt(&c.docker_id)),
        ("session", opt(&c.session)),
        ("allocation", opt(&c.allocation)),
        ("created", when(style.now, c.created_at)),
        ("warm", at(c.warm_at)),
        ("allocated", at(c.allocated_at)),
        ("last activity", at(c.last_activity_at)),
        ("lease expires", at(c.lease_expires_at)),
        ("released", at(c.released_at)),
        ("ended", at(c.ended_at)),
        ("reason", opt(&c.reason)),
    ])
}

/// One event on one line: seq, time, kind, then the ids involved as `key=value`.
pub fn event_line(e: &Event, wide: bool) -> String {
    let mut line = format!("{:>6}  {}  {:<24}", e.seq, e.at, e.kind.as_str());
    let mut field = |k: &str, v: String| {
        line.push_str("  ");
        line.push_str(k);
        line.push('=');
        line.push_str(&v);
    };
    if let Some(p) = &e.pool {
        field("pool", p.to_string());
    }
    if let Some(c) = e.container {
        field("container", short_id(c, wide));
    }
    if let Some(n) = &e.node {
        field("node", n.to_string());
    }
    if let Some(s) = &e.session {
        field("session", s.to_string());
    }
    if let Some(a) = e.allocation {
        field("allocation", short_id(a, wide));
    }
    if let Some(r) = &e.reason {
        field("reason", r.clone());
    }
    if let Some(d) = &e.detail {
        field("detail", d.to_string());
    }
    line.trim_end().to_string()
}

/// `poolctl nodes`.
pub fn nodes_table(list: &[NodeView]) -> String {
    use Align::*;
    let mut t = Table::new(&[
        ("NODE", Left),
        ("STATUS", Left),
        ("PREFIX", Left),
        ("CPU", Right),
        ("MEMORY", Right),
        ("MEM USED", Right),
        ("HEARTBEAT", Right),
        ("WARM", Right),
        ("ALLOCATED", Right),
        ("TOTAL", Right),
        ("LABELS", Left),
        ("AGENT", Left),
    ]);
    for n in list {
        t.row(vec![
            n.node.id.to_string(),
            node_status(&n.node),
            n.node.ipv6_prefix.clone(),
            format!("{}m", n.node.capacity.cpu_millis),
            format!("{}Mi", n.node.capacity.memory_mb),
            n.memory_fraction
                .map(|f| format!("{:.0}%", f * 100.0))
                .unwrap_or_else(|| "-".into()),
            n.heartbeat_age_ms
                .map(|ms| format!("{} ago", compact_secs((ms + 500) / 1000)))
                .unwrap_or_else(|| "never".into()),
            n.counts.warm.to_string(),
            n.counts.allocated.to_string(),
            n.counts.total.to_string(),
            map_line(&n.node.labels),
            n.node.agent_version.clone(),
        ]);
    }
    t.render()
}

/// A node's status, with why nothing is granted on it when it is marked unreachable.
fn node_status(n: &warmpool_proto::records::Node) -> String {
    match &n.unreachable {
        Some(u) => format!("{}, unreachable ({})", n.status.as_str(), u.reason.as_str()),
        None => n.status.as_str().to_string(),
    }
}

/// `poolctl node cordon|uncordon|drain`: the node's new status.
pub fn node_line(n: &NodeView, style: Style) -> String {
    let mut line = format!("node {}: {}", n.node.id, node_status(&n.node));
    if let Some(r) = &n.node.reason {
        line.push_str(&format!(" ({r})"));
    }
    if let Some(d) = n.node.drain_deadline {
        line.push_str(&format!(
            "; allocations still on it are released at {}",
            when(style.now, d)
        ));
    }
    line.push('\n');
    line
}

/// `poolctl cluster status|add|remove`.
pub fn cluster_view(c: &ClusterView) -> String {
    use Align::*;
    let idx = |v: Option<u64>| opt(&v);
    let mut rows = vec![
        (
            "member",
            format!("{} ({}, term {})", c.member, c.state, c.term),
        ),
        (
            "leader",
            c.leader
                .map(|l| l.to_string())
                .unwrap_or_else(|| "none".into()),
        ),
        (
            "log",
            format!(
                "last {}, committed {}, applied {}, snapshot {}, purged {}",
                idx(c.last_log_index),
                idx(c.commit_index),
                idx(c.applied_index),
                idx(c.snapshot_index),
                idx(c.purged_index)
            ),
        ),
    ];
    if let Some(build) = c.build {
        let version = c.version.as_deref().unwrap_or("?");
        rows.push(("build", format!("{version} ({})", build.as_str())));
    }
    let mut out = kv_block(&rows);
    out.push('\n');
    let mut t = Table::new(&[
        ("ID", Right),
        ("ROLE", Left),
        ("LEADER", Left),
        ("API", Left),
    ]);
    for m in &c.members {
        let mut role = m.role.clone();
        if m.id == c.member {
            role.push_str(" (answering)");
        }
        t.row(vec![
            m.id.to_string(),
            role,
            if c.leader == Some(m.id) {
                "yes".into()
            } else {
                String::new()
            },
            m.api_addr.clone(),
        ]);
    }
    out.push_str(&t.render());
    out
}

/// A cost, or `-` without a price.
fn cost(c: Option<f64>) -> String {
    c.map(|c| format!("{c:.4}")).unwrap_or_else(|| "-".into())
}

/// `poolctl usage`: container-hours and cost per pool, then the session's, if asked for.
pub fn usage_view(u: &UsageView) -> String {
    use Align::*;
    let hours = |secs: f64| format!("{:.3}", secs / 3600.0);
    let mut t = Table::new(&[
        ("POOL", Left),
        ("WARM H", Right),
        ("ALLOCATED H", Right),
        ("PRICE/H", Right),
        ("WARM COST", Right),
        ("ALLOCATED COST", Right),
    ]);
    for p in &u.pools {
        t.row(vec![
            p.pool.to_string(),
            hours(p.warm_seconds),
            hours(p.allocated_seconds),
            cost(p.price_per_hour),
            cost(p.warm_cost),
            cost(p.allocated_cost),
        ]);
    }
    let mut out = t.render();
    if !u.sessions.is_empty() {
        let mut t = Table::new(&[
            ("SESSION", Left),
            ("POOL", Left),
            ("ALLOCATED H", Right),
            ("COST", Right),
        ]);
        for s in &u.sessions {
            t.row(vec![
                s.session.to_string(),
                s.pool.to_string(),
                hours(s.allocated_seconds),
                cost(s.cost),
            ]);
        }
        out.push('\n');
        out.push_str(&t.render());
    }
    out
}

/// `poolctl key list`.
pub fn keys_table(list: &[KeyView], style: Style) -> String {
    use Align::*;
    let mut t = Table::new(&[
        ("ID", Left),
        ("NAME", Left),
        ("ROLE", Left),
        ("TENANT", Left),
        ("CREATED", Left),
        ("REVOKED", Left),
    ]);
    for k in list {
        t.row(vec![
            k.id.clone(),
            k.name.clone(),
            k.role.as_str().to_string(),
            k.tenant
                .as_ref()
                .map_or_else(|| "*".to_string(), |t| t.to_string()),
            relative(style.now, k.created_at),
            k.revoked_at
                .map(|r| relative(style.now, r))
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    t.render()
}

fn key_rows(k: &KeyView, style: Style) -> Vec<(&'static str, String)> {
    let mut rows = vec![
        ("key", k.id.clone()),
        ("name", k.name.clone()),
        ("role", k.role.as_str().to_string()),
        (
            "tenant",
            k.tenant
                .as_ref()
                .map_or_else(|| "every tenant (admin)".to_string(), |t| t.to_string()),
        ),
        ("created", when(style.now, k.created_at)),
    ];
    if let Some(r) = k.revoked_at {
        rows.push(("revoked", when(style.now, r)));
    }
    rows
}

/// `poolctl key revoke`: one key.
pub fn key_detail(k: &KeyView, style: Style) -> String {
    kv_block(&key_rows(k, style))
}

/// `poolctl key create`: the key and its token, which is shown this once.
pub fn created_key(k: &CreatedKey, style: Style) -> String {
    let mut rows = key_rows(&k.key, style);
    rows.push(("token", k.token.clone()));
    let mut out = kv_block(&rows);
    out.push_str("\nThe token is shown only now: the cluster keeps only its hash.\n");
    out
}

/// `poolctl whoami`.
pub fn whoami(w: &WhoamiView) -> String {
    if !w.auth {
        return format!(
            "auth is off on this member: every caller may do everything ({})\n",
            w.role.as_str()
        );
    }
    kv_block(&[
        ("key", opt(&w.id)),
        ("name", opt(&w.name)),
        ("role", w.role.as_str().to_string()),
        (
            "tenant",
            w.tenant
                .as_ref()
                .map_or_else(|| "every tenant (admin)".to_string(), |t| t.to_string()),
        ),
    ])
}

fn limit(v: Option<u32>) -> String {
    v.map_or_else(|| "none".to_string(), |v| v.to_string())
}

/// `poolctl tenant list`.
pub fn tenants_table(list: &[TenantView]) -> String {
    use Align::*;
    let mut t = Table::new(&[
        ("TENANT", Left),
        ("ALLOCATIONS", Right),
        ("MAX", Right),
        ("PER MINUTE", Right),
        ("BURST", Right),
    ]);
    for v in list {
        t.row(vec![
            v.name.to_string(),
            v.allocations.to_string(),
            limit(v.quota.max_allocations),
            limit(v.quota.allocations_per_minute),
            limit(v.quota.burst.or(v.quota.allocations_per_minute)),
        ]);
    }
    t.render()
}

/// One saved workspace.
pub fn workspace(w: &warmpool_proto::workspace::WorkspaceView) -> String {
    kv_block(&[
        ("workspace", w.id.clone()),
        ("tenant", w.tenant.to_string()),
        ("version", w.version.clone()),
        ("stored bytes", w.size.to_string()),
        ("content bytes", w.content_bytes.to_string()),
        ("sha256", w.sha256.clone()),
        ("saved at", w.saved_at.to_string()),
    ])
}

/// Saved workspaces, one a line.
pub fn workspaces_table(l: &[warmpool_proto::workspace::WorkspaceView]) -> String {
    let mut out = format!(
        "{:<16} {:<32} {:>12} {:<24}\n",
        "TENANT", "WORKSPACE", "BYTES", "SAVED"
    );
    for w in l {
        out.push_str(&format!(
            "{:<16} {:<32} {:>12} {:<24}\n",
            w.tenant.to_string(),
            w.id,
            w.size,
            w.saved_at.to_string()
        ));
    }
    out
}

/// `poolctl tenant show|set|delete`.
pub fn tenant(v: &TenantView) -> String {
    kv_block(&[
        ("tenant", v.name.to_string()),
        ("allocations", v.allocations.to_string()),
        ("max allocations", limit(v.quota.max_allocations)),
        ("per minute", limit(v.quota.allocations_per_minute)),
        (
            "burst",
            limit(v.quota.burst.or(v.quota.allocations_per_minute)),
        ),
        (
            "workspace bytes",
            v.quota
                .workspace_max_bytes
                .map_or_else(|| "none".to_string(), |b| b.to_string()),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use warmpool_proto::api::{MemberView, NodeCounts, PoolStatus};
    use warmpool_proto::records::{Pool, ReleaseReason, Resources};
    use warmpool_proto::{
        AllocationId, ContainerId, ContainerState, EventKind, Node, NodeId, NodeStatus, PoolName,
        PoolSpec, SessionId,
    };

    const NOW: Timestamp = Timestamp(1_790_000_000_000);

    fn style() -> Style {
        Style {
            wide: false,
            now: NOW,
        }
    }

    fn cid() -> ContainerId {
        "01920000-0000-7000-8000-0000000000c1".parse().unwrap()
    }

    fn aid() -> AllocationId {
        "01920000-0000-7000-8000-0000000000a1".parse().unwrap()
    }

    #[test]
    fn tables_align_and_have_no_trailing_spaces() {
        let mut t = Table::new(&[
            ("NAME", Align::Left),
            ("N", Align::Right),
            ("NOTE", Align::Left),
        ]);
        t.row(vec!["a".into(), "7".into(), "".into()]);
        t.row(vec!["long-name".into(), "1234".into(), "é!".into()]);
        t.row(vec!["short".into()]);
        assert_eq!(
            t.render(),
            "NAME          N  NOTE\n\
             a             7\n\
             long-name  1234  é!\n\
             short\n"
        );
    }

    #[test]
    fn kv_blocks_align_values() {
        assert_eq!(
            kv_block(&[
                ("id", "x".into()),
                ("container", "y".into()),
                ("url", "".into())
            ]),
            "id:         x\ncontainer:  y\nurl:\n"
        );
    }

    #[test]
    fn ids_times_and_durations() {
        assert_eq!(short_id(cid(), false), "0000000000c1");
        assert_eq!(
            short_id(cid(), true),
            "01920000-0000-7000-8000-0000000000c1"
        );
        assert_eq!(short_id("n1", false), "n1");
        assert_eq!(compact_secs(0), "0s");
        assert_eq!(compact_secs(200), "3m20s");
        assert_eq!(compact_secs(7200), "2h");
        assert_eq!(compact_secs(90_061), "1d1h");
        assert_eq!(relative(NOW, NOW.plus_millis(600_000)), "in 10m");
        assert_eq!(relative(NOW.plus_millis(5_000), NOW), "5s ago");
        assert_eq!(relative(NOW, NOW.plus_millis(200)), "now");
    }

    fn allocation() -> Allocation {
        Allocation {
            id: aid(),
            session_id: SessionId::new("s-1").unwrap(),
            tenant: Default::default(),
            pool: PoolName::new("demo").unwrap(),
            container_id: cid(),
            node: NodeId::new("n1").unwrap(),
            ipv6: Some("fd36:1::5".parse().unwrap()),
            port: 8080,
            url: Some("http://[fd36:1::5]:8080".into()),
            created_at: NOW,
            expires_at: NOW.plus_millis(600_000),
            max_expires_at: None,
            idempotency_key: None,
            state: AllocationState::Active,
            released_at: None,
            release_reason: None,
            metadata: Default::default(),
            settings: None,
            workspace: None,
            token_sha256: None,
            access: None,
            cost: None,
            location: None,
            tier: None,
        }
    }

    #[test]
    fn allocation_detail_has_full_ids_url_and_expiry() {
        assert_eq!(
            allocation_detail(&allocation(), style()),
            "allocation:  01920000-0000-7000-8000-0000000000a1\n\
             session:     s-1\n\
             pool:        demo\n\
             container:   01920000-0000-7000-8000-0000000000c1\n\
             node:        n1\n\
             url:         http://[fd36:1::5]:8080\n\
             state:       active\n\
             expires:     2026-09-21T14:23:20.000Z (in 10m)\n"
        );
    }

    #[test]
    fn a_pending_allocation_shows_no_container_node_or_expiry() {
        let mut pending = allocation();
        pending.state = AllocationState::Pending;
        pending.container_id = ContainerId::nil();
        pending.node = NodeId::unassigned();
        pending.ipv6 = None;
        pending.url = None;
        assert_eq!(
            allocation_detail(&pending, style()),
            "allocation:  01920000-0000-7000-8000-0000000000a1\n\
             session:     s-1\n\
             pool:        demo\n\
             state:       pending\n"
        );
        let table = allocations_table(&[pending], style());
        let row = table.lines().nth(1).unwrap();
        assert!(row.contains("pending"), "{row}");
        assert_eq!(
            row.split_whitespace().nth(3),
            Some("-"),
            "no container: {row}"
        );
    }

    #[test]
    fn allocations_table_short_ids_and_released_state() {
        let mut released = allocation();
        released.state = AllocationState::Released;
        released.release_reason = Some(ReleaseReason::Expired);
        assert_eq!(
            allocations_table(&[allocation(), released], style()),
            "ID            SESSION  POOL  CONTAINER     NODE  URL                      STATE              EXPIRES\n\
             0000000000a1  s-1      demo  0000000000c1  n1    http://[fd36:1::5]:8080  active             in 10m\n\
             0000000000a1  s-1      demo  0000000000c1  n1    http://[fd36:1::5]:8080  released(expired)  -\n"
        );
    }

    #[test]
    fn containers_table_shows_health_and_address() {
        let c = Container {
            state: ContainerState::Warm,
            health: Health::Unhealthy {
                consecutive_failures: 2,
            },
            ipv6: Some("fd36:1::5".parse().unwrap()),
            ..Container::planned(
                cid(),
                PoolName::new("demo").unwrap(),
                NodeId::new("n1").unwrap(),
                1,
                8080,
                Timestamp(NOW.0 - 125_000),
            )
        };
        assert_eq!(
            containers_table(std::slice::from_ref(&c), style()),
            "ID            POOL  NODE  STATE  HEALTH        SESSION  ADDRESS            AGE\n\
             0000000000c1  demo  n1    warm   unhealthy(2)  -        [fd36:1::5]:8080  2m5s\n"
        );
        let detail = container_detail(&c, style());
        assert!(
            detail.contains("url:            http://[fd36:1::5]:8080\n"),
            "{detail}"
        );
        assert!(
            detail.contains("created:        2026-09-21T14:11:15.000Z (2m5s ago)\n"),
            "{detail}"
        );
    }

    #[test]
    fn event_lines_name_what_is_involved() {
        let e = Event {
            seq: 42,
            log_index: 99,
            at: NOW,
            kind: EventKind::ContainerReleased,
            pool: Some(PoolName::new("demo").unwrap()),
            container: Some(cid()),
            node: None,
            session: Some(SessionId::new("s-1").unwrap()),
            allocation: None,
            reason: Some("client".into()),
            detail: None,
        };
        assert_eq!(
            event_line(&e, false),
            "    42  2026-09-21T14:13:20.000Z  container_released        pool=demo  container=0000000000c1  session=s-1  reason=client"
        );
        let bare = Event {
            kind: EventKind::NodeDown,
            pool: None,
            container: None,
            session: None,
            reason: None,
            ..e
        };
        assert_eq!(
            event_line(&bare, false),
            "    42  2026-09-21T14:13:20.000Z  node_down"
        );
    }

    #[test]
    fn pool_views() {
        let mut spec = PoolSpec::new(PoolName::new("demo").unwrap(), "img:1");
        spec.min_warm = 2;
        spec.max_warm = Some(4);
        spec.env.insert("A".into(), "1".into());
        let view = PoolView {
            pool: Pool {
                spec,
                generation: 3,
                created_at: Timestamp(NOW.0 - 60_000),
                updated_at: NOW,
            },
            counts: Counts {
                total: 5,
                creating: 1,
                warm: 2,
                allocated: 2,
                releasing: 0,
                unhealthy: 0,
                outdated: 0,
                paused: 0,
            },
            wanted: 3,
            images: vec![],
        };
        assert_eq!(
            pools_table(std::slice::from_ref(&view)),
            "NAME  IMAGE  GEN  WARM  WANTED  ALLOCATED  CREATING  TOTAL  MIN  MAX  LIMIT\n\
             demo  img:1    3     2       3          2         1      5    2    4    100\n"
        );
        let d = pool_detail(&view, style());
        for line in [
            "command:      (the image's)\n",
            "warm:         2 of 3 wanted (min 2, max 4, limit 100 live)\n",
            "health:       http GET / every 1000ms, timeout 1000ms, unhealthy after 3 failures\n",
            "lease:        10m (max lifetime none, idle timeout none)\n",
            "env:          A=1\n",
            "constraints:  -\n",
            "created:      2026-09-21T14:12:20.000Z (1m ago)\n",
        ] {
            assert!(d.contains(line), "{line:?} not in\n{d}");
        }
    }

    #[test]
    fn status_and_nodes_and_cluster() {
        let counts = Counts {
            total: 3,
            creating: 0,
            warm: 2,
            allocated: 1,
            releasing: 0,
            unhealthy: 0,
            outdated: 0,
            paused: 0,
        };
        let s = StatusView {
            totals: counts,
            pools: vec![PoolStatus {
                name: PoolName::new("demo").unwrap(),
                generation: 1,
                counts,
                wanted: 2,
                waiting: 0,
                warm_seconds: 0.0,
                allocated_seconds: 0.0,
                cost: None,
                condition: None,
                min_warm: 2,
                max_warm: 2,
                max_total: 10,
            }],
            nodes: vec![NodeCounts {
                node: NodeId::new("n1").unwrap(),
                status: NodeStatus::Ready,
                counts,
                condition: None,
            }],
            applied_index: 77,
        };
        assert_eq!(
            status_view(&s),
            "totals: 3 live: 2 warm, 1 allocated, 0 creating, 0 releasing, 0 unhealthy (applied index 77)\n\
             \n\
             POOL  GEN  WANTED  WARM  ALLOCATED  CREATING  RELEASING  UNHEALTHY  TOTAL  MIN  MAX  LIMIT\n\
             demo    1       2     2          1         0          0          0      3    2    2     10\n\
             \n\
             NODE  STATUS  WARM  ALLOCATED  CREATING  RELEASING  UNHEALTHY  TOTAL\n\
             n1    ready      2          1         0          0          0      3\n"
        );
        let mut failing = s.clone();
        failing.nodes[0].condition = Some("creates are failing (3 in a row)".into());
        assert!(
            status_view(&failing).ends_with("TOTAL\nn1    ready      2          1         0          0          0      3\n\nnode n1: creates are failing (3 in a row)\n"),
            "{}",
            status_view(&failing)
        );

        let node = NodeView {
            node: Node {
                id: NodeId::new("n1").unwrap(),
                ipv6_prefix: "fd36:1::/64".into(),
                labels: BTreeMap::from([("region".to_string(), "eu".to_string())]),
                capacity: Resources {
                    cpu_millis: 4000,
                    memory_mb: 8192,
                },
                status: NodeStatus::Cordoned,
                agent_version: "0.1.0".into(),
                joined_at: NOW,
                status_changed_at: NOW,
                reason: Some("maintenance".into()),
                drain_deadline: None,
                unreachable: None,
            },
            last_heartbeat_at: Some(NOW),
            heartbeat_age_ms: Some(800),
            memory_fraction: Some(0.374),
            create_slots: Some(4),
            allocatable: Resources {
                cpu_millis: 32_000,
                memory_mb: 8192,
            },
            reserved: Resources::default(),
            counts,
            condition: None,
        };
        assert_eq!(
            nodes_table(std::slice::from_ref(&node)),
            "NODE  STATUS    PREFIX         CPU  MEMORY  MEM USED  HEARTBEAT  WARM  ALLOCATED  TOTAL  LABELS     AGENT\n\
             n1    cordoned  fd36:1::/64  4000m  8192Mi       37%     1s ago     2          1      3  region=eu  0.1.0\n"
        );
        assert_eq!(
            node_line(&node, style()),
            "node n1: cordoned (maintenance)\n"
        );
        let mut draining = node.clone();
        draining.node.status = NodeStatus::Draining;
        draining.node.reason = None;
        draining.node.drain_deadline = Some(Timestamp(NOW.0 + 300_000));
        assert_eq!(
            node_line(&draining, style()),
            "node n1: draining; allocations still on it are released at \
             2026-09-21T14:18:20.000Z (in 5m)\n"
        );

        let c = ClusterView {
            member: 2,
            leader: Some(1),
            term: 4,
            state: "follower".into(),
            members: vec![
                MemberView {
                    id: 1,
                    api_addr: "http://10.0.0.1:7070".into(),
                    role: "voter".into(),
                },
                MemberView {
                    id: 2,
                    api_addr: "http://10.0.0.2:7070".into(),
                    role: "voter".into(),
                },
            ],
            last_log_index: Some(120),
            commit_index: Some(120),
            applied_index: Some(120),
            snapshot_index: None,
            purged_index: None,
            version: None,
            build: None,
        };
        assert_eq!(
            cluster_view(&c),
            "member:  2 (follower, term 4)\n\
             leader:  1\n\
             log:     last 120, committed 120, applied 120, snapshot -, purged -\n\
             \n\
             ID  ROLE               LEADER  API\n\
             \x201  voter              yes     http://10.0.0.1:7070\n\
             \x202  voter (answering)          http://10.0.0.2:7070\n"
        );
    }

    #[test]
    fn keys_usage_and_whoami() {
        use warmpool_proto::api::{PoolUsage, Role, SessionUsage};
        let key = KeyView {
            id: "a1b2c3d4e5f6".into(),
            name: "ci".into(),
            role: Role::User,
            tenant: Some(warmpool_proto::TenantId::new("acme").unwrap()),
            created_at: Timestamp(NOW.0 - 90_000),
            revoked_at: Some(Timestamp(NOW.0 - 5_000)),
        };
        assert_eq!(
            keys_table(std::slice::from_ref(&key), style()),
            "ID            NAME  ROLE  TENANT  CREATED    REVOKED\n\
             a1b2c3d4e5f6  ci    user  acme    1m30s ago  5s ago\n"
        );
        let created = CreatedKey {
            key: KeyView {
                revoked_at: None,
                ..key.clone()
            },
            token: "wpk_a1b2c3d4e5f6_00".into(),
        };
        let text = created_key(&created, style());
        assert!(text.contains("\ntoken:    wpk_a1b2c3d4e5f6_00\n"), "{text}");
        assert!(text.contains("shown only now"), "{text}");
        assert!(key_detail(&key, style()).contains("revoked:  "));

        let on = WhoamiView {
            auth: true,
            id: Some(key.id.clone()),
            name: Some("ci".into()),
            role: Role::User,
            tenant: Some(warmpool_proto::TenantId::new("acme").unwrap()),
        };
        assert_eq!(
            whoami(&on),
            "key:     a1b2c3d4e5f6\nname:    ci\nrole:    user\ntenant:  acme\n"
        );
        let off = WhoamiView {
            auth: false,
            id: None,
            name: None,
            role: Role::Admin,
            tenant: None,
        };
        assert!(whoami(&off).starts_with("auth is off"));

        let pool = PoolName::new("demo").unwrap();
        let usage = UsageView {
            at: NOW,
            pools: vec![PoolUsage {
                pool: pool.clone(),
                warm_seconds: 7200.0,
                allocated_seconds: 1800.0,
                price_per_hour: Some(0.5),
                warm_cost: Some(1.0),
                allocated_cost: Some(0.25),
            }],
            sessions: vec![SessionUsage {
                session: SessionId::new("s1").unwrap(),
                pool,
                allocated_seconds: 360.0,
                cost: None,
            }],
        };
        assert_eq!(
            usage_view(&usage),
            "POOL  WARM H  ALLOCATED H  PRICE/H  WARM COST  ALLOCATED COST\n\
             demo   2.000        0.500   0.5000     1.0000          0.2500\n\
             \n\
             SESSION  POOL  ALLOCATED H  COST\n\
             s1       demo        0.100     -\n"
        );
    }
}
