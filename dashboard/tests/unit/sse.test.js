import { describe, it, expect, vi, beforeEach, afterEach } from 'vitest';
import { SseParser, backoffDelay, parseEventMessage, createEventStream, StreamState } from '../../src/lib/sse.js';

describe('SseParser', () => {
  it('parses the server’s own framing: id, event, data, blank line', () => {
    const p = new SseParser();
    const msgs = p.feed('id: 11\nevent: container_warm\ndata: {"seq":11,"kind":"container_warm"}\n\n');
    expect(msgs).toEqual([{ event: 'container_warm', data: '{"seq":11,"kind":"container_warm"}', id: '11' }]);
    expect(p.lastEventId).toBe('11');
  });

  it('handles any chunking, even inside a CRLF', () => {
    const text = 'id: 1\r\nevent: a\r\ndata: x\r\n\r\nid: 2\r\ndata: y\r\n\r\n';
    for (let size = 1; size <= text.length; size++) {
      const p = new SseParser();
      const out = [];
      for (let i = 0; i < text.length; i += size) out.push(...p.feed(text.slice(i, i + size)));
      expect(out, `chunk size ${size}`).toEqual([
        { event: 'a', data: 'x', id: '1' },
        { event: 'message', data: 'y', id: '2' },
      ]);
    }
  });

  it('accepts lone CR line endings', () => {
    const p = new SseParser();
    expect(p.feed('data: a\rdata: b\r\r')).toEqual([{ event: 'message', data: 'a\nb', id: '' }]);
  });

  it('ignores comments (the keep-alive) and unknown fields, keeps the id across messages', () => {
    const p = new SseParser();
    expect(p.feed(':keepalive\n\n')).toEqual([]);
    expect(p.feed('foo: bar\nid: 5\ndata: z\n\n')).toEqual([{ event: 'message', data: 'z', id: '5' }]);
    expect(p.feed('data: w\n\n')).toEqual([{ event: 'message', data: 'w', id: '5' }]);
  });

  it('joins multi-line data, strips one leading space only, and takes fields without a colon', () => {
    const p = new SseParser();
    expect(p.feed('data:  two spaces\ndata\ndata:x\n\n')).toEqual([{ event: 'message', data: ' two spaces\n\nx', id: '' }]);
  });

  it('ignores an id with NUL, reads retry digits only, and dispatches nothing without data', () => {
    const p = new SseParser();
    expect(p.feed('id: 1\0\nretry: 12x\nevent: e\n\n')).toEqual([]);
    expect(p.lastEventId).toBe('');
    expect(p.feed('retry: 3000\ndata: d\n\n')).toEqual([{ event: 'message', data: 'd', id: '', retry: 3000 }]);
  });
});

describe('backoffDelay', () => {
  it('doubles from the base up to the cap, with half of it random', () => {
    const lo = (a) => backoffDelay(a, { base: 500, max: 10000, random: () => 0 });
    const hi = (a) => backoffDelay(a, { base: 500, max: 10000, random: () => 1 });
    expect([0, 1, 2, 3, 4, 5, 6].map(hi)).toEqual([500, 1000, 2000, 4000, 8000, 10000, 10000]);
    expect([0, 1, 2, 5].map(lo)).toEqual([250, 500, 1000, 5000]);
    const mid = backoffDelay(3, { random: () => 0.5 });
    expect(mid).toBeGreaterThanOrEqual(2000);
    expect(mid).toBeLessThanOrEqual(4000);
  });

  it('treats a negative attempt as the first', () => {
    expect(backoffDelay(-3, { random: () => 1 })).toBe(500);
  });
});

