//! Health, status, containers and nodes.

use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::Json;
use tokio::time::Instant;
use warmpool_proto::api::{ContainerQuery, ErrorBody, HealthView, NodeView, StatusView};
use warmpool_proto::api::{DrainNode, ReadyView, WhoamiView, MAX_DRAIN_DEADLINE_SECS};
use warmpool_proto::api::{PoolUsage, SessionUsage, UsageQuery, UsageView};
use warmpool_proto::records::{NodeStatus, Resources};
use warmpool_proto::{Container, ContainerId, ContainerState, NodeId, SessionId, Timestamp};

use super::error::ApiError;
use super::extract::{ApiQuery, OptionalJson};
use super::openapi::Consistency;
use super::{barrier_if_asked, read_fresh, AppState};
use crate::auth::Scope;
use crate::state::{Command, Request, Response as Applied};

/// Liveness: the member answers.
#[utoipa::path(
    get, path = "/v1/health", tag = "fleet",
    responses((status = 200, description = "The member runs", body = HealthView))
)]
pub async fn health() -> Json<HealthView> {
    Json(HealthView {
        status: "ok".into(),
    })
}

/// Readiness: the member knows a leader.
#[utoipa::path(
    get, path = "/v1/ready", tag = "fleet",
    responses(
        (status = 200, description = "A leader is known", body = ReadyView),
        (status = 503, description = "No leader is known (`no_quorum`)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds"))),
    )
)]
pub async fn ready(State(app): State<AppState>) -> Result<Json<ReadyView>, ApiError> {
    match app.cluster.leader() {
        Some(_) => Ok(Json(ReadyView {
            status: "ready".into(),
        })),
        None => Err(ApiError::NoQuorum("no leader is known".into())),
    }
}

