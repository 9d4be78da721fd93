import pg from 'pg';
import type { Logger } from 'pino';
import { SluiceError, errorMessage } from '../errors.js';
import { maskText } from '../util/secrets.js';

// The shared window state store (sluice.yml `window_state: { postgres }`): where the workers of a
// consumer group keep each source partition's window state, so that a partition moving to
// another worker takes its state along. One row per (scope, model, partition): the partition's
// rows as Parquet bytes, the watermark its windows were emitted at, its largest event time, and
// the offset after the last message they reflect. `owner` and `epoch` fence it: a worker
// claims a partition by bumping the epoch, and writes only while the epoch is the one it
// claimed. A worker holds its partitions' rows locked (SELECT ... FOR UPDATE) from before its
// models run a batch until after the batch's WAL commit and state write, so a claim by
// another worker waits for that batch, and a worker that lost a partition finds out before it
// emits anything of it.

/** What the store holds of one model's state in one partition. */
export interface PartitionSnapshot {
  epoch: number;
  /** The offset after the last message the state reflects (null: none yet). */
  offset: number | null;
  /** Windows of the partition ending at or before this (µs) were emitted; null: none yet. */
  fired: number | null;
  /** The partition's largest event time (µs). */
  max: number | null;
  revisions: Record<string, number> | null;
  /** The partition's state rows as Parquet (null: none written yet). */
  rows: Buffer | null;
}

/** One write of a partition's state (rows only when they changed). */
export interface PartitionWrite {
  model: string;
  part: string;
  epoch: number;
  offset: number | null;
  fired: number | null;
  max: number | null;
  revisions: Record<string, number> | null;
  rows?: Buffer;
}

const num = (v: unknown): number | null => (v === null || v === undefined ? null : Number(v));

export class PgWindowStore {
  private client?: pg.Client;
  /** A transaction is open (begin() to finish()). */
  private open = false;

  constructor(
    private readonly url: string,
    private readonly table: string,
    /** Whose state: the project and source (two projects may share a database). */
    private readonly scope: string,
    private readonly owner: string,
    private readonly log: Logger,
  ) {}

  private get t(): string {
    return this.table
      .split('.')
      .map((p) => `"${p.replaceAll('"', '""')}"`)
      .join('.');
  }

  private async conn(): Promise<pg.Client> {
    // The transaction's connection dropped: its locks are gone, and what it wrote with them.
    if (this.open && !this.client) {
      this.open = false;
      throw new SluiceError('CONNECT', 'the window state store connection was lost in the middle of a transaction', { retryable: true });
    }
    if (this.client) return this.client;
    const c = new pg.Client({ connectionString: this.url, connectionTimeoutMillis: 10_000 });
    // A dropped connection fails the query in flight; the next call connects again.
    c.on('error', (err) => {
      this.log.warn({ err: new Error(errorMessage(err)) }, 'window state store connection lost');
      if (this.client === c) this.client = undefined;
    });
    c.on('end', () => {
      if (this.client === c) this.client = undefined;
    });
    try {
      await c.connect();
    } catch (err) {
      await c.end().catch(() => {});
      throw new SluiceError('CONNECT', `cannot reach the window state store at ${maskText(this.url)}: ${errorMessage(err)}`, { cause: err, retryable: true });
    }
    this.client = c;
    return c;
  }

  /** Creates the table when missing. */
  async init(): Promise<void> {
    const c = await this.conn();
    await c.query(`CREATE TABLE IF NOT EXISTS ${this.t} (
      scope text NOT NULL, model text NOT NULL, part text NOT NULL,
      owner text NOT NULL, epoch bigint NOT NULL,
      next_offset bigint, fired bigint, max_time bigint, revisions jsonb, rows bytea,
      updated_at timestamptz NOT NULL DEFAULT now(),
      PRIMARY KEY (scope, model, part))`);
  }

