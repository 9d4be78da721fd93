import fsp from 'node:fs/promises';
import type { DuckDBConnection } from '@duckdb/node-api';
import { SluiceError } from '../errors.js';
import { MSG_COL, analyzeSql } from '../sql/analyze.js';
import { ident, lit } from '../sql/quote.js';
import { MODEL_SCHEMA, SOURCE_SCHEMA } from '../sql/template.js';
import type { HandlerDef, ModelDef } from '../project/project-loader.js';
import { silentLogger } from '../ops/logger.js';
import { HandlerStep, type HandlerEnv } from './handler-step.js';
import { relationFeeds } from '../project/model-graph.js';
import type { PayloadBlock, RawMessage } from '../connectors/types.js';
import type { Structure } from './structure.js';
import { asInfraError } from './infra-errors.js';
import { applyContract, duckSupertype, emptyReport, resolveContractTypes, SchemaTracker, type ContractReport, type ModelContract } from './contracts.js';
import { stopwatch } from './batch-load.js';
import { DEFAULT_WINDOW_SETTINGS, WindowOperator, type OperatorRun, type WindowSettings } from './windows.js';
import { WindowSet, type StateOperator } from './window-set.js';
import { JoinOperator } from './joins.js';
import { DedupOperator } from './dedup.js';
import type { DedupQuery } from '../sql/dedup.js';
import { ViewOperator } from './views.js';
import type { ViewQuery } from '../sql/views.js';
import type { WindowedQuery } from '../sql/windows.js';
import type { IntervalJoinQuery } from '../sql/joins.js';
import { systemClock, type Clock } from '../util/clock.js';
import { toPlain } from './plain-values.js';
import { BatchDecoder, partitionRuns, cleanError, DEFAULT_DECODE_RULES, metaColumnsUsed, type DecodeRules, type MessageFailure, type PreparedBatch } from './decoder.js';

export { toPlain } from './plain-values.js';
// The decoding half's names, for the callers of the executor.
export { blockOf } from './batch-load.js';
export { cleanError, decodeRules, DEFAULT_DECODE_RULES, metaColumnsUsed, type DecodeRules, type MessageFailure, type PreparedBatch } from './decoder.js';

export interface CompiledModel {
  name: string;
  file: string;
  /** Models this one reads with ref(). */
  refs: string[];
  /** The sources whose batches feed it (ModelDef.feeds). */
  feeds: string[];
  /** SQL with templates rendered and MSG_COL threaded through. */
  sql: string;
  stateful: string[];
  outputColumns: string[] | null;
  /** Its schema contract, types resolved (see contracts.ts). */
  contract?: ModelContract;
  /** A windowed aggregation (engine/windows.ts runs it; `sql` is then its input). */
  window?: WindowedQuery;
  /** A windowed model's or a stream join's settings (config/models.yml `overrides.<model>.window`). */
  windowSettings?: WindowSettings;
  /** A stream-stream interval join (engine/joins.ts runs it; `sql` then holds its two inputs). */
  join?: IntervalJoinQuery;
  /** Deduplication over time (engine/dedup.ts runs it; `sql` is then its input). */
  dedup?: DedupQuery;
  /** A materialised view (engine/views.ts runs it; `sql` is then its input), and its state_ttl. */
  view?: ViewQuery;
  stateTtl?: string;
  /** A handler (engine/handler-step.ts runs it; `sql` is then its input). */
  handler?: HandlerDef;
}

/** The SQL text of a model in which metadata columns may be mentioned. */
function modelText(m: CompiledModel): string[] {
  if (m.join) return [m.join.left.input, m.join.right.input, m.join.left.time, m.join.right.time, m.join.emit];
  if (m.view) return [m.sql, ...m.view.keys, m.view.emit];
  return m.window ? [m.sql, m.window.time, ...m.window.keys, m.window.emit] : [m.sql];
}

export interface BatchOutcome {
  failures: MessageFailure[];
  /** Rows each model produced for the surviving messages (tables sluice_model.<name>). */
  rows: Map<string, number>;
  /** How many DAG runs error isolation needed (1 when nothing failed). */
  attempts: number;
  /** Milliseconds spent per stage, for debug logs. */
  timings: Record<string, number>;
  /** Models whose rows were written straight to their target file (see execute()). */
  written: Set<string>;
  /** The schema of `incoming` after this batch: what the WAL commit of this batch records. */
  structure: Structure | undefined;
  /** Schema changes and contract violations of this batch. */
  contract: ContractReport;
}

