import type { Logger } from 'pino';
import { SluiceError, errorMessage } from '../../errors.js';
import type { InfraChange, InfraPlanner, ModelShape } from '../infra.js';
import type { ColumnInfo } from '../types.js';
import { diffTable, wantedColumns, type TableColumn, type TableDialect } from './table-sql.js';

export interface TableRef {
  /** Quoted, as it goes into SQL. */
  sql: string;
  /** As a user reads it. */
  display: string;
}

/** One database connection as the table code needs it: a dialect, names, catalog reads and DDL. */
export interface TableStore {
  readonly dialect: TableDialect;
  /** The target table of a model. */
  table(model: string): TableRef;
  /** The state table of applied flushes and the statements creating it (idempotent). */
  readonly state: TableRef;
  stateDdl(): string[];
  /** Statements to run before creating a table (a schema), if any. */
  beforeCreate(): string[];
  /** The table's columns (undefined: no such table) and whether a unique index covers exactly `key`. */
  describe(table: TableRef, key: string[]): Promise<{ columns?: TableColumn[]; keyIndexed: boolean }>;
  exec(sql: string): Promise<void>;
}

/** How a table-sink is configured, as far as its table's shape goes. */
export interface TableShape {
  key: string[];
  strategy: string;
  auto_migrate: boolean;
}

/**
 * Makes `table` fit a flush of `model`: created when missing; new columns (and a merge's
 * unique key index) added when auto_migrate, else a SINK error naming them and `sluice apply`.
 */
export async function ensureTable(store: TableStore, shape: TableShape, table: TableRef, model: string, cols: ColumnInfo[], log: Logger): Promise<void> {
  const { key, strategy } = shape;
  const d = store.dialect;
  const existing = await store.describe(table, key);
  const diffs = diffTable(d, table.sql, table.display, wantedColumns(d, cols, key, strategy), existing.columns, { key, strategy, keyIndexed: existing.keyIndexed });
  const create = diffs.find((x) => x.kind === 'create');
  if (create) {
    for (const s of [...store.beforeCreate(), ...create.sql]) await store.exec(s);
    log.info({ table: table.display, strategy }, `created the ${d.label} table`);
    return;
  }
  const needed = diffs.filter((x) => x.kind === 'add' || x.kind === 'index');
  if (needed.length === 0) return;
  if (!shape.auto_migrate) {
    throw new SluiceError(
      'SINK',
      `${d.label} sink: table ${table.display} does not match model ${model}: ${needed.map((x) => x.summary.replace(/^\+ /, '')).join('; ')}. Run \`sluice plan\` and \`sluice apply\`, or set auto_migrate: true on the sink`,
      { retryable: false },
    );
  }
  for (const x of needed) for (const s of x.sql) await store.exec(s);
  log.info({ table: table.display, changes: needed.map((x) => x.summary) }, `migrated the ${d.label} table (auto_migrate)`);
}

/** `sluice plan` / `apply` for a table sink: its state table and each model's target table. */
export class TablePlanner implements InfraPlanner {
  private store?: TableStore;

  constructor(
    private readonly open: () => Promise<{ store: TableStore; close(): Promise<void> }>,
    private readonly shape: TableShape,
  ) {}

  private closer?: () => Promise<void>;

  async plan(models: ModelShape[]): Promise<InfraChange[]> {
    if (!this.store) {
      const o = await this.open();
      this.store = o.store;
      this.closer = () => o.close();
    }
    const store = this.store;
    const d = store.dialect;
    const run = (sql: string[]) => async () => {
      for (const s of sql) {
        try {
          await store.exec(s);
        } catch (err) {
          throw new SluiceError('SINK', `${d.label}: ${errorMessage(err)} (running: ${s})`, { cause: err });
        }
      }
    };
    const out: InfraChange[] = [];
    if (!(await store.describe(store.state, [])).columns) {
      out.push({
        object: `${d.label} table ${store.state.display}`,
        summary: `+ create table ${store.state.display} (the state table of applied flushes)`,
        destructive: false,
        apply: run(store.stateDdl()),
      });
    }
    const seen = new Set<string>();
    for (const m of models) {
      const t = store.table(m.model);
      if (seen.has(t.sql)) continue;
      seen.add(t.sql);
      const existing = await store.describe(t, this.shape.key);
      const wanted = wantedColumns(d, m.columns, this.shape.key, this.shape.strategy);
      for (const x of diffTable(d, t.sql, t.display, wanted, existing.columns, { key: this.shape.key, strategy: this.shape.strategy, keyIndexed: existing.keyIndexed })) {
        out.push({ object: `${d.label} table ${t.display}`, summary: x.summary, destructive: x.destructive, apply: run(x.kind === 'create' ? [...store.beforeCreate(), ...x.sql] : x.sql) });
      }
    }
    return out;
  }

  async close(): Promise<void> {
    await this.closer?.();
    this.store = undefined;
  }
}
