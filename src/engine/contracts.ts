import type { DuckDBConnection } from '@duckdb/node-api';
import type { Logger } from 'pino';
import type { ConfigIssue } from '../errors.js';
import { MSG_COL } from '../sql/analyze.js';
import { ident, lit } from '../sql/quote.js';
import type { ColumnType, ContractKind, ContractPolicy, ModelContract } from '../project/contract-config.js';

export { CONTRACT_POLICIES, type ColumnType, type ContractKind, type ContractPolicy, type DeclaredColumn, type ModelContract } from '../project/contract-config.js';

/**
 * Resolves each declared type with DuckDB (`INT` becomes INTEGER, `TEXT` VARCHAR), so that it
 * compares with the types models output; an unknown type is an issue at its line.
 */
export async function resolveContractTypes(conn: DuckDBConnection, model: string, c: ModelContract | undefined): Promise<ConfigIssue[]> {
  const issues: ConfigIssue[] = [];
  if (!c) return issues;
  for (const [i, col] of c.columns.entries()) {
    if (!col.type) continue;
    try {
      const r = await conn.runAndReadAll(`SELECT typeof(NULL::${col.type})`);
      col.type = String(r.getRows()[0][0]);
    } catch (err) {
      const why = String((err as Error).message ?? err).split('\n')[0];
      issues.push({ file: col.file ?? 'config/models.yml', line: col.line, key: `overrides.${model}.columns.${i}.type`, message: `"${col.type}" is not a DuckDB type (${why})` });
    }
  }
  return issues;
}

/** A per-row check of a model's raw output against its contract. */
export interface ContractCheck {
  column: string;
  kind: ContractKind;
  policy: ContractPolicy;
  /** SQL: true for a row that breaks the contract. */
  cond: string;
  /** SQL: the reason, as text, for a row that does. */
  reason: string;
  /** type_change: the column's type in the model's output and the declared (or evolved) one. */
  from?: string;
  to?: string;
}

export interface SchemaChange {
  model: string;
  column: string;
  kind: ContractKind;
  from?: string;
  to: string;
}

/** How a model's raw output becomes its output, for one shape of its input. */
export interface ContractPlan {
  /** The output columns (without the message column). */
  columns: ColumnType[];
  /** The raw output is the output: no check, no cast, same columns in the same order. */
  passthrough: boolean;
  /** The select list over the raw output (the message column last). */
  select: string;
  checks: ContractCheck[];
  /** Declared columns the model does not produce (output as NULL). */
  missing: string[];
}

/** DuckDB's common type of two types (what a union of both holds). */
export type Supertype = (a: string, b: string) => Promise<string>;

