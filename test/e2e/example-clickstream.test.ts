import fs from 'node:fs';
import path from 'node:path';
import { DuckDBInstance, type DuckDBConnection } from '@duckdb/node-api';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type CliResult, jsonLogs, ROOT, sluiceAsync, tempDir } from '../helpers/cli.js';
import { projectDeadLetters } from '../helpers/dlq.js';

// examples/clickstream, run as a user would: validate, then `run` over its file. The file holds
// 3,014 clicks over 30 minutes of event time, up to 10 s out of order (the models' lateness is
// 15 s), and five late events, each far enough behind that it is late whatever the batch
// boundaries (batches of at most 50 lines):
//   1426 (09:11:20) and 2230 (09:19:40): 2-3 minutes behind. revenue_per_minute (late: update,
//     allowed_lateness 2 minutes) re-emits their minute as _revision 1; user_sessions (late:
//     drop) drops them; moving_average takes them into the hopping windows still open.
//   1953 (09:14:30): 4 minutes behind, past revenue_per_minute's allowed_lateness: dead-lettered by it.
//   2457 (09:05:10) and 2763 (09:06:50): ~20 minutes behind, every hopping window of theirs
//     emitted: dead-lettered by moving_average (late: dlq), the first model in the DAG.
// A dead-lettered message leaves the batch, so the models after the one that refused it never see it.

const EXAMPLE = path.join(ROOT, 'examples', 'clickstream');
const UPDATED = [1426, 2230];
const GONE = [1953];
const DLQ = [2457, 2763];
const LATE = [...UPDATED, ...GONE, ...DLQ];

const root = tempDir('sluice-example-clickstream-');
const p = path.join(root, 'clickstream');
let validate: CliResult;
let run: CliResult;
let db: DuckDBInstance;
let conn: DuckDBConnection;

beforeAll(async () => {
  fs.cpSync(EXAMPLE, p, { recursive: true, filter: (src) => !/[\\/](output|\.sluice)$/.test(src) });
  validate = await sluiceAsync(['validate', '--project', p]);
  run = await sluiceAsync(['run', '--project', p, '--port', '0', '--log-json'], { timeout: 60_000 });
  db = await DuckDBInstance.create(':memory:');
  conn = await db.connect();
  await conn.run(
    `CREATE TABLE events AS SELECT * FROM read_json('${path.join(p, 'data', 'clicks.ndjson')}', format = 'newline_delimited',
       columns = {id: 'BIGINT', ts: 'VARCHAR', "user": 'VARCHAR', page: 'VARCHAR', currency: 'VARCHAR', amount: 'BIGINT'})`,
  );
  for (const m of ['revenue_per_minute', 'moving_average', 'user_sessions', 'revenue_eur']) {
    await conn.run(`CREATE TABLE ${m} AS SELECT * FROM read_parquet('${path.join(p, 'output', m)}/*.parquet')`);
  }
}, 90_000);

afterAll(() => {
  conn?.closeSync();
  db?.closeSync();
  fs.rmSync(root, { recursive: true, force: true });
});

async function rows(sql: string): Promise<Record<string, unknown>[]> {
  return (await conn.runAndReadAll(sql)).getRowObjectsJson() as Record<string, unknown>[];
}

async function count(sql: string): Promise<number> {
  return Number((await conn.runAndReadAll(`SELECT count(*) FROM (${sql})`)).getRows()[0][0]);
}

/** Rows of `output` and of `batch`, and the rows only in one of them (EXCEPT ALL both ways). */
async function compare(output: string, batch: string): Promise<{ output: number; batch: number; extra: number; missing: number }> {
  return {
    output: await count(output),
    batch: await count(batch),
    extra: await count(`SELECT * FROM (${output}) EXCEPT ALL SELECT * FROM (${batch})`),
    missing: await count(`SELECT * FROM (${batch}) EXCEPT ALL SELECT * FROM (${output})`),
  };
}

/** revenue_per_minute as one GROUP BY over the events `where` selects. */
const revenueBatch = (where: string) => `
  SELECT time_bucket(INTERVAL 1 MINUTE, ts::TIMESTAMP) AS window_start, time_bucket(INTERVAL 1 MINUTE, ts::TIMESTAMP) + INTERVAL 1 MINUTE AS window_end, currency,
         count(*) FILTER (WHERE amount > 0) AS purchases, sum(amount) AS revenue_cents, count(DISTINCT "user") AS visitors
  FROM events WHERE ${where} GROUP BY ALL`;

