import fsp from 'node:fs/promises';
import path from 'node:path';
import type { DuckDBConnection } from '@duckdb/node-api';
import { SluiceError } from '../errors.js';
import { MSG_COL, WINDOW_COLUMNS as W } from '../sql/analyze.js';
import { fileList, ident, lit } from '../sql/quote.js';
import { MODEL_SCHEMA } from '../sql/template.js';
import { CLOSING, type WindowedQuery } from '../sql/windows.js';
import { promote } from './state-tables.js';
import { fsyncDir, fsyncFile, isTempName } from '../util/fs-durable.js';
import type { Clock } from '../util/clock.js';
import type { MessageFailure, PartitionRun } from './decoder.js';
import type { WindowSettings } from '../project/project-types.js';
import type { PartitionSnapshot } from './window-store.js';

export { DEFAULT_WINDOW_SETTINGS, type WindowSettings } from '../project/project-types.js';

// Windowed aggregation (see sql/windows.ts for the SQL side). Each windowed model keeps, as
// state, the input rows of its open windows (only the columns its aggregation reads). A batch
// adds its rows; the watermark (the largest event time seen per source partition, minus the
// allowed out-of-orderness, as the minimum over the active partitions) then closes windows,
// and the model's own aggregation runs over the closed windows' rows. Because the aggregation
// runs over exactly the rows the window holds, any DuckDB aggregate gives what the same
// GROUP BY over the whole input gives.
//
// State is durable: a batch's new rows are written as a Parquet file in the WAL directory
// before the WAL commit, and the commit's checkpoint lists the files and holds the watermark,
// so that a restart rebuilds exactly the state of the last commit. Files are compacted into
// one (the live state) every COMPACT_AFTER batches.

/**
 * A source partition as a windowed model tracks it: its largest event time, and when (clock ms)
 * it last had a message. With a shared state store (several workers) also the watermark its
 * windows were emitted at (µs; null: none yet), the store epoch this worker holds it under, and
 * the offset after its last message the state reflects.
 */
export interface PartState {
  max: number | null;
  seen: number;
  fired?: number | null;
  epoch?: number;
  offset?: number | null;
}

/** A windowed model's part of the WAL checkpoint. Times are microseconds since the epoch. */
export interface WindowCheckpoint {
  /** Windows ending at or before this were emitted (null: none yet); with a state store, the lowest of the partitions'. */
  fired: number | null;
  /** Per source partition (see PartState). */
  parts: Record<string, PartState>;
  /** The state files (names in the model's state directory) whose rows, less those evicted, are the state. */
  files: string[];
  /** Windows re-emitted by late updates: window start -> its last revision. */
  revisions?: Record<string, number>;
  /** Stream joins: the id the next buffered row gets. */
  next?: number;
}

/**
 * The event time `expr` (of DuckDB type `type`) as a TIMESTAMP in UTC, whatever the machine's
 * time zone: ISO 8601 text with an offset (`+02:00`) is moved to UTC (a plain cast would drop
 * the offset), text without one is UTC (`Z` or nothing); a TIMESTAMP WITH TIME ZONE is taken at
 * its instant.
 */
export function eventTime(expr: string, type: string): string {
  if (type === 'VARCHAR' || type === 'JSON') {
    return `CASE WHEN regexp_matches(${expr}, ':\\d\\d(\\.\\d+)?[+-]\\d\\d(:?\\d\\d)?$') THEN make_timestamp(epoch_us(CAST(${expr} AS TIMESTAMPTZ))) ELSE CAST(${expr} AS TIMESTAMP) END`;
  }
  if (type === 'TIMESTAMP WITH TIME ZONE') return `make_timestamp(epoch_us(${expr}))`;
  return `CAST(${expr} AS TIMESTAMP)`;
}

/** A windowed model's intervals in microseconds. */
export interface WindowIntervals {
  size: number;
  slide: number;
  gap: number;
  lateness: number;
  allowed: number;
  idle: number;
  maxSession: number;
}

/**
 * The window's intervals and settings, in microseconds, or what is wrong with them (`validate`
 * reports it; a run stops at it): an interval that is not one, not positive, or counts months
 * where a fixed length is needed; late: update on a window that is not tumbling; a hop's slide
 * over its size.
 */
export async function windowIntervals(conn: DuckDBConnection, w: WindowedQuery, s: WindowSettings): Promise<WindowIntervals | { problem: string }> {
  const intervals: Record<keyof WindowIntervals, string | undefined> = {
    size: w.size,
    slide: w.slide,
    gap: w.gap,
    lateness: `INTERVAL ${lit(s.lateness)}`,
    allowed: `INTERVAL ${lit(s.allowedLateness)}`,
    idle: `INTERVAL ${lit(s.idleTimeout)}`,
    maxSession: s.maxSessionDuration ? `INTERVAL ${lit(s.maxSessionDuration)}` : undefined,
  };
  const us = { size: 0, slide: 0, gap: 0, lateness: 0, allowed: 0, idle: 0, maxSession: 0 };
  for (const [k, sql] of Object.entries(intervals) as [keyof WindowIntervals, string | undefined][]) {
    if (!sql) continue;
    let n: number;
    let months: number;
    try {
      const r = await conn.runAndReadAll(`SELECT epoch_us(x), datepart('month', x) + 12 * datepart('year', x) FROM (SELECT CAST(${sql} AS INTERVAL) AS x)`);
      [n, months] = r.getRows()[0].map(Number);
    } catch (err) {
      return { problem: `${k} ${sql} is not an interval: ${(err as Error).message.split('\n')[0]}` };
    }
    if (n < 0 || ((k === 'size' || k === 'slide' || k === 'gap') && n <= 0)) return { problem: `the window's ${k} must be positive (${sql})` };
    if (months !== 0 && !(k === 'size' && w.kind === 'tumble')) return { problem: `${k} ${sql} counts months, which have no fixed length: give it in days or less` };
    us[k] = n;
  }
  if (w.kind === 'hop' && us.size < us.slide) return { problem: "a hopping window's size must be at least its slide" };
  if (s.maxSessionDuration && w.kind !== 'session') return { problem: 'max_session_duration is for session windows' };
  return us;
}

/** The columns the engine adds to a windowed model's rows: `_revision` under late: update, and a session window's `_retracted`. */
export function engineColumns(w: WindowedQuery, s: WindowSettings): string[] {
  if (s.late !== 'update') return [];
  return w.kind === 'session' ? ['_revision', '_retracted'] : ['_revision'];
}

/**
 * The minimum over the active partitions (seen within idle_timeout) of their largest event time,
 * less the lateness (µs); over every partition with an event when none is active; undefined
 * while an active partition has had no event yet (it holds the watermark), or none has had one.
 */
export function eventWatermark(parts: readonly PartState[], now: number, us: Pick<WindowIntervals, 'idle' | 'lateness'>): number | undefined {
  const active = parts.filter((p) => now - p.seen <= us.idle / 1000);
  if (active.some((p) => p.max === null)) return undefined;
  const known = parts.filter((p) => p.max !== null);
  const from = active.length ? active : known;
  if (from.length === 0) return undefined;
  return Math.min(...from.map((p) => p.max as number)) - us.lateness;
}

