/**
 * Object storage (src/storage): the store API, conditional writes, the lease, checkpoints, logs, run
 * against both the filesystem store and an S3Store on a real S3-API server (moto, one per file).
 * No Temporal server needed.
 */
import { after, before, describe, test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { inspect } from 'node:util';
import { CreateBucketCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { parseConfigText } from '../src/config/load';
import { StorageSchema } from '../src/config/schema';
import {
  CheckpointNotVerified,
  LocalStore,
  ObjectLease,
  ObjectNotFound,
  PreconditionFailed,
  S3Store,
  StorageError,
  StorageUnavailable,
  completedCheckpoints,
  deleteCheckpoint,
  downloadCheckpoint,
  localStorageRoot,
  openStore,
  readLog,
  redactStorage,
  uploadCheckpoint,
  uploadLog,
  uploadLogPeriodically,
  verifyCheckpoint,
  type ObjectStore,
  type S3StorageConfig,
} from '../src/storage';
import { motoCommand, startMoto, type MotoServer } from './helpers/moto';

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
const MiB = 2 ** 20;
const BUCKET = 'kiln-test';
const SECRET = 'SeCrEt-never-printed-0123456789';
const TOKEN = 'ToKeN-never-printed-9876543210';
const noMoto = motoCommand() ? false : "moto_server not installed (pip install 'moto[server]'): S3 suites skipped";

let tmp: string;
before(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-storage-'));
});
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

const unique = () => crypto.randomBytes(4).toString('hex');
const s3Config = (endpoint: string, over: Partial<S3StorageConfig> = {}): S3StorageConfig => ({
  ...StorageSchema.parse({ kind: 's3', bucket: BUCKET, endpoint, forcePathStyle: true, accessKeyId: 'testing', secretAccessKey: 'testing', partSize: '5MiB' }),
  ...over,
} as S3StorageConfig);

function writeCheckpointDir(dir: string, files: Record<string, Buffer | string>): string {
  for (const [rel, data] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(dir, rel)), { recursive: true });
    fs.writeFileSync(path.join(dir, rel), data);
  }
  return dir;
}

/** A fresh store per test: its own folder or its own key prefix. */
type Opener = (tuning?: { listPageSize?: number }) => ObjectStore;

interface Backend {
  name: string;
  skip: string | false;
  setup(): Promise<{ open: Opener; teardown(): Promise<void> }>;
}

const backends: Backend[] = [
  {
    name: 'LocalStore (filesystem)',
    skip: false,
    setup: async () => ({ open: () => new LocalStore(path.join(tmp, `local-${unique()}`)), teardown: async () => {} }),
  },
  {
    name: 'S3Store on moto',
    skip: noMoto,
    setup: async () => {
      const moto = await startMoto();
      const admin = new S3Client({ endpoint: moto.endpoint, region: 'us-east-1', forcePathStyle: true, credentials: { accessKeyId: 'testing', secretAccessKey: 'testing' } });
      await admin.send(new CreateBucketCommand({ Bucket: BUCKET }));
      admin.destroy();
      const opened: ObjectStore[] = [];
      return {
        open: (tuning) => {
          const s = new S3Store(s3Config(moto.endpoint, { prefix: `p-${unique()}/kiln` }), tuning);
          opened.push(s);
          return s;
        },
        teardown: async () => {
          for (const s of opened) s.close();
          await moto.stop();
        },
      };
    },
  },
];

