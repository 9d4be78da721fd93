import fs from 'node:fs';
import type { Connection } from 'mysql2/promise';
import { SluiceError, errorMessage } from '../../errors.js';
import type { ConnectorContext } from '../types.js';
import { endpoint, sslOptions } from '../sql-table/connection.js';
import { isNested, type TableColumn, type TableDialect } from '../sql-table/table-sql.js';
import { TablePlanner, type TableRef, type TableStore } from '../sql-table/table-store.js';
import type { MysqlSinkConfig } from './mysql-config.js';

const q = (s: string) => `\`${s.replaceAll('`', '``')}\``;

const INT_RANK: Record<string, number> = { tinyint: 1, smallint: 2, mediumint: 3, int: 4, bigint: 5 };

/** COLUMN_TYPE as the dialect spells types: no integer display widths, tinyint(1) = boolean. */
function normalize(t: string): string {
  const s = t.toLowerCase().trim();
  if (s === 'tinyint(1)') return 'boolean';
  return s.replace(/^(tinyint|smallint|mediumint|int|bigint)\(\d+\)/, '$1');
}

/** DuckDB types as MariaDB / MySQL spell them; DDL in their words. */
export const mysqlDialect: TableDialect = {
  label: 'mysql',
  quote: q,
  columnType(duckType, key) {
    const t = duckType.toUpperCase();
    if (isNested(t) || t === 'JSON') return 'json';
    const dec = /^DECIMAL\((\d+),\s*(\d+)\)$/.exec(t);
    if (dec) return `decimal(${dec[1]},${dec[2]})`;
    const map: Record<string, string> = {
      BOOLEAN: 'boolean',
      TINYINT: 'tinyint',
      SMALLINT: 'smallint',
      INTEGER: 'int',
      BIGINT: 'bigint',
      UTINYINT: 'tinyint unsigned',
      USMALLINT: 'smallint unsigned',
      UINTEGER: 'int unsigned',
      UBIGINT: 'bigint unsigned',
      HUGEINT: 'decimal(38,0)',
      UHUGEINT: 'decimal(39,0)',
      FLOAT: 'float',
      DOUBLE: 'double',
      DATE: 'date',
      TIME: 'time(6)',
      TIMESTAMP: 'datetime(6)',
      TIMESTAMP_S: 'datetime(6)',
      TIMESTAMP_MS: 'datetime(6)',
      TIMESTAMP_NS: 'datetime(6)',
      'TIMESTAMP WITH TIME ZONE': 'datetime(6)',
      UUID: 'char(36)',
      BLOB: key ? 'varbinary(255)' : 'longblob',
      INTERVAL: 'varchar(64)',
    };
    return map[t] ?? (key ? 'varchar(255)' : 'longtext');
  },
  compatible(existing, wanted) {
    const e = normalize(existing);
    if (e === wanted || e === 'longtext') return true;
    if (wanted === 'json' && e === 'longtext') return true;
    const base = (s: string) => s.replace(/\(.*\)$/, '');
    const re = INT_RANK[e];
    const rw = INT_RANK[wanted];
    if (re !== undefined && rw !== undefined) return re >= rw;
    if (e === 'double' && (wanted === 'float' || rw !== undefined)) return true;
    if (base(e) === 'varchar' && base(wanted) === 'varchar') return true;
    return false;
  },
  createTable(table, columns, key, strategy) {
    const cols = columns.map((c) => `${q(c.name)} ${c.type}${key.includes(c.name) ? ' NOT NULL' : ''}`);
    if (strategy === 'merge') cols.push(`PRIMARY KEY (${key.map(q).join(', ')})`);
    return [`CREATE TABLE ${table} (${cols.join(', ')}) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4`];
  },
  addColumn: (table, c) => `ALTER TABLE ${table} ADD COLUMN ${q(c.name)} ${c.type}`,
  dropColumn: (table, name) => `ALTER TABLE ${table} DROP COLUMN ${q(name)}`,
  retypeColumn: (table, c) => `ALTER TABLE ${table} MODIFY COLUMN ${q(c.name)} ${c.type}`,
  keyIndex: (table, key, indexed) => (indexed ? undefined : `ALTER TABLE ${table} ADD UNIQUE INDEX ${q(`sluice_key_${key.join('_')}`.slice(0, 64))} (${key.map(q).join(', ')})`),
};

