/**
 * Process-wide Temporal runtime for worker processes: the SDK's logger bridged to pino, core logs
 * forwarded to it, and the Prometheus exporter. Must run before any connection or worker exists.
 */
import { Runtime, makeTelemetryFilterString, type LogLevel, type LogMetadata } from '@temporalio/worker';
import type { Logger } from '../src/logger';

class PinoSdkLogger {
  constructor(private readonly pino: Logger) {}
  log(level: LogLevel, message: string, meta?: LogMetadata): void {
    const lvl = level.toLowerCase() as 'trace' | 'debug' | 'info' | 'warn' | 'error';
    this.pino[lvl]({ sdk: true, ...meta }, message);
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