/** What a stateful model's run() is given (a windowed model's or a stream join's). */
export interface OperatorRun {
  batch?: string;
  /** The executor's key of the input's schema. */
  shape: string;
  partitions: PartitionRun[];
  /** The source partitions read now (undefined: not known). */
  assigned?: string[];
  /**
   * A stream join of two sources (a pipeline reading both): which of its sides read this batch's
   * source (the other side has no new rows), and the partitions each side's source reads now.
   * Undefined: both sides read every batch, and `assigned` is each side's.
   */
  sides?: { l: { reads: boolean; assigned?: string[] }; r: { reads: boolean; assigned?: string[] } };
  /** The input ended: every window closes (every join row's bound is passed). */
  closeAll?: boolean;
  /** Time passed with no message. */
  tick?: boolean;
  /** With closeAll: the model reads what models closing before it emitted: take those rows first. */
  input?: boolean;
}

/** After how many state files the state is rewritten as one. */
const COMPACT_AFTER = 16;

/** What one windowed model counts (the pipeline turns them into metrics). */
export interface WindowCounts {
  late: { drop: number; dlq: number; update: number };
}

/** The result of one attempt at a batch, kept until it commits. */
interface Pending {
  /** The partitions once the batch commits (with a state store, each one's `fired` advanced). */
  parts: Map<string, PartState>;
  wm: number;
  dropped: number;
  /** Windows (start, µs) re-emitted for late updates. */
  updates: number[];
  /** Late messages taken into those windows. */
  updatedMessages: number;
  /** Rows in `new`. */
  added: number;
  /** A state file staged for this batch, and whether it is a compaction (the whole state). */
  staged?: { file: string; compact: boolean };
  closeAll: boolean;
  /** Made by stage() for a compaction alone (partitions moved; the models did not run). */
  synthetic?: boolean;
  /** With a state store: the partitions this batch added rows to (set by stage()). */
  dirty?: Set<string>;
  /** Session windows under late: update: the state after the batch is in WindowOperator.revs (its rows' revisions changed). */
  rewrite?: boolean;
}

export const NEG = Number.NEGATIVE_INFINITY;
export const POS = Number.POSITIVE_INFINITY;

/** The source partition of message `msg` (SQL), from the batch's runs (in message order). */
export function partOf(runs: PartitionRun[], msg: string): string {
  if (runs.length === 0) return `''`;
  if (new Set(runs.map((r) => r.part)).size === 1) return lit(runs[0].part);
  return `CASE ${runs.map((r) => `WHEN ${msg} <= ${r.hi} THEN ${lit(r.part)}`).join(' ')} ELSE '' END`;
}

export function nullIfNeg(us: number): number | null {
  return us === NEG ? null : us;
}

export function ts(us: number): string {
  if (us === NEG) return `'-infinity'::TIMESTAMP`;
  if (us === POS) return `'infinity'::TIMESTAMP`;
  return `make_timestamp(${Math.trunc(us)}::BIGINT)`;
}

/** One windowed model's state and its emission. */
export class WindowOperator {
  private readonly state: string;
  private readonly fresh: string;
  /** The state after a batch, written by a compaction until the batch commits. */
  private readonly live: string;
  /** Messages of the current batch dead-lettered as late (its attempts add to it). */
  private lateMsgs = new Set<number>();
  private stateExists = false;
  /** Rows in the state after the last commit. */
  private rows = 0;
  private fired = NEG;
  private parts = new Map<string, PartState>();
  private files: string[] = [];
  private revisions = new Map<number, number>();
  private pending?: Pending;
  /** Per input schema: the input columns the state keeps, and the event time as a UTC TIMESTAMP (SQL). */
  private columns = new Map<string, { cols: string[]; time: string }>();
  private us!: WindowIntervals;
  readonly counts: WindowCounts = { late: { drop: 0, dlq: 0, update: 0 } };
  /**
   * With a shared state store (sluice.yml window_state): each state row carries its source
   * partition (WINDOW_COLUMNS.part) and each partition its own `fired`, so that a partition's
   * state can move to another worker, and come from one.
   */
  partitioned = false;
  /** Partitions came or went since the last commit: the next stage rewrites the state file. */
  private compactNext = false;
  /** Partitions whose rows changed since their last write to the state store. */
  readonly rowsDirty = new Set<string>();

  constructor(
    private readonly conn: DuckDBConnection,
    readonly model: string,
    readonly w: WindowedQuery,
    readonly settings: WindowSettings,
    private readonly clock: Clock,
  ) {
    this.state = `sluice_state.${ident(model)}`;
    this.fresh = `sluice_state.${ident(`${model}__new`)}`;
    this.live = `sluice_state.${ident(`${model}__live`)}`;
    this.revs = `sluice_state.${ident(`${model}__revs`)}`;
  }

  /** Session windows under late: update: the state and the batch's rows, with their revisions as this batch emits them (see sessionClosing). */
  private readonly revs: string;

  /** A session window under late: update: late events reopen emitted sessions, which may merge. */
  private get sessionUpdate(): boolean {
    return this.w.kind === 'session' && this.settings.late === 'update';
  }

  /**
   * A new batch (or a batch tried again from the start), or a batch none of whose messages goes
   * on: what an earlier attempt made is forgotten (nothing of it is staged or committed).
   */
  beginBatch(): void {
    this.lateMsgs.clear();
    this.pending = undefined;
  }

  private get tsCol(): string {
    return W.time;
  }

  async init(): Promise<void> {
    await this.conn.run('CREATE SCHEMA IF NOT EXISTS sluice_state');
    const r = await windowIntervals(this.conn, this.w, this.settings);
    if ('problem' in r) throw new SluiceError('CONFIG', `model ${this.model}: ${r.problem}`);
    this.us = r;
  }

  /** The end of the window starting at `start` (SQL). */
  private endOf(start: string): string {
    return `(${start} + ${this.w.size})`;
  }

  /**
   * The watermark the windows of a row were emitted at (SQL over a state row): `fired`, or with a
   * state store, that of the row's partition in `parts` (one value while they agree).
   */
  private firedSql(fired: number, parts: Map<string, PartState>): string {
    if (!this.partitioned) return ts(fired);
    const vals = new Set([...parts.values()].map((p) => p.fired ?? NEG));
    if (vals.size <= 1) return ts(vals.size ? [...vals][0] : NEG);
    return `CASE ${W.part} ${[...parts].map(([k, v]) => `WHEN ${lit(k)} THEN ${ts(v.fired ?? NEG)}`).join(' ')} ELSE ${ts(NEG)} END`;
  }

  /** The lowest watermark any partition's windows were emitted at (NEG: none, or no partition). */
  private static minFired(parts: Map<string, PartState>): number {
    let m = POS;
    for (const p of parts.values()) m = Math.min(m, p.fired ?? NEG);
    return m === POS ? NEG : m;
  }

  /** True when no window was emitted yet (of any partition). */
  private noneFired(): boolean {
    return this.partitioned ? [...this.parts.values()].every((p) => (p.fired ?? NEG) === NEG) : this.fired === NEG;
  }

  /** A row whose every window was emitted (SQL over the state's columns). */
  private lateSql(): string {
    if (this.noneFired()) return 'false';
    const f = this.firedSql(this.fired, this.parts);
    if (this.w.kind === 'tumble') return `${this.endOf(W.start)} <= ${f}`;
    if (this.w.kind === 'hop') return `${this.endOf(W.last)} <= ${f}`;
    return `${this.tsCol} < ${f}`;
  }

  /** Rows of windows whose state is dropped once the watermark is at `f` (SQL; tumbling and hopping windows). */
  private evictedSql(f: string): string {
    const col = this.w.kind === 'tumble' ? W.start : W.last;
    return `${this.endOf(col)} + to_microseconds(${this.us.allowed}::BIGINT) <= ${f}`;
  }

