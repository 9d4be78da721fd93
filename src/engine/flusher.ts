import type { DuckDBConnection } from '@duckdb/node-api';
import type { Logger } from 'pino';
import { SluiceError, errorMessage } from '../errors.js';
import type { DeadLetter, DeadLetterQueue, SinkWrite } from '../connectors/types.js';
import type { ModelDef } from '../project/project-loader.js';
import type { Metrics } from '../ops/metrics.js';
import { ident } from '../sql/quote.js';
import type { Wal } from '../wal/wal.js';
import { crashPoint } from '../util/crash-point.js';
import { asCheckpoint, type Checkpoint } from './checkpoint.js';
import type { BatchTests, TestSink } from './data-tests.js';
import { prepareFlush, type PreparedFlush } from './flush-relation.js';
import { infraKind } from './infra-errors.js';
import type { SinkRunner, WriteResult } from './sink-runner.js';
import type { Clock } from '../util/clock.js';

/** What the flusher works with: the pipeline's WAL, sinks, models and counters. */
export interface FlushContext {
  wal: Wal;
  sinks: Map<string, SinkRunner>;
  models: ModelDef[];
  metrics: Metrics;
  log: Logger;
  tests: BatchTests | undefined;
  testSink: TestSink;
  /** The source's DLQ (on_error: dlq of a sink sends rows there). */
  dlq: () => DeadLetterQueue | undefined;
  /** The run's counters of flushes and dead letters. */
  summary: { flushes: number; deadLettered: number };
  /** The connection the run's flushes use, and the loading one (flushAll uses both). */
  conn: DuckDBConnection;
  loadConn: DuckDBConnection;
  updateGauges: () => void;
  /** Times flush age and retries (the pipeline's clock). */
  clock: Clock;
}

/**
 * WAL -> sinks. A model's segments are written to each of its sinks as one flush when its size
 * or age threshold is reached (flushDue), or all at once at start-up and at the end (flushAll),
 * under each sink's error policy; the WAL is truncated once every sink has the flush.
 */
export class Flusher {
  /** Models whose flush has a sink failing, with the last error (for /readyz and backpressure). */
  readonly failures = new Map<string, { error: string }>();
  /** Dead-lettering a flush (append, then the state with the DLQ's new mark) goes one at a time. */
  private dlqTurn: Promise<void> = Promise.resolve();

  constructor(private readonly ctx: FlushContext) {}

  /** When the next write of a pending flush may be tried. */
  nextRetry(): number {
    let t = Infinity;
    for (const m of this.ctx.models) {
      if (this.ctx.wal.pending(m.name).length === 0) continue;
      for (const s of m.sinks) t = Math.min(t, this.ctx.sinks.get(s)!.nextTry(m.name));
    }
    return t === Infinity ? this.ctx.clock.now() + 1000 : t;
  }

  /** True when some sink of the model may be written now (not in backoff, circuit not open). */
  writable(m: ModelDef, now: number): boolean {
    return m.sinks.some((s) => this.ctx.sinks.get(s)!.canWrite(m.name, now));
  }

  /** Flushes models whose size or age threshold is reached (or whose flush is being retried). */
  async flushDue(): Promise<void> {
    const now = this.ctx.clock.now();
    for (const m of this.ctx.models) {
      const segs = this.ctx.wal.pending(m.name);
      if (segs.length === 0) continue;
      if (!this.writable(m, now)) continue;
      const due = this.ctx.wal.hasInflight(m.name) || this.ctx.wal.pendingBytes(m.name) >= m.maxFileBytes || now - segs[0].time >= m.maxAgeSeconds * 1000;
      if (due) await this.flushModel(m);
    }
  }

