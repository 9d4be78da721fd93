import type { DuckDBConnection } from '@duckdb/node-api';
import { colref, deserialize, exprSql, outputNames, rewriteQuery, walkExpr, WINDOW_COLUMNS, type Ctx, type Node } from './parse-tree.js';

// Windowed aggregation, as streamt (Flink SQL) and DuckDB write it:
//   GROUP BY TUMBLE(ts, size) | HOP(ts, slide, size) | SESSION(ts, gap) | time_bucket(size, ts)
// with TUMBLE_START / _END, HOP_START / _END, SESSION_START / _END in the select list. The
// engine (engine/windows.ts) keeps the rows of open windows as state and, when the watermark
// closes a window, runs the model's own aggregation over that window's rows: any DuckDB
// aggregate works, and the result is what the same GROUP BY over the whole input gives.

export type WindowKind = 'tumble' | 'hop' | 'session';

export interface WindowedQuery {
  kind: WindowKind;
  /** The window as the model writes it, for `models list` and the docs: `TUMBLE(ts, INTERVAL 1 MINUTE)`. */
  written: string;
  /** The event time (SQL over the input relation). */
  time: string;
  /**
   * Processing time: the window's time is PROCTIME() (or now(), CURRENT_TIMESTAMP): when the
   * engine handles the event, for sources whose messages carry no time of their own.
   */
  processing: boolean;
  /** Interval SQL: a tumbling or hopping window's size, a hopping window's slide, a session's gap. */
  size?: string;
  slide?: string;
  gap?: string;
  /** The other GROUP BY expressions (SQL over the input relation): a session is per key. */
  keys: string[];
  /** Names the aggregation reads (lower case): of the input's columns, only these are kept as state. */
  names: string[];
  /** How the aggregation qualifies the input relation's columns. */
  qualifier: string;
  /** The input relation, filtered by the model's WHERE, with every column and MSG_COL. */
  input: string;
  /**
   * The expressions the aggregates evaluate per row (their arguments and FILTER conditions),
   * over the input's columns: evaluating them over a batch's rows shows, in that batch, a
   * message whose values the aggregation cannot take.
   */
  perRow: string[];
  /**
   * The aggregation over relation CLOSING (the rows of the windows being emitted, with their
   * window in WINDOW_COLUMNS.start / .end): the model with its window calls replaced, which also
   * outputs the window's start and end as WINDOW_COLUMNS.start / .end (a session window also
   * WINDOW_COLUMNS.rev / .retracted).
   */
  emit: string;
}

/** The relation a windowed model's aggregation reads when windows close (a view made per emission). */
export const CLOSING = '__sluice_closing';

const WINDOW_CALLS: Record<string, { kind: WindowKind; args: number }> = {
  tumble: { kind: 'tumble', args: 2 },
  hop: { kind: 'hop', args: 3 },
  session: { kind: 'session', args: 2 },
  time_bucket: { kind: 'tumble', args: 2 },
};

/** The calls that mean processing time as a window's time argument. */
const PROCESSING_TIME = new Set(['proctime', 'now', 'current_timestamp', 'get_current_timestamp', 'transaction_timestamp']);

const BOUNDS: Record<string, { kind: WindowKind; end: boolean }> = {
  tumble_start: { kind: 'tumble', end: false },
  tumble_end: { kind: 'tumble', end: true },
  hop_start: { kind: 'hop', end: false },
  hop_end: { kind: 'hop', end: true },
  session_start: { kind: 'session', end: false },
  session_end: { kind: 'session', end: true },
};

function isCall(x: unknown, names: Record<string, unknown>): x is Node {
  return Boolean(x && typeof x === 'object' && (x as Node).class === 'FUNCTION' && String((x as Node).function_name).toLowerCase() in names);
}

/** What windowedQuery() says of a model; analyze.ts's SqlAnalysis extends it. */
export interface WindowedAnalysis {
  /** Parse error, with the 1-based line in the rendered SQL when DuckDB reports a position. */
  error?: { message: string; line?: number };
  /** Why the model cannot run (empty: stateless, or windowed). */
  stateful: string[];
  /** Output column names when they can be read from the SELECT list (null with `*`). */
  outputColumns: string[] | null;
  /** A model that aggregates over windows of event time. */
  window?: WindowedQuery;
  /** The model groups by a window but does something a windowed model cannot (in `stateful`). */
  windowed?: boolean;
}

