// The dashboard's live state and the loops that keep it fresh.
//
// Sources: REST reads (status, cluster, nodes, pools, containers, allocations, metrics),
// polled at a slow pace and refetched ~150 ms after any event that touches them; and the
// event stream, applied at once through the pure reducers. While the member serving the page
// is unreachable, polling pauses and the stream's backoff loop is the only probe; when the
// stream is back, everything is refetched and the stream resumes after the last event seen.

import { createClient, describeError, Kind, ApiError } from './api.js';
import { createEventStream, StreamState, backoffDelay } from './sse.js';
import { applyEvent, affectedResources, indexById, mergeEvents } from './reducers.js';
import { detectAuth, loadKey, saveKey, roleOf, permissions, deniedReason } from './auth.js';
import { pushStatusSample, pushPoint } from './series.js';
import { parsePrometheus, latencySeries, intervalMean } from './metrics.js';

/** Newest possible `before`, for "the latest page" of events. */
export const NEWEST = Number.MAX_SAFE_INTEGER;

const POLL = { status: 2000, cluster: 3000, nodes: 3000, metrics: 5000, allocations: 10000, pools: 15000 };

export const app = $state({
  phase: 'starting', // starting | unreachable | signin | ready
  auth: { mode: 'unknown', key: null, role: null, tenant: null, message: '', learned: {} },
  conn: { state: 'connecting', attempt: 0, retryInMs: 0, since: null, error: '', retryAt: 0 },
  startError: '',
  origin: typeof location !== 'undefined' ? location.origin : '',
  member: null, // the member serving this page (from /v1/cluster)
  leader: null, // from the warmpool-leader header
  appliedIndex: 0,
  cluster: null,
  status: null,
  nodes: [],
  nodesFetchedAt: 0,
  pools: [],
  containers: {},
  allocations: [],
  events: [], // newest first, the live tail (at most 500)
  lastSeq: null,
  latency: { metrics: null, interval: [], own: [], note: '' },
  series: [],
  toasts: [],
  now: Date.now(),
});

let toastSeq = 0;
export function toast(kind, text, ttl = kind === 'error' ? 12000 : 5000) {
  const id = ++toastSeq;
  app.toasts.push({ id, kind, text });
  if (app.toasts.length > 5) app.toasts.splice(0, app.toasts.length - 5);
  if (ttl) setTimeout(() => dismissToast(id), ttl);
  return id;
}
export function dismissToast(id) {
  const i = app.toasts.findIndex((t) => t.id === id);
  if (i >= 0) app.toasts.splice(i, 1);
}

function onResponse({ headers }) {
  const leader = headers.get('warmpool-leader');
  if (leader !== null) {
    const next = leader === 'none' ? 'none' : Number(leader);
    const prev = app.leader;
    if (prev !== null && prev !== next) {
      if (next === 'none') toast('error', 'The member serving this page knows no leader: data may be stale and changes will fail until one is elected.');
      else if (prev === 'none') toast('info', `Leader elected: member ${next}.`);
      else toast('info', `Leader changed: member ${prev} → member ${next}.`);
      invalidate(['cluster']);
    }
    app.leader = next;
  }
  const idx = Number(headers.get('warmpool-applied-index'));
  if (Number.isFinite(idx) && idx > 0) app.appliedIndex = idx;
}

function onError(err) {
  if (err.kind === Kind.unauthorized && app.phase === 'ready' && app.auth.mode === 'on') {
    signOut(`Your API key is no longer accepted (${err.message}). Sign in again.`);
  }
}

export const api = createClient({ getKey: () => app.auth.key, onResponse, onError });

/** Whether the connection to the member serving the page is down. */
export function disconnected() {
  return app.conn.state === StreamState.reconnecting;
}

// ---------------------------------------------------------------------------------------
// Fetching

const inflight = new Map();
const dirty = new Set();

