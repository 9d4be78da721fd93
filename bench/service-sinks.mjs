// `npm run bench -- service_sinks [--rows N] [--runs N]`: the http, redis (set, xadd), rabbitmq
// and nats sinks writing one flush of N rows (default 100,000), against a bare client of the
// same library sending the same rows' JSON the same way (same batch sizes, same acks awaited),
// in the same run. The sink's time is the engine's `flushed` log (`ms`: the sink write,
// DuckDB's JSON encoding included); the ratio is bare time / sink time (1.0 = as fast as the
// bare client). Needs Redis, RabbitMQ and NATS on 127.0.0.1 (see bench/README.md); the HTTP
// receiver runs in this process.
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { createClient } from 'redis';
import amqp from 'amqplib';
import { connect } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { arg, checkFlags, machine, median, startSluice } from './lib.mjs';

checkFlags('service_sinks', ['rows', 'runs']);
const ROWS = arg('rows', 100_000);
const RUNS = arg('runs', 3);
const tag = `${process.pid}`;

// The rows as the sinks encode them (the model below over these messages).
const messages = Array.from({ length: ROWS }, (_, i) => ({ id: i + 1, name: `name ${i + 1}`, amount: i + 1.5, flag: i % 2 === 1, note: i % 3 === 2 ? `note ${i + 1}` : null }));
const json = messages.map((m) => JSON.stringify(m));

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-bench-sinks-'));
fs.mkdirSync(path.join(dir, 'data'));
fs.mkdirSync(path.join(dir, 'config'));
fs.mkdirSync(path.join(dir, 'models'));
fs.writeFileSync(path.join(dir, 'data/a.ndjson'), json.join('\n') + '\n');
fs.writeFileSync(path.join(dir, 'config/sources.yml'), `source:\n  type: file\n  path: data/*.ndjson\n  batch_size: ${Math.min(ROWS, 100_000)}\n`);
fs.writeFileSync(path.join(dir, 'config/models.yml'), 'max_age_seconds: 3600\nmax_file_bytes: 1073741824\n');
fs.writeFileSync(
  path.join(dir, 'models/events.sql'),
  'SELECT incoming.id::BIGINT AS id, incoming.name::VARCHAR AS name, incoming.amount::DOUBLE AS amount, incoming.flag::BOOLEAN AS flag, incoming.note::VARCHAR AS note FROM incoming\n',
);

/** One `sluice run` over the file with `sink`; returns the flush's sink time (ms) and checks its rows. */
async function sinkRun(sink) {
  fs.rmSync(path.join(dir, '.sluice'), { recursive: true, force: true });
  fs.writeFileSync(path.join(dir, 'config/sinks.yml'), `sink: ${JSON.stringify(sink)}\n`);
  const s = startSluice(dir, 0);
  const code = await s.exited;
  if (code !== 0) throw new Error(`sluice exited ${code}: ${s.err().slice(-2000)}`);
  const flushed = s.lines().filter((l) => l.msg === 'flushed');
  const rows = flushed.reduce((n, l) => n + l.rows, 0);
  if (rows !== ROWS) throw new Error(`expected one flush of ${ROWS} rows, got ${JSON.stringify(flushed)}`);
  return flushed.reduce((n, l) => n + l.ms, 0);
}

async function timed(fn) {
  const t = performance.now();
  await fn();
  return performance.now() - t;
}

// --- the HTTP receiver (this process: sluice runs as a child, so nothing blocks it) ---------
const server = http.createServer((req, res) => {
  req.resume();
  req.on('end', () => res.writeHead(200).end());
});
await new Promise((r) => server.listen(0, '127.0.0.1', r));
const httpUrl = `http://127.0.0.1:${server.address().port}/ingest`;

const redis = createClient({ url: 'redis://127.0.0.1:6379' });
await redis.connect();
const amqpConn = await amqp.connect('amqp://guest:guest@127.0.0.1:5672');
const nc = await connect({ servers: '127.0.0.1:4222' });
const jsm = await jetstreamManager(nc);
const js = jetstream(nc);
const natsStream = `BENCH_SINKS_${tag}`;
await jsm.streams.add({ name: natsStream, subjects: [`bench.sinks.${tag}.>`] });
const queue = `bench.sinks.${tag}`;
const setupCh = await amqpConn.createChannel();
await setupCh.assertQueue(queue, { durable: true });

const chunks = (size) => {
  const out = [];
  for (let i = 0; i < json.length; i += size) out.push(json.slice(i, i + size));
  return out;
};

