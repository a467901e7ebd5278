import { describe, it, expect } from 'vitest';
import { parsePrometheus, latencySeries, intervalMean, bucketQuantile } from '../../src/lib/metrics.js';

// As the control plane renders it (metrics-exporter-prometheus, summaries).
const scrape1 = `# TYPE warmpool_allocation_duration_seconds summary
warmpool_allocation_duration_seconds{pool="tiny",outcome="no_capacity",quantile="0.5"} 0.5055542093133042
warmpool_allocation_duration_seconds{pool="tiny",outcome="no_capacity",quantile="0.99"} 0.5055542093133042
warmpool_allocation_duration_seconds_sum{pool="tiny",outcome="no_capacity"} 0.505540212
warmpool_allocation_duration_seconds_count{pool="tiny",outcome="no_capacity"} 1
warmpool_allocation_duration_seconds{pool="demo",outcome="warm",quantile="0.5"} 0.004
warmpool_allocation_duration_seconds{pool="demo",outcome="warm",quantile="0.99"} 0.02
warmpool_allocation_duration_seconds_sum{pool="demo",outcome="warm"} 0.030
warmpool_allocation_duration_seconds_count{pool="demo",outcome="warm"} 5
warmpool_http_requests_total{method="POST",route="/v1/allocations",status="201"} 2
`;
const scrape2 = scrape1
  .replace('_sum{pool="demo",outcome="warm"} 0.030', '_sum{pool="demo",outcome="warm"} 0.060')
  .replace('_count{pool="demo",outcome="warm"} 5', '_count{pool="demo",outcome="warm"} 10')
  .replace('_count{pool="tiny",outcome="no_capacity"} 1', '_count{pool="tiny",outcome="no_capacity"} 4');

describe('parsePrometheus', () => {
  it('reads names, labels and values, skipping comments and junk', () => {
    const s = parsePrometheus(`# HELP x\nx_total 3\ny{a="1",b="q\\"uote"} +Inf 1700000000\nbroken line here\nz{} NaN\n`);
    expect(s[0]).toEqual({ name: 'x_total', labels: {}, value: 3 });
    expect(s[1]).toEqual({ name: 'y', labels: { a: '1', b: 'q"uote' }, value: Infinity });
    expect(s).toHaveLength(3);
    expect(Number.isNaN(s[2].value)).toBe(true);
  });
});

describe('latencySeries', () => {
  it('groups the summary by pool and outcome', () => {
    const l = latencySeries(parsePrometheus(scrape1));
    const demo = l.find((r) => r.pool === 'demo');
    expect(demo).toMatchObject({ outcome: 'warm', count: 5, sum: 0.03, quantiles: { '0.5': 0.004, '0.99': 0.02 } });
    expect(l).toHaveLength(2);
  });
});

describe('intervalMean', () => {
  it('is Δsum/Δcount over successful outcomes only', () => {
    const a = latencySeries(parsePrometheus(scrape1));
    const b = latencySeries(parsePrometheus(scrape2));
    const m = intervalMean(a, b);
    expect(m.count).toBe(5);
    expect(m.mean).toBeCloseTo(0.006, 9);
  });
  it('is null with no new allocations, no earlier scrape, or after a restart', () => {
    const a = latencySeries(parsePrometheus(scrape1));
    expect(intervalMean(a, a)).toBeNull();
    expect(intervalMean(null, a)).toBeNull();
    const b = latencySeries(parsePrometheus(scrape2));
    expect(intervalMean(b, a)).toBeNull();
  });
  it('counts a pool that appeared since the last scrape', () => {
    const b = latencySeries(parsePrometheus(scrape2));
    const m = intervalMean([], b);
    expect(m.count).toBe(10);
  });
});

describe('bucketQuantile', () => {
  it('interpolates inside the bucket like histogram_quantile', () => {
    const buckets = [
      [0.001, 0],
      [0.005, 50],
      [0.01, 90],
      [0.05, 100],
      [Infinity, 100],
    ];
    expect(bucketQuantile(0.5, buckets)).toBeCloseTo(0.005, 9);
    expect(bucketQuantile(0.25, buckets)).toBeCloseTo(0.003, 9);
    expect(bucketQuantile(0.95, buckets)).toBeCloseTo(0.03, 9);
    expect(bucketQuantile(0.5, [])).toBeNaN();
    expect(bucketQuantile(0.5, [[1, 0], [Infinity, 0]])).toBeNaN();
    expect(bucketQuantile(0.99, [[1, 1], [Infinity, 10]])).toBe(1);
  });
});