  /** The session partitioning: the model's other group keys and, with max_session_duration, the period. */
  private sessionPartition(): string {
    const keys = this.w.keys.map((_, i) => `${W.key}${i}`);
    if (this.us.maxSession > 0) keys.push(`time_bucket(to_microseconds(${this.us.maxSession}::BIGINT), ${this.tsCol})`);
    return keys.length ? `PARTITION BY ${keys.join(', ')}` : '';
  }

  /** The rows of `rel` with their session's start and end (SESSION windows). */
  private sessionsOf(rel: string): string {
    const p = this.sessionPartition();
    const gap = `to_microseconds(${this.us.gap}::BIGINT)`;
    return `SELECT * EXCLUDE (__n, __sid), min(${this.tsCol}) OVER s AS ${W.start}, max(${this.tsCol}) OVER s + ${gap} AS ${W.end}
      FROM (SELECT *, sum(__n) OVER (${p} ORDER BY ${this.tsCol} ROWS UNBOUNDED PRECEDING) AS __sid
            FROM (SELECT *, CASE WHEN ${this.tsCol} - lag(${this.tsCol}) OVER (${p} ORDER BY ${this.tsCol}) < ${gap} THEN 0 ELSE 1 END AS __n FROM ${rel}))
      WINDOW s AS (${p ? `${p}, ` : 'PARTITION BY '}__sid)`;
  }

  /** Every row with each window it belongs to, as WINDOW_COLUMNS.start / .end (for the closing view). */
  private windowsOf(rel: string): string {
    if (this.w.kind === 'tumble') return `SELECT *, ${this.endOf(W.start)} AS ${W.end} FROM ${rel}`;
    if (this.w.kind === 'session') return this.sessionsOf(rel);
    const n = Math.ceil(this.us.size / this.us.slide);
    return `SELECT * EXCLUDE (__s), __s AS ${W.start}, __s + ${this.w.size} AS ${W.end}
      FROM (SELECT *, unnest(generate_series(${W.last} - ${this.w.slide} * ${n - 1}, ${W.last}, ${this.w.slide})) AS __s FROM ${rel})
      WHERE __s > ${this.tsCol} - ${this.w.size}`;
  }

  /** The state and this batch's rows. */
  private all(): string {
    return this.stateExists ? `(SELECT * FROM ${this.state} UNION ALL BY NAME SELECT * FROM ${this.fresh})` : this.fresh;
  }

  /**
   * Runs the model over a batch: buffers its rows, classifies late ones, advances the watermark
   * and writes the rows of the windows it closes to sluice_model.<model>. Nothing of the state
   * changes until commit(): an attempt can be repeated (messages isolated, the batch retried).
   * `closeAll`: the input ended; every window closes. Returns messages refused (late, under
   * `late: dlq`), which leave the batch.
   */
  async run(opts: OperatorRun): Promise<{ refused?: MessageFailure[] }> {
    const closeAll = opts.closeAll === true;
    const tick = opts.tick === true;
    const parts = new Map([...this.parts].map(([k, v]) => [k, { ...v }]));
    let dropped = 0;
    let updates: number[] = [];
    let updatedMessages = 0;
    let added = 0;
    let reopen = false;
    if ((closeAll || tick) && !opts.input) {
      // No new rows: the end of the input, or time passing (processing time, idle partitions).
      if (!this.stateExists) {
        this.pending = { parts, wm: this.fired, dropped, updates, updatedMessages, added, closeAll };
        this.settle(parts, this.fired);
        return {};
      }
      await this.conn.run(`CREATE OR REPLACE TABLE ${this.fresh} AS SELECT * FROM ${this.state} WHERE false`);
    } else {
      await this.buffer(opts.shape, opts.partitions);
      const refused = await this.lateRows(this.fired);
      added = refused.rows;
      if (refused.failures.length) return { refused: refused.failures };
      dropped = refused.dropped;
      updates = refused.updates;
      reopen = refused.reopen === true;
      updatedMessages = refused.updatedMessages;
      added -= refused.droppedRows ?? 0;
      if (this.settings.maxGroupsPerWindow) {
        const over = await this.overCap(this.settings.maxGroupsPerWindow);
        if (over.length) return { refused: over };
      }
      // What the aggregates evaluate per row, over this batch's rows: a message whose values
      // they cannot take fails now, in its own batch (where it is isolated), not when its window closes.
      if (this.w.perRow.length) await this.conn.run(`SELECT max(hash(${this.w.perRow.join(', ')})) FROM ${this.fresh} AS ${ident(this.w.qualifier)}`);
      await this.advance(parts, opts.partitions, refused.max, opts.assigned);
    }
    const wm = closeAll ? POS : this.watermark(parts);
    const fired = this.fired;
    const { closing, rewrite } = await this.closingSql(fired, wm, parts, updates, reopen, closeAll);
    await this.conn.run(`CREATE OR REPLACE TEMP VIEW ${CLOSING} AS ${closing}`);
    const msg = opts.partitions.at(-1)?.hi ?? 0;
    const windowCols = [W.start, W.end, ...(this.w.kind === 'session' ? [W.rev, W.retracted] : [])];
    await this.conn.run(
      `CREATE OR REPLACE TABLE ${MODEL_SCHEMA}.${ident(this.model)} AS SELECT * EXCLUDE (${windowCols.join(', ')})${this.revisionSql(updates)}, ${msg}::BIGINT AS ${MSG_COL} FROM (${this.w.emit})`,
    );
    let after = wm;
    if (closeAll) {
      const r = await this.conn.runAndReadAll(`SELECT epoch_us(max(${W.end})) FROM ${CLOSING}`);
      const v = r.getRows()[0][0];
      after = v === null ? fired : Math.max(fired, Number(v));
    }
    this.pending = { parts, wm: after, dropped, updates, updatedMessages, added, closeAll, rewrite };
    this.settle(parts, after);
    return {};
  }

