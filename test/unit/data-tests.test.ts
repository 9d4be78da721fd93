import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { DuckDBInstance, type DuckDBConnection } from '@duckdb/node-api';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, formatIssue } from '../../src/errors.js';
import { loadProject } from '../../src/project/project-loader.js';
import { scaffold } from '../../src/cli/init.js';
import { MSG_COL } from '../../src/sql/analyze.js';
import { runTests } from '../../src/engine/data-tests.js';
import { canon, compareRows } from '../../src/engine/unit-tests.js';
import type { DataTest } from '../../src/project/data-test-config.js';

const tmp: string[] = [];
afterEach(() => {
  for (const d of tmp.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

/** The minimal scaffold with config/models.yml (and other files) replaced. */
async function proj(files: Record<string, string>): Promise<string> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-dt-'));
  tmp.push(dir);
  await scaffold(dir, 'dt');
  for (const [rel, content] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(dir, rel)), { recursive: true });
    fs.writeFileSync(path.join(dir, rel), content);
  }
  return dir;
}

function issuesOf(dir: string): string[] {
  try {
    loadProject({ project: dir });
  } catch (e) {
    if (e instanceof ConfigError) return e.issues.map((i) => formatIssue({ ...i, file: path.basename(i.file) }));
    throw e;
  }
  throw new Error('expected a ConfigError');
}

describe('data test config', () => {
  it('normalises column and model tests with default names, on_failure and lines', async () => {
    const dir = await proj({
      'config/models.yml': `references:
  users:
    csv: ref/users.csv
overrides:
  orders:
    columns:
      - name: order_id
        tests: [not_null, unique]
      - name: currency
        tests:
          - accepted_values: { values: [EUR, USD, GBP], on_failure: dlq }
      - name: order_total
        tests:
          - range: { min: 0 }
          - range: { max: 10000, name: not_huge, on_failure: fail }
      - name: user_name
        tests:
          - regex: { pattern: '^[A-Z]' }
      - name: user_id
        tests:
          - relationships: { to: users, field: id }
    tests:
      - expression: item_count >= 0
`,
      'ref/users.csv': 'id\n1\n',
    });
    const p = loadProject({ project: dir });
    const t = p.models.find((m) => m.name === 'orders')!.dataTests;
    expect(t.map((x) => [x.name, x.kind, x.column, x.onFailure, x.line])).toEqual([
      ['not_null_orders_order_id', 'not_null', 'order_id', 'warn', 8],
      ['unique_orders_order_id', 'unique', 'order_id', 'warn', 8],
      ['accepted_values_orders_currency', 'accepted_values', 'currency', 'dlq', 11],
      ['range_orders_order_total', 'range', 'order_total', 'warn', 14],
      ['not_huge', 'range', 'order_total', 'fail', 15],
      ['regex_orders_user_name', 'regex', 'user_name', 'warn', 18],
      ['relationships_orders_user_id', 'relationships', 'user_id', 'warn', 21],
      ['expression_orders_1', 'expression', undefined, 'warn', 23],
    ]);
    expect(t[2].values).toEqual(['EUR', 'USD', 'GBP']);
    expect(p.references).toMatchObject([{ name: 'users', csv: 'ref/users.csv', line: 2 }]);
    expect(p.models.find((m) => m.name === 'purchases')!.dataTests).toEqual([]);
  });

  it('reports every mistake with file, key path and line', async () => {
    const dir = await proj({
      'config/models.yml': `references:
  users:
    postgres: postgres://127.0.0.1/test
overrides:
  orders:
    columns:
      - name: order_id
        tests: [not_nul, accepted_values]
      - name: currency
        tests:
          - accepted_values: { value: [EUR] }
          - range: { on_failure: explode }
          - relationships: { to: nowhere, field: id }
          - { not_null: {}, unique: {} }
    tests:
      - expression: ''
        nmae: x
`,
    });
    expect(issuesOf(dir)).toEqual([
      'models.yml:2: references.users: postgres needs exactly one of table: or query:',
      'models.yml:8: overrides.orders.columns.0.tests.0: unknown test "not_nul" (known: not_null, unique, accepted_values, range, regex, relationships)',
      'models.yml:8: overrides.orders.columns.0.tests.1: accepted_values needs settings: { accepted_values: { ... } }',
      'models.yml:11: overrides.orders.columns.1.tests.0.accepted_values.values: is required (expected array)',
      'models.yml:11: overrides.orders.columns.1.tests.0.accepted_values: unknown key "value" (known keys: values, name, on_failure)',
      'models.yml:12: overrides.orders.columns.1.tests.1.range.on_failure: Invalid option: expected one of "warn"|"dlq"|"fail"',
      'models.yml:14: overrides.orders.columns.1.tests.3: expected a test name (not_null, unique) or a mapping with one test kind (not_null, unique, accepted_values, range, regex, relationships)',
      'models.yml:16: overrides.orders.tests.0.expression: Too small: expected string to have >=1 characters',
      'models.yml:17: overrides.orders.tests.0.nmae: unknown key "nmae" (did you mean "name"?)',
    ]);
  });

  it('a CSV reference that does not exist is reported at its `csv:`', async () => {
    const dir = await proj({ 'config/models.yml': 'references:\n  users:\n    csv: ref/nope.csv\n' });
    expect(issuesOf(dir)).toEqual(['models.yml:3: references.users.csv: ref/nope.csv does not exist (paths are relative to the project directory)']);
  });

  it('a relationships test naming an undeclared reference is reported at its `to:`', async () => {
    const dir = await proj({
      'config/models.yml': `overrides:
  orders:
    columns:
      - name: user_id
        tests:
          - relationships: { to: users, field: id }
`,
    });
    expect(issuesOf(dir)).toEqual(['models.yml:6: overrides.orders.columns.0.tests.0.relationships.to: no reference table named "users" (declare it under references:; declared: none)']);
  });

  it('unit tests in tests/*.yml: unknown keys, models and sources, and repeated names are reported with lines', async () => {
    const dir = await proj({
      'tests/units.yml': `unit_tests:
  - name: one
    messages: [{ order_id: 1 }]
    expect: { orders: [] }
    order: true
`,
    });
    expect(issuesOf(dir)).toEqual(['units.yml:5: unit_tests.0.order: unknown key "order" (did you mean "ordered"?)']);
    fs.writeFileSync(
      path.join(dir, 'tests/units.yml'),
      'unit_tests:\n  - name: one\n    messages: { elsewhere: [{ a: 1 }] }\n    expect: { orders: [] }\n  - name: one\n    messages: []\n    expect: { nothing: [] }\n',
    );
    expect(issuesOf(dir)).toEqual([
      'units.yml:3: unit_tests.0.messages.elsewhere: no source named "elsewhere" (sources: default)',
      'units.yml:5: unit_tests.1.name: unit test "one" is already defined at line 2',
      'units.yml:7: unit_tests.1.expect.nothing: no model named "nothing" (models: orders, purchases)',
    ]);
  });
});

