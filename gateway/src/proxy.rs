//! The proxy: one request in, checked, forwarded to the container over IPv6, the answer
//! streamed back. Bodies are never collected: hyper hands each frame on as it comes, both
//! ways, so a 100 MB download holds a few buffers, not 100 MB. An upgrade (WebSocket) is
//! forwarded as such and then spliced byte for byte. Whatever the client spoke (HTTP/1.1 or
//! HTTP/2), the container is spoken to in HTTP/1.1.

use std::convert::Infallible;
use std::future::Future;
use std::net::{Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::{Body as HttpBody, Frame};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tracing::{debug, warn};
use warmpool_proto::api::{ErrorBody, ErrorCode, ErrorDetail};

use crate::routes::{Live, Lookup, Routes};
use crate::target::{self, Parsed, Target, TOKEN_HEADER};

/// Errors inside bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every answer's body.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Longest wait for a container to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long an idle connection to a container is kept for the next request. Short: the
/// agent's activity meter counts an open connection as traffic, and a pooled connection
/// nobody uses must not keep an idle container from being released.
const UPSTREAM_IDLE: Duration = Duration::from_secs(2);

/// Headers that concern one hop only (RFC 9110 7.6.1), never forwarded as they are.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The gateway's request handler.
pub struct Proxy {
    routes: Arc<Routes>,
    client: Client<HttpConnector, Incoming>,
    domain: Option<String>,
    tls: bool,
}

impl Proxy {
    /// A proxy over `routes`; `domain` enables host URLs; `tls` marks cookies `Secure`.
    pub fn new(routes: Arc<Routes>, domain: Option<String>, tls: bool) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(UPSTREAM_IDLE)
            .pool_max_idle_per_host(32)
            .build(connector);
        Proxy {
            routes,
            client,
            domain: domain.map(|d| d.trim_matches('.').to_ascii_lowercase()),
            tls,
        }
    }

    /// Answers one request; never fails (every failure is an answer).
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Response<Body>, Infallible> {
        let start = Instant::now();
        let (resp, outcome) = match self.serve(req, peer).await {
            Ok(r) => (r, Outcome::Proxied),
            Err(e) => {
                let outcome = e.outcome();
                (e.response(), outcome)
            }
        };
        metrics::counter!("warmpool_gateway_requests_total", "outcome" => outcome.as_str())
            .increment(1);
        if outcome == Outcome::Proxied {
            metrics::histogram!("warmpool_gateway_response_seconds")
                .record(start.elapsed().as_secs_f64());
        }
        Ok(resp)
    }

    async fn serve(
        &self,
        mut req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Response<Body>, Refusal> {
        let host = request_host(&req);
        let t =
            match target::parse(
                host.as_deref(),
                self.domain.as_deref(),
                req.uri().path(),
                req.uri().query(),
            ) {
                Parsed::Target(t) => t,
                Parsed::AddSlash(location) => {
                    return Ok(redirect(StatusCode::PERMANENT_REDIRECT, &location, None))
                }
                Parsed::NotOurs => return Err(Refusal::NotFound(
                    "not a gateway URL: /s/{allocation}/{port}/... or {allocation}-{port}.{domain}"
                        .into(),
                )),
            };
        let live = match self.routes.lookup(t.allocation).await {
            Ok(Lookup::Live(l)) => l,
            Ok(Lookup::Gone) => {
                return Err(Refusal::NotFound(format!(
                    "no active allocation {}",
                    t.allocation
                )))
            }
            Err(e) => return Err(Refusal::Unavailable(e.to_string())),
        };
        let route = &live.route;
        let Some(port) = target::resolve_port(&t.port, route.port, &route.ports) else {
            return Err(Refusal::NotFound(format!(
                "allocation {} has no port {:?}",
                t.allocation, t.port
            )));
        };
        let hash = route.token_sha256.as_deref().unwrap_or_default();

        // A browser's first visit: check the token, keep it in a cookie, drop it from the URL.
        let (query_token, rest_query) = target::take_query_token(t.query.as_deref());
        if let Some(token) = query_token {
            if !target::verify(&token, hash) {
                return Err(Refusal::Unauthorized);
            }
            let mut location = format!("{}{}", t.prefix, t.path);
            if let Some(q) = rest_query {
                location = format!("{location}?{q}");
            }
            let cookie = target::set_cookie(&token, &t.prefix, self.tls);
            return Ok(redirect(StatusCode::SEE_OTHER, &location, Some(&cookie)));
        }
        let headers = req.headers();
        let offered = target::offered(
            headers.get(TOKEN_HEADER).and_then(|v| v.to_str().ok()),
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
            headers
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok()),
        );
        if !offered.iter().any(|tok| target::verify(tok, hash)) {
            return Err(Refusal::Unauthorized);
        }
        let Some(ipv6) = route.ipv6 else {
            return Err(Refusal::NotFound(format!(
                "no active allocation {}",
                t.allocation
            )));
        };

        let upgrade = wants_upgrade(&req);
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let out = upstream_request(req, &t, ipv6, port, peer, host.as_deref(), self.tls)?;
        let ended = live.ended.clone();
        let mut resp = tokio::select! {
            r = self.client.request(out) => r.map_err(|e| Refusal::BadGateway(format!(
                "the container at [{ipv6}]:{port} did not answer: {}", error_chain(&e)
            )))?,
            _ = ended.cancelled() => return Err(Refusal::NotFound(format!(
                "allocation {} ended", t.allocation
            ))),
        };

        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client_upgrade) = client_upgrade {
                let upstream_upgrade = hyper::upgrade::on(&mut resp);
                tokio::spawn(splice(client_upgrade, upstream_upgrade, live.clone()));
                let (parts, _) = resp.into_parts();
                let mut out = Response::from_parts(parts, empty());
                strip_hop_by_hop(out.headers_mut(), true);
                return Ok(out);
            }
        }
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers, false);
        if let Some(loc) = parts
            .headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|l| target::rewrite_location(l, &t.prefix))
            .and_then(|l| HeaderValue::from_str(&l).ok())
        {
            parts.headers.insert(header::LOCATION, loc);
        }
        let body = Ending::new(body, live.ended.clone()).boxed_unsync();
        Ok(Response::from_parts(parts, body))
    }
}

