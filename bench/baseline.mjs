// Plain DuckDB doing the file benchmark's job: read_json + the same SQL + COPY to zstd Parquet.
import path from 'node:path';
import { DuckDBInstance } from '@duckdb/node-api';
import { ORDERS_SQL, PURCHASES_SQL } from '../dist/cli/init.js';

const [input, out] = process.argv.slice(2);
const db = await DuckDBInstance.create(':memory:');
const conn = await db.connect();
const src = `read_json('${input}', format = 'newline_delimited') AS incoming`;
for (const [name, sql] of [['orders', ORDERS_SQL], ['purchases', PURCHASES_SQL]]) {
  const q = sql.replace(/--[^\n]*\n/g, '').replace(/FROM incoming/, `FROM ${src}`);
  await conn.run(`COPY (${q}) TO '${path.join(out, name + '.parquet')}' (FORMAT parquet, COMPRESSION zstd)`);
}
conn.closeSync();
db.closeSync();
