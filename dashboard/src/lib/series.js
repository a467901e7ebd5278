// Time series sampled from `GET /v1/status` for the overview's charts. Pure.

/** Appends a sample `{t, pools: {name: {warm, allocated, creating, wanted}}}`, dropping old ones. */
export function pushStatusSample(series, t, status, { maxAgeMs = 15 * 60000, maxPoints = 900 } = {}) {
  const pools = {};
  for (const p of status?.pools ?? []) {
    pools[p.name] = {
      warm: p.counts.warm,
      allocated: p.counts.allocated,
      creating: p.counts.creating,
      wanted: p.wanted,
    };
  }
  const out = series.filter((s) => s.t >= t - maxAgeMs);
  out.push({ t, pools });
  return out.length > maxPoints ? out.slice(out.length - maxPoints) : out;
}

/** `[[t, value]]` for one pool and field; null where the pool did not exist. */
export function poolLine(series, pool, field) {
  return series.map((s) => [s.t, s.pools[pool] ? s.pools[pool][field] : null]);
}

/** Appends a point `[t, value]` to a line and drops points older than `maxAgeMs`. */
export function pushPoint(line, t, value, maxAgeMs = 15 * 60000) {
  const out = line.filter(([pt]) => pt >= t - maxAgeMs);
  out.push([t, value]);
  return out;
}

/**
 * Axis ticks from 0: a "nice" step (1, 2 or 5 × 10^n; whole numbers when `integer`) so that
 * about `count` steps cover `maxV`. Returns `{max, ticks}`. Pure.
 */
export function niceTicks(maxV, { count = 4, integer = false } = {}) {
  const v = maxV > 0 ? maxV : integer ? 1 : 1;
  const raw = v / count;
  const p = 10 ** Math.floor(Math.log10(raw));
  let step = [1, 2, 5, 10].map((m) => m * p).find((x) => x >= raw) ?? 10 * p;
  if (integer) step = Math.max(1, Math.round(step));
  const max = Math.ceil(v / step - 1e-9) * step;
  const ticks = [];
  for (let t = 0; t <= max + step / 2; t += step) ticks.push(Number(t.toPrecision(12)));
  return { max, ticks };
}

/**
 * The span a chart shows, ending now: from its oldest point, but at least `minMs` and at most
 * `maxMs`. Pure.
 */
export function chartWindow(series, now, { minMs = 2 * 60000, maxMs = 10 * 60000 } = {}) {
  let oldest = now;
  for (const s of series) for (const [t] of s.points) if (t < oldest) oldest = t;
  return Math.min(maxMs, Math.max(minMs, now - oldest));
}
