/**
 * pino everywhere. JSON lines by default; a compact human format on a TTY or with KILN_LOG_PRETTY=1.
 * Secrets (API keys, TLS keys, anything under server.auth) are redacted.
 */
import { Writable } from 'node:stream';
import pino, { type Logger } from 'pino';

export type { Logger };

const REDACT = [
  'apiKey', '*.apiKey', '*.*.apiKey',
  'tls.key', '*.tls.key', '*.*.tls.key',
  'auth', '*.auth', '*.*.auth',
  'authorization', '*.authorization', 'headers.authorization',
  'password', '*.password', 'token', '*.token',
];

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
      redact: { paths: REDACT, censor: '[redacted]' },
      base: { pid: process.pid },
    },
    pretty ? prettyStream(dest) : (dest as pino.DestinationStream),
  );
}
