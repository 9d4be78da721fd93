import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { freePort, httpGet, parquetFiles, query, sluice, sluiceBg, tempDir, until, waitExit, writeFiles } from '../helpers/cli.js';
import { projectDeadLetters } from '../helpers/dlq.js';
import { readWalState } from '../helpers/wal.js';

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

const sources = (batch: number, follow = false) =>
  `source:\n  type: file\n  path: data/*.ndjson\n  batch_size: ${batch}\n  batch_timeout_ms: 50\n${follow ? '  follow: true\n  poll_interval_ms: 50\n' : ''}`;

/** A project whose one model reads every field of `incoming`, fed `messages`. */
function project(models: string, messages: unknown[], opts: { batch?: number; follow?: boolean; sql?: string; files?: Record<string, string> } = {}): string {
  const dir = tempDir('sluice-contracts-');
  dirs.push(dir);
  writeFiles(dir, {
    'config/sources.yml': sources(opts.batch ?? 1, opts.follow),
    'config/sinks.yml': 'sink:\n  type: parquet\n  path: output\n',
    'config/models.yml': models,
    'models/orders.sql': opts.sql ?? 'SELECT * FROM incoming\n',
    'data/in.ndjson': messages.map((m) => JSON.stringify(m)).join('\n') + '\n',
    ...opts.files,
  });
  return dir;
}

function run(dir: string): string {
  const r = sluice(['run', '--project', dir, '--port', '0', '--log-level', 'debug'], { timeout: 90_000 });
  expect(r.code, r.stderr).toBe(0);
  return r.stderr + r.stdout;
}

/** The output of model orders: one flush, so one file; its columns with types, and its rows. */
async function output(dir: string): Promise<{ columns: string[]; rows: Record<string, unknown>[] }> {
  const files = parquetFiles(path.join(dir, 'output/orders'));
  expect(files).toHaveLength(1);
  const f = files[0];
  const cols = await query(`SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM read_parquet('${f}'))`);
  return { columns: cols.map((c) => `${c.column_name} ${c.column_type}`), rows: await query(`SELECT * FROM read_parquet('${f}') ORDER BY id`) };
}

const declared = (contract: string) =>
  `overrides:\n  orders:\n    columns:\n      - name: id\n        type: BIGINT\n      - name: amount\n        type: BIGINT\n        description: in cents\n    contract:\n${contract}`;

const withCoupon = [
  { id: 1, amount: 10 },
  { id: 2, amount: 20, coupon: 'X' },
  { id: 3, amount: 30 },
];

describe('schema contracts: new columns', () => {
  it('freeze: the message with an undeclared column goes to the DLQ, the rest is written with the declared schema', async () => {
    const files = { 'models/downstream.sql': "SELECT id FROM {{ ref('orders') }}\n", 'models/ids.sql': 'SELECT id FROM incoming\n' };
    const dir = project(declared('      new_columns: freeze\n'), withCoupon, { batch: 10, files });
    run(dir);
    // Per-message semantics: the refused message leaves every model of the batch, not only the contracted one.
    for (const m of ['downstream', 'ids']) {
      expect((await query(`SELECT id FROM read_parquet('${dir}/output/${m}/*.parquet') ORDER BY id`)).map((r) => r.id)).toEqual(['1', '3']);
    }
    const out = await output(dir);
    expect(out.columns).toEqual(['id BIGINT', 'amount BIGINT']);
    expect(out.rows).toEqual([
      { id: '1', amount: '10' },
      { id: '3', amount: '30' },
    ]);
    const dl = projectDeadLetters(dir);
    expect(dl).toHaveLength(1);
    expect(JSON.parse(dl[0].payload)).toEqual({ id: 2, amount: 20, coupon: 'X' });
    expect(dl[0].stage).toBe('transform');
    expect(dl[0].model).toBe('orders');
    expect(dl[0].error).toBe('contract of model orders: column "coupon" (VARCHAR) is not declared in the contract (new_columns: freeze)');
  });

  it('discard_row: the row is dropped, nothing goes to the DLQ', async () => {
    const dir = project(declared('      new_columns: discard_row\n'), withCoupon);
    const log = run(dir);
    expect((await output(dir)).rows).toEqual([
      { id: '1', amount: '10' },
      { id: '3', amount: '30' },
    ]);
    expect(projectDeadLetters(dir)).toEqual([]);
    expect(log).toMatch(/1 row\(s\) of orders dropped \(new_column coupon\)/);
  });

  it('discard_value: the row is kept without the undeclared column', async () => {
    const dir = project(declared('      new_columns: discard_value\n'), withCoupon);
    run(dir);
    const out = await output(dir);
    expect(out.columns).toEqual(['id BIGINT', 'amount BIGINT']);
    expect(out.rows).toEqual([
      { id: '1', amount: '10' },
      { id: '2', amount: '20' },
      { id: '3', amount: '30' },
    ]);
    expect(projectDeadLetters(dir)).toEqual([]);
  });

  it('evolve (the default): the column joins the schema; the change is logged; one flush across the change has one schema', async () => {
    const dir = project(declared('      type_changes: freeze\n'), withCoupon);
    const log = run(dir);
    const out = await output(dir);
    expect(out.columns).toEqual(['id BIGINT', 'amount BIGINT', 'coupon VARCHAR']);
    expect(out.rows).toEqual([
      { id: '1', amount: '10', coupon: null },
      { id: '2', amount: '20', coupon: 'X' },
      { id: '3', amount: '30', coupon: null },
    ]);
    expect(log).toMatch(/schema change: model orders gains column coupon VARCHAR/);
    expect(log.match(/schema change/g)).toHaveLength(1);
  });
});

