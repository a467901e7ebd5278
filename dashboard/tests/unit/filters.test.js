import { describe, it, expect } from 'vitest';
import { filterContainers, sortContainers, eventMatches, eventQuery, isUuid, distinct } from '../../src/lib/filters.js';

const list = [
  { id: '01a2-aaaa', pool: 'demo', node: 'n1', state: 'warm', health: { status: 'healthy' }, session: null, ipv6: 'fd36:1::2', created_at: '2026-01-01T00:00:01Z' },
  { id: '01a2-bbbb', pool: 'demo', node: 'n2', state: 'allocated', health: { status: 'unhealthy' }, session: 'sess-42', ipv6: 'fd36:2::3', created_at: '2026-01-01T00:00:03Z' },
  { id: '01a2-cccc', pool: 'ml', node: 'n1', state: 'terminated', health: { status: 'unknown' }, session: null, ipv6: null, created_at: '2026-01-01T00:00:02Z' },
];

describe('filterContainers', () => {
  it('filters by pool, node, state, session and free text', () => {
    const ids = (f) => filterContainers(list, f).map((c) => c.id);
    expect(ids({})).toEqual(['01a2-aaaa', '01a2-bbbb', '01a2-cccc']);
    expect(ids({ pool: 'demo' })).toEqual(['01a2-aaaa', '01a2-bbbb']);
    expect(ids({ node: 'n1' })).toEqual(['01a2-aaaa', '01a2-cccc']);
    expect(ids({ state: 'live' })).toEqual(['01a2-aaaa', '01a2-bbbb']);
    expect(ids({ state: 'allocated' })).toEqual(['01a2-bbbb']);
    expect(ids({ state: 'unhealthy' })).toEqual(['01a2-bbbb']);
    expect(ids({ session: 'sess' })).toEqual(['01a2-bbbb']);
    expect(ids({ text: 'FD36:2' })).toEqual(['01a2-bbbb']);
    expect(ids({ text: 'cccc' })).toEqual(['01a2-cccc']);
    expect(ids({ pool: 'demo', node: 'n1', state: 'warm' })).toEqual(['01a2-aaaa']);
    expect(ids({ pool: 'nope' })).toEqual([]);
  });
});

describe('sortContainers', () => {
  it('sorts by a key, newest first by default, without changing the input', () => {
    const copy = [...list];
    expect(sortContainers(list).map((c) => c.id)).toEqual(['01a2-bbbb', '01a2-cccc', '01a2-aaaa']);
    expect(sortContainers(list, 'created_at', true).map((c) => c.id)).toEqual(['01a2-aaaa', '01a2-cccc', '01a2-bbbb']);
    expect(list).toEqual(copy);
  });
});

describe('eventMatches', () => {
  const e = { seq: 1, kind: 'container_released', pool: 'demo', container: '01a20ce4-f1de-72ab-8046-7e09f093e463', session: 's1', node: 'n1' };
  it('matches each filter field', () => {
    expect(eventMatches(e, {})).toBe(true);
    expect(eventMatches(e, { kinds: ['container_released', 'container_warm'] })).toBe(true);
    expect(eventMatches(e, { kinds: ['container_warm'] })).toBe(false);
    expect(eventMatches(e, { pool: 'demo' })).toBe(true);
    expect(eventMatches(e, { pool: 'ml' })).toBe(false);
    expect(eventMatches(e, { container: '7e09f093e463' })).toBe(true);
    expect(eventMatches(e, { container: '…7e09f093e463' })).toBe(true);
    expect(eventMatches(e, { container: 'zzz' })).toBe(false);
    expect(eventMatches(e, { session: 's1' })).toBe(true);
    expect(eventMatches(e, { session: 's' })).toBe(false);
    expect(eventMatches(e, { node: 'n2' })).toBe(false);
    expect(eventMatches({ seq: 2, kind: 'pool_scaled' }, { container: 'x' })).toBe(false);
  });
});

describe('eventQuery', () => {
  it('builds the server query, sending a container only when it is a whole id', () => {
    expect(eventQuery({}, { before: 99 })).toEqual({ limit: 100, before: 99 });
    expect(eventQuery({ kinds: ['a', 'b'], pool: 'demo', session: ' s ', node: 'n' }, { limit: 10 })).toEqual({
      limit: 10,
      kind: 'a,b',
      pool: 'demo',
      session: 's',
      node: 'n',
    });
    expect(eventQuery({ container: '01a20ce4-f1de-72ab-8046-7e09f093e463' })).toMatchObject({ container: '01a20ce4-f1de-72ab-8046-7e09f093e463' });
    expect(eventQuery({ container: '7e09f0' })).not.toHaveProperty('container');
  });
  it('knows a UUID', () => {
    expect(isUuid('01a20ce4-f1de-72ab-8046-7e09f093e463')).toBe(true);
    expect(isUuid('01a20ce4')).toBe(false);
  });
});

describe('distinct', () => {
  it('lists sorted values without empties', () => {
    expect(distinct(list, 'node')).toEqual(['n1', 'n2']);
    expect(distinct(list, 'session')).toEqual(['sess-42']);
  });
});
