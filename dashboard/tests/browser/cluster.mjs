// A live Warmpool cluster for the browser tests: its own nats-server, three control-plane
// members and one real agent (Docker), on free ports, with data and logs in a temp directory.
// Everything it starts is stopped and every container it made is removed by `stop()`, also
// when a test fails (the test file calls it in `after`), and on SIGINT/SIGTERM.
//
// The page is served either by member 1 itself (`--dashboard-dir dashboard/dist`, when the
// built control plane has that flag) or, until then, by a small same-origin server of ours
// (static files from dist/ plus a proxy of /v1 and /metrics to member 1). Either way the page
// has one origin and loses it when member 1 goes away.
//
//   node tests/browser/cluster.mjs [--auth]   starts a cluster for trying the dashboard by hand
//                                             and prints its URL (and, with --auth, an admin
//                                             key); Ctrl-C stops it and cleans up.

import { spawn, execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const dashboardDir = path.resolve(here, '../..');
export const repoRoot = path.resolve(dashboardDir, '..');
const targetDir = process.env.CARGO_TARGET_DIR
  ? path.resolve(process.env.CARGO_TARGET_DIR)
  : path.join(repoRoot, 'target');
const binDir = path.join(targetDir, 'debug');
export const DEMO_IMAGE = 'warmpool-demo:latest';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A free TCP port on loopback. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function bin(name) {
  const p = path.join(binDir, name);
  if (!fs.existsSync(p)) {
    throw new Error(`${p} is missing: run \`cargo build --bins\` first (deploy/dashboard-test.sh does)`);
  }
  return p;
}

/** Whether a binary's --help lists `flag`. */
function hasFlag(binary, flag) {
  const out = spawnSync(binary, ['--help'], { encoding: 'utf8' });
  return `${out.stdout}${out.stderr}`.includes(flag);
}

function randomHex(n) {
  return [...Array(n)].map(() => Math.floor(Math.random() * 16).toString(16)).join('');
}

/** Polls `f` every 100 ms until it returns a truthy value; throws naming `what` on timeout. */
export async function waitFor(what, f, timeoutMs = 30000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const v = await f();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${last.message}` : ''}`);
    }
    await sleep(100);
  }
}

class Proc {
  constructor(name, cmd, args, logDir, env = {}) {
    Object.assign(this, { name, cmd, args, logDir, env, child: null });
  }

  start() {
    if (this.child) throw new Error(`${this.name} is already running`);
    const log = fs.openSync(path.join(this.logDir, `${this.name}.log`), 'a');
    this.child = spawn(this.cmd, this.args, {
      stdio: ['ignore', log, log],
      env: { ...process.env, ...this.env },
    });
    fs.closeSync(log);
    const child = this.child;
    this.exited = new Promise((r) => child.once('exit', r));
    child.once('exit', () => {
      if (this.child === child) this.child = null;
    });
  }

  /** Sends `signal` and waits (up to 10 s, then SIGKILL) until the process is gone. */
  async stop(signal = 'SIGTERM') {
    const child = this.child;
    if (!child) return;
    child.kill(signal);
    const done = await Promise.race([this.exited.then(() => true), sleep(10000).then(() => false)]);
    if (!done) {
      child.kill('SIGKILL');
      await this.exited;
    }
    this.child = null;
  }

  killNow() {
    if (this.child) {
      try {
        this.child.kill('SIGKILL');
      } catch {
        /* already gone */
      }
    }
  }

  logTail(lines = 40) {
    try {
      const text = fs.readFileSync(path.join(this.logDir, `${this.name}.log`), 'utf8');
      return text.split('\n').slice(-lines).join('\n');
    } catch {
      return '';
    }
  }
}

/**
 * Serves dist/ and proxies /v1/* and /metrics to `target()` (a URL, read per request), so the
 * page and the API share one origin, as they will when the control plane serves the files.
 */
export function frontServer(distDir, target) {
  const types = {
    '.html': 'text/html; charset=utf-8',
    '.js': 'text/javascript',
    '.css': 'text/css',
    '.svg': 'image/svg+xml',
    '.png': 'image/png',
    '.ico': 'image/x-icon',
    '.json': 'application/json',
  };
  return http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    if (url.pathname.startsWith('/v1/') || url.pathname === '/metrics') {
      const up = new URL(req.url, target());
      const preq = http.request(
        up,
        { method: req.method, headers: { ...req.headers, host: up.host } },
        (pres) => {
          res.writeHead(pres.statusCode, pres.headers);
          pres.pipe(res);
        },
      );
      preq.on('error', () => {
        if (!res.headersSent) {
          res.writeHead(502, { 'content-type': 'text/plain' });
          res.end('upstream unavailable');
        } else {
          res.destroy();
        }
      });
      req.pipe(preq);
      res.on('close', () => preq.destroy());
      return;
    }
    let file = path.join(distDir, path.normalize(url.pathname).replace(/^(\.\.[/\\])+/, ''));
    if (!file.startsWith(distDir) || !fs.existsSync(file) || fs.statSync(file).isDirectory()) {
      file = path.join(distDir, 'index.html');
    }
    res.writeHead(200, { 'content-type': types[path.extname(file)] ?? 'application/octet-stream' });
    fs.createReadStream(file).pipe(res);
  });
}

