import type { DuckDBConnection } from '@duckdb/node-api';
import { MODEL_SCHEMA, SOURCE_SCHEMA } from './template.js';

// DuckDB's parse tree of a model, and the rewrite that threads each row's message index through
// it: what analyze.ts (stateless models) and windows.ts (windowed models) are built on.

/** The hidden column carrying each row's message index within the batch. */
export const MSG_COL = '__sluice_msg';
/** The engine's columns of a flush's relation (engine/flush-relation.ts): a row's and a message's order. */
export const ROW_COL = '__sluice_row';
export const MESSAGE_COL = '__sluice_message';
/** A windowed model's columns in its state and its closing windows (sql/windows.ts). */
export const WINDOW_COLUMNS = {
  time: '__sluice_ts',
  start: '__sluice_ws',
  end: '__sluice_we',
  last: '__sluice_wl',
  key: '__sluice_k',
  part: '__sluice_part',
  /** Session windows: the emitted row's revision, and whether it retracts the session (see WindowOperator.sessionClosing). */
  rev: '__sluice_wr',
  retracted: '__sluice_wx',
  /** Session windows under late: update: a state row's revision, as last emitted (NULL: 0 once emitted). */
  rowRev: '__sluice_rr',
  /** Stream joins: a buffered row's id, and whether it has met a row of the other side (see engine/joins.ts). */
  jid: '__sluice_jid',
  matched: '__sluice_jm',
} as const;
/** Column names sluice keeps for its own: neither a message's top-level field nor a model's column may take one. */
export const RESERVED_COLUMNS: readonly string[] = [
  MSG_COL,
  ROW_COL,
  MESSAGE_COL,
  WINDOW_COLUMNS.time,
  WINDOW_COLUMNS.start,
  WINDOW_COLUMNS.end,
  WINDOW_COLUMNS.last,
  WINDOW_COLUMNS.part,
  WINDOW_COLUMNS.rev,
  WINDOW_COLUMNS.retracted,
  WINDOW_COLUMNS.rowRev,
  WINDOW_COLUMNS.jid,
  WINDOW_COLUMNS.matched,
];

/** The reserved name `name` takes (compared as DuckDB does, ignoring case), if any. */
export function reservedColumn(name: string): string | undefined {
  const n = name.toLowerCase();
  return RESERVED_COLUMNS.find((r) => r === n);
}

// DuckDB's serialized parse tree is untyped JSON; these aliases only document intent.
// biome-ignore lint/suspicious/noExplicitAny: the walkers below read whatever shape DuckDB's JSON has
export type Node = Record<string, any>;

/** A statement's parse tree, as DuckDB serializes it. */
export async function serialize(conn: DuckDBConnection, sql: string): Promise<Node> {
  const r = await conn.runAndReadAll(`SELECT json_serialize_sql($1::VARCHAR)`, [sql]);
  const text = String(r.getRows()[0][0]);
  // 2^64-1 marks "no location"; it does not survive a JS number round trip.
  return JSON.parse(text.replaceAll('18446744073709551615', '0')) as Node;
}

/** A parse tree (of a statement) as SQL. */
export async function deserialize(conn: DuckDBConnection, ast: Node): Promise<string> {
  const r = await conn.runAndReadAll(`SELECT json_deserialize_sql($1::VARCHAR)`, [JSON.stringify(ast)]);
  return String(r.getRows()[0][0]);
}

/** One expression of a parse tree as SQL. */
export async function exprSql(conn: DuckDBConnection, node: Node): Promise<string> {
  const ast = await serialize(conn, 'SELECT 1');
  ast.statements[0].node.select_list = [{ ...node, alias: '' }];
  return (await deserialize(conn, ast)).replace(/^SELECT /, '');
}

/** The 1-based line of a position in the SQL text. */
export function lineAt(sql: string, position: unknown): number | undefined {
  const pos = Number(position);
  if (!Number.isFinite(pos)) return undefined;
  return sql.slice(0, pos).split('\n').length;
}

export interface Ctx {
  aggs: Set<string>;
  stateful: string[];
  cteMsg: Set<string>;
  sq: number;
}

