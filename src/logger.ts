/**
 * pino everywhere. JSON lines by default; a compact human format on a TTY or with KILN_LOG_PRETTY=1.
 * Secrets (API keys, TLS keys, anything under server.auth) are redacted.
 */
import { Writable } from 'node:stream';
import pino, { type Logger } from 'pino';

export type { Logger };

// pino's redact paths match one depth each, and a config or options object can be logged at any
// depth ({ deps: { config: { server: { apiKey } } } }), so log objects are also scrubbed by key name.
const SECRET_KEYS = new Set(['apiKey', 'TEMPORAL_API_KEY', 'auth', 'authorization', 'password', 'token', 'secret', 'clientSecret']);
/** `key` is a secret under these parents: server.tls.key (a path) and clientCertPair.key (the contents). */
const KEY_PARENTS = new Set(['tls', 'clientCertPair']);
const CENSOR = '[redacted]';
/** The password of a URL with credentials (registry.url: postgres://user:password@host/db). */
const URL_PASSWORD = /([a-z][a-z0-9+.-]*:\/\/[^:/@\s]*:)[^@\s/]*@/gi;
// Child bindings skip pino's formatters, so they also get pino's path-based redaction (four levels deep).
const REDACT_PATHS = [...SECRET_KEYS, 'tls.key', 'clientCertPair.key'].flatMap((k) => [k, `*.${k}`, `*.*.${k}`, `*.*.*.${k}`]);

function isPlain(v: unknown): v is Record<string, unknown> {
  if (!v || typeof v !== 'object') return false;
  const proto = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
}

/** A copy of `v` with secret fields replaced; Errors, Buffers and class instances pass through untouched. */
export function redactSecrets(v: unknown, parent = '', depth = 0): unknown {
  if (typeof v === 'string') return v.includes('PRIVATE KEY-----') ? CENSOR : v.replace(URL_PASSWORD, '$1***@');
  if (depth > 12) return v;
  if (Array.isArray(v)) return v.map((x) => redactSecrets(x, parent, depth + 1));
  if (!isPlain(v)) return v;
  const out: Record<string, unknown> = {};
  for (const [k, x] of Object.entries(v)) {
    out[k] = SECRET_KEYS.has(k) || (k === 'key' && KEY_PARENTS.has(parent)) ? CENSOR : redactSecrets(x, k, depth + 1);
  }
  return out;
}

const LEVELS: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO ', 40: 'WARN ', 50: 'ERROR', 60: 'FATAL' };
const SKIP = new Set(['level', 'time', 'pid', 'hostname', 'msg', 'name', 'v']);

/** Turns pino JSON lines into `12:03:04 INFO  worker: msg key=value`. */
function prettyStream(out: NodeJS.WritableStream): Writable {
  return new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString('utf8').split('\n')) {
        if (!line) continue;
        try {
          const o = JSON.parse(line) as Record<string, unknown>;
          const t = new Date(Number(o.time)).toISOString().slice(11, 19);
          const extras = Object.entries(o)
            .filter(([k]) => !SKIP.has(k))
            .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`)
            .join(' ');
          out.write(`${t} ${LEVELS[Number(o.level)] ?? o.level} ${o.name ? `${String(o.name)}: ` : ''}${String(o.msg ?? '')}${extras ? `  ${extras}` : ''}\n`);
        } catch {
          out.write(`${line}\n`);
        }
      }
      cb();
    },
  });
}

export interface LoggerOptions {
  name: string;
  level?: string;
  pretty?: boolean;
  /** Defaults to stderr, so stdout stays free for command output (`--json`). */
  destination?: NodeJS.WritableStream;
}

export function createLogger(opts: LoggerOptions): Logger {
  const dest = opts.destination ?? process.stderr;
  const pretty = opts.pretty ?? (process.env.KILN_LOG_PRETTY === '1' || (process.env.KILN_LOG_PRETTY !== '0' && Boolean((dest as NodeJS.WriteStream).isTTY)));
  return pino(
    {
      name: opts.name,
      level: opts.level ?? process.env.KILN_LOG_LEVEL ?? 'info',
      redact: { paths: REDACT_PATHS, censor: CENSOR },
      formatters: { log: (o) => redactSecrets(o) as Record<string, unknown> },
      base: { pid: process.pid },
    },
    pretty ? prettyStream(dest) : (dest as pino.DestinationStream),
  );
}
