/**
 * What the shim looks after: trainer.log, capped and rotated (trainer.log → trainer.log.1 → …), and the
 * attempt's event journal (checkpoint events the shim saw on the trainer's fd 3, fenced by the lease),
 * which lets the next attempt adopt a checkpoint announced after the worker died. Disk errors are
 * swallowed: a full disk must not kill the shim, and so the trainer's supervision.
 * No imports beyond node: the shim loads this module.
 */
import * as fs from 'node:fs';

/**
 * Caps a log file the trainer writes directly (O_APPEND, so the trainer never depends on the shim for
 * its stdout): checked every CHECK_MS, past `maxBytes` its last `maxBytes` go to `<file>.1` (older
 * files shift up, `keep` files in all) and it is truncated, like logrotate's copytruncate. The cap holds
 * within one check interval of output.
 */
export class LogCap {
  static readonly CHECK_MS = 100;

  constructor(
    private readonly file: string,
    private readonly maxBytes: number,
    private readonly keep: number,
  ) {}

  /** The shim's own lines. */
  say(line: string): void {
    try {
      fs.appendFileSync(this.file, line);
    } catch {
      /* ENOSPC, EIO: the log loses a line, the trainer keeps running */
    }
  }

  check(): void {
    try {
      const size = fs.statSync(this.file).size;
      if (size <= this.maxBytes) return;
      if (this.keep > 1) {
        for (let i = this.keep - 1; i >= 2; i--) if (fs.existsSync(`${this.file}.${i - 1}`)) fs.renameSync(`${this.file}.${i - 1}`, `${this.file}.${i}`);
        const fd = fs.openSync(this.file, 'r');
        try {
          const len = Math.min(size, this.maxBytes);
          const buf = Buffer.alloc(len);
          fs.readSync(fd, buf, 0, len, size - len);
          fs.writeFileSync(`${this.file}.1`, buf);
        } finally {
          fs.closeSync(fd);
        }
      }
      fs.truncateSync(this.file, 0);
    } catch {
      /* a full disk or a vanished file: try again next time */
    }
  }
}

/** One journaled checkpoint: what the trainer announced, with the size the shim saw on disk. */
export interface JournalEntry {
  step: number;
  path: string;
  metrics: Record<string, number>;
  bytes: number | null;
  at: string;
}

const MAX_LINE = 64 * 1024;

/**
 * Splits the trainer's fd-3 stream into lines and journals its checkpoint events while `owns()` says
 * the attempt still owns the job (the lease), so a superseded attempt's checkpoints are never adopted.
 */
export class EventJournal {
  private buf = '';
  private dropping = false;

  constructor(
    private readonly file: string,
    private readonly owns: () => boolean,
    private readonly sizeOf: (p: string) => number | null,
    private readonly resolve: (p: string) => string,
  ) {}

  feed(chunk: Buffer): void {
    this.buf += chunk.toString('utf8');
    // One pass with an index, one slice at the end (per-line slicing is quadratic in a flood).
    let from = 0;
    let nl: number;
    while ((nl = this.buf.indexOf('\n', from)) >= 0) {
      const line = this.buf.slice(from, nl);
      from = nl + 1;
      if (this.dropping) this.dropping = false;
      else this.line(line);
    }
    if (from) this.buf = this.buf.slice(from);
    if (this.buf.length > MAX_LINE) {
      this.buf = '';
      this.dropping = true;
    }
  }

  end(): void {
    if (!this.dropping && this.buf) this.line(this.buf);
    this.buf = '';
  }

  /** Records that the shim lost its worker (gone or silent): only such journals are adopted. */
  markLost(why: 'gone' | 'silent'): void {
    try {
      fs.appendFileSync(this.file, `${JSON.stringify({ lost: why, at: new Date().toISOString() })}\n`);
    } catch {
      /* a full disk: this journal will not be adopted */
    }
  }

  private line(line: string): void {
    if (line.length > MAX_LINE || !line.includes('checkpoint')) return;
    let e: { type?: unknown; step?: unknown; path?: unknown; metrics?: unknown };
    try {
      e = JSON.parse(line) as typeof e;
    } catch {
      return;
    }
    if (e.type !== 'checkpoint' || typeof e.step !== 'number' || typeof e.path !== 'string' || !this.owns()) return;
    const p = this.resolve(e.path);
    const metrics: Record<string, number> = {};
    if (e.metrics && typeof e.metrics === 'object') for (const [k, v] of Object.entries(e.metrics)) if (typeof v === 'number' && Number.isFinite(v)) metrics[k] = v;
    const entry: JournalEntry = { step: e.step, path: p, metrics, bytes: this.sizeOf(p), at: new Date().toISOString() };
    try {
      fs.appendFileSync(this.file, `${JSON.stringify(entry)}\n`);
    } catch {
      /* a full disk loses the journal line; the worker, if alive, still gets the event */
    }
  }
}

/**
 * The journaled checkpoints of one journal file, and whether its shim lost its worker (a journal whose
 * trainer ended with its worker still there holds nothing the worker did not handle). Unreadable lines
 * are skipped.
 */
export function readJournal(file: string): { entries: JournalEntry[]; lost: boolean } {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    return { entries: [], lost: false };
  }
  const entries: JournalEntry[] = [];
  let lost = false;
  for (const line of text.split('\n')) {
    try {
      const e = JSON.parse(line) as JournalEntry & { lost?: string };
      if (e.lost) lost = true;
      else if (typeof e.step === 'number' && typeof e.path === 'string') entries.push({ ...e, metrics: e.metrics ?? {}, bytes: typeof e.bytes === 'number' ? e.bytes : null });
    } catch {
      /* a torn last line */
    }
  }
  return { entries, lost };
}

/** Writes `data` to `file` through a temp file and a rename; the temp file never outlives a failure. */
export function writeFileAtomic(file: string, tmp: string, data: string): void {
  try {
    fs.writeFileSync(tmp, data);
    fs.renameSync(tmp, file);
  } catch (err) {
    try {
      fs.rmSync(tmp, { force: true });
    } catch {
      /* nothing more to do */
    }
    // A failed write(2) names no path: say which file it was.
    const e = err as NodeJS.ErrnoException;
    if (!e.path) e.path = tmp;
    throw err;
  }
}
