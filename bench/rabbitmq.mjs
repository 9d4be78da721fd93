// RabbitMQ benchmark: sluice draining a queue of order messages through the `orders` and
// `purchases` models to Parquet, against a bare amqplib consumer (same prefetch, acks only)
// draining the same number in the same run; then publish-to-ack latency at a steady rate.
//
//   node bench/run.mjs rabbitmq [--messages 200000] [--runs 5] [--batch-size 10000] [--prefetch 4 x batch] [--threads T] [--debug 1] [--rate 5000] [--seconds 15]
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import amqp from 'amqplib';
import { benchProject, drainBench, drainFlags, orderBodies, pidsNamed, sleep, startSluice, untilReading } from './lib.mjs';
import { orderMessage } from '../dist/connectors/generator/generator-source.js';

const URL = process.env.SLUICE_BENCH_AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672';

const flags = drainFlags('rabbitmq', { prefetch: (f) => f.batch * 4, rate: 5000, seconds: 15 });
const { batch: BATCH, prefetch: PREFETCH, rate: RATE, seconds: SECONDS } = flags;
const { bodies, itemsIn } = orderBodies(orderMessage);

async function fill(queue, n) {
  const conn = await amqp.connect(URL);
  const ch = await conn.createConfirmChannel();
  await ch.assertQueue(queue, { durable: true });
  await ch.purgeQueue(queue);
  for (let i = 0; i < n; i++) {
    if (!ch.sendToQueue(queue, bodies[i % bodies.length], { persistent: true })) await new Promise((r) => ch.once('drain', r));
    if (i % 10_000 === 9_999) await ch.waitForConfirms();
  }
  await ch.waitForConfirms();
  await conn.close();
}

/** The baseline: a bare consumer of the same client, same prefetch, multiple-ack per batch. */
async function bareConsumer(queue, n) {
  const conn = await amqp.connect(URL);
  const ch = await conn.createChannel();
  await ch.prefetch(PREFETCH);
  let got = 0;
  const t0 = performance.now();
  await new Promise((resolve) => {
    ch.consume(
      queue,
      (m) => {
        got++;
        if (got % BATCH === 0 || got === n) ch.ack(m, true);
        if (got === n) resolve();
      },
      { noAck: false },
    );
  });
  const secs = (performance.now() - t0) / 1000;
  await conn.close();
  return n / secs;
}

const sourceYaml = (queue, batch, timeoutMs) =>
  `source:\n  type: rabbitmq\n  url: ${URL}\n  queue: ${queue}\n  dlq: ${queue}.dlq\n  batch_size: ${batch}\n  batch_timeout_ms: ${timeoutMs}\n  prefetch: ${PREFETCH}\n`;

async function latency(queue) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-bench-lat-'));
  await benchProject(dir, sourceYaml(queue, 1000, 100), flags.threads);
  const port = 19000 + Math.floor(Math.random() * 1000);
  const s = startSluice(dir, port);
  await untilReading(s);
  const conn = await amqp.connect(URL);
  const ch = await conn.createConfirmChannel();
  const t0 = Date.now();
  let sent = 0;
  while (Date.now() - t0 < SECONDS * 1000) {
    const due = Math.floor(((Date.now() - t0) / 1000) * RATE);
    for (; sent < due; sent++) ch.sendToQueue(queue, bodies[sent % bodies.length], { persistent: true, timestamp: Date.now() });
    await sleep(2);
  }
  await ch.waitForConfirms();
  await conn.close();
  await sleep(1500);
  const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const q = (p) => Number(new RegExp(`sluice_ack_latency_seconds\\{quantile="${p}"\\} ([0-9.e-]+)`).exec(metrics)?.[1]);
  s.child.kill('SIGTERM');
  await s.exited;
  fs.rmSync(dir, { recursive: true, force: true });
  return { sent, p50: q(0.5) * 1000, p99: q(0.99) * 1000 };
}

const queue = `sluice-bench-${process.pid}`;
let lat;
await drainBench({
  name: 'rabbitmq',
  title: 'RabbitMQ',
  baseline: 'bare amqplib consumer',
  flags,
  fill: (n) => fill(queue, n),
  bare: (n) => bareConsumer(queue, n),
  brokerPids: () => (process.env.SLUICE_BENCH_AMQP_URL ? [] : pidsNamed('beam.smp')),
  sourceYaml: sourceYaml(queue, BATCH, 1000),
  bodies,
  itemsIn,
  // Then publish-to-ack latency at a steady rate, in the summary too.
  extra: async () => {
    lat = await latency(`${queue}-lat`);
    return {
      prefetch: PREFETCH,
      latency: { rate_per_s: RATE, seconds: SECONDS, sent: lat.sent, p50_ms: Math.round(lat.p50), p99_ms: Math.round(lat.p99), batch_size: 1000, batch_timeout_ms: 100 },
    };
  },
});
console.log(`publish-to-ack latency at ${RATE} msg/s: p50 ${Math.round(lat.p50)} ms, p99 ${Math.round(lat.p99)} ms`);
const conn = await amqp.connect(URL);
const ch = await conn.createChannel();
for (const q of [queue, `${queue}.dlq`, `${queue}-lat`, `${queue}-lat.dlq`]) await ch.deleteQueue(q);
await conn.close();
