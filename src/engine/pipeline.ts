import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { DuckDBConnection, DuckDBInstance } from '@duckdb/node-api';
import type { Logger } from 'pino';
import { SluiceError, errorMessage } from '../errors.js';
import type { ConnectorContext, DeadLetter, DeadLetterQueue, Sink, Source } from '../connectors/types.js';
import type { ModelDef, NamedSource, Project } from '../project/project-loader.js';
import { reachable } from '../project/dag.js';
import { HandlerMetricFamilies, Metrics } from '../ops/metrics.js';
import { fileList } from '../sql/quote.js';
import { Wal } from '../wal/wal.js';
import { crashPoint } from '../util/crash-point.js';
import { SinkRunner } from './sink-runner.js';
import { BatchExecutor, compileModels, decodeRules, type BatchOutcome, type CompiledModel, type PreparedBatch } from './executor.js';
import { PgWindowStore } from './window-store.js';
import { JoinOperator } from './joins.js';
import { DedupOperator } from './dedup.js';
import { reportContracts } from './contracts.js';
import { BatchTests, type TestSink } from './data-tests.js';
import { ReferenceTables, referencesNamed } from './references.js';
import { asInfraError } from './infra-errors.js';
import { dlqDefaultsBesideWal } from '../connectors/registry.js';
import { asCheckpoint, type Checkpoint } from './checkpoint.js';
import { openDuckDB } from './duckdb.js';
import { Flusher } from './flusher.js';
import { sleepUntil } from './sleep.js';
import { StallGuard } from './stall.js';
import { Batcher, batchingOf, systemClock, type Clock, type SourceBatch } from './batcher.js';
import { logDeadLetters } from './dead-letter-log.js';
import { MergedSource } from './merged-source.js';
import { DlqSet } from './dlq-set.js';
import { pipelineGroups, groupName } from '../project/model-graph.js';
import type { Structure } from './structure.js';

/** How often a waiting run checks whether time alone closes a window (processing time, idle partitions). */
const TICK_MS = 1000;

export interface RunOptions {
  project: Project;
  log: Logger;
  /** Model names (or paths to their .sql) to run; their upstream models run too. */
  models?: string[];
  dryRun?: boolean;
  /** Replaces the configured source (dlq replay). */
  sourceOverride?: { source: Source; name: string };
  /**
   * Sinks to use instead of creating the configured ones, by sink name (in-process tests); each
   * keeps its configured policy (retry, circuit, on_error) and is connected and closed by the run.
   */
  sinkOverrides?: ReadonlyMap<string, Sink>;
  /** Times batching, flush age, sink backoff and circuits, and flush retries (default: the system's). */
  clock?: Clock;
  /** Where the WAL lives (defaults to the project's wal.path). */
  walDir?: string;
  signal: AbortSignal;
  /** A DuckDB instance and connection to use (the run owns them: they are closed at the end). */
  duckdb?: { instance: DuckDBInstance; conn: DuckDBConnection };
  /**
   * The worker id the sinks and the DLQ see (default: the worker id). It names a file sink's
   * staging directory and an S3 sink's local temp files, which a sink clears when it connects
   * and closes, and a Kafka sink's transactional id, which fences the producer that had it
   * before; it tags this worker's dead letters in a broker DLQ, of which the DLQ drops, on
   * recovery, those after its committed mark. Pipelines of one worker sharing a sink or a DLQ
   * each need their own. The source keeps the worker id (its consumer name and WAL directory).
   */
  scopedWorkerId?: string;
  /**
   * Awaited once the sinks are connected, before the first write (the WAL replay): pipelines
   * sharing sinks start writing only when all have connected theirs, as connecting clears
   * leftovers of interrupted writes.
   */
  beforeWrites?: () => Promise<void>;
}

export interface RunSummary {
  messages: number;
  deadLettered: number;
  rows: Record<string, number>;
  batches: number;
  flushes: number;
  /** Messages the broker marked as delivered before: the bound on duplicates without dedupe. */
  redelivered: number;
  /** With dryRun: what the one batch made (the CLI renders it). */
  dryRun?: DryRunResult;
  /** Windowed models: their late events by policy. */
  late?: Record<string, Record<string, number>>;
}

/** A dry run's batch: each model's rows, the messages that would be dead-lettered, data test findings. */
export interface DryRunResult {
  /** Messages in the batch (0: the source had none). */
  messages: number;
  outputs: { model: string; columns: { name: string; type: string }[]; rows: Record<string, unknown>[] }[];
  failures: { coords: unknown; stage: string; error: string }[];
  tests: string[];
}

/** A batch as read from the source and, unless empty, loaded and decoded. */
interface ReadBatch {
  batch: SourceBatch;
  prepared?: PreparedBatch;
  /** How long it took to form: from asking the batcher to the batch handed over (ms). */
  readMs: number;
}

/** Where one batch's time went before its models ran (the `batch committed` debug line's `read` and `wait`). */
interface BatchClock {
  /** Forming it (ReadBatch.readMs): mostly idle while it overlapped the previous batch. */
  read: number;
  /** The run loop waiting for it, read and decode: the engine idle because the source or decoding was behind. */
  wait: number;
}

/** Upstream closure of the selected models, in DAG order. */
export function selectModels(project: Project, wanted: string[] | undefined): ModelDef[] {
  if (!wanted || wanted.length === 0) return project.models;
  const names = new Set<string>();
  for (const w of wanted) {
    const name = path.basename(w).replace(/\.sql$/, '');
    if (!project.models.some((m) => m.name === name)) {
      throw new SluiceError('USAGE', `no model named "${name}" (models: ${project.models.map((m) => m.name).join(', ')})`);
    }
    names.add(name);
    for (const up of reachable(name, (n) => project.models.find((m) => m.name === n)?.refs ?? [])) names.add(up);
  }
  return project.models.filter((m) => names.has(m.name));
}