const typed = (contract: string) =>
  `overrides:\n  orders:\n    columns:\n      - name: id\n        type: BIGINT\n      - name: at\n        type: TIMESTAMP\n      - name: qty\n        type: BIGINT\n    contract:\n${contract}`;

const badTypes = [
  { id: 1, at: '2024-01-01 10:00:00', qty: 1 },
  { id: 2, at: 'not a time', qty: 2 },
  { id: 3, at: '2024-01-02 10:00:00', qty: 2.5 },
  { id: 4, at: '2024-01-03 10:00:00', qty: 4 },
];

describe('schema contracts: type changes', () => {
  it('freeze: values that do not cast (or lose precision) send their message to the DLQ, naming column and types', async () => {
    const dir = project(typed('      type_changes: freeze\n'), badTypes);
    run(dir);
    const out = await output(dir);
    expect(out.columns).toEqual(['id BIGINT', 'at TIMESTAMP', 'qty BIGINT']);
    expect(out.rows).toEqual([
      { id: '1', at: '2024-01-01 10:00:00', qty: '1' },
      { id: '4', at: '2024-01-03 10:00:00', qty: '4' },
    ]);
    const dl = projectDeadLetters(dir);
    expect(dl.map((d) => [JSON.parse(d.payload).id, d.stage, d.error])).toEqual([
      [2, 'transform', 'contract of model orders: column "at" holds not a time (VARCHAR), which does not cast to its declared type TIMESTAMP (type_changes: freeze)'],
      [3, 'transform', 'contract of model orders: column "qty" holds 2.5 (DOUBLE), which does not cast to its declared type BIGINT (type_changes: freeze)'],
    ]);
  });

  it('discard_row: such rows are dropped', async () => {
    const dir = project(typed('      type_changes: discard_row\n'), badTypes);
    run(dir);
    expect((await output(dir)).rows.map((r) => r.id)).toEqual(['1', '4']);
    expect(projectDeadLetters(dir)).toEqual([]);
  });

  it('discard_value: the value becomes NULL, the row is kept', async () => {
    const dir = project(typed('      type_changes: discard_value\n'), badTypes);
    run(dir);
    const out = await output(dir);
    expect(out.columns).toEqual(['id BIGINT', 'at TIMESTAMP', 'qty BIGINT']);
    expect(out.rows).toEqual([
      { id: '1', at: '2024-01-01 10:00:00', qty: '1' },
      { id: '2', at: null, qty: '2' },
      { id: '3', at: '2024-01-02 10:00:00', qty: null },
      { id: '4', at: '2024-01-03 10:00:00', qty: '4' },
    ]);
  });

  it('evolve: the column widens and stays widened; the flush spanning the change has one schema', async () => {
    const dir = project(typed('      type_changes: evolve\n'), badTypes);
    const log = run(dir);
    const out = await output(dir);
    expect(out.columns).toEqual(['id BIGINT', 'at VARCHAR', 'qty DOUBLE']);
    expect(out.rows).toEqual([
      { id: '1', at: '2024-01-01 10:00:00', qty: 1 },
      { id: '2', at: 'not a time', qty: 2 },
      { id: '3', at: '2024-01-02 10:00:00', qty: 2.5 },
      { id: '4', at: '2024-01-03 10:00:00', qty: 4 },
    ]);
    expect(log).toMatch(/schema change: model orders column at TIMESTAMP -> VARCHAR/);
    expect(log).toMatch(/schema change: model orders column qty BIGINT -> DOUBLE/);
    // The widened types are kept in the WAL state: a later run writes them again, without a new change.
    const state = readWalState(path.join(dir, '.sluice/wal'));
    expect(state.schemas.orders).toEqual([
      { name: 'id', type: 'BIGINT' },
      { name: 'at', type: 'VARCHAR' },
      { name: 'qty', type: 'DOUBLE' },
    ]);
    fs.rmSync(path.join(dir, 'output'), { recursive: true });
    fs.writeFileSync(path.join(dir, 'data/more.ndjson'), JSON.stringify({ id: 5, at: '2024-01-05 10:00:00', qty: 5 }) + '\n');
    const again = run(dir);
    expect(again).not.toMatch(/schema change/);
    const next = await output(dir);
    expect(next.columns).toEqual(['id BIGINT', 'at VARCHAR', 'qty DOUBLE']);
    expect(next.rows).toEqual([{ id: '5', at: '2024-01-05 10:00:00', qty: 5 }]);
  });
});

