/**
 * One `kiln dev` per state folder, whatever its address. The lock is the kernel's: a small
 * `flock --nonblock` child (util-linux) holds flock(2) on <state>/run/dev.lock for as long as our pipe
 * to it stays open. When `kiln dev` dies, even by SIGKILL, the pipe closes, the child exits and the
 * kernel drops the lock, so there is no stale lock to judge by pid. The file's content names the holder
 * for the refusal message; the file is never deleted or replaced (the lock lives on its inode).
 * Without flock(1), an O_EXCL file holding pid + start time, stale when that process is gone.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { z } from 'zod';
import type { Logger } from '../logger';
import { isSameProcess, processStartTime } from '../supervisor/proc';

const LockHolderSchema = z.object({
  pid: z.number().int(),
  startTime: z.number().nullable(),
  address: z.string(),
  uiUrl: z.string().optional(),
  since: z.string(),
});
export type LockHolder = z.infer<typeof LockHolderSchema>;

/** flock's exit code when another process holds the lock. */
const HELD = 75;

/** Thrown when another `kiln dev` holds the state folder's lock. */
export class StateFolderLocked extends Error {
  override readonly name = 'StateFolderLocked';
  constructor(
    readonly home: string,
    readonly holder: LockHolder | null,
  ) {
    const who = holder
      ? `(pid ${holder.pid}, Temporal server ${holder.address}${holder.uiUrl ? `, Web UI ${holder.uiUrl}` : ''}, since ${holder.since})`
      : '(it is still starting)';
    super(
      `another \`kiln dev\` is already running on the state folder ${home} ${who}. ` +
        `Use that one, stop it first${holder ? ` (Ctrl-C in its terminal, or kill ${holder.pid})` : ''}, or give this one another state folder (KILN_HOME).`,
    );
  }
}

export const lockFile = (home: string) => path.join(home, 'run', 'dev.lock');

function readHolder(file: string): LockHolder | null {
  try {
    return LockHolderSchema.parse(JSON.parse(fs.readFileSync(file, 'utf8')));
  } catch {
    return null;
  }
}

/** The flock child: resolves once it holds the lock, null when another process does. */
function spawnFlock(file: string): Promise<ChildProcess | null> {
  return new Promise((resolve, reject) => {
    // Own process group: a Ctrl-C in the terminal must not drop the lock while kiln dev drains.
    const child = spawn('flock', ['--nonblock', '--conflict-exit-code', String(HELD), file, '-c', 'echo locked; exec cat >/dev/null'], { stdio: ['pipe', 'pipe', 'pipe'], detached: true });
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    child.stdout!.once('data', () => {
      child.stdout!.destroy();
      child.stderr!.destroy();
      // Never what keeps kiln dev running; if kiln dev ends, the pipe closes and the lock goes.
      child.unref();
      (child.stdin as unknown as { unref(): void }).unref();
      resolve(child);
    });
    child.once('error', reject);
    child.once('exit', (code) => (code === HELD ? resolve(null) : reject(new Error(`cannot lock ${file}: flock exited ${code}: ${stderr.trim()}`))));
  });
}

/** The fallback: exclusive create; a file whose holder is no longer that process is stale. */
function createExclusive(file: string, holder: LockHolder): boolean {
  for (let i = 0; i < 2; i++) {
    try {
      fs.writeFileSync(`${file}.pid`, JSON.stringify(holder), { flag: 'wx' });
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const h = readHolder(`${file}.pid`);
    if (h && isSameProcess(h.pid, h.startTime)) return false;
    fs.rmSync(`${file}.pid`, { force: true });
  }
  return false;
}

export class StateLock {
  private released = false;

  private constructor(
    private readonly file: string,
    private child: ChildProcess | null,
    private readonly holder: LockHolder,
    private readonly log: Logger,
  ) {
    this.watch();
  }

  /** Takes the lock or throws StateFolderLocked naming the running `kiln dev`. */
  static async acquire(home: string, who: { address: string; uiUrl?: string }, log: Logger): Promise<StateLock> {
    const file = lockFile(home);
    fs.mkdirSync(path.dirname(file), { recursive: true });
    const holder: LockHolder = { pid: process.pid, startTime: processStartTime(process.pid), ...who, since: new Date().toISOString() };
    let child: ChildProcess | null;
    try {
      child = await spawnFlock(file);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      log.warn('flock(1) not found: locking the state folder with a pid file instead');
      if (!createExclusive(file, holder)) throw new StateFolderLocked(home, readHolder(`${file}.pid`));
      return new StateLock(file, null, holder, log);
    }
    if (!child) throw new StateFolderLocked(home, readHolder(file));
    // Same inode (O_TRUNC, no rename): the lock stays on it.
    fs.writeFileSync(file, JSON.stringify(holder));
    return new StateLock(file, child, holder, log);
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  /** Someone killed the flock child: take the lock again, or say loudly that it is gone. */
  private watch(): void {
    this.child?.once('exit', () => {
      if (this.released) return;
      this.log.error({ lockFile: this.file }, 'the state folder lock was lost (its flock process died); taking it again');
      void spawnFlock(this.file).then(
        (c) => {
          if (!c) return this.log.error({ holder: readHolder(this.file) }, 'another kiln dev now holds the state folder lock');
          if (this.released) return void c.stdin!.end();
          this.child = c;
          fs.writeFileSync(this.file, JSON.stringify(this.holder));
          this.watch();
        },
        (err: Error) => this.log.error({ err: err.message }, 'could not take the state folder lock again'),
      );
    });
  }

  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    const c = this.child;
    if (!c) {
      if (readHolder(`${this.file}.pid`)?.pid === process.pid) fs.rmSync(`${this.file}.pid`, { force: true });
      return;
    }
    if (c.exitCode !== null || c.signalCode !== null) return;
    const exited = new Promise<void>((r) => c.once('exit', () => r()));
    c.stdin!.end();
    await exited;
  }
}
