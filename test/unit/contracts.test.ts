import { describe, expect, it } from 'vitest';
import { useDuckDB } from '../helpers/duckdb.js';
import { MSG_COL } from '../../src/sql/analyze.js';
import {
  applyContract,
  contractIssues,
  duckSupertype,
  emptyReport,
  mergeSchema,
  planContract,
  resolveContractTypes,
  schemaChanges,
  SchemaTracker,
  type ColumnType,
  type ContractPolicy,
  type ModelContract,
} from '../../src/engine/contracts.js';
import { modelContract } from '../../src/project/contract-config.js';
import type { ConfigIssue } from '../../src/errors.js';

const contract = (
  newColumns: ContractPolicy,
  typeChanges: ContractPolicy,
  columns = [
    { name: 'id', type: 'BIGINT' },
    { name: 'amount', type: 'BIGINT' },
  ],
): ModelContract => ({ columns, newColumns, typeChanges });

/** A model's raw output for the plans: id UBIGINT, amount DOUBLE, coupon VARCHAR, one row per message. */
const RAW = `SELECT * FROM (VALUES (1::UBIGINT, 10.0::DOUBLE, NULL::VARCHAR, 0), (2, 20.0, 'X', 1), (3, 2.5, NULL, 2), (4, 40.0, NULL, 3)) t(id, amount, coupon, ${MSG_COL})`;
const RAW_COLS: ColumnType[] = [
  { name: 'id', type: 'UBIGINT' },
  { name: 'amount', type: 'DOUBLE' },
  { name: 'coupon', type: 'VARCHAR' },
  { name: MSG_COL, type: 'INTEGER' },
];

describe('contract config', () => {
  it('no contract and no typed column: nothing to enforce', () => {
    const issues: ConfigIssue[] = [];
    expect(modelContract('m', { columns: [{ name: 'a' }] }, undefined, issues)).toBeUndefined();
    expect(issues).toEqual([]);
  });

  it("typed columns alone enforce their types with evolve policies (today's behaviour for the rest)", () => {
    const issues: ConfigIssue[] = [];
    expect(modelContract('m', { columns: [{ name: 'a', type: 'INT' }] }, undefined, issues)).toMatchObject({ newColumns: 'evolve', typeChanges: 'evolve', columns: [{ name: 'a', type: 'INT' }] });
    expect(issues).toEqual([]);
  });

  it('freeze without declared columns, type_changes without a typed column, a column declared twice: issues', () => {
    const issues: ConfigIssue[] = [];
    modelContract('m', { contract: { new_columns: 'freeze', type_changes: 'discard_row' } }, undefined, issues);
    modelContract('n', { columns: [{ name: 'a', type: 'INT' }, { name: 'A' }] }, undefined, issues);
    expect(issues.map((i) => `${i.key}: ${i.message}`)).toEqual([
      "overrides.m.contract.new_columns: new_columns: freeze needs the model's columns declared under overrides.m.columns (name, type)",
      'overrides.m.contract.type_changes: type_changes applies to columns with a `type:`; model m declares none',
      'overrides.n.columns.1.name: column "A" is declared twice',
    ]);
  });
});