/**
 * The run loop: poll -> decode -> models -> WAL (fsync) -> ack, and per model, when its size
 * or age threshold is reached, WAL -> sinks (atomic, idempotent) -> WAL truncate.
 */
export class Pipeline {
  private readonly metrics = new Metrics();
  private wal!: Wal;
  private sinks = new Map<string, SinkRunner>();
  private paused = false;
  private dlq: DeadLetterQueue | undefined;
  private executor!: BatchExecutor;
  /** The models' data tests; undefined when none are declared (then batches pay nothing). */
  private tests: BatchTests | undefined;
  private references: ReferenceTables | undefined;
  private conn!: DuckDBConnection;
  private loadConn!: DuckDBConnection;
  private instance!: DuckDBInstance;
  private models: ModelDef[] = [];
  private replayed = false;
  /** WAL -> sinks; made once the WAL, the sinks and DuckDB are open. */
  private flusher!: Flusher;
  private summary: RunSummary = { messages: 0, deadLettered: 0, rows: {}, batches: 0, flushes: 0, redelivered: 0 };
  private workerId = '';
  private source?: Source;
  /** Waits out a full disk or an IO error: the batch is retried, nothing dead-lettered or acked. */
  private readonly stallGuard: StallGuard;
  /** The read (and decode) of the next batch, in flight while the current one is handled. */
  private reading: Promise<unknown> = Promise.resolve();
  private readonly clock: Clock;

  constructor(private readonly opts: RunOptions) {
    this.clock = opts.clock ?? systemClock;
    const { maxBackoffMs, giveUpAfterSeconds } = opts.project.infraErrors ?? { maxBackoffMs: 30_000, giveUpAfterSeconds: 0 };
    this.stallGuard = new StallGuard({ signal: opts.signal, maxBackoffMs, giveUpAfterSeconds, metrics: this.metrics, log: opts.log, updateGauges: () => this.updateGauges(), clock: this.clock });
  }

  /** This run's metrics (for an ops server shared by several pipelines). */
  get registry(): Metrics['registry'] {
    return this.metrics.registry;
  }

  private get log(): Logger {
    return this.opts.log;
  }

  /** Where data test failures are logged and counted. */
  private get testSink(): TestSink {
    return { log: this.log, count: (model, test, n) => this.metrics.dataTestFailures.inc({ model, test }, n) };
  }

  async run(): Promise<RunSummary> {
    const { project } = this.opts;
    const groups = pipelineGroups(project.sources, project.models);
    if (!this.opts.sourceOverride && groups.length !== 1) {
      throw new SluiceError(
        'INTERNAL',
        `a pipeline reads one source (or the two a stream join reads) and this project has ${groups.length} such: scope it to one (scopeToSources) and run one pipeline each (runPipelines)`,
      );
    }
    const srcDefs: NamedSource[] = this.opts.sourceOverride ? [project.sources.find((s) => s.name === this.opts.sourceOverride?.name) ?? project.sources[0]] : project.sources;
    this.models = selectModels(project, this.opts.models);
    const ctx: ConnectorContext = { projectDir: project.dir, log: this.log, workerId: workerId(), observeAckLatency: (s) => this.metrics.ackLatency.observe(s) };
    this.workerId = ctx.workerId;

    ({ instance: this.instance, conn: this.conn } = this.opts.duckdb ?? (await openDuckDB(project.duckdb)));
    // From here the pipeline owns DuckDB, and whatever it connects is closed however it ends,
    // a failure while starting included (one source of several may fail to start while the
    // others go on). A close that fails after another error does not hide that error.
    let failed = false;
    try {
      return await this.runOpened(srcDefs, ctx);
    } catch (err) {
      failed = true;
      throw err;
    } finally {
      await this.release(failed);
    }
  }

