// RabbitMQ benchmark: sluice draining a queue of order messages through the `orders` and
// `purchases` models to Parquet, against a bare amqplib consumer (same prefetch, acks only)
// draining the same number in the same run; then publish-to-ack latency at a steady rate.
//
//   node bench/rabbitmq.mjs [--messages 200000] [--runs 1] [--batch-size 10000] [--prefetch 4 x batch] [--rate 5000] [--seconds 15]
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import amqp from 'amqplib';
import { arg, median, trackPeakRss } from './lib.mjs';
import { orderMessage } from '../dist/connectors/generator/generator-source.js';
import { scaffold } from '../dist/cli/init.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const URL = process.env.SLUICE_BENCH_AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672';

const N = arg('messages', 200_000);
const RUNS = arg('runs', 5);
const BATCH = arg('batch-size', 10_000);
const PREFETCH = arg('prefetch', BATCH * 4);
const RATE = arg('rate', 5000);
const SECONDS = arg('seconds', 15);
const THREADS = arg('threads', 0);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const bodies = Array.from({ length: 1000 }, (_, i) => Buffer.from(orderMessage(i, 42)));

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

async function depth(queue) {
  const conn = await amqp.connect(URL);
  try {
    const ch = await conn.createChannel();
    return (await ch.checkQueue(queue)).messageCount;
  } finally {
    await conn.close();
  }
}

/** The baseline: a bare consumer of the same client, same prefetch, multiple-ack per batch. */
async function bareConsumer(queue, n) {
  const conn = await amqp.connect(URL);
  const ch = await conn.createChannel();
  await ch.prefetch(PREFETCH);
  let got = 0;
  const t0 = performance.now();
  await new Promise((resolve) => {
    ch.consume(queue, (m) => {
      got++;
      if (got % BATCH === 0 || got === n) ch.ack(m, true);
      if (got === n) resolve();
    }, { noAck: false });
  });
  const secs = (performance.now() - t0) / 1000;
  await conn.close();
  return n / secs;
}

function sluiceProject(dir, queue, batch, timeoutMs) {
  fs.rmSync(dir, { recursive: true, force: true });
  return scaffold(dir, 'bench').then(() => {
    fs.writeFileSync(path.join(dir, 'config/sources.yml'),
      `source:\n  type: rabbitmq\n  url: ${URL}\n  queue: ${queue}\n  dlq: ${queue}.dlq\n  batch_size: ${batch}\n  batch_timeout_ms: ${timeoutMs}\n  prefetch: ${PREFETCH}\n`);
    fs.writeFileSync(path.join(dir, 'config/sinks.yml'), `sink:\n  type: parquet\n  path: ${path.join(dir, 'output')}\n`);
    fs.writeFileSync(path.join(dir, 'config/models.yml'), 'max_file_bytes: 1073741824\nmax_age_seconds: 3600\n');
    if (THREADS) fs.writeFileSync(path.join(dir, 'sluice.yml'), `name: bench\nduckdb:\n  threads: ${THREADS}\n`);
  });
}

function startSluice(dir, port) {
  const child = spawn(process.execPath, [path.join(ROOT, 'bin/sluice.js'), 'run', '--project', dir, '--port', String(port), '--log-json'], {
    env: { ...process.env, SLUICE_WORKER_ID: 'bench' }, stdio: ['ignore', 'ignore', 'pipe'],
  });
  let err = '';
  child.stderr.on('data', (d) => (err += d));
  const peak = trackPeakRss(child, 50);
  const exited = new Promise((resolve) => child.on('exit', (code) => resolve(code)));
  return { child, err: () => err, peak, exited };
}

async function acked(port) {
  try {
    const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    return Number(/sluice_messages_acked_total\{[^}]*\} (\d+)/.exec(text)?.[1] ?? 0);
  } catch {
    return 0;
  }
}

