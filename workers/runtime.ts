/**
 * Process-wide Temporal runtime for worker processes: the SDK's logger bridged to pino, core logs
 * forwarded to it, and the Prometheus exporter. Must run before any connection or worker exists.
 */
import { Runtime, makeTelemetryFilterString, type LogLevel, type LogMetadata } from '@temporalio/worker';
import type { Logger } from '../src/logger';

/**
 * SDK messages that are chatter for a Kiln operator, not news: a worker that by design polls only
 * activities, and the worker's state changes (Kiln logs its own `worker started`/`worker stopped`).
 * They go to debug level (KILN_LOG_LEVEL=debug shows them).
 */
const SDK_CHATTER = [/^No workflows registered, not polling for workflow tasks/, /^No activities registered/, /^No Nexus services registered/, /^Worker state changed/, /^Initializing worker/, /^Workflow bundle created/, /^Creating worker/];

/** The level an SDK message is logged at: SDK info and known chatter at debug, real warnings and errors as they are. */
export function sdkLevel(level: LogLevel, message: string): 'trace' | 'debug' | 'info' | 'warn' | 'error' {
  const lvl = level.toLowerCase() as 'trace' | 'debug' | 'info' | 'warn' | 'error';
  if (lvl === 'info' || ((lvl === 'warn' || lvl === 'debug') && SDK_CHATTER.some((re) => re.test(message)))) return 'debug';
  return lvl;
}

class PinoSdkLogger {
  constructor(private readonly pino: Logger) {}
  log(level: LogLevel, message: string, meta?: LogMetadata): void {
    this.pino[sdkLevel(level, message)]({ sdk: true, ...meta }, message);
  }
  trace(m: string, meta?: LogMetadata) { this.log('TRACE', m, meta); }
  debug(m: string, meta?: LogMetadata) { this.log('DEBUG', m, meta); }
  info(m: string, meta?: LogMetadata) { this.log('INFO', m, meta); }
  warn(m: string, meta?: LogMetadata) { this.log('WARN', m, meta); }
  error(m: string, meta?: LogMetadata) { this.log('ERROR', m, meta); }
}

export function installRuntime(log: Logger, metricsPort: number | undefined): Runtime {
  return Runtime.install({
    logger: new PinoSdkLogger(log),
    telemetryOptions: {
      logging: { filter: makeTelemetryFilterString({ core: 'WARN' }), forward: {} },
      metrics: metricsPort ? { prometheus: { bindAddress: `0.0.0.0:${metricsPort}` } } : undefined,
    },
  });
}
