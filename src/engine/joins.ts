import fsp from 'node:fs/promises';
import path from 'node:path';
import type { DuckDBConnection } from '@duckdb/node-api';
import { SluiceError } from '../errors.js';
import { MSG_COL, WINDOW_COLUMNS as W } from '../sql/analyze.js';
import { JOIN_LEFT, JOIN_RIGHT, type IntervalJoinQuery } from '../sql/joins.js';
import type { WindowedQuery } from '../sql/windows.js';
import { ident, lit } from '../sql/quote.js';
import { MODEL_SCHEMA } from '../sql/template.js';
import { fsyncDir, fsyncFile, isTempName } from '../util/fs-durable.js';
import type { Clock } from '../util/clock.js';
import type { MessageFailure } from './decoder.js';
import { LocalStateOperator } from './local-state.js';
import { promote } from './state-tables.js';
import { eventTime, eventWatermark, NEG, nullIfNeg, POS, partOf, ts, windowIntervals, type OperatorRun, type PartState, type WindowCheckpoint, type WindowSettings } from './windows.js';

// A stream-stream interval join (see sql/joins.ts). Each side's rows are buffered as state, with
// their time (W.time), an id (W.jid) and, for the outer side of an outer join, whether they met a
// row of the other side (W.matched). A batch's new rows meet the buffered rows of the other side
// and each other: a pair is emitted once, in the batch of its later row. The watermark (as a
// windowed model's: per source partition and per side, the largest time seen less `lateness`, the
// minimum over the active ones) lets rows go: with the bound  left − right ∈ [lower, upper],  a
// left row can meet no right row still to come once  left − lower < watermark, and a right row
// none once  right + upper < watermark. An outer side's row that met none is then emitted with
// NULLs for the other side. A row older than the watermark is late: some rows it could have met
// may be gone; `late` says what becomes of it (drop, dlq, or reopen: the buffers are kept
// `allowed_lateness` longer, and a late row meets what they hold).
//
// State is durable as a windowed model's: the state after a batch is written as Parquet in the
// WAL directory before the WAL commit, whose checkpoint names the files.

type Side = 'l' | 'r';

/** What windowIntervals() needs to check a join's settings alone (a window with nothing of its own to check). */
export const SETTINGS_ONLY: WindowedQuery = {
  kind: 'tumble',
  written: '',
  time: '',
  processing: false,
  size: 'INTERVAL 1 SECOND',
  keys: [],
  names: [],
  qualifier: '',
  input: '',
  perRow: [],
  emit: '',
};
const SIDES: Side[] = ['l', 'r'];

/** What buffering a batch's rows found (both sides add to it). */
interface Buffered {
  next: number;
  dropped: number;
  reopened: number;
  added: number;
  failures: MessageFailure[];
}

interface Pending {
  parts: Map<string, PartState>;
  wm: number;
  next: number;
  dropped: number;
  reopened: number;
  /** The state changed: stage() writes it. */
  changed: boolean;
  staged?: string[];
  emitted: { l: number; r: number };
  /** The sides whose state the batch leaves (a side whose source has sent nothing has none). */
  sides: Side[];
}

/** What one join counts (metrics): rows late by policy (counted as messages under dlq), and an outer side's rows emitted without a match. */
export interface JoinCounts {
  late: { drop: number; dlq: number; reopen: number };
  unmatched: { l: number; r: number };
}

export class JoinOperator extends LocalStateOperator {
  private readonly table: Record<Side, { state: string; fresh: string; live: string }>;
  private readonly exists = { l: false, r: false };
  private fired = NEG;
  private parts = new Map<string, PartState>();
  private next = 0;
  private pending?: Pending;
  private lower = 0;
  private upper = 0;
  private allowed = 0;
  private lateness = 0;
  private idle = 0;
  private readonly startedAt: number;
  private lateMsgs = new Set<number>();
  private rows = 0;
  private timeSql = new Map<string, string>();
  readonly counts: JoinCounts = { late: { drop: 0, dlq: 0, reopen: 0 }, unmatched: { l: 0, r: 0 } };
  /** Rows buffered per side after the last commit (metrics). */
  buffered = { l: 0, r: 0 };

  constructor(
    private readonly conn: DuckDBConnection,
    readonly model: string,
    readonly j: IntervalJoinQuery,
    readonly settings: WindowSettings,
    private readonly clock: Clock,
  ) {
    super('a stream join');
    const t = (s: string) => `sluice_state.${ident(`${model}__${s}`)}`;
    this.table = {
      l: { state: t('left'), fresh: t('left_new'), live: t('left_live') },
      r: { state: t('right'), fresh: t('right_new'), live: t('right_live') },
    };
    this.startedAt = clock.now();
  }

