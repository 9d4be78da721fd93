import type { Client } from 'pg';
import { SluiceError, errorMessage } from '../../errors.js';
import type { ConnectorContext } from '../types.js';
import { isNested, type TableColumn, type TableDialect } from '../sql-table/table-sql.js';
import { TablePlanner, type TableRef, type TableStore } from '../sql-table/table-store.js';
import { endpoint, sslOptions } from '../sql-table/connection.js';
import type { PostgresSinkConfig } from './postgres-config.js';

const q = (s: string) => `"${s.replaceAll('"', '""')}"`;

const INT_RANK: Record<string, number> = { smallint: 1, integer: 2, bigint: 3, numeric: 4 };

/** DuckDB types as PostgreSQL spells them (format_type()), DDL in PostgreSQL's words. */
export const pgDialect: TableDialect = {
  label: 'postgres',
  quote: q,
  columnType(duckType) {
    const t = duckType.toUpperCase();
    if (isNested(t) || t === 'JSON') return 'jsonb';
    const dec = /^DECIMAL\((\d+),\s*(\d+)\)$/.exec(t);
    if (dec) return `numeric(${dec[1]},${dec[2]})`;
    switch (t) {
      case 'BOOLEAN':
        return 'boolean';
      case 'TINYINT':
      case 'SMALLINT':
      case 'UTINYINT':
        return 'smallint';
      case 'INTEGER':
      case 'USMALLINT':
        return 'integer';
      case 'BIGINT':
      case 'UINTEGER':
        return 'bigint';
      case 'UBIGINT':
      case 'HUGEINT':
      case 'UHUGEINT':
        return 'numeric';
      case 'FLOAT':
        return 'real';
      case 'DOUBLE':
        return 'double precision';
      case 'DATE':
        return 'date';
      case 'TIME':
        return 'time without time zone';
      case 'TIMESTAMP':
      case 'TIMESTAMP_S':
      case 'TIMESTAMP_MS':
      case 'TIMESTAMP_NS':
        return 'timestamp without time zone';
      case 'TIMESTAMP WITH TIME ZONE':
        return 'timestamp with time zone';
      case 'INTERVAL':
        return 'interval';
      case 'UUID':
        return 'uuid';
      case 'BLOB':
        return 'bytea';
      default:
        return 'text';
    }
  },
  compatible(existing, wanted) {
    if (existing === wanted || existing === 'text') return true;
    const base = (s: string) => s.replace(/\(.*\)$/, '');
    if (existing === 'numeric' && base(wanted) === 'numeric') return true;
    const re = INT_RANK[base(existing)];
    const rw = INT_RANK[base(wanted)];
    if (re !== undefined && rw !== undefined && rw < 4) return re >= rw;
    if (existing === 'double precision' && (wanted === 'real' || rw !== undefined)) return true;
    if (existing === 'json' && wanted === 'jsonb') return true;
    return false;
  },
  createTable(table, columns, key, strategy) {
    const cols = columns.map((c) => `${q(c.name)} ${c.type}${key.includes(c.name) || (['valid_from', 'is_current', 'row_hash'].includes(c.name) && strategy === 'scd2') ? ' NOT NULL' : ''}`);
    if (strategy === 'merge') cols.push(`PRIMARY KEY (${key.map(q).join(', ')})`);
    const out = [`CREATE TABLE ${table} (${cols.join(', ')})`];
    if (strategy === 'scd2') out.push(`CREATE UNIQUE INDEX ON ${table} (${key.map(q).join(', ')}) WHERE is_current`);
    return out;
  },
  addColumn: (table, c) => `ALTER TABLE ${table} ADD COLUMN ${q(c.name)} ${c.type}`,
  dropColumn: (table, name) => `ALTER TABLE ${table} DROP COLUMN ${q(name)}`,
  retypeColumn: (table, c) => `ALTER TABLE ${table} ALTER COLUMN ${q(c.name)} TYPE ${c.type} USING ${q(c.name)}::${c.type}`,
  keyIndex: (table, key, indexed) => (indexed ? undefined : `CREATE UNIQUE INDEX ON ${table} (${key.map(q).join(', ')})`),
};