  /**
   * The closing rows of a session window under late: update (`f`: the watermark its windows were
   * emitted at, SQL over a row; `wm`: the new watermark; `reopen`: this batch holds late events).
   * A late event joins the state while it can merge with no session already evicted (see
   * lateRows), and may extend an emitted session or bridge two. Emitted are the sessions closing
   * now and every session holding a late event (again); retracted, with `_retracted`, are the
   * emitted sessions a late event changed whose start (with the keys: the session's identity in
   * a sink) is not emitted now. An emitted row's revision is one more than the highest its rows'
   * sessions were emitted or retracted at (0: first emitted), kept per state row (rowRev; NULL
   * is 0 once the row's session was emitted), so that a later version of a session always
   * carries a higher revision, as sessions only ever merge. Returns the CLOSING query and whether
   * revisions changed (the state is then rewritten from `revs`).
   */
  private async sessionClosing(f: string, wm: number, reopen: boolean): Promise<{ closing: string; rewrite: boolean }> {
    const ids = [...this.w.keys.map((_, i) => `${W.key}${i}`), ...(this.partitioned ? [W.part] : [])];
    const helpers = ['__os', '__oe', '__eff', '__late', '__slate', '__rrev', '__e', '__r'];
    // The state's rows with the session each was in (before this batch), and the batch's rows.
    const old = this.stateExists
      ? `SELECT * EXCLUDE (${W.start}, ${W.end}), ${W.start} AS __os, ${W.end} AS __oe, coalesce(${W.rowRev}, CASE WHEN ${W.end} <= ${f} THEN 0 ELSE -1 END) AS __eff, false AS __late FROM (${this.sessionsOf(this.state)}) UNION ALL BY NAME `
      : '';
    const rows = `(${old}SELECT *, NULL::TIMESTAMP AS __os, NULL::TIMESTAMP AS __oe, -1 AS __eff, ${reopen ? `${this.tsCol} < ${f}` : 'false'} AS __late FROM ${this.fresh})`;
    const id = (c: string) => `PARTITION BY ${[...ids, c].join(', ')}`;
    const same = [...ids.map((k) => `i.${k} IS NOT DISTINCT FROM e.${k}`), 'i.__is = e.__os'].join(' AND ');
    await this.conn.run(`CREATE OR REPLACE TEMP TABLE __sluice_sessions AS
      WITH s AS (SELECT *, bool_or(__late) OVER (${id(W.start)}) AS __slate, (max(__eff) OVER (${id(W.start)}) + 1)::INTEGER AS ${W.rev},
                        (max(__eff) OVER (${id('__os')}) + 1)::INTEGER AS __rrev FROM (${this.sessionsOf(rows)})),
           e AS (SELECT *, ${W.end} <= ${ts(wm)} AND (${W.end} > ${f} OR __slate) AS __e, coalesce(__oe <= ${f}, false) AND __slate AS __rc FROM s)
      SELECT e.* EXCLUDE (__rc), e.__rc AND i.__is IS NULL AS __r
      FROM e LEFT JOIN (SELECT DISTINCT ${ids.length ? `${ids.join(', ')}, ` : ''}${W.start} AS __is FROM e WHERE __e) i ON ${same}`);
    const changed = Number((await this.conn.runAndReadAll(`SELECT count(*) FROM __sluice_sessions WHERE (__e AND ${W.rev} > 0) OR __r`)).getRows()[0][0]);
    if (changed > 0) {
      await this.conn.run(
        `CREATE OR REPLACE TABLE ${this.revs} AS SELECT * EXCLUDE (${[W.start, W.end, W.rev, W.rowRev, ...helpers].join(', ')}),
           CASE WHEN __e AND ${W.rev} > 0 THEN ${W.rev} WHEN __r THEN __rrev ELSE ${W.rowRev} END::INTEGER AS ${W.rowRev} FROM __sluice_sessions`,
      );
    }
    const closing =
      `SELECT *, false AS ${W.retracted} FROM __sluice_sessions WHERE __e UNION ALL BY NAME ` +
      `SELECT * EXCLUDE (${W.start}, ${W.end}, ${W.rev}), __os AS ${W.start}, __oe AS ${W.end}, __rrev AS ${W.rev}, true AS ${W.retracted} FROM __sluice_sessions WHERE __r`;
    return { closing, rewrite: changed > 0 };
  }

  /** The query of the rows of the windows closing (CLOSING), and whether the state's revisions changed (see sessionClosing). */
  private async closingSql(fired: number, wm: number, parts: Map<string, PartState>, updates: number[], reopen: boolean, closeAll: boolean): Promise<{ closing: string; rewrite: boolean }> {
    const updated = updates.length ? ` OR ${W.start} IN (${updates.map(ts).join(', ')})` : '';
    const emitted = `((${W.end} > ${this.firedSql(fired, parts)} AND ${W.end} <= ${ts(wm)})${updated})`;
    let closing: string;
    let rewrite = false;
    // A session's emitted rows carry their revision and retraction (see sessionClosing).
    const sessionCols = this.w.kind === 'session' ? `, 0::INTEGER AS ${W.rev}, false AS ${W.retracted}` : '';
    if (!closeAll && wm <= fired && updates.length === 0 && !reopen) {
      // The watermark did not move: no window closes (a session started since has its end past
      // the watermark, as no row older than it is taken). The emission runs over no row.
      closing = `SELECT *${sessionCols} FROM (${this.windowsOf(this.fresh)}) WHERE false`;
    } else if (this.sessionUpdate) {
      ({ closing, rewrite } = await this.sessionClosing(this.firedSql(fired, parts), wm, reopen));
    } else if (this.w.kind === 'session') {
      await this.conn.run(`CREATE OR REPLACE TEMP TABLE __sluice_sessions AS ${this.sessionsOf(this.all())}`);
      closing = `SELECT *${sessionCols} FROM __sluice_sessions WHERE ${W.end} <= ${ts(wm)}`;
    } else {
      // Rows of the state and of this batch that may be in a closing window: those whose last window closes after `fired`.
      const col = this.w.kind === 'tumble' ? W.start : W.last;
      // A hopping row is in an updated window when its last window ends after the window's start.
      const reopened = updates.length === 0 ? '' : this.w.kind === 'tumble' ? updated : ` OR ${this.endOf(col)} > ${ts(updates[0])}`;
      const open = `${this.endOf(col)} > ${ts(fired)}${reopened}`;
      const rows = this.stateExists ? `(SELECT * FROM ${this.state} WHERE ${open} UNION ALL BY NAME SELECT * FROM ${this.fresh})` : this.fresh;
      closing = `SELECT * FROM (${this.windowsOf(rows)}) WHERE ${emitted}`;
    }
    return { closing, rewrite };
  }

  /** With a state store: each partition's windows are emitted up to `wm` once the batch commits. */
  private settle(parts: Map<string, PartState>, wm: number): void {
    if (!this.partitioned) return;
    for (const p of parts.values()) p.fired = Math.max(p.fired ?? NEG, wm);
  }

  /** Under late: update, the `_revision` column of emitted rows: the next for `updates`' windows, 0 for the others. */
  private revisionSql(updates: number[]): string {
    if (this.settings.late !== 'update') return '';
    if (this.w.kind === 'session') return `, ${W.rev} AS _revision, ${W.retracted} AS _retracted`;
    if (updates.length === 0) return ', 0::INTEGER AS _revision';
    return `, CASE ${updates.map((u) => `WHEN ${W.start} = ${ts(u)} THEN ${(this.revisions.get(u) ?? 0) + 1}`).join(' ')} ELSE 0 END::INTEGER AS _revision`;
  }

  /** This batch's rows of the model's input, with the event time and window columns, in `fresh`. */
  private async buffer(shape: string, runs: PartitionRun[]): Promise<void> {
    this.freshShape = shape;
    const q = ident(this.w.qualifier);
    let input = this.columns.get(shape);
    if (!input) {
      const d = await this.conn.runAndReadAll(`DESCRIBE (${this.w.input})`);
      const wanted = new Set(this.w.names);
      const cols = d
        .getRows()
        .map((r) => String(r[0]))
        .filter((c) => c !== MSG_COL && wanted.has(c.toLowerCase()));
      const t = this.w.processing ? '' : String((await this.conn.runAndReadAll(`DESCRIBE (SELECT ${this.w.time} FROM (${this.w.input}) AS ${q})`)).getRows()[0][1]);
      input = { cols, time: eventTime(this.w.time, t) };
      this.columns.set(shape, input);
    }
    const cols = input.cols;
    // Processing time: when the engine handles the batch.
    const time = this.w.processing ? ts(this.clock.now() * 1000) : input.time;
    const extra = [
      `${time} AS ${this.tsCol}`,
      ...this.w.keys.map((k, i) => `${k} AS ${W.key}${i}`),
      ...(this.w.kind === 'tumble' ? [`time_bucket(${this.w.size}, ${time}) AS ${W.start}`] : []),
      ...(this.w.kind === 'hop' ? [`time_bucket(${this.w.slide}, ${time}) AS ${W.last}`] : []),
      ...(this.partitioned ? [`${partOf(runs, `${q}.${MSG_COL}`)} AS ${W.part}`] : []),
      ...(this.sessionUpdate ? [`NULL::INTEGER AS ${W.rowRev}`] : []),
    ];
    // CREATE TABLE AS reports no row count: lateRows() counts the rows in its one scan.
    await this.conn.run(`CREATE OR REPLACE TABLE ${this.fresh} AS SELECT ${[...cols.map((c) => `${q}.${ident(c)}`), ...extra, `${q}.${MSG_COL}`].join(', ')} FROM (${this.w.input}) AS ${q}`);
  }

