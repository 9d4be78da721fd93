import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { DuckDBInstance, type DuckDBConnection } from '@duckdb/node-api';
import type { Logger } from 'pino';
import { SluiceError, errorMessage } from '../errors.js';
import type { ConnectorContext, DeadLetter, DeadLetterQueue, Source, SourceBatch, SinkWrite } from '../connectors/types.js';
import type { ModelDef, NamedSource, Project } from '../project/project-loader.js';
import { reachable } from '../project/dag.js';
import { Metrics } from '../ops/metrics.js';
import { fileList } from '../sql/quote.js';
import { Wal } from '../wal/wal.js';
import { crashPoint } from '../util/crash-point.js';
import { MSG_COL } from '../sql/analyze.js';
import { SinkRunner } from './sink-runner.js';
import { BatchExecutor, compileModels, decodeRules, type BatchOutcome, type PreparedBatch } from './executor.js';
import { reportContracts } from './contracts.js';
import { BatchTests, type TestSink } from './data-tests.js';
import { asInfraError, infraKind, type InfraError } from './infra-errors.js';
import { asCheckpoint, type Checkpoint } from './checkpoint.js';

export interface RunOptions {
  project: Project;
  log: Logger;
  /** Model names (or paths to their .sql) to run; their upstream models run too. */
  models?: string[];
  dryRun?: boolean;
  /** Replaces the configured source (dlq replay). */
  sourceOverride?: { source: Source; name: string };
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

export async function openDuckDB(settings: { threads?: number; memory_limit?: string } = {}): Promise<{ instance: DuckDBInstance; conn: DuckDBConnection }> {
  const config: Record<string, string> = {};
  // Per-batch queries work on one batch (one row group): each runs on the thread that issues
  // it, and two connections run at once. Leave a core to JavaScript (source client, scanner).
  config.threads = String(settings.threads ?? Math.max(1, os.availableParallelism() - 1));
  config.memory_limit = settings.memory_limit ?? defaultMemoryLimit();
  const instance = await DuckDBInstance.create(':memory:', config);
  const conn = await instance.connect();
  return { instance, conn };
}

/**
 * DuckDB's memory limit when duckdb.memory_limit is not set: a quarter of the machine's memory,
 * at most 2 GiB. DuckDB's own default (80% of the memory) leaves nothing to the rest of the
 * process and the machine; a pipeline's queries work on one batch or one flush at a time and
 * spill to disk beyond the limit.
 */
export function defaultMemoryLimit(): string {
  return `${Math.max(64, Math.min(2048, Math.floor(os.totalmem() / 4 / 2 ** 20)))}MiB`;
}

/** The threads and memory limit of one pipeline's DuckDB when `n` pipelines share a process. */
export interface DuckDBShare {
  threads: number;
  memory_limit: string;
  /** What was divided: the project's settings, or DuckDB's defaults where it has none. */
  total: { threads: number; memory_limit: string };
}

/**
 * Divides the project's duckdb.threads and duckdb.memory_limit (DuckDB's defaults where unset:
 * one thread per core but one, 80% of the memory DuckDB sees) among `n` pipelines of one
 * process, so that together they stay within what one pipeline alone would use. `conn` is a
 * connection of an instance opened with `settings`: it tells DuckDB's default memory limit.
 * Each pipeline gets at least one thread.
 */
export async function shareDuckDB(settings: { threads?: number; memory_limit?: string }, n: number, conn: DuckDBConnection): Promise<DuckDBShare> {
  const threads = settings.threads ?? Math.max(1, os.availableParallelism() - 1);
  let bytes = settings.memory_limit ? parseBytes(settings.memory_limit) : undefined;
  let shown = settings.memory_limit;
  if (bytes === undefined) {
    const current = String((await conn.runAndReadAll("SELECT current_setting('memory_limit')")).getRows()[0][0]);
    bytes = parseBytes(current);
    shown = settings.memory_limit ?? `${current} (sluice's default)`;
    if (bytes === undefined) throw new SluiceError('INTERNAL', `cannot read DuckDB's memory limit "${current}"`);
  }
  const each = bytes / n;
  const memory_limit = each >= 2 ** 24 ? `${Math.floor(each / 2 ** 20)}MiB` : `${Math.max(1, Math.floor(each / 2 ** 10))}KiB`;
  return { threads: Math.max(1, Math.floor(threads / n)), memory_limit, total: { threads, memory_limit: shown! } };
}

/** DuckDB's memory units (KB = 1000, KiB = 1024). */
const BYTE_UNITS: Record<string, number> = { '': 1, b: 1, byte: 1, bytes: 1, k: 1e3, kb: 1e3, m: 1e6, mb: 1e6, g: 1e9, gb: 1e9, t: 1e12, tb: 1e12, kib: 2 ** 10, mib: 2 ** 20, gib: 2 ** 30, tib: 2 ** 40, pib: 2 ** 50 };
/** Bytes of a memory amount as DuckDB takes or shows it ('2GB', '18.8 GiB'); undefined for anything else. */
function parseBytes(text: string): number | undefined {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$/i.exec(text);
  const unit = m && BYTE_UNITS[m[2].toLowerCase()];
  return unit ? Number(m[1]) * unit : undefined;
}

/**
 * The run loop: poll -> decode -> models -> WAL (fsync) -> ack, and per model, when its size
 * or age threshold is reached, WAL -> sinks (atomic, idempotent) -> WAL truncate.
 */
export class Pipeline {
  private readonly metrics = new Metrics();
  private wal!: Wal;
  private sinks = new Map<string, SinkRunner>();
  /** Dead-lettering a flush (append, then the state with the DLQ's new mark) goes one at a time. */
  private dlqTurn: Promise<void> = Promise.resolve();
  private paused = false;
  private dlq: DeadLetterQueue | undefined;
  private executor!: BatchExecutor;
  /** The models' data tests; undefined when none are declared (then batches pay nothing). */
  private tests: BatchTests | undefined;
  private conn!: DuckDBConnection;
  private loadConn!: DuckDBConnection;
  private instance!: DuckDBInstance;
  private models: ModelDef[] = [];
  private replayed = false;
  /** Models whose flush has a sink failing, with the last error (for /readyz and backpressure). */
  private flushFailures = new Map<string, { error: string }>();
  private summary: RunSummary = { messages: 0, deadLettered: 0, rows: {}, batches: 0, flushes: 0, redelivered: 0 };
  private workerId = '';
  private lastReadMs = 0;
  private source?: Source;
  /** The infrastructure failure being waited out (see untilItWorks), for /readyz. */
  private stall: { error: InfraError; since: number } | undefined;
  /** The read (and decode) of the next batch, in flight while the current one is handled. */
  private reading: Promise<unknown> = Promise.resolve();

