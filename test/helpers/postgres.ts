/**
 * A real PostgreSQL cluster for tests: the machine's PostgreSQL 15 (`pg_config --bindir`), initdb'd in
 * a temp dir owned by the `postgres` user (initdb refuses root), listening on 127.0.0.1 on a free port
 * with password (scram) logins. One cluster per test file; stop() stops it, checks its pid is gone and
 * removes the folder.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Client } from 'pg';
import { freePort } from '../../src/temporal/devServer';

export interface PgCluster {
  /** postgres://kiln:<password>@127.0.0.1:<port>/<db> for a database owned by the kiln role. */
  url(db?: string): string;
  port: number;
  password: string;
  /** The postmaster's pid. */
  pid: number;
  /** Creates a fresh database owned by the kiln role; returns its URL. */
  createDatabase(name?: string): Promise<string>;
  /** Runs SQL as the superuser in a database. */
  sql(db: string, text: string, args?: unknown[]): Promise<Array<Record<string, unknown>>>;
  stop(): Promise<void>;
}

/** `pg_config --bindir`, else the newest /usr/lib/postgresql/<n>/bin (Debian's layout) with an initdb. */
function bindir(): string | null {
  const r = spawnSync('pg_config', ['--bindir'], { encoding: 'utf8' });
  const dir = r.status === 0 ? r.stdout.trim() : '';
  if (dir && fs.existsSync(path.join(dir, 'initdb'))) return dir;
  const root = '/usr/lib/postgresql';
  const versions = fs.existsSync(root) ? fs.readdirSync(root).filter((v) => fs.existsSync(path.join(root, v, 'bin', 'initdb'))) : [];
  versions.sort((a, b) => Number(b) - Number(a));
  return versions.length ? path.join(root, versions[0]!, 'bin') : null;
}

/** Why PostgreSQL tests cannot run here, or false when they can. */
export function noPostgres(): string | false {
  if (!bindir()) return 'PostgreSQL server binaries not found (pg_config --bindir has no initdb): install postgresql-15';
  if (process.getuid?.() === 0 && spawnSync('id', ['-u', 'postgres'], { stdio: 'ignore' }).status !== 0) return 'running as root and there is no postgres user to run initdb as';
  return false;
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

export async function startPostgres(): Promise<PgCluster> {
  const bin = bindir();
  if (!bin) throw new Error('PostgreSQL not installed: pg_config --bindir has no initdb');
  const asRoot = process.getuid?.() === 0;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-pg-'));
  fs.chmodSync(dir, 0o755);
  if (asRoot) {
    const uid = Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).trim());
    const gid = Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).trim());
    fs.chownSync(dir, uid, gid);
  }
  const as = (cmd: string, args: string[]) => (asRoot ? execFileSync('runuser', ['-u', 'postgres', '--', cmd, ...args], { stdio: 'pipe' }) : execFileSync(cmd, args, { stdio: 'pipe' }));
  const superPw = crypto.randomBytes(12).toString('hex');
  const password = crypto.randomBytes(12).toString('hex');
  const pwfile = path.join(dir, 'pw');
  fs.writeFileSync(pwfile, superPw);
  if (asRoot) execFileSync('chown', ['postgres', pwfile]);
  const data = path.join(dir, 'data');
  const sock = path.join(dir, 'sock');
  const port = await freePort();
  try {
    as(path.join(bin, 'initdb'), ['-D', data, '-U', 'postgres', '--auth=scram-sha-256', `--pwfile=${pwfile}`, '--locale=C', '-E', 'UTF8']);
    fs.mkdirSync(sock);
    if (asRoot) execFileSync('chown', ['postgres', sock]);
    const opts = `-c listen_addresses=127.0.0.1 -p ${port} -k ${sock} -c fsync=off -c max_connections=100`;
    as(path.join(bin, 'pg_ctl'), ['-D', data, '-o', opts, '-l', path.join(dir, 'log'), '-w', '-t', '60', 'start']);
  } catch (err) {
    const log = fs.existsSync(path.join(dir, 'log')) ? fs.readFileSync(path.join(dir, 'log'), 'utf8').slice(-2000) : '';
    fs.rmSync(dir, { recursive: true, force: true });
    throw new Error(`could not start PostgreSQL in ${dir}: ${String((err as { stderr?: Buffer }).stderr ?? err)}\n${log}`);
  }
  const pid = Number(fs.readFileSync(path.join(data, 'postmaster.pid'), 'utf8').split('\n')[0]);
  const superUrl = (db: string) => `postgres://postgres:${superPw}@127.0.0.1:${port}/${db}`;
  const sql = async (db: string, text: string, args: unknown[] = []) => {
    const c = new Client({ connectionString: superUrl(db) });
    await c.connect();
    try {
      return (await c.query(text, args)).rows as Array<Record<string, unknown>>;
    } finally {
      await c.end();
    }
  };
  await sql('postgres', `CREATE ROLE kiln LOGIN PASSWORD '${password}'`);
  let n = 0;
  const url = (db = 'kiln') => `postgres://kiln:${password}@127.0.0.1:${port}/${db}`;
  return {
    url,
    port,
    password,
    pid,
    sql,
    async createDatabase(name?: string) {
      const db = name ?? `case_${process.pid}_${++n}`;
      await sql('postgres', `CREATE DATABASE ${db} OWNER kiln`);
      return url(db);
    },
    async stop() {
      try {
        as(path.join(bin, 'pg_ctl'), ['-D', data, '-m', 'immediate', '-w', '-t', '30', 'stop']);
      } catch {
        if (pidAlive(pid)) process.kill(pid, 'SIGKILL');
      }
      const deadline = Date.now() + 10_000;
      while (pidAlive(pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      if (pidAlive(pid)) throw new Error(`PostgreSQL postmaster ${pid} still running after stop`);
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}
