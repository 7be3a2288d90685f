/**
 * The `local` store: objects are files under a root folder. Puts stage a temp file inside the root and
 * rename it into place (readers never see half an object); create-only puts use link(2), which fails
 * when the name exists; every mutation of a key holds a lock file, so If-Match is a real
 * compare-and-swap between processes. ETags are the content's sha256.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import { ObjectNotFound, PreconditionFailed, StorageError } from './errors';
import { sha256, sha256File, writeStreamAtomic } from './hash';
import { probeStore } from './probe';
import { checkKey, type Body, type ListedObject, type ObjectInfo, type ObjectStore, type PutOptions, type ProbeResult } from './types';

const TMP = '.kiln-tmp';
const LOCKS = '.kiln-locks';
/** A lock older than this was left by a dead process (mutations hold it for milliseconds). */
const STALE_LOCK_MS = 30_000;
const LOCK_WAIT_MS = 60_000;

const quote = (sha: string) => `"${sha}"`;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const code = (err: unknown) => (err as NodeJS.ErrnoException).code;

export class LocalStore implements ObjectStore {
  readonly uri: string;
  /** sha256 by file, valid while inode, size, mtime and ctime are unchanged. */
  private readonly hashes = new Map<string, { stamp: string; sha256: string }>();

  constructor(readonly root: string) {
    this.root = path.resolve(root);
    this.uri = pathToFileURL(this.root).href;
    try {
      fs.mkdirSync(path.join(this.root, TMP), { recursive: true });
      fs.mkdirSync(path.join(this.root, LOCKS), { recursive: true });
    } catch (err) {
      throw new StorageError(`${this.uri}: cannot create the storage folder: ${(err as Error).message} (set storage.path to a writable folder)`, this.uri);
    }
  }

  private file(key: string): string {
    checkKey(this.uri, key);
    const top = key.split('/')[0];
    if (top === TMP || top === LOCKS) throw new StorageError(`${this.uri}: the key ${key} is reserved for the store itself`, this.uri);
    return path.join(this.root, ...key.split('/'));
  }