  /** Sorts out this batch's late rows (and rows without an event time) by the `late` policy. */
  private async lateRows(
    fired: number,
  ): Promise<{ rows: number; failures: MessageFailure[]; dropped: number; droppedRows?: number; updates: number[]; updatedMessages: number; max: number | null; reopen?: boolean }> {
    const failures: MessageFailure[] = [];
    const seen = new Set<number>();
    // Hopping windows under late: update: a row may update an emitted window while its later
    // windows are still open; only a row older than the watermark can be in an emitted one.
    const hopUpdate = this.w.kind === 'hop' && this.settings.late === 'update';
    const late = hopUpdate && !this.noneFired() ? `${this.tsCol} < ${this.firedSql(fired, this.parts)}` : this.lateSql();
    // One scan for the common case: no row without an event time, none late.
    const [total, nullCount, lateCount, maxTs] = (
      await this.conn.runAndReadAll(`SELECT count(*), count(*) FILTER (WHERE ${this.tsCol} IS NULL), count(*) FILTER (WHERE ${late}), epoch_us(max(${this.tsCol})) FROM ${this.fresh}`)
    ).getRows()[0];
    const max = maxTs === null ? null : Number(maxTs);
    const rows = Number(total);
    if (Number(nullCount) === 0 && Number(lateCount) === 0) return { rows, failures, dropped: 0, updates: [], updatedMessages: 0, max };
    const nulls = await this.conn.runAndReadAll(`SELECT DISTINCT ${MSG_COL} FROM ${this.fresh} WHERE ${this.tsCol} IS NULL`);
    for (const [m] of nulls.getRows()) {
      seen.add(Number(m));
      failures.push({ index: Number(m), stage: 'transform', model: this.model, error: `the event time (${this.w.time}) is NULL: the event belongs to no window` });
    }
    if (this.noneFired()) return { rows, failures, dropped: 0, updates: [], updatedMessages: 0, max };
    const start = this.w.kind === 'tumble' ? W.start : this.w.kind === 'hop' ? W.last : this.tsCol;
    const r = await this.conn.runAndReadAll(`SELECT ${MSG_COL}, epoch_us(${start}), epoch_us(${this.firedSql(fired, this.parts)}) FROM ${this.fresh} WHERE ${late}`);
    const found = r.getRows().map(([m, s, f]) => ({ msg: Number(m), start: Number(s), fired: Number(f) }));
    if (found.length === 0) return { rows, failures, dropped: 0, updates: [], updatedMessages: 0, max };
    const policy = this.settings.late;
    const at = new Date(fired / 1000).toISOString();
    // Late events are counted as messages, whatever the policy (a message may give several rows).
    if (policy === 'drop') {
      const gone = await this.conn.run(`DELETE FROM ${this.fresh} WHERE ${late}`);
      return { rows, failures, dropped: new Set(found.map((x) => x.msg)).size, droppedRows: Number(gone.rowsChanged), updates: [], updatedMessages: 0, max };
    }
    const updates = new Set<number>();
    const updatedMsgs = new Set<number>();
    if (hopUpdate) return this.hopUpdates(rows, failures, seen, fired, max);
    for (const x of found) {
      // Kept for an update while the window's state is held: until its end plus allowed_lateness.
      // A session's event (x.start is its time; size 0): while no session it could merge with
      // has been evicted (a session's rows go at its end plus allowed_lateness, and an event
      // merges only with a session whose end is after it).
      const held = policy === 'update' && x.start + this.us.size + this.us.allowed > x.fired;
      if (held) {
        if (this.w.kind !== 'session') updates.add(x.start);
        updatedMsgs.add(x.msg);
        continue;
      }
      if (seen.has(x.msg)) continue;
      seen.add(x.msg);
      const why =
        policy === 'update'
          ? `late event: its window was emitted when the watermark passed ${at} and its state is gone (allowed_lateness ${this.settings.allowedLateness}); late: update`
          : `late event: its window was emitted when the watermark passed ${at}; late: dlq`;
      failures.push({ index: x.msg, stage: 'transform', model: this.model, error: why });
      this.lateMsgs.add(x.msg);
    }
    return { rows, failures, dropped: 0, updates: [...updates].sort((a, b) => a - b), updatedMessages: updatedMsgs.size, max, reopen: updatedMsgs.size > 0 && this.w.kind === 'session' };
  }

  /**
   * max_groups_per_window: the groups this batch would add to a window already holding the
   * most it may. on_max_groups: fail stops the run; dlq refuses the messages of the groups past
   * the cap (the first new groups of a batch, in message order, take the room left). A
   * session window's groups are its keys with an open session.
   */
  private async overCap(cap: number): Promise<MessageFailure[]> {
    const keys = this.w.keys.map((_, i) => `${W.key}${i}`);
    const win = this.w.kind === 'session' ? `0::BIGINT` : W.start;
    const assign = (rel: string) =>
      this.w.kind === 'hop' ? `SELECT ${W.start} AS __w, ${[...keys, MSG_COL].join(', ')} FROM (${this.windowsOf(rel)})` : `SELECT ${win} AS __w, ${[...keys, MSG_COL].join(', ')} FROM ${rel}`;
    const same = ['f.__w = o.__w', ...keys.map((k) => `f.${k} IS NOT DISTINCT FROM o.${k}`)].join(' AND ');
    const grouped = ['__w', ...keys].join(', ');
    const old = this.stateExists
      ? `SELECT DISTINCT ${grouped} FROM (${assign(this.state)}) WHERE __w IN (SELECT __w FROM (${assign(this.fresh)}))`
      : `SELECT ${grouped} FROM (${assign(this.fresh)}) WHERE false`;
    const over = await this.conn.runAndReadAll(`
      WITH fresh_groups AS (SELECT ${grouped}, min(${MSG_COL}) AS __first FROM (${assign(this.fresh)}) GROUP BY ALL),
           old AS (${old}),
           counts AS (SELECT __w, count(*) AS __n FROM old GROUP BY __w),
           added AS (SELECT f.* FROM fresh_groups f WHERE NOT EXISTS (SELECT 1 FROM old o WHERE ${same})),
           ranked AS (SELECT a.*, coalesce(c.__n, 0) + row_number() OVER (PARTITION BY a.__w ORDER BY a.__first) AS __rank FROM added a LEFT JOIN counts c USING (__w))
      SELECT DISTINCT f.${MSG_COL}, ${this.w.kind === 'session' ? 'NULL' : 'epoch_us(r.__w)'} FROM (${assign(this.fresh)}) f JOIN ranked r ON ${same.replaceAll('o.', 'r.')} WHERE r.__rank > ${cap} ORDER BY 1`);
    const rows = over.getRows();
    if (rows.length === 0) return [];
    const where = (w: unknown) => (w === null ? 'open sessions' : `the window starting ${new Date(Number(w) / 1000).toISOString()}`);
    if (this.settings.onMaxGroups === 'fail') {
      throw new SluiceError(
        'CONFIG',
        `model ${this.model}: ${where(rows[0][1])} would hold more than max_groups_per_window (${cap}) groups; raise it, or set on_max_groups: dlq to dead-letter the messages past it`,
      );
    }
    return rows.map(([m, w]) => ({ index: Number(m), stage: 'transform' as const, model: this.model, error: `${where(w)} already holds max_groups_per_window (${cap}) groups; on_max_groups: dlq` }));
  }

