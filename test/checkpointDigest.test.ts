/**
 * Checkpoint hashing does not stall the event loop: a 512 MiB checkpoint (a sparse file on the tmp
 * disk, plus real bytes at its start, middle and end) is hashed while perf_hooks measures the event
 * loop's delay. The bound is about correctness (no multi-second block, as a synchronous hash of that
 * size is on a loaded machine), not speed; the sha256 is checked against coreutils' sha256sum, and a
 * size above the old 256 MiB size-only limit gets a full sha256 that catches an overwrite.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { test } from 'node:test';
import { checkpointMismatch, digestCheckpoint, digestSmallCheckpoint } from '../src/supervisor/checkpointDigest';

const SIZE = 512 * 1024 * 1024;
/** No single turn of the event loop may wait this long while hashing (heartbeats, shim pings run meanwhile). */
const MAX_BLOCK_MS = 2000;

test('a 512 MiB checkpoint gets a full sha256 without blocking the event loop', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-digest-large-'));
  const file = path.join(dir, 'step-100.ckpt');
  try {
    const fd = fs.openSync(file, 'w');
    fs.ftruncateSync(fd, SIZE);
    for (const at of [0, SIZE / 2, SIZE - 4096]) fs.writeSync(fd, Buffer.alloc(4096, at % 251), 0, 4096, at);
    fs.closeSync(fd);

    const delay = monitorEventLoopDelay({ resolution: 10 });
    let ticks = 0;
    const ticker = setInterval(() => (ticks += 1), 50);
    let reported = 0;
    delay.enable();
    const t0 = performance.now();
    const d = await digestCheckpoint(file, { onProgress: (done) => (reported = done) });
    const ms = performance.now() - t0;
    delay.disable();
    clearInterval(ticker);
    const maxMs = delay.max / 1e6;
    console.log(`  hashed ${SIZE >> 20} MiB in ${Math.round(ms)} ms; event-loop delay max ${Math.round(maxMs)} ms, p99 ${Math.round(delay.percentile(99) / 1e6)} ms; ${ticks} ticks of 50 ms ran; load ${os.loadavg().map((l) => l.toFixed(1)).join(' ')}`);

    assert.equal(d.bytes, SIZE);
    assert.equal(d.sha256, execFileSync('sha256sum', [file], { encoding: 'utf8' }).split(' ')[0], 'the same sha256 as coreutils');
    assert.equal(reported, SIZE, 'progress reported up to the whole size');
    assert.ok(maxMs < MAX_BLOCK_MS, `the event loop was blocked for ${Math.round(maxMs)} ms at once while hashing (bound ${MAX_BLOCK_MS} ms)`);
    assert.ok(ticks > 0, 'timers ran while hashing');
    assert.equal(digestSmallCheckpoint(file), null, 'too large for the one-pass hash');

    // Above the old 256 MiB limit the sha256 is recorded, so an overwrite of the same size is caught.
    assert.equal(await checkpointMismatch(file, d), null, 'intact');
    const w = fs.openSync(file, 'r+');
    fs.writeSync(w, Buffer.from('overwritten'), 0, 11, SIZE / 2 + 100);
    fs.closeSync(w);
    assert.match((await checkpointMismatch(file, d)) ?? '', /its sha256 is .* when it was verified \(overwritten\)/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  assert.equal(fs.existsSync(dir), false, 'nothing left on tmp');
});
