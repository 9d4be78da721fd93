/** Waits until time `t` (ms since the epoch, at least 10 ms from now), or less if `signal` aborts. */
export function sleepUntil(t: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const ms = Math.max(10, t - Date.now());
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done, { once: true });
  });
}
