import type { Clock } from '../../src/util/clock.js';

/** A clock that moves only when the test says so (src/util/clock.ts's Clock). */
export class ManualClock implements Clock {
  private t: number;
  private timers: { at: number; fn: () => void }[] = [];

  constructor(start = 1_000_000) {
    this.t = start;
  }

  now(): number {
    return this.t;
  }

  after(ms: number, fn: () => void): () => void {
    const timer = { at: this.t + Math.max(0, ms), fn };
    this.timers.push(timer);
    return () => {
      this.timers = this.timers.filter((x) => x !== timer);
    };
  }

  /** Moves time on, firing the timers that come due. */
  advance(ms: number): void {
    this.t += ms;
    const due = this.timers.filter((x) => x.at <= this.t);
    this.timers = this.timers.filter((x) => x.at > this.t);
    for (const x of due) x.fn();
  }

  /** Timers waiting to fire. */
  get pending(): number {
    return this.timers.length;
  }
}
