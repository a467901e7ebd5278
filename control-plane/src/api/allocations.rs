//! `/v1/allocations`: the hot path. No Docker call happens here: an allocation is one Raft
//! write that hands over a container already warm.

use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use tokio::time::Instant;
use warmpool_proto::api::{CreateAllocation, ErrorBody, RenewAllocation};
use warmpool_proto::api::{MAX_IDEMPOTENCY_KEY, MAX_WAIT_MS};
use warmpool_proto::pool::MAX_LEASE_SECONDS;
use warmpool_proto::records::{AllocationState, ReleaseReason};
use warmpool_proto::{Allocation, AllocationId, SessionId};

use super::error::ApiError;
use super::extract::{ApiJson, OptionalJson};
use super::gateway::present;
use super::openapi::Consistency;
use super::{barrier_if_asked, read_fresh, AppState};
use crate::auth::Scope;
use crate::state::{Command, RejectCode, Request, Response as Applied};

pub(super) fn parse_id(id: &str) -> Result<AllocationId, ApiError> {
    id.parse()
        .map_err(|_| ApiError::NotFound(format!("no allocation {id:?}")))
}

fn lease_ms(secs: u64) -> Result<u64, ApiError> {
    if secs == 0 || secs > MAX_LEASE_SECONDS {
        return Err(ApiError::BadRequest(format!(
            "lease_seconds must be 1..={MAX_LEASE_SECONDS}"
        )));
    }
    Ok(secs * 1000)
}

/// Records one allocation attempt's latency and outcome.
fn record(pool: &str, outcome: &'static str, start: Instant) {
    let labels = [("pool", pool.to_string()), ("outcome", outcome.to_string())];
    metrics::histogram!("warmpool_allocation_duration_seconds", &labels)
        .record(start.elapsed().as_secs_f64());
    metrics::counter!("warmpool_allocations_total", &labels).increment(1);
}

/// Hands out a warm container of the pool: one Raft write, no Docker call. When none is warm,
/// waits up to `wait_ms` in the pool's queue, or with `async: true` answers `202` at once with
/// the allocation `pending` in that queue. `location` limits it to matching nodes. The same
/// `idempotency_key` always answers the same allocation.
#[utoipa::path(
    post, path = "/v1/allocations", tag = "allocations", request_body = CreateAllocation,
    responses(
        (status = 201, description = "Allocated (or the allocation this idempotency key already made)", body = Allocation,
            headers(
                ("Location" = String, description = "`/v1/allocations/<id>`"),
                ("Idempotent-Replayed" = String, description = "`true` when the key's earlier allocation is answered"),
            )),
        (status = 202, description = "`async: true` and no matching container warm: the allocation is `pending` (or the pending one this idempotency key already made); poll `Location` or watch the event stream for `container_allocated`", body = Allocation,
            headers(
                ("Location" = String, description = "`/v1/allocations/<id>`"),
                ("Idempotent-Replayed" = String, description = "`true` when the key's earlier allocation is answered"),
            )),
        (status = 400, description = "Malformed or out-of-range request, or `max_lifetime_secs` longer than the pool's (`bad_request`)", body = ErrorBody),
        (status = 404, description = "No such pool (`not_found`)", body = ErrorBody),
        (status = 403, description = "A user key named another tenant (`forbidden`)", body = ErrorBody),
        (status = 409, description = "The idempotency key was used for another request (`conflict`), or no ready node matches `location` (`no_matching_node`)", body = ErrorBody),
        (status = 429, description = "The tenant holds its `max_allocations` (`over_quota`) or asks faster than its `allocations_per_minute` (`rate_limited`)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds"))),
        (status = 413, description = "Body over 64 KiB (`payload_too_large`)", body = ErrorBody),
        (status = 503, description = "No warm container came free within `wait_ms` (`no_capacity`), or no quorum (`no_quorum`)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds"))),
    )
)]
pub async fn create(
    State(app): State<AppState>,
    scope: Scope,
    ApiJson(mut req): ApiJson<CreateAllocation>,
) -> Result<Response, ApiError> {
    warmpool_proto::session::check_metadata(&req.metadata).map_err(ApiError::BadRequest)?;
    if req.asynchronous
        && (!req.env.is_empty()
            || !req.secrets.is_empty()
            || req.wait_for.is_some()
            || req.workspace.is_some())
    {
        return Err(ApiError::BadRequest(
            "async cannot carry env, secrets, a workspace or wait_for: give env and secrets once the allocation is active; a workspace needs a synchronous allocation"
                .into(),
        ));
    }
    if let Some(location) = &req.location {
        warmpool_proto::api::check_location(location).map_err(ApiError::BadRequest)?;
    }
    warmpool_proto::session::check_settings(&req.env, &req.secrets)
        .map_err(ApiError::BadRequest)?;
    // The values leave the request here: only the answering member ever holds them, on their
    // way to the container's agent.
    let settings = crate::api::settings::Settings::take(&mut req);
    let restore = crate::api::workspaces::Restore::check(&app, &req).await?;
    let (allocation, replayed, token) = claim(&app, &scope, req, settings.is_some()).await?;
    if allocation.state == AllocationState::Pending {
        return Ok(pending(&app, allocation, replayed, token));
    }
    let allocation = unpause(&app, allocation).await?;
    let allocation = match settings {
        Some(s) => s.deliver(&app, allocation).await,
        None => allocation,
    };
    let allocation = match restore {
        Some(r) => r.deliver(&app, allocation).await,
        None => allocation,
    };
    Ok(allocated(&app, allocation, replayed, token))
}

