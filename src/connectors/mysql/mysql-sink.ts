import type { DuckDBConnection } from '@duckdb/node-api';
import type { Connection } from 'mysql2/promise';
import { SluiceError } from '../../errors.js';
import { ident, lit } from '../../sql/quote.js';
import { crashPoint } from '../../util/crash-point.js';
import type { ColumnInfo, ConnectorContext, SinkWrite } from '../types.js';
import { flushFingerprint, flushSelect, isNested, keyStats, pipeCsv } from '../sql-table/table-sql.js';
import { ensureTable } from '../sql-table/table-store.js';
import { TableSink, type TableConnection } from '../sql-table/table-sink.js';
import { endpoint } from '../sql-table/connection.js';
import type { MysqlSinkConfig } from './mysql-config.js';
import { MysqlStore, mysqlConnect, mysqlDialect } from './mysql-table.js';

const q = mysqlDialect.quote;

/** A flush's column as DuckDB writes it for LOAD DATA (booleans as 0/1, TIMESTAMPTZ in UTC, nested as JSON, bytes as hex). */
function exportExpr(c: ColumnInfo): string {
  const col = ident(c.name);
  if (isNested(c.type)) return `to_json(${col})::VARCHAR AS ${col}`;
  switch (c.type) {
    case 'BOOLEAN':
      return `${col}::INTEGER AS ${col}`;
    case 'TIMESTAMP WITH TIME ZONE':
      return `timezone('UTC', ${col}) AS ${col}`;
    case 'BLOB':
      return `hex(${col}) AS ${col}`;
    case 'INTERVAL':
      return `${col}::VARCHAR AS ${col}`;
    default:
      return col;
  }
}

/**
 * Rows of a model into a MariaDB / MySQL table: `append` (LOAD DATA LOCAL INFILE) or `merge`
 * (INSERT ... ON DUPLICATE KEY UPDATE; the last row of a key in a flush wins). A flush is one
 * transaction that also records its name in the state table; a replayed flush already recorded
 * is skipped. Writers of one table take turns (GET_LOCK). DDL (creating the table, auto_migrate)
 * commits implicitly in MySQL, so it runs before the flush's transaction.
 */
export class MysqlSink extends TableSink<Connection> {
  constructor(
    private readonly cfg: MysqlSinkConfig,
    private readonly ctx: ConnectorContext,
  ) {
    super();
  }

  protected async open(): Promise<TableConnection<Connection>> {
    const client = await mysqlConnect(this.cfg, this.ctx);
    return { client, store: new MysqlStore(client, this.cfg), close: () => client.end() };
  }

  protected describeWrite(w: SinkWrite): string {
    return `mysql sink: writing ${w.model}/${w.name} to ${this.cfg.table ?? w.model} at ${endpoint(this.cfg, 3306)}`;
  }

