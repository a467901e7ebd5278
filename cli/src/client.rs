//! The typed REST client of the control plane's API v1.
//!
//! One [`Client`] holds one `reqwest::Client` (one connection pool) and is cheap to clone:
//! build it once and share it. It knows every control-plane member it was given and picks one
//! per request:
//!
//! - it starts with the member that last answered;
//! - when a member refuses the connection (the request was never sent), or answers `503` with
//!   code `no_quorum` (it knows no leader; nothing was committed), it tries the next one, once
//!   round the list ([`ErrorCode::is_failover`]); `503 overloaded` (the leader's write queue
//!   is full) and `no_capacity` are answered to the caller with their Retry-After;
//! - a `GET` is also tried on the next member after any other transport failure, since reading
//!   twice is harmless; a write that may have reached the server is not repeated, and neither
//!   is anything that timed out (the caller decides: an allocation carries an idempotency key
//!   for exactly that).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use reqwest::header::{self, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::Serialize;
use warmpool_proto::api::{
    AddMember, ClusterView, ContainerQuery, CreateAllocation, CreateKey, CreatedKey, DrainNode,
    ErrorBody, ErrorCode, EventQuery, HealthView, KeyView, NodeView, PoolView, RenewAllocation,
    StatusView, TenantQuota, TenantView, UsageQuery, UsageView, WhoamiView, MAX_WAIT_MS,
};
use warmpool_proto::session::{ExecRequest, ExecResult, FileWritten};
use warmpool_proto::TenantId;
use warmpool_proto::{
    Allocation, AllocationId, Container, ContainerId, Event, MemberId, NodeId, PoolName, PoolSpec,
};

use crate::error::{root_cause, ClientError};

/// Time allowed to open a TCP connection to one member.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Time allowed for a whole request and its answer, per member tried.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Added to an allocation's `wait_ms` to get its request timeout.
pub const ALLOCATION_TIMEOUT_MARGIN: Duration = Duration::from_secs(10);
/// An event stream that delivers no byte (not even a keepalive comment) for this long is
/// taken for dead and reconnected.
pub const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// `GET /v1/allocations` query. (The proto crate has no type for it.)
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AllocationQuery {
    /// Only this pool's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Only this session's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Only in this state (`active` or `released`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Only on this node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Only this tenant's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// A page of at most this many (the answer is then a page: use
    /// [`Client::list_allocations_page`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// The page after this cursor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// Read the answering member's archive of released allocations instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archived: Option<bool>,
    /// Archived ones released at or after this time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<warmpool_proto::Timestamp>,
    /// Archived ones released at or before this time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<warmpool_proto::Timestamp>,
}

/// Paging of `GET /v1/containers` (besides its filters).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PageQuery {
    /// At most this many (the server's default page when none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// The page after this cursor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// Only this tenant's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Read the answering member's archive of ended containers instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archived: Option<bool>,
    /// Archived ones ended at or after this time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<warmpool_proto::Timestamp>,
    /// Archived ones ended at or before this time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<warmpool_proto::Timestamp>,
}

/// The time range of an archived event read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ArchiveRange {
    /// Always true: read the archive.
    pub archived: bool,
    /// At or after this time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<warmpool_proto::Timestamp>,
    /// At or before this time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<warmpool_proto::Timestamp>,
}

/// What `POST /v1/nodes/{id}/{action}` does to a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeAction {
    /// Take no new containers; keep the ones it has.
    Cordon,
    /// Take new containers again.
    Uncordon,
    /// Take no new containers and move the warm ones elsewhere.
    Drain,
}

impl NodeAction {
    /// The path segment.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeAction::Cordon => "cordon",
            NodeAction::Uncordon => "uncordon",
            NodeAction::Drain => "drain",
        }
    }
}

/// Settings of a [`Client`]; [`Client::new`] uses the defaults.
#[derive(Clone, Debug)]
pub struct ClientBuilder {
    urls: Vec<String>,
    token: Option<String>,
    connect_timeout: Duration,
    request_timeout: Duration,
    stream_idle_timeout: Duration,
    ca_pem: Option<Vec<u8>>,
}

impl ClientBuilder {
    /// Trust the CA certificates in this PEM (besides the system's) for `https://` members,
    /// e.g. a cluster's own CA.
    pub fn ca_pem(mut self, pem: Option<Vec<u8>>) -> Self {
        self.ca_pem = pem;
        self
    }

    /// The API token, sent as `Authorization: Bearer <token>`. An empty token means none.
    pub fn token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// Time allowed to open a connection to one member ([`DEFAULT_CONNECT_TIMEOUT`]).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Time allowed for one request to one member ([`DEFAULT_REQUEST_TIMEOUT`]). Allocations
    /// get at least their `wait_ms` plus [`ALLOCATION_TIMEOUT_MARGIN`].
    pub fn request_timeout(mut self, d: Duration) -> Self {
        self.request_timeout = d;
        self
    }

    /// Silence after which an event stream is reconnected ([`DEFAULT_STREAM_IDLE_TIMEOUT`]).
    pub fn stream_idle_timeout(mut self, d: Duration) -> Self {
        self.stream_idle_timeout = d;
        self
    }

