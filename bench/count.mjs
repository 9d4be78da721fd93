// Checks a benchmark's output: `node bench/count.mjs '<glob>' <expected rows>`.
import { DuckDBInstance } from '@duckdb/node-api';

const [glob, expected] = process.argv.slice(2);
const db = await DuckDBInstance.create(':memory:');
const conn = await db.connect();
const r = await conn.runAndReadAll(`SELECT count(*) FROM read_parquet('${glob}')`);
const n = Number(r.getRows()[0][0]);
if (n !== Number(expected)) {
  console.error(`expected ${expected} rows in ${glob}, found ${n}`);
  process.exit(1);
}
