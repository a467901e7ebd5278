//! Network isolation: the nftables table the agent owns for its bridge.
//!
//! [`rules`] writes the rule set from plain values (what it allows and why is documented
//! there); `nft` applies it; this module gathers the values from Docker and decides when.
//!
//! ## When the rules are applied
//!
//! - At start, before anything is adopted or created ([`Isolation::start`]): a failure there
//!   stops the agent, because running containers without the rules would hand out containers
//!   that reach each other and the fleet. `--no-isolation` turns all of this off, loudly.
//! - After each create, once Docker has given the container its addresses and before the
//!   control plane hears of it: a container is never handed out before its own port is open to
//!   the ingress prefixes. (Until then it is closed both ways, as every unknown address is.)
//!   Only its own elements are added ([`Isolation::admit`]): a refill of many containers
//!   neither reads Docker's whole list nor rebuilds every rule once per container. When the
//!   rules applied cannot take it (its policy has no chain there yet), the whole set is
//!   rebuilt.
//! - After each destroy, its elements are deleted ([`Isolation::forget`]).
//! - At every resync interval, and when the Docker event stream comes back (dockerd
//!   restarted): the whole set is rebuilt from what Docker says now, so a rule never outlives
//!   its container for long and a table flushed by hand comes back. A single add or delete
//!   that `nft` refuses, or an add whose address the rules still give to a container gone,
//!   rebuilds the whole set at once.
//!
//! The table is the agent's alone; the rules of dockerd live in other tables and are not
//! touched. The table is removed with the node's network (or its network namespace); a rule
//! set left behind by a stopped agent keeps its containers closed, which is the safe way to
//! fail.
//!
//! Every sync reads the containers from Docker (labels for the pool's port and egress policy,
//! the network's endpoints for the addresses) rather than from the inventory, so the rules
//! follow what runs, including containers the inventory has not adopted yet.

mod nft;
pub mod rules;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bollard::Docker;
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use warmpool_proto::{IpPrefix, LABEL_ID};

use crate::agent::Shared;
use crate::config::Config;
use crate::docker::{DockerError, Driver, Observation};
use crate::labels;
use crate::network::{self, NetworkError};
pub use nft::NftError;
use rules::{Member, RulesError, Settings};

