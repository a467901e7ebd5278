//! The agent's configuration: [`RawConfig`] is what the operator typed (flags or environment),
//! [`Config`] is the same after [`RawConfig::validate`], with every value parsed into its type.
//! Nothing is started before validation succeeds, so a typo fails fast with a typed error.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use async_nats::ServerAddr;
use warmpool_proto::ids::IdError;
use warmpool_proto::{IpPrefix, NodeId};

/// The default `--max-concurrent-creates`: the ceiling of the adaptive create limit, which
/// starts at 4 and settles where the host's start latency holds (see `creates`).
pub const DEFAULT_MAX_CONCURRENT_CREATES: usize = 16;

/// The default `--state-dir`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/warmpool/agent";

/// The configuration as given, before validation. Every field mirrors one flag of the binary.
#[derive(Clone, Debug)]
pub struct RawConfig {
    /// This host's id; `None` means the hostname (up to its first dot).
    pub node_id: Option<String>,
    /// NATS server URL(s), comma-separated.
    pub nats_url: String,
    /// NATS user name.
    pub nats_user: Option<String>,
    /// NATS password.
    pub nats_password: Option<String>,
    /// CA certificate (PEM) for NATS over TLS; TLS is then required.
    pub nats_ca: Option<std::path::PathBuf>,
    /// Registry credentials for image pulls (JSON; see [`crate::images::RegistryAuth`]).
    pub registry_auth: Option<std::path::PathBuf>,
    /// Docker daemon address (`unix:///path`).
    pub docker_host: String,
    /// The container /64 of this host, e.g. `fd36:1::/64`.
    pub ipv6_prefix: String,
    /// Docker network name; `None` means `warmpool-<node>`.
    pub network: Option<String>,
    /// Node labels as `key=value`.
    pub labels: Vec<String>,
    /// Milliseconds between heartbeats.
    pub heartbeat_ms: u64,
    /// CPU offered to containers, thousandths of a core; `None` means all of the host's.
    pub cpu_millis: Option<u64>,
    /// Memory offered to containers, MiB; `None` means all of the host's.
    pub memory_mb: Option<u64>,
    /// The most container creations running at once (the adaptive limit's ceiling).
    pub max_concurrent_creates: usize,
    /// The fewest container creations the adaptive limit backs off to; equal to
    /// `max_concurrent_creates`, a fixed limit.
    pub min_concurrent_creates: usize,
    /// Milliseconds between level-triggered resyncs of the inventory with Docker.
    pub resync_ms: u64,
    /// Milliseconds between passes of the activity meter.
    pub meter_ms: u64,
    /// The OCI runtime containers are made with; dockerd's default when `None`.
    pub runtime: Option<String>,
    /// Milliseconds a new container may take to pass its first health probe.
    pub startup_grace_ms: u64,
    /// Where to serve Prometheus metrics (`/metrics`); `None`: not served.
    pub metrics_addr: Option<SocketAddr>,
    /// Whether the agent enforces network isolation (`--no-isolation` turns it off).
    pub isolation: bool,
    /// Prefixes that may open connections to a container's service port, besides the host.
    pub ingress_from: Vec<String>,
    /// The fleet's prefixes, closed to every container; empty means the default (see
    /// [`Config::fleet_prefixes`]).
    pub fleet_prefixes: Vec<String>,
    /// Where workspaces are kept: `file:///dir` or `s3://bucket[/prefix]`.
    pub workspace_store: String,
    /// Options of an S3 store (a JSON object of `object_store`'s S3 keys).
    pub workspace_store_config: Option<std::path::PathBuf>,
    /// Where the agent keeps what must outlive its process (the containers' workspace
    /// bindings), under a directory per node.
    pub state_dir: std::path::PathBuf,
}

