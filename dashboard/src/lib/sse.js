// The live event stream.
//
// EventSource cannot send an Authorization header, cannot tell a 401 from a dead server, and
// owns its own reconnect timing. So the stream is read with fetch() and a ReadableStream:
// the key goes in the header (the server also accepts `?access_token=` for EventSource
// clients), a 401 is told apart from a lost connection, and reconnecting is ours: exponential
// backoff with jitter, `Last-Event-ID` so no event is missed, and a watchdog that treats a
// silent connection (no event and no keep-alive for `idleMs`) as dead.

/**
 * Incremental parser for `text/event-stream` (the WHATWG rules): lines end in LF, CR or CRLF;
 * a blank line dispatches; `:` starts a comment; `data` lines join with LF; an `id` with NUL
 * is ignored; `retry` takes digits only. Feed it text in any chunking.
 */
export class SseParser {
  constructor() {
    this.buf = '';
    this.data = [];
    this.event = '';
    this.id = undefined; // id of the message being built, if it set one
    this.lastEventId = '';
    this.retry = undefined;
    this.sawCR = false;
  }

  /** Returns the messages completed by `chunk`: `{event, data, id, retry?}`. */
  feed(chunk) {
    const out = [];
    let text = chunk;
    // A CR at the end of the previous chunk already ended its line; skip the LF of a CRLF.
    if (this.sawCR && text.startsWith('\n')) text = text.slice(1);
    this.sawCR = false;
    this.buf += text;
    let start = 0;
    for (let i = 0; i < this.buf.length; i++) {
      const c = this.buf[i];
      if (c !== '\n' && c !== '\r') continue;
      const line = this.buf.slice(start, i);
      if (c === '\r') {
        if (i + 1 < this.buf.length) {
          if (this.buf[i + 1] === '\n') i++;
        } else {
          this.sawCR = true;
        }
      }
      start = i + 1;
      const msg = this.line(line);
      if (msg) out.push(msg);
    }
    this.buf = this.buf.slice(start);
    return out;
  }

  line(line) {
    if (line === '') return this.dispatch();
    if (line.startsWith(':')) return null;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    switch (field) {
      case 'data':
        this.data.push(value);
        break;
      case 'event':
        this.event = value;
        break;
      case 'id':
        if (!value.includes('\0')) {
          this.lastEventId = value;
          this.id = value;
        }
        break;
      case 'retry':
        if (/^\d+$/.test(value)) this.retry = Number(value);
        break;
      default:
        break;
    }
    return null;
  }

  dispatch() {
    const hadData = this.data.length > 0;
    const msg = {
      event: this.event || 'message',
      data: this.data.join('\n'),
      id: this.lastEventId,
    };
    if (this.retry !== undefined) msg.retry = this.retry;
    this.data = [];
    this.event = '';
    this.id = undefined;
    return hadData ? msg : null;
  }
}

/**
 * Delay before reconnect attempt `attempt` (0 = the first retry): `base × factor^attempt`,
 * capped at `max`, with "equal jitter" (half fixed, half random) so a fleet of browsers does
 * not reconnect in lockstep after a member restarts. Pure given `random`.
 */
export function backoffDelay(attempt, { base = 500, factor = 2, max = 10000, random = Math.random } = {}) {
  const exp = Math.min(max, base * factor ** Math.max(0, attempt));
  return Math.round(exp / 2 + random() * (exp / 2));
}

/** Parses one stream message's data as an Event; null (and no throw) when it is not one. */
export function parseEventMessage(msg) {
  let ev;
  try {
    ev = JSON.parse(msg.data);
  } catch {
    return null;
  }
  if (!ev || typeof ev !== 'object' || !Number.isFinite(ev.seq) || typeof ev.kind !== 'string') return null;
  return ev;
}

/** Connection states the UI shows. */
export const StreamState = Object.freeze({
  connecting: 'connecting', // first attempt, nothing heard yet
  open: 'open', // live
  reconnecting: 'reconnecting', // lost; waiting `retryInMs` before the next attempt
  unauthorized: 'unauthorized', // 401: needs a new key; no retry
  closed: 'closed', // stopped by us
});

/**
 * A self-healing event stream.
 *
 * @param {object} o
 * @param {string} o.url e.g. '/v1/events/stream'
 * @param {() => string|null} o.getKey
 * @param {(ev: object) => void} o.onEvent each parsed event, in order, never twice
 * @param {(s: {state: string, attempt: number, retryInMs?: number, since?: number, error?: string}) => void} o.onState
 *   `attempt` is the number of the next retry (1 for the first) while reconnecting
 * @param {() => void} [o.onOpen] after each (re)connect, once the server has answered 200
 * @param {typeof fetch} [o.fetchImpl]
 * @param {object} [o.timers] `{setTimeout, clearTimeout, now}` (tests inject fakes)
 * @param {number} [o.idleMs] no bytes for this long = dead connection (the server sends a
 *   keep-alive every 15 s)
 * @param {number} [o.stableMs] a connection open this long resets the backoff
 */