  async init(): Promise<void> {
    await this.conn.run('CREATE SCHEMA IF NOT EXISTS sluice_state');
    const r = await windowIntervals(this.conn, SETTINGS_ONLY, this.settings);
    if ('problem' in r) throw new SluiceError('CONFIG', `model ${this.model}: ${r.problem}`);
    this.lower = this.j.lower;
    this.upper = this.j.upper;
    this.allowed = this.settings.late === 'reopen' ? r.allowed : 0;
    this.lateness = r.lateness;
    this.idle = r.idle;
  }

  beginBatch(): void {
    this.lateMsgs.clear();
    this.pending = undefined;
  }

  private side(s: Side) {
    return s === 'l' ? this.j.left : this.j.right;
  }

  /** When a row of side `s` can meet no row still to come: its time past this is below the watermark (SQL, µs arithmetic on W.time). */
  private expiry(s: Side): string {
    return s === 'l' ? `${W.time} - to_microseconds(${this.lower}::BIGINT)` : `${W.time} + to_microseconds(${this.upper}::BIGINT)`;
  }

  /** The columns the engine adds to a buffered row. */
  private static readonly ENGINE = [W.time, W.jid, W.matched, MSG_COL];

  private view(rel: string): string {
    return `(SELECT * EXCLUDE (${JoinOperator.ENGINE.join(', ')}) FROM ${rel})`;
  }

  private old(s: Side): string {
    return this.exists[s] ? this.table[s].state : `(SELECT * FROM ${this.table[s].fresh} WHERE false)`;
  }

  /** The model's SQL (`sql`: emit, emitInner or match) over relations `l` and `r`. */
  private over(sql: string, l: string, r: string): string {
    return sql.replaceAll(JOIN_LEFT, l).replaceAll(JOIN_RIGHT, r);
  }

  /**
   * Runs the join over a batch: buffers each side's new rows (late ones by the `late` policy),
   * advances the watermark, and writes to sluice_model.<model> the new pairs and the unmatched
   * rows of an outer side whose bound the watermark passed. Nothing of the state changes until
   * commit(). `closeAll`: the input ended (every row's bound is passed); `tick`: time passed.
   */
  async run(opts: OperatorRun): Promise<{ refused?: MessageFailure[]; noOutput?: boolean }> {
    const closeAll = opts.closeAll === true;
    const parts = new Map([...this.parts].map(([k, v]) => [k, { ...v }]));
    const now = this.clock.now();
    const b: Buffered = { next: this.next, dropped: 0, reopened: 0, added: 0, failures: [] };
    const noInput = (closeAll || opts.tick === true) && !opts.input;
    if (noInput && !this.exists.l && !this.exists.r) {
      // Nothing buffered (both sides are written together: see stage()), nothing to emit.
      await this.conn.run(`DROP TABLE IF EXISTS ${MODEL_SCHEMA}.${ident(this.model)}`);
      return {};
    }
    // A side reads no new rows when the batch is not of its source (a join of two sources) or
    // there is no input; its columns are unknown while its source has sent nothing yet.
    const known: Side[] = [];
    for (const s of SIDES) {
      const reads = !noInput && (opts.sides ? opts.sides[s].reads : true);
      if (reads) await this.buffer(s, opts, parts, now, b);
      else if (this.exists[s]) await this.conn.run(`CREATE OR REPLACE TABLE ${this.table[s].fresh} AS SELECT * FROM ${this.table[s].state} WHERE false`);
      else continue;
      known.push(s);
    }
    if (b.failures.length) return { refused: b.failures };
    for (const s of SIDES) {
      // The partitions each side's source reads: one no longer read is dropped; one not seen yet
      // holds the watermark (each side) until it has a row or goes idle, as for a windowed model.
      const assigned = opts.sides ? opts.sides[s].assigned : opts.assigned;
      if (!assigned) continue;
      const keep = new Set(assigned);
      for (const k of [...parts.keys()]) if (k.startsWith(`${s}:`) && !keep.has(k.slice(2))) parts.delete(k);
      for (const a of assigned) if (!parts.has(`${s}:${a}`)) parts.set(`${s}:${a}`, { max: null, seen: now });
    }
    if (known.length < SIDES.length) {
      // One side's source has sent nothing: no pair can be made yet, and an outer side's rows
      // wait (the watermark holds) for the other side's columns to be emitted with.
      await this.conn.run(`DROP TABLE IF EXISTS ${MODEL_SCHEMA}.${ident(this.model)}`);
      for (const s of known) await this.conn.run(`CREATE OR REPLACE TABLE ${this.table[s].live} AS SELECT * FROM ${this.all(s)}`);
      this.pending = { parts, wm: this.fired, next: b.next, dropped: b.dropped, reopened: b.reopened, changed: b.added > 0, emitted: { l: 0, r: 0 }, sides: known };
      return { noOutput: true };
    }
    const wm = closeAll ? POS : Math.max(this.fired, this.watermark(parts, now));
    const emitted = await this.emit(wm, opts.partitions.at(-1)?.hi ?? 0);
    // The state after the batch: what is kept, with what met a row now marked.
    let changed = b.added > 0 || closeAll;
    for (const s of SIDES) {
      const t = this.table[s];
      const flag = this.outer[s] ? `${W.matched} OR ${W.jid} IN (SELECT ${s === 'l' ? '__l' : '__r'} FROM __sluice_join_pairs)` : W.matched;
      const keep = closeAll ? 'false' : `NOT (${this.expiry(s)} < ${ts(wm - this.allowed)})`;
      await this.conn.run(`CREATE OR REPLACE TABLE ${t.live} AS SELECT * REPLACE (${flag} AS ${W.matched}) FROM ${this.all(s)} WHERE ${keep}`);
      if (!changed && this.exists[s]) {
        const count = (rel: string) => `(SELECT count(*) || '/' || count(*) FILTER (WHERE ${W.matched}) FROM ${rel})`;
        const [a, c] = (await this.conn.runAndReadAll(`SELECT ${count(t.live)}, ${count(t.state)}`)).getRows()[0].map(String);
        changed = a !== c;
      }
    }
    this.pending = { parts, wm: closeAll ? this.fired : wm, next: b.next, dropped: b.dropped, reopened: b.reopened, changed, emitted, sides: SIDES };
    return {};
  }

