import fs from 'node:fs';
import path from 'node:path';
import { DuckDBInstance } from '@duckdb/node-api';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ROOT, sluiceAsync, tempDir } from '../helpers/cli.js';
import { lockPostgres, pgQuery } from '../helpers/sql-db.js';

// examples/enrichment, run as a user would: its setup.sql creates the CRM table on the machine's
// PostgreSQL (under a name of this test's own, through CRM_TABLE), then validate, test and run.
// The output equals DuckDB joining the orders file with the CRM's rows and the rates file.

const EXAMPLE = path.join(ROOT, 'examples', 'enrichment');
const table = `example_customers_${process.pid}`;
const root = tempDir('sluice-example-enrichment-');
const p = path.join(root, 'enrichment');
const env = { CRM_TABLE: table };
let release: () => void = () => {};

beforeAll(async () => {
  release = await lockPostgres();
  await pgQuery(fs.readFileSync(path.join(EXAMPLE, 'setup.sql'), 'utf8').replaceAll('example_customers', table));
  fs.cpSync(EXAMPLE, p, { recursive: true, filter: (src) => !/[\\/](output|\.sluice)$/.test(src) });
});
afterAll(async () => {
  await pgQuery(`DROP TABLE IF EXISTS ${table}`).catch(() => {});
  fs.rmSync(root, { recursive: true, force: true });
  release();
});

describe('examples/enrichment', () => {
  it('validates, tests its fixture, and runs: every order joined with its customer and rate, as DuckDB joins them', async () => {
    const v = await sluiceAsync(['validate', '--project', p], { env });
    expect(v.code, v.stderr).toBe(0);
    const t = await sluiceAsync(['test', '--project', p], { env });
    expect(t.code, t.stderr).toBe(0);
    expect(t.stdout).toMatch(/1\s+\| 3\s+\| customer 3\s+\| gold\s+\| GB\s+\| USD\s+\| 100(\.0)?\s+\| 92(\.0)?\s/);
    expect(t.stdout).toMatch(/2\s+\| 39\s+\| NULL\s+\| unknown\s+\| NULL/);
    const r = await sluiceAsync(['run', '--project', p, '--port', '0'], { env });
    expect(r.code, r.stderr.slice(-2000)).toBe(0);
    const customers = await pgQuery<{ id: number; name: string; tier: string; country: string }>(`SELECT id, name, tier, country FROM ${table}`);
    expect(customers).toHaveLength(38);
    const db = await DuckDBInstance.create(':memory:');
    const conn = await db.connect();
    try {
      const crm = path.join(root, 'crm.json');
      fs.writeFileSync(crm, JSON.stringify(customers));
      const got = await conn.runAndReadAll(`SELECT order_id, customer_name, tier, country, total_eur FROM read_parquet('${path.join(p, 'output')}/**/*.parquet') ORDER BY order_id`);
      const want = await conn.runAndReadAll(`SELECT o.order_id, c.name, coalesce(c.tier, 'unknown'), c.country, round(o.total * r.to_eur, 2)
        FROM read_json('${path.join(p, 'data', 'orders.ndjson')}') AS o
        LEFT JOIN read_json_auto('${crm}') AS c ON c.id = o.customer_id
        LEFT JOIN read_csv('${path.join(p, 'reference', 'rates.csv')}', header = true) AS r ON r.currency = o.currency ORDER BY o.order_id`);
      const norm = (rows: unknown[][]) => rows.map((x) => x.map((v) => (typeof v === 'bigint' ? Number(v) : typeof v === 'object' && v !== null ? Number(String(v)) : v)));
      expect(norm(got.getRowsJS())).toHaveLength(300);
      expect(norm(got.getRowsJS())).toEqual(norm(want.getRowsJS()));
      expect(got.getRowsJS().filter((x) => x[2] === 'unknown').length).toBe((300 / 40) * 2);
    } finally {
      conn.closeSync();
      db.closeSync();
    }
  });
});
