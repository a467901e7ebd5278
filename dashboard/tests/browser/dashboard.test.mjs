// Browser tests: Debian's Chromium driven by playwright-core against a live cluster (its own
// nats-server, three control-plane members with auth on, one real agent on Docker), serving
// the built dashboard (dashboard/dist). Run `npm run build` first; deploy/dashboard-test.sh
// does everything.
//
// The tests run in order and share one signed-in admin page, as a person would use it: the
// charts fill up, allocations made in one test are released in the next. Each test says
// what it proves. Screenshots of every view at 375×812 and 1440×900 go to
// dashboard/screenshots/latest/.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { Cluster, waitFor, dashboardDir } from './cluster.mjs';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const SHOTS = path.join(dashboardDir, 'screenshots', 'latest');
const DESKTOP = { width: 1440, height: 900 };
const PHONE = { width: 375, height: 812 };

let cluster;
let browser;
let page; // the admin's page, kept open through the tests
const problems = []; // JavaScript errors and unexpected console errors, from every page

// The browser logs "Failed to load resource" for every answer with an error status and for
// refused connections. Those are expected where a test provokes them (401 before sign-in,
// 404 for an unknown pool, 503 no capacity, 403 for a viewer, the restarted member); any
// other console error, and any uncaught exception, fails the run.
function watch(p, label) {
  p.on('pageerror', (e) => problems.push(`${label}: uncaught ${e.message}`));
  p.on('console', (m) => {
    if (m.type() !== 'error') return;
    if (/^Failed to load resource/.test(m.text())) return;
    problems.push(`${label}: console.error ${m.text()}`);
  });
}

async function newPage(viewport = DESKTOP, label = 'page') {
  const ctx = await browser.newContext({ viewport });
  const p = await ctx.newPage();
  watch(p, label);
  return p;
}

async function shot(p, name) {
  fs.mkdirSync(SHOTS, { recursive: true });
  await p.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });
}

async function go(p, hash) {
  await p.evaluate((h) => {
    location.hash = h;
  }, hash);
}

async function signIn(p, key) {
  await p.getByLabel('API key').fill(key);
  await p.getByRole('button', { name: 'Sign in' }).click();
}

const api = (p, init) => cluster.json(cluster.members[0].url, p, init);
const apiVia = (i, p, init) => cluster.json(cluster.members[i].url, p, init);
const post = (i, p, body) =>
  apiVia(i, p, { method: 'POST', headers: { 'content-type': 'application/json' }, body: body === undefined ? undefined : JSON.stringify(body) });

before(async () => {
  assert.ok(fs.existsSync(path.join(dashboardDir, 'dist', 'index.html')), 'dashboard/dist is missing: run `npm run build` first');
  fs.rmSync(SHOTS, { recursive: true, force: true });
  cluster = new Cluster();
  const bye = () => cluster.killNow();
  process.once('SIGINT', bye);
  process.once('SIGTERM', bye);
  process.once('exit', bye);
  try {
    await cluster.start({ auth: true });
    await cluster.createPool('demo', { minWarm: 2, maxTotal: 8, pricePerHour: 0.5 });
    await cluster.createPool('tiny', { minWarm: 1, maxTotal: 1 });
    // No node carries its label: what is asked of it stays pending.
    await cluster.createPool('later', { minWarm: 0, maxTotal: 2, constraints: { region: 'mars' } });
    await cluster.waitWarm('demo', 2);
    await cluster.waitWarm('tiny', 1);
  } catch (e) {
    console.error(cluster.logs());
    throw e;
  }
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    // Playwright gives every launch a new, empty user-data directory of its own.
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  page = await newPage(DESKTOP, 'admin');
});

after(async () => {
  await browser?.close();
  if (cluster && process.exitCode) console.error(cluster.logs());
  await cluster?.stop();
});

