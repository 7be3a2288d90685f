/**
 * The pino logger redacts secrets wherever a config or connection options object is logged: the API
 * key, the TLS key (its path and, in connection options, its contents) and anything under server.auth.
 */
import assert from 'node:assert/strict';
import * as os from 'node:os';
import * as path from 'node:path';
import { Writable } from 'node:stream';
import { describe, test } from 'node:test';
import { parseConfigText } from '../src/config/load';
import { createLogger } from '../src/logger';

const API_KEY = 'sk-live-APIKEY-7f3a9c';
const KEY_PATH = '/etc/kiln/secret-client.key';
const KEY_PEM = '-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC-PRIVATE\n-----END PRIVATE KEY-----';
const AUTH_TOKEN = 'oidc-token-c0ffee';

function capture(pretty: boolean): { log: ReturnType<typeof createLogger>; text: () => string } {
  let buf = '';
  const destination = new Writable({
    write(chunk: Buffer, _enc, cb) {
      buf += chunk.toString('utf8');
      cb();
    },
  });
  return { log: createLogger({ name: 'redaction-test', destination, pretty, level: 'trace' }), text: () => buf };
}

const CONFIG_YAML = `version: 1
server:
  address: temporal.example:7233
  namespace: kiln
  apiKey: \${TEMPORAL_API_KEY}
  tls: { cert: /etc/kiln/client.pem, key: ${KEY_PATH} }
`;

function logEverything(log: ReturnType<typeof createLogger>): void {
  const config = parseConfigText(CONFIG_YAML, path.join(os.tmpdir(), 'temporal.yaml'), { TEMPORAL_API_KEY: API_KEY });
  assert.equal(config.server.apiKey, API_KEY, 'the key really is in the loaded config');
  const server = { ...config.server, auth: { token: AUTH_TOKEN, oidc: { clientSecret: AUTH_TOKEN } } };
  log.info({ config: { ...config, server } }, 'config loaded');
  log.info({ server }, 'server settings');
  log.info(server, 'server settings at the top level');
  log.child({ server }).warn('child logger bound to server settings');
  // What connectClient hands the SDK: the key file's contents.
  log.debug({ connection: { address: server.address, apiKey: API_KEY, tls: { clientCertPair: { crt: Buffer.from('CERT'), key: Buffer.from(KEY_PEM) } } } }, 'connecting');
  log.info({ request: { headers: { authorization: `Bearer ${AUTH_TOKEN}` } } }, 'request');
  log.info({ worker: { deps: { config: { server: { apiKey: API_KEY } } } } }, 'deeply nested');
  log.info({ env: { TEMPORAL_API_KEY: API_KEY } }, 'environment');
}

function assertClean(text: string): void {
  assert.ok(text.length > 0, 'something was logged');
  for (const secret of [API_KEY, KEY_PATH, AUTH_TOKEN, 'PRIVATE KEY', 'PRIVATE']) {
    assert.ok(!text.includes(secret), `secret ${JSON.stringify(secret)} leaked:\n${text}`);
  }
  // Bytes of the PEM as a Buffer's JSON would be another way to leak it.
  assert.ok(!text.includes(JSON.stringify([...Buffer.from(KEY_PEM)].slice(0, 8)).slice(1, -1)), 'key contents leaked as bytes');
  assert.ok(text.includes('[redacted]'), 'redacted fields are marked');
}

describe('logger redaction', () => {
  test('JSON logs: API key, TLS key path and contents, server.auth and auth headers are redacted at any depth', () => {
    const { log, text } = capture(false);
    logEverything(log);
    const out = text();
    assertClean(out);
    const lines = out.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.equal(lines.length, 8);
    const first = lines[0] as { config: { server: { apiKey: string; tls: { key: string; cert: string }; auth: unknown; address: string } } };
    assert.equal(first.config.server.apiKey, '[redacted]');
    assert.equal(first.config.server.tls.key, '[redacted]');
    assert.equal(first.config.server.auth, '[redacted]');
    // Non-secrets stay readable.
    assert.equal(first.config.server.tls.cert, '/etc/kiln/client.pem');
    assert.equal(first.config.server.address, 'temporal.example:7233');
  });

  test('pretty logs (TTY / --pretty) are redacted too', () => {
    const { log, text } = capture(true);
    logEverything(log);
    const out = text();
    assertClean(out);
    assert.match(out, /INFO {2}redaction-test: config loaded/);
  });

  test('a password in a URL (registry.url) is masked wherever the string is logged', () => {
    const { log, text } = capture(false);
    const pw = 'pg-Pa55word-8d1e';
    const config = parseConfigText('version: 1\nregistry:\n  url: postgres://kiln:${KILN_PG_PASSWORD}@db.internal:5432/kiln\n', path.join(os.tmpdir(), 'temporal.yaml'), { KILN_PG_PASSWORD: pw });
    assert.equal(config.registry.url, `postgres://kiln:${pw}@db.internal:5432/kiln`, 'the password really is in the loaded config');
    log.info({ config }, 'config loaded');
    log.info({ url: config.registry.url, nested: { list: [config.registry.url] } }, 'registry');
    const out = text();
    assert.ok(!out.includes(pw), `the password leaked:\n${out}`);
    const lines = out.trim().split('\n').map((l) => JSON.parse(l) as { config?: { registry: { url: string } }; url?: string; nested?: { list: string[] } });
    assert.equal(lines[0]!.config!.registry.url, 'postgres://kiln:***@db.internal:5432/kiln');
    assert.equal(lines[1]!.url, 'postgres://kiln:***@db.internal:5432/kiln');
    assert.deepEqual(lines[1]!.nested!.list, ['postgres://kiln:***@db.internal:5432/kiln']);
  });
});
