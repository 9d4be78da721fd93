import { afterEach, describe, expect, it, vi } from 'vitest';
import { backoff, retry, sleep, type RetryInfo } from '../../src/util/retry.js';

// The one retry utility (src/util/retry.ts): backoff growth, cap and jitter, an abortable sleep,
// and the retry loop's ways of giving up. Time is injected (fake timers, a recorded sleep):
// nothing here waits for real.

afterEach(() => {
  vi.useRealTimers();
});

/** A sleep that records its waits and returns at once. */
function recordedSleep(): { waits: number[]; sleep: (ms: number) => Promise<void> } {
  const waits: number[] = [];
  return { waits, sleep: async (ms) => void waits.push(ms) };
}

/** A function failing with `errors` in turn, then resolving to 'ok'. */
function failing(...errors: unknown[]): { fn: () => Promise<string>; calls: () => number } {
  let n = 0;
  return {
    fn: async () => {
      if (n < errors.length) throw errors[n++];
      n++;
      return 'ok';
    },
    calls: () => n,
  };
}

describe('backoff', () => {
  it('starts at initialMs, grows by factor each attempt and stops at maxMs', () => {
    const b = backoff({ initialMs: 100, maxMs: 1000 });
    expect([1, 2, 3, 4, 5, 6].map(b)).toEqual([100, 200, 400, 800, 1000, 1000]);
    const b3 = backoff({ initialMs: 10, maxMs: 500, factor: 3 });
    expect([1, 2, 3, 4, 5].map(b3)).toEqual([10, 30, 90, 270, 500]);
  });

  it('stays at the cap for any attempt, however large (no overflow to NaN or Infinity)', () => {
    const b = backoff({ initialMs: 250, maxMs: 30_000 });
    for (const n of [31, 64, 1025, 1e6, Number.MAX_SAFE_INTEGER]) expect(b(n)).toBe(30_000);
    expect(backoff({ initialMs: 0, maxMs: 100 })(2000)).toBe(0);
  });

  it('jitter draws that fraction of each delay: every delay lies in [base * (1 - jitter), base]', () => {
    const lowest = backoff({ initialMs: 100, maxMs: 800, jitter: 0.5, random: () => 0.999999 });
    const highest = backoff({ initialMs: 100, maxMs: 800, jitter: 0.5, random: () => 0 });
    expect(highest(3)).toBe(400);
    expect(lowest(3)).toBeCloseTo(200, 3);
    const full = backoff({ initialMs: 100, maxMs: 800, jitter: 1 });
    const equal = backoff({ initialMs: 100, maxMs: 800, jitter: 0.5 });
    for (let attempt = 1; attempt <= 6; attempt++) {
      const base = Math.min(800, 100 * 2 ** (attempt - 1));
      for (let i = 0; i < 200; i++) {
        const f = full(attempt);
        const e = equal(attempt);
        expect(f).toBeGreaterThanOrEqual(0);
        expect(f).toBeLessThanOrEqual(base);
        expect(e).toBeGreaterThanOrEqual(base / 2);
        expect(e).toBeLessThanOrEqual(base);
      }
    }
  });

  it('refuses settings that cannot make a backoff', () => {
    expect(() => backoff({ initialMs: 100, maxMs: 1000, jitter: 1.5 })).toThrow(/jitter must be between 0 and 1/);
    expect(() => backoff({ initialMs: 100, maxMs: 1000, factor: 0.5 })).toThrow(/factor >= 1/);
    expect(() => backoff({ initialMs: -1, maxMs: 1000 })).toThrow(RangeError);
  });
});

describe('sleep', () => {
  it('resolves after its time', async () => {
    vi.useFakeTimers();
    let done = false;
    const p = sleep(1000).then(() => (done = true));
    await vi.advanceTimersByTimeAsync(999);
    expect(done).toBe(false);
    await vi.advanceTimersByTimeAsync(1);
    await p;
    expect(done).toBe(true);
  });

  it('resolves as soon as its signal aborts, and leaves no timer behind', async () => {
    vi.useFakeTimers();
    const ac = new AbortController();
    let done = false;
    const p = sleep(60_000, ac.signal).then(() => (done = true));
    await vi.advanceTimersByTimeAsync(10);
    expect(done).toBe(false);
    ac.abort();
    await p;
    expect(done).toBe(true);
    expect(vi.getTimerCount()).toBe(0);
  });

  it('resolves at once when its signal has already aborted', async () => {
    vi.useFakeTimers();
    const ac = new AbortController();
    ac.abort();
    await sleep(60_000, ac.signal);
    expect(vi.getTimerCount()).toBe(0);
  });
});

