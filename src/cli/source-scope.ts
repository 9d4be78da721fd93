import path from 'node:path';
import { SluiceError } from '../errors.js';
import { dlqDefaultsBesideWal } from '../connectors/registry.js';
import { defaultDlqDir, selectModels, workerId } from '../engine/pipeline.js';
import type { Project } from '../project/project-loader.js';

/** One pipeline of a `sluice run`: a source, its scoped project, and the models to run (all when undefined). */
export interface ScopedRun {
  source: string;
  project: Project;
  models?: string[];
  /**
   * The worker id its sinks and its DLQ see: `<worker>.<source>` when the project has several
   * sources, whether they run in one process or not (see RunOptions.scopedWorkerId); unset in a
   * one-source project, whose sinks and DLQ keep the worker id they always had.
   */
  scopedWorkerId?: string;
}

/**
 * The project as the pipeline of one source sees it: that source, the models it feeds, the
 * sinks they write to, and a WAL (and default file DLQ) of its own, `<wal.path>/<source>`. The
 * layout is the same whether the sources run in one process or one process each
 * (`--source NAME`). A one-source project is returned as it is.
 */
export function scopeToSource(project: Project, name: string): Project {
  const src = project.sources.find((s) => s.name === name);
  if (!src) throw new SluiceError('USAGE', `--source ${name}: no source named "${name}" (sources: ${project.sources.map((s) => s.name).join(', ')})`);
  if (project.sources.length === 1) return project;
  const models = project.models.filter((m) => m.source === name);
  const sinks = new Set(models.flatMap((m) => m.sinks));
  const cfg = { ...src.cfg };
  if (!cfg.dlq && dlqDefaultsBesideWal(src.spec)) cfg.dlq = path.join(defaultDlqDir(project), name);
  return {
    ...project,
    sources: [{ ...src, cfg }],
    models,
    sinks: project.sinks.filter((s) => sinks.has(s.name)),
    walPath: path.join(project.walPath, name),
  };
}

/**
 * The pipelines `sluice run` starts: one per source (or per source named with --source), each
 * scoped with scopeToSource. With --model, only the sources feeding the chosen models run,
 * each with the chosen models that are its own.
 */
export function scopeRun(project: Project, sources: string[] | undefined, models: string[] | undefined): ScopedRun[] {
  const chosen = sources?.length ? [...new Set(sources)] : project.sources.map((s) => s.name);
  for (const name of chosen) scopeToSource(project, name); // an unknown name is reported before anything runs
  if (project.sources.length === 1) return [{ source: chosen[0], project, models }];
  if (models?.length) selectModels(project, models); // reports a model name that does not exist
  const named = models?.length ? new Set(models.map((m) => path.basename(m).replace(/\.sql$/, ''))) : undefined;
  const runs: ScopedRun[] = [];
  for (const name of chosen) {
    const scoped = scopeToSource(project, name);
    const own = named && scoped.models.filter((m) => named.has(m.name)).map((m) => m.name);
    if (own && own.length === 0) continue;
    runs.push({ source: name, project: scoped, models: own, scopedWorkerId: `${workerId()}.${name}` });
  }
  if (named) {
    const outside = [...named].filter((m) => !runs.some((r) => r.models!.includes(m)));
    if (outside.length) {
      const of = outside.map((m) => `${m} (source ${project.models.find((x) => x.name === m)!.source})`).join(', ');
      throw new SluiceError('USAGE', `--model ${of}: not fed by the sources chosen with --source (${chosen.join(', ')})`);
    }
  }
  return runs;
}
