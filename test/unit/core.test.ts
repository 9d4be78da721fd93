import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { useDuckDB } from '../helpers/duckdb.js';
import { ConfigError } from '../../src/errors.js';
import { interpolateEnv } from '../../src/project/env.js';
import { loadProject } from '../../src/project/project-loader.js';
import { reachable, topoSort } from '../../src/project/dag.js';
import { renderModel } from '../../src/sql/template.js';
import { MSG_COL, analyzeSql } from '../../src/sql/analyze.js';
import { mergeStructure } from '../../src/engine/structure.js';
import { BatchExecutor, compileModels } from '../../src/engine/executor.js';
import { ORDERS_SQL, PURCHASES_SQL, scaffold } from '../../src/cli/init.js';
import { sinks } from '../../src/connectors/registry.js';

const tmp: string[] = [];
afterEach(() => {
  for (const d of tmp.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});
async function proj(files: Record<string, string | null> = {}): Promise<string> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-unit-'));
  tmp.push(dir);
  await scaffold(dir, 'unit');
  for (const [rel, content] of Object.entries(files)) {
    const p = path.join(dir, rel);
    if (content === null) fs.rmSync(p, { force: true });
    else {
      fs.mkdirSync(path.dirname(p), { recursive: true });
      fs.writeFileSync(p, content);
    }
  }
  return dir;
}
function configError(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (e) {
    if (e instanceof ConfigError) return e;
    throw e;
  }
  throw new Error('expected a ConfigError');
}

describe('env interpolation', () => {
  it('replaces ${VAR} and ${VAR:-default}; reports an unset variable with its line', () => {
    const issues: { line?: number; message: string }[] = [];
    const out = interpolateEnv('a: ${A}\nb: ${B:-two}\n# ${IGNORED}\nc: ${C}\n', 'x.yml', { A: 'one' }, issues as never);
    expect(out).toBe('a: one\nb: two\n# ${IGNORED}\nc: \n');
    expect(issues).toEqual([{ file: 'x.yml', line: 4, message: expect.stringContaining('C is not set') }]);
  });
});

