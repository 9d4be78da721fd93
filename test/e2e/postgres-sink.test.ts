import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sluice, sluiceBg, until, waitExit, writeFiles } from '../helpers/cli.js';
import { sinkContract, type SinkTarget } from '../helpers/sink-contract.js';
import { lockPostgres, pgQuery, pgRows, succeeded, tableProjects } from '../helpers/sql-db.js';

// The postgres sink against the machine's PostgreSQL: the sink contract, merge and scd2 read
// back row by row, effectively-once across SIGKILLs, auto_migrate off (the write waits for
// `sluice apply`), plan / apply with destructive changes gated, and config errors.

let release: () => void = () => {};
beforeAll(async () => {
  release = await lockPostgres();
}, 16 * 60_000);
afterAll(() => release());

const contractTable = (t: SinkTarget) => `events_${t.id}`;
const contractState = (t: SinkTarget) => `applied_${t.id}`;

sinkContract({
  name: 'postgres',
  idempotent: true,
  config: (t) => ({ type: 'postgres', database: 'test', table: contractTable(t), state_table: contractState(t), auto_migrate: true }),
  async readRows(t) {
    return pgRows(contractTable(t), 'id');
  },
  // The state table refuses every row until fixIt: each flush's transaction fails and rolls back.
  async breakIt(t) {
    await pgQuery(`CREATE TABLE ${contractState(t)} (target text NOT NULL, model text NOT NULL, name text NOT NULL, row_count bigint NOT NULL, fingerprint text NOT NULL,
      applied_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (target, model, name), CONSTRAINT broken CHECK (row_count < 0))`);
  },
  async fixIt(t) {
    await pgQuery(`ALTER TABLE ${contractState(t)} DROP CONSTRAINT broken`);
  },
  async cleanup(t) {
    await pgQuery(`DROP TABLE IF EXISTS ${contractTable(t)}, ${contractState(t)}`);
  },
});

const { project, input, run } = tableProjects('postgres', (t) => pgQuery(`DROP TABLE IF EXISTS ${t}`));

const ITEM_SQL = 'SELECT incoming.k::BIGINT AS k, incoming.status::VARCHAR AS status, incoming.note::VARCHAR AS note FROM incoming\n';