/// Unpause attempts (each on another container) before the allocation is given up.
const UNPAUSE_ATTEMPTS: u32 = 3;
/// How long an unpaused container may take to accept a connection on its port.
const UNPAUSE_PORT_TIMEOUT_MS: u64 = 2_000;

/// An allocation served from the paused tier: its agent unpauses the container and checks it
/// answers on its port before the client gets the answer. A container that does not is
/// destroyed and the allocation moved to another one ([`Command::UnpauseFailed`]), up to
/// [`UNPAUSE_ATTEMPTS`] times. Warm allocations pass through untouched.
///
/// Should this member or the agent die in between, the allocation stands with its container
/// paused; the leader's reconciliation sees an allocated container its agent reports paused
/// and unpauses it (level-triggered), so it is never left frozen.
async fn unpause(app: &AppState, mut a: Allocation) -> Result<Allocation, ApiError> {
    use warmpool_proto::session::{SessionReply, SessionRequest};
    for _ in 0..UNPAUSE_ATTEMPTS {
        if a.tier != Some(warmpool_proto::Tier::Paused) || a.state != AllocationState::Active {
            return Ok(a);
        }
        let start = Instant::now();
        let req = SessionRequest::Unpause {
            container: a.container_id,
            timeout_ms: UNPAUSE_PORT_TIMEOUT_MS,
        };
        let timeout = Duration::from_millis(UNPAUSE_PORT_TIMEOUT_MS + 1_000);
        let why = match app.sessions.request(&a.node, &req, timeout).await {
            Ok(SessionReply::Unpaused { took_ms, .. }) => {
                let labels = [("pool", a.pool.to_string()), ("outcome", "ok".to_string())];
                metrics::histogram!("warmpool_unpause_duration_seconds", &labels)
                    .record(start.elapsed().as_secs_f64());
                tracing::info!(allocation = %a.id, container = %a.container_id, agent_ms = took_ms, total_ms = start.elapsed().as_millis() as u64, "unpaused for its allocation");
                return Ok(a);
            }
            Ok(other) => format!("{other:?}"),
            Err(e) => e.to_string(),
        };
        let labels = [
            ("pool", a.pool.to_string()),
            ("outcome", "failed".to_string()),
        ];
        metrics::histogram!("warmpool_unpause_duration_seconds", &labels)
            .record(start.elapsed().as_secs_f64());
        tracing::warn!(allocation = %a.id, container = %a.container_id, error = %why, "a paused container did not answer once unpaused; moving the allocation");
        let cmd = Command::UnpauseFailed {
            allocation_id: a.id,
            container: a.container_id,
        };
        match app.cluster.write(Request::now(cmd)).await? {
            Applied::Allocation { allocation, .. } => a = allocation,
            Applied::Rejected(r) => return Err(r.into()),
            other => return Err(ApiError::Internal(format!("unexpected answer {other:?}"))),
        }
    }
    if a.state == AllocationState::Active && a.tier == Some(warmpool_proto::Tier::Paused) {
        // Out of attempts with one more paused container untried: nobody will hold it.
        let cmd = Command::Release {
            allocation_id: a.id,
            reason: ReleaseReason::Lost,
        };
        if let Err(e) = app.cluster.write(Request::now(cmd)).await {
            tracing::warn!(allocation = %a.id, error = %e, "releasing an allocation no container answered for failed");
        }
    }
    if a.state != AllocationState::Active || a.tier == Some(warmpool_proto::Tier::Paused) {
        return Err(ApiError::NoCapacity {
            message: format!(
                "no container of pool {:?} answered once unpaused; retry",
                a.pool.as_str()
            ),
            retry_after: 1,
        });
    }
    Ok(a)
}