test('sign-in: auth is detected, bad keys are refused with a reason, the admin key enters', async () => {
  await page.goto(cluster.url);
  await page.getByRole('heading', { name: 'Sign in' }).waitFor();
  await signIn(page, 'not-a-key');
  await page.getByTestId('signin-error').getByText('A Warmpool API key starts with wpk_.').waitFor();
  await signIn(page, `wpk_000000000000_${'0'.repeat(64)}`);
  await page.getByTestId('signin-error').getByText(/That key was not accepted: unknown key/).waitFor();
  await signIn(page, cluster.adminKey);
  await page.getByTestId('total-warm').waitFor();
  await waitFor('warm total', async () => Number(await page.getByTestId('total-warm').locator('.n').textContent()) >= 3);
  await page.getByTestId('leader').getByText('member 1').waitFor();
  await waitFor('a commit index', async () => /^\d+$/.test(await page.getByTestId('commit-index').textContent()));
  // The key survives a reload (session storage), so no second sign-in.
  await page.reload();
  await page.getByTestId('total-warm').waitFor();
  assert.equal(await page.getByRole('heading', { name: 'Sign in' }).count(), 0);
  await page.getByTestId('conn-state').getByText('Live').waitFor();
});

let allocation; // made from the UI in the next test
test('allocate from the UI: the container appears with its IPv6 address', async () => {
  await go(page, '#/allocations');
  const form = page.getByTestId('allocate-form');
  await form.getByLabel('Pool').fill('demo');
  await form.getByLabel('Session id').fill('browser-session-1');
  await page.getByTestId('allocate-button').click();
  const result = page.getByTestId('allocate-result');
  await result.waitFor();
  const ipv6 = (await page.getByTestId('allocated-ipv6').textContent()).trim();
  const net = cluster.prefix.replace('::/64', ':');
  assert.ok(ipv6.startsWith(`[${net}`), `address ${ipv6} is in the node's /64 ${cluster.prefix}`);
  const allocationId = (await page.getByTestId('allocation-id').textContent()).trim();
  allocation = await api(`/v1/allocations/${allocationId}`);
  assert.equal(allocation.session_id, 'browser-session-1');
  // It is listed with a lease countdown, and its cost so far beside it (the pool has a price).
  const listed = page.locator(`[data-allocation="${allocationId}"]`);
  await listed.getByText(/^\d+:\d\d$/).waitFor();
  await listed.getByTestId('allocation-cost').getByText(/^· 0\.\d{4}$/).waitFor();

  // The containers view shows it allocated, with the same address.
  await go(page, '#/containers?state=allocated');
  const row = page.locator(`tr[data-container="${allocation.container_id}"]`);
  await row.waitFor();
  assert.equal(await row.getAttribute('data-state'), 'allocated');
  assert.equal((await row.getByTestId('ipv6').textContent()).trim(), ipv6);
  // Its details list its events.
  await row.getByRole('link').first().click();
  await page.getByTestId('detail-ipv6').getByText(ipv6).waitFor();
  await page.getByTestId('container-events').locator('li[data-kind="container_allocated"]').waitFor();
  await shot(page, 'container-detail-desktop');
});

test('async allocation from the UI: shown pending, cancelled from its row', async () => {
  await go(page, '#/allocations');
  const form = page.getByTestId('allocate-form');
  await form.getByLabel('Pool').fill('later');
  await form.getByLabel('Session id').fill('browser-async-1');
  await page.getByTestId('allocate-async').check();
  await page.getByTestId('allocate-button').click();
  await page.getByTestId('allocate-pending').waitFor();
  const id = (await page.getByTestId('allocate-pending').getByTestId('allocation-id').textContent()).trim();
  assert.equal((await api(`/v1/allocations/${id}`)).state, 'pending');
  const row = page.locator(`tr[data-allocation="${id}"]`);
  await row.waitFor();
  assert.equal(await row.getAttribute('data-state'), 'pending');
  await row.getByText('pending', { exact: true }).waitFor();
  await page.getByTestId('allocations-summary').getByText(/1 pending/).waitFor();
  await row.getByRole('button', { name: 'Cancel' }).click();
  await waitFor('the cancelled one to leave the list', async () => (await row.count()) === 0, 5000);
  await page.getByTestId('release-result').getByText(/^Cancelled /).waitFor();
  // A bad location is explained before anything is sent.
  await form.getByLabel('Location').fill('region');
  await page.getByTestId('allocate-button').click();
  await page.getByText(/Location: "region" is not label=value/).waitFor();
  await form.getByLabel('Location').fill('');
  await page.getByTestId('allocate-async').uncheck();
});

