import type { DuckDBConnection } from '@duckdb/node-api';
import type { RawMessage } from '../connectors/types.js';
import type { Logger } from '../ops/logger.js';
import client, { type Registry } from 'prom-client';
import { SluiceError } from '../errors.js';
import type { HandlerMetricFamilies } from '../ops/metrics.js';
import { schemaError, type ExecutorTuning, type HandlerContext, type HandlerMessage, type HandlerMetrics, type HandlerSpec, type Periodic, type ReadyContext } from '../project/handler-def.js';
import type { ExecutorSettings, HandlerDef } from '../project/project-types.js';
import { ExecutorPool } from './executor-pool.js';
import { redactedEnv, runTaskFlow, type TaskFlowEnv } from './handler-tasks.js';
import { sleep } from '../util/retry.js';
import { MSG_COL } from '../sql/analyze.js';
import { ident, lit } from '../sql/quote.js';
import { MODEL_SCHEMA } from '../sql/template.js';
import { BatchDecoder, cleanError, DEFAULT_DECODE_RULES, type MessageFailure } from './decoder.js';
import { toPlain } from './plain-values.js';
import { isObjectStructure, type Structure } from './structure.js';

// A handler's step of a batch (see src/project/handler-def.ts): its input rows leave DuckDB
// for JavaScript, each with the message it comes from; what the handler makes of them comes
// back as JSON and is typed like `incoming` is (a decoder of its own, whose schema widens as
// rows need and is committed with every batch), into sluice_model.<handler>, each row with its
// message's index, so that the models reading it, the WAL and the DLQ treat it as a model's.

/** The batch a handler step runs in: where its messages' payloads and metadata are. */
export interface HandlerBatch {
  /** The lane table of the batch's payloads (id, payload). */
  raw: string;
  /** The batch's messages (their metadata), by index. */
  messages?: RawMessage[];
  /** The source of the batch's messages. */
  source: string;
}

/** What a handler step reports to, set by the run (a pipeline) or left at its defaults (tests, docs). */
export interface HandlerEnv {
  log: Logger;
  /** The run's metrics registry, for the handlers' families and the handler's own metrics. */
  registry?: Registry;
  families?: HandlerMetricFamilies;
}

type Made = { rows: unknown[] } | { error: string };

/** How long a stopping run waits for a periodic task in progress. */
const PERIODIC_STOP_MS = 10_000;
type Msg = HandlerMessage<Record<string, unknown>>;

export class HandlerStep {
  private readonly decoder: BatchDecoder;
  /** What the handler made of each input row this batch (by message and row): a row is never handed to it twice in a batch. */
  private made = new Map<string, Made>();
  private pool?: ExecutorPool;
  private settings?: ExecutorSettings;
  private readonly stopping = new AbortController();
  private periodicRuns: Promise<void>[] = [];
  private partitionsSeen?: Set<string>;
  private taskSeq = 0;
  private userMetrics?: HandlerMetrics;

  constructor(
    private readonly conn: DuckDBConnection,
    readonly name: string,
    private readonly def: HandlerDef,
    /** Its decoder's lane (tables __raw<lane>, __batch<lane>), apart from the batches'. */
    private readonly lane: number,
    private readonly env: () => HandlerEnv,
  ) {
    this.decoder = new BatchDecoder(conn, [], DEFAULT_DECODE_RULES);
  }

  private get spec(): HandlerSpec<Record<string, unknown>, Record<string, unknown>> {
    return this.def.spec;
  }

  /** The schema of its output rows so far (committed with every batch). */
  get structure(): Structure | undefined {
    return this.decoder.structure;
  }

  set structure(s: Structure | undefined) {
    this.decoder.structure = s;
  }

  /** Whether it wants to hear of the source's partitions (onAssign, onRevoke). */
  get watchesPartitions(): boolean {
    return typeof this.spec.onAssign === 'function' || typeof this.spec.onRevoke === 'function';
  }

