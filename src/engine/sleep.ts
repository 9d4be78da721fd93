import { sleep } from '../util/retry.js';

/** Waits until time `t` (ms since the epoch, at least 10 ms from now), or less if `signal` aborts. */
export function sleepUntil(t: number, signal: AbortSignal): Promise<void> {
  return sleep(Math.max(10, t - Date.now()), signal);
}