const cases = [
  {
    name: 'http (json_array, 500 rows per POST)',
    sink: { type: 'http', url: httpUrl, batch_rows: 500 },
    bare: async () => {
      for (const c of chunks(500)) {
        const r = await fetch(httpUrl, { method: 'POST', headers: { 'content-type': 'application/json', 'idempotency-key': 'k' }, body: `[${c.join(',')}]` });
        await r.arrayBuffer();
      }
    },
  },
  {
    name: 'redis set (pipelines of 1000 SET)',
    sink: { type: 'redis', mode: 'set', key: `bench:${tag}:s:{id}` },
    bare: async () => {
      for (const c of chunks(1000)) {
        const p = redis.multi();
        for (const v of c) p.addCommand(['SET', `bench:${tag}:b:${JSON.parse(v).id}`, v]);
        await p.execAsPipeline();
      }
    },
    after: async () => {
      for (const pattern of [`bench:${tag}:s:*`, `bench:${tag}:b:*`]) for await (const keys of redis.scanIterator({ MATCH: pattern, COUNT: 10_000 })) if (keys.length) await redis.del(keys);
    },
  },
  {
    name: 'redis xadd (MULTI of 1000 XADD)',
    sink: { type: 'redis', mode: 'xadd', stream: `bench:${tag}:xs` },
    bare: async () => {
      let row = 0;
      for (const c of chunks(1000)) {
        const tx = redis.multi();
        for (const v of c) tx.addCommand(['XADD', `bench:${tag}:xb`, '*', 'payload', v, 'sluice_id', `bench/events/f/${row++}`]);
        tx.addCommand(['SET', `bench:${tag}:marker`, String(row)]);
        await tx.exec();
      }
    },
    after: async () => {
      await redis.del([`bench:${tag}:xs`, `bench:${tag}:xb`, `bench:${tag}:marker`]);
      for await (const keys of redis.scanIterator({ MATCH: `sluice:xadd:bench:${tag}:*`, COUNT: 1000 })) if (keys.length) await redis.del(keys);
    },
  },
  {
    name: 'rabbitmq (persistent, confirms per 1000)',
    sink: { type: 'rabbitmq', exchange: '', routing_key: queue },
    bare: async () => {
      const ch = await amqpConn.createConfirmChannel();
      let row = 0;
      for (const c of chunks(1000)) {
        for (const v of c) {
          const r = row++;
          const ok = ch.publish('', queue, Buffer.from(v), { persistent: true, mandatory: true, contentType: 'application/json', messageId: `bench/events/f/${r}`, headers: { 'sluice-row': r } });
          if (!ok) await new Promise((res) => ch.once('drain', res));
        }
        await ch.waitForConfirms();
      }
      await ch.close();
    },
    after: async () => {
      await setupCh.purgeQueue(queue);
    },
  },
  {
    name: 'nats (JetStream, 1000 acks in flight, Nats-Msg-Id)',
    sink: { type: 'nats', subject: `bench.sinks.${tag}.s` },
    bare: async () => {
      let row = 0;
      const run = Date.now();
      for (const c of chunks(1000)) await Promise.all(c.map((v) => js.publish(`bench.sinks.${tag}.b`, v, { msgID: `bench/${run}/${row++}` })));
    },
    after: async () => {
      await jsm.streams.purge(natsStream);
    },
  },
];

console.log(`service sinks: one flush of ${ROWS} rows, ${RUNS} run(s) each, sink vs bare client (same run)`);
console.log(machine());
const results = [];
try {
  for (const c of cases) {
    const sinkMs = [];
    const bareMs = [];
    for (let i = 0; i < RUNS; i++) {
      // Alternating, so both see the same load of a shared machine.
      bareMs.push(await timed(c.bare));
      await c.after?.();
      sinkMs.push(await sinkRun(c.sink));
      await c.after?.();
    }
    const r = { name: c.name, sink_ms: median(sinkMs), bare_ms: median(bareMs) };
    r.ratio = r.bare_ms / r.sink_ms;
    results.push(r);
    console.log(
      `${c.name.padEnd(52)} sink ${String(Math.round(r.sink_ms)).padStart(6)} ms (${Math.round(ROWS / (r.sink_ms / 1000))} rows/s)  bare ${String(Math.round(r.bare_ms)).padStart(6)} ms  ratio ${r.ratio.toFixed(2)}`,
    );
  }
} finally {
  await setupCh.deleteQueue(queue).catch(() => {});
  await jsm.streams.delete(natsStream).catch(() => {});
  await amqpConn.close().catch(() => {});
  await nc.drain().catch(() => {});
  redis.destroy();
  server.close();
  fs.rmSync(dir, { recursive: true, force: true });
}