  private async runOpened(srcDefs: NamedSource[], ctx: ConnectorContext): Promise<RunSummary> {
    const { project, signal } = this.opts;
    // A pipeline of two sources (a stream join of them) is named after both: its WAL, its logs.
    const srcDef: NamedSource = srcDefs.length === 1 ? srcDefs[0] : mergedDef(srcDefs);
    this.srcDefs = srcDefs;
    const compiled = await compileModels(this.conn, this.models);
    // A second connection loads and decodes the next batch while this one runs the models.
    this.loadConn = await this.instance.connect();
    const rules = srcDefs.length === 1 ? decodeRules(srcDef.policy) : new Map(srcDefs.map((d) => [d.name, decodeRules(d.policy)]));
    this.executor = new BatchExecutor(
      this.conn,
      compiled,
      srcDefs.map((d) => d.name),
      this.loadConn,
      rules,
      this.clock,
    );
    if (compiled.some((m) => m.handler)) this.executor.handlerEnv = { log: this.log, registry: this.metrics.registry, families: new HandlerMetricFamilies(this.metrics.registry) };
    await this.executor.init();
    await this.executor.startHandlers();
    // The references this pipeline's models name, and those its data tests check against.
    const refNames = new Set([...referencesNamed(project, this.models), ...this.models.flatMap((m) => m.dataTests.flatMap((t) => (t.to ? [t.to] : [])))]);
    this.references = await ReferenceTables.open(this.instance, this.conn, project, refNames, this.log);
    this.tests = await BatchTests.create(this.conn, project, this.models, this.log, { referencesLoaded: true });

    const source = this.opts.sourceOverride?.source ?? (await this.createSource(srcDefs, ctx));
    this.source = source;
    const batcher = new Batcher(source, batchingOf(srcDef.cfg), this.clock);
    if (this.opts.dryRun) return this.dryRun(source, batcher);
    // Not for a dry run: it writes nothing anywhere (its windows keep their state in memory).
    if (project.windowState && this.executor.windows.size) await this.openWindowStore(project.windowState, srcDef, compiled);

    const scopedCtx = this.opts.scopedWorkerId ? { ...ctx, workerId: this.opts.scopedWorkerId } : ctx;
    await this.connectSinks(scopedCtx);
    await this.executor.handlersReady();
    const start = await this.openWal(srcDef);
    this.dlq = await this.openDlqs(srcDefs, scopedCtx);
    await this.dlq?.recover(start.dlq);
    await this.opts.beforeWrites?.();

    // Surviving WAL goes to the sinks before anything new is read.
    const pendingAtStart = this.models.filter((m) => this.wal.pending(m.name).length > 0).length;
    if (pendingAtStart) this.log.info({ models: pendingAtStart }, 'replaying WAL from a previous run');
    while (!(await this.flusher.flushAll())) {
      if (signal.aborted) throw new SluiceError('SINK', 'stopped before the WAL could be replayed; it is kept for the next start');
      await sleepUntil(this.flusher.nextRetry(), signal, this.clock);
    }
    this.replayed = true;
    this.updateGauges();

    let clean = false;
    try {
      // A shared window state store catches up with this worker's last commit before the source commits its position.
      await this.executor.windows.resync(signal);
      await source.open(start.position);
      this.log.info({ source: srcDef.name, type: srcDef.type, worker: this.workerId }, srcDefs.length > 1 ? 'reading from the sources, in turn' : 'reading from the source');
      this.warnStateScope(srcDefs, srcDef);
      if (srcDefs.length > 1) await this.warnOldWals(srcDefs);
      if (source.lag) this.metrics.watchLag(srcDef.name, () => source.lag!());
      const ended = await this.loop(source, batcher, srcDef.name);
      // A finite source read to its end: every open window closes.
      if (ended && this.executor.windows.holdsState()) await this.closeWindows(source, srcDef.name);
      clean = true;
    } finally {
      this.metrics.watchLag(srcDef.name, undefined);
      // Also when open() failed half-way (a connection made, then a missing stream).
      await closeSource(source, clean, this.log);
    }
    // End of input or shutdown: deliver everything staged.
    while (!(await this.flusher.flushAll())) {
      if (signal.aborted) throw new SluiceError('SINK', 'stopped with rows still in the WAL; they are delivered on the next start');
      await sleepUntil(this.flusher.nextRetry(), signal, this.clock);
    }
    return this.summary;
  }

  /** Stateful models that see only what this worker reads: said once at start. */
  private warnStateScope(srcDefs: NamedSource[], srcDef: NamedSource): void {
    if (srcDefs.length > 1 && srcDefs.some((d) => d.spec.workerScoped)) {
      this.log.warn(
        { sources: srcDefs.map((d) => d.name), worker: this.workerId },
        "a stream join of two sources sees only the partitions this worker reads of each, and the two sources' consumer groups assign them apart: run one worker for these sources (docs/joins.md, joining two sources)",
      );
    } else if (this.executor.windows.size && srcDef.spec.workerScoped && !this.executor.windows.stored) {
      this.log.warn(
        { models: [...this.executor.windows.ops.keys()], worker: this.workerId },
        "windowed models keep this worker's own state: run one worker for this source, or each worker emits windows over only the events it reads (docs/windows.md, several workers)",
      );
    }
  }

  /**
   * A pipeline of two sources that ran apart before (each its own WAL, `<wal.path>/<source>`):
   * rows those WALs still hold are not delivered by this pipeline. Says so, with where they are.
   */
  private async warnOldWals(srcDefs: NamedSource[]): Promise<void> {
    const root = path.dirname(this.opts.walDir ?? this.opts.project.walPath);
    for (const d of srcDefs) {
      const dirs = [path.join(root, d.name), path.join(root, d.name, this.workerId)];
      let segments = 0;
      for (const dir of dirs) {
        for (const model of await fsp.readdir(path.join(dir, 'models')).catch(() => [] as string[])) {
          segments += (await fsp.readdir(path.join(dir, 'models', model)).catch(() => [] as string[])).filter((f) => f.endsWith('.parquet') && !f.startsWith('.')).length;
        }
      }
      if (segments === 0) continue;
      this.log.warn(
        { source: d.name, wal: path.join(root, d.name), segments },
        `source ${d.name} ran in a pipeline of its own before it was joined with ${srcDefs
          .filter((x) => x !== d)
          .map((x) => x.name)
          .join(', ')}: its old WAL holds ${segments} segment(s) of rows not delivered by this pipeline; run the project without the join once to deliver them (docs/joins.md, joining two sources)`,
      );
    }
  }

  /** The pipeline's sources (two when it runs a stream join of two sources). */
  private srcDefs: NamedSource[] = [];

  /** The source, or a MergedSource over the two (each created; a failure closes those already made). */
  private async createSource(defs: NamedSource[], ctx: ConnectorContext): Promise<Source> {
    if (defs.length === 1) return defs[0].spec.create(defs[0].cfg, ctx);
    const made: { name: string; source: Source }[] = [];
    try {
      for (const d of defs) made.push({ name: d.name, source: await d.spec.create(d.cfg, ctx) });
    } catch (err) {
      for (const m of made) await m.source.close().catch(() => {});
      throw err;
    }
    return new MergedSource(made);
  }

  /** Creates and connects the sinks of the models being run (a failed connect closes that sink). */
  private async connectSinks(ctx: ConnectorContext): Promise<void> {
    for (const name of new Set(this.models.flatMap((m) => m.sinks))) {
      const def = this.opts.project.sinks.find((s) => s.name === name)!;
      const sink = this.opts.sinkOverrides?.get(name) ?? (await def.spec.create(def.cfg, ctx));
      try {
        await sink.connect();
      } catch (err) {
        await sink.close().catch(() => {});
        throw err;
      }
      this.sinks.set(name, new SinkRunner(name, sink, def.policy, this.metrics, this.log, this.clock));
    }
  }