  /**
   * Flushes every model not in retry backoff; true when nothing is left in the WAL. At start-up
   * and at the end, when no batch is being loaded, models flush two at a time, one on each
   * connection: a flush rewrites all of a model's rows and would leave a core idle otherwise.
   */
  async flushAll(conns: DuckDBConnection[] = [this.ctx.conn, this.ctx.loadConn]): Promise<boolean> {
    let ok = true;
    const now = this.ctx.clock.now();
    const todo: ModelDef[] = [];
    for (const m of this.ctx.models) {
      if (this.ctx.wal.pending(m.name).length === 0) continue;
      if (this.writable(m, now)) todo.push(m);
      else ok = false;
    }
    todo.sort((a, b) => this.ctx.wal.pendingBytes(b.name) - this.ctx.wal.pendingBytes(a.name));
    const work = async (conn: DuckDBConnection): Promise<void> => {
      for (let m = todo.shift(); m; m = todo.shift()) {
        while (this.ctx.wal.pending(m.name).length > 0) {
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
  private async flushModel(m: ModelDef, conn = this.ctx.conn): Promise<boolean> {
    const flush = await this.ctx.wal.beginFlush(m.name);
    if (!flush) return true;
    const timer = this.ctx.metrics.flushDuration.startTimer({ model: m.name });
    const files = flush.segments.map((s) => s.file);
    let prepared: PreparedFlush | undefined;
    let write: SinkWrite | undefined;
    let complete = true;
    let failed = false;
    let fatal: SluiceError | undefined;
    try {
      for (const name of m.sinks) {
        if (flush.done.includes(name)) continue;
        const runner = this.ctx.sinks.get(name)!;
        if (!runner.canWrite(m.name)) {
          complete = false;
          continue;
        }
        if (!write) {
          prepared = await prepareFlush(conn, { model: m.name, name: flush.name, files });
          write = prepared.write;
          await this.ctx.tests?.checkFlush(m.name, files, conn, this.ctx.testSink);
        }
        const res = await runner.write(write, conn);
        if (res.ok) {
          crashPoint('after-sink-write');
          await this.ctx.wal.markSinkDone(m.name, name);
          continue;
        }
        if (res.blocked) {
          complete = false;
          continue;
        }
        failed = true;
        const outcome = await this.onSinkFailure(m.name, name, runner, res, write, flush.name, conn);
        if (outcome === 'delivered') continue;
        complete = false;
        if (outcome instanceof SluiceError) {
          fatal = outcome;
          break;
        }
      }
    } catch (err) {
      complete = false;
      failed = true;
      this.failures.set(m.name, { error: errorMessage(err) });
      this.ctx.metrics.errors.inc({ stage: 'sink', error_type: err instanceof SluiceError ? err.code.toLowerCase() : 'unknown' });
      this.ctx.log.error({ model: m.name, err }, 'flush failed; the WAL is kept and the flush retried');
    } finally {
      // A view left behind (the connection failed) is harmless: it is the connection's own and tiny.
      await prepared?.release().catch(() => {});
    }
    const ms = Math.round(timer() * 1000);
    if (fatal) throw fatal;
    if (!complete) {
      if (failed) this.ctx.metrics.flushes.inc({ model: m.name, result: 'error' });
      this.ctx.updateGauges();
      return false;
    }
    try {
      await this.ctx.wal.endFlush(m.name);
    } catch (err) {
      // Every sink has the flush; recording that failed (the WAL's disk is full, say): the
      // flush stays in flight and its record is tried again (the sinks are not written again).
      this.failures.set(m.name, { error: `recording the flush of ${m.name}: ${errorMessage(err)}` });
      this.ctx.log.error({ model: m.name, err: new Error(errorMessage(err)) }, 'recording a finished flush failed; it is tried again');
      this.ctx.updateGauges();
      return false;
    }
    this.failures.delete(m.name);
    this.ctx.metrics.flushes.inc({ model: m.name, result: 'ok' });
    this.ctx.summary.flushes++;
    this.ctx.log.info({ model: m.name, file: flush.name, rows: write?.rows, segments: files.length, sinks: m.sinks, ms }, 'flushed');
    this.ctx.updateGauges();
    return true;
  }

  /**
   * A sink's failed write of a flush, under its policy: 'retry' (kept in the WAL and written
   * again: not exhausted yet, on_error: retry, or an infrastructure error, never the rows'
   * fault), the error to stop the run with (on_error: fail), or 'delivered' once on_error: dlq
   * has sent the rows to the DLQ.
   */
  private async onSinkFailure(
    model: string,
    name: string,
    runner: SinkRunner,
    res: Extract<WriteResult, { blocked: false }>,
    write: SinkWrite,
    flushName: string,
    conn: DuckDBConnection,
  ): Promise<'retry' | 'delivered' | SluiceError> {
    const err = res.error;
    const { on_error: onError } = runner.policy;
    this.ctx.metrics.errors.inc({ stage: 'sink', error_type: err instanceof SluiceError ? err.code.toLowerCase() : 'unknown' });
    this.failures.set(model, { error: `sink ${name}: ${errorMessage(err)}` });
    // A full disk or a failing allocation is not the rows' fault: such a flush is only ever
    // retried, whatever on_error says (it would dead-letter good rows, or stop for nothing).
    const infra = infraKind(err);
    if (!res.exhausted || onError === 'retry' || infra) {
      const why = onError === 'retry' ? 'on_error: retry' : `${infra}: on_error: ${onError} is only for errors of the rows`;
      this.ctx.log.error(
        { model, sink: name, err, attempt: res.attempts, retry_in_ms: res.retryInMs },
        res.exhausted ? `sink still failing after ${res.attempts} attempts (${why}); the WAL is kept and the write retried` : 'sink write failed; the WAL is kept and the write retried',
      );
      return 'retry';
    }
    if (onError === 'fail') {
      return new SluiceError(
        'SINK',
        `sink ${name} failed writing ${model}/${flushName} (${res.attempts} attempt${res.attempts === 1 ? '' : 's'}, on_error: fail): ${errorMessage(err)}; the rows stay in the WAL and the next run delivers them`,
        { cause: err },
      );
    }
    await this.deadLetterFlush(model, name, write, err, conn);
    runner.forget(model);
    return 'delivered';
  }

  /**
   * on_error: dlq — the flush's rows go to the source's DLQ, one record per row (the row as JSON,
   * stage `sink`, the model and the sink's error), then the sink counts as done for this flush;
   * the DLQ's new mark is committed with that record, so a crash in between writes them again
   * rather than twice.
   */
  private async deadLetterFlush(model: string, sink: string, w: SinkWrite, err: unknown, conn: DuckDBConnection): Promise<void> {
    const turn = this.dlqTurn.then(async () => {
      const dlq = this.ctx.dlq();
      if (!dlq) throw new SluiceError('CONFIG', `sink ${sink} has on_error: dlq but the source has no dlq configured`);
      const error = `sink ${sink}: ${errorMessage(err)}`;
      const time = new Date().toISOString();
      const result = await conn.stream(`SELECT to_json(t)::VARCHAR FROM (SELECT ${w.columns.map((c) => ident(c.name)).join(', ')} FROM ${w.relation}) t`);
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
      await this.ctx.wal.markSinkDone(model, sink, { checkpoint: { ...asCheckpoint(this.ctx.wal.state.checkpoint), dlq: dlq.mark() } satisfies Checkpoint });
      this.ctx.summary.deadLettered += row;
      this.ctx.metrics.deadLettered.inc({ stage: 'sink' }, row);
      this.ctx.metrics.sinkDeadLettered.inc({ model, sink }, row);
      this.ctx.log.warn({ model, sink, flush: w.name, rows: row, error }, 'sink gave up on a flush (on_error: dlq): its rows were sent to the DLQ');
    });
    this.dlqTurn = turn.catch(() => {});
    await turn;
  }
}
