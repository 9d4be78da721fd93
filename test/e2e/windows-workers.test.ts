import fs from 'node:fs';
import path from 'node:path';
import { DuckDBInstance } from '@duckdb/node-api';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, httpGet, sluiceAsync, sluiceBg, tempDir, until, waitExit, writeFiles } from '../helpers/cli.js';
import { ensureTopic, groupCaughtUp, produce, startMockKafka, uniqueTopic, type MockKafka } from '../helpers/kafka.js';
import { startPostgres, stopPostgres } from '../helpers/pg-outage.js';
import { lockPostgres, lockPostgresExclusive, pgQuery } from '../helpers/sql-db.js';
import { clickEvent, LATENESS } from '../helpers/window-data.js';

// Several workers of one consumer group running windowed models, with their state in the
// shared window state store (sluice.yml window_state, on the real PostgreSQL): the topic is
// keyed by user and every model groups by user, so a partition's windows are whole wherever it
// is read. A second worker joins part-way (a rebalance moves two partitions and their state to
// it), is SIGKILLed (its partitions go back to the first worker, with the state it committed),
// and comes back. The windows they emit together are exactly those one worker emits alone,
// without the store, over the same topic.

const PG = 'postgres://postgres@127.0.0.1:5432/test';
let mk: MockKafka;
const root = tempDir('sluice-windows-workers-');

beforeAll(async () => {
  mk = await startMockKafka();
});
afterAll(async () => {
  await mk?.stop();
  fs.rmSync(root, { recursive: true, force: true });
});

const MODELS: Record<string, string> = {
  'models/user_minute.sql': `SELECT TUMBLE_START(ts, INTERVAL '1' MINUTE) AS window_start, "user", count(*) AS clicks, sum(amount) AS amount, list(id ORDER BY id)[1:3] AS first_ids
FROM incoming GROUP BY TUMBLE(ts, INTERVAL '1' MINUTE), "user"
`,
  'models/user_moving.sql': `SELECT HOP_START(ts, INTERVAL '1' MINUTE, INTERVAL '5' MINUTE) AS window_start, "user", avg(amount) AS avg_amount, count(*) AS clicks
FROM incoming GROUP BY HOP(ts, INTERVAL '1' MINUTE, INTERVAL '5' MINUTE), "user"
`,
  'models/user_sessions.sql': `SELECT SESSION_START(ts, INTERVAL '30' SECOND) AS session_start, SESSION_END(ts, INTERVAL '30' SECOND) AS session_end, "user", count(*) AS clicks, min(id) AS first_id, max(id) AS last_id
FROM incoming GROUP BY SESSION(ts, INTERVAL '30' SECOND), "user"
`,
};
const NAMES = Object.keys(MODELS).map((f) => path.basename(f, '.sql'));

function project(name: string, topic: string, table?: string): string {
  const p = path.join(root, `${name}-${topic}`);
  writeFiles(p, {
    'sluice.yml': `name: ${name}\n${table ? `window_state:\n  postgres: ${PG}\n  table: ${table}\n` : ''}`,
    'config/sources.yml': `source:\n  type: kafka\n  brokers: ${mk.brokers}\n  topics: [${topic}]\n  group_id: g-${name}-${topic}\n  session_timeout_ms: 4000\n  rebalance_timeout_ms: 4000\n  heartbeat_interval_ms: 400\n  max_wait_ms: 100\n  batch_size: 1000\n  batch_timeout_ms: 200\n  dlq: .sluice/dlq\n`,
    'config/sinks.yml': 'sink:\n  type: parquet\n  path: ./output\n',
    'config/models.yml': `max_age_seconds: 0.5\noverrides:\n${NAMES.map((m) => `  ${m}:\n    window:\n      lateness: ${LATENESS}\n`).join('')}`,
    ...MODELS,
  });
  return p;
}

/** A fresh topic, and a table of the state store of its own (dropped if there). */
async function fresh(prefix: string): Promise<{ topic: string; table: string }> {
  const topic = uniqueTopic(prefix);
  await ensureTopic(mk.admin, topic);
  const table = `win_state_${topic.replaceAll(/[^a-z0-9]/gi, '_')}`.toLowerCase().slice(0, 60);
  await pgQuery(`DROP TABLE IF EXISTS ${table}`);
  return { topic, table };
}

/** Events from..to-1 of the clickstream, keyed by user: a user's events stay in one partition, in order of writing. */
function events(from: number, to: number): { key: string; value: string }[] {
  return Array.from({ length: to - from }, (_, i) => {
    const value = clickEvent(from + i);
    return { key: (JSON.parse(value) as { user: string }).user, value };
  });
}

