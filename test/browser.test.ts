/**
 * The Temporal Web UI, checked in a real headless Chromium: a dev server started WITH its UI, real jobs,
 * the workflow list filtered by the KilnModel search attribute through the URL, and a job's page with
 * its static summary, live current details, activity summary and Kiln search attributes.
 * Skipped (with the reason) only when /usr/bin/chromium is absent; `.ci/run` installs it.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Browser, Page } from 'playwright-core';
import { progressQuery } from '../src/shared/messages';
import { staticSummary } from '../src/shared/spec';
import { buildSpec } from '../src/config/spec';
import { freePort, startDevServer, type DevServer } from '../src/temporal/devServer';
import { BLOBS_MODEL, SPIRALS_MODEL } from './helpers/fixtures';
import { defaultConfigYaml, startKilnEnv, temporalBinary, waitFor, type KilnTestEnv } from './helpers/kiln';

const CHROMIUM = '/usr/bin/chromium';
const SKIP = fs.existsSync(CHROMIUM) ? false : `Chromium is not installed at ${CHROMIUM}: apt-get install chromium (.ci/run does) to run the Web UI check`;
const SHOTS = path.join(os.tmpdir(), 'kiln-browser-test');

const MODELS = [SPIRALS_MODEL, BLOBS_MODEL].join('\n');

/** Text of the page and every frame: the UI renders summaries and details in sandboxed iframes. */
async function allText(page: Page): Promise<string> {
  const parts: string[] = [];
  for (const f of page.frames()) {
    try {
      parts.push(String(await f.evaluate('document.body ? document.body.innerText : ""')));
    } catch {
      /* a frame that navigated away meanwhile */
    }
  }
  // The UI's markdown renderer typesets "6/200" with a fraction slash (U+2044).
  return parts.join('\n').replace(/\u2044/g, '/');
}

async function waitForText(page: Page, what: string, test: (text: string) => boolean, timeoutMs = 30_000, reload = false): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  let text = '';
  let lastReload = Date.now();
  while (Date.now() < deadline) {
    text = await allText(page);
    if (test(text)) return text;
    // A page the UI has not rendered yet (empty: its scripts still load, slow on a busy machine) is
    // left to render; reloading it would start over.
    if (reload && text.trim() !== '' && Date.now() - lastReload > 5000) {
      lastReload = Date.now();
      await page.reload({ waitUntil: 'domcontentloaded' });
    }
    await new Promise((r) => setTimeout(r, 300));
  }
  throw new Error(`the page did not show ${what} within ${timeoutMs} ms; it shows:\n${text.slice(-3000)}`);
}

