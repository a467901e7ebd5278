//! Read-only views of the state for the API: counts, status, filtered lists.

use std::collections::BTreeMap;

use warmpool_proto::api::{Counts, EventQuery, NodeCounts, PoolStatus, StatusView};
#[cfg(test)]
use warmpool_proto::{Container, ContainerState, Health};
use warmpool_proto::{Event, EventKind, NodeId, PoolName};

use super::PoolState;

/// Default and largest page of events.
pub const EVENT_PAGE: usize = 100;
/// Largest page of events a caller may ask for.
pub const EVENT_PAGE_MAX: usize = 1000;

/// A parsed [`EventQuery`] filter.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    /// Only this pool's.
    pub pool: Option<String>,
    /// Only this container's.
    pub container: Option<String>,
    /// Only this session's.
    pub session: Option<String>,
    /// Only this node's.
    pub node: Option<String>,
    /// Only these kinds (empty: all).
    pub kinds: Vec<EventKind>,
    /// Only what this tenant may see (none: everything): events of its own allocations and
    /// those of no allocation (pools, nodes, containers before they are handed out), never
    /// another tenant's, nor events about API keys.
    pub tenant: Option<warmpool_proto::TenantId>,
}

impl EventFilter {
    /// Parses the filter part of a query; an unknown kind is an error.
    pub fn from_query(q: &EventQuery) -> Result<Self, String> {
        let kinds = match &q.kind {
            None => Vec::new(),
            Some(s) => s
                .split(',')
                .filter(|k| !k.is_empty())
                .map(str::parse)
                .collect::<Result<Vec<EventKind>, String>>()?,
        };
        Ok(EventFilter {
            pool: q.pool.clone(),
            container: q.container.clone(),
            session: q.session.clone(),
            node: q.node.clone(),
            kinds,
            tenant: None,
        })
    }

    /// Whether `e` passes.
    pub fn matches(&self, e: &Event) -> bool {
        fn field<T: ToString>(want: &Option<String>, have: &Option<T>) -> bool {
            match want {
                None => true,
                Some(w) => have.as_ref().is_some_and(|h| &h.to_string() == w),
            }
        }
        (self.kinds.is_empty() || self.kinds.contains(&e.kind))
            && field(&self.pool, &e.pool)
            && field(&self.container, &e.container)
            && field(&self.session, &e.session)
            && field(&self.node, &e.node)
    }
}

/// [`count`], for tests comparing indexed counts with a full scan.
#[cfg(test)]
pub(super) fn count_for_tests(counts: &mut Counts, c: &Container) {
    count(counts, c)
}

/// Adds a container to counts by state; ended containers do not count. (What the tallies
/// count incrementally; kept to check them against.)
#[cfg(test)]
fn count(counts: &mut Counts, c: &Container) {
    if !c.state.is_live() {
        return;
    }
    counts.total += 1;
    let unhealthy = matches!(c.health, Health::Unhealthy { .. });
    if unhealthy {
        counts.unhealthy += 1;
    }
    match c.state {
        ContainerState::Creating => counts.creating += 1,
        ContainerState::Warm if !unhealthy => counts.warm += 1,
        ContainerState::Allocated => counts.allocated += 1,
        ContainerState::Releasing => counts.releasing += 1,
        _ => {}
    }
}

impl PoolState {
    /// Events after `after` (ascending), or with `before` and no `after` the newest ones
    /// below `before`; at most `limit`.
    pub fn events(
        &self,
        after: Option<u64>,
        before: Option<u64>,
        limit: usize,
        filter: &EventFilter,
    ) -> Vec<Event> {
        let limit = limit.clamp(1, EVENT_PAGE_MAX);
        let first_seq = self.events.front().map_or(0, |e| e.seq);
        match (after, before) {
            (None, Some(before)) => {
                let mut out: Vec<Event> = self
                    .events
                    .iter()
                    .rev()
                    .filter(|e| e.seq < before && filter.matches(e) && self.shows(filter, e))
                    .take(limit)
                    .map(|e| (**e).clone())
                    .collect();
                out.reverse();
                out
            }
            _ => {
                let after = after.unwrap_or(0);
                // Events have consecutive sequence numbers: jump straight to the first one.
                let skip = after.saturating_sub(first_seq.saturating_sub(1)) as usize;
                self.events
                    .iter()
                    .skip(skip)
                    .filter(|e| e.seq > after && before.is_none_or(|b| e.seq < b))
                    .filter(|e| filter.matches(e) && self.shows(filter, e))
                    .take(limit)
                    .map(|e| (**e).clone())
                    .collect()
            }
        }
    }

