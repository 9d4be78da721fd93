import path from 'node:path';
import type { DuckDBConnection } from '@duckdb/node-api';

// Models for the windowed-aggregation tests over the clickstream of bench/clicks.mjs, and the
// same aggregations as plain DuckDB queries over the whole input.

import { BATCH_QUERIES } from '../../bench/clicks.mjs';

export { BASE_MS, BATCH_QUERIES, clickEvent, JITTER_MS, LATENESS, STEP_MS, WINDOW_MODELS, WINDOW_MODELS_YML, writeClicks } from '../../bench/clicks.mjs';

/** Loads NDJSON input into table `events` as sluice decodes it (ts as text). */
export async function loadEvents(conn: DuckDBConnection, files: string[]): Promise<void> {
  const list = files.map((f) => `'${f.replaceAll("'", "''")}'`).join(', ');
  await conn.run(
    `CREATE OR REPLACE TABLE events AS SELECT * FROM read_json([${list}], format = 'newline_delimited', columns = {id: 'UBIGINT', ts: 'VARCHAR', "user": 'VARCHAR', currency: 'VARCHAR', amount: 'UBIGINT', page: 'VARCHAR'})`,
  );
}

/**
 * Compares a model's output (the Parquet files under `dir`) with its batch query, row by row:
 * rows only in the output, rows only in the batch result, and the counts.
 */
export async function compareWithBatch(conn: DuckDBConnection, dir: string, model: string): Promise<{ output: number; batch: number; extra: number; missing: number }> {
  await conn.run(`CREATE OR REPLACE TABLE batch_result AS ${BATCH_QUERIES[model]}`);
  const cols = (await conn.runAndReadAll('SELECT * FROM batch_result LIMIT 0'))
    .columnNames()
    .map((c) => `"${c}"`)
    .join(', ');
  await conn.run(`CREATE OR REPLACE TABLE output AS SELECT ${cols} FROM read_parquet('${path.join(dir, model)}/**/*.parquet')`);
  const n = async (q: string) => Number((await conn.runAndReadAll(q)).getRows()[0][0]);
  return {
    output: await n('SELECT count(*) FROM output'),
    batch: await n('SELECT count(*) FROM batch_result'),
    extra: await n(`SELECT count(*) FROM (SELECT * FROM output EXCEPT ALL SELECT * FROM batch_result)`),
    missing: await n(`SELECT count(*) FROM (SELECT * FROM batch_result EXCEPT ALL SELECT * FROM output)`),
  };
}