describe('examples/clickstream', () => {
  it('validates, and its data holds exactly the five late events (every other event is at most 10 s behind the ones before it)', async () => {
    expect(validate.code, validate.stderr).toBe(0);
    expect(validate.stdout).toContain('4 model(s)');
    const behind = await rows(`
      SELECT id FROM (SELECT id, ts::TIMESTAMP AS t, max(ts::TIMESTAMP) OVER (ORDER BY id ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS head FROM events)
      WHERE t < head - INTERVAL 10 SECOND ORDER BY id`);
    expect(behind.map((r) => Number(r.id))).toEqual([...LATE].sort((a, b) => a - b));
    expect(await count('SELECT * FROM events')).toBe(3014);
  });

  it('counts the late events per model and policy in the `done` line', () => {
    expect(run.code, run.stderr.slice(-2000)).toBe(0);
    const done = jsonLogs(run.stderr).find((l) => l.msg === 'done')!;
    expect(done.messages).toBe(3014);
    expect(done.dead_lettered).toBe(GONE.length + DLQ.length);
    expect(done.late).toEqual({
      moving_average: { drop: 0, dlq: DLQ.length, update: 0 },
      revenue_per_minute: { drop: 0, dlq: GONE.length, update: UPDATED.length },
      user_sessions: { drop: UPDATED.length, dlq: 0, update: 0 },
    });
  });

  it('dead-letters exactly the late events of late: dlq and those past allowed_lateness, with the reason', () => {
    const dead = projectDeadLetters(p).map((d) => ({ id: JSON.parse(d.payload).id, model: d.model, stage: d.stage, error: d.error }));
    expect(dead.map((d) => d.id)).toEqual([...GONE, ...DLQ]);
    for (const d of dead) {
      expect(d.stage).toBe('transform');
      if (GONE.includes(d.id)) {
        expect(d.model).toBe('revenue_per_minute');
        expect(d.error).toMatch(/^late event: its window was emitted when the watermark passed 2026-03-02T09:\d\d:\d\d\.\d{3}Z and its state is gone \(allowed_lateness 2 minutes\); late: update$/);
      } else {
        expect(d.model).toBe('moving_average');
        expect(d.error).toMatch(/^late event: its window was emitted when the watermark passed 2026-03-02T09:\d\d:\d\d\.\d{3}Z; late: dlq$/);
      }
    }
  });

  it("revenue_per_minute's first emissions equal one GROUP BY over the on-time events, and its latest revisions one over every event not dead-lettered", async () => {
    const first = await compare('SELECT * EXCLUDE (_revision) FROM revenue_per_minute WHERE _revision = 0', revenueBatch(`id NOT IN (${LATE.join(', ')})`));
    expect(first).toEqual({ output: 90, batch: 90, extra: 0, missing: 0 });
    const latest = await compare(
      'SELECT * EXCLUDE (_revision) FROM revenue_per_minute QUALIFY _revision = max(_revision) OVER (PARTITION BY window_start, currency)',
      revenueBatch(`id NOT IN (${[...GONE, ...DLQ].join(', ')})`),
    );
    expect(latest).toEqual({ output: 90, batch: 90, extra: 0, missing: 0 });
    // A late update re-emits every group of its window: the three currencies of 09:11 and 09:19.
    const revised = await rows(`SELECT strftime(window_start, '%H:%M') AS minute, currency FROM revenue_per_minute WHERE _revision = 1 ORDER BY ALL`);
    expect(revised).toEqual(['09:11', '09:19'].flatMap((minute) => ['EUR', 'GBP', 'USD'].map((currency) => ({ minute, currency }))));
    expect(await count('SELECT * FROM revenue_per_minute WHERE _revision > 1')).toBe(0);
  });

  it('user_sessions equals the batch sessions over the on-time events; revenue_eur follows every revision of revenue_per_minute', async () => {
    const sessions = await compare(
      'SELECT * FROM user_sessions',
      `WITH o AS (SELECT *, ts::TIMESTAMP AS t FROM events WHERE id NOT IN (${LATE.join(', ')})),
            a AS (SELECT *, CASE WHEN t - lag(t) OVER (PARTITION BY "user" ORDER BY t) < INTERVAL 30 SECOND THEN 0 ELSE 1 END AS fresh FROM o),
            b AS (SELECT *, sum(fresh) OVER (PARTITION BY "user" ORDER BY t ROWS UNBOUNDED PRECEDING) AS sid FROM a)
       SELECT min(t) AS session_start, max(t) + INTERVAL 30 SECOND AS session_end, "user", count(*) AS clicks, arg_min(page, ts) AS landing_page,
              sum(amount) AS spent_cents, bool_or(page = '/checkout') AS converted
       FROM b GROUP BY "user", sid`,
    );
    expect(sessions.extra + sessions.missing).toBe(0);
    expect(sessions.output).toBe(sessions.batch);
    const eur = await compare('SELECT * FROM revenue_eur', `SELECT window_start, purchases, revenue_cents / 100.0 AS revenue_eur, _revision FROM revenue_per_minute WHERE currency = 'EUR'`);
    expect(eur).toEqual({ output: 32, batch: 32, extra: 0, missing: 0 });
  });
});
