//! The nftables rule set of one node, built from plain values: [`script`] takes the settings
//! and the containers, and returns the text `nft -f -` applies. No IO here.
//!
//! ## What the rules say
//!
//! One table, `table inet <name>` after the node, replaced whole in one transaction (declare,
//! delete, declare again: `nft` applies a file atomically, so there is never a moment without
//! rules, and nothing of an older rule set survives). Its base chains sit on the `input` and
//! `forward` hooks at priority `filter - 10`. A `drop` in any base chain is final, so Docker's
//! own iptables rules (at `filter`) cannot undo it; an `accept` here only lets a packet on to
//! them.
//!
//! - **input** from the bridge (a container talking to its host, on any of the host's
//!   addresses: agent, dockerd, metrics, sshd...): only replies to connections the host made
//!   and neighbour discovery; everything else is dropped.
//! - **forward** from the bridge (a container's outbound connections): replies pass; new
//!   connections go through the chain of the source container's egress policy, found by its
//!   address in a verdict map. An address not in the map (a container the agent has no rules
//!   for yet, or a forged source) reaches nothing. Every policy first drops the fleet's
//!   prefixes (the node's own /64 and IPv4 subnet, the configured fleet ranges, link-local,
//!   loopback); `none` then drops the rest, `internet` drops private ranges and passes the
//!   rest, `allow` passes its prefixes (and ports) and drops the rest.
//! - **forward** to the bridge (connections into a container): replies pass; a new connection
//!   passes only to a container's own service port (TCP), and only from the configured
//!   ingress prefixes. The host itself needs no rule: its own traffic to a container (health
//!   probes, a client on the host) leaves through `output`, which is not filtered.
//!
//! Traffic between two containers of this host never leaves the bridge; it reaches the
//! `forward` hook only through `br_netfilter` with `bridge-nf-call-ip6tables` and
//! `bridge-nf-call-iptables` on, which the agent checks at start (the `isolation` module).
//! It then comes in *and* goes out through the bridge, and the `from_container` chain drops it
//! as it would any packet to the node's own /64. (A `bridge` family table matching the bridge
//! by name would not need `br_netfilter`, but `meta ibrname` is not in every kernel: not in
//! this project's test machines'.)
//!
//! The default is therefore closed: with no container known, containers reach nothing and
//! nothing but the host reaches them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use warmpool_proto::{Egress, IpPrefix, NodeId};

/// Private and special IPv4 ranges, closed to `internet` egress.
pub const PRIVATE_V4: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
];

/// Private and special IPv6 ranges, closed to `internet` egress.
pub const PRIVATE_V6: &[&str] = &[
    "::/127",
    "::ffff:0:0/96",
    "64:ff9b:1::/48",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
];

/// Ranges closed to every egress policy, whatever the fleet prefixes are: loopback,
/// link-local (IPv6 and the IPv4 range cloud metadata services answer on) and multicast.
pub const ALWAYS_CLOSED: &[&str] = &[
    "::1/128",
    "fe80::/10",
    "ff00::/8",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "224.0.0.0/4",
];

/// What the rules of one node depend on, besides its containers.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Name of both tables (see [`table_name`]).
    pub table: String,
    /// The Linux bridge of the node's Docker network.
    pub bridge: String,
    /// Destinations no container may reach: the fleet's prefixes, the node's /64 and IPv4
    /// subnet. [`ALWAYS_CLOSED`] is added by [`script`].
    pub fleet: Vec<IpPrefix>,
    /// Sources that may open connections to a container's service port (the host itself
    /// always can).
    pub ingress_from: Vec<IpPrefix>,
}

/// One container's part of the rules.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    /// For the rule comments: the Warmpool id (or Docker's name).
    pub name: String,
    /// Its address on the node's /64.
    pub ipv6: Option<Ipv6Addr>,
    /// Its IPv4 address on the node's network.
    pub ipv4: Option<Ipv4Addr>,
    /// Its service port.
    pub port: u16,
    /// Its other named ports, open to the same sources as the service port.
    pub extra_ports: Vec<u16>,
    /// Its egress policy.
    pub egress: Egress,
}

