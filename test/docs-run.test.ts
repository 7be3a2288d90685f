/**
 * Docs run as written (issue 14, item 10): every ```sh docs-test block of README.md and docs/*.md runs,
 * in the order of its doc, in bash from the repo root, against a `kiln dev` this file starts in the
 * background with `npx kiln dev` as a reader would in a second terminal (the repo's temporal.yaml
 * with free ports, plus the models the docs tell the reader to add). A doc's blocks share one shell
 * environment (what a block exports, the next one sees). Each must exit 0 (or its documented
 * `exit=N`) and print every line of the ```text output block that follows it. README blocks see no
 * TEMPORAL_ADDRESS (the CLI finds kiln dev's server from temporal.yaml); docs/*.md blocks see it and
 * `temporal` on PATH, as the setup block of docs/operations.md has the reader set them. Every other
 * shell block is listed in NOT_RUNNABLE (test/helpers/docBlocks.ts) with the reason.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { freePort } from '../src/temporal/devServer';
import { docsConfigModels, NOT_RUNNABLE, shellBlocks, showsLine, unlabelledCommandBlocks, type ShellBlock } from './helpers/docBlocks';
import { REPO, temporalBinary, waitFor } from './helpers/kiln';

interface Stack {
  dir: string;
  home: string;
  file: string;
  address: string;
  dev?: ChildProcess;
  devOut: string;
}

/** The repo's temporal.yaml as a reader has it: free ports, no metrics ports, the docs' extra models. */
async function newStack(): Promise<Stack> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-docs-run-'));
  const port = await freePort();
  const uiPort = await freePort();
  const yaml = fs
    .readFileSync(path.join(REPO, 'temporal.yaml'), 'utf8')
    .replace('  port: 7233', `  port: ${port}`)
    .replace('  uiPort: 8233', `  uiPort: ${uiPort}`)
    .replace('    metricsPort: 9464', '    metricsPort: 0')
    .replace('      metricsPort: 9465', '      metricsPort: 0')
    .replace(/^models:\n/m, `models:\n${docsConfigModels().join('\n')}\n`);
  assert.ok(yaml.includes(`port: ${port}`) && yaml.includes(`uiPort: ${uiPort}`), 'the dev ports of temporal.yaml were replaced');
  const file = path.join(dir, 'temporal.yaml');
  fs.writeFileSync(file, yaml);
  return { dir, home: path.join(dir, 'state'), file, address: `127.0.0.1:${port}`, devOut: path.join(dir, 'dev.out') };
}

/** The environment of a reader's shell: repo root, KILN_CONFIG/KILN_HOME naming the stack, no cluster. */
function shellEnv(s: Stack): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, KILN_CONFIG: s.file, KILN_HOME: s.home, KILN_LOG_PRETTY: '0', TEMPORAL_CLI: temporalBinary() };
  delete env.TEMPORAL_ADDRESS;
  delete env.TEMPORAL_NAMESPACE;
  return env;
}

/** Runs one block in bash, after the exports of the doc's earlier blocks; saves its exports for the next. */
function runBlock(s: Stack, b: ShellBlock, envFile: string, extra: NodeJS.ProcessEnv): Promise<{ code: number | null; out: string }> {
  const script = `[ -f ${envFile} ] && . ${envFile}\ntrap 'export -p > ${envFile}' EXIT\nset -euo pipefail\n${b.script}\n`;
  return new Promise((resolve) => {
    const child = spawn('bash', ['-c', script], { cwd: REPO, env: { ...shellEnv(s), ...extra }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString('utf8')));
    child.stderr.on('data', (d: Buffer) => (out += d.toString('utf8')));
    const timer = setTimeout(() => child.kill('SIGKILL'), 300_000);
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, out });
    });
  });
}

/** Live processes of the stack: anything with its state folder in its environment or command line. */
function stackProcesses(home: string): number[] {
  const out: number[] = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    try {
      const stat = fs.readFileSync(`/proc/${name}/stat`, 'utf8');
      if (/^[ZX]/.test(stat.slice(stat.lastIndexOf(')') + 2))) continue;
      const cmd = fs.readFileSync(`/proc/${name}/cmdline`, 'utf8');
      const env = fs.readFileSync(`/proc/${name}/environ`, 'utf8');
      if (cmd.includes(home) || env.split('\0').includes(`KILN_HOME=${home}`)) out.push(Number(name));
    } catch {
      /* gone, or not ours */
    }
  }
  return out;
}