describe('contract planning (against DuckDB)', () => {
  const db = useDuckDB();

  it('declared types resolve to DuckDB names; an unknown one is an issue', async () => {
    const c = contract('evolve', 'evolve', [
      { name: 'a', type: 'INT' },
      { name: 'b', type: 'text' },
      { name: 'c', type: 'NOPE' },
    ]);
    const issues = await resolveContractTypes(db(), 'm', c);
    expect(c.columns.map((x) => x.type)).toEqual(['INTEGER', 'VARCHAR', 'NOPE']);
    expect(issues.map((i) => `${i.key}: ${i.message.split(' (')[0]}`)).toEqual(['overrides.m.columns.2.type: "NOPE" is not a DuckDB type']);
  });

  it('supertypes: widening numbers, text over scalars, text where a nested and a scalar type meet', async () => {
    const st = duckSupertype(db());
    expect(await st('BIGINT', 'DOUBLE')).toBe('DOUBLE');
    expect(await st('BIGINT', 'VARCHAR')).toBe('VARCHAR');
    expect(await st('"NULL"', 'VARCHAR')).toBe('VARCHAR');
    expect(await st('STRUCT(x INTEGER)', 'VARCHAR')).toBe('VARCHAR');
    expect(await st('STRUCT(x INTEGER)', 'STRUCT(x INTEGER, y VARCHAR)')).toBe('STRUCT(x INTEGER, y VARCHAR)');
  });

  it('no contract and an unchanged schema: a passthrough (the model runs as it is)', async () => {
    const p = await planContract(
      RAW_COLS,
      undefined,
      [
        { name: 'id', type: 'UBIGINT' },
        { name: 'amount', type: 'DOUBLE' },
        { name: 'coupon', type: 'VARCHAR' },
      ],
      duckSupertype(db()),
    );
    expect(p.passthrough).toBe(true);
    expect(p.checks).toEqual([]);
  });

  it('no contract, a type narrower than established: cast to the established type (one schema per flush)', async () => {
    const p = await planContract([{ name: 'n', type: 'BIGINT' }], undefined, [{ name: 'n', type: 'DOUBLE' }], duckSupertype(db()));
    expect(p.passthrough).toBe(false);
    expect(p.columns).toEqual([{ name: 'n', type: 'DOUBLE' }]);
    expect(p.select).toBe(`CAST("n" AS DOUBLE) AS "n", "${MSG_COL}"`);
  });

  async function applied(c: ModelContract, tracker = new SchemaTracker(new Map([['m', c]]), duckSupertype(db()))) {
    const report = emptyReport();
    for (;;) {
      const plan = tracker.cached('m', 'k') ?? (await tracker.plan('m', 'k', RAW_COLS));
      const r = await applyContract(db(), 'm', RAW, plan, { table: 'out_m' }, report);
      if ('evolve' in r) {
        await tracker.evolve('m', r.evolve);
        continue;
      }
      if ('failures' in r) return { failures: r.failures, report, tracker };
      tracker.establish('m', plan.columns);
      const out = await db().runAndReadAll(`SELECT * EXCLUDE (${MSG_COL}) FROM out_m ORDER BY ${MSG_COL}`);
      const types = await db().runAndReadAll(`SELECT column_name, column_type FROM (DESCRIBE out_m) WHERE column_name <> '${MSG_COL}'`);
      return { rows: out.getRowsJS(), columns: types.getRows().map((x) => `${x[0]} ${x[1]}`), report, tracker };
    }
  }

  it('freeze: the rows breaking the contract are refused with the column and the reason; nothing is written', async () => {
    const r = await applied(contract('freeze', 'freeze'));
    expect(r.failures).toEqual([
      { index: 1, column: 'coupon', kind: 'new_column', error: 'contract of model m: column "coupon" (VARCHAR) is not declared in the contract (new_columns: freeze)' },
      { index: 2, column: 'amount', kind: 'type_change', error: 'contract of model m: column "amount" holds 2.5 (DOUBLE), which does not cast to its declared type BIGINT (type_changes: freeze)' },
    ]);
  });

  it('discard_row: those rows are dropped and counted', async () => {
    const r = await applied(contract('discard_row', 'discard_row'));
    expect(r.rows).toEqual([
      [1n, 10n],
      [4n, 40n],
    ]);
    expect(r.columns).toEqual(['id BIGINT', 'amount BIGINT']);
    expect(r.report.violations).toEqual([
      { model: 'm', column: 'amount', kind: 'type_change', policy: 'discard_row', rows: 1 },
      { model: 'm', column: 'coupon', kind: 'new_column', policy: 'discard_row', rows: 1 },
    ]);
  });

  it('discard_value: the value is NULL, the undeclared column left out, every row kept', async () => {
    const r = await applied(contract('discard_value', 'discard_value'));
    expect(r.rows).toEqual([
      [1n, 10n],
      [2n, 20n],
      [3n, null],
      [4n, 40n],
    ]);
    expect(r.columns).toEqual(['id BIGINT', 'amount BIGINT']);
  });

  it('evolve: the type widens, the new column joins; both are schema changes, and the widened type sticks', async () => {
    const r = await applied(contract('evolve', 'evolve'));
    expect(r.columns).toEqual(['id BIGINT', 'amount DOUBLE', 'coupon VARCHAR']);
    expect(r.rows).toEqual([
      [1n, 10, null],
      [2n, 20, 'X'],
      [3n, 2.5, null],
      [4n, 40, null],
    ]);
    expect(r.tracker.drainChanges()).toEqual([
      { model: 'm', column: 'amount', kind: 'type_change', from: 'BIGINT', to: 'DOUBLE' },
      { model: 'm', column: 'coupon', kind: 'new_column', to: 'VARCHAR' },
    ]);
    expect(r.tracker.snapshot().m).toEqual([
      { name: 'id', type: 'BIGINT' },
      { name: 'amount', type: 'DOUBLE' },
      { name: 'coupon', type: 'VARCHAR' },
    ]);
    // A restart with the saved schemas plans the widened type at once and reports nothing new.
    const again = new SchemaTracker(new Map([['m', contract('evolve', 'evolve')]]), duckSupertype(db()));
    again.load(r.tracker.snapshot());
    const plan = await again.plan('m', 'k', RAW_COLS);
    expect(plan.columns).toEqual([
      { name: 'id', type: 'BIGINT' },
      { name: 'amount', type: 'DOUBLE' },
      { name: 'coupon', type: 'VARCHAR' },
    ]);
    again.establish('m', plan.columns);
    expect(again.drainChanges()).toEqual([]);
  });

  it('a declared column the model does not produce is output as NULL of its type and reported', async () => {
    const c = contract('discard_value', 'freeze', [
      { name: 'id', type: 'BIGINT' },
      { name: 'currency', type: 'VARCHAR' },
    ]);
    const report = emptyReport();
    const plan = await planContract(RAW_COLS, c, undefined, duckSupertype(db()));
    await applyContract(db(), 'm', RAW, plan, { table: 'out_m' }, report);
    const out = await db().runAndReadAll(`SELECT * EXCLUDE (${MSG_COL}) FROM out_m ORDER BY id`);
    expect(out.getRowsJS()[0]).toEqual([1n, null]);
    expect(report.missing).toEqual([{ model: 'm', column: 'currency' }]);
  });

  it('castFails flags values that lose precision between numbers, not exact ones', async () => {
    const plan = await planContract([{ name: 'x', type: 'DOUBLE' }], contract('evolve', 'discard_value', [{ name: 'x', type: 'INTEGER' }]), undefined, duckSupertype(db()));
    const r = await db().runAndReadAll(`SELECT ${plan.checks[0].cond.replaceAll('"x"', 'v')} FROM (VALUES (1.0::DOUBLE), (1.5), (NULL), (1e12)) t(v)`);
    expect(r.getRows().map((x) => x[0])).toEqual([false, true, false, true]);
  });
});

