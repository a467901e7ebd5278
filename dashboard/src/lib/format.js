// Formatting for people. Pure; `now` is always passed in so tests need no clock.

/** Milliseconds of an RFC 3339 time, or NaN. */
export function ms(iso) {
  return iso ? Date.parse(iso) : NaN;
}

/**
 * A lease countdown: `9:59`, `1:02:03`, `2d 03:04:05`; `expired` at or below zero; `—`
 * without an expiry. Seconds are rounded up, so `0:01` shows until the last moment.
 */
export function formatCountdown(remainingMs) {
  if (remainingMs === null || remainingMs === undefined || Number.isNaN(remainingMs)) return '—';
  if (remainingMs <= 0) return 'expired';
  let s = Math.ceil(remainingMs / 1000);
  const d = Math.floor(s / 86400);
  s -= d * 86400;
  const h = Math.floor(s / 3600);
  s -= h * 3600;
  const m = Math.floor(s / 60);
  s -= m * 60;
  const pad = (n) => String(n).padStart(2, '0');
  if (d > 0) return `${d}d ${pad(h)}:${pad(m)}:${pad(s)}`;
  if (h > 0) return `${h}:${pad(m)}:${pad(s)}`;
  return `${m}:${pad(s)}`;
}

/** How urgent a countdown is: 'expired', 'soon' (under a minute, or under 10% of the lease), 'ok'. */
export function countdownLevel(remainingMs, leaseMs) {
  if (remainingMs === null || remainingMs === undefined || Number.isNaN(remainingMs)) return 'ok';
  if (remainingMs <= 0) return 'expired';
  if (remainingMs < 60000 || (leaseMs > 0 && remainingMs < leaseMs * 0.1)) return 'soon';
  return 'ok';
}

/** `just now`, `42 s ago`, `3 min ago`, `2 h ago`, `5 d ago`; `in 3 min` for the future. */
export function formatAgo(iso, now) {
  const t = ms(iso);
  if (Number.isNaN(t)) return '—';
  const d = now - t;
  const abs = Math.abs(d);
  let text;
  if (abs < 1500) return 'just now';
  if (abs < 60000) text = `${Math.round(abs / 1000)} s`;
  else if (abs < 3600000) text = `${Math.round(abs / 60000)} min`;
  else if (abs < 86400000) text = `${Math.round(abs / 3600000)} h`;
  else text = `${Math.round(abs / 86400000)} d`;
  return d >= 0 ? `${text} ago` : `in ${text}`;
}

/** A duration in ms for people: `850 ms`, `4.2 s`, `3 min 5 s`, `2 h 3 min`. */
export function formatDuration(d) {
  if (d === null || d === undefined || Number.isNaN(d)) return '—';
  if (d < 1000) return `${Math.round(d)} ms`;
  if (d < 60000) return `${(d / 1000).toFixed(d < 10000 ? 1 : 0)} s`;
  if (d < 3600000) return `${Math.floor(d / 60000)} min ${Math.round((d % 60000) / 1000)} s`;
  return `${Math.floor(d / 3600000)} h ${Math.round((d % 3600000) / 60000)} min`;
}

/** Latency in ms with sensible precision: `0.84 ms`, `12.3 ms`, `250 ms`, `1.20 s`. */
export function formatLatency(msValue) {
  if (msValue === null || msValue === undefined || Number.isNaN(msValue)) return '—';
  if (msValue < 1) return `${msValue.toFixed(2)} ms`;
  if (msValue < 100) return `${msValue.toFixed(1)} ms`;
  if (msValue < 1000) return `${Math.round(msValue)} ms`;
  return `${(msValue / 1000).toFixed(2)} s`;
}

/** Local wall-clock time, `HH:MM:SS`, from an RFC 3339 string. */
export function formatClock(iso) {
  const t = ms(iso);
  if (Number.isNaN(t)) return '—';
  const d = new Date(t);
  const pad = (n) => String(n).padStart(2, '0');
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** Local date and time, `YYYY-MM-DD HH:MM:SS`. */
export function formatDateTime(iso) {
  const t = ms(iso);
  if (Number.isNaN(t)) return '—';
  const d = new Date(t);
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${formatClock(iso)}`;
}

/** Memory in MiB for people: `512 MiB`, `23.5 GiB`. */
export function formatMiB(mb) {
  if (mb === null || mb === undefined) return '—';
  return mb >= 1024 ? `${(mb / 1024).toFixed(1)} GiB` : `${mb} MiB`;
}

/** CPU in thousandths of a core: `0.5 cores`, `2 cores`. */
export function formatCpu(millis) {
  if (millis === null || millis === undefined) return '—';
  const c = millis / 1000;
  return `${Number.isInteger(c) ? c : c.toFixed(1)} core${c === 1 ? '' : 's'}`;
}

/**
 * A short form of an id for tables (the whole id is in the title): the last 8 characters.
 * Ids are UUID v7, whose leading characters are a timestamp shared by ids made in the same
 * moment; the tail is random, so it tells them apart.
 */
export function shortId(id) {
  if (!id) return '—';
  const s = String(id);
  return s.length > 12 ? `…${s.slice(-8)}` : s;
}

/** `fd36:1::5` → `[fd36:1::5]:8080` style address. */
export function hostPort(ipv6, port) {
  if (!ipv6) return '—';
  return port ? `[${ipv6}]:${port}` : ipv6;
}

/** A kind like `container_released` as `container released`. */
export function kindLabel(kind) {
  return String(kind ?? '').replaceAll('_', ' ');
}

/**
 * What an allocation has cost by `now`: its running time at the pool's `pricePerHour` when
 * that is known (so it ticks with the clock), else the `cost` the API answered (computed when
 * it answered); null for a pending allocation, or when neither is known. Pure.
 */
export function runningCost(a, now, pricePerHour) {
  if (!a || a.state === 'pending' || a.state === 'cancelled') return null;
  const start = ms(a.created_at);
  if (typeof pricePerHour === 'number' && Number.isFinite(pricePerHour) && !Number.isNaN(start)) {
    const end = a.released_at ? ms(a.released_at) : now;
    return (Math.max(0, end - start) / 3_600_000) * pricePerHour;
  }
  return typeof a.cost === 'number' ? a.cost : null;
}

/** A cost in the pool's price unit: `0.0123` (4 decimals under 1, 2 above); `—` when unknown. */
export function formatCost(cost) {
  if (cost === null || cost === undefined || Number.isNaN(cost)) return '—';
  return cost < 1 ? cost.toFixed(4) : cost.toFixed(2);
}

/**
 * `region=eu, zone=a,b` as an allocation's `location`: `{region: 'eu', zone: ['a', 'b']}`
 * (a list is an order of preference). Empty text is no location (null); bad text throws an
 * Error that says what is wrong. Pure.
 */
export function parseLocation(text) {
  const t = (text ?? '').trim();
  if (!t) return null;
  const out = {};
  for (const part of t.split(/\s+|;/).filter(Boolean)) {
    const eq = part.indexOf('=');
    if (eq <= 0) throw new Error(`"${part}" is not label=value`);
    const key = part.slice(0, eq);
    const values = part.slice(eq + 1).split(',');
    if (values.some((v) => !v)) throw new Error(`"${part}" has an empty value`);
    if (key in out) throw new Error(`label "${key}" is given twice`);
    out[key] = values.length === 1 ? values[0] : values;
  }
  return out;
}
