import amqp from 'amqplib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { machineLock } from '../helpers/machine-lock.js';
import { scenarioTargets, writeSinks } from '../helpers/service-sink.js';
import { AMQP_URL } from '../helpers/rabbit.js';
import { waitFor } from '../helpers/wait.js';
import { addInput, contractProject, plainRows, runOnce, sinkContract, type SinkTarget, type SinkUnderTest } from '../helpers/sink-contract.js';

// The rabbitmq sink against the machine's RabbitMQ: the contract suite, then routing keys from
// a template, message properties, and the copies of a replayed flush carrying the same
// message_id. Each scenario gets a topic exchange and a queue bound to it (declared here);
// breaking it for real unbinds the queue, so the broker returns every message as unroutable.

interface Got {
  body: Record<string, unknown>;
  routingKey: string;
  properties: { messageId?: string; deliveryMode?: number; contentType?: string; headers?: Record<string, unknown> };
}

const exchangeOf = (t: SinkTarget) => `sluice.sinktest.${t.id}`;
const queueOf = (t: SinkTarget) => `sluice.sinktest.${t.id}`;
/** Messages taken from each queue so far (reading a queue consumes it). */
const taken = new Map<string, Got[]>();

async function withChannel<T>(fn: (ch: amqp.Channel) => Promise<T>): Promise<T> {
  const conn = await amqp.connect(AMQP_URL);
  try {
    const ch = await conn.createChannel();
    return await fn(ch);
  } finally {
    await conn.close().catch(() => {});
  }
}

async function declare(t: SinkTarget, queues: { name: string; binding: string }[] = [{ name: queueOf(t), binding: '#' }]): Promise<void> {
  await withChannel(async (ch) => {
    await ch.assertExchange(exchangeOf(t), 'topic', { durable: true });
    for (const q of queues) {
      await ch.assertQueue(q.name, { durable: true });
      await ch.bindQueue(q.name, exchangeOf(t), q.binding);
    }
  });
}

/** Everything in `queue` now (consumed and kept in `taken`), plus what earlier reads took. */
async function readQueue(queue: string): Promise<Got[]> {
  const got = taken.get(queue) ?? [];
  taken.set(queue, got);
  await withChannel(async (ch) => {
    ch.on('error', () => {});
    // No queue (checkQueue fails) or an empty one: nothing to read.
    const ready = await ch.checkQueue(queue).then(
      (q) => q.messageCount,
      () => 0,
    );
    if (ready === 0) return;
    await ch.prefetch(5000);
    const want = got.length + ready;
    const { consumerTag } = await ch.consume(queue, (m) => {
      if (!m) return;
      got.push({ body: JSON.parse(m.content.toString()) as Record<string, unknown>, routingKey: m.fields.routingKey, properties: m.properties as Got['properties'] });
      ch.ack(m);
    });
    await waitFor(`the ${ready} message(s) queue ${queue} held`, () => got.length >= want, { timeoutMs: 60_000, describe: () => `${got.length - want + ready} received` });
    await ch.cancel(consumerTag);
  });
  return got;
}

const rabbitSut: SinkUnderTest = {
  name: 'rabbitmq',
  idempotent: false,
  // Persistent messages are fsynced by the broker: 50,000 took 10-50 s on the shared machine.
  largeRows: 20_000,
  async config(t) {
    await declare(t);
    return { type: 'rabbitmq', url: AMQP_URL, exchange: exchangeOf(t), routing_key: 'events.{id}' };
  },
  readRows: async (t) => (await readQueue(queueOf(t))).map((g) => g.body),
  async breakIt(t) {
    await declare(t);
    await withChannel((ch) => ch.unbindQueue(queueOf(t), exchangeOf(t), '#'));
  },
  async fixIt(t) {
    await declare(t);
  },
  async cleanup(t) {
    await withChannel(async (ch) => {
      await ch.deleteQueue(queueOf(t));
      await ch.deleteExchange(exchangeOf(t));
    });
  },
};

sinkContract(rabbitSut);

const target = scenarioTargets('rabbitmq', (t) =>
  withChannel(async (ch) => {
    for (const q of [queueOf(t), `${queueOf(t)}.even`, `${queueOf(t)}.odd`]) await ch.deleteQueue(q);
    await ch.deleteExchange(exchangeOf(t));
  }),
);

// rabbitmq.test.ts restarts the broker in one test: not while this file runs.
let release: (() => void) | undefined;
beforeAll(async () => {
  release = await machineLock('rabbitmq');
}, 16 * 60_000);
afterAll(() => release?.());

describe('rabbitmq sink', () => {
  it('routing keys from a template reach the queues bound to them; messages are persistent JSON with message_id and headers', async () => {
    const t = target();
    const even = `${queueOf(t)}.even`;
    const odd = `${queueOf(t)}.odd`;
    await declare(t, [
      { name: even, binding: 'events.true' },
      { name: odd, binding: 'events.false' },
    ]);
    await contractProject(rabbitSut, t);
    writeSinks(t, { type: 'rabbitmq', url: AMQP_URL, exchange: exchangeOf(t), routing_key: 'events.{flag}' });
    addInput(t, 'a.ndjson', plainRows(40));
    const r = runOnce(t);
    expect(r.code, r.stderr).toBe(0);
    const evens = await readQueue(even);
    const odds = await readQueue(odd);
    expect(evens.map((g) => g.body.id)).toEqual(
      plainRows(40)
        .filter((x) => x.flag)
        .map((x) => x.id),
    );
    expect(odds.map((g) => g.body.id)).toEqual(
      plainRows(40)
        .filter((x) => !x.flag)
        .map((x) => x.id),
    );
    for (const g of [...evens, ...odds]) {
      expect(g.routingKey).toBe(`events.${String(g.body.flag)}`);
      expect(g.properties.deliveryMode).toBe(2);
      expect(g.properties.contentType).toBe('application/json');
      expect(g.properties.messageId).toMatch(/^proj\/events\/part-.+\/\d+$/);
      expect(g.properties.headers?.['sluice-model']).toBe('events');
    }
    expect(new Set([...evens, ...odds].map((g) => g.properties.messageId)).size).toBe(40);
  }, 60_000);

  it('a flush replayed after a crash is published again with the same message ids (consumers dedupe by them)', async () => {
    const t = target();
    await declare(t);
    await contractProject(rabbitSut, t, { batchSize: 50 });
    writeSinks(t, { type: 'rabbitmq', url: AMQP_URL, exchange: exchangeOf(t), routing_key: 'events' });
    addInput(t, 'a.ndjson', plainRows(120));
    const crashed = runOnce(t, { SLUICE_CRASH_AT: 'after-sink-write', SLUICE_CRASH_AFTER: '1' });
    expect(crashed.code).not.toBe(0);
    const again = runOnce(t);
    expect(again.code, again.stderr).toBe(0);
    const got = await readQueue(queueOf(t));
    const byId = new Map<string, Set<unknown>>();
    for (const g of got) {
      const id = g.properties.messageId!;
      if (!byId.has(id)) byId.set(id, new Set());
      byId.get(id)!.add(g.body.id);
    }
    // Every row once per message id, each id naming one row: dedupe by message_id gives the input.
    expect(byId.size).toBe(120);
    for (const rows of byId.values()) expect(rows.size).toBe(1);
    expect([...byId.values()].map((s) => [...s][0]).sort((a, b) => Number(a) - Number(b))).toEqual(plainRows(120).map((x) => x.id));
    expect(got.length).toBeGreaterThan(120);
  }, 60_000);
});
