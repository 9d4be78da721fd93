/**
 * The pipelines of one process share its JavaScript thread: a long stretch of work for one
 * (scanning a batch of large messages, decoding messages of many shapes) delays every other
 * pipeline's next step by as long. Such loops call tick() between items; it gives the thread
 * back (to I/O callbacks and timers, not only promise jobs) once `ms` have passed since the
 * last time, so that no pipeline holds it much longer than that at a time.
 */
export class Slices {
  private since = performance.now();

  constructor(private readonly ms = 5) {}

  /** Resolves at once within the slice, else after the event loop has had a turn. */
  async tick(): Promise<void> {
    if (performance.now() - this.since <= this.ms) return;
    await new Promise(setImmediate);
    this.since = performance.now();
  }
}