/// Why a rule set cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RulesError {
    /// The bridge name is not a Linux interface name (it goes into the rules quoted).
    #[error("bridge interface name {0:?} is not a usable interface name")]
    Bridge(String),
    /// A prefix of an allow list does not parse (the control plane validates them; an older
    /// or foreign container label may still hold garbage).
    #[error("container {name}: egress prefix {prefix:?}: {reason}")]
    Prefix {
        /// The container.
        name: String,
        /// The prefix.
        prefix: String,
        /// Why.
        reason: String,
    },
}

/// The name of the node's tables: `warmpool_` and the node id, with anything but letters,
/// digits and `_` replaced (then a hash of the id keeps two ids apart that differ only there).
pub fn table_name(node: &NodeId) -> String {
    let id = node.as_str();
    let clean: String = id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if clean == id {
        format!("warmpool_{clean}")
    } else {
        // FNV-1a: stable across builds and platforms, unlike std's hasher.
        let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        format!("warmpool_{clean}_{:08x}", hash as u32)
    }
}

/// The script that removes the table (for `nft -f -`). Declaring it first makes the delete
/// succeed when it does not exist.
pub fn teardown(table: &str) -> String {
    format!("table inet {table}\ndelete table inet {table}\n")
}

fn iface_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn parse_all(list: &[&str]) -> Vec<IpPrefix> {
    list.iter().filter_map(|p| p.parse().ok()).collect()
}

fn elements(prefixes: impl IntoIterator<Item = String>) -> String {
    let v: Vec<String> = prefixes.into_iter().collect();
    if v.is_empty() {
        String::new()
    } else {
        format!(" elements = {{ {} }};", v.join(", "))
    }
}

/// The set declaration `name` of IPv6 (`v6`) or IPv4 prefixes.
fn prefix_set(out: &mut String, name: &str, v6: bool, prefixes: &[IpPrefix]) {
    let ty = if v6 { "ipv6_addr" } else { "ipv4_addr" };
    let mut list: Vec<&IpPrefix> = prefixes.iter().filter(|p| p.is_ipv6() == v6).collect();
    list.sort();
    list.dedup();
    // An interval set refuses overlapping elements: keep only the prefixes no other covers.
    let kept: Vec<String> = list
        .iter()
        .filter(|p| {
            !list
                .iter()
                .any(|q| q != *p && q.prefix_len() <= p.prefix_len() && q.contains(&p.addr()))
        })
        .map(|p| p.to_string())
        .collect();
    let _ = writeln!(
        out,
        "\tset {name} {{ type {ty}; flags interval;{} }}",
        elements(kept)
    );
}

/// An allow-list, parsed: each prefix with its ports (none: every port and protocol).
type AllowList = Vec<(IpPrefix, Vec<u16>)>;

/// The egress chain of one policy.
fn policy_chain(out: &mut String, chain: &str, egress: &Egress, allow: &AllowList) {
    let _ = writeln!(out, "\tchain {chain} {{");
    out.push_str("\t\tip6 daddr @fleet6 drop\n\t\tip daddr @fleet4 drop\n");
    match egress {
        Egress::None => out.push_str("\t\tdrop\n"),
        Egress::Internet => {
            out.push_str("\t\tip6 daddr @private6 drop\n\t\tip daddr @private4 drop\n\t\taccept\n")
        }
        Egress::Allow(_) => {
            for (prefix, ports) in allow {
                let family = if prefix.is_ipv6() { "ip6" } else { "ip" };
                if ports.is_empty() {
                    let _ = writeln!(out, "\t\t{family} daddr {prefix} accept");
                } else {
                    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
                    let _ = writeln!(
                        out,
                        "\t\t{family} daddr {prefix} meta l4proto {{ tcp, udp }} th dport {{ {} }} accept",
                        ports.join(", ")
                    );
                }
            }
            out.push_str("\t\tdrop\n");
        }
    }
    out.push_str("\t}\n");
}

/// What tells two egress policies apart: each distinct one has its own chain.
fn policy_key(egress: &Egress) -> String {
    serde_json::to_string(egress).unwrap_or_default()
}