/// The grant itself: one Raft write (or a wait in the pool's queue).
async fn claim(
    app: &AppState,
    scope: &Scope,
    req: CreateAllocation,
    with_settings: bool,
) -> Result<(Allocation, bool, Option<String>), ApiError> {
    let start = Instant::now();
    let tenant = match (scope, req.tenant.clone()) {
        (Scope::All, t) => t.unwrap_or_default(),
        (Scope::Tenant(own), Some(asked)) if &asked != own => {
            return Err(ApiError::Forbidden(format!(
                "this key allocates for tenant {own}, not {asked}"
            )))
        }
        (Scope::Tenant(own), _) => own.clone(),
    };
    let wait_ms = req.wait_ms.unwrap_or(0);
    if wait_ms > MAX_WAIT_MS {
        return Err(ApiError::BadRequest(format!(
            "wait_ms must be at most {MAX_WAIT_MS}"
        )));
    }
    if let Some(key) = &req.idempotency_key {
        if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
            return Err(ApiError::BadRequest(format!(
                "idempotency_key must be 1..={MAX_IDEMPOTENCY_KEY} bytes"
            )));
        }
    }
    let pool = req.pool.clone();
    let (default_lease, pool_lifetime) = read_fresh(app, &HeaderMap::new(), |s| {
        s.pool(&pool)
            .map(|p| (p.spec.lease_seconds, p.spec.max_lifetime_secs))
    })
    .await?
    .ok_or_else(|| ApiError::NotFound(format!("no pool named {:?}", pool.as_str())))?;
    let lease_ms = lease_ms(req.lease_seconds.unwrap_or(default_lease))?;
    if let Some(asked) = req.max_lifetime_secs {
        check_lifetime(asked, pool_lifetime, pool.as_str())?;
    }
    let session = match req.session_id {
        Some(s) => s,
        None => SessionId::new(format!("s-{}", uuid::Uuid::now_v7()))
            .map_err(|e| ApiError::Internal(e.to_string()))?,
    };
    let allocation_id = AllocationId::new();
    // The gateway token: only its hash goes into the log.
    let (token, token_sha256) = super::gateway::new_token()?;
    let cmd = Command::Allocate {
        allocation_id,
        pool: pool.clone(),
        session,
        lease_ms,
        idempotency_key: req.idempotency_key.clone(),
        wait_ms,
        tenant: tenant.clone(),
        metadata: req.metadata.clone(),
        with_settings,
        workspace: req.workspace.clone(),
        token_sha256: Some(token_sha256),
        asynchronous: req.asynchronous,
        location: req.location.clone(),
        max_lifetime_secs: req.max_lifetime_secs,
    };
    let deadline = start + Duration::from_millis(wait_ms);
    let shared = app.cluster.shared().clone();
    // Subscribe before writing, so a container granted right after the write is not missed.
    let mut applied = shared.subscribe();
    // Until the client has its answer, an allocation this write may make is held by nobody.
    let unanswered = Unanswered::new(app, allocation_id, req.idempotency_key.clone(), tenant);
    let queued = match app.cluster.write(Request::now(cmd)).await {
        Ok(Applied::Allocation {
            allocation,
            replayed,
        }) => {
            unanswered.answered();
            record(
                pool.as_str(),
                if replayed { "replayed" } else { "warm" },
                start,
            );
            // A replay's token was made by the request that granted it: not known here.
            let token = (!replayed).then_some(token);
            return Ok((allocation, replayed, token));
        }
        Ok(Applied::Queued {
            allocation_id: queued,
            ..
        }) if req.asynchronous => {
            // Answered at once: the allocation is pending in the replicated queue, and is
            // granted there when a container is warm for it.
            unanswered.answered();
            let a = shared
                .read(|s| s.allocation_or_pending(&queued))
                .ok_or_else(|| ApiError::Internal(format!("allocation {queued} vanished")))?;
            let replayed = queued != allocation_id;
            record(
                pool.as_str(),
                if replayed { "replayed" } else { "pending" },
                start,
            );
            let token = (!replayed).then_some(token);
            return Ok((a, replayed, token));
        }
        Ok(Applied::Queued { allocation_id, .. }) => allocation_id,
        Ok(Applied::Rejected(r)) => {
            unanswered.answered();
            record(
                pool.as_str(),
                match r.code {
                    RejectCode::NoCapacity => "no_capacity",
                    RejectCode::OverQuota => "over_quota",
                    RejectCode::RateLimited => "rate_limited",
                    RejectCode::NoMatchingNode => "no_matching_node",
                    _ => "refused",
                },
                start,
            );
            return Err(r.into());
        }
        Ok(other) => return Err(ApiError::Internal(format!("unexpected answer {other:?}"))),
        Err(e) => {
            record(pool.as_str(), "unavailable", start);
            if matches!(e, crate::cluster::ClusterError::Overloaded(_)) {
                // Refused before it was proposed: nothing can come of it.
                unanswered.answered();
            }
            return Err(e.into());
        }
    };
    metrics::gauge!("warmpool_allocation_waiting", "pool" => pool.to_string()).increment(1.0);
    let _waiting = WaitGauge(pool.to_string());
    // Queued in the replicated state: the first container to become warm is ours, in order.
    // Watch the local replica until the allocation shows up, or the time is up.
    loop {
        if let Some(a) = shared.read(|s| s.allocation(&queued).cloned()) {
            record(pool.as_str(), "waited", start);
            unanswered.answered();
            return Ok((a, false, Some(token)));
        }
        if Instant::now() >= deadline {
            break;
        }
        let _ = tokio::time::timeout_at(deadline, applied.changed()).await;
    }
    // Leave the queue; if a container came at the last moment, take it.
    match app
        .cluster
        .write(Request::now(Command::CancelWait {
            allocation_id: queued,
        }))
        .await?
    {
        Applied::Allocation { allocation, .. } => {
            record(pool.as_str(), "waited", start);
            unanswered.answered();
            Ok((allocation, false, Some(token)))
        }
        _ => {
            unanswered.answered();
            record(pool.as_str(), "no_capacity", start);
            Err(ApiError::NoCapacity {
                message: format!(
                    "no warm container of pool {:?} became free within {wait_ms} ms; retry, or pass a longer wait_ms",
                    pool.as_str()
                ),
                retry_after: 1,
            })
        }
    }
}

