import type { DuckDBConnection } from '@duckdb/node-api';
import { colref, deserialize, exprSql, outputNames, rewriteQuery, walkExpr, WINDOW_COLUMNS, type Ctx, type Node } from './parse-tree.js';
import { MODEL_SCHEMA, SOURCE_SCHEMA } from './template.js';

// Stream-stream interval joins: a model joining two relations that read the batch (incoming, a
// source, a ref, or CTEs and subqueries of them), whose ON condition bounds one side's time by
// the other's, as Flink SQL writes it:
//   FROM {{ ref('orders') }} o LEFT JOIN {{ ref('payments') }} p
//     ON p.order_id = o.id AND p.ts BETWEEN o.ts AND o.ts + INTERVAL '10' MINUTE
// The engine (engine/joins.ts) buffers each side's rows as state until the watermark passes
// the bound, and runs the model's own SQL over the buffered rows and the batch's: a pair is
// emitted once, when the later of its two rows arrives, and an outer join's unmatched row when
// the watermark passes its bound. Without a time bound, a join of two batch relations is a
// join within each message, as before.

export type JoinKind = 'inner' | 'left' | 'right' | 'full';

/** One side of an interval join. */
export interface JoinSide {
  /** How the model names the side (its alias). */
  alias: string;
  /** The side's rows of the batch, every column and MSG_COL (SQL). */
  input: string;
  /** The side's time in the bound (SQL over the side, qualified by `alias`). */
  time: string;
  /**
   * The sources and models the side reads (`sluice_source.<name>`, `sluice_model.<name>`), through
   * the CTEs and subqueries it names: which source's batches feed it.
   */
  reads: { schema: string; name: string }[];
}

export interface IntervalJoinQuery {
  kind: JoinKind;
  left: JoinSide;
  right: JoinSide;
  /** The bound: left time − right time lies in [lower, upper] (microseconds). */
  lower: number;
  upper: number;
  /** The bound as `models list` shows it: `o.ts − p.ts from -10 minutes to 2 minutes`. */
  written: string;
  /**
   * The model over relations JOIN_LEFT / JOIN_RIGHT (named so in the SQL, aliased as the model
   * aliases its sides): `emit` with the model's join kind, `emitInner` as an inner join, and
   * `match` the pairs the ON condition makes, as (WINDOW_COLUMNS.jid of the left row, of the right).
   */
  emit: string;
  emitInner: string;
  match: string;
}

/** What intervalJoinQuery() says of a model. */
export interface JoinAnalysis {
  stateful: string[];
  outputColumns: string[] | null;
  join?: IntervalJoinQuery;
  /** The model is a stream join but does something one cannot (in `stateful`). */
  joined?: boolean;
}

const THREE = 'a stream join joins two relations: write it as a model of its own, and join the third relation in a model that refs it';

/** Names the emission SQL reads its two sides by (the engine replaces them per pass). */
export const JOIN_LEFT = '__sluice_join_left';
export const JOIN_RIGHT = '__sluice_join_right';

const KINDS: Record<string, JoinKind> = { INNER: 'inner', LEFT: 'left', RIGHT: 'right', FULL: 'full', OUTER: 'full' };
const FLIP: Record<string, string> = {
  COMPARE_GREATERTHANOREQUALTO: 'COMPARE_LESSTHANOREQUALTO',
  COMPARE_GREATERTHAN: 'COMPARE_LESSTHAN',
  COMPARE_LESSTHANOREQUALTO: 'COMPARE_GREATERTHANOREQUALTO',
  COMPARE_LESSTHAN: 'COMPARE_GREATERTHAN',
};

/**
 * A model that joins two batch relations with a time bound, analysed (undefined: it is no
 * stream join, and is analysed as any other model).
 */
