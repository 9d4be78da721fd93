import fsp from 'node:fs/promises';
import path from 'node:path';
import type { DuckDBConnection } from '@duckdb/node-api';
import { MSG_COL, WINDOW_COLUMNS as W } from '../sql/analyze.js';
import { fileList, ident, lit } from '../sql/quote.js';
import { MODEL_SCHEMA } from '../sql/template.js';
import { VIEW_ROWS, type ViewQuery } from '../sql/views.js';
import { fsyncDir, fsyncFile, isTempName } from '../util/fs-durable.js';
import type { Clock } from '../util/clock.js';
import type { MessageFailure } from './decoder.js';
import { LocalStateOperator } from './local-state.js';
import { promote } from './state-tables.js';
import type { OperatorRun, WindowCheckpoint } from './windows.js';

// A continuously updated aggregate (see sql/views.ts). The state is the input rows (W.key<i>:
// the group keys; W.time: when, on the wall clock (ms), the row was added). Each batch emits, for
// every group it adds rows to, the model's aggregation over all of that group's rows: one current
// row per changed group, for a sink that upserts. With `state_ttl`, a group that has had no row
// for that long (wall clock) is let go: its next row starts it again (only the rows after its
// last gap longer than the ttl count, and a compaction drops the others). State is durable as a
// windowed model's: each batch's rows as a Parquet file in the WAL directory before the WAL
// commit, compacted into one every COMPACT_AFTER files.

const COMPACT_AFTER = 16;

interface Pending {
  added: number;
  groups: number;
  staged?: { file: string; compact: boolean };
  now: number;
}

export class ViewOperator extends LocalStateOperator {
  private readonly state: string;
  private readonly fresh: string;
  private readonly live: string;
  private exists = false;
  private pending?: Pending;
  private ttlMs = 0;
  /** Rows in the state after the last commit (metrics). */
  private rows = 0;
  readonly counts = { late: {} as Record<string, number>, groups: 0 };

  constructor(
    private readonly conn: DuckDBConnection,
    readonly model: string,
    readonly v: ViewQuery,
    private readonly stateTtl: string | undefined,
    private readonly clock: Clock,
  ) {
    super('a materialised view');
    const t = (s: string) => `sluice_state.${ident(`${model}__${s}`)}`;
    this.state = t('rows');
    this.fresh = t('rows_new');
    this.live = t('rows_live');
  }

  async init(): Promise<void> {
    await this.conn.run('CREATE SCHEMA IF NOT EXISTS sluice_state');
    if (this.stateTtl) {
      const r = await this.conn.runAndReadAll(`SELECT epoch_ms(CAST(INTERVAL ${lit(this.stateTtl)} AS INTERVAL))`);
      this.ttlMs = Number(r.getRows()[0][0]);
    }
  }

  beginBatch(): void {
    this.pending = undefined;
  }

  private get keys(): string[] {
    return this.v.keys.map((_, i) => `${W.key}${i}`);
  }

  /** Writes the current row of every group the batch adds rows to (sluice_model.<model>); the state changes at commit(). */
  async run(opts: OperatorRun): Promise<{ refused?: MessageFailure[] }> {
    const model = `${MODEL_SCHEMA}.${ident(this.model)}`;
    if ((opts.closeAll || opts.tick) && !opts.input) {
      // A view holds nothing back: its rows were written as the groups changed.
      await this.conn.run(`DROP TABLE IF EXISTS ${model}`);
      return {};
    }
    const q = ident(this.v.qualifier);
    const now = this.clock.now();
    const keys = this.v.keys.map((k, i) => `${k} AS ${W.key}${i}`);
    await this.conn.run(`CREATE OR REPLACE TABLE ${this.fresh} AS SELECT ${q}.*, ${[...keys, `${now}::BIGINT AS ${W.time}`].join(', ')} FROM (${this.v.input}) AS ${q}`);
    const added = Number((await this.conn.runAndReadAll(`SELECT count(*) FROM ${this.fresh}`)).getRows()[0][0]);
    const all = this.exists ? `(SELECT * FROM ${this.state} UNION ALL BY NAME SELECT * EXCLUDE (${MSG_COL}) FROM ${this.fresh})` : `(SELECT * EXCLUDE (${MSG_COL}) FROM ${this.fresh})`;
    const changed =
      this.keys.length === 0 ? `(SELECT count(*) FROM ${this.fresh}) > 0` : `EXISTS (SELECT 1 FROM ${this.fresh} f WHERE ${this.keys.map((k) => `f.${k} IS NOT DISTINCT FROM r.${k}`).join(' AND ')})`;
    await this.conn.run(`CREATE OR REPLACE TEMP VIEW ${VIEW_ROWS} AS ${this.current(`SELECT * FROM ${all} r WHERE ${changed}`)}`);
    const msg = opts.partitions.at(-1)?.hi ?? 0;
    // No row for the view in the batch: no group changed (an aggregate without GROUP BY would give a row over none).
    await this.conn.run(`CREATE OR REPLACE TABLE ${model} AS SELECT *, ${msg}::BIGINT AS ${MSG_COL} FROM (${this.v.emit})${added === 0 ? ' WHERE false' : ''}`);
    const groups = Number((await this.conn.runAndReadAll(`SELECT count(*) FROM ${model}`)).getRows()[0][0]);
    this.pending = { added, groups, now };
    return {};
  }

