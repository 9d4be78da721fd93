import type { DuckDBConnection } from '@duckdb/node-api';
import type { Logger } from 'pino';
import { SluiceError } from '../errors.js';
import { MSG_COL } from '../sql/analyze.js';
import { fileList, ident, lit } from '../sql/quote.js';
import { MODEL_SCHEMA } from '../sql/template.js';
import { cleanError, type BatchOutcome, type MessageFailure } from './executor.js';
import type { ModelDef, Project } from '../project/project-loader.js';
import type { DataTest } from '../project/data-test-config.js';
import { loadReferences, REF_SCHEMA } from './references.js';

/** Failing rows shown per test (reports, logs, the fail message). */
const EXAMPLES = 3;

export interface TestResult {
  test: DataTest;
  /** Rows that fail the test. */
  failing: number;
  /** A few of them (the model's columns). */
  examples: Record<string, unknown>[];
  /** The batch indexes of the messages whose rows fail (on_failure: dlq only). */
  messages: number[];
}

/** Why a row fails, for DLQ errors and reports. */
export function failureText(t: DataTest): string {
  const c = t.column;
  switch (t.kind) {
    case 'not_null':
      return `${c} is NULL`;
    case 'unique':
      return `${c} is not unique within the batch`;
    case 'accepted_values':
      return `${c} is not one of [${t.values!.join(', ')}]`;
    case 'range':
      return `${c} is outside ${t.min ?? '-inf'}..${t.max ?? 'inf'}`;
    case 'regex':
      return `${c} does not match /${t.pattern}/`;
    case 'relationships':
      return `${c} has no match in ${t.to}.${t.field}`;
    case 'expression':
      return `${t.expression} is false`;
  }
}

const where = (t: DataTest) => `${t.file ?? 'config/models.yml'}${t.line ? `:${t.line}` : ''}`;

/** The SQL condition true for a failing row (NULL counts as passing, except for not_null). */
function failCondition(t: DataTest): string {
  const c = t.column === undefined ? '' : `__t.${ident(t.column)}`;
  switch (t.kind) {
    case 'not_null':
      return `${c} IS NULL`;
    case 'unique':
      return `${c} IS NOT NULL AND count(*) OVER (PARTITION BY ${c}) > 1`;
    // TRY_CAST: a value of another type fails the test; it never makes the query (and the run) fail.
    case 'accepted_values': {
      const v = t.values!;
      const as = v.every((x) => typeof x === 'number') ? 'DOUBLE' : v.every((x) => typeof x === 'boolean') ? 'BOOLEAN' : undefined;
      if (as) return `${c} IS NOT NULL AND coalesce(TRY_CAST(${c} AS ${as}) NOT IN (${v.join(', ')}), true)`;
      return `CAST(${c} AS VARCHAR) NOT IN (${v.map((x) => lit(String(x))).join(', ')})`;
    }
    case 'range': {
      const n = `TRY_CAST(${c} AS DOUBLE)`;
      const out = [t.min !== undefined ? `${n} < ${t.min}` : '', t.max !== undefined ? `${n} > ${t.max}` : ''].filter(Boolean).join(' OR ');
      return `${c} IS NOT NULL AND (${n} IS NULL OR ${out})`;
    }
    case 'regex':
      return `NOT regexp_matches(CAST(${c} AS VARCHAR), ${lit(t.pattern!)})`;
    case 'relationships':
      return `${c} IS NOT NULL AND CAST(${c} AS VARCHAR) NOT IN (SELECT CAST(${ident(t.field!)} AS VARCHAR) FROM ${REF_SCHEMA}.${ident(t.to!)} WHERE ${ident(t.field!)} IS NOT NULL)`;
    case 'expression':
      return `NOT (${t.expression})`;
  }
}

/**
 * One aggregate over a model's rows in `table` saying, per test, whether some row fails it:
 * a plain scan (`unique` as count against count(DISTINCT), no window), so that a batch that
 * passes costs one cheap query.
 */
export function screenQuery(tests: DataTest[], table: string): string {
  const cols = tests.map((t) => (t.kind === 'unique' ? `count(__t.${ident(t.column!)}) - count(DISTINCT __t.${ident(t.column!)})` : `count_if(${failCondition(t)})`));
  return `SELECT ${cols.join(', ')} FROM ${table} AS __t`;
}

/**
 * One query detailing the tests of a model that fail over its rows in `table`: the rows' flags
 * are computed in one scan, and only failing rows are aggregated (counts, a few examples, and
 * the failing messages of dlq tests).
 */
