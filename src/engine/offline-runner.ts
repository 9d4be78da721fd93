import fs from 'node:fs';
import path from 'node:path';
import type { DuckDBConnection } from '@duckdb/node-api';
import { SluiceError } from '../errors.js';
import { BatchExecutor, compileModels, decodeRules, type MessageFailure } from './executor.js';
import type { RawMessage } from '../connectors/types.js';
import type { SourcePolicy } from '../connectors/shared-config.js';
import { selectModels } from './pipeline.js';
import { openDuckDB } from './duckdb.js';
import { referencesNamed, useReferences } from './references.js';
import type { ModelDef, Project } from '../project/project-loader.js';
import { readFixture } from '../project/fixtures.js';
import { pipelineGroups } from '../project/model-graph.js';
import type { ContractKind } from './contracts.js';

const FIXTURE_EXT = ['.json', '.ndjson', '.jsonl'];

export interface FixtureFailure {
  source: string;
  message: Record<string, unknown>;
  stage: string;
  model?: string;
  error: string;
  /** A contract's refusal: the column and what it broke. */
  column?: string;
  kind?: ContractKind;
}

export interface FixtureRun {
  /** Which fixture fed which source. */
  fixtures: Map<string, string>;
  messages: number;
  /** Per model (DAG order): the output columns with DuckDB's types, and the rows. */
  outputs: Map<string, { columns: { name: string; type: string }[]; rows: Record<string, unknown>[] }>;
  failures: FixtureFailure[];
  /** Declared columns a model did not produce on the fixtures. */
  missing: { model: string; column: string }[];
}

/**
 * The fixture of each needed source. `given` holds `--fixture` values: `SOURCE=FILE`, or a bare
 * `FILE` when only one source is needed. A source without one uses tests/<source>.json (or
 * .ndjson, .jsonl); in a one-source project, tests/sample.json or the only fixture in tests/.
 */
export function fixturesFor(project: Project, given: string[], needed: string[]): Map<string, string> {
  const out = new Map<string, string>();
  const names = project.sources.map((s) => s.name);
  for (const g of given) {
    const m = /^([A-Za-z_][A-Za-z0-9_]*)=(.+)$/.exec(g);
    if (m && names.includes(m[1])) out.set(m[1], m[2]);
    else if (m && !fs.existsSync(g)) throw new SluiceError('USAGE', `--fixture ${g}: no source named "${m[1]}" (sources: ${names.join(', ')})`);
    else if (needed.length === 1) out.set(needed[0], g);
    else throw new SluiceError('USAGE', `--fixture ${g}: this project has several sources (${needed.join(', ')}); write --fixture SOURCE=FILE for each`);
  }
  const testsDir = path.join(project.dir, 'tests');
  const listed = fs.existsSync(testsDir)
    ? fs
        .readdirSync(testsDir)
        .filter((f) => FIXTURE_EXT.includes(path.extname(f)))
        .sort()
    : [];
  for (const s of needed) {
    if (out.has(s)) continue;
    const own = FIXTURE_EXT.map((e) => `${s}${e}`).find((f) => listed.includes(f));
    const single = needed.length === 1 && project.sources.length === 1 ? (listed.includes('sample.json') ? 'sample.json' : listed.length === 1 ? listed[0] : undefined) : undefined;
    const f = own ?? single;
    if (f) out.set(s, path.join(testsDir, f));
  }
  for (const [s, f] of out) if (!fs.existsSync(f)) throw new SluiceError('USAGE', `fixture ${f} (source ${s}) does not exist`);
  return out;
}

/** Looks at a pipeline's model outputs (tables sluice_model.<name>) before its DuckDB closes; `sources`: the one source, or the two of a stream join. */
export type InspectOutputs = (conn: DuckDBConnection, sources: string[], outputs: FixtureRun['outputs']) => Promise<void>;

/** One batch of a source's messages, for runBatches. */
export interface OfflineBatch {
  source: string;
  messages: RawMessage[];
}

/**
 * Runs `models` over batches in a private DuckDB, without connecting to anything: one batch a
 * source, in turn, as a pipeline of two sources reads them (a stream join meets both), then, as
 * at the end of a file, every window and join bound still open closes. Each model's rows are
 * those of every batch. A failure names its batch (`batch`: the index in `batches`).
 */