/// An allocation request whose client has no answer yet. Dropped without
/// [`Unanswered::answered`] (the write's outcome is unknown because it timed out, or the
/// client hung up and the handler was dropped mid-way), it proposes [`Command::Abandon`]: an
/// allocation the write made after all is released unless the client asks again with its
/// idempotency key within `--abandon-grace-secs`.
struct Unanswered {
    app: Option<AppState>,
    /// The [`Command::Abandon`] to propose, its grace left to fill in.
    abandon: Command,
}

impl Unanswered {
    /// For the allocate request `allocation_id` (asked under `idempotency_key`, for
    /// `tenant`) about to be written.
    fn new(
        app: &AppState,
        allocation_id: AllocationId,
        idempotency_key: Option<String>,
        tenant: warmpool_proto::TenantId,
    ) -> Self {
        Unanswered {
            app: Some(app.clone()),
            abandon: Command::Abandon {
                allocation_id,
                grace_ms: app.abandon_grace.as_millis() as u64,
                idempotency_key,
                tenant,
            },
        }
    }

    /// The client has (or is being given) its answer, or nothing can come of the request.
    fn answered(mut self) {
        self.app = None;
    }
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some(app) = self.app.take() {
            let cmd = std::mem::replace(&mut self.abandon, Command::ExpireWaits);
            tokio::spawn(abandon(app, cmd));
        }
    }
}