  /** Which sides are outer: their rows that meet none are emitted too. */
  private get outer(): Record<Side, boolean> {
    return { l: this.j.kind === 'left' || this.j.kind === 'full', r: this.j.kind === 'right' || this.j.kind === 'full' };
  }

  /** A side's buffered rows and the batch's. */
  private all(s: Side): string {
    return `(SELECT * FROM ${this.old(s)} UNION ALL BY NAME SELECT * FROM ${this.table[s].fresh})`;
  }

  /** A side's rows of the batch into its `fresh` table, with their time and id; late rows by the policy; the side's largest time per partition into `parts`. */
  private async buffer(s: Side, opts: OperatorRun, parts: Map<string, PartState>, now: number, b: Buffered): Promise<void> {
    const t = this.table[s];
    const side = this.side(s);
    const q = ident(side.alias);
    const late = this.fired === NEG ? NEG : this.fired - this.allowed;
    let time = this.timeSql.get(`${s}${opts.shape}`);
    if (!time) {
      const type = String((await this.conn.runAndReadAll(`DESCRIBE (SELECT ${side.time} FROM (${side.input}) AS ${q})`)).getRows()[0][1]);
      time = eventTime(side.time, type);
      this.timeSql.set(`${s}${opts.shape}`, time);
    }
    await this.conn.run(
      `CREATE OR REPLACE TABLE ${t.fresh} AS SELECT ${q}.*, ${time} AS ${W.time}, (${b.next} + row_number() OVER ())::BIGINT AS ${W.jid}, false AS ${W.matched} FROM (${side.input}) AS ${q}`,
    );
    const [n, nulls, lateN, reopenN] = (
      await this.conn.runAndReadAll(
        `SELECT count(*), count(*) FILTER (WHERE ${W.time} IS NULL), count(*) FILTER (WHERE ${W.time} < ${ts(late)}), count(*) FILTER (WHERE ${W.time} >= ${ts(late)} AND ${W.time} < ${ts(this.fired)}) FROM ${t.fresh}`,
      )
    )
      .getRows()[0]
      .map(Number);
    b.next += n;
    b.added += n;
    b.reopened += reopenN;
    if (nulls > 0) {
      for (const [m] of (await this.conn.runAndReadAll(`SELECT DISTINCT ${MSG_COL} FROM ${t.fresh} WHERE ${W.time} IS NULL`)).getRows()) {
        b.failures.push({ index: Number(m), stage: 'transform', model: this.model, error: `the join's time (${side.time}) is NULL: the row can meet no row of the other side` });
      }
    }
    if (lateN > 0 && this.settings.late === 'drop') {
      const r = await this.conn.run(`DELETE FROM ${t.fresh} WHERE ${W.time} < ${ts(late)}`);
      b.dropped += Number(r.rowsChanged);
    } else if (lateN > 0) {
      const at = new Date(late / 1000).toISOString();
      for (const [m] of (await this.conn.runAndReadAll(`SELECT DISTINCT ${MSG_COL} FROM ${t.fresh} WHERE ${W.time} < ${ts(late)}`)).getRows()) {
        this.lateMsgs.add(Number(m));
        b.failures.push({ index: Number(m), stage: 'transform', model: this.model, error: `late: its time (${side.time}) is before the join's watermark ${at}; rows it could have met are gone` });
      }
    }
    for (const [p, max] of (await this.conn.runAndReadAll(`SELECT ${partOf(opts.partitions, MSG_COL)} AS p, epoch_us(max(${W.time})) FROM ${t.fresh} GROUP BY p`)).getRows()) {
      if (max === null) continue;
      const k = `${s}:${String(p)}`;
      const x = parts.get(k) ?? { max: null, seen: now };
      x.max = x.max === null ? Number(max) : Math.max(x.max, Number(max));
      x.seen = now;
      parts.set(k, x);
    }
  }

