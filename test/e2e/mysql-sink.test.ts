import { describe, expect, it } from 'vitest';
import { sluice, writeFiles } from '../helpers/cli.js';
import { sinkContract, type SinkTarget } from '../helpers/sink-contract.js';
import { myQuery, myRows, succeeded, tableProjects } from '../helpers/sql-db.js';

// The mysql sink against the machine's MariaDB: the sink contract, merge with compare_columns
// read back row by row, effectively-once across a SIGKILL, config errors.

const contractTable = (t: SinkTarget) => `events_${t.id}`;
const contractState = (t: SinkTarget) => `applied_${t.id}`;

sinkContract({
  name: 'mysql',
  idempotent: true,
  config: (t) => ({ type: 'mysql', database: 'test', table: contractTable(t), state_table: contractState(t), auto_migrate: true }),
  async readRows(t) {
    // BOOLEAN is TINYINT(1) in MariaDB: read it back as a boolean, as the model produced it.
    return (await myRows(contractTable(t), 'id')).map((r) => ({ ...r, flag: r.flag === null || r.flag === undefined ? r.flag : Boolean(r.flag) }));
  },
  // The state table refuses every row until fixIt: each flush's transaction fails and rolls back.
  async breakIt(t) {
    await myQuery(`CREATE TABLE ${contractState(t)} (target VARCHAR(255) NOT NULL, model VARCHAR(128) NOT NULL, name VARCHAR(512) CHARACTER SET ascii NOT NULL,
      row_count BIGINT NOT NULL, fingerprint VARCHAR(80) NOT NULL, applied_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), PRIMARY KEY (target, model, name), CONSTRAINT broken CHECK (row_count < 0))`);
  },
  async fixIt(t) {
    await myQuery(`ALTER TABLE ${contractState(t)} DROP CONSTRAINT broken`);
  },
  async cleanup(t) {
    await myQuery(`DROP TABLE IF EXISTS ${contractTable(t)}, ${contractState(t)}`);
  },
});

const { project, input, run } = tableProjects('mysql', (t) => myQuery(`DROP TABLE IF EXISTS ${t}`));

describe('mysql merge', () => {
  it('upserts on the key; the last row of a key in a flush wins; compare_columns gates the other columns', async () => {
    const p = project(
      { strategy: 'merge', key: 'k', compare_columns: ['status'] },
      'SELECT incoming.k::BIGINT AS k, incoming.status::VARCHAR AS status, incoming.note::VARCHAR AS note, incoming.at::TIMESTAMPTZ AS at FROM incoming\n',
    );
    input(p.dir, 'a.ndjson', [
      { k: 1, status: 'new', note: 'a', at: '2024-01-01T10:00:00+02:00' },
      ...Array.from({ length: 120 }, (_, i) => ({ k: i + 2, status: 'new', note: `n${i + 2}`, at: null })),
      { k: 1, status: 'paid', note: 'b', at: null },
      { k: 1, status: 'shipped', note: 'c', at: '2024-03-01T10:00:00Z' },
    ]);
    const r1 = run(p.dir);
    expect(r1.code, r1.stderr).toBe(0);
    let rows = await myRows(p.table, 'k');
    expect(rows.length).toBe(121);
    expect({ ...rows[0], at: String(rows[0].at) }).toMatchObject({ k: '1', status: 'shipped', note: 'c' });
    const [{ at }] = await myQuery<{ at: string }>(`SELECT DATE_FORMAT(at, '%Y-%m-%d %H:%i') AS at FROM ${p.table} WHERE k = 1`);
    expect(at).toBe('2024-03-01 10:00'); // TIMESTAMPTZ lands in UTC
    input(p.dir, 'b.ndjson', [
      { k: 2, status: 'new', note: 'ignored' },
      { k: 3, status: 'paid', note: 'taken' },
      { k: 500, status: 'new', note: 'inserted' },
    ]);
    const r2 = run(p.dir);
    expect(r2.code, r2.stderr).toBe(0);
    rows = await myRows(p.table, 'k');
    expect(rows.length).toBe(122);
    expect(rows.find((r) => r.k === '2')).toMatchObject({ status: 'new', note: 'n2' });
    expect(rows.find((r) => r.k === '3')).toMatchObject({ status: 'paid', note: 'taken' });
    expect(rows.find((r) => r.k === '500')).toMatchObject({ status: 'new', note: 'inserted' });
    const applied = await myQuery<{ row_count: string }>(`SELECT row_count FROM ${p.state} ORDER BY applied_at`);
    expect(applied.map((a) => Number(a.row_count))).toEqual([123, 3]);
  });

  it('append is effectively-once across a SIGKILL after the commit and before the WAL truncate', async () => {
    const p = project({}, 'SELECT incoming.k::BIGINT AS k FROM incoming\n');
    writeFiles(p.dir, { 'config/models.yml': 'max_file_bytes: 1000\nmax_age_seconds: 300\n' });
    input(
      p.dir,
      'a.ndjson',
      Array.from({ length: 300 }, (_, i) => ({ k: i })),
    );
    expect(run(p.dir, { SLUICE_CRASH_AT: 'after-sink-write', SLUICE_CRASH_AFTER: '2' }).code).not.toBe(0);
    expect((await myQuery(`SELECT name FROM ${p.state}`)).length).toBe(2);
    const r = run(p.dir);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/flush already applied to mysql \(a replay\); skipped/);
    const [{ n: count, d }] = await myQuery<{ n: number; d: number }>(`SELECT count(*) AS n, count(DISTINCT k) AS d FROM ${p.table}`);
    expect([Number(count), Number(d)]).toEqual([300, 300]);
  });
});