export async function intervalJoinQuery(conn: DuckDBConnection, ast: Node, aggs: Set<string>): Promise<JoinAnalysis | undefined> {
  const root = ast.statements[0].node as Node;
  if (root.type !== 'SELECT_NODE' || root.from_table?.type !== 'JOIN') return undefined;
  const j = root.from_table as Node;
  const outputColumns = outputNames(root);
  // A stream join nested in a join with a third relation (a reference table, say) would run per message.
  const nested = async () => ((await nestedStreamJoin(conn, ast, j, aggs)) ? { stateful: [THREE], outputColumns, joined: true } : undefined);
  if (j.ref_type !== 'REGULAR' || !j.condition) return nested();
  for (const [i, side] of [j.left, j.right].entries()) {
    if (side.type === 'SUBQUERY' && !side.alias) side.alias = `__sluice_join_${i === 0 ? 'l' : 'r'}`;
  }
  const aliases = [j.left, j.right].map((s: Node) => aliasesOf(s));
  const bound = await timeBound(conn, j.condition as Node, aliases);
  if (!bound) return nested();
  const problems: string[] = [];
  if (j.left.type === 'JOIN' || j.right.type === 'JOIN') problems.push(THREE);
  const inputs = [j.left, j.right].map((side: Node) => sideInput(ast, side, aggs));
  if (inputs.some((x) => x === undefined)) {
    // A reference table (or a constant relation) on one side: a lookup join, the time bound a filter.
    if (j.left.type !== 'JOIN' && j.right.type !== 'JOIN') return undefined;
  }
  const kind = KINDS[String(j.join_type)];
  if (!kind) problems.push(`${String(j.join_type)} JOIN is not supported as a stream join (inner, left, right and full joins are)`);
  problems.push(...bound.problems);
  // What the model does over the joined rows must be per row, as any model's.
  const probe = structuredClone(ast) as Node;
  const ctx: Ctx = { aggs, stateful: [], cteMsg: new Set(), sq: 0 };
  rewriteQuery(probe.statements[0].node, ctx);
  problems.push(...ctx.stateful.filter((s) => !s.includes('JOIN pairs rows')));
  if (problems.length || !kind || bound.lower === undefined || bound.upper === undefined) {
    return { stateful: [...new Set(problems)], outputColumns, joined: true };
  }
  const [l, r] = [j.left, j.right].map((s: Node) => String(s.alias || s.table_name));
  const emit = await deserialize(conn, emitTree(ast, l, r, 'as-written'));
  return {
    stateful: [],
    outputColumns,
    join: {
      kind,
      left: { alias: l, input: await deserialize(conn, inputs[0]!), time: bound.times[0], reads: sideReads(ast, j.left) },
      right: { alias: r, input: await deserialize(conn, inputs[1]!), time: bound.times[1], reads: sideReads(ast, j.right) },
      lower: bound.lower,
      upper: bound.upper,
      written: bound.written,
      emit,
      emitInner: await deserialize(conn, emitTree(ast, l, r, 'inner')),
      match: await deserialize(conn, emitTree(ast, l, r, 'match')),
    },
  };
}

/** True when a join below `j` bounds the time of one batch relation by another's. */
async function nestedStreamJoin(conn: DuckDBConnection, ast: Node, j: Node, aggs: Set<string>): Promise<boolean> {
  for (const side of [j.left, j.right] as Node[]) {
    if (side.type !== 'JOIN' || side.ref_type !== 'REGULAR' || !side.condition) continue;
    const bound = await timeBound(conn, side.condition as Node, [aliasesOf(side.left), aliasesOf(side.right)]);
    if (bound && sideInput(ast, side.left, aggs) && sideInput(ast, side.right, aggs)) return true;
    if (await nestedStreamJoin(conn, ast, side, aggs)) return true;
  }
  return false;
}

/**
 * The sources and models (tables of schema SOURCE_SCHEMA or MODEL_SCHEMA) one side of the join
 * reads: those it names, and those of the model's CTEs it names, followed through.
 */
function sideReads(ast: Node, side: Node): JoinSide['reads'] {
  const ctes = new Map<string, Node>();
  const collect = (x: unknown): void => {
    if (Array.isArray(x)) for (const v of x) collect(v);
    else if (x && typeof x === 'object') {
      for (const c of ((x as Node).cte_map?.map ?? []) as Node[]) ctes.set(String(c.key).toLowerCase(), c.value);
      for (const v of Object.values(x)) collect(v);
    }
  };
  collect(ast);
  const reads = new Map<string, JoinSide['reads'][number]>();
  const followed = new Set<string>();
  const walk = (x: unknown): void => {
    if (Array.isArray(x)) for (const v of x) walk(v);
    else if (x && typeof x === 'object') {
      const n = x as Node;
      if (n.type === 'BASE_TABLE' && typeof n.table_name === 'string') {
        const schema = String(n.schema_name ?? '');
        const cte = n.table_name.toLowerCase();
        if (schema === SOURCE_SCHEMA || schema === MODEL_SCHEMA) reads.set(`${schema}.${n.table_name}`, { schema, name: n.table_name });
        else if (!schema && ctes.has(cte) && !followed.has(cte)) {
          followed.add(cte);
          walk(ctes.get(cte));
        }
      }
      for (const v of Object.values(n)) walk(v);
    }
  };
  walk(side);
  return [...reads.values()];
}