describe('project loading', () => {
  it('loads a scaffold: models in DAG order, flush defaults and overrides, the single sink', async () => {
    const dir = await proj({ 'models/big.sql': "SELECT order_id FROM {{ ref('orders') }} WHERE order_total > 10\n" });
    const p = loadProject({ project: dir });
    expect(p.models.map((m) => m.name).sort()).toEqual(['big', 'orders', 'purchases']);
    expect(p.models.findIndex((m) => m.name === 'orders')).toBeLessThan(p.models.findIndex((m) => m.name === 'big'));
    const purchases = p.models.find((m) => m.name === 'purchases')!;
    expect(purchases.maxAgeSeconds).toBe(60);
    expect(purchases.maxFileBytes).toBe(134217728);
    expect(p.models.find((m) => m.name === 'orders')!.maxAgeSeconds).toBe(300);
    expect(p.models.every((m) => m.sinks.join() === 'default' && m.source === 'default')).toBe(true);
    expect(p.walPath).toBe(path.join(dir, '.sluice/wal'));
    expect(p.port).toBe(9400);
  });

  it('interpolates env in every file and honours --config/--models', async () => {
    const dir = await proj({ 'conf/sources.yml': 'source:\n  type: file\n  path: ${DATA:-data}/*.ndjson\n  batch_size: ${BS}\n', 'conf/sinks.yml': 'sink:\n  type: parquet\n  path: ${OUT}\n' });
    const p = loadProject({ project: dir, config: path.join(dir, 'conf'), env: { BS: '7', OUT: '/tmp/x' } });
    expect(p.sources[0].cfg.batch_size).toBe(7);
    expect(p.sources[0].cfg.path).toBe('data/*.ndjson');
    expect(p.sinks[0].cfg.path).toBe('/tmp/x');
  });

  it('reports every problem at once, each with file, key path and line', async () => {
    const dir = await proj({
      'config/sources.yml': 'source:\n  type: file\n  path: data\n  batch_size: ten\n  colour: red\n',
      'config/sinks.yml': 'sink:\n  type: s3_bucket\n',
      'config/models.yml': 'max_age_seconds: 5\noverrides:\n  nope:\n    max_age_seconds: 1\n',
      'sluice.yml': 'name: x\nwall: {}\n',
    });
    const e = configError(() => loadProject({ project: dir }));
    const text = e.message;
    expect(text).toMatch(/sluice\.yml:2: wall: unknown key "wall" \(did you mean "wal"\?\)/);
    expect(text).toMatch(/config\/sources\.yml:4: source\.batch_size: expected number, got string/);
    expect(text).toMatch(/config\/sources\.yml:5: source\.colour: unknown key "colour"/);
    expect(text).toContain(`config/sinks.yml:2: sink.type: unknown sink type "s3_bucket" (one of: ${sinks.map((s) => s.type).join(', ')})`);
    expect(text).toMatch(/config\/models\.yml:3: overrides\.nope: no model named "nope"/);
    expect(e.issues.length).toBe(5);
  });

  it('named sources and sinks: a model must choose among several sinks', async () => {
    const dir = await proj({
      'config/sinks.yml': 'sinks:\n  lake:\n    type: parquet\n    path: ./a\n  archive:\n    type: parquet\n    path: ./b\n',
      'config/models.yml': 'overrides:\n  orders:\n    sink: lake\n',
      'models/purchases.sql': "{{ config(sink='archive') }}\n" + PURCHASES_SQL,
    });
    const p = loadProject({ project: dir });
    expect(p.models.find((m) => m.name === 'orders')!.sinks).toEqual(['lake']);
    expect(p.models.find((m) => m.name === 'purchases')!.sinks).toEqual(['archive']);
    const dir2 = await proj({ 'config/sinks.yml': 'sinks:\n  lake:\n    type: parquet\n    path: ./a\n  archive:\n    type: parquet\n    path: ./b\n' });
    expect(configError(() => loadProject({ project: dir2 })).message).toMatch(/several sinks are configured \(lake, archive\)/);
  });

  it('reports unknown refs, unknown sources and cycles with file and line', async () => {
    const dir = await proj({
      'models/a.sql': "SELECT x FROM {{ ref('b') }}\n",
      'models/b.sql': "-- b\nSELECT x FROM {{ ref('a') }}\n",
      'models/c.sql': "SELECT 1 AS x FROM {{ ref('zzz') }}, {{ source('nope') }}\n",
    });
    const t = configError(() => loadProject({ project: dir })).message;
    expect(t).toMatch(/models\/c\.sql:1: ref\('zzz'\): no model named "zzz"/);
    expect(t).toMatch(/models\/c\.sql:1: source\('nope'\): no source named "nope"/);
    expect(t).toMatch(/models\/a\.sql:1: models form a cycle: a -> b -> a/);
  });

  it('a missing project, config or models directory is a clear error', async () => {
    expect(configError(() => loadProject({ project: '/nonexistent/sluice' })).message).toMatch(/project directory does not exist/);
    const dir = await proj({ 'config/sources.yml': null, 'models/orders.sql': null, 'models/purchases.sql': null });
    const t = configError(() => loadProject({ project: dir })).message;
    expect(t).toMatch(/sources\.yml: missing/);
    expect(t).toMatch(/no models/);
  });
});

