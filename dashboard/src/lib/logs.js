// A container's live log: `GET /v1/allocations/{id}/logs?follow=true&tail=N`.
//
// The server answers Server-Sent Events: `log` ({stream: "stdout"|"stderr", line}), `dropped`
// ({dropped}: lines the rate cap of 1,000 a second left out) and a last `end` ({reason}) when
// the container's output ended (it stopped, or was released). Like the event stream
// (`sse.js`), it is read with fetch() rather than EventSource, for the same reasons: the key
// goes in the `Authorization` header (no key in a URL, where logs and proxies keep it), and a
// 403 (a viewer key may not read logs) or a 410 (the allocation ended) is told apart from a
// lost connection, so the pane can say so once instead of retrying forever.
//
// What is pure here (message parsing, the bounded line buffer with its dropped markers) is
// unit-tested; `createLogFollower` is the effectful edge, with `fetch` and timers injectable.

import { SseParser } from './sse.js';
import { errorFromResponse, Kind } from './api.js';

/** Most lines the pane keeps (and so puts in the DOM); older ones are let go. */
export const MAX_LINES = 5000;

/** The tail choices the pane offers: lines from before now to start with. */
export const TAIL_CHOICES = Object.freeze([0, 100, 1000, 5000]);

/**
 * One SSE message of the logs stream as an item, or null (unknown event, bad JSON):
 * `{type: 'log', stream, line}`, `{type: 'dropped', count}`, `{type: 'end', reason}`. Pure.
 */
export function parseLogMessage(msg) {
  let data;
  try {
    data = JSON.parse(msg.data);
  } catch {
    return null;
  }
  if (!data || typeof data !== 'object') return null;
  switch (msg.event) {
    case 'log':
      if (typeof data.line !== 'string') return null;
      return { type: 'log', stream: data.stream === 'stderr' ? 'stderr' : 'stdout', line: data.line };
    case 'dropped': {
      const count = Number(data.dropped);
      return Number.isFinite(count) && count > 0 ? { type: 'dropped', count } : null;
    }
    case 'end':
      return { type: 'end', reason: typeof data.reason === 'string' ? data.reason : '' };
    default:
      return null;
  }
}

/** An empty buffer: `lines` in order (oldest first), `nextId` for keys, `trimmed` let go. */
export function emptyBuffer() {
  return { lines: [], nextId: 1, trimmed: 0 };
}

/**
 * Appends `items` (log lines and dropped markers; `end` items are ignored here) and keeps at
 * most `max` entries, letting the oldest go. Each entry gets a stable `id` for keyed
 * rendering. A dropped marker right after another merges into it ("300 lines dropped", not
 * three markers of 100). Returns a new buffer; the input is not changed. Pure.
 */
export function appendLogs(buf, items, max = MAX_LINES) {
  let lines = buf.lines.slice();
  let nextId = buf.nextId;
  for (const it of items) {
    if (it.type === 'log') {
      lines.push({ id: nextId++, kind: 'line', stream: it.stream, text: it.line });
    } else if (it.type === 'dropped') {
      const last = lines[lines.length - 1];
      if (last?.kind === 'dropped') {
        lines[lines.length - 1] = { ...last, count: last.count + it.count };
      } else {
        lines.push({ id: nextId++, kind: 'dropped', count: it.count });
      }
    } else if (it.type === 'note') {
      lines.push({ id: nextId++, kind: 'note', text: it.text });
    }
  }
  let trimmed = buf.trimmed;
  if (lines.length > max) {
    trimmed += lines.length - max;
    lines = lines.slice(lines.length - max);
  }
  return { lines, nextId, trimmed };
}

/** "1 line dropped", "1,200 lines dropped". Pure. */
export function droppedLabel(count) {
  const n = Number(count).toLocaleString('en-US');
  return `${n} ${count === 1 ? 'line' : 'lines'} dropped (over the rate cap of 1,000 a second)`;
}

/** The logs URL for an allocation. Pure. */
export function logsUrl(allocationId, tail) {
  const q = new URLSearchParams({ follow: 'true' });
  if (Number.isFinite(tail) && tail >= 0) q.set('tail', String(tail));
  return `/v1/allocations/${encodeURIComponent(allocationId)}/logs?${q}`;
}

