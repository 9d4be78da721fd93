import type { DuckDBConnection } from '@duckdb/node-api';
import { SluiceError } from '../../src/errors.js';
import type { Sink, SinkWrite } from '../../src/connectors/types.js';
import { systemClock, type Clock } from '../../src/util/clock.js';
import { ident } from '../../src/sql/quote.js';

export type Row = Record<string, unknown>;

export interface SinkAttempt {
  model: string;
  /** The flush's name (deterministic: a rewrite has the same one). */
  name: string;
  rows: number;
  /** The clock's time when the write was called. */
  at: number;
  ok: boolean;
}

/**
 * A Sink that keeps what it is given in memory: each flush's rows, read from the relation the engine
 * prepared, with the engine's DuckDB connection, under the flush's name. Idempotent by name (as the
 * contract asks of an idempotent sink): writing a name again replaces its rows. While broken
 * (for every model or for some), writes throw a retryable sink error. Records every attempt
 * with the clock's time.
 */
export class FakeSink implements Sink {
  readonly idempotent = true;
  /** Delivered flushes by model and name (`model/name`), in the order first written. */
  readonly flushes = new Map<string, { model: string; rows: Row[] }>();
  readonly attempts: SinkAttempt[] = [];
  /** Models whose writes fail, with the error ('*': every model). */
  private readonly broken = new Map<string, Error>();
  connects = 0;
  closes = 0;
  /** Called at the start of every write (before it fails or succeeds). */
  onWrite?: (w: SinkWrite) => void;

  constructor(private readonly clock: Clock = systemClock) {}

  /** Makes writes (of `model`, or of every model) fail with a retryable sink error until `repair()`. */
  break(model = '*', message = 'fake sink: the target is down'): void {
    this.broken.set(model, new SluiceError('SINK', message, { retryable: true }));
  }

  repair(): void {
    this.broken.clear();
  }

  async connect(): Promise<void> {
    this.connects++;
  }

  async write(w: SinkWrite, db: DuckDBConnection): Promise<void> {
    const at = this.clock.now();
    this.onWrite?.(w);
    const failure = this.broken.get(w.model) ?? this.broken.get('*');
    if (failure) {
      this.attempts.push({ model: w.model, name: w.name, rows: w.rows, at, ok: false });
      throw failure;
    }
    const r = await db.runAndReadAll(rowsQuery(w));
    const rows = r.getRowObjectsJson() as Row[];
    this.attempts.push({ model: w.model, name: w.name, rows: rows.length, at, ok: true });
    this.flushes.set(`${w.model}/${w.name}`, { model: w.model, rows });
  }

  healthy(): boolean {
    const last = this.attempts[this.attempts.length - 1];
    return !last || last.ok;
  }

  async close(): Promise<void> {
    this.closes++;
  }

  /** Every delivered row of `model`, flush after flush. */
  rows(model: string): Row[] {
    return [...this.flushes.values()].filter((f) => f.model === model).flatMap((f) => f.rows);
  }

  /** Failed attempts so far. */
  get failures(): number {
    return this.attempts.filter((a) => !a.ok).length;
  }
}

/** The query of a flush's rows, the model's columns only, from the relation the engine prepared. */
function rowsQuery(w: SinkWrite): string {
  return `SELECT * EXCLUDE (${ident(w.order.row)}, ${ident(w.order.message)}) FROM ${w.relation}`;
}
