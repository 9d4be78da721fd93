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
 * The sources whose batches a piece of rendered SQL reads: the sources it names, and those
 * feeding the models it names (`feedsOf`), following only the CTEs its query reads (a stream
 * join's side is the whole WITH list and a SELECT of one of them).
 */
export function sqlFeeds(sql: string, feedsOf: (model: string) => string[]): string[] {
  const { ctes, main } = splitCtes(sql);
  const feeds = new Set<string>();
  const seen = new Set<string>();
  const walk = (text: string) => {
    for (const [, schema, name] of text.matchAll(/\b(sluice_source|sluice_model)\."?([^".\s),]+)"?/g)) {
      if (schema === 'sluice_source') feeds.add(name);
      else for (const f of feedsOf(name)) feeds.add(f);
    }
    for (const [name, body] of ctes) {
      if (seen.has(name) || !new RegExp(`(^|[^A-Za-z0-9_."])"?${name.replace(/[^A-Za-z0-9_]/g, '\\$&')}"?($|[^A-Za-z0-9_"])`).test(stripQuoted(text))) continue;
      seen.add(name);
      walk(body);
    }
  };
  walk(main);
  return [...feeds];
}

/** Text with its string literals emptied (a CTE's name inside a literal is not a read of it). */
function stripQuoted(text: string): string {
  return text.replace(/'(?:[^']|'')*'/g, "''");
}

/** A query's leading WITH list, as CTE name -> body, and the query after it (SQL as DuckDB prints it). */
export function splitCtes(sql: string): { ctes: Map<string, string>; main: string } {
  const ctes = new Map<string, string>();
  let i = sql.search(/\S/);
  const rest = sql.slice(i);
  const head = /^WITH\s+(RECURSIVE\s+)?/i.exec(rest);
  if (!head) return { ctes, main: sql };
  i += head[0].length;
  for (;;) {
    const def = /^\s*("(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_]*)\s*(\([^)]*\)\s*)?AS\s+(NOT\s+)?(MATERIALIZED\s+)?\(/i.exec(sql.slice(i));
    if (!def) return { ctes: new Map(), main: sql };
    const name = def[1].startsWith('"') ? def[1].slice(1, -1).replaceAll('""', '"') : def[1];
    const open = i + def[0].length;
    const close = matchParen(sql, open - 1);
    if (close < 0) return { ctes: new Map(), main: sql };
    ctes.set(name, sql.slice(open, close));
    i = close + 1;
    const comma = /^\s*,/.exec(sql.slice(i));
    if (!comma) return { ctes, main: sql.slice(i) };
    i += comma[0].length;
  }
}

/** The index of the parenthesis closing the one at `at`, skipping quoted text; -1 if none. */
function matchParen(sql: string, at: number): number {
  let depth = 0;
  for (let i = at; i < sql.length; i++) {
    const c = sql[i];
    if (c === "'" || c === '"') {
      const end = sql.indexOf(c, i + 1);
      if (end < 0) return -1;
      i = end;
      continue;
    }
    if (c === '(') depth++;
    else if (c === ')' && --depth === 0) return i;
  }
  return -1;
}