test('release from the UI: the container_released event shows in the live event log', async () => {
  await go(page, '#/allocations');
  const row = page.locator(`[data-allocation="${allocation.id}"]`);
  await row.getByTestId('release-button').click();
  await page.getByTestId('release-result').getByText(/^Released/).waitFor();
  await waitFor('the allocation to leave the active list', async () => (await row.count()) === 0, 5000);

  await go(page, '#/events?kind=container_released');
  await page
    .getByTestId('events-table')
    .locator(`tr[data-kind="container_released"]`)
    .filter({ hasText: allocation.container_id.slice(-8) })
    .waitFor();
  // A live tail: an event that happens now appears without reloading.
  await go(page, '#/events');
  const a = await post(1, '/v1/allocations', { pool: 'demo', session_id: 'tail-check' });
  await page.getByTestId('events-table').locator('tr[data-kind="container_allocated"]').filter({ hasText: 'tail-check' }).waitFor({
    timeout: 3000,
  });
  await apiVia(1, `/v1/allocations/${a.id}`, { method: 'DELETE' });
  await page.getByTestId('events-table').locator('tr[data-kind="container_released"]').filter({ hasText: 'tail-check' }).waitFor({
    timeout: 3000,
  });
});

test('events: a session filter shows only its events; older pages load below, in order', async () => {
  // More history than one page (100): pools made and deleted at once.
  for (let i = 0; i < 60; i++) {
    await api('/v1/pools', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ name: `page${i}`, image: 'warmpool-demo:latest' }),
    });
    await api(`/v1/pools/page${i}`, { method: 'DELETE' });
  }
  const table = page.getByTestId('events-table');
  const seqs = () => table.locator('tbody tr').evaluateAll((rows) => rows.map((r) => Number(r.dataset.seq)));

  await go(page, `#/events?session=${encodeURIComponent(allocation.session_id)}`);
  await table.locator('tr[data-kind="container_released"]').waitFor();
  const sessions = await table.locator('tbody td[data-label="Session"]').allTextContents();
  assert.ok(sessions.length >= 2, `the session's events: ${sessions}`);
  assert.ok(sessions.every((x) => x.trim() === allocation.session_id), `only that session's: ${sessions}`);

  await go(page, '#/events');
  await waitFor('a full page', async () => (await seqs()).length >= 100);
  const first = await seqs();
  await page.getByTestId('older').click();
  await waitFor('an older page', async () => Math.min(...(await seqs())) < Math.min(...first));
  const all = await seqs();
  assert.ok(all.length > first.length, `a second page: ${all.length} rows after ${first.length}`);
  assert.ok(all.every((x, i) => i === 0 || x < all[i - 1]), 'newest first, no duplicates');
});

test('errors read well: an unknown pool, and a pool at its max_total', async () => {
  await go(page, '#/allocations');
  const form = page.getByTestId('allocate-form');
  // Keyboard only: type and press Enter.
  await form.getByLabel('Pool').fill('nope');
  await form.getByLabel('Pool').press('Enter');
  await page.getByTestId('allocate-error').getByText('Could not allocate from pool "nope": no pool named "nope".').waitFor();
  await page.getByTestId('allocate-error').getByText(/Known pools: .*demo/).waitFor();

  // tiny has max_total 1: the first allocation takes its only container, the second waits
  // 500 ms and gets 503 no_capacity.
  await form.getByLabel('Pool').fill('tiny');
  await form.getByLabel('Wait for a warm one').fill('500');
  await page.getByTestId('allocate-button').click();
  await page.getByTestId('allocate-result').waitFor();
  const first = (await page.getByTestId('allocation-id').textContent()).trim();
  await page.getByTestId('allocate-button').click();
  const err = page.getByTestId('allocate-error');
  await err.getByText(/^No capacity to allocate from pool "tiny": no warm container of pool "tiny" became free within 500 ms/).waitFor();
  await err.getByText(/retry after 1 s/).waitFor();
  await err.getByText(/at its max_total: 1 of 1 containers are live/).waitFor();
  await shot(page, 'allocations-error-desktop');
  await api(`/v1/allocations/${first}`, { method: 'DELETE' });
  await form.getByLabel('Wait for a warm one').fill('2000');
});

