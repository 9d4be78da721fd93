import { randomUUID } from 'node:crypto';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { DuckDBConnection } from '@duckdb/node-api';
import { SluiceError, errorMessage } from '../../errors.js';
import { fileList, ident, lit } from '../../sql/quote.js';
import { crashPoint } from '../../util/crash-point.js';
import type { ColumnInfo, ConnectorContext, Sink, SinkWrite } from '../types.js';
import { isS3Path, type FileSinkConfig } from './file-sink-config.js';
import { filesUnder, LocalStorage, type FileStorage } from './storage.js';

/** Keys already written, per model, for dedupe_key: `<path>/.sluice-keys/<model>/<flush>.keys` (Parquet). */
const KEYS_DIR = '.sluice-keys';

/** What differs between the file formats: the extension and DuckDB's COPY options. */
interface FileFormat {
  ext: string;
  options: string[];
  /** DuckDB can write this format with PARTITION_BY (JSON cannot: such trees are transcoded from Parquet). */
  partitions: boolean;
  /** Nested values (structs, lists, maps) are written as JSON text. */
  nestedAsJson: boolean;
}

function formatOf(cfg: FileSinkConfig): FileFormat {
  const gz = cfg.compression === 'gzip';
  switch (cfg.type) {
    case 'parquet':
      return {
        ext: 'parquet',
        options: ['FORMAT parquet', `COMPRESSION ${cfg.compression}`, ...(cfg.row_group_size ? [`ROW_GROUP_SIZE ${cfg.row_group_size}`] : [])],
        partitions: true,
        nestedAsJson: false,
      };
    case 'jsonl':
      return { ext: gz ? 'jsonl.gz' : 'jsonl', options: ['FORMAT json', `COMPRESSION ${gz ? 'gzip' : 'none'}`], partitions: false, nestedAsJson: false };
    case 'csv':
      // RFC 4180: a header row, CRLF line ends, fields quoted with " when they hold , " CR or LF.
      return {
        ext: gz ? 'csv.gz' : 'csv',
        options: ['FORMAT csv', 'HEADER true', `NEW_LINE ${lit('\r\n')}`, `COMPRESSION ${gz ? 'gzip' : 'none'}`],
        partitions: true,
        nestedAsJson: true,
      };
  }
}

/** A directory level of the output, computed from the rows: `<name>=<value>/`. */
interface DirKey {
  name: string;
  expr: string;
}

/**
 * A model's flushes as Parquet, JSON Lines or CSV files, on local disk or S3-compatible
 * storage. Unpartitioned flushes become `<model>/<name>.<ext>`; partitioned ones
 * `<model>/<name>/key=value/.../data_0.<ext>`. Files are produced locally by DuckDB and then
 * published by the storage (rename on disk, upload to S3). Names come from source positions,
 * so a replay rewrites the same files instead of adding some.
 */
export class FileSink implements Sink {
  readonly idempotent = true;
  private ok = true;
  private readonly format: FileFormat;

  constructor(
    readonly cfg: FileSinkConfig,
    readonly storage: FileStorage,
  ) {
    this.format = formatOf(cfg);
  }

  static async create(cfg: FileSinkConfig, ctx: ConnectorContext): Promise<FileSink> {
    if (isS3Path(cfg.path)) {
      const { S3Storage } = await import('../s3/s3-storage.js');
      return new FileSink(cfg, new S3Storage(cfg, ctx));
    }
    return new FileSink(cfg, new LocalStorage(path.resolve(ctx.projectDir, cfg.path), ctx.workerId, ctx.log));
  }

  async connect(): Promise<void> {
    await this.storage.connect();
  }

  async write(w: SinkWrite, db: DuckDBConnection): Promise<void> {
    try {
      await this.writeInner(w, db);
      this.ok = true;
    } catch (err) {
      this.ok = false;
      throw new SluiceError('SINK', `${this.cfg.type} sink: writing ${w.model}/${w.name} to ${this.storage.where} failed: ${errorMessage(err)}`, {
        cause: err,
        retryable: true,
        permanent: err instanceof SluiceError && err.permanent,
      });
    }
  }