describe('postgres merge', () => {
  it('upserts on the key; within a flush the last row of a key wins; compare_columns gates updates', async () => {
    const p = project({ strategy: 'merge', key: 'k', compare_columns: ['status'] }, ITEM_SQL);
    // k=1 three times in one flush (across batches of 50): the last one wins.
    const first = [
      { k: 1, status: 'new', note: 'a' },
      ...Array.from({ length: 120 }, (_, i) => ({ k: i + 2, status: 'new', note: `n${i + 2}` })),
      { k: 1, status: 'paid', note: 'b' },
      { k: 1, status: 'shipped', note: 'c' },
    ];
    input(p.dir, 'a.ndjson', first);
    const r1 = run(p.dir);
    expect(r1.code, r1.stderr).toBe(0);
    let rows = await pgRows(p.table, 'k');
    expect(rows.length).toBe(121);
    expect(rows[0]).toEqual({ k: '1', status: 'shipped', note: 'c' });
    // status unchanged: the row is not rewritten (note keeps its value, xmin stays); status changed: updated.
    const [{ xmin: before }] = await pgQuery<{ xmin: string }>(`SELECT xmin::text FROM ${p.table} WHERE k = 2`);
    input(p.dir, 'b.ndjson', [
      { k: 2, status: 'new', note: 'ignored' },
      { k: 3, status: 'paid', note: 'taken' },
      { k: 500, status: 'new', note: 'inserted' },
    ]);
    const r2 = run(p.dir);
    expect(r2.code, r2.stderr).toBe(0);
    rows = await pgRows(p.table, 'k');
    expect(rows.length).toBe(122);
    expect(rows.find((r) => r.k === '2')).toEqual({ k: '2', status: 'new', note: 'n2' });
    expect(rows.find((r) => r.k === '3')).toEqual({ k: '3', status: 'paid', note: 'taken' });
    expect(rows.find((r) => r.k === '500')).toEqual({ k: '500', status: 'new', note: 'inserted' });
    const [{ xmin: after }] = await pgQuery<{ xmin: string }>(`SELECT xmin::text FROM ${p.table} WHERE k = 2`);
    expect(after).toBe(before);
    const applied = await pgQuery<{ model: string; row_count: string }>(`SELECT model, row_count FROM ${p.state} ORDER BY applied_at`);
    expect(applied.map((a) => [a.model, Number(a.row_count)])).toEqual([
      ['items', 123],
      ['items', 3],
    ]);
  });

  it('effectively-once across SIGKILLs: after the commit and before the WAL truncate, and inside the transaction', async () => {
    const p = project({ strategy: 'merge', key: 'k' }, 'SELECT incoming.k::BIGINT AS k, incoming.v::BIGINT AS v FROM incoming\n');
    const rows = Array.from({ length: 400 }, (_, i) => ({ k: i % 150, v: i }));
    input(p.dir, 'a.ndjson', rows);
    writeFiles(p.dir, { 'config/models.yml': 'max_file_bytes: 1000\nmax_age_seconds: 300\n' });
    // 1: killed right after the first flush committed, before the WAL forgot it.
    const k1 = run(p.dir, { SLUICE_CRASH_AT: 'after-sink-write', SLUICE_CRASH_AFTER: '1' });
    expect(k1.code).not.toBe(0);
    const applied1 = await pgQuery(`SELECT name FROM ${p.state}`);
    expect(applied1.length).toBe(1);
    // 2: killed inside a flush's transaction (rows sent, not committed): nothing of it is visible.
    // Its start replays the WAL's flush that was committed already: skipped, not applied twice.
    const k2 = run(p.dir, { SLUICE_CRASH_AT: 'postgres-before-commit', SLUICE_CRASH_AFTER: '1' });
    expect(k2.code).not.toBe(0);
    expect(k2.stderr).toMatch(/flush already applied to postgres \(a replay\); skipped/);
    expect((await pgQuery(`SELECT name FROM ${p.state}`)).length).toBe(1);
    const r = run(p.dir);
    expect(r.code, r.stderr).toBe(0);
    const got = await pgRows(p.table, 'k');
    const want = new Map<number, number>();
    for (const x of rows) want.set(x.k, x.v);
    expect(got.map((g) => [Number(g.k), Number(g.v)])).toEqual([...want].sort((a, b) => a[0] - b[0]));
    // Every flush recorded once, and the rows they cover add up to the input.
    const applied = await pgQuery<{ name: string; row_count: string }>(`SELECT name, row_count FROM ${p.state}`);
    expect(new Set(applied.map((a) => a.name)).size).toBe(applied.length);
    expect(applied.reduce((s, a) => s + Number(a.row_count), 0)).toBe(rows.length);
  });

  it('a new WAL over the same source positions: other rows are applied, the same rows are skipped', async () => {
    const p = project({}, 'SELECT incoming.k::BIGINT AS k FROM incoming\n');
    input(p.dir, 'a.ndjson', [{ k: 1 }, { k: 2 }, { k: 3 }]);
    succeeded(run(p.dir));
    // The WAL is wiped and the file replaced: the flush has the same name (same positions), other rows.
    fs.rmSync(path.join(p.dir, '.sluice'), { recursive: true, force: true });
    input(p.dir, 'a.ndjson', [{ k: 4 }, { k: 5 }, { k: 6 }]);
    const other = run(p.dir);
    expect(other.code, other.stderr).toBe(0);
    expect(other.stderr).toMatch(/a flush of this name with other rows was applied before/);
    // Wiped again, the same rows: a repeat of what is applied, skipped.
    fs.rmSync(path.join(p.dir, '.sluice'), { recursive: true, force: true });
    const same = run(p.dir);
    expect(same.code, same.stderr).toBe(0);
    expect(same.stderr).toMatch(/flush already applied to postgres \(a replay\); skipped/);
    expect((await pgRows(p.table, 'k')).map((r) => Number(r.k))).toEqual([1, 2, 3, 4, 5, 6]);
  });

  it('a NULL key fails the flush with the reason (the rows stay in the WAL)', async () => {
    const p = project({ strategy: 'merge', key: 'k' }, ITEM_SQL);
    input(p.dir, 'a.ndjson', [
      { k: 1, status: 'a', note: null },
      { k: null, status: 'no key', note: null },
    ]);
    const child = sluiceBg(['run', '--project', p.dir, '--port', '0']);
    try {
      await until(() => /1 row\(s\) of items\/\S+ have a NULL key column \(k\); merge needs a key on every row/.test(child.err()), 60_000);
    } finally {
      child.kill('SIGTERM');
      await waitExit(child, 30_000).catch(() => child.kill('SIGKILL'));
    }
    expect(await pgRows(p.table)).toEqual([]);
  });
});

