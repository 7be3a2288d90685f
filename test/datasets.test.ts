/**
 * Dataset versions (src/datasets): where data may live, and each resolver on real files, real child
 * processes and a real S3-API server (moto). No Temporal server needed: the activity side is covered
 * in bad-input and schedules tests.
 */
import { after, before, describe, test } from 'node:test';
import * as assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { CreateBucketCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { parseConfigText, type KilnConfig } from '../src/config/load';
import { DatasetRefused, DatasetUnavailable, resolveDatasetVersion } from '../src/datasets';
import { motoCommand, startMoto, type MotoServer } from './helpers/moto';

const GiB = 2 ** 30;

function configIn(dir: string, extra = ''): KilnConfig {
  const text = `version: 1
trainers:
  t: { command: [node, t.mjs] }
models:
  m: { trainer: t, dataset: data }
${extra}`;
  return parseConfigText(text, path.join(dir, 'temporal.yaml'), {});
}

const refused = (re: RegExp) => (e: unknown) => e instanceof DatasetRefused && re.test(e.message);
const unavailable = (re: RegExp) => (e: unknown) => e instanceof DatasetUnavailable && re.test(e.message);

describe('datasets', () => {
  let dir: string;
  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-datasets-'));
    fs.mkdirSync(path.join(dir, 'data'));
    fs.writeFileSync(path.join(dir, 'data', 'a.csv'), 'x,y\n1,2\n');
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  test('paths outside the roots, FIFOs, devices and escaping symlinks are refused with the fix', async () => {
    const c = configIn(dir);
    await assert.rejects(resolveDatasetVersion(c, 'file:///etc/shadow'), refused(/resolves to \/etc\/shadow, outside the allowed dataset roots \(datasets\.roots: .*\); move the data under a root or add its folder to datasets\.roots/));
    await assert.rejects(resolveDatasetVersion(c, '../../etc/passwd'), refused(/outside the allowed dataset roots/));
    await assert.rejects(resolveDatasetVersion(c, 'data/missing.csv'), refused(/not found at .*data\/missing\.csv/));
    execFileSync('mkfifo', [path.join(dir, 'data', 'pipe')]);
    try {
      await assert.rejects(resolveDatasetVersion(c, 'data/pipe'), refused(/is a FIFO \(named pipe\); Kiln reads only regular files and folders/));
      // Inside a folder too: the walk refuses it instead of blocking on open().
      await assert.rejects(resolveDatasetVersion(c, 'data'), refused(/pipe is a FIFO/));
    } finally {
      fs.rmSync(path.join(dir, 'data', 'pipe'));
    }
    fs.symlinkSync('/etc', path.join(dir, 'data', 'etc'));
    try {
      await assert.rejects(resolveDatasetVersion(c, 'data'), refused(/etc is a symlink that leads outside the allowed dataset roots/));
    } finally {
      fs.rmSync(path.join(dir, 'data', 'etc'));
    }
    if (process.getuid?.() === 0) {
      execFileSync('mknod', [path.join(dir, 'null-dev'), 'c', '1', '3']);
      try {
        await assert.rejects(resolveDatasetVersion(c, 'null-dev'), refused(/is a device file/));
      } finally {
        fs.rmSync(path.join(dir, 'null-dev'));
      }
    }
    // A root that allows it: the same absolute path is then fine.
    const other = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-datasets-root-'));
    try {
      fs.writeFileSync(path.join(other, 'f.bin'), 'abc');
      const ok = configIn(dir, `datasets:\n  roots: [., ${other}]\n`);
      assert.equal((await resolveDatasetVersion(ok, `file://${other}/f.bin`)).resolver, 'metadata');
    } finally {
      fs.rmSync(other, { recursive: true, force: true });
    }
  });

  test('metadata: a 3 GiB sparse file is versioned without reading it; a touch or an append is new data, nothing else is', async () => {
    const big = path.join(dir, 'data', 'big.bin');
    fs.closeSync(fs.openSync(big, 'w'));
    fs.truncateSync(big, 3 * GiB);
    try {
      const c = configIn(dir);
      const v1 = await resolveDatasetVersion(c, 'data');
      assert.equal(v1.resolver, 'metadata');
      assert.match(v1.fingerprint, /^[0-9a-f]{16}$/);
      assert.match(v1.detail, /^2 files, 3\.0 GiB \(metadata\)$/);
      assert.equal((await resolveDatasetVersion(c, 'data')).fingerprint, v1.fingerprint, 'unchanged data: same version');
      fs.appendFileSync(path.join(dir, 'data', 'a.csv'), '3,4\n');
      const v2 = await resolveDatasetVersion(c, 'data');
      assert.notEqual(v2.fingerprint, v1.fingerprint, 'appended: new version');
      const t = new Date(Date.now() + 5000);
      fs.utimesSync(big, t, t);
      assert.notEqual((await resolveDatasetVersion(c, 'data')).fingerprint, v2.fingerprint, 'touched: new version');
      // The file-count cap fails clearly instead of walking forever.
      const capped = configIn(dir, 'datasets:\n  maxFiles: 1\n');
      await assert.rejects(resolveDatasetVersion(capped, 'data'), refused(/more than datasets\.maxFiles \(1\) files/));
    } finally {
      fs.rmSync(big, { force: true });
    }
  });

  test('content: a 3 GiB sparse file is hashed in a worker thread while the event loop keeps running; maxBytes caps it', async () => {
    const big = path.join(dir, 'data', 'big.bin');
    fs.closeSync(fs.openSync(big, 'w'));
    fs.truncateSync(big, 3 * GiB);
    try {
      const c = configIn(dir, 'datasets:\n  local: content\n');
      let ticks = 0;
      const timer = setInterval(() => ticks++, 20);
      let progressCalls = 0;
      const t0 = Date.now();
      const v1 = await resolveDatasetVersion(c, 'data', { onProgress: () => progressCalls++ });
      const ms = Date.now() - t0;
      clearInterval(timer);
      assert.equal(v1.resolver, 'content');
      assert.match(v1.detail, /^2 files, 3\.0 GiB \(content\)$/);
      // The loop was free while hashing: a 20 ms timer fired at least a quarter of the times it could.
      assert.ok(ticks >= Math.floor(ms / 20 / 4), `event loop ticked ${ticks} times in ${ms} ms`);
      if (ms > 1000) assert.ok(progressCalls > 0, 'a long hash reports progress');
      // Content, not metadata: a same-size rewrite with the mtime put back is still new data.
      const a = path.join(dir, 'data', 'a.csv');
      const st = fs.statSync(a);
      const text = fs.readFileSync(a, 'utf8');
      fs.writeFileSync(a, text.replace('1', '9'));
      fs.utimesSync(a, st.atime, st.mtime);
      assert.notEqual((await resolveDatasetVersion(c, 'data')).fingerprint, v1.fingerprint);
      const capped = configIn(dir, 'datasets:\n  local: content\n  maxBytes: 1GiB\n');
      await assert.rejects(resolveDatasetVersion(capped, 'data'), refused(/holds 3\.0 GiB, over datasets\.maxBytes \(1\.0 GiB\) for content hashing/));
      const slow = configIn(dir, 'datasets:\n  local: content\n  timeout: 1ms\n');
      await assert.rejects(resolveDatasetVersion(slow, 'data'), refused(/took longer than datasets\.timeout/));
    } finally {
      fs.rmSync(big, { force: true });
    }
  });

  test('command: a new version is new data, the same one is not; a hanging command is killed at its timeout', async () => {
    const versionFile = path.join(dir, 'version.txt');
    fs.writeFileSync(versionFile, 'v1\n');
    const pidFile = path.join(dir, 'hang.pid');
    const c = configIn(
      dir,
      `  feed:
    trainer: t
    dataset: market://ticks
    datasetVersion: { resolver: command, command: [node, -e, "process.stdout.write(require('fs').readFileSync('version.txt','utf8'))"] }
  hang:
    trainer: t
    dataset: market://ticks
    datasetVersion: { resolver: command, timeout: 500ms, command: [node, -e, "require('fs').writeFileSync('hang.pid', String(process.pid)); setInterval(() => {}, 1000)"] }
  silent:
    trainer: t
    dataset: market://ticks
    datasetVersion: { resolver: command, command: [node, -e, "process.exit(3)"] }
  nobin:
    trainer: t
    dataset: market://ticks
    datasetVersion: { resolver: command, command: [no-such-binary-kiln] }
`,
    );
    const v1 = await resolveDatasetVersion(c, 'market://ticks', { model: 'feed' });
    assert.equal(v1.resolver, 'command');
    assert.match(v1.detail, /version "v1" from node/);
    assert.equal((await resolveDatasetVersion(c, 'market://ticks', { model: 'feed' })).fingerprint, v1.fingerprint);
    fs.writeFileSync(versionFile, 'v2\n');
    assert.notEqual((await resolveDatasetVersion(c, 'market://ticks', { model: 'feed' })).fingerprint, v1.fingerprint);

    const t0 = Date.now();
    await assert.rejects(resolveDatasetVersion(c, 'market://ticks', { model: 'hang' }), unavailable(/timed out after 500 ms and was killed/));
    assert.ok(Date.now() - t0 < 10_000, 'killed at its timeout, not later');
    const pid = Number(fs.readFileSync(pidFile, 'utf8'));
    await waitGone(pid);
    await assert.rejects(resolveDatasetVersion(c, 'market://ticks', { model: 'silent' }), unavailable(/exited with 3/));
    await assert.rejects(resolveDatasetVersion(c, 'market://ticks', { model: 'nobin' }), unavailable(/could not start: spawn no-such-binary-kiln ENOENT/));
    // Without a resolver an unknown scheme is opaque: the text is the version.
    const opaque = await resolveDatasetVersion(c, 'market://ticks');
    assert.equal(opaque.resolver, 'uri');
    assert.equal((await resolveDatasetVersion(c, 'market://ticks')).fingerprint, opaque.fingerprint);
  });

  describe('s3 against a real S3-API server (moto)', { skip: motoCommand() ? false : "moto_server not installed (pip install 'moto[server]')" }, () => {
    let moto: MotoServer;
    let s3: S3Client;
    const saved: Record<string, string | undefined> = {};
    before(async () => {
      moto = await startMoto();
      for (const [k, v] of Object.entries(moto.env)) {
        saved[k] = process.env[k];
        process.env[k] = v;
      }
      s3 = new S3Client({ endpoint: moto.endpoint, region: 'us-east-1', forcePathStyle: true });
      await s3.send(new CreateBucketCommand({ Bucket: 'market' }));
    });
    after(async () => {
      s3?.destroy();
      await moto?.stop();
      for (const [k, v] of Object.entries(saved)) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    });

    test('a new or rewritten object is new data, an unchanged prefix is not; a missing bucket says so', async () => {
      const c = configIn(dir, `datasets:\n  schemes:\n    s3: { resolver: s3, endpoint: "${moto.endpoint}", forcePathStyle: true }\n`);
      await assert.rejects(resolveDatasetVersion(c, 's3://market/ticks/'), unavailable(/no objects under s3:\/\/market\/ticks\/ yet/));
      await s3.send(new PutObjectCommand({ Bucket: 'market', Key: 'ticks/2026-12-01.csv', Body: 'a,b\n' }));
      await s3.send(new PutObjectCommand({ Bucket: 'market', Key: 'other/x.csv', Body: 'z' }));
      const v1 = await resolveDatasetVersion(c, 's3://market/ticks/');
      assert.equal(v1.resolver, 's3');
      assert.match(v1.detail, /^1 object, 4 B \(s3\)$/);
      assert.equal((await resolveDatasetVersion(c, 's3://market/ticks/')).fingerprint, v1.fingerprint, 'unchanged prefix');
      await s3.send(new PutObjectCommand({ Bucket: 'market', Key: 'other/y.csv', Body: 'z' }));
      assert.equal((await resolveDatasetVersion(c, 's3://market/ticks/')).fingerprint, v1.fingerprint, 'outside the prefix is not this dataset');
      await s3.send(new PutObjectCommand({ Bucket: 'market', Key: 'ticks/2026-12-02.csv', Body: 'c,d\n' }));
      const v2 = await resolveDatasetVersion(c, 's3://market/ticks/');
      assert.notEqual(v2.fingerprint, v1.fingerprint, 'a new object');
      await s3.send(new PutObjectCommand({ Bucket: 'market', Key: 'ticks/2026-12-02.csv', Body: 'e,f\n' }));
      assert.notEqual((await resolveDatasetVersion(c, 's3://market/ticks/')).fingerprint, v2.fingerprint, 'a rewritten object (same size, new ETag)');
      await assert.rejects(resolveDatasetVersion(c, 's3://no-such-bucket/x'), unavailable(/NoSuchBucket.*\(the bucket does not exist\)/));
      await assert.rejects(resolveDatasetVersion(c, 's3://A_/x'), refused(/not an s3:\/\/bucket\/prefix URI/));
    });
  });
});

async function waitGone(pid: number): Promise<void> {
  const deadline = Date.now() + 5000;
  for (;;) {
    try {
      process.kill(pid, 0);
    } catch {
      return;
    }
    assert.ok(Date.now() < deadline, `resolver process ${pid} still alive after its timeout`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
