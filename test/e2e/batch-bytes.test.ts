import { randomUUID } from 'node:crypto';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstream, jetstreamManager, type JetStreamManager } from '@nats-io/jetstream';
import { createClient } from 'redis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KafkaSource } from '../../src/connectors/kafka/kafka-source.js';
import { kafkaSourceSchema } from '../../src/connectors/kafka/kafka-config.js';
import { NatsSource } from '../../src/connectors/nats/nats-source.js';
import { natsSourceSchema } from '../../src/connectors/nats/nats-config.js';
import { RabbitmqSource } from '../../src/connectors/rabbitmq/rabbitmq-source.js';
import { rabbitmqSourceSchema } from '../../src/connectors/rabbitmq/rabbitmq-config.js';
import { RedisStreamsSource } from '../../src/connectors/redis/redis-streams-source.js';
import { redisStreamsSourceSchema } from '../../src/connectors/redis/redis-config.js';
import type { Source } from '../../src/connectors/types.js';
import type { SourceBatch } from '../../src/engine/batcher.js';
import { ackBatch, batcherOf, type BatchKeys } from '../helpers/batches.js';
import { silentLogger } from '../../src/ops/logger.js';
import { ensureTopic, groupCaughtUp, produce, startMockKafka, uniqueTopic, type MockKafka } from '../helpers/kafka.js';
import { machineLock } from '../helpers/machine-lock.js';
import { deleteQueues, publish as publishAmqp, queueDepth, uniqueQueue } from '../helpers/rabbit.js';

// batch_max_bytes against the brokers on this machine, each source class driven in-process:
// 30 messages of ~50 kB (one of 300 kB, over the cap) with a cap of 200,000 bytes. A batch
// holds at most 4 of them (or the big one alone); what a batch leaves out comes first in the
// next one, and every message arrives once, in order, and is acked.

const CAP = 200_000;
const COUNT = 30;
const BIG = 10; // the id of the message over the cap

/** Message `id` (1-based) as JSON: 48-50 kB (4 fit in the cap, 5 do not), message BIG 300 kB. */
function message(id: number): string {
  const size = id === BIG ? 300_000 : 48_000 + (id % 3) * 1000;
  const head = JSON.stringify({ id, pad: '' });
  return JSON.stringify({ id, pad: 'x'.repeat(size - head.length) });
}
const messages = Array.from({ length: COUNT }, (_, i) => message(i + 1));

interface Got {
  ids: number[];
  bytes: number;
  coords: Record<string, unknown>[];
}

const ctx = () => ({ projectDir: '/tmp', log: silentLogger(), workerId: `w-${randomUUID().slice(0, 8)}` });

/**
 * Opens the source and reads until `expected` messages came, acking each batch after the next
 * one was read (the engine reads one batch ahead); then reads on for `quietMs` to see that
 * nothing comes again, and closes it.
 */
async function drain(src: Source, cfg: BatchKeys, expected: number, quietMs = 1500, timeoutMs = 90_000): Promise<Got[]> {
  const out: Got[] = [];
  const signal = new AbortController().signal;
  await src.open(undefined);
  const batcher = batcherOf(src, cfg);
  try {
    let prev: SourceBatch | undefined;
    let n = 0;
    const end = Date.now() + timeoutMs;
    while (n < expected && Date.now() < end) {
      const b = await batcher.next(signal);
      if (!b) break;
      if (prev) await ackBatch(src, prev);
      prev = undefined;
      if (b.messages.length === 0) continue;
      out.push({
        ids: b.messages.map((m) => (JSON.parse(m.payload) as { id: number }).id),
        bytes: b.messages.reduce((s, m) => s + Buffer.byteLength(m.payload), 0),
        coords: b.messages.map((m) => m.coords),
      });
      n += b.messages.length;
      prev = b;
    }
    if (prev) await ackBatch(src, prev);
    const quietEnd = Date.now() + quietMs;
    while (Date.now() < quietEnd) {
      const b = await batcher.next(signal);
      if (!b) break;
      expect(b.messages.length, 'a message came twice').toBe(0);
    }
  } finally {
    await src.close();
  }
  return out;
}

/** Each batch within the cap (or one message alone), at most 4 messages, their payloads intact. */
function expectCapped(got: Got[]): void {
  for (const g of got) {
    expect(g.ids.length).toBeLessThanOrEqual(4);
    if (g.ids.length > 1) expect(g.bytes).toBeLessThanOrEqual(CAP);
    expect(g.bytes).toBe(g.ids.reduce((s, id) => s + Buffer.byteLength(message(id)), 0));
  }
  const big = got.find((g) => g.ids.includes(BIG));
  expect(big?.ids).toEqual([BIG]);
}

/** Everything was there before the first read: each batch closed only for the cap (or the end). */
function expectFull(got: Got[]): void {
  const ids = got.flatMap((g) => g.ids);
  expect(ids).toEqual(Array.from({ length: COUNT }, (_, i) => i + 1));
  for (let i = 0; i + 1 < got.length; i++) {
    const g = got[i];
    expect(g.ids.length === 4 || g.bytes + Buffer.byteLength(message(got[i + 1].ids[0])) > CAP, `batch ${i} (${g.ids.join(',')}) closed early`).toBe(true);
  }
}