test('an allocation whose answer is lost: the retry gets the same allocation, not a second', async () => {
  await go(page, '#/allocations');
  const form = page.getByTestId('allocate-form');
  await form.getByLabel('Pool').fill('demo');
  await form.getByLabel('Session id').fill('');
  await form.getByLabel('Idempotency key').fill('');
  // The first request reaches the server and is carried out; its answer never comes back.
  const keys = [];
  let made = null;
  await page.route('**/v1/allocations', async (r) => {
    if (r.request().method() !== 'POST') return r.continue();
    keys.push(JSON.parse(r.request().postData()).idempotency_key);
    if (made) return r.continue();
    made = await (await r.fetch()).json();
    return r.abort('connectionreset');
  });
  await page.getByTestId('allocate-button').click();
  const err = page.getByTestId('allocate-error');
  await err.getByText(/connection lost/).waitFor();
  await err.getByText(/press Allocate again to find out/).waitFor();
  assert.ok(made?.id, 'the server made an allocation');
  await page.getByTestId('allocate-button').click();
  await page.getByTestId('allocate-result').waitFor();
  await page.unroute('**/v1/allocations');
  assert.equal((await page.getByTestId('allocation-id').textContent()).trim(), made.id);
  assert.equal(keys.length, 2);
  assert.ok(keys[0] && keys[0] === keys[1], `the retry carried the same key: ${keys}`);
  const active = await api(`/v1/allocations?state=active`);
  assert.equal(active.filter((a) => a.idempotency_key === keys[0]).length, 1, 'one allocation for the key');
  await api(`/v1/allocations/${made.id}`, { method: 'DELETE' });
});

test('live: a change made through another member shows within a second', async () => {
  await go(page, '#/containers');
  await page.getByTestId('containers-table').waitFor();
  const t0 = Date.now();
  const a = await post(2, '/v1/allocations', { pool: 'demo', session_id: 'elsewhere' });
  const answered = Date.now();
  await page.locator(`tr[data-container="${a.container_id}"][data-state="allocated"]`).waitFor({ timeout: 5000 });
  const seen = Date.now();
  console.log(`# allocation through member 3 answered in ${answered - t0} ms; the page showed it ${seen - answered} ms later`);
  assert.ok(seen - answered < 1000, `shown ${seen - answered} ms after the answer`);
  await apiVia(2, `/v1/allocations/${a.id}`, { method: 'DELETE' });
  await page.locator(`tr[data-container="${a.container_id}"][data-state="releasing"], tr[data-container="${a.container_id}"][data-state="terminated"]`).first().waitFor({ timeout: 3000 }).catch(() => {});
});

/**
 * When a line with `marker` first shows among the pane's `stream` lines, by the page's clock
 * (a MutationObserver, so no polling interval is added to what is measured); rejects after
 * `timeoutMs`.
 */
function lineShownAt(p, marker, stream, timeoutMs = 5000) {
  return p.evaluate(
    ([m, s, ms]) =>
      new Promise((resolve, reject) => {
        const box = document.querySelector('[data-testid="log-lines"]');
        if (!box) return reject(new Error('no log pane on the page'));
        const has = () => [...box.querySelectorAll(`[data-stream="${s}"]`)].some((e) => e.textContent.includes(m));
        if (has()) return resolve(Date.now());
        const timer = setTimeout(() => {
          obs.disconnect();
          reject(new Error(`no ${s} line with ${m} within ${ms} ms`));
        }, ms);
        const obs = new MutationObserver(() => {
          if (!has()) return;
          obs.disconnect();
          clearTimeout(timer);
          resolve(Date.now());
        });
        obs.observe(box, { childList: true, subtree: true, characterData: true });
      }),
    [marker, stream, timeoutMs],
  );
}

const unique = (prefix) => `${prefix}-${Date.now().toString(36)}${Math.random().toString(16).slice(2, 8)}`;