/// Proposes `cmd`, a [`Command::Abandon`], retrying for about a minute; if no leader takes it
/// by then, the allocation's lease still ends it.
async fn abandon(app: AppState, cmd: Command) {
    let Command::Abandon {
        allocation_id: id,
        grace_ms,
        ..
    } = cmd
    else {
        return;
    };
    for attempt in 0..6u32 {
        let req = Request::now(cmd.clone());
        match app
            .cluster
            .write_within(req, crate::cluster::WRITE_DEADLINE)
            .await
        {
            Ok(_) => {
                metrics::counter!("warmpool_allocations_unanswered_total").increment(1);
                tracing::info!(allocation = %id, grace_ms, "allocation request went unanswered; released unless its client comes back");
                return;
            }
            Err(e) => {
                tracing::warn!(allocation = %id, error = %e, "could not record an unanswered allocation request; retrying");
                tokio::time::sleep(Duration::from_secs(1 << attempt.min(3))).await;
            }
        }
    }
    tracing::warn!(allocation = %id, "gave up recording an unanswered allocation request; its lease will end it");
}

/// Decrements the waiting gauge when a waiting request ends, however it ends.
struct WaitGauge(String);

impl Drop for WaitGauge {
    fn drop(&mut self) {
        metrics::gauge!("warmpool_allocation_waiting", "pool" => self.0.clone()).decrement(1.0);
    }
}

/// A request's `max_lifetime_secs` against its pool's: 1 and up, and no longer than the pool's.
fn check_lifetime(asked: u64, pool: Option<u64>, name: &str) -> Result<(), ApiError> {
    if asked == 0 {
        return Err(ApiError::BadRequest(
            "max_lifetime_secs must be at least 1".into(),
        ));
    }
    match pool {
        Some(cap) if asked > cap => Err(ApiError::BadRequest(format!(
            "max_lifetime_secs {asked} is longer than pool {name:?} allows ({cap})"
        ))),
        None if asked > MAX_LEASE_SECONDS => Err(ApiError::BadRequest(format!(
            "max_lifetime_secs must be at most {MAX_LEASE_SECONDS}"
        ))),
        _ => Ok(()),
    }
}