export function testQuery(tests: DataTest[], table: string): string {
  const flags = tests.map((t, i) => `coalesce(${failCondition(t)}, false) AS __f${i}`).join(', ');
  const aggs = tests.flatMap((t, i) => [
    `count_if(__f${i})`,
    `min_by(to_json(__row), __m, ${EXAMPLES}) FILTER (WHERE __f${i})`,
    t.onFailure === 'dlq' ? `list(DISTINCT __m) FILTER (WHERE __f${i})` : 'NULL',
  ]);
  return `WITH __flags AS (SELECT __t AS __row, __t.${MSG_COL} AS __m, ${flags} FROM ${table} AS __t) ` + `SELECT ${aggs.join(', ')} FROM __flags WHERE ${tests.map((_, i) => `__f${i}`).join(' OR ')}`;
}

/**
 * Runs a model's data tests over a table of its rows (with the message column): one screening
 * query for all of them, then, only when some fail, one query detailing those.
 */
export async function runTests(conn: DuckDBConnection, tests: DataTest[], table: string): Promise<TestResult[]> {
  if (tests.length === 0) return [];
  const screen = await named(conn, tests, table, screenQuery);
  const failed = tests.filter((_, i) => Number(screen[i]) > 0);
  const detail = failed.length ? await named(conn, failed, table, testQuery) : [];
  return tests.map((test) => {
    const i = failed.indexOf(test);
    if (i < 0) return { test, failing: 0, examples: [], messages: [] };
    const examples = ((detail[i * 3 + 1] as string[] | null) ?? []).map((j) => {
      const o = JSON.parse(j) as Record<string, unknown>;
      delete o[MSG_COL];
      return o;
    });
    const messages = ((detail[i * 3 + 2] as unknown[] | null) ?? []).map(Number).sort((a, b) => a - b);
    return { test, failing: Number(detail[i * 3]), examples, messages };
  });
}

/** The one row of a query over `tests`; when it fails, the error names the test at fault. */
async function named(conn: DuckDBConnection, tests: DataTest[], table: string, sql: (t: DataTest[], table: string) => string): Promise<unknown[]> {
  try {
    return (await conn.runAndReadAll(sql(tests, table))).getRowsJS()[0];
  } catch (err) {
    for (const t of tests) {
      try {
        await conn.run(sql([t], table));
      } catch (e) {
        throw new SluiceError('CONFIG', `${where(t)}: data test ${t.name} of model ${t.model}: ${cleanError(e)}`);
      }
    }
    throw err;
  }
}

export interface TestSink {
  log: Logger;
  /** Counts failing rows (sluice_data_test_failures_total{model,test}). */
  count: (model: string, test: string, rows: number) => void;
}

/**
 * The data tests of the models a pipeline runs, applied to every batch before it is committed
 * (see enforce()). Built only when some model declares tests: otherwise a run pays nothing.
 */
export class BatchTests {
  private constructor(
    private readonly conn: DuckDBConnection,
    private readonly byModel: Map<string, DataTest[]>,
    private readonly order: string[],
  ) {}

  static async create(conn: DuckDBConnection, project: Project, models: ModelDef[], log?: Logger, opts: { referencesLoaded?: boolean } = {}): Promise<BatchTests | undefined> {
    const byModel = new Map(models.filter((m) => m.dataTests.length).map((m) => [m.name, m.dataTests]));
    if (byModel.size === 0) return undefined;
    if (!opts.referencesLoaded) await loadReferences(conn, project, new Set([...byModel.values()].flat().flatMap((t) => (t.to ? [t.to] : []))), log);
    return new BatchTests(
      conn,
      byModel,
      models.map((m) => m.name),
    );
  }

  /**
   * Models whose rows must stay in DuckDB tables after execute() instead of being written
   * straight to their WAL file: every model when a dlq test may remove a message's rows from
   * all of them; otherwise none (tests read the file written).
   */
  keepInTables(): Set<string> {
    const dlq = [...this.byModel.values()].flat().some((t) => t.onFailure === 'dlq');
    return new Set(dlq ? this.order : []);
  }