describe('data test queries on DuckDB', () => {
  let db: DuckDBInstance;
  let conn: DuckDBConnection;
  beforeAll(async () => {
    db = await DuckDBInstance.create(':memory:');
    conn = await db.connect();
    await conn.run(`CREATE SCHEMA sluice_ref; CREATE TABLE sluice_ref.users AS SELECT * FROM (VALUES (1), (2)) v(id)`);
    // Message 0 is clean; 1 has two rows; 2 and 3 break things.
    await conn.run(`CREATE TABLE t AS SELECT * FROM (VALUES
      (0, 10, 'EUR', 5.0, 'Ada', 1),
      (1, 11, 'USD', 0.0, 'Alan', 2),
      (1, 12, 'USD', 7.5, 'Ken', 2),
      (2, 12, 'XXX', -1.0, 'ken', 3),
      (3, NULL, NULL, NULL, NULL, NULL)
    ) v(${MSG_COL}, order_id, currency, total, name, user_id)`);
  });
  afterAll(() => {
    conn.closeSync();
    db.closeSync();
  });
  const t = (kind: DataTest['kind'], extra: Partial<DataTest> = {}): DataTest => ({ kind, name: `${kind}_${extra.column ?? ''}`, model: 'm', onFailure: 'dlq', ...extra });

  it('one query: failing row counts, examples without the message column, failing messages (NULL passes except not_null)', async () => {
    const r = await runTests(
      conn,
      [
        t('not_null', { column: 'order_id' }),
        t('unique', { column: 'order_id' }),
        t('accepted_values', { column: 'currency', values: ['EUR', 'USD'] }),
        t('range', { column: 'total', min: 0, max: 7.5 }),
        t('regex', { column: 'name', pattern: '^[A-Z]' }),
        t('relationships', { column: 'user_id', to: 'users', field: 'id' }),
        t('expression', { expression: 'total * 2 >= order_id - 10', onFailure: 'warn' }),
        t('accepted_values', { column: 'order_id', values: [10, 11, 12], name: 'ids' }),
      ],
      't',
    );
    expect(r.map((x) => [x.test.name, x.failing, x.messages])).toEqual([
      ['not_null_order_id', 1, [3]],
      ['unique_order_id', 2, [1, 2]],
      ['accepted_values_currency', 1, [2]],
      ['range_total', 1, [2]],
      ['regex_name', 1, [2]],
      ['relationships_user_id', 1, [2]],
      ['expression_', 2, []],
      ['ids', 0, []],
    ]);
    expect(r[0].examples).toEqual([{ order_id: null, currency: null, total: null, name: null, user_id: null }]);
    expect(r[6].examples.map((e) => e.order_id)).toEqual([11, 12]);
  });

  it('a value of another type fails accepted_values and range instead of breaking the query', async () => {
    await conn.run(`CREATE TABLE mixed AS SELECT * FROM (VALUES (0, '5'), (1, 'abc'), (2, NULL), (3, '500')) v(${MSG_COL}, x)`);
    const r = await runTests(
      conn,
      [t('accepted_values', { column: 'x', values: [5, 500] }), t('range', { column: 'x', min: 0, max: 10 }), t('accepted_values', { column: 'x', values: [true], name: 'b' })],
      'mixed',
    );
    expect(r.map((x) => [x.test.name, x.messages])).toEqual([
      ['accepted_values_x', [1]],
      ['range_x', [1, 3]],
      ['b', [0, 1, 3]],
    ]);
  });

  it('a test whose SQL does not bind is named with its file and line', async () => {
    await expect(runTests(conn, [t('not_null', { column: 'order_id' }), { ...t('expression', { expression: 'no_such_col > 0' }), file: 'config/models.yml', line: 9 }], 't')).rejects.toThrow(
      /^config\/models\.yml:9: data test expression_ of model m: Binder Error: .*no_such_col/,
    );
  });
});