  private async writeInner(w: SinkWrite, db: DuckDBConnection): Promise<void> {
    const cols = w.columns;
    let rows = `SELECT ${cols.map((c) => ident(c.name)).join(', ')} FROM ${w.relation}`;
    // With dedupe_key the kept rows depend on key files other workers may add meanwhile:
    // computed once, so the files and the remembered keys agree.
    const table = this.cfg.dedupe_key ? `__sluice_flush_${randomUUID().replaceAll('-', '')}` : undefined;
    if (table) {
      await db.run(`CREATE TEMP TABLE ${table} AS ${await this.dedupeSelect(w, this.cfg.dedupe_key!)}`);
      rows = `SELECT * FROM ${table}`;
    }
    try {
      const keys = this.dirKeys(cols, w);
      const select = this.project(rows, cols, keys);
      if (keys.length === 0) {
        const rel = `${w.model}/${w.name}.${this.format.ext}`;
        const local = await this.storage.scratch(rel, false);
        await db.run(`COPY (${select}) TO ${lit(local)} (${this.format.options.join(', ')})`);
        crashPoint('sink-temp-written');
        await this.storage.commitFile(local, rel);
      } else {
        const rel = `${w.model}/${w.name}`;
        const local = await this.storage.scratch(rel, true);
        await this.copyPartitioned(db, select, keys, local);
        crashPoint('sink-staged');
        await this.storage.commitTree(local, rel);
      }
      if (table) await this.rememberKeys(w, db, table);
    } finally {
      if (table) await db.run(`DROP TABLE IF EXISTS ${table}`);
    }
  }

  private async copyPartitioned(db: DuckDBConnection, select: string, keys: DirKey[], dir: string): Promise<void> {
    const by = `PARTITION_BY (${keys.map((k) => ident(k.name)).join(', ')}), FILENAME_PATTERN ${lit('data_{i}')}`;
    if (this.format.partitions) {
      await db.run(`COPY (${select}) TO ${lit(dir)} (${this.format.options.join(', ')}, FILE_EXTENSION ${lit(this.format.ext)}, ${by})`);
    } else {
      await db.run(`COPY (${select}) TO ${lit(dir)} (FORMAT parquet, COMPRESSION uncompressed, ${by})`);
      for (const rel of await filesUnder(dir).catch(() => [])) {
        const f = path.join(dir, rel);
        const out = `${f.slice(0, -'.parquet'.length)}.${this.format.ext}`;
        await db.run(`COPY (SELECT * FROM read_parquet(${lit(f)}, hive_partitioning = false)) TO ${lit(out)} (${this.format.options.join(', ')})`);
        await fsp.rm(f);
      }
    }
    // A flush whose rows were all dropped (dedupe) still commits, as an empty tree.
    await fsp.mkdir(dir, { recursive: true });
  }

  /** The directory levels: year/month/day of the time column (hive_date), then partition_by. */
  private dirKeys(cols: ColumnInfo[], w: SinkWrite): DirKey[] {
    const keys: DirKey[] = [];
    if (this.cfg.layout === 'hive_date') {
      const t = this.eventTime(cols, w);
      keys.push({ name: 'year', expr: `strftime(${t}, '%Y')` }, { name: 'month', expr: `strftime(${t}, '%m')` }, { name: 'day', expr: `strftime(${t}, '%d')` });
    }
    for (const p of this.cfg.partition_by) {
      if (p.column && !cols.some((c) => c.name === p.column)) throw this.missing(w, p.column, 'partition_by', cols);
      keys.push({ name: p.name, expr: p.expr });
    }
    return keys;
  }

  /** The time column as a UTC TIMESTAMP; text is read as ISO 8601 (NULL when it does not parse). */
  private eventTime(cols: ColumnInfo[], w: SinkWrite): string {
    const name = this.cfg.time_column!;
    const col = cols.find((c) => c.name === name);
    if (!col) throw this.missing(w, name, 'time_column', cols);
    const c = ident(name);
    if (col.type === 'TIMESTAMP WITH TIME ZONE') return `timezone('UTC', ${c})`;
    if (col.type.startsWith('TIMESTAMP') || col.type === 'DATE') return c;
    // ISO 8601 text with an offset is converted to UTC; without one it is taken as UTC.
    if (col.type === 'VARCHAR' || col.type === 'JSON') {
      return `CASE WHEN regexp_matches(${c}, '\\d\\d:\\d\\d(:\\d\\d(\\.\\d*)?)?\\s*([Zz]|[+-]\\d\\d(:?\\d\\d)?)$') THEN timezone('UTC', try_cast(${c} AS TIMESTAMPTZ)) ELSE try_cast(${c} AS TIMESTAMP) END`;
    }
    throw new SluiceError('SINK', `time_column "${name}" of model ${w.model} is ${col.type}; layout: hive_date needs a TIMESTAMP, TIMESTAMPTZ, DATE or ISO 8601 text column`, { permanent: true });
  }