  /** Opens the WAL and its flusher, checks its segments, and restores the committed checkpoint. */
  private async openWal(srcDef: NamedSource): Promise<Checkpoint> {
    const { project } = this.opts;
    // Queue consumers scale out: each worker keeps its own WAL and names its own files.
    const walDir = this.opts.walDir ?? (srcDef.spec.workerScoped ? path.join(project.walPath, this.workerId) : project.walPath);
    this.wal = new Wal(walDir, this.log, this.clock);
    await this.wal.open(this.models.map((m) => m.name));
    this.flusher = new Flusher({
      wal: this.wal,
      sinks: this.sinks,
      models: this.models,
      metrics: this.metrics,
      log: this.log,
      tests: this.tests,
      testSink: this.testSink,
      dlq: () => this.dlq,
      summary: this.summary,
      conn: this.conn,
      loadConn: this.loadConn,
      updateGauges: () => this.updateGauges(),
      clock: this.clock,
    });
    for (const m of this.wal.modelsWithRows()) {
      if (!this.models.some((x) => x.name === m)) {
        this.log.warn({ model: m, bytes: this.wal.pendingBytes(m) }, 'the WAL holds rows of a model that is not being run; they are kept until it runs again');
      }
    }
    await this.checkSegments();
    const start = asCheckpoint(this.wal.state.checkpoint);
    if (this.srcDefs.length > 1) this.executor.structures = start.structures;
    else this.executor.structure = start.structure;
    this.committedStructures = start.structures ?? {};
    this.executor.handlerStructures = start.handlers;
    this.executor.schemas.load(start.schemas);
    await this.executor.windows.restore(start.windows, walDir);
    return start;
  }

  /**
   * sluice.yml window_state: the windowed models keep each source partition's state in a shared
   * store too (see WindowSet), so that a partition moving to another worker takes it along.
   */
  private async openWindowStore(cfg: { postgres: string; table: string }, srcDef: NamedSource, compiled: CompiledModel[]): Promise<void> {
    if (this.srcDefs.length > 1) {
      throw new SluiceError('CONFIG', `sluice.yml: window_state does not support a pipeline of two sources (${srcDef.name}, a stream join of them) yet: remove window_state and run one worker`);
    }
    if (!srcDef.spec.partitioned) {
      throw new SluiceError(
        'CONFIG',
        `sluice.yml: window_state moves a partition's window state between the workers of a consumer group; source ${srcDef.name} (${srcDef.type}) is not read in partitions: remove window_state and run one worker`,
      );
    }
    const chained = compiled.find((m) => m.window && m.refs.some((r) => compiled.find((x) => x.name === r)?.window));
    if (chained) {
      throw new SluiceError(
        'CONFIG',
        `${chained.file}: with window_state, a windowed model cannot read another windowed model yet (its input rows have no source partition): run it without window_state`,
      );
    }
    const store = new PgWindowStore(cfg.postgres, cfg.table, `${this.opts.project.name}/${srcDef.name}`, this.workerId, this.log);
    this.windowStore = store;
    await store.init();
    this.executor.windows.useStore(store, this.log);
    this.log.info({ table: cfg.table, worker: this.workerId }, "windowed models keep each partition's state in the shared window state store");
  }

  /** Closes the sinks, the DLQ and DuckDB (each once); after a failure, close errors are only logged. */
  private async release(afterFailure: boolean): Promise<void> {
    const dlq = this.dlq;
    const store = this.windowStore;
    this.windowStore = undefined;
    const refs = this.references;
    this.references = undefined;
    const closing: Array<[string, () => Promise<void>]> = [
      ['the handlers', async () => this.executor?.stopHandlers()],
      ['the reference tables', async () => refs?.close()],
      ['the window state store', async () => store?.close()],
      ...[...this.sinks].map(([name, s]): [string, () => Promise<void>] => [`sink ${name}`, () => s.sink.close()]),
      ['the DLQ', async () => dlq?.close()],
    ];
    this.sinks.clear();
    this.dlq = undefined;
    let first: unknown;
    for (const [what, close] of closing) {
      try {
        await close();
      } catch (err) {
        if (afterFailure) this.log.warn({ err: new Error(errorMessage(err)) }, `closing ${what} failed`);
        else first ??= err;
      }
    }
    this.closeDuckDB();
    if (first !== undefined) throw first;
  }

  private duckdbClosed = false;

  private closeDuckDB(): void {
    if (this.duckdbClosed) return;
    this.duckdbClosed = true;
    this.loadConn?.closeSync();
    this.conn.closeSync();
    this.instance.closeSync();
  }

  /** Exposed for tests and the ops server. */
  ready(): { ok: boolean; reasons: string[] } {
    const reasons: string[] = [];
    if (!this.replayed) reasons.push('replaying WAL');
    if (this.source?.healthy && !this.source.healthy()) reasons.push('source disconnected');
    for (const [name, s] of this.sinks) {
      const circuit = s.notReady();
      if (circuit) reasons.push(circuit);
      else if (!s.sink.healthy()) reasons.push(`sink ${name} unhealthy`);
    }
    for (const [model, f] of this.flusher?.failures ?? []) reasons.push(`flush of ${model} failing: ${f.error}`);
    const stall = this.stallGuard.current;
    if (stall) reasons.push(`paused since ${new Date(stall.since).toISOString()}: ${stall.error.message}`);
    if (this.paused) reasons.push(`reading paused: the WAL holds ${this.wal.totalBytes()} bytes (wal.max_bytes ${this.opts.project.walMaxBytes}) while a sink fails`);
    return { ok: reasons.length === 0, reasons };
  }

  private async openDlq(src: NamedSource, ctx: ConnectorContext): Promise<DeadLetterQueue | undefined> {
    const cfg = { ...src.cfg };
    if (!cfg.dlq && dlqDefaultsBesideWal(src.spec)) cfg.dlq = defaultDlqDir(this.opts.project);
    return src.spec.createDlq?.(cfg, ctx);
  }