/**
 * A model whose GROUP BY holds a window call, analysed (undefined: no window call, the model is
 * analysed as any other). What a windowed model may not do is in `stateful`, with the reason.
 */
export async function windowedQuery(conn: DuckDBConnection, sql: string, ast: Node, aggs: Set<string>): Promise<WindowedAnalysis | undefined> {
  const root = ast.statements[0].node as Node;
  if (root.type !== 'SELECT_NODE') return undefined;
  const groups = (root.group_expressions ?? []) as Node[];
  const calls = groups.filter((g) => isCall(g, WINDOW_CALLS));
  if (calls.length === 0) return undefined;
  const call = calls[0];
  const fn = String(call.function_name).toLowerCase();
  const spec = WINDOW_CALLS[fn];
  const outputColumns = outputNames(root);
  const problems = windowProblems(root, calls, fn);
  if (problems.length) return { stateful: [...new Set(problems)], outputColumns, windowed: true };

  // The input: the model's FROM and WHERE, every column.
  if (root.from_table?.type === 'SUBQUERY' && !root.from_table.alias) root.from_table.alias = '__sluice_in';
  const qualifier = String(root.from_table?.alias || root.from_table?.table_name || '');
  const inputAst = structuredClone(ast) as Node;
  const inNode = inputAst.statements[0].node as Node;
  Object.assign(inNode, { select_list: [star()], group_expressions: [], group_sets: [], having: null, modifiers: [], qualify: null });
  const ctx: Ctx = { aggs, stateful: [], cteMsg: new Set(), sq: 0 };
  if (!rewriteQuery(inNode, ctx)) {
    return { error: { message: 'a model must read from incoming, {{ source(...) }} or {{ ref(...) }}' }, stateful: [], outputColumns };
  }
  if (ctx.stateful.length) return { stateful: [...new Set(ctx.stateful)], outputColumns, windowed: true };

  const args = call.children as Node[];
  const [timeNode, ...params] = fn === 'time_bucket' ? [args[1], args[0]] : args;
  const processing =
    (timeNode.class === 'FUNCTION' && PROCESSING_TIME.has(String(timeNode.function_name).toLowerCase()) && (timeNode.children as Node[]).length === 0) ||
    (timeNode.class === 'COLUMN_REF' && (timeNode.column_names as string[]).length === 1 && String(timeNode.column_names[0]).toLowerCase() === 'current_timestamp');
  if (processing && fn === 'time_bucket') {
    return { stateful: ['time_bucket() over processing time would be evaluated again when the window closes: write TUMBLE(PROCTIME(), size)'], outputColumns, windowed: true };
  }
  const time = await exprSql(conn, timeNode);
  const p = await Promise.all(params.map((x) => exprSql(conn, x)));
  // GROUP BY 1 and GROUP BY <alias> name the select list's expressions: the keys are those.
  const keys = await Promise.all(groups.filter((g) => g !== call).map((g) => exprSql(conn, resolveGroupKey(g, root.select_list as Node[]))));
  const { perRow, names } = await readsPerRow(conn, root, aggs);
  const emit = emitTree(ast, qualifier, fn, spec.kind === 'session');
  const written = callText(sql, Number(call.query_location)) ?? `${fn}(${(fn === 'time_bucket' ? [p[0], time] : [time, ...p]).join(', ')})`;
  const window: WindowedQuery = {
    kind: spec.kind,
    written,
    time,
    processing,
    ...(spec.kind === 'tumble' ? { size: p[0] } : spec.kind === 'hop' ? { slide: p[0], size: p[1] } : { gap: p[0] }),
    keys,
    names,
    qualifier,
    input: await deserialize(conn, inputAst),
    perRow,
    emit: await deserialize(conn, emit.ast),
  };
  return { stateful: [], outputColumns: emit.outputColumns, window };
}

