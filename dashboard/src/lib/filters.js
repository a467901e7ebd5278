// Filters for the containers table and the event log. Pure.

/** Containers matching `f` ({pool, node, state, session, text}; empty fields match all). */
export function filterContainers(list, f = {}) {
  const text = (f.text ?? '').trim().toLowerCase();
  return list.filter((c) => {
    if (f.pool && c.pool !== f.pool) return false;
    if (f.node && c.node !== f.node) return false;
    if (f.state) {
      if (f.state === 'live') {
        if (c.state === 'terminated' || c.state === 'failed') return false;
      } else if (f.state === 'unhealthy') {
        if (c.health?.status !== 'unhealthy') return false;
      } else if (c.state !== f.state) return false;
    }
    if (f.session && !(c.session ?? '').includes(f.session.trim())) return false;
    if (text) {
      const hay = [c.id, c.ipv6, c.session, c.allocation, c.docker_id].filter(Boolean).join(' ').toLowerCase();
      if (!hay.includes(text)) return false;
    }
    return true;
  });
}

/** Sorts containers: by `key` then id, ascending or not. */
export function sortContainers(list, key = 'created_at', ascending = false) {
  const dir = ascending ? 1 : -1;
  return [...list].sort((a, b) => {
    const x = a[key] ?? '';
    const y = b[key] ?? '';
    if (x < y) return -dir;
    if (x > y) return dir;
    return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
  });
}

/** Whether an event matches the event-log filter ({kinds: string[], pool, container, session, node}). */
export function eventMatches(ev, f = {}) {
  if (f.kinds && f.kinds.length > 0 && !f.kinds.includes(ev.kind)) return false;
  if (f.pool && ev.pool !== f.pool) return false;
  if (f.container && !(ev.container ?? '').includes(f.container.trim().replace(/^…/, ''))) return false;
  if (f.session && ev.session !== f.session.trim()) return false;
  if (f.node && ev.node !== f.node) return false;
  return true;
}

/**
 * The `GET /v1/events` query for a filter: newest first below `before` when paging back.
 * The server matches `container` exactly (a full id); a partial id is filtered here only.
 */
export function eventQuery(f = {}, { before, limit = 100 } = {}) {
  const q = { limit };
  if (before !== undefined && before !== null) q.before = before;
  if (f.kinds && f.kinds.length > 0) q.kind = f.kinds.join(',');
  if (f.pool) q.pool = f.pool;
  if (f.container && isUuid(f.container.trim())) q.container = f.container.trim();
  if (f.session) q.session = f.session.trim();
  if (f.node) q.node = f.node;
  return q;
}

export function isUuid(s) {
  return /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(s);
}

/** Distinct sorted values of `key` over `list`, without empties. */
export function distinct(list, key) {
  return [...new Set(list.map((x) => x[key]).filter(Boolean))].sort();
}
