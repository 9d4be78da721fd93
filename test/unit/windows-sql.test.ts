import type { DuckDBConnection } from '@duckdb/node-api';
import { describe, expect, it } from 'vitest';
import { useDuckDB } from '../helpers/duckdb.js';
import type { ConfigIssue } from '../../src/errors.js';
import { analyzeSql, MSG_COL, WINDOW_COLUMNS, type SqlAnalysis } from '../../src/sql/analyze.js';
import { renderModel } from '../../src/sql/template.js';
import { CLOSING, type WindowedQuery } from '../../src/sql/windows.js';

// analyzeSql on windowed models (src/sql/windows.ts): what each accepted form of window gives
// (kind, event time, interval SQL, keys, the columns kept as state, the per-row expressions),
// that the `input` and `emit` SQL it produces run in DuckDB and give the expected rows, and the
// exact reason for each form a windowed model may not take.

const WS = WINDOW_COLUMNS.start;
const WE = WINDOW_COLUMNS.end;

/** Analyses `sql`, which must be an accepted windowed model, and returns its window. */
async function windowed(conn: DuckDBConnection, sql: string): Promise<{ a: SqlAnalysis; w: WindowedQuery }> {
  const a = await analyzeSql(conn, sql);
  expect(a.error).toBeUndefined();
  expect(a.stateful).toEqual([]);
  expect(a.window, `no window for ${sql}`).toBeDefined();
  return { a, w: a.window! };
}

/** Runs `sql` and returns its column names and its rows (as JSON values), sorted. */
async function run(conn: DuckDBConnection, sql: string): Promise<{ columns: string[]; rows: unknown[][] }> {
  const r = await conn.runAndReadAll(`SELECT * FROM (${sql}) ORDER BY ALL`);
  return { columns: r.columnNames(), rows: r.getRowsJson() as unknown[][] };
}

/** The interval an interval SQL expression evaluates to, as DuckDB prints it. */
async function interval(conn: DuckDBConnection, sql: string): Promise<string> {
  const r = await conn.runAndReadAll(`SELECT CAST((${sql}) AS INTERVAL)::VARCHAR`);
  return String(r.getRows()[0][0]);
}

/** Makes CLOSING: the rows of closing windows, with the input's columns and the window's bounds. */
async function closing(conn: DuckDBConnection, columns: string, rows: string[]): Promise<void> {
  await conn.run(`CREATE OR REPLACE TABLE ${CLOSING} (${columns}, ${WS} TIMESTAMP, ${WE} TIMESTAMP)`);
  await conn.run(`INSERT INTO ${CLOSING} VALUES ${rows.join(', ')}`);
}

/** Makes `incoming` as the executor does: the batch's columns and each row's message index. */
async function incoming(conn: DuckDBConnection): Promise<void> {
  await conn.run(`CREATE OR REPLACE TABLE incoming (user_id VARCHAR, ts VARCHAR, amount INTEGER, currency VARCHAR, ${MSG_COL} BIGINT)`);
  await conn.run(`INSERT INTO incoming VALUES
    ('u1', '2026-01-01T00:00:05Z', 10, 'EUR', 0),
    ('u2', '2026-01-01T00:00:12Z', 20, 'USD', 1),
    ('u1', '2026-01-01T00:00:31Z', 30, 'EUR', 2)`);
}

const M0 = '2026-01-01 00:00:00';
const M1 = '2026-01-01 00:01:00';
const M2 = '2026-01-01 00:02:00';