describe('postgres scd2', () => {
  const SQL = 'SELECT incoming.k::BIGINT AS k, incoming.tier::VARCHAR AS tier, incoming.ts::TIMESTAMPTZ AS ts FROM incoming\n';

  it('keeps versions: a change closes the current row, an unchanged row stays, close_missing closes absent keys', async () => {
    const p = project({ strategy: 'scd2', key: 'k', close_missing: true, compare_columns: ['tier'] }, SQL);
    input(p.dir, 'a.ndjson', [
      { k: 1, tier: 'gold', ts: '2024-01-01T00:00:00Z' },
      { k: 2, tier: 'silver', ts: '2024-01-01T00:00:00Z' },
      { k: 3, tier: 'bronze', ts: '2024-01-01T00:00:00Z' },
    ]);
    succeeded(run(p.dir));
    input(p.dir, 'b.ndjson', [
      { k: 1, tier: 'platinum', ts: '2024-02-01T00:00:00Z' },
      { k: 2, tier: 'silver', ts: '2024-02-01T00:00:00Z' },
    ]);
    succeeded(run(p.dir));
    const rows = await pgQuery<{ k: string; tier: string; is_current: boolean; closed: boolean; row_hash: string }>(
      `SELECT k, tier, is_current, valid_to IS NOT NULL AS closed, row_hash FROM ${p.table} ORDER BY k, valid_from`,
    );
    expect(rows.map((r) => [r.k, r.tier, r.is_current, r.closed])).toEqual([
      ['1', 'gold', false, true],
      ['1', 'platinum', true, false],
      ['2', 'silver', true, false],
      ['3', 'bronze', false, true],
    ]);
    expect(rows.every((r) => /^[0-9a-f]{32}$/.test(r.row_hash))).toBe(true);
    // The closed version ends where the new one starts.
    const [chain] = await pgQuery<{ ok: boolean }>(`SELECT (SELECT valid_to FROM ${p.table} WHERE k = 1 AND NOT is_current) = (SELECT valid_from FROM ${p.table} WHERE k = 1 AND is_current) AS ok`);
    expect(chain.ok).toBe(true);
  });

  it('with valid_from_column, every change in a flush is a version at its event time', async () => {
    const p = project({ strategy: 'scd2', key: 'k', valid_from_column: 'ts' }, SQL);
    input(p.dir, 'a.ndjson', [
      { k: 1, tier: 'a', ts: '2024-01-01T00:00:00Z' },
      { k: 1, tier: 'a', ts: '2024-01-02T00:00:00Z' }, // no change: no version
      { k: 1, tier: 'b', ts: '2024-01-03T00:00:00Z' },
      { k: 2, tier: 'x', ts: '2024-01-05T00:00:00Z' },
      { k: 1, tier: 'c', ts: '2024-01-04T00:00:00Z' },
    ]);
    succeeded(run(p.dir));
    input(p.dir, 'b.ndjson', [{ k: 1, tier: 'd', ts: '2024-01-10T00:00:00Z' }]);
    succeeded(run(p.dir));
    const rows = await pgQuery<Record<string, string | boolean | null>>(
      `SELECT k, tier, to_char(valid_from AT TIME ZONE 'UTC', 'MM-DD') AS vf, to_char(valid_to AT TIME ZONE 'UTC', 'MM-DD') AS vt, is_current FROM ${p.table} ORDER BY k, valid_from`,
    );
    expect(rows.map((r) => [r.k, r.tier, r.vf, r.vt, r.is_current])).toEqual([
      ['1', 'a', '01-01', '01-03', false],
      ['1', 'b', '01-03', '01-04', false],
      ['1', 'c', '01-04', '01-10', false],
      ['1', 'd', '01-10', null, true],
      ['2', 'x', '01-05', null, true],
    ]);
  });
});

