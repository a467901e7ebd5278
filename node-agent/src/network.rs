//! The per-host Docker bridge network carrying the node's IPv6 /64.
//!
//! Containers get addresses straight from the /64, routed between hosts with no NAT and no
//! port mapping. Inter-container traffic on the bridge is off (`enable_icc=false`), but that
//! filters IPv4 only: the `isolation` module's nftables rules are what keep one tenant's
//! container from another's, from the host and from the fleet.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use bollard::models::{Ipam, IpamConfig, NetworkCreateRequest, NetworkInspect};
use bollard::query_parameters::InspectNetworkOptions;
use bollard::Docker;
use tracing::{info, warn};
use warmpool_proto::{NodeId, LABEL_NODE};

use crate::config::Ipv6Prefix;
use crate::docker::is_status;

const ICC_OPTION: &str = "com.docker.network.bridge.enable_icc";
const BRIDGE_NAME_OPTION: &str = "com.docker.network.bridge.name";

/// Why the node's network could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// A network of that name exists but is not the one configured.
    #[error("docker network {name} exists with {found}, but this agent is configured for IPv6 subnet {want}: remove the network (docker network rm {name}) or fix --ipv6-prefix/--network")]
    Mismatch {
        /// Network name.
        name: String,
        /// The configured /64.
        want: String,
        /// What the existing network has.
        found: String,
    },
    /// Docker refused the network.
    #[error("creating docker network {name} with subnet {prefix}: {cause}")]
    Create {
        /// Network name.
        name: String,
        /// The /64.
        prefix: String,
        /// Docker's error.
        cause: bollard::errors::Error,
    },
    /// The network is gone.
    #[error("docker network {0} does not exist (any more)")]
    Missing(String),
    /// Docker failed otherwise.
    #[error("inspecting docker network {name}: {cause}")]
    Inspect {
        /// Network name.
        name: String,
        /// Docker's error.
        cause: bollard::errors::Error,
    },
}

/// Makes sure network `name` exists with IPv6 subnet `prefix`; creates it if missing.
///
/// Idempotent. An existing network of that name with another subnet (or without IPv6) is an
/// error, never silently reused or replaced: containers of another configuration may be on it.
pub async fn ensure(
    docker: &Docker,
    name: &str,
    prefix: &Ipv6Prefix,
    node: &NodeId,
) -> Result<(), NetworkError> {
    if let Some(existing) = inspect(docker, name).await? {
        return check(name, prefix, &existing);
    }
    let request = NetworkCreateRequest {
        name: name.to_string(),
        driver: Some("bridge".into()),
        enable_ipv6: Some(true),
        ipam: Some(Ipam {
            driver: Some("default".into()),
            config: Some(vec![IpamConfig {
                subnet: Some(prefix.to_string()),
                ..Default::default()
            }]),
            options: None,
        }),
        options: Some(HashMap::from([(
            ICC_OPTION.to_string(),
            "false".to_string(),
        )])),
        labels: Some(HashMap::from([(LABEL_NODE.to_string(), node.to_string())])),
        ..Default::default()
    };
    match crate::telemetry::docker_call("create network", docker.create_network(request)).await {
        Ok(_) => {
            info!(network = name, %prefix, "created docker network");
            Ok(())
        }
        Err(cause) => {
            // Another process may have created it in between: if it now exists as wanted,
            // that is success. Otherwise Docker's error says why (e.g. the subnet overlaps
            // another network's).
            match inspect(docker, name).await? {
                Some(existing) => check(name, prefix, &existing),
                None => Err(NetworkError::Create {
                    name: name.to_string(),
                    prefix: prefix.to_string(),
                    cause,
                }),
            }
        }
    }
}

/// What the isolation rules need of the node's network, as Docker has it now.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Attached {
    /// The Linux bridge interface carrying it.
    pub bridge: String,
    /// Its IPv4 subnets (Docker gives every bridge network one).
    pub ipv4_subnets: Vec<String>,
    /// Addresses of each attached (running) container, by Docker id.
    pub endpoints: HashMap<String, (Option<Ipv6Addr>, Option<Ipv4Addr>)>,
}

/// The node's network now: its bridge interface, IPv4 subnets and attached containers.
/// A missing network is an error (the agent made it at start; someone removed it since).
pub async fn attached(docker: &Docker, name: &str) -> Result<Attached, NetworkError> {
    let net = inspect(docker, name)
        .await?
        .ok_or_else(|| NetworkError::Missing(name.to_string()))?;
    Ok(attached_of(&net))
}