  /**
   * The rows of `rel` that count: with state_ttl, those of each group's last stretch without a
   * gap longer than the ttl (a group idle for longer started again at its next row).
   */
  private current(rel: string): string {
    if (this.ttlMs <= 0) return rel;
    const part = this.keys.length ? `PARTITION BY ${this.keys.join(', ')}` : '';
    return `SELECT * EXCLUDE (__prev, __start) FROM (
      SELECT *, max(CASE WHEN __prev IS NULL OR ${W.time} - __prev > ${this.ttlMs} THEN ${W.time} END) OVER (${part}) AS __start
      FROM (SELECT *, lag(${W.time}) OVER (${part} ORDER BY ${W.time}) AS __prev FROM (${rel}))) WHERE ${W.time} >= __start`;
  }

  async stage(seq: number, dir: string): Promise<WindowCheckpoint> {
    const p = this.pending;
    if (!p || p.added === 0) return this.checkpoint();
    await fsp.mkdir(dir, { recursive: true });
    const compact = this.files.length + 1 >= COMPACT_AFTER;
    const name = `${String(seq).padStart(12, '0')}${compact ? '-state' : ''}.parquet`;
    const tmp = path.join(dir, `.${name}.tmp`);
    if (compact) {
      const all = this.exists ? `SELECT * FROM ${this.state} UNION ALL BY NAME SELECT * EXCLUDE (${MSG_COL}) FROM ${this.fresh}` : `SELECT * EXCLUDE (${MSG_COL}) FROM ${this.fresh}`;
      await this.conn.run(`CREATE OR REPLACE TABLE ${this.live} AS ${this.compacted(all, p.now)}`);
      await this.conn.run(`COPY ${this.live} TO ${lit(tmp)} (FORMAT parquet, COMPRESSION lz4_raw)`);
    } else {
      await this.conn.run(`COPY (SELECT * EXCLUDE (${MSG_COL}) FROM ${this.fresh}) TO ${lit(tmp)} (FORMAT parquet, COMPRESSION lz4_raw)`);
    }
    await fsyncFile(tmp);
    await fsp.rename(tmp, path.join(dir, name));
    await fsyncDir(dir);
    p.staged = { file: name, compact };
    return { fired: null, parts: {}, files: compact ? [name] : [...this.files, name] };
  }

  /** With state_ttl, at a compaction: what counts of `all`, less the groups with no row within the ttl before `now`. */
  private compacted(all: string, now: number): string {
    if (this.ttlMs <= 0) return all;
    const part = this.keys.length ? `PARTITION BY ${this.keys.join(', ')}` : '';
    return `SELECT * FROM (${this.current(all)}) QUALIFY max(${W.time}) OVER (${part}) >= ${now - this.ttlMs}`;
  }

  private checkpoint(): WindowCheckpoint {
    return { fired: null, parts: {}, files: this.files };
  }

  async commit(dir: string): Promise<void> {
    const p = this.pending;
    if (!p) return;
    this.pending = undefined;
    this.counts.groups += p.groups;
    if (!p.staged) return;
    if (p.staged.compact) {
      await promote(this.conn, this.live, this.state);
      for (const f of this.files) await fsp.rm(path.join(dir, f), { force: true });
      this.files = [p.staged.file];
    } else {
      if (this.exists) await this.conn.run(`INSERT INTO ${this.state} BY NAME SELECT * EXCLUDE (${MSG_COL}) FROM ${this.fresh}`);
      else await this.conn.run(`CREATE OR REPLACE TABLE ${this.state} AS SELECT * EXCLUDE (${MSG_COL}) FROM ${this.fresh}`);
      this.files = [...this.files, p.staged.file];
    }
    this.exists = true;
    this.rows = Number((await this.conn.runAndReadAll(`SELECT count(*) FROM ${this.state}`)).getRows()[0][0]);
  }

  async abandon(dir: string): Promise<void> {
    const staged = this.pending?.staged;
    this.pending = undefined;
    if (staged && !this.files.includes(staged.file)) await fsp.rm(path.join(dir, staged.file), { force: true });
  }

  async restore(cp: WindowCheckpoint | undefined, dir: string): Promise<void> {
    this.files = cp?.files ?? [];
    const listed = new Set(this.files);
    for (const name of await fsp.readdir(dir).catch(() => [] as string[])) {
      if (!listed.has(name) || isTempName(name)) await fsp.rm(path.join(dir, name), { force: true });
    }
    this.exists = false;
    this.rows = 0;
    if (this.files.length === 0) return;
    await this.conn.run(`CREATE OR REPLACE TABLE ${this.state} AS SELECT * FROM read_parquet(${fileList(this.files.map((f) => path.join(dir, f)))}, union_by_name = true)`);
    this.exists = true;
    this.rows = Number((await this.conn.runAndReadAll(`SELECT count(*) FROM ${this.state}`)).getRows()[0][0]);
  }

  wouldAdvance(): boolean {
    return false;
  }

  holdsState(): boolean {
    return false;
  }

  async stats(dir: string): Promise<{ rows: number; windows: number; bytes: number }> {
    const bytes = await this.fileBytes(dir);
    if (!this.exists) return { rows: 0, windows: 0, bytes };
    const groups = this.keys.length ? Number((await this.conn.runAndReadAll(`SELECT count(DISTINCT (${this.keys.join(', ')})) FROM ${this.state}`)).getRows()[0][0]) : 1;
    return { rows: this.rows, windows: groups, bytes };
  }

  get watermarkUs(): number | null {
    return null;
  }
}
