/**
 * The one retry mechanism of sluice: an abortable sleep, an exponential backoff, and a retry
 * loop built from the two. Every wait between attempts in src/ goes through here, and a retry
 * loop never calls code that retries by itself (an inner loop would multiply the attempts the
 * outer one promises).
 */

import { systemClock, type Clock } from './clock.js';

/**
 * Resolves after `ms` on `clock`, or at once when `signal` aborts (already aborted: on the next
 * tick). Never rejects: a caller that must stop on abort checks `signal.aborted` afterwards.
 */
export function sleep(ms: number, signal?: AbortSignal, clock: Clock = systemClock): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const cancel = clock.after(Math.max(0, ms), done);
    function done() {
      cancel();
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
}

/** Resolves once `signal` aborts (at once when it already has). */
export function abortion(signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    signal.addEventListener('abort', () => resolve(), { once: true });
  });
}

export interface BackoffOptions {
  /** The delay after the first failure. */
  initialMs: number;
  /** The longest delay, whatever the attempt. */
  maxMs: number;
  /** Growth per attempt (default 2: the delay doubles). */
  factor?: number;
  /**
   * The fraction of each delay drawn at random (default 0: none). 0.5 keeps half the delay and
   * draws the other half ("equal jitter"); 1 draws all of it ("full jitter"). A delay lies in
   * [base * (1 - jitter), base], base = min(maxMs, initialMs * factor ** (attempt - 1)).
   */
  jitter?: number;
  /** A number in [0, 1): injected by tests. */
  random?: () => number;
}

/** The delay (ms) before the attempt after failed attempt `attempt` (1 = the first attempt failed). */
export type Backoff = (attempt: number) => number;

/** An exponential backoff, capped at `maxMs`, with optional jitter (see BackoffOptions). */
export function backoff({ initialMs, maxMs, factor = 2, jitter = 0, random = Math.random }: BackoffOptions): Backoff {
  if (!(initialMs >= 0) || !(maxMs >= 0) || !(factor >= 1)) throw new RangeError(`backoff: initialMs and maxMs must be >= 0 and factor >= 1 (got ${initialMs}, ${maxMs}, ${factor})`);
  if (!(jitter >= 0 && jitter <= 1)) throw new RangeError(`backoff: jitter must be between 0 and 1 (got ${jitter})`);
  return (attempt) => {
    const n = Math.max(0, Math.floor(attempt) - 1);
    // factor ** n may overflow to Infinity, which the cap absorbs (0 * Infinity would be NaN).
    const base = initialMs === 0 ? 0 : Math.min(maxMs, initialMs * factor ** n);
    return jitter === 0 ? base : base * (1 - jitter * random());
  };
}

export interface RetryInfo {
  /** The attempt that failed (1 = the first). */
  attempt: number;
  error: unknown;
  /** How long the loop waits before the next attempt. */
  delayMs: number;
}

export interface RetryOptions {
  /** Attempts in all, the first included (default: until `signal` aborts or `deadline` passes). */
  attempts?: number;
  backoff: Backoff;
  /** Whether another attempt may succeed after `err` (default: always); false ends the loop at once. */
  retryable?(err: unknown): boolean;
  /** The least wait the error itself asks for (a Retry-After), in ms: the delay is at least this. */
  minDelay?(err: unknown): number | undefined;
  /** Ends the loop: no attempt starts after it aborts, and the wait before one ends early. */
  signal?: AbortSignal;
  /** No attempt starts after this time (ms since the epoch): the loop gives up instead of waiting past it. */
  deadline?: number;
  /** Hears of each failure that will be retried, before the wait. */
  onRetry?(info: RetryInfo): void;
  /** The wait between attempts (tests inject one). */
  sleep?(ms: number, signal?: AbortSignal): Promise<void>;
  /** The clock `deadline` is read against (tests inject one). */
  now?(): number;
}

/**
 * Runs `fn` until it resolves, waiting `backoff(attempt)` after each failure. Gives up by
 * rethrowing the last error unchanged when it is not retryable, when `attempts` are used up,
 * when `signal` has aborted, or when the next attempt would start after `deadline`.
 */
export async function retry<T>(fn: (attempt: number) => Promise<T>, opts: RetryOptions): Promise<T> {
  const wait = opts.sleep ?? sleep;
  const now = opts.now ?? Date.now;
  const attempts = opts.attempts ?? Infinity;
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn(attempt);
    } catch (err) {
      if (attempt >= attempts || opts.signal?.aborted || (opts.retryable && !opts.retryable(err))) throw err;
      const delayMs = Math.max(opts.backoff(attempt), opts.minDelay?.(err) ?? 0);
      if (opts.deadline !== undefined && now() + delayMs > opts.deadline) throw err;
      opts.onRetry?.({ attempt, error: err, delayMs });
      await wait(delayMs, opts.signal);
      if (opts.signal?.aborted) throw err;
    }
  }
}
