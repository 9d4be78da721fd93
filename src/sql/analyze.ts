import type { DuckDBConnection } from '@duckdb/node-api';
import { lineAt, outputNames, rewriteQuery, serialize, walkExpr, type Ctx, type Node } from './parse-tree.js';
import { dedupQuery, type DedupQuery } from './dedup.js';
import { viewQuery, type ViewQuery } from './views.js';
import { intervalJoinQuery, type IntervalJoinQuery } from './joins.js';
import { windowedQuery, type WindowedAnalysis } from './windows.js';

export { MESSAGE_COL, MSG_COL, RESERVED_COLUMNS, reservedColumn, ROW_COL, WINDOW_COLUMNS } from './parse-tree.js';

/** What analyzeSql() says of a model (the fields it shares with a windowed one: see WindowedAnalysis). */
export interface SqlAnalysis extends WindowedAnalysis {
  /** The model rewritten to carry MSG_COL through to its output (a windowed model: see `window`). */
  rewritten?: string;
  /** Tables the model names without a schema that are not incoming or a CTE (reference tables, say). */
  tables?: string[];
  /** A stream-stream interval join (engine/joins.ts runs it). */
  join?: IntervalJoinQuery;
  /** The model is a stream join but does something one cannot (in `stateful`). */
  joined?: boolean;
  /** Deduplication over time: the first row per key (engine/dedup.ts runs it). */
  dedup?: DedupQuery;
  /** The model deduplicates but does something that cannot (in `stateful`). */
  deduplicating?: boolean;
  /** A continuously updated aggregate: GROUP BY without a window (engine/views.ts runs it). */
  view?: ViewQuery;
  /** The model aggregates over the whole stream but does something a view cannot (in `stateful`). */
  aggregating?: boolean;
}

/**
 * The tables a statement names without a schema, less `incoming` and its CTEs' names. A quoted
 * file name (`FROM 'rates.csv'`) is DuckDB reading that file, not a table.
 */
function namedTables(ast: Node): string[] {
  const tables = new Set<string>();
  const ctes = new Set<string>(['incoming']);
  const walk = (x: unknown): void => {
    if (Array.isArray(x)) for (const v of x) walk(v);
    else if (x && typeof x === 'object') {
      const n = x as Node;
      if (n.type === 'BASE_TABLE' && !n.schema_name && !n.catalog_name && typeof n.table_name === 'string' && !/[./\\]/.test(n.table_name)) tables.add(n.table_name.toLowerCase());
      for (const c of (n.cte_map?.map ?? []) as Node[]) ctes.add(String(c.key).toLowerCase());
      for (const v of Object.values(n)) walk(v);
    }
  };
  walk(ast);
  return [...tables].filter((t) => !ctes.has(t));
}

let aggregateNames: Set<string> | undefined;

async function aggregates(conn: DuckDBConnection): Promise<Set<string>> {
  if (!aggregateNames) {
    const r = await conn.runAndReadAll(`SELECT DISTINCT function_name FROM duckdb_functions() WHERE function_type = 'aggregate'`);
    aggregateNames = new Set(r.getRows().map((row) => String(row[0]).toLowerCase()));
  }
  return aggregateNames;
}

/**
 * Parses one model with DuckDB's own parser and reports: parse errors, stateful constructs
 * (aggregates, windows, DISTINCT, ORDER BY, LIMIT, GROUP BY, set operations without ALL), the
 * output columns, and the SQL rewritten so every output row carries its message index.
 */
export async function analyzeSql(conn: DuckDBConnection, sql: string): Promise<SqlAnalysis> {
  const ast = await serialize(conn, sql);
  if (ast.error) {
    const message = String(ast.error_message ?? 'cannot parse SQL').split('\n')[0];
    return { error: { message, line: lineAt(sql, ast.position) }, stateful: [], outputColumns: null };
  }
  const statements = ast.statements as Node[];
  if (statements.length !== 1) {
    return { error: { message: `a model is exactly one SELECT statement (found ${statements.length})` }, stateful: [], outputColumns: null };
  }
  const aggs = await aggregates(conn);
  const root = statements[0].node as Node;
  const tables = namedTables(ast);
  const windowed = await windowedQuery(conn, sql, ast, aggs);
  if (windowed) return { ...windowed, tables };
  const joined = await intervalJoinQuery(conn, ast, aggs);
  if (joined) return { ...joined, tables };
  const deduped = await dedupQuery(conn, ast, aggs);
  if (deduped) return { ...deduped, tables };
  const view = await viewQuery(conn, ast, aggs);
  if (view) return { ...view, tables };
  const stateful: string[] = [];
  const ctx: Ctx = { aggs, stateful, cteMsg: new Set(), sq: 0 };
  const outputColumns = outputNames(root);
  const hasMsg = rewriteQuery(root, ctx);
  if (!hasMsg) {
    return {
      error: { message: 'a model must read from incoming, {{ source(...) }} or {{ ref(...) }}' },
      stateful: [...new Set(stateful)],
      outputColumns,
    };
  }
  const r = await conn.runAndReadAll(`SELECT json_deserialize_sql($1::VARCHAR)`, [JSON.stringify(ast)]);
  return { stateful: [...new Set(stateful)], outputColumns, rewritten: String(r.getRows()[0][0]), tables };
}

/**
 * The columns a SQL expression reads (the last part of each column reference), parsed by
 * DuckDB; an error message when it is not one valid expression.
 */
export async function expressionColumns(conn: DuckDBConnection, expr: string): Promise<{ columns: string[] } | { error: string }> {
  const ast = await serialize(conn, `SELECT ${expr}`);
  const list = ast.error ? undefined : ((ast.statements as Node[])[0]?.node?.select_list as Node[] | undefined);
  if (list?.length !== 1 || (ast.statements as Node[]).length !== 1 || (ast.statements as Node[])[0].node.from_table?.type !== 'EMPTY') {
    return { error: `"${expr}" is not one SQL expression${ast.error ? `: ${String(ast.error_message ?? '').split('\n')[0]}` : ''}` };
  }
  const columns = new Set<string>();
  walkExpr(list, (x) => {
    if (x.class === 'COLUMN_REF') columns.add(String((x.column_names as string[]).at(-1)));
  });
  return { columns: [...columns] };
}
