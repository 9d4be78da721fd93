import { sleep } from '../util/retry.js';
import { systemClock, type Clock } from '../util/clock.js';

/** Waits until time `t` on `clock` (ms since the epoch, at least 10 ms from now), or less if `signal` aborts. */
export function sleepUntil(t: number, signal: AbortSignal, clock: Clock = systemClock): Promise<void> {
  return sleep(Math.max(10, t - clock.now()), signal, clock);
}