  constructor(private readonly opts: RunOptions) {}

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
    const { project, signal } = this.opts;
    if (!this.opts.sourceOverride && project.sources.length !== 1) {
      throw new SluiceError('INTERNAL', `a pipeline reads one source and this project has ${project.sources.length}: scope it to one (scopeToSource) and run one pipeline per source (runPipelines)`);
    }
    const srcDef: NamedSource = project.sources.find((s) => s.name === this.opts.sourceOverride?.name) ?? project.sources[0];
    this.models = selectModels(project, this.opts.models);
    const ctx: ConnectorContext = { projectDir: project.dir, log: this.log, workerId: workerId(), observeAckLatency: (s) => this.metrics.ackLatency.observe(s) };
    this.workerId = ctx.workerId;

    ({ instance: this.instance, conn: this.conn } = this.opts.duckdb ?? (await openDuckDB(project.duckdb)));
    // From here the pipeline owns DuckDB, and whatever it connects is closed however it ends,
    // a failure while starting included (one source of several may fail to start while the
    // others go on). A close that fails after another error does not hide that error.
    let failed = false;
    try {
      return await this.runOpened(srcDef, ctx);
    } catch (err) {
      failed = true;
      throw err;
    } finally {
      await this.release(failed);
    }
  }

  private async runOpened(srcDef: NamedSource, ctx: ConnectorContext): Promise<RunSummary> {
    const { project, signal } = this.opts;
    const compiled = await compileModels(this.conn, this.models);
    // A second connection loads and decodes the next batch while this one runs the models.
    this.loadConn = await this.instance.connect();
    this.executor = new BatchExecutor(this.conn, compiled, srcDef.name, this.loadConn, decodeRules(srcDef.policy));
    await this.executor.init();
    this.tests = await BatchTests.create(this.conn, project, this.models, this.log);

    const source = this.opts.sourceOverride?.source ?? (await srcDef.spec.create(srcDef.cfg, ctx));
    this.source = source;
    if (this.opts.dryRun) return this.dryRun(source);

    const scopedCtx = this.opts.scopedWorkerId ? { ...ctx, workerId: this.opts.scopedWorkerId } : ctx;
    for (const name of new Set(this.models.flatMap((m) => m.sinks))) {
      const def = project.sinks.find((s) => s.name === name)!;
      const sink = await def.spec.create(def.cfg, scopedCtx);
      try {
        await sink.connect();
      } catch (err) {
        await sink.close().catch(() => {});
        throw err;
      }
      this.sinks.set(name, new SinkRunner(name, sink, def.policy, this.metrics, this.log));
    }

    // Queue consumers scale out: each worker keeps its own WAL and names its own files.
    const walDir = this.opts.walDir ?? (srcDef.spec.workerScoped ? path.join(project.walPath, this.workerId) : project.walPath);
    this.wal = new Wal(walDir, this.log);
    await this.wal.open(this.models.map((m) => m.name));
    for (const m of this.wal.modelsWithRows()) {
      if (!this.models.some((x) => x.name === m)) {
        this.log.warn({ model: m, bytes: this.wal.pendingBytes(m) }, 'the WAL holds rows of a model that is not being run; they are kept until it runs again');
      }
    }
    await this.checkSegments();
    const start = asCheckpoint(this.wal.state.checkpoint);
    this.executor.structure = start.structure;
    this.executor.schemas.load(start.schemas);

    this.dlq = await this.openDlq(srcDef, scopedCtx);
    await this.dlq?.recover(start.dlq);
    await this.opts.beforeWrites?.();

    {
      // Surviving WAL goes to the sinks before anything new is read.
      const pendingAtStart = this.models.filter((m) => this.wal.pending(m.name).length > 0).length;
      if (pendingAtStart) this.log.info({ models: pendingAtStart }, 'replaying WAL from a previous run');
      while (!(await this.flushAll())) {
        if (signal.aborted) throw new SluiceError('SINK', 'stopped before the WAL could be replayed; it is kept for the next start');
        await sleepUntil(this.nextRetry(), signal);
      }
      this.replayed = true;
      this.updateGauges();

      let clean = false;
      try {
        await source.open(start.position);
        this.log.info({ source: srcDef.name, type: srcDef.type, worker: this.workerId }, 'reading from the source');
        if (source.lag) this.metrics.watchLag(srcDef.name, () => source.lag!());
        await this.loop(source, srcDef.name);
        clean = true;
      } finally {
        this.metrics.watchLag(srcDef.name, undefined);
        // Also when open() failed half-way (a connection made, then a missing stream).
        await closeSource(source, clean, this.log);
      }
      // End of input or shutdown: deliver everything staged.
      while (!(await this.flushAll())) {
        if (signal.aborted) throw new SluiceError('SINK', 'stopped with rows still in the WAL; they are delivered on the next start');
        await sleepUntil(this.nextRetry(), signal);
      }
    }
    return this.summary;
  }

