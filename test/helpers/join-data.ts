import fs from 'node:fs';
import path from 'node:path';
import { DuckDBInstance, type DuckDBConnection } from '@duckdb/node-api';

// Orders and payments in one stream, for the stream-join tests: what they write and what plain
// DuckDB makes of the same models over the whole input.

/** A small deterministic generator (the same file for the same arguments). */
function lcg(seed: number): () => number {
  let s = seed;
  return () => {
    s = (s * 1103515245 + 12345) % 2147483648;
    return s / 2147483648;
  };
}

/**
 * `orders` orders, 20 s apart from 2026-01-01; two orders in three get a payment from 2 minutes
 * before to 12 minutes after the order (some outside any bound), every eleventh a payment of
 * another order; events out of order by up to `disorderMs` (the file is sorted by time plus a
 * random delay below it).
 */
export function writeOrdersAndPayments(file: string, orders: number, disorderMs = 120_000, seed = 7): number {
  const rnd = lcg(seed);
  const events: [number, string][] = [];
  const t0 = Date.UTC(2026, 0, 1);
  const at = (ms: number) => new Date(ms).toISOString();
  for (let i = 0; i < orders; i++) {
    const t = t0 + i * 20_000;
    events.push([t, JSON.stringify({ kind: 'order', id: i, ts: at(t), amount: (i % 97) * 100 })]);
    if (i % 3 !== 0) {
      const pt = t + Math.floor((rnd() * 14 - 2) * 60_000);
      events.push([pt, JSON.stringify({ kind: 'payment', order_id: i, ts: at(pt), paid: (i % 97) * 100 })]);
    }
    if (i % 11 === 0) events.push([t + 60_000, JSON.stringify({ kind: 'payment', order_id: i + 1, ts: at(t + 60_000), paid: 1 })]);
  }
  const keyed = events.map(([t, line]) => [t + rnd() * disorderMs, line] as const);
  keyed.sort((a, b) => a[0] - b[0]);
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, `${keyed.map((x) => x[1]).join('\n')}\n`);
  return keyed.length;
}

export const ORDERS_SQL = "SELECT id, CAST(ts AS TIMESTAMP) AS ts, amount FROM incoming WHERE kind = 'order'\n";
export const PAYMENTS_SQL = "SELECT order_id, CAST(ts AS TIMESTAMP) AS ts, paid FROM incoming WHERE kind = 'payment'\n";

/** A join of the two models (`kind`: INNER, LEFT, RIGHT or FULL), paid from 2 minutes before to 10 minutes after the order. */
export function joinSql(kind: string): string {
  return `SELECT o.id, o.ts AS ordered_at, p.order_id, p.ts AS paid_at, o.amount, p.paid
FROM {{ ref('orders') }} o ${kind} JOIN {{ ref('payments') }} p
  ON p.order_id = o.id AND p.ts BETWEEN o.ts - INTERVAL '2' MINUTE AND o.ts + INTERVAL '10' MINUTE
`;
}

/**
 * How a model's output compares with the same SQL over the whole input in plain DuckDB (`sql`,
 * with `{{ ref('orders') }}` and `{{ ref('payments') }}` read as the models over every event):
 * rows in each, and rows in one but not the other (as multisets).
 */
export async function compareJoin(conn: DuckDBConnection, events: string, output: string, model: string, sql: string): Promise<{ output: number; batch: number; extra: number; missing: number }> {
  await conn.run(`CREATE OR REPLACE TABLE ev AS SELECT * FROM read_json('${events}', columns = {kind: 'VARCHAR', id: 'BIGINT', order_id: 'BIGINT', ts: 'VARCHAR', amount: 'BIGINT', paid: 'BIGINT'})`);
  await conn.run(`CREATE OR REPLACE VIEW orders AS ${ORDERS_SQL.replace('incoming', 'ev')}`);
  await conn.run(`CREATE OR REPLACE VIEW payments AS ${PAYMENTS_SQL.replace('incoming', 'ev')}`);
  const batch = sql
    .replaceAll("{{ ref('orders') }}", 'orders')
    .replaceAll("{{ ref('payments') }}", 'payments')
    .replaceAll("{{ source('orders') }}", "(SELECT * FROM ev WHERE kind = 'order')")
    .replaceAll("{{ source('payments') }}", "(SELECT * FROM ev WHERE kind = 'payment')")
    .replaceAll('FROM incoming', 'FROM ev');
  await conn.run(`CREATE OR REPLACE TABLE want AS ${batch}`);
  const cols = (await conn.runAndReadAll('SELECT * FROM want LIMIT 0'))
    .columnNames()
    .map((c) => `"${c}"`)
    .join(', ');
  const have = fs.existsSync(path.join(output, model)) ? `SELECT ${cols} FROM read_parquet('${path.join(output, model)}/**/*.parquet')` : 'SELECT * FROM want WHERE false';
  await conn.run(`CREATE OR REPLACE TABLE got AS ${have}`);
  const n = async (q: string) => Number((await conn.runAndReadAll(q)).getRows()[0][0]);
  return {
    output: await n('SELECT count(*) FROM got'),
    batch: await n('SELECT count(*) FROM want'),
    extra: await n('SELECT count(*) FROM (SELECT * FROM got EXCEPT ALL SELECT * FROM want)'),
    missing: await n('SELECT count(*) FROM (SELECT * FROM want EXCEPT ALL SELECT * FROM got)'),
  };
}

/**
 * The events of writeOrdersAndPayments split into two files, orders and payments, in the same
 * order, without `kind` (each file is one source's stream).
 */
export function splitOrdersAndPayments(events: string, orders: string, payments: string): void {
  const lines = fs.readFileSync(events, 'utf8').trim().split('\n');
  const of = (kind: string) => lines.filter((l) => l.startsWith(`{"kind":"${kind}",`)).map((l) => `{${l.slice(`{"kind":"${kind}",`.length)}`);
  for (const [file, kind] of [
    [orders, 'order'],
    [payments, 'payment'],
  ]) {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, `${of(kind).join('\n')}\n`);
  }
}

/** compareJoin for each model (name -> SQL) of a project's output, in a DuckDB of its own. */
export async function compareJoins(project: string, events: string, models: Record<string, string>): Promise<Record<string, Awaited<ReturnType<typeof compareJoin>>>> {
  const db = await DuckDBInstance.create(':memory:');
  const conn = await db.connect();
  try {
    const out: Record<string, Awaited<ReturnType<typeof compareJoin>>> = {};
    for (const [m, sql] of Object.entries(models)) out[m] = await compareJoin(conn, events, path.join(project, 'output'), m, sql);
    return out;
  } finally {
    conn.closeSync();
    db.closeSync();
  }
}