  /**
   * Opens a transaction and locks the rows of `parts` (every model's): returns each one's current
   * owner and epoch ("model\0part" -> them; absent: no row).
   */
  async begin(models: string[], parts: string[]): Promise<Map<string, { owner: string; epoch: number }>> {
    const c = await this.conn();
    if (this.open) await this.finish(false);
    await c.query('BEGIN');
    this.open = true;
    // A claim waits for the batch another worker runs with the partition; not for ever.
    await c.query("SET LOCAL lock_timeout = '30s'");
    const out = new Map<string, { owner: string; epoch: number }>();
    if (parts.length === 0) return out;
    const r = await c.query(`SELECT model, part, owner, epoch FROM ${this.t} WHERE scope = $1 AND model = ANY($2) AND part = ANY($3) ORDER BY model, part FOR UPDATE`, [this.scope, models, parts]);
    for (const row of r.rows as { model: string; part: string; owner: string; epoch: string }[]) out.set(`${row.model}\0${row.part}`, { owner: row.owner, epoch: Number(row.epoch) });
    return out;
  }

  /** Claims `part` for every model in `models` (in the open transaction): the snapshots, under the new epochs. */
  async claim(models: string[], part: string): Promise<Map<string, PartitionSnapshot>> {
    const c = await this.conn();
    const out = new Map<string, PartitionSnapshot>();
    for (const model of models) {
      const r = await c.query(
        `INSERT INTO ${this.t} AS s (scope, model, part, owner, epoch) VALUES ($1, $2, $3, $4, 1)
         ON CONFLICT (scope, model, part) DO UPDATE SET owner = EXCLUDED.owner, epoch = s.epoch + 1, updated_at = now()
         RETURNING epoch, next_offset, fired, max_time, revisions, rows`,
        [this.scope, model, part, this.owner],
      );
      const row = r.rows[0] as { epoch: string; next_offset: string | null; fired: string | null; max_time: string | null; revisions: Record<string, number> | null; rows: Buffer | null };
      out.set(model, { epoch: Number(row.epoch), offset: num(row.next_offset), fired: num(row.fired), max: num(row.max_time), revisions: row.revisions, rows: row.rows });
    }
    return out;
  }

  /** Takes `part` back under `epoch` (a claim of this worker's that a failed transaction undid, after the batch it ran committed). */
  async reclaim(model: string, part: string, epoch: number): Promise<void> {
    const c = await this.conn();
    await c.query(
      `INSERT INTO ${this.t} AS s (scope, model, part, owner, epoch) VALUES ($1, $2, $3, $4, $5)
       ON CONFLICT (scope, model, part) DO UPDATE SET owner = EXCLUDED.owner, epoch = EXCLUDED.epoch, updated_at = now()`,
      [this.scope, model, part, this.owner, epoch],
    );
  }

  get worker(): string {
    return this.owner;
  }

  /** Writes partitions' state in the open transaction (their rows are locked and their epochs checked by begin()). */
  async write(writes: PartitionWrite[]): Promise<void> {
    const c = await this.conn();
    for (const w of writes) {
      const r = await c.query(
        `UPDATE ${this.t} SET next_offset = $5, fired = $6, max_time = $7, revisions = $8, rows = COALESCE($9, rows), owner = $10, updated_at = now()
         WHERE scope = $1 AND model = $2 AND part = $3 AND epoch = $4 AND owner = $10`,
        [this.scope, w.model, w.part, w.epoch, w.offset, w.fired, w.max, w.revisions ? JSON.stringify(w.revisions) : null, w.rows ?? null, this.owner],
      );
      if (r.rowCount !== 1) throw new SluiceError('INTERNAL', `window state of ${w.model} partition ${w.part} was claimed by another worker while this one held it locked`);
    }
  }

  /** Commits (or rolls back) the open transaction. */
  async finish(commit: boolean): Promise<void> {
    if (!this.open) return;
    const c = await this.conn();
    this.open = false;
    await c.query(commit ? 'COMMIT' : 'ROLLBACK');
  }

  async close(): Promise<void> {
    if (this.open) await this.finish(false).catch(() => {});
    await this.client?.end().catch(() => {});
    this.client = undefined;
  }
}