describe('crashes', () => {
  it('SIGKILLed around the commit of a batch that widens a type, the next run writes every row once with the widened schema', async () => {
    for (const [point, after] of [
      ['before-commit', '3'],
      ['after-commit', '2'],
    ]) {
      const dir = project(typed('      type_changes: evolve\n'), badTypes);
      const crashed = sluice(['run', '--project', dir, '--port', '0'], { env: { SLUICE_CRASH_AT: point, SLUICE_CRASH_AFTER: after } });
      expect(crashed.code, `${point}: ${crashed.stderr}`).toBe(-1);
      expect(fs.existsSync(path.join(dir, 'output/orders'))).toBe(false);
      run(dir);
      // The WAL of the first run is flushed first (one file), then the rest (another): each file
      // has one schema, the later one the wider.
      const files = parquetFiles(path.join(dir, 'output/orders'));
      expect(files, point).toHaveLength(2);
      const last = await query(`SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM read_parquet('${files[1]}'))`);
      expect(
        last.map((c) => `${c.column_name} ${c.column_type}`),
        point,
      ).toEqual(['id BIGINT', 'at VARCHAR', 'qty DOUBLE']);
      const rows = await query(`SELECT * FROM read_parquet('${dir}/output/orders/*.parquet', union_by_name = true) ORDER BY id`);
      expect(
        rows.map((r) => [r.id, r.at, Number(r.qty)]),
        point,
      ).toEqual([
        ['1', '2024-01-01 10:00:00', 1],
        ['2', 'not a time', 2],
        ['3', '2024-01-02 10:00:00', 2.5],
        ['4', '2024-01-03 10:00:00', 4],
      ]);
    }
  });
});

describe('schema changes without a contract', () => {
  it('a flush spanning new columns and a widened type writes one file with one schema; each change is logged once', async () => {
    const dir = project('max_age_seconds: 3600\n', [{ id: 1 }, { id: 2, extra: 'x' }, { id: 3, n: 1 }, { id: 4, n: 1.5 }]);
    const log = run(dir);
    const out = await output(dir);
    expect(out.columns).toEqual(['id UBIGINT', 'extra VARCHAR', 'n DOUBLE']);
    expect(out.rows).toEqual([
      { id: '1', extra: null, n: null },
      { id: '2', extra: 'x', n: null },
      { id: '3', extra: null, n: 1 },
      { id: '4', extra: null, n: 1.5 },
    ]);
    expect(log).toMatch(/flushed model=orders .*segments=4/);
    expect(log.match(/schema change: [^\n]*?(?= model=)/g)).toEqual([
      'schema change: model orders gains column extra VARCHAR',
      'schema change: model orders gains column n UBIGINT',
      'schema change: model orders column n UBIGINT -> DOUBLE',
    ]);
  });
});