/** Compiles models for execution: template rendering was done at load; this analyses and rewrites. */
export async function compileModels(conn: DuckDBConnection, models: ModelDef[]): Promise<CompiledModel[]> {
  const out: CompiledModel[] = [];
  for (const m of models) {
    if (m.handler) {
      out.push({ name: m.name, file: m.file, refs: m.refs, feeds: m.feeds, sql: m.rendered.sql, stateful: [], outputColumns: m.handler.outputColumns ?? null, handler: m.handler });
      continue;
    }
    const a = await analyzeSql(conn, m.rendered.sql);
    if (a.error) throw new SluiceError('CONFIG', `${m.file}${a.error.line ? `:${a.error.line}` : ''}: ${a.error.message}`);
    if (a.stateful.length) {
      throw new SluiceError('CONFIG', `${m.file}: model ${m.name} is stateful: ${a.stateful.join('; ')}`);
    }
    const typeIssues = await resolveContractTypes(conn, m.name, m.contract);
    if (typeIssues.length) throw new SluiceError('CONFIG', typeIssues.map((i) => `${i.file}${i.line ? `:${i.line}` : ''}: ${i.key}: ${i.message}`).join('\n'));
    if (a.window) {
      out.push({
        name: m.name,
        file: m.file,
        refs: m.refs,
        feeds: m.feeds,
        sql: a.window.input,
        stateful: [],
        outputColumns: a.outputColumns,
        window: a.window,
        windowSettings: m.window ?? DEFAULT_WINDOW_SETTINGS,
      });
      continue;
    }
    if (a.view) {
      out.push({ name: m.name, file: m.file, refs: m.refs, feeds: m.feeds, sql: a.view.input, stateful: [], outputColumns: a.outputColumns, view: a.view, stateTtl: m.stateTtl });
      continue;
    }
    if (a.dedup) {
      out.push({
        name: m.name,
        file: m.file,
        refs: m.refs,
        feeds: m.feeds,
        sql: a.dedup.input,
        stateful: [],
        outputColumns: a.outputColumns,
        dedup: a.dedup,
        windowSettings: m.window ?? DEFAULT_WINDOW_SETTINGS,
      });
      continue;
    }
    if (a.join) {
      // `sql`: the two inputs, for what reads it to see which relations the model reads (it never runs as such).
      const sql = `${a.join.left.input}\n${a.join.right.input}`;
      out.push({ name: m.name, file: m.file, refs: m.refs, feeds: m.feeds, sql, stateful: [], outputColumns: a.outputColumns, join: a.join, windowSettings: m.window ?? DEFAULT_WINDOW_SETTINGS });
      continue;
    }
    out.push({ name: m.name, file: m.file, refs: m.refs, feeds: m.feeds, sql: a.rewritten!, stateful: a.stateful, outputColumns: a.outputColumns, contract: m.contract });
  }
  return out;
}

/** The decoder lanes of handlers' output rows (the batches' are 0 and 1). */
const HANDLER_LANES = 100;

const BINDER = /^(Binder Error|Catalog Error|Parser Error|Not implemented Error)/;

/**
 * Runs a project's models over batches of raw messages inside one DuckDB connection, with
 * per-message semantics: messages that cannot be decoded, that conflict with the schema
 * established so far, or that make a model fail are isolated (by bisection) and reported;
 * the rest of the batch proceeds in one pass.
 */
export class BatchExecutor {
  /** Loads and decodes batches (the first half of a batch), one decoder per source (each its own schema of `incoming`). */
  private readonly decoders = new Map<string, BatchDecoder>();
  /** The sources, in declaration order (two in a pipeline reading a stream join's two sources). */
  private readonly sources: string[];
  /** A stream join's sides: the source each reads (a pipeline of two sources). */
  private readonly sideSources = new Map<string, { l: string; r: string }>();
  /** Metadata columns each model mentions (see metaColumnsUsed). */
  private readonly metaUsedBy: Map<string, string[]>;
  /** The batch execute() is working on (one at a time). */
  private current!: PreparedBatch;
  /** The models' output schemas so far and their contracts (the WAL state keeps `schemas`). */
  readonly schemas: SchemaTracker;
  /** What the contracts did to the current batch. */
  private report: ContractReport = emptyReport();
  /** `current.structure` as a cache key for contract plans. */
  private shape: { structure: Structure | undefined; key: string } = { structure: undefined, key: '' };
  /** The windowed models' state and emission. */
  readonly windows: WindowSet;
  /** The handlers' steps, by name. */
  private readonly handlers = new Map<string, HandlerStep>();
  /** Where handlers log and count (the run sets it). */
  handlerEnv: HandlerEnv = { log: silentLogger() };