/// `202 Accepted` with a pending allocation.
fn pending(app: &AppState, a: Allocation, replayed: bool, token: Option<String>) -> Response {
    let a = present(app, a, token);
    let mut resp = (StatusCode::ACCEPTED, Json(&a)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/allocations/{}", a.id)) {
        resp.headers_mut().insert("location", v);
    }
    if replayed {
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    resp
}

fn allocated(app: &AppState, a: Allocation, replayed: bool, token: Option<String>) -> Response {
    let a = present(app, a, token);
    let mut resp = (StatusCode::CREATED, Json(&a)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/allocations/{}", a.id)) {
        resp.headers_mut().insert("location", v);
    }
    if replayed {
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    resp
}

/// `GET /v1/allocations` query.
#[derive(Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only this pool's.
    pool: Option<String>,
    /// Only this session's.
    session: Option<String>,
    /// Only in this state.
    #[param(value_type = Option<AllocationState>)]
    state: Option<String>,
    /// Only those on this node.
    node: Option<String>,
    /// Only this tenant's (a tenant's own key sees only its own anyway).
    tenant: Option<String>,
    /// Answer a page (`{"items":[…],"next_cursor":"…"}`) of at most this many (1..=1000;
    /// 100 when only `cursor` is given). Without `limit` and `cursor` the answer is the whole
    /// list as an array.
    #[param(value_type = Option<usize>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// The `next_cursor` of the previous page (opaque).
    cursor: Option<String>,
    /// Read this member's archive of released allocations evicted from the replicated state
    /// (always answers a page). Each member answers from its own archive.
    #[param(value_type = Option<bool>)]
    archived: Option<String>,
    /// Archived allocations released at or after this time (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    since: Option<String>,
    /// Archived allocations released at or before this time (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    until: Option<String>,
    /// Only those whose metadata has this value under `<key>` (`metadata.<key>=<value>`,
    /// repeatable: every one must match).
    #[serde(skip)]
    #[param(rename = "metadata.<key>", value_type = Option<String>)]
    #[allow(dead_code)]
    metadata: (),
}

/// Allocations on record (pending first, then active, and released ones not yet evicted);
/// with `limit` or `cursor`, one page in id order, and only the page is copied out of the
/// state; with `archived=true`, released allocations from this member's archive.
#[utoipa::path(
    get, path = "/v1/allocations", tag = "allocations", params(ListQuery, Consistency),
    responses(
        (status = 200, description = "Matching allocations: an array, or with `limit`, `cursor` or `archived` a page",
            body = warmpool_proto::api::AllocationList),
        (status = 400, description = "Malformed query, bad cursor, limit out of range or since after until (`bad_request`)", body = ErrorBody),
        (status = 503, description = "No quorum (`no_quorum`)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds"))),
    )
)]
pub async fn list(
    State(app): State<AppState>,
    scope: Scope,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    use super::paging::{page_size, parse_limit, parse_time_range, Cursor};
    let (q, metadata) = split_metadata_query(raw.as_deref().unwrap_or_default())?;
    let state = match q.state.as_deref() {
        None => None,
        Some("pending") => Some(AllocationState::Pending),
        Some("active") => Some(AllocationState::Active),
        Some("released") => Some(AllocationState::Released),
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "unknown allocation state {other:?}: pending, active or released"
            )))
        }
    };
    let limit = parse_limit(q.limit.as_deref(), crate::state::query::LIST_PAGE_MAX)?;
    let archived = match q.archived.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "archived must be true or false, not {other:?}"
            )))
        }
    };
    let (since, until) = parse_time_range(q.since.as_deref(), q.until.as_deref())?;
    if !archived && (since.is_some() || until.is_some()) {
        return Err(ApiError::BadRequest(
            "since and until select archived records: add archived=true".into(),
        ));
    }
    let tenant = q
        .tenant
        .as_deref()
        .map(|t| {
            warmpool_proto::TenantId::new(t)
                .map_err(|e| ApiError::BadRequest(format!("tenant {t:?}: {e}")))
        })
        .transpose()?;
    let (pool, node, session) = (q.pool.clone(), q.node.clone(), q.session.clone());
    // Owned, so an archive read can take it to a blocking thread.
    let keep = move |a: &Allocation| {
        scope.sees(&a.tenant)
            && tenant.as_ref().is_none_or(|t| &a.tenant == t)
            && pool.as_deref().is_none_or(|p| a.pool.as_str() == p)
            && node.as_deref().is_none_or(|n| a.node.as_str() == n)
            && session
                .as_deref()
                .is_none_or(|p| a.session_id.as_str() == p)
            && state.is_none_or(|st| a.state == st)
            && metadata
                .iter()
                .all(|(k, v)| a.metadata.get(k).is_some_and(|have| have == v))
    };
    if archived {
        let range = crate::archive::Range {
            since,
            until,
            after: super::paging::archive_cursor(q.cursor.as_deref())?,
            limit: page_size(limit),
        };
        let page = super::paging::read_archive(
            app.archive.as_ref(),
            crate::archive::Kind::Allocations,
            range,
            move |l: &crate::archive::Line<Allocation>| keep(&l.record),
        )
        .await?;
        let items = page
            .lines
            .into_iter()
            .map(|l| present(&app, l.record, None))
            .collect();
        let next_cursor = page.next.map(|p| Cursor::Archive(p).encode());
        return Ok(
            Json(warmpool_proto::api::AllocationPage { items, next_cursor }).into_response(),
        );
    }
    let after = match q.cursor.as_deref() {
        Some(c) => match Cursor::decode(c, 'a')? {
            Cursor::Allocation(id) => Some(AllocationId(id)),
            _ => None,
        },
        None => None,
    };
    barrier_if_asked(&app, &headers).await?;
    if limit.is_none() && q.cursor.is_none() {
        // The whole list, as before paging: pending first, then by id.
        let all = app.cluster.shared().read(|s| {
            s.pending_allocations()
                .chain(s.allocations().cloned())
                .filter(|a| keep(a))
                .collect::<Vec<_>>()
        });
        let all: Vec<Allocation> = all.into_iter().map(|a| present(&app, a, None)).collect();
        return Ok(Json(all).into_response());
    }
    let (page, more) = app
        .cluster
        .shared()
        .read(|s| s.allocations_page(after, page_size(limit), keep));
    let next_cursor = more
        .then(|| page.last().map(|a| Cursor::Allocation(a.id.0).encode()))
        .flatten();
    let items = page.into_iter().map(|a| present(&app, a, None)).collect();
    Ok(Json(warmpool_proto::api::AllocationPage { items, next_cursor }).into_response())
}

