import fs from 'node:fs';
import { pipeline } from 'node:stream/promises';
import type { DuckDBConnection } from '@duckdb/node-api';
import type { Client } from 'pg';
import { SluiceError } from '../../errors.js';
import { ident } from '../../sql/quote.js';
import { crashPoint } from '../../util/crash-point.js';
import type { ColumnInfo, ConnectorContext, SinkWrite } from '../types.js';
import { SCD2_COLUMNS, flushFingerprint, flushSelect, isNested, keyStats, pipeCsv } from '../sql-table/table-sql.js';
import { ensureTable } from '../sql-table/table-store.js';
import { TableSink, type TableConnection } from '../sql-table/table-sink.js';
import { endpoint } from '../sql-table/connection.js';
import type { PostgresSinkConfig } from './postgres-config.js';
import { PgStore, pgConnect, pgDialect } from './postgres-table.js';

const q = pgDialect.quote;

/** A flush's column as DuckDB writes it for PostgreSQL's COPY (nested values as JSON, bytes as hex). */
function exportExpr(c: ColumnInfo): string {
  const col = ident(c.name);
  if (isNested(c.type)) return `to_json(${col})::VARCHAR AS ${col}`;
  if (c.type === 'BLOB') return `('\\x' || hex(${col})) AS ${col}`;
  return col;
}

/**
 * Rows of a model into a PostgreSQL table: `append` (COPY), `merge` (upsert on the key; the
 * last row of a key in a flush wins) or `scd2` (versions with valid_from / valid_to /
 * is_current / row_hash). A flush is one transaction that also records its name in the state
 * table; a flush whose name is there already (a replay after a crash between the commit and
 * the WAL truncation) is skipped, so every row lands once.
 */
export class PostgresSink extends TableSink<Client> {
  constructor(
    private readonly cfg: PostgresSinkConfig,
    private readonly ctx: ConnectorContext,
  ) {
    super();
  }

  protected async open(): Promise<TableConnection<Client>> {
    const client = await pgConnect(this.cfg, this.ctx);
    return { client, store: new PgStore(client, this.cfg), close: () => client.end() };
  }

  protected describeWrite(w: SinkWrite): string {
    return `postgres sink: writing ${w.model}/${w.name} to ${this.cfg.schema}.${this.cfg.table ?? w.model} at ${endpoint(this.cfg, 5432)}`;
  }

