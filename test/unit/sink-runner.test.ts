import { describe, expect, it } from 'vitest';
import { SluiceError } from '../../src/errors.js';
import { sinkPolicySchema } from '../../src/connectors/shared-config.js';
import type { Sink, SinkWrite } from '../../src/connectors/types.js';
import { SinkRunner } from '../../src/engine/sink-runner.js';
import { Metrics } from '../../src/ops/metrics.js';
import { silentLogger } from '../../src/ops/logger.js';
import { ManualClock } from '../helpers/clock.js';

// The policy's decisions in isolation (test/unit/pipeline.test.ts drives them in the run loop,
// e2e/sink-policy.test.ts through the CLI): a sink whose next writes fail with the errors queued
// in `failWith`, on a clock the test moves.
function runner(policy: unknown, failWith: Error[]) {
  const sink: Sink = {
    idempotent: true,
    connect: async () => {},
    write: async () => {
      const e = failWith.shift();
      if (e) throw e;
    },
    healthy: () => true,
    close: async () => {},
  };
  const metrics = new Metrics();
  const clock = new ManualClock();
  return { r: new SinkRunner('s', sink, sinkPolicySchema.parse(policy), metrics, silentLogger(), clock), metrics, clock };
}
const w = (model = 'm'): SinkWrite => ({ model, name: 'part-1-1', rows: 3, relation: 'unused', columns: [], order: { row: 'r', message: 'm' } });
const transient = () => new SluiceError('SINK', 'timeout', { retryable: true });

describe('SinkRunner', () => {
  it('a permanent error is exhausted at once; a transient one after max_attempts', async () => {
    const { r, clock } = runner({ retry: { max_attempts: 3, backoff_ms: 1, max_backoff_ms: 1 } }, [new SluiceError('SINK', 'bad row', { permanent: true }), transient(), transient(), transient()]);
    expect(await r.write(w(), undefined as never)).toMatchObject({ ok: false, exhausted: true, attempts: 1 });
    r.forget('m');
    expect(await r.write(w(), undefined as never)).toMatchObject({ ok: false, exhausted: false, attempts: 1 });
    clock.advance(1);
    expect(await r.write(w(), undefined as never)).toMatchObject({ ok: false, exhausted: false, attempts: 2 });
    clock.advance(1);
    expect(await r.write(w(), undefined as never)).toMatchObject({ ok: false, exhausted: true, attempts: 3 });
  });

  it('backs off per model: a write in backoff is not tried', async () => {
    const { r, metrics, clock } = runner({ retry: { backoff_ms: 1000, max_backoff_ms: 2000 }, circuit: { failures: 100 } }, [transient(), transient()]);
    const first = await r.write(w('a'), undefined as never);
    expect(first).toMatchObject({ ok: false, retryInMs: 1000 });
    expect(await r.write(w('a'), undefined as never)).toEqual({ ok: false, blocked: true });
    // Another model's flush is not held back by a's backoff.
    expect(await r.write(w('b'), undefined as never)).toMatchObject({ ok: false, retryInMs: 1000 });
    clock.advance(999);
    expect(await r.write(w('a'), undefined as never)).toEqual({ ok: false, blocked: true });
    expect(r.nextTry('a')).toBe(clock.now() + 1);
    clock.advance(1);
    expect(await r.write(w('a'), undefined as never)).toEqual({ ok: true });
    expect((await metrics.registry.getSingleMetric('sluice_sink_retries_total')!.get()).values[0].value).toBe(1);
  });

  it('circuit: opens after N consecutive failures, allows one probe after the cooldown, re-opens on failure, closes on success', async () => {
    const { r, metrics, clock } = runner({ retry: { backoff_ms: 1, max_backoff_ms: 1 }, circuit: { failures: 2, cooldown_ms: 1000 } }, [transient(), transient(), transient()]);
    const gauge = async () => (await metrics.registry.getSingleMetric('sluice_sink_circuit_state')!.get()).values[0].value;
    await r.write(w('a'), undefined as never);
    expect(r.notReady()).toBeUndefined();
    await r.write(w('b'), undefined as never);
    expect(await gauge()).toBe(1);
    expect(r.notReady()).toMatch(/circuit open after 2 consecutive failures: timeout/);
    expect(await r.write(w('a'), undefined as never)).toEqual({ ok: false, blocked: true });
    clock.advance(999);
    expect(await r.write(w('a'), undefined as never)).toEqual({ ok: false, blocked: true });
    clock.advance(1);
    expect(await r.write(w('a'), undefined as never)).toMatchObject({ ok: false, blocked: false }); // the probe fails
    expect(await gauge()).toBe(1);
    expect(await r.write(w('b'), undefined as never)).toEqual({ ok: false, blocked: true });
    clock.advance(1000);
    expect(await r.write(w('b'), undefined as never)).toEqual({ ok: true });
    expect(await gauge()).toBe(0);
    expect(r.notReady()).toBeUndefined();
  });
});
