import { describe, it, expect, vi } from 'vitest';
import { SseParser } from '../../src/lib/sse.js';
import {
  parseLogMessage,
  appendLogs,
  emptyBuffer,
  droppedLabel,
  logsUrl,
  createLogFollower,
  LogState,
  MAX_LINES,
} from '../../src/lib/logs.js';

// What the server sends (control-plane/src/api/session.rs::logs), keep-alive included.
const WIRE =
  'event: log\ndata: {"stream":"stdout","line":"hello"}\n\n' +
  ':\n\n' +
  'event: log\ndata: {"stream":"stderr","line":"oops"}\n\n' +
  'event: dropped\ndata: {"dropped":250}\n\n' +
  'event: end\ndata: {"reason":"the container\'s output ended"}\n\n';

describe('parseLogMessage', () => {
  it('reads the server’s events in any chunking', () => {
    for (let size = 1; size <= WIRE.length; size += 7) {
      const p = new SseParser();
      const items = [];
      for (let i = 0; i < WIRE.length; i += size) items.push(...p.feed(WIRE.slice(i, i + size)).map(parseLogMessage));
      expect(items, `chunk size ${size}`).toEqual([
        { type: 'log', stream: 'stdout', line: 'hello' },
        { type: 'log', stream: 'stderr', line: 'oops' },
        { type: 'dropped', count: 250 },
        { type: 'end', reason: "the container's output ended" },
      ]);
    }
  });

  it('returns null for unknown events, bad JSON, lines that are not strings and empty drops', () => {
    expect(parseLogMessage({ event: 'message', data: '{"line":"x"}' })).toBeNull();
    expect(parseLogMessage({ event: 'log', data: 'not json' })).toBeNull();
    expect(parseLogMessage({ event: 'log', data: '{"stream":"stdout","line":3}' })).toBeNull();
    expect(parseLogMessage({ event: 'dropped', data: '{"dropped":0}' })).toBeNull();
    expect(parseLogMessage({ event: 'dropped', data: '{}' })).toBeNull();
  });

  it('keeps empty lines and text that looks like markup; an unknown stream counts as stdout', () => {
    expect(parseLogMessage({ event: 'log', data: '{"stream":"stdout","line":""}' })).toEqual({ type: 'log', stream: 'stdout', line: '' });
    expect(parseLogMessage({ event: 'log', data: '{"stream":"x","line":"<b>"}' })).toEqual({ type: 'log', stream: 'stdout', line: '<b>' });
    expect(parseLogMessage({ event: 'end', data: '{}' })).toEqual({ type: 'end', reason: '' });
  });
});

const line = (text, stream = 'stdout') => ({ type: 'log', stream, line: text });

describe('appendLogs', () => {
  it('appends in order with stable ids, and does not change its input', () => {
    const a = emptyBuffer();
    const b = appendLogs(a, [line('one'), line('two', 'stderr')]);
    expect(a.lines).toEqual([]);
    expect(b.lines).toEqual([
      { id: 1, kind: 'line', stream: 'stdout', text: 'one' },
      { id: 2, kind: 'line', stream: 'stderr', text: 'two' },
    ]);
    const c = appendLogs(b, [line('three')]);
    expect(c.lines.map((l) => l.id)).toEqual([1, 2, 3]);
  });

  it('keeps at most max entries, the newest, and counts those let go', () => {
    let buf = emptyBuffer();
    for (let i = 0; i < 30; i++) buf = appendLogs(buf, [line(`a${i}`), line(`b${i}`)], 25);
    expect(buf.lines).toHaveLength(25);
    expect(buf.lines.at(-1).text).toBe('b29');
    expect(buf.lines[0].text).toBe('b17');
    expect(buf.trimmed).toBe(35);
    // One big batch is bounded too.
    const big = appendLogs(emptyBuffer(), Array.from({ length: MAX_LINES + 123 }, (_, i) => line(String(i))));
    expect(big.lines).toHaveLength(MAX_LINES);
    expect(big.lines[0].text).toBe('123');
    expect(big.trimmed).toBe(123);
  });

  it('puts a dropped marker where lines were left out, merging markers in a row', () => {
    let buf = appendLogs(emptyBuffer(), [line('x'), { type: 'dropped', count: 100 }, { type: 'dropped', count: 50 }]);
    buf = appendLogs(buf, [{ type: 'dropped', count: 7 }, line('y'), { type: 'dropped', count: 1 }]);
    expect(buf.lines.map((l) => (l.kind === 'dropped' ? `-${l.count}` : l.text))).toEqual(['x', '-157', 'y', '-1']);
    // The merged marker keeps its id (a keyed list does not re-create it).
    expect(buf.lines[1].id).toBe(2);
  });

  it('ignores end items and keeps notes', () => {
    const buf = appendLogs(emptyBuffer(), [{ type: 'end', reason: 'r' }, { type: 'note', text: 'Reconnected' }]);
    expect(buf.lines).toEqual([{ id: 1, kind: 'note', text: 'Reconnected' }]);
  });
});

