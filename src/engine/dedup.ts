import fsp from 'node:fs/promises';
import path from 'node:path';
import type { DuckDBConnection } from '@duckdb/node-api';
import { SluiceError } from '../errors.js';
import { MSG_COL, WINDOW_COLUMNS as W } from '../sql/analyze.js';
import type { DedupQuery } from '../sql/dedup.js';
import { ident, lit } from '../sql/quote.js';
import { MODEL_SCHEMA } from '../sql/template.js';
import { fsyncDir, fsyncFile, isTempName } from '../util/fs-durable.js';
import type { Clock } from '../util/clock.js';
import type { MessageFailure } from './decoder.js';
import { SETTINGS_ONLY } from './joins.js';
import { LocalStateOperator } from './local-state.js';
import { promote } from './state-tables.js';
import { eventTime, eventWatermark, NEG, nullIfNeg, partOf, POS, ts, windowIntervals, type OperatorRun, type PartState, type WindowCheckpoint, type WindowSettings } from './windows.js';

// Deduplication over time (see sql/dedup.ts). The state is each key's latest time (W.time), kept
// until the watermark passes it by two ttls. A row is a duplicate when a row of its key came
// before it (in an earlier batch, or earlier in its batch by time, then message order) with a
// time at most `ttl` before its own, or any later time: what was seen within the ttl. A row more
// than a ttl behind the watermark is late (its key may have been let go): dropped or
// dead-lettered by `late`; any other row finds every row of its key that can make it a duplicate.
// Kept rows keep their message, as a stateless model's do. The state is written as Parquet in
// the WAL directory before each WAL commit that changes it, as a stream join's is.

interface Pending {
  parts: Map<string, PartState>;
  wm: number;
  dropped: number;
  duplicates: number;
  changed: boolean;
  staged?: string;
}

/** What a deduplicating model counts (metrics). */
export interface DedupCounts {
  late: { drop: number; dlq: number };
  /** Rows dropped as duplicates. */
  duplicates: number;
}

export class DedupOperator extends LocalStateOperator {
  private readonly state: string;
  private readonly fresh: string;
  private readonly live: string;
  private exists = false;
  private fired = NEG;
  private parts = new Map<string, PartState>();
  private pending?: Pending;
  private ttl = 0;
  private lateness = 0;
  private idle = 0;
  private lateMsgs = new Set<number>();
  private timeSql = new Map<string, string>();
  readonly counts: DedupCounts = { late: { drop: 0, dlq: 0 }, duplicates: 0 };
  /** Keys remembered after the last commit (metrics). */
  keys = 0;

  constructor(
    private readonly conn: DuckDBConnection,
    readonly model: string,
    readonly d: DedupQuery,
    readonly settings: WindowSettings,
    private readonly clock: Clock,
  ) {
    super('a deduplicating model');
    const t = (s: string) => `sluice_state.${ident(`${model}__${s}`)}`;
    this.state = t('keys');
    this.fresh = t('keys_new');
    this.live = t('keys_live');
  }

  async init(): Promise<void> {
    await this.conn.run('CREATE SCHEMA IF NOT EXISTS sluice_state');
    const r = await windowIntervals(this.conn, SETTINGS_ONLY, this.settings);
    if ('problem' in r) throw new SluiceError('CONFIG', `model ${this.model}: ${r.problem}`);
    if (!this.settings.ttl) throw new SluiceError('CONFIG', `model ${this.model} deduplicates: set overrides.${this.model}.window.ttl`);
    const t = await this.conn.runAndReadAll(`SELECT epoch_us(CAST(INTERVAL ${lit(this.settings.ttl)} AS INTERVAL))`);
    this.ttl = Number(t.getRows()[0][0]);
    this.lateness = r.lateness;
    this.idle = r.idle;
  }

  beginBatch(): void {
    this.lateMsgs.clear();
    this.pending = undefined;
  }

  private get keyCols(): string[] {
    return this.d.keys.map((_, i) => `${W.key}${i}`);
  }

