import { describe, expect, it } from 'vitest';
import type { PollLimits, RawMessage, Source, SourceChunk } from '../../src/connectors/types.js';
import { Batcher, type Clock } from '../../src/engine/batcher.js';

// The engine's batching (engine/batcher.ts) against a fake source that hands over what a test
// pushed into it, on a clock the test moves by hand: no broker and no sleeps.

/** A clock that moves only when the test says so. */
class ManualClock implements Clock {
  private t = 1_000_000;
  private timers: { at: number; fn: () => void }[] = [];
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
}

/**
 * Holds pushed payloads and hands them over as the Source contract says: what it holds up to the
 * limits, waiting only when it holds nothing. Records every poll's limits and every ack.
 */
class FakeSource implements Source {
  private held: string[] = [];
  private wake?: () => void;
  private ended = false;
  readonly polls: PollLimits[] = [];
  readonly acked: string[][] = [];
  private seq = 0;

  push(...payloads: string[]): void {
    this.held.push(...payloads);
    this.wake?.();
  }
  end(): void {
    this.ended = true;
    this.wake?.();
  }
  async open(): Promise<void> {}
  async poll(limits: PollLimits, signal: AbortSignal): Promise<SourceChunk | null> {
    this.polls.push(limits);
    while (this.held.length === 0 && !this.ended && !signal.aborted) {
      await new Promise<void>((resolve) => {
        this.wake = resolve;
        signal.addEventListener('abort', () => resolve(), { once: true });
      });
      this.wake = undefined;
    }
    if (this.held.length === 0 && this.ended) return null;
    let n = 0;
    let bytes = 0;
    while (n < this.held.length && n < limits.maxMessages) {
      const len = Buffer.byteLength(this.held[n]);
      if ((n > 0 || limits.strict) && bytes + len > limits.maxBytes) break;
      bytes += len;
      n++;
    }
    const taken = this.held.splice(0, n);
    const messages: RawMessage[] = taken.map((payload) => ({ payload, coords: {} }));
    const id = ++this.seq;
    return { messages, bytes, full: this.held.length > 0 && n < limits.maxMessages, position: { chunk: id }, first: taken.length ? `k${taken[0]}` : undefined, last: taken.length ? `k${taken[n - 1]}` : undefined, ackToken: taken };
  }
  async ack(chunk: SourceChunk): Promise<void> {
    this.acked.push(chunk.ackToken as string[]);
  }
  async close(): Promise<void> {}
}

/** Lets pending promise callbacks run (the fake source and the batcher resolve on microtasks). */
const settle = () => new Promise<void>((r) => setImmediate(r));

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
    const next = batcher.next(never).then((b) => ((done = true), b));
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
      { messages: [{ payload: '{"a":1}', coords: {} }, { payload: '{"b":"é"}', coords: {} }], block: block(['{"a":1}', '{"b":"é"}'], 0x1e), position: 1 },
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
});