const NESTED = /^(STRUCT|MAP|UNION)\(|\[\d*\]$/;
const NUMERIC = /^(TINYINT|SMALLINT|INTEGER|BIGINT|HUGEINT|UTINYINT|USMALLINT|UINTEGER|UBIGINT|UHUGEINT|FLOAT|DOUBLE|DECIMAL\(.*\))$/;

/** A supertype from DuckDB; a nested type and a scalar one meet in VARCHAR (no cast joins them). */
export function duckSupertype(conn: DuckDBConnection): Supertype {
  return async (a, b) => {
    if (a === b || b === '"NULL"') return a;
    if (a === '"NULL"') return b;
    if (NESTED.test(a) !== NESTED.test(b)) return 'VARCHAR';
    try {
      const r = await conn.runAndReadAll(`SELECT typeof(x) FROM (SELECT NULL::${a} AS x UNION ALL SELECT NULL::${b}) LIMIT 1`);
      return String(r.getRows()[0][0]);
    } catch {
      return 'VARCHAR';
    }
  };
}

/** SQL: true when a non-NULL value of `col` (type `from`) does not cast to `to`, or loses precision doing so. */
export function castFails(col: string, from: string, to: string): string {
  const c = ident(col);
  const lossy = NUMERIC.test(from) && NUMERIC.test(to) ? ` OR TRY_CAST(TRY_CAST(${c} AS ${to}) AS ${from}) IS DISTINCT FROM ${c}` : '';
  return `(${c} IS NOT NULL AND (TRY_CAST(${c} AS ${to}) IS NULL${lossy}))`;
}

function sqlText(s: string): string {
  return lit(s);
}

/**
 * Plans a model's output for one shape of its raw output. `established` is the schema its
 * earlier batches had (what its WAL segments hold): a column keeps its established type or
 * widens (never narrows), so that every segment of a flush unions into one schema.
 */
export async function planContract(raw: ColumnType[], contract: ModelContract | undefined, established: ColumnType[] | undefined, supertype: Supertype): Promise<ContractPlan> {
  const cols = raw.filter((c) => c.name !== MSG_COL);
  const rawBy = new Map(cols.map((c) => [c.name.toLowerCase(), c]));
  const estBy = new Map((established ?? []).map((c) => [c.name.toLowerCase(), c.type]));
  const out: ColumnType[] = [];
  const exprs: string[] = [];
  const checks: ContractCheck[] = [];
  const missing: string[] = [];
  const declared = contract?.columns ?? [];
  const declaredNames = new Set(declared.map((d) => d.name.toLowerCase()));
  for (const d of declared) {
    const r = rawBy.get(d.name.toLowerCase());
    const est = estBy.get(d.name.toLowerCase());
    let target = d.type;
    // A declared type evolved earlier (type_changes: evolve) stays evolved.
    if (target && est && est !== target && (await supertype(target, est)) === est) target = est;
    if (!r) {
      const t = target ?? est ?? 'VARCHAR';
      missing.push(d.name);
      out.push({ name: d.name, type: t });
      exprs.push(`NULL::${t} AS ${ident(d.name)}`);
      continue;
    }
    const as = r.name === d.name ? ident(r.name) : `${ident(r.name)} AS ${ident(d.name)}`;
    if (!target || target === r.type) {
      const keep = !target && est && est !== r.type ? await supertype(est, r.type) : r.type;
      out.push({ name: d.name, type: keep });
      exprs.push(keep === r.type ? as : `CAST(${ident(r.name)} AS ${keep}) AS ${ident(d.name)}`);
      continue;
    }
    const cond = castFails(r.name, r.type, target);
    const policy = contract!.typeChanges;
    checks.push({
      column: d.name,
      kind: 'type_change',
      policy,
      cond,
      reason: `${sqlText(`column "${d.name}" holds `)} || coalesce(left(TRY_CAST(${ident(r.name)} AS VARCHAR), 60), '?') || ${sqlText(` (${r.type}), which does not cast to its declared type ${target} (type_changes: ${policy})`)}`,
      from: r.type,
      to: target,
    });
    const cast = `TRY_CAST(${ident(r.name)} AS ${target})`;
    exprs.push(`${policy === 'discard_value' || policy === 'evolve' ? `CASE WHEN ${cond} THEN NULL ELSE ${cast} END` : cast} AS ${ident(d.name)}`);
    out.push({ name: d.name, type: target });
  }
  const policy = contract?.newColumns ?? 'evolve';
  for (const r of cols) {
    if (declaredNames.has(r.name.toLowerCase())) continue;
    if (policy === 'evolve') {
      const est = estBy.get(r.name.toLowerCase());
      const t = est && est !== r.type ? await supertype(est, r.type) : r.type;
      out.push({ name: r.name, type: t });
      exprs.push(t === r.type ? ident(r.name) : `CAST(${ident(r.name)} AS ${t}) AS ${ident(r.name)}`);
      continue;
    }
    checks.push({
      column: r.name,
      kind: 'new_column',
      policy,
      cond: `(${ident(r.name)} IS NOT NULL)`,
      reason: sqlText(`column "${r.name}" (${r.type}) is not declared in the contract (new_columns: ${policy})`),
    });
  }
  const passthrough = checks.length === 0 && out.length === cols.length && out.every((c, i) => c.name === cols[i].name && c.type === cols[i].type);
  return { columns: out, passthrough, select: [...exprs, ident(MSG_COL)].join(', '), checks, missing };
}

/** The changes from `before` (undefined: nothing established yet, so no change) to `after`. */
export function schemaChanges(model: string, before: ColumnType[] | undefined, after: ColumnType[]): SchemaChange[] {
  if (!before) return [];
  const by = new Map(before.map((c) => [c.name.toLowerCase(), c.type]));
  const out: SchemaChange[] = [];
  for (const c of after) {
    const old = by.get(c.name.toLowerCase());
    if (old === undefined) out.push({ model, column: c.name, kind: 'new_column', to: c.type });
    else if (old !== c.type) out.push({ model, column: c.name, kind: 'type_change', from: old, to: c.type });
  }
  return out;
}

/** `before` with the columns of `after` added or retyped (a column never leaves: earlier segments hold it). */
export function mergeSchema(before: ColumnType[] | undefined, after: ColumnType[]): ColumnType[] {
  const out = [...(before ?? [])];
  for (const c of after) {
    const i = out.findIndex((x) => x.name.toLowerCase() === c.name.toLowerCase());
    if (i < 0) out.push(c);
    else out[i] = c;
  }
  return out;
}

/** What the contracts did to one batch: counted and logged by reportContracts(). */
export interface ContractReport {
  changes: SchemaChange[];
  /** Rows breaking a contract, per model/column/kind/policy (freeze: their messages went to the DLQ). */
  violations: { model: string; column: string; kind: ContractKind; policy: ContractPolicy; rows: number }[];
  /** Declared columns a model did not produce (output as NULL). */
  missing: { model: string; column: string }[];
}

export function emptyReport(): ContractReport {
  return { changes: [], violations: [], missing: [] };
}

/** A row of a model that a `freeze` contract sends to the DLQ: its message and the reason. */
export interface ContractFailure {
  index: number;
  column: string;
  kind: ContractKind;
  error: string;
}

/** Temporary table holding a contracted model's raw output while its contract is applied. */
const RAW = '__sluice_contract_raw';

/**
 * Runs a model whose plan is not a passthrough: its raw output, the contract's checks (one
 * scan), then its output (to table `table`, or straight to the Parquet file `target`). Returns
 * the rows written, or the rows `freeze` refuses (nothing is written then: the caller removes
 * their messages and runs the batch again), or the columns whose types must evolve.
 */
export async function applyContract(
  conn: DuckDBConnection,
  model: string,
  sql: string,
  plan: ContractPlan,
  out: { table: string; target?: string },
  report: ContractReport,
): Promise<{ rows: number } | { failures: ContractFailure[] } | { evolve: ContractCheck[] }> {
  await conn.run(`CREATE OR REPLACE TEMP TABLE ${RAW} AS ${sql}`);
  try {
    let where = '';
    if (plan.checks.length) {
      const r = await conn.runAndReadAll(`SELECT ${plan.checks.map((c) => `count(*) FILTER (WHERE ${c.cond})`).join(', ')} FROM ${RAW}`);
      const counts = r.getRows()[0].map(Number);
      const hit = plan.checks.filter((_, i) => counts[i] > 0);
      const frozen = hit.filter((c) => c.policy === 'freeze');
      if (frozen.length) {
        const reasons = frozen.map((c) => `CASE WHEN ${c.cond} THEN ${c.reason} END`).join(', ');
        const kinds = frozen.map((c, i) => `CASE WHEN ${c.cond} THEN ${i} END`).join(', ');
        const rows = await conn.runAndReadAll(
          `SELECT ${ident(MSG_COL)}, first(concat_ws('; ', ${reasons})), first(coalesce(${kinds})) FROM ${RAW} WHERE ${frozen.map((c) => c.cond).join(' OR ')} GROUP BY 1 ORDER BY 1`,
        );
        return {
          failures: rows.getRows().map(([id, reason, k]) => {
            const c = frozen[Number(k)];
            return { index: Number(id), column: c.column, kind: c.kind, error: `contract of model ${model}: ${String(reason)}` };
          }),
        };
      }
      const evolve = hit.filter((c) => c.policy === 'evolve');
      if (evolve.length) return { evolve };
      for (const c of hit) {
        const n = counts[plan.checks.indexOf(c)];
        report.violations.push({ model, column: c.column, kind: c.kind, policy: c.policy, rows: n });
      }
      const drop = hit.filter((c) => c.policy === 'discard_row');
      if (drop.length) where = ` WHERE NOT (${drop.map((c) => c.cond).join(' OR ')})`;
    }
    for (const column of plan.missing) if (!report.missing.some((m) => m.model === model && m.column === column)) report.missing.push({ model, column });
    const select = `SELECT ${plan.select} FROM ${RAW}${where}`;
    const r = out.target ? await conn.run(`COPY (${select}) TO ${lit(out.target)} (FORMAT parquet, COMPRESSION lz4_raw)`) : await conn.run(`CREATE OR REPLACE TABLE ${out.table} AS ${select}`);
    return { rows: Number(r.rowsChanged) };
  } finally {
    await conn.run(`DROP TABLE IF EXISTS ${RAW}`);
  }
}

/**
 * The schemas models' outputs have established (persisted in the WAL state, so a restart keeps
 * widened types and does not report old changes again) and the plans for the current input shape.
 */
export class SchemaTracker {
  private established: Record<string, ColumnType[]> = {};
  private plans = new Map<string, { key: string; plan: ContractPlan }>();
  /** Changes since the last drain (one batch). */
  private changes: SchemaChange[] = [];

  constructor(
    private readonly contracts: Map<string, ModelContract>,
    private readonly supertype: Supertype,
  ) {}

  load(schemas: Record<string, ColumnType[]> | undefined): void {
    this.established = structuredClone(schemas ?? {});
    this.plans.clear();
  }

  /** The schemas as of now, for the WAL commit of this batch (later batches do not change it: columns lists are replaced, never edited). */
  snapshot(): Record<string, ColumnType[]> {
    return { ...this.established };
  }

  contract(model: string): ModelContract | undefined {
    return this.contracts.get(model);
  }

  /** The cached plan of a model for input shape `key`, if any. */
  cached(model: string, key: string): ContractPlan | undefined {
    const p = this.plans.get(model);
    return p && p.key === key ? p.plan : undefined;
  }

  /** Plans a model for raw output `raw` (input shape `key`). */
  async plan(model: string, key: string, raw: ColumnType[]): Promise<ContractPlan> {
    const plan = await planContract(raw, this.contracts.get(model), this.established[model], this.supertype);
    this.plans.set(model, { key, plan });
    return plan;
  }

  /**
   * A batch staged rows of `model` with `columns`: they join its schema, and the changes are
   * recorded. Only batches with rows count: a model that output nothing (its types guessed
   * from an empty list, say) has nothing in the WAL to agree with.
   */
  establish(model: string, columns: ColumnType[]): void {
    const before = this.established[model];
    const changes = schemaChanges(model, this.base(model), columns);
    if (before && changes.length === 0) return;
    this.changes.push(...changes);
    this.established[model] = mergeSchema(before, columns);
  }

  /** What a model's output is compared with: its schema so far, else its fully typed declaration. */
  private base(model: string): ColumnType[] | undefined {
    const contract = this.contracts.get(model);
    return this.established[model] ?? (contract?.columns.length && contract.columns.every((c) => c.type) ? contract.columns.map((c) => ({ name: c.name, type: c.type! })) : undefined);
  }

  /** type_changes: evolve: the checked columns widen to hold the values that did not cast. */
  async evolve(model: string, checks: ContractCheck[]): Promise<void> {
    const widened: ColumnType[] = [];
    for (const c of checks) {
      const to = await this.supertype(c.to!, c.from!);
      widened.push({ name: c.column, type: to });
      this.changes.push({ model, column: c.column, kind: 'type_change', from: c.to, to });
    }
    this.established[model] = mergeSchema(this.base(model), widened);
    // Models downstream read this one's output: every plan is made again.
    this.plans.clear();
  }

  drainChanges(): SchemaChange[] {
    const out = this.changes;
    this.changes = [];
    return out;
  }
}

/** Counts and logs what the contracts did to a batch (one place, so logs and metrics agree). */
export function reportContracts(
  r: ContractReport,
  log: Logger,
  count: { change: (model: string, kind: ContractKind) => void; violation: (model: string, kind: ContractKind, policy: ContractPolicy, rows: number) => void },
): void {
  for (const c of r.changes) {
    count.change(c.model, c.kind);
    log.info(
      { model: c.model, column: c.column, kind: c.kind, from: c.from, to: c.to },
      c.kind === 'new_column' ? `schema change: model ${c.model} gains column ${c.column} ${c.to}` : `schema change: model ${c.model} column ${c.column} ${c.from} -> ${c.to}`,
    );
  }
  for (const v of r.violations) {
    count.violation(v.model, v.kind, v.policy, v.rows);
    if (v.policy !== 'freeze')
      log.debug(
        { model: v.model, column: v.column, kind: v.kind, policy: v.policy, rows: v.rows },
        `contract: ${v.rows} row(s) of ${v.model} ${v.policy === 'discard_row' ? 'dropped' : 'lost a value'} (${v.kind} ${v.column})`,
      );
  }
}

/** A fixture run's contract findings, as validate reports them (see src/cli/contract-check.ts). */
export interface ContractFindings {
  failures: { model?: string; column?: string; kind?: ContractKind; error: string; message: Record<string, unknown> }[];
  missing: { model: string; column: string }[];
  fixtures: string[];
}

/**
 * Issues for declared columns a model does not produce and for values that break a contract
 * on the fixtures, each at the line of the column (or of `contract:`) in config/models.yml.
 */
export function contractIssues(models: { name: string; contract?: ModelContract }[], f: ContractFindings): ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  const on = `on the fixtures (${f.fixtures.join(', ')})`;
  for (const miss of f.missing) {
    const c = models.find((m) => m.name === miss.model)?.contract;
    const col = c?.columns.find((x) => x.name === miss.column);
    issues.push({
      file: col?.file ?? c?.file ?? 'config/models.yml',
      line: col?.line,
      key: `overrides.${miss.model}.columns`,
      message: `model ${miss.model} does not produce declared column "${miss.column}" ${on}`,
    });
  }
  const seen = new Set<string>();
  for (const x of f.failures) {
    if (!x.kind || !x.model) continue;
    const c = models.find((m) => m.name === x.model)?.contract;
    const id = `${x.model}\0${x.column}\0${x.kind}`;
    if (!c || seen.has(id)) continue;
    seen.add(id);
    const i = c.columns.findIndex((col) => col.name === x.column);
    const where =
      x.kind === 'type_change' && i >= 0
        ? { file: c.columns[i].file ?? 'config/models.yml', line: c.columns[i].line, key: `overrides.${x.model}.columns.${i}.type` }
        : { file: c.file ?? 'config/models.yml', line: c.line, key: `overrides.${x.model}.contract.new_columns` };
    const msg = x.error.replace(/ \(type_changes: freeze\)$/, '');
    const which = x.message.line !== undefined ? `line ${String(x.message.line)}` : `message ${String(x.message.index ?? '?')}`;
    issues.push({ ...where, message: `${msg} ${on}, ${which}${x.kind === 'type_change' ? ': a type mismatch' : ''}` });
  }
  return issues;
}
