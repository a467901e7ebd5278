// Applying live events to what the views show.
//
// Events carry ids and a kind, not whole records (no IPv6 address, no lease), so the views do
// two things with each event: apply it at once here (the state change shows immediately), and
// refetch the records it touched shortly after (see `affectedResources`), which makes the
// view exact again. These functions are pure: they return new values and never mutate.

/** Container states in lifecycle order, and which are live. */
export const CONTAINER_STATES = ['creating', 'warm', 'allocated', 'releasing', 'terminated', 'failed'];
export const LIVE_STATES = new Set(['creating', 'warm', 'paused', 'allocated', 'releasing']);

/** Every event kind the server knows (unknown kinds are shown as they come). */
export const EVENT_KINDS = [
  'pool_created',
  'pool_updated',
  'pool_deleted',
  'pool_scaled',
  'pool_backoff',
  'pool_recovered',
  'container_created',
  'container_warm',
  'container_allocated',
  'container_paused',
  'container_unpause_failed',
  'container_released',
  'container_health_changed',
  'container_restarted',
  'container_terminated',
  'container_failed',
  'allocation_pending',
  'allocation_cancelled',
  'allocation_renewed',
  'allocation_lost',
  'node_joined',
  'node_down',
  'node_cordoned',
  'node_uncordoned',
  'node_draining',
  'node_drained',
  'node_backoff',
  'node_recovered',
  'node_unreachable',
  'node_reachable',
  'key_created',
  'key_revoked',
];

const EMPTY_COUNTS = { total: 0, creating: 0, warm: 0, allocated: 0, releasing: 0, unhealthy: 0 };

/**
 * What a container record becomes after `ev`, or `undefined` when the event does not change
 * it. `c` may be undefined (a container the view has not loaded yet).
 */
export function applyToContainer(c, ev) {
  const at = ev.at;
  switch (ev.kind) {
    case 'container_created':
      if (c) return undefined;
      return {
        id: ev.container,
        pool: ev.pool ?? null,
        node: ev.node ?? null,
        state: 'creating',
        health: { status: 'unknown' },
        ipv6: null,
        port: null,
        session: null,
        allocation: null,
        created_at: at,
        warm_at: null,
        allocated_at: null,
        last_activity_at: null,
        lease_expires_at: null,
        released_at: null,
        ended_at: null,
        reason: null,
        partial: true, // made from an event; the full record comes with the next fetch
      };
    case 'container_warm':
      if (!c) return undefined;
      return { ...c, state: 'warm', warm_at: c.warm_at ?? at, health: { status: 'healthy' } };
    case 'container_paused':
      if (!c) return undefined;
      return { ...c, state: 'paused' };
    case 'container_allocated':
      if (!c) return undefined;
      return {
        ...c,
        state: 'allocated',
        session: ev.session ?? c.session,
        allocation: ev.allocation ?? c.allocation,
        allocated_at: at,
      };
    case 'container_released':
      if (!c) return undefined;
      return { ...c, state: 'releasing', released_at: at, reason: ev.reason ?? c.reason };
    case 'container_terminated':
      if (!c) return undefined;
      return { ...c, state: 'terminated', ended_at: at, reason: ev.reason ?? c.reason };
    case 'container_failed':
      if (!c) return undefined;
      return { ...c, state: 'failed', ended_at: at, reason: ev.reason ?? c.reason };
    case 'container_health_changed': {
      if (!c) return undefined;
      const h = ev.detail?.health;
      const status = typeof h === 'object' && h ? h.status : typeof h === 'string' ? h : ev.reason;
      if (status === 'healthy' || status === 'unhealthy' || status === 'unknown') {
        return { ...c, health: typeof h === 'object' && h ? h : { status } };
      }
      return undefined;
    }
    default:
      return undefined;
  }
}

/** Whether a container counts as unhealthy in status counts (live and failing its probes). */
function unhealthy(c) {
  return !!c && LIVE_STATES.has(c.state) && c.health?.status === 'unhealthy';
}

