// The joins benchmark's baseline: plain DuckDB running the stream join's query as one batch
// query over the whole file, in one fresh in-memory instance: the input read once with
// read_json, then COPY (join) TO <out> (zstd). bench/joins.mjs spawns this as a child process,
// timed and measured exactly like `sluice run`.
//
//   node bench/joins-baseline.mjs <input.ndjson> <output.parquet> <inner|left|full> [<payments.ndjson>]
//
// With a payments file, `input` holds the orders (a join of two sources).
import { DuckDBInstance } from '@duckdb/node-api';
import { joinSql } from './joins-data.mjs';

const [input, out, kind, payments] = process.argv.slice(2);
if (!input || !out || !kind) {
  console.error('usage: node bench/joins-baseline.mjs <input.ndjson> <output.parquet> <inner|left|full> [<payments.ndjson>]');
  process.exit(2);
}
const lit = (s) => `'${s.replace(/'/g, "''")}'`;
const db = await DuckDBInstance.create(':memory:');
const conn = await db.connect();
const read = (file) =>
  `read_json(${lit(file)}, format = 'newline_delimited', columns = {kind: 'VARCHAR', order_id: 'BIGINT', customer_id: 'BIGINT', amount_cents: 'BIGINT', method: 'VARCHAR', ts: 'VARCHAR'})`;
await conn.run(`CREATE TABLE events AS SELECT * FROM ${read(input)}`);
// Two files (a join of two sources): the orders in `input`, the payments in a table of their own.
if (payments) await conn.run(`CREATE TABLE payments AS SELECT * FROM ${read(payments)}`);
await conn.run(`COPY (${joinSql(kind, 'events', payments ? 'payments' : 'events')}) TO ${lit(out)} (FORMAT parquet, COMPRESSION zstd)`);
conn.closeSync();
db.closeSync();