/// The host the client asked for: `Host`, or the `:authority` of HTTP/2.
fn request_host(req: &Request<Incoming>) -> Option<String> {
    req.headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
}

fn wants_upgrade(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// The request to send to the container: its own path, HTTP/1.1, the hop-by-hop headers and
/// the access token taken off, the forwarding headers put on.
fn upstream_request(
    req: Request<Incoming>,
    t: &Target,
    ipv6: Ipv6Addr,
    port: u16,
    peer: SocketAddr,
    host: Option<&str>,
    tls: bool,
) -> Result<Request<Incoming>, Refusal> {
    let upgrade = wants_upgrade(&req);
    let (mut parts, body) = req.into_parts();
    let (_, rest_query) = target::take_query_token(t.query.as_deref());
    let path_and_query = match rest_query {
        Some(q) => format!("{}?{q}", t.path),
        None => t.path.clone(),
    };
    parts.uri = Uri::builder()
        .scheme("http")
        .authority(format!("[{ipv6}]:{port}"))
        .path_and_query(path_and_query)
        .build()
        .map_err(|e| Refusal::BadRequest(format!("unusable path: {e}")))?;
    parts.version = Version::HTTP_11;
    let h = &mut parts.headers;
    let upgrade_value = h.get(header::UPGRADE).cloned();
    strip_hop_by_hop(h, false);
    if upgrade {
        if let Some(u) = upgrade_value {
            h.insert(header::UPGRADE, u);
            h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
    }
    h.remove(TOKEN_HEADER);
    if h.get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(target::bearer_access_token)
        .is_some()
    {
        h.remove(header::AUTHORIZATION);
    }
    let cookies: Vec<String> = h
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(target::strip_cookie)
        .collect();
    h.remove(header::COOKIE);
    if !cookies.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&cookies.join("; ")) {
            h.insert(header::COOKIE, v);
        }
    }
    if let Some(host) = host.and_then(|v| HeaderValue::from_str(v).ok()) {
        // HTTP/2 has no Host header: the container sees the name the client used.
        h.insert(header::HOST, host.clone());
        h.insert(HeaderName::from_static("x-forwarded-host"), host);
    }
    let xff = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        h.insert(HeaderName::from_static("x-forwarded-for"), v);
    }
    h.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
    if !t.prefix.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&t.prefix) {
            h.insert(HeaderName::from_static("x-forwarded-prefix"), v);
        }
    }
    Ok(Request::from_parts(parts, body))
}