/** The rows of one side of the join, with every column and MSG_COL (undefined: it does not read the batch). */
function sideInput(ast: Node, side: Node, aggs: Set<string>): Node | undefined {
  if (side.type === 'JOIN') return undefined;
  const copy = structuredClone(ast) as Node;
  const n = copy.statements[0].node as Node;
  const alias = String(side.alias || side.table_name);
  Object.assign(n, {
    select_list: [
      { class: 'STAR', type: 'STAR', alias: '', query_location: 0, relation_name: alias, exclude_list: [], replace_list: [], columns: false, expr: null, qualified_exclude_list: [], rename_list: [] },
    ],
    from_table: structuredClone(side),
    where_clause: null,
    group_expressions: [],
    group_sets: [],
    having: null,
    modifiers: [],
    qualify: null,
  });
  const ctx: Ctx = { aggs, stateful: [], cteMsg: new Set(), sq: 0 };
  if (!rewriteQuery(n, ctx) || ctx.stateful.length) return undefined;
  return copy;
}

interface Bound {
  /** The time of each side (SQL). */
  times: [string, string];
  lower?: number;
  upper?: number;
  written: string;
  problems: string[];
}

/**
 * The time bound of an ON condition: its conjuncts comparing an expression of one side with
 * one of the other (`a.t BETWEEN b.t - x AND b.t + y`, `a.t >= b.t - x`, ...), each side's time
 * plus or minus a constant interval. Undefined when no conjunct compares the two sides' times.
 */
async function timeBound(conn: DuckDBConnection, condition: Node, aliases: string[][]): Promise<Bound | undefined> {
  const comparisons: { op: string; a: Node; b: Node }[] = [];
  for (const c of conjuncts(condition)) {
    if (c.class === 'BETWEEN') {
      comparisons.push({ op: 'COMPARE_GREATERTHANOREQUALTO', a: c.input, b: c.lower });
      comparisons.push({ op: 'COMPARE_LESSTHANOREQUALTO', a: c.input, b: c.upper });
    } else if (c.class === 'COMPARISON' && c.type in FLIP) comparisons.push({ op: c.type, a: c.left, b: c.right });
  }
  const problems: string[] = [];
  const times: (string | undefined)[] = [undefined, undefined];
  let lower: number | undefined;
  let upper: number | undefined;
  for (let { op, a, b } of comparisons) {
    let sa = sideOf(a, aliases);
    let sb = sideOf(b, aliases);
    if (sa === 1 && sb === 0) {
      [a, b, sa, sb] = [b, a, sb, sa];
      op = FLIP[op];
    }
    if (sa !== 0 || sb !== 1) continue;
    const ta = split(a);
    const tb = split(b);
    // left + oa  op  right + ob   <=>   left − right  op  ob − oa
    const us = await intervalUs(conn, tb.offset, ta.offset);
    if (typeof us === 'string') {
      problems.push(us);
      continue;
    }
    for (const [i, base] of [ta.base, tb.base].entries()) {
      const s = await exprSql(conn, base);
      if (times[i] === undefined) times[i] = s;
      else if (times[i] !== s) problems.push(`the time bound compares ${times[i]} and ${s}: a stream join bounds one time of each side`);
    }
    if (op === 'COMPARE_GREATERTHANOREQUALTO' || op === 'COMPARE_GREATERTHAN') lower = lower === undefined ? us : Math.max(lower, us);
    else upper = upper === undefined ? us : Math.min(upper, us);
  }
  if (times[0] === undefined || times[1] === undefined) return undefined;
  if (lower === undefined || upper === undefined) {
    problems.push(
      `a stream join needs its time bound on both sides, so that its state can be let go: ${lower === undefined ? 'no lower' : 'no upper'} bound on ${times[0]} − ${times[1]} (write ${times[0]} BETWEEN ${times[1]} - INTERVAL ... AND ${times[1]} + INTERVAL ...)`,
    );
  } else if (lower > upper) problems.push(`the time bound is empty: ${times[0]} − ${times[1]} would be at least ${lower / 1e6} s and at most ${upper / 1e6} s`);
  const text = lower !== undefined && upper !== undefined ? `${times[0]} − ${times[1]} from ${duration(lower)} to ${duration(upper)}` : '';
  return { times: [times[0], times[1]], lower, upper, written: text, problems };
}

/** Microseconds in the largest unit that divides them: `10 minutes`, `-2 hours`, `1500 milliseconds`. */
function duration(us: number): string {
  const units: [number, string][] = [
    [86_400e6, 'day'],
    [3_600e6, 'hour'],
    [60e6, 'minute'],
    [1e6, 'second'],
    [1e3, 'millisecond'],
    [1, 'microsecond'],
  ];
  if (us === 0) return '0 seconds';
  const [size, name] = units.find(([u]) => us % u === 0)!;
  const n = us / size;
  return `${n} ${name}${Math.abs(n) === 1 ? '' : 's'}`;
}