describe('parseEventMessage', () => {
  it('returns the event, or null for anything that is not one', () => {
    expect(parseEventMessage({ data: '{"seq":3,"kind":"node_down"}' })).toEqual({ seq: 3, kind: 'node_down' });
    expect(parseEventMessage({ data: 'keepalive' })).toBeNull();
    expect(parseEventMessage({ data: '{"kind":"x"}' })).toBeNull();
    expect(parseEventMessage({ data: '{"seq":"1","kind":"x"}' })).toBeNull();
    expect(parseEventMessage({ data: 'null' })).toBeNull();
  });
});

// A fake server for the stream: each fetch gets the next scripted answer.
function fakeServer() {
  const calls = [];
  const answers = [];
  const fetchImpl = vi.fn((url, init) => {
    calls.push({ url, headers: { ...init.headers }, signal: init.signal });
    const next = answers.shift() ?? { status: 'refuse' };
    if (next.status === 'refuse') return Promise.reject(new TypeError('Failed to fetch'));
    if (next.status !== 200) return Promise.resolve(new Response('{}', { status: next.status }));
    let controller;
    const body = new ReadableStream({
      start(c) {
        controller = c;
      },
    });
    init.signal.addEventListener('abort', () => {
      try {
        controller.error(new DOMException('aborted', 'AbortError'));
      } catch {
        /* closed */
      }
    });
    next.stream = {
      send(text) {
        controller.enqueue(new TextEncoder().encode(text));
      },
      close() {
        controller.close();
      },
    };
    return Promise.resolve(new Response(body, { status: 200 }));
  });
  const frame = (seq, kind = 'container_warm') => `id: ${seq}\nevent: ${kind}\ndata: ${JSON.stringify({ seq, kind })}\n\n`;
  return { calls, answers, fetchImpl, frame };
}

