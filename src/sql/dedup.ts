import type { DuckDBConnection } from '@duckdb/node-api';
import { colref, deserialize, exprSql, outputNames, rewriteQuery, type Ctx, type Node, WINDOW_COLUMNS } from './parse-tree.js';

// Deduplication over time: a model that keeps the first row per key, as SQL writes it,
//   SELECT * FROM incoming QUALIFY row_number() OVER (PARTITION BY order_id ORDER BY ts) = 1
//   SELECT DISTINCT ON (order_id) * FROM incoming ORDER BY order_id, ts
// The engine (engine/dedup.ts) remembers each key's latest time for `ttl` of event time and
// drops a row whose key it has seen within the ttl before it.

export interface DedupQuery {
  /** The key expressions (SQL over the model's input), as written. */
  keys: string[];
  /** The time the rows of a key are ordered by (SQL over the model's input). */
  time: string;
  /**
   * The model without its QUALIFY / DISTINCT ON and ORDER BY, per row, with MSG_COL, and the
   * keys and the time as WINDOW_COLUMNS.key<i> and WINDOW_COLUMNS.time.
   */
  input: string;
}

export interface DedupAnalysis {
  stateful: string[];
  outputColumns: string[] | null;
  dedup?: DedupQuery;
  /** The model deduplicates but does something that cannot (in `stateful`). */
  deduplicating?: boolean;
}

/** A model that keeps the first row per key (undefined: it does not, and is analysed as any other). */
export async function dedupQuery(conn: DuckDBConnection, ast: Node, aggs: Set<string>): Promise<DedupAnalysis | undefined> {
  const root = ast.statements[0].node as Node;
  if (root.type !== 'SELECT_NODE') return undefined;
  const form = rowNumberForm(root) ?? distinctOnForm(root);
  if (!form) return undefined;
  const outputColumns = outputNames(root);
  const problems = [...form.problems];
  const copy = structuredClone(ast) as Node;
  const n = copy.statements[0].node as Node;
  n.qualify = null;
  n.modifiers = [];
  const items = [...form.keys.map((k, i) => ({ ...structuredClone(k), alias: `${WINDOW_COLUMNS.key}${i}` })), { ...structuredClone(form.time ?? colref(['NULL'])), alias: WINDOW_COLUMNS.time }];
  n.select_list = [...(n.select_list as Node[]), ...items];
  const ctx: Ctx = { aggs, stateful: [], cteMsg: new Set(), sq: 0 };
  if (!rewriteQuery(n, ctx)) return undefined;
  problems.push(...ctx.stateful);
  if (problems.length || !form.time) return { stateful: [...new Set(problems)], outputColumns, deduplicating: true };
  return {
    stateful: [],
    outputColumns,
    dedup: {
      keys: await Promise.all(form.keys.map((k) => exprSql(conn, k))),
      time: await exprSql(conn, form.time),
      input: await deserialize(conn, copy),
    },
  };
}

interface Form {
  keys: Node[];
  time?: Node;
  problems: string[];
}

/** QUALIFY row_number() OVER (PARTITION BY keys ORDER BY time) = 1. */
function rowNumberForm(root: Node): Form | undefined {
  const q = root.qualify as Node | null;
  if (q?.class !== 'COMPARISON' || q.type !== 'COMPARE_EQUAL') return undefined;
  const [w, c] = q.left?.class === 'WINDOW' ? [q.left, q.right] : [q.right, q.left];
  if (w?.class !== 'WINDOW' || w.type !== 'WINDOW_ROW_NUMBER' || c?.class !== 'CONSTANT' || Number(c.value?.value) !== 1) return undefined;
  const problems: string[] = [];
  const orders = (w.orders ?? []) as Node[];
  if ((w.partitions ?? []).length === 0) problems.push('row_number() = 1 keeps one row per key: PARTITION BY the key');
  if (orders.length !== 1) problems.push('row_number() = 1 keeps the first row of each key by its time: ORDER BY one time expression');
  else if (orders[0].type === 'DESCENDING') problems.push('a deduplicating model keeps the first row of each key: ORDER BY the time ascending');
  if ((root.modifiers ?? []).length) problems.push('DISTINCT, ORDER BY and LIMIT are not supported beside QUALIFY row_number() = 1');
  return { keys: (w.partitions ?? []) as Node[], time: orders.length === 1 ? orders[0].expression : undefined, problems };
}

/** SELECT DISTINCT ON (keys) ... ORDER BY keys, time. */
function distinctOnForm(root: Node): Form | undefined {
  const mods = (root.modifiers ?? []) as Node[];
  const distinct = mods.find((m) => m.type === 'DISTINCT_MODIFIER' && (m.distinct_on_targets ?? []).length > 0);
  if (!distinct) return undefined;
  const keys = distinct.distinct_on_targets as Node[];
  const order = mods.find((m) => m.type === 'ORDER_MODIFIER');
  const orders = ((order?.orders ?? []) as Node[]).map((o) => o as Node);
  const same = (a: Node, b: Node) => JSON.stringify(strip(a)) === JSON.stringify(strip(b));
  const problems: string[] = [];
  const rest = orders.filter((o) => !keys.some((k) => same(k, o.expression)));
  if (rest.length !== 1) problems.push('DISTINCT ON keeps the first row of each key by its time: ORDER BY the keys, then one time expression');
  else if (rest[0].type === 'DESCENDING') problems.push('a deduplicating model keeps the first row of each key: ORDER BY the time ascending');
  if (mods.some((m) => m.type === 'LIMIT_MODIFIER' || m.type === 'LIMIT_PERCENT_MODIFIER')) problems.push('LIMIT is not supported beside DISTINCT ON');
  if (root.qualify) problems.push('QUALIFY is not supported beside DISTINCT ON');
  return { keys, time: rest.length === 1 ? rest[0].expression : undefined, problems };
}

function strip(x: unknown): unknown {
  return JSON.parse(JSON.stringify(x, (k, v) => (k === 'query_location' || k === 'alias' ? undefined : v)));
}
