import { describe, expect, it } from 'vitest';
import { SluiceError } from '../../src/errors.js';
import { StallGuard } from '../../src/engine/stall.js';
import { Metrics } from '../../src/ops/metrics.js';
import { ManualClock } from '../helpers/clock.js';
import { eventLogger, type LogEvent } from '../helpers/pipeline.js';
import { settle } from '../helpers/wait.js';

// The pause on an infrastructure failure (engine/stall.ts) on a clock the test moves by hand:
// the backoff waits, the pause's length and the give-up deadline are all the injected clock's,
// so none of this sleeps.

const diskFull = () => Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });

function guard(clock: ManualClock, giveUpAfterSeconds = 0) {
  const events: LogEvent[] = [];
  const metrics = new Metrics();
  const stall = new StallGuard({
    signal: new AbortController().signal,
    maxBackoffMs: 1000,
    giveUpAfterSeconds,
    metrics,
    log: eventLogger(events),
    updateGauges: () => {},
    clock,
  });
  return { stall, events, metrics };
}

/** Advances the clock by `ms` in steps, letting the guard's promises run between them. */
async function pass(clock: ManualClock, ms: number, step = 50): Promise<void> {
  for (let t = 0; t < ms; t += step) {
    clock.advance(step);
    await settle();
  }
}

describe('StallGuard on an injected clock', () => {
  it('retries a disk-full step with backoff on the clock, undoing each time, and logs one pause and one resume with its length', async () => {
    const clock = new ManualClock();
    const { stall, events, metrics } = guard(clock);
    let tries = 0;
    let undone = 0;
    const run = stall.run(
      'writing a batch to the WAL',
      async () => {
        if (++tries <= 3) throw diskFull();
        return 'staged';
      },
      async () => void undone++,
    );
    await settle();
    // Failed once, and waits 250 ms of the clock's time before the second try.
    expect(tries).toBe(1);
    expect(stall.current?.error.kind).toBe('disk full');
    await pass(clock, 200);
    expect(tries).toBe(1);
    await pass(clock, 100);
    expect(tries).toBe(2);
    // Then 500 ms, then 1,000 (the ceiling, infra_errors.max_backoff_ms), and the fourth try works.
    await pass(clock, 500);
    expect(tries).toBe(3);
    await pass(clock, 1000);
    expect(await run).toBe('staged');
    expect([tries, undone]).toEqual([4, 3]);
    expect(stall.current).toBeUndefined();
    expect(events.filter((e) => /^paused: /.test(e.msg))).toHaveLength(1);
    const resumed = events.find((e) => /^resumed: writing a batch to the WAL works again/.test(e.msg));
    expect(resumed?.after_ms).toBeGreaterThanOrEqual(1750);
    expect(resumed?.after_ms).toBeLessThan(1900);
    expect((await metrics.infraErrors.get()).values.map((v) => v.value)).toEqual([3]);
  });

  it('gives up after give_up_after_seconds of the clock, saying nothing unacked was lost', async () => {
    const clock = new ManualClock();
    const { stall } = guard(clock, 5);
    let tries = 0;
    const run = stall.run(
      'writing a batch to the WAL',
      async () => {
        tries++;
        throw diskFull();
      },
      async () => {},
    );
    const outcome = run.then(
      () => undefined,
      (e: unknown) => e,
    );
    await pass(clock, 4900);
    expect(await Promise.race([outcome, Promise.resolve('still paused')])).toBe('still paused');
    await pass(clock, 1200);
    const err = await outcome;
    expect(err).toBeInstanceOf(SluiceError);
    expect((err as SluiceError).message).toMatch(/^gave up after [56] s \(infra_errors\.give_up_after_seconds 5\): .*nothing of the unacked batch was lost/);
    // 250, 500, then 1000 ms apart: about 8 tries in 6 s of the clock.
    expect(tries).toBeGreaterThanOrEqual(6);
    expect(tries).toBeLessThanOrEqual(9);
  });

  it("an error that is not the surroundings' goes up at once, without undo or retry", async () => {
    const clock = new ManualClock();
    const { stall } = guard(clock);
    let undone = 0;
    await expect(
      stall.run(
        'writing a batch to the WAL',
        async () => {
          throw new Error('Conversion Error: could not convert string "x" to INT32');
        },
        async () => void undone++,
      ),
    ).rejects.toThrow(/Conversion Error/);
    expect(undone).toBe(0);
    expect(clock.pending).toBe(0);
  });
});