/** One event per user an hour after the rest: every partition's watermark passes every window of the data. */
function closers(): { key: string; value: string }[] {
  return Array.from({ length: 300 }, (_, u) => ({
    key: `u${u}`,
    value: JSON.stringify({ id: 10_000_000 + u, ts: '2030-01-01T00:00:00Z', user: `u${u}`, currency: 'EUR', amount: 1, page: '/p/0' }),
  }));
}

/** Partitions a worker holds now (its last assignment in the log). */
function owned(w: { err: () => string }): string[] | undefined {
  const lines = w
    .err()
    .split('\n')
    .filter((l) => l.includes('Kafka partitions assigned'));
  return lines.length ? (JSON.parse(lines[lines.length - 1]) as { partitions: string[] }).partitions : undefined;
}

/** Waits until the two workers hold two partitions each and no assignment changed for 3 s (the mock cluster may rebalance more than once). */
async function settled(a: { err: () => string }, b: { err: () => string }): Promise<void> {
  const count = () => `${a.err().split('Kafka partitions assigned').length}/${b.err().split('Kafka partitions assigned').length}`;
  let seen = '';
  let since = Date.now();
  await until(
    () => {
      const now = count();
      if (now !== seen) {
        seen = now;
        since = Date.now();
      }
      return owned(a)?.length === 2 && owned(b)?.length === 2 && Date.now() - since > 3000;
    },
    60_000,
    100,
  );
}

function start(p: string, id: string, env: NodeJS.ProcessEnv = {}, port = 0) {
  return sluiceBg(['run', '--project', p, '--port', String(port), '--log-json'], { env: { SLUICE_WORKER_ID: id, ...env } });
}

/** A metric's value on a worker's /metrics (undefined: not there). */
async function metric(port: number, name: string): Promise<number | undefined> {
  const body = (await httpGet(`http://127.0.0.1:${port}/metrics`)).body;
  const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(body);
  return m ? Number(m[1]) : undefined;
}

/** One worker alone, without the store, over the whole topic: the project it ran. */
async function solo(topic: string): Promise<string> {
  const p = project('solo', topic);
  const w = start(p, 'solo');
  try {
    await until(() => groupCaughtUp(mk.admin, `g-solo-${topic}`, topic), 120_000, 200);
  } finally {
    w.kill('SIGTERM');
  }
  expect(await waitExit(w, 60_000), w.err().slice(-3000)).toEqual({ code: 0, signal: null });
  return p;
}

/** Every model's windows in `shared`'s output are exactly those in `alone`'s. */
async function expectSameWindows(shared: string, alone: string): Promise<void> {
  const db = await DuckDBInstance.create(':memory:');
  const conn = await db.connect();
  try {
    for (const m of NAMES) {
      const rel = (p: string) => `(SELECT * FROM read_parquet('${path.join(p, 'output', m)}/**/*.parquet'))`;
      const n = async (q: string) => Number((await conn.runAndReadAll(q)).getRows()[0][0]);
      const total = await n(`SELECT count(*) FROM ${rel(alone)}`);
      expect(total, `${m}: one worker emitted windows`).toBeGreaterThan(100);
      expect({
        model: m,
        workers: await n(`SELECT count(*) FROM ${rel(shared)}`),
        extra: await n(`SELECT count(*) FROM (FROM ${rel(shared)} EXCEPT ALL FROM ${rel(alone)})`),
        missing: await n(`SELECT count(*) FROM (FROM ${rel(alone)} EXCEPT ALL FROM ${rel(shared)})`),
      }).toEqual({ model: m, workers: total, extra: 0, missing: 0 });
    }
  } finally {
    conn.closeSync();
    db.closeSync();
  }
}

/**
 * Runs `fn` holding the PostgreSQL test lock: shared (PostgreSQL must stay up; postgres-outage
 * and the outage test below stop it), or exclusive (the test stops it).
 */
async function holding(take: () => Promise<() => void>, fn: () => Promise<void>): Promise<void> {
  const release = await take();
  try {
    await fn();
  } finally {
    release();
  }
}