/// Removes hop-by-hop headers, and any header the `Connection` header names. For a `101`
/// answer, `Connection` and `Upgrade` stay (they are what the answer means).
fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .filter(|n| !(keep_upgrade && n == header::UPGRADE))
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in HOP_BY_HOP {
        if keep_upgrade && (*n == "connection" || *n == "upgrade") {
            continue;
        }
        h.remove(*n);
    }
}

/// Splices an upgraded connection (WebSocket) between client and container until either
/// side closes or the allocation ends.
async fn splice(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    live: Arc<Live>,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            debug!(error = %e, "upgrade failed");
            return;
        }
    };
    metrics::gauge!("warmpool_gateway_upgraded_connections").increment(1.0);
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            if let Err(e) = r {
                debug!(error = %e, "upgraded connection ended");
            }
        }
        _ = live.ended.cancelled() => {
            debug!(allocation = %live.route.allocation, "allocation ended: upgraded connection closed");
        }
    }
    metrics::gauge!("warmpool_gateway_upgraded_connections").decrement(1.0);
}

/// A container's answer body that stops when the allocation ends.
struct Ending {
    inner: Incoming,
    ended: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl Ending {
    fn new(inner: Incoming, ended: CancellationToken) -> Self {
        Ending {
            inner,
            ended: Box::pin(ended.cancelled_owned()),
        }
    }
}

/// The allocation ended while its answer was being sent.
#[derive(Debug, thiserror::Error)]
#[error("the allocation ended")]
struct Ended;

impl HttpBody for Ending {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.ended.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(Ended))));
        }
        Pin::new(&mut self.inner)
            .poll_frame(cx)
            .map_err(|e| Box::new(e) as BoxError)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Why a request was not forwarded.
#[derive(Debug)]
enum Refusal {
    BadRequest(String),
    Unauthorized,
    NotFound(String),
    BadGateway(String),
    Unavailable(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Proxied,
    BadRequest,
    Unauthorized,
    NotFound,
    BadGateway,
    Unavailable,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Proxied => "proxied",
            Outcome::BadRequest => "bad_request",
            Outcome::Unauthorized => "unauthorized",
            Outcome::NotFound => "not_found",
            Outcome::BadGateway => "bad_gateway",
            Outcome::Unavailable => "unavailable",
        }
    }
}

impl Refusal {
    fn outcome(&self) -> Outcome {
        match self {
            Refusal::BadRequest(_) => Outcome::BadRequest,
            Refusal::Unauthorized => Outcome::Unauthorized,
            Refusal::NotFound(_) => Outcome::NotFound,
            Refusal::BadGateway(_) => Outcome::BadGateway,
            Refusal::Unavailable(_) => Outcome::Unavailable,
        }
    }

    fn response(self) -> Response<Body> {
        let (code, message) = match self {
            Refusal::BadRequest(m) => (ErrorCode::BadRequest, m),
            Refusal::Unauthorized => (
                ErrorCode::Unauthorized,
                format!("this allocation's access token is needed: the {TOKEN_HEADER} header, Authorization: Bearer, or ?token= once"),
            ),
            Refusal::NotFound(m) => (ErrorCode::NotFound, m),
            Refusal::BadGateway(m) => {
                warn!(message = %m, "bad gateway");
                (ErrorCode::BadGateway, m)
            }
            Refusal::Unavailable(m) => (ErrorCode::NoQuorum, m),
        };
        let body = ErrorBody {
            error: ErrorDetail { code, message },
        };
        let json = serde_json::to_vec(&body).unwrap_or_default();
        let mut resp = Response::new(full(json));
        *resp.status_mut() =
            StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if code == ErrorCode::Unauthorized {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"warmpool\""),
            );
        }
        if code == ErrorCode::NoQuorum {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

fn redirect(status: StatusCode, location: &str, cookie: Option<&str>) -> Response<Body> {
    let mut resp = Response::new(empty());
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(location) {
        h.insert(header::LOCATION, v);
    }
    if let Some(v) = cookie.and_then(|c| HeaderValue::from_str(c).ok()) {
        h.insert(header::SET_COOKIE, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn empty() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn full(bytes: Vec<u8>) -> Body {
    Full::new(Bytes::from(bytes))
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