  /** Closes the sinks, the DLQ and DuckDB (each once); after a failure, close errors are only logged. */
  private async release(afterFailure: boolean): Promise<void> {
    const dlq = this.dlq;
    const closing: Array<[string, () => Promise<void>]> = [
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
    for (const [model, f] of this.flushFailures) reasons.push(`flush of ${model} failing: ${f.error}`);
    if (this.stall) reasons.push(`paused since ${new Date(this.stall.since).toISOString()}: ${this.stall.error.message}`);
    if (this.paused) reasons.push(`reading paused: the WAL holds ${this.wal.totalBytes()} bytes (wal.max_bytes ${this.opts.project.walMaxBytes}) while a sink fails`);
    return { ok: reasons.length === 0, reasons };
  }

  private async openDlq(src: NamedSource, ctx: ConnectorContext): Promise<DeadLetterQueue | undefined> {
    const cfg = { ...src.cfg };
    if (!cfg.dlq && (src.type === 'file' || src.type === 'generator')) cfg.dlq = defaultDlqDir(this.opts.project);
    return src.spec.createDlq?.(cfg, ctx);
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
  private async loop(source: Source, sourceName: string): Promise<void> {
    const { signal } = this.opts;
    let lane = 0;
    const next = (): Promise<ReadBatch | null> => {
      const p = this.readAndPrepare(source, lane);
      lane ^= 1;
      p.catch(() => {}); // awaited by the loop; only keeps a failure from counting as unhandled meanwhile
      this.reading = p;
      return p;
    };
    let pending = next();
    try {
      for (;;) {
        const cur = await pending;
        if (cur === null) {
          if (!signal.aborted) this.log.info('end of input');
          break;
        }
        if (this.flushFailures.size > 0) await this.backpressure();
        pending = signal.aborted ? Promise.resolve(null) : next();
        if (cur.prepared) await this.handleBatch(cur.batch, cur.prepared, source, sourceName);
        await this.flushDue();
      }
    } finally {
      // On an error, let the read in flight settle before its connection is closed.
      await pending.catch(() => {});
    }
  }

  private async readAndPrepare(source: Source, lane: number): Promise<ReadBatch | null> {
    const readStart = performance.now();
    const batch = await source.read(this.opts.signal);
    this.lastReadMs = Math.round(performance.now() - readStart);
    if (batch === null) return null;
    if (batch.messages.length === 0) return { batch };
    const prepared = await this.untilItWorks('decoding a batch', () => this.executor.prepare(batch.messages, lane, batch.block), async () => {});
    return { batch, prepared };
  }

  /**
   * Runs `step` until it works. An infrastructure failure (see infra-errors.ts: a full or
   * failing disk, permissions, memory) is nobody's message's fault: nothing is dead-lettered or
   * acked for it. The pipeline pauses (reading stops: the loop waits here), /readyz turns red,
   * the failure is counted and logged once, `undo` puts things back as they were before the
   * step, and the step is tried again with backoff until it works — or until
   * infra_errors.give_up_after_seconds, or a stop, ends the run with everything unacked left
   * for the next start. Any other error goes up at once.
   */
  private async untilItWorks<T>(where: string, step: () => Promise<T>, undo: () => Promise<void>): Promise<T> {
    const { signal, project } = this.opts;
    const { maxBackoffMs, giveUpAfterSeconds } = project.infraErrors ?? { maxBackoffMs: 30_000, giveUpAfterSeconds: 0 };
    let wait = Math.min(250, maxBackoffMs);
    for (let attempt = 1; ; attempt++) {
      try {
        const r = await step();
        if (attempt > 1 && this.stall) {
          this.log.info({ after_ms: Date.now() - this.stall.since, attempts: attempt }, `resumed: ${where} works again`);
          this.stall = undefined;
          this.metrics.stalled.set(0);
          this.updateGauges();
        }
        return r;
      } catch (err) {
        const infra = asInfraError(err, where);
        if (!infra) throw err;
        try {
          await undo();
        } catch (undoErr) {
          this.log.debug({ err: undoErr }, 'undoing the failed step failed too; the next start sweeps what is left');
        }
        this.metrics.infraErrors.inc({ kind: infra.kind });
        this.metrics.errors.inc({ stage: 'infra', error_type: infra.kind.replace(/ /g, '_') });
        const changed = this.stall?.error.message !== infra.message;
        this.stall = { error: infra, since: this.stall?.since ?? Date.now() };
        this.metrics.stalled.set(1);
        this.updateGauges();
        const lasted = Date.now() - this.stall.since;
        if (giveUpAfterSeconds > 0 && lasted >= giveUpAfterSeconds * 1000) {
          throw new SluiceError('INFRA', `gave up after ${Math.round(lasted / 1000)} s (infra_errors.give_up_after_seconds ${giveUpAfterSeconds}): ${infra.message}; nothing of the unacked batch was lost: it is read again on the next start`, { cause: err });
        }
        if (signal.aborted) throw new SluiceError('INFRA', `stopped while paused: ${infra.message}; the batch was not acked and is read again on the next start`, { cause: err });
        if (changed) this.log.error({ kind: infra.kind, retry_max_ms: maxBackoffMs }, `paused: ${infra.message}; nothing was dead-lettered or acked for it, and the batch is retried until it works`);
        else this.log.debug({ kind: infra.kind, attempt, retry_in_ms: wait }, 'still failing');
        await sleepUntil(Date.now() + wait, signal);
        wait = Math.min(wait * 2, maxBackoffMs);
      }
    }
  }

  /**
   * A batch through the models to the WAL commit, then the ack. An infrastructure failure on
   * the way (the WAL's or the DLQ's disk full, say) undoes what was staged and tries the batch
   * again (untilItWorks): the messages were not acked, and none is blamed for it.
   */
  private async handleBatch(batch: SourceBatch, first: PreparedBatch, source: Source, sourceName: string): Promise<void> {
    const timer = this.metrics.batchDuration.startTimer();
    this.metrics.messagesIn.inc({ source: sourceName }, batch.messages.length);
    const dlqBefore = this.dlq?.mark();
    let prepared: PreparedBatch | undefined = first;
    let dlqTouched = false;
    const staged = await this.untilItWorks(
      'writing a batch to the WAL',
      async () => {
        // After a failure the batch is decoded again: isolating bad messages changes its tables.
        prepared ??= await this.executor.prepare(batch.messages, first.lane, batch.block);
        const p = prepared;
        prepared = undefined;
        return this.stageBatch(batch, p, () => (dlqTouched = true));
      },
      async () => {
        await this.wal.abandon();
        if (dlqTouched && this.dlq) await this.dlq.recover(dlqBefore);
        dlqTouched = false;
        // The retry decodes on the loading connection: wait for the next batch's decoding there.
        await this.reading.catch(() => {});
        // A due flush empties the WAL: it may be what frees the disk.
        await this.flushDue();
      },
    );
    const { outcome, rows, records } = staged;
    for (const r of records) {
      this.metrics.deadLettered.inc({ stage: r.stage });
      this.metrics.errors.inc({ stage: r.stage, error_type: r.stage === 'decode' ? 'decode' : 'sql' });
      this.log.warn({ stage: r.stage, source: r.source, model: r.model, error: r.error }, 'message sent to the DLQ');
    }
    this.summary.deadLettered += records.length;
    for (const [model, n] of rows) {
      this.metrics.rowsOut.inc({ model }, n);
      this.summary.rows[model] = (this.summary.rows[model] ?? 0) + n;
    }
    const redelivered = batch.messages.reduce((n, m) => n + (m.redelivered ? 1 : 0), 0);
    if (redelivered) {
      this.metrics.redelivered.inc({ source: sourceName }, redelivered);
      this.summary.redelivered += redelivered;
    }
    const ackStart = performance.now();
    await source.ack(batch);
    outcome.timings.ack = Math.round(performance.now() - ackStart);
    this.metrics.acked.inc({ source: sourceName }, batch.messages.length);
    this.summary.messages += batch.messages.length;
    this.summary.batches++;
    timer();
    this.updateGauges();
    this.log.debug({ seq: this.wal.state.seq, messages: batch.messages.length, failed: outcome.failures.length, attempts: outcome.attempts, ms: { read: this.lastReadMs, ...outcome.timings } }, 'batch committed');
  }

  /**
   * Runs the models over a prepared batch, stages each model's rows as a WAL segment, appends
   * the dead letters and commits the batch (segments, DLQ mark, source position) in the WAL.
   * Nothing is counted here: a failure is undone and the batch staged again.
   */
  private async stageBatch(batch: SourceBatch, prepared: PreparedBatch, dlqTouched: () => void): Promise<{ outcome: BatchOutcome; rows: Map<string, number>; records: DeadLetter[] }> {
    // Segment names need the batch's sequence number and keys before the models run.
    const seq = this.wal.nextSeq();
    const first = batch.first ?? `${this.workerId}.${String(seq).padStart(12, '0')}`;
    const last = batch.last ?? first;
    const paths = new Map(this.models.map((m) => [m.name, this.wal.segmentPaths(m.name, seq, first, last)]));
    let outcome: BatchOutcome;
    try {
      const keep = this.tests?.keepInTables();
      const targets = new Map([...paths].filter(([k]) => !keep?.has(k)).map(([k, v]) => [k, v.tmp]));
      outcome = await this.executor.execute(prepared, targets);
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
    if (records.length) {
      if (!this.dlq) throw new SluiceError('CONFIG', `a message failed (${records[0].stage}: ${records[0].error}) and the source has no dlq configured`);
      dlqTouched();
      try {
        await this.dlq.append(records);
      } catch (err) {
        throw asInfraError(err, 'appending to the DLQ') ?? err;
      }
    }
    outcome.timings.stage = Math.round(performance.now() - stageStart);
    crashPoint('before-commit');
    const commitStart = performance.now();
    const checkpoint: Checkpoint = { position: batch.position, dlq: this.dlq?.mark(), structure: outcome.structure, schemas: this.executor.schemas.snapshot() };
    try {
      await this.wal.commit(seq, checkpoint, touched);
    } catch (err) {
      throw asInfraError(err, 'committing the WAL') ?? err;
    }
    crashPoint('after-commit');
    // Reported once the batch is committed: a batch tried again is not reported twice.
    reportContracts(outcome.contract, this.log, this.metrics.contractCounters());
    outcome.timings.commit = Math.round(performance.now() - commitStart);
    outcome.timings.stage_and_commit = Math.round(performance.now() - stageStart);
    return { outcome, rows, records };
  }

  private updateGauges(): void {
    this.metrics.walBytes.set(this.wal.totalBytes());
    this.metrics.ready.set(this.ready().ok ? 1 : 0);
  }

  /** When the next write of a pending flush may be tried. */
  private nextRetry(): number {
    let t = Infinity;
    for (const m of this.models) {
      if (this.wal.pending(m.name).length === 0) continue;
      for (const s of m.sinks) t = Math.min(t, this.sinks.get(s)!.nextTry(m.name));
    }
    return t === Infinity ? Date.now() + 1000 : t;
  }

  /** True when some sink of the model may be written now (not in backoff, circuit not open). */
  private writable(m: ModelDef, now: number): boolean {
    return m.sinks.some((s) => this.sinks.get(s)!.canWrite(m.name, now));
  }

  /**
   * Backpressure while a sink fails: once the WAL holds wal.max_bytes, no new batch is read
   * (unread messages stay in the source: memory stays bounded) until the flushes go through.
   */
  private async backpressure(): Promise<void> {
    const { signal, project } = this.opts;
    while (!signal.aborted && this.flushFailures.size > 0 && this.wal.totalBytes() >= project.walMaxBytes) {
      if (!this.paused) {
        this.paused = true;
        this.updateGauges();
        this.log.warn({ wal_bytes: this.wal.totalBytes(), max_bytes: project.walMaxBytes }, 'reading paused: the WAL is full while a sink fails; reading resumes once the sinks take the rows');
      }
      await sleepUntil(this.nextRetry(), signal);
      await this.flushDue();
    }
    if (this.paused) {
      this.paused = false;
      this.updateGauges();
      this.log.info('reading resumed');
    }
  }

  /** Flushes models whose size or age threshold is reached (or whose flush is being retried). */
  private async flushDue(): Promise<void> {
    const now = Date.now();
    for (const m of this.models) {
      const segs = this.wal.pending(m.name);
      if (segs.length === 0) continue;
      if (!this.writable(m, now)) continue;
      const due =
        this.wal.hasInflight(m.name) ||
        this.wal.pendingBytes(m.name) >= m.maxFileBytes ||
        now - segs[0].time >= m.maxAgeSeconds * 1000;
      if (due) await this.flushModel(m);
    }
  }

  /**
   * Flushes every model not in retry backoff; true when nothing is left in the WAL. At start-up
   * and at the end, when no batch is being loaded, models flush two at a time, one on each
   * connection: a flush rewrites all of a model's rows and would leave a core idle otherwise.
   */
  private async flushAll(conns: DuckDBConnection[] = [this.conn, this.loadConn]): Promise<boolean> {
    let ok = true;
    const now = Date.now();
    const todo: ModelDef[] = [];
    for (const m of this.models) {
      if (this.wal.pending(m.name).length === 0) continue;
      if (this.writable(m, now)) todo.push(m);
      else ok = false;
    }
    todo.sort((a, b) => this.wal.pendingBytes(b.name) - this.wal.pendingBytes(a.name));
    const work = async (conn: DuckDBConnection): Promise<void> => {
      for (let m = todo.shift(); m; m = todo.shift()) {
        while (this.wal.pending(m.name).length > 0) {
          if (!(await this.flushModel(m, conn))) {
            ok = false;
            break;
          }
        }
      }
    };
    // Both lanes settle before a failure goes up: the caller then closes what they write with.
    const lanes = await Promise.allSettled(conns.map(work));
    const failed = lanes.find((l): l is PromiseRejectedResult => l.status === 'rejected');
    if (failed) throw failed.reason;
    return ok;
  }

  /**
   * Writes a model's flush to each of its sinks that does not have it yet; true once every sink
   * has it (then the WAL is truncated). A sink that took the flush is recorded in the WAL state
   * at once, so a retry or a restart never writes it there again. A failing sink follows its
   * policy: retried with backoff behind its circuit breaker; once exhausted, on_error `retry`
   * keeps trying, `dlq` sends the rows to the DLQ (the sink counts as done), `fail` throws.
   */
  private async flushModel(m: ModelDef, conn = this.conn): Promise<boolean> {
    const flush = await this.wal.beginFlush(m.name);
    if (!flush) return true;
    const timer = this.metrics.flushDuration.startTimer({ model: m.name });
    const files = flush.segments.map((s) => s.file);
    let write: SinkWrite | undefined;
    let complete = true;
    let failed = false;
    let fatal: SluiceError | undefined;
    try {
      for (const name of m.sinks) {
        if (flush.done.includes(name)) continue;
        const runner = this.sinks.get(name)!;
        if (!runner.canWrite(m.name)) {
          complete = false;
          continue;
        }
        if (!write) {
          const r = await conn.runAndReadAll(`SELECT count(*) FROM read_parquet(${fileList(files)})`);
          write = { model: m.name, segments: files, seqs: flush.segments.map((x) => x.seq), name: flush.name, rows: Number(r.getRows()[0][0]) };
          await this.tests?.checkFlush(m.name, files, conn, this.testSink);
        }
        const res = await runner.write(write, conn);
        if (res.ok) {
          crashPoint('after-sink-write');
          await this.wal.markSinkDone(m.name, name);
          continue;
        }
        if (res.blocked) {
          complete = false;
          continue;
        }
        failed = true;
        const err = res.error;
        const { on_error: onError, retry } = runner.policy;
        this.metrics.errors.inc({ stage: 'sink', error_type: err instanceof SluiceError ? err.code.toLowerCase() : 'unknown' });
        this.flushFailures.set(m.name, { error: `sink ${name}: ${errorMessage(err)}` });
        // A full disk or a failing allocation is not the rows' fault: such a flush is only ever
        // retried, whatever on_error says (it would dead-letter good rows, or stop for nothing).
        const infra = infraKind(err);
        if (!res.exhausted || onError === 'retry' || infra) {
          complete = false;
          const why = onError === 'retry' ? 'on_error: retry' : `${infra}: on_error: ${onError} is only for errors of the rows`;
          this.log.error({ model: m.name, sink: name, err, attempt: res.attempts, retry_in_ms: res.retryInMs }, res.exhausted ? `sink still failing after ${res.attempts} attempts (${why}); the WAL is kept and the write retried` : 'sink write failed; the WAL is kept and the write retried');
          continue;
        }
        if (onError === 'fail') {
          complete = false;
          fatal = new SluiceError('SINK', `sink ${name} failed writing ${m.name}/${flush.name} (${res.attempts} attempt${res.attempts === 1 ? '' : 's'}, on_error: fail): ${errorMessage(err)}; the rows stay in the WAL and the next run delivers them`, { cause: err });
          break;
        }
        await this.deadLetterFlush(m.name, name, write, err, conn);
        runner.forget(m.name);
      }
    } catch (err) {
      complete = false;
      failed = true;
      this.flushFailures.set(m.name, { error: errorMessage(err) });
      this.metrics.errors.inc({ stage: 'sink', error_type: err instanceof SluiceError ? err.code.toLowerCase() : 'unknown' });
      this.log.error({ model: m.name, err }, 'flush failed; the WAL is kept and the flush retried');
    }
    const ms = Math.round(timer() * 1000);
    if (fatal) throw fatal;
    if (!complete) {
      if (failed) this.metrics.flushes.inc({ model: m.name, result: 'error' });
      this.updateGauges();
      return false;
    }
    try {
      await this.wal.endFlush(m.name);
    } catch (err) {
      // Every sink has the flush; recording that failed (the WAL's disk is full, say): the
      // flush stays in flight and its record is tried again (the sinks are not written again).
      this.flushFailures.set(m.name, { error: `recording the flush of ${m.name}: ${errorMessage(err)}` });
      this.log.error({ model: m.name, err: new Error(errorMessage(err)) }, 'recording a finished flush failed; it is tried again');
      this.updateGauges();
      return false;
    }
    this.flushFailures.delete(m.name);
    this.metrics.flushes.inc({ model: m.name, result: 'ok' });
    this.summary.flushes++;
    this.log.info({ model: m.name, file: flush.name, rows: write?.rows, segments: files.length, sinks: m.sinks, ms }, 'flushed');
    this.updateGauges();
    return true;
  }

  /**
   * on_error: dlq — the flush's rows go to the source's DLQ, one record per row (the row as JSON,
   * stage `sink`, the model and the sink's error), then the sink counts as done for this flush;
   * the DLQ's new mark is committed with that record, so a crash in between writes them again
   * rather than twice.
   */
  private async deadLetterFlush(model: string, sink: string, w: SinkWrite, err: unknown, conn: DuckDBConnection): Promise<void> {
    const turn = this.dlqTurn.then(async () => {
      const dlq = this.dlq;
      if (!dlq) throw new SluiceError('CONFIG', `sink ${sink} has on_error: dlq but the source has no dlq configured`);
      const error = `sink ${sink}: ${errorMessage(err)}`;
      const time = new Date().toISOString();
      const result = await conn.stream(`SELECT to_json(t)::VARCHAR FROM (SELECT * EXCLUDE (${MSG_COL}) FROM read_parquet(${fileList(w.segments)}, union_by_name = true)) t`);
      let row = 0;
      let chunk: DeadLetter[] = [];
      for await (const rows of result.yieldRows()) {
        for (const r of rows) {
          chunk.push({ payload: String(r[0]), error, stage: 'sink', source: { sink, flush: w.name, row: row++ }, model, time });
          if (chunk.length >= 10_000) {
            await dlq.append(chunk);
            chunk = [];
          }
        }
      }
      if (chunk.length) await dlq.append(chunk);
      await this.wal.markSinkDone(model, sink, { checkpoint: { ...asCheckpoint(this.wal.state.checkpoint), dlq: dlq.mark() } satisfies Checkpoint });
      this.summary.deadLettered += row;
      this.metrics.deadLettered.inc({ stage: 'sink' }, row);
      this.metrics.sinkDeadLettered.inc({ model, sink }, row);
      this.log.warn({ model, sink, flush: w.name, rows: row, error }, 'sink gave up on a flush (on_error: dlq): its rows were sent to the DLQ');
    });
    this.dlqTurn = turn.catch(() => {});
    await turn;
  }

  /** One batch through the models, nothing written or acknowledged: the result goes in the summary. */
  private async dryRun(source: Source): Promise<RunSummary> {
    let clean = false;
    try {
      await source.open(undefined);
      let batch: SourceBatch | null = null;
      while (!this.opts.signal.aborted) {
        batch = await source.read(this.opts.signal);
        if (batch === null || batch.messages.length > 0) break;
      }
      const result: DryRunResult = { messages: 0, outputs: [], failures: [], tests: [] };
      this.summary.dryRun = result;
      if (!batch || batch.messages.length === 0) {
        clean = true;
        return this.summary;
      }
      const outcome = await this.executor.process(batch.messages);
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

function sleepUntil(t: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const ms = Math.max(10, t - Date.now());
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done, { once: true });
  });
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
