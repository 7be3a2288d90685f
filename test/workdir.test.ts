/**
 * The work dir's resume point (src/supervisor/workdir.ts) on real files: the sweep of checkpoints an
 * earlier attempt wrote but never announced recognises the trainer kit's temp names (suffix last,
 * `.tmp-<pid>-<hex>.json`, a suffix a writer appended, `.old-<hex>` backups) and leaves everything
 * else a framework keeps in the checkpoint dir alone.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'node:test';
import { createLogger } from '../src/logger';
import { checkpointDir, chooseResumePoint, writeManifest } from '../src/supervisor/workdir';

test('the unannounced-checkpoint sweep matches the kit temp names and nothing a framework keeps', async () => {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-workdir-'));
  try {
    const ck = checkpointDir(work);
    fs.mkdirSync(path.join(ck, 'runs'), { recursive: true });
    const touch = (n: string) => fs.writeFileSync(path.join(ck, n), n);
    for (const n of ['round-10.json', 'step-4.ckpt']) touch(n);
    writeManifest(work, [
      { step: 10, path: path.join(ck, 'round-10.json'), metrics: {} },
      { step: 4, path: path.join(ck, 'step-4.ckpt'), metrics: {} },
    ]);
    const swept = ['round-15.json', '.round-15.tmp-123-abcdef12.json', '.round-15.json.tmp-9-ab', '.round-20.old-0a1b2c3d.json', '.step-5.tmp-5-aa.ckpt.npy'];
    const kept = ['trainer_state.json', 'round-15.json.bak', 'model.json', 'notes.txt'];
    for (const n of [...swept, ...kept]) touch(n);
    const log = createLogger({ name: 'test', level: 'silent', pretty: false });
    const r = await chooseResumePoint(work, { heartbeat: null, resumeFrom: null, isPinned: () => false, log, gen: Date.now() });
    assert.equal(r.resumedFrom?.step, 10);
    const left = fs.readdirSync(ck).sort();
    assert.deepEqual(left, ['round-10.json', 'step-4.ckpt', 'runs', ...kept].sort());
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
});
