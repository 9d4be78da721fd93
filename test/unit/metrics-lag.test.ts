import { describe, expect, it } from 'vitest';
import { Metrics } from '../../src/ops/metrics.js';

// How a scrape turns a source's lag() into sluice_source_lag_messages (the e2e contract tests
// drive it against the real brokers; here the answers are timed, which a broker cannot be made to do).
const lagLines = async (m: Metrics) => (await m.registry.metrics()).split('\n').filter((l) => l.startsWith('sluice_source_lag_messages{'));

describe('sluice_source_lag_messages', () => {
  it('one sample per partition, none without a source, none once the source stopped', async () => {
    const m = new Metrics();
    expect(await lagLines(m)).toEqual([]);
    m.watchLag('orders', async () => [
      { topic: 't', partition: 0, messages: 5 },
      { topic: 't', partition: 1, messages: 0 },
    ]);
    expect(await lagLines(m)).toEqual(['sluice_source_lag_messages{source="orders",topic="t",partition="0"} 5', 'sluice_source_lag_messages{source="orders",topic="t",partition="1"} 0']);
    m.watchLag('orders', undefined);
    expect(await lagLines(m)).toEqual([]);
  });

  it('a failing or silent broker leaves the figure out rather than stale', async () => {
    const m = new Metrics();
    let answer: () => Promise<{ topic: string; messages: number }[]> = async () => [{ topic: 'q', messages: 7 }];
    m.watchLag('q', () => answer());
    expect(await lagLines(m)).toEqual(['sluice_source_lag_messages{source="q",topic="q"} 7']);
    answer = async () => {
      throw new Error('connection closed');
    };
    expect(await lagLines(m)).toEqual([]);
    answer = () => new Promise(() => {}); // never answers: the scrape gives up after 2 s
    const t0 = Date.now();
    expect(await lagLines(m)).toEqual([]);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1900);
  });

  it('an answer that arrives after the source stopped is dropped', async () => {
    const m = new Metrics();
    let release!: () => void;
    m.watchLag('q', () => new Promise((r) => (release = () => r([{ topic: 'q', messages: 3 }]))));
    const scrape = m.registry.metrics();
    await new Promise((r) => setTimeout(r, 10));
    m.watchLag('q', undefined);
    release();
    expect((await scrape).split('\n').filter((l) => l.startsWith('sluice_source_lag_messages{'))).toEqual([]);
    expect(await lagLines(m)).toEqual([]);
  });
});
