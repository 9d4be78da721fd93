import { Writable } from 'node:stream';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { KafkaFetchQueue, bufferedBytes, type FetchedMessage, type Slice, type TopicPartition } from '../../src/connectors/kafka/kafka-fetch-queue.js';

// The Kafka source's fetch queue on its own: messages as kafkajs hands them over (offset,
// value, key), a recorder in place of the consumer's pause and resume, a logger read back.

const msg = (offset: number, size = 10): FetchedMessage => ({ offset: String(offset), value: Buffer.alloc(size, 0x61), key: null });
const run = (from: number, n: number, size = 10): FetchedMessage[] => Array.from({ length: n }, (_, i) => msg(from + i, size));
const sized = (from: number, sizes: number[]): FetchedMessage[] => sizes.map((s, i) => msg(from + i, s));
const ALL = { maxMessages: 1_000_000, maxBytes: 1e12 };
const P0: TopicPartition = { topic: 'a', partition: 0 };
const P1: TopicPartition = { topic: 'a', partition: 1 };
const Q0: TopicPartition = { topic: 'b', partition: 0 };

/** `a:0@3-5` per slice: partition, first and last offset. */
const show = (slices: Slice[]) => slices.map((s) => `${s.fetch.tp}@${s.first}-${s.last}`);
const offsetsOf = (slices: Slice[]) => slices.flatMap((s) => s.messages.map((m) => `${s.fetch.tp}@${m.offset}`));

function setup(maxBufferBytes = 1e12, parts: TopicPartition[] = [P0, P1, Q0]) {
  const calls: string[] = [];
  const logs: string[] = [];
  const log = pino(
    { level: 'info' },
    new Writable({
      write(chunk: Buffer, _enc, cb) {
        logs.push((JSON.parse(chunk.toString()) as { msg: string }).msg);
        cb();
      },
    }),
  );
  const fmt = (ts: { topic: string; partitions: number[] }[]) => ts.map((t) => `${t.topic}[${t.partitions.join(',')}]`).join(' ');
  const queue = new KafkaFetchQueue({
    maxBufferBytes,
    control: { pause: (ts) => calls.push(`pause ${fmt(ts)}`), resume: (ts) => calls.push(`resume ${fmt(ts)}`) },
    log,
  });
  queue.assign(parts);
  calls.length = 0;
  return { queue, calls, logs };
}

/** True when `p` has settled by the time pending I/O callbacks ran. */
async function settled(p: Promise<unknown>): Promise<boolean> {
  let done = false;
  void p.then(() => (done = true));
  await new Promise((r) => setImmediate(r));
  return done;
}

describe('KafkaFetchQueue: order and limits', () => {
  it('hands out in arrival order, each partition in offset order, every message once', () => {
    const { queue } = setup();
    queue.add('a', 0, run(0, 5));
    queue.add('a', 1, run(100, 3));
    queue.add('a', 0, run(5, 2));
    expect(show(queue.take({ maxMessages: 3, maxBytes: 1e9 }))).toEqual(['a:0@0-2']);
    expect(show(queue.take({ maxMessages: 4, maxBytes: 1e9 }))).toEqual(['a:0@3-4', 'a:1@100-101']);
    expect(show(queue.take(ALL))).toEqual(['a:1@102-102', 'a:0@5-6']);
    expect(queue.take(ALL)).toEqual([]);
    expect(queue.length).toBe(0);
    expect(queue.position()).toEqual({ 'a:0': 7, 'a:1': 103 });
  });

  it('stops before the message that would pass maxBytes, but always takes the first, however large', () => {
    const { queue } = setup();
    queue.add('a', 0, sized(0, [40, 40, 40, 300, 10]));
    const lim = { maxMessages: 100, maxBytes: 100, strict: false };
    const a = queue.take(lim);
    expect(offsetsOf(a)).toEqual(['a:0@0', 'a:0@1']);
    expect(a[0].bytes).toBe(80);
    expect(queue.full).toBe(true);
    expect(offsetsOf(queue.take(lim))).toEqual(['a:0@2']); // 40 + 300 would pass 100
    const big = queue.take(lim);
    expect(offsetsOf(big)).toEqual(['a:0@3']);
    expect(big[0].bytes).toBe(300);
    expect(offsetsOf(queue.take({ maxMessages: 100, maxBytes: 1, strict: true }))).toEqual([]);
    expect(queue.full).toBe(true);
    expect(offsetsOf(queue.take({ maxMessages: 100, maxBytes: 1, strict: false }))).toEqual(['a:0@4']);
    expect(queue.full).toBe(false);
  });

  it('counts messages and bytes across fetches of several partitions', () => {
    const { queue } = setup();
    queue.add('a', 0, run(0, 3, 40));
    queue.add('a', 1, run(0, 3, 40));
    queue.add('b', 0, run(0, 3, 40));
    const byBytes = queue.take({ maxMessages: 100, maxBytes: 200 });
    expect(show(byBytes)).toEqual(['a:0@0-2', 'a:1@0-1']);
    expect(byBytes.reduce((n, s) => n + s.bytes, 0)).toBe(200);
    const byCount = queue.take({ maxMessages: 3, maxBytes: 1e9 });
    expect(show(byCount)).toEqual(['a:1@2-2', 'b:0@0-1']);
  });

  it('skips what is already queued or handed out (a fetch again, a restored position); nothing new is no fetch', () => {
    const { queue } = setup();
    queue.restore({ 'a:0': 5 });
    const f = queue.add('a', 0, run(3, 5))!;
    expect(f.messages.map((m) => m.offset)).toEqual(['5', '6', '7']);
    expect(queue.add('a', 0, run(5, 5))!.messages.map((m) => m.offset)).toEqual(['8', '9']);
    expect(queue.add('a', 0, run(0, 10))).toBeUndefined();
    expect(offsetsOf(queue.take(ALL))).toEqual(['a:0@5', 'a:0@6', 'a:0@7', 'a:0@8', 'a:0@9']);
    // Handed out: a fetch of the same offsets again (after a seek back) adds nothing.
    expect(queue.add('a', 0, run(5, 5))).toBeUndefined();
    // Not assigned: refused.
    expect(queue.add('c', 0, run(0, 1))).toBeUndefined();
  });
});