  /** The source's DLQ; with two sources, each one's, behind one DeadLetterQueue (see DlqSet). */
  private async openDlqs(defs: NamedSource[], ctx: ConnectorContext): Promise<DeadLetterQueue | undefined> {
    if (defs.length === 1) return this.openDlq(defs[0], ctx);
    const set = new DlqSet();
    try {
      for (const d of defs) set.add(d.name, await this.openDlq(d, ctx));
    } catch (err) {
      await set.close().catch(() => {});
      throw err;
    }
    return set;
  }

  /** A WAL segment that cannot be read is a corrupt tail: dropped with a warning. */
  private async checkSegments(): Promise<void> {
    for (const m of this.models) {
      for (const seg of [...this.wal.pending(m.name)]) {
        try {
          await this.conn.run(`SELECT count(*) FROM read_parquet(${fileList([seg.file])})`);
        } catch (err) {
          await this.wal.quarantine(seg, errorMessage(err));
        }
      }
    }
  }

  /**
   * Batches are pipelined one deep: while batch N runs through the models and is committed,
   * batch N+1 is read, loaded and decoded (on the other lane). Acks and commits stay in order;
   * a batch read but not yet committed is simply read again after a crash. On shutdown the
   * batch already read is finished too.
   */
  private async loop(source: Source, batcher: Batcher, sourceName: string): Promise<boolean> {
    const { signal } = this.opts;
    let lane = 0;
    const next = (): Promise<ReadBatch | null> => {
      const p = this.readAndPrepare(batcher, lane);
      lane ^= 1;
      p.catch(() => {}); // awaited by the loop; only keeps a failure from counting as unhandled meanwhile
      this.reading = p;
      return p;
    };
    let pending = next();
    try {
      for (;;) {
        // Waiting now: the batch being formed is handed over as soon as it holds a message.
        batcher.demand();
        const waitStart = performance.now();
        const cur = await this.waitWithTicks(pending, source, sourceName);
        const wait = Math.round(performance.now() - waitStart);
        if (cur === null) {
          if (signal.aborted) return false;
          this.log.info('end of input');
          return true;
        }
        if (this.flusher.failures.size > 0) await this.backpressure();
        pending = signal.aborted ? Promise.resolve(null) : next();
        if (cur.prepared) await this.handleBatch(cur.batch, cur.prepared, source, sourceName, { read: cur.readMs, wait });
        // A source with nothing to read hands over empty batches (every batch_timeout_ms): they
        // must not keep the windows' tick from running, nor handlers from hearing of a rebalance.
        else {
          await this.executor.handlerPartitions(source.partitions?.());
          await this.tick(source, sourceName);
        }
        await this.flusher.flushDue();
      }
    } finally {
      // On an error, let the read in flight settle before its connection is closed.
      await pending.catch(() => {});
    }
  }

  /**
   * The input ended: closes every open window, committed as one more batch of no message at
   * the source position already committed (a crash before its commit closes them again).
   */
  private async closeWindows(source: Source, sourceName: string): Promise<void> {
    await this.windowPass('end', source, sourceName);
    this.log.info('closed every open window at the end of the input');
    for (const [model, op] of this.executor.windows.ops) {
      const w = op instanceof JoinOperator ? op.waiting() : undefined;
      if (w) {
        this.log.warn(
          { model, rows: w.rows },
          `stream join ${model}: side ${w.side} has had no row (its source sent no message), so the ${w.rows} rows of side ${w.other} stay in the join's state, not emitted: without ${w.side}'s columns no row can be made; they are emitted once ${w.side} has a row`,
        );
      }
    }
  }

  /** A batch of no message that closes windows (see BatchExecutor.closeWindows), at the committed source position. */
  private async windowPass(mode: 'end' | 'tick', source: Source, sourceName: string): Promise<void> {
    const position = asCheckpoint(this.wal.state.checkpoint).position;
    const batch: SourceBatch = { messages: [], chunks: [], position, bytes: 0 };
    await this.handleBatch(batch, mode, source, sourceName, { read: 0, wait: 0 });
  }

  /**
   * Waits for the next batch; meanwhile, with windowed models, closes every TICK_MS the windows
   * that time alone closes (processing time, or partitions gone idle), so that a quiet source
   * does not hold back what is due.
   */
  private async waitWithTicks(pending: Promise<ReadBatch | null>, source: Source, sourceName: string): Promise<ReadBatch | null> {
    if (!this.executor.windows.ticks) return pending;
    const TICK = Symbol('tick');
    for (;;) {
      let cancel = () => {};
      const tick = new Promise<typeof TICK>((resolve) => (cancel = this.clock.after(TICK_MS, () => resolve(TICK))));
      const r = await Promise.race([pending, tick]);
      cancel();
      if (r !== TICK) return r;
      await this.tick(source, sourceName);
    }
  }

  /** Closes what time alone closes (a windows pass), when some window would close now. */
  private async tick(source: Source, sourceName: string): Promise<void> {
    if (this.opts.signal.aborted) return;
    // With a shared window state store, a change of assignment is claimed (or let go) without waiting for a message.
    if (this.executor.windows.wouldAdvance() || this.executor.windows.assignmentChanged(source.partitions?.())) await this.windowPass('tick', source, sourceName);
  }

  private async readAndPrepare(batcher: Batcher, lane: number): Promise<ReadBatch | null> {
    const readStart = performance.now();
    const batch = await batcher.next(this.opts.signal);
    const readMs = Math.round(performance.now() - readStart);
    if (batch === null) return null;
    if (batch.messages.length === 0) return { batch, readMs };
    const prepared = await this.stallGuard.run(
      'decoding a batch',
      () => this.executor.prepare(batch.messages, lane, batch.block, batch.origin),
      async () => {},
    );
    if (prepared.partitions) prepared.assigned = this.source?.partitions?.();
    if (prepared.partitions && this.source instanceof MergedSource) prepared.assignedBy = this.source.partitionsBySource();
    return { batch, prepared, readMs };
  }

