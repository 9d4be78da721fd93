import { describe, expect, it } from 'vitest';
import type { RawMessage, Source, SourceChunk } from '../../src/connectors/types.js';
import { Batcher, RAMP_START } from '../../src/engine/batcher.js';
import { ManualClock } from '../helpers/clock.js';
import { FakeSource } from '../helpers/fake-source.js';
import { settle } from '../helpers/wait.js';

// The engine's batching (engine/batcher.ts) against a fake source that hands over what a test
// pushed into it, on a clock the test moves by hand: no broker and no sleeps.

const payloads = (b: { messages: RawMessage[] }) => b.messages.map((m) => m.payload);
const never = new AbortController().signal;

describe('Batcher', () => {
  it('a backlog fills batches to the ceiling, over several polls when a poll hands over less', async () => {
    const src = new FakeSource();
    const batcher = new Batcher(src, { maxMessages: 3, maxBytes: 1000, timeoutMs: 100 }, new ManualClock());
    src.push('1', '2');
    const next = batcher.next(never);
    await settle();
    src.push('3', '4');
    const b = await next;
    expect(payloads(b!)).toEqual(['1', '2', '3']);
    expect(b!.chunks).toHaveLength(2);
    // The second poll asked only for the room left.
    expect(src.polls[1]).toEqual({ maxMessages: 1, maxBytes: 998, strict: true });
    expect(b!.position).toEqual({ chunk: 2 });
    expect([b!.first, b!.last]).toEqual(['k1', 'k3']);
  });

  it('bytes: the first message comes however large; later ones only while within batch_max_bytes', async () => {
    const src = new FakeSource();
    const clock = new ManualClock();
    const batcher = new Batcher(src, { maxMessages: 100, maxBytes: 10, timeoutMs: 100 }, clock);
    src.push('x'.repeat(25), 'aaaa', 'bbbb', 'cccc');
    src.end();
    expect(payloads((await batcher.next(never))!)).toEqual(['x'.repeat(25)]);
    expect(payloads((await batcher.next(never))!)).toEqual(['aaaa', 'bbbb']);
    expect(payloads((await batcher.next(never))!)).toEqual(['cccc']);
    expect(await batcher.next(never)).toBeNull();
  });

  it('a batch holding messages is cut batch_timeout_ms after its first message', async () => {
    const src = new FakeSource();
    const clock = new ManualClock();
    const batcher = new Batcher(src, { maxMessages: 100, maxBytes: 1000, timeoutMs: 100 }, clock);
    let done = false;
    const next = batcher.next(never).then((b) => {
      done = true;
      return b;
    });
    clock.advance(50); // idle before the first message: not counted
    src.push('a');
    await settle();
    clock.advance(60);
    src.push('b');
    await settle();
    expect(done).toBe(false);
    clock.advance(39);
    await settle();
    expect(done).toBe(false);
    clock.advance(1);
    expect(payloads((await next)!)).toEqual(['a', 'b']);
  });

  it('with nothing for batch_timeout_ms, an empty batch comes back (the engine flushes by age)', async () => {
    const src = new FakeSource();
    const clock = new ManualClock();
    const batcher = new Batcher(src, { maxMessages: 100, maxBytes: 1000, timeoutMs: 100 }, clock);
    const next = batcher.next(never);
    await settle();
    clock.advance(100);
    const b = await next;
    expect(b).toEqual(expect.objectContaining({ messages: [], chunks: [] }));
  });

  it('demand: a waiting engine gets what the batch holds at once, and the first message to come when it holds none', async () => {
    const src = new FakeSource();
    const clock = new ManualClock();
    const batcher = new Batcher(src, { maxMessages: 100, maxBytes: 1000, timeoutMs: 10_000 }, clock);
    src.push('a');
    const first = batcher.next(never);
    await settle();
    batcher.demand();
    expect(payloads((await first)!)).toEqual(['a']);
    const second = batcher.next(never);
    batcher.demand();
    await settle();
    src.push('b', 'c');
    expect(payloads((await second)!)).toEqual(['b', 'c']);
    // Without demand, a batch waits for more (here: until its timeout).
    const third = batcher.next(never);
    src.push('d');
    await settle();
    let done = false;
    void third.then(() => (done = true));
    await settle();
    expect(done).toBe(false);
    clock.advance(10_000);
    expect(payloads((await third)!)).toEqual(['d']);
  });

  it('an abort ends the wait at once with what the batch holds; the end of a finite source comes after its last batch', async () => {
    const src = new FakeSource();
    const batcher = new Batcher(src, { maxMessages: 100, maxBytes: 1000, timeoutMs: 10_000 }, new ManualClock());
    const stop = new AbortController();
    src.push('a');
    const next = batcher.next(stop.signal);
    await settle();
    stop.abort();
    expect(payloads((await next)!)).toEqual(['a']);
    src.push('b');
    src.end();
    expect(payloads((await batcher.next(never))!)).toEqual(['b']);
    expect(await batcher.next(never)).toBeNull();
  });

  it('joins the blocks of several chunks into one, message boundaries kept', async () => {
    const block = (texts: string[], sep: number) => {
      const parts = texts.map((t) => Buffer.from(t));
      const data = Buffer.from(parts.map((p) => p.toString()).join(String.fromCharCode(sep)) + '\r\n');
      const starts = new Uint32Array(parts.length);
      const ends = new Uint32Array(parts.length);
      let at = 0;
      parts.forEach((p, i) => {
        starts[i] = at;
        ends[i] = at + p.length;
        at += p.length + 1;
      });
      return { data, starts, ends, separator: sep };
    };
    const chunks: SourceChunk[] = [
      {
        messages: [
          { payload: '{"a":1}', coords: {} },
          { payload: '{"b":"é"}', coords: {} },
        ],
        block: block(['{"a":1}', '{"b":"é"}'], 0x1e),
        position: 1,
      },
      { messages: [{ payload: '{"c":3}', coords: {} }], block: block(['{"c":3}'], 0x1e), position: 2 },
    ];
    const src: Source = {
      open: async () => {},
      poll: async () => chunks.shift() ?? null,
      ack: async () => {},
      close: async () => {},
    };
    const b = (await new Batcher(src, { maxMessages: 100, maxBytes: 1000, timeoutMs: 100 }, new ManualClock()).next(never))!;
    expect(b.chunks).toHaveLength(2);
    const k = b.block!;
    const texts = Array.from(k.starts, (s, i) => k.data.toString('utf8', s, k.ends[i]));
    expect(texts).toEqual(['{"a":1}', '{"b":"é"}', '{"c":3}']);
    expect(k.separator).toBe(0x1e);
    // Only separators between the messages: DuckDB splits the block at them.
    expect(k.data.toString()).toBe(['{"a":1}', '{"b":"é"}', '{"c":3}'].join('\u001e'));
    expect(b.bytes).toBe(Buffer.byteLength('{"a":1}{"b":"é"}{"c":3}'));
  });
  it('a backlog ramps the count up from firstMessages, doubling to the ceiling; a batch cut short starts the ramp again', async () => {
    const src = new FakeSource();
    const clock = new ManualClock();
    const batcher = new Batcher(src, { maxMessages: 10, maxBytes: 10_000, timeoutMs: 100, firstMessages: 2 }, clock);
    src.push(...Array.from({ length: 30 }, (_, i) => String(i)));
    const sizes: number[] = [];
    for (let i = 0; i < 4; i++) sizes.push((await batcher.next(never))!.messages.length);
    // 2, 4, 8, then the ceiling: the first batch starts the engine early, the backlog grows them.
    expect(sizes).toEqual([2, 4, 8, 10]);
    // The backlog runs out: the last 6 wait for batch_timeout_ms, and that batch was cut short...
    const last = batcher.next(never);
    await settle();
    clock.advance(100);
    expect((await last)!.messages.length).toBe(6);
    // ...so the next starts the ramp again.
    src.push(...Array.from({ length: 10 }, (_, i) => `b${i}`));
    expect((await batcher.next(never))!.messages.length).toBe(2);
    expect((await batcher.next(never))!.messages.length).toBe(4);
  });

  it('a batch cut by batch_max_bytes counts as filled: the ramp keeps growing', async () => {
    const src = new FakeSource();
    const batcher = new Batcher(src, { maxMessages: 100, maxBytes: 10, timeoutMs: 100, firstMessages: 2 }, new ManualClock());
    src.push('aaaaaa', 'bbbbbb', ...Array.from({ length: 20 }, () => '1'));
    const sizes: number[] = [];
    for (let i = 0; i < 3; i++) sizes.push((await batcher.next(never))!.messages.length);
    // The first holds one message (the second would pass 10 bytes): full by bytes, so the next
    // takes 4 and the one after 8 (a reset would have made them 2 and 4).
    expect(sizes).toEqual([1, 4, 8]);
  });

  it('without firstMessages the ramp starts at RAMP_START, never above batch_size', async () => {
    const big = new FakeSource();
    big.push(...Array.from({ length: RAMP_START + 5 }, (_, i) => String(i)));
    const ramped = new Batcher(big, { maxMessages: 100_000, maxBytes: 1e9, timeoutMs: 100 }, new ManualClock());
    expect((await ramped.next(never))!.messages.length).toBe(RAMP_START);
    const small = new FakeSource();
    small.push('a', 'b', 'c', 'd');
    const capped = new Batcher(small, { maxMessages: 3, maxBytes: 1000, timeoutMs: 100 }, new ManualClock());
    expect(payloads((await capped.next(never))!)).toEqual(['a', 'b', 'c']);
  });
});