impl Default for RawConfig {
    fn default() -> Self {
        RawConfig {
            node_id: None,
            nats_url: "nats://127.0.0.1:4222".into(),
            nats_user: None,
            nats_password: None,
            nats_ca: None,
            registry_auth: None,
            docker_host: "unix:///var/run/docker.sock".into(),
            ipv6_prefix: String::new(),
            network: None,
            labels: Vec::new(),
            heartbeat_ms: 1000,
            cpu_millis: None,
            memory_mb: None,
            max_concurrent_creates: DEFAULT_MAX_CONCURRENT_CREATES,
            min_concurrent_creates: 1,
            resync_ms: 10_000,
            meter_ms: crate::activity::METER_INTERVAL.as_millis() as u64,
            runtime: None,
            startup_grace_ms: 60_000,
            metrics_addr: None,
            isolation: true,
            ingress_from: Vec::new(),
            fleet_prefixes: Vec::new(),
            workspace_store: warmpool_workspace_store::DEFAULT_URL.into(),
            workspace_store_config: None,
            state_dir: DEFAULT_STATE_DIR.into(),
        }
    }
}

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// This host's id; part of every NATS subject and the `io.warmpool.node` label.
    pub node_id: NodeId,
    /// NATS servers.
    pub nats_servers: Vec<ServerAddr>,
    /// NATS user and password.
    pub nats_auth: Option<(String, String)>,
    /// CA certificate (PEM) for NATS over TLS; TLS is then required.
    pub nats_ca: Option<std::path::PathBuf>,
    /// Registry credentials file, read at start.
    pub registry_auth: Option<std::path::PathBuf>,
    /// Path of the Docker daemon's unix socket.
    pub docker_socket: String,
    /// The container /64.
    pub ipv6_prefix: Ipv6Prefix,
    /// Docker network name.
    pub network: String,
    /// Node labels.
    pub labels: BTreeMap<String, String>,
    /// Time between heartbeats.
    pub heartbeat: Duration,
    /// CPU override, thousandths of a core.
    pub cpu_millis: Option<u64>,
    /// Memory override, MiB.
    pub memory_mb: Option<u64>,
    /// The most container creations running at once.
    pub max_concurrent_creates: usize,
    /// The fewest the adaptive limit backs off to (`== max`: fixed).
    pub min_concurrent_creates: usize,
    /// Time between level-triggered resyncs.
    pub resync: Duration,
    /// Time between passes of the activity meter.
    pub meter: Duration,
    /// The OCI runtime containers are made with; dockerd's default when `None`.
    pub runtime: Option<String>,
    /// Time a container may take to pass its first health probe before it counts as unhealthy.
    pub startup_grace: Duration,
    /// Where `/metrics` is served, if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    /// Whether the agent owns nftables rules isolating its containers.
    pub isolation: bool,
    /// Sources allowed to reach a container's service port (the host always can).
    pub ingress_from: Vec<IpPrefix>,
    /// Destinations no container may reach: as given, or by default every unique-local
    /// address (fc00::/7) when the node's /64 is one, else the /48 holding the node's /64.
    /// The node's own /64, its network's IPv4 subnet, loopback and link-local are closed on
    /// top of these.
    pub fleet_prefixes: Vec<IpPrefix>,
    /// Where workspaces are kept (opened at start).
    pub workspace_store: String,
    /// Options of an S3 store.
    pub workspace_store_config: Option<std::path::PathBuf>,
    /// This node's own state directory (`<--state-dir>/<node>`).
    pub state_dir: std::path::PathBuf,
}

