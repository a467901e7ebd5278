import { describe, it, expect } from 'vitest';
import {
  applyToContainer,
  applyEvent,
  adjustStatus,
  affectedResources,
  mergeEvents,
  indexById,
  EVENT_KINDS,
} from '../../src/lib/reducers.js';

const C = 'c0000000-0000-7000-8000-000000000001';
const counts = (o = {}) => ({ total: 0, creating: 0, warm: 0, allocated: 0, releasing: 0, unhealthy: 0, ...o });
const ev = (seq, kind, extra = {}) => ({ seq, log_index: seq, at: `2026-11-24T10:00:${String(seq).padStart(2, '0')}.000Z`, kind, ...extra });

function fixture() {
  const warm = { id: C, pool: 'demo', node: 'n1', state: 'warm', health: { status: 'healthy' }, ipv6: 'fd36:1::5', port: 8080, session: null, allocation: null };
  return {
    containers: { [C]: warm },
    status: {
      totals: counts({ total: 1, warm: 1 }),
      pools: [{ name: 'demo', counts: counts({ total: 1, warm: 1 }), wanted: 1 }, { name: 'other', counts: counts(), wanted: 0 }],
      nodes: [{ node: 'n1', status: 'ready', counts: counts({ total: 1, warm: 1 }) }],
      applied_index: 9,
    },
    nodes: [{ id: 'n1', status: 'ready', reason: null }],
    lastSeq: 10,
  };
}

describe('applyToContainer', () => {
  it('walks the lifecycle creating → warm → allocated → releasing → terminated', () => {
    let c = applyToContainer(undefined, ev(1, 'container_created', { container: C, pool: 'demo', node: 'n1' }));
    expect(c).toMatchObject({ id: C, state: 'creating', pool: 'demo', node: 'n1', partial: true });
    c = applyToContainer(c, ev(2, 'container_warm', { container: C }));
    expect(c).toMatchObject({ state: 'warm', health: { status: 'healthy' } });
    c = applyToContainer(c, ev(3, 'container_allocated', { container: C, session: 's1', allocation: 'a1' }));
    expect(c).toMatchObject({ state: 'allocated', session: 's1', allocation: 'a1', allocated_at: ev(3).at });
    c = applyToContainer(c, ev(4, 'container_released', { container: C, reason: 'client' }));
    expect(c).toMatchObject({ state: 'releasing', reason: 'client', released_at: ev(4).at });
    c = applyToContainer(c, ev(5, 'container_terminated', { container: C, reason: 'destroyed' }));
    expect(c).toMatchObject({ state: 'terminated', ended_at: ev(5).at });
  });

  it('moves a warm container to the paused tier and from there to a session', () => {
    let c = applyToContainer({ id: C, state: 'warm', health: { status: 'healthy' } }, ev(1, 'container_paused', { container: C }));
    expect(c).toMatchObject({ state: 'paused', health: { status: 'healthy' } });
    c = applyToContainer(c, ev(2, 'container_allocated', { container: C, session: 's1', allocation: 'a1' }));
    expect(c).toMatchObject({ state: 'allocated', allocation: 'a1' });
    const status = { totals: { total: 1, warm: 1, paused: 0 }, pools: [], nodes: [] };
    const next = adjustStatus(status, { id: C, state: 'warm' }, { id: C, state: 'paused' });
    expect(next.totals).toMatchObject({ total: 1, warm: 0, paused: 1 });
  });

  it('takes health from the reason of a health change', () => {
    const c = { id: C, state: 'allocated', health: { status: 'healthy' } };
    expect(applyToContainer(c, ev(1, 'container_health_changed', { container: C, reason: 'unhealthy' })).health).toEqual({ status: 'unhealthy' });
    expect(applyToContainer(c, ev(1, 'container_health_changed', { container: C, reason: 'odd' }))).toBeUndefined();
  });

  it('ignores events for containers it does not know (except their creation) and unrelated kinds', () => {
    expect(applyToContainer(undefined, ev(1, 'container_warm', { container: C }))).toBeUndefined();
    expect(applyToContainer({ id: C }, ev(1, 'container_created', { container: C }))).toBeUndefined();
    expect(applyToContainer({ id: C }, ev(1, 'pool_scaled'))).toBeUndefined();
  });

  it('marks a failed container', () => {
    expect(applyToContainer({ id: C, state: 'creating' }, ev(1, 'container_failed', { container: C, reason: 'image' }))).toMatchObject({
      state: 'failed',
      reason: 'image',
    });
  });
});