  /**
   * `conn` runs the models; `loadConn` (another connection to the same database, or `conn`
   * itself) loads and decodes, so that one batch can be prepared while another executes.
   */
  constructor(
    private readonly conn: DuckDBConnection,
    private readonly models: CompiledModel[],
    sources: string | string[],
    loadConn: DuckDBConnection = conn,
    rules: DecodeRules | Map<string, DecodeRules> = DEFAULT_DECODE_RULES,
    clock: Clock = systemClock,
  ) {
    this.sources = typeof sources === 'string' ? [sources] : sources;
    this.metaUsedBy = new Map(models.map((m) => [m.name, metaColumnsUsed(modelText(m))]));
    for (const name of this.sources) {
      const r = rules instanceof Map ? (rules.get(name) ?? DEFAULT_DECODE_RULES) : rules;
      this.decoders.set(name, new BatchDecoder(loadConn, metaColumnsUsed(models.flatMap(modelText)), r));
    }
    if (this.sources.length > 1) {
      const feedsOf = new Map(models.map((m) => [m.name, m.feeds]));
      for (const m of models) {
        if (!m.join || m.feeds.length < 2) continue;
        const [l, r] = [m.join.left.reads, m.join.right.reads].map((reads) => relationFeeds(reads, (x) => feedsOf.get(x) ?? []));
        if (l.length === 1 && r.length === 1 && l[0] !== r[0]) this.sideSources.set(m.name, { l: l[0], r: r[0] });
      }
    }
    const ops = new Map<string, StateOperator>();
    for (const m of models) {
      const s = m.windowSettings ?? DEFAULT_WINDOW_SETTINGS;
      if (m.window) ops.set(m.name, new WindowOperator(conn, m.name, m.window, s, clock));
      else if (m.join) ops.set(m.name, new JoinOperator(conn, m.name, m.join, s, clock));
      else if (m.dedup) ops.set(m.name, new DedupOperator(conn, m.name, m.dedup, s, clock));
      else if (m.view) ops.set(m.name, new ViewOperator(conn, m.name, m.view, m.stateTtl, clock));
    }
    this.windows = new WindowSet(ops);
    let lane = HANDLER_LANES;
    for (const m of models) if (m.handler) this.handlers.set(m.name, new HandlerStep(conn, m.name, m.handler, lane++, () => this.handlerEnv));
    this.schemas = new SchemaTracker(new Map(models.filter((m) => m.contract).map((m) => [m.name, m.contract!])), duckSupertype(conn));
  }

  /** The first source's decoder (the only one, but in a pipeline of two sources). */
  private get decoder(): BatchDecoder {
    return this.decoders.get(this.sources[0])!;
  }

  /** The schema of `incoming` established by the messages seen so far (prepared batches included). */
  get structure(): Structure | undefined {
    return this.decoder.structure;
  }

  set structure(s: Structure | undefined) {
    this.decoder.structure = s;
  }

  /** Each source's schema, in a pipeline of two sources (see structure). */
  get structures(): Record<string, Structure | undefined> {
    return Object.fromEntries([...this.decoders].map(([name, d]) => [name, d.structure]));
  }

  set structures(s: Record<string, Structure | undefined> | undefined) {
    for (const [name, d] of this.decoders) d.structure = s?.[name];
  }

  /** The partitions the source reads now, for handlers with onAssign / onRevoke (also between batches: a rebalance with nothing to read). */
  async handlerPartitions(assigned: string[] | undefined): Promise<void> {
    for (const h of this.handlers.values()) await h.partitions(assigned);
  }

  /** A batch begins for the handlers: nothing made yet, and the source's partitions as the batch shows them (onAssign, onRevoke). */
  private async beginHandlers(p: PreparedBatch): Promise<void> {
    for (const h of this.handlers.values()) {
      h.beginBatch();
      await h.partitions(p.assigned);
    }
  }