/// The chain of each distinct egress policy of `members` ([`policy_key`] to chain name), as
/// [`script`] names them.
pub fn chains(members: &[Member]) -> BTreeMap<String, String> {
    let keys: std::collections::BTreeSet<String> =
        members.iter().map(|m| policy_key(&m.egress)).collect();
    keys.into_iter()
        .enumerate()
        .map(|(i, k)| (k, format!("egress_{i}")))
        .collect()
}

/// One container's elements of the egress maps and port sets.
struct Elements {
    egress6: Option<String>,
    egress4: Option<String>,
    ports6: Vec<String>,
    ports4: Vec<String>,
}

impl Elements {
    /// Those of `m`, whose policy's chain is `chain`.
    fn of(m: &Member, chain: &str) -> Elements {
        let ports = |ip: String| {
            std::iter::once(m.port)
                .chain(m.extra_ports.iter().copied())
                .map(|p| format!("{ip} . {p}"))
                .collect::<Vec<_>>()
        };
        Elements {
            egress6: m.ipv6.map(|ip| format!("{ip} : jump {chain}")),
            egress4: m.ipv4.map(|ip| format!("{ip} : jump {chain}")),
            ports6: m.ipv6.map(|ip| ports(ip.to_string())).unwrap_or_default(),
            ports4: m.ipv4.map(|ip| ports(ip.to_string())).unwrap_or_default(),
        }
    }
}

/// The script that adds container `m` to the rule set applied last, made for containers whose
/// policies' chains were `chains` ([`chains`]): its addresses into the egress maps and its
/// ports into the port sets, nothing else touched. `None` when that rule set has no chain for
/// its policy: only a whole new rule set ([`script`]) can hold it.
///
/// `nft` refuses the script if an element for one of its addresses is there with another
/// policy (a container that had the address is gone and the rules do not know it yet): the
/// caller then rebuilds the whole set, as it would without this.
pub fn admit(table: &str, chains: &BTreeMap<String, String>, m: &Member) -> Option<String> {
    let chain = chains.get(&policy_key(&m.egress))?;
    let e = Elements::of(m, chain);
    let mut out = String::new();
    for (name, element) in [("egress6", e.egress6), ("egress4", e.egress4)] {
        if let Some(element) = element {
            let _ = writeln!(out, "add element inet {table} {name} {{ {element} }}");
        }
    }
    for (name, elements) in [("ports6", e.ports6), ("ports4", e.ports4)] {
        if !elements.is_empty() {
            let _ = writeln!(
                out,
                "add element inet {table} {name} {{ {} }}",
                elements.join(", ")
            );
        }
    }
    Some(out)
}

/// Whether `a` and `b` have an address in common.
fn share_an_address(a: &Member, b: &Member) -> bool {
    (a.ipv6.is_some() && a.ipv6 == b.ipv6) || (a.ipv4.is_some() && a.ipv4 == b.ipv4)
}

/// What the node's table holds, as the agent applied it: the containers it covers, by name
/// ([`Member::name`]), and the chain of each egress policy in it. Between whole rebuilds,
/// single containers' changes are planned against it ([`Known::plan`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Known {
    covered: BTreeMap<String, Member>,
    chains: BTreeMap<String, String>,
}

/// One batch of single containers' changes, as [`Known::plan`] made it.
#[derive(Debug, PartialEq)]
pub struct Plan {
    /// For `nft -f -` (empty: nothing to run).
    pub script: String,
    /// The containers taken out (the names asked for that the table covers).
    pub removed: Vec<String>,
    /// Indices of the adds the script holds.
    pub added: Vec<usize>,
    /// Indices of the adds that only a whole rebuild can hold.
    pub refused: Vec<usize>,
}

impl Known {
    /// What a whole rule set made by [`script`] for `members` holds.
    pub fn of(members: Vec<Member>) -> Known {
        Known {
            chains: chains(&members),
            covered: members.into_iter().map(|m| (m.name.clone(), m)).collect(),
        }
    }

    /// The containers covered.
    pub fn len(&self) -> usize {
        self.covered.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.covered.is_empty()
    }