for (const backend of backends) {
  describe(backend.name, { skip: backend.skip }, () => {
    let open: Opener;
    let teardown: (() => Promise<void>) | undefined;
    before(async () => {
      ({ open, teardown } = await backend.setup());
    });
    after(async () => teardown?.());

    test('put, get, head, download, list (paginated), delete, deletePrefix', async () => {
      const store = open({ listPageSize: 2 });
      const etag = await store.put('a/one.txt', Buffer.from('one'));
      assert.match(etag, /^".+"$/);
      const got = await store.get('a/one.txt');
      assert.equal(got.body.toString(), 'one');
      assert.equal(got.etag, etag);
      const file = path.join(tmp, `src-${unique()}.bin`);
      fs.writeFileSync(file, crypto.randomBytes(70_000));
      await store.put('a/b/two.bin', { file });
      for (const k of ['a/b/three', 'a/c', 'ab', 'z']) await store.put(k, Buffer.from(k));
      const head = await store.head('a/b/two.bin');
      assert.equal(head?.size, 70_000);
      assert.equal(head?.sha256, crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex'));
      assert.equal(await store.head('a/nope'), undefined);
      assert.deepEqual((await store.list('a/')).map((o) => o.key), ['a/b/three', 'a/b/two.bin', 'a/c', 'a/one.txt']);
      assert.deepEqual((await store.list('a')).map((o) => o.key), ['a/b/three', 'a/b/two.bin', 'a/c', 'a/one.txt', 'ab']);
      assert.deepEqual((await store.list('')).length, 6);
      const dl = path.join(tmp, `dl-${unique()}`, 'two.bin');
      const info = await store.download('a/b/two.bin', dl);
      assert.ok(fs.readFileSync(dl).equals(fs.readFileSync(file)));
      assert.equal(info.sha256, head?.sha256);
      assert.deepEqual(fs.readdirSync(path.dirname(dl)), ['two.bin'], 'no temp file left behind');
      await assert.rejects(store.get('a/nope'), ObjectNotFound);
      await assert.rejects(store.download('a/nope', dl + '.x'), ObjectNotFound);
      await assert.rejects(store.put('../escape', Buffer.from('x')), StorageError);
      await store.delete('a/c');
      await store.delete('a/c');
      assert.equal(await store.head('a/c'), undefined);
      assert.equal(await store.deletePrefix('a/'), 3);
      assert.deepEqual((await store.list('')).map((o) => o.key), ['ab', 'z']);
    });

    test('conditional writes: 10 concurrent creates, one wins; a stale or missing If-Match is refused; probe passes', async () => {
      const store = open();
      const results = await Promise.allSettled(Array.from({ length: 10 }, (_, i) => store.put('race', Buffer.from(`writer ${i}`), { ifNoneMatch: '*' })));
      const won = results.filter((r) => r.status === 'fulfilled');
      assert.equal(won.length, 1, 'exactly one create-only put lands');
      for (const r of results) if (r.status === 'rejected') assert.ok(r.reason instanceof PreconditionFailed, String(r.reason));
      const first = (won[0] as PromiseFulfilledResult<string>).value;
      const second = await store.put('race', Buffer.from('take-over'), { ifMatch: first });
      await assert.rejects(store.put('race', Buffer.from('stale'), { ifMatch: first }), (e) => e instanceof PreconditionFailed && e.condition === 'if-match');
      await assert.rejects(store.put('gone', Buffer.from('x'), { ifMatch: first }), PreconditionFailed);
      assert.equal((await store.get('race')).etag, second);
      const p = await store.probe();
      assert.equal(p.conditionalWrites, true);
      assert.deepEqual((await store.list('.kiln-probe/')).length, 0, 'probe object removed');
    });

    test('lease: create, take over by a newer attempt, stale ETag refused, exactly one of racing takers wins', async () => {
      const store = open();
      const a = await ObjectLease.acquire(store, 'jobs/j1/lease.json', { generation: 100, attempt: 1, workerId: 'host-a' });
      assert.ok(a.acquired);
      const older = await ObjectLease.acquire(store, 'jobs/j1/lease.json', { generation: 50, attempt: 1, workerId: 'host-old' });
      assert.ok(!older.acquired && older.owner.workerId === 'host-a', 'an older attempt never takes it');
      const staleEtag = a.lease.etag;
      const racers = await Promise.all(['host-b', 'host-c'].map((w) => ObjectLease.acquire(store, 'jobs/j1/lease.json', { generation: 200, attempt: 2, workerId: w })));
      assert.equal(racers.filter((r) => r.acquired).length, 1, 'exactly one of two racing takers wins');
      const winner = racers.find((r) => r.acquired)!;
      const loser = racers.find((r) => !r.acquired)!;
      assert.ok(winner.acquired && !loser.acquired);
      assert.equal(loser.owner.holder, winner.lease.record.holder, 'the loser sees the winner');
      assert.equal(await a.lease.superseded(), true);
      assert.equal(await a.lease.renew(), false, 'renewing with the stale ETag is refused');
      await assert.rejects(store.put('jobs/j1/lease.json', Buffer.from('{}'), { ifMatch: staleEtag }), PreconditionFailed);
      assert.equal(await winner.lease.superseded(), false);
      assert.equal(await winner.lease.renew(), true);
      assert.equal((await ObjectLease.owner(store, 'jobs/j1/lease.json'))?.holder, winner.lease.record.holder);
      const many = await Promise.all(Array.from({ length: 10 }, (_, i) => ObjectLease.acquire(store, 'jobs/j2/lease.json', { generation: 7, attempt: 1, workerId: `w${i}` })));
      assert.equal(many.filter((r) => r.acquired).length, 1, '10 racing creators: one owner');
      assert.equal(await winner.lease.release(), true);
      const same = await ObjectLease.acquire(store, 'jobs/j1/lease.json', { generation: 200, attempt: 3, workerId: 'host-d' });
      assert.ok(same.acquired, 'a released lease can be taken at the same generation');
    });

    test('checkpoints: a file and a directory upload, verify, re-upload sends nothing, delete', async () => {
      const store = open();
      const file = path.join(tmp, `model-${unique()}.pt`);
      fs.writeFileSync(file, crypto.randomBytes(300_000));
      const seen: [number, number][] = [];
      const up = await uploadCheckpoint(store, 'jobs/j/checkpoints/step-50', file, { onProgress: (d, t) => seen.push([d, t]) });
      assert.equal(up.alreadyComplete, false);
      assert.deepEqual(seen.at(-1), [300_000, 300_000]);
      assert.equal(up.manifest.kind, 'file');
      assert.ok((await verifyCheckpoint(store, 'jobs/j/checkpoints/step-50')).verified);
      assert.equal((await uploadCheckpoint(store, 'jobs/j/checkpoints/step-50', file)).alreadyComplete, true);

      const dir = writeCheckpointDir(path.join(tmp, `hf-${unique()}`, 'checkpoint-600'), {
        'model.safetensors': crypto.randomBytes(200_000),
        'optimizer.pt': crypto.randomBytes(100_000),
        'trainer_state.json': '{"global_step": 600}',
        'nested/rng_state.pth': crypto.randomBytes(1000),
      });
      const d = await uploadCheckpoint(store, 'jobs/j/checkpoints/step-600', dir);
      assert.equal(d.manifest.kind, 'dir');
      assert.equal(d.manifest.name, 'checkpoint-600');
      assert.deepEqual(d.manifest.files.map((f) => f.path), ['model.safetensors', 'nested/rng_state.pth', 'optimizer.pt', 'trainer_state.json']);
      const v = await verifyCheckpoint(store, 'jobs/j/checkpoints/step-600');
      assert.ok(v.verified && v.manifest.bytes === 301_020);
      assert.deepEqual(await completedCheckpoints(store, 'jobs/j/checkpoints'), ['jobs/j/checkpoints/step-50', 'jobs/j/checkpoints/step-600']);
      // A different checkpoint written to the same prefix replaces the old one's files.
      const other = writeCheckpointDir(path.join(tmp, `hf2-${unique()}`, 'checkpoint-600'), { 'model.safetensors': 'new weights' });
      assert.equal((await uploadCheckpoint(store, 'jobs/j/checkpoints/step-600', other)).alreadyComplete, false);
      assert.deepEqual((await store.list('jobs/j/checkpoints/step-600/files/')).map((o) => o.key), ['jobs/j/checkpoints/step-600/files/model.safetensors']);
      assert.ok((await verifyCheckpoint(store, 'jobs/j/checkpoints/step-600')).verified);
      assert.equal(await deleteCheckpoint(store, 'jobs/j/checkpoints/step-50'), 3);
      assert.deepEqual((await store.list('jobs/j/checkpoints/step-50')).length, 0, 'remote objects deleted too');
      assert.equal((await verifyCheckpoint(store, 'jobs/j/checkpoints/step-50')).verified, false);
    });

    test('a half-uploaded or altered checkpoint is never verified', async () => {
      const store = open();
      const dir = writeCheckpointDir(path.join(tmp, `half-${unique()}`, 'checkpoint-9'), { 'a.bin': crypto.randomBytes(5000), 'b.bin': crypto.randomBytes(6000) });
      // Files up, no manifest or marker: a host died mid-upload.
      await store.put('ck/files/a.bin', { file: path.join(dir, 'a.bin') });
      assert.deepEqual(await verifyCheckpoint(store, 'ck'), { verified: false, problem: 'no completion marker (the upload did not finish)' });
      await assert.rejects(downloadCheckpoint(store, 'ck', path.join(tmp, `cache-${unique()}`)), CheckpointNotVerified);

      const rewrite = async (edit: (m: Record<string, unknown> & { files: { path: string; size: number; sha256: string }[] }) => void) => {
        await uploadCheckpoint(store, 'ck', dir);
        const m = JSON.parse((await store.get('ck/manifest.json')).body.toString());
        edit(m);
        const body = Buffer.from(JSON.stringify(m));
        await store.put('ck/manifest.json', body);
        const marker = JSON.parse((await store.get('ck/COMPLETE')).body.toString());
        await store.put('ck/COMPLETE', Buffer.from(JSON.stringify({ ...marker, manifestSha256: crypto.createHash('sha256').update(body).digest('hex') })));
        return verifyCheckpoint(store, 'ck');
      };
      const wrongSize = await rewrite((m) => (m.files[0]!.size += 1));
      assert.ok(!wrongSize.verified && /a\.bin is 5000 bytes, the manifest says 5001/.test(wrongSize.problem), JSON.stringify(wrongSize));
      const wrongSha = await rewrite((m) => (m.files[1]!.sha256 = '0'.repeat(64)));
      assert.ok(!wrongSha.verified && /b\.bin has sha256 .* the manifest says 000000000000/.test(wrongSha.problem), JSON.stringify(wrongSha));

      await uploadCheckpoint(store, 'ck', dir);
      await store.put('ck/manifest.json', Buffer.from((await store.get('ck/manifest.json')).body.toString() + ' '));
      const tampered = await verifyCheckpoint(store, 'ck');
      assert.ok(!tampered.verified && tampered.problem === 'the manifest does not match its completion marker');

      await uploadCheckpoint(store, 'ck', dir);
      await store.put('ck/files/b.bin', crypto.randomBytes(6000));
      const overwritten = await verifyCheckpoint(store, 'ck');
      assert.ok(!overwritten.verified && /b\.bin (has sha256|was rewritten)/.test(overwritten.problem), JSON.stringify(overwritten));

      await uploadCheckpoint(store, 'ck', dir);
      await store.delete('ck/files/a.bin');
      assert.deepEqual(await verifyCheckpoint(store, 'ck'), { verified: false, problem: 'a.bin is missing' });
      assert.ok((await uploadCheckpoint(store, 'ck', dir)).alreadyComplete === false && (await verifyCheckpoint(store, 'ck')).verified, 'a re-upload repairs it');

      // An upload stopped part-way (the worker is told to stop, or dies) leaves no marker.
      const many = writeCheckpointDir(path.join(tmp, `stop-${unique()}`, 'checkpoint-10'), Object.fromEntries(Array.from({ length: 6 }, (_, i) => [`shard-${i}.bin`, crypto.randomBytes(1000)])));
      const stop = new AbortController();
      const stopped = uploadCheckpoint(store, 'ck10', many, { concurrency: 1, signal: stop.signal, onProgress: (d) => d >= 2000 && stop.abort() });
      await assert.rejects(stopped, (e: unknown) => (e as Error).name === 'AbortError');
      assert.ok((await store.list('ck10/files/')).length < 6);
      assert.deepEqual(await verifyCheckpoint(store, 'ck10'), { verified: false, problem: 'no completion marker (the upload did not finish)' });
    });

    test('download into a cache: reused when checksums match, re-fetched when a cached file is corrupted', async () => {
      const store = open();
      const dir = writeCheckpointDir(path.join(tmp, `dl-${unique()}`, 'checkpoint-3'), { 'w.bin': crypto.randomBytes(40_000), 'sub/x.json': '{"x":1}' });
      await uploadCheckpoint(store, 'jobs/k/step-3', dir);
      const cache = path.join(tmp, `cache-${unique()}`, 'jobs', 'k', 'step-3');
      const first = await downloadCheckpoint(store, 'jobs/k/step-3', cache);
      assert.equal(first.path, path.join(cache, 'checkpoint-3'));
      assert.equal(first.reused, false);
      assert.equal(first.downloadedBytes, 40_007);
      assert.ok(fs.readFileSync(path.join(first.path, 'w.bin')).equals(fs.readFileSync(path.join(dir, 'w.bin'))));
      const again = await downloadCheckpoint(store, 'jobs/k/step-3', cache);
      assert.equal(again.reused, true);
      assert.equal(again.downloadedBytes, 0);
      fs.writeFileSync(path.join(first.path, 'w.bin'), crypto.randomBytes(40_000));
      fs.writeFileSync(path.join(first.path, 'stray.tmp'), 'left by a crashed trainer');
      const repaired = await downloadCheckpoint(store, 'jobs/k/step-3', cache);
      assert.equal(repaired.reused, false);
      assert.equal(repaired.downloadedBytes, 40_000, 'only the corrupted file is fetched');
      assert.ok(fs.readFileSync(path.join(first.path, 'w.bin')).equals(fs.readFileSync(path.join(dir, 'w.bin'))));
      assert.deepEqual(fs.readdirSync(first.path).sort(), ['sub', 'w.bin'], 'files not in the manifest are removed');

      const file = path.join(tmp, `single-${unique()}.pt`);
      fs.writeFileSync(file, 'weights');
      await uploadCheckpoint(store, 'jobs/k/step-4', file);
      const single = await downloadCheckpoint(store, 'jobs/k/step-4', path.join(tmp, `cache-${unique()}`));
      assert.equal(fs.readFileSync(single.path, 'utf8'), 'weights');
      assert.equal(path.basename(single.path), path.basename(file));
    });

    test('a 20 MiB file over the 5 MiB part size goes up with progress, verifies and round-trips', async (t) => {
      const store = open();
      const big = path.join(tmp, `big-${unique()}.bin`);
      fs.writeFileSync(big, crypto.randomBytes(20 * MiB));
      const seen: number[] = [];
      const t0 = Date.now();
      const up = await uploadCheckpoint(store, 'jobs/big/step-1', big, { onProgress: (d, total) => (assert.equal(total, 20 * MiB), seen.push(d)) });
      const uploadMs = Date.now() - t0;
      const t1 = Date.now();
      const v = await verifyCheckpoint(store, 'jobs/big/step-1');
      const verifyMs = Date.now() - t1;
      assert.ok(v.verified);
      assert.ok(seen.length >= 4, `progress was reported per part (${seen.length} callbacks)`);
      assert.deepEqual([...seen].sort((a, b) => a - b), seen, 'progress never goes back');
      assert.equal(seen.at(-1), 20 * MiB);
      if (store instanceof S3Store) assert.match(up.manifest.files[0]!.etag, /-4"$/, 'a multipart upload of 4 parts');
      const t2 = Date.now();
      const dl = await downloadCheckpoint(store, 'jobs/big/step-1', path.join(tmp, `cache-${unique()}`));
      const downloadMs = Date.now() - t2;
      assert.equal((await fs.promises.stat(dl.path)).size, 20 * MiB);
      t.diagnostic(`${backend.name}: 20 MiB checkpoint upload ${uploadMs} ms, verify ${verifyMs} ms, download ${downloadMs} ms`);
    });

    test('logs: uploaded while growing and at the end, read back', async () => {
      const store = open();
      const log = path.join(tmp, `trainer-${unique()}.log`);
      assert.equal(await uploadLog(store, 'jobs/l/trainer.log', log), undefined, 'no log yet');
      assert.equal(await readLog(store, 'jobs/l/trainer.log'), undefined);
      fs.writeFileSync(log, '=== kiln: attempt 1 ===\nstep 1\n');
      const errors: unknown[] = [];
      const up = uploadLogPeriodically(store, 'jobs/l/trainer.log', log, 50, (e) => errors.push(e));
      const deadline = Date.now() + 5000;
      while ((await readLog(store, 'jobs/l/trainer.log')) === undefined && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      assert.match((await readLog(store, 'jobs/l/trainer.log')) ?? '', /step 1/);
      fs.appendFileSync(log, 'step 2\ndone\n');
      await up.stop();
      assert.equal(await readLog(store, 'jobs/l/trainer.log'), '=== kiln: attempt 1 ===\nstep 1\nstep 2\ndone\n');
      assert.deepEqual(errors, []);
    });
  });
}

async function closedPort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

const noSecrets = (err: unknown) => {
  for (const text of [String(err), inspect(err, { depth: 5 }), JSON.stringify(err)]) {
    assert.ok(!text.includes(SECRET) && !text.includes(TOKEN), `a secret leaked: ${text}`);
  }
};

describe('S3Store: clear errors for bad credentials, a missing bucket, an unreachable endpoint', { skip: noMoto }, () => {
  let moto: MotoServer;
  let authMoto: MotoServer;
  before(async () => {
    moto = await startMoto();
    // moto checks credentials only when asked to: INITIAL_NO_AUTH_ACTION_COUNT=0 enforces IAM from the first request.
    process.env.INITIAL_NO_AUTH_ACTION_COUNT = '0';
    try {
      authMoto = await startMoto();
    } finally {
      delete process.env.INITIAL_NO_AUTH_ACTION_COUNT;
    }
  });
  after(async () => {
    await moto?.stop();
    await authMoto?.stop();
  });

  test('wrong credentials', async () => {
    const store = new S3Store(s3Config(authMoto.endpoint, { accessKeyId: 'AKIAKILNTESTWRONG', secretAccessKey: SECRET, sessionToken: TOKEN }));
    try {
      const err = await store.probe().then(() => assert.fail('probe passed with wrong credentials'), (e: unknown) => e);
      assert.ok(err instanceof StorageUnavailable && err.reason === 'credentials', String(err));
      assert.match(String(err), new RegExp(`credentials were refused by the storage endpoint ${authMoto.endpoint} \\(InvalidAccessKeyId, HTTP 403\\).*check storage.accessKeyId`));
      noSecrets(err);
      const list = await store.list('').catch((e: unknown) => e);
      assert.ok(list instanceof StorageUnavailable && list.reason === 'credentials');
      noSecrets(list);
    } finally {
      store.close();
    }
  });

  test('a missing bucket', async () => {
    const store = new S3Store(s3Config(moto.endpoint, { bucket: 'kiln-no-such-bucket', secretAccessKey: SECRET }));
    try {
      const err = await store.probe().catch((e: unknown) => e);
      assert.ok(err instanceof StorageUnavailable && err.reason === 'bucket', String(err));
      assert.match(String(err), /the bucket kiln-no-such-bucket does not exist at the storage endpoint http:\/\/127\.0\.0\.1:\d+: create it \(aws s3 mb s3:\/\/kiln-no-such-bucket --endpoint-url http/);
      noSecrets(err);
    } finally {
      store.close();
    }
  });

  test('an unreachable endpoint', async () => {
    const endpoint = `http://127.0.0.1:${await closedPort()}`;
    const store = new S3Store(s3Config(endpoint, { secretAccessKey: SECRET, sessionToken: TOKEN }));
    try {
      const t0 = Date.now();
      const err = await store.probe().catch((e: unknown) => e);
      assert.ok(err instanceof StorageUnavailable && err.reason === 'unreachable', String(err));
      assert.match(String(err), new RegExp(`cannot reach the storage endpoint ${endpoint} \\(ECONNREFUSED\\).*check storage.endpoint in temporal.yaml`));
      assert.ok(Date.now() - t0 < 15_000, 'fails fast');
      noSecrets(err);
    } finally {
      store.close();
    }
  });

  test('a bucket a foreign client wrote to still verifies only what Kiln uploaded', async () => {
    const admin = new S3Client({ endpoint: moto.endpoint, region: 'us-east-1', forcePathStyle: true, credentials: { accessKeyId: 'testing', secretAccessKey: 'testing' } });
    await admin.send(new CreateBucketCommand({ Bucket: BUCKET }));
    const store = new S3Store(s3Config(moto.endpoint, { prefix: 'foreign' }));
    try {
      const f = path.join(tmp, `f-${unique()}.bin`);
      fs.writeFileSync(f, 'abcdef');
      await uploadCheckpoint(store, 'c', f);
      // Same size, new content, no Kiln metadata: caught by the ETag.
      await admin.send(new PutObjectCommand({ Bucket: BUCKET, Key: `foreign/c/files/${path.basename(f)}`, Body: 'ABCDEF' }));
      const v = await verifyCheckpoint(store, 'c');
      assert.ok(!v.verified && /was rewritten after the upload/.test(v.problem), JSON.stringify(v));
    } finally {
      store.close();
      admin.destroy();
    }
  });
});

describe('storage config', () => {
  test('local by default with zero configuration; s3 with secrets redacted', () => {
    const dir = fs.mkdtempSync(path.join(tmp, 'cfg-'));
    const cfg = parseConfigText('version: 1\n', path.join(dir, 'temporal.yaml'), {});
    assert.deepEqual(cfg.storage, { kind: 'local', path: '' });
    assert.equal(cfg.storage.kind === 'local' && localStorageRoot(cfg.storage, cfg), path.join(cfg.home, 'storage'));
    const local = openStore(cfg.storage, cfg);
    assert.ok(local instanceof LocalStore && local.uri === `file://${path.join(cfg.home, 'storage')}`);

    const yaml = `storage:
  kind: s3
  bucket: kiln-ckpt
  prefix: /prod/
  endpoint: http://minio.internal:9000
  forcePathStyle: true
  accessKeyId: \${AWS_ACCESS_KEY_ID}
  secretAccessKey: \${AWS_SECRET_ACCESS_KEY}
  sessionToken: \${AWS_SESSION_TOKEN:-}
  partSize: 64MiB
`;
    const s3 = parseConfigText(yaml, path.join(dir, 'temporal.yaml'), { AWS_ACCESS_KEY_ID: 'AKIAEXAMPLE', AWS_SECRET_ACCESS_KEY: SECRET });
    assert.ok(s3.storage.kind === 's3');
    assert.equal(s3.storage.prefix, 'prod');
    assert.equal(s3.storage.partSize, 64 * MiB);
    assert.equal(s3.storage.sessionToken, undefined, 'an empty ${VAR:-} means the default chain');
    const shown = JSON.stringify(redactStorage(s3.storage));
    assert.ok(!shown.includes(SECRET) && !shown.includes('AKIAEXAMPLE'), shown);
    assert.match(shown, /"secretAccessKey":"\*\*\*"/);
    const store = openStore(s3.storage, s3);
    assert.equal(store.uri, 's3://kiln-ckpt/prod');
    store.close();
  });

  test('bad storage config is refused by path, with the fix', () => {
    const bad = (yaml: string) => {
      try {
        parseConfigText(yaml, path.join(tmp, 'temporal.yaml'), {});
      } catch (err) {
        return String(err);
      }
      return assert.fail('accepted');
    };
    assert.match(bad('storage: { kind: gcs }\n'), /storage\.kind: kind must be "local" \(the default\) or "s3"/);
    assert.match(bad('storage: { kind: s3, bucket: My_Bucket }\n'), /storage\.bucket: not a valid bucket name/);
    assert.match(bad('storage: { kind: s3, bucket: ok-bucket, accessKeyId: AKIA }\n'), /storage\.secretAccessKey: set both accessKeyId and secretAccessKey, or neither/);
    assert.match(bad('storage: { kind: s3, bucket: ok-bucket, partSize: 1MiB }\n'), /storage\.partSize: partSize must be between 5MiB and 5GiB/);
    assert.match(bad('storage: { kind: s3, bucket: ok-bucket, endpoint: "minio:9000" }\n'), /storage\.endpoint: an http\(s\):\/\/ URL/);
    assert.match(bad('storage: { kind: s3, bucket: ok-bucket, accessKeyId: "${KEY}", secretAccessKey: "${SECRET}" }\n'), /storage\.accessKeyId: environment variable KEY is not set/);
  });

  test('a local store in a folder that cannot be created says so', () => {
    const file = path.join(tmp, `plain-${unique()}`);
    fs.writeFileSync(file, 'x');
    assert.throws(() => new LocalStore(path.join(file, 'storage')), (e: unknown) => e instanceof StorageError && /cannot create the storage folder.*set storage.path/.test(e.message));
  });
});
