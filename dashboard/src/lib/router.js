// Hash routes, so the control plane needs no fallback for client-side paths:
//   #/overview  #/containers?pool=demo&state=warm  #/containers/<id>  #/allocations
//   #/events?kind=container_released  #/nodes

export const VIEWS = ['overview', 'containers', 'allocations', 'events', 'nodes'];

/** `{view, id, params}` from `location.hash`. Unknown views fall back to the overview. Pure. */
export function parseHash(hash) {
  const raw = String(hash ?? '').replace(/^#\/?/, '');
  const [pathPart, queryPart = ''] = raw.split('?');
  const parts = pathPart.split('/').filter(Boolean).map(decodeURIComponent);
  const view = VIEWS.includes(parts[0]) ? parts[0] : 'overview';
  const id = VIEWS.includes(parts[0]) && parts[1] ? parts[1] : null;
  const params = Object.fromEntries(new URLSearchParams(queryPart));
  return { view, id, params };
}

/** The hash for a route. Pure. */
export function toHash(view, { id = null, params = {} } = {}) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') q.set(k, v);
  const qs = q.toString();
  return `#/${view}${id ? `/${encodeURIComponent(id)}` : ''}${qs ? `?${qs}` : ''}`;
}
