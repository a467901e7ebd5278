//! API keys and roles.
//!
//! A token is `wpk_<id>_<secret>`: a 12-hex-digit public id and a 64-hex-digit secret (256
//! random bits). The replicated state keeps only the id, a name, the role and SHA-256 of the
//! secret; the token is shown once, when the key is made. With secrets this random a plain
//! hash is enough (no one guesses a preimage), and it keeps checks fast on the hot path.
//!
//! Roles: `viewer` reads; `user` also allocates, releases and renews; `admin` also changes
//! pools, nodes, cluster membership, keys and tenants' limits. User and viewer keys belong to a
//! tenant and see and touch only its allocations (another tenant's answer 404, as if absent);
//! admin keys act for every tenant. Every `/v1/…` route and `/metrics` need a key when auth is
//! on, except `/v1/health` and `/v1/ready`, which answer ok or not and nothing more; the
//! dashboard's static files need none either (its sign-in page must load).

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use warmpool_proto::api::Role;
use warmpool_proto::TenantId;

use crate::api::error::ApiError;
use crate::api::AppState;

const PREFIX: &str = "wpk_";
const ID_LEN: usize = 12;
const SECRET_LEN: usize = 64;

/// A freshly made key: its token (to hand out once), id and the hash to store.
pub struct NewKey {
    /// The whole bearer token.
    pub token: String,
    /// Public id.
    pub id: String,
    /// SHA-256 of the secret, hex.
    pub hash: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Makes a new random key.
pub fn generate() -> Result<NewKey, getrandom::Error> {
    let mut id = [0u8; ID_LEN / 2];
    let mut secret = [0u8; SECRET_LEN / 2];
    getrandom::fill(&mut id)?;
    getrandom::fill(&mut secret)?;
    let (id, secret) = (hex(&id), hex(&secret));
    Ok(NewKey {
        token: format!("{PREFIX}{id}_{secret}"),
        hash: hash(&secret),
        id,
    })
}

/// The bootstrap admin token's file name in a bootstrapping member's data directory.
pub const TOKEN_FILE: &str = "admin.token";

/// Why the bootstrap token file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// Reading or writing it failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// It holds something that is not a key.
    #[error("it does not hold a Warmpool key (wpk_<12 hex>_<64 hex>)")]
    NotAKey,
    /// No randomness to make one.
    #[error("no randomness: {0}")]
    Random(String),
}

/// The admin token in `path`, made (mode 0600, in a directory made 0700) when the file does
/// not exist yet: a new cluster's first admin key.
pub fn bootstrap_token(path: &std::path::Path) -> Result<String, TokenFileError> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let token = s.trim().to_string();
            return parse(&token)
                .map(|_| token.clone())
                .ok_or(TokenFileError::NotAKey);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let key = generate().map_err(|e| TokenFileError::Random(e.to_string()))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    writeln!(f, "{}", key.token)?;
    f.sync_all()?;
    Ok(key.token)
}

/// Splits a token into id and secret, if it is one.
pub fn parse(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let is_hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (is_hex(id, ID_LEN) && is_hex(secret, SECRET_LEN)).then_some((id, secret))
}

/// SHA-256 of a secret, hex.
pub fn hash(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

/// Compares two hashes in time independent of where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The role a request needs, or None when it needs no key (the dashboard's files).
pub fn required_role(method: &Method, path: &str) -> Option<Role> {
    if !(path.starts_with("/v1/") || path == "/v1" || path == "/metrics") {
        return None;
    }
    // Probes of load balancers and supervisors carry no key; these answer ok or not, no more.
    if path == "/v1/health" || path == "/v1/ready" {
        return None;
    }
    if path == "/v1/keys" || path.starts_with("/v1/keys/") {
        return Some(Role::Admin);
    }
    // A container's logs and files may hold what a viewer should not see: a user key (of
    // the allocation's tenant) even to read them.
    if is_session_path(path) {
        return Some(Role::User);
    }
    // What the gateway reads holds token hashes: its admin key, nobody else.
    if path.starts_with("/v1/gateway/") {
        return Some(Role::Admin);
    }
    if method == Method::GET || method == Method::HEAD {
        return Some(Role::Viewer);
    }
    if path == "/v1/allocations" || path.starts_with("/v1/allocations/") {
        return Some(Role::User);
    }
    // A tenant's workspaces are its users' to delete.
    if path.starts_with("/v1/workspaces/") {
        return Some(Role::User);
    }
    Some(Role::Admin)
}

/// `/v1/allocations/{id}/{logs,exec,files}`.
fn is_session_path(path: &str) -> bool {
    path.strip_prefix("/v1/allocations/")
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(_, tail)| matches!(tail, "logs" | "exec" | "files"))
}

