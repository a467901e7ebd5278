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
//! - After each destroy, at every resync interval, and when the Docker event stream comes back
//!   (dockerd restarted): the whole set is rebuilt from what Docker says now, so a rule never
//!   outlives its container for long and a table flushed by hand comes back.
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
use crate::docker::{DockerError, Driver};
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
    /// Serialises syncs; what the last one applied.
    last: Mutex<Applied>,
}

/// What the last sync applied.
#[derive(Default)]
struct Applied {
    script: Option<String>,
    /// Every sync asked for up to this number is covered: the sync that applied `script`
    /// began after they were asked for, so it read Docker after their containers were made.
    covers: u64,
    /// The containers the rules cover.
    members: usize,
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
            return Ok(last.members);
        }
        let covers = e.asked.load(Ordering::SeqCst);
        let net = network::attached(&e.docker, &e.network).await?;
        let listed = driver.list().await?;
        let mut members = Vec::new();
        for c in listed {
            let Some((ipv6, ipv4)) = net.endpoints.get(&c.docker_id).copied() else {
                continue; // not running, or not on this network: no address to key rules on
            };
            let Some(port) = c
                .labels
                .get(warmpool_proto::LABEL_PORT)
                .and_then(|p| p.parse().ok())
            else {
                continue; // unmanageable: the resync removes it; meanwhile it stays closed
            };
            // One container's bad label must not stop the rules of all the others: it gets
            // the closed policy.
            let egress = match labels::egress_of(&c.labels) {
                Ok(e) => match e.validate() {
                    Ok(()) => e,
                    Err(err) => {
                        warn!(container = c.name, error = %err, "unusable egress policy: the container gets none");
                        Default::default()
                    }
                },
                Err(err) => {
                    warn!(container = c.name, error = %err, "unusable egress label: the container gets none");
                    Default::default()
                }
            };
            members.push(Member {
                name: c
                    .labels
                    .get(LABEL_ID)
                    .cloned()
                    .unwrap_or_else(|| c.name.clone()),
                ipv6,
                ipv4,
                port,
                extra_ports: labels::extra_ports_of(&c.labels),
                egress,
            });
        }
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
        nft::apply(&script).await?;
        if last.script.as_deref() != Some(script.as_str()) {
            debug!(containers = members.len(), "isolation rules changed");
            last.script = Some(script);
        }
        last.covers = covers;
        last.members = members.len();
        Ok(members.len())
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