  /**
   * A batch through the models to the WAL commit, then the ack. An infrastructure failure on
   * the way (the WAL's or the DLQ's disk full, say) undoes what was staged and tries the batch
   * again (untilItWorks): the messages were not acked, and none is blamed for it.
   */
  private async handleBatch(batch: SourceBatch, given: PreparedBatch | 'end' | 'tick', source: Source, sourceName: string, clock: BatchClock): Promise<void> {
    // A windows pass (the input ended, or time passed) has no message: the windows close.
    const first = typeof given === 'string' ? undefined : given;
    const pass = typeof given === 'string' ? given : undefined;
    const timer = this.metrics.batchDuration.startTimer();
    this.metrics.messagesIn.inc({ source: batch.origin ?? sourceName }, batch.messages.length);
    const dlqBefore = this.dlq?.mark();
    let prepared: PreparedBatch | undefined = first;
    let dlqTouched = false;
    // Reference tables refreshed since the last batch: in place before this one's models run.
    await this.references?.swap();
    if (this.executor.windows.stored) {
      // A shared window state store: partitions this worker lost or newly reads (see WindowSet.begin).
      const skip = await this.executor.windows.begin(source.partitions?.(), batch.messages, first?.partitions, this.opts.signal);
      if (first) first.skip = skip;
    }
    const staged = await this.stallGuard.run(
      'writing a batch to the WAL',
      async () => {
        // After a failure the batch is decoded again: isolating bad messages changes its tables.
        if (first && !prepared)
          prepared = { ...(await this.executor.prepare(batch.messages, first.lane, batch.block, batch.origin)), assigned: first.assigned, assignedBy: first.assignedBy, skip: first.skip };
        const p = prepared;
        prepared = undefined;
        return this.stageBatch(batch, p ?? pass!, () => (dlqTouched = true));
      },
      async () => {
        await this.wal.abandon();
        await this.executor.windows.abandon();
        if (dlqTouched && this.dlq) await this.dlq.recover(dlqBefore);
        dlqTouched = false;
        // The retry decodes on the loading connection: wait for the next batch's decoding there.
        await this.reading.catch(() => {});
        // A due flush empties the WAL: it may be what frees the disk.
        await this.flusher.flushDue();
      },
    );
    const { outcome, rows, records } = staged;
    try {
      // The committed batch's rows join the windows' state (in DuckDB; a restart rebuilds it from the commit).
      await this.executor.windows.commit();
    } catch (err) {
      throw new SluiceError('INTERNAL', `applying window state after batch ${this.wal.state.seq} committed failed (a restart restores it from the commit): ${errorMessage(err)}`);
    }
    // Before the ack: the shared store is never behind the source's committed position.
    await this.executor.windows.publish(this.opts.signal);
    if (this.executor.windows.size) await this.windowMetrics();
    this.count(batch, records, rows, sourceName);
    const ackStart = performance.now();
    for (const chunk of batch.chunks) await source.ack(chunk);
    outcome.timings.ack = Math.round(performance.now() - ackStart);
    this.metrics.acked.inc({ source: batch.origin ?? sourceName }, batch.messages.length);
    this.summary.messages += batch.messages.length;
    this.summary.batches++;
    timer();
    this.updateGauges();
    this.log.debug(
      {
        seq: this.wal.state.seq,
        ...(batch.origin ? { source: batch.origin } : {}),
        messages: batch.messages.length,
        chunks: batch.chunks.length,
        failed: outcome.failures.length,
        attempts: outcome.attempts,
        ms: { ...clock, ...outcome.timings },
      },
      'batch committed',
    );
  }

  /** A committed batch's dead letters, rows and redeliveries, in the metrics and the summary. */
  private count(batch: SourceBatch, records: DeadLetter[], rows: Map<string, number>, sourceName: string): void {
    for (const r of records) {
      this.metrics.deadLettered.inc({ stage: r.stage });
      this.metrics.errors.inc({ stage: r.stage, error_type: r.stage === 'decode' ? 'decode' : 'sql' });
    }
    logDeadLetters(this.log, records);
    this.summary.deadLettered += records.length;
    for (const [model, n] of rows) {
      this.metrics.rowsOut.inc({ model }, n);
      this.summary.rows[model] = (this.summary.rows[model] ?? 0) + n;
    }
    const redelivered = batch.messages.reduce((n, m) => n + (m.redelivered ? 1 : 0), 0);
    if (redelivered) {
      this.metrics.redelivered.inc({ source: batch.origin ?? sourceName }, redelivered);
      this.summary.redelivered += redelivered;
    }
  }