describe('retry', () => {
  const b = backoff({ initialMs: 100, maxMs: 400 });

  it('retries until the function succeeds, waiting the backoff between attempts', async () => {
    const s = recordedSleep();
    const f = failing(new Error('a'), new Error('b'), new Error('c'));
    const seen: RetryInfo[] = [];
    await expect(retry(f.fn, { attempts: 5, backoff: b, sleep: s.sleep, onRetry: (i) => seen.push(i) })).resolves.toBe('ok');
    expect(f.calls()).toBe(4);
    expect(s.waits).toEqual([100, 200, 400]);
    expect(seen.map((i) => [i.attempt, i.delayMs, (i.error as Error).message])).toEqual([
      [1, 100, 'a'],
      [2, 200, 'b'],
      [3, 400, 'c'],
    ]);
  });

  it('a non-retryable error stops it at once, rethrown as it is', async () => {
    const s = recordedSleep();
    const fatal = new Error('rows refused');
    const f = failing(fatal, new Error('never reached'));
    const err = await retry(f.fn, { attempts: 10, backoff: b, sleep: s.sleep, retryable: (e) => e !== fatal }).catch((e: unknown) => e);
    expect(err).toBe(fatal);
    expect(f.calls()).toBe(1);
    expect(s.waits).toEqual([]);
  });

  it('gives up after `attempts`, with the last error', async () => {
    const s = recordedSleep();
    const f = failing(new Error('1'), new Error('2'), new Error('3'), new Error('4'));
    await expect(retry(f.fn, { attempts: 3, backoff: b, sleep: s.sleep })).rejects.toThrow('3');
    expect(f.calls()).toBe(3);
    expect(s.waits).toEqual([100, 200]);
  });

  it("waits at least the error's own hint (a Retry-After)", async () => {
    const s = recordedSleep();
    const slowDown = Object.assign(new Error('429'), { retryAfterMs: 2000 });
    const f = failing(slowDown, new Error('503'));
    await retry(f.fn, { backoff: b, sleep: s.sleep, minDelay: (e) => (e as { retryAfterMs?: number }).retryAfterMs });
    expect(s.waits).toEqual([2000, 200]);
  });

  it('gives up instead of waiting past its deadline', async () => {
    const s = recordedSleep();
    let now = 1_000;
    const f = failing(new Error('1'), new Error('2'), new Error('3'));
    const sleepAndTick = async (ms: number) => {
      now += ms;
      await s.sleep(ms);
    };
    // 100 ms fits before 1_250, then 200 more would end at 1_300: past it.
    await expect(retry(f.fn, { backoff: b, deadline: 1_250, now: () => now, sleep: sleepAndTick })).rejects.toThrow('2');
    expect(s.waits).toEqual([100]);
  });

  it('an abort during the wait ends it without another attempt; an aborted signal allows none after a failure', async () => {
    const ac = new AbortController();
    const f = failing(new Error('down'), new Error('down again'));
    const abortingSleep = async () => ac.abort();
    await expect(retry(f.fn, { backoff: b, signal: ac.signal, sleep: abortingSleep })).rejects.toThrow('down');
    expect(f.calls()).toBe(1);

    const g = failing(new Error('x'));
    await expect(retry(g.fn, { backoff: b, signal: ac.signal })).rejects.toThrow('x');
    expect(g.calls()).toBe(1);
  });

  it('a real abortable wait: aborting while it waits settles the loop at once', async () => {
    vi.useFakeTimers();
    const ac = new AbortController();
    const f = failing(new Error('down'), new Error('down'));
    const p = retry(f.fn, { backoff: backoff({ initialMs: 60_000, maxMs: 60_000 }), signal: ac.signal }).catch((e: unknown) => e);
    await vi.advanceTimersByTimeAsync(5);
    ac.abort();
    expect(((await p) as Error).message).toBe('down');
    expect(f.calls()).toBe(1);
    expect(vi.getTimerCount()).toBe(0);
  });
});