describe('KafkaFetchQueue: holding fetches', () => {
  it('a fetch settles once every message of it is finished, and wakes its handler each time', async () => {
    const { queue } = setup();
    const f = queue.add('a', 0, run(0, 4))!;
    const [s1] = queue.take({ maxMessages: 2, maxBytes: 1e9 });
    const [s2] = queue.take(ALL);
    expect([f.inFlight, f.settled, queue.holding]).toEqual([4, false, 1]);
    const woken = f.changed(60_000);
    queue.finish(s2);
    expect(await settled(woken)).toBe(true);
    expect(f.settled).toBe(false);
    queue.finish(s2); // twice counts once
    expect(f.settled).toBe(false);
    queue.finish(s1);
    expect([f.settled, f.released, queue.holding]).toEqual([true, false, 0]);
  });

  it("letting a fetch go drops what it has queued and the partition's later fetches; the partition is read again from what was handed out", () => {
    const { queue } = setup();
    const first = queue.add('a', 0, run(0, 10))!;
    queue.add('a', 1, run(0, 5));
    const later = queue.add('a', 0, run(10, 5))!;
    expect(show(queue.take({ maxMessages: 3, maxBytes: 1e9 }))).toEqual(['a:0@0-2']);
    queue.release(first);
    expect([first.released, first.settled, later.released]).toEqual([true, true, true]);
    expect(queue.bytes).toBe(run(0, 5).reduce((n, m) => n + bufferedBytes(m), 0));
    // Handing out later's 10..14 now would leave 3..9 out for good.
    expect(show(queue.take(ALL))).toEqual(['a:1@0-4']);
    const again = queue.add('a', 0, run(0, 15))!;
    expect(again.messages[0].offset).toBe('3');
    expect(show(queue.take(ALL))).toEqual(['a:0@3-14']);
  });

  it('a rebalance hands out nothing more; fetches the engine holds nothing of are let go at once, the others once it finished them', async () => {
    const { queue } = setup();
    const held = queue.add('a', 0, run(0, 5))!;
    const idle = queue.add('a', 1, run(0, 5))!;
    const [s] = queue.take({ maxMessages: 2, maxBytes: 1e9 });
    const woken = held.changed(60_000);
    queue.startRebalance();
    expect([idle.released, held.released]).toEqual([true, false]);
    expect(await settled(woken)).toBe(true);
    expect(queue.take(ALL)).toEqual([]);
    const ac = new AbortController();
    expect(await settled(queue.available(ac.signal))).toBe(false);
    queue.finish(s);
    expect([held.released, held.settled, queue.length, queue.bytes]).toEqual([true, true, 0, 0]);
    expect(queue.position()).toEqual({ 'a:0': 2 });
  });

  it('a new assignment drops everything queued and keeps what was handed out: a kept partition is read on from there, a revoked one refused', () => {
    const { queue } = setup();
    const f0 = queue.add('a', 0, run(0, 10))!;
    const f1 = queue.add('a', 1, run(0, 10))!;
    const [s] = queue.take({ maxMessages: 4, maxBytes: 1e9 });
    queue.assign([P0, Q0]);
    expect([f0.released, f1.released, queue.length, queue.bytes, queue.holding]).toEqual([true, true, 0, 0, 0]);
    expect(queue.position()).toEqual({ 'a:0': 4 });
    queue.finish(s); // the engine acks a slice of the old generation: nothing to do
    expect(queue.add('a', 1, run(0, 10))).toBeUndefined();
    expect(queue.add('a', 0, run(0, 10))!.messages[0].offset).toBe('4');
    expect(show(queue.take(ALL))).toEqual(['a:0@4-9']);
    expect(queue.isAssigned('a', 1)).toBe(false);
  });
});