export async function runBatches(
  batches: OfflineBatch[],
  models: ModelDef[],
  inspect?: InspectOutputs,
  policies: Map<string, SourcePolicy> = new Map(),
  project?: Project,
): Promise<{ outputs: FixtureRun['outputs']; failures: { batch: number; failure: MessageFailure }[]; missing: FixtureRun['missing'] }> {
  const sources = [...new Set(batches.map((b) => b.source))];
  const { conn, instance } = await openDuckDB();
  let ex: BatchExecutor | undefined;
  try {
    // The reference tables the models name (a database one is read, as at the start of a run).
    if (project) await useReferences(conn, project, referencesNamed(project, models));
    const rules = new Map(sources.map((s) => [s, decodeRules(policies.get(s))]));
    ex = new BatchExecutor(conn, await compileModels(conn, models), sources, conn, sources.length === 1 ? rules.get(sources[0]) : rules);
    await ex.init();
    // Handlers start as in a run (onStartup, onReady, their periodic tasks), with no sink to wait for.
    await ex.startHandlers();
    await ex.handlersReady();
    const outputs: FixtureRun['outputs'] = new Map();
    const add = async () => {
      for (const m of models) {
        const more = await ex!.readOutput(m.name);
        const had = outputs.get(m.name) ?? { columns: [], rows: [] };
        outputs.set(m.name, { columns: had.columns.length ? had.columns : more.columns, rows: [...had.rows, ...more.rows] });
      }
    };
    const failures: { batch: number; failure: MessageFailure }[] = [];
    const missing: FixtureRun['missing'] = [];
    for (const [i, b] of batches.entries()) {
      const outcome = await ex.execute(await ex.prepare(b.messages, 0, undefined, sources.length > 1 ? b.source : undefined));
      failures.push(...outcome.failures.map((failure) => ({ batch: i, failure })));
      for (const x of outcome.contract.missing) if (!missing.some((y) => y.model === x.model && y.column === x.column)) missing.push(x);
      await add();
      if (ex.windows.size) await ex.windows.commit();
    }
    if (ex.windows.size) {
      // The fixture is the whole input: every window still open closes, as at the end of a file.
      await ex.closeWindows();
      await add();
    }
    await inspect?.(conn, sources, outputs);
    return { outputs, failures, missing };
  } finally {
    await ex?.stopHandlers();
    conn.closeSync();
    instance.closeSync();
  }
}

/**
 * Runs models on fixture messages in a private DuckDB, one pipeline at a time (a source, or the
 * two of a stream join, a batch each), without connecting to anything: what `sluice test`
 * prints and where `sluice docs` reads column types from.
 */
export async function runFixtures(project: Project, fixtures: Map<string, string>, models: ModelDef[] = project.models, inspect?: InspectOutputs): Promise<FixtureRun> {
  const run: FixtureRun = { fixtures, messages: 0, outputs: new Map(), failures: [], missing: [] };
  for (const group of pipelineGroups(project.sources, models)) {
    const mine = models.filter((m) => m.feeds.some((f) => group.includes(f)) || (m.feeds.length === 0 && m.source === group[0]));
    const batches = group.filter((s) => fixtures.has(s)).map((s) => ({ source: s, messages: readFixture(fixtures.get(s)!) }));
    if (batches.length === 0 || mine.length === 0) continue;
    for (const b of batches) run.messages += b.messages.length;
    const policies = new Map(project.sources.filter((s) => group.includes(s.name)).map((s) => [s.name, s.policy]));
    const { outputs, failures, missing } = await runBatches(batches, mine, inspect, policies, project);
    run.missing.push(...missing);
    for (const [k, v] of outputs) run.outputs.set(k, v);
    for (const { batch, failure: f } of failures) {
      const b = batches[batch];
      run.failures.push({ source: b.source, message: b.messages[f.index].coords, stage: f.stage, model: f.model, error: f.error, column: f.column, kind: f.kind });
    }
  }
  // DAG order, as the project lists its models.
  run.outputs = new Map(models.filter((m) => run.outputs.has(m.name)).map((m) => [m.name, run.outputs.get(m.name)!]));
  return run;
}

/** The models `--model` selects (with what they ref), and the sources they need. */
export function modelsAndSources(project: Project, model: string | undefined): { models: ModelDef[]; sources: string[] } {
  const models = selectModels(project, model ? [model] : undefined);
  return { models, sources: project.sources.map((s) => s.name).filter((s) => models.some((m) => m.feeds.includes(s) || m.source === s)) };
}
