import type { Logger } from 'pino';
import { SluiceError } from '../errors.js';
import type { Metrics } from '../ops/metrics.js';
import { asInfraError, type InfraError } from './infra-errors.js';
import { backoff, sleep } from '../util/retry.js';
import { systemClock, type Clock } from '../util/clock.js';

export interface StallOptions {
  signal: AbortSignal;
  /** infra_errors.max_backoff_ms and give_up_after_seconds of sluice.yml. */
  maxBackoffMs: number;
  giveUpAfterSeconds: number;
  metrics: Metrics;
  log: Logger;
  updateGauges: () => void;
  /** Time for the pause's length, give-up and backoff waits (tests inject their own). */
  clock?: Clock;
}

/** Waits out infrastructure failures (see infra-errors.ts) for the pipeline. */
export class StallGuard {
  /** The infrastructure failure being waited out, for /readyz. */
  current: { error: InfraError; since: number } | undefined;

  private readonly clock: Clock;

  constructor(private readonly opts: StallOptions) {
    this.clock = opts.clock ?? systemClock;
  }

  /**
   * Runs `step` until it works. An infrastructure failure (see infra-errors.ts: a full or
   * failing disk, permissions, memory) is nobody's message's fault: nothing is dead-lettered or
   * acked for it. The pipeline pauses (reading stops: the loop waits here), /readyz turns red,
   * the failure is counted and logged once, `undo` puts things back as they were before the
   * step, and the step is tried again with backoff until it works — or until
   * infra_errors.give_up_after_seconds, or a stop, ends the run with everything unacked left
   * for the next start. Any other error goes up at once.
   */
  async run<T>(where: string, step: () => Promise<T>, undo: () => Promise<void>): Promise<T> {
    const { signal, maxBackoffMs, giveUpAfterSeconds } = this.opts;
    const delay = backoff({ initialMs: Math.min(250, maxBackoffMs), maxMs: maxBackoffMs });
    for (let attempt = 1; ; attempt++) {
      try {
        const r = await step();
        if (attempt > 1 && this.current) {
          this.opts.log.info({ after_ms: this.clock.now() - this.current.since, attempts: attempt }, `resumed: ${where} works again`);
          this.current = undefined;
          this.opts.metrics.stalled.set(0);
          this.opts.updateGauges();
        }
        return r;
      } catch (err) {
        const infra = asInfraError(err, where);
        if (!infra) throw err;
        try {
          await undo();
        } catch (undoErr) {
          this.opts.log.debug({ err: undoErr }, 'undoing the failed step failed too; the next start sweeps what is left');
        }
        this.opts.metrics.infraErrors.inc({ kind: infra.kind });
        this.opts.metrics.errors.inc({ stage: 'infra', error_type: infra.kind.replace(/ /g, '_') });
        const changed = this.current?.error.message !== infra.message;
        this.current = { error: infra, since: this.current?.since ?? this.clock.now() };
        this.opts.metrics.stalled.set(1);
        this.opts.updateGauges();
        const lasted = this.clock.now() - this.current.since;
        if (giveUpAfterSeconds > 0 && lasted >= giveUpAfterSeconds * 1000) {
          throw new SluiceError(
            'INFRA',
            `gave up after ${Math.round(lasted / 1000)} s (infra_errors.give_up_after_seconds ${giveUpAfterSeconds}): ${infra.message}; nothing of the unacked batch was lost: it is read again on the next start`,
            { cause: err },
          );
        }
        if (signal.aborted) throw new SluiceError('INFRA', `stopped while paused: ${infra.message}; the batch was not acked and is read again on the next start`, { cause: err });
        if (changed)
          this.opts.log.error({ kind: infra.kind, retry_max_ms: maxBackoffMs }, `paused: ${infra.message}; nothing was dead-lettered or acked for it, and the batch is retried until it works`);
        else this.opts.log.debug({ kind: infra.kind, attempt, retry_in_ms: delay(attempt) }, 'still failing');
        await sleep(delay(attempt), signal, this.clock);
      }
    }
  }
}