/** A connected MariaDB / MySQL connection (LOAD DATA LOCAL reads the files sluice hands it). */
export async function mysqlConnect(cfg: MysqlSinkConfig, ctx: ConnectorContext): Promise<Connection> {
  const mysql = await import('mysql2/promise');
  const ssl = sslOptions(cfg.tls);
  try {
    const conn = await mysql.createConnection({
      ...(cfg.url ? { uri: cfg.url } : { host: cfg.host, port: cfg.port, user: cfg.user, password: cfg.password ?? '', database: cfg.database }),
      connectTimeout: cfg.connect_timeout_ms,
      charset: 'utf8mb4',
      supportBigNumbers: true,
      bigNumberStrings: true,
      infileStreamFactory: (file: string) => fs.createReadStream(file),
      ...(ssl ? { ssl } : {}),
    });
    conn.on('error', (err: unknown) => ctx.log.warn({ err: errorMessage(err) }, 'mysql connection lost'));
    return conn;
  } catch (err) {
    throw new SluiceError('CONNECT', `cannot connect to MySQL at ${endpoint(cfg, 3306)}: ${errorMessage(err)}`, { cause: err, retryable: true });
  }
}

/** A MariaDB / MySQL connection as the table code sees it (tables of the connection's database). */
export class MysqlStore implements TableStore {
  readonly dialect = mysqlDialect;
  readonly state: TableRef;

  constructor(
    private readonly conn: Connection,
    private readonly cfg: MysqlSinkConfig,
  ) {
    this.state = this.ref(cfg.state_table);
  }

  private ref(name: string): TableRef {
    return { sql: q(name), display: name };
  }

  table(model: string): TableRef {
    return this.ref(this.cfg.table ?? model);
  }

  stateDdl(): string[] {
    return [
      `CREATE TABLE IF NOT EXISTS ${this.state.sql} (
        target VARCHAR(255) NOT NULL, model VARCHAR(128) NOT NULL, name VARCHAR(512) CHARACTER SET ascii NOT NULL,
        row_count BIGINT NOT NULL, fingerprint VARCHAR(80) CHARACTER SET ascii NOT NULL, applied_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        PRIMARY KEY (target, model, name)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4`,
    ];
  }

  beforeCreate(): string[] {
    return [];
  }

  async describe(table: TableRef, key: string[]): Promise<{ columns?: TableColumn[]; keyIndexed: boolean }> {
    const [rows] = await this.conn.query(
      'SELECT COLUMN_NAME AS name, COLUMN_TYPE AS type FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION',
      [table.display],
    );
    const columns = (rows as { name: string; type: string }[]).map((r) => ({ name: r.name, type: normalize(String(r.type)) }));
    if (columns.length === 0) return { keyIndexed: false };
    let keyIndexed = false;
    if (key.length) {
      const [idx] = await this.conn.query(
        `SELECT GROUP_CONCAT(COLUMN_NAME ORDER BY COLUMN_NAME) AS cols FROM information_schema.STATISTICS
          WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND NON_UNIQUE = 0 GROUP BY INDEX_NAME`,
        [table.display],
      );
      const want = [...key].sort().join(',');
      keyIndexed = (idx as { cols: string }[]).some((r) => String(r.cols) === want);
    }
    return { columns, keyIndexed };
  }

  async exec(sql: string): Promise<void> {
    await this.conn.query(sql);
  }
}

/** `sluice plan` / `apply` for a mysql sink. */
export function mysqlPlanner(cfg: MysqlSinkConfig, ctx: ConnectorContext): TablePlanner {
  return new TablePlanner(async () => {
    const conn = await mysqlConnect(cfg, ctx);
    return { store: new MysqlStore(conn, cfg), close: () => conn.end().catch(() => {}) };
  }, cfg);
}
