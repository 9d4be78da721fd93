import { ident } from '../sql/quote.js';
import { MODEL_SCHEMA } from '../sql/template.js';
import { selectModels } from './pipeline.js';
import { runBatches, type InspectOutputs } from './offline-runner.js';
import { pipelineGroups } from '../project/model-graph.js';
import type { ModelDef, Project } from '../project/project-loader.js';
import type { RawMessage } from '../connectors/types.js';
import { runTests, type TestResult } from './data-tests.js';
import { loadReferences } from './references.js';
import type { UnitTest } from '../project/data-test-config.js';

/**
 * Data tests over the fixtures' output, for `sluice test`: `inspect` goes to runFixtures() and
 * runs every test of the source's models inside that run's DuckDB; `results` fills as it does.
 * A model without output (every message failed) has nothing to test: its tests pass.
 */
export function fixtureDataTests(project: Project, models: ModelDef[]): { inspect: InspectOutputs; results: TestResult[] } {
  const results: TestResult[] = [];
  const inspect: InspectOutputs = async (conn, sources, outputs) => {
    const mine = models.filter((m) => (m.feeds.length ? m.feeds.some((f) => sources.includes(f)) : sources.includes(m.source)) && m.dataTests.length);
    await loadReferences(conn, project, new Set(mine.flatMap((m) => m.dataTests.flatMap((t) => (t.to ? [t.to] : [])))));
    for (const m of mine) {
      if (outputs.get(m.name)?.columns.length) results.push(...(await runTests(conn, m.dataTests, `${MODEL_SCHEMA}.${ident(m.name)}`)));
      else results.push(...m.dataTests.map((test) => ({ test, failing: 0, examples: [], messages: [] })));
    }
  };
  return { inspect, results };
}

export interface UnitTestOutcome {
  test: UnitTest;
  ok: boolean;
  /** What differs, one line each (empty when ok). */
  problems: string[];
}

/** Runs the unit test cases that expect rows of `only` (default: all of them). */
export async function runUnitTests(project: Project, only?: ModelDef[]): Promise<UnitTestOutcome[]> {
  const out: UnitTestOutcome[] = [];
  for (const test of project.unitTests) {
    if (only && ![...test.expect.keys()].some((m) => only.some((x) => x.name === m))) continue;
    const problems: string[] = [];
    const actual = new Map<string, { columns: { name: string }[]; rows: Record<string, unknown>[] }>();
    // One run a pipeline: a source, or the two of a stream join (a batch each, in turn).
    for (const group of pipelineGroups(project.sources, project.models)) {
      const given = group.filter((s) => test.messages.has(s));
      const wanted = [...test.expect.keys()].filter((m) => project.models.find((x) => x.name === m)?.feeds.some((f) => given.includes(f)));
      if (given.length === 0 || wanted.length === 0) continue;
      const batches = given.map((source) => ({ source, messages: test.messages.get(source)!.map((payload, index): RawMessage => ({ payload, coords: { unit_test: test.name, source, index } })) }));
      const policies = new Map(project.sources.filter((s) => given.includes(s.name)).map((s) => [s.name, s.policy]));
      const r = await runBatches(batches, selectModels(project, wanted), undefined, policies, project);
      for (const [k, v] of r.outputs) actual.set(k, v);
      for (const { batch, failure: f } of r.failures) problems.push(`message ${f.index + 1} of ${batches[batch].source} failed [${f.stage}${f.model ? ` in ${f.model}` : ''}]: ${f.error}`);
    }
    for (const [model, expected] of test.expect) {
      const got = actual.get(model);
      if (!got) problems.push(`${model}: no messages were given for its source`);
      else if (got.columns.length === 0) problems.push(`${model}: no output (every message failed)`);
      else
        problems.push(
          ...compareRows(
            model,
            got.columns.map((c) => c.name),
            got.rows,
            expected,
            test.ordered,
          ),
        );
    }
    out.push({ test, ok: problems.length === 0, problems });
  }
  return out;
}

/**
 * Compares a model's rows with the expected ones on the columns the expected rows give, as
 * multisets (or in order when `ordered`); returns the differences as diff lines.
 */
export function compareRows(model: string, columns: string[], actual: Record<string, unknown>[], expected: Record<string, unknown>[], ordered: boolean): string[] {
  const given = [...new Set(expected.flatMap((r) => Object.keys(r)))];
  const byLower = new Map(columns.map((c) => [c.toLowerCase(), c]));
  const unknown = given.filter((c) => !byLower.has(c.toLowerCase()));
  if (unknown.length) return [`${model}: no column ${unknown.map((c) => `"${c}"`).join(', ')} (its columns: ${columns.join(', ')})`];
  const cols = given.length ? given : columns;
  const project = (r: Record<string, unknown>) => Object.fromEntries(cols.map((c) => [c, r[byLower.get(c.toLowerCase())!] ?? null]));
  const got = actual.map(project);
  const want = expected.map((r) => Object.fromEntries(cols.map((c) => [c, r[c] ?? null])));
  const show = (r: Record<string, unknown>) => JSON.stringify(r);
  const lines: string[] = [];
  if (ordered) {
    for (let i = 0; i < Math.max(got.length, want.length); i++) {
      if (i < got.length && i < want.length && canon(got[i]) === canon(want[i])) continue;
      lines.push(`  row ${i + 1}:`);
      if (i < want.length) lines.push(`  - ${show(want[i])}`);
      if (i < got.length) lines.push(`  + ${show(got[i])}`);
    }
  } else {
    const left = new Map<string, number>();
    for (const r of got) left.set(canon(r), (left.get(canon(r)) ?? 0) + 1);
    const missing: Record<string, unknown>[] = [];
    for (const r of want) {
      const k = canon(r);
      const n = left.get(k) ?? 0;
      if (n > 0) left.set(k, n - 1);
      else missing.push(r);
    }
    const extra = got.filter((r) => {
      const n = left.get(canon(r)) ?? 0;
      if (n > 0) left.set(canon(r), n - 1);
      return n > 0;
    });
    for (const r of missing) lines.push(`  - ${show(r)}`);
    for (const r of extra) lines.push(`  + ${show(r)}`);
  }
  if (lines.length === 0) return [];
  return [`${model}: ${want.length} row(s) expected, ${got.length} produced${ordered ? ' (ordered)' : ''} (- expected, + actual):`, ...lines];
}

/**
 * A value in a comparable form: numbers by value whether YAML wrote 1 or "1"; timestamps by
 * instant whatever their notation; lists and structs element by element.
 */
export function canon(v: unknown): string {
  if (v === null || v === undefined) return 'null';
  if (typeof v === 'number' || typeof v === 'bigint') return `n:${Number(v)}`;
  if (typeof v === 'boolean') return `b:${v}`;
  if (v instanceof Date) return `d:${v.getTime()}`;
  if (typeof v === 'string') {
    if (/^-?\d+(\.\d+)?([eE][+-]?\d+)?$/.test(v.trim())) return `n:${Number(v)}`;
    if (/^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}(:?\d{2})?)?)?$/.test(v) && !Number.isNaN(Date.parse(v))) return `d:${Date.parse(v)}`;
    return `s:${v}`;
  }
  if (Array.isArray(v)) return `[${v.map(canon).join(',')}]`;
  const o = v as Record<string, unknown>;
  return `{${Object.keys(o)
    .sort()
    .map((k) => `${k}=${canon(o[k])}`)
    .join(',')}}`;
}