/// Totals, per pool and per node.
#[utoipa::path(
    get, path = "/v1/status", tag = "fleet", params(Consistency),
    responses(
        (status = 200, description = "Counts", body = StatusView),
        (status = 503, description = "Linearizable read asked for and no quorum (`no_quorum`)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds"))),
    )
)]
pub async fn status(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<StatusView>, ApiError> {
    barrier_if_asked(&app, &headers).await?;
    let mut status = app.cluster.shared().read(|s| s.status(Timestamp::now()));
    status.applied_index = app.cluster.shared().applied_index();
    Ok(Json(status))
}

/// Containers; without `state`, the live ones. With `limit` or `cursor`, one page in id
/// order (`{"items":[…],"next_cursor":"…"}`); only the page is copied out of the state. With
/// `archived=true`, ended containers evicted from the replicated state, from this member's
/// archive, oldest first in `since`..=`until` (always a page; a tenant's key sees only its
/// tenant's).
#[utoipa::path(
    get, path = "/v1/containers", tag = "fleet",
    params(ContainerQuery, super::paging::PageParams, super::paging::ArchiveParams, Consistency),
    responses(
        (status = 200, description = "Matching containers: an array, or with `limit`, `cursor` or `archived` a page",
            body = warmpool_proto::api::ContainerList),
        (status = 400, description = "Malformed query, bad cursor, limit out of range or since after until (`bad_request`)", body = ErrorBody),
        (status = 503, description = "Linearizable read asked for and no quorum (`no_quorum`)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds"))),
    )
)]
pub async fn containers(
    State(app): State<AppState>,
    scope: Scope,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<axum::response::Response, ApiError> {
    use super::paging::{page_size, Cursor, Split};
    use axum::response::IntoResponse;
    let split = Split::new(
        raw.as_deref().unwrap_or_default(),
        &["limit", "cursor", "tenant", "archived", "since", "until"],
    )?;
    let q: ContainerQuery = split.parse_rest()?;
    let limit = split.limit(crate::state::query::LIST_PAGE_MAX)?;
    let (since, until) = split.time_range()?;
    if split.archived()? {
        return archived_containers(app, scope, q, &split, limit, since, until).await;
    }
    if since.is_some() || until.is_some() {
        return Err(ApiError::BadRequest(
            "since and until select archived records: add archived=true".into(),
        ));
    }
    let after = match split.cursor() {
        Some(c) => match Cursor::decode(c, 'c')? {
            Cursor::Container(id) => Some(ContainerId(id)),
            _ => None,
        },
        None => None,
    };
    let tenant = split.tenant()?;
    let paged = limit.is_some() || split.cursor().is_some();
    let state: Option<ContainerState> = q
        .state
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(ApiError::BadRequest)?;
    let pool = q
        .pool
        .as_deref()
        .map(warmpool_proto::PoolName::new)
        .transpose()
        .ok()
        .flatten();
    let node = q
        .node
        .as_deref()
        .map(NodeId::new)
        .transpose()
        .ok()
        .flatten();
    if (q.pool.is_some() && pool.is_none()) || (q.node.is_some() && node.is_none()) {
        // A name that cannot exist matches nothing.
        return Ok(if paged {
            Json(warmpool_proto::api::ContainerPage::default()).into_response()
        } else {
            Json(Vec::<Container>::new()).into_response()
        });
    }
    barrier_if_asked(&app, &headers).await?;
    let (items, more) = app.cluster.shared().read(|s| {
        let keep = |c: &&Container| {
            q.session
                .as_deref()
                .is_none_or(|x| c.session.as_ref().is_some_and(|s| s.as_str() == x))
                && match state {
                    Some(st) => c.state == st,
                    // Without a state filter, list what is alive; ended ones are asked for by
                    // state.
                    None => c.state.is_live(),
                }
                // Filtering by session or tenant must not confirm another tenant's.
                && (q.session.is_none() || own(s, &scope, c))
                && tenant.as_ref().is_none_or(|t| {
                    own(s, &scope, c)
                        && c.allocation
                            .and_then(|a| s.allocation(&a))
                            .is_some_and(|a| &a.tenant == t)
                })
        };
        let size = if paged { page_size(limit) } else { usize::MAX };
        let (page, more) = s.containers_page(after, pool.as_ref(), node.as_ref(), size, keep);
        (
            page.into_iter()
                .map(|c| redact(s, &scope, c))
                .collect::<Vec<_>>(),
            more,
        )
    });
    if !paged {
        return Ok(Json(items).into_response());
    }
    let next_cursor = more
        .then(|| items.last().map(|c| Cursor::Container(c.id.0).encode()))
        .flatten();
    Ok(Json(warmpool_proto::api::ContainerPage { items, next_cursor }).into_response())
}

/// `GET /v1/containers?archived=true`: a page of ended containers from this member's
/// archive. A tenant's key sees only containers whose allocation was its tenant's.
async fn archived_containers(
    app: AppState,
    scope: Scope,
    q: ContainerQuery,
    split: &super::paging::Split,
    limit: Option<usize>,
    since: Option<Timestamp>,
    until: Option<Timestamp>,
) -> Result<axum::response::Response, ApiError> {
    use super::paging::{page_size, Cursor};
    use axum::response::IntoResponse;
    // The archive is this member's own files: a read barrier would add nothing (a malformed
    // consistency header was refused before the handler).
    let after = super::paging::archive_cursor(split.cursor())?;
    let tenant = split.tenant()?;
    let state: Option<ContainerState> = q
        .state
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(ApiError::BadRequest)?;
    let range = crate::archive::Range {
        since,
        until,
        after,
        limit: page_size(limit),
    };
    let page = super::paging::read_archive(
        app.archive.as_ref(),
        crate::archive::Kind::Containers,
        range,
        move |l: &crate::archive::Line<Container>| {
            let c = &l.record;
            let of = |t: &warmpool_proto::TenantId| l.tenant.as_ref() == Some(t);
            scope.tenant().is_none_or(of)
                && tenant.as_ref().is_none_or(of)
                && q.pool.as_deref().is_none_or(|p| c.pool.as_str() == p)
                && q.node.as_deref().is_none_or(|n| c.node.as_str() == n)
                && q.session
                    .as_deref()
                    .is_none_or(|x| c.session.as_ref().is_some_and(|s| s.as_str() == x))
                && state.is_none_or(|st| c.state == st)
        },
    )
    .await?;
    let items = page.lines.into_iter().map(|l| l.record).collect();
    let next_cursor = page.next.map(|p| Cursor::Archive(p).encode());
    Ok(Json(warmpool_proto::api::ContainerPage { items, next_cursor }).into_response())
}

/// One container, live or ended.
#[utoipa::path(
    get, path = "/v1/containers/{id}", tag = "fleet",
    params(("id" = ContainerId, Path, description = "Container id"), Consistency),
    responses(
        (status = 200, description = "The container", body = Container),
        (status = 404, description = "No such container (`not_found`)", body = ErrorBody),
        (status = 503, description = "No quorum for the read barrier (`no_quorum`)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds"))),
    )
)]
pub async fn container(
    State(app): State<AppState>,
    scope: Scope,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Container>, ApiError> {
    let not_found = || ApiError::NotFound(format!("no container {id:?}"));
    let cid: ContainerId = id.parse().map_err(|_| not_found())?;
    read_fresh(&app, &headers, |s| {
        s.container(&cid).map(|c| redact(s, &scope, c))
    })
    .await?
    .map(Json)
    .ok_or_else(not_found)
}

/// Whether `c` is held by an allocation `scope` may see.
fn own(s: &crate::state::PoolState, scope: &Scope, c: &Container) -> bool {
    c.allocation
        .and_then(|a| s.allocation(&a))
        .is_some_and(|a| scope.sees(&a.tenant))
}

/// `c` as `scope` may see it: pools, nodes, states and counts are everyone's; the address,
/// session and allocation of a container are only its tenant's (a warm container's address is
/// no one's yet: knowing it would let a tenant reach the next session's container early).
fn redact(s: &crate::state::PoolState, scope: &Scope, c: &Container) -> Container {
    let mut c = c.clone();
    if scope != &Scope::All && !own(s, scope, &c) {
        c.ipv6 = None;
        c.session = None;
        c.allocation = None;
    }
    c
}

fn node_view(app: &AppState, node: warmpool_proto::Node, extras: NodeExtras) -> NodeView {
    let soft = app.fleet.node(&node.id);
    NodeView {
        last_heartbeat_at: soft.as_ref().map(|s| s.received_at),
        heartbeat_age_ms: soft
            .as_ref()
            .map(|s| Instant::now().duration_since(s.received).as_millis() as u64),
        memory_fraction: soft.as_ref().map(|s| s.heartbeat.usage.memory_fraction()),
        create_slots: soft.as_ref().and_then(|s| s.heartbeat.create_slots),
        allocatable: app.overcommit.allocatable(node.capacity),
        reserved: extras.reserved,
        counts: extras.counts,
        condition: extras.condition,
        node,
    }
}

/// What a node view takes from the state.
struct NodeExtras {
    counts: warmpool_proto::api::Counts,
    condition: Option<String>,
    reserved: Resources,
}

/// The extras of every node in `ids`, read under one lock.
fn node_extras<'a>(
    s: &crate::state::PoolState,
    nodes: impl Iterator<Item = &'a warmpool_proto::Node>,
) -> Vec<(warmpool_proto::Node, NodeExtras)> {
    let reserved = crate::keepwarm::reservations(s);
    nodes
        .map(|n| {
            let extras = NodeExtras {
                counts: s.node_counts(&n.id),
                condition: s.node_condition(&n.id).map(|c| c.describe()),
                reserved: reserved.get(&n.id).copied().unwrap_or_default(),
            };
            (n.clone(), extras)
        })
        .collect()
}