    /// Checks the URLs and token and builds the client.
    pub fn build(self) -> Result<Client, ClientError> {
        if self.urls.is_empty() {
            return Err(ClientError::Config("no control-plane URL given".into()));
        }
        let endpoints = self
            .urls
            .iter()
            .map(|u| parse_base_url(u))
            .collect::<Result<Vec<_>, _>>()?;
        let auth = match self.token.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(t) => {
                let mut v = HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| {
                    ClientError::Config(
                        "the API token holds characters not allowed in an HTTP header".into(),
                    )
                })?;
                v.set_sensitive(true);
                Some(v)
            }
        };
        let tls = tls_config(self.ca_pem.as_deref())?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(self.connect_timeout)
            .user_agent(concat!("poolctl/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Config(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                endpoints,
                auth,
                request_timeout: self.request_timeout,
                stream_idle_timeout: self.stream_idle_timeout,
                preferred: AtomicUsize::new(0),
            }),
        })
    }
}

/// TLS for `https://` members: rustls with the ring provider, trusting the system's roots and
/// the CA certificates in `ca_pem`.
fn tls_config(ca_pem: Option<&[u8]>) -> Result<rustls::ClientConfig, ClientError> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    // Unreadable system roots leave those out, not the client.
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(pem) = ca_pem {
        let mut added = 0;
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| ClientError::Config(format!("CA certificate: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| ClientError::Config(format!("CA certificate: {e}")))?;
            added += 1;
        }
        if added == 0 {
            return Err(ClientError::Config(
                "the CA file holds no PEM certificate".into(),
            ));
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Config(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A client of the control plane's REST API v1. Clones share one connection pool.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    endpoints: Vec<Url>,
    auth: Option<HeaderValue>,
    request_timeout: Duration,
    stream_idle_timeout: Duration,
    /// Index into `endpoints` of the member that answered last.
    preferred: AtomicUsize,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("urls", &self.urls())
            .field("token", &self.inner.auth.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// One request, kept as data so it can be sent to one member after another.
pub(crate) struct Call {
    method: Method,
    path: Vec<String>,
    query: Vec<(String, String)>,
    body: Option<Vec<u8>>,
    /// Deadline for the whole exchange; None: the client's request timeout.
    timeout: Option<Duration>,
    /// No total deadline at all (event streams, which watch for silence instead).
    streaming: bool,
    headers: Vec<(HeaderName, HeaderValue)>,
    /// Content type of `body` (JSON unless set).
    content_type: &'static str,
}

impl Call {
    fn new(method: Method, path: &[&str]) -> Self {
        Call {
            method,
            path: path.iter().map(|s| s.to_string()).collect(),
            query: Vec::new(),
            body: None,
            timeout: None,
            streaming: false,
            headers: Vec::new(),
            content_type: "application/json",
        }
    }

    pub(crate) fn get(path: &[&str]) -> Self {
        Call::new(Method::GET, path)
    }

    fn post(path: &[&str]) -> Self {
        Call::new(Method::POST, path)
    }

    fn json<B: Serialize>(mut self, body: &B) -> Result<Self, ClientError> {
        let bytes = serde_json::to_vec(body)
            .map_err(|e| ClientError::Config(format!("cannot encode the request body: {e}")))?;
        self.body = Some(bytes);
        Ok(self)
    }

    pub(crate) fn query<Q: Serialize>(mut self, q: &Q) -> Result<Self, ClientError> {
        self.query = query_pairs(q)?;
        Ok(self)
    }

    /// Adds `q`'s pairs to the query already set.
    pub(crate) fn query_more<Q: Serialize>(mut self, q: &Q) -> Result<Self, ClientError> {
        self.query.extend(query_pairs(q)?);
        Ok(self)
    }

    pub(crate) fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    pub(crate) fn streaming(mut self) -> Self {
        self.streaming = true;
        self
    }
}

impl Client {
    /// A client of the members at `urls` (`http://host:port`, a scheme-less `host:port` means
    /// http), sending `token` as a bearer token when given. Default timeouts; see
    /// [`Client::builder`] to change them.
    pub fn new(urls: Vec<String>, token: Option<String>) -> Result<Client, ClientError> {
        Client::builder(urls).token(token).build()
    }

    /// Settings for a client of the members at `urls`.
    pub fn builder(urls: Vec<String>) -> ClientBuilder {
        ClientBuilder {
            urls,
            token: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            stream_idle_timeout: DEFAULT_STREAM_IDLE_TIMEOUT,
            ca_pem: None,
        }
    }

    /// The members' base URLs, normalised, in the order given.
    pub fn urls(&self) -> Vec<String> {
        self.inner.endpoints.iter().map(display_base).collect()
    }

    /// The base URL of the member that answered last (the first one tried next).
    pub fn current_url(&self) -> String {
        let i = self.inner.preferred.load(Ordering::Relaxed) % self.inner.endpoints.len();
        display_base(&self.inner.endpoints[i])
    }

    /// `GET /v1/health`: the answering member is alive.
    pub async fn health(&self) -> Result<HealthView, ClientError> {
        self.fetch(Call::get(&["v1", "health"])).await
    }

    /// `GET /v1/ready`: true when a member answers 200 (it knows a leader), false when every
    /// member tried answers 503.
    pub async fn ready(&self) -> Result<bool, ClientError> {
        match self.send(Call::get(&["v1", "ready"])).await {
            Ok((resp, url)) => {
                let status = resp.status();
                if status.is_success() {
                    Ok(true)
                } else {
                    Err(api_error(resp, &url).await)
                }
            }
            Err(ClientError::Api { status: 503, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `GET /v1/pools`.
    pub async fn list_pools(&self) -> Result<Vec<PoolView>, ClientError> {
        self.fetch(Call::get(&["v1", "pools"])).await
    }

    /// `GET /v1/pools/{name}`.
    pub async fn get_pool(&self, name: &PoolName) -> Result<PoolView, ClientError> {
        self.fetch(Call::get(&["v1", "pools", name.as_str()])).await
    }

    /// `POST /v1/pools`: creates a pool; `conflict` (409) if it exists.
    pub async fn create_pool(&self, spec: &PoolSpec) -> Result<PoolView, ClientError> {
        self.fetch(Call::post(&["v1", "pools"]).json(spec)?).await
    }

    /// `PUT /v1/pools/{spec.name}`: sets a pool's spec, creating the pool if needed. The flag
    /// is true when the pool was created (201).
    pub async fn put_pool(&self, spec: &PoolSpec) -> Result<(PoolView, bool), ClientError> {
        let call = Call::new(Method::PUT, &["v1", "pools", spec.name.as_str()]).json(spec)?;
        let (resp, url) = self.send(call).await?;
        let created = resp.status() == StatusCode::CREATED;
        Ok((decode(resp, &url).await?, created))
    }

    /// `DELETE /v1/pools/{name}`.
    pub async fn delete_pool(&self, name: &PoolName) -> Result<(), ClientError> {
        let (resp, url) = self
            .send(Call::new(Method::DELETE, &["v1", "pools", name.as_str()]))
            .await?;
        expect_success(resp, &url).await
    }

    /// `GET /v1/status`: counts over every pool and node.
    pub async fn status(&self) -> Result<StatusView, ClientError> {
        self.fetch(Call::get(&["v1", "status"])).await
    }

    /// `GET /v1/containers`, filtered by `query`.
    pub async fn list_containers(
        &self,
        query: &ContainerQuery,
    ) -> Result<Vec<Container>, ClientError> {
        self.fetch(Call::get(&["v1", "containers"]).query(query)?)
            .await
    }

    /// `GET /v1/containers` one page at a time (`page.limit` or the server's default), or
    /// archived containers with `page.archived`.
    pub async fn list_containers_page(
        &self,
        query: &ContainerQuery,
        page: &PageQuery,
    ) -> Result<warmpool_proto::api::ContainerPage, ClientError> {
        let mut page = page.clone();
        if page.limit.is_none() && page.cursor.is_none() && page.archived != Some(true) {
            page.limit = Some(100);
        }
        self.fetch(
            Call::get(&["v1", "containers"])
                .query(query)?
                .query_more(&page)?,
        )
        .await
    }

    /// `GET /v1/containers/{id}`.
    pub async fn get_container(&self, id: ContainerId) -> Result<Container, ClientError> {
        self.fetch(Call::get(&["v1", "containers", &id.to_string()]))
            .await
    }

    /// `POST /v1/allocations`: hands a warm container of the pool to a session.
    ///
    /// A request without an idempotency key gets a fresh one (a UUID v7) before it is sent,
    /// so that this client trying another member (after a `no_leader` answer that a follower
    /// gave after forwarding) can never make a second allocation. The request is allowed its
    /// `wait_ms` (the API's maximum when absent) plus [`ALLOCATION_TIMEOUT_MARGIN`].
    /// `no_capacity` (503) carries the server's `Retry-After` in the error.
    pub async fn allocate(&self, req: &CreateAllocation) -> Result<Allocation, ClientError> {
        let mut req = req.clone();
        if req.idempotency_key.is_none() {
            req.idempotency_key = Some(uuid::Uuid::now_v7().to_string());
        }
        let wait = Duration::from_millis(req.wait_ms.unwrap_or(MAX_WAIT_MS).min(MAX_WAIT_MS));
        let timeout = self
            .inner
            .request_timeout
            .max(wait + ALLOCATION_TIMEOUT_MARGIN);
        let mut call = Call::post(&["v1", "allocations"]).json(&req)?;
        call.timeout = Some(timeout);
        self.fetch(call).await
    }

    /// `GET /v1/allocations`, filtered by `query`.
    pub async fn list_allocations(
        &self,
        query: &AllocationQuery,
    ) -> Result<Vec<Allocation>, ClientError> {
        self.fetch(Call::get(&["v1", "allocations"]).query(query)?)
            .await
    }

    /// `GET /v1/allocations` one page at a time (`query.limit` or the server's default), or
    /// archived allocations with `query.archived`.
    pub async fn list_allocations_page(
        &self,
        query: &AllocationQuery,
    ) -> Result<warmpool_proto::api::AllocationPage, ClientError> {
        let mut query = query.clone();
        if query.limit.is_none() && query.cursor.is_none() && query.archived != Some(true) {
            query.limit = Some(100);
        }
        self.fetch(Call::get(&["v1", "allocations"]).query(&query)?)
            .await
    }

    /// Polls a pending allocation until it is no longer pending (active, or cancelled), with
    /// no deadline: an asynchronous allocation waits as long as the fleet needs. The access
    /// token answered when it was made is kept (later answers do not carry it).
    pub async fn wait_active(&self, mut a: Allocation) -> Result<Allocation, ClientError> {
        use warmpool_proto::records::AllocationState;
        let token = a.access.as_ref().and_then(|x| x.token.clone());
        let mut pause = Duration::from_millis(50);
        while a.state == AllocationState::Pending {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
            a = match self.get_allocation(a.id).await {
                Ok(now) => now,
                Err(ClientError::Api { status: 404, .. }) => {
                    let mut gone = a;
                    gone.state = AllocationState::Cancelled;
                    return Ok(gone);
                }
                Err(e) => return Err(e),
            };
        }
        if let (Some(t), Some(access)) = (token, a.access.as_mut()) {
            access.token.get_or_insert(t);
        }
        Ok(a)
    }

    /// `GET /v1/allocations/{id}`.
    pub async fn get_allocation(&self, id: AllocationId) -> Result<Allocation, ClientError> {
        self.fetch(Call::get(&["v1", "allocations", &id.to_string()]))
            .await
    }

    /// `GET /v1/gateway/allocations/{id}` (admin keys): the gateway's route to it.
    pub async fn gateway_route(
        &self,
        id: AllocationId,
    ) -> Result<warmpool_proto::api::GatewayRoute, ClientError> {
        self.fetch(Call::get(&[
            "v1",
            "gateway",
            "allocations",
            &id.to_string(),
        ]))
        .await
    }

    /// `DELETE /v1/allocations/{id}`: releases it (idempotent) and returns it released.
    pub async fn release(&self, id: AllocationId) -> Result<Allocation, ClientError> {
        self.fetch(Call::new(
            Method::DELETE,
            &["v1", "allocations", &id.to_string()],
        ))
        .await
    }

    /// `POST /v1/allocations/{id}/renew`: extends the lease from now.
    pub async fn renew(
        &self,
        id: AllocationId,
        req: &RenewAllocation,
    ) -> Result<Allocation, ClientError> {
        self.fetch(Call::post(&["v1", "allocations", &id.to_string(), "renew"]).json(req)?)
            .await
    }

    /// `GET /v1/allocations/{id}/logs`: the open event stream (SSE) of the container's
    /// output, for the caller to read (`log`, `dropped`, `end` events).
    pub async fn logs(
        &self,
        id: AllocationId,
        follow: bool,
        tail: Option<u64>,
    ) -> Result<reqwest::Response, ClientError> {
        #[derive(Serialize)]
        struct Q {
            follow: bool,
            #[serde(skip_serializing_if = "Option::is_none")]
            tail: Option<u64>,
        }
        let call = Call::get(&["v1", "allocations", &id.to_string(), "logs"])
            .query(&Q { follow, tail })?
            .streaming();
        self.open_stream(call).await
    }

    /// `POST /v1/allocations/{id}/exec`: runs a command and answers once it ended.
    pub async fn exec(
        &self,
        id: AllocationId,
        req: &ExecRequest,
    ) -> Result<ExecResult, ClientError> {
        let mut call = Call::post(&["v1", "allocations", &id.to_string(), "exec"]).json(req)?;
        call.timeout = Some(exec_timeout(req) + self.inner.request_timeout);
        self.fetch(call).await
    }

    /// `POST /v1/allocations/{id}/exec?stream=true`: the open NDJSON stream of
    /// [`ExecEvent`](warmpool_proto::session::ExecEvent)s, for the caller to read.
    pub async fn exec_stream(
        &self,
        id: AllocationId,
        req: &ExecRequest,
    ) -> Result<reqwest::Response, ClientError> {
        let call = Call::post(&["v1", "allocations", &id.to_string(), "exec"])
            .query(&StreamQuery { stream: true })?
            .json(req)?
            .streaming();
        self.open_stream(call).await
    }

    /// `GET /v1/allocations/{id}/files?path=`: the open download, for the caller to read.
    pub async fn download(
        &self,
        id: AllocationId,
        path: &str,
        archive: bool,
    ) -> Result<reqwest::Response, ClientError> {
        let call = Call::get(&["v1", "allocations", &id.to_string(), "files"])
            .query(&files_query(path, archive))?
            .streaming();
        self.open_stream(call).await
    }

    /// `PUT /v1/allocations/{id}/files?path=`: uploads `bytes` (a tar archive with `archive`).
    pub async fn upload(
        &self,
        id: AllocationId,
        path: &str,
        archive: bool,
        bytes: Vec<u8>,
    ) -> Result<FileWritten, ClientError> {
        let mut call = Call::new(
            Method::PUT,
            &["v1", "allocations", &id.to_string(), "files"],
        )
        .query(&files_query(path, archive))?;
        call.body = Some(bytes);
        call.content_type = if archive {
            "application/x-tar"
        } else {
            "application/octet-stream"
        };
        call.timeout = Some(Duration::from_secs(600));
        self.fetch(call).await
    }

    /// Sends a streaming call and checks its status; the body is the caller's to read.
    async fn open_stream(&self, call: Call) -> Result<reqwest::Response, ClientError> {
        let (resp, url) = self.send(call).await?;
        if resp.status().is_success() {
            Ok(resp)
        } else {
            Err(api_error(resp, &url).await)
        }
    }

    /// `GET /v1/events`, filtered and paged by `query`, ascending by `seq`.
    pub async fn events(&self, query: &EventQuery) -> Result<Vec<Event>, ClientError> {
        self.fetch(Call::get(&["v1", "events"]).query(query)?).await
    }

    /// `GET /v1/events?archived=true`: events evicted from the state, from the answering
    /// member's archive, oldest first, within `range`'s times (page on with `query.after`).
    pub async fn archived_events(
        &self,
        query: &EventQuery,
        range: &ArchiveRange,
    ) -> Result<Vec<Event>, ClientError> {
        let range = ArchiveRange {
            archived: true,
            ..range.clone()
        };
        self.fetch(
            Call::get(&["v1", "events"])
                .query(query)?
                .query_more(&range)?,
        )
        .await
    }

    /// `GET /v1/events/stream`: committed events as they happen, from `query.after` on.
    ///
    /// The stream reconnects by itself after a dropped connection or a silent one (see
    /// [`DEFAULT_STREAM_IDLE_TIMEOUT`]), with `Last-Event-ID` and `after` set to the last event
    /// delivered, waiting the server's `retry:` delay (1 s by default), doubled after each
    /// failed attempt up to 30 s. Events are delivered once each, in `seq` order. Without
    /// `after`, the server starts at its newest event; until a first event arrives there is
    /// no position to resume from, so give `after` to be gap-free from a known point.
    ///
    /// Errors are items, not the end: a failed connection attempt or a dropped connection is
    /// yielded as an `Err` that [`ClientError::is_retryable`], and the stream goes on trying;
    /// an event whose data does not decode is yielded as [`ClientError::Decode`] and skipped.
    /// An error that will not heal by itself (a 4xx such as 401 or 400, or an answer that is
    /// not an event stream) is yielded last and ends the stream.
    pub fn event_stream(
        &self,
        query: &EventQuery,
    ) -> impl Stream<Item = Result<Event, ClientError>> + Send + 'static {
        crate::stream::event_stream(self.clone(), query.clone())
    }

    /// `GET /v1/nodes`.
    pub async fn nodes(&self) -> Result<Vec<NodeView>, ClientError> {
        self.fetch(Call::get(&["v1", "nodes"])).await
    }

    /// `POST /v1/nodes/{id}/{cordon|uncordon|drain}`.
    pub async fn node_action(
        &self,
        id: &NodeId,
        action: NodeAction,
    ) -> Result<NodeView, ClientError> {
        self.fetch(Call::post(&["v1", "nodes", id.as_str(), action.as_str()]))
            .await
    }

    /// `POST /v1/nodes/{id}/drain` with a body: a drain with a deadline for its allocations.
    pub async fn drain_node(&self, id: &NodeId, req: &DrainNode) -> Result<NodeView, ClientError> {
        self.fetch(Call::post(&["v1", "nodes", id.as_str(), "drain"]).json(req)?)
            .await
    }

    /// `GET /v1/cluster`: Raft state and membership as the answering member sees them.
    pub async fn cluster(&self) -> Result<ClusterView, ClientError> {
        self.fetch(Call::get(&["v1", "cluster"])).await
    }

    /// `POST /v1/cluster/members`: adds a control-plane member.
    pub async fn add_member(&self, req: &AddMember) -> Result<ClusterView, ClientError> {
        self.fetch(Call::post(&["v1", "cluster", "members"]).json(req)?)
            .await
    }

    /// `DELETE /v1/cluster/members/{id}`: removes a control-plane member.
    pub async fn remove_member(&self, id: MemberId) -> Result<ClusterView, ClientError> {
        self.fetch(Call::new(
            Method::DELETE,
            &["v1", "cluster", "members", &id.to_string()],
        ))
        .await
    }

    /// `GET /v1/usage`: container time and cost per pool, and for `query.session`.
    pub async fn usage(&self, query: &UsageQuery) -> Result<UsageView, ClientError> {
        self.fetch(Call::get(&["v1", "usage"]).query(query)?).await
    }

    /// `GET /v1/whoami`: the key this client sends, and its role.
    pub async fn whoami(&self) -> Result<WhoamiView, ClientError> {
        self.fetch(Call::get(&["v1", "whoami"])).await
    }

    /// `GET /v1/keys`: every API key, revoked ones too (never a secret). Admin only.
    pub async fn list_keys(&self) -> Result<Vec<KeyView>, ClientError> {
        self.fetch(Call::get(&["v1", "keys"])).await
    }

    /// `POST /v1/keys`: makes a key. Its token is in this answer only. Admin only.
    ///
    /// Not retried on another member after a transport failure (no write is): a key made
    /// twice is two keys, and the first token would be lost with the answer.
    pub async fn create_key(&self, req: &CreateKey) -> Result<CreatedKey, ClientError> {
        self.fetch(Call::post(&["v1", "keys"]).json(req)?).await
    }

    /// `GET /v1/tenants`: tenants with limits (a tenant's key: its own).
    pub async fn list_tenants(&self) -> Result<Vec<TenantView>, ClientError> {
        self.fetch(Call::get(&["v1", "tenants"])).await
    }

    /// `GET /v1/tenants/{name}`: a tenant's limits and use.
    pub async fn get_tenant(&self, name: &TenantId) -> Result<TenantView, ClientError> {
        self.fetch(Call::get(&["v1", "tenants", name.as_str()]))
            .await
    }

    /// `PUT /v1/tenants/{name}`: sets a tenant's limits. Admin only.
    pub async fn put_tenant(
        &self,
        name: &TenantId,
        quota: &TenantQuota,
    ) -> Result<TenantView, ClientError> {
        self.fetch(Call::new(Method::PUT, &["v1", "tenants", name.as_str()]).json(quota)?)
            .await
    }

    /// `GET /v1/workspaces`: saved workspaces (a tenant's key: its own).
    pub async fn list_workspaces(
        &self,
        q: &warmpool_proto::workspace::WorkspaceQuery,
    ) -> Result<Vec<warmpool_proto::workspace::WorkspaceView>, ClientError> {
        self.fetch(Call::get(&["v1", "workspaces"]).query(q)?).await
    }

    /// `GET /v1/workspaces/{id}`: one workspace's current version.
    pub async fn get_workspace(
        &self,
        id: &str,
        q: &warmpool_proto::workspace::WorkspaceQuery,
    ) -> Result<warmpool_proto::workspace::WorkspaceView, ClientError> {
        self.fetch(Call::get(&["v1", "workspaces", id]).query(q)?)
            .await
    }

    /// `DELETE /v1/workspaces/{id}`: deletes a workspace and its versions.
    pub async fn delete_workspace(
        &self,
        id: &str,
        q: &warmpool_proto::workspace::WorkspaceQuery,
    ) -> Result<warmpool_proto::workspace::WorkspaceView, ClientError> {
        self.fetch(Call::new(Method::DELETE, &["v1", "workspaces", id]).query(q)?)
            .await
    }

    /// `DELETE /v1/tenants/{name}`: removes a tenant's limits. Admin only.
    pub async fn delete_tenant(&self, name: &TenantId) -> Result<TenantView, ClientError> {
        self.fetch(Call::new(Method::DELETE, &["v1", "tenants", name.as_str()]))
            .await
    }

    /// `DELETE /v1/keys/{id}`: revokes a key (idempotent). Admin only.
    pub async fn revoke_key(&self, id: &str) -> Result<KeyView, ClientError> {
        self.fetch(Call::new(Method::DELETE, &["v1", "keys", id]))
            .await
    }

    /// The silence after which an event stream reconnects.
    pub(crate) fn stream_idle_timeout(&self) -> Duration {
        self.inner.stream_idle_timeout
    }

    /// The deadline for opening a stream (up to the response headers).
    pub(crate) fn request_timeout(&self) -> Duration {
        self.inner.request_timeout
    }

    /// Sends `call` and decodes a 2xx answer as `T`.
    async fn fetch<T: DeserializeOwned>(&self, call: Call) -> Result<T, ClientError> {
        let (resp, url) = self.send(call).await?;
        decode(resp, &url).await
    }

    /// Sends `call` to one member after another (see the module docs for when it moves on) and
    /// returns the first answer that is not a fail-over `503`, with the URL asked. Any status
    /// other than 503 is returned as a response, for the caller to judge.
    pub(crate) async fn send(
        &self,
        call: Call,
    ) -> Result<(reqwest::Response, String), ClientError> {
        let n = self.inner.endpoints.len();
        let start = self.inner.preferred.load(Ordering::Relaxed) % n;
        let mut unreachable = Vec::new();
        let mut fallback: Option<ClientError> = None;
        let timeout = match call.streaming {
            true => None,
            false => Some(call.timeout.unwrap_or(self.inner.request_timeout)),
        };
        for k in 0..n {
            let idx = (start + k) % n;
            let base = &self.inner.endpoints[idx];
            let url = endpoint_url(base, &call.path, &call.query)?;
            let shown = url.to_string();
            let mut req = self.inner.http.request(call.method.clone(), url);
            req = req.header(header::ACCEPT, "application/json");
            if let Some(t) = timeout {
                req = req.timeout(t);
            }
            if let Some(auth) = &self.inner.auth {
                req = req.header(header::AUTHORIZATION, auth.clone());
            }
            for (name, value) in &call.headers {
                req = req.header(name.clone(), value.clone());
            }
            if let Some(body) = &call.body {
                req = req
                    .header(header::CONTENT_TYPE, call.content_type)
                    .body(body.clone());
            }
            match req.send().await {
                Ok(resp) if resp.status() == StatusCode::SERVICE_UNAVAILABLE => {
                    let err = api_error(resp, &shown).await;
                    match err.code() {
                        Some(code) if code.is_failover() => fallback = Some(err),
                        _ => {
                            self.prefer(idx);
                            return Err(err);
                        }
                    }
                }
                Ok(resp) => {
                    self.prefer(idx);
                    return Ok((resp, shown));
                }
                Err(e) if e.is_connect() => unreachable.push((display_base(base), root_cause(&e))),
                Err(e) if e.is_timeout() => {
                    return Err(ClientError::Timeout {
                        url: shown,
                        after: timeout,
                    })
                }
                Err(e) => {
                    let err = ClientError::Transport {
                        url: shown,
                        reason: root_cause(&e),
                        source: e,
                    };
                    if call.method != Method::GET {
                        return Err(err);
                    }
                    fallback = Some(err);
                }
            }
        }
        Err(fallback.unwrap_or(ClientError::Unreachable {
            attempts: unreachable,
        }))
    }

    fn prefer(&self, idx: usize) {
        self.inner.preferred.store(idx, Ordering::Relaxed);
    }
}

#[derive(Serialize)]
struct StreamQuery {
    stream: bool,
}

#[derive(Serialize)]
struct FilesQuery<'a> {
    path: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    archive: bool,
}

fn files_query(path: &str, archive: bool) -> FilesQuery<'_> {
    FilesQuery { path, archive }
}

/// How long an exec may take, as the server will allow it.
fn exec_timeout(req: &ExecRequest) -> Duration {
    Duration::from_secs(
        req.timeout_secs
            .unwrap_or(warmpool_proto::session::DEFAULT_EXEC_TIMEOUT_SECS),
    )
}

/// Reads a 2xx answer as `T`, or turns any other into [`ClientError::Api`].
async fn decode<T: DeserializeOwned>(resp: reqwest::Response, url: &str) -> Result<T, ClientError> {
    let status = resp.status();
    if !status.is_success() {
        return Err(api_error(resp, url).await);
    }
    let body = read_body(resp, url).await?;
    serde_json::from_slice(&body).map_err(|e| ClientError::Decode {
        url: url.to_string(),
        status: status.as_u16(),
        reason: format!("{e}; body: {}", snippet(&body)),
    })
}

/// Checks for a 2xx answer and ignores its body.
async fn expect_success(resp: reqwest::Response, url: &str) -> Result<(), ClientError> {
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(api_error(resp, url).await)
    }
}

async fn read_body(resp: reqwest::Response, url: &str) -> Result<Vec<u8>, ClientError> {
    resp.bytes()
        .await
        .map(|b| b.to_vec())
        .map_err(|e| transport_error(url, e))
}

pub(crate) fn transport_error(url: &str, e: reqwest::Error) -> ClientError {
    if e.is_timeout() {
        return ClientError::Timeout {
            url: url.to_string(),
            after: None,
        };
    }
    ClientError::Transport {
        url: url.to_string(),
        reason: root_cause(&e),
        source: e,
    }
}

/// Turns an error answer into [`ClientError::Api`] (or a transport error if its body cannot
/// be read).
pub(crate) async fn api_error(resp: reqwest::Response, url: &str) -> ClientError {
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    match read_body(resp, url).await {
        Ok(body) => error_from_body(status, &body, retry_after),
        Err(e) => e,
    }
}

/// The [`ClientError::Api`] for an error answer's status and body.
pub(crate) fn error_from_body(
    status: StatusCode,
    body: &[u8],
    retry_after: Option<Duration>,
) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => ClientError::Api {
            status: status.as_u16(),
            code: b.error.code,
            message: b.error.message,
            retry_after,
        },
        Err(_) => {
            let text = snippet(body);
            ClientError::Api {
                status: status.as_u16(),
                code: ErrorCode::Unknown,
                message: if text.is_empty() {
                    status.canonical_reason().unwrap_or("error").to_lowercase()
                } else {
                    text
                },
                retry_after,
            }
        }
    }
}

/// `Retry-After` as delay-seconds. (The HTTP-date form is not used by the API.)
pub(crate) fn parse_retry_after(v: &str) -> Option<Duration> {
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The first 200 characters of a body, on one line.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let one_line: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one_line.chars().count() > 200 {
        format!("{}…", one_line.chars().take(200).collect::<String>())
    } else {
        one_line
    }
}

/// A member's base URL from what a user typed: `host:port` means `http://host:port`; a
/// trailing `/`, query and fragment are dropped; a path prefix (behind a proxy) is kept.
pub(crate) fn parse_base_url(s: &str) -> Result<Url, ClientError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(ClientError::Config("empty control-plane URL".into()));
    }
    let full = if s.contains("://") {
        s.to_string()
    } else {
        format!("http://{s}")
    };
    let mut url = Url::parse(&full)
        .map_err(|e| ClientError::Config(format!("invalid control-plane URL {s:?}: {e}")))?;
    match url.scheme() {
        "http" | "https" => {}
        other => {
            return Err(ClientError::Config(format!(
                "invalid control-plane URL {s:?}: scheme {other:?} is not http or https"
            )))
        }
    }
    if url.host().is_none() || url.cannot_be_a_base() {
        return Err(ClientError::Config(format!(
            "invalid control-plane URL {s:?}: no host"
        )));
    }
    url.set_query(None);
    url.set_fragment(None);
    Ok(url)
}

fn display_base(url: &Url) -> String {
    url.as_str().trim_end_matches('/').to_string()
}

/// `base` + path segments (each percent-encoded) + query.
pub(crate) fn endpoint_url(
    base: &Url,
    path: &[String],
    query: &[(String, String)],
) -> Result<Url, ClientError> {
    let mut url = base.clone();
    url.path_segments_mut()
        .map_err(|_| ClientError::Config(format!("{base} cannot take a path")))?
        .pop_if_empty()
        .extend(path);
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(query);
    }
    Ok(url)
}