test('live log pane: a line the container prints shows within a second; stderr apart, dropped lines marked, pause, scroll, ends at release', async () => {
  const a = await post(0, '/v1/allocations', { pool: 'demo', session_id: unique('logs'), wait_ms: 5000 });
  let released = false;
  const logRequests = [];
  const onRequest = (r) => {
    if (r.url().includes(`/v1/allocations/${a.id}/logs`)) logRequests.push(r.url());
  };
  page.on('request', onRequest);
  const exec = async (script) => {
    const r = await post(0, `/v1/allocations/${a.id}/exec`, { command: ['sh', '-c', script], timeout_secs: 30 });
    assert.equal(r.exit_code, 0, `exec ${script}: ${JSON.stringify(r)}`);
    return r;
  };
  try {
    await go(page, `#/containers/${a.container_id}`);
    const pane = page.getByTestId('log-pane');
    const lines = pane.getByTestId('log-lines');
    await pane.locator('[data-testid="log-state"][data-state="open"]').waitFor({ timeout: 10000 });
    assert.equal(await pane.getByTestId('log-tail').inputValue(), '100');

    // PID 1's stdout and stderr are what Docker logs (as tests/tests/session_io.rs does). The
    // line carries the container's wall clock as it prints (adjtimex: seconds, and the
    // fraction in ns when the status has STA_NANO, else in µs): the same clock as the page's.
    const marker = unique('marker');
    const shown = lineShownAt(page, marker, 'stdout');
    const sent = Date.now();
    await exec(
      `set -- $(adjtimex | awk '/status:|tv_sec:|tv_usec:/ {print $2}'); echo "${marker} $1 $2 $3" > /proc/1/fd/1; echo ${marker}-err > /proc/1/fd/2`,
    );
    const answered = Date.now();
    const seen = await shown;
    const text = (await lines.locator('[data-stream="stdout"]', { hasText: marker }).textContent()).trim();
    const [, status, sec, frac] = text.split(/\s+/);
    const printed = Number(sec) * 1000 + Number(frac) / (Number(status) & 0x2000 ? 1e6 : 1e3);
    const latency = seen - printed;
    console.log(
      `# the line printed in the container was on the page ${latency.toFixed(0)} ms later ` +
        `(the exec was sent ${seen - sent} ms before it showed, and answered ${answered - seen} ms after)`,
    );
    assert.ok(Number.isFinite(latency), `a time in the line: ${text}`);
    assert.ok(latency > -50 && latency < 1000, `shown ${latency.toFixed(0)} ms after it was printed`);
    // stderr is told apart: its own data-stream, and a visible "err" tag.
    const err = lines.locator('[data-stream="stderr"]', { hasText: `${marker}-err` });
    await err.waitFor({ timeout: 3000 });
    assert.equal(await err.locator('.tag').textContent(), 'err');
    await shot(page, 'container-logs-desktop');

    // A burst over the rate cap (1,000 lines a second, bursts of 2,000): a marker says how
    // many were left out, the pane stays bounded, and it follows the newest line.
    await exec('seq 1 6000 > /proc/1/fd/1');
    const dropped = pane.getByTestId('log-dropped').first();
    await dropped.waitFor({ timeout: 10000 });
    assert.ok(Number(await dropped.getAttribute('data-count')) > 0);
    assert.match(await dropped.textContent(), /[\d,]+ lines? dropped/);
    const atBottom = () => lines.evaluate((b) => b.scrollTop + b.clientHeight >= b.scrollHeight - 8);
    await waitFor('the pane to follow the newest line', atBottom, 3000);
    assert.ok((await lines.locator(':scope > div').count()) <= 5000);
    await shot(page, 'container-logs-dropped-desktop');

    // Scrolled up, it stays where the reader is; "Jump to newest" brings it back.
    await lines.evaluate((b) => {
      b.scrollTop = 0;
      b.dispatchEvent(new Event('scroll'));
    });
    await pane.getByTestId('log-jump').waitFor({ timeout: 2000 });
    const up = unique('while-up');
    const upShown = lineShownAt(page, up, 'stdout');
    await exec(`echo ${up} > /proc/1/fd/1`);
    await upShown;
    assert.equal(await lines.evaluate((b) => b.scrollTop), 0, 'no jump while the reader is scrolled up');
    await pane.getByTestId('log-jump').click();
    await waitFor('back at the newest line', atBottom, 2000);

    // Paused, new lines are counted, not shown; resumed, they are there.
    await pane.getByTestId('log-pause').click();
    const held = unique('held');
    await exec(`echo ${held} > /proc/1/fd/1`);
    await pane.getByTestId('log-paused-new').waitFor({ timeout: 3000 });
    assert.equal(await lines.getByText(held).count(), 0, 'not shown while paused');
    await pane.getByTestId('log-pause').click();
    await lines.getByText(held).waitFor({ timeout: 2000 });

    // Leaving the page ends the request; coming back follows again.
    const aborted = page.waitForEvent('requestfailed', { predicate: (r) => r.url().includes(`/v1/allocations/${a.id}/logs`), timeout: 5000 });
    await go(page, '#/containers');
    await aborted;
    await go(page, `#/containers/${a.container_id}`);
    await pane.locator('[data-testid="log-state"]:not([data-state="connecting"])').waitFor({ timeout: 10000 });
    assert.equal(await pane.getByTestId('log-state').getAttribute('data-state'), 'open', await pane.textContent());
    assert.equal(logRequests.length, 2, `one request per visit: ${logRequests}`);

    // At phone width the pane fits: long lines wrap, nothing scrolls sideways.
    await page.setViewportSize(PHONE);
    try {
      await waitFor('no sideways scrolling at 375 px', () =>
        page.evaluate(() => document.documentElement.scrollWidth <= document.documentElement.clientWidth), 3000);
      await shot(page, 'container-logs-phone');
    } finally {
      await page.setViewportSize(DESKTOP);
    }

    // Released: the output ends, the pane says so once and keeps what it read.
    await api(`/v1/allocations/${a.id}`, { method: 'DELETE' });
    released = true;
    await pane.getByTestId('log-ended').waitFor({ timeout: 10000 });
    await lines.getByText(held).waitFor();
    assert.equal(logRequests.length, 2, `no reconnect after the end: ${logRequests}`);
  } finally {
    page.off('request', onRequest);
    if (!released) await api(`/v1/allocations/${a.id}`, { method: 'DELETE' }).catch(() => {});
  }
});