describe('schema changes', () => {
  it('nothing established yet: no change; then new columns and retyped ones, each once', () => {
    expect(schemaChanges('m', undefined, [{ name: 'a', type: 'INTEGER' }])).toEqual([]);
    expect(
      schemaChanges(
        'm',
        [{ name: 'a', type: 'INTEGER' }],
        [
          { name: 'A', type: 'BIGINT' },
          { name: 'b', type: 'VARCHAR' },
        ],
      ),
    ).toEqual([
      { model: 'm', column: 'A', kind: 'type_change', from: 'INTEGER', to: 'BIGINT' },
      { model: 'm', column: 'b', kind: 'new_column', to: 'VARCHAR' },
    ]);
  });

  it('a column never leaves the established schema (earlier segments hold it)', () => {
    expect(
      mergeSchema(
        [
          { name: 'a', type: 'INTEGER' },
          { name: 'b', type: 'VARCHAR' },
        ],
        [{ name: 'a', type: 'BIGINT' }],
      ),
    ).toEqual([
      { name: 'a', type: 'BIGINT' },
      { name: 'b', type: 'VARCHAR' },
    ]);
  });
});

describe('validate findings', () => {
  it('map to the lines of the columns and of the contract', () => {
    const c: ModelContract = { ...contract('freeze', 'freeze'), file: 'config/models.yml', line: 9 };
    c.columns = c.columns.map((x, i) => ({ ...x, file: 'config/models.yml', line: 4 + i * 2 }));
    c.columns.push({ name: 'currency', type: 'VARCHAR', file: 'config/models.yml', line: 8 });
    const issues = contractIssues([{ name: 'm', contract: c }], {
      fixtures: ['tests/sample.json'],
      missing: [{ model: 'm', column: 'currency' }],
      failures: [
        {
          model: 'm',
          column: 'amount',
          kind: 'type_change',
          error: 'contract of model m: column "amount" holds 2.5 (DOUBLE), which does not cast to its declared type BIGINT (type_changes: freeze)',
          message: { file: 'tests/sample.json', index: 1 },
        },
        { model: 'm', column: 'amount', kind: 'type_change', error: 'the same again', message: { file: 'tests/sample.json', index: 2 } },
        { model: 'm', error: 'a SQL error', message: { index: 3 } },
      ],
    });
    expect(issues.map((i) => `${i.line} ${i.key}: ${i.message}`)).toEqual([
      '8 overrides.m.columns: model m does not produce declared column "currency" on the fixtures (tests/sample.json)',
      '6 overrides.m.columns.1.type: contract of model m: column "amount" holds 2.5 (DOUBLE), which does not cast to its declared type BIGINT on the fixtures (tests/sample.json), message 1: a type mismatch',
    ]);
  });
});

