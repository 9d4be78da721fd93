import fs from 'node:fs';
import path from 'node:path';
import { DuckDBInstance } from '@duckdb/node-api';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ROOT, sluiceAsync, tempDir } from '../helpers/cli.js';
import { lockPostgres, pgQuery } from '../helpers/sql-db.js';

// examples/payments, run as a user would: validate, test (its fixtures of both sources and unit
// test), lineage and run. The output equals DuckDB's left join of the orders (one source) with
// their payments (another) over the whole files,
// and the revenue table in the machine's PostgreSQL (under a name of this test's own, through
// REVENUE_TABLE) equals DuckDB's GROUP BY over that join.

const root = tempDir('sluice-example-payments-');
const table = `example_revenue_${process.pid}`;
const env = { REVENUE_TABLE: table };
let release: () => void = () => {};
beforeAll(async () => {
  release = await lockPostgres();
});
afterAll(async () => {
  await pgQuery(`DROP TABLE IF EXISTS ${table}, ${table}_applied`).catch(() => {});
  fs.rmSync(root, { recursive: true, force: true });
  release();
});

describe('examples/payments', () => {
  it('validates, tests, shows the join in its lineage, and runs: every order with its payment within 10 minutes, as DuckDB joins them', async () => {
    const p = path.join(root, 'payments');
    fs.cpSync(path.join(ROOT, 'examples', 'payments'), p, { recursive: true, filter: (src) => !/[\\/](output|\.sluice)$/.test(src) });
    const v = await sluiceAsync(['validate', '--project', p], { env });
    expect(v.code, v.stderr).toBe(0);
    const t = await sluiceAsync(['test', '--project', p], { env });
    expect(t.code, t.stdout + t.stderr).toBe(0);
    expect(t.stdout).toMatch(/pass paid_late_and_never/);
    // The fixtures of both sources meet in the join: order 1 is paid, order 2 is not (yet).
    expect(t.stdout).toMatch(/orders_paid \(2 rows\)/);
    expect(t.stdout).toMatch(/\n1 +\| 7 +\| 1000 +\| 2026-01-01T09:00:00.000Z \| 2026-01-01T09:04:00.000Z \| card /);
    const l = await sluiceAsync(['lineage', '--project', p], { env });
    expect(l.stdout).toMatch(/model orders_paid \[stream join: left join of o and p on o\.ordered_at − p\.paid_at from -10 minutes to 0 seconds · watermark: max time - 30 seconds/);
    const r = await sluiceAsync(['run', '--project', p, '--port', '0'], { env });
    expect(r.code, r.stderr.slice(-2000)).toBe(0);
    const db = await DuckDBInstance.create(':memory:');
    const conn = await db.connect();
    try {
      const read = (f: string, cols: string) => `read_json('${path.join(p, 'data', f)}', columns = {${cols}})`;
      await conn.run(`CREATE TABLE orders AS SELECT * FROM ${read('orders.ndjson', "order_id: 'BIGINT', customer_id: 'BIGINT', amount_cents: 'BIGINT', ts: 'VARCHAR'")}`);
      await conn.run(`CREATE TABLE payments AS SELECT * FROM ${read('payments.ndjson', "order_id: 'BIGINT', method: 'VARCHAR', amount_cents: 'BIGINT', ts: 'VARCHAR'")}`);
      const want = `SELECT o.order_id, p.paid_at::VARCHAR AS paid_at, p.method FROM (SELECT order_id, ts::TIMESTAMP AS ordered_at FROM orders) o
        LEFT JOIN (SELECT order_id, method, ts::TIMESTAMP AS paid_at FROM payments) p
        ON p.order_id = o.order_id AND p.paid_at BETWEEN o.ordered_at AND o.ordered_at + INTERVAL 10 MINUTE`;
      const rows = async (q: string) => (await conn.runAndReadAll(`${q} ORDER BY ALL`)).getRowsJS();
      const got = await rows(`SELECT order_id, paid_at::VARCHAR, method FROM read_parquet('${path.join(p, 'output', 'orders_paid')}/*.parquet')`);
      expect(got).toHaveLength(400);
      expect(got).toEqual(await rows(want));
      const unpaid = await rows(`SELECT order_id FROM read_parquet('${path.join(p, 'output', 'unpaid')}/*.parquet')`);
      expect(unpaid.length).toBeGreaterThan(0);
      expect(unpaid).toEqual(await rows(`SELECT order_id FROM (${want}) WHERE paid_at IS NULL`));
      // The materialised view: one row per customer in PostgreSQL, as the GROUP BY over the whole join.
      const joined = `SELECT o.customer_id, p.paid_at, p.amount_cents AS paid_cents FROM (SELECT order_id, customer_id, ts::TIMESTAMP AS ordered_at FROM orders) o
        LEFT JOIN (SELECT order_id, amount_cents, ts::TIMESTAMP AS paid_at FROM payments) p
        ON p.order_id = o.order_id AND p.paid_at BETWEEN o.ordered_at AND o.ordered_at + INTERVAL 10 MINUTE`;
      const revenue = (await rows(`SELECT customer_id, count(*), count(paid_at), sum(paid_cents) FROM (${joined}) GROUP BY customer_id`)).map((x) => x.map(Number).join('|'));
      const pg = await pgQuery<{ customer_id: string; orders: string; paid_orders: string; revenue_cents: string }>(`SELECT customer_id, orders, paid_orders, revenue_cents FROM ${table}`);
      expect(revenue.length).toBeGreaterThan(40);
      expect(pg.map((x) => [x.customer_id, x.orders, x.paid_orders, x.revenue_cents].map(Number).join('|')).sort()).toEqual(revenue.sort());
    } finally {
      conn.closeSync();
      db.closeSync();
    }
  }, 120_000);
});