    /// Every retained event after `after` that passes `filter`, oldest first.
    pub fn events_since(&self, after: u64, filter: &EventFilter) -> Vec<Event> {
        let first_seq = self.events.front().map_or(0, |e| e.seq);
        let skip = after.saturating_sub(first_seq.saturating_sub(1)) as usize;
        self.events
            .iter()
            .skip(skip)
            .filter(|e| e.seq > after && filter.matches(e) && self.shows(filter, e))
            .map(|e| (**e).clone())
            .collect()
    }

    /// Whether `filter`'s tenant may see `e` (see [`EventFilter::tenant`]).
    fn shows(&self, filter: &EventFilter, e: &Event) -> bool {
        let Some(tenant) = &filter.tenant else {
            return true;
        };
        if matches!(e.kind, EventKind::KeyCreated | EventKind::KeyRevoked) {
            return false;
        }
        match (&e.allocation, &e.session) {
            (Some(a), _) => match self.allocations.get(a) {
                Some(a) => &a.tenant == tenant,
                // A pending or cancelled allocation has no record: its events carry its tenant.
                None => e
                    .detail
                    .as_ref()
                    .and_then(|d| d.get("tenant"))
                    .and_then(|t| t.as_str())
                    .is_some_and(|t| t == tenant.as_str()),
            },
            // A session is an allocation's; without one to tell whose, it is not shown.
            (None, Some(_)) => false,
            (None, None) => true,
        }
    }

    /// Live-container counts of one pool.
    pub fn pool_counts(&self, pool: &PoolName) -> Counts {
        let mut counts = Counts::default();
        let current = self.generation_of(pool);
        for (_, gens) in self.tallies_of(pool) {
            for (g, t) in gens {
                t.add_to(&mut counts, Some(*g) == current);
            }
        }
        counts
    }

    /// Totals, per pool and per node.
    pub fn status(&self, now: warmpool_proto::Timestamp) -> StatusView {
        let mut totals = Counts::default();
        let mut by_pool: BTreeMap<&PoolName, Counts> = BTreeMap::new();
        let mut by_node: BTreeMap<&NodeId, Counts> = BTreeMap::new();
        for (pool, nodes) in &self.tallies {
            let current = self.generation_of(pool);
            for (node, gens) in nodes {
                for (g, t) in gens {
                    let current = Some(*g) == current;
                    t.add_to(&mut totals, current);
                    t.add_to(by_pool.entry(pool).or_default(), current);
                    t.add_to(by_node.entry(node).or_default(), current);
                }
            }
        }
        let pools = self
            .pools
            .values()
            .map(|p| (p, self.usage(&p.spec.name, now)))
            .map(|(p, u)| PoolStatus {
                name: p.spec.name.clone(),
                generation: p.generation,
                counts: by_pool.get(&p.spec.name).copied().unwrap_or_default(),
                wanted: self.wanted(p),
                waiting: self.waiting(&p.spec.name) as u32,
                condition: self.condition(&p.spec.name).map(super::Condition::describe),
                warm_seconds: u.warm_ms as f64 / 1000.0,
                allocated_seconds: u.allocated_ms as f64 / 1000.0,
                cost: p
                    .spec
                    .price_per_hour
                    .map(|price| (u.warm_ms + u.allocated_ms) as f64 / 3_600_000.0 * price),
                min_warm: p.spec.min_warm,
                max_warm: p.spec.max_warm(),
                max_total: p.spec.max_total,
            })
            .collect();
        let nodes = self
            .nodes
            .values()
            .map(|n| NodeCounts {
                node: n.id.clone(),
                status: n.status,
                counts: by_node.get(&n.id).copied().unwrap_or_default(),
                condition: self.node_condition(&n.id).map(|c| c.describe()),
            })
            .collect();
        StatusView {
            totals,
            pools,
            nodes,
            applied_index: self.applied_index,
        }
    }

    /// Live-container counts of one node.
    pub fn node_counts(&self, node: &NodeId) -> Counts {
        let mut counts = Counts::default();
        for (pool, nodes) in &self.tallies {
            let Some(gens) = nodes.get(node) else {
                continue;
            };
            let current = self.generation_of(pool);
            for (g, t) in gens {
                t.add_to(&mut counts, Some(*g) == current);
            }
        }
        counts
    }

    /// The generation of `pool`'s current spec, if the pool exists.
    fn generation_of(&self, pool: &PoolName) -> Option<u64> {
        self.pools.get(pool).map(|p| p.generation)
    }
}

impl PoolState {
    /// Container time of `pool` up to `now`: closed intervals plus containers warm or
    /// allocated right now.
    pub fn usage(&self, pool: &PoolName, now: warmpool_proto::Timestamp) -> super::UsageTotals {
        let mut u = self.usage.get(pool).copied().unwrap_or_default();
        // The pool's warm index holds exactly its warm containers, with when each became warm.
        for (warm_at, _) in self.warm_index.get(pool).into_iter().flatten() {
            u.warm_ms += now.since(*warm_at).as_millis() as u64;
        }
        for a in self.active_allocations().filter(|a| &a.pool == pool) {
            u.allocated_ms += now.since(a.created_at).as_millis() as u64;
        }
        u
    }

