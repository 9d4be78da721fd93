import { randomUUID } from 'node:crypto';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { DuckDBConnection } from '@duckdb/node-api';
import { z } from 'zod';
import { SluiceError, errorMessage } from '../../errors.js';
import { fileList, ident, lit } from '../../sql/quote.js';
import { MSG_COL } from '../../sql/analyze.js';
import { crashPoint } from '../../util/crash-point.js';
import { fsyncDir, fsyncFile, isTempName } from '../../util/fs-durable.js';
import type { ConnectorContext, Sink, SinkWrite } from '../types.js';

export const parquetSinkSchema = z
  .object({
    type: z.literal('parquet'),
    path: z.string().min(1).describe('output directory; files land in <path>/<model>/'),
    partition_by: z
      .union([z.string().min(1), z.array(z.string().min(1)).min(1)])
      .optional()
      .transform((v) => (v === undefined ? [] : Array.isArray(v) ? v : [v]))
      .describe('model columns to partition by, as Hive key=value/ directories'),
    compression: z.enum(['zstd', 'snappy', 'gzip', 'lz4', 'brotli', 'uncompressed']).default('zstd'),
    row_group_size: z.number().int().positive().optional(),
    dedupe_key: z.string().min(1).optional().describe('a model column identifying a message; rows of a redelivered message whose key was already written are dropped'),
    dedupe_window_seconds: z.number().positive().default(86_400).describe('how long written keys are remembered for dedupe_key'),
  })
  .strict();
const STAGING_DIR = '.staging';
/** Keys already written, per model, for dedupe_key: `<path>/.sluice-keys/<model>/<flush>.keys` (Parquet). */
const KEYS_DIR = '.sluice-keys';

export type ParquetSinkConfig = z.output<typeof parquetSinkSchema>;

/**
 * Parquet files on local disk. Unpartitioned flushes become `<model>/<name>.parquet`, written
 * to a dot-temp file, fsynced and renamed. Partitioned flushes are staged in <path>/.staging/
 * and committed with one rename to `<model>/<name>/key=value/...`. Names come from source
 * positions, so a replay rewrites the same file instead of adding one.
 */
export class ParquetSink implements Sink {
  private ok = true;
  readonly root: string;

  constructor(
    readonly cfg: ParquetSinkConfig,
    private readonly ctx: ConnectorContext,
  ) {
    this.root = path.resolve(ctx.projectDir, cfg.path);
  }

  async connect(): Promise<void> {
    await fsp.mkdir(this.root, { recursive: true });
    await this.sweep();
  }

  /** Removes temp files and staging directories left by a write that crashed. */
  private async sweep(): Promise<void> {
    // Only this worker's staging: other workers may share the output directory.
    await fsp.rm(this.stagingRoot(), { recursive: true, force: true });
    let models: string[];
    try {
      models = await fsp.readdir(this.root);
    } catch {
      return;
    }
    for (const m of models) {
      if (m === STAGING_DIR || m === KEYS_DIR) continue;
      const dir = path.join(this.root, m);
      let entries: string[];
      try {
        entries = await fsp.readdir(dir);
      } catch {
        continue;
      }
      for (const e of entries) {
        if (isTempName(e)) {
          await fsp.rm(path.join(dir, e), { recursive: true, force: true });
          this.ctx.log.info({ file: path.join(dir, e) }, 'removed leftover of an interrupted write');
        }
      }
    }
  }

  async write(w: SinkWrite, db: DuckDBConnection): Promise<void> {
    try {
      await this.writeInner(w, db);
      this.ok = true;
    } catch (err) {
      this.ok = false;
      throw new SluiceError('SINK', `parquet sink: writing ${w.model}/${w.name} failed: ${errorMessage(err)}`, {
        cause: err,
        retryable: true,
      });
    }
  }

