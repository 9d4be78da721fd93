import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { DuckDBInstance, type DuckDBConnection } from '@duckdb/node-api';
import type { Logger } from 'pino';
import { SluiceError, errorMessage } from '../errors.js';
import type { ConnectorContext, DeadLetter, DeadLetterQueue, Sink, Source, SourceBatch } from '../connectors/types.js';
import type { ModelDef, NamedSource, Project } from '../project/project-loader.js';
import { reachable } from '../project/dag.js';
import { Metrics } from '../ops/metrics.js';
import { startServer } from '../ops/server.js';
import { fileList } from '../sql/quote.js';
import { Wal } from '../wal/wal.js';
import { crashPoint } from '../util/crash-point.js';
import { BatchExecutor, compileModels, type BatchOutcome, type PreparedBatch } from './executor.js';

export interface RunOptions {
  project: Project;
  log: Logger;
  /** HTTP port for /healthz, /readyz, /metrics; 0 = no server. */
  port: number;
  /** Model names (or paths to their .sql) to run; their upstream models run too. */
  models?: string[];
  dryRun?: boolean;
  /** Replaces the configured source (dlq replay). */
  sourceOverride?: { source: Source; name: string };
  /** Where the WAL lives (defaults to the project's wal.path). */
  walDir?: string;
  signal: AbortSignal;
  /** Output for --dry-run. */
  print?: (text: string) => void;
  /** A DuckDB instance and connection to use (the run owns them: they are closed at the end). */
  duckdb?: { instance: DuckDBInstance; conn: DuckDBConnection };
}

export interface RunSummary {
  messages: number;
  deadLettered: number;
  rows: Record<string, number>;
  batches: number;
  flushes: number;
  /** Messages the broker marked as delivered before: the bound on duplicates without dedupe. */
  redelivered: number;
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
  if (settings.memory_limit) config.memory_limit = settings.memory_limit;
  const instance = await DuckDBInstance.create(':memory:', config);
  const conn = await instance.connect();
  return { instance, conn };
}

/**
 * The run loop: poll -> decode -> models -> WAL (fsync) -> ack, and per model, when its size
 * or age threshold is reached, WAL -> sinks (atomic, idempotent) -> WAL truncate.
 */
export class Pipeline {
  private readonly metrics = new Metrics();
  private wal!: Wal;
  private sinks = new Map<string, Sink>();
  private dlq: DeadLetterQueue | undefined;
  private executor!: BatchExecutor;
  private conn!: DuckDBConnection;
  private loadConn!: DuckDBConnection;
  private instance!: DuckDBInstance;
  private models: ModelDef[] = [];
  private replayed = false;
  private flushFailures = new Map<string, { count: number; nextTry: number; error: string }>();
  private summary: RunSummary = { messages: 0, deadLettered: 0, rows: {}, batches: 0, flushes: 0, redelivered: 0 };
  private workerId = '';
  private lastReadMs = 0;
  private source?: Source;

  constructor(private readonly opts: RunOptions) {}

  private get log(): Logger {
    return this.opts.log;
  }

