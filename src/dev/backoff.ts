/**
 * Restart backoff for what `kiln dev` supervises (workers, the dev server): the delay doubles with
 * each quick death, and a run that stayed up HEALTHY_AFTER_MS starts it over. Kills 20 s apart used
 * to get 4, 8, 16 s (the reset needed a minute of uptime); now each gets the initial delay (250 ms) again;
 * quick deaths double it: 0.25, 0.5, 1, 2 … up to 30 s.
 */

/** Short: a worker killed once is back before its jobs' next attempt needs it (issue 16, ≤ 3 s takeover). */
export const INITIAL_RESTART_DELAY_MS = 250;
export const MAX_RESTART_DELAY_MS = 30_000;
/** Long enough to have started and served (a worker is up in ~2 s, the server in ~3 s). */
export const HEALTHY_AFTER_MS = 10_000;

export class RestartBackoff {
  private restarts = 0;

  constructor(private readonly healthyAfterMs = HEALTHY_AFTER_MS) {}

  /** Delay before restarting something that ran `uptimeMs` before it died. */
  next(uptimeMs: number): { delayMs: number; restarts: number } {
    if (uptimeMs >= this.healthyAfterMs) this.restarts = 0;
    const delayMs = Math.min(MAX_RESTART_DELAY_MS, INITIAL_RESTART_DELAY_MS * 2 ** this.restarts);
    this.restarts += 1;
    return { delayMs, restarts: this.restarts };
  }
}
