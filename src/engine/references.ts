import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { DuckDBConnection, DuckDBInstance } from '@duckdb/node-api';
import type { Logger } from 'pino';
import { SluiceError, errorMessage } from '../errors.js';
import type { ReferenceDef } from '../project/data-test-config.js';
import { durationMs } from '../project/duration.js';
import type { Project } from '../project/project-loader.js';
import { ident, lit } from '../sql/quote.js';
import { backoff, sleep } from '../util/retry.js';
import type { Metrics } from '../ops/metrics.js';
import { maskText } from '../util/secrets.js';
import { cleanError } from './executor.js';

// Reference tables (config/models.yml references:): files of the project or database tables,
// loaded into DuckDB (schema sluice_ref) for models to join by name and for relationships
// tests. With refresh_interval, a reference is loaded again in the background (its own
// connection) into a table beside it, and swapped in whole between two batches: a batch's
// models see one version from their first statement to their last.

/** Where reference tables live in DuckDB. */
export const REF_SCHEMA = 'sluice_ref';

/** How long a database reference is retried at start while the server cannot be reached. */
const CONNECT_WINDOW_MS = 60_000;

/** Where the reference is read from, as logs and errors say it. */
function origin(r: ReferenceDef): string {
  if (r.postgres !== undefined) return 'postgres';
  if (r.mysql !== undefined) return 'mysql';
  return (r.csv ?? r.parquet ?? r.json)!;
}

function where(r: ReferenceDef): string {
  return `${r.file ?? 'config/models.yml'}${r.line ? `:${r.line}` : ''}: reference ${r.name}`;
}

/**
 * Loads reference `r` into `table` (replacing it) and returns its row count. A reference over
 * max_rows is refused with its size (the table is dropped). `connectWindowMs`: how long a
 * database that cannot be reached is retried (0: one attempt).
 */
export async function loadReference(conn: DuckDBConnection, dir: string, r: ReferenceDef, table: string, opts: { connectWindowMs: number; log?: Logger }): Promise<number> {
  let fetched: string | undefined;
  try {
    const file = async (x: string) => {
      if (!x.startsWith('s3://')) return lit(path.resolve(dir, x));
      fetched = await fetchS3(r, x);
      return lit(fetched);
    };
    if (r.csv !== undefined) await conn.run(`CREATE OR REPLACE TABLE ${table} AS SELECT * FROM read_csv(${await file(r.csv)}, header = true)`);
    else if (r.parquet !== undefined) await conn.run(`CREATE OR REPLACE TABLE ${table} AS SELECT * FROM read_parquet(${await file(r.parquet)})`);
    else if (r.json !== undefined) await conn.run(`CREATE OR REPLACE TABLE ${table} AS SELECT * FROM read_json_auto(${await file(r.json)})`);
    else await loadFromDatabase(conn, r, table, opts);
  } catch (err) {
    if (err instanceof SluiceError && err.code === 'CONNECT') throw err;
    throw new SluiceError('CONFIG', `${where(r)}: ${maskText(cleanError(err))}`);
  } finally {
    if (fetched) await fsp.rm(path.dirname(fetched), { recursive: true, force: true });
  }
  const rows = Number((await conn.runAndReadAll(`SELECT count(*) FROM ${table}`)).getRowsJS()[0][0]);
  if (rows > r.max_rows) {
    await conn.run(`DROP TABLE ${table}`);
    throw new SluiceError('CONFIG', `${where(r)}: ${rows} rows, over max_rows (${r.max_rows}); raise max_rows if the memory is there, or load fewer rows (query:)`);
  }
  return rows;
}

