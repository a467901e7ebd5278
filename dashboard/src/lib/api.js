// The REST client: one place that sends the key, times requests out, and turns every failure
// (HTTP error bodies, lost connections, timeouts) into an `ApiError` with a `kind` the views
// branch on and a sentence a person can read.

/** Error kinds, from the HTTP status and the body's `error.code`. */
export const Kind = Object.freeze({
  network: 'network', // no answer at all: the member is down or the connection was cut
  timeout: 'timeout',
  unauthorized: 'unauthorized', // 401
  forbidden: 'forbidden', // 403
  notFound: 'not_found', // 404
  noCapacity: 'no_capacity', // 503 no_capacity
  noQuorum: 'no_quorum', // 503 no_quorum
  badRequest: 'bad_request', // 400, 413, 415
  conflict: 'conflict', // 409
  server: 'server', // other 5xx
  http: 'http', // anything else
});

export class ApiError extends Error {
  /**
   * @param {object} o
   * @param {string} o.kind one of `Kind`
   * @param {number} [o.status] HTTP status, 0 when there was no answer
   * @param {string} [o.code] the body's `error.code`
   * @param {string} o.message the server's message, or ours when it sent none
   * @param {number} [o.retryAfter] seconds, from `Retry-After`
   */
  constructor({ kind, status = 0, code = '', message, retryAfter }) {
    super(message);
    this.name = 'ApiError';
    this.kind = kind;
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

/** Maps an HTTP error answer to an ApiError. Pure. */
export function errorFromResponse(status, bodyText, retryAfterHeader) {
  let code = '';
  let message = '';
  try {
    const body = JSON.parse(bodyText);
    if (body && typeof body.error === 'object' && body.error) {
      code = String(body.error.code ?? '');
      message = String(body.error.message ?? '');
    }
  } catch {
    // Not our JSON: a proxy's page or plain text. Keep a short, single-line excerpt.
    message = String(bodyText ?? '').replace(/\s+/g, ' ').trim().slice(0, 200);
  }
  const retry = Number.parseInt(retryAfterHeader ?? '', 10);
  const retryAfter = Number.isFinite(retry) && retry >= 0 ? retry : undefined;
  let kind;
  if (status === 401) kind = Kind.unauthorized;
  else if (status === 403) kind = Kind.forbidden;
  else if (status === 404) kind = Kind.notFound;
  else if (status === 409) kind = Kind.conflict;
  else if (status === 400 || status === 413 || status === 415 || status === 422) kind = Kind.badRequest;
  else if (status === 503 && code === 'no_capacity') kind = Kind.noCapacity;
  else if (status === 503 && code === 'no_quorum') kind = Kind.noQuorum;
  else if (status === 502 || status === 504) kind = Kind.network; // a proxy in front lost the member
  else if (status >= 500) kind = Kind.server;
  else kind = Kind.http;
  if (!message) message = `HTTP ${status}`;
  return new ApiError({ kind, status, code, message, retryAfter });
}

/**
 * One sentence for a person: what happened and what to do. `action` names what was tried
 * ("allocate from demo", "cordon node n1"). Pure.
 */
export function describeError(err, action = 'do that') {
  if (!(err instanceof ApiError)) {
    return `Could not ${action}: ${err?.message ?? String(err)}`;
  }
  const m = err.message;
  switch (err.kind) {
    case Kind.network:
      return `Could not ${action}: the control plane did not answer (connection lost). Try again once it is back.`;
    case Kind.timeout:
      return `Could not ${action}: the control plane took too long to answer.`;
    case Kind.unauthorized:
      return `Your API key was not accepted (${m}). Sign in again.`;
    case Kind.forbidden:
      return `Not allowed to ${action}: ${m}.`;
    case Kind.notFound:
      return `Could not ${action}: ${m}.`;
    case Kind.noCapacity:
      return `No capacity to ${action}: ${m}${err.retryAfter !== undefined ? ` (retry after ${err.retryAfter} s)` : ''}.`;
    case Kind.noQuorum:
      return `Could not ${action}: the cluster has no leader right now (${m}). Retry in a moment.`;
    case Kind.badRequest:
      return `Could not ${action}: the request was refused (${m}).`;
    case Kind.conflict:
      return `Could not ${action}: ${m}.`;
    case Kind.server:
      return `Could not ${action}: the control plane failed (${m}).`;
    default:
      return `Could not ${action}: ${m}.`;
  }
}

/** `?a=1&b=x` from an object, skipping empty values. Pure. */
export function queryString(params = {}) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v === undefined || v === null || v === '') continue;
    q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : '';
}

/**
 * A client bound to one origin (`base`, '' for the page's own).
 *
 * @param {object} o
 * @param {() => string|null} o.getKey the API key to send, if any
 * @param {(info: {status: number, headers: Headers, ms: number}) => void} [o.onResponse]
 *   called for every answer (leader and applied-index headers, latency)
 * @param {(err: ApiError) => void} [o.onError] called for every failure
 * @param {typeof fetch} [o.fetchImpl]
 */
export function createClient({ base = '', getKey, onResponse, onError, fetchImpl, timeoutMs = 10000 }) {
  const doFetch = fetchImpl ?? ((...a) => globalThis.fetch(...a));

  async function request(method, path, { body, query, timeout = timeoutMs, key, signal, text: asText = false } = {}) {
    const headers = { accept: asText ? 'text/plain' : 'application/json' };
    const k = key === undefined ? getKey?.() : key;
    if (k) headers.authorization = `Bearer ${k}`;
    if (body !== undefined) headers['content-type'] = 'application/json';
    const ctrl = new AbortController();
    const onAbort = () => ctrl.abort();
    signal?.addEventListener('abort', onAbort);
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      ctrl.abort();
    }, timeout);
    const started = Date.now();
    let resp;
    let text;
    try {
      resp = await doFetch(`${base}${path}${queryString(query)}`, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: ctrl.signal,
        cache: 'no-store',
      });
      text = await resp.text();
    } catch (e) {
      const err = timedOut
        ? new ApiError({ kind: Kind.timeout, message: `no answer within ${Math.round(timeout / 1000)} s` })
        : new ApiError({ kind: Kind.network, message: e?.name === 'AbortError' ? 'request cancelled' : 'connection failed' });
      if (!(signal?.aborted)) onError?.(err);
      throw err;
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
    }
    onResponse?.({ status: resp.status, headers: resp.headers, ms: Date.now() - started });
    if (!resp.ok) {
      const err = errorFromResponse(resp.status, text, resp.headers.get('retry-after'));
      onError?.(err);
      throw err;
    }
    if (asText) return text;
    if (!text) return null;
    try {
      return JSON.parse(text);
    } catch {
      throw new ApiError({ kind: Kind.http, status: resp.status, message: 'the answer was not JSON' });
    }
  }

  return {
    request,
    get: (path, opts) => request('GET', path, opts),
    post: (path, body, opts) => request('POST', path, { ...opts, body }),
    del: (path, opts) => request('DELETE', path, opts),
  };
}
