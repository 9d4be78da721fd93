import path from 'node:path';
import type { Command } from 'commander';
import { ConfigError, errorMessage } from '../errors.js';
import { loadProject, type Project, type ProjectOptions } from '../project/project-loader.js';
import { analyzeProject } from '../engine/validate.js';
import { readYaml } from '../project/yaml-file.js';
import { consumerConflicts } from '../project/consumer-conflicts.js';
import { openDuckDB } from '../engine/duckdb.js';

/** The options withProject() adds, as commander parses them. */
export interface CommonOpts {
  project?: string;
  config?: string;
  models?: string;
  target?: string;
}

/**
 * What loadAndCheck() checks beyond the project itself: `consumers` (validate, run) refuses
 * sources that would share a consumer on their broker (see consumerConflicts).
 */
export interface Checks {
  allowStateful?: boolean;
  consumers?: boolean;
}

export type DuckDB = Awaited<ReturnType<typeof openDuckDB>>;
export type ModelReports = Awaited<ReturnType<typeof analyzeProject>>['reports'];

export function projectOpts(o: CommonOpts): ProjectOptions {
  return { project: o.project, config: o.config, models: o.models, target: o.target };
}

/** Adds --project, --config, --models and (unless targetFlag is false) --target to a command. */
export function withProject(cmd: Command, targetFlag = true): Command {
  cmd
    .option('--project <dir>', 'project directory', '.')
    .option('--config <dir>', 'config directory (default: <project>/config)')
    .option('--models <dir>', 'models directory (default: <project>/models)');
  return targetFlag ? cmd.option('--target <name>', "target (environment) from sluice.yml's targets: (default: $SLUICE_TARGET, else sluice.yml's target:)") : cmd;
}

/** Loads the project and runs the DuckDB checks; throws ConfigError with every problem. */
export async function loadAndCheck(o: CommonOpts, check: Checks = {}): Promise<{ project: Project; reports: ModelReports }> {
  const { duckdb, ...checked } = await loadAndCheckKeep(o, check);
  duckdb.conn.closeSync();
  duckdb.instance.closeSync();
  return checked;
}

/** loadAndCheck(), keeping the DuckDB instance it checked with (opened with the project's settings) for the caller. */
export async function loadAndCheckKeep(o: CommonOpts, check: Checks = {}): Promise<{ project: Project; reports: ModelReports; duckdb: DuckDB }> {
  const project = loadProject(projectOpts(o));
  const duckdb = await openProjectDuckDB(project);
  try {
    const { issues, reports } = await analyzeProject(project, duckdb.conn, check);
    if (check.consumers) issues.push(...consumerConflicts(project.sources));
    if (issues.length) throw new ConfigError(issues);
    return { project, reports, duckdb };
  } catch (err) {
    duckdb.conn.closeSync();
    duckdb.instance.closeSync();
    throw err;
  }
}

/**
 * DuckDB opened with the project's `duckdb:` settings. Settings DuckDB refuses (memory_limit:
 * lots) are a config error at their line of sluice.yml (DuckDB itself only says "Failed to set config").
 */
async function openProjectDuckDB(project: Project): Promise<DuckDB> {
  try {
    return await openDuckDB(project.duckdb);
  } catch (e) {
    const settings = Object.entries(project.duckdb).filter(([, v]) => v !== undefined);
    if (settings.length === 0) throw e;
    const file = path.join(project.dir, 'sluice.yml');
    const rel = path.relative(process.cwd(), file);
    const y = readYaml(file, {}, [], rel && !rel.startsWith('..') ? rel : file);
    const targets = (y?.value as { targets?: Record<string, { duckdb?: unknown }> } | undefined)?.targets;
    const keyPath = project.target && targets?.[project.target]?.duckdb !== undefined ? ['targets', project.target, 'duckdb'] : ['duckdb'];
    throw new ConfigError([
      {
        file: y?.file ?? file,
        line: y?.lineOf(keyPath),
        key: keyPath.join('.'),
        message: `DuckDB refuses ${settings.map(([k, v]) => `${k}: ${v}`).join(', ')} (${errorMessage(e)}): memory_limit is a size such as 2GB or 512MiB, threads a number from 1`,
      },
    ]);
  }
}
