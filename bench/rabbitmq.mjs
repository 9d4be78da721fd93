// RabbitMQ benchmark: sluice draining a queue of order messages through the `orders` and
// `purchases` models to Parquet, against a bare amqplib consumer (same prefetch, acks only)
// draining the same number in the same run; then publish-to-ack latency at a steady rate.
//
// Without --batch-size or --prefetch, sluice's source block sets no batch keys and no prefetch:
// what a user gets (batch_size a ceiling of 25,000, batch_timeout_ms 1000, prefetch
// min(4 x batch_size, 40,000) = 40,000). The bare consumer then gets the same prefetch, 40,000,
// and multiple-acks every 10,000 messages, as it did when the benchmark set batch_size 10,000.
// With --batch-size B: sluice's batch_size B, batch_timeout_ms 1000 and prefetch 4 x B, the bare
// consumer's ack every B and prefetch 4 x B, as before.
//
// The latency phase also runs at sluice's defaults (target: p99 <= batch_timeout_ms + 100 ms =
// 1,100 ms) unless --latency-batch-size / --latency-batch-timeout-ms (or --prefetch) set its keys:
// `--latency-batch-size 1000 --latency-batch-timeout-ms 100 --prefetch 40000` is the setup of the
// figures measured before 2026-12-07.
//
//   node bench/run.mjs rabbitmq [--messages 200000] [--runs 5] [--batch-size B] [--prefetch P] [--threads T] [--debug 1] [--rate 5000] [--seconds 15] [--latency-batch-size B] [--latency-batch-timeout-ms T]
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import amqp from 'amqplib';
import { SLUICE_DEFAULTS, batchKeys, benchProject, describeSluiceKeys, drainBench, drainFlags, given, keysYaml, orderBodies, pidsNamed, sleep, startSluice, untilReading } from './lib.mjs';
import { orderMessage } from '../dist/connectors/generator/generator-source.js';

const URL = process.env.SLUICE_BENCH_AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672';

const flags = drainFlags('rabbitmq', {
  prefetch: (f) => (f.batch === undefined ? undefined : f.batch * 4),
  rate: 5000,
  seconds: 15,
  'latency-batch-size': undefined,
  'latency-batch-timeout-ms': undefined,
});
// PREFETCH: sluice's `prefetch` key, set only with --prefetch or --batch-size; the bare consumer
// uses what sluice then uses (the key, or sluice's default).
const { prefetch: PREFETCH, rate: RATE, seconds: SECONDS } = flags;
const BARE_PREFETCH = PREFETCH ?? flags.heldAhead;
const ACK_EVERY = flags.bareBatch;
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

/** The baseline: a bare consumer of the same client, sluice's prefetch, a multiple-ack every ACK_EVERY messages. */
async function bareConsumer(queue, n) {
  const conn = await amqp.connect(URL);
  const ch = await conn.createChannel();
  await ch.prefetch(BARE_PREFETCH);
  let got = 0;
  const t0 = performance.now();
  await new Promise((resolve) => {
    ch.consume(
      queue,
      (m) => {
        got++;
        if (got % ACK_EVERY === 0 || got === n) ch.ack(m, true);
        if (got === n) resolve();
      },
      { noAck: false },
    );
  });
  const secs = (performance.now() - t0) / 1000;
  await conn.close();
  return n / secs;
}

// The keys sluice's drain sets beyond the connection ({} at its defaults).
const drainKeys = { ...batchKeys(flags), ...(PREFETCH === undefined ? {} : { prefetch: PREFETCH }) };
// The latency phase's keys: sluice's defaults unless given.
const latencyKeys = Object.fromEntries(
  [
    ['batch_size', flags['latency-batch-size']],
    ['batch_timeout_ms', flags['latency-batch-timeout-ms']],
    ['prefetch', given('prefetch') ? PREFETCH : undefined],
  ].filter(([, v]) => v !== undefined),
);
const LATENCY_TARGET_MS = (latencyKeys.batch_timeout_ms ?? SLUICE_DEFAULTS.batch_timeout_ms) + 100;
const describeLatencyKeys = () =>
  Object.keys(latencyKeys).length
    ? keysYaml(latencyKeys).trim().replace(/\n\s*/g, ', ')
    : `batch_size default: no batch keys set, batch_timeout_ms ${SLUICE_DEFAULTS.batch_timeout_ms}, prefetch ${SLUICE_DEFAULTS.held_ahead.toLocaleString('en-US')}`;

const sourceYaml = (queue, keys) => `source:\n  type: rabbitmq\n  url: ${URL}\n  queue: ${queue}\n  dlq: ${queue}.dlq\n${keysYaml(keys)}`;

async function latency(queue) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-bench-lat-'));
  await benchProject(dir, sourceYaml(queue, latencyKeys), flags.threads);
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
  // Every message acked before the quantiles are read (a message still held would be left out
  // of them): sluice's acked counter reaches `sent`.
  let metrics = '';
  const deadline = Date.now() + 60_000;
  for (;;) {
    metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    const acked = [...metrics.matchAll(/^sluice_messages_acked_total(?:\{[^}]*\})? ([0-9.e+]+)$/gm)].reduce((sum, m) => sum + Number(m[1]), 0);
    if (acked >= sent) break;
    if (Date.now() > deadline) throw new Error(`latency phase: sluice acked ${acked} of ${sent} messages within 60 s of the last publish`);
    await sleep(100);
  }
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
  sourceYaml: sourceYaml(queue, drainKeys),
  sluiceKeys: drainKeys,
  sluiceSettings: describeSluiceKeys(flags, [PREFETCH === undefined ? `prefetch default (${flags.heldAhead.toLocaleString('en-US')})` : `prefetch ${PREFETCH.toLocaleString('en-US')}`]),
  bareKeys: { prefetch: BARE_PREFETCH, ack_every: ACK_EVERY },
  bareSettings: `prefetch ${BARE_PREFETCH.toLocaleString('en-US')}${PREFETCH === undefined ? " (sluice's default)" : ''}, a multiple-ack every ${ACK_EVERY.toLocaleString('en-US')} messages${flags.batch === undefined ? ' (as when the benchmark set batch_size 10,000)' : ''}`,
  bodies,
  itemsIn,
  // Then publish-to-ack latency at a steady rate, in the summary too.
  extra: async () => {
    console.log(`\nlatency phase: ${RATE} msg/s for ${SECONDS} s, sluice with ${describeLatencyKeys()}`);
    lat = await latency(`${queue}-lat`);
    return {
      prefetch: PREFETCH ?? 'default',
      latency: {
        rate_per_s: RATE,
        seconds: SECONDS,
        sent: lat.sent,
        p50_ms: Math.round(lat.p50),
        p99_ms: Math.round(lat.p99),
        // The keys the latency phase's source block set ({}: sluice's defaults).
        source_keys: latencyKeys,
        target_p99_ms: LATENCY_TARGET_MS,
        met: lat.p99 <= LATENCY_TARGET_MS,
      },
    };
  },
});
console.log(
  `publish-to-ack latency at ${RATE} msg/s (${describeLatencyKeys()}): p50 ${Math.round(lat.p50)} ms, p99 ${Math.round(lat.p99)} ms; target p99 <= ${LATENCY_TARGET_MS} ms (batch_timeout_ms + 100): ${lat.p99 <= LATENCY_TARGET_MS ? 'met' : 'not met'}`,
);
const conn = await amqp.connect(URL);
const ch = await conn.createChannel();
for (const q of [queue, `${queue}.dlq`, `${queue}-lat`, `${queue}-lat.dlq`]) await ch.deleteQueue(q);
await conn.close();