describe('postgres tables: auto_migrate, plan and apply', () => {
  const V1 = 'SELECT incoming.k::BIGINT AS k, incoming.status::VARCHAR AS status FROM incoming\n';
  const V2 = 'SELECT incoming.k::BIGINT AS k, incoming.status::VARCHAR AS status, incoming.amount::DOUBLE AS amount FROM incoming\n';
  const fixture = [{ k: 1, status: 'a', amount: 1.5 }];

  it('without auto_migrate a grown model waits for `sluice apply`; plan shows the diff; destructive changes need --allow-destructive', async () => {
    const p = project({ strategy: 'merge', key: 'k', retry: { backoff_ms: 100, max_backoff_ms: 500 }, circuit: { failures: 5, cooldown_ms: 500 } }, V1, fixture);
    // plan before anything exists: the state table and the target table are to be created.
    let plan = sluice(['plan', '--project', p.dir]);
    expect(plan.code, plan.stderr).toBe(0);
    expect(plan.stdout, plan.stderr).toContain(`+ create table public.${p.state}`);
    expect(plan.stdout, plan.stderr).toContain(`+ create table public.${p.table} (k bigint, status text)`);
    // apply on a non-terminal without --auto-approve refuses.
    const refused = sluice(['apply', '--project', p.dir]);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(/--auto-approve/);
    expect(await pgRows(p.table)).toEqual([]);
    const applied = sluice(['apply', '--project', p.dir, '--auto-approve']);
    expect(applied.code, applied.stderr).toBe(0);
    expect(applied.stdout).toContain('2 change(s) applied');
    expect(succeeded(sluice(['plan', '--project', p.dir])).stdout).toContain('up to date');
    input(p.dir, 'a.ndjson', [{ k: 1, status: 'a' }]);
    succeeded(run(p.dir));

    // The model grows: the write fails with the reason until the table is migrated.
    writeFiles(p.dir, { 'models/items.sql': V2 });
    input(p.dir, 'b.ndjson', [{ k: 2, status: 'b', amount: 2.5 }]);
    const child = sluiceBg(['run', '--project', p.dir, '--port', '0']);
    try {
      await until(() => /does not match model items: add column public\.\S+\.amount double precision\. Run `sluice plan` and `sluice apply`/.test(child.err()), 60_000);
      plan = sluice(['plan', '--project', p.dir]);
      expect(plan.stdout, plan.stderr).toContain(`+ add column public.${p.table}.amount double precision`);
      succeeded(sluice(['apply', '--project', p.dir, '--auto-approve']));
      expect(await waitExit(child, 90_000)).toEqual({ code: 0, signal: null });
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
    }
    expect((await pgRows(p.table, 'k')).map((r) => [r.k, r.status, r.amount])).toEqual([
      ['1', 'a', null],
      ['2', 'b', 2.5],
    ]);

    // The model loses a column: dropping it is destructive.
    writeFiles(p.dir, { 'models/items.sql': 'SELECT incoming.k::BIGINT AS k, incoming.amount::DOUBLE AS amount FROM incoming\n' });
    plan = sluice(['plan', '--project', p.dir]);
    expect(plan.stdout, plan.stderr).toMatch(/- drop column public\.\S+\.status \(text\): the model no longer produces it\s+\[destructive\]/);
    const gated = sluice(['apply', '--project', p.dir, '--auto-approve']);
    expect(gated.code).toBe(1);
    expect(gated.stdout).toMatch(/1 destructive change\(s\) skipped/);
    expect(Object.keys((await pgRows(p.table))[0])).toContain('status');
    const dropped = sluice(['apply', '--project', p.dir, '--auto-approve', '--allow-destructive']);
    expect(dropped.code, dropped.stderr).toBe(0);
    expect(Object.keys((await pgRows(p.table))[0]).sort()).toEqual(['amount', 'k']);
  }, 180_000);

  it('rows the table refuses mid-COPY fail the flush without hanging; fixed by hand, the same run delivers them', async () => {
    const p = project({ retry: { backoff_ms: 100, max_backoff_ms: 500 }, circuit: { failures: 5, cooldown_ms: 500 } }, 'SELECT incoming.k::VARCHAR AS k FROM incoming\n');
    await pgQuery(`CREATE TABLE ${p.table} (k bigint)`);
    // The bad row first and many after it: PostgreSQL refuses while DuckDB is still writing the pipe.
    input(p.dir, 'a.ndjson', [{ k: 'not a number' }, ...Array.from({ length: 20_000 }, (_, i) => ({ k: String(i) }))]);
    const child = sluiceBg(['run', '--project', p.dir, '--port', '0']);
    try {
      await until(() => /invalid input syntax for type bigint/.test(child.err()), 60_000);
      expect(await pgRows(p.table)).toEqual([]);
      await pgQuery(`ALTER TABLE ${p.table} ALTER COLUMN k TYPE text`);
      expect(await waitExit(child, 90_000)).toEqual({ code: 0, signal: null });
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
    }
    const [got] = await pgQuery<{ n: string; bad: string }>(`SELECT count(*) AS n, count(*) FILTER (WHERE k = 'not a number') AS bad FROM ${p.table}`);
    expect([Number(got.n), Number(got.bad)]).toEqual([20_001, 1]);
  });

  it('auto_migrate: true adds the new column by itself', async () => {
    const p = project({ auto_migrate: true }, V1);
    input(p.dir, 'a.ndjson', [{ k: 1, status: 'a' }]);
    succeeded(run(p.dir));
    writeFiles(p.dir, { 'models/items.sql': V2 });
    input(p.dir, 'b.ndjson', [{ k: 2, status: 'b', amount: 2.5 }]);
    const r = run(p.dir);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/migrated the postgres table \(auto_migrate\)/);
    expect((await pgRows(p.table, 'k')).map((x) => [x.k, x.status, x.amount])).toEqual([
      ['1', 'a', null],
      ['2', 'b', 2.5],
    ]);
  });
});

describe('postgres sink config', () => {
  it('errors name the file, the line and the key', () => {
    const p = project({ strategy: 'merge', compare_columns: ['k'], close_missing: true }, ITEM_SQL);
    const r = sluice(['validate', '--project', p.dir]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/config\/sinks\.yml:1: sink\.key: strategy merge needs key/);
    expect(r.stderr).toMatch(/sink\.close_missing: close_missing is used by strategy scd2 only/);
    writeFiles(p.dir, { 'config/sinks.yml': 'sink:\n  type: postgres\n  database: test\n  port: x\n  strategy: upsert\n' });
    const r2 = sluice(['validate', '--project', p.dir]);
    expect(r2.code).toBe(2);
    expect(r2.stderr).toMatch(/config\/sinks\.yml:4: sink\.port: expected number/);
    expect(r2.stderr).toMatch(/config\/sinks\.yml:5: sink\.strategy: .*append.*merge.*scd2/);
  });

  it('key columns the model does not produce are reported by validate', () => {
    const p = project({ strategy: 'merge', key: 'nope' }, ITEM_SQL);
    const r = sluice(['validate', '--project', p.dir]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/nope/);
  });
});