  async run(): Promise<RunSummary> {
    const { project, signal } = this.opts;
    if (!this.opts.sourceOverride && project.sources.length !== 1) {
      throw new SluiceError('USAGE', `this project has ${project.sources.length} sources; running several sources in one process is not supported yet`);
    }
    const srcDef: NamedSource = project.sources.find((s) => s.name === this.opts.sourceOverride?.name) ?? project.sources[0];
    this.models = selectModels(project, this.opts.models);
    const ctx: ConnectorContext = { projectDir: project.dir, log: this.log, workerId: workerId(), observeAckLatency: (s) => this.metrics.ackLatency.observe(s) };
    this.workerId = ctx.workerId;

    ({ instance: this.instance, conn: this.conn } = this.opts.duckdb ?? (await openDuckDB(project.duckdb)));
    const compiled = await compileModels(this.conn, this.models);
    // A second connection loads and decodes the next batch while this one runs the models.
    this.loadConn = await this.instance.connect();
    this.executor = new BatchExecutor(this.conn, compiled, srcDef.name, this.loadConn);
    await this.executor.init();

    const source = this.opts.sourceOverride?.source ?? (await srcDef.spec.create(srcDef.cfg, ctx));
    this.source = source;
    if (this.opts.dryRun) return this.dryRun(source);

    for (const name of new Set(this.models.flatMap((m) => m.sinks))) {
      const def = project.sinks.find((s) => s.name === name)!;
      const sink = await def.spec.create(def.cfg, ctx);
      await sink.connect();
      this.sinks.set(name, sink);
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
    this.executor.structure = this.wal.state.structure;

    this.dlq = await this.openDlq(srcDef, ctx);
    await this.dlq?.recover(this.wal.state.dlq);

    const server = this.opts.port > 0 ? await startServer(this.opts.port, this.metrics, { ready: () => this.ready() }) : undefined;
    if (server) this.log.info({ port: server.port }, 'serving /healthz /readyz /metrics');
    try {
      // Surviving WAL goes to the sinks before anything new is read.
      const pendingAtStart = this.models.filter((m) => this.wal.pending(m.name).length > 0).length;
      if (pendingAtStart) this.log.info({ models: pendingAtStart }, 'replaying WAL from a previous run');
      while (!(await this.flushAll())) {
        if (signal.aborted) throw new SluiceError('SINK', 'stopped before the WAL could be replayed; it is kept for the next start');
        await sleepUntil(this.nextRetry(), signal);
      }
      this.replayed = true;
      this.updateGauges();

      await source.open(this.wal.state.position);
      this.log.info({ source: srcDef.name, type: srcDef.type, worker: this.workerId }, 'reading from the source');
      try {
        await this.loop(source, srcDef.name);
      } finally {
        await source.close();
      }
      // End of input or shutdown: deliver everything staged.
      while (!(await this.flushAll())) {
        if (signal.aborted) throw new SluiceError('SINK', 'stopped with rows still in the WAL; they are delivered on the next start');
        await sleepUntil(this.nextRetry(), signal);
      }
    } finally {
      await server?.close();
      for (const s of this.sinks.values()) await s.close();
      await this.dlq?.close();
      this.closeDuckDB();
    }
    return this.summary;
  }

  private closeDuckDB(): void {
    this.loadConn.closeSync();
    this.conn.closeSync();
    this.instance.closeSync();
  }

  /** Exposed for tests and the ops server. */
  ready(): { ok: boolean; reasons: string[] } {
    const reasons: string[] = [];
    if (!this.replayed) reasons.push('replaying WAL');
    if (this.source?.healthy && !this.source.healthy()) reasons.push('source disconnected');
    for (const [name, s] of this.sinks) if (!s.healthy()) reasons.push(`sink ${name} unhealthy`);
    for (const [model, f] of this.flushFailures) reasons.push(`flush of ${model} failing: ${f.error}`);
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
    return { batch, prepared: await this.executor.prepare(batch.messages, lane, batch.block) };
  }

  private async handleBatch(batch: SourceBatch, prepared: PreparedBatch, source: Source, sourceName: string): Promise<void> {
    const timer = this.metrics.batchDuration.startTimer();
    this.metrics.messagesIn.inc({ source: sourceName }, batch.messages.length);
    // Segment names need the batch's sequence number and keys before the models run.
    const seq = this.wal.nextSeq();
    const first = batch.first ?? `${this.workerId}.${String(seq).padStart(12, '0')}`;
    const last = batch.last ?? first;
    const paths = new Map(this.models.map((m) => [m.name, this.wal.segmentPaths(m.name, seq, first, last)]));
    let outcome: BatchOutcome;
    try {
      outcome = await this.executor.execute(prepared, new Map([...paths].map(([k, v]) => [k, v.tmp])));
    } catch (err) {
      this.metrics.errors.inc({ stage: 'transform', error_type: 'batch' });
      throw err;
    }
    const stageStart = performance.now();
    const redelivered = batch.messages.reduce((n, m) => n + (m.redelivered ? 1 : 0), 0);
    if (redelivered) {
      this.metrics.redelivered.inc({ source: sourceName }, redelivered);
      this.summary.redelivered += redelivered;
    }
    const touched: string[] = [];
    for (const m of this.models) {
      const n = outcome.rows.get(m.name) ?? 0;
      const p = paths.get(m.name)!;
      if (n === 0) {
        if (outcome.written.has(m.name)) await fsp.rm(p.tmp, { force: true });
        continue;
      }
      if (!outcome.written.has(m.name)) await this.executor.copyOutput(m.name, p.tmp);
      touched.push(m.name);
      this.metrics.rowsOut.inc({ model: m.name }, n);
      this.summary.rows[m.name] = (this.summary.rows[m.name] ?? 0) + n;
    }
    // Each segment's fsync waits on the disk: the models' segments are made durable together.
    await Promise.all(touched.map((m) => this.wal.publishSegment(m, seq, first, last, paths.get(m)!.tmp, paths.get(m)!.final)));
    if (outcome.failures.length) {
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
      for (const r of records) {
        this.metrics.deadLettered.inc({ stage: r.stage });
        this.metrics.errors.inc({ stage: r.stage, error_type: r.stage === 'decode' ? 'decode' : 'sql' });
        this.log.warn({ stage: r.stage, source: r.source, model: r.model, error: r.error }, 'message sent to the DLQ');
      }
      if (!this.dlq) throw new SluiceError('CONFIG', 'a message failed and the source has no dlq configured');
      await this.dlq.append(records);
      this.summary.deadLettered += records.length;
    }
    crashPoint('before-commit');
    await this.wal.commit(seq, batch.position, this.dlq?.mark(), outcome.structure, touched);
    crashPoint('after-commit');
    await source.ack(batch);
    this.metrics.acked.inc({ source: sourceName }, batch.messages.length);
    outcome.timings.stage_and_commit = Math.round(performance.now() - stageStart);
    this.summary.messages += batch.messages.length;
    this.summary.batches++;
    timer();
    this.updateGauges();
    this.log.debug({ seq, messages: batch.messages.length, failed: outcome.failures.length, attempts: outcome.attempts, ms: { read: this.lastReadMs, ...outcome.timings } }, 'batch committed');
  }

  private updateGauges(): void {
    this.metrics.walBytes.set(this.wal.totalBytes());
    this.metrics.ready.set(this.ready().ok ? 1 : 0);
  }

  private nextRetry(): number {
    let t = Infinity;
    for (const f of this.flushFailures.values()) t = Math.min(t, f.nextTry);
    return t === Infinity ? Date.now() + 1000 : t;
  }

  /** Flushes models whose size or age threshold is reached (or whose flush is being retried). */
  private async flushDue(): Promise<void> {
    const now = Date.now();
    for (const m of this.models) {
      const segs = this.wal.pending(m.name);
      if (segs.length === 0) continue;
      const failing = this.flushFailures.get(m.name);
      if (failing && now < failing.nextTry) continue;
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
      const failing = this.flushFailures.get(m.name);
      if (failing && now < failing.nextTry) ok = false;
      else if (this.wal.pending(m.name).length > 0) todo.push(m);
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
    await Promise.all(conns.map(work));
    return ok;
  }

  private async flushModel(m: ModelDef, conn = this.conn): Promise<boolean> {
    const flush = await this.wal.beginFlush(m.name);
    if (!flush) return true;
    const timer = this.metrics.flushDuration.startTimer({ model: m.name });
    const files = flush.segments.map((s) => s.file);
    try {
      const r = await conn.runAndReadAll(`SELECT count(*) FROM read_parquet(${fileList(files)})`);
      const rows = Number(r.getRows()[0][0]);
      for (const name of m.sinks) {
        await this.sinks.get(name)!.write({ model: m.name, segments: files, seqs: flush.segments.map((x) => x.seq), name: flush.name, rows }, conn);
        this.metrics.rowsWritten.inc({ model: m.name, sink: name }, rows);
      }
      crashPoint('after-sink-write');
      await this.wal.endFlush(m.name);
      this.flushFailures.delete(m.name);
      this.metrics.flushes.inc({ model: m.name, result: 'ok' });
      this.summary.flushes++;
      this.log.info({ model: m.name, file: flush.name, rows, segments: files.length, ms: Math.round(timer() * 1000) }, 'flushed');
      return true;
    } catch (err) {
      const prev = this.flushFailures.get(m.name);
      const count = (prev?.count ?? 0) + 1;
      const delay = Math.min(30_000, 500 * 2 ** Math.min(count - 1, 6));
      this.flushFailures.set(m.name, { count, nextTry: Date.now() + delay, error: errorMessage(err) });
      timer();
      this.metrics.flushes.inc({ model: m.name, result: 'error' });
      this.metrics.errors.inc({ stage: 'sink', error_type: err instanceof SluiceError ? err.code.toLowerCase() : 'unknown' });
      this.log.error({ model: m.name, err, retry_in_ms: delay }, 'flush failed; the WAL is kept and the flush retried');
      return false;
    } finally {
      this.updateGauges();
    }
  }

  private async dryRun(source: Source): Promise<RunSummary> {
    const print = this.opts.print ?? ((s: string) => process.stdout.write(s));
    await source.open(undefined);
    try {
      let batch: SourceBatch | null = null;
      while (!this.opts.signal.aborted) {
        batch = await source.read(this.opts.signal);
        if (batch === null || batch.messages.length > 0) break;
      }
      if (!batch || batch.messages.length === 0) {
        print('no messages\n');
        return this.summary;
      }
      const outcome = await this.executor.process(batch.messages);
      const { formatTable } = await import('../cli/format.js');
      print(`dry run: ${batch.messages.length} messages, nothing written or acknowledged\n`);
      for (const m of this.models) {
        const out = await this.executor.readOutput(m.name);
        print(`\n${m.name} (${out.rows.length} rows)\n${formatTable(out.columns, out.rows)}\n`);
      }
      for (const f of outcome.failures) print(`\nwould dead-letter message ${JSON.stringify(batch.messages[f.index].coords)} [${f.stage}]: ${f.error}\n`);
      this.summary.messages = batch.messages.length;
    } finally {
      await source.close();
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