// The first three tests (each on a topic, a group, a table and directories of its own) run
// together: most of their time is spent waiting on rebalances and consumer groups catching up.
// The outage test stops PostgreSQL, so it runs after them, alone.
describe('windowed models over several workers', () => {
  it.concurrent(
    'two workers with a shared state store, a rebalance, a SIGKILL and a restart, emit exactly the windows one worker emits',
    () =>
      holding(lockPostgres, async () => {
        const { topic, table } = await fresh('sluice-winw');
        await produce(mk.producer, topic, events(0, 12_000));

        const shared = project('shared', topic, table);
        const group = `g-shared-${topic}`;
        const caughtUp = () => groupCaughtUp(mk.admin, group, topic);
        const workers: ReturnType<typeof start>[] = [];
        const t0 = Date.now();
        try {
          // w1 alone reads the first part and holds all four partitions' state.
          const w1 = start(shared, 'w1');
          workers.push(w1);
          await until(() => owned(w1)?.length === 4, 60_000, 100);
          await until(caughtUp, 120_000, 200);
          // w2 joins: two partitions move to it, with their state from the store. It SIGKILLs
          // itself at its fourth batch, with the batch's state written to the store but neither
          // the store's transaction nor the WAL committed.
          let w2 = start(shared, 'w2', { SLUICE_CRASH_AT: 'before-commit', SLUICE_CRASH_AFTER: '4' });
          workers.push(w2);
          await until(() => owned(w1)?.length === 2 && owned(w2)?.length === 2, 60_000, 100);
          await produce(mk.producer, topic, events(12_000, 24_000));
          const crash = await waitExit(w2, 90_000);
          expect(crash, w2.err().slice(-3000)).toEqual({ code: null, signal: 'SIGKILL' });
          // Its partitions go back to w1, with the state w2 committed before.
          await until(() => owned(w1)?.length === 4, 60_000, 100);
          await produce(mk.producer, topic, events(24_000, 30_000));
          await until(caughtUp, 120_000, 200);
          // w2 comes back (its WAL still holds rows to deliver), and takes two partitions again.
          w2 = start(shared, 'w2');
          workers.push(w2);
          await until(() => owned(w1)?.length === 2 && owned(w2)?.length === 2, 60_000, 100);
          await produce(mk.producer, topic, [...events(30_000, 36_000), ...closers()]);
          await until(caughtUp, 120_000, 200);
        } catch (err) {
          for (const w of workers) console.log(w.err().slice(-4000));
          throw err;
        } finally {
          for (const w of workers) if (w.exitCode === null && w.signalCode === null) w.kill('SIGTERM');
        }
        for (const w of [workers[0], workers[2]]) expect(await waitExit(w, 60_000), w.err().slice(-3000)).toEqual({ code: 0, signal: null });
        const claims = workers.reduce((n, w) => n + (w.err().match(/claimed a partition's window state/g)?.length ?? 0), 0);
        console.log(`windows over two workers: ${claims} partition claims, ${Date.now() - t0} ms`);
        // w1 claimed four; w2 two at each start; w1 took w2's back after the kill.
        expect(claims).toBeGreaterThanOrEqual(10);

        // One worker alone, without the store, over the same topic.
        await expectSameWindows(shared, await solo(topic));
        // The store holds each model's state per partition, written by the workers.
        const stored = await pgQuery<{ model: string; parts: string }>(`SELECT model, count(*) AS parts FROM ${table} GROUP BY model ORDER BY model`);
        expect(stored.map((x) => [x.model, Number(x.parts)])).toEqual(
          NAMES.slice()
            .sort()
            .map((m) => [m, 4]),
        );
      }),
    600_000,
  );
  it.concurrent(
    "a worker holding partitions whose watermarks differ (one taken over from a worker that ran ahead) emits each partition's windows at its own, and the two workers still emit what one does",
    () =>
      holding(lockPostgres, async () => {
        const { topic, table } = await fresh('sluice-winw2');
        // A user's partition: a function of the user alone (every group's events in one partition).
        const partitionOf = (user: string) => Math.floor(Number(user.slice(1)) / 4) % 4;
        const keyed = (list: { key: string; value: string }[]) => list.map((m) => ({ ...m, partition: partitionOf(m.key) }));
        await produce(mk.producer, topic, keyed(events(0, 12_000)));
        const shared = project('shared', topic, table);
        const caughtUp = () => groupCaughtUp(mk.admin, `g-shared-${topic}`, topic);
        const workers: ReturnType<typeof start>[] = [];
        try {
          const port = await freePort();
          const w1 = start(shared, 'w1', {}, port);
          workers.push(w1);
          await until(() => owned(w1)?.length === 4, 60_000, 100);
          await until(caughtUp, 120_000, 200);
          const w2 = start(shared, 'w2');
          workers.push(w2);
          await settled(w1, w2);
          // Ten more minutes, only for w2's partitions: their watermarks run ahead of w1's.
          const ahead = new Set(owned(w2)!.map((p) => Number(p.split(':').pop())));
          await produce(
            mk.producer,
            topic,
            keyed(events(12_000, 24_000)).filter((m) => ahead.has(m.partition)),
          );
          await until(caughtUp, 120_000, 200);
          expect(
            owned(w2)!
              .map((p) => Number(p.split(':').pop()))
              .sort(),
            'no rebalance since',
          ).toEqual([...ahead].sort());
          // w2 stops: w1 takes its partitions, with their later watermarks, beside its own.
          w2.kill('SIGTERM');
          expect(await waitExit(w2, 60_000), w2.err().slice(-3000)).toEqual({ code: 0, signal: null });
          await until(() => owned(w1)?.length === 4, 60_000, 100);
          await produce(mk.producer, topic, keyed([...events(24_000, 30_000), ...closers()]));
          await until(caughtUp, 120_000, 200);
          // w1 holds the four partitions, and claimed each of them at least once (w2's two twice over).
          expect(await until(() => metric(port, 'sluice_window_partitions_held'), 10_000)).toBe(4);
          expect(await metric(port, 'sluice_window_state_claims_total')).toBeGreaterThanOrEqual(6);
        } catch (err) {
          for (const w of workers) console.log(w.err().slice(-4000));
          throw err;
        } finally {
          for (const w of workers) if (w.exitCode === null && w.signalCode === null) w.kill('SIGTERM');
        }
        expect(await waitExit(workers[0], 60_000), workers[0].err().slice(-3000)).toEqual({ code: 0, signal: null });
        await expectSameWindows(shared, await solo(topic));
      }),
    600_000,
  );
  it.concurrent('a dry run with window_state opens no state store: it reads a batch and prints it, with the store unreachable', async () => {
    const topic = uniqueTopic('sluice-winw4');
    await ensureTopic(mk.admin, topic);
    await produce(mk.producer, topic, events(0, 500));
    const p = project('dry', topic);
    // A store on a port nothing listens on: opening it would fail the run.
    fs.writeFileSync(path.join(p, 'sluice.yml'), 'name: dry\nwindow_state:\n  postgres: postgres://postgres@127.0.0.1:1/test\n');
    const r = await sluiceAsync(['run', '--project', p, '--dry-run', '--port', '0'], { timeout: 90_000 });
    expect(r.stderr).not.toContain('window state store');
    expect({ code: r.code, stdout: r.stdout.includes('user_minute') }).toEqual({ code: 0, stdout: true });
  });
  it(
    'the state store (PostgreSQL) stopped for a few seconds mid-run: the worker holds its batch, waits, goes on, and emits what one worker without the store does',
    () =>
      holding(lockPostgresExclusive, async () => {
        const { topic, table } = await fresh('sluice-winw3');
        await produce(mk.producer, topic, events(0, 10_000));
        const shared = project('shared', topic, table);
        const caughtUp = () => groupCaughtUp(mk.admin, `g-shared-${topic}`, topic);
        const w1 = start(shared, 'w1');
        try {
          await until(caughtUp, 120_000, 200);
          // More events, and the store goes away while they are read.
          const more = produce(mk.producer, topic, events(10_000, 20_000));
          await new Promise((r) => setTimeout(r, 300));
          stopPostgres('fast');
          await more;
          await new Promise((r) => setTimeout(r, 5000));
          await startPostgres();
          await until(caughtUp, 120_000, 200);
        } catch (err) {
          console.log(w1.err().slice(-4000));
          throw err;
        } finally {
          await startPostgres();
          if (w1.exitCode === null) w1.kill('SIGTERM');
        }
        expect(await waitExit(w1, 60_000), w1.err().slice(-3000)).toEqual({ code: 0, signal: null });
        // The outage reached the store's path: the worker retried it.
        expect(w1.err()).toMatch(/window state store: .* failed; retrying/);
        // w1 again, with the four partitions' state in its WAL and still its own in the store: it
        // keeps them (written to the store at start, nothing let go, nothing claimed from the store).
        const again = start(shared, 'w1');
        try {
          await until(() => owned(again)?.length === 4, 60_000, 100);
          await produce(mk.producer, topic, closers());
          await until(caughtUp, 120_000, 200);
        } finally {
          again.kill('SIGTERM');
        }
        expect(await waitExit(again, 60_000), again.err().slice(-3000)).toEqual({ code: 0, signal: null });
        expect(again.err()).not.toContain('partitions revoked');
        expect(again.err()).not.toContain("claimed a partition's window state");
        await expectSameWindows(shared, await solo(topic));
      }),
    600_000,
  );
});
