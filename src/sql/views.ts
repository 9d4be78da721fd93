import type { DuckDBConnection } from '@duckdb/node-api';
import { deserialize, exprSql, outputNames, rewriteQuery, walkExpr, type Ctx, type Node } from './parse-tree.js';
import { resolveGroupKey, star } from './windows.js';

// Continuously updated aggregates: a GROUP BY without a window (or SELECT DISTINCT, or aggregates
// over the whole input) is a materialised view, a row per group kept current. The engine
// (engine/views.ts) keeps the input rows as state and, for each group a batch adds rows to, runs
// the model's own aggregation over all of that group's rows: any DuckDB aggregate (DISTINCT and
// count(DISTINCT ...) included) gives what the same GROUP BY over everything gives.

export interface ViewQuery {
  /** The group keys (SQL over the input relation, qualified as `qualifier`); none: one group. */
  keys: string[];
  /** How the aggregation qualifies the input relation's columns. */
  qualifier: string;
  /** The input relation, filtered by the model's WHERE, with every column and MSG_COL. */
  input: string;
  /** The aggregation over relation VIEW_ROWS (the rows of the groups to emit), aliased as `qualifier`. */
  emit: string;
}

export interface ViewAnalysis {
  stateful: string[];
  outputColumns: string[] | null;
  view?: ViewQuery;
  /** The model aggregates over the whole stream but does something a view cannot (in `stateful`). */
  aggregating?: boolean;
}

/** The rows a view's aggregation reads when it emits (a view made per batch). */
export const VIEW_ROWS = '__sluice_view_rows';

/** A model that aggregates without a window, analysed (undefined: it does not). */
export async function viewQuery(conn: DuckDBConnection, ast: Node, aggs: Set<string>): Promise<ViewAnalysis | undefined> {
  const root = ast.statements[0].node as Node;
  if (root.type !== 'SELECT_NODE') return undefined;
  const mods = (root.modifiers ?? []) as Node[];
  const distinct = mods.find((m) => m.type === 'DISTINCT_MODIFIER' && (m.distinct_on_targets ?? []).length === 0);
  let aggregates = false;
  walkExpr([root.select_list, root.having], (x) => {
    if (x.class === 'FUNCTION' && aggs.has(String(x.function_name).toLowerCase())) aggregates = true;
  });
  const grouped = (root.group_expressions ?? []).length > 0;
  if (!grouped && !aggregates && !distinct) return undefined;
  const outputColumns = outputNames(root);
  const problems: string[] = [];
  if (!root.from_table || root.from_table.type === 'JOIN')
    problems.push('an aggregate over the stream reads one relation (incoming, a source or a ref): write the join in a stateless model and aggregate over that');
  if (root.having) problems.push('HAVING would hide a group whose earlier row the sink keeps: filter in a model that refs this one');
  if (root.qualify) problems.push('QUALIFY is not supported in an aggregate over the stream');
  for (const m of mods) {
    if (m.type === 'ORDER_MODIFIER') problems.push('ORDER BY is not supported in an aggregate over the stream (a sink keeps rows by key)');
    if (m.type === 'LIMIT_MODIFIER' || m.type === 'LIMIT_PERCENT_MODIFIER') problems.push('LIMIT is not supported in an aggregate over the stream');
  }
  const sets = (root.group_sets ?? []) as number[][];
  if (grouped && (sets.length !== 1 || sets[0].length !== root.group_expressions.length)) problems.push('GROUPING SETS, ROLLUP and CUBE are not supported in an aggregate over the stream');
  if (root.aggregate_handling === 'FORCE_AGGREGATES') problems.push('GROUP BY ALL: name the group keys');
  walkExpr([root.select_list], (x) => {
    if (x.class === 'WINDOW') problems.push(`window function ${String(x.function_name)}() is not supported in an aggregate over the stream`);
    if (x.class === 'SUBQUERY') problems.push('a subquery in the select list of an aggregate over the stream is not supported');
  });
  if (distinct) {
    // SELECT DISTINCT a, b is GROUP BY a, b.
    const items = root.select_list as Node[];
    if (items.some((x) => x.class === 'STAR')) problems.push('SELECT DISTINCT * over the stream: name the columns');
    else if (grouped || aggregates) problems.push('SELECT DISTINCT with GROUP BY or aggregates: write one or the other');
    else {
      root.group_expressions = items.map((x) => ({ ...structuredClone(x), alias: '' }));
      root.group_sets = [items.map((_, i) => i)];
      root.modifiers = mods.filter((m) => m !== distinct);
    }
  }
  if (problems.length) return { stateful: [...new Set(problems)], outputColumns, aggregating: true };

  if (root.from_table.type === 'SUBQUERY' && !root.from_table.alias) root.from_table.alias = '__sluice_in';
  const qualifier = String(root.from_table.alias || root.from_table.table_name || '');
  const inputAst = structuredClone(ast) as Node;
  const inNode = inputAst.statements[0].node as Node;
  Object.assign(inNode, { select_list: [star()], group_expressions: [], group_sets: [], having: null, modifiers: [], qualify: null, aggregate_handling: 'STANDARD_HANDLING' });
  const ctx: Ctx = { aggs, stateful: [], cteMsg: new Set(), sq: 0 };
  if (!rewriteQuery(inNode, ctx)) return undefined;
  if (ctx.stateful.length) return { stateful: [...new Set(ctx.stateful)], outputColumns, aggregating: true };
  const keys = await Promise.all(((root.group_expressions ?? []) as Node[]).map((g) => exprSql(conn, resolveGroupKey(g, root.select_list as Node[]))));
  const emitAst = structuredClone(ast) as Node;
  const e = emitAst.statements[0].node as Node;
  e.cte_map = { map: [] };
  e.from_table = { type: 'BASE_TABLE', alias: qualifier, sample: null, query_location: 0, schema_name: '', table_name: VIEW_ROWS, column_name_alias: [], catalog_name: '', at_clause: null };
  e.where_clause = null;
  return { stateful: [], outputColumns, view: { keys, qualifier, input: await deserialize(conn, inputAst), emit: await deserialize(conn, emitAst) } };
}
