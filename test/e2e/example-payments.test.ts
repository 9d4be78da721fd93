import fs from 'node:fs';
import path from 'node:path';
import { DuckDBInstance } from '@duckdb/node-api';
import { afterAll, describe, expect, it } from 'vitest';
import { ROOT, sluiceAsync, tempDir } from '../helpers/cli.js';

// examples/payments, run as a user would: validate, test (its fixture and unit test), lineage and
// run. The output equals DuckDB's left join of the orders with their payments over the whole file.

const root = tempDir('sluice-example-payments-');
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

describe('examples/payments', () => {
  it('validates, tests, shows the join in its lineage, and runs: every order with its payment within 10 minutes, as DuckDB joins them', async () => {
    const p = path.join(root, 'payments');
    fs.cpSync(path.join(ROOT, 'examples', 'payments'), p, { recursive: true, filter: (src) => !/[\\/](output|\.sluice)$/.test(src) });
    const v = await sluiceAsync(['validate', '--project', p]);
    expect(v.code, v.stderr).toBe(0);
    const t = await sluiceAsync(['test', '--project', p]);
    expect(t.code, t.stdout + t.stderr).toBe(0);
    expect(t.stdout).toMatch(/pass paid_late_and_never/);
    const l = await sluiceAsync(['lineage', '--project', p]);
    expect(l.stdout).toMatch(/model orders_paid \[stream join: left join of o and p on o\.ordered_at − p\.paid_at from -10 minutes to 0 seconds · watermark: max time - 30 seconds/);
    const r = await sluiceAsync(['run', '--project', p, '--port', '0']);
    expect(r.code, r.stderr.slice(-2000)).toBe(0);
    const db = await DuckDBInstance.create(':memory:');
    const conn = await db.connect();
    try {
      const events = path.join(p, 'data', 'events.ndjson');
      await conn.run(
        `CREATE TABLE ev AS SELECT * FROM read_json('${events}', columns = {kind: 'VARCHAR', order_id: 'BIGINT', customer_id: 'BIGINT', amount_cents: 'BIGINT', method: 'VARCHAR', ts: 'VARCHAR'})`,
      );
      const want = `SELECT o.order_id, p.paid_at::VARCHAR AS paid_at, p.method FROM (SELECT order_id, ts::TIMESTAMP AS ordered_at FROM ev WHERE kind = 'order') o
        LEFT JOIN (SELECT order_id, method, ts::TIMESTAMP AS paid_at FROM ev WHERE kind = 'payment') p
        ON p.order_id = o.order_id AND p.paid_at BETWEEN o.ordered_at AND o.ordered_at + INTERVAL 10 MINUTE`;
      const rows = async (q: string) => (await conn.runAndReadAll(`${q} ORDER BY ALL`)).getRowsJS();
      const got = await rows(`SELECT order_id, paid_at::VARCHAR, method FROM read_parquet('${path.join(p, 'output', 'orders_paid')}/*.parquet')`);
      expect(got).toHaveLength(400);
      expect(got).toEqual(await rows(want));
      const unpaid = await rows(`SELECT order_id FROM read_parquet('${path.join(p, 'output', 'unpaid')}/*.parquet')`);
      expect(unpaid.length).toBeGreaterThan(0);
      expect(unpaid).toEqual(await rows(`SELECT order_id FROM (${want}) WHERE paid_at IS NULL`));
    } finally {
      conn.closeSync();
      db.closeSync();
    }
  }, 120_000);
});
