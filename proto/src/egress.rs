//! A pool's egress policy: where its containers may open connections.
//!
//! The agent enforces it with nftables rules of its own (see the node agent's `isolation`
//! module). Whatever the policy, a container never reaches another container, the host it
//! runs on, or the fleet's own prefixes; the policy only says what else it may reach.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::pool::SpecError;

/// Most rules an `allow` list may hold.
pub const MAX_ALLOW_RULES: usize = 64;
/// Most ports one rule may name.
pub const MAX_RULE_PORTS: usize = 64;

/// Where a pool's containers may open connections (replies to connections made *to* them are
/// always allowed).
///
/// On the wire: `"none"`, `"internet"`, or `{"allow": [{"prefix": "2001:db8::/48", "ports":
/// [443]}]}`. Absent means `none`: a container reaches nothing, a pool that needs more says so.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Egress {
    /// No outbound connection at all.
    #[default]
    None,
    /// Everything except the fleet's prefixes, link-local and the private ranges (IPv4
    /// 10/8, 172.16/12, 192.168/16, 100.64/10; IPv6 fc00::/7).
    Internet,
    /// Only these prefixes (and ports); the fleet's prefixes stay closed even if named.
    Allow(Vec<EgressRule>),
}

/// One entry of an `allow` list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct EgressRule {
    /// An IPv6 or IPv4 prefix in CIDR form (`2001:db8::/48`, `203.0.113.0/24`); a bare address
    /// means that one address.
    #[cfg_attr(feature = "openapi", schema(example = "2001:db8::/48"))]
    pub prefix: String,
    /// TCP and UDP destination ports; empty means every port and protocol.
    #[serde(default)]
    pub ports: Vec<u16>,
}

impl Egress {
    /// Checks every rule: prefixes parse and have no host bits, ports are not 0, the lists are
    /// bounded.
    pub fn validate(&self) -> Result<(), SpecError> {
        let Egress::Allow(rules) = self else {
            return Ok(());
        };
        if rules.len() > MAX_ALLOW_RULES {
            return Err(SpecError(format!(
                "egress.allow: at most {MAX_ALLOW_RULES} rules"
            )));
        }
        for (i, r) in rules.iter().enumerate() {
            r.prefix
                .parse::<IpPrefix>()
                .map_err(|e| SpecError(format!("egress.allow[{i}].prefix {:?}: {e}", r.prefix)))?;
            if r.ports.len() > MAX_RULE_PORTS {
                return Err(SpecError(format!(
                    "egress.allow[{i}].ports: at most {MAX_RULE_PORTS} ports"
                )));
            }
            if r.ports.contains(&0) {
                return Err(SpecError(format!(
                    "egress.allow[{i}].ports: 0 is not a port"
                )));
            }
        }
        Ok(())
    }
}

impl fmt::Display for Egress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Egress::None => f.write_str("none"),
            Egress::Internet => f.write_str("internet"),
            Egress::Allow(rules) => {
                let parts: Vec<String> = rules.iter().map(EgressRule::to_string).collect();
                write!(f, "allow {}", parts.join(","))
            }
        }
    }
}

impl fmt::Display for EgressRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.prefix)?;
        if !self.ports.is_empty() {
            let ports: Vec<String> = self.ports.iter().map(u16::to_string).collect();
            write!(f, ":{}", ports.join("+"))?;
        }
        Ok(())
    }
}

impl FromStr for EgressRule {
    type Err = String;

    /// `PREFIX` or `PREFIX:PORT+PORT...` (`2001:db8::/48:443+80`, `203.0.113.0/24:53`): the
    /// ports follow the last `:` after the `/`.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (prefix, ports) = match s.split_once('/') {
            Some((addr, rest)) => match rest.split_once(':') {
                Some((len, ports)) => (format!("{addr}/{len}"), Some(ports)),
                None => (s.to_string(), None),
            },
            None => (s.to_string(), None),
        };
        prefix
            .parse::<IpPrefix>()
            .map_err(|e| format!("{s:?}: {e}"))?;
        let ports = match ports {
            None => Vec::new(),
            Some(p) => p
                .split('+')
                .map(|x| {
                    x.trim()
                        .parse::<u16>()
                        .ok()
                        .filter(|p| *p != 0)
                        .ok_or_else(|| format!("{s:?}: {x:?} is not a port (1..=65535)"))
                })
                .collect::<Result<_, _>>()?,
        };
        Ok(EgressRule { prefix, ports })
    }
}

/// An IPv4 or IPv6 prefix with no host bits set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpPrefix {
    addr: IpAddr,
    len: u8,
}

impl IpPrefix {
    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// Whether it is an IPv6 prefix.
    pub fn is_ipv6(&self) -> bool {
        self.addr.is_ipv6()
    }

