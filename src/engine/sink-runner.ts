import type { DuckDBConnection } from '@duckdb/node-api';
import type { Logger } from 'pino';
import { SluiceError, errorMessage } from '../errors.js';
import type { SinkPolicy } from '../connectors/shared-config.js';
import type { Sink, SinkWrite } from '../connectors/types.js';
import type { Metrics } from '../ops/metrics.js';
import { backoff as backoffDelay } from '../util/retry.js';
import { systemClock, type Clock } from '../util/clock.js';

export type CircuitState = 'closed' | 'open' | 'half-open';
const CIRCUIT_GAUGE: Record<CircuitState, number> = { closed: 0, open: 1, 'half-open': 2 };

export type WriteResult =
  | { ok: true }
  /** Not tried: the circuit is open, a probe is in flight, or this model's flush is in backoff. */
  | { ok: false; blocked: true }
  /**
   * The write failed. `exhausted`: retry.max_attempts failures in a row for this model's flush,
   * or a permanent error — the sink's on_error applies.
   */
  | { ok: false; blocked: false; error: unknown; attempts: number; exhausted: boolean; retryInMs: number };

/**
 * One sink under its error policy. Failed writes of a model's flush are retried with
 * exponential backoff (retry.backoff_ms doubling up to retry.max_backoff_ms); after
 * circuit.failures consecutive failures (any model) the circuit opens: no write is tried for
 * circuit.cooldown_ms, then one probe write (half-open) closes it on success or opens it again.
 * Reports per-sink metrics. What to do once a flush is exhausted is the caller's (on_error).
 */
export class SinkRunner {
  private state: CircuitState = 'closed';
  private consecutiveFailures = 0;
  private openUntil = 0;
  private probing = false;
  private lastError = '';
  private readonly backoff = new Map<string, { count: number; nextTry: number }>();

  constructor(
    readonly name: string,
    readonly sink: Sink,
    readonly policy: SinkPolicy,
    private readonly metrics: Metrics,
    private readonly log: Logger,
    /** Times backoff and the circuit's cooldown. */
    private readonly clock: Clock = systemClock,
  ) {
    this.metrics.sinkCircuit.set({ sink: name }, 0);
  }

  /** When a write of `model`'s flush may be tried (ms since the epoch; in the past: now). */
  nextTry(model: string): number {
    let t = this.backoff.get(model)?.nextTry ?? 0;
    if (this.state === 'open') t = Math.max(t, this.openUntil);
    if (this.probing) t = Math.max(t, this.clock.now() + 50);
    return t;
  }

  canWrite(model: string, now = this.clock.now()): boolean {
    return this.nextTry(model) <= now;
  }

  /** Why the sink is not ready (circuit open or probing), or undefined. */
  notReady(): string | undefined {
    if (this.state === 'closed') return undefined;
    return `sink ${this.name} circuit ${this.state} after ${this.consecutiveFailures} consecutive failures: ${this.lastError}`;
  }

  /** Writes one flush under the policy; never throws for a failed write (see WriteResult). */
  async write(w: SinkWrite, db: DuckDBConnection): Promise<WriteResult> {
    const now = this.clock.now();
    if (!this.canWrite(w.model, now)) return { ok: false, blocked: true };
    if (this.state === 'open') {
      this.setState('half-open');
      this.log.info({ sink: this.name }, 'sink circuit half-open: one probe write');
    }
    if (this.state === 'half-open') this.probing = true;
    const prev = this.backoff.get(w.model);
    if (prev) this.metrics.sinkRetries.inc({ sink: this.name });
    const end = this.metrics.sinkWriteDuration.startTimer({ sink: this.name });
    try {
      await this.sink.write(w, db);
      end({ result: 'ok' });
      this.backoff.delete(w.model);
      this.consecutiveFailures = 0;
      if (this.state !== 'closed') {
        this.setState('closed');
        this.log.info({ sink: this.name }, 'sink circuit closed: the probe write succeeded');
      }
      this.metrics.rowsWritten.inc({ model: w.model, sink: this.name }, w.rows);
      return { ok: true };
    } catch (err) {
      end({ result: 'error' });
      const { retry, circuit } = this.policy;
      const attempts = (prev?.count ?? 0) + 1;
      const permanent = err instanceof SluiceError && err.permanent;
      // The target's own Retry-After (an HTTP 429 or 503) is a floor for the wait.
      const retryInMs = Math.max(backoffDelay({ initialMs: retry.backoff_ms, maxMs: retry.max_backoff_ms })(attempts), err instanceof SluiceError ? (err.retryAfterMs ?? 0) : 0);
      this.backoff.set(w.model, { count: attempts, nextTry: this.clock.now() + retryInMs });
      this.lastError = errorMessage(err);
      this.consecutiveFailures++;
      this.metrics.sinkErrors.inc({ sink: this.name, error_type: permanent ? 'permanent' : 'transient' });
      if (this.state === 'half-open' || (this.state === 'closed' && this.consecutiveFailures >= circuit.failures)) {
        this.openUntil = this.clock.now() + circuit.cooldown_ms;
        this.setState('open');
        this.log.warn({ sink: this.name, failures: this.consecutiveFailures, cooldown_ms: circuit.cooldown_ms }, 'sink circuit open: no write until the cooldown ends');
      }
      return { ok: false, blocked: false, error: err, attempts, exhausted: permanent || attempts >= retry.max_attempts, retryInMs };
    } finally {
      this.probing = false;
    }
  }

  /** The model's flush was settled without this sink (dead-lettered): its backoff starts over. */
  forget(model: string): void {
    this.backoff.delete(model);
  }

  private setState(s: CircuitState): void {
    this.state = s;
    this.metrics.sinkCircuit.set({ sink: this.name }, CIRCUIT_GAUGE[s]);
  }
}