  protected async writeFlush(w: SinkWrite, db: DuckDBConnection, { client, store }: TableConnection<Client>): Promise<void> {
    const table = store.table(w.model);
    const { strategy, key } = this.cfg;
    const ms: Record<string, number> = {};
    let t = performance.now();
    const lap = (k: string) => {
      const now = performance.now();
      ms[k] = Math.round(now - t);
      t = now;
    };
    await client.query('BEGIN');
    try {
      // Writers of one table take turns: merges of the same keys never deadlock.
      await client.query('SELECT pg_advisory_xact_lock(hashtext($1))', [`sluice:${table.sql}`]);
      const cols = w.columns;
      const fingerprint = await flushFingerprint(db, w);
      const done = await client.query<{ fingerprint: string }>(`SELECT fingerprint FROM ${store.state.sql} WHERE target = $1 AND model = $2 AND name = $3`, [table.display, w.model, w.name]);
      if (done.rows[0]?.fingerprint === fingerprint) {
        await client.query('ROLLBACK');
        this.ctx.log.info({ model: w.model, flush: w.name, table: table.display }, 'flush already applied to postgres (a replay); skipped');
        return;
      }
      if (done.rows.length)
        this.ctx.log.warn(
          { model: w.model, flush: w.name, table: table.display },
          'a flush of this name with other rows was applied before (a new WAL over the same source positions?); applying these rows',
        );
      const keys = strategy === 'append' ? undefined : await keyStats(db, w, key);
      if (keys?.nullKeys)
        throw new SluiceError('SINK', `postgres sink: ${keys.nullKeys} row(s) of ${w.model}/${w.name} have a NULL key column (${key.join(', ')}); ${strategy} needs a key on every row`, {
          retryable: false,
          permanent: true,
        });
      await ensureTable(store, this.cfg, table, w.model, cols, this.ctx.log);
      lap('prepare');
      // The last row of a key wins (merge; scd2 at write time): only needed when a key repeats.
      const lastPerKey = keys?.duplicates && (strategy === 'merge' || !this.cfg.valid_from_column) ? key : undefined;
      const select = flushSelect(w, cols.map(exportExpr), { lastPerKey, ord: strategy === 'scd2' });
      const names = cols.map((c) => q(c.name));
      const { from: copyFrom } = await import('pg-copy-streams');
      // DuckDB's CSV goes straight into COPY through a pipe.
      const copyInto = (target: string, columns: string[]) => (file: string) =>
        pipeline(fs.createReadStream(file), client.query(copyFrom(`COPY ${target} (${columns.join(', ')}) FROM STDIN (FORMAT csv)`)));
      // A merge into an empty table (a first load, a backfill) inserts every row: its keys are
      // unique by now, so the rows go straight in, as an append would.
      const direct = strategy === 'append' || (strategy === 'merge' && !(await client.query<{ e: boolean }>(`SELECT EXISTS (SELECT 1 FROM ${table.sql}) AS e`)).rows[0].e);
      if (direct) {
        // Deletions (merge with delete_column) of keys the empty table does not have: nothing to do.
        const del = strategy === 'merge' && this.cfg.delete_column ? ident(this.cfg.delete_column) : undefined;
        await pipeCsv(db, del ? `SELECT * FROM (${select}) WHERE ${del} IS NOT TRUE` : select, '', copyInto(table.sql, names));
        lap('copy');
      } else {
        const ord = strategy === 'scd2' ? ', 0::bigint AS _sluice_ord' : '';
        await client.query(`CREATE TEMP TABLE _sluice_stage ON COMMIT DROP AS SELECT ${names.join(', ')}${ord} FROM ${table.sql} WITH NO DATA`);
        await pipeCsv(db, select, '', copyInto('_sluice_stage', strategy === 'scd2' ? [...names, '_sluice_ord'] : names));
        lap('copy');
        for (const s of strategy === 'merge' ? this.mergeSql(table.sql, cols) : this.scd2Sql(table.sql, cols)) await client.query(s);
        lap(strategy);
      }
      await client.query(
        `INSERT INTO ${store.state.sql} (target, model, name, row_count, fingerprint) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (target, model, name) DO UPDATE SET row_count = EXCLUDED.row_count, fingerprint = EXCLUDED.fingerprint, applied_at = now()`,
        [table.display, w.model, w.name, w.rows, fingerprint],
      );
      crashPoint('postgres-before-commit');
      await client.query('COMMIT');
      lap('commit');
      this.ctx.log.debug({ model: w.model, flush: w.name, table: table.display, rows: w.rows, ms }, 'postgres flush timings');
    } catch (err) {
      await client.query('ROLLBACK').catch(() => {});
      throw err;
    }
  }

  private compareColumns(cols: ColumnInfo[]): string[] {
    if (this.cfg.compare_columns) return this.cfg.compare_columns;
    const skip = new Set([...this.cfg.key, ...(this.cfg.valid_from_column ? [this.cfg.valid_from_column] : []), ...SCD2_COLUMNS.map((c) => c.name)]);
    return cols.map((c) => c.name).filter((n) => !skip.has(n));
  }