describe('metrics', () => {
  it('sluice_schema_changes_total and sluice_contract_violations_total count per model and kind', async () => {
    const port = await freePort();
    const dir = project(
      declared('      new_columns: discard_row\n      type_changes: evolve\n'),
      [
        { id: 1, amount: 10 },
        { id: 2, amount: 20, coupon: 'X' },
        { id: 3, amount: 30.5 },
        { id: 4, amount: 40, coupon: 'Y' },
      ],
      { follow: true },
    );
    const child = sluiceBg(['run', '--project', dir, '--port', String(port)]);
    try {
      const body = await until(async () => {
        const m = (await httpGet(`http://127.0.0.1:${port}/metrics`).catch(() => ({ body: '' }))).body;
        return /sluice_messages_acked_total\{source="default"\} 4/.test(m) ? m : undefined;
      }, 60_000);
      expect(body).toMatch(/sluice_schema_changes_total\{model="orders",kind="type_change"\} 1/);
      expect(body).toMatch(/sluice_contract_violations_total\{model="orders",kind="new_column",policy="discard_row"\} 2/);
    } finally {
      child.kill('SIGTERM');
      await waitExit(child);
    }
    const out = await output(dir);
    expect(out.columns).toEqual(['id BIGINT', 'amount DOUBLE']);
    expect(out.rows).toEqual([
      { id: '1', amount: 10 },
      { id: '3', amount: 30.5 },
    ]);
  });
});

describe('config and validate', () => {
  const base = {
    'tests/sample.json': JSON.stringify([
      { id: 1, amount: 10, note: 'ok' },
      { id: 2, amount: 'n/a' },
    ]),
  };

  it('an unknown policy names file, key and line', () => {
    const dir = project(declared('      new_columns: freez\n'), [], { files: base });
    const r = sluice(['validate', '--project', dir]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/config\/models\.yml:10.*overrides\.orders\.contract\.new_columns.*evolve.*freeze.*discard_row.*discard_value/);
  });

  it('an unknown type and a freeze without declared columns are errors at their lines', () => {
    const models = 'overrides:\n  orders:\n    columns:\n      - name: id\n        type: NUMBR\n';
    let r = sluice(['validate', '--project', project(models, [])]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/config\/models\.yml:4.*overrides\.orders\.columns\.0\.type.*"NUMBR" is not a DuckDB type/);
    r = sluice(['validate', '--project', project('overrides:\n  orders:\n    contract:\n      new_columns: freeze\n', [])]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/config\/models\.yml:4.*overrides\.orders\.contract\.new_columns.*needs the model's columns declared/);
  });

  it('validate checks contracts against the fixtures: a declared column not produced, a type mismatch, an undeclared column under freeze', () => {
    const models = declared('      new_columns: freeze\n').replace('    contract:', '      - name: currency\n        type: VARCHAR\n    contract:');
    const dir = project(models, [], {
      files: {
        'tests/sample.json': JSON.stringify([
          { id: 1, amount: 10, note: 'ok' },
          { id: 2, amount: 2.5 },
        ]),
      },
    });
    const r = sluice(['validate', '--project', dir]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/config\/models\.yml:9.*model orders does not produce declared column "currency" on the fixtures \(tests\/sample\.json\)/);
    expect(r.stderr).toMatch(
      /config\/models\.yml:6.*overrides\.orders\.columns\.1\.type.*column "amount" holds 2\.5 \(DOUBLE\), which does not cast to its declared type BIGINT on the fixtures.*type mismatch/,
    );
    expect(r.stderr).toMatch(/config\/models\.yml:12.*overrides\.orders\.contract\.new_columns.*column "note" \(VARCHAR\) is not declared in the contract/);
    // Fixed, it validates.
    fs.writeFileSync(path.join(dir, 'tests/sample.json'), JSON.stringify([{ id: 1, amount: 10, currency: 'EUR' }]));
    const ok = sluice(['validate', '--project', dir]);
    expect(ok.stderr).toBe('');
    expect(ok.code).toBe(0);
  });
});