/// A configuration value that does not make sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The node id is not a valid [`NodeId`].
    #[error("--node-id: {0}")]
    NodeId(IdError),
    /// No node id was given and the hostname could not be read or used.
    #[error("--node-id not given and the hostname {0:?} is not a valid node id")]
    Hostname(String),
    /// A NATS URL does not parse.
    #[error("--nats-url {url:?}: {reason}")]
    NatsUrl {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// Only one of user and password was given.
    #[error("--nats-user and --nats-password must be given together")]
    NatsAuth,
    /// The Docker address is not a unix socket.
    #[error("--docker-host {0:?}: only unix:///path/to/docker.sock is supported")]
    DockerHost(String),
    /// The prefix is not an IPv6 /64.
    #[error("--ipv6-prefix {value:?}: {reason}")]
    Prefix {
        /// The prefix as given.
        value: String,
        /// Why.
        reason: String,
    },
    /// The network name is not one Docker accepts.
    #[error("--network {0:?}: must be letters, digits, '_', '.' or '-', starting with a letter or digit, at most 128 characters")]
    Network(String),
    /// A label is not `key=value`, or repeats a key.
    #[error("--label {0:?}: {1}")]
    Label(String, &'static str),
    /// The runtime name is not a name.
    #[error(
        "--runtime {0:?}: expected a runtime name such as crun (letters, digits, '-', '_', '.')"
    )]
    Runtime(String),
    /// The labels together are too many or too long for a heartbeat.
    #[error("--label: {0}")]
    Labels(String),
    /// A prefix flag holds something that is not a prefix.
    #[error("{flag} {value:?}: {reason}")]
    IpPrefix {
        /// The flag.
        flag: &'static str,
        /// The value.
        value: String,
        /// Why.
        reason: String,
    },
    /// A number is out of its range.
    #[error("{flag} {value}: {rule}")]
    Range {
        /// The flag.
        flag: &'static str,
        /// The value.
        value: u64,
        /// The allowed range.
        rule: &'static str,
    },
}