/// Why the rules could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum IsolationError {
    /// Docker could not say what runs.
    #[error("isolation: {0}")]
    Docker(#[from] DockerError),
    /// The network could not be read.
    #[error("isolation: {0}")]
    Network(#[from] NetworkError),
    /// The rules could not be written.
    #[error("isolation: {0}")]
    Rules(#[from] RulesError),
    /// `nft` did not apply them.
    #[error("isolation: {0}")]
    Nft(#[from] NftError),
    /// Bridged traffic would bypass the rules.
    #[error("isolation: {0}")]
    BridgeFilter(String),
}

/// The node's isolation rules, or nothing under `--no-isolation`.
pub struct Isolation {
    inner: Option<Enforcer>,
    /// Asks the sync loop for a pass now.
    poke: Notify,
}

struct Enforcer {
    docker: Docker,
    network: String,
    table: String,
    /// The configured fleet prefixes and the node's /64 (the network's IPv4 subnet is added
    /// at each sync).
    fleet: Vec<IpPrefix>,
    ingress_from: Vec<IpPrefix>,
    /// Syncs asked for so far (each caller takes the next number).
    asked: AtomicU64,
    /// Single containers' changes waiting for the next `nft` run.
    changes: std::sync::Mutex<Vec<Change>>,
    /// Serialises syncs; what the last one applied.
    last: Mutex<Applied>,
}

/// A change to one container's rules, waiting to be applied with the others queued.
enum Change {
    /// Add this container; the answer says whether it was added (else the whole set must be
    /// rebuilt for it).
    Add(Member, tokio::sync::oneshot::Sender<bool>),
    /// Take out the container of this name.
    Remove(String),
}

impl Enforcer {
    fn queue(&self, change: Change) {
        self.changes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(change);
    }

    /// Applies every queued change in one `nft` run (a refill's creates that queue up while
    /// one runs share the next, as the whole rebuilds do). Who queued a change and then gets
    /// here finds it applied, by this call or by the one before it.
    async fn apply_changes(&self, poke: &Notify) {
        let mut last = self.last.lock().await;
        let batch = std::mem::take(&mut *self.changes.lock().unwrap_or_else(|e| e.into_inner()));
        if batch.is_empty() {
            return;
        }
        let (mut removes, mut adds, mut answers) = (Vec::new(), Vec::new(), Vec::new());
        for change in batch {
            match change {
                Change::Remove(name) => removes.push(name),
                Change::Add(m, tx) => {
                    adds.push(m);
                    answers.push(Some(tx));
                }
            }
        }
        let mut answer = |i: usize, added: bool| {
            if let Some(tx) = answers[i].take() {
                let _ = tx.send(added);
            }
        };
        // Not known (a change was refused since the last rebuild): only a rebuild can tell.
        let Some(known) = last.known.as_mut() else {
            (0..adds.len()).for_each(|i| answer(i, false));
            return;
        };
        let plan = known.plan(&self.table, &removes, &adds);
        plan.refused.iter().for_each(|&i| answer(i, false));
        if plan.script.is_empty() {
            return;
        }
        let applying = std::time::Instant::now();
        match nft::apply(&plan.script).await {
            Ok(()) => {
                metrics::histogram!("warmpool_agent_isolation_apply_seconds", "how" => "change")
                    .record(applying.elapsed().as_secs_f64());
                known.apply(&plan, &adds);
                plan.added.iter().for_each(|&i| answer(i, true));
            }
            Err(err) => {
                debug!(error = %err, added = plan.added.len(), removed = plan.removed.len(), "adding or removing single containers' rules was refused; rebuilding them all");
                last.known = None;
                plan.added.iter().for_each(|&i| answer(i, false));
                poke.notify_one();
            }
        }
    }
}

/// What the last sync applied.
#[derive(Default)]
struct Applied {
    /// Every sync asked for up to this number is covered: the last sync began after they
    /// were asked for, so it read Docker after their containers were made.
    covers: u64,
    /// What the kernel's table holds; `None` before the first rebuild and after a refused
    /// change (until the next rebuild).
    known: Option<rules::Known>,
}

/// The rules' view of container `name` with `labels` at these addresses; `None` for a
/// container without a service port label (unmanageable: the resync removes it, and until
/// then it stays closed).
fn member_of(
    name: &str,
    labels: &HashMap<String, String>,
    ipv6: Option<std::net::Ipv6Addr>,
    ipv4: Option<std::net::Ipv4Addr>,
) -> Option<Member> {
    let port = labels
        .get(warmpool_proto::LABEL_PORT)
        .and_then(|p| p.parse().ok())?;
    // One container's bad label must not stop the rules of all the others: it gets the
    // closed policy.
    let egress = match labels::egress_of(labels) {
        Ok(e) => match e.validate() {
            Ok(()) => e,
            Err(err) => {
                warn!(container = name, error = %err, "unusable egress policy: the container gets none");
                Default::default()
            }
        },
        Err(err) => {
            warn!(container = name, error = %err, "unusable egress label: the container gets none");
            Default::default()
        }
    };
    Some(Member {
        name: labels
            .get(LABEL_ID)
            .cloned()
            .unwrap_or_else(|| name.to_string()),
        ipv6,
        ipv4,
        port,
        extra_ports: labels::extra_ports_of(labels),
        egress,
    })
}

/// The kernel settings without which traffic between two containers of one bridge never
/// reaches the `forward` hook.
const BRIDGE_FILTERS: &[&str] = &[
    "/proc/sys/net/bridge/bridge-nf-call-ip6tables",
    "/proc/sys/net/bridge/bridge-nf-call-iptables",
];

/// Turns the bridge filters on in the agent's network namespace (Docker turns the IPv4 one on
/// itself; `br_netfilter` must be loaded, as Docker loads it).
async fn ensure_bridge_filters() -> Result<(), IsolationError> {
    for path in BRIDGE_FILTERS {
        match tokio::fs::read_to_string(path).await {
            Ok(v) if v.trim() == "1" => {}
            Ok(_) => {
                tokio::fs::write(path, "1\n").await.map_err(|e| {
                    IsolationError::BridgeFilter(format!("turning on {path}: {e}"))
                })?;
                info!(path, "turned on bridge filtering, so that traffic between containers meets the rules");
            }
            Err(e) => {
                return Err(IsolationError::BridgeFilter(format!(
                    "{path}: {e}: load br_netfilter (modprobe br_netfilter), or run the agent with --no-isolation"
                )))
            }
        }
    }
    Ok(())
}

impl Isolation {
    /// Applies the rules for what the node runs now, or warns that there are none. A failure
    /// is fatal to the agent's start.
    pub async fn start(
        config: &Config,
        docker: &Docker,
        driver: &Driver,
    ) -> Result<Isolation, IsolationError> {
        if !config.isolation {
            warn!("--no-isolation: NO NETWORK ISOLATION. Containers reach each other (IPv6 on this host, anything across hosts), this host's services and the whole fleet; pool egress policies are not enforced");
            return Ok(Isolation {
                inner: None,
                poke: Notify::new(),
            });
        }
        ensure_bridge_filters().await?;
        let mut fleet = config.fleet_prefixes.clone();
        fleet.extend(IpPrefix::covering(
            IpAddr::V6(config.ipv6_prefix.network()),
            64,
        ));
        let iso = Isolation {
            inner: Some(Enforcer {
                docker: docker.clone(),
                network: config.network.clone(),
                table: rules::table_name(&config.node_id),
                fleet,
                ingress_from: config.ingress_from.clone(),
                asked: AtomicU64::new(0),
                changes: std::sync::Mutex::new(Vec::new()),
                last: Mutex::new(Applied::default()),
            }),
            poke: Notify::new(),
        };
        let n = iso.sync_with(driver).await?;
        if let Some(e) = &iso.inner {
            info!(table = %format!("inet {}", e.table), containers = n, "network isolation rules applied");
        }
        Ok(iso)
    }

    /// Whether rules are enforced.
    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Asks for a sync soon (after a destroy, or when dockerd came back).
    pub fn poke(&self) {
        self.poke.notify_one();
    }

    /// Opens the rules for `container`, just started: its addresses and ports are added to the
    /// rules applied last, without reading Docker or rebuilding the others' rules. When those
    /// rules cannot take it (no chain for its policy yet, an element of a container gone
    /// meanwhile still holds its address, the table flushed by hand), the whole set is
    /// rebuilt from what Docker runs, as [`Isolation::sync`]. Without isolation, does nothing.
    pub async fn admit(
        &self,
        shared: &Shared,
        container: &Observation,
    ) -> Result<(), IsolationError> {
        let Some(e) = &self.inner else {
            return Ok(());
        };
        let member = member_of(
            &container.name,
            &container.labels,
            container.ipv6,
            container.ipv4,
        );
        if let Some(member) = member.filter(|m| m.ipv6.is_some() || m.ipv4.is_some()) {
            let (tx, rx) = tokio::sync::oneshot::channel();
            e.queue(Change::Add(member, tx));
            e.apply_changes(&self.poke).await;
            if rx.await == Ok(true) {
                return Ok(());
            }
        }
        self.sync(shared).await.map(|_| ())
    }

    /// Takes container `name` ([`Member::name`]: its Warmpool id), just removed from Docker,
    /// out of the rules: only its own elements are deleted. When that fails (the rules were
    /// rebuilt or flushed meanwhile), a whole rebuild is asked for. Its address is closed
    /// either way until a container that has it is admitted. Without isolation, or for a
    /// container the rules do not cover, does nothing.
    pub async fn forget(&self, name: &str) {
        let Some(e) = &self.inner else {
            return;
        };
        e.queue(Change::Remove(name.to_string()));
        e.apply_changes(&self.poke).await;
    }

    /// Rebuilds and applies the rules from what Docker runs now; the number of containers
    /// they cover. Without isolation, does nothing.
    pub async fn sync(&self, shared: &Shared) -> Result<usize, IsolationError> {
        self.sync_with(&shared.driver).await
    }

    async fn sync_with(&self, driver: &Driver) -> Result<usize, IsolationError> {
        let Some(e) = &self.inner else {
            return Ok(0);
        };
        // Group commit: callers that queue up while a sync runs (a refill's creates, each
        // needing its container's rules before it is reported) are all covered by the next
        // one, instead of each rebuilding every container's rules in turn.
        let mine = e.asked.fetch_add(1, Ordering::SeqCst) + 1;
        let mut last = e.last.lock().await;
        if last.covers >= mine {
            return Ok(last.known.as_ref().map_or(0, rules::Known::len));
        }
        let covers = e.asked.load(Ordering::SeqCst);
        let net = network::attached(&e.docker, &e.network).await?;
        let listed = driver.list().await?;
        let mut members: Vec<Member> = listed
            .iter()
            .filter_map(|c| {
                // Not running, or not on this network: no address to key rules on.
                let (ipv6, ipv4) = net.endpoints.get(&c.docker_id).copied()?;
                member_of(&c.name, &c.labels, ipv6, ipv4)
            })
            .collect();
        members.sort_by(|a, b| a.name.cmp(&b.name));
        let mut fleet = e.fleet.clone();
        fleet.extend(
            net.ipv4_subnets
                .iter()
                .filter_map(|s| s.parse::<IpPrefix>().ok()),
        );
        let settings = Settings {
            table: e.table.clone(),
            bridge: net.bridge,
            fleet,
            ingress_from: e.ingress_from.clone(),
        };
        let script = rules::script(&settings, &members)?;
        // Applied every time, changed or not: the kernel's copy may have been flushed.
        let applying = std::time::Instant::now();
        nft::apply(&script).await?;
        metrics::histogram!("warmpool_agent_isolation_apply_seconds", "how" => "rebuild")
            .record(applying.elapsed().as_secs_f64());
        last.covers = covers;
        let n = members.len();
        last.known = Some(rules::Known::of(members));
        Ok(n)
    }
}

/// Re-applies the rules every resync interval and whenever poked, until `cancel`.
pub async fn run(shared: Arc<Shared>, cancel: CancellationToken) {
    if !shared.isolation.enabled() {
        return;
    }
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(shared.config.resync) => {}
            _ = shared.isolation.poke.notified() => {}
        }
        // The kernel keeps the rules while dockerd is away; they are re-applied when it is back.
        if shared.runtime.outage().is_some() {
            continue;
        }
        if let Err(e) = shared.isolation.sync(&shared).await {
            warn!(error = %e, "re-applying the isolation rules failed; the previous rules stay; retrying");
        }
    }
}
