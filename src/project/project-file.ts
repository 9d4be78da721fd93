import path from 'node:path';
import type { ConfigIssue } from '../errors.js';
import { projectSchema, type ProjectConfig } from './project-schema.js';
import { resolveTarget, targetEnv, type ActiveTarget } from './targets.js';
import { checkSchema, readYaml } from './yaml-file.js';

export interface ProjectFile {
  /** sluice.yml's settings, checked (with the target's overrides of wal, server, duckdb); undefined when invalid. */
  proj: ProjectConfig | undefined;
  /** The target in force, when sluice.yml declares targets. */
  target: ActiveTarget | undefined;
  /** The environment the other config files are interpolated with: the target's vars under the process's. */
  fileEnv: NodeJS.ProcessEnv;
  /** Where sluice.yml sets window_state (for the checks of validate). */
  windowStateAt?: { file: string; line?: number };
}

/**
 * Reads sluice.yml (optional): picks the target (`wanted`, else SLUICE_TARGET, else sluice.yml's
 * `target:`) and checks the project settings. Problems go to `issues`.
 */
export function readProjectFile(dir: string, env: NodeJS.ProcessEnv, wanted: string | undefined, issues: ConfigIssue[], show: (file: string) => string): ProjectFile {
  const projFile = path.join(dir, 'sluice.yml');
  const projYaml = readYaml(projFile, env, issues, show(projFile));
  const projVal = projYaml?.value && typeof projYaml.value === 'object' && !Array.isArray(projYaml.value) ? { ...(projYaml.value as Record<string, unknown>) } : (projYaml?.value ?? {});
  const target = resolveTarget(projYaml, projVal as Record<string, unknown>, wanted ?? (env.SLUICE_TARGET || undefined), issues);
  const proj = projYaml?.value !== undefined ? checkSchema(projYaml, projectSchema, projVal, [], issues) : {};
  const windowStateAt = proj?.window_state ? { file: show(projFile), line: projYaml?.lineOf(['window_state']) } : undefined;
  return { proj, target, fileEnv: targetEnv(env, target), windowStateAt };
}