describe('templating', () => {
  it('renders source, ref and config and records their lines', () => {
    const issues: never[] = [];
    const r = renderModel("{{ config(sink='lake', tags=['a', 'b'], enabled=true) }}\nSELECT *\nFROM {{ ref('orders') }} o\nJOIN {{ source(\"raw\") }} r USING (id)\n", 'm.sql', issues);
    expect(r.sql).toBe('\nSELECT *\nFROM sluice_model."orders" o\nJOIN sluice_source."raw" r USING (id)\n');
    expect(r.refs).toEqual([{ name: 'orders', line: 3 }]);
    expect(r.sources).toEqual([{ name: 'raw', line: 4 }]);
    expect(r.config).toEqual({ sink: 'lake', tags: ['a', 'b'], enabled: true });
    expect(r.usesIncoming).toBe(false);
    expect(issues).toEqual([]);
  });

  it('reports unknown template expressions', () => {
    const issues: { line?: number; message: string }[] = [];
    renderModel('SELECT 1\n{{ var("x") }}\n{{ ref(orders) }}', 'm.sql', issues as never);
    expect(issues.map((i) => [i.line, i.message.slice(0, 30)])).toEqual([
      [2, 'unknown template expression {{'],
      [3, 'ref(...) takes one quoted name'],
    ]);
  });
});

describe('DAG', () => {
  it('orders dependencies first and reports cycles', () => {
    const r = topoSort([
      { name: 'c', deps: ['b'] },
      { name: 'a', deps: [] },
      { name: 'b', deps: ['a'] },
    ]);
    expect(r.order.map((n) => n.name)).toEqual(['a', 'b', 'c']);
    expect(r.cycles).toEqual([]);
    const cyc = topoSort([
      { name: 'x', deps: ['y'] },
      { name: 'y', deps: ['z'] },
      { name: 'z', deps: ['x'] },
    ]);
    expect(cyc.cycles).toEqual([['x', 'y', 'z', 'x']]);
    expect([...reachable('c', (n) => ({ c: ['b'], b: ['a'], a: [] })[n] ?? [])].sort()).toEqual(['a', 'b']);
  });
});

