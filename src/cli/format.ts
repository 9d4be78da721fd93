import type { SqlAnalysis } from '../sql/analyze.js';
import type { WindowedQuery } from '../sql/windows.js';
import type { IntervalJoinQuery } from '../sql/joins.js';
import { DEFAULT_WINDOW_SETTINGS, type ModelDef, type WindowSettings } from '../project/project-types.js';
/** Renders rows as an aligned text table. */
export function formatTable(columns: { name: string; type?: string }[], rows: Record<string, unknown>[], maxWidth = 40): string {
  if (columns.length === 0) return '(no columns)';
  const cell = (v: unknown): string => {
    const s = v === null || v === undefined ? 'NULL' : typeof v === 'object' ? JSON.stringify(v) : String(v);
    return s.length > maxWidth ? s.slice(0, maxWidth - 1) + '…' : s;
  };
  const header = columns.map((c) => c.name);
  const body = rows.map((r) => columns.map((c) => cell(r[c.name])));
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => c.padEnd(widths[i]))
      .join(' | ')
      .trimEnd();
  const sep = widths.map((w) => '-'.repeat(w)).join('-+-');
  return [line(header), sep, ...body.map(line)].join('\n');
}

/** "stateless", "windowed: the window, watermark and late policy", or "stateful: why". */
export function statefulness(analysis: Pick<SqlAnalysis, 'stateful' | 'window' | 'join' | 'dedup' | 'view'>, settings?: WindowSettings, stateTtl?: string): string {
  if (analysis.stateful.length) return `stateful: ${analysis.stateful.join('; ')}`;
  if (analysis.window) return `windowed: ${windowSummary(analysis.window, settings)}`;
  if (analysis.join) return `stream join: ${joinSummary(analysis.join, settings)}`;
  if (analysis.view) return `materialised view: a row per ${analysis.view.keys.join(', ') || 'stream (one group)'} kept current${stateTtl ? ` · state_ttl ${stateTtl}` : ''}`;
  if (analysis.dedup) {
    const s = settings ?? DEFAULT_WINDOW_SETTINGS;
    return `deduplicating: the first row per ${analysis.dedup.keys.join(', ')} by ${analysis.dedup.time} · ttl ${s.ttl ?? '(not set)'} · watermark: max time - ${s.lateness} · late: ${s.late}`;
  }
  return 'stateless';
}

/** What a step of the DAG is: a handler (what it reads, its schemas), or a model's statefulness (see statefulness). */
export function stepKind(model: Pick<ModelDef, 'handler' | 'window' | 'stateTtl'>, analysis: Pick<SqlAnalysis, 'stateful' | 'window' | 'join' | 'dedup' | 'view'>): string {
  const h = model.handler;
  if (!h) return statefulness(analysis, model.window, model.stateTtl);
  const from = h.from.kind === 'incoming' ? 'incoming' : h.from.kind === 'ref' ? `ref ${h.from.name}` : `source ${h.from.name}`;
  const schemas = [h.spec.input ? 'input schema' : '', h.outputColumns ? `output schema (${h.outputColumns.join(', ')})` : h.spec.output ? 'output schema' : ''].filter(Boolean);
  return `handler: code per row of ${from}${schemas.length ? `, ${schemas.join(', ')}` : ''}`;
}

/** A windowed model's window, watermark and late-data policy, in one line. */
export function windowSummary(w: WindowedQuery, settings: WindowSettings = DEFAULT_WINDOW_SETTINGS): string {
  const s = settings;
  const parts = [`${w.written}${w.keys.length ? ` per ${w.keys.join(', ')}` : ''}`, `watermark: max event time - ${s.lateness}`, `idle partitions after ${s.idleTimeout}`, `late: ${s.late}`];
  if (s.late === 'update') parts.push(`allowed_lateness ${s.allowedLateness}`);
  if (s.maxSessionDuration) parts.push(`max_session_duration ${s.maxSessionDuration}`);
  if (s.maxGroupsPerWindow) parts.push(`max_groups_per_window ${s.maxGroupsPerWindow} (${s.onMaxGroups})`);
  return parts.join(' · ');
}

/** A stream join's kind, inputs, bound, watermark and late policy, in one line. */
export function joinSummary(j: IntervalJoinQuery, settings: WindowSettings = DEFAULT_WINDOW_SETTINGS): string {
  const s = settings;
  const parts = [`${j.kind} join of ${j.left.alias} and ${j.right.alias} on ${j.written}`, `watermark: max time - ${s.lateness}`, `idle partitions after ${s.idleTimeout}`, `late: ${s.late}`];
  if (s.late === 'reopen') parts.push(`allowed_lateness ${s.allowedLateness}`);
  return parts.join(' · ');
}
