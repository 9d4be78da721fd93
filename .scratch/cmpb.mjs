import { DuckDBInstance } from '@duckdb/node-api';
import { BATCH_QUERIES } from '/work/main/bench/clicks.mjs';
const c = await (await DuckDBInstance.create(':memory:')).connect();
await c.run(`CREATE TABLE events AS SELECT * FROM read_json('/work/main/bench/data/clicks-1000000.ndjson', columns = {id: 'UBIGINT', ts: 'VARCHAR', "user": 'VARCHAR', currency: 'VARCHAR', amount: 'UBIGINT', page: 'VARCHAR'})`);
await c.run(`CREATE TABLE ref AS ${BATCH_QUERIES.buckets}`);
await c.run(`CREATE TABLE out AS SELECT * FROM read_parquet('output/buckets/**/*.parquet')`);
console.log((await c.runAndReadAll(`SELECT r.bucket::VARCHAR, r.n, o.n, o.top, r.top FROM ref r FULL JOIN out o USING (bucket) WHERE r.n IS DISTINCT FROM o.n ORDER BY 1 LIMIT 10`)).getRowsJS());
console.log((await c.runAndReadAll(`SELECT count(*), count(DISTINCT bucket) FROM out`)).getRowsJS());