  /** Each handler's output schema so far (committed with every batch, so that a restart types its rows the same way). */
  get handlerStructures(): Record<string, Structure | undefined> | undefined {
    if (this.handlers.size === 0) return undefined;
    return Object.fromEntries([...this.handlers].map(([name, h]) => [name, h.structure]));
  }

  set handlerStructures(s: Record<string, Structure | undefined> | undefined) {
    for (const [name, h] of this.handlers) h.structure = s?.[name];
  }

  /** The run starts: each handler's onStartup and pool (a throw stops the run, naming the hook). */
  async startHandlers(): Promise<void> {
    for (const h of this.handlers.values()) await h.start();
  }

  /** The sinks are connected: each handler's onReady, then its periodic tasks. */
  async handlersReady(): Promise<void> {
    for (const h of this.handlers.values()) await h.ready();
  }

  /** The run ends: periodic tasks stopped, pools closed. */
  async stopHandlers(): Promise<void> {
    for (const h of this.handlers.values()) await h.stop();
  }

  /** First half of a batch: see BatchDecoder.prepare. `origin`: the source of its messages, in a pipeline of two. */
  async prepare(messages: RawMessage[], lane = 0, given?: PayloadBlock, origin?: string): Promise<PreparedBatch> {
    const decoder = origin === undefined ? this.decoder : this.decoders.get(origin);
    if (!decoder) throw new SluiceError('INTERNAL', `a batch of source ${origin}, which this pipeline does not read (${this.sources.join(', ')})`);
    const p = await decoder.prepare(messages, lane, given);
    if (origin !== undefined && this.sources.length > 1) p.origin = origin;
    if (this.windows.size || [...this.handlers.values()].some((h) => h.watchesPartitions)) p.partitions = partitionRuns(messages);
    return p;
  }

  /** The source of a prepared batch's messages. */
  private originOf(p: PreparedBatch): string {
    return p.origin ?? this.sources[0];
  }

  /** Models the batch does not feed (a pipeline of two sources: those fed by the other alone): they do not run. */
  private idleModels(p: PreparedBatch): Set<string> {
    if (this.sources.length < 2) return new Set();
    const origin = this.originOf(p);
    return new Set(this.models.filter((m) => !m.feeds.includes(origin)).map((m) => m.name));
  }

  async init(): Promise<void> {
    await this.conn.run(`CREATE SCHEMA IF NOT EXISTS ${SOURCE_SCHEMA}; CREATE SCHEMA IF NOT EXISTS ${MODEL_SCHEMA}`);
    for (const op of this.windows.ops.values()) await op.init();
  }

  /**
   * The input has ended (`end`): every window closes; or time has passed with no message
   * (`tick`): the windows the watermark has passed close (processing time, idle partitions).
   * Runs the windowed models over their state alone and the models downstream of them that
   * read nothing else; the other models make no rows.
   */
  async closeWindows(mode: 'end' | 'tick' = 'end'): Promise<BatchOutcome> {
    const rows = new Map<string, number>();
    const produced = new Set<string>();
    this.report = emptyReport();
    for (const m of this.models) {
      const op = this.windows.get(m.name);
      const table = `${MODEL_SCHEMA}.${ident(m.name)}`;
      if (op) {
        // A windowed model over models closing before it takes their last rows first.
        const input = m.refs.length > 0 && m.refs.every((r) => produced.has(r)) && !readsBatchDirectly(m.sql);
        await op.run({ shape: this.shape.key, partitions: [], closeAll: mode === 'end', tick: mode === 'tick', input });
        if (!(await this.tableExists(m.name))) {
          rows.set(m.name, 0);
          continue;
        }
      } else if (!m.handler && m.refs.length > 0 && m.refs.every((r) => produced.has(r)) && !readsBatchDirectly(m.sql)) {
        await this.conn.run(`CREATE OR REPLACE TABLE ${table} AS ${m.sql}`);
      } else {
        await this.conn.run(`DROP TABLE IF EXISTS ${table}`);
        rows.set(m.name, 0);
        continue;
      }
      produced.add(m.name);
      rows.set(m.name, Number((await this.conn.runAndReadAll(`SELECT count(*) FROM ${table}`)).getRows()[0][0]));
    }
    return { failures: [], rows, attempts: 1, timings: {}, written: new Set(), structure: this.structure, contract: this.report };
  }