fn token_of(req: &Request) -> Option<String> {
    if let Some(v) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        let bearer = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "));
        return bearer.map(|t| t.trim().to_string());
    }
    // EventSource and a browser's WebSocket cannot send headers: the event stream and a
    // container's logs also take the key in the query.
    if takes_query_token(req.uri().path()) {
        let query = req.uri().query().unwrap_or_default();
        return serde_urlencoded::from_str::<Vec<(String, String)>>(query)
            .ok()?
            .into_iter()
            .find(|(k, _)| k == "access_token")
            .map(|(_, v)| v);
    }
    None
}

/// Whether `path` takes the key as `?access_token=` (for clients that cannot send headers).
fn takes_query_token(path: &str) -> bool {
    path == "/v1/events/stream"
        || path
            .strip_prefix("/v1/allocations/")
            .is_some_and(|rest| rest.ends_with("/logs") && rest.matches('/').count() == 1)
}

/// Removes `access_token` from the event stream's query, so handlers never see a key and
/// a client that always sends one works with auth off too.
fn strip_query_token(req: &mut Request) {
    let path = req.uri().path().to_string();
    if !takes_query_token(&path) {
        return;
    }
    let Some(query) = req.uri().query() else {
        return;
    };
    let Ok(pairs) = serde_urlencoded::from_str::<Vec<(String, String)>>(query) else {
        return;
    };
    if !pairs.iter().any(|(k, _)| k == "access_token") {
        return;
    }
    let kept: Vec<_> = pairs
        .into_iter()
        .filter(|(k, _)| k != "access_token")
        .collect();
    let query = serde_urlencoded::to_string(&kept).unwrap_or_default();
    let path_and_query = if query.is_empty() {
        path
    } else {
        format!("{path}?{query}")
    };
    if let Ok(pq) = path_and_query.parse() {
        let mut parts = req.uri().clone().into_parts();
        parts.path_and_query = Some(pq);
        if let Ok(uri) = axum::http::Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
}

/// Checks the request's key and role when auth is on. Never logs a token.
pub async fn authenticate(State(app): State<AppState>, mut req: Request, next: Next) -> Response {
    let token = token_of(&req);
    strip_query_token(&mut req);
    if !app.auth {
        return next.run(req).await;
    }
    let Some(needed) = required_role(req.method(), req.uri().path()) else {
        return next.run(req).await;
    };
    let unauthorized = |msg: &str| {
        let mut resp = ApiError::Unauthorized(msg.to_string()).into_response();
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        resp
    };
    let Some(token) = token else {
        return unauthorized("this API needs a key: send Authorization: Bearer <key>");
    };
    let Some((id, secret)) = parse(&token) else {
        return unauthorized("the key is not a Warmpool key");
    };
    let found = app.cluster.shared().read(|s| s.key(id).cloned());
    let key = match found {
        Some(k) if k.revoked_at.is_none() && same(&k.hash, &hash(secret)) => k,
        Some(k) if k.revoked_at.is_some() => return unauthorized("the key was revoked"),
        _ => return unauthorized("unknown key"),
    };
    let role = key.role;
    if role < needed {
        let msg = format!(
            "{} key may not {} {}; this needs {} key",
            article(role),
            req.method(),
            req.uri().path(),
            article(needed)
        );
        return ApiError::Forbidden(msg).into_response();
    }
    // A user or viewer key from before tenants existed belongs to `default`.
    let tenant = match role {
        Role::Admin => None,
        Role::User | Role::Viewer => Some(key.tenant.unwrap_or_default()),
    };
    req.extensions_mut().insert(Caller {
        id: key.id,
        name: key.name,
        role,
        tenant,
    });
    next.run(req).await
}

fn article(role: Role) -> &'static str {
    match role {
        Role::Admin => "an admin",
        Role::User => "a user",
        Role::Viewer => "a viewer",
    }
}

