/**
 * Can this argv start here? The executable must be found (as a path, or on PATH) and be executable;
 * a script argument (`./train.py`, `train.mjs`, …) must exist. Used by `kiln config check`,
 * `kiln doctor`, each GPU worker at start, and the shim right before it spawns a trainer.
 * No imports beyond node: the shim loads this module.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

const SCRIPT_EXT = /\.(py|pyw|js|mjs|cjs|ts|sh|bash|rb|pl|r|jl|lua|php)$/i;
/** After these, the rest of argv is a program text or module name, not files. */
const PROGRAM_FLAGS = new Set(['-c', '-m', '-e', '--eval', '-p', '--print']);

function executable(file: string): 'ok' | 'missing' | 'not-file' | 'not-executable' {
  let st: fs.Stats;
  try {
    st = fs.statSync(file);
  } catch {
    return 'missing';
  }
  if (!st.isFile()) return 'not-file';
  try {
    fs.accessSync(file, fs.constants.X_OK);
    return 'ok';
  } catch {
    return 'not-executable';
  }
}

/** Where argv[0] would be found, or why it would not. */
function findExecutable(cmd: string, cwd: string, envPath: string): { file: string } | { problem: string } {
  if (cmd.includes('/')) {
    const file = path.resolve(cwd, cmd);
    const s = executable(file);
    if (s === 'ok') return { file };
    if (s === 'missing') return { problem: `executable ${cmd} not found (looked at ${file})` };
    if (s === 'not-file') return { problem: `executable ${cmd} is not a file (${file})` };
    return { problem: `${cmd} is not executable (${file}): chmod +x it, or run it through its interpreter` };
  }
  let notExec: string | null = null;
  for (const dir of envPath.split(path.delimiter)) {
    if (!dir) continue;
    const file = path.join(dir, cmd);
    const s = executable(file);
    if (s === 'ok') return { file };
    if (s === 'not-executable') notExec ??= file;
  }
  if (notExec) return { problem: `${cmd} is not executable (${notExec}): chmod +x it` };
  return { problem: envPath ? `executable ${cmd} not found on PATH (${envPath.split(path.delimiter).filter(Boolean).length} folders searched)` : `executable ${cmd} not found: PATH is empty` };
}

/** Indexes of the arguments that look like files the command needs: script-like names, and a leading ./ or ../ path. */
function fileArgs(argv: readonly string[], shown: readonly string[]): number[] {
  const out: number[] = [];
  for (let i = 1; i < argv.length; i++) {
    const a = shown[i] ?? argv[i]!;
    if (PROGRAM_FLAGS.has(a)) break;
    if (a.startsWith('-') || a.includes('=') || /\s/.test(a)) continue;
    const firstPositional = !out.length && shown.slice(1, i).every((x) => x.startsWith('-'));
    if (SCRIPT_EXT.test(a) || (firstPositional && (a.startsWith('./') || a.startsWith('../') || path.isAbsolute(a)))) out.push(i);
  }
  return out;
}

/**
 * The first reason `argv` cannot start with this working directory and PATH, in words; null when
 * it can. Relative paths resolve against `cwd`. `shown`: the argv as the user wrote it (before
 * resolveCommand), for the message.
 */
export function commandProblem(argv: readonly string[], cwd: string, envPath = process.env.PATH ?? '', shown: readonly string[] = argv): string | null {
  if (!argv.length || !argv[0]) return 'the command is empty';
  const exe = findExecutable(argv[0], cwd, envPath);
  if ('problem' in exe) return shown[0] && shown[0] !== argv[0] ? exe.problem.replace(argv[0], shown[0]) : exe.problem;
  for (const i of fileArgs(argv, shown)) {
    const file = path.resolve(cwd, argv[i]!);
    const name = shown[i] ?? argv[i]!;
    if (!fs.existsSync(file)) return file === name ? `script ${name} not found` : `script ${name} not found (looked at ${file})`;
  }
  return null;
}
