import { describe, it, expect, vi } from 'vitest';
import { errorFromResponse, describeError, createClient, queryString, ApiError, Kind } from '../../src/lib/api.js';

const body = (code, message) => JSON.stringify({ error: { code, message } });

describe('errorFromResponse', () => {
  it('maps status and code to a kind and keeps the server’s message', () => {
    const cases = [
      [401, 'unauthorized', Kind.unauthorized],
      [403, 'forbidden', Kind.forbidden],
      [404, 'not_found', Kind.notFound],
      [409, 'conflict', Kind.conflict],
      [400, 'bad_request', Kind.badRequest],
      [413, 'payload_too_large', Kind.badRequest],
      [503, 'no_capacity', Kind.noCapacity],
      [503, 'no_quorum', Kind.noQuorum],
      [500, 'internal', Kind.server],
      [502, '', Kind.network],
      [418, 'teapot', Kind.http],
    ];
    for (const [status, code, kind] of cases) {
      const e = errorFromResponse(status, body(code, `msg ${status}`));
      expect(e, `${status} ${code}`).toBeInstanceOf(ApiError);
      expect(e.kind, `${status} ${code}`).toBe(kind);
      expect(e.status).toBe(status);
      expect(e.message).toBe(`msg ${status}`);
    }
  });
  it('reads Retry-After', () => {
    expect(errorFromResponse(503, body('no_capacity', 'x'), '1').retryAfter).toBe(1);
    expect(errorFromResponse(503, body('no_capacity', 'x'), 'soon').retryAfter).toBeUndefined();
  });
  it('copes with bodies that are not ours', () => {
    const e = errorFromResponse(502, '<html>\n  Bad   gateway </html>');
    expect(e.kind).toBe(Kind.network);
    expect(e.message).toBe('<html> Bad gateway </html>');
    expect(errorFromResponse(500, '').message).toBe('HTTP 500');
    expect(errorFromResponse(404, '{"error":null}').message).toBe('HTTP 404');
  });
});

describe('describeError', () => {
  it('writes one readable sentence per kind', () => {
    const noCap = errorFromResponse(503, body('no_capacity', 'no warm container of pool "tiny" became free within 2000 ms'), '1');
    expect(describeError(noCap, 'allocate from pool "tiny"')).toBe(
      'No capacity to allocate from pool "tiny": no warm container of pool "tiny" became free within 2000 ms (retry after 1 s).',
    );
    expect(describeError(errorFromResponse(404, body('not_found', 'no pool named "nope"')), 'allocate from pool "nope"')).toBe(
      'Could not allocate from pool "nope": no pool named "nope".',
    );
    expect(describeError(errorFromResponse(403, body('forbidden', 'a viewer key may not POST /v1/allocations')), 'allocate')).toBe(
      'Not allowed to allocate: a viewer key may not POST /v1/allocations.',
    );
    expect(describeError(errorFromResponse(401, body('unauthorized', 'unknown key')))).toMatch(/not accepted \(unknown key\)\. Sign in again/);
    expect(describeError(new ApiError({ kind: Kind.network, message: 'connection failed' }), 'cordon node n1')).toMatch(
      /^Could not cordon node n1: the control plane did not answer/,
    );
    expect(describeError(errorFromResponse(503, body('no_quorum', 'no leader')), 'x')).toMatch(/no leader right now/);
    expect(describeError(new ApiError({ kind: Kind.timeout, message: 't' }), 'x')).toMatch(/too long/);
    expect(describeError(new Error('boom'), 'x')).toBe('Could not x: boom');
  });
});

describe('queryString', () => {
  it('skips empty values and escapes the rest', () => {
    expect(queryString({ a: 1, b: '', c: null, d: undefined, kind: 'x,y' })).toBe('?a=1&kind=x%2Cy');
    expect(queryString({})).toBe('');
  });
});

describe('createClient', () => {
  const ok = (json, headers = {}) => new Response(JSON.stringify(json), { status: 200, headers });

  it('sends the key as a bearer token, JSON bodies, and reports headers', async () => {
    const fetchImpl = vi.fn(async () => ok({ x: 1 }, { 'warmpool-leader': '2' }));
    const seen = [];
    const c = createClient({ getKey: () => 'wpk_k', fetchImpl, onResponse: (r) => seen.push(r.headers.get('warmpool-leader')) });
    expect(await c.post('/v1/allocations', { pool: 'demo' }, { query: { a: 1 } })).toEqual({ x: 1 });
    const [url, init] = fetchImpl.mock.calls[0];
    expect(url).toBe('/v1/allocations?a=1');
    expect(init.method).toBe('POST');
    expect(init.headers.authorization).toBe('Bearer wpk_k');
    expect(init.headers['content-type']).toBe('application/json');
    expect(init.body).toBe('{"pool":"demo"}');
    expect(seen).toEqual(['2']);
  });

  it('sends no key when there is none or when told not to', async () => {
    const fetchImpl = vi.fn(async () => ok({}));
    const c = createClient({ getKey: () => 'wpk_k', fetchImpl });
    await c.get('/v1/cluster', { key: null });
    expect(fetchImpl.mock.calls[0][1].headers.authorization).toBeUndefined();
    await createClient({ getKey: () => null, fetchImpl }).get('/v1/status');
    expect(fetchImpl.mock.calls[1][1].headers.authorization).toBeUndefined();
  });

  it('throws ApiError with the mapped kind and calls onError', async () => {
    const onError = vi.fn();
    const fetchImpl = async () => new Response(body('not_found', 'no pool named "x"'), { status: 404 });
    const c = createClient({ fetchImpl, onError });
    await expect(c.post('/v1/allocations', { pool: 'x' })).rejects.toMatchObject({ kind: Kind.notFound, message: 'no pool named "x"' });
    expect(onError).toHaveBeenCalledOnce();
  });

  it('turns a refused connection into a network error', async () => {
    const c = createClient({ fetchImpl: async () => Promise.reject(new TypeError('Failed to fetch')) });
    await expect(c.get('/v1/status')).rejects.toMatchObject({ kind: Kind.network });
  });

  it('times out', async () => {
    vi.useFakeTimers();
    const fetchImpl = (url, init) =>
      new Promise((_, reject) => init.signal.addEventListener('abort', () => reject(new DOMException('aborted', 'AbortError'))));
    const c = createClient({ fetchImpl, timeoutMs: 1000 });
    const p = c.get('/v1/status');
    const check = expect(p).rejects.toMatchObject({ kind: Kind.timeout });
    await vi.advanceTimersByTimeAsync(1000);
    await check;
    vi.useRealTimers();
  });

  it('returns text when asked (the metrics), and null for an empty body', async () => {
    const c = createClient({ fetchImpl: async () => new Response('a 1\n', { status: 200 }) });
    expect(await c.get('/metrics', { text: true })).toBe('a 1\n');
    const d = createClient({ fetchImpl: async () => new Response('', { status: 200 }) });
    expect(await d.get('/x')).toBeNull();
  });
});
