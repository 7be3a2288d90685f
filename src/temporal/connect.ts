/**
 * Connections to the Temporal server from config: address, namespace, TLS or API key.
 */
import * as fs from 'node:fs';
import { Client, Connection, type ConnectionOptions } from '@temporalio/client';
import { NativeConnection, type NativeConnectionOptions } from '@temporalio/worker';
import type { KilnConfig } from '../config/load';

export function serverAddress(cfg: KilnConfig): string {
  return cfg.server.address || `${cfg.dev.ip}:${cfg.dev.port}`;
}

function tlsOptions(cfg: KilnConfig): ConnectionOptions['tls'] {
  const t = cfg.server.tls;
  if (!t && !cfg.server.apiKey) return undefined;
  if (!t) return true;
  return {
    serverNameOverride: t.serverName,
    serverRootCACertificate: t.ca ? fs.readFileSync(t.ca) : undefined,
    clientCertPair: t.cert && t.key ? { crt: fs.readFileSync(t.cert), key: fs.readFileSync(t.key) } : undefined,
  };
}

export async function connectClient(cfg: KilnConfig, opts: { connectTimeoutMs?: number } = {}): Promise<Client> {
  const connection = await Connection.connect({
    address: serverAddress(cfg),
    tls: tlsOptions(cfg),
    apiKey: cfg.server.apiKey || undefined,
    connectTimeout: opts.connectTimeoutMs ?? 10_000,
  });
  return new Client({ connection, namespace: cfg.server.namespace });
}

export async function connectNative(cfg: KilnConfig): Promise<NativeConnection> {
  const options: NativeConnectionOptions = {
    address: serverAddress(cfg),
    tls: tlsOptions(cfg) as NativeConnectionOptions['tls'],
    apiKey: cfg.server.apiKey || undefined,
  };
  return NativeConnection.connect(options);
}
