/**
 * `kiln dev` watches temporal.yaml: when the file changes under running workers it says so, and how
 * to apply it. The workers keep the config they loaded (its hash is in their identity); a job
 * submitted against the new file is refused by them with WorkerConfigMismatch until they restart.
 */
import * as fs from 'node:fs';
import { configFileHash, type KilnConfig } from '../config/load';
import type { Logger } from '../logger';

/** Starts watching; returns the function that stops it. */
export function watchConfig(config: KilnConfig, log: Pick<Logger, 'warn' | 'info'>, intervalMs = 1000): () => void {
  let reported = config.hash;
  const onChange = (): void => {
    const now = configFileHash(config.file);
    if (now === reported) return;
    if (now === null) {
      log.warn({ file: config.file }, `${config.file} changed and cannot be read or parsed now; the workers keep running config ${config.hash} (kiln config check shows what is wrong)`);
    } else if (now === config.hash) {
      log.info({ file: config.file, hash: now }, `${config.file} is back to config ${now}, the one the workers run`);
    } else {
      log.warn(
        { file: config.file, workersRun: config.hash, onDisk: now },
        `${config.file} changed (config ${config.hash} → ${now}): the workers still run ${config.hash} and refuse jobs of a model whose section changed (WorkerConfigMismatch). To apply it, stop kiln dev (Ctrl-C) and start it again; kiln config check validates the file first`,
      );
    }
    reported = now ?? '';
  };
  fs.watchFile(config.file, { interval: intervalMs, persistent: false }, onChange);
  // An edit between loading the config and the watcher's first look is seen too.
  onChange();
  return () => fs.unwatchFile(config.file, onChange);
}
