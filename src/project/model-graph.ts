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
 * Sets the source whose batches feed each model (directly, through `incoming`, or through its
 * refs; `ordered` is in dependency order). A model fed by several sources, an ambiguous
 * `incoming`, and a source no model reads are issues.
 */
export function assignSources(ordered: ModelDef[], sources: NamedSource[], issues: ConfigIssue[]): void {
  const byName = new Map(ordered.map((m) => [m.name, m]));
  for (const m of ordered) {
    const feeds = new Set<string>(m.rendered.sources.map((s) => s.name));
    if (m.rendered.usesIncoming) {
      if (sources.length === 1) feeds.add(sources[0].name);
      else if (sources.length > 1) issues.push({ file: m.file, message: `"incoming" is ambiguous with ${sources.length} sources; read {{ source('name') }} instead` });
    }
    for (const r of m.refs) {
      const dep = byName.get(r);
      if (dep?.source) feeds.add(dep.source);
    }
    if (feeds.size > 1)
      issues.push({
        file: m.file,
        message: `model ${m.name} reads from several sources (${[...feeds].join(', ')}); a stream join of two sources is not supported yet (each source runs as a pipeline of its own): join two streams one source carries, see docs/joins.md`,
      });
    m.source = [...feeds][0] ?? sources[0]?.name ?? '';
  }
  for (const s of sources) {
    if (sources.length > 1 && !ordered.some((m) => m.source === s.name)) {
      issues.push({ file: s.file, line: s.line, message: `source "${s.name}" is not read by any model` });
    }
  }
}