  /**
   * late: update on hopping windows. A row joins every window it belongs to that is still held:
   * the open ones, and the emitted ones whose end plus allowed_lateness the watermark has not
   * passed (emitted again, with the next revision). A row none of whose windows is held any
   * more is dead-lettered. Every message with a row in an emitted window counts as an update.
   */
  private async hopUpdates(
    rows: number,
    failures: MessageFailure[],
    seen: Set<number>,
    fired: number,
    max: number | null,
  ): Promise<{ rows: number; failures: MessageFailure[]; dropped: number; updates: number[]; updatedMessages: number; max: number | null }> {
    const allowed = `to_microseconds(${this.us.allowed}::BIGINT)`;
    const f = this.firedSql(fired, this.parts);
    const windows = `SELECT ${MSG_COL}, ${W.start}, ${W.end}${this.partitioned ? `, ${W.part}` : ''} FROM (${this.windowsOf(this.fresh)})`;
    const r = await this.conn.runAndReadAll(
      `SELECT ${MSG_COL}, list(DISTINCT epoch_us(${W.start})) FILTER (WHERE ${W.end} <= ${f} AND ${W.end} + ${allowed} > ${f}), bool_or(${W.end} > ${f} OR ${W.end} + ${allowed} > ${f})
       FROM (${windows}) GROUP BY ALL HAVING bool_or(${W.end} <= ${f})`,
    );
    const updates = new Set<number>();
    let updated = 0;
    const at = new Date(fired / 1000).toISOString();
    for (const [m, starts, held] of r.getRows()) {
      const msg = Number(m);
      if (!held) {
        if (seen.has(msg)) continue;
        seen.add(msg);
        failures.push({
          index: msg,
          stage: 'transform',
          model: this.model,
          error: `late event: its windows were emitted when the watermark passed ${at} and their state is gone (allowed_lateness ${this.settings.allowedLateness}); late: update`,
        });
        this.lateMsgs.add(msg);
        continue;
      }
      const list = ((starts as { items?: unknown[] } | null)?.items ?? []).map(Number);
      if (list.length === 0) continue;
      for (const s of list) updates.add(s);
      updated++;
    }
    return { rows, failures, dropped: 0, updates: [...updates].sort((a, b) => a - b), updatedMessages: updated, max };
  }

  /**
   * Advances the per-partition maxima and last-seen times with this batch's rows. A partition
   * is seen when it has a row (a partition whose messages the model's WHERE filters out goes
   * idle). `assigned`: the partitions the source reads; one not known yet is added without an
   * event, holding the watermark back until it has one or goes idle; one no longer read is
   * dropped.
   */
  private async advance(parts: Map<string, PartState>, runs: PartitionRun[], max: number | null, assigned: string[] | undefined): Promise<void> {
    const now = this.clock.now();
    const names = [...new Set(runs.map((r) => r.part))];
    // With a state store, the partitions held are those claimed (see WindowSet): none is added here.
    if (assigned && !this.partitioned) {
      const keep = new Set([...assigned, ...names]);
      for (const p of [...parts.keys()]) if (!keep.has(p)) parts.delete(p);
      for (const p of assigned) if (!parts.has(p)) parts.set(p, this.newPart(now));
    }
    // One partition: the batch's largest event time, found with the late rows.
    const maxima: unknown[][] =
      names.length <= 1
        ? [[names[0] ?? '', max]]
        : (
            await this.conn.runAndReadAll(
              `SELECT r.part, epoch_us(max(f.${this.tsCol})) FROM ${this.fresh} f JOIN (VALUES ${runs.map((x) => `(${lit(x.part)}, ${x.lo}, ${x.hi})`).join(', ')}) r(part, lo, hi) ON f.${MSG_COL} BETWEEN r.lo AND r.hi GROUP BY r.part`,
            )
          ).getRows();
    for (const [p, max] of maxima) {
      if (max === null || (this.partitioned && !parts.has(String(p)))) continue;
      const x = parts.get(String(p)) ?? this.newPart(now);
      x.max = x.max === null ? Number(max) : Math.max(x.max, Number(max));
      x.seen = now;
      parts.set(String(p), x);
    }
  }

  /** A partition first seen (with a state store, one that brings no state: none of its windows was emitted). */
  private newPart(now: number): PartState {
    return this.partitioned ? { max: null, seen: now, fired: null } : { max: null, seen: now };
  }

  /**
   * The watermark: the minimum over the active partitions of their largest event time, less the
   * lateness; never going back (with a state store, never below the lowest partition's `fired`:
   * each partition's own never goes back, see settle()).
   */
  private watermark(parts: Map<string, PartState>): number {
    const now = this.clock.now();
    if (this.w.processing) return Math.max(this.fired, now * 1000 - this.us.lateness);
    return Math.max(this.fired, eventWatermark([...parts.values()], now, this.us) ?? NEG);
  }

  /** Makes this batch's state durable in `dir` (before the WAL commit); returns the checkpoint it commits. */
  async stage(seq: number, dir: string, offsets?: ReadonlyMap<string, number>): Promise<WindowCheckpoint> {
    let p = this.pending;
    // With a state store: the offset after each partition's last message of the batch.
    if (offsets?.size && !p)
      p = this.pending = { parts: new Map([...this.parts].map(([k, v]) => [k, { ...v }])), wm: this.fired, dropped: 0, updates: [], updatedMessages: 0, added: 0, closeAll: false, synthetic: true };
    if (p)
      for (const [part, o] of offsets ?? []) {
        const x = p.parts.get(part);
        if (x) x.offset = o;
      }
    // Partitions came or went (a state store), though the models did not run: the state is rewritten.
    if (!p && this.compactNext) {
      p = { parts: this.parts, wm: this.fired, dropped: 0, updates: [], updatedMessages: 0, added: 0, closeAll: false, synthetic: true };
      this.pending = p;
    }
    // Not run (no message of the batch decoded): nothing changed.
    if (!p) return this.checkpoint();
    if (this.partitioned && p.added > 0 && !p.synthetic) {
      p.dirty = new Set((await this.conn.runAndReadAll(`SELECT DISTINCT ${W.part} FROM ${this.fresh}`)).getRows().map((r) => String(r[0])));
    }
    let files = this.files;
    if (p.synthetic && !this.stateExists) {
      // No state left: no file.
      p.staged = { file: '', compact: true };
      files = [];
    } else if (p.added > 0 || (p.closeAll && this.files.length) || this.compactNext || p.rewrite) {
      await fsp.mkdir(dir, { recursive: true });
      const compact = p.closeAll || this.compactNext || p.rewrite === true || this.files.length + 1 >= COMPACT_AFTER;
      const name = `${String(seq).padStart(12, '0')}${compact ? '-state' : ''}.parquet`;
      const tmp = path.join(dir, `.${name}.tmp`);
      const rows = compact ? await this.liveAfter(p) : this.fresh;
      await this.conn.run(`COPY (SELECT * FROM ${rows}) TO ${lit(tmp)} (FORMAT parquet, COMPRESSION lz4_raw)`);
      await fsyncFile(tmp);
      await fsp.rename(tmp, path.join(dir, name));
      await fsyncDir(dir);
      p.staged = { file: name, compact };
      files = compact ? [name] : [...this.files, name];
    }
    const revisions = new Map(this.revisions);
    for (const u of p.updates) revisions.set(u, (revisions.get(u) ?? 0) + 1);
    return {
      fired: this.partitioned ? nullIfNeg(WindowOperator.minFired(p.parts)) : nullIfNeg(p.wm),
      parts: Object.fromEntries(p.parts),
      files,
      ...(revisions.size ? { revisions: Object.fromEntries([...revisions].map(([k, v]) => [String(k), v])) } : {}),
    };
  }