  /**
   * Writes the batch's output (`msg`: the message index its rows carry): the new pairs (the
   * batch's left rows with every right row, the buffered left rows with the batch's right rows),
   * and each outer side's rows that met none once watermark `wm` passes their bound (a buffered
   * row only when it passes it now). Returns how many unmatched rows of each side it emitted.
   */
  private async emit(wm: number, msg: number): Promise<{ l: number; r: number }> {
    const passes = [this.over(this.j.emitInner, this.view(this.table.l.fresh), this.view(this.all('r'))), this.over(this.j.emitInner, this.view(this.old('l')), this.view(this.table.r.fresh))];
    const outer = this.outer;
    const emitted = { l: 0, r: 0 };
    if (outer.l || outer.r) {
      await this.conn.run(
        `CREATE OR REPLACE TEMP TABLE __sluice_join_pairs AS ${this.over(this.j.match, this.table.l.fresh, this.all('r'))} UNION ALL ${this.over(this.j.match, this.old('l'), this.table.r.fresh)}`,
      );
    }
    for (const s of SIDES) {
      if (!outer[s]) continue;
      const met = `${W.jid} IN (SELECT ${s === 'l' ? '__l' : '__r'} FROM __sluice_join_pairs)`;
      const rel = `(SELECT * FROM ${this.old(s)} WHERE ${this.expiry(s)} >= ${ts(this.fired)} UNION ALL BY NAME SELECT * FROM ${this.table[s].fresh})`;
      await this.conn.run(`CREATE OR REPLACE TEMP TABLE __sluice_join_unmatched_${s} AS SELECT * FROM ${rel} WHERE NOT ${W.matched} AND NOT (${met}) AND ${this.expiry(s)} < ${ts(wm)}`);
      emitted[s] = Number((await this.conn.runAndReadAll(`SELECT count(*) FROM __sluice_join_unmatched_${s}`)).getRows()[0][0]);
      if (emitted[s] === 0) continue;
      const none = (x: Side) => this.view(`(SELECT * FROM ${this.old(x)} WHERE false)`);
      const mine = this.view(`__sluice_join_unmatched_${s}`);
      passes.push(s === 'l' ? this.over(this.j.emit, mine, none('r')) : this.over(this.j.emit, none('l'), mine));
    }
    await this.conn.run(
      `CREATE OR REPLACE TABLE ${MODEL_SCHEMA}.${ident(this.model)} AS SELECT *, ${msg}::BIGINT AS ${MSG_COL} FROM (${passes.map((p) => `SELECT * FROM (${p})`).join(' UNION ALL ')})`,
    );
    return emitted;
  }

  /** The watermark of both sides: a side that has had no row holds it until idle_timeout after the start. */
  private watermark(parts: Map<string, PartState>, now: number): number {
    let wm = POS;
    for (const s of SIDES) {
      const mine = [...parts].filter(([k]) => k.startsWith(`${s}:`)).map(([, v]) => v);
      if (mine.every((p) => p.max === null) && now - this.startedAt <= this.idle / 1000) return this.fired;
      const w = eventWatermark(mine, now, { idle: this.idle, lateness: this.lateness });
      if (w === undefined) {
        if (mine.length) return this.fired;
        continue;
      }
      wm = Math.min(wm, w);
    }
    return wm === POS ? this.fired : wm;
  }