function conjuncts(x: Node): Node[] {
  if (x.class === 'CONJUNCTION' && x.type === 'CONJUNCTION_AND') return (x.children as Node[]).flatMap(conjuncts);
  return [x];
}

/** The names (lower case) a FROM item's columns are qualified by: its alias, or a join's relations' aliases. */
function aliasesOf(x: Node): string[] {
  if (x.type === 'JOIN') return [...aliasesOf(x.left), ...aliasesOf(x.right)];
  return [String(x.alias || x.table_name || '').toLowerCase()];
}

/** Which side an expression reads: 0 or 1, -1 for none, -2 for both or a column of neither (an unqualified one). */
function sideOf(x: Node, aliases: string[][]): number {
  const seen = new Set<number>();
  let unknown = false;
  walkExpr(x, (n) => {
    if (n.class !== 'COLUMN_REF') return;
    const names = n.column_names as string[];
    const q = names.length >= 2 ? String(names[names.length - 2]).toLowerCase() : undefined;
    const i = q === undefined ? -1 : aliases.findIndex((a) => a.includes(q));
    if (i < 0) unknown = true;
    else seen.add(i);
  });
  if (unknown || seen.size > 1) return -2;
  return seen.size === 0 ? -1 : [...seen][0];
}

/** `t + c` / `t - c` / `c + t` with c constant: t, and c as SQL of a signed interval (null: none). */
function split(x: Node): { base: Node; offset: Node | null } {
  if (x.class === 'FUNCTION' && (x.function_name === '+' || x.function_name === '-') && (x.children as Node[]).length === 2) {
    const [p, q] = x.children as Node[];
    const constant = (n: Node) => {
      let cols = false;
      walkExpr(n, (y) => {
        if (y.class === 'COLUMN_REF') cols = true;
      });
      return !cols;
    };
    if (constant(q))
      return {
        base: p,
        offset:
          x.function_name === '+'
            ? q
            : {
                class: 'FUNCTION',
                type: 'FUNCTION',
                alias: '',
                query_location: 0,
                function_name: '-',
                schema: '',
                children: [q],
                filter: null,
                order_bys: { type: 'ORDER_MODIFIER', orders: [] },
                distinct: false,
                is_operator: true,
                export_state: false,
                catalog: '',
              },
      };
    if (x.function_name === '+' && constant(p)) return { base: q, offset: p };
  }
  return { base: x, offset: null };
}

/** (b − a) in microseconds, of two constant intervals (null: zero); a message when one is not an interval of fixed length. */
async function intervalUs(conn: DuckDBConnection, b: Node | null, a: Node | null): Promise<number | string> {
  let us = 0;
  for (const [sign, n] of [
    [1, b],
    [-1, a],
  ] as const) {
    if (!n) continue;
    const text = await exprSql(conn, n);
    try {
      const r = await conn.runAndReadAll(`SELECT epoch_us(x), datepart('month', x) + 12 * datepart('year', x) FROM (SELECT CAST(${text} AS INTERVAL) AS x)`);
      const [v, months] = r.getRows()[0].map(Number);
      if (months !== 0) return `the time bound's ${text} counts months, which have no fixed length: give it in days or less`;
      us += sign * v;
    } catch {
      return `the time bound adds ${text} to a time: a stream join's bound adds or takes an INTERVAL`;
    }
  }
  return us;
}

/**
 * The model over JOIN_LEFT / JOIN_RIGHT: as written, as an inner join, or (`match`) the pairs
 * of row ids the ON condition makes (its WHERE and select list left out).
 */
function emitTree(ast: Node, l: string, r: string, form: 'as-written' | 'inner' | 'match'): Node {
  const copy = structuredClone(ast) as Node;
  const e = copy.statements[0].node as Node;
  const j = e.from_table as Node;
  const table = (name: string, alias: string): Node => ({
    type: 'BASE_TABLE',
    alias,
    sample: null,
    query_location: 0,
    schema_name: '',
    table_name: name,
    column_name_alias: [],
    catalog_name: '',
    at_clause: null,
  });
  // The sides are read from the buffers: the CTEs that made them are not needed.
  e.cte_map = { map: [] };
  j.left = table(JOIN_LEFT, l);
  j.right = table(JOIN_RIGHT, r);
  if (form !== 'as-written') j.join_type = 'INNER';
  if (form === 'match') {
    Object.assign(e, {
      select_list: [colref([l, WINDOW_COLUMNS.jid], '__l'), colref([r, WINDOW_COLUMNS.jid], '__r')],
      where_clause: null,
      modifiers: [],
      qualify: null,
    });
  }
  return copy;
}