export class Cluster {
  constructor() {
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'warmpool-dash-'));
    this.members = [];
    this.agent = null;
    this.nats = null;
    this.front = null;
    this.node = `dash-${randomHex(8)}`;
    // A /64 under fd36::/16 that neither dev.sh (fd36:1::) nor the Rust tests' range is likely
    // to take at the same time.
    this.prefix = `fd36:${(0x1000 + Math.floor(Math.random() * 0xe000)).toString(16)}::/64`;
    this.stopped = false;
  }

  /**
   * Starts NATS, `members` control-plane members (the first bootstraps) and, with `agent`, a
   * real node agent; waits for every member to be a voter. With `auth`, the members require
   * API keys and `this.adminKey` is the bootstrap admin key (sent by `json()`).
   */
  async start({ distDir = path.join(dashboardDir, 'dist'), members = 3, agent = true, auth = false } = {}) {
    const cp = bin('warmpool-control-plane');
    const agentBin = bin('warmpool-agent');
    this.servesDashboard = hasFlag(cp, '--dashboard-dir');
    const natsPort = await freePort();
    this.nats = new Proc('nats', 'nats-server', ['-a', '127.0.0.1', '-p', String(natsPort)], this.dir);
    this.nats.start();
    await waitFor('nats-server', () => canConnect(natsPort), 10000);
    const natsUrl = `nats://127.0.0.1:${natsPort}`;
    const authArgs = [];
    if (auth) {
      this.adminKey = `wpk_${randomHex(12)}_${randomHex(64)}`;
      const keyFile = path.join(this.dir, 'admin.key');
      fs.writeFileSync(keyFile, this.adminKey, { mode: 0o600 });
      authArgs.push('--auth', '--admin-key-file', keyFile);
    } else {
      authArgs.push('--insecure-no-auth');
    }
    for (let id = 1; id <= members; id++) {
      const port = await freePort();
      const args = [
        '--id', String(id),
        '--nats-url', natsUrl,
        '--api-addr', `127.0.0.1:${port}`,
        '--data-dir', path.join(this.dir, `cp${id}`),
        '--node-timeout-secs', '5',
        id === 1 ? '--bootstrap' : '--join',
      ];
      if (this.servesDashboard) args.push('--dashboard-dir', distDir);
      args.push(...authArgs);
      const p = new Proc(`cp${id}`, cp, args, this.dir, {
        RUST_LOG: 'info,openraft=warn,sled=warn,async_nats=warn',
      });
      p.port = port;
      p.url = `http://127.0.0.1:${port}`;
      p.id = id;
      this.members.push(p);
      p.start();
      if (id === 1) await waitFor('member 1 to lead', () => this.ready(p.url), 30000);
    }
    await waitFor(
      `${members} voters`,
      async () => {
        const c = await this.json(this.members[0].url, '/v1/cluster');
        return c.members.filter((m) => m.role === 'voter').length === members;
      },
      60000,
    );
    if (agent) await this.startAgent(agentBin, natsUrl);
    if (this.servesDashboard) {
      this.url = this.members[0].url;
    } else {
      const port = await freePort();
      this.front = frontServer(distDir, () => this.members[0].url);
      await new Promise((r) => this.front.listen(port, '127.0.0.1', r));
      this.url = `http://127.0.0.1:${port}`;
    }
    return this;
  }

  async startAgent(agentBin, natsUrl) {
    this.agent = new Proc(
      this.node,
      agentBin,
      ['--node-id', this.node, '--nats-url', natsUrl, '--ipv6-prefix', this.prefix, '--heartbeat-ms', '500',
        '--label', 'region=local', '--label', 'suite=dashboard'],
      this.dir,
      { RUST_LOG: 'info,async_nats=warn' },
    );
    this.agent.start();
    await waitFor('the agent to join', async () => {
      const nodes = await this.json(this.members[0].url, '/v1/nodes');
      return nodes.some((n) => n.id === this.node && n.status === 'ready');
    });
  }

  async ready(base) {
    const r = await fetch(`${base}/v1/ready`, { headers: this.authHeader() });
    return r.ok;
  }

  authHeader() {
    return this.adminKey ? { authorization: `Bearer ${this.adminKey}` } : {};
  }

  /** A JSON request to `base` (a member URL) with the admin key, if auth is on. */
  async json(base, p, init = {}) {
    const r = await fetch(`${base}${p}`, { ...init, headers: { ...this.authHeader(), ...(init.headers ?? {}) } });
    const body = await r.text();
    if (!r.ok) throw new Error(`${init?.method ?? 'GET'} ${p}: ${r.status} ${body}`);
    return body ? JSON.parse(body) : null;
  }

  /** Creates a pool of the demo image with a fast health check. */
  async createPool(name, { minWarm = 1, maxTotal = 100, leaseSeconds = 600, pricePerHour, constraints } = {}) {
    const spec = {
      name,
      image: DEMO_IMAGE,
      min_warm: minWarm,
      max_total: maxTotal,
      lease_seconds: leaseSeconds,
      health: { probe: { kind: 'http', path: '/healthz' }, interval_ms: 300 },
    };
    if (pricePerHour !== undefined) spec.price_per_hour = pricePerHour;
    if (constraints) spec.constraints = constraints;
    return this.json(this.members[0].url, '/v1/pools', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(spec),
    });
  }

  async waitWarm(pool, n, timeoutMs = 60000) {
    return waitFor(
      `${n} warm containers in pool ${pool}`,
      async () => {
        const s = await this.json(this.members[0].url, '/v1/status');
        return (s.pools.find((p) => p.name === pool)?.counts.warm ?? 0) >= n;
      },
      timeoutMs,
    );
  }

  /** Stops member `i` (0-based) with SIGKILL or SIGTERM. */
  async stopMember(i, signal = 'SIGKILL') {
    await this.members[i].stop(signal);
  }

  async startMember(i) {
    this.members[i].start();
    await waitFor(`member ${i + 1} to answer`, () => this.ready(this.members[i].url), 30000);
  }

  logs() {
    return [this.nats, ...this.members, this.agent]
      .filter(Boolean)
      .map((p) => `----- ${p.name} -----\n${p.logTail(30)}`)
      .join('\n');
  }

  /** Stops everything and removes the agent's containers and network. Idempotent. */
  async stop({ keepDir = false } = {}) {
    if (this.stopped) return;
    this.stopped = true;
    if (this.front) await new Promise((r) => this.front.close(r)).catch(() => {});
    this.front?.closeAllConnections?.();
    if (this.agent) await this.agent.stop('SIGKILL');
    for (const m of this.members) await m.stop('SIGKILL');
    if (this.nats) await this.nats.stop('SIGKILL');
    removeDocker(this.node);
    if (!keepDir) fs.rmSync(this.dir, { recursive: true, force: true });
  }

  /** Synchronous last resort for process exit. */
  killNow() {
    if (this.stopped) return;
    this.stopped = true;
    for (const p of [this.agent, ...this.members, this.nats]) p?.killNow();
    removeDocker(this.node);
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

function canConnect(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

function removeDocker(node) {
  try {
    const ids = execFileSync('docker', ['ps', '-aq', '--filter', `label=io.warmpool.node=${node}`], {
      encoding: 'utf8',
    })
      .split(/\s+/)
      .filter(Boolean);
    if (ids.length) spawnSync('docker', ['rm', '-f', ...ids], { stdio: 'ignore' });
    spawnSync('docker', ['network', 'rm', `warmpool-${node}`], { stdio: 'ignore' });
  } catch {
    /* docker is not there: nothing of ours to remove */
  }
  removeIsolationTable(node);
}

// The agent leaves its nftables table (warmpool_<node>, anything but letters and digits made
// `_`, maybe a hash after it) to close what may still run while it is away. Left behind, every
// such table's chains run for every packet on the host, loopback included.
function removeIsolationTable(node) {
  const want = `warmpool_${node.replace(/[^A-Za-z0-9]/g, '_')}`;
  try {
    const tables = execFileSync('nft', ['list', 'tables', 'inet'], { encoding: 'utf8' });
    for (const line of tables.split('\n')) {
      const name = line.trim().replace(/^table inet /, '');
      if (name === want || name.startsWith(`${want}_`)) {
        spawnSync('nft', ['delete', 'table', 'inet', name], { stdio: 'ignore' });
      }
    }
  } catch {
    /* no nft: no table */
  }
}

// By hand: start a cluster with pool "demo" and keep it until Ctrl-C.
if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const c = new Cluster();
  const bye = async () => {
    await c.stop();
    process.exit(0);
  };
  process.on('SIGINT', bye);
  process.on('SIGTERM', bye);
  try {
    await c.start({ auth: process.argv.includes('--auth') });
    await c.createPool('demo', { minWarm: 3, maxTotal: 10 });
    await c.createPool('tiny', { minWarm: 1, maxTotal: 1 });
    await c.waitWarm('demo', 3);
    console.log(`cluster up in ${c.dir}`);
    console.log(`page:    ${c.url}${c.servesDashboard ? '' : '  (our static server + proxy to member 1)'}`);
    console.log(`members: ${c.members.map((m) => m.url).join(' ')}`);
    if (c.adminKey) console.log(`admin key: ${c.adminKey}`);
    console.log('for `npm run dev`: WARMPOOL_API=' + c.members[0].url);
  } catch (e) {
    console.error(e);
    console.error(c.logs());
    await c.stop();
    process.exit(1);
  }
}