  /**
   * Upsert as an UPDATE of the matched keys (only where a compared column changed) and an
   * INSERT of the others: writers of the table take turns under the flush's advisory lock, and
   * this is about twice as fast as INSERT ... ON CONFLICT (no speculative insertion per row).
   */
  private mergeSql(table: string, cols: ColumnInfo[]): string[] {
    const names = cols.map((c) => q(c.name));
    const keys = this.cfg.key.map(q);
    const others = names.filter((n) => !keys.includes(n));
    const cmp = this.compareColumns(cols).map(q);
    const onKeys = keys.map((k) => `t.${k} = s.${k}`).join(' AND ');
    const out = ['ANALYZE _sluice_stage'];
    // delete_column: a row where it is true deletes its key's row (the last row of a key wins, see flushSelect).
    const del = this.cfg.delete_column ? `s.${q(this.cfg.delete_column)}` : undefined;
    const kept = del ? ` AND ${del} IS NOT TRUE` : '';
    if (del) out.push(`DELETE FROM ${table} t USING _sluice_stage s WHERE ${onKeys} AND ${del} IS TRUE`);
    if (others.length) {
      const changed = cmp.length ? ` AND ROW(${cmp.map((n) => `t.${n}`).join(', ')}) IS DISTINCT FROM ROW(${cmp.map((n) => `s.${n}`).join(', ')})` : '';
      out.push(`UPDATE ${table} t SET ${others.map((n) => `${n} = s.${n}`).join(', ')} FROM _sluice_stage s WHERE ${onKeys}${changed}${kept}`);
    }
    out.push(`INSERT INTO ${table} (${names.join(', ')}) SELECT ${names.map((n) => `s.${n}`).join(', ')} FROM _sluice_stage s WHERE NOT EXISTS (SELECT 1 FROM ${table} t WHERE ${onKeys})${kept}`);
    return out;
  }

  /**
   * Versions from the staged rows: per key, rows whose hash differs from the previous one (in
   * event-time, then arrival order); the first is dropped when it equals the current row; the
   * current row is closed at the first new version; each version is valid until the next.
   */
  private scd2Sql(table: string, cols: ColumnInfo[]): string[] {
    const names = cols.map((c) => q(c.name)).filter((n) => !SCD2_COLUMNS.some((s) => q(s.name) === n));
    const keys = this.cfg.key.map(q);
    const hashCols = this.compareColumns(cols).map((n) => `s.${q(n)}`);
    const hash = `md5(${hashCols.length ? `ROW(${hashCols.join(', ')})::text` : "''"})`;
    const vf = this.cfg.valid_from_column ? `coalesce(s.${q(this.cfg.valid_from_column)}::timestamptz, now())` : 'now()';
    const win = `PARTITION BY ${keys.join(', ')} ORDER BY _vf, _sluice_ord`;
    const onKeys = (a: string, b: string) => keys.map((k) => `${a}.${k} = ${b}.${k}`).join(' AND ');
    const out = [
      `CREATE TEMP TABLE _sluice_versions ON COMMIT DROP AS
        WITH s AS (SELECT s.*, ${hash} AS _h, ${vf} AS _vf FROM _sluice_stage s),
             d AS (SELECT s.*, lag(_h) OVER (${win}) AS _prev FROM s)
        SELECT d.*, row_number() OVER (${win}) AS _rn, lead(_vf) OVER (${win}) AS _next FROM d WHERE _prev IS DISTINCT FROM _h`,
      `DELETE FROM _sluice_versions v USING ${table} t WHERE v._rn = 1 AND t.is_current AND ${onKeys('t', 'v')} AND t.row_hash = v._h`,
      `UPDATE ${table} t SET valid_to = m._vf, is_current = false
         FROM (SELECT ${keys.join(', ')}, min(_vf) AS _vf FROM _sluice_versions GROUP BY ${keys.join(', ')}) m
        WHERE t.is_current AND ${onKeys('t', 'm')}`,
    ];
    if (this.cfg.close_missing) {
      out.push(`UPDATE ${table} t SET valid_to = now(), is_current = false WHERE t.is_current AND NOT EXISTS (SELECT 1 FROM _sluice_stage s WHERE ${onKeys('s', 't')})`);
    }
    out.push(
      `INSERT INTO ${table} (${names.join(', ')}, valid_from, valid_to, is_current, row_hash)
       SELECT ${names.join(', ')}, _vf, _next, _next IS NULL, _h FROM _sluice_versions`,
    );
    return out;
  }
}