/** Downloads s3://bucket/key into a temp directory of its own (the caller removes it); returns the file. */
async function fetchS3(r: ReferenceDef, url: string): Promise<string> {
  const m = /^s3:\/\/([^/]+)\/(.+)$/.exec(url);
  if (!m) throw new Error(`${url} is not s3://<bucket>/<key>`);
  const { S3Client, GetObjectCommand } = await import('@aws-sdk/client-s3');
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
  const client = new S3Client({
    region: r.region ?? process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION ?? 'us-east-1',
    ...(r.endpoint ? { endpoint: r.endpoint } : {}),
    forcePathStyle: r.force_path_style ?? false,
  });
  const tmp = path.join(await fsp.mkdtemp(path.join(os.tmpdir(), 'sluice-ref-')), path.basename(m[2]));
  try {
    const got = await client.send(new GetObjectCommand({ Bucket: m[1], Key: m[2] }));
    await pipeline(got.Body as NodeJS.ReadableStream, fs.createWriteStream(tmp));
    return tmp;
  } catch (err) {
    await fsp.rm(path.dirname(tmp), { recursive: true, force: true });
    throw new Error(`reading ${url}: ${errorMessage(err)}`);
  } finally {
    client.destroy();
  }
}

/** The rows of a table or query, read as JSON objects: DuckDB infers the column types as it does for a file. */
interface DbRows {
  rows: string[];
  columns: string[];
}

async function loadFromDatabase(conn: DuckDBConnection, r: ReferenceDef, table: string, opts: { connectWindowMs: number; log?: Logger }): Promise<void> {
  const kind = r.postgres !== undefined ? 'PostgreSQL' : 'MySQL';
  const deadline = Date.now() + opts.connectWindowMs;
  let got: DbRows;
  for (let attempt = 1; ; attempt++) {
    try {
      got = r.postgres !== undefined ? await readPostgres(r) : await readMysql(r);
      break;
    } catch (err) {
      if (!(err instanceof ConnectFailure)) throw err;
      if (Date.now() >= deadline)
        throw new SluiceError('CONNECT', `reference ${r.name}: cannot connect to ${kind} after ${attempt} attempt(s): ${maskText(errorMessage(err.cause))}`, { cause: err.cause });
      opts.log?.warn({ reference: r.name, attempt, err: maskText(errorMessage(err.cause)) }, `${kind} for a reference table is not reachable; retrying`);
      await sleep(backoff({ initialMs: 500, maxMs: 5000 })(attempt));
    }
  }
  if (got.rows.length === 0) {
    await conn.run(`CREATE OR REPLACE TABLE ${table} (${got.columns.map((c) => `${ident(c)} VARCHAR`).join(', ')})`);
    return;
  }
  const tmp = path.join(await fsp.mkdtemp(path.join(os.tmpdir(), 'sluice-ref-')), `${r.name}.ndjson`);
  try {
    await fsp.writeFile(tmp, `${got.rows.join('\n')}\n`);
    await conn.run(`CREATE OR REPLACE TABLE ${table} AS SELECT * FROM read_json_auto(${lit(tmp)}, format = 'newline_delimited')`);
  } finally {
    await fsp.rm(path.dirname(tmp), { recursive: true, force: true });
  }
}

/** The database could not be reached (retried at start); any other failure is the query's. */
class ConnectFailure extends Error {
  constructor(override readonly cause: unknown) {
    super(errorMessage(cause));
  }
}

async function readPostgres(r: ReferenceDef): Promise<DbRows> {
  const { default: pg } = await import('pg');
  const sql = r.query ?? `SELECT * FROM ${r.table!.split('.').map(ident).join('.')}`;
  const client = new pg.Client({ connectionString: r.postgres, connectionTimeoutMillis: 5000 });
  client.on('error', () => {});
  try {
    await client.connect();
  } catch (err) {
    await client.end().catch(() => {});
    throw new ConnectFailure(err);
  }
  try {
    // One statement: the rows and their columns are of one snapshot.
    const result = await client.query(`SELECT row_to_json(__r)::text AS j FROM (${sql}) AS __r`);
    const columns = (await client.query(`SELECT * FROM (${sql}) AS __r LIMIT 0`)).fields.map((f) => f.name);
    return { rows: result.rows.map((x) => String(x.j)), columns };
  } finally {
    await client.end().catch(() => {});
  }
}