test('nodes: cordon and uncordon, shown live', async () => {
  await go(page, '#/nodes');
  const card = page.locator(`section[data-node="${cluster.node}"]`);
  // What placement may still reserve, and how many containers the agent starts at once.
  const view = (await api('/v1/nodes')).find((n) => n.id === cluster.node);
  await card.getByTestId('create-slots').getByText(`${view.create_slots} containers`).waitFor();
  assert.match(await card.getByTestId('cpu-reserved').textContent(), /reserved [\d.]+ cores? of [\d.]+ cores placeable/);
  await card.getByTestId('heartbeat-age').waitFor();
  await card.getByTestId('cordon').click();
  await card.getByTestId('node-result').getByText(`Node ${cluster.node} cordoned.`).waitFor();
  await card.locator('.badge', { hasText: 'cordoned' }).waitFor();
  assert.equal((await api('/v1/nodes')).find((n) => n.id === cluster.node).status, 'cordoned');
  await card.getByTestId('uncordon').click();
  await card.locator('.badge', { hasText: 'ready' }).waitFor();
  // The drain button asks before it acts.
  await card.getByTestId('drain').click();
  await card.getByRole('button', { name: 'Confirm drain' }).waitFor();
  await card.getByRole('button', { name: 'Cancel' }).click();
  assert.equal((await api('/v1/nodes')).find((n) => n.id === cluster.node).status, 'ready');
  // A drain with a deadline for the allocations still there: a bad one is refused in words,
  // a good one is sent and shown; uncordoning ends the drain.
  await card.getByTestId('drain').click();
  await card.getByTestId('drain-minutes').fill('soon');
  await card.getByRole('button', { name: 'Confirm drain' }).click();
  await card.getByRole('alert').getByText(/a number of minutes/).waitFor();
  assert.equal((await api('/v1/nodes')).find((n) => n.id === cluster.node).status, 'ready');
  await card.getByTestId('drain-minutes').fill('10');
  const asked = Date.now();
  await card.getByRole('button', { name: 'Confirm drain' }).click();
  await card.getByTestId('node-result').getByText(`Node ${cluster.node} draining.`).waitFor();
  await card.getByTestId('drain-deadline').getByText(/released at/).waitFor();
  const drained = (await api('/v1/nodes')).find((n) => n.id === cluster.node);
  assert.equal(drained.status, 'draining');
  const left = Date.parse(drained.drain_deadline) - asked;
  assert.ok(left > 590_000 && left < 610_000, `deadline in ${left} ms, not about 10 minutes`);
  await card.getByTestId('uncordon').click();
  await card.locator('.badge', { hasText: 'ready' }).waitFor();
  assert.equal((await api('/v1/nodes')).find((n) => n.id === cluster.node).drain_deadline, undefined);
});