describe('KafkaFetchQueue: backpressure', () => {
  const each = bufferedBytes(msg(0)); // 10 bytes of value, 64 of bookkeeping

  it('pauses every assigned partition past maxBufferBytes, resumes them at half of it', () => {
    const { queue, calls, logs } = setup(each * 10);
    queue.add('a', 0, run(0, 6));
    expect(calls).toEqual([]);
    queue.add('a', 1, run(0, 5));
    expect(queue.paused).toBe(true);
    expect(calls).toEqual(['pause a[0,1] b[0]']);
    expect(logs).toContain('backpressure: Kafka partitions paused');
    queue.take({ maxMessages: 5, maxBytes: 1e9 }); // 6 left: above half
    expect(calls).toHaveLength(1);
    queue.take({ maxMessages: 1, maxBytes: 1e9 }); // 5 left: half
    expect(queue.paused).toBe(false);
    expect(calls).toEqual(['pause a[0,1] b[0]', 'resume a[0,1] b[0]']);
    expect(logs).toContain('backpressure released: Kafka partitions resumed');
  });

  it('partitions assigned while paused start paused, until the engine asks for more; otherwise an assignment resumes them', () => {
    const { queue, calls, logs } = setup(each * 2);
    queue.add('a', 0, run(0, 3));
    expect(queue.paused).toBe(true);
    queue.assign([P1]);
    expect(calls).toEqual(['pause a[0,1] b[0]', 'pause a[1]']);
    expect(logs).toContain('backpressure: partitions assigned while paused start paused');
    // Nothing queued any more, and a small fetch comes: still paused until the engine asks.
    queue.add('a', 1, run(0, 1));
    expect(queue.paused).toBe(true);
    queue.ready();
    expect(queue.paused).toBe(false);
    expect(calls.at(-1)).toBe('resume a[1]');
    calls.length = 0;
    queue.assign([P0, P1]);
    expect(calls).toEqual(['resume a[0,1]']);
  });

  it('letting every fetch go (a crash) lifts the pause; during a rebalance it stays, and the next assignment starts paused', () => {
    const { queue, calls } = setup(each * 2);
    const f = queue.add('a', 0, run(0, 3))!;
    expect(queue.paused).toBe(true);
    queue.dropAll();
    expect([f.released, queue.bytes, queue.paused]).toEqual([true, 0, false]);
    expect(calls).toEqual(['pause a[0,1] b[0]', 'resume a[0,1] b[0]']);
    const g = queue.add('a', 0, run(0, 3))!;
    queue.take({ maxMessages: 1, maxBytes: 1e9 });
    queue.startRebalance();
    queue.dropAll();
    expect([g.released, queue.bytes, queue.paused]).toEqual([true, 0, true]);
    queue.assign([P0]);
    expect(calls.at(-1)).toBe('pause a[0]');
  });
});

describe('KafkaFetchQueue: waiting', () => {
  it('available() resolves on a fetch, at an abort, and at close', async () => {
    const { queue } = setup();
    const ac = new AbortController();
    const onFetch = queue.available(ac.signal);
    expect(await settled(onFetch)).toBe(false);
    queue.add('a', 0, run(0, 1));
    expect(await settled(onFetch)).toBe(true);
    queue.take(ALL);
    const onAbort = queue.available(ac.signal);
    expect(await settled(onAbort)).toBe(false);
    ac.abort();
    expect(await settled(onAbort)).toBe(true);
    const onClose = queue.available(new AbortController().signal);
    queue.close();
    expect(await settled(onClose)).toBe(true);
    queue.add('a', 0, run(1, 1));
    expect(queue.take(ALL)).toEqual([]);
  });
});