  /**
   * Runs the models over a prepared batch, stages each model's rows as a WAL segment, appends
   * the dead letters and commits the batch (segments, DLQ mark, source position) in the WAL.
   * Nothing is counted here: a failure is undone and the batch staged again.
   */
  private async stageBatch(batch: SourceBatch, prepared: PreparedBatch | 'end' | 'tick', dlqTouched: () => void): Promise<{ outcome: BatchOutcome; rows: Map<string, number>; records: DeadLetter[] }> {
    // Segment names need the batch's sequence number and keys before the models run.
    const seq = this.wal.nextSeq();
    const first = batch.first ?? `${this.workerId}.${String(seq).padStart(12, '0')}`;
    const last = batch.last ?? first;
    const paths = new Map(this.models.map((m) => [m.name, this.wal.segmentPaths(m.name, seq, first, last)]));
    let outcome: BatchOutcome;
    try {
      const keep = this.tests?.keepInTables();
      const targets = new Map([...paths].filter(([k]) => !keep?.has(k)).map(([k, v]) => [k, v.tmp]));
      outcome = typeof prepared === 'string' ? await this.executor.closeWindows(prepared) : await this.executor.execute(prepared, targets);
      if (this.tests) {
        const testStart = performance.now();
        await this.tests.enforce(outcome, this.testSink, targets);
        outcome.timings.tests = Math.round(performance.now() - testStart);
      }
    } catch (err) {
      if (!asInfraError(err, '')) this.metrics.errors.inc({ stage: 'transform', error_type: 'batch' });
      throw err;
    }
    const stageStart = performance.now();
    const touched: string[] = [];
    const rows = new Map<string, number>();
    for (const m of this.models) {
      const n = outcome.rows.get(m.name) ?? 0;
      const p = paths.get(m.name)!;
      if (n === 0) {
        if (outcome.written.has(m.name)) await fsp.rm(p.tmp, { force: true });
        continue;
      }
      if (!outcome.written.has(m.name)) {
        try {
          await this.executor.copyOutput(m.name, p.tmp);
        } catch (err) {
          throw asInfraError(err, `writing the WAL segment of model ${m.name}`) ?? err;
        }
      }
      touched.push(m.name);
      rows.set(m.name, n);
    }
    // Each segment's fsync waits on the disk: the models' segments are made durable together.
    await Promise.all(touched.map((m) => this.wal.publishSegment(m, seq, first, last, paths.get(m)!.tmp, paths.get(m)!.final)));
    const records = await this.deadLetter(batch, outcome, dlqTouched);
    outcome.timings.stage = Math.round(performance.now() - stageStart);
    const commitStart = performance.now();
    let windows: Checkpoint['windows'];
    try {
      windows = await this.executor.windows.stage(seq);
    } catch (err) {
      throw asInfraError(err, 'writing window state') ?? err;
    }
    // A shared window state store: the state goes there now, committed right after the WAL commit.
    await this.executor.windows.write(this.opts.signal);
    crashPoint('before-commit');
    // Two sources: each one's schema as of its last batch committed (the next batch, prepared already, may have widened one).
    const structures = this.srcDefs.length > 1 && batch.origin ? { ...this.committedStructures, [batch.origin]: outcome.structure } : undefined;
    const checkpoint: Checkpoint = {
      position: batch.position,
      dlq: this.dlq?.mark(),
      ...(structures ? { structures } : { structure: outcome.structure }),
      schemas: this.executor.schemas.snapshot(),
      ...(this.executor.handlerStructures ? { handlers: this.executor.handlerStructures } : {}),
      ...(windows ? { windows } : {}),
    };
    try {
      await this.wal.commit(seq, checkpoint, touched);
    } catch (err) {
      throw asInfraError(err, 'committing the WAL') ?? err;
    }
    crashPoint('after-commit');
    if (structures) this.committedStructures = structures;
    // Reported once the batch is committed: a batch tried again is not reported twice.
    reportContracts(outcome.contract, this.log, this.metrics.contractCounters());
    outcome.timings.commit = Math.round(performance.now() - commitStart);
    outcome.timings.stage_and_commit = Math.round(performance.now() - stageStart);
    return { outcome, rows, records };
  }

  /** Appends the batch's failed messages to the DLQ (durably), as records; none: nothing. */
  private async deadLetter(batch: SourceBatch, outcome: BatchOutcome, dlqTouched: () => void): Promise<DeadLetter[]> {
    const time = new Date().toISOString();
    const records: DeadLetter[] = outcome.failures.map((f) => ({
      payload: batch.messages[f.index].payload,
      error: f.error,
      stage: f.stage,
      source: batch.messages[f.index].coords,
      ...(f.model ? { model: f.model } : {}),
      time,
      original: batch.messages[f.index].raw,
    }));
    if (records.length === 0) return records;
    const dlq: DeadLetterQueue | undefined = this.dlq instanceof DlqSet ? this.dlq.of(batch.origin) : this.dlq;
    if (!dlq) throw new SluiceError('CONFIG', `a message failed (${records[0].stage}: ${records[0].error}) and the source${batch.origin ? ` ${batch.origin}` : ''} has no dlq configured`);
    dlqTouched();
    try {
      await dlq.append(records);
    } catch (err) {
      throw asInfraError(err, 'appending to the DLQ') ?? err;
    }
    return records;
  }

  /** Late events, state size and watermark lag of the windowed models, after a commit. */
  private async windowMetrics(): Promise<void> {
    const late = (this.summary.late ??= {});
    for (const [model, op] of this.executor.windows.ops) {
      const before = late[model] ?? {};
      const now: Record<string, number> = op.counts.late;
      for (const [policy, n] of Object.entries(now)) if (n > (before[policy] ?? 0)) this.metrics.windowLate.inc({ model, policy }, n - (before[policy] ?? 0));
      late[model] = { ...now };
      if (op instanceof DedupOperator) {
        this.metrics.dedupKeys.set({ model }, op.keys);
        const counted = this.duplicatesCounted[model] ?? 0;
        if (op.counts.duplicates > counted) this.metrics.dedupDuplicates.inc({ model }, op.counts.duplicates - counted);
        this.duplicatesCounted[model] = op.counts.duplicates;
      }
      if (op instanceof JoinOperator) {
        const counted = (this.unmatchedCounted[model] ??= { l: 0, r: 0 });
        for (const s of ['l', 'r'] as const) {
          const side = s === 'l' ? 'left' : 'right';
          this.metrics.joinBuffered.set({ model, side }, op.buffered[s]);
          if (op.counts.unmatched[s] > counted[s]) this.metrics.joinUnmatched.inc({ model, side }, op.counts.unmatched[s] - counted[s]);
          counted[s] = op.counts.unmatched[s];
        }
      }
      if (op.watermarkUs !== null) this.metrics.watermarkLag.set({ model }, Math.max(0, (this.clock.now() * 1000 - op.watermarkUs) / 1e6));
    }
    const windows = this.executor.windows;
    if (windows.stored) {
      this.metrics.windowPartitions.set(windows.partitionsHeld);
      const claims = windows.claims - this.claimsCounted;
      if (claims > 0) this.metrics.windowClaims.inc(claims);
      this.claimsCounted = windows.claims;
    }
    // The state's size costs a scan of it: measured every few seconds.
    if (this.clock.now() - this.windowStatsAt < 5000) return;
    this.windowStatsAt = this.clock.now();
    for (const model of this.executor.windows.ops.keys()) {
      const st = await this.executor.windows.stats(model);
      this.metrics.windowStateRows.set({ model }, st.rows);
      this.metrics.windowOpen.set({ model }, st.windows);
      this.metrics.windowStateBytes.set({ model }, st.bytes);
    }
  }

