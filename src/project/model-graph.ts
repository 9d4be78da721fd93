import type { ConfigIssue } from '../errors.js';
import { topoSort } from './dag.js';
import type { ModelDef, NamedSource } from './project-types.js';

// The models as a graph: what each reads (refs, sources), their dependency order, and which
// source's batches feed each one.

/** A model's ref() and source() name models and sources that exist, and not itself. */
export function checkModelInputs(m: ModelDef, modelNames: Set<string>, sourceNames: Set<string>, issues: ConfigIssue[]): void {
  for (const r of m.rendered.refs) {
    if (!modelNames.has(r.name)) issues.push({ file: m.file, line: r.line, message: `ref('${r.name}'): no model named "${r.name}"` });
    if (r.name === m.name) issues.push({ file: m.file, line: r.line, message: `ref('${r.name}'): a model cannot read its own output` });
  }
  for (const s of m.rendered.sources) {
    if (!sourceNames.has(s.name)) issues.push({ file: m.file, line: s.line, message: `source('${s.name}'): no source named "${s.name}" (sources: ${[...sourceNames].join(', ') || 'none'})` });
  }
}

/** The models in dependency order; each cycle is an issue (and the models keep file order). */
export function orderModels(models: ModelDef[], modelsDirShown: string, issues: ConfigIssue[]): ModelDef[] {
  const { order, cycles } = topoSort(models.map((m) => ({ ...m, deps: m.refs })));
  for (const c of cycles) {
    const first = models.find((m) => m.name === c[0]);
    const line = first?.rendered.refs.find((r) => r.name === c[1])?.line;
    issues.push({ file: first?.file ?? modelsDirShown, line, message: `models form a cycle: ${c.join(' -> ')}` });
  }
  return cycles.length ? models : order.map((o) => models.find((m) => m.name === o.name)!);
}

/**
 * Sets the sources whose batches feed each model (directly, through `incoming`, or through its
 * refs; `ordered` is in dependency order), in the order the sources are declared. A model fed by
 * two sources must be a stream join of them (or read one relation downstream of one): validate
 * checks it, with DuckDB. An ambiguous `incoming` and a source no model reads are issues.
 */
export function assignSources(ordered: ModelDef[], sources: NamedSource[], issues: ConfigIssue[]): void {
  const byName = new Map(ordered.map((m) => [m.name, m]));
  const rank = new Map(sources.map((s, i) => [s.name, i]));
  for (const m of ordered) {
    const feeds = new Set<string>(m.rendered.sources.map((s) => s.name));
    if (m.rendered.usesIncoming) {
      if (sources.length === 1) feeds.add(sources[0].name);
      else if (sources.length > 1) issues.push({ file: m.file, message: `"incoming" is ambiguous with ${sources.length} sources; read {{ source('name') }} instead` });
    }
    for (const r of m.refs) for (const f of byName.get(r)?.feeds ?? []) feeds.add(f);
    m.feeds = [...feeds].sort((a, b) => (rank.get(a) ?? 0) - (rank.get(b) ?? 0));
    m.source = m.feeds[0] ?? sources[0]?.name ?? '';
  }
  for (const s of sources) {
    if (sources.length > 1 && !ordered.some((m) => m.feeds.includes(s.name))) {
      issues.push({ file: s.file, line: s.line, message: `source "${s.name}" is not read by any model` });
    }
  }
}

/**
 * The pipelines a project runs as: the sources in declaration order, those that feed a common
 * model (a stream join of two sources) together in one pipeline, which reads both and commits
 * their positions together; every other source alone.
 */
export function pipelineGroups(sources: NamedSource[], models: ModelDef[]): string[][] {
  const group = new Map(sources.map((s) => [s.name, s.name]));
  const find = (x: string): string => {
    let r = x;
    while (group.get(r) !== r) r = group.get(r)!;
    return r;
  };
  for (const m of models) {
    for (const f of m.feeds.slice(1)) {
      const [a, b] = [find(m.feeds[0]), find(f)];
      if (a !== b && group.has(a) && group.has(b)) group.set(b, a);
    }
  }
  const out = new Map<string, string[]>();
  for (const s of sources) {
    const r = find(s.name);
    out.set(r, [...(out.get(r) ?? []), s.name]);
  }
  return [...out.values()];
}

/** A pipeline's name: its source's, or its sources' joined with `+` (its WAL directory, log and metric label). */
export function groupName(sources: string[]): string {
  return sources.join('+');
}

/**
 * The sources whose batches feed what a piece of SQL reads (`reads`: the relations it names,
 * from the parse tree): the sources it reads, and those feeding the models it reads (`feedsOf`).
 */
export function relationFeeds(reads: { schema: string; name: string }[], feedsOf: (model: string) => string[]): string[] {
  const feeds = new Set<string>();
  for (const r of reads) {
    if (r.schema === 'sluice_source') feeds.add(r.name);
    else for (const f of feedsOf(r.name)) feeds.add(f);
  }
  return [...feeds];
}