describe('analyzeSql: accepted windowed models', () => {
  const conn = useDuckDB();

  it('TUMBLE with a group key: window, keys, state columns, per-row expressions; emit runs with bounds replaced', async () => {
    const sql = `SELECT user_id,
       TUMBLE_START(ts, INTERVAL '1' MINUTE) AS minute,
       TUMBLE_END(ts, INTERVAL '1' MINUTE),
       count(*) AS n,
       sum(amount) AS total
FROM incoming
GROUP BY user_id, TUMBLE(ts, INTERVAL '1' MINUTE)`;
    const { a, w } = await windowed(conn(), sql);
    expect(w).toMatchObject({
      kind: 'tumble',
      written: "TUMBLE(ts, INTERVAL '1' MINUTE)",
      time: 'ts',
      size: "to_minutes(CAST(trunc(CAST('1' AS DOUBLE)) AS BIGINT))",
      keys: ['user_id'],
      names: ['user_id', 'ts', 'amount'],
      qualifier: 'incoming',
      perRow: ['amount'],
    });
    expect(w.slide).toBeUndefined();
    expect(w.gap).toBeUndefined();
    expect(await interval(conn(), w.size!)).toBe('00:01:00');
    // The unaliased TUMBLE_END is named window_end; the window's own columns are not the user's.
    expect(a.outputColumns).toEqual(['user_id', 'minute', 'window_end', 'n', 'total']);

    await closing(conn(), 'user_id VARCHAR, ts VARCHAR, amount INTEGER', [
      `('u1', '2026-01-01T00:00:05Z', 10, '${M0}', '${M1}')`,
      `('u1', '2026-01-01T00:00:30Z', 5, '${M0}', '${M1}')`,
      `('u2', '2026-01-01T00:00:40Z', 7, '${M0}', '${M1}')`,
      `('u1', '2026-01-01T00:01:10Z', 1, '${M1}', '${M2}')`,
    ]);
    expect(w.emit).not.toMatch(/TUMBLE/i);
    expect(await run(conn(), w.emit)).toEqual({
      columns: ['user_id', 'minute', 'window_end', 'n', 'total', WS, WE],
      rows: [
        ['u1', M0, M1, '2', '15', M0, M1],
        ['u1', M1, M2, '1', '1', M1, M2],
        ['u2', M0, M1, '1', '7', M0, M1],
      ],
    });
  });

  it('HOP: slide and size in that order; unaliased HOP_START / HOP_END are window_start / window_end', async () => {
    const sql = `SELECT HOP_START(ts, INTERVAL '30' SECOND, INTERVAL '1' MINUTE), HOP_END(ts, INTERVAL '30' SECOND, INTERVAL '1' MINUTE), avg(v) AS a
FROM incoming GROUP BY HOP(ts, INTERVAL '30' SECOND, INTERVAL '1' MINUTE)`;
    const { a, w } = await windowed(conn(), sql);
    expect(w).toMatchObject({
      kind: 'hop',
      written: "HOP(ts, INTERVAL '30' SECOND, INTERVAL '1' MINUTE)",
      time: 'ts',
      slide: "to_seconds(CAST('30' AS DOUBLE))",
      size: "to_minutes(CAST(trunc(CAST('1' AS DOUBLE)) AS BIGINT))",
      keys: [],
      names: ['ts', 'v'],
      qualifier: 'incoming',
      perRow: ['v'],
    });
    expect(w.gap).toBeUndefined();
    expect([await interval(conn(), w.slide!), await interval(conn(), w.size!)]).toEqual(['00:00:30', '00:01:00']);
    expect(a.outputColumns).toEqual(['window_start', 'window_end', 'a']);

    // A row is in every window that covers it: the engine gives CLOSING one row per (row, window).
    const H = '2026-01-01 00:00:30';
    const H1 = '2026-01-01 00:01:30';
    await closing(conn(), 'ts VARCHAR, v DOUBLE', [`('2026-01-01T00:00:10Z', 1, '${M0}', '${M1}')`, `('2026-01-01T00:00:40Z', 3, '${M0}', '${M1}')`, `('2026-01-01T00:00:40Z', 3, '${H}', '${H1}')`]);
    expect(await run(conn(), w.emit)).toEqual({
      columns: ['window_start', 'window_end', 'a', WS, WE],
      rows: [
        [M0, M1, 2, M0, M1],
        [H, H1, 3, H, H1],
      ],
    });
  });

  it("SESSION per key: the gap, the key, and a FILTER's condition among the per-row expressions", async () => {
    const sql = `SELECT user_id, SESSION_START(ts, INTERVAL '5' MINUTE) AS s, SESSION_END(ts, INTERVAL '5' MINUTE) AS e,
       count(*) FILTER (WHERE page = 'home') AS home, count(*) AS clicks
FROM incoming GROUP BY user_id, SESSION(ts, INTERVAL '5' MINUTE)`;
    const { a, w } = await windowed(conn(), sql);
    expect(w).toMatchObject({
      kind: 'session',
      written: "SESSION(ts, INTERVAL '5' MINUTE)",
      time: 'ts',
      gap: "to_minutes(CAST(trunc(CAST('5' AS DOUBLE)) AS BIGINT))",
      keys: ['user_id'],
      names: ['user_id', 'ts', 'page'],
      qualifier: 'incoming',
      perRow: ["(page = 'home')"],
    });
    expect(w.size).toBeUndefined();
    expect(w.slide).toBeUndefined();
    expect(await interval(conn(), w.gap!)).toBe('00:05:00');
    expect(a.outputColumns).toEqual(['user_id', 's', 'e', 'home', 'clicks']);

    const S = '2026-01-01 00:00:10';
    const E = '2026-01-01 00:07:00';
    // A session's rows also carry its revision and whether the row retracts it (late: update):
    // the emission groups by them (one value per session) and outputs them last.
    await closing(conn(), `user_id VARCHAR, ts VARCHAR, page VARCHAR, ${WINDOW_COLUMNS.rev} INTEGER, ${WINDOW_COLUMNS.retracted} BOOLEAN`, [
      `('u1', '2026-01-01T00:00:10Z', 'home', 2, false, '${S}', '${E}')`,
      `('u1', '2026-01-01T00:02:00Z', 'cart', 2, false, '${S}', '${E}')`,
      `('u2', '2026-01-01T00:00:10Z', 'cart', 0, true, '${S}', '2026-01-01 00:05:10')`,
    ]);
    expect(await run(conn(), w.emit)).toEqual({
      columns: ['user_id', 's', 'e', 'home', 'clicks', WS, WE, WINDOW_COLUMNS.rev, WINDOW_COLUMNS.retracted],
      rows: [
        ['u1', S, E, '1', '2', S, E, 2, false],
        ['u2', S, '2026-01-01 00:05:10', '0', '1', S, '2026-01-01 00:05:10', 0, true],
      ],
    });
  });

  it("time_bucket(size, time) with a WHERE: a tumbling window; WHERE-only columns are not state; input is the WHERE's rows with every column", async () => {
    const sql = `SELECT time_bucket(INTERVAL '10 seconds', ts::TIMESTAMP) AS bucket, sum(amount) AS total
FROM incoming
WHERE currency = 'EUR'
GROUP BY time_bucket(INTERVAL '10 seconds', ts::TIMESTAMP)`;
    const { a, w } = await windowed(conn(), sql);
    expect(w).toMatchObject({
      kind: 'tumble',
      written: "time_bucket(INTERVAL '10 seconds', ts::TIMESTAMP)",
      time: 'CAST(ts AS TIMESTAMP)',
      size: "CAST('10 seconds' AS INTERVAL)",
      keys: [],
      names: ['ts', 'amount'],
      qualifier: 'incoming',
      perRow: ['amount'],
    });
    expect(w.names).not.toContain('currency');
    expect(await interval(conn(), w.size!)).toBe('00:00:10');
    expect(a.outputColumns).toEqual(['bucket', 'total']);

    await incoming(conn());
    expect(await run(conn(), w.input)).toEqual({
      columns: ['user_id', 'ts', 'amount', 'currency', MSG_COL],
      rows: [
        ['u1', '2026-01-01T00:00:05Z', 10, 'EUR', '0'],
        ['u1', '2026-01-01T00:00:31Z', 30, 'EUR', '2'],
      ],
    });

    const B = '2026-01-01 00:00:30';
    const B1 = '2026-01-01 00:00:40';
    await closing(conn(), 'ts VARCHAR, amount INTEGER', [`('2026-01-01T00:00:31Z', 30, '${B}', '${B1}')`, `('2026-01-01T00:00:39Z', 2, '${B}', '${B1}')`]);
    expect(await run(conn(), w.emit)).toEqual({ columns: ['bucket', 'total', WS, WE], rows: [[B, '32', B, B1]] });
  });

  it('an aliased FROM: the qualifier is the alias, and input and emit read the relation under it', async () => {
    const sql = `SELECT i.user_id, TUMBLE_START(i.ts, INTERVAL '1' MINUTE) AS minute, max(i.amount) AS top
FROM incoming AS i
GROUP BY i.user_id, TUMBLE(i.ts, INTERVAL '1' MINUTE)`;
    const { a, w } = await windowed(conn(), sql);
    expect(w).toMatchObject({
      kind: 'tumble',
      written: "TUMBLE(i.ts, INTERVAL '1' MINUTE)",
      time: 'i.ts',
      size: "to_minutes(CAST(trunc(CAST('1' AS DOUBLE)) AS BIGINT))",
      keys: ['i.user_id'],
      // Every part of each column reference is a name: the qualifier `i` is among them (see the report).
      names: ['i', 'user_id', 'ts', 'amount'],
      qualifier: 'i',
      perRow: ['i.amount'],
    });
    expect(a.outputColumns).toEqual(['user_id', 'minute', 'top']);

    await incoming(conn());
    const input = await run(conn(), w.input);
    expect(input.columns).toEqual(['user_id', 'ts', 'amount', 'currency', MSG_COL]);
    expect(input.rows).toHaveLength(3);

    await closing(conn(), 'user_id VARCHAR, ts VARCHAR, amount INTEGER', [`('u1', '2026-01-01T00:00:05Z', 10, '${M0}', '${M1}')`, `('u1', '2026-01-01T00:00:31Z', 30, '${M0}', '${M1}')`]);
    expect(await run(conn(), w.emit)).toEqual({ columns: ['user_id', 'minute', 'top', WS, WE], rows: [['u1', M0, 30, M0, M1]] });
  });

  it('a CTE over incoming: the CTE is the relation; input carries its columns and the message index', async () => {
    const sql = `WITH eur AS (SELECT ts, user_id, amount / 10 AS tens FROM incoming WHERE currency = 'EUR')
SELECT user_id, TUMBLE_START(ts, INTERVAL '1' HOUR) AS hour, sum(tens) AS tens
FROM eur
GROUP BY user_id, TUMBLE(ts, INTERVAL '1' HOUR)`;
    const { a, w } = await windowed(conn(), sql);
    expect(w).toMatchObject({
      kind: 'tumble',
      written: "TUMBLE(ts, INTERVAL '1' HOUR)",
      time: 'ts',
      size: "to_hours(CAST(trunc(CAST('1' AS DOUBLE)) AS BIGINT))",
      keys: ['user_id'],
      names: ['user_id', 'ts', 'tens'],
      qualifier: 'eur',
      perRow: ['tens'],
    });
    expect(await interval(conn(), w.size!)).toBe('01:00:00');
    expect(a.outputColumns).toEqual(['user_id', 'hour', 'tens']);

    await incoming(conn());
    expect(await run(conn(), w.input)).toEqual({
      columns: ['ts', 'user_id', 'tens', MSG_COL],
      rows: [
        ['2026-01-01T00:00:05Z', 'u1', 1, '0'],
        ['2026-01-01T00:00:31Z', 'u1', 3, '2'],
      ],
    });

    const H1 = '2026-01-01 01:00:00';
    await closing(conn(), 'ts VARCHAR, user_id VARCHAR, tens DOUBLE', [`('2026-01-01T00:00:05Z', 'u1', 1, '${M0}', '${H1}')`, `('2026-01-01T00:00:31Z', 'u1', 3, '${M0}', '${H1}')`]);
    expect(await run(conn(), w.emit)).toEqual({ columns: ['user_id', 'hour', 'tens', WS, WE], rows: [['u1', M0, 4, M0, H1]] });
  });

  it("a {{ ref('x') }} relation: the model's name is the qualifier", async () => {
    const issues: ConfigIssue[] = [];
    const rendered = renderModel(
      "SELECT TUMBLE_START(ts, INTERVAL '1' MINUTE) AS minute, count(*) AS n\nFROM {{ ref('clean') }}\nGROUP BY TUMBLE(ts, INTERVAL '1' MINUTE)\n",
      'models/per_minute.sql',
      issues,
    );
    expect(issues).toEqual([]);
    expect(rendered.sql).toContain('FROM sluice_model."clean"');
    const { a, w } = await windowed(conn(), rendered.sql);
    expect(w).toMatchObject({
      kind: 'tumble',
      written: "TUMBLE(ts, INTERVAL '1' MINUTE)",
      time: 'ts',
      size: "to_minutes(CAST(trunc(CAST('1' AS DOUBLE)) AS BIGINT))",
      keys: [],
      names: ['ts'],
      qualifier: 'clean',
      perRow: [],
    });
    expect(a.outputColumns).toEqual(['minute', 'n']);

    await conn().run('CREATE SCHEMA IF NOT EXISTS sluice_model');
    await conn().run(`CREATE OR REPLACE TABLE sluice_model.clean AS SELECT * FROM (VALUES ('2026-01-01T00:00:05Z', 'a', 4::BIGINT)) t(ts, x, ${MSG_COL})`);
    expect(await run(conn(), w.input)).toEqual({ columns: ['ts', 'x', MSG_COL], rows: [['2026-01-01T00:00:05Z', 'a', '4']] });

    await closing(conn(), 'ts VARCHAR', [`('2026-01-01T00:00:05Z', '${M0}', '${M1}')`, `('2026-01-01T00:00:06Z', '${M0}', '${M1}')`]);
    expect(await run(conn(), w.emit)).toEqual({ columns: ['minute', 'n', WS, WE], rows: [[M0, '2', M0, M1]] });
  });

  it('the _timestamp metadata column as event time', async () => {
    const sql = `SELECT _topic, TUMBLE_START(_timestamp, INTERVAL '1' MINUTE) AS minute, count(*) AS n
FROM incoming GROUP BY _topic, TUMBLE(_timestamp, INTERVAL '1' MINUTE)`;
    const { a, w } = await windowed(conn(), sql);
    expect(w).toMatchObject({
      kind: 'tumble',
      written: "TUMBLE(_timestamp, INTERVAL '1' MINUTE)",
      time: '_timestamp',
      size: "to_minutes(CAST(trunc(CAST('1' AS DOUBLE)) AS BIGINT))",
      keys: ['_topic'],
      names: ['_topic', '_timestamp'],
      qualifier: 'incoming',
      perRow: [],
    });
    expect(a.outputColumns).toEqual(['_topic', 'minute', 'n']);

    await closing(conn(), '_topic VARCHAR, _timestamp TIMESTAMP', [
      `('clicks', '2026-01-01 00:00:01', '${M0}', '${M1}')`,
      `('clicks', '2026-01-01 00:00:02', '${M0}', '${M1}')`,
      `('views', '2026-01-01 00:00:03', '${M0}', '${M1}')`,
    ]);
    expect(await run(conn(), w.emit)).toEqual({
      columns: ['_topic', 'minute', 'n', WS, WE],
      rows: [
        ['clicks', M0, '2', M0, M1],
        ['views', M0, '1', M0, M1],
      ],
    });
  });

  it('written: the call as the SQL text has it (its case, whitespace made single spaces)', async () => {
    const { w } = await windowed(conn(), 'SELECT count(*) AS n FROM incoming GROUP BY tumble(ts,\n    INTERVAL 1 MINUTE)');
    expect(w.written).toBe('tumble(ts, INTERVAL 1 MINUTE)');
  });

  it('names: what the aggregates, their ORDER BY and HAVING read, not what only WHERE reads; perRow: their arguments, FILTER and ORDER BY expressions', async () => {
    const sql = `SELECT currency, count(DISTINCT "user") AS buyers, arg_max(id, amount * 1000 + id) AS top,
       count(*) FILTER (WHERE amount > 90) AS big, list(id ORDER BY page) AS ids
FROM incoming
WHERE bot = false AND region <> 'test'
GROUP BY currency, TUMBLE(ts, INTERVAL '1' MINUTE)
HAVING sum(price) > 0
ORDER BY currency`;
    const { a, w } = await windowed(conn(), sql);
    expect(w.names).toEqual(['currency', 'user', 'id', 'amount', 'page', 'ts', 'price']);
    expect(w.perRow).toEqual(['"user"', 'id', '((amount * 1000) + id)', '(amount > 90)', 'page', 'price']);
    expect(a.outputColumns).toEqual(['currency', 'buyers', 'top', 'big', 'ids']);
  });

  it('outputColumns lists the columns the user wrote, never the window columns emit adds', async () => {
    const { a, w } = await windowed(conn(), "SELECT TUMBLE_START(ts, INTERVAL '1' MINUTE), count(*) AS n FROM incoming GROUP BY TUMBLE(ts, INTERVAL '1' MINUTE)");
    expect(a.outputColumns).toEqual(['window_start', 'n']);
    expect(w.emit).toContain(`${WS} AS ${WS}, ${WE} AS ${WE}`);
    for (const hidden of Object.values(WINDOW_COLUMNS)) expect(a.outputColumns).not.toContain(hidden);
    expect(a.outputColumns).not.toContain(MSG_COL);
    expect(a.rewritten).toBeUndefined();
  });
});