  /** A run starts: onStartup (which may change the pool's settings), then the pool. */
  async start(): Promise<void> {
    const ex = this.def.executor;
    if (!ex) return;
    const tuned: ExecutorTuning = { maxExecutors: ex.maxExecutors, taskTimeoutSeconds: ex.taskTimeoutSeconds, windowSize: ex.windowSize, maxRetries: ex.maxRetries };
    if (this.spec.onStartup) {
      const change = await this.lifecycle('onStartup', () => this.spec.onStartup!({ ...tuned }));
      // Only these four: the binary, its env and the output cap stay config's.
      if (change && typeof change === 'object') for (const k of Object.keys(tuned) as (keyof ExecutorTuning)[]) if (change[k] !== undefined) tuned[k] = change[k];
      for (const [k, v] of Object.entries(tuned)) {
        const ok = typeof v === 'number' && (k === 'taskTimeoutSeconds' ? v > 0 : Number.isInteger(v) && (k === 'maxRetries' ? v >= 0 : v > 0));
        if (!ok)
          throw new SluiceError(
            'CONFIG',
            `handler ${this.name}: onStartup() set ${k} to ${JSON.stringify(v)}, not a ${k === 'taskTimeoutSeconds' ? 'positive number' : k === 'maxRetries' ? 'whole number' : 'positive whole number'}`,
          );
      }
    }
    this.pool = this.makePool({ ...ex, ...tuned });
  }

  private makePool(settings: ExecutorSettings): ExecutorPool {
    this.settings = settings;
    const f = this.env().families;
    return new ExecutorPool(
      { binaryPath: settings.binaryPath, maxExecutors: settings.maxExecutors, taskTimeoutSeconds: settings.taskTimeoutSeconds, env: settings.env, maxOutputBytes: settings.maxOutputBytes },
      (st) => {
        f?.running.set({ handler: this.name }, st.running);
        f?.queued.set({ handler: this.name }, st.queued);
        f?.utilisation.set({ handler: this.name }, st.running / settings.maxExecutors);
      },
    );
  }

  /** The sinks are connected: onReady, then the periodic tasks. */
  async ready(): Promise<void> {
    const ctx = { ...this.context({}), signal: this.stopping.signal };
    if (this.spec.onReady) await this.lifecycle('onReady', () => this.spec.onReady!(ctx));
    for (const [task, p] of Object.entries(this.spec.periodic ?? {})) this.periodicRuns.push(this.runPeriodic(task, p, ctx));
  }

  /** A periodic task: run, wait its interval, again, until the run stops (or, with onError 'stop', it throws). */
  private async runPeriodic(task: string, p: Periodic, ctx: ReadyContext): Promise<void> {
    const log = this.env().log;
    while (!this.stopping.signal.aborted) {
      try {
        await this.timed(`periodic:${task}`, () => p.run(ctx));
      } catch (err) {
        log.error(
          { handler: this.name, hook: `periodic ${task}`, err: cleanError(err) },
          `handler ${this.name}: periodic task ${task} threw${p.onError === 'stop' ? '; it stops (onError: stop)' : ''}`,
        );
        if (p.onError === 'stop') return;
      }
      await sleep(p.seconds * 1000, this.stopping.signal);
    }
  }

  /** The run stops: the periodic tasks are told and waited for (a while); tasks still running are killed. */
  async stop(): Promise<void> {
    this.stopping.abort();
    const settled = Promise.all(this.periodicRuns).then(() => true);
    const cancel = new AbortController();
    const waited = await Promise.race([settled, sleep(PERIODIC_STOP_MS, cancel.signal).then(() => false)]);
    cancel.abort();
    if (!waited)
      this.env().log.warn(
        { handler: this.name },
        `handler ${this.name}: a periodic task still runs ${PERIODIC_STOP_MS / 1000} s after the stop (it does not watch ctx.signal); the run ends without it`,
      );
    this.pool?.close();
  }

  /** The partitions the source reads now: onAssign for new ones, onRevoke for those gone (a throw is logged). */
  async partitions(now: string[] | undefined): Promise<void> {
    if (!now || !this.watchesPartitions) return;
    const seen = this.partitionsSeen ?? new Set<string>();
    const added = now.filter((p) => !seen.has(p));
    const gone = [...seen].filter((p) => !now.includes(p));
    this.partitionsSeen = new Set(now);
    const ctx = this.context({});
    const call = async (hook: 'onAssign' | 'onRevoke', list: string[]) => {
      if (list.length === 0 || !this.spec[hook]) return;
      try {
        await this.timed(hook, () => this.spec[hook]!(list, ctx));
      } catch (err) {
        this.env().log.error({ handler: this.name, hook, partitions: list, err: cleanError(err) }, `handler ${this.name}: ${hook}() threw; the run goes on`);
      }
    };
    await call('onRevoke', gone);
    await call('onAssign', added);
  }

  /** A hook of the run's life (onStartup, onReady): a throw stops the run, naming the hook. */
  private async lifecycle<T>(hook: string, fn: () => T | Promise<T>): Promise<T> {
    try {
      return await this.timed(hook, fn);
    } catch (err) {
      throw new SluiceError('CONFIG', `handler ${this.name}: ${hook}() threw: ${cleanError(err)}`);
    }
  }