  /**
   * At a flush (its WAL segment files): `unique` across the flush's batches, each of which was
   * checked alone before its commit. Only reported, whatever on_failure (logged and counted):
   * those batches were acknowledged already.
   */
  async checkFlush(model: string, files: string[], conn: DuckDBConnection, sink: TestSink): Promise<void> {
    if (files.length < 2) return;
    for (const t of this.byModel.get(model)?.filter((x) => x.kind === 'unique') ?? []) {
      const c = ident(t.column!);
      const r = await conn.runAndReadAll(
        `SELECT count(*), coalesce(sum(n), 0)::BIGINT, list(v ORDER BY v)[1:${EXAMPLES}] FROM (SELECT CAST(${c} AS VARCHAR) AS v, count(*) AS n ` +
          `FROM read_parquet(${fileList(files)}, union_by_name = true, filename = true) WHERE ${c} IS NOT NULL GROUP BY ${c} HAVING count(DISTINCT filename) > 1)`,
      );
      const [values, rows, examples] = r.getRowsJS()[0];
      if (!Number(values)) continue;
      sink.count(model, t.name, Number(rows));
      sink.log.warn(
        { model, test: t.name, column: t.column, values: Number(values), failing_rows: Number(rows), examples },
        `data test ${t.name} failed across the batches of a flush: ${Number(values)} value(s) of ${t.column} in more than one batch (reported only: those batches are acknowledged)`,
      );
    }
  }

  /** For --dry-run: what the tests would do to a batch whose rows are in the model tables. */
  async preview(outcome: BatchOutcome): Promise<string[]> {
    const out: string[] = [];
    for (const [model, tests] of this.byModel) {
      if (!outcome.rows.get(model)) continue;
      for (const r of await runTests(this.conn, tests, `${MODEL_SCHEMA}.${ident(model)}`)) {
        if (r.failing)
          out.push(`data test ${r.test.name} would fail (on_failure: ${r.test.onFailure}): ${r.failing} row(s) of ${model} where ${failureText(r.test)}, e.g. ${JSON.stringify(r.examples[0])}`);
      }
    }
    return out;
  }

  /**
   * Tests each model's rows of a batch (`files`: where execute() wrote models straight to
   * their WAL file), in DAG order. warn: logged and counted. dlq: the failing
   * rows' messages become transform failures of `outcome` (they go to the DLQ) and all their rows
   * leave every model's output (per-message semantics). fail: throws, so the batch is never
   * committed or acknowledged.
   */
  async enforce(outcome: BatchOutcome, sink: TestSink, files: Map<string, string>): Promise<void> {
    const dead = new Set(outcome.failures.map((f) => f.index));
    for (const model of this.order) {
      const tests = this.byModel.get(model);
      if (!tests || !outcome.rows.get(model)) continue;
      // A model written straight to its WAL file (see execute()) is tested there.
      const rel = outcome.written.has(model) ? `read_parquet(${lit(files.get(model)!)})` : `${MODEL_SCHEMA}.${ident(model)}`;
      const results = await runTests(this.conn, tests, rel);
      const added: MessageFailure[] = [];
      for (const r of results) {
        if (r.failing === 0) continue;
        const t = r.test;
        sink.count(model, t.name, r.failing);
        const detail = { model, test: t.name, column: t.column, failing_rows: r.failing, examples: r.examples };
        if (t.onFailure === 'fail') {
          throw new SluiceError(
            'TRANSFORM',
            `data test ${t.name} failed on model ${model} (on_failure: fail): ${r.failing} row(s) where ${failureText(t)}, e.g. ${JSON.stringify(r.examples[0])}; stopped before committing the batch (nothing from it was acknowledged)`,
          );
        }
        if (t.onFailure === 'warn') {
          sink.log.warn(detail, `data test ${t.name} failed: ${failureText(t)} (on_failure: warn)`);
          continue;
        }
        const fresh = r.messages.filter((i) => !dead.has(i));
        for (const index of fresh) {
          dead.add(index);
          added.push({ index, stage: 'transform', model, error: `data test ${t.name} failed: ${failureText(t)}` });
        }
        sink.log.warn({ ...detail, messages: fresh.length }, `data test ${t.name} failed: ${failureText(t)} (on_failure: dlq): the messages go to the DLQ`);
      }
      if (added.length === 0) continue;
      outcome.failures.push(...added);
      // A dead-lettered message leaves no row anywhere: remove its rows from every model.
      const ids = added.map((f) => f.index).join(',');
      for (const m of this.order) {
        if (!outcome.rows.get(m)) continue;
        const t = `${MODEL_SCHEMA}.${ident(m)}`;
        await this.conn.run(`DELETE FROM ${t} WHERE ${MSG_COL} IN (${ids})`);
        outcome.rows.set(m, Number((await this.conn.runAndReadAll(`SELECT count(*) FROM ${t}`)).getRowsJS()[0][0]));
      }
    }
    outcome.failures.sort((a, b) => a.index - b.index);
  }
}