/** Rewrites a query node in place; true when its output carries MSG_COL. */
export function rewriteQuery(node: Node, ctx: Ctx): boolean {
  if (node.type === 'SET_OPERATION_NODE') {
    const l = rewriteQuery(node.left, ctx);
    const r = rewriteQuery(node.right, ctx);
    if ((l || r) && node.setop_all === false) {
      ctx.stateful.push(`${String(node.setop_type)} without ALL removes duplicate rows across messages`);
    }
    if (l !== r && (l || r)) ctx.stateful.push('both sides of a set operation must read from the batch');
    checkModifiers(node, ctx, l && r);
    return l && r;
  }
  if (node.type === 'RECURSIVE_CTE_NODE') {
    ctx.stateful.push('recursive CTEs are not supported in models');
    return false;
  }
  if (node.type !== 'SELECT_NODE') return false;

  const saved = new Set(ctx.cteMsg);
  for (const entry of (node.cte_map?.map ?? []) as Node[]) {
    const q = entry.value?.query?.node;
    if (q && rewriteQuery(q, ctx)) ctx.cteMsg.add(String(entry.key).toLowerCase());
  }
  const rels = collectFrom(node.from_table, ctx);
  const batch = rels.length > 0;
  if (batch) {
    checkStateless(node, ctx);
    for (const item of node.select_list as Node[]) {
      if (item.class === 'STAR' && !item.columns) {
        const rel = String(item.relation_name ?? '');
        if (rel === '' || rels.some((r) => r.toLowerCase() === rel.toLowerCase())) {
          item.exclude_list = [...(item.exclude_list ?? []), MSG_COL];
        }
      }
    }
    (node.select_list as Node[]).push(colref([rels[0], MSG_COL], MSG_COL));
  }
  checkSubqueryExpressions(node, ctx);
  ctx.cteMsg = saved;
  return batch;
}

/** Qualifiers of the batch relations a FROM clause reads (incoming, sources, refs, CTEs of them). */
function collectFrom(ref: Node | null | undefined, ctx: Ctx): string[] {
  if (!ref) return [];
  switch (ref.type) {
    case 'BASE_TABLE': {
      const schema = String(ref.schema_name ?? '').toLowerCase();
      const table = String(ref.table_name ?? '').toLowerCase();
      const isBatch = (schema === '' && (table === 'incoming' || ctx.cteMsg.has(table))) || schema === SOURCE_SCHEMA || schema === MODEL_SCHEMA;
      return isBatch ? [String(ref.alias || ref.table_name)] : [];
    }
    case 'SUBQUERY': {
      if (!rewriteQuery(ref.subquery.node, ctx)) return [];
      if (!ref.alias) ref.alias = `__sluice_sq${ctx.sq++}`;
      return [String(ref.alias)];
    }
    case 'JOIN': {
      const l = collectFrom(ref.left, ctx);
      const r = collectFrom(ref.right, ctx);
      if (l.length && r.length) {
        if (ref.ref_type === 'POSITIONAL' || ref.ref_type === 'ASOF') {
          ctx.stateful.push(`${String(ref.ref_type)} JOIN pairs rows across messages`);
        } else if (ref.ref_type !== 'NATURAL') {
          const eq = comparison(colref([l[0], MSG_COL]), colref([r[0], MSG_COL]));
          if (Array.isArray(ref.using_columns) && ref.using_columns.length > 0) {
            ref.using_columns = [...ref.using_columns, MSG_COL];
          } else if (ref.condition) {
            ref.condition = { class: 'CONJUNCTION', type: 'CONJUNCTION_AND', alias: '', query_location: 0, children: [ref.condition, eq] };
          } else {
            ref.condition = eq;
            ref.ref_type = 'REGULAR';
          }
        }
      }
      return [...l, ...r];
    }
    default:
      return [];
  }
}

export function colref(names: string[], alias = ''): Node {
  return { class: 'COLUMN_REF', type: 'COLUMN_REF', alias, query_location: 0, column_names: names };
}