const fetchers = {
  async status() {
    const s = await api.get('/v1/status');
    app.status = s;
    app.series = pushStatusSample(app.series, Date.now(), s);
  },
  async cluster() {
    const c = await api.get('/v1/cluster');
    app.cluster = c;
    app.member = c.member;
  },
  async nodes() {
    const n = await api.get('/v1/nodes');
    app.nodes = n;
    app.nodesFetchedAt = Date.now();
  },
  async pools() {
    app.pools = await api.get('/v1/pools');
  },
  async containers() {
    const list = await api.get('/v1/containers');
    app.containers = indexById(list);
  },
  async allocations() {
    // Pending ones (async, waiting for a warm container) first, then the active ones.
    const [pending, active] = await Promise.all([
      api.get('/v1/allocations', { query: { state: 'pending' } }),
      api.get('/v1/allocations', { query: { state: 'active' } }),
    ]);
    app.allocations = [...pending, ...active];
  },
  // The key's role. `GET /v1/whoami` says it outright. A member too old to offer it answers
  // 404, and then `GET /v1/keys`, which is admin-only, tells admin (200) from the rest (403:
  // user or viewer, who may not touch nodes); a 403 on an allocation then tells a viewer from
  // a user.
  async keys() {
    if (app.auth.mode !== 'on' || app.auth.role) return;
    try {
      const me = await api.get('/v1/whoami');
      if (me?.role) {
        app.auth.role = me.role;
        // A user or viewer key sees its tenant's allocations only; the API filters them.
        app.auth.tenant = me.tenant ?? null;
        return;
      }
    } catch (e) {
      if (e.kind !== Kind.notFound) throw e;
    }
    try {
      const keys = await api.get('/v1/keys');
      app.auth.role = roleOf(keys, app.auth.key) ?? 'admin';
    } catch (e) {
      if (e.kind === Kind.forbidden) app.auth.learned = { ...app.auth.learned, nodesDenied: true };
      else throw e;
    }
  },
  async metrics() {
    let text;
    try {
      text = await api.get('/metrics', { text: true });
    } catch (e) {
      if (e.kind === Kind.notFound) app.latency.note = 'This member does not export metrics.';
      throw e;
    }
    const cur = latencySeries(parsePrometheus(text));
    const t = Date.now();
    const iv = intervalMean(app.latency.metrics, cur);
    if (iv) app.latency.interval = pushPoint(app.latency.interval, t, iv.mean * 1000);
    app.latency.metrics = cur;
    app.latency.note = '';
  },
};

/** Fetches one resource now (coalescing: a request while one is in flight runs once after it). */
export async function refresh(name) {
  if (!fetchers[name]) return;
  if (inflight.has(name)) {
    dirty.add(name);
    return inflight.get(name);
  }
  lastRun[name] = Date.now();
  const p = (async () => {
    try {
      await fetchers[name]();
    } catch (e) {
      if (!(e instanceof ApiError)) console.warn(`refresh ${name}:`, e);
    } finally {
      inflight.delete(name);
      if (dirty.delete(name)) refresh(name);
    }
  })();
  inflight.set(name, p);
  return p;
}

// After an event, each resource it touched is refetched ~150 ms later (so a burst of events
// costs one fetch), but not more often than its gap allows: under a heavy allocation rate the
// reducers keep the view current and the full lists are fetched about once a second.
const GAP = { status: 300, containers: 1000, allocations: 1000, nodes: 1000, pools: 2000, cluster: 1000, keys: 5000, metrics: 2000 };
const lastRun = {};
const scheduled = {};

/** Marks resources stale; each is refetched soon, at most once per its gap. */
export function invalidate(names) {
  for (const n of names) {
    if (scheduled[n]) continue;
    const wait = Math.max(150, (lastRun[n] ?? 0) + (GAP[n] ?? 500) - Date.now());
    scheduled[n] = setTimeout(() => {
      scheduled[n] = null;
      if (!disconnected()) refresh(n);
    }, wait);
  }
}

export function refreshAll() {
  return Promise.all(['cluster', 'status', 'nodes', 'pools', 'containers', 'allocations', 'keys', 'metrics'].map(refresh));
}

// ---------------------------------------------------------------------------------------
// Live events