describe('SQL analysis (DuckDB parse tree)', () => {
  const conn = useDuckDB();

  it.each([
    ['orders', ORDERS_SQL],
    ['purchases', PURCHASES_SQL],
    ['per-message subquery with an aggregate', 'SELECT incoming.id, (SELECT max(x) FROM unnest(incoming.xs) t(x)) AS m FROM incoming'],
    ['CTE over incoming', 'WITH c AS (SELECT incoming.id FROM incoming WHERE incoming.id > 1) SELECT id FROM c'],
    ['join of two refs', 'SELECT a.id, b.v FROM sluice_model."a" a JOIN sluice_model."b" b ON a.id = b.id'],
    ['UNION ALL', 'SELECT incoming.id FROM incoming UNION ALL SELECT incoming.id + 1 FROM incoming'],
  ])('stateless: %s', async (_n, sql) => {
    const a = await analyzeSql(conn(), sql);
    expect(a.error).toBeUndefined();
    expect(a.stateful).toEqual([]);
    expect(a.rewritten).toContain(MSG_COL);
  });

  it.each([
    ['window', 'SELECT row_number() OVER () AS n FROM incoming', /window function row_number\(\)/],
    ['ORDER BY', 'SELECT incoming.c FROM incoming ORDER BY 1', /ORDER BY/],
    ['LIMIT', 'SELECT incoming.c FROM incoming LIMIT 5', /LIMIT/],
    ['UNION', 'SELECT incoming.c FROM incoming UNION SELECT incoming.d FROM incoming', /UNION without ALL/],
    ['subquery over the batch', 'SELECT incoming.c, (SELECT max(i2.v) FROM incoming i2) AS m FROM incoming', /aggregate max\(\)/],
  ])('stateful: %s', async (_n, sql, reason) => {
    const a = await analyzeSql(conn(), sql);
    expect(a.stateful.join('; ')).toMatch(reason);
  });

  it.each([
    ['count(*)', 'SELECT count(*) FROM incoming', []],
    ['sum + GROUP BY', 'SELECT incoming.c, sum(incoming.v) FROM incoming GROUP BY 1', ['incoming.c']],
    ['DISTINCT', 'SELECT DISTINCT incoming.c FROM incoming', ['incoming.c']],
  ])('a materialised view (an aggregate without a window): %s', async (_n, sql, keys) => {
    const a = await analyzeSql(conn(), sql);
    expect(a.stateful).toEqual([]);
    expect(a.view?.keys).toEqual(keys);
  });

  it('reports parse errors with a line, and models that read no batch', async () => {
    const e = await analyzeSql(conn(), 'SELECT a\nFROM incoming\nWHERE AND');
    expect(e.error?.line).toBe(3);
    expect(e.error?.message).toMatch(/syntax error/i);
    expect((await analyzeSql(conn(), 'SELECT 1 AS x')).error?.message).toMatch(/must read from incoming/);
    expect((await analyzeSql(conn(), 'SELECT 1; SELECT 2')).error?.message).toMatch(/exactly one SELECT/);
  });

  it('output columns from the SELECT list (null with *)', async () => {
    expect((await analyzeSql(conn(), PURCHASES_SQL)).outputColumns).toEqual(['order_id', 'sku', 'product_name', 'quantity', 'unit_price', 'line_total', 'user_id', 'placed_at']);
    expect((await analyzeSql(conn(), 'SELECT * FROM incoming')).outputColumns).toBeNull();
  });

  it("the rewrite carries each row's message through fan-out, *, CTEs and joins of the same message only", async () => {
    await conn().run(`CREATE OR REPLACE TABLE incoming AS SELECT * FROM (VALUES (0, 10, [1, 2]), (1, 20, []), (2, 30, [3])) t(${MSG_COL}, id, xs)`);
    await conn().run(`CREATE SCHEMA IF NOT EXISTS sluice_model`);
    const run = async (sql: string) => {
      const a = await analyzeSql(conn(), sql);
      const r = await conn().runAndReadAll(`SELECT * FROM (${a.rewritten}) ORDER BY ALL`);
      return { cols: r.columnNames(), rows: r.getRows().map((row) => row.map((v) => (typeof v === 'string' ? v : Number(v)))) };
    };
    expect(await run('SELECT incoming.id, unnest AS x FROM incoming, unnest(incoming.xs)')).toEqual({
      cols: ['id', 'x', MSG_COL],
      rows: [
        [10, 1, 0],
        [10, 2, 0],
        [30, 3, 2],
      ],
    });
    const star = await run('SELECT * EXCLUDE (xs) FROM incoming');
    expect(star.cols).toEqual(['id', MSG_COL]);
    expect(await run('WITH c AS (SELECT incoming.id * 2 AS d FROM incoming) SELECT d FROM c')).toEqual({
      cols: ['d', MSG_COL],
      rows: [
        [20, 0],
        [40, 1],
        [60, 2],
      ],
    });
    await conn().run(`CREATE OR REPLACE TABLE sluice_model.a AS SELECT * FROM (VALUES (0, 1), (1, 1), (2, 2)) t(${MSG_COL}, k)`);
    await conn().run(`CREATE OR REPLACE TABLE sluice_model.b AS SELECT * FROM (VALUES (0, 1, 'x'), (1, 1, 'y'), (2, 1, 'z')) t(${MSG_COL}, k, v)`);
    // k = 1 matches across messages 0 and 1 too, but only rows of the same message pair up.
    expect((await run('SELECT a.k, b.v FROM sluice_model.a a JOIN sluice_model.b b ON a.k = b.k')).rows).toEqual([
      [1, 'x', 0],
      [1, 'y', 1],
    ]);
  });
});