  private async tableExists(model: string): Promise<boolean> {
    const r = await this.conn.runAndReadAll(`SELECT count(*) FROM duckdb_tables() WHERE schema_name = ${lit(MODEL_SCHEMA)} AND table_name = ${lit(model)}`);
    return Number(r.getRows()[0][0]) > 0;
  }

  /** Loads and decodes a batch, then runs the models over it (prepare() + execute()). */
  async process(messages: RawMessage[], targets?: Map<string, string>): Promise<BatchOutcome> {
    return this.execute(await this.prepare(messages), targets);
  }

  /**
   * Second half of a batch: runs the models over the batch's typed rows. With `targets`, a model nothing else refs is written straight to its target
   * Parquet file when the whole batch succeeds at the first attempt (the common case), saving
   * a copy; `written` says which. Otherwise rows stay in sluice_model.<name> for copyOutput()
   * or readOutput().
   */
  async execute(p: PreparedBatch, targets?: Map<string, string>): Promise<BatchOutcome> {
    if (p.skip?.size) await this.skipMessages(p, p.skip);
    const written = new Set<string>();
    const { failures, structure } = p;
    const rows = new Map<string, number>();
    const timings = p.timings;
    const lap = stopwatch(timings);
    const nothingGood = async (): Promise<BatchOutcome> => {
      for (const m of this.models) rows.set(m.name, 0);
      await this.clearOutputs();
      failures.sort((a, b) => a.index - b.index);
      return { failures, rows, attempts: 0, timings, written, structure, contract: this.report };
    };
    this.report = emptyReport();
    for (const op of this.windows.ops.values()) op.beginBatch();
    await this.beginHandlers(p);
    this.report.changes.push(...p.incoming.changes);
    this.report.violations.push(...p.incoming.violations);
    if (!p.batch) return nothingGood();
    this.current = p;
    if (this.shape.structure !== p.structure || this.sources.length > 1) this.shape = { structure: p.structure, key: this.shapeKey(p) };
    this.idle = this.idleModels(p);
    for (const m of this.idle) {
      await this.conn.run(`DROP TABLE IF EXISTS ${MODEL_SCHEMA}.${ident(m)}`);
      rows.set(m, 0);
    }

    // Transform: one pass over the batch; on failure, bisect to the messages that fail.
    let attempts = 1;
    const direct = targets ? this.directTargets(targets) : undefined;
    let res = await this.attemptPruning(direct, rows);
    if (res.ok && direct) for (const m of direct.keys()) written.add(m);
    if (!res.ok && direct) for (const f of direct.values()) await fsp.rm(f, { force: true });
    if (!res.ok) {
      rows.clear();
      for (const m of this.idle) rows.set(m, 0);
      if (BINDER.test(res.error)) {
        // The same schema binds the same way for every message: they all fail alike.
        const ids = await this.batchIds();
        for (const id of ids) failures.push({ index: id, stage: 'transform', error: res.error, model: res.model });
        await this.clearOutputs();
        for (const m of this.models) rows.set(m.name, 0);
        return { failures, rows, attempts, timings, written, structure, contract: this.report };
      }
      for (let round = 0; round < 3 && !res.ok; round++) {
        const ids = await this.batchIds();
        const mid = Math.floor(ids.length / 2);
        const found: MessageFailure[] = [];
        attempts += await this.isolate(ids.slice(0, mid), found);
        attempts += await this.isolate(ids.slice(mid), found);
        if (found.length === 0) {
          // Fails as a whole but no part fails alone: treat every message as failed rather than loop.
          for (const id of ids) failures.push({ index: id, stage: 'transform', error: res.error, model: res.model });
          await this.conn.run(`DELETE FROM ${p.batch}`);
        }
        failures.push(...found);
        attempts++;
        res = await this.attemptPruning();
      }
      if (!res.ok) throw new SluiceError('TRANSFORM', `batch keeps failing after isolating bad messages: ${res.error}`);
    }
    for (const m of this.models) {
      if (rows.has(m.name)) continue;
      if (this.absent.has(m.name)) {
        rows.set(m.name, 0);
        continue;
      }
      const r = await this.conn.runAndReadAll(`SELECT count(*) FROM ${MODEL_SCHEMA}.${ident(m.name)}`);
      rows.set(m.name, Number(r.getRows()[0][0]));
    }
    failures.sort((a, b) => a.index - b.index);
    lap('models');
    for (const m of this.models) {
      const plan = this.schemas.cached(m.name, this.shape.key);
      if (plan && (rows.get(m.name) ?? 0) > 0) this.schemas.establish(m.name, plan.columns);
    }
    this.report.changes.push(...this.schemas.drainChanges());
    return { failures, rows, attempts, timings, written, structure, contract: this.report };
  }

