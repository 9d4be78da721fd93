import fs from 'node:fs';
import path from 'node:path';
import { LineCounter, parseDocument, isMap, isSeq, isPair, isScalar, type Node, type Document } from 'yaml';
import type { z } from 'zod';
import type { ConfigIssue } from '../errors.js';
import { interpolateEnv } from './env.js';

export type KeyPath = readonly (string | number)[];

/** A parsed YAML file that can say on which line a key path lives. */
export class YamlFile {
  constructor(
    readonly file: string,
    readonly value: unknown,
    private readonly doc: Document | undefined,
    private readonly lines: LineCounter,
  ) {}

  /** Line (1-based) of the deepest existing node on `keyPath`, preferring the key itself. */
  lineOf(keyPath: KeyPath): number | undefined {
    if (!this.doc) return undefined;
    let node: unknown = this.doc.contents;
    let best: number | undefined = rangeLine(node, this.lines);
    for (const seg of keyPath) {
      if (isMap(node)) {
        const pair = node.items.find((p) => isPair(p) && isScalar(p.key) && String(p.key.value) === String(seg));
        if (!pair) break;
        best = rangeLine(pair.key, this.lines) ?? best;
        node = pair.value;
      } else if (isSeq(node) && typeof seg === 'number') {
        node = node.items[seg];
        best = rangeLine(node, this.lines) ?? best;
      } else break;
    }
    return best;
  }
}

function rangeLine(node: unknown, lines: LineCounter): number | undefined {
  const range = (node as Node | undefined)?.range;
  if (!range) return undefined;
  return lines.linePos(range[0]).line;
}

/**
 * Reads a YAML file with `${VAR}` interpolation. Returns undefined when the file is absent.
 * Syntax errors are pushed to `issues` with their line.
 */
export function readYaml(file: string, env: NodeJS.ProcessEnv, issues: ConfigIssue[], display?: string): YamlFile | undefined {
  if (!fs.existsSync(file)) return undefined;
  const shown = display ?? file;
  const raw = fs.readFileSync(file, 'utf8');
  const text = interpolateEnv(raw, shown, env, issues);
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: true });
  if (doc.errors.length > 0) {
    for (const e of doc.errors) {
      const line = e.linePos?.[0]?.line;
      issues.push({ file: shown, line, message: `YAML syntax error: ${e.message.split('\n')[0]}` });
    }
    return new YamlFile(shown, undefined, undefined, lines);
  }
  return new YamlFile(shown, doc.toJS() ?? {}, doc, lines);
}

/** Validates `value` (found at `basePath` inside `yaml`) against a zod schema; collects every issue. */
export function checkSchema<S extends z.ZodType>(
  yaml: YamlFile,
  schema: S,
  value: unknown,
  basePath: KeyPath,
  issues: ConfigIssue[],
): z.output<S> | undefined {
  const r = schema.safeParse(value);
  if (r.success) return r.data;
  for (const issue of r.error.issues) {
    const p = [...basePath, ...(issue.path as (string | number)[])];
    if (issue.code === 'unrecognized_keys') {
      for (const k of issue.keys) {
        const kp = [...p, k];
        issues.push({
          file: yaml.file,
          line: yaml.lineOf(kp),
          key: kp.join('.'),
          message: `unknown key "${k}"${suggest(k, schema, issue.path as (string | number)[])}`,
        });
      }
      continue;
    }
    issues.push({ file: yaml.file, line: yaml.lineOf(p), key: p.join('.') || undefined, message: describeIssue(issue) });
  }
  return undefined;
}

/** "did you mean" for a misspelt key, from the keys the schema knows at that level. */
function suggest(key: string, schema: z.ZodType, at: (string | number)[]): string {
  let s: unknown = schema;
  for (const seg of at) {
    // Objects by key; lists (element) and maps (valueType) by any index or name.
    const node = s as { shape?: Record<string, unknown>; element?: unknown; valueType?: unknown } | undefined;
    if (typeof seg === 'number' && !node?.element) continue; // the list was unwrapped already
    s = node?.shape?.[String(seg)] ?? node?.element ?? node?.valueType;
    while (s && (s as { unwrap?: () => unknown }).unwrap) s = (s as { unwrap: () => unknown }).unwrap();
  }
  const keys = Object.keys((s as { shape?: Record<string, unknown> } | undefined)?.shape ?? {});
  const close = keys.find((k) => editDistance(k, key) <= 2);
  return close ? ` (did you mean "${close}"?)` : keys.length ? ` (known keys: ${keys.join(', ')})` : '';
}

function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array(b.length).fill(0)] as number[]);
  for (let j = 1; j <= b.length; j++) d[0][j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
  }
  return d[a.length][b.length];
}

function describeIssue(issue: z.core.$ZodIssue): string {
  const msg = issue.message;
  if (issue.code === 'invalid_type' && /received undefined/.test(msg)) {
    return `is required (expected ${issue.expected})`;
  }
  if (issue.code === 'invalid_type') return msg.replace(/^Invalid input: /, '').replace('received', 'got');
  return msg.replace(/^Invalid input: /, '');
}