fn attached_of(net: &NetworkInspect) -> Attached {
    let bridge = net
        .options
        .as_ref()
        .and_then(|o| o.get(BRIDGE_NAME_OPTION))
        .cloned()
        // Docker's own name for a user-defined bridge: `br-` and the id's first 12 digits.
        .unwrap_or_else(|| {
            let id = net.id.as_deref().unwrap_or_default();
            format!("br-{}", id.get(..12).unwrap_or(id))
        });
    let ipv4_subnets = net
        .ipam
        .as_ref()
        .and_then(|i| i.config.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.subnet.clone())
        .filter(|s| !s.contains(':'))
        .collect();
    fn addr<A: std::str::FromStr>(s: &Option<String>) -> Option<A> {
        s.as_deref()
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
    }
    let endpoints = net
        .containers
        .iter()
        .flatten()
        .map(|(id, ep)| (id.clone(), (addr(&ep.ipv6_address), addr(&ep.ipv4_address))))
        .collect();
    Attached {
        bridge,
        ipv4_subnets,
        endpoints,
    }
}

async fn inspect(docker: &Docker, name: &str) -> Result<Option<NetworkInspect>, NetworkError> {
    match crate::telemetry::docker_call(
        "inspect network",
        docker.inspect_network(name, None::<InspectNetworkOptions>),
    )
    .await
    {
        Ok(n) => Ok(Some(n)),
        Err(e) if is_status(&e, 404) => Ok(None),
        Err(cause) => Err(NetworkError::Inspect {
            name: name.to_string(),
            cause,
        }),
    }
}

/// Whether an existing network is the configured one.
fn check(name: &str, prefix: &Ipv6Prefix, net: &NetworkInspect) -> Result<(), NetworkError> {
    let subnets = v6_subnets(net);
    let ipv6 = net.enable_ipv6.unwrap_or(false);
    if !ipv6 || !subnets.contains(prefix) {
        let found = if subnets.is_empty() || !ipv6 {
            "no IPv6 subnet".to_string()
        } else {
            let list: Vec<String> = subnets.iter().map(|s| s.to_string()).collect();
            format!("IPv6 subnet {}", list.join(", "))
        };
        return Err(NetworkError::Mismatch {
            name: name.to_string(),
            want: prefix.to_string(),
            found,
        });
    }
    let icc = net
        .options
        .as_ref()
        .and_then(|o| o.get(ICC_OPTION))
        .map(String::as_str);
    if icc != Some("false") {
        warn!(
            network = name,
            "existing network allows inter-container traffic (enable_icc is not false)"
        );
    }
    Ok(())
}

/// The IPv6 /64 subnets of a network's IPAM config (others are ignored).
fn v6_subnets(net: &NetworkInspect) -> Vec<Ipv6Prefix> {
    net.ipam
        .as_ref()
        .and_then(|i| i.config.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.subnet.as_deref())
        .filter_map(|s| {
            // Docker may print the subnet in another (equivalent) form: normalise.
            let (addr, len) = s.split_once('/')?;
            let addr: Ipv6Addr = addr.parse().ok()?;
            format!("{addr}/{len}").parse().ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(ipv6: bool, subnets: &[&str]) -> NetworkInspect {
        NetworkInspect {
            enable_ipv6: Some(ipv6),
            ipam: Some(Ipam {
                config: Some(
                    subnets
                        .iter()
                        .map(|s| IpamConfig {
                            subnet: Some(s.to_string()),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn attached_containers_and_the_bridge_are_read() {
        let mut n = net(true, &["172.20.0.0/16", "fd36:5::/64"]);
        n.id = Some("0123456789abcdef0123".into());
        n.containers = Some(HashMap::from([(
            "c1".to_string(),
            bollard::models::EndpointResource {
                ipv4_address: Some("172.20.0.2/16".into()),
                ipv6_address: Some("fd36:5::9/64".into()),
                ..Default::default()
            },
        )]));
        let a = attached_of(&n);
        assert_eq!(a.bridge, "br-0123456789ab");
        assert_eq!(a.ipv4_subnets, vec!["172.20.0.0/16".to_string()]);
        assert_eq!(
            a.endpoints["c1"],
            (
                Some("fd36:5::9".parse().unwrap()),
                Some("172.20.0.2".parse().unwrap())
            )
        );
        n.options = Some(HashMap::from([(
            BRIDGE_NAME_OPTION.to_string(),
            "wp0".to_string(),
        )]));
        assert_eq!(attached_of(&n).bridge, "wp0");
    }

    #[test]
    fn existing_networks_are_checked() {
        let p: Ipv6Prefix = "fd36:5::/64".parse().unwrap();
        check("n", &p, &net(true, &["172.20.0.0/16", "fd36:5:0:0::/64"])).unwrap();
        let err = check("n", &p, &net(true, &["172.20.0.0/16", "fd36:6::/64"])).unwrap_err();
        assert!(err.to_string().contains("fd36:6::/64"), "{err}");
        assert!(check("n", &p, &net(false, &["172.20.0.0/16"])).is_err());
        assert!(check("n", &p, &net(true, &[])).is_err());
    }
}