/** What a windowed model does that the engine cannot run windowed, each with the reason. */
function windowProblems(root: Node, calls: Node[], fn: string): string[] {
  const problems: string[] = [];
  const call = calls[0];
  const spec = WINDOW_CALLS[fn];
  const groups = (root.group_expressions ?? []) as Node[];
  if (calls.length > 1) problems.push('a model groups by one window');
  if ((call.children as Node[]).length !== spec.args) {
    problems.push(fn === 'time_bucket' ? 'time_bucket(size, time) takes two arguments in a windowed model (no offset or origin)' : `${fn.toUpperCase()} takes ${spec.args} arguments`);
  }
  const sets = (root.group_sets ?? []) as number[][];
  if (sets.length !== 1 || sets[0].length !== groups.length) problems.push('GROUPING SETS, ROLLUP and CUBE are not supported with windows');
  if (root.from_table?.type === 'JOIN') {
    problems.push('a windowed model reads one relation (incoming, a source or a ref): write the join in a CTE or a stateless model and window over that');
  }
  if (root.qualify) problems.push('QUALIFY is not supported in a windowed model');
  for (const m of (root.modifiers ?? []) as Node[]) {
    if (m.type === 'DISTINCT_MODIFIER') problems.push('SELECT DISTINCT is not supported in a windowed model');
    if (m.type === 'LIMIT_MODIFIER' || m.type === 'LIMIT_PERCENT_MODIFIER') problems.push('LIMIT would keep only some of each emission’s rows: not supported in a windowed model');
  }
  walkExpr([root.select_list, root.having], (x) => {
    if (x.class === 'WINDOW') problems.push(`window function ${String(x.function_name)}() over a windowed aggregation is not supported`);
    if (x.class === 'SUBQUERY') problems.push('a subquery in the select list or HAVING of a windowed model is not supported');
    if (isCall(x, BOUNDS) && BOUNDS[String(x.function_name).toLowerCase()].kind !== spec.kind) {
      problems.push(`${String(x.function_name).toUpperCase()} does not match the model's window ${fn.toUpperCase()}`);
    } else if (isCall(x, BOUNDS) && !sameArgs(x.children as Node[], call.children as Node[])) {
      problems.push(`${String(x.function_name).toUpperCase()} must repeat the arguments of the model's ${fn.toUpperCase()}(...)`);
    }
  });
  return problems;
}

/**
 * What the aggregation evaluates per row (the aggregates' arguments, FILTER conditions and
 * ORDER BY expressions) and the names it reads (lower case).
 */
async function readsPerRow(conn: DuckDBConnection, root: Node, aggs: Set<string>): Promise<{ perRow: string[]; names: string[] }> {
  const perRowNodes: Node[] = [];
  walkExpr([root.select_list, root.having], (x) => {
    if (x.class === 'FUNCTION' && aggs.has(String(x.function_name).toLowerCase())) {
      perRowNodes.push(...((x.children ?? []) as Node[]));
      if (x.filter) perRowNodes.push(x.filter as Node);
      for (const o of (x.order_bys?.orders ?? []) as Node[]) perRowNodes.push(o.expression as Node);
    }
  });
  const perRow = [...new Set(await Promise.all(perRowNodes.map((x) => exprSql(conn, x))))];
  const names = new Set<string>();
  walkExpr([root.select_list, root.group_expressions, root.having, root.modifiers], (x) => {
    if (x.class === 'COLUMN_REF') for (const n of x.column_names as string[]) names.add(n.toLowerCase());
  });
  return { perRow, names: [...names] };
}

/**
 * The emission: the model's aggregation over CLOSING (aliased as the model's input), its window
 * calls replaced by the window's columns, which it also outputs last (a session window's also
 * its revision and retraction columns, WINDOW_COLUMNS.rev / .retracted, which CLOSING holds).
 */