  /** Models the current batch does not feed (see idleModels). */
  private idle = new Set<string>();
  /** Models of the last attempt that made no output table (and so no rows), and the models reading them. */
  private readonly absent = new Set<string>();

  /** The key of a batch's input schema: its source's structure (and, with two sources, both, and which one the batch is of). */
  private shapeKey(p: PreparedBatch): string {
    if (this.sources.length < 2) return JSON.stringify(p.structure ?? null);
    return JSON.stringify([this.originOf(p), p.structure ?? null, ...this.sources.map((s) => (s === this.originOf(p) ? null : (this.decoders.get(s)!.structure ?? null)))]);
  }

  /** Takes messages out of a batch before the models run (see PreparedBatch.skip): no row, no failure. */
  private async skipMessages(p: PreparedBatch, skip: Set<number>): Promise<void> {
    for (let i = p.failures.length - 1; i >= 0; i--) if (skip.has(p.failures[i].index)) p.failures.splice(i, 1);
    if (!p.batch) return;
    const ids = [...skip].sort((a, b) => a - b);
    const ranges: string[] = [];
    for (let i = 0; i < ids.length; ) {
      let j = i;
      while (j + 1 < ids.length && ids[j + 1] === ids[j] + 1) j++;
      ranges.push(`${MSG_COL} BETWEEN ${ids[i]} AND ${ids[j]}`);
      i = j + 1;
    }
    await this.conn.run(`DELETE FROM ${p.batch} WHERE ${ranges.join(' OR ')}`);
  }

  private async batchIds(): Promise<number[]> {
    const r = await this.conn.runAndReadAll(`SELECT ${MSG_COL} FROM ${this.current.batch} ORDER BY 1`);
    return r.getRows().map((x) => Number(x[0]));
  }

  /** Finds the failing messages among `ids`; returns the number of DAG runs spent. */
  private async isolate(ids: number[], found: MessageFailure[]): Promise<number> {
    if (ids.length === 0) return 0;
    const res = await this.attempt(`${MSG_COL} BETWEEN ${ids[0]} AND ${ids[ids.length - 1]}`);
    if (res.ok) return 1;
    if (res.refused) {
      found.push(...(await this.refuse(res.refused)));
      const gone = new Set(res.refused.map((f) => f.index));
      return (
        1 +
        (await this.isolate(
          ids.filter((i) => !gone.has(i)),
          found,
        ))
      );
    }
    if (ids.length === 1) {
      found.push({ index: ids[0], stage: 'transform', error: res.error, model: res.model });
      await this.conn.run(`DELETE FROM ${this.current.batch} WHERE ${MSG_COL} = ${ids[0]}`);
      return 1;
    }
    const mid = Math.floor(ids.length / 2);
    return 1 + (await this.isolate(ids.slice(0, mid), found)) + (await this.isolate(ids.slice(mid), found));
  }

  /**
   * Runs every model over the whole batch; messages a `freeze` contract refuses go to the
   * failures and leave the batch, which runs again without them.
   */
  private async attemptPruning(direct?: Map<string, string>, rows?: Map<string, number>): Promise<Awaited<ReturnType<BatchExecutor['attempt']>>> {
    for (;;) {
      // Only this run's discards count (refusals stay: their messages have left the batch, and
      // so do those of incoming's contract, applied once at decode).
      this.report.violations = this.report.violations.filter((v) => v.policy === 'freeze' || v.model === 'incoming');
      const res = await this.attempt(null, direct, rows);
      if (res.ok || !res.refused) return res;
      this.current.failures.push(...(await this.refuse(res.refused)));
    }
  }

