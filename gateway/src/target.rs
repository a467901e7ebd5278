//! Which allocation and port a request is for, and the token it carries: pure functions over
//! the request's host, path, query and headers, tested with plain values.
//!
//! Two URL forms reach the same place:
//!
//! - by path: `/s/{allocation}/{port}/rest?query` → `/rest?query` on the container;
//! - by host: `{allocation}-{port}.{domain}/rest?query` → the same (`--domain`). An allocation
//!   id is a UUID, always 36 characters, so the port name after it may hold `-`.
//!
//! `{port}` is a port name of the pool or a port number the pool names.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};
use warmpool_proto::AllocationId;

/// Header carrying the access token.
pub const TOKEN_HEADER: &str = "x-warmpool-token";
/// Cookie carrying the access token (set by a `?token=` visit).
pub const TOKEN_COOKIE: &str = "warmpool_token";
/// Query parameter carrying the access token once, for a browser's first visit.
pub const TOKEN_QUERY: &str = "token";

/// Length of an allocation id (a hyphenated UUID).
const ID_LEN: usize = 36;

/// Where a request goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The allocation.
    pub allocation: AllocationId,
    /// The port as the URL names it: a name or a number.
    pub port: String,
    /// What the URL has before the container's own path: `/s/{id}/{port}` by path, empty by
    /// host. Cookies are scoped to it and redirects from the container are put under it.
    pub prefix: String,
    /// The container's path (starting with `/`).
    pub path: String,
    /// The query, if any, as sent.
    pub query: Option<String>,
}

/// What a request's URL says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// For an allocation.
    Target(Target),
    /// `/s/{id}/{port}` without the slash: redirect here, so relative links resolve.
    AddSlash(String),
    /// Not a gateway URL (or an id that is not one).
    NotOurs,
}

/// Parses the request's host (without regard to case or port) and path.
pub fn parse(host: Option<&str>, domain: Option<&str>, path: &str, query: Option<&str>) -> Parsed {
    if let (Some(host), Some(domain)) = (host, domain) {
        if let Some(t) = by_host(host, domain, path, query) {
            return t;
        }
    }
    by_path(path, query)
}

fn by_host(host: &str, domain: &str, path: &str, query: Option<&str>) -> Option<Parsed> {
    // Strip a port; hosts here are names, never IPv6 literals.
    let name = host.rsplit_once(':').map_or(host, |(h, p)| {
        if p.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let label = name.strip_suffix(domain)?.strip_suffix('.')?;
    if label.contains('.') || label.len() < ID_LEN + 2 || !label.is_char_boundary(ID_LEN) {
        return Some(Parsed::NotOurs);
    }
    let (id, port) = label.split_at(ID_LEN);
    let (Ok(allocation), Some(port)) = (id.parse(), port.strip_prefix('-')) else {
        return Some(Parsed::NotOurs);
    };
    Some(Parsed::Target(Target {
        allocation,
        port: port.to_string(),
        prefix: String::new(),
        path: path.to_string(),
        query: query.map(str::to_string),
    }))
}

fn by_path(path: &str, query: Option<&str>) -> Parsed {
    let Some(rest) = path.strip_prefix("/s/") else {
        return Parsed::NotOurs;
    };
    let mut parts = rest.splitn(3, '/');
    let (Some(id), Some(port)) = (parts.next(), parts.next()) else {
        return Parsed::NotOurs;
    };
    let Ok(allocation) = id.parse::<AllocationId>() else {
        return Parsed::NotOurs;
    };
    if port.is_empty() {
        return Parsed::NotOurs;
    }
    let prefix = format!("/s/{id}/{port}");
    match parts.next() {
        None => Parsed::AddSlash(match query {
            Some(q) => format!("{prefix}/?{q}"),
            None => format!("{prefix}/"),
        }),
        Some(tail) => Parsed::Target(Target {
            allocation,
            port: port.to_string(),
            prefix,
            path: format!("/{tail}"),
            query: query.map(str::to_string),
        }),
    }
}

/// The port number `named` stands for: one of the pool's port names, or a number the pool
/// names (its service port or a named one). Any other port stays unreachable.
pub fn resolve_port(named: &str, service: u16, ports: &BTreeMap<String, u16>) -> Option<u16> {
    if let Some(p) = ports.get(named) {
        return Some(*p);
    }
    let n: u16 = named.parse().ok()?;
    (n == service || ports.values().any(|p| *p == n)).then_some(n)
}

/// Takes `token=` out of a query: the token (if any) and what is left (`None` when nothing).
pub fn take_query_token(query: Option<&str>) -> (Option<String>, Option<String>) {
    let Some(q) = query else {
        return (None, None);
    };
    let mut token = None;
    let rest: Vec<&str> = q
        .split('&')
        .filter(|pair| match pair.strip_prefix("token=") {
            Some(v) => {
                token = Some(v.to_string());
                false
            }
            None => !pair.is_empty(),
        })
        .collect();
    let rest = (!rest.is_empty()).then(|| rest.join("&"));
    (token, rest)
}

/// The tokens a request offers, best first: the header, a bearer token that looks like an
/// access token, then cookies.
pub fn offered<'a>(
    header: Option<&'a str>,
    authorization: Option<&'a str>,
    cookies: impl Iterator<Item = &'a str>,
) -> Vec<&'a str> {
    let mut v = Vec::new();
    if let Some(h) = header {
        v.push(h.trim());
    }
    if let Some(bearer) = authorization.and_then(bearer_access_token) {
        v.push(bearer);
    }
    for header in cookies {
        for pair in header.split(';') {
            if let Some(value) = pair
                .trim()
                .strip_prefix(TOKEN_COOKIE)
                .and_then(|r| r.strip_prefix('='))
            {
                v.push(value.trim());
            }
        }
    }
    v
}