impl RawConfig {
    /// Checks every value and parses it into its type. `hostname` is used when no node id is
    /// given (pass [`crate::host::hostname`]'s answer); only its part before the first dot counts.
    pub fn validate(self, hostname: Option<&str>) -> Result<Config, ConfigError> {
        let node_id = match &self.node_id {
            Some(id) => NodeId::new(id.as_str()).map_err(ConfigError::NodeId)?,
            None => {
                let host = hostname.unwrap_or_default().trim();
                let short = host.split('.').next().unwrap_or_default();
                NodeId::new(short).map_err(|_| ConfigError::Hostname(host.to_string()))?
            }
        };

        let mut nats_servers = Vec::new();
        for url in self.nats_url.split(',').map(str::trim) {
            let addr = url
                .parse::<ServerAddr>()
                .map_err(|e| ConfigError::NatsUrl {
                    url: url.to_string(),
                    reason: e.to_string(),
                })?;
            if addr.host().is_empty() {
                return Err(ConfigError::NatsUrl {
                    url: url.to_string(),
                    reason: "no server address".into(),
                });
            }
            nats_servers.push(addr);
        }
        let nats_auth = match (self.nats_user, self.nats_password) {
            (Some(u), Some(p)) => Some((u, p)),
            (None, None) => None,
            _ => return Err(ConfigError::NatsAuth),
        };

        let docker_socket = match self.docker_host.strip_prefix("unix://") {
            Some(path) if path.starts_with('/') => path.to_string(),
            _ => return Err(ConfigError::DockerHost(self.docker_host)),
        };

        let ipv6_prefix = self.ipv6_prefix.parse::<Ipv6Prefix>()?;

        let network = self
            .network
            .unwrap_or_else(|| format!("warmpool-{node_id}"));
        if !network_name_ok(&network) {
            return Err(ConfigError::Network(network));
        }

        let mut labels = BTreeMap::new();
        for l in &self.labels {
            let (k, v) = l
                .split_once('=')
                .ok_or_else(|| ConfigError::Label(l.clone(), "expected key=value"))?;
            let k = k.trim();
            if k.is_empty() {
                return Err(ConfigError::Label(l.clone(), "the key is empty"));
            }
            if labels.insert(k.to_string(), v.trim().to_string()).is_some() {
                return Err(ConfigError::Label(l.clone(), "the key is given twice"));
            }
        }
        warmpool_proto::agent::check_labels(&labels).map_err(ConfigError::Labels)?;

        range(
            "--heartbeat-ms",
            self.heartbeat_ms,
            50,
            60_000,
            "50..=60000",
        )?;
        if let Some(c) = self.cpu_millis {
            range("--cpu-millis", c, 1, u64::MAX, "at least 1")?;
        }
        if let Some(m) = self.memory_mb {
            range("--memory-mb", m, 1, u64::MAX, "at least 1")?;
        }
        range(
            "--max-concurrent-creates",
            self.max_concurrent_creates as u64,
            1,
            1024,
            "1..=1024",
        )?;
        range(
            "--min-concurrent-creates",
            self.min_concurrent_creates as u64,
            1,
            self.max_concurrent_creates as u64,
            "1..=--max-concurrent-creates",
        )?;
        range("--meter-ms", self.meter_ms, 100, 600_000, "100..=600000")?;
        if let Some(rt) = &self.runtime {
            let ok = !rt.is_empty()
                && rt.len() <= 64
                && rt
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !ok {
                return Err(ConfigError::Runtime(rt.clone()));
            }
        }
        range(
            "--resync-ms",
            self.resync_ms,
            100,
            3_600_000,
            "100..=3600000",
        )?;
        range(
            "--startup-grace-ms",
            self.startup_grace_ms,
            100,
            3_600_000,
            "100..=3600000",
        )?;

        let prefixes = |flag: &'static str, list: &[String]| {
            list.iter()
                .map(|v| {
                    v.parse::<IpPrefix>()
                        .map_err(|reason| ConfigError::IpPrefix {
                            flag,
                            value: v.clone(),
                            reason,
                        })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let ingress_from = prefixes("--ingress-from", &self.ingress_from)?;
        let mut fleet_prefixes = prefixes("--fleet-prefix", &self.fleet_prefixes)?;
        if fleet_prefixes.is_empty() {
            fleet_prefixes.push(crate::isolation::rules::default_fleet(
                ipv6_prefix.network(),
            ));
        }

        let state_dir = self.state_dir.join(node_id.as_str());
        Ok(Config {
            node_id,
            nats_servers,
            nats_auth,
            nats_ca: self.nats_ca,
            registry_auth: self.registry_auth,
            docker_socket,
            ipv6_prefix,
            network,
            labels,
            heartbeat: Duration::from_millis(self.heartbeat_ms),
            cpu_millis: self.cpu_millis,
            memory_mb: self.memory_mb,
            max_concurrent_creates: self.max_concurrent_creates,
            min_concurrent_creates: self.min_concurrent_creates,
            resync: Duration::from_millis(self.resync_ms),
            meter: Duration::from_millis(self.meter_ms),
            runtime: self.runtime,
            startup_grace: Duration::from_millis(self.startup_grace_ms),
            metrics_addr: self.metrics_addr,
            isolation: self.isolation,
            ingress_from,
            fleet_prefixes,
            workspace_store: self.workspace_store,
            workspace_store_config: self.workspace_store_config,
            state_dir,
        })
    }
}

fn range(
    flag: &'static str,
    value: u64,
    min: u64,
    max: u64,
    rule: &'static str,
) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::Range { flag, value, rule });
    }
    Ok(())
}

/// Docker's rule for network names, bounded to a sane length.
fn network_name_ok(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// An IPv6 /64: the address has its low 64 bits zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv6Prefix(Ipv6Addr);

impl Ipv6Prefix {
    /// The network address (low 64 bits zero).
    pub fn network(&self) -> Ipv6Addr {
        self.0
    }

    /// Whether `ip` lies in this /64.
    pub fn contains(&self, ip: &Ipv6Addr) -> bool {
        ip.segments()[..4] == self.0.segments()[..4]
    }
}

impl fmt::Display for Ipv6Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/64", self.0)
    }
}

