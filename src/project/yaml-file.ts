import fs from 'node:fs';
import { isUtf8 } from 'node:buffer';
import { LineCounter, parseDocument, isMap, isSeq, isPair, isScalar, visit, type Node, type Document, type Pair, type YAMLMap } from 'yaml';
import type { z } from 'zod';
import { errorMessage, type ConfigIssue } from '../errors.js';
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

  /** Each map's pairs by key, built at the first look-up: a file with many keys and many issues stays linear. */
  private readonly pairs = new WeakMap<YAMLMap, Map<string, Pair>>();

  /** Line (1-based) of the deepest existing node on `keyPath`, preferring the key itself. */
  lineOf(keyPath: KeyPath): number | undefined {
    if (!this.doc) return undefined;
    let node: unknown = this.doc.contents;
    let best: number | undefined = rangeLine(node, this.lines);
    for (const seg of keyPath) {
      if (isMap(node)) {
        let byKey = this.pairs.get(node);
        if (!byKey) {
          byKey = new Map();
          for (const p of node.items) if (isPair(p) && isScalar(p.key) && !byKey.has(String(p.key.value))) byKey.set(String(p.key.value), p);
          this.pairs.set(node, byKey);
        }
        const pair = byKey.get(String(seg));
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

/** True when `file` is a symbolic link whose target is missing (or a loop of links). */
function brokenLink(file: string): boolean {
  try {
    return fs.lstatSync(file).isSymbolicLink();
  } catch {
    return false;
  }
}

/** What is wrong with a path that cannot be read, in words (no errno soup). */
function unreadable(file: string, err: unknown): string {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === 'EISDIR') return 'is a directory, not a file';
  if (code === 'ELOOP') return 'is a symbolic link that loops back on itself';
  if (code === 'ENOENT' && brokenLink(file)) {
    let target = '';
    try {
      target = ` ${fs.readlinkSync(file)}`;
    } catch {
      // the link vanished meanwhile: say it without its target
    }
    return `is a symbolic link to${target || ' a file'} that does not exist`;
  }
  return `cannot be read: ${errorMessage(err)}`;
}

/** 1-based line of byte offset `at`. */
function lineAt(buf: Buffer, at: number): number {
  let line = 1;
  for (let i = buf.indexOf(10); i !== -1 && i < at; i = buf.indexOf(10, i + 1)) line++;
  return line;
}

/** Config files are small; a bigger one is a mistake (and would take the YAML parser minutes). */
const MAX_CONFIG_BYTES = 8 * 2 ** 20;

/**
 * A config file's text (a model's SQL, a YAML file), or undefined with an issue naming the file
 * (and the line) when it is not a readable file of UTF-8 text: a directory, a dangling symbolic
 * link or a loop, a device or a pipe, over MAX_CONFIG_BYTES, bytes that are not UTF-8 (which would
 * otherwise be silently replaced), a NUL byte.
 */
export function readConfigText(file: string, shown: string, issues: ConfigIssue[]): string | undefined {
  let buf: Buffer;
  try {
    const st = fs.statSync(file);
    // A pipe or a device would be read forever (a link to /dev/zero, a FIFO).
    if (st.isDirectory()) throw Object.assign(new Error('EISDIR'), { code: 'EISDIR' });
    if (!st.isFile()) {
      issues.push({ file: shown, message: 'is not a regular file (a device, a pipe or a socket)' });
      return undefined;
    }
    if (st.size > MAX_CONFIG_BYTES) {
      issues.push({ file: shown, message: `is ${st.size} bytes: config files may have up to ${MAX_CONFIG_BYTES / 2 ** 20} MiB` });
      return undefined;
    }
    buf = fs.readFileSync(file);
  } catch (err) {
    issues.push({ file: shown, message: unreadable(file, err) });
    return undefined;
  }
  if (!isUtf8(buf)) {
    let start = 0;
    let line = 1;
    for (let end = buf.indexOf(10); ; end = buf.indexOf(10, start), line++) {
      if (!isUtf8(buf.subarray(start, end === -1 ? buf.length : end)) || end === -1) break;
      start = end + 1;
    }
    issues.push({ file: shown, line, message: 'is not valid UTF-8 text (save the file as UTF-8)' });
    return undefined;
  }
  const nul = buf.indexOf(0);
  if (nul !== -1) {
    issues.push({ file: shown, line: lineAt(buf, nul), message: 'holds a NUL byte (not text)' });
    return undefined;
  }
  return buf.toString('utf8');
}

/** No config nests this deep; the YAML parser recurses per level and, thousands deep, can take the process down. */
const MAX_YAML_DEPTH = 100;

/**
 * The line where `text` first nests deeper than MAX_YAML_DEPTH, counting block levels (deeper
 * indentation, `- ` entries on one line) and flow brackets outside quotes and comments; an
 * estimate, checked before the parser sees the text. Undefined when it does not.
 */
function tooDeep(text: string): number | undefined {
  const indents: number[] = [];
  let flow = 0;
  let line = 0;
  /** Indentation of the key whose block scalar (`|`, `>`) the lines indented more belong to. */
  let scalar = -1;
  for (const l of text.split('\n')) {
    line++;
    const body = l.trimStart();
    const indent = l.length - body.length;
    if (scalar >= 0 && (body === '' || indent > scalar)) continue;
    scalar = flow === 0 && /(?:^|[\s:])[|>][-+0-9]*\s*(?:#.*)?$/.test(l) ? indent : -1;
    let depth = indents.length;
    if (flow === 0 && body !== '' && !body.startsWith('#')) {
      while (indents.length && indents[indents.length - 1] >= indent) indents.pop();
      indents.push(indent);
      depth = indents.length + (/^(?:[-?:]\s+)+/.exec(body)?.[0].replace(/\s+/g, '').length ?? 0);
    }
    if (depth > MAX_YAML_DEPTH) return line;
    let quote = '';
    for (let i = 0; i < l.length; i++) {
      const c = l[i];
      if (quote) {
        if (c === quote) quote = '';
        else if (c === '\\' && quote === '"') i++;
      } else if (c === '#' && (i === 0 || l[i - 1] === ' ' || l[i - 1] === '\t')) break;
      else if (c === '"' || c === "'") quote = c;
      else if (c === '[' || c === '{') {
        if (++flow + depth > MAX_YAML_DEPTH) return line;
      } else if ((c === ']' || c === '}') && flow > 0) flow--;
    }
  }
  return undefined;
}

/**
 * Reads a YAML file with `${VAR}` interpolation. Returns undefined when the file is absent.
 * Syntax errors are pushed to `issues` with their line, and so is a file that exists but cannot
 * be read (see readConfigText) or whose aliases expand without bound: the file is then present
 * with an undefined value, as for a syntax error.
 */
export function readYaml(file: string, env: NodeJS.ProcessEnv, issues: ConfigIssue[], display?: string): YamlFile | undefined {
  if (!fs.existsSync(file) && !brokenLink(file)) return undefined;
  const shown = display ?? file;
  const lines = new LineCounter();
  const raw = readConfigText(file, shown, issues);
  if (raw === undefined) return new YamlFile(shown, undefined, undefined, lines);
  const text = interpolateEnv(raw, shown, env, issues);
  const deep = tooDeep(text);
  if (deep !== undefined) {
    issues.push({ file: shown, line: deep, message: `nests deeper than ${MAX_YAML_DEPTH} levels` });
    return new YamlFile(shown, undefined, undefined, lines);
  }
  // logLevel 'error': no process warnings on stderr (a complex key is reported as an unknown key instead).
  // Unique keys are checked below: yaml's own check compares every key with every other.
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: false, logLevel: 'error' });
  if (doc.errors.length > 0) {
    const seen = new Set<string>();
    for (const e of doc.errors) {
      // Without prettyErrors, errors carry offsets only.
      const line = e.linePos?.[0]?.line ?? (e.pos ? lines.linePos(e.pos[0]).line : undefined);
      const message = `YAML syntax error: ${e.message.split('\n')[0]}`;
      if (seen.has(`${line}:${message}`)) continue;
      seen.add(`${line}:${message}`);
      issues.push({ file: shown, line, message });
    }
    return new YamlFile(shown, undefined, undefined, lines);
  }
  let duplicate = false;
  visit(doc, {
    Map(_key, node) {
      const seen = new Set<string>();
      for (const p of node.items) {
        if (!isScalar(p.key)) continue;
        const k = `${typeof p.key.value}:${String(p.key.value)}`;
        if (seen.has(k)) {
          duplicate = true;
          issues.push({ file: shown, line: rangeLine(p.key, lines), message: `YAML syntax error: Map keys must be unique ("${String(p.key.value)}" again)` });
        }
        seen.add(k);
      }
    },
  });
  if (duplicate) return new YamlFile(shown, undefined, undefined, lines);
  let value: unknown;
  try {
    value = doc.toJS();
  } catch (err) {
    // yaml refuses aliases that expand past its maxAliasCount (a "billion laughs" file).
    let line: number | undefined;
    visit(doc, {
      Alias(_key, node) {
        if (node.range) line = lines.linePos(node.range[0]).line;
        return visit.BREAK;
      },
    });
    const why = /alias/i.test(errorMessage(err)) ? 'aliases (*name) expand to too much data; write the values out instead' : errorMessage(err);
    issues.push({ file: shown, line, message: `YAML: ${why}` });
    return new YamlFile(shown, undefined, undefined, lines);
  }
  return new YamlFile(shown, value ?? {}, doc, lines);
}

/** Issues one checkSchema() reports at most (then one saying how many more). */
const MAX_ISSUES = 100;

/** Validates `value` (found at `basePath` inside `yaml`) against a zod schema; collects its issues (the first MAX_ISSUES). */
export function checkSchema<S extends z.ZodType>(yaml: YamlFile, schema: S, value: unknown, basePath: KeyPath, issues: ConfigIssue[]): z.output<S> | undefined {
  let r: z.ZodSafeParseResult<z.output<S>>;
  try {
    r = schema.safeParse(value);
  } catch (err) {
    // zod gathers a huge list's issues with push(...issues): past ~100,000 the stack overflows.
    issues.push({ file: yaml.file, line: yaml.lineOf(basePath), key: basePath.join('.') || undefined, message: `too big to check (${errorMessage(err)})` });
    return undefined;
  }
  if (r.success) return r.data;
  // A file of a million unknown keys is a million issues: the first ones say what is wrong.
  const before = issues.length;
  let more = 0;
  const add = (i: ConfigIssue) => (issues.length - before < MAX_ISSUES ? issues.push(i) : more++);
  for (const issue of r.error.issues) {
    const p = [...basePath, ...(issue.path as (string | number)[])];
    if (issue.code === 'unrecognized_keys') {
      for (const k of issue.keys) {
        if (issues.length - before >= MAX_ISSUES) {
          more++;
          continue;
        }
        const kp = [...p, k];
        add({
          file: yaml.file,
          line: yaml.lineOf(kp),
          key: kp.join('.'),
          message: `unknown key "${k}"${suggest(k, schema, issue.path as (string | number)[])}`,
        });
      }
      continue;
    }
    if (issues.length - before >= MAX_ISSUES) more++;
    else add({ file: yaml.file, line: yaml.lineOf(p), key: p.join('.') || undefined, message: describeIssue(issue) });
  }
  if (more) issues.push({ file: yaml.file, line: yaml.lineOf(basePath), key: basePath.join('.') || undefined, message: `and ${more} more problems like these` });
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
