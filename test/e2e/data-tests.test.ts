import fs from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { freePort, httpGet, parquetFiles, query, sluiceBg, tempDir, until, waitExit, writeFiles } from '../helpers/cli.js';
import { projectDeadLetters } from '../helpers/dlq.js';

const dirs: string[] = [];
// Tests run concurrently: temp projects go when the whole file is done.
afterAll(() => {
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

interface Order {
  order_id: number;
  status: string;
  total: number;
  customer_id: number;
}

/** Order i: customers 1..4 exist in the reference CSV; statuses placed/paid. */
function order(i: number, over: Partial<Order> = {}): Order {
  return { order_id: i, status: i % 2 ? 'paid' : 'placed', total: 10 + (i % 7), customer_id: 1 + (i % 4), ...over };
}

/** Runs the CLI without blocking (the file's tests run concurrently); code -1 when killed by a signal. */
async function cli(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  const child = sluiceBg(args, { env });
  const { code } = await waitExit(child, 120_000);
  return { code: code ?? -1, stdout: child.out(), stderr: child.err() };
}

const ndjson = (orders: Order[]) => orders.map((o) => JSON.stringify(o)).join('\n') + '\n';

/**
 * A project: orders (one row per message) and big_orders (ref(orders)), a Parquet sink, the
 * customers reference as CSV, and `tests` as the orders override's column tests.
 */
function project(opts: { tests: string; source?: string; data?: Order[]; files?: Record<string, string> }): string {
  const p = tempDir('sluice-dt-');
  dirs.push(p);
  writeFiles(p, {
    'config/sources.yml': opts.source ?? 'source:\n  type: file\n  path: data/orders.ndjson\n  batch_size: 20\n',
    'config/sinks.yml': 'sink:\n  type: parquet\n  path: out\n',
    'config/models.yml': `references:\n  customers:\n    csv: ref/customers.csv\noverrides:\n  orders:\n${opts.tests}`,
    'ref/customers.csv': 'id,name\n1,Ada\n2,Alan\n3,Grace\n4,Ken\n',
    'models/orders.sql': 'SELECT order_id, status, total, customer_id FROM incoming\n',
    'models/big_orders.sql': "SELECT order_id, total FROM {{ ref('orders') }} WHERE total >= 10\n",
    'data/orders.ndjson': ndjson(opts.data ?? []),
    ...opts.files,
  });
  return p;
}

const columnTests = (onFailure: { status?: string; total?: string; customer?: string } = {}) => `    columns:
      - name: order_id
        tests: [not_null, unique]
      - name: status
        tests:
          - accepted_values: { values: [placed, paid]${onFailure.status ? `, on_failure: ${onFailure.status}` : ''} }
      - name: total
        tests:
          - range: { min: 0, max: 1000${onFailure.total ? `, on_failure: ${onFailure.total}` : ''} }
      - name: customer_id
        tests:
          - relationships: { to: customers, field: id${onFailure.customer ? `, on_failure: ${onFailure.customer}` : ''} }
    tests:
      - expression: total >= 0 OR status = 'refund'
        name: no_negative_totals
`;

async function rows(glob: string, sql = 'SELECT order_id FROM t ORDER BY order_id'): Promise<number[]> {
  const r = await query(`WITH t AS (SELECT * FROM read_parquet('${glob}')) ${sql}`);
  return r.map((x) => Number(Object.values(x)[0]));
}

describe.concurrent('sluice test: data tests and unit tests', () => {
  const unitTests = `unit_tests:
  - name: big_orders_keep_totals_from_10
    description: orders under 10 are not big
    messages:
      - { order_id: 1, status: paid, total: 9.5, customer_id: 1 }
      - { order_id: 2, status: paid, total: 10, customer_id: 2 }
      - { order_id: 3, status: placed, total: 250, customer_id: 3 }
    expect:
      big_orders:
        - { order_id: 3, total: 250 }
        - { order_id: 2, total: 10 }
      orders:
        - { order_id: 1, status: paid }
        - { order_id: 2, status: paid }
        - { order_id: 3, status: placed }
  - name: orders_in_order
    ordered: true
    messages: [{ order_id: 7, status: paid, total: 1, customer_id: 1 }, { order_id: 8, status: paid, total: 2, customer_id: 1 }]
    expect:
      orders: [{ order_id: 7 }, { order_id: 8 }]
`;

  it('passes: every test listed as pass, exit 0; the report and --format json agree', async () => {
    const p = project({ tests: columnTests(), files: { 'tests/orders.json': JSON.stringify([order(1), order(2), order(3)]), 'tests/units.yml': unitTests } });
    const r = await cli(['test', '--project', p]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/pass\s+\| not_null_orders_order_id\s+\| orders\s+\| order_id\s+\| not_null\s+\| 0/);
    expect(r.stdout).toMatch(/pass\s+\| relationships_orders_customer_id\s+\| orders\s+\| customer_id\s+\| relationships -> customers.id\s+\| 0/);
    expect(r.stdout).toMatch(/pass\s+\| no_negative_totals\s+\| orders\s+\|\s+\| no_negative_totals: total >= 0 OR status = 'refund'\s+\| 0/);
    expect(r.stdout).toContain('  pass big_orders_keep_totals_from_10 (');
    expect(r.stdout).toContain('  pass orders_in_order (');
    expect(r.stdout).toContain('6 data test(s): 6 passed, 0 failed; 2 unit test(s): 2 passed, 0 failed');
    const j = await cli(['test', '--project', p, '--format', 'json']);
    expect(j.code).toBe(0);
    const out = JSON.parse(j.stdout) as { data_tests: { test: string; passed: boolean }[]; unit_tests: { test: string; passed: boolean }[] };
    expect(out.data_tests.map((t) => [t.test, t.passed])).toEqual([
      ['not_null_orders_order_id', true],
      ['unique_orders_order_id', true],
      ['accepted_values_orders_status', true],
      ['range_orders_total', true],
      ['relationships_orders_customer_id', true],
      ['no_negative_totals', true],
    ]);
    expect(out.unit_tests.map((t) => [t.test, t.passed])).toEqual([
      ['big_orders_keep_totals_from_10', true],
      ['orders_in_order', true],
    ]);
    // The docs page lists each column's tests, the model's own, and the unit tests of the model.
    expect((await cli(['docs', 'generate', '--project', p])).code).toBe(0);
    const html = fs.readFileSync(path.join(p, '.sluice/docs/index.html'), 'utf8');
    for (const label of [
      'not_null',
      'unique',
      'accepted_values [placed, paid]',
      'range 0..1000',
      'relationships -&gt; customers.id',
      'no_negative_totals: total &gt;= 0 OR status = &#39;refund&#39;',
      'unit test big_orders_keep_totals_from_10 (tests/units.yml)',
    ]) {
      expect(html).toContain(`<span class="test">${label}</span>`);
    }
  });

  it('fails: failing rows counted with examples, unit test diffs, exit 1', async () => {
    const fixture = [order(1), order(1, { status: 'lost' }), order(3, { total: -4, customer_id: 99 })];
    const units = unitTests
      .replace('- { order_id: 3, total: 250 }', '- { order_id: 3, total: 25 }')
      .replace('orders: [{ order_id: 7 }, { order_id: 8 }]', 'orders: [{ order_id: 8 }, { order_id: 7 }]');
    const p = project({ tests: columnTests(), files: { 'tests/orders.json': JSON.stringify(fixture), 'tests/units.yml': units } });
    const r = await cli(['test', '--project', p]);
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/FAIL\s+\| unique_orders_order_id\s+\| orders\s+\| order_id\s+\| unique\s+\| 2/);
    expect(r.stdout).toMatch(/FAIL\s+\| accepted_values_orders_status .*\| 1/);
    expect(r.stdout).toMatch(/FAIL\s+\| range_orders_total .*\| 1/);
    expect(r.stdout).toMatch(/FAIL\s+\| relationships_orders_customer_id .*\| 1/);
    expect(r.stdout).toMatch(/FAIL\s+\| no_negative_totals .*\| 1/);
    expect(r.stdout).toMatch(/pass\s+\| not_null_orders_order_id .*\| 0/);
    expect(r.stdout).toContain(
      'FAIL relationships_orders_customer_id (orders.customer_id): 1 row(s) where customer_id has no match in customers.id; e.g.\n    {"order_id":3,"status":"paid","total":-4,"customer_id":99}',
    );
    expect(r.stdout).toContain(
      'FAIL accepted_values_orders_status (orders.status): 1 row(s) where status is not one of [placed, paid]; e.g.\n    {"order_id":1,"status":"lost","total":11,"customer_id":2}',
    );
    expect(r.stdout).toMatch(/ {2}FAIL big_orders_keep_totals_from_10 \(.*tests\/units\.yml:2\)/);
    expect(r.stdout).toContain('    big_orders: 2 row(s) expected, 2 produced (- expected, + actual):\n      - {"order_id":3,"total":25}\n      + {"order_id":3,"total":250}');
    expect(r.stdout).toContain('    orders: 2 row(s) expected, 2 produced (ordered) (- expected, + actual):\n      row 1:\n      - {"order_id":8}\n      + {"order_id":7}');
    expect(r.stdout).toContain('6 data test(s): 1 passed, 5 failed; 2 unit test(s): 0 passed, 2 failed');
  });

  it('validate reports a bad test with file, key and line (exit 2)', async () => {
    const p = project({ tests: '    columns:\n      - name: total\n        tests:\n          - range: { minimum: 0 }\n' });
    const r = await cli(['validate', '--project', p]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('config/models.yml:9: overrides.orders.columns.0.tests.0.range: unknown key "minimum" (known keys: min, max, name, on_failure)');
    expect(r.stderr).toContain('config/models.yml:9: overrides.orders.columns.0.tests.0.range: needs min, max or both');
  });
});

describe.concurrent('sluice run: data tests on every batch', () => {
  it('warn logs and counts; dlq sends the messages to the DLQ and removes their rows from every model', async () => {
    const data: Order[] = [];
    for (let i = 1; i <= 200; i++) {
      if (i % 40 === 0)
        data.push(order(i, { total: -1 })); // range (dlq) and the expression (warn)
      else if (i % 45 === 0)
        data.push(order(i, { customer_id: 77 })); // relationships (dlq)
      else if (i % 30 === 0)
        data.push(order(i, { status: 'lost' })); // accepted_values (warn)
      else data.push(order(i));
    }
    const source = 'source:\n  type: file\n  path: data/orders.ndjson\n  follow: true\n  poll_interval_ms: 50\n  batch_size: 25\n  batch_timeout_ms: 100\n  dlq: .sluice/dlq\n';
    const p = project({ tests: columnTests({ total: 'dlq', customer: 'dlq' }), source, data });
    fs.appendFileSync(path.join(p, 'config/models.yml'), 'max_age_seconds: 0.3\n');
    const port = await freePort();
    const child = sluiceBg(['run', '--project', p, '--port', String(port)]);
    const dlqIds = [40, 80, 120, 160, 200, 45, 90, 135, 180].sort((a, b) => a - b);
    const kept = data.map((o) => o.order_id).filter((i) => !dlqIds.includes(i));
    try {
      await until(async () => {
        try {
          return (await rows(`${p}/out/orders/*.parquet`)).length === kept.length;
        } catch {
          return false;
        }
      }, 60_000);
      const metrics = (await httpGet(`http://127.0.0.1:${port}/metrics`)).body;
      expect(metrics).toContain('sluice_data_test_failures_total{model="orders",test="accepted_values_orders_status"} 3');
      expect(metrics).toContain('sluice_data_test_failures_total{model="orders",test="range_orders_total"} 5');
      expect(metrics).toContain('sluice_data_test_failures_total{model="orders",test="relationships_orders_customer_id"} 4');
      expect(metrics).toContain('sluice_data_test_failures_total{model="orders",test="no_negative_totals"} 5');
      expect(metrics).not.toContain('test="not_null_orders_order_id"');
    } finally {
      child.kill('SIGTERM');
      expect((await waitExit(child)).code, child.err()).toBe(0);
    }
    expect(await rows(`${p}/out/orders/*.parquet`)).toEqual(kept);
    // Rows of a dead-lettered message leave the models downstream too.
    expect(await rows(`${p}/out/big_orders/*.parquet`)).toEqual(kept);
    // warn keeps the rows.
    expect(await rows(`${p}/out/orders/*.parquet`, "SELECT order_id FROM t WHERE status = 'lost' ORDER BY 1")).toEqual([30, 60, 150]);
    const dl = projectDeadLetters(p);
    expect(dl.map((d) => (JSON.parse(d.payload) as Order).order_id).sort((a, b) => a - b)).toEqual(dlqIds);
    for (const d of dl) {
      const o = JSON.parse(d.payload) as Order;
      expect(d.stage).toBe('transform');
      expect(d.model).toBe('orders');
      expect(d.error).toBe(
        o.total < 0 ? 'data test range_orders_total failed: total is outside 0..1000' : 'data test relationships_orders_customer_id failed: customer_id has no match in customers.id',
      );
    }
    expect(child.err()).toMatch(/WARN .*data test accepted_values_orders_status failed: status is not one of \[placed, paid\] \(on_failure: warn\)/);
  });

  it('fail stops the run with exit 1 before the batch is committed; the next run reads that batch again (nothing lost, nothing twice)', async () => {
    const data: Order[] = [];
    for (let i = 1; i <= 100; i++) data.push(i === 55 ? order(i, { status: 'lost' }) : order(i));
    const p = project({ tests: columnTests({ status: 'fail' }), data, source: 'source:\n  type: file\n  path: data/orders.ndjson\n  batch_size: 10\n' });
    const r = await cli(['run', '--project', p, '--port', '0']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(
      'error: data test accepted_values_orders_status failed on model orders (on_failure: fail): 1 row(s) where status is not one of [placed, paid], e.g. {"order_id":55,"status":"lost","total":16,"customer_id":4}; stopped before committing the batch (nothing from it was acknowledged)',
    );
    expect(r.stderr).not.toMatch(/\n\s+at /); // no stack trace at info level
    expect(parquetFiles(path.join(p, 'out'))).toEqual([]);
    // The WAL holds the five batches before the failing one, and its position is after them.
    const segs = fs.readdirSync(path.join(p, '.sluice/wal/models/orders')).filter((f) => f.endsWith('.parquet'));
    expect(await rows(`${p}/.sluice/wal/models/orders/*.parquet`)).toEqual(data.slice(0, 50).map((o) => o.order_id));
    expect(segs).toHaveLength(5);
    // Accept the value: the failing batch is read again and delivered once with the rest.
    fs.writeFileSync(path.join(p, 'config/models.yml'), fs.readFileSync(path.join(p, 'config/models.yml'), 'utf8').replace('on_failure: fail', 'on_failure: warn'));
    const again = await cli(['run', '--project', p, '--port', '0']);
    expect(again.code, again.stderr).toBe(0);
    expect(await rows(`${p}/out/orders/*.parquet`)).toEqual(data.map((o) => o.order_id));
    expect(projectDeadLetters(p)).toEqual([]);
  });
});

describe.concurrent('unique across the batches of a flush', () => {
  it('is reported (warn) when the model flushes; within a batch it follows on_failure', async () => {
    const data: Order[] = [];
    for (let i = 1; i <= 60; i++) data.push(order(i));
    data.push(order(5, { total: 99 }), order(17, { total: 98 })); // batch 4 repeats ids of batch 1
    data.push(order(70), order(70)); // twice in the last batch
    const tests = '    columns:\n      - name: order_id\n        tests:\n          - unique: { on_failure: dlq }\n';
    const p = project({ tests, data });
    const r = await cli(['run', '--project', p, '--port', '0']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(
      /WARN {2}data test unique_orders_order_id failed across the batches of a flush: 2 value\(s\) of order_id in more than one batch \(reported only: those batches are acknowledged\) .*failing_rows=4 examples=\["17","5"\]/,
    );
    // The batch-level check dead-lettered both messages of order 70; the repeats across batches were delivered.
    expect(projectDeadLetters(p).map((d) => [(JSON.parse(d.payload) as Order).order_id, d.error])).toEqual([
      [70, 'data test unique_orders_order_id failed: order_id is not unique within the batch'],
      [70, 'data test unique_orders_order_id failed: order_id is not unique within the batch'],
    ]);
    expect(await rows(`${p}/out/orders/*.parquet`, 'SELECT count(*) FROM t')).toEqual([62]);
  });
});

describe.concurrent('sluice run --dry-run', () => {
  it('says what the data tests would do to the batch, writing and acknowledging nothing', async () => {
    const p = project({ tests: columnTests({ total: 'dlq' }), data: [order(1, { status: 'lost' }), order(2, { total: -3 }), order(3)] });
    const r = await cli(['run', '--project', p, '--port', '0', '--dry-run']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain(
      'data test accepted_values_orders_status would fail (on_failure: warn): 1 row(s) of orders where status is not one of [placed, paid], e.g. {"order_id":1,"status":"lost","total":11,"customer_id":2}',
    );
    expect(r.stdout).toContain(
      'data test range_orders_total would fail (on_failure: dlq): 1 row(s) of orders where total is outside 0..1000, e.g. {"order_id":2,"status":"placed","total":-3,"customer_id":3}',
    );
    expect(projectDeadLetters(p)).toEqual([]);
    expect(parquetFiles(path.join(p, 'out'))).toEqual([]);
  });
});

describe.concurrent('data tests and crashes', () => {
  for (const point of ['before-commit', 'after-commit']) {
    it(`SIGKILL ${point} of a batch with dead-lettered messages: after the restart every message is delivered or dead-lettered exactly once`, async () => {
      const bad = [15, 45, 55, 85];
      const data: Order[] = [];
      for (let i = 1; i <= 100; i++) data.push(bad.includes(i) ? order(i, { total: -1 }) : order(i));
      const p = project({ tests: columnTests({ total: 'dlq' }), data });
      // The third batch (orders 41..60) holds two of the bad orders.
      const crashed = await cli(['run', '--project', p, '--port', '0', '--log-level', 'error'], { SLUICE_CRASH_AT: point, SLUICE_CRASH_AFTER: '3' });
      expect(crashed.code, crashed.stderr).toBe(-1); // killed by the signal
      expect(projectDeadLetters(p).length).toBeGreaterThanOrEqual(1);
      const again = await cli(['run', '--project', p, '--port', '0']);
      expect(again.code, again.stderr).toBe(0);
      const good = data.map((o) => o.order_id).filter((i) => !bad.includes(i));
      expect(await rows(`${p}/out/orders/*.parquet`)).toEqual(good);
      expect(await rows(`${p}/out/big_orders/*.parquet`)).toEqual(good);
      expect(projectDeadLetters(p).map((d) => (JSON.parse(d.payload) as Order).order_id)).toEqual(bad);
    });
  }
});

describe.concurrent('relationships to a PostgreSQL reference table', () => {
  /** PostgreSQL may be stopped for a while by another suite's outage test: retry the setup. */
  async function pgQuery(sql: string): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      const c = new pg.Client({ connectionString: 'postgresql://postgres@127.0.0.1:5432/test', connectionTimeoutMillis: 3000 });
      c.on('error', () => {});
      try {
        await c.connect();
        await c.query(sql);
        return;
      } catch (err) {
        if (attempt >= 30) throw err;
        await new Promise((r) => setTimeout(r, 2000));
      } finally {
        await c.end().catch(() => {});
      }
    }
  }

  it('loads the table at start and checks against it (sluice test and run)', async () => {
    const table = `sluice_dt_customers_${process.pid}`;
    await pgQuery(`DROP TABLE IF EXISTS ${table}; CREATE TABLE ${table} (id bigint primary key, name text); INSERT INTO ${table} VALUES (1, 'Ada'), (2, 'Alan'), (3, 'Grace')`);
    try {
      const refs = `references:\n  customers:\n    postgres: postgresql://postgres@127.0.0.1:5432/test\n    query: SELECT id FROM ${table} WHERE id < 3\n  every_customer:\n    postgres: postgresql://postgres@127.0.0.1:5432/test\n    table: ${table}\n`;
      const p = project({
        tests:
          '    columns:\n      - name: customer_id\n        tests:\n          - relationships: { to: every_customer, field: id, on_failure: dlq }\n          - relationships: { to: customers, field: id, name: first_two }\n',
        data: [order(1, { customer_id: 1 }), order(2, { customer_id: 3 }), order(3, { customer_id: 4 })],
        files: { 'tests/orders.json': JSON.stringify([order(1, { customer_id: 1 }), order(2, { customer_id: 3 }), order(3, { customer_id: 4 })]) },
      });
      fs.writeFileSync(path.join(p, 'config/models.yml'), fs.readFileSync(path.join(p, 'config/models.yml'), 'utf8').replace(/^references:\n(.*\n){2}/, refs));
      const t = await cli(['test', '--project', p]);
      expect(t.code, t.stderr).toBe(1);
      expect(t.stdout).toMatch(/FAIL\s+\| relationships_orders_customer_id\s+\| orders\s+\| customer_id\s+\| relationships -> every_customer.id \(on_failure: dlq\)\s+\| 1/);
      expect(t.stdout).toMatch(/FAIL\s+\| first_two\s+\| orders\s+\| customer_id\s+\| relationships -> customers.id\s+\| 2/);
      const r = await cli(['run', '--project', p, '--port', '0']);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stderr).toMatch(/reference table loaded reference=every_customer rows=3 from=postgres/);
      expect(await rows(`${p}/out/orders/*.parquet`)).toEqual([1, 2]);
      expect(projectDeadLetters(p).map((d) => d.error)).toEqual(['data test relationships_orders_customer_id failed: customer_id has no match in every_customer.id']);
    } finally {
      await pgQuery(`DROP TABLE IF EXISTS ${table}`);
    }
  });
});