/** States of a follower, as the pane shows them. */
export const LogState = Object.freeze({
  connecting: 'connecting',
  open: 'open', // streaming
  ended: 'ended', // the server sent `end`: the container's output is over
  forbidden: 'forbidden', // 403: this key may not read logs (a viewer)
  gone: 'gone', // 404 or 410: no such allocation for this key, or it has ended
  unauthorized: 'unauthorized', // 401
  lost: 'lost', // the connection dropped or failed; the pane offers to reconnect
  stopped: 'stopped', // stopped by us (page left, tail changed)
});

/**
 * Follows one allocation's log until `end`, a refusal, a lost connection or `stop()`. It
 * never retries by itself: a refusal will not change, and a reconnect with the same `tail`
 * would show old lines twice, so the pane offers "Reconnect" (new lines only).
 *
 * Items are handed over in batches, one per chunk read from the network, so a burst of
 * lines costs one render, not one each.
 *
 * @param {object} o
 * @param {string} o.url from `logsUrl`
 * @param {() => string|null} o.getKey
 * @param {(items: object[]) => void} o.onItems parsed items (`log`, `dropped`), in order
 * @param {(s: {state: string, message?: string}) => void} o.onState
 * @param {typeof fetch} [o.fetchImpl]
 * @param {object} [o.timers] `{setTimeout, clearTimeout}`
 * @param {number} [o.idleMs] nothing (not even the 15 s keep-alive) for this long = lost
 */
export function createLogFollower({ url, getKey, onItems, onState, fetchImpl, timers = globalThis, idleMs = 40000 }) {
  const doFetch = fetchImpl ?? ((...a) => globalThis.fetch(...a));
  const ctrl = new AbortController();
  let done = false;
  let idleTimer = null;

  function finish(state, message = '') {
    if (done) return;
    done = true;
    if (idleTimer) timers.clearTimeout(idleTimer);
    idleTimer = null;
    ctrl.abort();
    onState({ state, message });
  }

  function armIdle() {
    if (idleTimer) timers.clearTimeout(idleTimer);
    idleTimer = timers.setTimeout(() => finish(LogState.lost, 'no data from the server (keep-alive missed)'), idleMs);
  }

  async function run() {
    onState({ state: LogState.connecting });
    const headers = { accept: 'text/event-stream' };
    const key = getKey?.();
    if (key) headers.authorization = `Bearer ${key}`;
    armIdle();
    let resp;
    try {
      resp = await doFetch(url, { headers, signal: ctrl.signal, cache: 'no-store' });
    } catch (e) {
      return finish(LogState.lost, e?.message || 'connection failed');
    }
    if (done) return;
    if (!resp.ok || !resp.body) {
      let text = '';
      try {
        text = await resp.text();
      } catch {
        /* no body: the status says enough */
      }
      const err = errorFromResponse(resp.status, text, null);
      let state = LogState.lost;
      if (err.kind === Kind.forbidden) state = LogState.forbidden;
      else if (err.kind === Kind.unauthorized) state = LogState.unauthorized;
      else if (resp.status === 404 || resp.status === 410) state = LogState.gone;
      return finish(state, err.message);
    }
    onState({ state: LogState.open });
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    const parser = new SseParser();
    try {
      for (;;) {
        const { value, done: eof } = await reader.read();
        if (done) return;
        if (eof) return finish(LogState.lost, 'the server closed the stream before its end');
        armIdle();
        const batch = [];
        let end = null;
        for (const msg of parser.feed(decoder.decode(value, { stream: true }))) {
          const it = parseLogMessage(msg);
          if (!it) continue;
          if (it.type === 'end') {
            end = it;
            break;
          }
          batch.push(it);
        }
        if (batch.length) onItems(batch);
        if (end) return finish(LogState.ended, end.reason);
      }
    } catch (e) {
      if (!done) finish(LogState.lost, e?.message || 'the connection was cut');
    }
  }

  run();
  return {
    /** Stops following (the page is left, the tail changed). Idempotent. */
    stop() {
      finish(LogState.stopped);
    },
  };
}
