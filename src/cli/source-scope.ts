import path from 'node:path';
import { SluiceError } from '../errors.js';
import { dlqDefaultsBesideWal } from '../connectors/registry.js';
import { defaultDlqDir, selectModels, workerId } from '../engine/pipeline.js';
import type { Project } from '../project/project-loader.js';
import { groupName, pipelineGroups } from '../project/model-graph.js';

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
  /** DLQ commands: the sources of the pipeline this source runs in, when it shares one (a stream join of two sources). */
  group?: string[];
}

/**
 * The project as the pipeline of some sources sees it (one source, or the sources of a stream
 * join of two sources: see pipelineGroups): those sources, the models they feed, the sinks they
 * write to, and a WAL of its own, `<wal.path>/<name>` (the sources' names joined with `+`); each
 * source keeps its default file DLQ, `<dlq>/<source>`. The layout is the same whether the
 * pipelines run in one process or one process each (`--source NAME`). A one-source project is
 * returned as it is.
 */
export function scopeToSources(project: Project, names: string[]): Project {
  for (const name of names) {
    if (!project.sources.some((s) => s.name === name)) throw new SluiceError('USAGE', `--source ${name}: no source named "${name}" (sources: ${project.sources.map((s) => s.name).join(', ')})`);
  }
  if (project.sources.length === 1) return project;
  const models = project.models.filter((m) => m.feeds.some((f) => names.includes(f)));
  const sinks = new Set(models.flatMap((m) => m.sinks));
  const sources = project.sources
    .filter((s) => names.includes(s.name))
    .map((src) => {
      const cfg = { ...src.cfg };
      if (!cfg.dlq && dlqDefaultsBesideWal(src.spec)) cfg.dlq = path.join(defaultDlqDir(project), src.name);
      return { ...src, cfg };
    });
  return {
    ...project,
    sources,
    models,
    sinks: project.sinks.filter((s) => sinks.has(s.name)),
    walPath: path.join(project.walPath, groupName(names)),
  };
}

/** The project as one source's DLQ sees it (scopeToSources of that source alone). */
export function scopeToSource(project: Project, name: string): Project {
  return scopeToSources(project, [name]);
}

/**
 * The pipelines `sluice run` starts: one per source, or per pair of sources a stream join reads
 * (pipelineGroups); with --source NAME, those holding the sources named. Each is scoped with
 * scopeToSources. With --model, only the pipelines feeding the chosen models run, each with the
 * chosen models that are its own.
 */
export function scopeRun(project: Project, sources: string[] | undefined, models: string[] | undefined): ScopedRun[] {
  const chosen = sources?.length ? [...new Set(sources)] : project.sources.map((s) => s.name);
  scopeToSources(project, chosen); // an unknown name is reported before anything runs
  if (project.sources.length === 1) return [{ source: chosen[0], project, models }];
  if (models?.length) selectModels(project, models); // reports a model name that does not exist
  const named = models?.length ? new Set(models.map((m) => path.basename(m).replace(/\.sql$/, ''))) : undefined;
  const runs: ScopedRun[] = [];
  for (const group of pipelineGroups(project.sources, project.models)) {
    if (!group.some((g) => chosen.includes(g))) continue;
    const name = groupName(group);
    const scoped = scopeToSources(project, group);
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

/**
 * Each source as its DLQ commands see it: its own DLQ (and the worker id that tags its dead
 * letters), the one named or every source of the project.
 */
export function scopeDlqs(project: Project, source: string | undefined): ScopedRun[] {
  const chosen = source === undefined ? project.sources.map((s) => s.name) : [source];
  if (project.sources.length === 1) return [{ source: scopeToSource(project, chosen[0]).sources[0].name, project }];
  return chosen.map((name) => {
    const group = pipelineGroups(project.sources, project.models).find((g) => g.includes(name))!;
    return { source: name, project: scopeToSource(project, name), scopedWorkerId: `${workerId()}.${groupName(group ?? [name])}`, group: group && group.length > 1 ? group : undefined };
  });
}
