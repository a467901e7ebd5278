import { describe, it, expect } from 'vitest';
import {
  formatCountdown,
  countdownLevel,
  formatAgo,
  formatDuration,
  formatLatency,
  formatMiB,
  formatCpu,
  shortId,
  hostPort,
  kindLabel,
  ms,
  runningCost,
  formatCost,
  parseLocation,
} from '../../src/lib/format.js';

describe('formatCountdown', () => {
  it('shows m:ss under an hour, h:mm:ss under a day, days beyond', () => {
    expect(formatCountdown(599_000)).toBe('9:59');
    expect(formatCountdown(600_000)).toBe('10:00');
    expect(formatCountdown(59_000)).toBe('0:59');
    expect(formatCountdown(3_723_000)).toBe('1:02:03');
    expect(formatCountdown(2 * 86_400_000 + 3_723_000)).toBe('2d 01:02:03');
  });
  it('rounds up, so the last second shows until it is over', () => {
    expect(formatCountdown(1)).toBe('0:01');
    expect(formatCountdown(1_001)).toBe('0:02');
  });
  it('says expired at or below zero and a dash without an expiry', () => {
    expect(formatCountdown(0)).toBe('expired');
    expect(formatCountdown(-5_000)).toBe('expired');
    expect(formatCountdown(NaN)).toBe('—');
    expect(formatCountdown(null)).toBe('—');
  });
  it('grades urgency', () => {
    expect(countdownLevel(-1, 600_000)).toBe('expired');
    expect(countdownLevel(30_000, 600_000)).toBe('soon');
    expect(countdownLevel(50_000, 3_600_000)).toBe('soon');
    expect(countdownLevel(300_000, 3_600_000)).toBe('soon'); // under 10 % of an hour
    expect(countdownLevel(500_000, 600_000)).toBe('ok');
    expect(countdownLevel(NaN, 0)).toBe('ok');
  });
  it('counts down against an expiry time', () => {
    const expires = '2026-11-24T10:10:00.000Z';
    const now = ms('2026-11-24T10:00:00.500Z');
    expect(formatCountdown(ms(expires) - now)).toBe('9:60'.replace('9:60', '10:00'));
    expect(formatCountdown(ms(expires) - (now + 1_000))).toBe('9:59');
  });
});

describe('formatAgo', () => {
  const now = ms('2026-11-24T10:00:00Z');
  it('speaks in the largest sensible unit', () => {
    expect(formatAgo('2026-11-24T10:00:00Z', now)).toBe('just now');
    expect(formatAgo('2026-11-24T09:59:18Z', now)).toBe('42 s ago');
    expect(formatAgo('2026-11-24T09:57:00Z', now)).toBe('3 min ago');
    expect(formatAgo('2026-11-24T08:00:00Z', now)).toBe('2 h ago');
    expect(formatAgo('2026-11-19T10:00:00Z', now)).toBe('5 d ago');
    expect(formatAgo('2026-11-24T10:03:00Z', now)).toBe('in 3 min');
    expect(formatAgo(null, now)).toBe('—');
  });
});

describe('durations and sizes', () => {
  it('formats durations', () => {
    expect(formatDuration(850)).toBe('850 ms');
    expect(formatDuration(4_200)).toBe('4.2 s');
    expect(formatDuration(42_000)).toBe('42 s');
    expect(formatDuration(185_000)).toBe('3 min 5 s');
    expect(formatDuration(7_380_000)).toBe('2 h 3 min');
    expect(formatDuration(undefined)).toBe('—');
  });
  it('formats latencies', () => {
    expect(formatLatency(0.84)).toBe('0.84 ms');
    expect(formatLatency(12.34)).toBe('12.3 ms');
    expect(formatLatency(250.4)).toBe('250 ms');
    expect(formatLatency(1200)).toBe('1.20 s');
    expect(formatLatency(NaN)).toBe('—');
  });
  it('formats memory and cpu', () => {
    expect(formatMiB(512)).toBe('512 MiB');
    expect(formatMiB(24105)).toBe('23.5 GiB');
    expect(formatCpu(500)).toBe('0.5 cores');
    expect(formatCpu(1000)).toBe('1 core');
    expect(formatCpu(2000)).toBe('2 cores');
  });
});

describe('ids and labels', () => {
  it('shortens a UUID v7 to its random tail', () => {
    expect(shortId('01a20ce4-f1de-72ab-8046-7e09f093e463')).toBe('…f093e463');
    expect(shortId('n1')).toBe('n1');
    expect(shortId(null)).toBe('—');
  });
  it('writes an IPv6 address with its port', () => {
    expect(hostPort('fd36:1::5', 8080)).toBe('[fd36:1::5]:8080');
    expect(hostPort('fd36:1::5', null)).toBe('fd36:1::5');
    expect(hostPort(null, 8080)).toBe('—');
  });
  it('turns a kind into words', () => {
    expect(kindLabel('container_released')).toBe('container released');
  });
});

describe('runningCost', () => {
  const created = '2026-01-01T00:00:00.000Z';
  const t0 = Date.parse(created);
  it('ticks with the clock at the pool price', () => {
    const a = { state: 'active', created_at: created, cost: 0.1 };
    expect(runningCost(a, t0 + 3_600_000, 0.5)).toBeCloseTo(0.5);
    expect(runningCost(a, t0 + 1_800_000, 0.5)).toBeCloseTo(0.25);
  });
  it('stops at the release, and falls back to the answered cost without a price', () => {
    const a = { state: 'released', created_at: created, released_at: '2026-01-01T00:30:00.000Z', cost: 0.3 };
    expect(runningCost(a, t0 + 10 * 3_600_000, 2)).toBeCloseTo(1);
    expect(runningCost(a, t0, undefined)).toBe(0.3);
    expect(runningCost({ state: 'active', created_at: created }, t0, undefined)).toBeNull();
  });
  it('is nothing for a pending allocation', () => {
    expect(runningCost({ state: 'pending', created_at: created, cost: 0 }, t0 + 1000, 1)).toBeNull();
  });
});

describe('formatCost', () => {
  it('shows 4 decimals under 1, 2 above, a dash when unknown', () => {
    expect(formatCost(0.012345)).toBe('0.0123');
    expect(formatCost(12.345)).toBe('12.35');
    expect(formatCost(0)).toBe('0.0000');
    expect(formatCost(null)).toBe('—');
  });
});

describe('parseLocation', () => {
  it('reads label=value pairs, a list being an order of preference', () => {
    expect(parseLocation('')).toBeNull();
    expect(parseLocation('region=eu')).toEqual({ region: 'eu' });
    expect(parseLocation(' region=eu,us  zone=a ')).toEqual({ region: ['eu', 'us'], zone: 'a' });
  });
  it('says what is wrong with bad text', () => {
    expect(() => parseLocation('region')).toThrow(/not label=value/);
    expect(() => parseLocation('region=eu,')).toThrow(/empty value/);
    expect(() => parseLocation('region=eu region=us')).toThrow(/twice/);
  });
});