function comparison(left: Node, right: Node): Node {
  return { class: 'COMPARISON', type: 'COMPARE_EQUAL', alias: '', query_location: 0, left, right };
}

function checkModifiers(node: Node, ctx: Ctx, batch: boolean): void {
  if (!batch) return;
  for (const m of (node.modifiers ?? []) as Node[]) {
    if (m.type === 'DISTINCT_MODIFIER') ctx.stateful.push('SELECT DISTINCT removes duplicate rows across messages');
    else if (m.type === 'ORDER_MODIFIER') ctx.stateful.push('ORDER BY sorts rows across messages');
    else if (m.type === 'LIMIT_MODIFIER' || m.type === 'LIMIT_PERCENT_MODIFIER') ctx.stateful.push('LIMIT keeps the rows of only some messages');
  }
}

/** Stateful constructs in a SELECT node that reads the batch. */
function checkStateless(node: Node, ctx: Ctx): void {
  checkModifiers(node, ctx, true);
  if ((node.group_expressions ?? []).length > 0 || (node.group_sets ?? []).length > 0) {
    ctx.stateful.push('GROUP BY combines rows of different messages');
  }
  if (node.having) ctx.stateful.push('HAVING filters groups of rows across messages');
  if (node.qualify) ctx.stateful.push('QUALIFY filters on window functions across messages');
  for (const e of [...(node.select_list ?? []), node.where_clause, node.having, node.qualify]) {
    walkExpr(e, (x) => {
      if (x.class === 'WINDOW') {
        ctx.stateful.push(`window function ${String(x.function_name)}() looks at other rows, which may belong to other messages`);
      } else if (x.class === 'FUNCTION' && ctx.aggs.has(String(x.function_name).toLowerCase())) {
        const name = x.function_name === 'count_star' ? 'count(*)' : `${String(x.function_name)}()`;
        ctx.stateful.push(`aggregate ${name} combines rows of different messages`);
      }
    });
  }
}

/** Scalar subqueries are analysed on their own: one that reads the batch must itself be stateless. */
function checkSubqueryExpressions(node: Node, ctx: Ctx): void {
  for (const e of [...(node.select_list ?? []), node.where_clause, node.having, node.qualify]) {
    walkExpr(e, (x) => {
      if (x.class === 'SUBQUERY' && x.subquery?.node) {
        const copy = structuredClone(x.subquery.node) as Node;
        if (readsBatch(copy, ctx)) {
          const before = ctx.stateful.length;
          rewriteQuery(copy, ctx);
          if (ctx.stateful.length === before) {
            ctx.stateful.push('a subquery that reads the whole batch mixes messages; read fields of the current message instead');
          }
        }
      }
    });
  }
}

function readsBatch(node: Node, ctx: Ctx): boolean {
  const probe: Ctx = { ...ctx, stateful: [], cteMsg: new Set(ctx.cteMsg) };
  return rewriteQuery(structuredClone(node) as Node, probe);
}

export function walkExpr(e: unknown, visit: (x: Node) => void): void {
  if (!e || typeof e !== 'object') return;
  if (Array.isArray(e)) {
    for (const c of e) walkExpr(c, visit);
    return;
  }
  const x = e as Node;
  if (typeof x.class === 'string') visit(x);
  if (x.class === 'SUBQUERY') return; // handled by checkSubqueryExpressions
  for (const [k, v] of Object.entries(x)) {
    if (k === 'subquery') continue;
    if (v && typeof v === 'object') walkExpr(v, visit);
  }
}

export function outputNames(node: Node): string[] | null {
  if (node.type === 'SET_OPERATION_NODE') return outputNames(node.left);
  if (node.type !== 'SELECT_NODE') return null;
  const names: string[] = [];
  for (const item of node.select_list as Node[]) {
    if (item.alias) names.push(String(item.alias));
    else if (item.class === 'COLUMN_REF') names.push(String((item.column_names as string[]).at(-1)));
    else if (item.class === 'STAR') return null;
    else if (item.class === 'FUNCTION' && item.function_name === 'unnest') return null;
    else names.push(`#expr${names.length}`);
  }
  return names;
}