/// The key a request came with, for handlers that want to know (`GET /v1/whoami`).
#[derive(Clone, Debug)]
pub struct Caller {
    /// Key id.
    pub id: String,
    /// Key name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// The tenant it acts for; `None` for admins, who act for every tenant.
    pub tenant: Option<TenantId>,
}

/// Whose allocations a request may see and touch: one tenant's, or (`All`) every tenant's,
/// for admin keys and with auth off. Everything of another tenant answers as if absent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every tenant's.
    All,
    /// This tenant's only.
    Tenant(TenantId),
}

impl Scope {
    /// Whether something of `tenant` is visible.
    pub fn sees(&self, tenant: &TenantId) -> bool {
        match self {
            Scope::All => true,
            Scope::Tenant(t) => t == tenant,
        }
    }

    /// The one tenant, when scoped to one.
    pub fn tenant(&self) -> Option<&TenantId> {
        match self {
            Scope::All => None,
            Scope::Tenant(t) => Some(t),
        }
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Scope {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(match parts.extensions.get::<Caller>() {
            Some(Caller {
                tenant: Some(t), ..
            }) => Scope::Tenant(t.clone()),
            _ => Scope::All,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_verify() {
        let k = generate().unwrap();
        let (id, secret) = parse(&k.token).unwrap();
        assert_eq!(id, k.id);
        assert!(same(&hash(secret), &k.hash));
        assert!(!same(&hash("0".repeat(64).as_str()), &k.hash));
        assert_ne!(generate().unwrap().token, k.token);
    }

    #[test]
    fn the_bootstrap_token_is_made_once_for_root_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data").join(TOKEN_FILE);
        let first = bootstrap_token(&path).unwrap();
        assert!(parse(&first).is_some());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            bootstrap_token(&path).unwrap(),
            first,
            "kept across restarts"
        );
        std::fs::write(&path, "garbage").unwrap();
        assert!(matches!(
            bootstrap_token(&path),
            Err(TokenFileError::NotAKey)
        ));
    }

    #[test]
    fn malformed_tokens_are_not_keys() {
        for t in [
            "",
            "wpk_",
            "wpk_abc_def",
            "Bearer x",
            &format!("wpk_{}_{}", "g".repeat(12), "0".repeat(64)),
        ] {
            assert!(parse(t).is_none(), "{t:?}");
        }
    }

    #[test]
    fn roles_by_route() {
        assert_eq!(required_role(&Method::GET, "/v1/pools"), Some(Role::Viewer));
        assert_eq!(required_role(&Method::GET, "/metrics"), Some(Role::Viewer));
        assert_eq!(
            required_role(&Method::POST, "/v1/allocations"),
            Some(Role::User)
        );
        assert_eq!(
            required_role(&Method::DELETE, "/v1/allocations/x"),
            Some(Role::User)
        );
        assert_eq!(
            required_role(&Method::POST, "/v1/allocations/x/renew"),
            Some(Role::User)
        );
        assert_eq!(required_role(&Method::POST, "/v1/pools"), Some(Role::Admin));
        assert_eq!(
            required_role(&Method::POST, "/v1/nodes/n/drain"),
            Some(Role::Admin)
        );
        assert_eq!(required_role(&Method::POST, "/v1/keys"), Some(Role::Admin));
        assert_eq!(required_role(&Method::GET, "/v1/keys"), Some(Role::Admin));
        assert_eq!(
            required_role(&Method::GET, "/v1/gateway/allocations/x"),
            Some(Role::Admin)
        );
        assert_eq!(required_role(&Method::GET, "/"), None);
        assert_eq!(required_role(&Method::GET, "/v1/health"), None);
        assert_eq!(required_role(&Method::GET, "/v1/ready"), None);
        assert_eq!(
            required_role(&Method::GET, "/v1/tenants"),
            Some(Role::Viewer)
        );
        assert_eq!(
            required_role(&Method::PUT, "/v1/tenants/a"),
            Some(Role::Admin)
        );
        assert_eq!(required_role(&Method::GET, "/assets/app.js"), None);
        assert!(Role::Viewer < Role::User && Role::User < Role::Admin);
    }
}
