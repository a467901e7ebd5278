//! The control plane's side of the gateway (`warmpool-gateway`, issue 16): access tokens made
//! at grant, the gateway URLs in allocation answers, and the one route the gateway reads,
//! `GET /v1/gateway/allocations/{id}` (admin keys only).
//!
//! A token is `wpa_<64 hex>`: 256 random bits made by the member that takes the request. Only
//! its SHA-256 enters the Raft log and the state (as API keys are kept), so neither a snapshot
//! nor a log on disk holds a token that opens a container. The token is therefore in the one
//! answer that granted the allocation: a replay of the same idempotency key answers the
//! allocation without it.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use sha2::{Digest, Sha256};
use warmpool_proto::api::{ErrorBody, GatewayRoute, ACCESS_TOKEN_PREFIX};
use warmpool_proto::records::{Access, AllocationState};
use warmpool_proto::{Allocation, AllocationId};

use super::error::ApiError;
use super::openapi::Consistency;
use super::{read_fresh, AppState};

/// Where the gateway is, for the URLs in allocation answers (`--gateway-url`,
/// `--gateway-domain`). Nothing set: answers carry the token alone.
#[derive(Clone, Debug, Default)]
pub struct GatewayLinks {
    /// Base URL for path URLs, e.g. `https://gw.example.com` (no trailing slash).
    pub url: Option<String>,
    /// Domain for host URLs: `{allocation}-{port}.{domain}`.
    pub domain: Option<String>,
}

impl GatewayLinks {
    /// From the flags; the URL loses any trailing slash.
    pub fn new(url: Option<String>, domain: Option<String>) -> Self {
        GatewayLinks {
            url: url.map(|u| u.trim_end_matches('/').to_string()),
            domain: domain.map(|d| d.trim_matches('.').to_ascii_lowercase()),
        }
    }

    /// The gateway URLs of allocation `id` for each of `ports`.
    fn access(&self, id: AllocationId, ports: &BTreeMap<String, u16>) -> Access {
        let mut access = Access::default();
        if let Some(base) = &self.url {
            for name in ports.keys() {
                access
                    .urls
                    .insert(name.clone(), format!("{base}/s/{id}/{name}/"));
            }
        }
        if let Some(domain) = &self.domain {
            let scheme = match &self.url {
                Some(u) if u.starts_with("http://") => "http",
                _ => "https",
            };
            // The gateway's port, when the path URL names one, serves host URLs too.
            let port = self
                .url
                .as_deref()
                .and_then(|u| u.split_once("://"))
                .and_then(|(_, rest)| rest.split('/').next())
                .and_then(|host| host.rsplit_once(':'))
                .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
                .map_or_else(String::new, |(_, p)| format!(":{p}"));
            for name in ports.keys() {
                access.host_urls.insert(
                    name.clone(),
                    format!("{scheme}://{id}-{name}.{domain}{port}/"),
                );
            }
        }
        access
    }
}

/// A new access token and its hash.
pub fn new_token() -> Result<(String, String), ApiError> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| ApiError::Internal(format!("no randomness: {e}")))?;
    let token = format!("{ACCESS_TOKEN_PREFIX}{}", hex(&secret));
    let hash = token_hash(&token);
    Ok((token, hash))
}

/// SHA-256 of a whole token, hex (what the state keeps and the gateway compares).
pub fn token_hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An allocation as the API answers it: never the token's hash; the gateway URLs while it is
/// active; the token when this answer is the one that granted it.
pub fn present(app: &AppState, mut a: Allocation, token: Option<String>) -> Allocation {
    a.token_sha256 = None;
    a.access = None;
    let (ports, price) = app.cluster.shared().read(|s| {
        let pool = s.pool(&a.pool);
        (
            pool.map(|p| p.spec.reachable_ports())
                .unwrap_or_else(|| BTreeMap::from([(a.port.to_string(), a.port)])),
            pool.and_then(|p| p.spec.price_per_hour),
        )
    });
    if !matches!(
        a.state,
        AllocationState::Pending | AllocationState::Cancelled
    ) {
        a.cost = price.map(|p| a.cost_at(p, warmpool_proto::Timestamp::now()));
    }
    // A pending allocation's routes are known already (they go by its id): its token is
    // answered once, by the request that made it, and works once it is active.
    if !matches!(a.state, AllocationState::Active | AllocationState::Pending) {
        return a;
    }
    let mut access = app.gateway.access(a.id, &ports);
    access.token = token;
    if access != Access::default() {
        a.access = Some(access);
    }
    a
}

/// What the gateway needs to route to an allocation and check its token. Admin keys only.
#[utoipa::path(
    get, path = "/v1/gateway/allocations/{id}", tag = "allocations",
    params(("id" = AllocationId, Path, description = "Allocation id"), Consistency),
    responses(
        (status = 200, description = "The allocation's route", body = GatewayRoute),
        (status = 404, description = "No such allocation (`not_found`)", body = ErrorBody),
        (status = 503, description = "No quorum (`no_quorum`)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds"))),
    )
)]
pub async fn route(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<GatewayRoute>, ApiError> {
    let id: AllocationId = id
        .parse()
        .map_err(|_| ApiError::NotFound(format!("no allocation {id:?}")))?;
    read_fresh(&app, &headers, |s| {
        let a = s.allocation(&id)?;
        let ports = s
            .pool(&a.pool)
            .map(|p| p.spec.reachable_ports())
            .unwrap_or_else(|| BTreeMap::from([(a.port.to_string(), a.port)]));
        Some(GatewayRoute {
            allocation: a.id,
            state: a.state,
            ipv6: a.ipv6,
            port: a.port,
            ports,
            token_sha256: a.token_sha256.clone(),
        })
    })
    .await?
    .map(Json)
    .ok_or_else(|| ApiError::NotFound(format!("no allocation {id}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_prefixed_and_hashed() {
        let (a, ha) = new_token().unwrap();
        let (b, _) = new_token().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("wpa_") && a.len() == 68, "{a}");
        assert_eq!(ha, token_hash(&a));
        assert_eq!(ha.len(), 64);
    }

    #[test]
    fn links_by_path_and_host() {
        let id = AllocationId::new();
        let ports = BTreeMap::from([("web".to_string(), 8080), ("vnc".to_string(), 6080)]);
        let links = GatewayLinks::new(
            Some("http://127.0.0.1:8000/".into()),
            Some("gw.test.".into()),
        );
        let a = links.access(id, &ports);
        assert_eq!(a.urls["web"], format!("http://127.0.0.1:8000/s/{id}/web/"));
        assert_eq!(a.host_urls["vnc"], format!("http://{id}-vnc.gw.test:8000/"));
        assert_eq!(
            GatewayLinks::default().access(id, &ports),
            Access::default()
        );
    }
}
