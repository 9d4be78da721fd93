import fs from 'node:fs';
import path from 'node:path';
import { DuckDBInstance } from '@duckdb/node-api';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sluiceBg, tempDir, until, waitExit, writeFiles } from '../helpers/cli.js';
import { ensureTopic, groupCaughtUp, produce, startMockKafka, uniqueTopic, type MockKafka } from '../helpers/kafka.js';
import { clickEvent, LATENESS, WINDOW_MODELS } from '../helpers/window-data.js';

// Windowed models over a real Kafka protocol broker (librdkafka's mock cluster): a run
// SIGKILLed ten times and more (at random, and at crash points on both sides of the WAL
// commit) gives exactly the output of an uninterrupted run over the same topic. The topic is
// keyed by user, so each partition's event times are out of order only within the lateness,
// and the watermark is the minimum over the four partitions.

const EVENTS = 60_000;
let mk: MockKafka;
const root = tempDir('sluice-windows-kafka-');

beforeAll(async () => {
  mk = await startMockKafka();
});
afterAll(async () => {
  await mk?.stop();
  fs.rmSync(root, { recursive: true, force: true });
});

const MODELS = ['revenue', 'moving', 'sessions'];

function project(name: string, topic: string): string {
  const p = path.join(root, name);
  const models = Object.fromEntries(MODELS.map((m) => [`models/${m}.sql`, WINDOW_MODELS[`models/${m}.sql`]]));
  writeFiles(p, {
    'config/sources.yml': `source:\n  type: kafka\n  brokers: ${mk.brokers}\n  topics: [${topic}]\n  group_id: g-${name}-${topic}\n  session_timeout_ms: 4000\n  rebalance_timeout_ms: 4000\n  heartbeat_interval_ms: 400\n  max_wait_ms: 100\n  batch_size: 1500\n  batch_timeout_ms: 200\n  dlq: .sluice/dlq\n`,
    'config/sinks.yml': 'sink:\n  type: parquet\n  path: ./output\n',
    'config/models.yml': `max_age_seconds: 0.5\noverrides:\n${MODELS.map((m) => `  ${m}:\n    window:\n      lateness: ${LATENESS}\n`).join('')}`,
    ...models,
  });
  return p;
}

async function runToEnd(p: string, group: string, topic: string): Promise<void> {
  const w = sluiceBg(['run', '--project', p, '--port', '0'], { env: { SLUICE_WORKER_ID: 'w1' } });
  const t0 = Date.now();
  // Stopped only once it reads (a SIGTERM before the CLI has loaded would just end the process).
  await until(() => w.err().includes('reading from the source'), 60_000, 20);
  await until(() => groupCaughtUp(mk.admin, group, topic), 120_000, 200);
  console.log(`windows over kafka: ${path.basename(p)} caught up in ${Date.now() - t0} ms`);
  w.kill('SIGTERM');
  expect(await waitExit(w, 60_000), w.err().slice(-3000)).toEqual({ code: 0, signal: null });
}

/** A model's output rows, as a relation. */
function rows(p: string, model: string): string {
  return `(SELECT * FROM read_parquet('${path.join(p, 'output', model)}/**/*.parquet'))`;
}