  /** Keeps the batch's first rows per key (to sluice_model.<model>); nothing of the state changes until commit(). */
  async run(opts: OperatorRun): Promise<{ refused?: MessageFailure[] }> {
    const model = `${MODEL_SCHEMA}.${ident(this.model)}`;
    if ((opts.closeAll || opts.tick) && !opts.input) {
      // Nothing is held back: no row to emit at the end, or as time passes.
      await this.conn.run(`DROP TABLE IF EXISTS ${model}`);
      return {};
    }
    let time = this.timeSql.get(opts.shape);
    if (!time) {
      const type = String((await this.conn.runAndReadAll(`DESCRIBE (SELECT ${W.time} FROM (${this.d.input}))`)).getRows()[0][1]);
      time = eventTime(`q.${W.time}`, type);
      this.timeSql.set(opts.shape, time);
    }
    await this.conn.run(`CREATE OR REPLACE TABLE ${this.fresh} AS SELECT q.* REPLACE (${time} AS ${W.time}) FROM (${this.d.input}) AS q`);
    const failures: MessageFailure[] = [];
    // Keys stay two ttls past their latest row: a row up to a ttl behind the watermark still finds
    // every row of its key within the ttl before it. An older one is late.
    const lateBelow = this.fired === NEG ? NEG : this.fired - this.ttl;
    const [nulls, late] = (await this.conn.runAndReadAll(`SELECT count(*) FILTER (WHERE ${W.time} IS NULL), count(*) FILTER (WHERE ${W.time} < ${ts(lateBelow)}) FROM ${this.fresh}`))
      .getRows()[0]
      .map(Number);
    if (nulls > 0) {
      for (const [m] of (await this.conn.runAndReadAll(`SELECT DISTINCT ${MSG_COL} FROM ${this.fresh} WHERE ${W.time} IS NULL`)).getRows()) {
        failures.push({ index: Number(m), stage: 'transform', model: this.model, error: `the time (${this.d.time}) is NULL: the row cannot be told from a copy` });
      }
    }
    let dropped = 0;
    if (late > 0 && this.settings.late === 'drop') {
      dropped = Number((await this.conn.run(`DELETE FROM ${this.fresh} WHERE ${W.time} < ${ts(lateBelow)}`)).rowsChanged);
    } else if (late > 0) {
      const at = new Date(this.fired / 1000).toISOString();
      for (const [m] of (await this.conn.runAndReadAll(`SELECT DISTINCT ${MSG_COL} FROM ${this.fresh} WHERE ${W.time} < ${ts(lateBelow)}`)).getRows()) {
        this.lateMsgs.add(Number(m));
        failures.push({
          index: Number(m),
          stage: 'transform',
          model: this.model,
          error: `late: its time (${this.d.time}) is more than the ttl before the watermark ${at}; its key may have been let go`,
        });
      }
    }
    if (failures.length) return { refused: failures };
    const parts = new Map([...this.parts].map(([k, v]) => [k, { ...v }]));
    const now = this.clock.now();
    for (const [p, max] of (await this.conn.runAndReadAll(`SELECT ${partOf(opts.partitions, MSG_COL)} AS p, epoch_us(max(${W.time})) FROM ${this.fresh} GROUP BY p`)).getRows()) {
      if (max === null) continue;
      const x = parts.get(String(p)) ?? { max: null, seen: now };
      x.max = x.max === null ? Number(max) : Math.max(x.max, Number(max));
      x.seen = now;
      parts.set(String(p), x);
    }
    if (opts.assigned) {
      // The partitions the source reads: one no longer read is dropped; one not seen yet holds
      // the watermark until it has a row or goes idle, as for a windowed model.
      const keep = new Set(opts.assigned);
      for (const k of [...parts.keys()]) if (!keep.has(k)) parts.delete(k);
      for (const a of opts.assigned) if (!parts.has(a)) parts.set(a, { max: null, seen: now });
    }
    const wm = Math.max(this.fired, eventWatermark([...parts.values()], now, { idle: this.idle, lateness: this.lateness }) ?? NEG);
    const keys = this.keyCols;
    const ttl = `to_microseconds(${this.ttl}::BIGINT)`;
    const on = keys.map((k) => `f.${k} IS NOT DISTINCT FROM s.${k}`).join(' AND ') || 'true';
    const seen = this.exists ? `(s.${W.time} IS NOT NULL AND s.${W.time} >= f.${W.time} - ${ttl})` : 'false';
    const before = `lag(f.${W.time}) OVER (${keys.length ? `PARTITION BY ${keys.map((k) => `f.${k}`).join(', ')} ` : ''}ORDER BY f.${W.time}, f.${MSG_COL})`;
    await this.conn.run(
      `CREATE OR REPLACE TEMP TABLE __sluice_dedup AS SELECT f.*, ${seen} OR coalesce(${before} >= f.${W.time} - ${ttl}, false) AS __dup FROM ${this.fresh} f${this.exists ? ` LEFT JOIN ${this.state} s ON ${on}` : ''}`,
    );
    const engine = [...keys, W.time, '__dup'].join(', ');
    await this.conn.run(`CREATE OR REPLACE TABLE ${model} AS SELECT * EXCLUDE (${engine}) FROM __sluice_dedup WHERE NOT __dup ORDER BY ${MSG_COL}`);
    const [total, duplicates] = (await this.conn.runAndReadAll(`SELECT count(*), count(*) FILTER (WHERE __dup) FROM __sluice_dedup`)).getRows()[0].map(Number);
    // Each key's latest time, until the watermark passes it by two ttls.
    const rows = `SELECT ${[...keys, W.time].join(', ')} FROM ${this.fresh}${this.exists ? ` UNION ALL SELECT ${[...keys, W.time].join(', ')} FROM ${this.state}` : ''}`;
    await this.conn.run(
      `CREATE OR REPLACE TABLE ${this.live} AS SELECT ${keys.length ? `${keys.join(', ')}, ` : ''}max(${W.time}) AS ${W.time} FROM (${rows}) ${keys.length ? `GROUP BY ${keys.join(', ')} ` : ''}HAVING max(${W.time}) + 2 * ${ttl} >= ${ts(wm)}`,
    );
    this.pending = { parts, wm, dropped, duplicates, changed: total > 0 || wm > this.fired };
    return {};
  }