describe('structure merge', () => {
  it('widens and adopts, and names conflicts by path', () => {
    expect(mergeStructure({ a: 'NULL', xs: ['NULL'] }, { a: 'VARCHAR', xs: [{ q: 'UBIGINT' }] }).merged).toEqual({ a: 'VARCHAR', xs: [{ q: 'UBIGINT' }] });
    expect(mergeStructure({ n: 'UBIGINT' }, { n: 'BIGINT' }).merged).toEqual({ n: 'BIGINT' });
    expect(mergeStructure({ n: 'BIGINT' }, { n: 'DOUBLE' }).merged).toEqual({ n: 'DOUBLE' });
    expect(mergeStructure({ n: 'DOUBLE' }, { n: 'UBIGINT' }).merged).toEqual({ n: 'DOUBLE' });
    expect(mergeStructure({ a: 'VARCHAR' }, { b: 'BOOLEAN' }).merged).toEqual({ a: 'VARCHAR', b: 'BOOLEAN' });
    expect(mergeStructure({ user: { id: 'UBIGINT' } }, { user: 'VARCHAR' }).conflict).toBe('$.user is an object in earlier messages but a string here');
    expect(mergeStructure({ items: [{ q: 'UBIGINT' }] }, { items: [{ q: 'VARCHAR' }] }).conflict).toBe('$.items[].q is a number in earlier messages but a string here');
    expect(mergeStructure({ a: 'VARCHAR' }, { A: 'VARCHAR' }).conflict).toMatch(/differs only in case/);
  });
});