/// Docker hosts, with what this member heard from them.
#[utoipa::path(
    get, path = "/v1/nodes", tag = "fleet", params(Consistency),
    responses(
        (status = 200, description = "Nodes", body = Vec<NodeView>),
        (status = 503, description = "Linearizable read asked for and no quorum (`no_quorum`)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds"))),
    )
)]
pub async fn nodes(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Vec<NodeView>>, ApiError> {
    barrier_if_asked(&app, &headers).await?;
    let nodes = app.cluster.shared().read(|s| node_extras(s, s.nodes()));
    Ok(Json(
        nodes
            .into_iter()
            .map(|(n, c)| node_view(&app, n, c))
            .collect(),
    ))
}

/// Cordons, uncordons or drains a node.
///
/// A drain moves the node's warm containers elsewhere and waits for its allocations to end;
/// with `deadline_secs`, the ones still there then are released (reason `drained`).
/// `node_drained` is recorded once the node holds no container. Draining a draining node again
/// sets a new deadline (or none).
#[utoipa::path(
    post, path = "/v1/nodes/{id}/{action}", tag = "fleet",
    params(
        ("id" = NodeId, Path, description = "Node id"),
        ("action" = NodeAction, Path, description = "What to do"),
    ),
    request_body(content = Option<DrainNode>, description = "Optional, for `drain` only"),
    responses(
        (status = 200, description = "The node after the change", body = NodeView),
        (status = 400, description = "Malformed body, a deadline out of range or for another action (`bad_request`)", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB (`payload_too_large`)", body = ErrorBody),
        (status = 404, description = "No such node or action (`not_found`)", body = ErrorBody),
        (status = 409, description = "The node's state forbids it (`conflict`)", body = ErrorBody),
        (status = 503, description = "No quorum (`no_quorum`)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds"))),
    )
)]
pub async fn node_action(
    State(app): State<AppState>,
    Path((id, action)): Path<(String, String)>,
    OptionalJson(body): OptionalJson<DrainNode>,
) -> Result<Json<NodeView>, ApiError> {
    let status = match action.as_str() {
        "cordon" => NodeStatus::Cordoned,
        "uncordon" => NodeStatus::Ready,
        "drain" => NodeStatus::Draining,
        other => {
            return Err(ApiError::NotFound(format!(
                "no node action {other:?}: cordon, uncordon or drain"
            )))
        }
    };
    let drain_deadline = match body.deadline_secs {
        None => None,
        Some(_) if status != NodeStatus::Draining => {
            return Err(ApiError::BadRequest(format!(
                "deadline_secs is for drain, not {action}"
            )))
        }
        Some(s) if s > MAX_DRAIN_DEADLINE_SECS => {
            return Err(ApiError::BadRequest(format!(
                "deadline_secs must be at most {MAX_DRAIN_DEADLINE_SECS}"
            )))
        }
        Some(s) => Some(s),
    };
    let node = NodeId::new(&id).map_err(|_| ApiError::NotFound(format!("no node {id:?}")))?;
    // The deadline counts from the proposer's clock, which the command carries.
    let at = Timestamp::now();
    let req = Request {
        at,
        cmd: Command::SetNodeStatus {
            reason: None,
            node: node.clone(),
            status,
            drain_deadline: drain_deadline.map(|secs| Timestamp(at.0 + secs * 1000)),
        },
    };
    if let Applied::Rejected(r) = app.cluster.write(req).await? {
        return Err(r.into());
    }
    let found = app
        .cluster
        .shared()
        .read(|s| node_extras(s, s.node(&node).into_iter()).pop());
    let (n, extras) = found.ok_or_else(|| ApiError::NotFound(format!("no node {id:?}")))?;
    Ok(Json(node_view(&app, n, extras)))
}

