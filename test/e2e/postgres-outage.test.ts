import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, httpGet, sluiceBg, tempDir, until, waitExit, writeFiles } from '../helpers/cli.js';
import { lockPostgresExclusive, pgQuery } from '../helpers/sql-db.js';
import { listening, startPostgres, stopPostgres } from '../helpers/pg-outage.js';

// PostgreSQL goes away for 30 seconds in the middle of a run (the real server, stopped and
// started with pg_ctlcluster). The pipeline keeps reading into its WAL, /readyz turns red, memory
// stays flat, and once the server is back the pipeline catches up by itself: every message's row
// lands exactly once.

const OUTAGE_MS = 30_000;
const RATE = 300;

let release: () => void = () => {};
beforeAll(async () => {
  release = await lockPostgresExclusive();
  await startPostgres();
}, 16 * 60_000);
afterAll(async () => {
  try {
    await startPostgres();
  } finally {
    release();
  }
}, 90_000);

const root = tempDir('sluice-pg-outage-');
const table = `outage_${process.pid}`;
const state = `outage_applied_${process.pid}`;
afterAll(async () => {
  fs.rmSync(root, { recursive: true, force: true });
  await pgQuery(`DROP TABLE IF EXISTS ${table}, ${state}`).catch(() => {});
});

function rssBytes(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

describe('postgres outage', () => {
  it(`PostgreSQL stopped for ${OUTAGE_MS / 1000} s mid-run: bounded memory, /readyz red then green, nothing lost or duplicated, recovery by itself`, async () => {
    const dir = path.join(root, 'proj');
    writeFiles(dir, {
      'config/sources.yml': `source:\n  type: generator\n  count: 0\n  rate: ${RATE}\n  batch_size: 100\n  batch_timeout_ms: 200\n`,
      // retry, circuit: the engine's per-sink policy (a quick backoff, a short cooldown), so recovery shows within seconds.
      'config/sinks.yml': `sink:\n  type: postgres\n  database: test\n  table: ${table}\n  state_table: ${state}\n  strategy: append\n  connect_timeout_ms: 2000\n  retry: { backoff_ms: 200, max_backoff_ms: 2000 }\n  circuit: { failures: 5, cooldown_ms: 2000 }\n`,
      'config/models.yml': 'max_age_seconds: 1\n',
      'models/orders.sql': 'SELECT incoming.order_id::BIGINT AS order_id, incoming.user.id AS user_id, incoming.currency FROM incoming\n',
    });
    const port = await freePort();
    const child = sluiceBg(['run', '--project', dir, '--port', String(port)]);
    const rss: { t: number; phase: string; bytes: number }[] = [];
    let phase = 'before';
    const sampler = setInterval(() => rss.push({ t: Date.now(), phase, bytes: rssBytes(child.pid!) }), 250);
    const ready = async () => (await httpGet(`http://127.0.0.1:${port}/readyz`).catch(() => ({ status: 0, body: '' }))).status;
    const rowsInPg = async () => Number((await pgQuery<{ n: string }>(`SELECT count(*) AS n FROM ${table}`))[0].n);
    let stopped = false;
    try {
      // Running and delivering before the outage.
      await until(async () => (await ready()) === 200 && (await pgQuery(`SELECT to_regclass('${table}') IS NOT NULL AS e`))[0].e && (await rowsInPg()) > 0, 60_000, 200);
      await new Promise((r) => setTimeout(r, 5000));
      const beforeOutage = await rowsInPg();

      phase = 'outage';
      stopPostgres();
      stopped = true;
      const outageStart = Date.now();
      const red = await until(async () => ((await ready()) === 503 ? true : undefined), 20_000, 200);
      expect(red).toBe(true);
      const body = (await httpGet(`http://127.0.0.1:${port}/readyz`)).body;
      expect(body).toMatch(/sink|flush/);
      // Still reading while the sink is down: the generator's messages keep coming into the WAL.
      await new Promise((r) => setTimeout(r, Math.max(0, OUTAGE_MS - (Date.now() - outageStart))));
      expect(child.exitCode, child.err().slice(-2000)).toBeNull();

      // Nobody started it meanwhile (test setups leave it alone while the outage marker is live).
      expect(await listening(5432)).toBe(false);
      phase = 'after';
      await startPostgres();
      stopped = false;
      // Recovers by itself: /readyz green again and the backlog written.
      await until(async () => ((await ready()) === 200 ? true : undefined), 90_000, 250);
      // The backlog read during the outage follows (possibly over several flushes) without help.
      const backlog = beforeOutage + RATE * (OUTAGE_MS / 1000) * 0.5;
      await until(async () => ((await rowsInPg()) > backlog ? true : undefined), 90_000, 250);
      await new Promise((r) => setTimeout(r, 3000));
    } finally {
      clearInterval(sampler);
      if (stopped) await startPostgres();
      if (child.exitCode === null) child.kill('SIGTERM');
    }
    const exit = await waitExit(child, 90_000);
    expect(exit, child.err().slice(-3000)).toEqual({ code: 0, signal: null });

    // Nothing lost, nothing twice: the run read messages 1..N; the table holds each once.
    const done = /done messages=(\d+)/.exec(child.err());
    expect(done, child.err().slice(-2000)).not.toBeNull();
    const n = Number(done![1]);
    const [got] = await pgQuery<{ rows: string; keys: string; lo: string; hi: string }>(
      `SELECT count(*) AS rows, count(DISTINCT order_id) AS keys, min(order_id) AS lo, max(order_id) AS hi FROM ${table}`,
    );
    expect({ rows: Number(got.rows), keys: Number(got.keys), lo: Number(got.lo), hi: Number(got.hi) }).toEqual({ rows: n, keys: n, lo: 1, hi: n });
    expect(n).toBeGreaterThan(RATE * (OUTAGE_MS / 1000));

    // Memory: the peak during the outage and after stays near the peak before it.
    const peak = (p: string) => Math.max(...rss.filter((s) => s.phase === p).map((s) => s.bytes));
    const before = peak('before');
    const during = Math.max(peak('outage'), peak('after'));
    console.log(
      `postgres outage: RSS peak before ${(before / 2 ** 20).toFixed(0)} MiB, during ${(peak('outage') / 2 ** 20).toFixed(0)} MiB, after ${(peak('after') / 2 ** 20).toFixed(0)} MiB; ${n} messages`,
    );
    expect(before).toBeGreaterThan(0);
    expect(during).toBeLessThan(before + 150 * 2 ** 20);
  }, 240_000);
});