  private async writeInner(w: SinkWrite, db: DuckDBConnection): Promise<void> {
    const dir = path.join(this.root, w.model);
    await fsp.mkdir(dir, { recursive: true });
    const select = this.cfg.dedupe_key ? await this.dedupeSelect(w, this.cfg.dedupe_key) : `SELECT * EXCLUDE (${MSG_COL}) FROM read_parquet(${fileList(w.segments)}, union_by_name = true)`;
    const opts = [`FORMAT parquet`, `COMPRESSION ${this.cfg.compression}`];
    if (this.cfg.row_group_size) opts.push(`ROW_GROUP_SIZE ${this.cfg.row_group_size}`);
    if (this.cfg.partition_by.length === 0) {
      const final = path.join(dir, `${w.name}.parquet`);
      const tmp = path.join(dir, `.${w.name}.parquet.tmp`);
      await db.run(`COPY (${select}) TO ${lit(tmp)} (${opts.join(', ')})`);
      crashPoint('sink-temp-written');
      await fsyncFile(tmp);
      await fsp.rename(tmp, final);
      await fsyncDir(dir);
      await this.rememberKeys(w, db, lit(final));
      return;
    }
    const final = path.join(dir, w.name);
    // Staged outside <path>/<model>/ so a reader globbing that tree never sees a partial flush.
    const stagingRoot = this.stagingRoot();
    await fsp.mkdir(stagingRoot, { recursive: true });
    const staging = path.join(stagingRoot, `${w.model}-${w.name}-${randomUUID().slice(0, 8)}`);
    opts.push(`PARTITION_BY (${this.cfg.partition_by.map(ident).join(', ')})`, `FILENAME_PATTERN ${lit('data_{i}')}`);
    await db.run(`COPY (${select}) TO ${lit(staging)} (${opts.join(', ')})`);
    await fsyncTree(staging);
    crashPoint('sink-staged');
    try {
      await fsp.rename(staging, final);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw err;
      // A replay of a flush that already committed: the rows are the same, keep the committed copy.
      await fsp.rm(staging, { recursive: true, force: true });
    }
    await fsyncDir(dir);
    await this.rememberKeys(w, db, lit(path.join(final, '**', '*.parquet')));
  }

  private stagingRoot(): string {
    return path.join(this.root, STAGING_DIR, this.ctx.workerId || 'worker');
  }

  private keysDir(model: string): string {
    return path.join(this.root, KEYS_DIR, model);
  }

  /**
   * Rows of a flush minus messages already written: a key seen in an earlier flush (kept
   * for dedupe_window_seconds, shared by every worker writing here) or earlier in this flush
   * from another message. Rows with a NULL key are always kept.
   */
  private async dedupeSelect(w: SinkWrite, key: string): Promise<string> {
    const parts = w.segments.map((f, i) => `SELECT *, ${w.seqs[i]}::BIGINT AS __sluice_seq FROM read_parquet(${lit(f)})`);
    const rows = parts.join(' UNION ALL BY NAME ');
    const seen = await this.seenKeyFiles(w.model, w.name);
    const k = ident(key);
    const notSeen = seen.length ? `WHERE ${k} IS NULL OR ${k} NOT IN (SELECT ${k} FROM read_parquet(${fileList(seen)}) WHERE ${k} IS NOT NULL)` : '';
    return `SELECT * EXCLUDE (${MSG_COL}, __sluice_seq) FROM (${rows}) ${notSeen}
      QUALIFY ${k} IS NULL OR dense_rank() OVER (PARTITION BY ${k} ORDER BY __sluice_seq, ${MSG_COL}) = 1`;
  }

  /** Key files of earlier flushes within the window (not this flush's own, when replayed). */
  private async seenKeyFiles(model: string, name: string): Promise<string[]> {
    const dir = this.keysDir(model);
    let names: string[];
    try {
      names = await fsp.readdir(dir);
    } catch {
      return [];
    }
    const horizon = Date.now() - this.cfg.dedupe_window_seconds * 1000;
    const out: string[] = [];
    for (const n of names) {
      if (!n.endsWith('.keys') || n === `${name}.keys`) continue;
      const f = path.join(dir, n);
      const st = await fsp.stat(f).catch(() => undefined);
      if (!st) continue;
      if (st.mtimeMs < horizon) await fsp.rm(f, { force: true });
      else out.push(f);
    }
    return out.sort();
  }

  /** Records the keys a committed flush wrote, read back from the committed files. */
  private async rememberKeys(w: SinkWrite, db: DuckDBConnection, written: string): Promise<void> {
    if (!this.cfg.dedupe_key) return;
    const dir = this.keysDir(w.model);
    await fsp.mkdir(dir, { recursive: true });
    const file = path.join(dir, `${w.name}.keys`);
    const tmp = path.join(dir, `.${w.name}.keys.tmp`);
    const k = ident(this.cfg.dedupe_key);
    await db.run(`COPY (SELECT DISTINCT ${k} FROM read_parquet(${written}) WHERE ${k} IS NOT NULL) TO ${lit(tmp)} (FORMAT parquet)`);
    await fsyncFile(tmp);
    await fsp.rename(tmp, file);
    await fsyncDir(dir);
  }

  healthy(): boolean {
    return this.ok;
  }

  async close(): Promise<void> {}
}

async function fsyncTree(dir: string): Promise<void> {
  for (const e of await fsp.readdir(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) await fsyncTree(p);
    else await fsyncFile(p);
  }
  await fsyncDir(dir);
}