    /// Whether `ip` lies in this prefix.
    pub fn contains(&self, ip: &IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask6(u128::from(*ip), self.len) == u128::from(net)
            }
            (IpAddr::V4(net), IpAddr::V4(ip)) => mask4(u32::from(*ip), self.len) == u32::from(net),
            _ => false,
        }
    }

    /// The prefix of length `len` holding `addr` (its host bits cleared); `None` if `len` is
    /// longer than the address.
    pub fn covering(addr: IpAddr, len: u8) -> Option<IpPrefix> {
        let addr = match addr {
            IpAddr::V6(a) if len <= 128 => IpAddr::V6(Ipv6Addr::from(mask6(u128::from(a), len))),
            IpAddr::V4(a) if len <= 32 => IpAddr::V4(Ipv4Addr::from(mask4(u32::from(a), len))),
            _ => return None,
        };
        Some(IpPrefix { addr, len })
    }
}

fn mask6(v: u128, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        v & (u128::MAX << (128 - u32::from(len)))
    }
}

fn mask4(v: u32, len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        v & (u32::MAX << (32 - u32::from(len)))
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for IpPrefix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, len) = match s.trim().split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| "not an IPv4 or IPv6 address".to_string())?;
        let max = if addr.is_ipv6() { 128 } else { 32 };
        let len = match len {
            None => max,
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("the prefix length must be 0..={max}"))?,
        };
        let p = IpPrefix::covering(addr, len).ok_or("bad prefix length")?;
        if p.addr != addr {
            return Err(format!("host bits are set (the network is {p})"));
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_parse_and_refuse_host_bits() {
        let p: IpPrefix = "2001:db8::/32".parse().unwrap();
        assert!(p.is_ipv6());
        assert!(p.contains(&"2001:db8:1::5".parse().unwrap()));
        assert!(!p.contains(&"2001:db9::".parse().unwrap()));
        assert!(!p.contains(&"10.0.0.1".parse().unwrap()));
        let p: IpPrefix = "10.0.0.0/8".parse().unwrap();
        assert!(p.contains(&"10.9.9.9".parse().unwrap()));
        assert_eq!(
            "203.0.113.7".parse::<IpPrefix>().unwrap().to_string(),
            "203.0.113.7/32"
        );
        assert_eq!("::/0".parse::<IpPrefix>().unwrap().prefix_len(), 0);
        for bad in [
            "",
            "x/8",
            "10.0.0.1/8",
            "2001:db8::1/64",
            "10.0.0.0/33",
            "::/129",
        ] {
            assert!(bad.parse::<IpPrefix>().is_err(), "{bad}");
        }
        assert_eq!(
            IpPrefix::covering("fd36:1::5".parse().unwrap(), 48)
                .unwrap()
                .to_string(),
            "fd36:1::/48"
        );
    }

    #[test]
    fn wire_form_is_a_word_or_an_allow_list() {
        assert_eq!(serde_json::to_string(&Egress::None).unwrap(), r#""none""#);
        let e: Egress = serde_json::from_str(r#""internet""#).unwrap();
        assert_eq!(e, Egress::Internet);
        let e: Egress =
            serde_json::from_str(r#"{"allow":[{"prefix":"2001:db8::/48","ports":[443]}]}"#)
                .unwrap();
        assert_eq!(
            e,
            Egress::Allow(vec![EgressRule {
                prefix: "2001:db8::/48".into(),
                ports: vec![443]
            }])
        );
        e.validate().unwrap();
        assert!(serde_json::from_str::<Egress>(r#""everything""#).is_err());
    }

    #[test]
    fn allow_lists_are_validated() {
        let rule = |p: &str, ports: &[u16]| EgressRule {
            prefix: p.into(),
            ports: ports.to_vec(),
        };
        let err = Egress::Allow(vec![rule("2001:db8::1/48", &[])])
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("egress.allow[0].prefix"), "{err}");
        assert!(err.to_string().contains("host bits"), "{err}");
        assert!(Egress::Allow(vec![rule("10.0.0.0/8", &[0])])
            .validate()
            .is_err());
        assert!(
            Egress::Allow(vec![rule("10.0.0.0/8", &[]); MAX_ALLOW_RULES + 1])
                .validate()
                .is_err()
        );
        Egress::Allow(vec![rule("10.0.0.0/8", &[53]), rule("::/0", &[443])])
            .validate()
            .unwrap();
    }

    #[test]
    fn rules_parse_from_flags() {
        let r: EgressRule = "2001:db8::/48:443+80".parse().unwrap();
        assert_eq!(r.prefix, "2001:db8::/48");
        assert_eq!(r.ports, vec![443, 80]);
        let r: EgressRule = "203.0.113.0/24".parse().unwrap();
        assert!(r.ports.is_empty());
        let r: EgressRule = "2001:db8::1".parse().unwrap();
        assert_eq!(r.prefix, "2001:db8::1");
        assert!("2001:db8::/48:0".parse::<EgressRule>().is_err());
        assert!("nope".parse::<EgressRule>().is_err());
        assert_eq!(r.to_string(), "2001:db8::1");
        assert_eq!(
            "10.0.0.0/8:53+443"
                .parse::<EgressRule>()
                .unwrap()
                .to_string(),
            "10.0.0.0/8:53+443"
        );
    }
}