    /// Plans taking out the containers named in `removes` and adding `adds`, in one script.
    /// Removals go first: an address Docker gave again is free once its old holder is out.
    /// An add is refused when its policy has no chain in the table, when a container that
    /// stays has one of its addresses (one gone whose rules are not out yet), or when an
    /// earlier add of the batch has one.
    pub fn plan(&self, table: &str, removes: &[String], adds: &[Member]) -> Plan {
        let mut script = String::new();
        let mut removed: Vec<String> = Vec::new();
        for name in removes {
            if let Some(m) = self.covered.get(name) {
                if !removed.contains(name) {
                    script.push_str(&remove(table, m));
                    removed.push(name.clone());
                }
            }
        }
        let (mut added, mut refused) = (Vec::new(), Vec::new());
        for (i, m) in adds.iter().enumerate() {
            let held = self
                .covered
                .values()
                .any(|c| c.name != m.name && !removed.contains(&c.name) && share_an_address(c, m));
            let claimed = added.iter().any(|&j: &usize| share_an_address(&adds[j], m));
            match admit(table, &self.chains, m).filter(|_| !held && !claimed) {
                Some(add) => {
                    script.push_str(&add);
                    added.push(i);
                }
                None => refused.push(i),
            }
        }
        Plan {
            script,
            removed,
            added,
            refused,
        }
    }

    /// Records `plan`, applied, with the `adds` it was made from.
    pub fn apply(&mut self, plan: &Plan, adds: &[Member]) {
        for name in &plan.removed {
            self.covered.remove(name);
        }
        for &i in &plan.added {
            self.covered.insert(adds[i].name.clone(), adds[i].clone());
        }
    }
}

/// The script that takes container `m`, gone, out of the rules applied last: its addresses
/// out of the egress maps and its ports out of the port sets. `nft` refuses it if one of them
/// is not there (the rules were rebuilt meanwhile); the caller then rebuilds the whole set.
pub fn remove(table: &str, m: &Member) -> String {
    let e = Elements::of(m, "");
    let mut out = String::new();
    let keys = [
        ("egress6", m.ipv6.map(|ip| vec![ip.to_string()])),
        ("egress4", m.ipv4.map(|ip| vec![ip.to_string()])),
        ("ports6", Some(e.ports6).filter(|p| !p.is_empty())),
        ("ports4", Some(e.ports4).filter(|p| !p.is_empty())),
    ];
    for (name, keys) in keys {
        if let Some(keys) = keys {
            let _ = writeln!(
                out,
                "delete element inet {table} {name} {{ {} }}",
                keys.join(", ")
            );
        }
    }
    out
}