  private async timed<T>(hook: string, fn: () => T | Promise<T>): Promise<T> {
    const t0 = performance.now();
    try {
      return await fn();
    } finally {
      this.env().families?.hookDuration.observe({ handler: this.name, hook }, (performance.now() - t0) / 1000);
    }
  }

  /** A new batch: nothing made yet. */
  beginBatch(): void {
    this.made.clear();
  }

  /**
   * Runs the handler over its input (`inputSql`, the rows of the messages still in the batch).
   * Messages whose row fails its input schema, whose process() or hook throws, whose task fails
   * for good, or that make a row its output schema refuses are `refused` (the batch runs again
   * without them); otherwise its rows are in sluice_model.<name>, or it made none and has no
   * schema yet (`absent`).
   */
  async run(inputSql: string, batch: HandlerBatch): Promise<{ refused?: MessageFailure[]; absent?: boolean }> {
    const input = await this.conn.runAndReadAll(`SELECT * FROM (${inputSql}) ORDER BY ${MSG_COL}`);
    const rows = input.getRowObjectsJS().map((row) => {
      const index = Number(row[MSG_COL]);
      const { [MSG_COL]: _, ...fields } = row;
      const value = toPlain(fields) as Record<string, unknown>;
      return { index, value, key: `${index}\u0000${JSON.stringify(value)}` };
    });
    const todo = rows.filter((r) => !this.made.has(r.key));
    if (todo.length) await this.make(todo, batch);
    const failures = new Map<number, string>();
    const out: string[] = [];
    const origin: number[] = [];
    for (const { index, key } of rows) {
      if (failures.has(index)) continue;
      const made = this.made.get(key)!;
      if ('error' in made) {
        failures.set(index, made.error);
        continue;
      }
      for (const r of made.rows) {
        out.push(JSON.stringify(r));
        origin.push(index);
      }
    }
    if (failures.size) return { refused: [...failures].map(([index, error]) => ({ index, stage: 'transform', error, model: this.name })) };
    return this.store(out, origin);
  }

  /** Hands rows to the handler (process() each, or arrange() and the pool) and keeps what it made of each. */
  private async make(todo: { index: number; value: Record<string, unknown>; key: string }[], batch: HandlerBatch): Promise<void> {
    const payloads = await this.payloads(batch.raw, todo[0].index, todo[todo.length - 1].index);
    const messages: { key: string; message: Msg }[] = [];
    for (const t of todo) {
      const m = batch.messages?.[t.index];
      let value: unknown = t.value;
      if (this.spec.input) {
        const r = this.spec.input.safeParse(t.value);
        if (!r.success) {
          this.made.set(t.key, { error: `handler ${this.name}: the row does not match its input schema: ${schemaError(r.error)}` });
          continue;
        }
        value = r.data;
      }
      const message: Msg = { value: value as Record<string, unknown>, raw: payloads.get(t.index) ?? '', meta: m?.meta ?? {}, position: m?.coords ?? {}, source: batch.source };
      messages.push({ key: t.key, message });
    }
    if (this.spec.process) {
      for (const { key, message } of messages) this.made.set(key, await this.process(message));
      return;
    }
    if (!this.pool) this.pool = this.makePool(this.def.executor!);
    const state = await runTaskFlow(
      this.flowEnv(),
      messages.map((m) => m.message),
    );
    for (const { key, message } of messages) {
      const s = state.get(message)!;
      this.made.set(key, s.error !== undefined ? { error: s.error } : { rows: s.rows });
    }
  }

  private flowEnv(): TaskFlowEnv {
    const log = this.env().log;
    const f = this.env().families;
    return {
      name: this.name,
      spec: this.spec,
      settings: this.settings!,
      pool: this.pool!,
      ctx: this.context({}),
      hook: (hook, fn) => this.timed(hook, fn),
      accept: (made) => this.accept(made),
      observe: (task, status, r) => {
        f?.tasks.inc({ handler: this.name, status });
        if (r) f?.taskDuration.observe({ handler: this.name }, r.durationMs / 1000);
        log.debug(
          {
            handler: this.name,
            task: task.id,
            attempt: task.attempt,
            status,
            args: task.args,
            env: redactedEnv(task.env),
            position: task.messages[0]?.position,
            exit_code: r?.exitCode,
            signal: r?.signal,
            ms: r?.durationMs,
            pid: r?.pid,
          },
          'task',
        );
      },
      nextId: () => `${this.name}-${++this.taskSeq}`,
    };
  }

