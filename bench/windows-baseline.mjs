// The windows benchmark's baseline: plain DuckDB running each windowed model's GROUP BY as one
// batch query over the whole file, in one fresh in-memory instance: the input read once with
// read_json, then COPY (query) TO '<out>/<model>.parquet' (zstd) per model. bench/windows.mjs
// spawns this as a child process, timed and measured exactly like `sluice run`.
//
//   node bench/windows-baseline.mjs <input.ndjson> <output dir> <model>...
import fs from 'node:fs';
import path from 'node:path';
import { DuckDBInstance } from '@duckdb/node-api';
import { BATCH_QUERIES } from './clicks.mjs';

const [input, out, ...models] = process.argv.slice(2);
if (!input || !out || models.length === 0) {
  console.error('usage: node bench/windows-baseline.mjs <input.ndjson> <output dir> <model>...');
  process.exit(2);
}
const lit = (s) => `'${s.replace(/'/g, "''")}'`;
fs.mkdirSync(out, { recursive: true });
const db = await DuckDBInstance.create(':memory:');
const conn = await db.connect();
await conn.run(
  `CREATE TABLE events AS SELECT * FROM read_json(${lit(input)}, format = 'newline_delimited', columns = {id: 'UBIGINT', ts: 'VARCHAR', "user": 'VARCHAR', currency: 'VARCHAR', amount: 'UBIGINT', page: 'VARCHAR'})`,
);
for (const m of models) await conn.run(`COPY (${BATCH_QUERIES[m]}) TO ${lit(path.join(out, `${m}.parquet`))} (FORMAT parquet, COMPRESSION zstd)`);
conn.closeSync();
db.closeSync();
