import { describe, it, expect } from 'vitest';
import { parseHash, toHash } from '../../src/lib/router.js';
import { pushStatusSample, poolLine, pushPoint, niceTicks, chartWindow } from '../../src/lib/series.js';
import { keyId, keyProblem, roleOf, permissions, deniedReason, detectAuth, loadKey, saveKey, STORAGE_KEY } from '../../src/lib/auth.js';
import { ApiError, Kind } from '../../src/lib/api.js';

const TOKEN = `wpk_a1b2c3d4e5f6_${'0123456789abcdef'.repeat(4)}`;

describe('router', () => {
  it('parses views, ids and filters from the hash', () => {
    expect(parseHash('')).toEqual({ view: 'overview', id: null, params: {} });
    expect(parseHash('#/containers?pool=demo&state=warm')).toEqual({ view: 'containers', id: null, params: { pool: 'demo', state: 'warm' } });
    expect(parseHash('#/containers/01a2-x')).toEqual({ view: 'containers', id: '01a2-x', params: {} });
    expect(parseHash('#/nowhere/x')).toEqual({ view: 'overview', id: null, params: {} });
    expect(parseHash('#events?kind=a%2Cb').params.kind).toBe('a,b');
  });
  it('round-trips', () => {
    const h = toHash('events', { params: { kind: 'a,b', pool: '', session: 's 1' } });
    expect(h).toBe('#/events?kind=a%2Cb&session=s+1');
    expect(parseHash(h)).toEqual({ view: 'events', id: null, params: { kind: 'a,b', session: 's 1' } });
    expect(parseHash(toHash('containers', { id: 'a/b' })).id).toBe('a/b');
  });
});

describe('series', () => {
  const status = (warm, allocated) => ({ pools: [{ name: 'demo', counts: { warm, allocated, creating: 0 }, wanted: 3 }] });
  it('samples pools over time and forgets old samples', () => {
    let s = [];
    s = pushStatusSample(s, 1000, status(3, 0), { maxAgeMs: 5000 });
    s = pushStatusSample(s, 4000, status(2, 1), { maxAgeMs: 5000 });
    s = pushStatusSample(s, 7000, { pools: [] }, { maxAgeMs: 5000 });
    expect(s.map((x) => x.t)).toEqual([4000, 7000]);
    expect(poolLine(s, 'demo', 'allocated')).toEqual([
      [4000, 1],
      [7000, null],
    ]);
  });
  it('caps the number of points', () => {
    let s = [];
    for (let t = 0; t < 10; t++) s = pushStatusSample(s, t, status(1, 1), { maxPoints: 4 });
    expect(s.map((x) => x.t)).toEqual([6, 7, 8, 9]);
  });
  it('appends points and drops old ones', () => {
    expect(pushPoint([[0, 1], [50, 2]], 100, 3, 60)).toEqual([[50, 2], [100, 3]]);
  });
  it('picks nice ticks', () => {
    expect(niceTicks(3, { integer: true })).toEqual({ max: 3, ticks: [0, 1, 2, 3] });
    expect(niceTicks(1, { integer: true })).toEqual({ max: 1, ticks: [0, 1] });
    expect(niceTicks(0, { integer: true })).toEqual({ max: 1, ticks: [0, 1] });
    expect(niceTicks(7, { integer: true })).toEqual({ max: 8, ticks: [0, 2, 4, 6, 8] });
    expect(niceTicks(0.8)).toEqual({ max: 0.8, ticks: [0, 0.2, 0.4, 0.6, 0.8] });
    expect(niceTicks(37)).toEqual({ max: 40, ticks: [0, 10, 20, 30, 40] });
  });
  it('shows at least 2 and at most 10 minutes', () => {
    expect(chartWindow([{ points: [[990_000, 1]] }], 1_000_000)).toBe(120_000);
    expect(chartWindow([{ points: [[500_000, 1]] }], 1_000_000)).toBe(500_000);
    expect(chartWindow([{ points: [[0, 1]] }], 1_000_000)).toBe(600_000);
    expect(chartWindow([], 1_000_000)).toBe(120_000);
  });
});

