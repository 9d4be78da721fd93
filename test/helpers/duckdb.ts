import { afterAll, beforeAll } from 'vitest';
import { DuckDBInstance, type DuckDBConnection } from '@duckdb/node-api';

/**
 * An in-memory DuckDB for the enclosing describe(): opened before its tests, closed after.
 * Returns a getter for the connection.
 */
export function useDuckDB(): () => DuckDBConnection {
  let db: DuckDBInstance | undefined;
  let conn: DuckDBConnection | undefined;
  beforeAll(async () => {
    db = await DuckDBInstance.create(':memory:');
    conn = await db.connect();
  });
  afterAll(() => {
    conn?.closeSync();
    db?.closeSync();
  });
  return () => conn!;
}