/** A connected client; `pg` loads only here. Errors of an idle connection are logged, not thrown. */
export async function pgConnect(cfg: PostgresSinkConfig, ctx: ConnectorContext): Promise<Client> {
  const { default: pg } = await import('pg');
  const ssl = sslOptions(cfg.tls);
  const client = new pg.Client({
    ...(cfg.url ? { connectionString: cfg.url } : { host: cfg.host, port: cfg.port, user: cfg.user, password: cfg.password, database: cfg.database }),
    connectionTimeoutMillis: cfg.connect_timeout_ms,
    application_name: 'sluice',
    ...(ssl ? { ssl } : {}),
  });
  client.on('error', (err) => ctx.log.warn({ err: errorMessage(err) }, 'postgres connection lost'));
  try {
    await client.connect();
    // A merge stages a flush in a temporary table: keep it in memory (set before any temporary
    // table is used), and join it to the target in memory.
    await client.query(`SET temp_buffers = '${cfg.temp_buffers_mb}MB'`);
    await client.query(`SET work_mem = '${cfg.work_mem_mb}MB'`);
  } catch (err) {
    await client.end().catch(() => {});
    throw new SluiceError('CONNECT', `cannot connect to PostgreSQL at ${endpoint(cfg, 5432)}: ${errorMessage(err)}`, { cause: err, retryable: true });
  }
  return client;
}

/** A PostgreSQL connection as the table code sees it (names in the sink's schema). */
export class PgStore implements TableStore {
  readonly dialect = pgDialect;
  readonly state: TableRef;

  constructor(
    private readonly client: Client,
    private readonly cfg: PostgresSinkConfig,
  ) {
    this.state = this.ref(cfg.state_table);
  }

  private ref(name: string): TableRef {
    return { sql: `${q(this.cfg.schema)}.${q(name)}`, display: `${this.cfg.schema}.${name}` };
  }

  table(model: string): TableRef {
    return this.ref(this.cfg.table ?? model);
  }

  stateDdl(): string[] {
    return [
      ...this.beforeCreate(),
      `CREATE TABLE IF NOT EXISTS ${this.state.sql} (
        target text NOT NULL, model text NOT NULL, name text NOT NULL, row_count bigint NOT NULL, fingerprint text NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (target, model, name))`,
    ];
  }

  beforeCreate(): string[] {
    return [`CREATE SCHEMA IF NOT EXISTS ${q(this.cfg.schema)}`];
  }

  async describe(table: TableRef, key: string[]): Promise<{ columns?: TableColumn[]; keyIndexed: boolean }> {
    const exists = await this.client.query<{ e: boolean }>('SELECT to_regclass($1) IS NOT NULL AS e', [table.sql]);
    if (!exists.rows[0].e) return { keyIndexed: false };
    const r = await this.client.query<{ name: string; type: string }>(
      `SELECT a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type FROM pg_attribute a
        WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum`,
      [table.sql],
    );
    let keyIndexed = false;
    if (key.length) {
      const idx = await this.client.query<{ cols: string[] }>(
        `SELECT array_agg(a.attname::text ORDER BY a.attname) AS cols FROM pg_index i
           JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
          WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indpred IS NULL GROUP BY i.indexrelid`,
        [table.sql],
      );
      const want = [...key].sort().join(',');
      keyIndexed = idx.rows.some((x) => x.cols.join(',') === want);
    }
    return { columns: r.rows, keyIndexed };
  }

  async exec(sql: string): Promise<void> {
    await this.client.query(sql);
  }
}

/** `sluice plan` / `apply` for a postgres sink. */
export function postgresPlanner(cfg: PostgresSinkConfig, ctx: ConnectorContext): TablePlanner {
  return new TablePlanner(async () => {
    const client = await pgConnect(cfg, ctx);
    return { store: new PgStore(client, cfg), close: () => client.end().catch(() => {}) };
  }, cfg);
}