/// The whole rule set of a node with `members` running (see the module doc).
pub fn script(s: &Settings, members: &[Member]) -> Result<String, RulesError> {
    if !iface_ok(&s.bridge) {
        return Err(RulesError::Bridge(s.bridge.clone()));
    }
    let (t, br) = (&s.table, &s.bridge);

    // One chain per distinct policy, in a stable order.
    let mut policies: BTreeMap<String, (Egress, AllowList)> = BTreeMap::new();
    for m in members {
        let key = policy_key(&m.egress);
        if policies.contains_key(&key) {
            continue;
        }
        let mut allow = Vec::new();
        if let Egress::Allow(rules) = &m.egress {
            for r in rules {
                let prefix = r.prefix.parse().map_err(|reason| RulesError::Prefix {
                    name: m.name.clone(),
                    prefix: r.prefix.clone(),
                    reason,
                })?;
                allow.push((prefix, r.ports.clone()));
            }
        }
        policies.insert(key, (m.egress.clone(), allow));
    }
    let chain_of = chains(members);

    let mut out = String::new();
    let _ = writeln!(
        out,
        "table inet {t}\ndelete table inet {t}\ntable inet {t} {{"
    );
    let mut fleet = s.fleet.clone();
    fleet.extend(parse_all(ALWAYS_CLOSED));
    prefix_set(&mut out, "fleet6", true, &fleet);
    prefix_set(&mut out, "fleet4", false, &fleet);
    prefix_set(&mut out, "private6", true, &parse_all(PRIVATE_V6));
    prefix_set(&mut out, "private4", false, &parse_all(PRIVATE_V4));
    prefix_set(&mut out, "from6", true, &s.ingress_from);
    prefix_set(&mut out, "from4", false, &s.ingress_from);

    for (key, (egress, allow)) in &policies {
        policy_chain(&mut out, &chain_of[key], egress, allow);
    }

    let mut egress6 = Vec::new();
    let mut egress4 = Vec::new();
    let mut ports6 = Vec::new();
    let mut ports4 = Vec::new();
    for m in members {
        let e = Elements::of(m, &chain_of[&policy_key(&m.egress)]);
        egress6.extend(e.egress6);
        egress4.extend(e.egress4);
        ports6.extend(e.ports6);
        ports4.extend(e.ports4);
    }
    // Two containers never share an address; should Docker's view be stale, the first wins
    // rather than the whole transaction failing on a duplicate element.
    for v in [&mut egress6, &mut egress4] {
        let mut seen = std::collections::HashSet::new();
        v.retain(|e| seen.insert(e.split(' ').next().unwrap_or_default().to_string()));
    }
    // A port set's element is the address and the port: a container's several ports are
    // several elements, and only a repeated pair is dropped.
    for v in [&mut ports6, &mut ports4] {
        let mut seen = std::collections::HashSet::new();
        v.retain(|e| seen.insert(e.clone()));
    }
    let _ = writeln!(
        out,
        "\tmap egress6 {{ type ipv6_addr : verdict;{} }}",
        elements(egress6)
    );
    let _ = writeln!(
        out,
        "\tmap egress4 {{ type ipv4_addr : verdict;{} }}",
        elements(egress4)
    );
    let _ = writeln!(
        out,
        "\tset ports6 {{ type ipv6_addr . inet_service;{} }}",
        elements(ports6)
    );
    let _ = writeln!(
        out,
        "\tset ports4 {{ type ipv4_addr . inet_service;{} }}",
        elements(ports4)
    );

    let _ = write!(
        out,
        "\tchain input {{
\t\ttype filter hook input priority filter - 10; policy accept;
\t\tiifname \"{br}\" jump to_host
\t}}
\tchain forward {{
\t\ttype filter hook forward priority filter - 10; policy accept;
\t\tiifname \"{br}\" jump from_container
\t\toifname \"{br}\" jump to_container
\t}}
\tchain to_host {{
\t\tct state established,related accept
\t\ticmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit }} accept
\t\tdrop
\t}}
\tchain from_container {{
\t\tct state established,related accept
\t\tip6 saddr vmap @egress6
\t\tip saddr vmap @egress4
\t\tdrop
\t}}
\tchain to_container {{
\t\tct state established,related accept
\t\tip6 saddr @from6 ip6 daddr . tcp dport @ports6 accept
\t\tip saddr @from4 ip daddr . tcp dport @ports4 accept
\t\tdrop
\t}}
}}
"
    );
    Ok(out)
}

/// The fleet prefixes to close when the operator names none: every unique-local address
/// (fc00::/7) when the node's /64 is one, else the /48 holding it (a site's usual share).
pub fn default_fleet(node_prefix: Ipv6Addr) -> IpPrefix {
    let ula: IpPrefix = "fc00::/7".parse().expect("a valid constant");
    if ula.contains(&IpAddr::V6(node_prefix)) {
        ula
    } else {
        IpPrefix::covering(IpAddr::V6(node_prefix), 48).expect("48 <= 128")
    }
}

#[cfg(test)]
mod tests {
    use warmpool_proto::EgressRule;

    use super::*;

    fn settings() -> Settings {
        Settings {
            table: "warmpool_a".into(),
            bridge: "br-0123456789ab".into(),
            fleet: vec![
                "fc00::/7".parse().unwrap(),
                "fd36:1::/64".parse().unwrap(),
                "172.20.0.0/16".parse().unwrap(),
            ],
            ingress_from: vec!["fd36:99::/64".parse().unwrap()],
        }
    }

    fn member(n: u16, egress: Egress) -> Member {
        Member {
            name: format!("c{n}"),
            ipv6: Some(Ipv6Addr::new(0xfd36, 1, 0, 0, 0xabcd, 0, 0, n)),
            ipv4: Some(Ipv4Addr::new(172, 20, 0, n as u8)),
            port: 8080,
            extra_ports: Vec::new(),
            egress,
        }
    }