const listeners = new Set();
/** Calls `fn(event)` for every live event; returns the unsubscribe function. */
export function onLiveEvent(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

function handleEvent(ev) {
  const next = applyEvent(
    { containers: app.containers, status: app.status, nodes: app.nodes, lastSeq: app.lastSeq },
    ev,
  );
  app.containers = next.containers;
  app.status = next.status;
  app.nodes = next.nodes;
  app.lastSeq = next.lastSeq;
  app.events = mergeEvents(app.events, [ev], 500);
  invalidate(affectedResources(ev));
  for (const fn of listeners) {
    try {
      fn(ev);
    } catch (e) {
      console.warn('event listener:', e);
    }
  }
}

let stream = null;
let wasDown = false;

function startStream() {
  stream?.stop();
  stream = createEventStream({
    url: '/v1/events/stream',
    getKey: () => app.auth.key,
    onEvent: handleEvent,
    onOpen() {
      if (wasDown) toast('ok', 'Reconnected: the view is live again.');
      wasDown = false;
      refreshAll();
    },
    onState(s) {
      app.now = Date.now(); // so countdowns derived from it start from the right second
      if (s.state === StreamState.reconnecting) {
        wasDown = true;
        app.conn = {
          state: s.state,
          attempt: s.attempt,
          retryInMs: s.retryInMs,
          retryAt: Date.now() + (s.retryInMs ?? 0),
          since: s.since ?? Date.now(),
          error: s.error ?? '',
        };
      } else if (s.state === StreamState.unauthorized) {
        app.conn = { ...app.conn, state: s.state };
        if (app.auth.mode === 'on') {
          signOut(`Your API key is no longer accepted${s.error ? ` (${s.error})` : ''}. Sign in again.`);
        }
      } else {
        app.conn = { state: s.state, attempt: 0, retryInMs: 0, retryAt: 0, since: null, error: '' };
      }
    },
  });
  stream.start(app.lastSeq);
}

export function reconnectNow() {
  stream?.retryNow();
}

// ---------------------------------------------------------------------------------------
// Start, sign in, sign out

const timers = [];
function startLoops() {
  stopLoops();
  for (const [name, every] of Object.entries(POLL)) {
    timers.push(
      setInterval(() => {
        if (app.phase === 'ready' && !disconnected() && !document.hidden) refresh(name);
      }, every),
    );
  }
  timers.push(setInterval(() => (app.now = Date.now()), 1000));
}
function stopLoops() {
  while (timers.length) clearInterval(timers.pop());
}

async function enter() {
  app.phase = 'ready';
  // Events up to now are covered by the first fetch; the stream starts after the newest.
  try {
    const latest = await api.get('/v1/events', { query: { before: NEWEST, limit: 200 } });
    app.events = mergeEvents([], latest, 500);
    app.lastSeq = latest.length ? latest[latest.length - 1].seq : 0;
  } catch {
    /* the stream starts from the newest event instead */
  }
  await refreshAll();
  startStream();
  startLoops();
}

let startAttempt = 0;
/** Finds out whether auth is on, checks a stored key, and enters the dashboard or sign-in. */
export async function start() {
  app.phase = 'starting';
  let mode;
  try {
    mode = (await detectAuth(api)).mode;
  } catch (e) {
    const delay = backoffDelay(startAttempt++, { max: 10000 });
    app.phase = 'unreachable';
    app.startError = describeError(e, 'load the dashboard');
    app.conn = { state: 'reconnecting', attempt: startAttempt, retryInMs: delay, retryAt: Date.now() + delay, since: app.conn.since ?? Date.now(), error: e.message };
    setTimeout(start, delay);
    return;
  }
  startAttempt = 0;
  app.conn = { state: 'connecting', attempt: 0, retryInMs: 0, retryAt: 0, since: null, error: '' };
  app.auth.mode = mode;
  if (mode === 'off') {
    app.auth.key = null;
    return enter();
  }
  const key = loadKey();
  if (!key) {
    app.phase = 'signin';
    return;
  }
  const err = await checkKey(key);
  if (err) {
    saveKey(null);
    app.phase = 'signin';
    app.auth.message = err;
    return;
  }
  app.auth.key = key;
  return enter();
}

/** null when `key` is accepted, else a sentence. */
async function checkKey(key) {
  try {
    await api.get('/v1/cluster', { key });
    return null;
  } catch (e) {
    if (e.kind === Kind.unauthorized) return `That key was not accepted: ${e.message}.`;
    return describeError(e, 'sign in');
  }
}

/** Signs in with `key`; returns null on success, else the message to show. */
export async function signIn(key) {
  const k = key.trim();
  const err = await checkKey(k);
  if (err) return err;
  saveKey(k);
  app.auth = { ...app.auth, key: k, role: null, tenant: null, message: '', learned: {} };
  await enter();
  return null;
}

export function signOut(message = '') {
  stream?.stop();
  stream = null;
  stopLoops();
  saveKey(null);
  app.auth = { ...app.auth, key: null, role: null, tenant: null, message, learned: {} };
  app.phase = 'signin';
}

// ---------------------------------------------------------------------------------------
// Writes

export function can(what) {
  const p = permissions(app.auth.mode, app.auth.role, app.auth.learned);
  return what === 'allocate' ? p.allocate : p.nodes;
}
export function cannotReason(what) {
  return deniedReason(app.auth.role, what);
}

function learn403(e, what) {
  if (e?.kind === Kind.forbidden) {
    app.auth.learned = { ...app.auth.learned, [what === 'allocate' ? 'allocateDenied' : 'nodesDenied']: true };
    // Only a viewer may not allocate.
    if (what === 'allocate' && !app.auth.role) app.auth.role = 'viewer';
  }
}

/** How the header names the key's role. */
export function roleLabel() {
  if (app.auth.role && app.auth.tenant) return `${app.auth.role} key, tenant ${app.auth.tenant}`;
  if (app.auth.role) return `${app.auth.role} key`;
  return app.auth.learned.nodesDenied ? 'user or viewer key' : 'key';
}

/**
 * `POST /v1/allocations`. Returns `{ok: true, allocation, ms}` or `{ok: false, error, message}`.
 * The browser-side round trip is recorded for the latency chart.
 */
export async function allocate({ pool, session_id, lease_seconds, wait_ms, idempotency_key, asynchronous, location }) {
  const body = { pool };
  if (asynchronous) body.async = true;
  if (location) body.location = location;
  if (session_id) body.session_id = session_id;
  if (lease_seconds) body.lease_seconds = lease_seconds;
  if (wait_ms !== undefined && wait_ms !== null && wait_ms !== '') body.wait_ms = wait_ms;
  if (idempotency_key) body.idempotency_key = idempotency_key;
  const t0 = performance.now();
  try {
    const allocation = await api.post('/v1/allocations', body, { timeout: (Number(wait_ms) || 0) + 15000 });
    const took = performance.now() - t0;
    app.latency.own = pushPoint(app.latency.own, Date.now(), took);
    invalidate(['allocations', 'containers', 'status']);
    return { ok: true, allocation, ms: took };
  } catch (e) {
    learn403(e, 'allocate');
    return { ok: false, error: e, message: describeError(e, `allocate from pool "${pool}"`) };
  }
}

export async function release(allocationId) {
  try {
    const a = await api.del(`/v1/allocations/${encodeURIComponent(allocationId)}`);
    invalidate(['allocations', 'containers', 'status']);
    return { ok: true, allocation: a };
  } catch (e) {
    learn403(e, 'allocate');
    return { ok: false, error: e, message: describeError(e, 'release the allocation') };
  }
}

export async function renew(allocationId) {
  try {
    const a = await api.post(`/v1/allocations/${encodeURIComponent(allocationId)}/renew`, undefined);
    invalidate(['allocations']);
    return { ok: true, allocation: a };
  } catch (e) {
    learn403(e, 'allocate');
    return { ok: false, error: e, message: describeError(e, 'renew the lease') };
  }
}

/** Cordons, uncordons or drains `node`; `body` is a drain's `{deadline_secs}`, if any. */
export async function nodeAction(node, action, body = undefined) {
  try {
    const n = await api.post(`/v1/nodes/${encodeURIComponent(node)}/${action}`, body);
    invalidate(['nodes', 'status']);
    return { ok: true, node: n };
  } catch (e) {
    learn403(e, 'nodes');
    return { ok: false, error: e, message: describeError(e, `${action} node ${node}`) };
  }
}