describe('labels and URLs', () => {
  it('says how many lines were dropped, in words', () => {
    expect(droppedLabel(1)).toBe('1 line dropped (over the rate cap of 1,000 a second)');
    expect(droppedLabel(1200)).toMatch(/^1,200 lines dropped/);
  });
  it('builds the follow URL with the tail', () => {
    expect(logsUrl('a/b', 100)).toBe('/v1/allocations/a%2Fb/logs?follow=true&tail=100');
    expect(logsUrl('x', 0)).toBe('/v1/allocations/x/logs?follow=true&tail=0');
    expect(logsUrl('x', undefined)).toBe('/v1/allocations/x/logs?follow=true');
  });
});

/** A fetch answer whose body yields `chunks` then stays open (or ends, with `close`). */
function sseResponse(chunks, { close = false } = {}) {
  const enc = new TextEncoder();
  let i = 0;
  return {
    ok: true,
    status: 200,
    body: {
      getReader: () => ({
        read: () =>
          i < chunks.length
            ? Promise.resolve({ value: enc.encode(chunks[i++]), done: false })
            : close
              ? Promise.resolve({ done: true })
              : new Promise(() => {}),
      }),
    },
  };
}

function errorResponse(status, code, message) {
  return { ok: false, status, body: null, text: async () => JSON.stringify({ error: { code, message } }) };
}

const flush = () => new Promise((r) => setTimeout(r, 0));

describe('createLogFollower', () => {
  it('sends the key in the header, hands over items per chunk, and ends on `end`', async () => {
    const fetchImpl = vi.fn(async () => sseResponse([WIRE.slice(0, 60), WIRE.slice(60)]));
    const batches = [];
    const states = [];
    createLogFollower({
      url: '/v1/allocations/a/logs?follow=true',
      getKey: () => 'wpk_k',
      fetchImpl,
      onItems: (b) => batches.push(b),
      onState: (s) => states.push(s.state),
    });
    await flush();
    await flush();
    expect(fetchImpl).toHaveBeenCalledTimes(1);
    expect(fetchImpl.mock.calls[0][1].headers.authorization).toBe('Bearer wpk_k');
    expect(batches.flat().map((i) => i.type)).toEqual(['log', 'log', 'dropped']);
    expect(batches.length).toBe(2);
    expect(states).toEqual([LogState.connecting, LogState.open, LogState.ended]);
  });

  it('a 403 is said once, with the server’s reason, and never retried', async () => {
    vi.useFakeTimers();
    try {
      const fetchImpl = vi.fn(async () => errorResponse(403, 'forbidden', 'a viewer key may not read logs'));
      const states = [];
      createLogFollower({ url: '/x', getKey: () => 'k', fetchImpl, onItems: () => {}, onState: (s) => states.push(s) });
      await vi.advanceTimersByTimeAsync(120000);
      expect(fetchImpl).toHaveBeenCalledTimes(1);
      expect(states.at(-1)).toEqual({ state: LogState.forbidden, message: 'a viewer key may not read logs' });
    } finally {
      vi.useRealTimers();
    }
  });

  it('410 (ended) and 404 are "gone"; a cut connection is "lost"', async () => {
    for (const [resp, want] of [
      [errorResponse(410, 'ended', 'allocation x has ended'), LogState.gone],
      [errorResponse(404, 'not_found', 'no allocation x'), LogState.gone],
      [sseResponse(['event: log\ndata: {"stream":"stdout","line":"a"}\n\n'], { close: true }), LogState.lost],
    ]) {
      const states = [];
      createLogFollower({ url: '/x', fetchImpl: async () => resp, onItems: () => {}, onState: (s) => states.push(s.state) });
      await flush();
      await flush();
      expect(states.at(-1)).toBe(want);
    }
    const states = [];
    createLogFollower({
      url: '/x',
      fetchImpl: async () => {
        throw new TypeError('Failed to fetch');
      },
      onItems: () => {},
      onState: (s) => states.push(s),
    });
    await flush();
    expect(states.at(-1)).toEqual({ state: LogState.lost, message: 'Failed to fetch' });
  });

  it('stop() aborts the request and nothing is handed over after it', async () => {
    let signal;
    let push;
    const fetchImpl = async (_u, init) => {
      signal = init.signal;
      return {
        ok: true,
        status: 200,
        body: { getReader: () => ({ read: () => new Promise((r) => (push = r)) }) },
      };
    };
    const items = [];
    const states = [];
    const f = createLogFollower({ url: '/x', fetchImpl, onItems: (b) => items.push(...b), onState: (s) => states.push(s.state) });
    await flush();
    f.stop();
    f.stop();
    expect(signal.aborted).toBe(true);
    push({ value: new TextEncoder().encode('event: log\ndata: {"stream":"stdout","line":"late"}\n\n'), done: false });
    await flush();
    expect(items).toEqual([]);
    expect(states).toEqual([LogState.connecting, LogState.open, LogState.stopped]);
  });

  it('a silent connection (no keep-alive) is "lost" after idleMs', async () => {
    vi.useFakeTimers();
    try {
      const states = [];
      createLogFollower({ url: '/x', fetchImpl: async () => sseResponse([]), idleMs: 1000, onItems: () => {}, onState: (s) => states.push(s.state) });
      await vi.advanceTimersByTimeAsync(999);
      expect(states.at(-1)).toBe(LogState.open);
      await vi.advanceTimersByTimeAsync(2);
      expect(states.at(-1)).toBe(LogState.lost);
    } finally {
      vi.useRealTimers();
    }
  });
});