  /** Removes refused messages from the batch; returns their failures (counted in the report). */
  private async refuse(refused: MessageFailure[]): Promise<MessageFailure[]> {
    await this.conn.run(`DELETE FROM ${this.current.batch} WHERE ${MSG_COL} IN (${refused.map((f) => f.index).join(',')})`);
    for (const f of refused) {
      if (!f.kind) continue; // not a contract's (a windowed model's late event)
      const v = this.report.violations.find((x) => x.model === f.model && x.column === f.column && x.kind === f.kind && x.policy === 'freeze');
      if (v) v.rows++;
      else this.report.violations.push({ model: f.model!, column: f.column!, kind: f.kind!, policy: 'freeze', rows: 1 });
    }
    return refused;
  }

  /** Runs a model with its contract (or, when its plan is a passthrough, as it is). */
  private async runModel(m: CompiledModel, target: string | undefined): Promise<{ rows?: number; refused?: MessageFailure[] }> {
    const table = `${MODEL_SCHEMA}.${ident(m.name)}`;
    for (;;) {
      let plan = this.schemas.cached(m.name, this.shape.key);
      if (!plan) {
        const d = await this.conn.runAndReadAll(`DESCRIBE (${m.sql})`);
        plan = await this.schemas.plan(
          m.name,
          this.shape.key,
          d.getRows().map((r) => ({ name: String(r[0]), type: String(r[1]) })),
        );
      }
      if (plan.passthrough) {
        if (!target) {
          await this.conn.run(`CREATE OR REPLACE TABLE ${table} AS ${m.sql}`);
          return {};
        }
        const r = await this.conn.run(`COPY (${m.sql}) TO ${lit(target)} (FORMAT parquet, COMPRESSION lz4_raw)`);
        return { rows: Number(r.rowsChanged) };
      }
      const r = await applyContract(this.conn, m.name, m.sql, plan, { table, target }, this.report);
      if ('evolve' in r) {
        await this.schemas.evolve(m.name, r.evolve);
        continue;
      }
      if ('failures' in r) return { refused: r.failures.map((f) => ({ index: f.index, stage: 'transform', error: f.error, model: m.name, column: f.column, kind: f.kind })) };
      return target ? { rows: r.rows } : {};
    }
  }

  /** Target files of the models no other model reads. */
  private directTargets(targets: Map<string, string>): Map<string, string> {
    const referenced = new Set(this.models.flatMap((m) => m.refs));
    const out = new Map<string, string>();
    for (const m of this.models) {
      const t = targets.get(m.name);
      if (t && !referenced.has(m.name) && !m.window && !m.join && !m.dedup && !m.view && !m.handler && !this.idle.has(m.name)) out.set(m.name, t);
    }
    return out;
  }

  /** Runs every model in DAG order over the batch (or the part of it matching `filter`). */
  private async attempt(
    filter: string | null,
    direct?: Map<string, string>,
    rows?: Map<string, number>,
  ): Promise<{ ok: true } | { ok: false; error: string; model: string; refused?: MessageFailure[] }> {
    const where = filter ? ` WHERE ${filter}` : '';
    let shown: string | undefined;
    const origin = this.originOf(this.current);
    this.absent.clear();
    for (const m of this.models) {
      if (this.idle.has(m.name)) continue;
      if (m.refs.some((r) => this.absent.has(r))) {
        // It reads a model that made no output table (a join waiting for its other source's first message).
        await this.conn.run(`DROP TABLE IF EXISTS ${MODEL_SCHEMA}.${ident(m.name)}`);
        this.absent.add(m.name);
        continue;
      }
      // A model sees only the metadata columns it mentions: `SELECT *` gets the message alone.
      const hide = this.current.addedMeta.filter((c) => !this.metaUsedBy.get(m.name)!.includes(c));
      const view = `SELECT *${hide.length ? ` EXCLUDE (${hide.map(ident).join(', ')})` : ''} FROM ${this.current.batch}${where}`;
      if (view !== shown) {
        await this.conn.run(`CREATE OR REPLACE VIEW incoming AS ${view}`);
        await this.conn.run(`CREATE OR REPLACE VIEW ${SOURCE_SCHEMA}.${ident(origin)} AS ${view}`);
        shown = view;
      }
      try {
        const handler = this.handlers.get(m.name);
        if (handler) {
          const h = await handler.run(m.sql, { raw: this.current.raw, messages: this.current.messages, source: origin });
          if (h.refused) return { ok: false, error: h.refused[0].error, model: m.name, refused: h.refused };
          if (h.absent) this.absent.add(m.name);
          continue;
        }
        const op = this.windows.get(m.name);
        if (op) {
          const w = await op.run({ batch: this.current.batch, shape: this.shape.key, partitions: this.current.partitions ?? [], ...this.assignedFor(m, origin) });
          if (w.refused) return { ok: false, error: w.refused[0].error, model: m.name, refused: w.refused };
          if ('noOutput' in w && w.noOutput) this.absent.add(m.name);
          continue;
        }
        const target = direct?.get(m.name);
        const r = await this.runModel(m, target);
        if (r.refused) return { ok: false, error: r.refused[0].error, model: m.name, refused: r.refused };
        if (target) rows?.set(m.name, r.rows!);
      } catch (err) {
        // A limit the run must stop at (a windowed model's max_groups_per_window): no message's fault.
        if (err instanceof SluiceError && (err.code === 'CONFIG' || err.code === 'INTERNAL')) throw err;
        // A full disk or a failing allocation would fail every message alike: never theirs.
        const infra = asInfraError(err, direct?.has(m.name) ? `writing the WAL segment of model ${m.name}` : `running model ${m.name}`);
        if (infra) throw infra;
        return { ok: false, error: cleanError(err), model: m.name };
      }
    }
    return { ok: true };
  }