  async stage(seq: number, dir: string): Promise<WindowCheckpoint> {
    const p = this.pending;
    if (!p) return this.checkpoint();
    let files = this.files;
    if (p.changed) {
      files = [];
      await fsp.mkdir(dir, { recursive: true });
      for (const s of p.sides) {
        const name = `${String(seq).padStart(12, '0')}-${s === 'l' ? 'left' : 'right'}.parquet`;
        const tmp = path.join(dir, `.${name}.tmp`);
        await this.conn.run(`COPY ${this.table[s].live} TO ${lit(tmp)} (FORMAT parquet, COMPRESSION lz4_raw)`);
        await fsyncFile(tmp);
        await fsp.rename(tmp, path.join(dir, name));
        files.push(name);
      }
      await fsyncDir(dir);
      p.staged = files;
    }
    return { fired: nullIfNeg(p.wm), parts: Object.fromEntries(p.parts), files, next: p.next };
  }

  private checkpoint(): WindowCheckpoint {
    return { fired: nullIfNeg(this.fired), parts: Object.fromEntries(this.parts), files: this.files, next: this.next };
  }

  async commit(dir: string): Promise<void> {
    const p = this.pending;
    if (!p) return;
    this.pending = undefined;
    for (const s of p.sides) {
      const t = this.table[s];
      await promote(this.conn, t.live, t.state);
      this.exists[s] = true;
      this.buffered[s] = Number((await this.conn.runAndReadAll(`SELECT count(*) FROM ${t.state}`)).getRows()[0][0]);
      this.counts.unmatched[s] += p.emitted[s];
    }
    this.rows = this.buffered.l + this.buffered.r;
    if (p.staged) {
      const old = this.files.filter((f) => !p.staged!.includes(f));
      this.files = p.staged;
      for (const f of old) await fsp.rm(path.join(dir, f), { force: true });
    }
    this.fired = p.wm;
    this.parts = p.parts;
    this.next = p.next;
    this.counts.late.drop += p.dropped;
    this.counts.late.reopen += p.reopened;
    this.counts.late.dlq += this.lateMsgs.size;
    this.lateMsgs.clear();
  }

  async abandon(dir: string): Promise<void> {
    const staged = this.pending?.staged ?? [];
    this.pending = undefined;
    for (const f of staged) if (!this.files.includes(f)) await fsp.rm(path.join(dir, f), { force: true });
  }

  async restore(cp: WindowCheckpoint | undefined, dir: string): Promise<void> {
    this.fired = cp?.fired ?? NEG;
    this.parts = new Map(Object.entries(cp?.parts ?? {}));
    this.files = cp?.files ?? [];
    this.next = cp?.next ?? 0;
    const listed = new Set(this.files);
    for (const name of await fsp.readdir(dir).catch(() => [] as string[])) {
      if (!listed.has(name) || isTempName(name)) await fsp.rm(path.join(dir, name), { force: true });
    }
    for (const s of SIDES) {
      const f = this.files.find((x) => x.endsWith(s === 'l' ? '-left.parquet' : '-right.parquet'));
      this.exists[s] = false;
      this.buffered[s] = 0;
      if (!f) continue;
      await this.conn.run(`CREATE OR REPLACE TABLE ${this.table[s].state} AS SELECT * FROM read_parquet(${lit(path.join(dir, f))})`);
      this.exists[s] = true;
      this.buffered[s] = Number((await this.conn.runAndReadAll(`SELECT count(*) FROM ${this.table[s].state}`)).getRows()[0][0]);
    }
    this.rows = this.buffered.l + this.buffered.r;
  }

  wouldAdvance(): boolean {
    if (this.rows === 0 || this.pending || !this.exists.l || !this.exists.r) return false;
    return this.watermark(this.parts, this.clock.now()) > this.fired;
  }

  holdsState(): boolean {
    return this.rows > 0;
  }

  /**
   * A side that has had no row (its source, in a join of two sources, has sent nothing) while the
   * other side's rows are buffered: those wait for its columns. Undefined when both sides have had rows.
   */
  waiting(): { side: string; other: string; rows: number } | undefined {
    for (const s of SIDES) {
      const o: Side = s === 'l' ? 'r' : 'l';
      if (!this.exists[s] && this.exists[o] && this.buffered[o] > 0) return { side: this.side(s).alias, other: this.side(o).alias, rows: this.buffered[o] };
    }
    return undefined;
  }

  async stats(dir: string): Promise<{ rows: number; windows: number; bytes: number }> {
    const bytes = await this.fileBytes(dir);
    return { rows: this.rows, windows: 0, bytes };
  }

  get watermarkUs(): number | null {
    return this.fired === NEG ? null : this.fired;
  }
}
