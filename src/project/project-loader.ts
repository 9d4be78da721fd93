import fs from 'node:fs';
import path from 'node:path';
import { ConfigError, type ConfigIssue } from '../errors.js';
import { registerConfigSecrets } from '../util/secrets.js';
import { loadSinks, loadSources } from './connector-blocks.js';
import { assignSources, checkModelInputs, orderModels } from './model-graph.js';
import { checkHandlerExecutors, hasHandlerFiles, readHandlerFiles } from './handler-files.js';
import { readModelFiles } from './model-files.js';
import { checkOverrideNames, configureModel, readModelsFile, referencesOf } from './model-settings.js';
import { readProjectFile } from './project-file.js';
import { DEFAULT_PORT, DEFAULT_WAL_MAX_BYTES } from './project-schema.js';
import type { Project, ProjectOptions } from './project-types.js';
import { remapTargetIssues } from './targets.js';
import { readUnitTests } from './unit-test-files.js';

export type { ColumnDoc, HandlerDef, ModelDef, NamedSink, NamedSource, Project, ProjectOptions } from './project-types.js';
export { DEFAULT_MAX_AGE_SECONDS, DEFAULT_MAX_FILE_BYTES, DEFAULT_PORT, DEFAULT_WAL_MAX_BYTES, modelsSchema, projectSchema } from './project-schema.js';

/**
 * Loads a project directory: sluice.yml, config/{sources,sinks,models}.yml and models/*.sql.
 * Everything that can be checked without DuckDB is checked here; all problems are thrown
 * together as one ConfigError.
 */
export function loadProject(opts: ProjectOptions = {}): Project {
  const env = opts.env ?? process.env;
  const dir = path.resolve(opts.project ?? '.');
  const configDir = opts.config ? path.resolve(opts.config) : path.join(dir, 'config');
  const modelsDir = opts.models ? path.resolve(opts.models) : path.join(dir, 'models');
  const issues: ConfigIssue[] = [];
  const show = (f: string) => {
    const rel = path.relative(process.cwd(), f);
    return rel && !rel.startsWith('..') ? rel : f;
  };

  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) {
    throw new ConfigError([{ file: show(dir), message: 'project directory does not exist' }]);
  }

  // Files are read in this order, which is also the order their issues are reported in.
  const { proj, target, fileEnv, windowStateAt } = readProjectFile(dir, env, opts.target, issues, show);
  const connectorFiles = { env: fileEnv, target, issues, show };
  const sources = loadSources(configDir, connectorFiles);
  const { sinks, declared: sinkNames } = loadSinks(configDir, connectorFiles);
  const modelsFile = readModelsFile(configDir, fileEnv, issues, show);
  const handlersDir = path.join(dir, 'handlers');
  const sqlModels = readModelFiles(modelsDir, issues, show, hasHandlerFiles(handlersDir));
  const models = [...sqlModels, ...readHandlerFiles(handlersDir, sqlModels, issues, show)];

  const modelNames = new Set(models.map((m) => m.name));
  const sourceNames = new Set(sources.map((s) => s.name));
  const references = referencesOf(modelsFile, dir, issues);
  checkOverrideNames(modelsFile, modelNames, issues);
  const settings = { models: modelsFile, referenceNames: new Set(references.map((r) => r.name)), sinkNames };
  for (const m of models) {
    configureModel(m, settings, issues);
    checkModelInputs(m, modelNames, sourceNames, issues);
  }
  checkHandlerExecutors(models, dir, issues);
  const ordered = orderModels(models, show(modelsDir), issues);
  assignSources(ordered, sources, issues);
  const unitTests = readUnitTests(dir, fileEnv, sources, ordered, issues, show);

  remapTargetIssues(issues, target);
  for (const c of [...sources, ...sinks]) registerConfigSecrets(c.cfg);
  registerConfigSecrets(references);
  if (proj?.window_state) registerConfigSecrets(proj.window_state);
  if (issues.length) throw new ConfigError(issues);

  return {
    dir,
    name: proj?.name ?? path.basename(dir),
    target: target?.name,
    configDir,
    modelsDir,
    walPath: path.resolve(dir, proj?.wal?.path ?? '.sluice/wal'),
    walMaxBytes: proj?.wal?.max_bytes ?? DEFAULT_WAL_MAX_BYTES,
    port: proj?.server?.port ?? DEFAULT_PORT,
    duckdb: proj?.duckdb ?? {},
    nodeMaxHeapMb: proj?.node?.max_heap_mb,
    ...(proj?.window_state ? { windowState: { postgres: proj.window_state.postgres, table: proj.window_state.table ?? 'sluice_window_state', at: windowStateAt! } } : {}),
    infraErrors: { maxBackoffMs: proj?.infra_errors?.max_backoff_ms ?? 30_000, giveUpAfterSeconds: proj?.infra_errors?.give_up_after_seconds ?? 0 },
    sources,
    sinks,
    models: ordered,
    references,
    unitTests,
  };
}