export function createEventStream({
  url,
  getKey,
  onEvent,
  onState,
  onOpen,
  fetchImpl,
  timers = globalThis,
  idleMs = 40000,
  stableMs = 5000,
  backoff = {},
}) {
  const doFetch = fetchImpl ?? ((...a) => globalThis.fetch(...a));
  const now = () => (timers.now ? timers.now() : Date.now());
  let lastId = null; // last event seq seen: sent as Last-Event-ID
  let attempt = 0;
  let ctrl = null;
  let retryTimer = null;
  let idleTimer = null;
  let stopped = true;
  let generation = 0; // bumps on each connect, so a stale reader cannot act
  let disconnectedSince = null;
  let openedAt = 0;

  function setState(state, extra = {}) {
    onState?.({ state, attempt, since: disconnectedSince ?? undefined, ...extra });
  }

  function armIdle(gen) {
    if (idleTimer) timers.clearTimeout(idleTimer);
    idleTimer = timers.setTimeout(() => {
      if (gen === generation) fail(gen, 'no data from the server (keep-alive missed)');
    }, idleMs);
  }

  function clearTimers() {
    if (retryTimer) timers.clearTimeout(retryTimer);
    if (idleTimer) timers.clearTimeout(idleTimer);
    retryTimer = idleTimer = null;
  }

  function fail(gen, error) {
    if (gen !== generation || stopped) return;
    generation++;
    ctrl?.abort();
    ctrl = null;
    clearTimers();
    if (openedAt && now() - openedAt >= stableMs) attempt = 0;
    openedAt = 0;
    if (disconnectedSince === null) disconnectedSince = now();
    const delay = backoffDelay(attempt, backoff);
    attempt++; // now the number of the retry about to be made: 1, 2, ...
    setState(StreamState.reconnecting, { retryInMs: delay, error });
    retryTimer = timers.setTimeout(connect, delay);
  }

  async function connect() {
    retryTimer = null;
    if (stopped) return;
    const gen = ++generation;
    ctrl = new AbortController();
    if (disconnectedSince === null && attempt === 0) setState(StreamState.connecting);
    const headers = { accept: 'text/event-stream' };
    const key = getKey?.();
    if (key) headers.authorization = `Bearer ${key}`;
    if (lastId !== null) headers['last-event-id'] = String(lastId);
    armIdle(gen);
    let resp;
    try {
      resp = await doFetch(url, { headers, signal: ctrl.signal, cache: 'no-store' });
    } catch (e) {
      return fail(gen, e?.message || 'connection failed');
    }
    if (gen !== generation) return;
    if (resp.status === 401) {
      clearTimers();
      generation++;
      stopped = true;
      // The server says why (e.g. "the key was revoked": it also ends a stream whose key is
      // revoked, and this reconnect is how the page learns of it).
      let why = 'the API key was not accepted';
      try {
        why = (await resp.json())?.error?.message || why;
      } catch {
        /* not JSON: keep the general reason */
      }
      setState(StreamState.unauthorized, { error: why });
      return;
    }
    if (!resp.ok || !resp.body) {
      return fail(gen, `HTTP ${resp.status}`);
    }
    openedAt = now();
    disconnectedSince = null;
    setState(StreamState.open);
    onOpen?.();
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    const parser = new SseParser();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (gen !== generation) return;
        if (done) return fail(gen, 'the server closed the stream');
        armIdle(gen);
        for (const msg of parser.feed(decoder.decode(value, { stream: true }))) {
          const ev = parseEventMessage(msg);
          if (!ev) continue;
          // Never apply an event twice (a reconnect resumes after Last-Event-ID, but be safe).
          if (lastId !== null && ev.seq <= lastId) continue;
          lastId = ev.seq;
          onEvent(ev);
        }
      }
    } catch (e) {
      return fail(gen, e?.message || 'the connection was cut');
    }
  }

  return {
    /** Starts (or restarts) the stream after `seq` (events up to it are already known). */
    start(afterSeq = null) {
      if (afterSeq !== null && (lastId === null || afterSeq > lastId)) lastId = afterSeq;
      if (!stopped) return;
      stopped = false;
      attempt = 0;
      disconnectedSince = null;
      connect();
    },
    /** Retries at once (a "reconnect now" button). */
    retryNow() {
      if (stopped || !retryTimer) return;
      timers.clearTimeout(retryTimer);
      connect();
    },
    stop() {
      stopped = true;
      generation++;
      clearTimers();
      ctrl?.abort();
      ctrl = null;
      setState(StreamState.closed);
    },
    get lastEventId() {
      return lastId;
    },
  };
}