/// A query struct's set fields as `key=value` pairs, in key order. Strings go as they are,
/// numbers and booleans as JSON writes them; `None` fields are left out.
pub(crate) fn query_pairs<Q: Serialize>(q: &Q) -> Result<Vec<(String, String)>, ClientError> {
    let value = serde_json::to_value(q)
        .map_err(|e| ClientError::Config(format!("cannot encode the query: {e}")))?;
    let serde_json::Value::Object(map) = value else {
        return Err(ClientError::Config("a query must be a struct".into()));
    };
    Ok(map
        .into_iter()
        .filter_map(|(k, v)| match v {
            serde_json::Value::Null => None,
            serde_json::Value::String(s) => Some((k, s)),
            other => Some((k, other.to_string())),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(base: &str, path: &[&str], q: &[(&str, &str)]) -> String {
        let base = parse_base_url(base).unwrap();
        let path: Vec<String> = path.iter().map(|s| s.to_string()).collect();
        let q: Vec<(String, String)> = q
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        endpoint_url(&base, &path, &q).unwrap().to_string()
    }

    #[test]
    fn base_urls_are_normalised() {
        assert_eq!(
            display_base(&parse_base_url("127.0.0.1:7070").unwrap()),
            "http://127.0.0.1:7070"
        );
        assert_eq!(
            display_base(&parse_base_url(" http://cp1:7070/ ").unwrap()),
            "http://cp1:7070"
        );
        assert_eq!(
            display_base(&parse_base_url("http://[fd36:1::2]:7070").unwrap()),
            "http://[fd36:1::2]:7070"
        );
        assert_eq!(
            display_base(&parse_base_url("http://proxy/warmpool/?x=1").unwrap()),
            "http://proxy/warmpool"
        );
        assert_eq!(
            display_base(&parse_base_url("https://cp1.example:7443").unwrap()),
            "https://cp1.example:7443"
        );
        for bad in ["", "ftp://cp", "http://"] {
            assert!(
                matches!(parse_base_url(bad), Err(ClientError::Config(_))),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn paths_are_joined_and_encoded() {
        assert_eq!(
            url("http://cp:7070", &["v1", "pools", "demo"], &[]),
            "http://cp:7070/v1/pools/demo"
        );
        assert_eq!(
            url("http://p/warmpool/", &["v1", "status"], &[]),
            "http://p/warmpool/v1/status"
        );
        assert_eq!(
            url("http://cp", &["v1", "nodes", "a b/c", "drain"], &[]),
            "http://cp/v1/nodes/a%20b%2Fc/drain"
        );
        assert_eq!(
            url(
                "http://cp",
                &["v1", "events"],
                &[("kind", "pool_created,node_down"), ("session", "s&1")]
            ),
            "http://cp/v1/events?kind=pool_created%2Cnode_down&session=s%261"
        );
    }

    #[test]
    fn queries_keep_only_set_fields() {
        let q = EventQuery {
            after: Some(41),
            limit: Some(5),
            pool: Some("demo".into()),
            ..Default::default()
        };
        assert_eq!(
            query_pairs(&q).unwrap(),
            vec![
                ("after".to_string(), "41".to_string()),
                ("limit".to_string(), "5".to_string()),
                ("pool".to_string(), "demo".to_string())
            ]
        );
        assert!(query_pairs(&ContainerQuery::default()).unwrap().is_empty());
        let a = AllocationQuery {
            session: Some("s-1".into()),
            state: Some("active".into()),
            ..Default::default()
        };
        assert_eq!(
            query_pairs(&a).unwrap(),
            vec![
                ("session".to_string(), "s-1".to_string()),
                ("state".to_string(), "active".to_string())
            ]
        );
    }

    #[test]
    fn error_bodies_become_api_errors() {
        let body =
            br#"{"error":{"code":"no_capacity","message":"no warm container in pool demo"}}"#;
        let e = error_from_body(
            StatusCode::SERVICE_UNAVAILABLE,
            body,
            parse_retry_after(" 3 "),
        );
        match e {
            ClientError::Api {
                status,
                code,
                message,
                retry_after,
            } => {
                assert_eq!(status, 503);
                assert_eq!(code, ErrorCode::NoCapacity);
                assert_eq!(message, "no warm container in pool demo");
                assert_eq!(retry_after, Some(Duration::from_secs(3)));
            }
            other => panic!("{other:?}"),
        }
        // A proxy's HTML page, or nothing at all, still gives a usable error.
        let e = error_from_body(
            StatusCode::BAD_GATEWAY,
            b"<html>\n bad gateway </html>",
            None,
        );
        assert_eq!(e.to_string(), "http_502: <html>  bad gateway </html>");
        let e = error_from_body(StatusCode::UNAUTHORIZED, b"", None);
        assert_eq!(e.to_string(), "http_401: unauthorized");
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }

    #[test]
    fn builder_checks_urls_and_token() {
        assert!(matches!(
            Client::new(vec![], None),
            Err(ClientError::Config(_))
        ));
        assert!(matches!(
            Client::new(vec!["http://a:1".into()], Some("bad\ntoken".into())),
            Err(ClientError::Config(_))
        ));
        let c = Client::new(vec!["a:1".into(), "http://b:2/".into()], Some("  ".into())).unwrap();
        assert_eq!(c.urls(), vec!["http://a:1", "http://b:2"]);
        assert_eq!(c.current_url(), "http://a:1");
        assert!(c.inner.auth.is_none(), "a blank token means none");
        let dbg = format!(
            "{:?}",
            Client::new(vec!["a:1".into()], Some("secret".into())).unwrap()
        );
        assert!(!dbg.contains("secret"), "{dbg}");
    }
}