async function readMysql(r: ReferenceDef): Promise<DbRows> {
  const mysql = await import('mysql2/promise');
  const sql =
    r.query ??
    `SELECT * FROM ${r
      .table!.split('.')
      .map((p) => `\`${p.replaceAll('`', '``')}\``)
      .join('.')}`;
  let db: Awaited<ReturnType<typeof mysql.createConnection>>;
  try {
    db = await mysql.createConnection({ uri: r.mysql, connectTimeout: 5000, supportBigNumbers: true, bigNumberStrings: true, dateStrings: true });
  } catch (err) {
    throw new ConnectFailure(err);
  }
  try {
    const [rows, fields] = await db.query({ sql, rowsAsArray: false });
    const list = rows as Record<string, unknown>[];
    return { rows: list.map((x) => JSON.stringify(x, (_k, v) => (Buffer.isBuffer(v) ? v.toString('base64') : v))), columns: (fields ?? []).map((f) => f.name) };
  } finally {
    await db.end().catch(() => {});
  }
}

/** Loads reference tables `names` into DuckDB (schema sluice_ref), once (sluice test, data tests). */
export async function loadReferences(conn: DuckDBConnection, project: Project, names: Set<string>, log?: Logger): Promise<void> {
  const refs = project.references.filter((r) => names.has(r.name));
  if (refs.length === 0) return;
  await conn.run(`CREATE SCHEMA IF NOT EXISTS ${REF_SCHEMA}`);
  for (const r of refs) {
    const rows = await loadReference(conn, project.dir, r, `${REF_SCHEMA}.${ident(r.name)}`, { connectWindowMs: CONNECT_WINDOW_MS, log });
    log?.info({ reference: r.name, rows, from: origin(r) }, 'reference table loaded');
  }
}

/** The reference tables whose names the models' SQL mentions (as a word). */
export function referencesNamed(project: Project, models: { rendered: { sql: string } }[]): Set<string> {
  return new Set(project.references.filter((r) => models.some((m) => new RegExp(`(^|[^A-Za-z0-9_])${r.name}($|[^A-Za-z0-9_])`, 'i').test(m.rendered.sql))).map((r) => r.name));
}

/** Loads reference tables `names` once and lets the models name them (sluice test). */
export async function useReferences(conn: DuckDBConnection, project: Project, names: Set<string>, log?: Logger): Promise<void> {
  if (names.size === 0) return;
  await loadReferences(conn, project, names, log);
  await conn.run(`SET search_path = 'main,${REF_SCHEMA}'`);
}

/** What the metrics show of a reference table. */
export interface ReferenceState {
  version: number;
  rows: number;
  /** When the version in use was loaded (clock ms). */
  loadedAt: number;
  refreshFailures: number;
}

/**
 * A pipeline's reference tables: loaded at start (a failure stops the run with one line), made
 * visible to the models by name (DuckDB's search_path), and refreshed every refresh_interval.
 * A refresh loads the new version on a connection of its own into `<name>__next`; swap(),
 * called between batches, puts every loaded one in place in one transaction. A refresh that
 * fails (unreachable, a bad query, over max_rows) keeps the version in use, warns and counts.
 */
export class ReferenceTables {
  readonly states = new Map<string, ReferenceState>();
  private readonly ready = new Set<string>();
  /** Rows of each next version loaded, until it is swapped in. */
  private readonly nextRows = new Map<string, number>();
  private readonly timers: NodeJS.Timeout[] = [];
  private readonly loading = new Set<Promise<void>>();
  private closed = false;

  private constructor(
    private readonly conn: DuckDBConnection,
    private readonly refreshConn: DuckDBConnection | undefined,
    private readonly project: Project,
    private readonly log: Logger,
    private readonly now: () => number,
  ) {}

  /**
   * Loads the references `names` (those a pipeline's models and data tests use) into `conn`'s
   * DuckDB and starts their refreshes.
   */
  static async open(instance: DuckDBInstance, conn: DuckDBConnection, project: Project, names: Set<string>, log: Logger, now: () => number = Date.now): Promise<ReferenceTables | undefined> {
    const used = project.references.filter((r) => names.has(r.name));
    if (used.length === 0) return undefined;
    const refreshing = used.some((r) => r.refresh_interval !== undefined);
    const refs = new ReferenceTables(conn, refreshing ? await instance.connect() : undefined, project, log, now);
    await conn.run(`CREATE SCHEMA IF NOT EXISTS ${REF_SCHEMA}`);
    for (const r of used) {
      const rows = await loadReference(conn, project.dir, r, refs.table(r.name), { connectWindowMs: CONNECT_WINDOW_MS, log });
      refs.states.set(r.name, { version: 1, rows, loadedAt: now(), refreshFailures: 0 });
      log.info({ reference: r.name, rows, from: origin(r), refresh: r.refresh_interval ?? 'never' }, 'reference table loaded');
    }
    // A model names a reference as a table: DuckDB looks it up in sluice_ref after main.
    await conn.run(`SET search_path = 'main,${REF_SCHEMA}'`);
    for (const r of used) {
      if (r.refresh_interval === undefined) continue;
      const every = Math.max(100, durationMs(r.refresh_interval));
      const t = setInterval(() => refs.refresh(r), every);
      t.unref();
      refs.timers.push(t);
    }
    return refs;
  }

  private table(name: string, next = false): string {
    return `${REF_SCHEMA}.${ident(next ? `${name}__next` : name)}`;
  }

  /** Loads the next version of `r` (unless one is loading or waiting for its swap). */
  private refresh(r: ReferenceDef): void {
    if (this.closed || this.ready.has(r.name) || this.loading.size > 0) return;
    const job = (async () => {
      const state = this.states.get(r.name)!;
      try {
        const rows = await loadReference(this.refreshConn!, this.project.dir, r, this.table(r.name, true), { connectWindowMs: 0 });
        if (this.closed) return;
        this.ready.add(r.name);
        this.nextRows.set(r.name, rows);
      } catch (err) {
        state.refreshFailures++;
        this.log.warn(
          { reference: r.name, version: state.version, age_s: Math.round((this.now() - state.loadedAt) / 1000), err: maskText(errorMessage(err)) },
          'refreshing a reference table failed; its last version stays in use',
        );
      }
    })();
    this.loading.add(job);
    void job.finally(() => this.loading.delete(job));
  }

  /** Between two batches: puts every reference whose next version is loaded in place, all in one transaction. */
  async swap(): Promise<void> {
    if (this.ready.size === 0) return;
    const names = [...this.ready];
    this.ready.clear();
    await this.conn.run('BEGIN TRANSACTION');
    try {
      for (const n of names) {
        await this.conn.run(`DROP TABLE ${this.table(n)}`);
        await this.conn.run(`ALTER TABLE ${this.table(n, true)} RENAME TO ${ident(n)}`);
      }
      await this.conn.run('COMMIT');
    } catch (err) {
      await this.conn.run('ROLLBACK').catch(() => {});
      throw new SluiceError('INTERNAL', `swapping in a new version of reference table(s) ${names.join(', ')} failed: ${errorMessage(err)}`);
    }
    for (const n of names) {
      const s = this.states.get(n)!;
      s.version++;
      s.loadedAt = this.now();
      s.rows = this.nextRows.get(n) ?? s.rows;
      this.log.info({ reference: n, version: s.version, rows: s.rows }, 'reference table refreshed');
    }
  }

  private reportedFailures = new Map<string, number>();

  /** Sets the reference gauges (version, rows, age) and counts the refresh failures since the last report. */
  report(m: Pick<Metrics, 'referenceVersion' | 'referenceAge' | 'referenceRows' | 'referenceRefreshFailures'>): void {
    for (const [reference, s] of this.states) {
      m.referenceVersion.set({ reference }, s.version);
      m.referenceRows.set({ reference }, s.rows);
      m.referenceAge.set({ reference }, Math.max(0, (this.now() - s.loadedAt) / 1000));
      const before = this.reportedFailures.get(reference) ?? 0;
      if (s.refreshFailures > before) m.referenceRefreshFailures.inc({ reference }, s.refreshFailures - before);
      this.reportedFailures.set(reference, s.refreshFailures);
    }
  }

  /** Stops the refreshes (a load in flight is awaited and dropped). */
  async close(): Promise<void> {
    this.closed = true;
    for (const t of this.timers) clearInterval(t);
    await Promise.allSettled([...this.loading]);
    this.refreshConn?.closeSync();
  }
}