/// The list query, and its `metadata.<key>=<value>` filters apart (every one must match).
fn split_metadata_query(raw: &str) -> Result<(ListQuery, Vec<(String, String)>), ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw)
        .map_err(|e| ApiError::BadRequest(format!("invalid query: {e}")))?;
    let (meta, rest): (Vec<_>, Vec<_>) = pairs
        .into_iter()
        .partition(|(k, _)| k.starts_with("metadata."));
    let metadata = meta
        .into_iter()
        .map(|(k, v)| (k["metadata.".len()..].to_string(), v))
        .collect();
    let rest = serde_urlencoded::to_string(&rest)
        .map_err(|e| ApiError::BadRequest(format!("invalid query: {e}")))?;
    let q = serde_urlencoded::from_str(&rest)
        .map_err(|e| ApiError::BadRequest(format!("invalid query: {e}")))?;
    Ok((q, metadata))
}

/// One allocation.
#[utoipa::path(
    get, path = "/v1/allocations/{id}", tag = "allocations",
    params(("id" = AllocationId, Path, description = "Allocation id"), Consistency),
    responses(
        (status = 200, description = "The allocation", body = Allocation),
        (status = 404, description = "No such allocation (`not_found`)", body = ErrorBody),
        (status = 503, description = "No quorum (`no_quorum`)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds"))),
    )
)]
pub async fn get(
    State(app): State<AppState>,
    scope: Scope,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Allocation>, ApiError> {
    let id = parse_id(&id)?;
    let a = visible_or_pending(&app, &scope, &headers, id).await?;
    Ok(Json(present(&app, a, None)))
}

/// Like [`visible`], and a pending allocation too (state `pending`: no container yet).
pub(super) async fn visible_or_pending(
    app: &AppState,
    scope: &Scope,
    headers: &HeaderMap,
    id: AllocationId,
) -> Result<Allocation, ApiError> {
    read_fresh(app, headers, |s| s.allocation_or_pending(&id))
        .await?
        .filter(|a| scope.sees(&a.tenant))
        .ok_or_else(|| ApiError::NotFound(format!("no allocation {id}")))
}

/// The allocation `id`, if `scope` may see it; another tenant's answers 404 as a missing one
/// does, so that ids of other tenants' allocations cannot even be confirmed.
pub(super) async fn visible(
    app: &AppState,
    scope: &Scope,
    headers: &HeaderMap,
    id: AllocationId,
) -> Result<Allocation, ApiError> {
    read_fresh(app, headers, |s| s.allocation(&id).cloned())
        .await?
        .filter(|a| scope.sees(&a.tenant))
        .ok_or_else(|| ApiError::NotFound(format!("no allocation {id}")))
}

async fn write_allocation(app: &AppState, cmd: Command) -> Result<Json<Allocation>, ApiError> {
    match app.cluster.write(Request::now(cmd)).await? {
        Applied::Allocation { allocation, .. } => Ok(Json(present(app, allocation, None))),
        Applied::Rejected(r) => Err(r.into()),
        other => Err(ApiError::Internal(format!("unexpected answer {other:?}"))),
    }
}

/// Releases an allocation: its container is destroyed (never reused) and replaced. The
/// allocation stays on record (`GET` answers it, `state: released`, with its reason), and
/// releasing it again answers it as it is. A pending allocation is cancelled: answered with
/// `state: cancelled`, and gone from the record.
#[utoipa::path(
    delete, path = "/v1/allocations/{id}", tag = "allocations",
    params(("id" = AllocationId, Path, description = "Allocation id")),
    responses(
        (status = 200, description = "Released (or, if it was pending, cancelled)", body = Allocation),
        (status = 404, description = "No such allocation (`not_found`)", body = ErrorBody),
        (status = 409, description = "Its state forbids it (`conflict`)", body = ErrorBody),
        (status = 503, description = "No quorum (`no_quorum`)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds"))),
    )
)]
pub async fn release(
    State(app): State<AppState>,
    scope: Scope,
    Path(id): Path<String>,
) -> Result<Json<Allocation>, ApiError> {
    let id = parse_id(&id)?;
    // An allocation's tenant never changes, so checking it before the write is enough.
    visible_or_pending(&app, &scope, &HeaderMap::new(), id).await?;
    write_allocation(
        &app,
        Command::Release {
            allocation_id: id,
            reason: ReleaseReason::Client,
        },
    )
    .await
}