describe('analyzeSql: what a windowed model may not do', () => {
  const conn = useDuckDB();
  const T = "TUMBLE(ts, INTERVAL '1' MINUTE)";

  it.each([
    [
      'a join of two relations',
      `SELECT TUMBLE_START(a.ts, INTERVAL '1' MINUTE) AS m, count(*) AS n FROM incoming AS a JOIN sluice_model."users" AS u ON a.user_id = u.id GROUP BY TUMBLE(a.ts, INTERVAL '1' MINUTE)`,
      'a windowed model reads one relation (incoming, a source or a ref): write the join in a CTE or a stateless model and window over that',
    ],
    [
      'a comma join',
      `SELECT count(*) AS n FROM incoming, sluice_model."users" GROUP BY ${T}`,
      'a windowed model reads one relation (incoming, a source or a ref): write the join in a CTE or a stateless model and window over that',
    ],
    ['GROUPING SETS', `SELECT user_id, count(*) AS n FROM incoming GROUP BY GROUPING SETS ((user_id, ${T}), (${T}))`, 'GROUPING SETS, ROLLUP and CUBE are not supported with windows'],
    ['ROLLUP', `SELECT user_id, count(*) AS n FROM incoming GROUP BY ROLLUP (${T}, user_id)`, 'GROUPING SETS, ROLLUP and CUBE are not supported with windows'],
    ['LIMIT', `SELECT count(*) AS n FROM incoming GROUP BY ${T} LIMIT 10`, 'LIMIT would keep only some of each emission’s rows: not supported in a windowed model'],
    ['SELECT DISTINCT', `SELECT DISTINCT count(*) AS n FROM incoming GROUP BY ${T}`, 'SELECT DISTINCT is not supported in a windowed model'],
    ['QUALIFY', `SELECT user_id, count(*) AS n FROM incoming GROUP BY user_id, ${T} QUALIFY row_number() OVER (ORDER BY count(*) DESC) <= 3`, 'QUALIFY is not supported in a windowed model'],
    [
      'a window function in the select list',
      `SELECT user_id, rank() OVER (ORDER BY count(*) DESC) AS r FROM incoming GROUP BY user_id, ${T}`,
      'window function rank() over a windowed aggregation is not supported',
    ],
    [
      'a subquery in the select list',
      `SELECT (SELECT max(v) FROM incoming) AS top, count(*) AS n FROM incoming GROUP BY ${T}`,
      'a subquery in the select list or HAVING of a windowed model is not supported',
    ],
    ['a subquery in HAVING', `SELECT count(*) AS n FROM incoming GROUP BY ${T} HAVING count(*) > (SELECT 1)`, 'a subquery in the select list or HAVING of a windowed model is not supported'],
    [
      'TUMBLE_START in a HOP model',
      "SELECT TUMBLE_START(ts, INTERVAL '1' MINUTE) AS s, count(*) AS n FROM incoming GROUP BY HOP(ts, INTERVAL '1' MINUTE, INTERVAL '5' MINUTE)",
      "TUMBLE_START does not match the model's window HOP",
    ],
    [
      'SESSION_END in a time_bucket model',
      "SELECT SESSION_END(ts, INTERVAL '1' MINUTE) AS e, count(*) AS n FROM incoming GROUP BY time_bucket(INTERVAL '1 minute', ts)",
      "SESSION_END does not match the model's window TIME_BUCKET",
    ],
    ['two window calls', `SELECT count(*) AS n FROM incoming GROUP BY ${T}, HOP(ts, INTERVAL '1' MINUTE, INTERVAL '5' MINUTE)`, 'a model groups by one window'],
    [
      'time_bucket with three arguments',
      "SELECT count(*) AS n FROM incoming GROUP BY time_bucket(INTERVAL '10 seconds', ts::TIMESTAMP, TIMESTAMP '2026-01-01 00:00:05')",
      'time_bucket(size, time) takes two arguments in a windowed model (no offset or origin)',
    ],
    ['HOP with two arguments', "SELECT count(*) AS n FROM incoming GROUP BY HOP(ts, INTERVAL '5' MINUTE)", 'HOP takes 3 arguments'],
    ['SESSION with three arguments', "SELECT count(*) AS n FROM incoming GROUP BY SESSION(ts, INTERVAL '5' MINUTE, INTERVAL '1' MINUTE)", 'SESSION takes 2 arguments'],
  ])('%s', async (_name, sql, reason) => {
    const a = await analyzeSql(conn(), sql);
    expect(a.error).toBeUndefined();
    expect(a.stateful).toEqual([reason]);
    expect(a.window).toBeUndefined();
    expect(a.rewritten).toBeUndefined();
  });

  it('every problem of a model is listed, once each', async () => {
    const a = await analyzeSql(conn(), `SELECT DISTINCT rank() OVER () AS r, row_number() OVER () AS q FROM incoming GROUP BY ${T} LIMIT 1`);
    expect(a.stateful).toEqual([
      'SELECT DISTINCT is not supported in a windowed model',
      'LIMIT would keep only some of each emission’s rows: not supported in a windowed model',
      'window function rank() over a windowed aggregation is not supported',
      'window function row_number() over a windowed aggregation is not supported',
    ]);
    expect(a.window).toBeUndefined();
  });

  it('a GROUP BY without a window call is a materialised view (engine/views.ts), not a windowed model', async () => {
    const a = await analyzeSql(conn(), 'SELECT user_id, count(*) AS n FROM incoming GROUP BY user_id');
    expect(a.error).toBeUndefined();
    expect(a.stateful).toEqual([]);
    expect(a.window).toBeUndefined();
    expect(a.view?.keys).toEqual(['user_id']);
    expect(a.outputColumns).toEqual(['user_id', 'n']);
  });

  it('a window call only inside a subquery of FROM does not make the model windowed', async () => {
    const a = await analyzeSql(conn(), `SELECT n FROM (SELECT count(*) AS n FROM incoming GROUP BY ${T}) AS t`);
    expect(a.window).toBeUndefined();
    expect(a.stateful).toEqual(['GROUP BY combines rows of different messages', 'aggregate count(*) combines rows of different messages']);
  });
});

// Group keys that name select items: an alias or an ordinal stands for the item's expression.
describe('analyzeSql: group keys that name select items', () => {
  const conn = useDuckDB();

  it('a key written as a select-list alias (GROUP BY u) is either refused or evaluates over the input', async () => {
    const a = await analyzeSql(conn(), "SELECT user_id AS u, count(*) AS n FROM incoming GROUP BY u, TUMBLE(ts, INTERVAL '1' MINUTE)");
    if (!a.window) return;
    await incoming(conn());
    // The engine evaluates each key over the input (engine/windows.ts buffer()): the alias's expression.
    expect(a.window.keys).toEqual(['user_id']);
    await conn().runAndReadAll(`SELECT ${a.window.keys.join(', ')} FROM (${a.window.input}) AS ${a.window.qualifier}`);
  });

  it('a positional key (GROUP BY 1) of a SESSION model is either refused or partitions sessions by that column', async () => {
    const a = await analyzeSql(conn(), "SELECT user_id, count(*) AS n FROM incoming GROUP BY 1, SESSION(ts, INTERVAL '5' MINUTE)");
    if (!a.window) return;
    // Not the constant 1, which would put every user's events in the same sessions.
    expect(a.window.keys).toEqual(['user_id']);
  });
});
