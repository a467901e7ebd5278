//! Where each allocation is, learned from the control plane and forgotten the moment it ends.
//!
//! A request for an allocation the gateway has not seen asks the control plane once
//! (`GET /v1/gateway/allocations/{id}`, which takes a read barrier on a miss, so an allocation
//! granted through any member a moment ago is found) and keeps the answer. The answer is then
//! trusted until the control plane says the allocation ended: the gateway follows the event
//! stream (`container_released`, `allocation_lost`; `pool_updated` and `pool_deleted` make it
//! ask again, since ports may change) and ends the allocation's open connections at once.
//! The stream resumes after a break from the last event it saw, so no release is missed;
//! while it is broken, answers are trusted for [`DOUBTFUL_TTL`] only. Entries are also asked
//! again after [`TTL`] in any case.
//!
//! A release that the stream reports while a lookup of the same allocation is on its way
//! (from a member that has not applied it yet) cannot be undone by that lookup's answer:
//! ended allocations are remembered for [`ENDED_MEMORY`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use poolctl::Client;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use warmpool_proto::api::{EventQuery, GatewayRoute};
use warmpool_proto::records::AllocationState;
use warmpool_proto::{AllocationId, EventKind};

/// Longest an answer is trusted while the event stream runs.
pub const TTL: Duration = Duration::from_secs(30);
/// Longest an answer is trusted while the event stream is broken.
pub const DOUBTFUL_TTL: Duration = Duration::from_secs(1);
/// How long an ended allocation is remembered as ended.
pub const ENDED_MEMORY: Duration = Duration::from_secs(600);
/// How long "no such allocation" is remembered (ids are not guessable; this only spares the
/// control plane a request per probe).
const MISSING_MEMORY: Duration = Duration::from_secs(1);

/// An allocation the gateway serves.
#[derive(Debug)]
pub struct Live {
    /// What the control plane said.
    pub route: GatewayRoute,
    /// Cancelled when the allocation ends: its open connections close.
    pub ended: CancellationToken,
    fetched: Instant,
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    /// Active.
    Live(Arc<Live>),
    /// Unknown, released, or without a token.
    Gone,
}

/// The control plane could not say.
#[derive(Debug, thiserror::Error)]
#[error("the control plane did not answer: {0}")]
pub struct Unavailable(String);

#[derive(Default)]
struct Inner {
    live: HashMap<AllocationId, Arc<Live>>,
    ended: HashMap<AllocationId, Instant>,
    missing: HashMap<AllocationId, Instant>,
}

/// The gateway's table of allocations.
pub struct Routes {
    client: Client,
    inner: Mutex<Inner>,
    /// The event stream is broken (or not yet known to run).
    doubtful: AtomicBool,
}

impl Routes {
    /// A table that asks the control plane through `client` (an admin key).
    pub fn new(client: Client) -> Arc<Self> {
        Arc::new(Routes {
            client,
            inner: Mutex::new(Inner::default()),
            doubtful: AtomicBool::new(true),
        })
    }

    /// The allocation `id`, from the table or the control plane.
    pub async fn lookup(&self, id: AllocationId) -> Result<Lookup, Unavailable> {
        let ttl = if self.doubtful.load(Ordering::Relaxed) {
            DOUBTFUL_TTL
        } else {
            TTL
        };
        {
            let inner = self.lock();
            if inner.ended.contains_key(&id) {
                return Ok(Lookup::Gone);
            }
            if let Some(live) = inner.live.get(&id) {
                if live.fetched.elapsed() < ttl {
                    return Ok(Lookup::Live(live.clone()));
                }
            }
            if inner
                .missing
                .get(&id)
                .is_some_and(|at| at.elapsed() < MISSING_MEMORY)
            {
                return Ok(Lookup::Gone);
            }
        }
        let answer = self.client.gateway_route(id).await;
        metrics::counter!("warmpool_gateway_route_lookups_total",
            "result" => match &answer { Ok(_) => "found", Err(e) if e.is_not_found() => "not_found", Err(_) => "error" })
        .increment(1);
        let route = match answer {
            Ok(r) => r,
            Err(e) if e.is_not_found() => {
                self.lock().missing.insert(id, Instant::now());
                return Ok(Lookup::Gone);
            }
            Err(e) => return Err(Unavailable(e.to_string())),
        };
        let mut inner = self.lock();
        if route.state != AllocationState::Active
            || route.token_sha256.is_none()
            || route.ipv6.is_none()
            || inner.ended.contains_key(&id)
        {
            if route.state != AllocationState::Active {
                Self::end_locked(&mut inner, id);
            }
            return Ok(Lookup::Gone);
        }
        // A refreshed entry keeps its token, so connections opened before the refresh still
        // end with the allocation.
        let ended = inner
            .live
            .get(&id)
            .map(|l| l.ended.clone())
            .unwrap_or_default();
        let live = Arc::new(Live {
            route,
            ended,
            fetched: Instant::now(),
        });
        inner.live.insert(id, live.clone());
        Ok(Lookup::Live(live))
    }