async function sluiceDrain(queue, n) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-bench-rmq-'));
  await sluiceProject(dir, queue, BATCH, 1000);
  const port = 19000 + Math.floor(Math.random() * 1000);
  const s = startSluice(dir, port);
  while (!s.err().includes('reading from the source')) {
    if (s.child.exitCode !== null) throw new Error(s.err());
    await sleep(5);
  }
  const t0 = performance.now();
  // Done when sluice has acked every message (its rows are durable in the WAL).
  while ((await acked(port)) < n) await sleep(10);
  const secs = (performance.now() - t0) / 1000;
  s.child.kill('SIGTERM');
  const code = await s.exited;
  if (code !== 0) throw new Error(`sluice exited ${code}: ${s.err().slice(-2000)}`);
  const done = s.err().trim().split('\n').map((l) => { try { return JSON.parse(l); } catch { return {}; } }).find((l) => l.msg === 'done');
  if (!done || done.messages < n) throw new Error(`sluice processed ${done?.messages} of ${n}`);
  fs.rmSync(dir, { recursive: true, force: true });
  return { rate: n / secs, peak: s.peak(), rows: done.rows };
}

async function latency(queue) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-bench-lat-'));
  await sluiceProject(dir, queue, 1000, 100);
  const port = 19000 + Math.floor(Math.random() * 1000);
  const s = startSluice(dir, port);
  while (!s.err().includes('reading from the source')) await sleep(5);
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
console.log(`RabbitMQ benchmark: ${N} order messages, batch_size ${BATCH}, prefetch ${PREFETCH}, ${RUNS} run(s)`);
const bare = [];
const sl = [];
const peaks = [];
for (let r = 0; r < RUNS; r++) {
  await fill(queue, N);
  const b = await bareConsumer(queue, N);
  bare.push(b);
  await fill(queue, N);
  const s = await sluiceDrain(queue, N);
  sl.push(s.rate);
  peaks.push(s.peak);
  console.log(`run ${r + 1}: bare consumer ${Math.round(b)} msg/s, sluice ${Math.round(s.rate)} msg/s (ratio ${(s.rate / b).toFixed(2)}), sluice peak RSS ${(s.peak / 2 ** 20).toFixed(0)} MiB`);
}
const lat = await latency(`${queue}-lat`);
const conn = await amqp.connect(URL);
const ch = await conn.createChannel();
for (const q of [queue, `${queue}.dlq`, `${queue}-lat`, `${queue}-lat.dlq`]) await ch.deleteQueue(q);
await conn.close();

const summary = {
  benchmark: 'rabbitmq',
  messages: N,
  batch_size: BATCH,
  prefetch: PREFETCH,
  runs: RUNS,
  bare_msgs_per_s: Math.round(median(bare)),
  sluice_msgs_per_s: Math.round(median(sl)),
  ratio: Number((median(sl) / median(bare)).toFixed(2)),
  sluice_peak_rss_mib: Math.round(median(peaks) / 2 ** 20),
  latency: { rate_per_s: RATE, seconds: SECONDS, sent: lat.sent, p50_ms: Math.round(lat.p50), p99_ms: Math.round(lat.p99), batch_size: 1000, batch_timeout_ms: 100 },
  machine: { cpu: os.cpus()[0]?.model, cpus: os.cpus().length, mem_gib: Math.round(os.totalmem() / 2 ** 30), node: process.version },
};
console.log(`\nmedian: sluice ${summary.sluice_msgs_per_s} msg/s vs bare consumer ${summary.bare_msgs_per_s} msg/s -> ratio ${summary.ratio} (target >= 0.8)`);
console.log(`publish-to-ack latency at ${RATE} msg/s: p50 ${summary.latency.p50_ms} ms, p99 ${summary.latency.p99_ms} ms`);
fs.mkdirSync(path.join(ROOT, 'bench/results'), { recursive: true });
fs.writeFileSync(path.join(ROOT, 'bench/results/rabbitmq.json'), JSON.stringify(summary, null, 2) + '\n');