test('restart the member serving the page: the view says it is disconnected, then recovers by itself', async () => {
  await go(page, '#/events');
  await page.getByTestId('conn-state').getByText('Live').waitFor();
  await cluster.stopMember(0, 'SIGKILL');
  const banner = page.getByTestId('disconnected-banner');
  await banner.waitFor({ timeout: 5000 });
  await banner.getByText(/Disconnected from the control plane/).waitFor();
  await page.getByTestId('conn-state').getByText('Disconnected').waitFor();
  await shot(page, 'disconnected-desktop');
  // Meanwhile the cluster goes on: an allocation through member 2 while member 1 is down.
  let during;
  await waitFor('a new leader to take an allocation', async () => {
    during = await post(1, '/v1/allocations', { pool: 'demo', session_id: 'while-down', wait_ms: 2000, idempotency_key: 'while-down' });
    return true;
  }, 20000);
  await cluster.startMember(0);
  await banner.waitFor({ state: 'detached', timeout: 20000 });
  await page.getByTestId('conn-state').getByText('Live').waitFor();
  // The event made while the page was cut off arrives (the stream resumes after the last
  // event it saw) and the leader shown follows the new one.
  await page.getByTestId('events-table').locator('tr[data-kind="container_allocated"]').filter({ hasText: 'while-down' }).waitFor({ timeout: 5000 });
  const leader = (await apiVia(0, '/v1/cluster')).leader;
  await go(page, '#/overview');
  await page.getByTestId('leader').getByText(`member ${leader}`).waitFor({ timeout: 5000 });
  await apiVia(1, `/v1/allocations/${during.id}`, { method: 'DELETE' });
});

test('screenshots of every view at phone and desktop widths', async () => {
  // Some traffic first, so the charts have something to show, and the page's next scrape of
  // /metrics after it (every 5 s), which adds a point to the latency chart.
  await go(page, '#/overview');
  const latency = page.getByRole('img', { name: /^milliseconds\./ }).locator('path').first();
  const points = async () => ((await latency.getAttribute('d')) ?? '').split(/[ML]/).length - 1;
  const before = await points();
  const held = [];
  for (let i = 0; i < 8; i++) {
    const a = await post(i % 3, '/v1/allocations', { pool: 'demo', wait_ms: 5000 });
    held.push(a.id);
    if (i % 2 === 1) await api(`/v1/allocations/${held.shift()}`, { method: 'DELETE' });
  }
  await waitFor('a scrape of /metrics after the traffic', async () => (await points()) > before, 15000);
  for (const [size, tag] of [
    [DESKTOP, 'desktop'],
    [PHONE, 'phone'],
  ]) {
    await page.setViewportSize(size);
    for (const view of ['overview', 'containers', 'allocations', 'events', 'nodes']) {
      await go(page, `#/${view}`);
      await page.locator('main h1').first().waitFor();
      await page.waitForTimeout(400);
      await shot(page, `${view}-${tag}`);
    }
  }
  await page.setViewportSize(DESKTOP);
  // No horizontal scrolling at phone width.
  const phone = await newPage(PHONE, 'phone');
  await phone.goto(cluster.url);
  await signIn(phone, cluster.adminKey);
  for (const view of ['overview', 'containers', 'allocations', 'events', 'nodes']) {
    await go(phone, `#/${view}`);
    await phone.locator('main h1').first().waitFor();
    await phone.waitForTimeout(300);
    const over = await phone.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
    assert.ok(over <= 0, `${view} scrolls sideways by ${over}px at 375 px`);
  }
  await phone.context().close();
});