    /// Allocated container time of `session` up to `now`, per pool, over the allocations
    /// still on record.
    pub fn session_usage(
        &self,
        session: &str,
        tenant: Option<&warmpool_proto::TenantId>,
        now: warmpool_proto::Timestamp,
    ) -> BTreeMap<PoolName, u64> {
        let mut out: BTreeMap<PoolName, u64> = BTreeMap::new();
        for a in self
            .allocations
            .values()
            .filter(|a| a.session_id.as_str() == session)
            .filter(|a| tenant.is_none_or(|t| &a.tenant == t))
        {
            let end = a.released_at.unwrap_or(now);
            *out.entry(a.pool.clone()).or_default() += end.since(a.created_at).as_millis() as u64;
        }
        out
    }
}

/// Default page of a paged list (`limit` absent but a `cursor` given).
pub const LIST_PAGE: usize = 100;
/// Largest page of a paged list.
pub const LIST_PAGE_MAX: usize = 1000;

/// Takes up to `limit` items of `items` that pass `keep`, and tells whether another one
/// passes after them (so the page has a successor). Reads one item past the page at most.
pub fn take_page<T>(
    items: impl Iterator<Item = T>,
    limit: usize,
    mut keep: impl FnMut(&T) -> bool,
) -> (Vec<T>, bool) {
    let mut out = Vec::with_capacity(limit.min(LIST_PAGE_MAX));
    let mut more = false;
    for item in items.filter(|i| keep(i)) {
        if out.len() == limit {
            more = true;
            break;
        }
        out.push(item);
    }
    (out, more)
}

impl PoolState {
    /// One page of container records in id order: up to `limit` after `after` that pass
    /// `keep`, walking the per-pool or per-node index when one of them is given. Copies
    /// nothing: the caller clones the page it returns (and only it) while it holds the read.
    pub fn containers_page<'a>(
        &'a self,
        after: Option<warmpool_proto::ContainerId>,
        pool: Option<&PoolName>,
        node: Option<&NodeId>,
        limit: usize,
        keep: impl FnMut(&&'a warmpool_proto::Container) -> bool,
    ) -> (Vec<&'a warmpool_proto::Container>, bool) {
        use std::ops::Bound::{Excluded, Unbounded};
        let from = match after {
            Some(a) => Excluded(a),
            None => Unbounded,
        };
        let ids = |set: Option<&'a std::collections::BTreeSet<warmpool_proto::ContainerId>>| {
            set.into_iter()
                .flat_map(move |s| s.range((from, Unbounded)))
                .filter_map(|id| self.container(id))
        };
        match (pool, node) {
            (Some(p), _) => take_page(ids(self.by_pool.get(p)), limit, keep),
            (None, Some(n)) => take_page(ids(self.by_node.get(n)), limit, keep),
            (None, None) => take_page(
                self.containers.range((from, Unbounded)).map(|(_, c)| &**c),
                limit,
                keep,
            ),
        }
    }

    /// One page of allocations (granted or waiting) in id order: up to `limit` after `after`
    /// that pass `keep`. Only the page is copied.
    pub fn allocations_page(
        &self,
        after: Option<warmpool_proto::AllocationId>,
        limit: usize,
        mut keep: impl FnMut(&warmpool_proto::Allocation) -> bool,
    ) -> (Vec<warmpool_proto::Allocation>, bool) {
        use std::ops::Bound::{Excluded, Unbounded};
        let from = match after {
            Some(a) => Excluded(a),
            None => Unbounded,
        };
        // Waiting allocations are few (each is a request being served); sort them in.
        let mut waiting: Vec<warmpool_proto::Allocation> = self
            .pending_allocations()
            .filter(|a| after.is_none_or(|x| a.id > x))
            .collect();
        waiting.sort_by_key(|a| a.id);
        let mut waiting = waiting.into_iter().peekable();
        let mut granted = self
            .allocations
            .range((from, Unbounded))
            .map(|(_, a)| &**a)
            .peekable();
        // Granted ones are borrowed until they are on the page: only the page is copied.
        let merged = std::iter::from_fn(move || {
            use std::borrow::Cow;
            match (granted.peek(), waiting.peek()) {
                (Some(g), Some(w)) if w.id < g.id => waiting.next().map(Cow::Owned),
                (Some(_), _) => granted.next().map(Cow::Borrowed),
                (None, _) => waiting.next().map(Cow::Owned),
            }
        });
        let (page, more) = take_page(merged, limit, |a| keep(a));
        (page.into_iter().map(|a| a.into_owned()).collect(), more)
    }
}
