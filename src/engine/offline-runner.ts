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

/** Looks at a source's model outputs (tables sluice_model.<name>) before its DuckDB closes. */
export type InspectOutputs = (conn: DuckDBConnection, source: string, outputs: FixtureRun['outputs']) => Promise<void>;

/** Runs one source's `models` over `messages` in a private DuckDB, without connecting to anything. */
export async function runMessages(
  source: string,
  messages: RawMessage[],
  models: ModelDef[],
  inspect?: InspectOutputs,
  policy?: SourcePolicy,
  project?: Project,
): Promise<{ outputs: FixtureRun['outputs']; failures: MessageFailure[]; missing: FixtureRun['missing'] }> {
  const { conn, instance } = await openDuckDB();
  try {
    // The reference tables the models name (a database one is read, as at the start of a run).
    if (project) await useReferences(conn, project, referencesNamed(project, models));
    const ex = new BatchExecutor(conn, await compileModels(conn, models), source, conn, decodeRules(policy));
    await ex.init();
    const outcome = await ex.process(messages);
    const outputs: FixtureRun['outputs'] = new Map();
    for (const m of models) outputs.set(m.name, await ex.readOutput(m.name));
    if (ex.windows.size) {
      // The fixture is the whole input: every window still open closes, as at the end of a file.
      await ex.windows.commit();
      await ex.closeWindows();
      for (const m of models) {
        const more = await ex.readOutput(m.name);
        const had = outputs.get(m.name)!;
        outputs.set(m.name, { columns: had.columns.length ? had.columns : more.columns, rows: [...had.rows, ...more.rows] });
      }
    }
    await inspect?.(conn, source, outputs);
    return { outputs, failures: outcome.failures, missing: outcome.contract.missing };
  } finally {
    conn.closeSync();
    instance.closeSync();
  }
}

/**
 * Runs models on fixture messages in a private DuckDB, one source at a time, without connecting
 * to anything: what `sluice test` prints and where `sluice docs` reads column types from.
 */
export async function runFixtures(project: Project, fixtures: Map<string, string>, models: ModelDef[] = project.models, inspect?: InspectOutputs): Promise<FixtureRun> {
  const run: FixtureRun = { fixtures, messages: 0, outputs: new Map(), failures: [], missing: [] };
  for (const src of project.sources) {
    const file = fixtures.get(src.name);
    const mine = models.filter((m) => m.source === src.name);
    if (!file || mine.length === 0) continue;
    const messages = readFixture(file);
    run.messages += messages.length;
    const { outputs, failures, missing } = await runMessages(src.name, messages, mine, inspect, src.policy, project);
    run.missing.push(...missing);
    for (const [k, v] of outputs) run.outputs.set(k, v);
    for (const f of failures) {
      run.failures.push({ source: src.name, message: messages[f.index].coords, stage: f.stage, model: f.model, error: f.error, column: f.column, kind: f.kind });
    }
  }
  // DAG order, as the project lists its models.
  run.outputs = new Map(models.filter((m) => run.outputs.has(m.name)).map((m) => [m.name, run.outputs.get(m.name)!]));
  return run;
}

/** The models `--model` selects (with what they ref), and the sources they need. */
export function modelsAndSources(project: Project, model: string | undefined): { models: ModelDef[]; sources: string[] } {
  const models = selectModels(project, model ? [model] : undefined);
  return { models, sources: project.sources.map((s) => s.name).filter((s) => models.some((m) => m.source === s)) };
}