  /** The checkpoint of the state as committed. */
  private checkpoint(): WindowCheckpoint {
    return {
      fired: nullIfNeg(this.fired),
      parts: Object.fromEntries(this.parts),
      files: this.files,
      ...(this.revisions.size ? { revisions: Object.fromEntries([...this.revisions].map(([k, v]) => [String(k), v])) } : {}),
    };
  }

  /** The state as it is once this batch is applied (a compaction writes it). */
  private async liveAfter(p: Pending): Promise<string> {
    await this.conn.run(`CREATE OR REPLACE TABLE ${this.live} AS SELECT * FROM ${p.synthetic ? this.state : p.rewrite ? this.revs : this.all()}`);
    await this.evict(this.live, p.wm, p.parts);
    return this.live;
  }

  /** Deletes from `table` the rows no window needs any more at watermark `wm` (with a state store, each partition's own in `parts`). */
  private async evict(table: string, wm: number, parts: Map<string, PartState>): Promise<void> {
    if (this.partitioned ? [...parts.values()].every((p) => (p.fired ?? NEG) === NEG) : wm === NEG) return;
    const f = this.firedSql(wm, parts);
    if (this.w.kind !== 'session') {
      await this.conn.run(`DELETE FROM ${table} WHERE ${this.evictedSql(f)}`);
      return;
    }
    // Rows of emitted sessions (a session never takes a row once emitted, unless late: update
    // keeps them: see lateRows).
    const keys = [...this.w.keys.map((_, i) => `${W.key}${i}`), ...(this.partitioned ? [W.part] : [])];
    // Under late: update, an emitted session's rows stay until its end plus allowed_lateness.
    const done = this.sessionUpdate ? `${W.end} + to_microseconds(${this.us.allowed}::BIGINT) <= ${f}` : `${W.end} <= ${f}`;
    await this.conn.run(`CREATE OR REPLACE TEMP TABLE __sluice_done AS SELECT DISTINCT ${[...keys, W.start, W.end].join(', ')} FROM (${this.sessionsOf(table)}) WHERE ${done}`);
    // A session's rows run from its start to its last event (its end less the gap): under
    // max_session_duration the next session of the key may start before this one's end.
    const last = `d.${W.end} - to_microseconds(${this.us.gap}::BIGINT)`;
    const match = [...keys.map((k) => `t.${k} IS NOT DISTINCT FROM d.${k}`), `t.${this.tsCol} >= d.${W.start}`, `t.${this.tsCol} <= ${last}`].join(' AND ');
    await this.conn.run(`DELETE FROM ${table} t WHERE EXISTS (SELECT 1 FROM __sluice_done d WHERE ${match})`);
  }

  /** After the WAL commit: the batch's rows join the state, closed windows leave it. */
  async commit(dir: string): Promise<void> {
    const p = this.pending;
    if (!p) return;
    this.pending = undefined;
    for (const part of p.dirty ?? []) this.rowsDirty.add(part);
    if (p.staged?.compact && p.staged.file === '') {
      // Nothing left to keep (see stage()).
    } else if (p.staged?.compact) {
      await promote(this.conn, this.live, this.state);
      if (p.rewrite) await this.conn.run(`DROP TABLE IF EXISTS ${this.revs}`);
      this.stateExists = true;
      this.freshCols = undefined;
    } else if (p.added > 0) {
      await this.appendFresh();
      await this.evict(this.state, p.wm, p.parts);
    } else if (this.stateExists) await this.evict(this.state, p.wm, p.parts);
    this.compactNext = false;
    const old = this.files;
    if (p.staged) this.files = p.staged.compact ? (p.staged.file ? [p.staged.file] : []) : [...this.files, p.staged.file];
    if (p.staged?.compact) for (const f of old) await fsp.rm(path.join(dir, f), { force: true });
    for (const u of p.updates) this.revisions.set(u, (this.revisions.get(u) ?? 0) + 1);
    const floor = this.partitioned ? WindowOperator.minFired(p.parts) : p.wm;
    for (const u of [...this.revisions.keys()]) if (u + this.us.size + this.us.allowed <= floor) this.revisions.delete(u);
    this.rows = await this.countRows();
    this.fired = this.partitioned ? WindowOperator.minFired(p.parts) : p.wm;
    this.parts = p.parts;
    this.counts.late.drop += p.dropped;
    this.counts.late.update += p.updatedMessages;
    this.counts.late.dlq += this.lateMsgs.size;
    this.lateMsgs.clear();
  }

  /** Adds `fresh` to the state table, which takes any new column (and widened type) first. */
  private async appendFresh(): Promise<void> {
    if (!this.stateExists) {
      await this.conn.run(`CREATE OR REPLACE TABLE ${this.state} AS SELECT * FROM ${this.fresh}`);
      this.stateExists = true;
      this.freshCols = undefined;
      return;
    }
    // The columns are compared only when the input's schema differs from the last batch's.
    const fresh = this.freshShape;
    if (fresh !== this.freshCols) {
      const have = new Map((await this.conn.runAndReadAll(`DESCRIBE ${this.state}`)).getRows().map((r) => [String(r[0]), String(r[1])]));
      for (const [name, type] of (await this.conn.runAndReadAll(`DESCRIBE ${this.fresh}`)).getRows().map((r) => [String(r[0]), String(r[1])])) {
        const t = have.get(name);
        if (t === undefined) await this.conn.run(`ALTER TABLE ${this.state} ADD COLUMN ${ident(name)} ${type}`);
        else if (t !== type) await this.conn.run(`ALTER TABLE ${this.state} ALTER ${ident(name)} TYPE ${type}`);
      }
      this.freshCols = fresh;
    }
    await this.conn.run(`INSERT INTO ${this.state} BY NAME SELECT * FROM ${this.fresh}`);
  }

  /** The input schema (the executor's shape key) of the last `fresh` appended to the state, and of `fresh` now (see appendFresh). */
  private freshCols?: string;
  private freshShape?: string;

  /** Forgets an attempt that did not commit, and the state file it staged. */
  async abandon(dir: string): Promise<void> {
    const staged = this.pending?.staged;
    this.pending = undefined;
    if (staged?.file) await fsp.rm(path.join(dir, staged.file), { force: true });
  }

