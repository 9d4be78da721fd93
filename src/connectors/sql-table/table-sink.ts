import type { DuckDBConnection } from '@duckdb/node-api';
import { SluiceError, errorMessage } from '../../errors.js';
import type { Sink, SinkWrite } from '../types.js';
import type { TableStore } from './table-store.js';

/** An open connection of a table sink: the client, the store over it, and how to close it. */
export interface TableConnection<C> {
  client: C;
  store: TableStore;
  close(): Promise<void>;
}

/**
 * What the SQL-table sinks share: one connection, opened on demand and replaced after a failed
 * write (a server that went away, a transaction in an unknown state), the state table created
 * at start, and every failure reported as SluiceError('SINK') naming the flush and the target.
 */
export abstract class TableSink<C> implements Sink {
  readonly idempotent = true;
  private conn?: TableConnection<C>;
  private ok = true;

  /** Connects (throws SluiceError('CONNECT') when the server cannot be reached). */
  protected abstract open(): Promise<TableConnection<C>>;
  /** Writes one flush on `conn`; see Sink.write. */
  protected abstract writeFlush(w: SinkWrite, db: DuckDBConnection, conn: TableConnection<C>): Promise<void>;
  /** `postgres sink: writing <model>/<flush> to <table> at <server>`, for error messages. */
  protected abstract describeWrite(w: SinkWrite): string;

  async connect(): Promise<void> {
    const { store } = await this.connection();
    try {
      for (const s of store.stateDdl()) await store.exec(s);
    } catch (err) {
      // Two workers creating it at once: the loser sees a duplicate; the table is there.
      if (!(await store.describe(store.state, [])).columns) {
        throw new SluiceError('CONNECT', `${store.dialect.label} sink: cannot create the state table ${store.state.display}: ${errorMessage(err)}`, { cause: err });
      }
    }
  }

  protected async connection(): Promise<TableConnection<C>> {
    return (this.conn ??= await this.open());
  }

  private async disconnect(): Promise<void> {
    const c = this.conn;
    this.conn = undefined;
    await c?.close().catch(() => {});
  }

  async write(w: SinkWrite, db: DuckDBConnection): Promise<void> {
    try {
      await this.writeFlush(w, db, await this.connection());
      this.ok = true;
    } catch (err) {
      this.ok = false;
      await this.disconnect();
      if (err instanceof SluiceError && err.code === 'SINK') throw err;
      throw new SluiceError('SINK', `${this.describeWrite(w)} failed: ${errorMessage(err)}`, { cause: err, retryable: true });
    }
  }

  healthy(): boolean {
    return this.ok;
  }

  async close(): Promise<void> {
    await this.disconnect();
  }
}