describe('createEventStream', () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  function make(server, extra = {}) {
    const events = [];
    const states = [];
    const opens = [];
    const s = createEventStream({
      url: '/v1/events/stream',
      getKey: () => 'wpk_key',
      onEvent: (e) => events.push(e.seq),
      onState: (st) => states.push(st),
      onOpen: () => opens.push(Date.now()),
      fetchImpl: server.fetchImpl,
      backoff: { base: 500, max: 4000, random: () => 1 },
      ...extra,
    });
    return { s, events, states, opens };
  }

  it('sends the key and resumes with Last-Event-ID after a lost connection', async () => {
    const srv = fakeServer();
    const first = { status: 200 };
    srv.answers.push(first);
    const { s, events, states } = make(srv);
    s.start(10);
    await vi.advanceTimersByTimeAsync(0);
    expect(srv.calls[0].headers.authorization).toBe('Bearer wpk_key');
    expect(srv.calls[0].headers['last-event-id']).toBe('10');
    expect(states.at(-1).state).toBe(StreamState.open);
    first.stream.send(srv.frame(11) + srv.frame(12));
    await vi.advanceTimersByTimeAsync(0);
    expect(events).toEqual([11, 12]);

    // The member goes away: the stream closes, then two refused attempts, then it is back.
    const back = { status: 200 };
    srv.answers.push({ status: 'refuse' }, { status: 'refuse' }, back);
    first.stream.close();
    await vi.advanceTimersByTimeAsync(0);
    expect(states.at(-1)).toMatchObject({ state: StreamState.reconnecting, retryInMs: 500, attempt: 1 });
    await vi.advanceTimersByTimeAsync(500);
    expect(states.at(-1)).toMatchObject({ state: StreamState.reconnecting, retryInMs: 1000, attempt: 2 });
    await vi.advanceTimersByTimeAsync(1000);
    expect(states.at(-1)).toMatchObject({ state: StreamState.reconnecting, retryInMs: 2000, attempt: 3 });
    await vi.advanceTimersByTimeAsync(2000);
    expect(states.at(-1).state).toBe(StreamState.open);
    expect(srv.calls.at(-1).headers['last-event-id']).toBe('12');
    // A replayed event is not applied twice.
    back.stream.send(srv.frame(12) + srv.frame(13));
    await vi.advanceTimersByTimeAsync(0);
    expect(events).toEqual([11, 12, 13]);
    s.stop();
  });

  it('counts how long it has been disconnected, from the first failure', async () => {
    const srv = fakeServer();
    const { s, states } = make(srv);
    const t0 = Date.now();
    s.start();
    await vi.advanceTimersByTimeAsync(0);
    await vi.advanceTimersByTimeAsync(500);
    const last = states.at(-1);
    expect(last.state).toBe(StreamState.reconnecting);
    expect(last.since).toBe(t0);
    s.stop();
    expect(states.at(-1).state).toBe(StreamState.closed);
  });

  it('resets the backoff after a connection that stayed up', async () => {
    const srv = fakeServer();
    const a = { status: 200 };
    srv.answers.push(a);
    const { s, states } = make(srv, { stableMs: 5000 });
    s.start();
    await vi.advanceTimersByTimeAsync(0);
    // Fail quickly several times to raise the attempt count.
    a.stream.close();
    await vi.advanceTimersByTimeAsync(500 + 1000);
    const b = { status: 200 };
    srv.answers.push(b);
    await vi.advanceTimersByTimeAsync(2000);
    expect(states.at(-1).state).toBe(StreamState.open);
    await vi.advanceTimersByTimeAsync(6000); // stable
    b.stream.close();
    await vi.advanceTimersByTimeAsync(0);
    expect(states.at(-1)).toMatchObject({ state: StreamState.reconnecting, retryInMs: 500 });
    s.stop();
  });

  it('stops on 401 and says so, without retrying', async () => {
    const srv = fakeServer();
    srv.answers.push({ status: 401 });
    const { s, states } = make(srv);
    s.start();
    await vi.advanceTimersByTimeAsync(60000);
    expect(states.at(-1).state).toBe(StreamState.unauthorized);
    expect(srv.calls.length).toBe(1);
    s.stop();
  });

  it('retries other HTTP errors (a proxy’s 502, no quorum 503)', async () => {
    const srv = fakeServer();
    srv.answers.push({ status: 502 }, { status: 503 }, { status: 200 });
    const { s, states } = make(srv);
    s.start();
    await vi.advanceTimersByTimeAsync(0);
    expect(states.at(-1)).toMatchObject({ state: StreamState.reconnecting, error: 'HTTP 502' });
    await vi.advanceTimersByTimeAsync(500 + 1000);
    expect(states.at(-1).state).toBe(StreamState.open);
    s.stop();
  });

  it('treats a silent connection as dead (no keep-alive within idleMs)', async () => {
    const srv = fakeServer();
    const a = { status: 200 };
    srv.answers.push(a, { status: 200 });
    const { s, states } = make(srv, { idleMs: 40000 });
    s.start();
    await vi.advanceTimersByTimeAsync(0);
    await vi.advanceTimersByTimeAsync(30000);
    a.stream.send(':keepalive\n\n'); // bytes arrive: the watchdog is re-armed
    await vi.advanceTimersByTimeAsync(30000);
    expect(states.at(-1).state).toBe(StreamState.open);
    await vi.advanceTimersByTimeAsync(10001);
    expect(states.at(-1)).toMatchObject({ state: StreamState.reconnecting });
    expect(states.at(-1).error).toMatch(/keep-alive/);
    await vi.advanceTimersByTimeAsync(500);
    expect(srv.calls.length).toBe(2);
    s.stop();
  });

  it('retryNow skips the wait', async () => {
    const srv = fakeServer();
    srv.answers.push({ status: 'refuse' }, { status: 200 });
    const { s, states } = make(srv);
    s.start();
    await vi.advanceTimersByTimeAsync(0);
    expect(states.at(-1).state).toBe(StreamState.reconnecting);
    s.retryNow();
    await vi.advanceTimersByTimeAsync(0);
    expect(states.at(-1).state).toBe(StreamState.open);
    s.stop();
  });
});
