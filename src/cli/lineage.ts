import { SluiceError } from '../errors.js';
import type { Project } from '../project/project-loader.js';
import { reachable } from '../project/dag.js';

export type NodeKind = 'source' | 'reference' | 'model' | 'sink';

export interface LineageNode {
  /** `source.orders`, `model.orders`, `sink.lake`: a model and a source may share a name. */
  id: string;
  kind: NodeKind;
  name: string;
  /** Connector type of a source or sink; where a reference table is read from (csv, postgres, ...). */
  type?: string;
  file?: string;
  line?: number;
  /** A windowed model's window, watermark and late-data policy (see windowSummary). */
  window?: string;
  /** A stream join's kind, inputs, bound and late-data policy (see joinSummary). */
  join?: string;
  /** A handler (handlers/<name>.ts): code, not SQL. */
  handler?: true;
}

export interface LineageEdge {
  from: string;
  to: string;
}

export interface Lineage {
  nodes: LineageNode[];
  edges: LineageEdge[];
}

export const nodeId = (kind: NodeKind, name: string): string => `${kind}.${name}`;

/** Where a reference table is read from. */
function referenceType(r: Project['references'][number]): string {
  return (['csv', 'parquet', 'json', 'postgres', 'mysql'] as const).find((k) => r[k] !== undefined) ?? 'reference';
}

/**
 * The project's graph: each source -> the models that read it (source() or `incoming`), each
 * reference table -> the models that join it (`tables`: the tables each model names, see
 * analyzeSql), model -> the models that ref() it, model -> its sinks. Nodes in order: sources,
 * reference tables, models in DAG order, sinks.
 */
export function buildLineage(
  project: Project,
  windows: ReadonlyMap<string, string> = new Map(),
  tables: ReadonlyMap<string, string[]> = new Map(),
  joins: ReadonlyMap<string, string> = new Map(),
): Lineage {
  const nodes: LineageNode[] = [
    ...project.sources.map((s) => ({ id: nodeId('source', s.name), kind: 'source' as const, name: s.name, type: s.type, file: s.file, line: s.line })),
    ...project.references.map((r) => ({ id: nodeId('reference', r.name), kind: 'reference' as const, name: r.name, type: referenceType(r), file: r.file, line: r.line })),
    ...project.models.map((m) => ({
      id: nodeId('model', m.name),
      kind: 'model' as const,
      name: m.name,
      file: m.file,
      ...(windows.has(m.name) ? { window: windows.get(m.name) } : {}),
      ...(joins.has(m.name) ? { join: joins.get(m.name) } : {}),
      ...(m.handler ? { handler: true as const } : {}),
    })),
    ...project.sinks.map((s) => ({ id: nodeId('sink', s.name), kind: 'sink' as const, name: s.name, type: s.type, file: s.file, line: s.line })),
  ];
  const edges: LineageEdge[] = [];
  const add = (from: string, to: string) => {
    if (!edges.some((e) => e.from === from && e.to === to)) edges.push({ from, to });
  };
  for (const m of project.models) {
    const direct = new Set(m.rendered.sources.map((s) => s.name));
    if (m.rendered.usesIncoming && m.source) direct.add(m.source);
    for (const s of direct) add(nodeId('source', s), nodeId('model', m.name));
    for (const t of tables.get(m.name) ?? []) {
      const r = project.references.find((x) => x.name.toLowerCase() === t);
      if (r) add(nodeId('reference', r.name), nodeId('model', m.name));
    }
    for (const r of m.refs) add(nodeId('model', r), nodeId('model', m.name));
    for (const s of m.sinks) add(nodeId('model', m.name), nodeId('sink', s));
  }
  return { nodes, edges };
}

/**
 * The part of the graph around one model: its upstream (everything it reads from), its
 * downstream (everything that reads it, and the sinks), or both.
 */
export function focusLineage(g: Lineage, model: string, direction: 'upstream' | 'downstream' | 'both'): Lineage {
  const id = nodeId('model', model.replace(/^.*[\\/]/, '').replace(/\.(sql|[cm]?[jt]s)$/, ''));
  if (!g.nodes.some((n) => n.id === id)) {
    throw new SluiceError(
      'USAGE',
      `no model named "${id.slice(6)}" (models: ${g.nodes
        .filter((n) => n.kind === 'model')
        .map((n) => n.name)
        .join(', ')})`,
    );
  }
  const keep = new Set([id]);
  if (direction !== 'downstream') for (const n of reachable(id, (x) => g.edges.filter((e) => e.to === x).map((e) => e.from))) keep.add(n);
  if (direction !== 'upstream') for (const n of reachable(id, (x) => g.edges.filter((e) => e.from === x).map((e) => e.to))) keep.add(n);
  return { nodes: g.nodes.filter((n) => keep.has(n.id)), edges: g.edges.filter((e) => keep.has(e.from) && keep.has(e.to)) };
}

const label = (n: LineageNode): string =>
  `${n.kind} ${n.name}${n.type ? ` (${n.type})` : ''}${n.window ? ` [windowed: ${n.window}]` : ''}${n.join ? ` [stream join: ${n.join}]` : ''}${n.handler ? ' [handler]' : ''}`;