  /** The payloads of messages first..last, by index. */
  private async payloads(raw: string, first: number, last: number): Promise<Map<number, string>> {
    const r = await this.conn.runAndReadAll(`SELECT id, payload FROM ${raw} WHERE id BETWEEN ${first} AND ${last}`);
    return new Map(r.getRows().map(([id, p]) => [Number(id), String(p ?? '')]));
  }

  /** process() on one message: the rows it makes (checked against its output schema), or why the message fails. */
  private async process(message: Msg): Promise<Made> {
    let made: unknown;
    try {
      made = await this.timed('process', () => this.spec.process!(message, this.context(message.position)));
    } catch (err) {
      return { error: `handler ${this.name}: process() threw: ${cleanError(err)}` };
    }
    const a = this.accept(made);
    return 'error' in a ? { error: `handler ${this.name}: process() ${a.error}` } : a;
  }

  /** What a hook returned, as rows checked against the output schema; or why they are refused. */
  private accept(made: unknown): Made {
    const list = made === null || made === undefined ? [] : Array.isArray(made) ? made : [made];
    const rows: unknown[] = [];
    for (const r of list) {
      let row: unknown = r;
      if (this.spec.output) {
        const c = this.spec.output.safeParse(r);
        if (!c.success) return { error: `returned a row that does not match its output schema: ${schemaError(c.error)}` };
        row = c.data;
      }
      if (!row || typeof row !== 'object' || Array.isArray(row)) return { error: `returned ${JSON.stringify(row)?.slice(0, 80)}, not an object (a row) or a list of them` };
      rows.push(row);
    }
    return { rows };
  }

  private context(position: Record<string, unknown>): HandlerContext {
    const at = { handler: this.name, ...(Object.keys(position).length ? { position } : {}) };
    const log = this.env().log;
    return {
      name: this.name,
      metrics: this.metrics(),
      log: {
        debug: (msg, f) => log.debug({ ...f, ...at }, msg),
        info: (msg, f) => log.info({ ...f, ...at }, msg),
        warn: (msg, f) => log.warn({ ...f, ...at }, msg),
        error: (msg, f) => log.error({ ...f, ...at }, msg),
      },
    };
  }

  /** The handler's own metrics, on the run's registry (a registry of its own when there is none). */
  private metrics(): HandlerMetrics {
    if (this.userMetrics) return this.userMetrics;
    const registers = [this.env().registry ?? new client.Registry()];
    const known = new Map<string, unknown>();
    const once = <T>(name: string, make: () => T): T => {
      if (!known.has(name)) known.set(name, make());
      return known.get(name) as T;
    };
    this.userMetrics = {
      counter: (o) => once(o.name, () => new client.Counter({ ...o, labelNames: o.labelNames ?? [], registers })),
      gauge: (o) => once(o.name, () => new client.Gauge({ ...o, labelNames: o.labelNames ?? [], registers })),
      histogram: (o) => once(o.name, () => new client.Histogram({ ...o, labelNames: o.labelNames ?? [], registers })),
    };
    return this.userMetrics;
  }

  /** Its rows into sluice_model.<name>, typed by its decoder, each with the index of the message it came from. */
  private async store(out: string[], origin: number[]): Promise<{ refused?: MessageFailure[]; absent?: boolean }> {
    const table = `${MODEL_SCHEMA}.${ident(this.name)}`;
    if (out.length === 0) {
      const s = this.decoder.structure;
      if (!s || !isObjectStructure(s) || Object.keys(s).length === 0) {
        await this.conn.run(`DROP TABLE IF EXISTS ${table}`);
        return { absent: true };
      }
      await this.conn.run(`CREATE OR REPLACE TABLE ${table} AS SELECT NULL::INTEGER AS ${MSG_COL}, unnest(json_transform('{}', ${lit(JSON.stringify(s))})) LIMIT 0`);
      return {};
    }
    const p = await this.decoder.prepare(
      out.map((payload) => ({ payload, coords: {} })),
      this.lane,
    );
    if (p.failures.length) {
      return { refused: p.failures.map((f) => ({ index: origin[f.index], stage: 'transform', error: `handler ${this.name}: a row it returned cannot be stored: ${f.error}`, model: this.name })) };
    }
    const list = `[${origin.join(',')}]::INTEGER[]`;
    await this.conn.run(
      `CREATE OR REPLACE TABLE ${table} AS SELECT o.msg AS ${MSG_COL}, b.* EXCLUDE (${MSG_COL}) FROM ${p.batch} b JOIN (SELECT unnest(l) AS msg, generate_subscripts(l, 1) - 1 AS i FROM (SELECT ${list} AS l)) o ON b.${MSG_COL} = o.i ORDER BY b.${MSG_COL}`,
    );
    return {};
  }
}