  private missing(w: SinkWrite, column: string, key: string, cols: ColumnInfo[]): SluiceError {
    return new SluiceError('SINK', `${key} names "${column}", which model ${w.model} does not produce (its columns: ${cols.map((c) => c.name).join(', ')})`, { permanent: true });
  }

  /** The rows with the directory keys added (replacing a model column of the same name) and nested values as JSON where the format needs text. */
  private project(rows: string, cols: ColumnInfo[], keys: DirKey[]): string {
    const replace = new Map<string, string>();
    const extra: string[] = [];
    const have = new Set(cols.map((c) => c.name));
    if (this.format.nestedAsJson) {
      for (const c of cols) if (isNested(c.type)) replace.set(c.name, `to_json(${ident(c.name)})::VARCHAR`);
    }
    for (const k of keys) {
      if (k.expr === ident(k.name)) continue;
      if (have.has(k.name)) replace.set(k.name, k.expr);
      else extra.push(`${k.expr} AS ${ident(k.name)}`);
    }
    if (replace.size === 0 && extra.length === 0) return rows;
    const rep = replace.size ? ` REPLACE (${[...replace].map(([n, e]) => `${e} AS ${ident(n)}`).join(', ')})` : '';
    return `SELECT *${rep}${extra.map((e) => `, ${e}`).join('')} FROM (${rows})`;
  }

  /**
   * Rows of a flush minus messages already written: a key seen in an earlier flush (kept
   * for dedupe_window_seconds, shared by every worker writing here) or earlier in this flush
   * from another message. Rows with a NULL key are always kept.
   */
  private async dedupeSelect(w: SinkWrite, key: string): Promise<string> {
    const seen = await this.seenKeyFiles(w.model, w.name);
    const k = ident(key);
    const notSeen = seen.length ? `WHERE ${k} IS NULL OR ${k} NOT IN (SELECT ${k} FROM read_parquet(${fileList(seen)}) WHERE ${k} IS NOT NULL)` : '';
    return `SELECT ${w.columns.map((c) => ident(c.name)).join(', ')} FROM ${w.relation} ${notSeen}
      QUALIFY ${k} IS NULL OR dense_rank() OVER (PARTITION BY ${k} ORDER BY ${ident(w.order.message)}) = 1`;
  }

  /** Key files of earlier flushes within the window (not this flush's own, when replayed). */
  private async seenKeyFiles(model: string, name: string): Promise<string[]> {
    const dir = `${KEYS_DIR}/${model}`;
    const horizon = Date.now() - this.cfg.dedupe_window_seconds * 1000;
    const out: string[] = [];
    for (const e of await this.storage.list(dir)) {
      if (!e.name.endsWith('.keys') || e.name === `${name}.keys`) continue;
      if (e.mtimeMs < horizon) await this.storage.remove(`${dir}/${e.name}`);
      else out.push(await this.storage.readable(`${dir}/${e.name}`));
    }
    return out.sort();
  }

  /** Records the keys a committed flush wrote. */
  private async rememberKeys(w: SinkWrite, db: DuckDBConnection, table: string): Promise<void> {
    const rel = `${KEYS_DIR}/${w.model}/${w.name}.keys`;
    const local = await this.storage.scratch(rel, false);
    const k = ident(this.cfg.dedupe_key!);
    await db.run(`COPY (SELECT DISTINCT ${k} FROM ${table} WHERE ${k} IS NOT NULL) TO ${lit(local)} (FORMAT parquet)`);
    await this.storage.commitFile(local, rel);
  }

  healthy(): boolean {
    return this.ok;
  }

  async close(): Promise<void> {
    await this.storage.close();
  }
}

function isNested(type: string): boolean {
  return /^(STRUCT|MAP|UNION)\(/.test(type) || /\[\d*\]$/.test(type);
}