describe('mysql tables: plan and apply', () => {
  it('plan shows the tables to create and the columns to add; apply makes them; a run then lands its rows', async () => {
    const p = project({ strategy: 'merge', key: 'k' }, 'SELECT incoming.k::BIGINT AS k, incoming.flag::BOOLEAN AS flag FROM incoming\n');
    writeFiles(p.dir, { 'tests/sample.json': JSON.stringify([{ k: 1, flag: true, note: 'x' }]) });
    let plan = sluice(['plan', '--project', p.dir]);
    expect(plan.code, plan.stderr).toBe(0);
    expect(plan.stdout, plan.stderr).toContain(`+ create table ${p.state} (the state table of applied flushes)`);
    expect(plan.stdout, plan.stderr).toContain(`+ create table ${p.table} (k bigint, flag boolean)`);
    succeeded(sluice(['apply', '--project', p.dir, '--auto-approve']));
    const cols = await myQuery<{ name: string; type: string; k: string }>(
      'SELECT COLUMN_NAME AS name, COLUMN_TYPE AS type, COLUMN_KEY AS k FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION',
      [p.table],
    );
    expect(cols.map((c) => [c.name, c.type.replace(/\(\d+\)$/, ''), c.k])).toEqual([
      ['k', 'bigint', 'PRI'],
      ['flag', 'tinyint', ''],
    ]);
    writeFiles(p.dir, { 'models/items.sql': 'SELECT incoming.k::BIGINT AS k, incoming.flag::BOOLEAN AS flag, incoming.note::VARCHAR AS note FROM incoming\n' });
    plan = sluice(['plan', '--project', p.dir]);
    expect(plan.stdout, plan.stderr).toContain(`+ add column ${p.table}.note longtext`);
    succeeded(sluice(['apply', '--project', p.dir, '--auto-approve']));
    expect(succeeded(sluice(['plan', '--project', p.dir])).stdout).toContain('up to date');
    input(p.dir, 'a.ndjson', [
      { k: 1, flag: true, note: 'x' },
      { k: 2, flag: false, note: null },
    ]);
    succeeded(run(p.dir));
    expect((await myRows(p.table, 'k')).map((r) => [r.k, r.flag, r.note])).toEqual([
      ['1', 1, 'x'],
      ['2', 0, null],
    ]);
  });
});

describe('mysql sink config', () => {
  it('errors name the file, the line and the key', () => {
    const p = project({ strategy: 'scd2', database: undefined }, 'SELECT 1 AS k FROM incoming\n');
    const r = sluice(['validate', '--project', p.dir]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/config\/sinks\.yml:1: sink\.strategy:/);
  });
});
