//! `/v1/events`: the event log, paged, and live as Server-Sent Events.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::Json;
use futures::stream::{self, Stream, StreamExt};
use warmpool_proto::api::{ErrorBody, EventQuery};
use warmpool_proto::Event;

use super::error::ApiError;
use super::extract::ApiQuery;
use super::openapi::Consistency;
use super::paging::Split;
use super::{barrier_if_asked, AppState};
use crate::auth::{Caller, Scope};
use crate::state::query::{EVENT_PAGE, EVENT_PAGE_MAX};
use crate::state::{tenant_sees_event, EventFilter};

/// A page of the event log: oldest first after `after`, newest first before `before`. With
/// `archived=true`, events evicted from the replicated state, from this member's archive,
/// oldest first, in the time range `since`..=`until` (page on with `after`, the last `seq`).
#[utoipa::path(
    get, path = "/v1/events", tag = "events",
    params(EventQuery, super::paging::ArchiveParams, Consistency),
    responses(
        (status = 200, description = "Events", body = Vec<Event>),
        (status = 400, description = "Malformed query, unknown kind, limit out of range, since after until, or before with archived (`bad_request`)", body = ErrorBody),
        (status = 503, description = "No quorum (`no_quorum`)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds"))),
    )
)]
pub async fn list(
    State(app): State<AppState>,
    scope: Scope,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Json<Vec<Event>>, ApiError> {
    let split = Split::new(
        raw.as_deref().unwrap_or_default(),
        &["archived", "since", "until"],
    )?;
    let q: EventQuery = split.parse_rest()?;
    let mut filter = EventFilter::from_query(&q).map_err(ApiError::BadRequest)?;
    filter.tenant = scope.tenant().cloned();
    let limit = q.limit.unwrap_or(EVENT_PAGE);
    if limit == 0 || limit > EVENT_PAGE_MAX {
        return Err(ApiError::BadRequest(format!(
            "limit must be 1..={EVENT_PAGE_MAX}"
        )));
    }
    let (since, until) = split.time_range()?;
    if split.archived()? {
        if q.before.is_some() {
            return Err(ApiError::BadRequest(
                "archived events are read oldest first: page with after, not before".into(),
            ));
        }
        let range = crate::archive::Range {
            since,
            until,
            after: None,
            limit,
        };
        let after = q.after.unwrap_or(0);
        let read = super::paging::read_archive(
            app.archive.as_ref(),
            crate::archive::Kind::Events,
            range,
            move |l: &crate::archive::Line<Event>| {
                let e = &l.record;
                e.seq > after
                    && filter.matches(e)
                    && filter
                        .tenant
                        .as_ref()
                        .is_none_or(|t| tenant_sees_event(t, e, l.tenant.as_ref()))
            },
        )
        .await?;
        return Ok(Json(read.lines.into_iter().map(|l| l.record).collect()));
    }
    if since.is_some() || until.is_some() {
        return Err(ApiError::BadRequest(
            "since and until select archived events: add archived=true".into(),
        ));
    }
    barrier_if_asked(&app, &headers).await?;
    Ok(Json(
        app.cluster
            .shared()
            .read(|s| s.events(q.after, q.before, limit, &filter)),
    ))
}

/// Live events. Starts after `Last-Event-ID` (a reconnecting client), else after `after`, else
/// at the newest event; then follows the log as this member applies it. A client that falls
/// behind loses nothing: each step reads the log from where the last one stopped.
#[utoipa::path(
    get, path = "/v1/events/stream", tag = "events",
    params(
        EventQuery,
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this event (a reconnecting client)"),
        ("access_token" = Option<String>, Query, description = "The API key, for clients that cannot send headers (EventSource)"),
    ),
    responses(
        (status = 200, description = "Server-Sent Events: `id` is the event's seq, `event` its kind, `data` the event as JSON; a `keepalive` comment every 15 s", content_type = "text/event-stream", body = String),
        (status = 400, description = "Malformed query or Last-Event-ID (`bad_request`)", body = ErrorBody),
    )
)]
pub async fn stream(
    State(app): State<AppState>,
    scope: Scope,
    caller: Option<axum::Extension<Caller>>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<EventQuery>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let mut filter = EventFilter::from_query(&q).map_err(ApiError::BadRequest)?;
    filter.tenant = scope.tenant().cloned();
    // The stream lives as long as its key: revoking the key ends it.
    let key = caller.map(|axum::Extension(c)| c.id);
    let last_event_id = headers
        .get("last-event-id")
        .map(|v| v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()))
        .map(|v| v.ok_or_else(|| ApiError::BadRequest("Last-Event-ID must be an event seq".into())))
        .transpose()?;
    let shared = app.cluster.shared().clone();
    let start = last_event_id
        .or(q.after)
        .unwrap_or_else(|| shared.read(|s| s.last_event_seq()));
    let applied = shared.subscribe();
    metrics::gauge!("warmpool_event_streams").increment(1.0);
    let guard = StreamGuard;

    let events = stream::unfold(
        (start, applied, shared, filter, guard, key),
        |(mut after, mut applied, shared, filter, guard, key)| async move {
            loop {
                applied.borrow_and_update();
                let revoked = key.as_deref().is_some_and(|id| {
                    shared.read(|s| s.key(id).is_none_or(|k| k.revoked_at.is_some()))
                });
                if revoked {
                    return None;
                }
                let (batch, scanned_to) = shared.read(|s| {
                    let batch = s.events(Some(after), None, EVENT_PAGE_MAX, &filter);
                    let scanned_to = if batch.len() == EVENT_PAGE_MAX {
                        batch.last().map_or(after, |e| e.seq)
                    } else {
                        s.last_event_seq()
                    };
                    (batch, scanned_to)
                });
                after = after.max(scanned_to);
                if !batch.is_empty() {
                    return Some((batch, (after, applied, shared, filter, guard, key)));
                }
                if applied.changed().await.is_err() {
                    return None;
                }
            }
        },
    )
    .flat_map(|batch| stream::iter(batch.into_iter().map(to_sse)))
    // End with the member, so a graceful shutdown does not wait for clients to hang up.
    .take_until(app.shutdown.clone().cancelled_owned());
    Ok(Sse::new(events).keep_alive(
        KeepAlive::new()
            .interval(Duration::from_secs(15))
            .text("keepalive"),
    ))
}

fn to_sse(e: Event) -> Result<SseEvent, Infallible> {
    let data = serde_json::to_string(&e).unwrap_or_else(|_| "{}".into());
    Ok(SseEvent::default()
        .id(e.seq.to_string())
        .event(e.kind.as_str())
        .data(data))
}

/// Counts open streams in the metrics.
struct StreamGuard;

impl Drop for StreamGuard {
    fn drop(&mut self) {
        metrics::gauge!("warmpool_event_streams").decrement(1.0);
    }
}
