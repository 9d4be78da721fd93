/**
 * Time as the engine sees it: the batcher's timeouts, flush age, sink backoff and circuit
 * cooldowns, and the waits between flush retries. In-process tests inject a clock they move by
 * hand; everything else uses systemClock.
 */
export interface Clock {
  /** Milliseconds since the epoch. */
  now(): number;
  /** Calls `fn` once `ms` have passed (never synchronously); the returned function cancels it. */
  after(ms: number, fn: () => void): () => void;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  after(ms, fn) {
    const t = setTimeout(fn, Math.max(0, ms));
    return () => clearTimeout(t);
  },
};
