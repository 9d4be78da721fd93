import fs from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import mysql from 'mysql2/promise';
import { afterAll, expect } from 'vitest';
import { sluice, tempDir, writeFiles, type CliResult } from './cli.js';
import { machineLock, sharedMachineLock } from './machine-lock.js';

// Access to the machine's PostgreSQL (127.0.0.1:5432, trust, db `test`) and MariaDB
// (127.0.0.1:3306, root without a password, db `test`) for the SQL sink tests, and a lock that
// keeps the PostgreSQL outage test from stopping the server under the other PostgreSQL tests.

export const PG = { host: '127.0.0.1', port: 5432, user: 'postgres', database: 'test' };
export const MY = { host: '127.0.0.1', port: 3306, user: 'root', database: 'test' };

/** Runs one statement on PostgreSQL and returns the rows. */
export async function pgQuery<T = Record<string, unknown>>(sql: string, params: unknown[] = []): Promise<T[]> {
  const c = new pg.Client(PG);
  await c.connect();
  try {
    return (await c.query(sql, params)).rows as T[];
  } finally {
    await c.end();
  }
}

/** Runs one statement on MariaDB and returns the rows. */
export async function myQuery<T = Record<string, unknown>>(sql: string, params: unknown[] = []): Promise<T[]> {
  const c = await mysql.createConnection({ ...MY, supportBigNumbers: true, bigNumberStrings: true });
  try {
    const [rows] = await c.query(sql, params);
    return rows as T[];
  } finally {
    await c.end();
  }
}

/** Rows of a PostgreSQL table ([] when it does not exist). */
export async function pgRows(table: string, orderBy = '1'): Promise<Record<string, unknown>[]> {
  const [{ e }] = await pgQuery<{ e: boolean }>('SELECT to_regclass($1) IS NOT NULL AS e', [table]);
  return e ? pgQuery(`SELECT * FROM ${table} ORDER BY ${orderBy}`) : [];
}

/** Rows of a MariaDB table ([] when it does not exist). */
export async function myRows(table: string, orderBy = '1'): Promise<Record<string, unknown>[]> {
  const [{ n }] = await myQuery<{ n: number }>('SELECT count(*) AS n FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?', [table]);
  return Number(n) ? myQuery(`SELECT * FROM \`${table}\` ORDER BY ${orderBy}`) : [];
}

/**
 * Holds the machine-wide PostgreSQL test lock, shared, until the returned release is called: test
 * files that use PostgreSQL take it for their whole run (several at once), so that a test that
 * stops the server (lockPostgresExclusive) never does it while one of them runs.
 */
export function lockPostgres(timeoutMs = 15 * 60_000): Promise<() => void> {
  return sharedMachineLock('postgres', timeoutMs);
}

/** Holds the PostgreSQL test lock alone (no shared holder): for a test that stops the server. */
export function lockPostgresExclusive(timeoutMs = 15 * 60_000): Promise<() => void> {
  return machineLock('postgres', timeoutMs);
}

/**
 * Projects for a SQL-table sink's tests: `project(sink, sql)` writes one (file source over
 * data/*.ndjson in batches of 50, model `items`, a `type` sink on database `test` into its own
 * table and state table, plus optional fixture tests/sample.json); tables and directories are
 * dropped after the file's tests.
 */
export function tableProjects(type: 'postgres' | 'mysql', drop: (table: string) => Promise<unknown>) {
  const root = tempDir(`sluice-${type}-`);
  const tables: string[] = [];
  afterAll(async () => {
    fs.rmSync(root, { recursive: true, force: true });
    for (const t of tables) await drop(t).catch(() => {});
  });
  let n = 0;
  return {
    project(sink: Record<string, unknown>, sql: string, fixture?: object[]): { dir: string; table: string; state: string } {
      const id = `${process.pid}_${n++}`;
      const dir = path.join(root, `p${id}`);
      const table = `items_${id}`;
      const state = `applied_${id}`;
      tables.push(table, state);
      writeFiles(dir, {
        'config/sources.yml': 'source:\n  type: file\n  path: data/*.ndjson\n  batch_size: 50\n  batch_timeout_ms: 100\n  dlq: .sluice/dlq\n',
        'config/sinks.yml': `sink: ${JSON.stringify({ type, database: 'test', table, state_table: state, ...sink })}\n`,
        'config/models.yml': 'max_age_seconds: 300\n',
        'models/items.sql': sql,
        ...(fixture ? { 'tests/sample.json': JSON.stringify(fixture) } : {}),
      });
      fs.mkdirSync(path.join(dir, 'data'), { recursive: true });
      return { dir, table, state };
    },
    /** Writes data/<file> (NDJSON) for the next run. */
    input(dir: string, file: string, rows: object[]): void {
      fs.writeFileSync(path.join(dir, 'data', file), rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
    },
    run(dir: string, env: NodeJS.ProcessEnv = {}) {
      return sluice(['run', '--project', dir, '--port', '0'], { env, timeout: 120_000 });
    },
  };
}

/** A CLI result that must have exited 0 (the failure shows the command's stderr). */
export function succeeded(r: CliResult): CliResult {
  expect(r.code, r.stderr.slice(-3000)).toBe(0);
  return r;
}
