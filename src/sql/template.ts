import type { ConfigIssue } from '../errors.js';
import { ident } from './quote.js';

export const SOURCE_SCHEMA = 'sluice_source';
export const MODEL_SCHEMA = 'sluice_model';

export interface TemplateRef {
  name: string;
  line: number;
}

export interface RenderedModel {
  sql: string;
  sources: TemplateRef[];
  refs: TemplateRef[];
  /** Reads the project's single source through the bare name `incoming`. */
  usesIncoming: boolean;
  config: Record<string, unknown>;
  /** Line of the first `{{ config(...) }}` (for errors about its keys). */
  configLine?: number;
}

const BLOCK = /\{\{\s*([\s\S]*?)\s*\}\}/g;
const CALL = /^(source|ref|config)\s*\(([\s\S]*)\)$/;

/**
 * Renders `{{ source('x') }}`, `{{ ref('m') }}` and `{{ config(k=v, ...) }}` in a model's SQL.
 * source/ref become relations in sluice's own schemas; config is removed and returned.
 */
export function renderModel(sqlText: string, file: string, issues: ConfigIssue[]): RenderedModel {
  const sources: TemplateRef[] = [];
  const refs: TemplateRef[] = [];
  const config: Record<string, unknown> = {};
  let configLine: number | undefined;
  const sql = sqlText.replace(BLOCK, (whole, inner: string, offset: number) => {
    const line = sqlText.slice(0, offset).split('\n').length;
    const m = CALL.exec(inner.trim());
    if (!m) {
      issues.push({ file, line, message: `unknown template expression {{ ${inner.trim()} }} (expected source('name'), ref('model') or config(...))` });
      return whole;
    }
    const [, fn, argText] = m;
    if (fn === 'config') {
      const parsed = parseKwargs(argText);
      if (typeof parsed === 'string') issues.push({ file, line, message: `config(...): ${parsed}` });
      else Object.assign(config, parsed);
      configLine ??= line;
      return '';
    }
    const name = parseSingleString(argText);
    if (name === undefined) {
      issues.push({ file, line, message: `${fn}(...) takes one quoted name, got ${fn}(${argText.trim()})` });
      return whole;
    }
    if (fn === 'source') {
      sources.push({ name, line });
      return `${SOURCE_SCHEMA}.${ident(name)}`;
    }
    refs.push({ name, line });
    return `${MODEL_SCHEMA}.${ident(name)}`;
  });
  const usesIncoming = /\bincoming\b/i.test(stripComments(sql));
  return { sql, sources, refs, usesIncoming, config, configLine };
}

function parseSingleString(text: string): string | undefined {
  const m = /^\s*(['"])([^'"]+)\1\s*$/.exec(text);
  return m?.[2];
}

function parseKwargs(text: string): Record<string, unknown> | string {
  const out: Record<string, unknown> = {};
  const re = /\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*('(?:[^']*)'|"(?:[^"]*)"|\[[^\]]*\]|-?\d+(?:\.\d+)?|true|false|True|False)\s*(,|$)/y;
  let pos = 0;
  const t = text.trim();
  while (pos < t.length) {
    re.lastIndex = pos;
    const m = re.exec(t);
    if (!m) return `cannot read arguments "${t.slice(pos)}" (expected key='value', ...)`;
    out[m[1]] = literal(m[2]);
    pos = re.lastIndex;
  }
  return out;
}

function literal(v: string): unknown {
  if (v.startsWith('[')) {
    return v
      .slice(1, -1)
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean)
      .map(literal);
  }
  if (v.startsWith("'") || v.startsWith('"')) return v.slice(1, -1);
  if (/^(true|True)$/.test(v)) return true;
  if (/^(false|False)$/.test(v)) return false;
  return Number(v);
}

export function stripComments(sql: string): string {
  return sql.replace(/--[^\n]*/g, '').replace(/\/\*[\s\S]*?\*\//g, '');
}
