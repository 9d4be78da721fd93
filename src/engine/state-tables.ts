import type { DuckDBConnection } from '@duckdb/node-api';

// The stateful models' tables in DuckDB (schema sluice_state).

/**
 * Makes table `live` (built for a batch, now committed) the state table `state`, in its place:
 * renamed, not copied (both `schema.name`, in one schema).
 */
export async function promote(conn: DuckDBConnection, live: string, state: string): Promise<void> {
  const bare = state.slice(state.indexOf('.') + 1);
  await conn.run(`DROP TABLE IF EXISTS ${state}`);
  await conn.run(`ALTER TABLE ${live} RENAME TO ${bare}`);
}