/**
 * A readable tree. Downstream: from each root (sources, or the focused model) to the sinks.
 * Upstream: from the focused model back to its sources. A node met again is printed with `(…)`
 * instead of its subtree repeated.
 */
export function asciiTree(g: Lineage, roots: string[], direction: 'upstream' | 'downstream'): string {
  const byId = new Map(g.nodes.map((n) => [n.id, n]));
  const next = (id: string) => (direction === 'downstream' ? g.edges.filter((e) => e.from === id).map((e) => e.to) : g.edges.filter((e) => e.to === id).map((e) => e.from));
  const lines: string[] = [];
  const shown = new Set<string>();
  const walk = (id: string, prefix: string, last: boolean, top: boolean) => {
    const n = byId.get(id)!;
    const kids = next(id);
    const again = shown.has(id) && kids.length > 0;
    lines.push(top ? label(n) : `${prefix}${last ? '└── ' : '├── '}${label(n)}${again ? ' (…)' : ''}`);
    if (again) return;
    shown.add(id);
    const childPrefix = top ? '' : prefix + (last ? '    ' : '│   ');
    for (const [i, k] of kids.entries()) walk(k, childPrefix, i === kids.length - 1, false);
  };
  for (const r of roots) walk(r, '', true, true);
  return lines.join('\n');
}

/** Mermaid `flowchart LR`: sources as stadiums, models as boxes, sinks as cylinders. */
export function mermaid(g: Lineage): string {
  const id = (x: string) => x.replace(/[^A-Za-z0-9_]/g, '_');
  const clean = (x: string) => x.replace(/[<>]/g, '').replaceAll('"', "'");
  const text = (n: LineageNode) =>
    `"${clean(`${n.name}${n.type ? ` (${n.type})` : ''}`)}${n.window ? `<br/>${clean(n.window.split(' · ')[0])}` : ''}${n.join ? `<br/>${clean(n.join.split(' · ')[0])}` : ''}"`;
  const shape = (n: LineageNode) => (n.kind === 'source' ? `([${text(n)}])` : n.kind === 'sink' ? `[(${text(n)})]` : n.kind === 'reference' ? `[/${text(n)}/]` : `[${text(n)}]`);
  const lines = ['flowchart LR'];
  for (const n of g.nodes) lines.push(`  ${id(n.id)}${shape(n)}`);
  for (const e of g.edges) lines.push(`  ${id(e.from)} --> ${id(e.to)}`);
  for (const k of ['source', 'reference', 'model', 'sink'] as const) {
    const members = g.nodes.filter((n) => n.kind === k).map((n) => id(n.id));
    if (members.length) lines.push(`  class ${members.join(',')} ${k}`);
  }
  lines.push(
    '  classDef source fill:#e0f2fe,stroke:#0369a1',
    '  classDef reference fill:#f3e8ff,stroke:#7e22ce',
    '  classDef model fill:#fef9c3,stroke:#a16207',
    '  classDef sink fill:#dcfce7,stroke:#15803d',
  );
  return lines.join('\n');
}

export interface LineageOptions {
  model?: string;
  upstream?: boolean;
  downstream?: boolean;
  format: 'ascii' | 'mermaid' | 'json';
}

/** What `sluice lineage` prints. */
export function renderLineage(project: Project, o: LineageOptions, windows?: ReadonlyMap<string, string>, tables?: ReadonlyMap<string, string[]>, joins?: ReadonlyMap<string, string>): string {
  if (o.upstream && o.downstream) throw new SluiceError('USAGE', 'use --upstream or --downstream, not both (neither shows both sides)');
  if ((o.upstream || o.downstream) && !o.model) throw new SluiceError('USAGE', '--upstream and --downstream need --model');
  const all = buildLineage(project, windows, tables, joins);
  const direction = o.upstream ? 'upstream' : o.downstream ? 'downstream' : 'both';
  const g = o.model ? focusLineage(all, o.model, direction) : all;
  if (o.format === 'json') return JSON.stringify({ project: project.name, ...g }, null, 2);
  if (o.format === 'mermaid') return mermaid(g);
  if (!o.model) {
    const roots = g.nodes.filter((n) => n.kind === 'source' || n.kind === 'reference').map((n) => n.id);
    const orphans = g.nodes.filter((n) => n.kind === 'model' && !g.edges.some((e) => e.to === n.id)).map((n) => n.id);
    return asciiTree(g, [...roots, ...orphans], 'downstream');
  }
  const focus = nodeId('model', o.model.replace(/^.*[\\/]/, '').replace(/\.sql$/, ''));
  const parts: string[] = [];
  if (direction !== 'downstream') parts.push(`upstream of ${focus.slice(6)}:\n${asciiTree(g, [focus], 'upstream')}`);
  if (direction !== 'upstream') parts.push(`downstream of ${focus.slice(6)}:\n${asciiTree(g, [focus], 'downstream')}`);
  return parts.join('\n\n');
}
