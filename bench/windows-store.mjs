// Windows over several workers' shared state store: one worker draining a Kafka backlog of N
// clickstream events, keyed by user, through three per-user windowed models (tumbling, hopping,
// session), with sluice.yml `window_state` (the real PostgreSQL on 127.0.0.1) against the same
// worker without it, in the same run, alternating, over the same topic (a fresh consumer group
// each run). The time is from "reading from the source" to the last message's batch committed.
// The ratio is the drain rate with the store over the rate without: what keeping each
// partition's state in PostgreSQL costs a worker. The broker is librdkafka's mock cluster (kcat).
//
//   node bench/run.mjs windows_store [--messages 100000] [--runs 3]
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Kafka, logLevel } from 'kafkajs';
import pg from 'pg';
import { arg, checkFlags, machine, median, startKafkaMock, startSluice, untilCommitted, untilReading } from './lib.mjs';
import { clickEvent, LATENESS } from './clicks.mjs';

process.env.KAFKAJS_NO_PARTITIONER_WARNING = '1';
checkFlags('windows_store', ['messages', 'runs']);
const N = arg('messages', 100_000);
const RUNS = arg('runs', 3);
const PG = 'postgres://postgres@127.0.0.1:5432/test';
const TABLE = `bench_window_state_${process.pid}`;
const TOPIC = `sluice-bench-winstore-${process.pid}`;

const MODELS = {
  user_minute: `SELECT TUMBLE_START(ts, INTERVAL '1' MINUTE) AS window_start, "user", count(*) AS clicks, sum(amount) AS amount FROM incoming GROUP BY TUMBLE(ts, INTERVAL '1' MINUTE), "user"`,
  user_moving: `SELECT HOP_START(ts, INTERVAL '1' MINUTE, INTERVAL '5' MINUTE) AS window_start, "user", avg(amount) AS avg_amount FROM incoming GROUP BY HOP(ts, INTERVAL '1' MINUTE, INTERVAL '5' MINUTE), "user"`,
  user_sessions: `SELECT SESSION_START(ts, INTERVAL '30' SECOND) AS session_start, "user", count(*) AS clicks FROM incoming GROUP BY SESSION(ts, INTERVAL '30' SECOND), "user"`,
};

const mock = await startKafkaMock();
const kafka = new Kafka({ brokers: mock.brokers.split(','), clientId: 'sluice-bench', logLevel: logLevel.NOTHING });
const admin = kafka.admin();
await admin.connect();
const producer = kafka.producer({ allowAutoTopicCreation: true });
await producer.connect();
await admin.fetchTopicMetadata({ topics: [TOPIC] }); // auto-creates it (4 partitions)
for (let i = 0; i < N; i += 20_000) {
  const messages = [];
  for (let j = i; j < Math.min(N, i + 20_000); j++) {
    const value = clickEvent(j);
    messages.push({ key: JSON.parse(value).user, value });
  }
  await producer.send({ topic: TOPIC, acks: -1, messages });
}
let kept = 0;
for (const p of await admin.fetchTopicOffsets(TOPIC)) kept += Number(p.high) - Number(p.low);
if (kept !== N) throw new Error(`the broker kept ${kept} of ${N} messages; use fewer --messages`);
const db = new pg.Client({ connectionString: PG });
await db.connect();

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-bench-winstore-'));
let runNo = 0;

/** One drain of the topic by a fresh group; returns events/s. */
async function drain(store) {
  const dir = path.join(root, `${store ? 'store' : 'plain'}-${++runNo}`);
  fs.mkdirSync(path.join(dir, 'config'), { recursive: true });
  fs.mkdirSync(path.join(dir, 'models'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'sluice.yml'), `name: bench-winstore\n${store ? `window_state:\n  postgres: ${PG}\n  table: ${TABLE}\n` : ''}`);
  fs.writeFileSync(path.join(dir, 'config/sources.yml'), `source:\n  type: kafka\n  brokers: ${mock.brokers}\n  topics: [${TOPIC}]\n  group_id: bench-${process.pid}-${runNo}\n`);
  fs.writeFileSync(path.join(dir, 'config/sinks.yml'), `sink:\n  type: parquet\n  path: ${path.join(dir, 'output')}\n`);
  fs.writeFileSync(
    path.join(dir, 'config/models.yml'),
    `overrides:\n${Object.keys(MODELS)
      .map((m) => `  ${m}:\n    window:\n      lateness: ${LATENESS}\n`)
      .join('')}`,
  );
  for (const [m, sql] of Object.entries(MODELS)) fs.writeFileSync(path.join(dir, 'models', `${m}.sql`), `${sql}\n`);
  if (store) await db.query(`DROP TABLE IF EXISTS ${TABLE}`);
  const s = startSluice(dir, 0, 'debug');
  await untilReading(s);
  const t0 = s.lines().find((l) => l.msg === 'reading from the source').time;
  const t1 = await untilCommitted(s, N);
  s.child.kill('SIGTERM');
  if ((await s.exited) !== 0) throw new Error(`sluice exited non-zero: ${s.err().slice(-2000)}`);
  const rate = N / ((t1 - t0) / 1000);
  console.log(
    `  ${store ? 'window_state' : 'no store    '}: ${Math.round(rate).toLocaleString('en-US')} events/s (${((t1 - t0) / 1000).toFixed(2)} s), peak RSS ${Math.round(s.peak() / 2 ** 20)} MiB`,
  );
  return rate;
}

try {
  console.log(`windows over Kafka with and without window_state: ${N.toLocaleString('en-US')} events keyed by user, 4 partitions, 3 per-user windowed models, ${RUNS} runs each`);
  const ratios = [];
  for (let r = 0; r < RUNS; r++) {
    const plain = await drain(false);
    const store = await drain(true);
    ratios.push(store / plain);
  }
  console.log(`ratio (with window_state / without), median of ${RUNS}: ${median(ratios).toFixed(2)} (${ratios.map((x) => x.toFixed(2)).join(', ')})`);
  console.log(machine());
} finally {
  await db.query(`DROP TABLE IF EXISTS ${TABLE}`).catch(() => {});
  await db.end();
  await producer.disconnect();
  await admin.disconnect();
  mock.stop();
  fs.rmSync(root, { recursive: true, force: true });
}