// The two tests (each on a topic and projects of its own) run together: the second mostly
// waits (for idle_timeout, and for windows not to close), beside the first's long kill loop.
describe('windowed models over Kafka', () => {
  it.concurrent('SIGKILLed at least ten times, a run gives exactly the output of an uninterrupted one', async () => {
    const topic = uniqueTopic('sluice-win');
    await ensureTopic(mk.admin, topic);
    // Keyed by user: a user's events stay in order of writing within their partition.
    const events = (from: number, n: number) =>
      Array.from({ length: n }, (_, i) => {
        const value = clickEvent(from + i);
        return { key: (JSON.parse(value) as { user: string }).user, value };
      });
    let produced = EVENTS;
    await produce(mk.producer, topic, events(0, EVENTS));

    const killed = project('killed', topic);
    const args = ['run', '--project', killed, '--port', '0'];
    let kills = 0;
    const how: Record<string, number> = {};
    const t0 = Date.now();
    for (let i = 0; kills < 10 && i < 30; i++) {
      // A fast machine may have read the topic between kills: more events, so every kill has work.
      if (await groupCaughtUp(mk.admin, `g-killed-${topic}`, topic)) {
        await produce(mk.producer, topic, events(produced, 20_000));
        produced += 20_000;
      }
      const point = ['after-commit', 'before-commit', undefined][i % 3];
      const env: NodeJS.ProcessEnv = { SLUICE_WORKER_ID: 'w1', ...(point ? { SLUICE_CRASH_AT: point, SLUICE_CRASH_AFTER: String(2 + Math.floor(Math.random() * 4)) } : {}) };
      const w = sluiceBg(args, { env });
      if (point) await waitExit(w, 90_000).catch(() => {});
      else {
        await until(() => w.err().includes('batch') || w.err().includes('reading from the source') || w.exitCode !== null, 60_000, 20);
        await new Promise((r) => setTimeout(r, 300 + Math.floor(Math.random() * 1500)));
      }
      if (w.exitCode === null && w.signalCode === null) w.kill('SIGKILL');
      const exit = await waitExit(w, 60_000);
      if (exit.signal === 'SIGKILL') {
        kills++;
        const why = point && !w.killed ? point : 'random';
        how[why] = (how[why] ?? 0) + 1;
      }
    }
    console.log(`windows over kafka: ${kills} kills ${JSON.stringify(how)} in ${Date.now() - t0} ms`);
    expect(kills).toBeGreaterThanOrEqual(10);
    expect(how['after-commit'] ?? 0).toBeGreaterThanOrEqual(2);
    expect(how['before-commit'] ?? 0).toBeGreaterThanOrEqual(2);
    await runToEnd(killed, `g-killed-${topic}`, topic);
    // The uninterrupted run reads the same topic, every event the killed runs read.
    const calm = project('calm', topic);
    await runToEnd(calm, `g-calm-${topic}`, topic);

    const db = await DuckDBInstance.create(':memory:');
    const conn = await db.connect();
    try {
      for (const m of MODELS) {
        const a = rows(calm, m);
        const b = rows(killed, m);
        const n = async (q: string) => Number((await conn.runAndReadAll(q)).getRows()[0][0]);
        const total = await n(`SELECT count(*) FROM ${a}`);
        expect(total, `${m}: the uninterrupted run emitted windows`).toBeGreaterThan(0);
        expect({
          model: m,
          killed: await n(`SELECT count(*) FROM ${b}`),
          extra: await n(`SELECT count(*) FROM (FROM ${b} EXCEPT ALL FROM ${a})`),
          missing: await n(`SELECT count(*) FROM (FROM ${a} EXCEPT ALL FROM ${b})`),
        }).toEqual({
          model: m,
          killed: total,
          extra: 0,
          missing: 0,
        });
      }
    } finally {
      conn.closeSync();
      db.closeSync();
    }
  }, 600_000);

  it.concurrent('an assigned partition with no event holds the watermark back until idle_timeout, then the windows close on time alone', async () => {
    const topic = uniqueTopic('sluice-idle');
    await ensureTopic(mk.admin, topic);
    // Two minutes of events, all in partition 0: partitions 1-3 are assigned and empty.
    const at = (s: number) => new Date(Date.UTC(2026, 0, 1, 0, 0, s)).toISOString();
    await produce(
      mk.producer,
      topic,
      Array.from({ length: 24 }, (_, i) => ({ partition: 0, value: JSON.stringify({ ts: at(i * 5) }) })),
    );
    const run = async (name: string, idle: string, waitMs: number) => {
      const p = path.join(root, name);
      writeFiles(p, {
        'config/sources.yml': `source:\n  type: kafka\n  brokers: ${mk.brokers}\n  topics: [${topic}]\n  group_id: g-${name}-${topic}\n  session_timeout_ms: 4000\n  rebalance_timeout_ms: 4000\n  heartbeat_interval_ms: 400\n  max_wait_ms: 100\n  dlq: .sluice/dlq\n`,
        'config/sinks.yml': 'sink:\n  type: jsonl\n  path: ./output\n',
        'config/models.yml': `max_age_seconds: 0.2\noverrides:\n  per_minute:\n    window:\n      idle_timeout: ${idle}\n`,
        'models/per_minute.sql': "SELECT TUMBLE_START(ts, INTERVAL '1' MINUTE) AS minute, count(*) AS n FROM incoming GROUP BY TUMBLE(ts, INTERVAL '1' MINUTE)\n",
      });
      const w = sluiceBg(['run', '--project', p, '--port', '0'], { env: { SLUICE_WORKER_ID: 'w1' } });
      try {
        await until(() => groupCaughtUp(mk.admin, `g-${name}-${topic}`, topic), 60_000, 100);
        await new Promise((r) => setTimeout(r, waitMs));
        const dir = path.join(p, 'output', 'per_minute');
        return fs.existsSync(dir)
          ? fs
              .readdirSync(dir)
              .flatMap((f) => fs.readFileSync(path.join(dir, f), 'utf8').split('\n').filter(Boolean))
              .map((l) => JSON.parse(l) as { minute: string; n: number })
          : [];
      } finally {
        w.kill('SIGTERM');
        await waitExit(w, 60_000);
      }
    };
    // Held back: the empty partitions are not idle yet, so minute 0 does not close.
    expect(await run('not-idle', '10 minutes', 4000)).toEqual([]);
    // Idle after 2 s: the tick closes minute 0 (the watermark is 00:01:55, partition 0's alone).
    const rows = await run('idle', '2 seconds', 6000);
    expect(rows.map((r) => `${String(r.minute).slice(11, 19)} ${r.n}`)).toEqual(['00:00:00 12']);
  }, 180_000);
});