describe('Temporal Web UI (headless Chromium)', { skip: SKIP }, () => {
  let server: DevServer;
  let env: KilnTestEnv;
  let browser: Browser;
  let ui: string;
  const savedAddress = process.env.TEMPORAL_ADDRESS;

  before(async () => {
    fs.mkdirSync(SHOTS, { recursive: true });
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-ui-server-'));
    // The harness's createLocal server is headless; this one serves the UI.
    server = await startDevServer({
      binary: temporalBinary(),
      dbFile: path.join(dir, 'temporal.sqlite'),
      ip: '127.0.0.1',
      port: await freePort(),
      uiPort: await freePort(),
      metricsPort: 0,
      namespace: 'default',
      logFile: path.join(dir, 'server.log'),
    });
    ui = server.uiUrl!;
    await waitFor(async () => (await fetch(ui)).ok, 30_000, 'the Web UI answering');
    process.env.TEMPORAL_ADDRESS = server.address;
    env = await startKilnEnv(defaultConfigYaml({ models: MODELS }));
    await env.startControlWorker();
    await env.startGpuWorker({ pool: 'gpu', slots: 2 });
    const { chromium } = await import('playwright-core');
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic', '--no-first-run', '--disable-component-update', '--disable-sync'],
    });
  });

  after(async () => {
    await browser?.close();
    await env?.cleanup();
    await server?.stop();
    if (savedAddress === undefined) delete process.env.TEMPORAL_ADDRESS;
    else process.env.TEMPORAL_ADDRESS = savedAddress;
  });

  test('the workflow list filtered by KilnModel in the URL shows that model\'s jobs and no other', async () => {
    const blobs = await env.submit('blobs');
    await blobs.result();
    const spirals = await env.submit('spirals');
    await spirals.result();
    const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
    try {
      await page.goto(`${ui}/namespaces/default/workflows?query=${encodeURIComponent('KilnModel="blobs"')}`, { waitUntil: 'domcontentloaded' });
      const text = await waitForText(page, `job ${blobs.workflowId}`, (t) => t.includes(blobs.workflowId), 30_000, true);
      await page.screenshot({ path: path.join(SHOTS, 'list-filtered.png') });
      assert.match(text, /KilnModel = "blobs"/, 'the filter is applied from the URL');
      assert.ok(!text.includes(spirals.workflowId), `the spirals job is filtered out:\n${text.slice(0, 2000)}`);
      assert.match(text, /COMPLETED/);
      assert.match(text, /TrainingJob/);
    } finally {
      await page.close();
    }
  });

  test("a running job's page: readable id, static summary, live current details, activity summary, Kiln search attributes", async () => {
    const h = await env.submit('spirals', { params: { epochs: 200, step_delay_ms: 50 } });
    const summary = staticSummary(buildSpec(env.config, 'spirals', { params: { epochs: 200, step_delay_ms: 50 } }));
    await waitFor(async () => (await h.query(progressQuery)).step > 0, 60_000, 'training started', 200);
    const runId = (await h.describe()).runId;
    const base = `${ui}/namespaces/default/workflows/${h.workflowId}/${runId}`;
    const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
    try {
      await page.goto(`${base}/user-metadata`, { waitUntil: 'domcontentloaded' });
      // The UI reads Current Details once per page load (a metadata query the worker answers; "press R
      // for freshness"): a load whose query was slow shows none, so reload until it is there.
      const meta = await waitForText(page, 'the static summary and the progress line', (t) => t.includes(summary) && /epoch \d+\/200 · step \d+\/2000 · loss \d/.test(t), 30_000, true);
      await page.screenshot({ path: path.join(SHOTS, 'job-user-metadata.png') });
      assert.match(h.workflowId, /^train-spirals-[a-z0-9]{6}$/);
      assert.ok(meta.includes(h.workflowId), 'the readable workflow id is the page title');
      assert.match(meta, /Summary/);
      assert.match(meta, /Current Details/);
      assert.match(meta, /Kiln training job for model spirals/, 'static details');

      await page.goto(base, { waitUntil: 'domcontentloaded' });
      await waitForText(page, 'the train activity summary', (t) => t.includes('train spirals (example)'));
      await page.screenshot({ path: path.join(SHOTS, 'job-timeline.png') });

      await page.goto(`${base}/search-attributes`, { waitUntil: 'domcontentloaded' });
      const sa = await waitForText(page, 'the Kiln search attributes', (t) => /"KilnPhase": "training"/.test(t));
      assert.match(sa, /"KilnModel": "spirals"/);
      assert.match(sa, /"KilnTrigger": "manual"/);

      // Why it ended, on the job's own page once it is Canceled.
      await h.signal('cancel', { reason: 'browser test done' });
      await h.result().catch(() => undefined);
      await page.goto(`${base}/user-metadata`, { waitUntil: 'domcontentloaded' });
      await waitForText(page, 'the end reason in Current Details', (t) => t.includes('cancelled: browser test done (by the cancel signal)'), 30_000, true);
      await page.screenshot({ path: path.join(SHOTS, 'job-cancelled.png') });
    } finally {
      await page.close();
      // Already ended when the test got this far; otherwise stop it here.
      await h.signal('cancel', { reason: 'browser test done' }).catch(() => undefined);
      await h.result().catch(() => undefined);
    }
  });

  test("a job waiting for a slot: its page shows the queued phase, with the pool's use, in Current Details and KilnPhase", async () => {
    const long = { params: { epochs: 200, step_delay_ms: 50 } };
    // The pool has one worker with 2 slots: two jobs take them, the third waits.
    const busy = [await env.submit('spirals', long), await env.submit('spirals', long)];
    const jobs = [...busy];
    const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
    try {
      for (const b of busy) await waitFor(async () => (await b.query(progressQuery)).step > 0, 60_000, `${b.workflowId} training`, 200);
      const h = await env.submit('spirals', long);
      jobs.push(h);
      await waitFor(async () => /^queued: waiting for a slot in pool gpu \(2\/2 busy/.test((await h.query(progressQuery)).line), 60_000, 'the third job queued with the pool use', 300);
      const base = `${ui}/namespaces/default/workflows/${h.workflowId}/${(await h.describe()).runId}`;
      await page.goto(`${base}/user-metadata`, { waitUntil: 'domcontentloaded' });
      const meta = await waitForText(page, 'the queued line in Current Details', (t) => t.includes('queued: waiting for a slot in pool gpu (2/2 busy, 1 live worker)'), 30_000, true);
      await page.screenshot({ path: path.join(SHOTS, 'job-queued.png') });
      assert.match(meta, /Current Details/);
      await page.goto(`${base}/search-attributes`, { waitUntil: 'domcontentloaded' });
      await waitForText(page, 'KilnPhase queued', (t) => /"KilnPhase": "queued"/.test(t), 30_000, true);
    } finally {
      await page.close();
      for (const j of jobs) await j.signal('cancel', { reason: 'browser test done' }).catch(() => undefined);
      for (const j of jobs) await j.result().catch(() => undefined);
    }
  });
});
