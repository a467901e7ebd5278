// Allocation latency from the control plane's Prometheus text (`GET /metrics`).
//
// `warmpool_allocation_duration_seconds{pool, outcome}` is recorded by the member that took
// the request, from arrival to answer (forwarding to the leader included). The exporter
// renders it as a summary: quantiles over a rolling window of about a minute, plus a lifetime
// `_sum` and `_count`. From two scrapes we get the exact mean of the allocations in between
// (Δsum / Δcount); the quantiles are shown as the exporter reports them. Histogram buckets,
// if the exporter is ever configured with them, are turned into quantiles the way
// Prometheus's `histogram_quantile` does.

/** Parses the text format into `[{name, labels, value}]`, skipping comments. Pure. */
export function parsePrometheus(text) {
  const out = [];
  for (const raw of String(text ?? '').split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\S+)?$/.exec(line);
    if (!m) continue;
    const labels = {};
    if (m[3]) {
      const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
      let lm;
      while ((lm = re.exec(m[3]))) {
        labels[lm[1]] = lm[2].replace(/\\n/g, '\n').replace(/\\"/g, '"').replace(/\\\\/g, '\\');
      }
    }
    const v = m[4];
    const value = v === '+Inf' ? Infinity : v === '-Inf' ? -Infinity : v === 'NaN' ? NaN : Number(v);
    if (Number.isNaN(value) && v !== 'NaN') continue; // not a sample line
    out.push({ name: m[1], labels, value });
  }
  return out;
}

/** Outcomes that handed out a container. */
export const SUCCESS_OUTCOMES = new Set(['warm', 'waited', 'replayed']);

/**
 * Per `pool|outcome`: `{pool, outcome, count, sum, quantiles: {0.5: s, 0.99: s}, buckets: [[le, n]]}`
 * for the metric `name`. Pure.
 */
export function latencySeries(samples, name = 'warmpool_allocation_duration_seconds') {
  const by = new Map();
  const get = (l) => {
    const key = `${l.pool ?? ''}|${l.outcome ?? ''}`;
    if (!by.has(key)) by.set(key, { pool: l.pool ?? '', outcome: l.outcome ?? '', count: 0, sum: 0, quantiles: {}, buckets: [] });
    return by.get(key);
  };
  for (const s of samples) {
    if (s.name === name && s.labels.quantile !== undefined) get(s.labels).quantiles[s.labels.quantile] = s.value;
    else if (s.name === `${name}_sum`) get(s.labels).sum = s.value;
    else if (s.name === `${name}_count`) get(s.labels).count = s.value;
    else if (s.name === `${name}_bucket`) get(s.labels).buckets.push([Number(s.labels.le === '+Inf' ? Infinity : s.labels.le), s.value]);
  }
  for (const v of by.values()) v.buckets.sort((a, b) => a[0] - b[0]);
  return [...by.values()];
}

/**
 * The mean latency (seconds) and count of successful allocations between two scrapes, over
 * every pool; null when none happened (or the member restarted: counts went down). Pure.
 */
export function intervalMean(prev, cur) {
  if (!prev || !cur) return null;
  const index = new Map(prev.map((s) => [`${s.pool}|${s.outcome}`, s]));
  let dc = 0;
  let ds = 0;
  for (const s of cur) {
    if (!SUCCESS_OUTCOMES.has(s.outcome)) continue;
    const p = index.get(`${s.pool}|${s.outcome}`) ?? { count: 0, sum: 0 };
    if (s.count < p.count) return null; // counter reset
    dc += s.count - p.count;
    ds += s.sum - p.sum;
  }
  return dc > 0 ? { mean: ds / dc, count: dc } : null;
}

/**
 * `histogram_quantile(q, buckets)` with linear interpolation inside the bucket, as
 * Prometheus does; `buckets` are cumulative `[le, count]` sorted by `le`. Pure.
 */
export function bucketQuantile(q, buckets) {
  if (!buckets.length) return NaN;
  const total = buckets[buckets.length - 1][1];
  if (!(total > 0)) return NaN;
  const rank = q * total;
  let prevLe = 0;
  let prevCount = 0;
  for (const [le, count] of buckets) {
    if (count >= rank) {
      if (le === Infinity) return prevLe;
      if (count === prevCount) return le;
      return prevLe + ((le - prevLe) * (rank - prevCount)) / (count - prevCount);
    }
    prevLe = le;
    prevCount = count;
  }
  return buckets[buckets.length - 1][0];
}