describe('unit test comparison', () => {
  const rows = [
    { a: 1, b: 'x', c: '2024-01-01T00:00:00.000Z' },
    { a: 2, b: 'y', c: '2024-01-02T00:00:00.000Z' },
  ];
  it('compares the given columns as multisets; numbers and instants by value', () => {
    expect(
      compareRows(
        'm',
        ['a', 'b', 'c'],
        rows,
        [
          { a: 2, b: 'y', c: '2024-01-02 00:00:00' },
          { a: '1', c: '2024-01-01T00:00:00Z', b: 'x' },
        ],
        false,
      ),
    ).toEqual([]);
    // The columns compared are those the expected rows give; a key a row leaves out is NULL.
    expect(
      compareRows(
        'm',
        ['a', 'b', 'c'],
        rows,
        [
          { a: 2, b: 'y' },
          { a: 1, b: 'x' },
        ],
        false,
      ),
    ).toEqual([]);
    expect(
      compareRows(
        'm',
        ['a', 'b', 'c'],
        rows,
        [
          { a: 2, b: 'y' },
          { a: 1, c: null },
        ],
        false,
      ),
    ).toHaveLength(5);
    expect(canon({ x: [1, '2'] })).toBe(canon({ x: ['1', 2] }));
  });
  it('prints a diff: missing rows with -, unexpected ones with +; ordered compares position by position', () => {
    expect(compareRows('m', ['a', 'b', 'c'], rows, [{ a: 1 }, { a: 3 }], false)).toEqual(['m: 2 row(s) expected, 2 produced (- expected, + actual):', '  - {"a":3}', '  + {"a":2}']);
    expect(compareRows('m', ['a', 'b', 'c'], rows, [{ a: 2 }, { a: 1 }], true)).toEqual([
      'm: 2 row(s) expected, 2 produced (ordered) (- expected, + actual):',
      '  row 1:',
      '  - {"a":2}',
      '  + {"a":1}',
      '  row 2:',
      '  - {"a":1}',
      '  + {"a":2}',
    ]);
    expect(compareRows('m', ['a', 'b', 'c'], rows, [{ z: 1 }], false)).toEqual(['m: no column "z" (its columns: a, b, c)']);
    expect(compareRows('m', ['a', 'b', 'c'], rows, [], false)).toHaveLength(3);
  });
});