describe('auth', () => {
  it('finds the id in a token and checks its shape', () => {
    expect(keyId(TOKEN)).toBe('a1b2c3d4e5f6');
    expect(keyId(` ${TOKEN} `)).toBe('a1b2c3d4e5f6');
    expect(keyId('wpk_a1b2c3d4e5f6_short')).toBeNull();
    expect(keyProblem('')).toMatch(/Enter/);
    expect(keyProblem('abc')).toMatch(/starts with wpk_/);
    expect(keyProblem('wpk_123')).toMatch(/whole key/);
    expect(keyProblem(TOKEN)).toBeNull();
  });
  it('looks its role up in the key list, ignoring revoked keys', () => {
    const keys = [
      { id: 'a1b2c3d4e5f6', role: 'viewer', revoked_at: null },
      { id: 'ffffffffffff', role: 'admin', revoked_at: null },
    ];
    expect(roleOf(keys, TOKEN)).toBe('viewer');
    expect(roleOf([{ ...keys[0], revoked_at: '2026-01-01T00:00:00Z' }], TOKEN)).toBeNull();
    expect(roleOf(keys, 'nope')).toBeNull();
    expect(roleOf(null, TOKEN)).toBeNull();
  });
  it('maps roles to what the UI enables', () => {
    expect(permissions('off', null)).toMatchObject({ allocate: true, nodes: true });
    expect(permissions('on', 'admin')).toMatchObject({ allocate: true, nodes: true });
    expect(permissions('on', 'user')).toMatchObject({ allocate: true, nodes: false });
    expect(permissions('on', 'viewer')).toMatchObject({ allocate: false, nodes: false });
    expect(permissions('on', null)).toMatchObject({ allocate: true, nodes: true });
    expect(permissions('on', null, { allocateDenied: true })).toMatchObject({ allocate: false, nodes: true });
    expect(permissions('on', null, { nodesDenied: true })).toMatchObject({ allocate: true, nodes: false });
    expect(deniedReason('viewer', 'allocate')).toBe(
      'Signed in with a viewer key: it can read everything but not allocate, renew or release; that needs a user or admin key.',
    );
    expect(deniedReason(null, 'nodes')).toBe('Signed in with this key: it cannot cordon, uncordon or drain nodes; that needs an admin key.');
  });
  it('detects whether the server wants a key', async () => {
    const off = { get: async (_p, o) => (expect(o.key).toBeNull(), {}) };
    expect(await detectAuth(off)).toEqual({ mode: 'off' });
    const on = {
      get: async () => {
        throw new ApiError({ kind: Kind.unauthorized, status: 401, message: 'needs a key' });
      },
    };
    expect(await detectAuth(on)).toEqual({ mode: 'on' });
    const down = {
      get: async () => {
        throw new ApiError({ kind: Kind.network, message: 'connection failed' });
      },
    };
    await expect(detectAuth(down)).rejects.toMatchObject({ kind: Kind.network });
  });
  it('keeps the key in session storage', () => {
    const m = new Map();
    const storage = { getItem: (k) => m.get(k) ?? null, setItem: (k, v) => m.set(k, v), removeItem: (k) => m.delete(k) };
    expect(loadKey(storage)).toBeNull();
    saveKey(TOKEN, storage);
    expect(m.get(STORAGE_KEY)).toBe(TOKEN);
    expect(loadKey(storage)).toBe(TOKEN);
    saveKey(null, storage);
    expect(loadKey(storage)).toBeNull();
    const broken = { getItem: () => { throw new Error('denied'); }, setItem: () => { throw new Error('denied'); } };
    expect(loadKey(broken)).toBeNull();
    expect(() => saveKey(TOKEN, broken)).not.toThrow();
  });
});