describe('applyEvent', () => {
  it('moves counts between states in totals, pool and node', () => {
    const d = applyEvent(fixture(), ev(11, 'container_allocated', { container: C, session: 's', allocation: 'a' }));
    expect(d.containers[C].state).toBe('allocated');
    expect(d.status.totals).toEqual(counts({ total: 1, allocated: 1 }));
    expect(d.status.pools[0].counts).toEqual(counts({ total: 1, allocated: 1 }));
    expect(d.status.pools[1].counts).toEqual(counts());
    expect(d.status.nodes[0].counts).toEqual(counts({ total: 1, allocated: 1 }));
    expect(d.lastSeq).toBe(11);
  });

  it('drops a terminated container from the live totals', () => {
    let d = applyEvent(fixture(), ev(11, 'container_released', { container: C }));
    d = applyEvent(d, ev(12, 'container_terminated', { container: C }));
    expect(d.status.totals).toEqual(counts());
    expect(d.containers[C].state).toBe('terminated');
  });

  it('counts unhealthy live containers and uncounts them when they end', () => {
    let d = applyEvent(fixture(), ev(11, 'container_health_changed', { container: C, reason: 'unhealthy' }));
    expect(d.status.totals).toEqual(counts({ total: 1, warm: 1, unhealthy: 1 }));
    d = applyEvent(d, ev(12, 'container_terminated', { container: C }));
    expect(d.status.totals).toEqual(counts());
  });

  it('adds a created container to the map and the counts', () => {
    const N = 'c0000000-0000-7000-8000-000000000002';
    const d = applyEvent(fixture(), ev(11, 'container_created', { container: N, pool: 'demo', node: 'n1' }));
    expect(d.containers[N].state).toBe('creating');
    expect(d.status.pools[0].counts).toEqual(counts({ total: 2, warm: 1, creating: 1 }));
  });

  it('is idempotent: an event at or below lastSeq changes nothing', () => {
    const f = fixture();
    expect(applyEvent(f, ev(10, 'container_allocated', { container: C }))).toBe(f);
    const once = applyEvent(f, ev(11, 'container_allocated', { container: C }));
    expect(applyEvent(once, ev(11, 'container_allocated', { container: C }))).toBe(once);
  });

  it('applies node status changes to the node list and the status', () => {
    let d = applyEvent(fixture(), ev(11, 'node_cordoned', { node: 'n1' }));
    expect(d.nodes[0].status).toBe('cordoned');
    expect(d.status.nodes[0].status).toBe('cordoned');
    d = applyEvent(d, ev(12, 'node_down', { node: 'n1', reason: 'heartbeat' }));
    expect(d.nodes[0]).toMatchObject({ status: 'down', reason: 'heartbeat' });
    d = applyEvent(d, ev(13, 'node_joined', { node: 'n1' }));
    expect(d.nodes[0].status).toBe('ready');
  });

  it('works before the status has loaded', () => {
    const f = { ...fixture(), status: null, lastSeq: null };
    const d = applyEvent(f, ev(1, 'container_allocated', { container: C }));
    expect(d.status).toBeNull();
    expect(d.containers[C].state).toBe('allocated');
  });

  it('passes unknown kinds through without touching the data', () => {
    const f = fixture();
    const d = applyEvent(f, ev(11, 'something_new', { container: C }));
    expect(d.containers).toBe(f.containers);
    expect(d.lastSeq).toBe(11);
  });
});

describe('adjustStatus', () => {
  it('never goes below zero when the view was already behind', () => {
    const s = { totals: counts(), pools: [{ name: 'demo', counts: counts() }], nodes: [] };
    const out = adjustStatus(s, { pool: 'demo', node: 'x', state: 'warm' }, null);
    expect(out.totals).toEqual(counts());
  });
});

describe('affectedResources', () => {
  it('names what each kind of event makes stale', () => {
    expect([...affectedResources({ kind: 'container_allocated' })].sort()).toEqual(['allocations', 'containers', 'nodes', 'status']);
    // A pending allocation appearing or cancelled refreshes the allocations list.
    expect(affectedResources({ kind: 'allocation_pending' }).has('allocations')).toBe(true);
    expect(affectedResources({ kind: 'allocation_cancelled' }).has('allocations')).toBe(true);
    expect([...affectedResources({ kind: 'allocation_renewed' })]).toContain('allocations');
    expect([...affectedResources({ kind: 'pool_scaled' })].sort()).toEqual(['pools', 'status']);
    expect([...affectedResources({ kind: 'node_drained' })].sort()).toEqual(['nodes', 'status']);
    expect([...affectedResources({ kind: 'key_revoked' })]).toEqual(['keys']);
    expect([...affectedResources({ kind: 'brand_new' })]).toEqual(['status']);
  });

  it('knows every kind the server sends', () => {
    for (const k of EVENT_KINDS) expect(affectedResources({ kind: k }).size).toBeGreaterThan(0);
  });
});

describe('mergeEvents', () => {
  it('keeps newest first, drops duplicates and caps the length', () => {
    const list = [ev(5, 'a'), ev(3, 'a')];
    const out = mergeEvents(list, [ev(4, 'b'), ev(6, 'c'), ev(5, 'a'), ev(6, 'c')], 3);
    expect(out.map((e) => e.seq)).toEqual([6, 5, 4]);
    expect(mergeEvents(list, [ev(5, 'a')])).toBe(list);
  });
});

describe('indexById', () => {
  it('maps a list by id', () => {
    expect(indexById([{ id: 'a', x: 1 }, { id: 'b' }])).toEqual({ a: { id: 'a', x: 1 }, b: { id: 'b' } });
  });
});