describe('contracts in the executor', () => {
  const db = useDuckDB();

  it('a message frozen by one model leaves every model; discards of another model are counted once, not per re-run', async () => {
    const { BatchExecutor, compileModels } = await import('../../src/engine/executor.js');
    const def = (name: string, sql: string, contract?: ModelContract) =>
      ({ name, file: `models/${name}.sql`, refs: [], rendered: { sql }, contract }) as unknown as import('../../src/project/project-loader.js').ModelDef;
    const models = await compileModels(db(), [
      def(
        'loose',
        'SELECT * FROM incoming',
        contract('discard_row', 'evolve', [
          { name: 'id', type: 'BIGINT' },
          { name: 'amount', type: 'DOUBLE' },
        ]),
      ),
      def('strict', 'SELECT id, amount FROM incoming', contract('freeze', 'freeze')),
    ]);
    const ex = new BatchExecutor(db(), models, 'default');
    await ex.init();
    const messages = [
      { id: 1, amount: 10 },
      { id: 2, amount: 20, coupon: 'X' },
      { id: 3, amount: 30.5 },
      { id: 4, amount: 40, coupon: 'Y' },
      { id: 5, amount: 50 },
    ];
    const out = await ex.process(messages.map((m, i) => ({ payload: JSON.stringify(m), coords: { index: i } })));
    expect(out.failures.map((f) => [f.index, f.model, f.column, f.kind])).toEqual([[2, 'strict', 'amount', 'type_change']]);
    expect((await ex.readOutput('loose')).rows.map((r) => r.id)).toEqual([1, 5]);
    expect((await ex.readOutput('strict')).rows.map((r) => r.id)).toEqual([1, 2, 4, 5]);
    expect(out.contract.violations).toEqual([
      { model: 'strict', column: 'amount', kind: 'type_change', policy: 'freeze', rows: 1 },
      { model: 'loose', column: 'coupon', kind: 'new_column', policy: 'discard_row', rows: 2 },
    ]);
  });
});