  async stage(seq: number, dir: string): Promise<WindowCheckpoint> {
    const p = this.pending;
    if (!p) return this.checkpoint();
    let files = this.files;
    if (p.changed) {
      await fsp.mkdir(dir, { recursive: true });
      const name = `${String(seq).padStart(12, '0')}-keys.parquet`;
      const tmp = path.join(dir, `.${name}.tmp`);
      await this.conn.run(`COPY ${this.live} TO ${lit(tmp)} (FORMAT parquet, COMPRESSION lz4_raw)`);
      await fsyncFile(tmp);
      await fsp.rename(tmp, path.join(dir, name));
      await fsyncDir(dir);
      p.staged = name;
      files = [name];
    }
    return { fired: nullIfNeg(p.wm), parts: Object.fromEntries(p.parts), files };
  }

  private checkpoint(): WindowCheckpoint {
    return { fired: nullIfNeg(this.fired), parts: Object.fromEntries(this.parts), files: this.files };
  }

  async commit(dir: string): Promise<void> {
    const p = this.pending;
    if (!p) return;
    this.pending = undefined;
    if (p.changed) {
      await promote(this.conn, this.live, this.state);
      this.exists = true;
      this.keys = Number((await this.conn.runAndReadAll(`SELECT count(*) FROM ${this.state}`)).getRows()[0][0]);
    }
    if (p.staged) {
      for (const f of this.files) if (f !== p.staged) await fsp.rm(path.join(dir, f), { force: true });
      this.files = [p.staged];
    }
    this.fired = p.wm;
    this.parts = p.parts;
    this.counts.late.drop += p.dropped;
    this.counts.late.dlq += this.lateMsgs.size;
    this.counts.duplicates += p.duplicates;
    this.lateMsgs.clear();
  }

  async abandon(dir: string): Promise<void> {
    const staged = this.pending?.staged;
    this.pending = undefined;
    if (staged && !this.files.includes(staged)) await fsp.rm(path.join(dir, staged), { force: true });
  }

  async restore(cp: WindowCheckpoint | undefined, dir: string): Promise<void> {
    this.fired = cp?.fired ?? NEG;
    this.parts = new Map(Object.entries(cp?.parts ?? {}));
    this.files = cp?.files ?? [];
    const listed = new Set(this.files);
    for (const name of await fsp.readdir(dir).catch(() => [] as string[])) {
      if (!listed.has(name) || isTempName(name)) await fsp.rm(path.join(dir, name), { force: true });
    }
    this.exists = false;
    this.keys = 0;
    if (this.files.length === 0) return;
    await this.conn.run(`CREATE OR REPLACE TABLE ${this.state} AS SELECT * FROM read_parquet(${lit(path.join(dir, this.files[0]))})`);
    this.exists = true;
    this.keys = Number((await this.conn.runAndReadAll(`SELECT count(*) FROM ${this.state}`)).getRows()[0][0]);
  }

  wouldAdvance(): boolean {
    return false;
  }

  holdsState(): boolean {
    return false;
  }

  async stats(dir: string): Promise<{ rows: number; windows: number; bytes: number }> {
    const bytes = await this.fileBytes(dir);
    return { rows: this.keys, windows: 0, bytes };
  }

  get watermarkUs(): number | null {
    return this.fired === NEG || this.fired === POS ? null : this.fired;
  }
}