  async put(key: string, body: Body, opts: PutOptions = {}): Promise<string> {
    const target = this.file(key);
    const tmp = path.join(this.root, TMP, `${process.pid}-${crypto.randomBytes(6).toString('hex')}`);
    try {
      let digest: { sha256: string; size: number };
      if (Buffer.isBuffer(body)) {
        fs.writeFileSync(tmp, body, { flush: true });
        digest = { sha256: sha256(body), size: body.length };
        opts.onProgress?.(body.length, body.length);
      } else {
        const total = fs.statSync(body.file).size;
        digest = await writeStreamAtomic(fs.createReadStream(body.file), tmp, (done) => opts.onProgress?.(done, total));
      }
      await this.withLock(key, async () => {
        if (opts.ifMatch !== undefined && (await this.shaOf(target)) !== opts.ifMatch.replace(/"/g, '')) {
          throw new PreconditionFailed(this.uri, key, 'if-match');
        }
        await this.place(tmp, target, key, opts.ifNoneMatch === '*');
      });
      this.remember(target, digest.sha256);
      return quote(digest.sha256);
    } finally {
      fs.rmSync(tmp, { force: true });
    }
  }

  /** Moves the staged file into place; parents may vanish meanwhile (a delete prunes them), so retry. */
  private async place(tmp: string, target: string, key: string, createOnly: boolean): Promise<void> {
    for (let i = 0; ; i++) {
      fs.mkdirSync(path.dirname(target), { recursive: true });
      try {
        if (createOnly) fs.linkSync(tmp, target);
        else fs.renameSync(tmp, target);
        return;
      } catch (err) {
        if (createOnly && code(err) === 'EEXIST') throw new PreconditionFailed(this.uri, key, 'if-none-match');
        if (code(err) !== 'ENOENT' || i >= 5) throw new StorageError(`${this.uri}/${key}: cannot write: ${(err as Error).message}`, this.uri);
      }
    }
  }

  async get(key: string): Promise<{ body: Buffer; etag: string }> {
    const file = this.file(key);
    let body: Buffer;
    try {
      body = fs.readFileSync(file);
    } catch (err) {
      if (code(err) === 'ENOENT' || code(err) === 'EISDIR' || code(err) === 'ENOTDIR') throw new ObjectNotFound(this.uri, key);
      throw err;
    }
    return { body, etag: quote(sha256(body)) };
  }

  async download(key: string, localPath: string, opts: { onProgress?: (done: number, total: number) => void } = {}): Promise<ObjectInfo> {
    const file = this.file(key);
    let fd: number;
    try {
      fd = fs.openSync(file, 'r');
      if (!fs.fstatSync(fd).isFile()) throw Object.assign(new Error('not a file'), { code: 'EISDIR' });
    } catch (err) {
      if (['ENOENT', 'EISDIR', 'ENOTDIR'].includes(code(err) ?? '')) throw new ObjectNotFound(this.uri, key);
      throw err;
    }
    const total = fs.fstatSync(fd).size;
    const d = await writeStreamAtomic(fs.createReadStream('', { fd }), localPath, (done) => opts.onProgress?.(done, total));
    return { key, size: d.size, etag: quote(d.sha256), sha256: d.sha256 };
  }

  async head(key: string): Promise<ObjectInfo | undefined> {
    const file = this.file(key);
    const sha = await this.shaOf(file);
    const size = fs.statSync(file, { throwIfNoEntry: false })?.size;
    if (sha === undefined || size === undefined) return undefined;
    return { key, size, etag: quote(sha), sha256: sha };
  }

  async list(prefix: string): Promise<ListedObject[]> {
    const dirPart = prefix.slice(0, prefix.lastIndexOf('/') + 1);
    const out: ListedObject[] = [];
    const walk = (dir: string, rel: string) => {
      let entries: fs.Dirent[];
      try {
        entries = fs.readdirSync(dir, { withFileTypes: true });
      } catch {
        return;
      }
      for (const e of entries) {
        const key = rel + e.name;
        if (!rel && (e.name === TMP || e.name === LOCKS)) continue;
        if (e.isDirectory()) {
          if (key.startsWith(prefix) || prefix.startsWith(`${key}/`)) walk(path.join(dir, e.name), `${key}/`);
        } else if (e.isFile() && key.startsWith(prefix)) {
          out.push({ key, size: fs.statSync(path.join(dir, e.name)).size });
        }
      }
    };
    walk(path.join(this.root, ...dirPart.split('/').filter(Boolean)), dirPart);
    return out.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  }

  async delete(key: string): Promise<void> {
    const file = this.file(key);
    await this.withLock(key, async () => {
      try {
        fs.unlinkSync(file);
      } catch (err) {
        if (!['ENOENT', 'EISDIR', 'ENOTDIR', 'EPERM'].includes(code(err) ?? '')) throw err;
      }
    });
    this.hashes.delete(file);
    for (let dir = path.dirname(file); dir.startsWith(this.root + path.sep); dir = path.dirname(dir)) {
      try {
        fs.rmdirSync(dir);
      } catch {
        break;
      }
    }
  }

  async deletePrefix(prefix: string): Promise<number> {
    const objects = await this.list(prefix);
    for (const o of objects) await this.delete(o.key);
    return objects.length;
  }

  probe(): Promise<ProbeResult> {
    return probeStore(this);
  }

  close(): void {}

  private stampOf(file: string): string | undefined {
    try {
      const s = fs.statSync(file, { bigint: true });
      return s.isFile() ? `${s.ino}:${s.size}:${s.mtimeNs}:${s.ctimeNs}` : undefined;
    } catch {
      return undefined;
    }
  }

  private remember(file: string, sha: string): void {
    const stamp = this.stampOf(file);
    if (stamp) this.hashes.set(file, { stamp, sha256: sha });
  }

  private async shaOf(file: string): Promise<string | undefined> {
    const stamp = this.stampOf(file);
    if (!stamp) return undefined;
    const hit = this.hashes.get(file);
    if (hit?.stamp === stamp) return hit.sha256;
    try {
      const { sha256: sha } = await sha256File(file);
      if (this.stampOf(file) === stamp) this.hashes.set(file, { stamp, sha256: sha });
      return sha;
    } catch (err) {
      if (code(err) === 'ENOENT') return undefined;
      throw err;
    }
  }

  /** A lock file per key, created with O_EXCL; one left by a dead process is broken after STALE_LOCK_MS. */
  private async withLock<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const lock = path.join(this.root, LOCKS, sha256(key).slice(0, 40));
    const deadline = Date.now() + LOCK_WAIT_MS;
    for (;;) {
      try {
        fs.writeFileSync(lock, `${process.pid} ${new Date().toISOString()}\n`, { flag: 'wx' });
        break;
      } catch (err) {
        if (code(err) !== 'EEXIST') throw new StorageError(`${this.uri}: cannot lock ${key}: ${(err as Error).message}`, this.uri);
      }
      const age = Date.now() - (fs.statSync(lock, { throwIfNoEntry: false })?.mtimeMs ?? Date.now());
      if (age > STALE_LOCK_MS) {
        const aside = `${lock}.stale-${crypto.randomBytes(4).toString('hex')}`;
        try {
          fs.renameSync(lock, aside);
          fs.rmSync(aside, { force: true });
        } catch {
          // Another process broke it first.
        }
        continue;
      }
      if (Date.now() > deadline) throw new StorageError(`${this.uri}: timed out waiting for the lock on ${key} (${lock})`, this.uri);
      await sleep(2 + Math.random() * 8);
    }
    try {
      return await fn();
    } finally {
      fs.rmSync(lock, { force: true });
    }
  }
}