  /**
   * The source partitions a stateful model waits for: those of the sources feeding it; a stream
   * join of two sources, each side those of its own (and which side reads this batch).
   */
  private assignedFor(m: CompiledModel, origin: string): Pick<OperatorRun, 'assigned' | 'sides'> {
    if (this.sources.length < 2) return { assigned: this.current.assigned };
    const by = this.current.assignedBy ?? new Map<string, string[] | undefined>();
    const sides = this.sideSources.get(m.name);
    if (sides) return { sides: { l: { reads: sides.l === origin, assigned: by.get(sides.l) }, r: { reads: sides.r === origin, assigned: by.get(sides.r) } } };
    const parts = m.feeds.map((f) => by.get(f));
    return { assigned: parts.some((p) => p === undefined) ? undefined : parts.flatMap((p) => p!) };
  }

  /** No message of the batch goes on: no model's rows, and no window takes any of the batch's. */
  private async clearOutputs(): Promise<void> {
    for (const m of this.models) await this.conn.run(`DROP TABLE IF EXISTS ${MODEL_SCHEMA}.${ident(m.name)}`);
    for (const op of this.windows.ops.values()) op.beginBatch();
  }

  /** Writes a model's rows of the last batch to a Parquet file, with the message index column. */
  async copyOutput(model: string, file: string, compression = 'lz4_raw'): Promise<void> {
    await this.conn.run(`COPY ${MODEL_SCHEMA}.${ident(model)} TO ${lit(file)} (FORMAT parquet, COMPRESSION ${compression})`);
  }

  /** A model's rows of the last batch, for `test` and `--dry-run`. */
  async readOutput(model: string): Promise<{ columns: { name: string; type: string }[]; rows: Record<string, unknown>[] }> {
    const exists = await this.conn.runAndReadAll(`SELECT count(*) FROM duckdb_tables() WHERE schema_name = ${lit(MODEL_SCHEMA)} AND table_name = ${lit(model)}`);
    if (Number(exists.getRows()[0][0]) === 0) return { columns: [], rows: [] };
    const r = await this.conn.runAndReadAll(`SELECT * EXCLUDE (${MSG_COL}) FROM ${MODEL_SCHEMA}.${ident(model)} ORDER BY ${MSG_COL}, rowid`);
    const names = r.columnNames();
    const types = r.columnTypes().map((t) => t.toString());
    return { columns: names.map((name, i) => ({ name, type: types[i] })), rows: r.getRowObjectsJS().map((row) => toPlain(row) as Record<string, unknown>) };
  }
}

/** True when a model's SQL reads `incoming` or a source (not only other models). */
function readsBatchDirectly(sql: string): boolean {
  return /(^|[^A-Za-z0-9_."])incoming($|[^A-Za-z0-9_])/i.test(sql) || sql.includes(`${SOURCE_SCHEMA}.`);
}