/// Container time and cost, per pool and for one session.
#[utoipa::path(
    get, path = "/v1/usage", tag = "fleet", params(UsageQuery, Consistency),
    responses(
        (status = 200, description = "Usage", body = UsageView),
        (status = 400, description = "Malformed query (`bad_request`)", body = ErrorBody),
        (status = 503, description = "Linearizable read asked for and no quorum (`no_quorum`)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds"))),
    )
)]
pub async fn usage(
    State(app): State<AppState>,
    scope: Scope,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<UsageQuery>,
) -> Result<Json<UsageView>, ApiError> {
    let session = q
        .session
        .as_deref()
        .map(|s| SessionId::new(s).map_err(|e| ApiError::BadRequest(e.to_string())))
        .transpose()?;
    barrier_if_asked(&app, &headers).await?;
    let now = Timestamp::now();
    Ok(Json(app.cluster.shared().read(|s| {
        let price =
            |pool: &warmpool_proto::PoolName| s.pool(pool).and_then(|p| p.spec.price_per_hour);
        let cost = |secs: f64, price: Option<f64>| price.map(|p| secs / 3600.0 * p);
        let pools = s
            .pools()
            .filter(|p| {
                q.pool
                    .as_deref()
                    .is_none_or(|name| p.spec.name.as_str() == name)
            })
            .map(|p| {
                let u = s.usage(&p.spec.name, now);
                let (warm, allocated) = (u.warm_ms as f64 / 1000.0, u.allocated_ms as f64 / 1000.0);
                PoolUsage {
                    pool: p.spec.name.clone(),
                    warm_seconds: warm,
                    allocated_seconds: allocated,
                    price_per_hour: p.spec.price_per_hour,
                    warm_cost: cost(warm, p.spec.price_per_hour),
                    allocated_cost: cost(allocated, p.spec.price_per_hour),
                }
            })
            .collect();
        let sessions = match &session {
            None => Vec::new(),
            Some(sid) => s
                .session_usage(sid.as_str(), scope.tenant(), now)
                .into_iter()
                .filter(|(pool, _)| q.pool.as_deref().is_none_or(|name| pool.as_str() == name))
                .map(|(pool, ms)| {
                    let secs = ms as f64 / 1000.0;
                    SessionUsage {
                        session: sid.clone(),
                        cost: cost(secs, price(&pool)),
                        pool,
                        allocated_seconds: secs,
                    }
                })
                .collect(),
        };
        UsageView {
            at: now,
            pools,
            sessions,
        }
    })))
}

/// `GET /v1/whoami`: the caller's key and role (with auth off: no key, full powers).
#[utoipa::path(
    get, path = "/v1/whoami", tag = "fleet",
    responses((status = 200, description = "The caller's key", body = WhoamiView))
)]
pub async fn whoami(
    State(app): State<AppState>,
    caller: Option<axum::Extension<crate::auth::Caller>>,
) -> Json<WhoamiView> {
    Json(match caller {
        Some(axum::Extension(c)) => WhoamiView {
            auth: true,
            id: Some(c.id),
            name: Some(c.name),
            role: c.role,
            tenant: c.tenant,
        },
        None => WhoamiView {
            auth: app.auth,
            id: None,
            name: None,
            role: warmpool_proto::api::Role::Admin,
            tenant: None,
        },
    })
}

/// What `POST /v1/nodes/{id}/{action}` does (schema only).
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum NodeAction {
    /// No new containers; warm ones stay.
    Cordon,
    /// Back to ready.
    Uncordon,
    /// No new containers, and warm ones move elsewhere.
    Drain,
}