impl FromStr for Ipv6Prefix {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let fail = |reason: &str| ConfigError::Prefix {
            value: s.to_string(),
            reason: reason.to_string(),
        };
        if s.trim().is_empty() {
            return Err(fail(
                "required (the host's container /64, e.g. fd36:1::/64)",
            ));
        }
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| fail("expected ADDRESS/64, e.g. fd36:1::/64"))?;
        let addr: Ipv6Addr = addr.parse().map_err(|_| fail("not an IPv6 address"))?;
        if len != "64" {
            return Err(fail("the prefix length must be 64"));
        }
        if addr.segments()[4..].iter().any(|&s| s != 0) {
            return Err(fail("host bits are set: the low 64 bits must be zero"));
        }
        if addr.is_loopback() || addr.is_unspecified() || addr.is_multicast() {
            return Err(fail("not a unicast network"));
        }
        Ok(Ipv6Prefix(addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> RawConfig {
        RawConfig {
            node_id: Some("host-a".into()),
            ipv6_prefix: "fd36:1::/64".into(),
            ..RawConfig::default()
        }
    }

    #[test]
    fn defaults_validate() {
        let c = raw().validate(None).unwrap();
        assert_eq!(c.node_id.as_str(), "host-a");
        assert_eq!(c.network, "warmpool-host-a");
        assert_eq!(c.docker_socket, "/var/run/docker.sock");
        assert_eq!(c.ipv6_prefix.to_string(), "fd36:1::/64");
        assert_eq!(c.heartbeat, Duration::from_secs(1));
        assert_eq!(c.nats_servers.len(), 1);
        assert!(c.nats_auth.is_none());
        assert_eq!(c.max_concurrent_creates, 16);
        assert_eq!(c.min_concurrent_creates, 1);
    }

    #[test]
    fn node_id_defaults_to_the_short_hostname() {
        let mut r = raw();
        r.node_id = None;
        let c = r.clone().validate(Some("box-7.example.com\n")).unwrap();
        assert_eq!(c.node_id.as_str(), "box-7");
        assert!(matches!(
            r.clone().validate(None),
            Err(ConfigError::Hostname(_))
        ));
        assert!(matches!(
            r.validate(Some("bad host")),
            Err(ConfigError::Hostname(_))
        ));
        let mut r = raw();
        r.node_id = Some("a.b".into());
        assert!(matches!(r.validate(None), Err(ConfigError::NodeId(_))));
    }

    #[test]
    fn prefixes_must_be_clean_64s() {
        let ok: Ipv6Prefix = "fd36:abcd::/64".parse().unwrap();
        assert!(ok.contains(&"fd36:abcd::2".parse().unwrap()));
        assert!(!ok.contains(&"fd36:abce::2".parse().unwrap()));
        for bad in [
            "",
            "fd36:1::",
            "fd36:1::/48",
            "fd36:1::1/64",
            "nope/64",
            "::/64",
            "ff02::/64",
        ] {
            assert!(
                matches!(bad.parse::<Ipv6Prefix>(), Err(ConfigError::Prefix { .. })),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn isolation_prefixes_parse_and_the_fleet_has_a_default() {
        let c = raw().validate(None).unwrap();
        assert!(c.isolation);
        assert!(c.ingress_from.is_empty());
        assert_eq!(c.fleet_prefixes, vec!["fc00::/7".parse().unwrap()]);
        let mut r = raw();
        r.ingress_from = vec!["fd36:99::/64".into(), "192.0.2.0/24".into()];
        r.fleet_prefixes = vec!["2001:db8::/32".into()];
        let c = r.validate(None).unwrap();
        assert_eq!(c.ingress_from.len(), 2);
        assert_eq!(c.fleet_prefixes, vec!["2001:db8::/32".parse().unwrap()]);
        let mut r = raw();
        r.ingress_from = vec!["fd36:99::1/64".into()];
        assert!(matches!(
            r.validate(None),
            Err(ConfigError::IpPrefix {
                flag: "--ingress-from",
                ..
            })
        ));
    }

    #[test]
    fn too_many_or_too_long_labels_are_refused_at_start() {
        let mut r = raw();
        r.labels = (0..65).map(|i| format!("k{i}=v")).collect();
        let e = r.validate(None).unwrap_err().to_string();
        assert!(e.contains("65 labels; at most 64"), "{e}");
        let mut r = raw();
        r.labels = vec![format!("region={}", "x".repeat(300))];
        let e = r.validate(None).unwrap_err().to_string();
        assert!(e.contains("at most 253"), "{e}");
        let mut r = raw();
        r.labels = (0..64).map(|i| format!("k{i}=v")).collect();
        assert!(r.validate(None).is_ok());
    }

    #[test]
    fn labels_parse_and_refuse_garbage() {
        let mut r = raw();
        r.labels = vec!["region=eu".into(), "disk = ssd".into(), "empty=".into()];
        let c = r.validate(None).unwrap();
        assert_eq!(c.labels["region"], "eu");
        assert_eq!(c.labels["disk"], "ssd");
        assert_eq!(c.labels["empty"], "");
        for bad in [vec!["novalue"], vec!["=x"], vec!["a=1", "a=2"]] {
            let mut r = raw();
            r.labels = bad.iter().map(|s| s.to_string()).collect();
            assert!(
                matches!(r.validate(None), Err(ConfigError::Label(..))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn other_values_are_checked() {
        let mut r = raw();
        r.nats_user = Some("u".into());
        assert_eq!(r.validate(None).unwrap_err(), ConfigError::NatsAuth);

        let mut r = raw();
        r.nats_url = "nats://a:4222, nats://b:4222".into();
        assert_eq!(r.validate(None).unwrap().nats_servers.len(), 2);

        let mut r = raw();
        r.nats_url = "http://x".into();
        assert!(matches!(r.validate(None), Err(ConfigError::NatsUrl { .. })));

        // A trailing comma names no server: refused, not a server with no address.
        let mut r = raw();
        r.nats_url = "nats://a:4222,".into();
        assert!(matches!(r.validate(None), Err(ConfigError::NatsUrl { .. })));

        let mut r = raw();
        r.docker_host = "tcp://1.2.3.4:2375".into();
        assert!(matches!(r.validate(None), Err(ConfigError::DockerHost(_))));

        let mut r = raw();
        r.network = Some("-bad".into());
        assert!(matches!(r.validate(None), Err(ConfigError::Network(_))));

        // The longest node id still makes a valid default network name.
        let mut r = raw();
        r.node_id = Some("n".repeat(64));
        assert_eq!(r.validate(None).unwrap().network.len(), 73);

        let mut r = raw();
        r.heartbeat_ms = 0;
        assert!(matches!(
            r.validate(None),
            Err(ConfigError::Range {
                flag: "--heartbeat-ms",
                ..
            })
        ));

        let mut r = raw();
        r.max_concurrent_creates = 0;
        assert!(matches!(r.validate(None), Err(ConfigError::Range { .. })));

        // The floor may not be above the ceiling; equal is a fixed limit.
        let mut r = raw();
        r.max_concurrent_creates = 4;
        r.min_concurrent_creates = 5;
        assert!(matches!(
            r.clone().validate(None),
            Err(ConfigError::Range {
                flag: "--min-concurrent-creates",
                ..
            })
        ));
        r.min_concurrent_creates = 4;
        assert_eq!(r.validate(None).unwrap().min_concurrent_creates, 4);

        let mut r = raw();
        r.memory_mb = Some(0);
        assert!(matches!(
            r.validate(None),
            Err(ConfigError::Range {
                flag: "--memory-mb",
                ..
            })
        ));
    }
}