  /** Restores the state of the last commit (and removes files no commit lists). */
  async restore(cp: WindowCheckpoint | undefined, dir: string): Promise<void> {
    this.fired = cp?.fired ?? NEG;
    this.parts = new Map(Object.entries(cp?.parts ?? {}));
    if (this.partitioned) for (const p of this.parts.values()) if (p.fired === undefined) p.fired = cp?.fired ?? null;
    this.files = cp?.files ?? [];
    this.revisions = new Map(Object.entries(cp?.revisions ?? {}).map(([k, v]) => [Number(k), v]));
    const listed = new Set(this.files);
    for (const name of await fsp.readdir(dir).catch(() => [] as string[])) {
      if (!listed.has(name) || isTempName(name)) await fsp.rm(path.join(dir, name), { force: true });
    }
    if (this.files.length === 0) return;
    await this.conn.run(`CREATE OR REPLACE TABLE ${this.state} AS SELECT * FROM read_parquet(${fileList(this.files.map((f) => path.join(dir, f)))}, union_by_name = true)`);
    this.stateExists = true;
    // State written under another late policy has no revisions: none of its sessions was updated.
    if (this.sessionUpdate) await this.conn.run(`ALTER TABLE ${this.state} ADD COLUMN IF NOT EXISTS ${W.rowRev} INTEGER`);
    if (this.partitioned) {
      const cols = (await this.conn.runAndReadAll(`DESCRIBE ${this.state}`)).getRows().map((r) => String(r[0]));
      if (!cols.includes(W.part)) {
        throw new SluiceError(
          'CONFIG',
          `model ${this.model}: its window state in ${dir} was written without window_state (a state store), and does not say which partition each row came from; run without window_state until its windows have closed, or remove the WAL directory to start this worker's windows afresh`,
        );
      }
      // Every partition held is written to the store at the next batch (a crash may have come between a WAL commit and the store's write).
      for (const p of this.parts.keys()) this.rowsDirty.add(p);
    }
    await this.evict(this.state, this.fired, this.parts);
    this.rows = await this.countRows();
  }

  /** The revision of each window re-emitted by late updates (null: none). */
  revisionsOf(): Record<string, number> | null {
    return this.revisions.size ? Object.fromEntries([...this.revisions].map(([k, v]) => [String(k), v])) : null;
  }

  /** With a state store: the partitions whose state this model holds. */
  held(): ReadonlyMap<string, PartState> {
    return this.parts;
  }

  /** With a state store: the partitions as they are once the batch staged commits (as held() without one). */
  heldAfter(): ReadonlyMap<string, PartState> {
    return this.pending?.parts ?? this.parts;
  }

  /** With a state store: partitions whose rows changed since their last write to the store, the batch staged included. */
  dirtyAfter(part: string): boolean {
    return this.rowsDirty.has(part) || (this.pending?.dirty?.has(part) ?? false);
  }

  /** With a state store: forgets a partition (it moved to another worker): its rows and watermark. */
  async dropPart(part: string): Promise<void> {
    this.parts.delete(part);
    this.rowsDirty.delete(part);
    if (this.stateExists) await this.conn.run(`DELETE FROM ${this.state} WHERE ${W.part} = ${lit(part)}`);
    this.compactNext = true;
    this.fired = WindowOperator.minFired(this.parts);
    this.rows = await this.countRows();
  }

  /** With a state store: takes a partition's state as the store holds it (in place of any held), under `snap.epoch`. */
  async loadPart(part: string, snap: PartitionSnapshot, tmpDir: string): Promise<void> {
    if (this.stateExists) await this.conn.run(`DELETE FROM ${this.state} WHERE ${W.part} = ${lit(part)}`);
    if (snap.rows && snap.rows.length > 0) {
      await fsp.mkdir(tmpDir, { recursive: true });
      const tmp = path.join(tmpDir, `.load-${process.pid}.parquet.tmp`);
      await fsp.writeFile(tmp, snap.rows);
      try {
        const rel = `(SELECT * FROM read_parquet(${lit(tmp)}) WHERE ${W.part} = ${lit(part)})`;
        await this.conn.run(`CREATE OR REPLACE TABLE ${this.state} AS ${this.stateExists ? `SELECT * FROM ${this.state} UNION ALL BY NAME SELECT * FROM ${rel}` : `SELECT * FROM ${rel}`}`);
      } finally {
        await fsp.rm(tmp, { force: true });
      }
      this.stateExists = true;
      this.freshCols = undefined;
      if (this.sessionUpdate) await this.conn.run(`ALTER TABLE ${this.state} ADD COLUMN IF NOT EXISTS ${W.rowRev} INTEGER`);
    }
    this.parts.set(part, { max: snap.max, seen: this.clock.now(), fired: snap.fired, epoch: snap.epoch, offset: snap.offset });
    for (const [k, v] of Object.entries(snap.revisions ?? {})) this.revisions.set(Number(k), Math.max(v, this.revisions.get(Number(k)) ?? 0));
    // Each partition's rows at its own watermark (the other partitions' rows stay as they are).
    if (this.stateExists) await this.evict(this.state, this.fired, this.parts);
    this.compactNext = true;
    this.fired = WindowOperator.minFired(this.parts);
    this.rows = await this.countRows();
  }

  /**
   * With a state store: a partition's rows as Parquet (empty: none), as they are once the batch
   * staged commits. Rows the watermark has passed may be among them: a load evicts them.
   */
  async exportPart(part: string, tmpDir: string): Promise<Buffer> {
    const p = this.pending;
    let rel: string;
    if (p?.staged?.compact) {
      if (p.staged.file === '') return Buffer.alloc(0);
      rel = this.live;
    } else if (p && !p.synthetic && p.added > 0) rel = this.all();
    else if (this.stateExists) rel = this.state;
    else return Buffer.alloc(0);
    await fsp.mkdir(tmpDir, { recursive: true });
    const tmp = path.join(tmpDir, `.export-${process.pid}.parquet.tmp`);
    try {
      await this.conn.run(`COPY (SELECT * FROM ${rel} WHERE ${W.part} = ${lit(part)}) TO ${lit(tmp)} (FORMAT parquet, COMPRESSION zstd)`);
      return await fsp.readFile(tmp);
    } finally {
      await fsp.rm(tmp, { force: true });
    }
  }

  private async countRows(): Promise<number> {
    if (!this.stateExists) return 0;
    return Number((await this.conn.runAndReadAll(`SELECT count(*) FROM ${this.state}`)).getRows()[0][0]);
  }

  /** True when time passing alone would close a window now (processing time, or partitions gone idle). */
  wouldAdvance(): boolean {
    if (this.rows === 0 || this.pending) return false;
    return this.watermark(this.parts) > this.fired;
  }

  /** True while the model holds rows of windows not yet emitted. */
  holdsState(): boolean {
    return this.rows > 0;
  }

  /** Rows and windows in the state, and the bytes of its files, for the metrics. */
  async stats(dir: string): Promise<{ rows: number; windows: number; bytes: number }> {
    let bytes = 0;
    for (const f of this.files) bytes += (await fsp.stat(path.join(dir, f)).catch(() => ({ size: 0 }))).size;
    if (!this.stateExists) return { rows: 0, windows: 0, bytes };
    const col =
      this.w.kind === 'tumble'
        ? W.start
        : this.w.kind === 'hop'
          ? W.last
          : [...this.w.keys.map((_, i) => `${W.key}${i}`), `time_bucket(to_microseconds(${this.us.gap}::BIGINT), ${this.tsCol})`].join(', ');
    const r = await this.conn.runAndReadAll(`SELECT count(*), count(DISTINCT (${col})) FROM ${this.state}`);
    const [rows, windows] = r.getRows()[0].map(Number);
    return { rows, windows, bytes };
  }

  /** The watermark (µs), null before the first event. */
  get watermarkUs(): number | null {
    return this.fired === NEG ? null : this.fired;
  }
}