  private windowStatsAt = 0;
  /** Two sources: each one's schema as its last committed batch left it (what the next checkpoint records for the source a batch is not of). */
  private committedStructures: Record<string, Structure | undefined> = {};
  /** A stream join's unmatched rows already counted in sluice_join_unmatched_rows_total, per side. */
  private unmatchedCounted: Record<string, { l: number; r: number }> = {};
  /** A deduplicating model's duplicates already counted in sluice_dedup_duplicates_total. */
  private duplicatesCounted: Record<string, number> = {};
  /** Claims already counted in sluice_window_state_claims_total. */
  private claimsCounted = 0;
  /** The shared window state store (sluice.yml window_state), while open. */
  private windowStore?: PgWindowStore;

  private updateGauges(): void {
    this.metrics.walBytes.set(this.wal.totalBytes());
    this.metrics.ready.set(this.ready().ok ? 1 : 0);
    this.references?.report(this.metrics);
  }

  /**
   * Backpressure while a sink fails: once the WAL holds wal.max_bytes, no new batch is read
   * (unread messages stay in the source: memory stays bounded) until the flushes go through.
   */
  private async backpressure(): Promise<void> {
    const { signal, project } = this.opts;
    while (!signal.aborted && this.flusher.failures.size > 0 && this.wal.totalBytes() >= project.walMaxBytes) {
      if (!this.paused) {
        this.paused = true;
        this.updateGauges();
        this.log.warn({ wal_bytes: this.wal.totalBytes(), max_bytes: project.walMaxBytes }, 'reading paused: the WAL is full while a sink fails; reading resumes once the sinks take the rows');
      }
      await sleepUntil(this.flusher.nextRetry(), signal, this.clock);
      await this.flusher.flushDue();
    }
    if (this.paused) {
      this.paused = false;
      this.updateGauges();
      this.log.info('reading resumed');
    }
  }

  /** One batch through the models, nothing written or acknowledged: the result goes in the summary. */
  private async dryRun(source: Source, batcher: Batcher): Promise<RunSummary> {
    let clean = false;
    try {
      await source.open(undefined);
      let batch: SourceBatch | null = null;
      while (!this.opts.signal.aborted) {
        batch = await batcher.next(this.opts.signal);
        if (batch === null || batch.messages.length > 0) break;
      }
      const result: DryRunResult = { messages: 0, outputs: [], failures: [], tests: [] };
      this.summary.dryRun = result;
      if (!batch || batch.messages.length === 0) {
        clean = true;
        return this.summary;
      }
      const outcome = await this.executor.execute(await this.executor.prepare(batch.messages, 0, undefined, batch.origin));
      result.messages = batch.messages.length;
      for (const m of this.models) result.outputs.push({ model: m.name, ...(await this.executor.readOutput(m.name)) });
      for (const f of outcome.failures) result.failures.push({ coords: batch.messages[f.index].coords, stage: f.stage, error: f.error });
      result.tests = (await this.tests?.preview(outcome)) ?? [];
      this.summary.messages = batch.messages.length;
      clean = true;
    } finally {
      await closeSource(source, clean, this.log);
      this.closeDuckDB();
    }
    return this.summary;
  }
}

/** This worker's id: SLUICE_WORKER_ID or the host name, safe for file names. */
export function workerId(): string {
  return (process.env.SLUICE_WORKER_ID || os.hostname() || 'worker').replace(/[^A-Za-z0-9.-]/g, '-');
}

/** Where a file or generator source's dead letters go when `dlq` is not set: beside the WAL. */
export function defaultDlqDir(project: Project): string {
  return path.join(path.dirname(project.walPath), 'dlq');
}

/**
 * Closes a source, also one that failed to open (it may hold half of what it opened, such as a
 * connection). After a failure (`clean` false) an error closing it is only logged, so that it
 * does not hide the failure.
 */
async function closeSource(source: Source, clean: boolean, log: Logger): Promise<void> {
  try {
    await source.close();
  } catch (err) {
    if (clean) throw err;
    log.debug({ err: new Error(errorMessage(err)) }, 'closing the source after a failure failed too');
  }
}

/**
 * A pipeline of two sources as one NamedSource for what names it (logs, the lag metric, the
 * window store's scope) and what the WAL layout follows (a source scoped per worker); its
 * sources each keep their own settings, decoding rules and DLQ.
 */
function mergedDef(defs: NamedSource[]): NamedSource {
  const [first] = defs;
  const scoped = defs.find((d) => d.spec.workerScoped);
  const min = (k: 'batch_size' | 'batch_max_bytes' | 'batch_timeout_ms') => Math.min(...defs.map((d) => Number((d.cfg as Record<string, unknown>)[k])));
  return {
    ...first,
    name: groupName(defs.map((d) => d.name)),
    type: defs.map((d) => d.type).join('+'),
    spec: scoped ? { ...first.spec, workerScoped: scoped.spec.workerScoped } : first.spec,
    cfg: { ...first.cfg, batch_size: min('batch_size'), batch_max_bytes: min('batch_max_bytes'), batch_timeout_ms: min('batch_timeout_ms') },
  };
}