/// Extends an allocation's lease from now (never past the pool's `max_lifetime_secs`).
#[utoipa::path(
    post, path = "/v1/allocations/{id}/renew", tag = "allocations",
    params(("id" = AllocationId, Path, description = "Allocation id")),
    request_body(content = Option<RenewAllocation>, description = "Optional; empty means the pool's `lease_seconds`"),
    responses(
        (status = 200, description = "Renewed", body = Allocation),
        (status = 400, description = "Malformed body or lease out of range (`bad_request`)", body = ErrorBody),
        (status = 404, description = "No such allocation (`not_found`)", body = ErrorBody),
        (status = 409, description = "Released, pending (its lease starts at the grant), or at its lifetime cap (`conflict`)", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB (`payload_too_large`)", body = ErrorBody),
        (status = 503, description = "No quorum (`no_quorum`)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds"))),
    )
)]
pub async fn renew(
    State(app): State<AppState>,
    scope: Scope,
    Path(id): Path<String>,
    OptionalJson(body): OptionalJson<RenewAllocation>,
) -> Result<Json<Allocation>, ApiError> {
    let id = parse_id(&id)?;
    let a = visible_or_pending(&app, &scope, &HeaderMap::new(), id).await?;
    let secs = match body.lease_seconds {
        Some(s) => s,
        None => app
            .cluster
            .shared()
            .read(|s| s.pool(&a.pool).map_or(600, |p| p.spec.lease_seconds)),
    };
    write_allocation(
        &app,
        Command::Renew {
            allocation_id: id,
            lease_ms: lease_ms(secs)?,
        },
    )
    .await
}
