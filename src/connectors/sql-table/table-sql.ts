import { execFile } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import type { DuckDBConnection } from '@duckdb/node-api';
import { ident, lit } from '../../sql/quote.js';
import type { ColumnInfo, SinkWrite } from '../types.js';
import { sleep } from '../../util/retry.js';

const execFileAsync = promisify(execFile);

/** A column of a target table as the database spells its type. */
export interface TableColumn {
  name: string;
  type: string;
}

/** What differs between a target table and what a model needs. */
export interface TableDiff {
  summary: string;
  destructive: boolean;
  /** Statements that make the change, in order. */
  sql: string[];
  kind: 'create' | 'add' | 'drop' | 'retype' | 'index';
}

/** How one database spells tables, types and DDL: the part of a SQL-table sink that differs. */
export interface TableDialect {
  /** `postgres`, `mysql`: used in messages. */
  readonly label: string;
  quote(name: string): string;
  /** The database type for a DuckDB type; `key` columns may need a bounded type. */
  columnType(duckType: string, key: boolean): string;
  /** True when a column of type `existing` can take values of type `wanted` as they are. */
  compatible(existing: string, wanted: string): boolean;
  createTable(table: string, columns: TableColumn[], key: string[], strategy: string): string[];
  addColumn(table: string, col: TableColumn): string;
  dropColumn(table: string, name: string): string;
  retypeColumn(table: string, col: TableColumn): string;
  /** A merge needs a unique index on the key; undefined when the table has one. */
  keyIndex?(table: string, key: string[], indexed: boolean): string | undefined;
}

/** The columns sluice adds to an scd2 table (DuckDB types). */
export const SCD2_COLUMNS: ColumnInfo[] = [
  { name: 'valid_from', type: 'TIMESTAMP WITH TIME ZONE' },
  { name: 'valid_to', type: 'TIMESTAMP WITH TIME ZONE' },
  { name: 'is_current', type: 'BOOLEAN' },
  { name: 'row_hash', type: 'VARCHAR' },
];

/** The table columns a model's rows need with a strategy. */
export function wantedColumns(d: TableDialect, model: ColumnInfo[], key: string[], strategy: string): TableColumn[] {
  const cols = strategy === 'scd2' ? [...model.filter((c) => !SCD2_COLUMNS.some((s) => s.name === c.name)), ...SCD2_COLUMNS] : model;
  return cols.map((c) => ({ name: c.name, type: d.columnType(c.type, key.includes(c.name)) }));
}

/**
 * The changes from `existing` (undefined: no table) to `wanted`. Missing tables and columns
 * are additive; columns the model no longer has and incompatible types are destructive.
 */
export function diffTable(
  d: TableDialect,
  table: string,
  display: string,
  wanted: TableColumn[],
  existing: TableColumn[] | undefined,
  opts: { key: string[]; strategy: string; keyIndexed?: boolean },
): TableDiff[] {
  if (!existing) {
    const cols = wanted.map((c) => `${c.name} ${c.type}`).join(', ');
    return [{ kind: 'create', summary: `+ create table ${display} (${cols})`, destructive: false, sql: d.createTable(table, wanted, opts.key, opts.strategy) }];
  }
  const out: TableDiff[] = [];
  const have = new Map(existing.map((c) => [c.name, c.type]));
  for (const c of wanted) {
    const t = have.get(c.name);
    if (t === undefined) out.push({ kind: 'add', summary: `+ add column ${display}.${c.name} ${c.type}`, destructive: false, sql: [d.addColumn(table, c)] });
    else if (!d.compatible(t, c.type)) out.push({ kind: 'retype', summary: `~ retype column ${display}.${c.name} ${t} -> ${c.type}`, destructive: true, sql: [d.retypeColumn(table, c)] });
  }
  for (const c of existing) {
    if (!wanted.some((w) => w.name === c.name))
      out.push({ kind: 'drop', summary: `- drop column ${display}.${c.name} (${c.type}): the model no longer produces it`, destructive: true, sql: [d.dropColumn(table, c.name)] });
  }
  if (opts.strategy === 'merge' && d.keyIndex) {
    const sql = d.keyIndex(table, opts.key, opts.keyIndexed ?? false);
    if (sql) out.push({ kind: 'index', summary: `+ create unique index on ${display} (${opts.key.join(', ')}) for merge`, destructive: false, sql: [sql] });
  }
  return out;
}

/** Lists, structs, maps and unions: sent as JSON text. */
export function isNested(duckType: string): boolean {
  return /\]$/.test(duckType) || /^(STRUCT|MAP|UNION)\(/.test(duckType);
}