function emitTree(ast: Node, qualifier: string, fn: string, session: boolean): { ast: Node; outputColumns: string[] | null } {
  const emitAst = structuredClone(ast) as Node;
  const e = emitAst.statements[0].node as Node;
  e.cte_map = { map: [] };
  e.from_table = { type: 'BASE_TABLE', alias: qualifier, sample: null, query_location: 0, schema_name: '', table_name: CLOSING, column_name_alias: [], catalog_name: '', at_clause: null };
  e.where_clause = null;
  const kept = (e.group_expressions as Node[]).filter((g) => !(isCall(g, WINDOW_CALLS) && fn !== 'time_bucket'));
  // A session's revision and retraction are one value per session: grouping by them splits no group.
  const added = [WINDOW_COLUMNS.start, WINDOW_COLUMNS.end, ...(session ? [WINDOW_COLUMNS.rev, WINDOW_COLUMNS.retracted] : [])];
  e.group_expressions = [...kept, ...added.map((c) => colref([c]))];
  e.group_sets = [e.group_expressions.map((_: unknown, i: number) => i)];
  for (const item of e.select_list as Node[]) {
    if (isCall(item, BOUNDS) && !item.alias) item.alias = BOUNDS[String(item.function_name).toLowerCase()].end ? 'window_end' : 'window_start';
  }
  replaceBounds([e.select_list, e.having, e.modifiers]);
  e.select_list.push(...added.map((c) => colref([c], c)));
  const shown = outputNames(e);
  return { ast: emitAst, outputColumns: shown ? shown.slice(0, -added.length) : null };
}

/** The text of the call at `at` in `sql`, up to its closing parenthesis. */
function callText(sql: string, at: number): string | undefined {
  const open = sql.indexOf('(', at);
  if (!Number.isFinite(at) || at <= 0 || open < 0) return undefined;
  let depth = 0;
  let quote = false;
  for (let i = open; i < sql.length; i++) {
    const c = sql[i];
    if (c === "'") quote = !quote;
    else if (!quote && c === '(') depth++;
    else if (!quote && c === ')' && --depth === 0) return sql.slice(at, i + 1).replace(/\s+/g, ' ');
  }
  return undefined;
}

/** Two argument lists that are the same expressions (their positions in the text aside). */
function sameArgs(a: Node[], b: Node[]): boolean {
  const strip = (x: unknown): unknown => JSON.parse(JSON.stringify(x, (k, v) => (k === 'query_location' ? undefined : v)));
  return JSON.stringify(strip(a)) === JSON.stringify(strip(b));
}

/**
 * A GROUP BY expression as what it groups by: an ordinal (GROUP BY 2) or a select-list alias
 * (GROUP BY u, for `user_id AS u`) stands for that select item's expression. A name that is
 * both an alias and a column of the input is taken as the alias here, where DuckDB takes the
 * column: give the two different names.
 */
export function resolveGroupKey(g: Node, selectList: Node[]): Node {
  if (g.class === 'CONSTANT' && g.value?.type?.id && /INT/.test(String(g.value.type.id))) {
    const item = selectList[Number(g.value.value) - 1];
    return item ? { ...item, alias: '' } : g;
  }
  if (g.class === 'COLUMN_REF' && (g.column_names as string[]).length === 1) {
    const name = String(g.column_names[0]).toLowerCase();
    const item = selectList.find((x) => String(x.alias ?? '').toLowerCase() === name);
    const plain = item?.class === 'COLUMN_REF' && String((item.column_names as string[]).at(-1)).toLowerCase() === name;
    if (item && !plain) return { ...item, alias: '' };
  }
  return g;
}

export function star(): Node {
  return { class: 'STAR', type: 'STAR', alias: '', query_location: 0, relation_name: '', exclude_list: [], replace_list: [], columns: false, expr: null, qualified_exclude_list: [], rename_list: [] };
}

/** Replaces TUMBLE_START(...) and the like, wherever they are, by the window's columns. */
function replaceBounds(e: unknown): void {
  if (!e || typeof e !== 'object') return;
  if (Array.isArray(e)) {
    for (const c of e) replaceBounds(c);
    return;
  }
  const x = e as Node;
  if (isCall(x, BOUNDS)) {
    const alias = x.alias;
    const col = BOUNDS[String(x.function_name).toLowerCase()].end ? WINDOW_COLUMNS.end : WINDOW_COLUMNS.start;
    for (const k of Object.keys(x)) delete x[k];
    Object.assign(x, colref([col], alias));
    return;
  }
  for (const v of Object.values(x)) if (v && typeof v === 'object') replaceBounds(v);
}