  protected async writeFlush(w: SinkWrite, duck: DuckDBConnection, { client: db, store }: TableConnection<Connection>): Promise<void> {
    const table = store.table(w.model);
    const lock = `sluice:${table.display}`.slice(0, 64);
    const [got] = await db.query('SELECT GET_LOCK(?, 60) AS l', [lock]);
    if (Number((got as { l: unknown }[])[0].l) !== 1) throw new Error(`timed out waiting for the lock ${lock} (another writer of the table)`);
    try {
      const cols = w.columns;
      const fingerprint = await flushFingerprint(duck, w);
      const [done] = await db.query(`SELECT fingerprint FROM ${store.state.sql} WHERE target = ? AND model = ? AND name = ?`, [table.display, w.model, w.name]);
      const prior = (done as { fingerprint: string }[])[0];
      if (prior?.fingerprint === fingerprint) {
        this.ctx.log.info({ model: w.model, flush: w.name, table: table.display }, 'flush already applied to mysql (a replay); skipped');
        return;
      }
      if (prior)
        this.ctx.log.warn(
          { model: w.model, flush: w.name, table: table.display },
          'a flush of this name with other rows was applied before (a new WAL over the same source positions?); applying these rows',
        );
      const keys = this.cfg.strategy === 'merge' ? await keyStats(duck, w, this.cfg.key) : undefined;
      if (keys?.nullKeys)
        throw new SluiceError('SINK', `mysql sink: ${keys.nullKeys} row(s) of ${w.model}/${w.name} have a NULL key column (${this.cfg.key.join(', ')}); merge needs a key on every row`, {
          retryable: false,
          permanent: true,
        });
      await ensureTable(store, this.cfg, table, w.model, cols, this.ctx.log);
      const select = flushSelect(w, cols.map(exportExpr), { lastPerKey: keys?.duplicates ? this.cfg.key : undefined });
      const merge = this.cfg.strategy === 'merge';
      if (merge) {
        await db.query('DROP TEMPORARY TABLE IF EXISTS _sluice_stage');
        await db.query(`CREATE TEMPORARY TABLE _sluice_stage LIKE ${table.sql}`);
      }
      await db.query('START TRANSACTION');
      try {
        // DuckDB's CSV goes straight into LOAD DATA through a pipe (the client streams the file it names).
        await pipeCsv(duck, select, "NULLSTR 'NULL', FORCE_QUOTE *", async (file) => {
          await db.query(this.loadSql(file, merge ? '_sluice_stage' : table.sql, cols));
        });
        if (merge) for (const sql of this.deleteSql(table.sql)) await db.query(sql);
        if (merge) await db.query(this.mergeSql(table.sql, cols));
        await db.query(
          `INSERT INTO ${store.state.sql} (target, model, name, row_count, fingerprint) VALUES (?, ?, ?, ?, ?)
           ON DUPLICATE KEY UPDATE row_count = VALUES(row_count), fingerprint = VALUES(fingerprint), applied_at = CURRENT_TIMESTAMP(6)`,
          [table.display, w.model, w.name, w.rows, fingerprint],
        );
        crashPoint('mysql-before-commit');
        await db.query('COMMIT');
      } catch (err) {
        await db.query('ROLLBACK').catch(() => {});
        throw err;
      } finally {
        if (merge) await db.query('DROP TEMPORARY TABLE IF EXISTS _sluice_stage').catch(() => {});
      }
    } finally {
      await db.query('SELECT RELEASE_LOCK(?)', [lock]).catch(() => {});
    }
  }

  /** LOAD DATA of DuckDB's CSV: every value quoted, NULL as a bare NULL, no backslash escapes. */
  private loadSql(file: string, into: string, cols: ColumnInfo[]): string {
    const targets = cols.map((c, i) => (c.type === 'BLOB' ? `@b${i}` : q(c.name)));
    const sets = cols.flatMap((c, i) => (c.type === 'BLOB' ? [`${q(c.name)} = UNHEX(@b${i})`] : []));
    return `LOAD DATA LOCAL INFILE ${lit(file)} INTO TABLE ${into} CHARACTER SET utf8mb4
      FIELDS TERMINATED BY ',' OPTIONALLY ENCLOSED BY '"' ESCAPED BY '' LINES TERMINATED BY '\\n'
      (${targets.join(', ')})${sets.length ? ` SET ${sets.join(', ')}` : ''}`;
  }

  /**
   * delete_column: the staged rows where it is true delete their key's row, and leave the stage
   * (the last row of a key wins, see flushSelect).
   */
  private deleteSql(table: string): string[] {
    if (!this.cfg.delete_column) return [];
    const del = `s.${q(this.cfg.delete_column)}`;
    const onKeys = this.cfg.key.map((k) => `t.${q(k)} = s.${q(k)}`).join(' AND ');
    return [`DELETE t FROM ${table} t JOIN _sluice_stage s ON ${onKeys} WHERE ${del} IS TRUE`, `DELETE s FROM _sluice_stage s WHERE ${del} IS TRUE`];
  }

  /**
   * Upsert from the staged rows. Assignments run left to right and see the values already
   * assigned, so the compared columns are assigned last: the others are tested against the
   * row's old values.
   */
  private mergeSql(table: string, cols: ColumnInfo[]): string {
    const names = cols.map((c) => c.name);
    const others = names.filter((n) => !this.cfg.key.includes(n));
    const insert = `INSERT INTO ${table} (${names.map(q).join(', ')}) SELECT ${names.map((n) => `s.${q(n)}`).join(', ')} FROM _sluice_stage s ON DUPLICATE KEY UPDATE `;
    if (others.length === 0) return `${insert}${table}.${q(this.cfg.key[0])} = ${table}.${q(this.cfg.key[0])}`;
    const cmp = this.cfg.compare_columns ?? others;
    const changed = cmp.map((n) => `${table}.${q(n)} <=> VALUES(${q(n)})`).join(' AND ');
    const plain = others.filter((n) => !cmp.includes(n)).map((n) => `${table}.${q(n)} = IF(${changed}, ${table}.${q(n)}, VALUES(${q(n)}))`);
    const compared = cmp.map((n) => `${table}.${q(n)} = VALUES(${q(n)})`);
    return insert + [...plain, ...compared].join(', ');
  }
}