    /// The allocation ended: refuse it from now on and close its connections.
    pub fn end(&self, id: AllocationId) {
        Self::end_locked(&mut self.lock(), id);
    }

    fn end_locked(inner: &mut Inner, id: AllocationId) {
        if let Some(live) = inner.live.remove(&id) {
            live.ended.cancel();
            metrics::counter!("warmpool_gateway_allocations_ended_total").increment(1);
        }
        inner.ended.insert(id, Instant::now());
    }

    /// Ask the control plane again about every allocation at its next request (connections
    /// stay open: their allocations are not known to have ended).
    pub fn refresh_all(&self) {
        let mut inner = self.lock();
        for live in inner.live.values_mut() {
            *live = Arc::new(Live {
                route: live.route.clone(),
                ended: live.ended.clone(),
                fetched: Instant::now() - TTL,
            });
        }
    }

    /// Forgets what is old: ended and missing ids past their memory, and entries long unused.
    fn sweep(&self) {
        let mut inner = self.lock();
        inner.ended.retain(|_, at| at.elapsed() < ENDED_MEMORY);
        inner.missing.retain(|_, at| at.elapsed() < MISSING_MEMORY);
        // An entry that no connection holds and that is due for a refresh anyway.
        inner
            .live
            .retain(|_, l| Arc::strong_count(l) > 1 || l.fetched.elapsed() < TTL * 4);
        metrics::gauge!("warmpool_gateway_allocations").set(inner.live.len() as f64);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-changed in a way that
        // matters (each change is one insert or remove): keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Follows the control plane's events until `stop`: ends allocations as they are released.
    pub async fn follow(self: Arc<Self>, stop: CancellationToken) {
        let mut sweep = tokio::time::interval(Duration::from_secs(10));
        // Start after the newest event, so the stream is gap-free from the first connection.
        let after = loop {
            let newest = self
                .client
                .events(&EventQuery {
                    before: Some(u64::MAX),
                    limit: Some(1),
                    ..Default::default()
                })
                .await;
            match newest {
                Ok(events) => break events.first().map_or(0, |e| e.seq),
                Err(e) => {
                    warn!(error = %e, "cannot read the event log yet; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            }
        };
        let mut last = after;
        let query = |after: u64| EventQuery {
            after: Some(after),
            kind: Some(
                [
                    EventKind::ContainerReleased,
                    EventKind::AllocationLost,
                    EventKind::PoolUpdated,
                    EventKind::PoolDeleted,
                ]
                .map(EventKind::as_str)
                .join(","),
            ),
            ..Default::default()
        };
        info!(after, "following the control plane's events");
        let mut events = Box::pin(self.client.event_stream(&query(last)));
        // The stream is taken as running once it is opened; a break makes it doubtful.
        self.doubtful.store(false, Ordering::Relaxed);
        loop {
            let item = tokio::select! {
                _ = stop.cancelled() => return,
                _ = sweep.tick() => { self.sweep(); continue; }
                item = events.next() => item,
            };
            match item {
                Some(Ok(e)) => {
                    self.doubtful.store(false, Ordering::Relaxed);
                    last = last.max(e.seq);
                    match e.kind {
                        EventKind::ContainerReleased | EventKind::AllocationLost => {
                            if let Some(id) = e.allocation {
                                debug!(allocation = %id, "allocation ended");
                                self.end(id);
                            }
                        }
                        _ => self.refresh_all(),
                    }
                }
                // A connection that broke: the stream reconnects by itself, resuming after
                // the last event it gave.
                Some(Err(e)) if e.is_retryable() => {
                    if !self.doubtful.swap(true, Ordering::Relaxed) {
                        warn!(error = %e, "event stream broken; reconnecting (answers trusted for 1 s meanwhile)");
                    }
                }
                // An event that did not decode is skipped; a refusal ends the stream.
                Some(Err(e)) => warn!(error = %e, "event stream"),
                None => {
                    self.doubtful.store(true, Ordering::Relaxed);
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    events = Box::pin(self.client.event_stream(&query(last)));
                }
            }
        }
    }
}