/**
 * The SELECT giving a flush's rows for a database: `exprs` per column (as `exportExpr` makes
 * them). With `lastPerKey`, only the last row of each key in arrival order (a flush's later
 * messages win). With `ord`, an `_sluice_ord` column numbering the rows in arrival order.
 */
export function flushSelect(w: SinkWrite, exprs: string[], opts: { lastPerKey?: string[]; ord?: boolean } = {}): string {
  const ord = ident(w.order.row);
  const cols = [...exprs, ...(opts.ord ? [`${ord} AS _sluice_ord`] : [])].join(', ');
  if (!opts.lastPerKey?.length) return `SELECT ${cols} FROM ${w.relation}`;
  const part = opts.lastPerKey.map(ident).join(', ');
  return `SELECT ${cols} FROM ${w.relation} QUALIFY row_number() OVER (PARTITION BY ${part} ORDER BY ${ord} DESC) = 1`;
}

/**
 * What a flush holds, exactly enough to tell a replay (the same rows again) from other rows
 * under the same name (a new WAL over the same source positions): the row count and the sum
 * of the hashes of the rows' model columns.
 */
export async function flushFingerprint(db: DuckDBConnection, w: SinkWrite): Promise<string> {
  const r = await db.runAndReadAll(`SELECT count(*), sum(hash(${w.columns.map((c) => ident(c.name)).join(', ')})::HUGEINT) FROM ${w.relation}`);
  const [n, sum] = r.getRows()[0];
  return `${String(n)}:${String(sum ?? 0)}`;
}

/** Rows with a NULL in a key column (they cannot be merged), and whether a key is there more than once. */
export async function keyStats(db: DuckDBConnection, w: SinkWrite, key: string[]): Promise<{ nullKeys: number; duplicates: boolean }> {
  const isNull = key.map((k) => `${ident(k)} IS NULL`).join(' OR ');
  const tuple = `{${key.map((k, i) => `'k${i}': ${ident(k)}`).join(', ')}}`;
  const r = await db.runAndReadAll(`SELECT count(*) FILTER (WHERE ${isNull}), count(*) > count(DISTINCT ${tuple}) FROM ${w.relation}`);
  const [nulls, dup] = r.getRows()[0];
  return { nullKeys: Number(nulls), duplicates: Boolean(dup) };
}

/**
 * Streams `select` as CSV (no header, NULL as an unquoted empty field unless `options` say
 * otherwise, empty strings quoted) to `consume`, which reads the file path it is given: DuckDB
 * writes into a named pipe while the database client reads it, so the export and the load run
 * at once. Either side failing makes the other finish (a reader gets EOF, a writer is drained),
 * and the first error is thrown.
 */
export async function pipeCsv(db: DuckDBConnection, select: string, options: string, consume: (file: string) => Promise<void>): Promise<void> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'sluice-rows-'));
  const fifo = path.join(dir, 'rows.csv');
  try {
    await execFileAsync('mkfifo', ['-m', '600', fifo]);
    let readerDone = false;
    const reading = consume(fifo).finally(() => {
      readerDone = true;
    });
    const writing = db.run(`COPY (${select}) TO ${lit(fifo)} (FORMAT csv, HEADER false, USE_TMP_FILE false${options ? `, ${options}` : ''})`);
    const [w, r] = await Promise.allSettled([
      writing.catch(async (err: unknown) => {
        await releaseReader(fifo, () => readerDone);
        throw err;
      }),
      reading.catch(async (err: unknown) => {
        await drainWriter(fifo, writing);
        throw err;
      }),
    ]);
    if (w.status === 'rejected') throw w.reason;
    if (r.status === 'rejected') throw r.reason;
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
}

/** The writer failed: a reader waiting in open() or read() gets EOF (opening the write end once). */
async function releaseReader(fifo: string, done: () => boolean): Promise<void> {
  while (!done()) {
    try {
      const fh = await fsp.open(fifo, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK);
      await fh.close();
      return;
    } catch (err) {
      // ENXIO: no reader has opened it yet; it may be about to.
      if ((err as NodeJS.ErrnoException).code !== 'ENXIO') return;
      await sleep(20);
    }
  }
}

/** The reader failed: the writer is let finish into a reader that discards (never blocks, never sees EOF). */
async function drainWriter(fifo: string, writing: Promise<unknown>): Promise<void> {
  const fd = fs.openSync(fifo, fs.constants.O_RDWR | fs.constants.O_NONBLOCK);
  const drain = new net.Socket({ fd, readable: true, writable: false });
  drain.on('error', () => {});
  drain.resume();
  try {
    await writing.catch(() => {});
  } finally {
    drain.destroy();
  }
}