test('viewer key: sees everything; write buttons are disabled and explained, a 403 reads well', async () => {
  const viewer = await api('/v1/keys', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ name: 'dashboard-viewer', role: 'viewer' }),
  });
  const p = await newPage(DESKTOP, 'viewer');
  // The path for a member without `GET /v1/whoami` (the next test takes the one with it): the
  // role is found out from 403s.
  await p.route('**/v1/whoami', (r) =>
    r.fulfill({ status: 404, contentType: 'application/json', body: '{"error":{"code":"not_found","message":"no route"}}' }),
  );
  await p.goto(cluster.url);
  await signIn(p, viewer.token);
  await p.getByTestId('total-warm').waitFor();
  // Everything reads.
  await go(p, '#/containers');
  await p.getByTestId('containers-table').waitFor();
  await go(p, '#/events');
  await p.getByTestId('events-table').waitFor();
  // The key list is admin-only, so the page knows this key may not touch nodes.
  await go(p, '#/nodes');
  await p.getByTestId('nodes-denied').getByText(/cannot cordon, uncordon or drain nodes; that needs an admin key/).waitFor();
  assert.equal(await p.getByTestId('cordon').isDisabled(), true);
  await p.getByTestId('role').getByText('user or viewer key').waitFor();
  // An allocated container's page: the log pane asks once, gets 403 and says why in words.
  const held = await post(0, '/v1/allocations', { pool: 'demo', session_id: unique('viewer-logs'), wait_ms: 5000 });
  try {
    const asked = [];
    p.on('request', (r) => r.url().includes('/logs') && asked.push(r.url()));
    await go(p, `#/containers/${held.container_id}`);
    await p.getByTestId('log-denied').getByText(/container logs are not shown to viewers/).waitFor({ timeout: 10000 });
    assert.equal(asked.length, 1, `one request, no retry loop: ${asked}`);
    assert.equal(await p.getByTestId('log-lines').count(), 0);
  } finally {
    await api(`/v1/allocations/${held.id}`, { method: 'DELETE' });
  }
  // Allocating is tried; the server's 403 is shown in words, and then the button is disabled
  // with the reason.
  await go(p, '#/allocations');
  await p.getByTestId('allocate-form').getByLabel('Pool').fill('demo');
  await p.getByTestId('allocate-button').click();
  await p
    .getByTestId('allocate-error')
    .getByText('Not allowed to allocate from pool "demo": a viewer key may not POST /v1/allocations; this needs a user key.')
    .waitFor();
  assert.equal(await p.getByTestId('allocate-button').isDisabled(), true);
  await p.getByTestId('allocate-denied').getByText(/a viewer key: it can read everything but not allocate/).waitFor();
  await p.getByTestId('role').getByText('viewer key').waitFor();
  await shot(p, 'viewer-allocations-desktop');

  // Revoking the key sends the page back to sign-in with a message.
  await api(`/v1/keys/${viewer.id}`, { method: 'DELETE' });
  await p.getByTestId('signin-message').getByText(/no longer accepted \(the key was revoked\)/).waitFor({ timeout: 10000 });
  await p.context().close();
});

test('viewer key, role from whoami: write buttons are disabled before anything is tried', async () => {
  const viewer = await api('/v1/keys', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ name: 'dashboard-viewer-2', role: 'viewer' }),
  });
  const p = await newPage(DESKTOP, 'viewer-whoami');
  await p.goto(cluster.url);
  await signIn(p, viewer.token);
  await p.getByTestId('total-warm').waitFor();
  await p.getByTestId('role').getByText('viewer key, tenant default').waitFor();
  await go(p, '#/allocations');
  await p.getByTestId('allocate-denied').getByText(/a viewer key: it can read everything but not allocate/).waitFor();
  assert.equal(await p.getByTestId('allocate-button').isDisabled(), true);
  await go(p, '#/nodes');
  await p.getByTestId('nodes-denied').getByText(/cannot cordon, uncordon or drain nodes; that needs an admin key/).waitFor();
  assert.equal(await p.getByTestId('cordon').isDisabled(), true);
  // Known to be a viewer, the log pane does not even ask.
  const held = await post(0, '/v1/allocations', { pool: 'demo', session_id: unique('viewer-logs'), wait_ms: 5000 });
  try {
    const asked = [];
    p.on('request', (r) => r.url().includes('/logs') && asked.push(r.url()));
    await go(p, `#/containers/${held.container_id}`);
    await p.getByTestId('log-denied').waitFor({ timeout: 10000 });
    assert.deepEqual(asked, []);
  } finally {
    await api(`/v1/allocations/${held.id}`, { method: 'DELETE' });
  }
  await api(`/v1/keys/${viewer.id}`, { method: 'DELETE' });
  await p.context().close();
});

test('auth off: no sign-in, the dashboard opens at once', async () => {
  const plain = new Cluster();
  try {
    await plain.start({ members: 1, agent: false });
    const p = await newPage(DESKTOP, 'auth-off');
    await p.goto(plain.url);
    await p.getByTestId('total-warm').waitFor();
    await p.getByText('auth off').waitFor();
    assert.equal(await p.getByRole('heading', { name: 'Sign in' }).count(), 0);
    await p.getByTestId('conn-state').getByText('Live').waitFor();
    await p.context().close();
  } finally {
    await plain.stop();
  }
});

test('no JavaScript errors in any page', () => {
  assert.deepEqual(problems, []);
});