/** Adds `sign` × the container's contribution to a counts object. */
function addTo(counts, c, sign) {
  if (!c || !LIVE_STATES.has(c.state)) return counts;
  const next = { ...EMPTY_COUNTS, ...counts };
  next.total += sign;
  // `paused` is absent from the counts of servers without the tier.
  next[c.state] = (next[c.state] ?? 0) + sign;
  if (unhealthy(c)) next.unhealthy += sign;
  for (const k of Object.keys(next)) if (next[k] < 0) next[k] = 0;
  return next;
}

/** Status counts after a container changed from `before` to `after`. */
export function adjustStatus(status, before, after) {
  if (!status) return status;
  const move = (counts, sign, c) => addTo(counts, c, sign);
  let totals = move(move(status.totals, -1, before), 1, after);
  const pools = status.pools.map((p) => {
    let counts = p.counts;
    if (before && before.pool === p.name) counts = move(counts, -1, before);
    if (after && after.pool === p.name) counts = move(counts, 1, after);
    return counts === p.counts ? p : { ...p, counts };
  });
  const nodes = status.nodes.map((n) => {
    let counts = n.counts;
    if (before && before.node === n.node) counts = move(counts, -1, before);
    if (after && after.node === n.node) counts = move(counts, 1, after);
    return counts === n.counts ? n : { ...n, counts };
  });
  return { ...status, totals, pools, nodes };
}

const NODE_STATUS_BY_KIND = {
  node_joined: 'ready',
  node_uncordoned: 'ready',
  node_cordoned: 'cordoned',
  node_draining: 'draining',
  node_down: 'down',
};

/**
 * Applies one event to the dashboard's live data:
 * `{containers: {[id]: Container}, status: StatusView|null, nodes: NodeView[], lastSeq}`.
 * Returns a new object; an event at or below `lastSeq` changes nothing (already applied).
 */
export function applyEvent(data, ev) {
  if (data.lastSeq !== null && data.lastSeq !== undefined && ev.seq <= data.lastSeq) return data;
  let { containers, status, nodes } = data;
  if (ev.container) {
    const before = containers[ev.container];
    const after = applyToContainer(before, ev);
    if (after !== undefined) {
      containers = { ...containers, [ev.container]: after };
      status = adjustStatus(status, before, after);
    }
  }
  const nodeStatus = NODE_STATUS_BY_KIND[ev.kind];
  if (nodeStatus && ev.node) {
    nodes = nodes.map((n) => (n.id === ev.node ? { ...n, status: nodeStatus, reason: ev.reason ?? n.reason } : n));
    if (status) {
      status = {
        ...status,
        nodes: status.nodes.map((n) => (n.node === ev.node ? { ...n, status: nodeStatus } : n)),
      };
    }
  }
  return { ...data, containers, status, nodes, lastSeq: ev.seq };
}

/** Which fetched resources an event makes stale (refetched shortly after). Pure. */
export function affectedResources(ev) {
  const k = ev.kind;
  const out = new Set();
  if (k.startsWith('container_') || k.startsWith('allocation_')) {
    out.add('status').add('containers').add('allocations').add('nodes');
  } else if (k.startsWith('pool_')) {
    out.add('status').add('pools');
  } else if (k.startsWith('node_')) {
    out.add('status').add('nodes');
  } else if (k.startsWith('key_')) {
    out.add('keys');
  } else {
    out.add('status');
  }
  return out;
}

/**
 * Merges events into a newest-first list without duplicates, keeping at most `max`.
 * Pure; `list` is newest first, `incoming` in any order.
 */
export function mergeEvents(list, incoming, max = 1000) {
  const seen = new Set(list.map((e) => e.seq));
  const fresh = incoming.filter((e) => !seen.has(e.seq) && (seen.add(e.seq), true));
  if (fresh.length === 0) return list;
  const all = [...fresh, ...list];
  all.sort((a, b) => b.seq - a.seq);
  return all.length > max ? all.slice(0, max) : all;
}

/** Containers as a map by id, from a list. */
export function indexById(list) {
  const out = {};
  for (const c of list) out[c.id] = c;
  return out;
}
