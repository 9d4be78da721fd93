import { DuckDBInstance } from '@duckdb/node-api';
const inst = await DuckDBInstance.create(':memory:');
const c = await inst.connect();
await c.run(`CREATE TABLE ev AS SELECT * REPLACE (ts::VARCHAR AS ts) FROM read_json('data/events.ndjson', columns={id:'BIGINT', ts:'VARCHAR', currency:'VARCHAR', amount:'DOUBLE', user:'VARCHAR'})`);
const refs = {
  rev: `SELECT time_bucket(INTERVAL 1 MINUTE, ts::TIMESTAMP) AS window_start, time_bucket(INTERVAL 1 MINUTE, ts::TIMESTAMP) + INTERVAL 1 MINUTE AS window_end, currency, sum(amount) AS revenue, count(*) AS n, count(DISTINCT "user") AS users, quantile_cont(amount, 0.5) AS median FROM ev GROUP BY ALL`,
  mavg: `SELECT s AS ws, s + INTERVAL 5 MINUTE AS we, avg(amount) AS avg_amount, count(*) AS n FROM (SELECT *, unnest(generate_series(time_bucket(INTERVAL 1 MINUTE, ts::TIMESTAMP) - INTERVAL 4 MINUTE, time_bucket(INTERVAL 1 MINUTE, ts::TIMESTAMP), INTERVAL 1 MINUTE)) AS s FROM ev) GROUP BY s`,
  sessions: `WITH o AS (SELECT *, ts::TIMESTAMP AS t FROM ev), a AS (SELECT *, CASE WHEN t - lag(t) OVER (PARTITION BY "user" ORDER BY t) < INTERVAL 30 SECOND THEN 0 ELSE 1 END AS nw FROM o), b AS (SELECT *, sum(nw) OVER (PARTITION BY "user" ORDER BY t ROWS UNBOUNDED PRECEDING) AS sid FROM a) SELECT min(t) AS s, max(t) + INTERVAL 30 SECOND AS e, "user", count(*) AS clicks FROM b GROUP BY "user", sid`,
  tb: `SELECT time_bucket(INTERVAL '10 seconds', ts::TIMESTAMP) AS bucket, count(*) AS n, max(amount) AS top FROM ev WHERE amount > 10 GROUP BY ALL`,
};
for (const [m, q] of Object.entries(refs)) {
  await c.run(`CREATE OR REPLACE TABLE out AS SELECT * FROM read_parquet('output/${m}/**/*.parquet')`);
  await c.run(`CREATE OR REPLACE TABLE ref AS ${q}`);
  const cols = (await c.runAndReadAll(`SELECT * FROM ref LIMIT 0`)).columnNames().map(x => `"${x}"`).join(', ');
  const n = async (q) => Number((await c.runAndReadAll(q)).getRows()[0][0]);
  const a = await n(`SELECT count(*) FROM (SELECT ${cols} FROM out EXCEPT ALL SELECT ${cols} FROM ref)`);
  const b = await n(`SELECT count(*) FROM (SELECT ${cols} FROM ref EXCEPT ALL SELECT ${cols} FROM out)`);
  console.log(m, 'out', await n('SELECT count(*) FROM out'), 'ref', await n('SELECT count(*) FROM ref'), 'extra', a, 'missing', b);
}
await c.run(`CREATE OR REPLACE TABLE out AS SELECT * FROM read_parquet('output/rev/**/*.parquet')`);
await c.run(`CREATE OR REPLACE TABLE ref AS ${refs.rev}`);
console.log((await c.runAndReadAll(`SELECT o.revenue - r.revenue, o.n - r.n, o.users - r.users, o.median - r.median FROM out o JOIN ref r USING (window_start, currency) WHERE o.revenue <> r.revenue OR o.n <> r.n OR o.median <> r.median LIMIT 5`)).getRowsJS());