    /// The lines of chain `name` of the inet table.
    fn chain<'a>(script: &'a str, name: &str) -> Vec<&'a str> {
        let start = format!("\tchain {name} {{");
        script
            .lines()
            .skip_while(|l| *l != start)
            .skip(1)
            .take_while(|l| *l != "\t}")
            .map(str::trim)
            .collect()
    }

    #[test]
    fn with_no_container_everything_from_the_bridge_is_closed() {
        let s = script(&settings(), &[]).unwrap();
        assert!(s.starts_with(
            "table inet warmpool_a\ndelete table inet warmpool_a\ntable inet warmpool_a {\n"
        ));
        assert!(
            s.contains("\tmap egress6 { type ipv6_addr : verdict; }\n"),
            "{s}"
        );
        assert!(s.contains("\tset ports6 { type ipv6_addr . inet_service; }\n"));
        assert_eq!(
            chain(&s, "from_container"),
            [
                "ct state established,related accept",
                "ip6 saddr vmap @egress6",
                "ip saddr vmap @egress4",
                "drop"
            ]
        );
        assert_eq!(chain(&s, "to_host").last(), Some(&"drop"));
        assert_eq!(chain(&s, "to_container").last(), Some(&"drop"));
        assert!(s.contains("iifname \"br-0123456789ab\" jump to_host"));
        assert!(s.contains("priority filter - 10; policy accept;"));
        assert!(s.ends_with("\t\tdrop\n\t}\n}\n"), "{s}");
        assert!(
            !s.contains("chain egress_0"),
            "no policy without a container"
        );
    }

    #[test]
    fn fleet_sets_hold_the_fleet_and_what_is_always_closed_without_overlaps() {
        let s = script(&settings(), &[]).unwrap();
        // fd36:1::/64 and fe80::/10... are inside fc00::/7? fe80::/10 is not; fd36:1::/64 is.
        assert!(s.contains(
            "\tset fleet6 { type ipv6_addr; flags interval; elements = { ::1/128, fc00::/7, fe80::/10, ff00::/8 }; }"
        ), "{s}");
        assert!(s.contains(
            "\tset fleet4 { type ipv4_addr; flags interval; elements = { 127.0.0.0/8, 169.254.0.0/16, 172.20.0.0/16, 224.0.0.0/4 }; }"
        ), "{s}");
        assert!(s.contains(
            "\tset from6 { type ipv6_addr; flags interval; elements = { fd36:99::/64 }; }"
        ));
        assert!(s.contains("\tset from4 { type ipv4_addr; flags interval; }"));
    }

    #[test]
    fn each_container_gets_its_policy_and_its_own_port() {
        let allow = Egress::Allow(vec![
            EgressRule {
                prefix: "2001:db8:5::/64".into(),
                ports: vec![443, 80],
            },
            EgressRule {
                prefix: "203.0.113.0/24".into(),
                ports: vec![],
            },
        ]);
        let mut web = member(3, Egress::Internet);
        web.port = 9000;
        web.ipv4 = None;
        let members = [
            member(2, Egress::None),
            web,
            member(4, allow.clone()),
            member(5, Egress::None),
        ];
        let s = script(&settings(), &members).unwrap();
        // Policies sorted by their JSON: "internet" < "none" < {"allow":..}.
        assert_eq!(
            chain(&s, "egress_0"),
            [
                "ip6 daddr @fleet6 drop",
                "ip daddr @fleet4 drop",
                "ip6 daddr @private6 drop",
                "ip daddr @private4 drop",
                "accept"
            ]
        );
        assert_eq!(
            chain(&s, "egress_1"),
            ["ip6 daddr @fleet6 drop", "ip daddr @fleet4 drop", "drop"]
        );
        assert_eq!(
            chain(&s, "egress_2"),
            [
                "ip6 daddr @fleet6 drop",
                "ip daddr @fleet4 drop",
                "ip6 daddr 2001:db8:5::/64 meta l4proto { tcp, udp } th dport { 443, 80 } accept",
                "ip daddr 203.0.113.0/24 accept",
                "drop"
            ]
        );
        assert!(s.contains(
            "\tmap egress6 { type ipv6_addr : verdict; elements = { fd36:1::abcd:0:0:2 : jump egress_1, fd36:1::abcd:0:0:3 : jump egress_0, fd36:1::abcd:0:0:4 : jump egress_2, fd36:1::abcd:0:0:5 : jump egress_1 }; }"
        ), "{s}");
        assert!(s.contains(
            "\tmap egress4 { type ipv4_addr : verdict; elements = { 172.20.0.2 : jump egress_1, 172.20.0.4 : jump egress_2, 172.20.0.5 : jump egress_1 }; }"
        ), "{s}");
        assert!(s.contains("fd36:1::abcd:0:0:3 . 9000"), "{s}");
        assert!(s.contains("172.20.0.2 . 8080"), "{s}");
        assert_eq!(
            chain(&s, "to_container"),
            [
                "ct state established,related accept",
                "ip6 saddr @from6 ip6 daddr . tcp dport @ports6 accept",
                "ip saddr @from4 ip daddr . tcp dport @ports4 accept",
                "drop"
            ]
        );
    }

    #[test]
    fn a_new_container_is_added_with_the_elements_a_rebuild_would_give_it() {
        let running = [member(2, Egress::None), member(4, Egress::Internet)];
        let chains = chains(&running);
        let mut new = member(7, Egress::None);
        new.extra_ports = vec![6080];
        let add = admit("warmpool_a", &chains, &new).unwrap();
        assert_eq!(
            add.lines().collect::<Vec<_>>(),
            [
                "add element inet warmpool_a egress6 { fd36:1::abcd:0:0:7 : jump egress_1 }",
                "add element inet warmpool_a egress4 { 172.20.0.7 : jump egress_1 }",
                "add element inet warmpool_a ports6 { fd36:1::abcd:0:0:7 . 8080, fd36:1::abcd:0:0:7 . 6080 }",
                "add element inet warmpool_a ports4 { 172.20.0.7 . 8080, 172.20.0.7 . 6080 }",
            ]
        );
        // The rules rebuilt with it hold the very same elements, under the same chain.
        let rebuilt = script(&settings(), &[running[0].clone(), running[1].clone(), new]).unwrap();
        assert_eq!(
            chain(&rebuilt, "egress_1"),
            chain(&script(&settings(), &running).unwrap(), "egress_1")
        );
        for element in [
            "fd36:1::abcd:0:0:7 : jump egress_1",
            "172.20.0.7 : jump egress_1",
            "fd36:1::abcd:0:0:7 . 6080",
            "172.20.0.7 . 8080",
        ] {
            assert!(rebuilt.contains(element), "{element} in {rebuilt}");
        }
    }

    #[test]
    fn a_gone_container_is_taken_out_key_by_key() {
        let mut m = member(7, Egress::Internet);
        m.extra_ports = vec![6080];
        assert_eq!(
            remove("warmpool_a", &m).lines().collect::<Vec<_>>(),
            [
                "delete element inet warmpool_a egress6 { fd36:1::abcd:0:0:7 }",
                "delete element inet warmpool_a egress4 { 172.20.0.7 }",
                "delete element inet warmpool_a ports6 { fd36:1::abcd:0:0:7 . 8080, fd36:1::abcd:0:0:7 . 6080 }",
                "delete element inet warmpool_a ports4 { 172.20.0.7 . 8080, 172.20.0.7 . 6080 }",
            ]
        );
        m.ipv4 = None;
        assert!(!remove("warmpool_a", &m).contains("4 {"));
    }

    #[test]
    fn a_gone_container_leaves_before_a_new_one_takes_its_address() {
        let gone = member(3, Egress::None);
        let mut known = Known::of(vec![gone.clone(), member(4, Egress::None)]);
        // Docker gave the new container the IPv4 address of the gone one.
        let mut new = member(9, Egress::None);
        new.ipv4 = gone.ipv4;
        let adds = [new.clone()];
        // Its rules still there: the new container cannot be added alone.
        assert_eq!(known.plan("warmpool_a", &[], &adds).refused, [0]);
        // Taken out in the same batch: first the delete, then the add.
        let plan = known.plan("warmpool_a", std::slice::from_ref(&gone.name), &adds);
        assert_eq!((plan.added.as_slice(), plan.refused.len()), (&[0][..], 0));
        let delete = plan
            .script
            .find("delete element inet warmpool_a egress4 { 172.20.0.3 }");
        let add = plan
            .script
            .find("add element inet warmpool_a egress4 { 172.20.0.3 : jump");
        assert!(
            delete.is_some() && add.is_some() && delete < add,
            "{}",
            plan.script
        );
        known.apply(&plan, &adds);
        assert_eq!(known, Known::of(vec![member(4, Egress::None), new]));
    }

    #[test]
    fn an_add_is_refused_when_the_batch_or_the_table_cannot_hold_it() {
        let known = Known::of(vec![member(2, Egress::None)]);
        let mut twin = member(8, Egress::None);
        twin.ipv6 = member(7, Egress::None).ipv6;
        let adds = [
            member(7, Egress::None),
            twin,                        // an address the batch's first add has
            member(5, Egress::Internet), // a policy with no chain in the table
            member(6, Egress::None),
        ];
        let plan = known.plan("warmpool_a", &["never-covered".into()], &adds);
        assert_eq!(plan.added, [0, 3]);
        assert_eq!(plan.refused, [1, 2]);
        assert!(plan.removed.is_empty());
        assert!(!plan.script.contains("delete"), "{}", plan.script);
    }

    #[test]
    fn a_container_whose_policy_has_no_chain_yet_needs_a_rebuild() {
        let chains = chains(&[member(2, Egress::None)]);
        assert_eq!(
            admit("warmpool_a", &chains, &member(3, Egress::Internet)),
            None
        );
        assert_eq!(
            admit("warmpool_a", &BTreeMap::new(), &member(3, Egress::None)),
            None
        );
        // Without an IPv4 address, only the IPv6 elements.
        let mut v6 = member(3, Egress::None);
        v6.ipv4 = None;
        let add = admit("warmpool_a", &chains, &v6).unwrap();
        assert!(!add.contains("egress4") && !add.contains("ports4"), "{add}");
    }

    #[test]
    fn named_ports_open_like_the_service_port() {
        let mut m = member(2, Egress::None);
        m.extra_ports = vec![6080, 7000];
        let s = script(&settings(), &[m]).unwrap();
        for want in [
            "fd36:1::abcd:0:0:2 . 8080",
            "fd36:1::abcd:0:0:2 . 6080",
            "fd36:1::abcd:0:0:2 . 7000",
            "172.20.0.2 . 6080",
        ] {
            assert!(s.contains(want), "{want} in {s}");
        }
    }

    #[test]
    fn a_duplicated_address_keeps_the_first_container() {
        let a = member(2, Egress::Internet);
        let mut b = member(2, Egress::None);
        b.name = "dup".into();
        let s = script(&settings(), &[a, b]).unwrap();
        assert!(
            s.contains("elements = { fd36:1::abcd:0:0:2 : jump egress_0 }"),
            "{s}"
        );
    }

    #[test]
    fn garbage_is_refused_not_written() {
        let mut bad = settings();
        bad.bridge = "br\"; flush ruleset".into();
        assert!(matches!(script(&bad, &[]), Err(RulesError::Bridge(_))));
        let m = member(
            2,
            Egress::Allow(vec![EgressRule {
                prefix: "nope".into(),
                ports: vec![],
            }]),
        );
        assert!(matches!(
            script(&settings(), &[m]),
            Err(RulesError::Prefix { .. })
        ));
    }

    #[test]
    fn table_names_are_nft_identifiers_and_stay_apart() {
        let id = |s: &str| table_name(&NodeId::new(s).unwrap());
        assert_eq!(id("host_a"), "warmpool_host_a");
        let dashed = id("host-a");
        assert!(dashed.starts_with("warmpool_host_a_"), "{dashed}");
        assert_ne!(dashed, id("host_a"));
        assert!(dashed
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_'));
        assert_eq!(
            teardown("warmpool_x"),
            "table inet warmpool_x\ndelete table inet warmpool_x\n"
        );
    }

    #[test]
    fn the_default_fleet_is_every_ula_or_the_site_48() {
        assert_eq!(
            default_fleet("fd36:1::".parse().unwrap()).to_string(),
            "fc00::/7"
        );
        assert_eq!(
            default_fleet("2001:db8:7:9::".parse().unwrap()).to_string(),
            "2001:db8:7::/48"
        );
    }
}