describe('batch_max_bytes on broker sources', () => {
  it('rabbitmq: leftovers stay buffered, unacked, first in the next batch', async () => {
    const release = await machineLock('rabbitmq');
    const queue = uniqueQueue('sluice-batch-bytes');
    try {
      await publishAmqp(queue, messages);
      const cfg = rabbitmqSourceSchema.parse({ type: 'rabbitmq', host: '127.0.0.1', queue, batch_size: 1000, batch_timeout_ms: 2000, batch_max_bytes: CAP });
      const got = await drain(new RabbitmqSource(cfg, ctx()), cfg, COUNT);
      expectCapped(got);
      expectFull(got);
      // Closed after the last ack: anything unacked would be back in the queue.
      expect(await queueDepth(queue)).toBe(0);
    } finally {
      await deleteQueues(queue);
      release();
    }
  });

  describe('redis_streams', () => {
    const redis = createClient({ url: 'redis://127.0.0.1:6379' });
    const stream = `sluice-batch-bytes-${randomUUID().slice(0, 8)}`;
    beforeAll(() => redis.connect().then(() => undefined));
    afterAll(async () => {
      await redis.del([stream, `${stream}:dlq`]);
      await redis.quit();
    });

    it('entries read past the cap are kept for the next batch, then acked', async () => {
      const multi = redis.multi();
      for (const p of messages) multi.xAdd(stream, '*', { payload: p });
      await multi.exec();
      const cfg = redisStreamsSourceSchema.parse({ type: 'redis_streams', stream, batch_size: 1000, batch_timeout_ms: 2000, batch_max_bytes: CAP });
      const got = await drain(new RedisStreamsSource(cfg, ctx()), cfg, COUNT);
      expectCapped(got);
      expectFull(got);
      const ids = ((await redis.xRange(stream, '-', '+')) ?? []).map((e) => e?.id);
      expect(got.flatMap((g) => g.coords.map((c) => c.id))).toEqual(ids);
      const pending = await redis.xPending(stream, 'sluice');
      expect(pending?.pending).toBe(0);
      const group = ((await redis.xInfoGroups(stream)) as unknown as { name: string; lag: number }[]).find((g) => g.name === 'sluice');
      expect(group?.lag).toBe(0);
    });
  });

  describe('nats', () => {
    let nc: NatsConnection;
    let jsm: JetStreamManager;
    let release: () => void;
    const stream = `SLUICE_BATCH_BYTES_${randomUUID().slice(0, 8).toUpperCase()}`;
    beforeAll(async () => {
      // nats.test.ts restarts the server: not meanwhile.
      release = await machineLock('nats');
      nc = await connect({ servers: '127.0.0.1:4222' });
      jsm = await jetstreamManager(nc);
    });
    afterAll(async () => {
      await jsm?.streams.delete(stream).catch(() => false);
      await nc?.close();
      release?.();
    });

    it('messages pulled past the cap stay pulled ahead, first in the next batch, each acked once', async () => {
      const subject = `${stream.toLowerCase()}.orders`;
      await jsm.streams.add({ name: stream, subjects: [subject] });
      const js = jetstream(nc);
      for (const p of messages) await js.publish(subject, p);
      const cfg = natsSourceSchema.parse({ type: 'nats', stream, batch_size: 1000, batch_timeout_ms: 2000, batch_max_bytes: CAP });
      const got = await drain(new NatsSource(cfg, ctx()), cfg, COUNT);
      expectCapped(got);
      expectFull(got);
      expect(got.flatMap((g) => g.coords.map((c) => c.seq))).toEqual(Array.from({ length: COUNT }, (_, i) => i + 1));
      const info = await jsm.consumers.info(stream, 'sluice');
      expect(info.num_pending).toBe(0);
      expect(info.num_ack_pending).toBe(0);
      expect(info.delivered.stream_seq).toBe(COUNT);
      expect(info.ack_floor.stream_seq).toBe(COUNT);
    });
  });

  describe('kafka', () => {
    let mk: MockKafka;
    beforeAll(async () => {
      mk = await startMockKafka();
    });
    afterAll(async () => {
      await mk?.stop();
    });

    it('a fetched chunk is split at the cap: its rest leads the next batch; offsets committed per partition', async () => {
      const topic = uniqueTopic('sluice-batch-bytes');
      const group = `sluice-batch-bytes-${randomUUID().slice(0, 8)}`;
      // Two partitions, in id order within each (the big message in partition 1).
      await ensureTopic(mk.admin, topic);
      await produce(
        mk.producer,
        topic,
        messages.map((value, i) => ({ value, partition: i % 2 })),
      );
      const cfg = kafkaSourceSchema.parse({
        type: 'kafka',
        brokers: mk.brokers.split(','),
        topics: [topic],
        group_id: group,
        session_timeout_ms: 6000,
        heartbeat_interval_ms: 1000,
        batch_size: 1000,
        batch_timeout_ms: 500,
        batch_max_bytes: CAP,
      });
      const got = await drain(new KafkaSource(cfg, ctx()), cfg, COUNT, 2000);
      expectCapped(got);
      // A fetch of a partition holds more than a batch's bytes: some batch is cut in the middle of it.
      expect(got.some((g) => g.ids.length === 4)).toBe(true);
      const all = got.flatMap((g) => g.coords.map((c, i) => ({ partition: c.partition, offset: c.offset, id: g.ids[i] })));
      for (const p of [0, 1]) {
        const mine = all.filter((c) => c.partition === p);
        expect(mine.map((c) => c.offset)).toEqual(Array.from({ length: COUNT / 2 }, (_, i) => i));
        expect(mine.map((c) => c.id)).toEqual(Array.from({ length: COUNT / 2 }, (_, i) => 2 * i + p + 1));
      }
      expect(got.flatMap((g) => g.ids).sort((a, b) => a - b)).toEqual(Array.from({ length: COUNT }, (_, i) => i + 1));
      // The commits of the batches' positions reached each partition's end.
      expect(await groupCaughtUp(mk.admin, group, topic)).toBe(true);
    });
  });
});
