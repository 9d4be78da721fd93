// The file benchmark's baseline: plain DuckDB doing sluice's job in one fresh in-memory
// instance. For each model: its SQL with `FROM incoming` replaced by
// `FROM read_json('<file>', format = 'newline_delimited') AS incoming`, then
// COPY (...) TO '<out>/<model>.parquet' (FORMAT parquet, COMPRESSION zstd).
// bench/file.mjs spawns this as a child process so it is timed and measured (VmHWM) exactly
// like `sluice run`.
//
//   node bench/baseline.mjs <input.ndjson> <output dir>
import fs from 'node:fs';
import path from 'node:path';
import { DuckDBInstance } from '@duckdb/node-api';
import { ORDERS_SQL, PURCHASES_SQL } from '../dist/cli/init.js';

const [input, out] = process.argv.slice(2);
if (!input || !out) {
  console.error('usage: node bench/baseline.mjs <input.ndjson> <output dir>');
  process.exit(2);
}
const lit = (s) => `'${s.replace(/'/g, "''")}'`;
fs.mkdirSync(out, { recursive: true });

const db = await DuckDBInstance.create(':memory:');
const conn = await db.connect();
const src = `read_json(${lit(input)}, format = 'newline_delimited') AS incoming`;
for (const [name, sql] of [
  ['orders', ORDERS_SQL],
  ['purchases', PURCHASES_SQL],
]) {
  // Comments off first (they are whole lines); the alias stays `incoming`, so
  // `FROM incoming, unnest(incoming.items)` keeps working.
  const body = sql.replace(/--[^\n]*\n/g, '');
  const hits = body.match(/\bFROM incoming\b/g)?.length ?? 0;
  if (hits !== 1) throw new Error(`model ${name}: expected one "FROM incoming", found ${hits}`);
  const q = body.replace(/\bFROM incoming\b/, `FROM ${src}`);
  await conn.run(`COPY (${q}) TO ${lit(path.join(out, name + '.parquet'))} (FORMAT parquet, COMPRESSION zstd)`);
}
conn.closeSync();
db.closeSync();