describe('README.md and docs/*.md: every docs-test block runs as written against npx kiln dev', () => {
  let s: Stack;
  const ran = new Set<string>();

  before(async () => {
    s = await newStack();
    const fd = fs.openSync(s.devOut, 'a');
    // A second terminal: `npx kiln dev` in its own process group, stopped with Ctrl-C (SIGINT to the group).
    s.dev = spawn('bash', ['-c', 'exec npx kiln dev'], { cwd: REPO, env: shellEnv(s), stdio: ['ignore', fd, fd], detached: true });
    fs.closeSync(fd);
    await waitFor(() => fs.readFileSync(s.devOut, 'utf8').includes('Kiln is running') || s.dev!.exitCode !== null, 600_000, 'npx kiln dev to be ready', 500);
    assert.ok(s.dev.exitCode === null, `npx kiln dev exited:\n${fs.readFileSync(s.devOut, 'utf8')}`);
    assert.match(fs.readFileSync(s.devOut, 'utf8'), new RegExp(`Temporal server: +${s.address}`));
  });

  after(async () => {
    if (s?.dev?.pid && s.dev.exitCode === null) {
      const exited = new Promise((r) => s.dev!.once('exit', r));
      process.kill(-s.dev.pid, 'SIGINT');
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([exited, new Promise((r) => (timer = setTimeout(r, 60_000)))]);
      clearTimeout(timer);
      assert.notEqual(s.dev.exitCode ?? s.dev.signalCode, null, 'npx kiln dev stopped within 60 s of Ctrl-C');
    }
    const left = s ? await waitFor(() => stackProcesses(s.home).length === 0 || null, 30_000, 'kiln dev and what it started to stop').then(() => [], () => stackProcesses(s.home)) : [];
    for (const pid of left) process.kill(pid, 'SIGKILL');
    if (s) fs.rmSync(s.dir, { recursive: true, force: true });
    assert.deepEqual(left, [], 'processes of the stack left after Ctrl-C of kiln dev');
  });

  for (const file of [...new Set(shellBlocks().map((b) => b.file))]) {
    const blocks = shellBlocks().filter((b) => b.file === file && b.id);
    if (!blocks.length) continue;
    test(`${file}: ${blocks.map((b) => b.id).join(', ')}`, { timeout: 900_000 }, async (t) => {
      const envFile = path.join(s.dir, `${file.replace(/\W/g, '_')}.env`);
      const extra = file === 'README.md' ? {} : { TEMPORAL_ADDRESS: s.address, PATH: `${path.dirname(temporalBinary())}:${process.env.PATH}` };
      for (const b of blocks) {
        const t0 = Date.now();
        const r = await runBlock(s, b, envFile, extra);
        t.diagnostic(`${b.where} (${b.id}): exit ${r.code} in ${Math.round((Date.now() - t0) / 1000)} s`);
        assert.equal(r.code, b.exit, `${b.where} (${b.id}) exited ${r.code}, the doc says ${b.exit}:\n$ ${b.script}\n${r.out}`);
        for (const line of b.output) assert.ok(showsLine(r.out, line), `${b.where} (${b.id}): the doc shows "${line}", the output has no such line:\n${r.out}`);
        ran.add(b.where);
      }
    });
  }

  test('every shell block is run here, by test/docs.test.ts (operations-test), or listed as not runnable with the reason', () => {
    const blocks = shellBlocks();
    assert.deepEqual(unlabelledCommandBlocks(), [], 'a command block without ```sh would go unchecked');
    const unaccounted = blocks.filter((b) => !b.id && !b.info.startsWith('operations-test id=') && !NOT_RUNNABLE[b.key]).map((b) => `${b.where}: ${b.key}`);
    assert.deepEqual(unaccounted, [], 'a new command block: run it (```sh docs-test id=...) or add it to NOT_RUNNABLE with the reason');
    const keys = new Set(blocks.map((b) => b.key));
    assert.deepEqual(Object.keys(NOT_RUNNABLE).filter((k) => !keys.has(k)), [], 'NOT_RUNNABLE names a block that is gone');
    assert.deepEqual(blocks.filter((b) => b.id && NOT_RUNNABLE[b.key]).map((b) => b.where), [], 'a block both run and listed as not runnable');
    assert.ok(blocks.filter((b) => b.info.startsWith('operations-test')).every((b) => b.file === 'docs/operations.md'), 'operations-test blocks live in docs/operations.md');
    const bareKiln = (b: ShellBlock) => /(^|\s)kiln\s/.test(b.script.split('\n').map((l) => l.split(' #')[0]!).join('\n').replace(/npx kiln/g, ''));
    assert.deepEqual(blocks.filter((b) => bareKiln(b) && !NOT_RUNNABLE[b.key]).map((b) => b.where), [], 'a runnable block says npx kiln (kiln is not on PATH)');
    assert.equal(new Set(blocks.filter((b) => b.id).map((b) => `${b.file} ${b.id}`)).size, blocks.filter((b) => b.id).length, 'duplicate docs-test ids in a doc');
  });

  test('every docs-test block was run', () => {
    assert.deepEqual(shellBlocks().filter((b) => b.id && !ran.has(b.where)).map((b) => b.where), []);
  });
});