/// The token of `Authorization: Bearer wpa_…` (another scheme or token is the container's).
pub fn bearer_access_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer")
        && token.starts_with(warmpool_proto::api::ACCESS_TOKEN_PREFIX))
    .then_some(token)
}

/// A `Cookie` header without the access token's cookie (`None` when nothing is left).
pub fn strip_cookie(header: &str) -> Option<String> {
    let rest: Vec<&str> = header
        .split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty() && !p.starts_with(&format!("{TOKEN_COOKIE}=")))
        .collect();
    (!rest.is_empty()).then(|| rest.join("; "))
}

/// The `Set-Cookie` value for a token, scoped to the allocation's URLs.
pub fn set_cookie(token: &str, prefix: &str, secure: bool) -> String {
    // By path, the cookie covers every port of this allocation and no other allocation.
    let path = match prefix.rsplit_once('/') {
        Some((scope, _)) if !prefix.is_empty() => format!("{scope}/"),
        _ => "/".to_string(),
    };
    let secure = if secure { "; Secure" } else { "" };
    format!("{TOKEN_COOKIE}={token}; Path={path}; HttpOnly; SameSite=Lax{secure}")
}

/// Whether `token` hashes to `sha256_hex`, compared in time independent of where they differ.
pub fn verify(token: &str, sha256_hex: &str) -> bool {
    let digest = Sha256::digest(token.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    hex.len() == sha256_hex.len()
        && hex
            .bytes()
            .zip(sha256_hex.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A `Location` from the container, put under the prefix when it is a path on the container
/// itself (`/login` → `/s/{id}/{port}/login`); anything else as it is.
pub fn rewrite_location(location: &str, prefix: &str) -> Option<String> {
    (!prefix.is_empty() && location.starts_with('/') && !location.starts_with("//"))
        .then(|| format!("{prefix}{location}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> AllocationId {
        "01890a5d-ac96-774b-bcce-b302099a8057".parse().unwrap()
    }

    #[test]
    fn by_path() {
        let p = parse(None, None, &format!("/s/{}/web/a/b", id()), Some("x=1"));
        assert_eq!(
            p,
            Parsed::Target(Target {
                allocation: id(),
                port: "web".into(),
                prefix: format!("/s/{}/web", id()),
                path: "/a/b".into(),
                query: Some("x=1".into()),
            })
        );
        assert_eq!(
            parse(None, None, &format!("/s/{}/8080", id()), None),
            Parsed::AddSlash(format!("/s/{}/8080/", id()))
        );
        for bad in [
            "/",
            "/s/",
            "/s/nope/web/",
            "/x/a",
            &format!("/s/{}//", id()),
        ] {
            assert_eq!(parse(None, None, bad, None), Parsed::NotOurs, "{bad}");
        }
    }

    #[test]
    fn by_host() {
        let host = format!("{}-vnc-2.GW.example:8443", id());
        match parse(Some(&host), Some("gw.example"), "/", None) {
            Parsed::Target(t) => {
                assert_eq!(
                    (t.allocation, t.port.as_str(), t.prefix.as_str()),
                    (id(), "vnc-2", "")
                )
            }
            other => panic!("{other:?}"),
        }
        // Another host falls back to paths.
        let path = format!("/s/{}/web/", id());
        assert!(matches!(
            parse(Some("other.example"), Some("gw.example"), &path, None),
            Parsed::Target(_)
        ));
        assert_eq!(
            parse(Some("junk.gw.example"), Some("gw.example"), "/", None),
            Parsed::NotOurs
        );
        assert_eq!(
            parse(Some("a.b.gw.example"), Some("gw.example"), "/", None),
            Parsed::NotOurs
        );
    }

    #[test]
    fn ports_resolve_only_to_what_the_pool_names() {
        let ports = BTreeMap::from([("web".to_string(), 8080), ("vnc".to_string(), 6080)]);
        assert_eq!(resolve_port("web", 8080, &ports), Some(8080));
        assert_eq!(resolve_port("6080", 8080, &ports), Some(6080));
        assert_eq!(resolve_port("22", 8080, &ports), None);
        assert_eq!(resolve_port("ssh", 8080, &ports), None);
        assert_eq!(resolve_port("8080", 8080, &BTreeMap::new()), Some(8080));
    }

    #[test]
    fn tokens_from_query_header_bearer_and_cookie() {
        assert_eq!(
            take_query_token(Some("a=1&token=wpa_x&b=2")),
            (Some("wpa_x".into()), Some("a=1&b=2".into()))
        );
        assert_eq!(take_query_token(Some("token=t")), (Some("t".into()), None));
        assert_eq!(take_query_token(None), (None, None));
        let v = offered(
            Some("h"),
            Some("Bearer wpa_b"),
            ["a=1; warmpool_token=c", "warmpool_token=d"].into_iter(),
        );
        assert_eq!(v, ["h", "wpa_b", "c", "d"]);
        assert!(offered(None, Some("Bearer app-token"), std::iter::empty()).is_empty());
        assert_eq!(
            strip_cookie("a=1; warmpool_token=c; b=2"),
            Some("a=1; b=2".into())
        );
        assert_eq!(strip_cookie("warmpool_token=c"), None);
    }

    #[test]
    fn cookies_are_scoped_and_tokens_verified() {
        let prefix = format!("/s/{}/web", id());
        assert_eq!(
            set_cookie("t", &prefix, true),
            format!(
                "warmpool_token=t; Path=/s/{}/; HttpOnly; SameSite=Lax; Secure",
                id()
            )
        );
        assert_eq!(
            set_cookie("t", "", false),
            "warmpool_token=t; Path=/; HttpOnly; SameSite=Lax"
        );
        let hash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert!(verify("", hash));
        assert!(!verify("x", hash));
        assert!(!verify("", "short"));
    }

    #[test]
    fn redirects_stay_under_the_prefix() {
        assert_eq!(
            rewrite_location("/login", "/s/a/web"),
            Some("/s/a/web/login".into())
        );
        assert_eq!(rewrite_location("http://x/", "/s/a/web"), None);
        assert_eq!(rewrite_location("//evil/", "/s/a/web"), None);
        assert_eq!(rewrite_location("/login", ""), None);
    }
}