describe('batch executor', () => {
  const conn = useDuckDB();

  const msg = (id: number, items: { sku: string; q: number; p: number }[], extra: Record<string, unknown> = {}) =>
    JSON.stringify({ order_id: id, user: { id: id * 10, name: 'n' }, items: items.map((i) => ({ sku: i.sku, name: i.sku, quantity: i.q, price: i.p })), currency: 'EUR', placed_at: 't', ...extra });

  async function executor(dir: string) {
    const p = loadProject({ project: dir });
    const ex = new BatchExecutor(conn(), await compileModels(conn(), p.models), 'default');
    await ex.init();
    return ex;
  }

  it('a batch gives exactly the rows of its messages run one by one', async () => {
    const dir = await proj();
    const msgs = [
      msg(1, [
        { sku: 'a', q: 2, p: 1.5 },
        { sku: 'b', q: 1, p: 2 },
      ]),
      msg(2, []),
      msg(3, [{ sku: 'c', q: 3, p: 0.5 }]),
    ];
    const ex = await executor(dir);
    const whole = await ex.process(msgs.map((payload, i) => ({ payload, coords: { i } })));
    expect(whole.failures).toEqual([]);
    const batchRows = { orders: (await ex.readOutput('orders')).rows, purchases: (await ex.readOutput('purchases')).rows };
    const alone: Record<string, unknown[]> = { orders: [], purchases: [] };
    for (const m of msgs) {
      const one = await executor(dir);
      one.structure = ex.structure; // the schema the batch established
      await one.process([{ payload: m, coords: {} }]);
      for (const k of ['orders', 'purchases']) alone[k].push(...(await one.readOutput(k)).rows);
    }
    expect(batchRows).toEqual(alone);
    expect(batchRows.purchases).toHaveLength(3);
    expect(batchRows.orders.find((o) => o.order_id === 2)).toMatchObject({ item_count: 0 });
  });

  it('isolates decode failures and a runtime SQL error to their messages', async () => {
    const dir = await proj({ 'models/codes.sql': 'SELECT incoming.order_id, CAST(incoming.code AS INTEGER) AS code FROM incoming\n' });
    const ex = await executor(dir);
    const msgs = [
      msg(1, [], { code: '1' }),
      '{"order_id": 2, ',
      '[1, 2, 3]',
      msg(4, [], { code: 'x' }),
      JSON.stringify({ order_id: 5, user: 'bob', items: [], currency: 'EUR', placed_at: 't', code: '5' }),
      msg(6, [], { code: '6' }),
    ];
    const r = await ex.process(msgs.map((payload, i) => ({ payload, coords: { i } })));
    expect(r.failures.map((f) => [f.index, f.stage, f.model ?? null])).toEqual([
      [1, 'decode', null],
      [2, 'decode', null],
      [3, 'transform', 'codes'],
      [4, 'decode', null],
    ]);
    expect(r.failures[0].error).toMatch(/invalid JSON/);
    expect(r.failures[1].error).toMatch(/JSON array, not an object/);
    expect(r.failures[2].error).toMatch(/Could not convert string 'x' to INT32/);
    expect(r.failures[3].error).toMatch(/\$\.user is an object in earlier messages but a string here/);
    expect((await ex.readOutput('codes')).rows.map((x) => x.order_id)).toEqual([1, 6]);
    // A failed message reaches no model.
    expect((await ex.readOutput('orders')).rows.map((x) => x.order_id)).toEqual([1, 6]);
  });

  it('dead-letters a message only DuckDB finds invalid, and loads payloads holding the batch separator', async () => {
    const dir = await proj();
    const ex = await executor(dir);
    await ex.process([{ payload: msg(1, []), coords: {} }]); // establishes the schema: the next batch takes the fast path
    const msgs = [
      msg(2, []),
      msg(3, []).replace('"n"', '"bad \u0001 control"'), // a raw control character inside a string
      msg(4, []).replace('"n"', '"record \u001e separator"'),
      msg(5, []).replace('"n"', '"bad escape \\x"'),
    ];
    const r = await ex.process(msgs.map((payload, i) => ({ payload, coords: { i } })));
    expect(r.failures.map((f) => [f.index, f.stage])).toEqual([
      [1, 'decode'],
      [2, 'decode'],
      [3, 'decode'],
    ]);
    expect(r.failures[0].error).toMatch(/invalid JSON/);
    expect((await ex.readOutput('orders')).rows.map((x) => x.order_id)).toEqual([2]);
  });

  it('gives models the metadata columns they mention; a message field of the same name wins; SELECT * gets none', async () => {
    const dir = await proj({
      'models/meta.sql':
        "SELECT incoming.order_id, incoming._topic, incoming._key, incoming._partition, incoming._offset, incoming._id, incoming._timestamp, incoming._headers['h'] AS h FROM incoming\n",
      'models/everything.sql': 'SELECT * FROM incoming\n',
    });
    const ex = await executor(dir);
    const r = await ex.process([
      { payload: msg(1, []), coords: {}, meta: { topic: 'orders', key: 'eu.new', offset: 41, id: 'm-1', timestamp: Date.UTC(2026, 0, 2, 3, 4, 5, 678), headers: { h: 'v' } } },
      { payload: msg(2, []), coords: {} },
    ]);
    expect(r.failures).toEqual([]);
    const rows = (await ex.readOutput('meta')).rows;
    expect(rows).toEqual([
      { order_id: 1, _topic: 'orders', _key: 'eu.new', _partition: null, _offset: 41, _id: 'm-1', _timestamp: '2026-01-02T03:04:05.678Z', h: 'v' },
      { order_id: 2, _topic: null, _key: null, _partition: null, _offset: null, _id: null, _timestamp: null, h: null },
    ]);
    expect((await ex.readOutput('everything')).columns.map((c) => c.name)).toEqual(['order_id', 'user', 'items', 'currency', 'placed_at']);

    const own = await executor(dir);
    await own.process([{ payload: msg(3, [], { _key: 'from the message' }), coords: {}, meta: { key: 'from the source' } }]);
    expect((await own.readOutput('meta')).rows[0]._key).toBe('from the message');
  });

  it('keeps the schema stable: a later empty list is an empty list, integers widen', async () => {
    const dir = await proj();
    const ex = await executor(dir);
    await ex.process([{ payload: msg(1, [{ sku: 'a', q: 1, p: 2 }]), coords: {} }]);
    const r = await ex.process([
      { payload: msg(2, []), coords: {} },
      { payload: msg(3, [{ sku: 'b', q: 1, p: 2.5 }]), coords: {} },
    ]);
    expect(r.failures).toEqual([]);
    expect((await ex.readOutput('purchases')).rows.map((x) => x.order_id)).toEqual([3]);
    expect((await ex.readOutput('orders')).columns.find((c) => c.name === 'order_total')?.type).toBe('DOUBLE');
  });
});
