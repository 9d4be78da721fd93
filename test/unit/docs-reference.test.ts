import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import YAML from 'yaml';
import { sinks, sources } from '../../src/connectors/registry.js';
import { sinkPolicySchema, sourcePolicySchema } from '../../src/connectors/shared-config.js';
import * as loader from '../../src/project/project-loader.js';
import { targetSchema } from '../../src/project/targets.js';
import { unitTestFileSchema } from '../../src/project/data-test-config.js';
import { scaffold, scaffoldShowcase, schemaModeline } from '../../src/cli/init.js';
// @ts-expect-error plain JavaScript, shared with scripts/gen-docs.mjs
import { generatedFiles, jsonSchemas } from '../../scripts/docs-reference.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const STALE = 'is stale: run `npm run build && npm run docs:gen` and commit the result';

// The loader's schemas of sluice.yml and config/models.yml, once it exports them.
const ld = loader as Record<string, unknown>;
const inputs = {
  sources,
  sinks,
  sourcePolicySchema,
  sinkPolicySchema,
  projectSchema: ld.projectSchema,
  modelsSchema: ld.modelsSchema,
  targetSchema,
  unitTestFileSchema,
};

type Schema = Record<string, unknown> | boolean;

const tmp: string[] = [];
afterAll(() => {
  for (const d of tmp) fs.rmSync(d, { recursive: true, force: true });
});

describe('generated reference (docs/sources.md, docs/sinks.md, schema/*.json)', () => {
  const files = generatedFiles(ROOT, inputs) as Record<string, string>;

  it('is up to date with the config schemas', () => {
    const stale: string[] = [];
    for (const [rel, want] of Object.entries(files)) {
      const file = path.join(ROOT, rel);
      const have = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : undefined;
      if (have !== want) stale.push(have === undefined ? `${rel} is missing` : rel);
    }
    const schemaDir = path.join(ROOT, 'schema');
    for (const f of fs.existsSync(schemaDir) ? fs.readdirSync(schemaDir) : []) {
      if (f.endsWith('.schema.json') && !(`schema/${f}` in files)) stale.push(`schema/${f} is no longer generated`);
    }
    expect(stale, `the generated reference ${STALE}:\n  ${stale.join('\n  ')}`).toEqual([]);
  });

  it('documents every source and sink type and every key of its schema', () => {
    const md = { source: files['docs/sources.md'], sink: files['docs/sinks.md'] };
    for (const s of sources) expect(md.source).toContain(`### \`${s.type}\` keys`);
    for (const s of sinks) expect(md.sink).toContain(`### \`${s.type}\` keys`);
    for (const k of ['limits.max_message_bytes', 'contract.new_columns']) expect(md.source).toContain(`| \`${k}\` |`);
    for (const k of ['retry.max_attempts', 'on_error', 'circuit.cooldown_ms']) expect(md.sink).toContain(`| \`${k}\` |`);
    const kafka = md.source.slice(md.source.indexOf('### `kafka` keys'));
    expect(kafka).toContain('| `group_id` | string | `"sluice"` |  | consumer group shared by the workers; offsets are committed here |');
    expect(kafka).toContain('| `brokers` | string or list of string |  | yes |');
  });
});

// ---- a small JSON Schema validator (the keywords the generated schemas use) ----

const KNOWN = new Set([
  '$schema',
  '$defs',
  '$ref',
  'title',
  'description',
  'default',
  'type',
  'const',
  'enum',
  'anyOf',
  'oneOf',
  'allOf',
  'properties',
  'required',
  'additionalProperties',
  'propertyNames',
  'items',
  'pattern',
  'minLength',
  'maxLength',
  'minItems',
  'maxItems',
  'minimum',
  'maximum',
  'exclusiveMinimum',
  'exclusiveMaximum',
]);

function keywords(s: unknown, out = new Set<string>()): Set<string> {
  if (!s || typeof s !== 'object') return out;
  if (Array.isArray(s)) {
    for (const x of s) keywords(x, out);
    return out;
  }
  for (const [k, v] of Object.entries(s)) {
    out.add(k);
    if (k === 'properties' || k === '$defs') for (const x of Object.values(v as object)) keywords(x, out);
    else if (k !== 'default' && k !== 'const' && k !== 'enum' && k !== 'required') keywords(v, out);
  }
  return out;
}

function typeOf(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  if (typeof v === 'number') return Number.isInteger(v) ? 'integer' : 'number';
  return typeof v;
}

function validate(root: Schema, v: unknown, start: Schema = root, startAt = ''): string[] {
  const errs: string[] = [];
  const check = (s: Schema, v: unknown, at: string): void => {
    if (s === true) return;
    if (s === false) return void errs.push(`${at}: not allowed`);
    if (typeof s.$ref === 'string') {
      const target = (s.$ref as string)
        .replace(/^#\//, '')
        .split('/')
        .reduce<unknown>((o, k) => (o as Record<string, unknown>)[k], root);
      if (!target) return void errs.push(`${at}: unresolved $ref ${s.$ref}`);
      check(target as Schema, v, at);
    }
    const t = typeOf(v);
    const types = s.type === undefined ? undefined : ([] as unknown[]).concat(s.type);
    if (types && !types.some((x) => x === t || (x === 'number' && t === 'integer'))) return void errs.push(`${at}: expected ${types.join(' or ')}, got ${t}`);
    if ('const' in s && v !== s.const) errs.push(`${at}: expected ${JSON.stringify(s.const)}`);
    if (s.enum && !(s.enum as unknown[]).includes(v)) errs.push(`${at}: expected one of ${JSON.stringify(s.enum)}`);
    for (const kw of ['anyOf', 'oneOf'] as const) {
      const alts = s[kw] as Schema[] | undefined;
      if (!alts) continue;
      const n = alts.filter((x) => matches(x, v, at)).length;
      if (n === 1 || (n > 1 && kw === 'anyOf')) continue;
      if (n > 1) errs.push(`${at}: matches ${n} of oneOf`);
      else {
        // None matches: the errors of the closest alternative (the connector whose type it names).
        const each = alts.map((x) => validate(root, v, x, at));
        errs.push(`${at}: matches none of ${kw}`, ...each.reduce((a, b) => (b.length < a.length ? b : a)));
      }
    }
    if (s.allOf) for (const x of s.allOf as Schema[]) check(x, v, at);
    if (t === 'string') {
      const str = v as string;
      if (s.pattern && !new RegExp(s.pattern as string, 'u').test(str)) errs.push(`${at}: does not match ${s.pattern}`);
      if (typeof s.minLength === 'number' && str.length < s.minLength) errs.push(`${at}: shorter than ${s.minLength}`);
    }
    if (t === 'integer' || t === 'number') {
      const n = v as number;
      if (typeof s.minimum === 'number' && n < s.minimum) errs.push(`${at}: below ${s.minimum}`);
      if (typeof s.maximum === 'number' && n > s.maximum) errs.push(`${at}: above ${s.maximum}`);
      if (typeof s.exclusiveMinimum === 'number' && n <= s.exclusiveMinimum) errs.push(`${at}: not above ${s.exclusiveMinimum}`);
      if (typeof s.exclusiveMaximum === 'number' && n >= s.exclusiveMaximum) errs.push(`${at}: not below ${s.exclusiveMaximum}`);
    }
    if (t === 'array') {
      const a = v as unknown[];
      if (typeof s.minItems === 'number' && a.length < s.minItems) errs.push(`${at}: fewer than ${s.minItems} items`);
      if (s.items !== undefined) for (const [i, x] of a.entries()) check(s.items as Schema, x, `${at}[${i}]`);
    }
    if (t === 'object') {
      const o = v as Record<string, unknown>;
      for (const k of (s.required as string[] | undefined) ?? []) if (!(k in o)) errs.push(`${at}: missing required key "${k}"`);
      const props = (s.properties ?? {}) as Record<string, Schema>;
      for (const [k, x] of Object.entries(o)) {
        const p = at ? `${at}.${k}` : k;
        if (s.propertyNames && typeof s.propertyNames === 'object' && (s.propertyNames as { pattern?: string }).pattern && !new RegExp((s.propertyNames as { pattern: string }).pattern).test(k))
          errs.push(`${p}: bad name`);
        if (k in props) check(props[k], x, p);
        else if (s.additionalProperties === false) errs.push(`${p}: unknown key "${k}"`);
        else if (s.additionalProperties && typeof s.additionalProperties === 'object') check(s.additionalProperties as Schema, x, p);
      }
    }
  };
  const matches = (s: Schema, v: unknown, at: string): boolean => {
    const before = errs.length;
    check(s, v, at);
    const ok = errs.length === before;
    errs.length = before;
    return ok;
  };
  check(start, v, startAt);
  return errs;
}

describe('JSON Schemas', () => {
  const schemas = jsonSchemas(inputs) as Record<string, Schema>;
  const schemaFor = (rel: string): Schema | undefined => {
    const line = schemaModeline(rel);
    if (!line) return undefined;
    const m = /\$schema=file:\/\/(.*)\n$/.exec(line);
    expect(m, line).toBeTruthy();
    const name = path.basename(decodeURIComponent(m![1]));
    expect(path.dirname(decodeURIComponent(m![1]))).toBe(path.join(ROOT, 'schema'));
    return schemas[name];
  };

  it('use only keywords the checks below understand, and reject unknown keys', () => {
    for (const [name, s] of Object.entries(schemas)) {
      const unknown = [...keywords(s)].filter((k) => !KNOWN.has(k));
      expect(unknown, name).toEqual([]);
    }
  });

  it('accept the example project and the projects `sluice init` scaffolds, whose YAML files name their schema', async () => {
    const dirs = [path.join(ROOT, 'examples/orders')];
    for (const [i, make] of [scaffold, scaffoldShowcase].entries()) {
      const d = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-schema-'));
      tmp.push(d);
      await make(d, `p${i}`);
      dirs.push(d);
    }
    let checked = 0;
    for (const dir of dirs) {
      const ymls = [
        'sluice.yml',
        'config/sources.yml',
        'config/sinks.yml',
        'config/models.yml',
        ...(fs.existsSync(path.join(dir, 'tests'))
          ? fs
              .readdirSync(path.join(dir, 'tests'))
              .filter((f) => f.endsWith('.yml'))
              .map((f) => `tests/${f}`)
          : []),
      ];
      for (const rel of ymls) {
        const file = path.join(dir, rel);
        if (!fs.existsSync(file)) continue;
        const s = schemaFor(rel);
        const text = fs.readFileSync(file, 'utf8');
        if (dir !== dirs[0] && s) expect(text.split('\n')[0], `${file} names its schema`).toBe(schemaModeline(rel)!.trimEnd());
        if (!s) continue;
        expect(validate(s, YAML.parse(text)), file).toEqual([]);
        checked++;
      }
    }
    // sources, sinks (x3) and the showcase's unit tests at least; sluice.yml and models.yml once the loader exports their schemas.
    expect(checked).toBeGreaterThanOrEqual(7);
  });

  it('flag unknown keys, wrong types and a missing type; take ${VAR} for numbers and booleans', () => {
    const src = schemas['sources.schema.json'];
    const sink = schemas['sinks.schema.json'];
    const ok = (s: Schema, v: unknown) => expect(validate(s, v), JSON.stringify(v)).toEqual([]);
    const bad = (s: Schema, v: unknown, want: RegExp) => expect(validate(s, v).join('\n'), JSON.stringify(v)).toMatch(want);
    ok(src, { source: { type: 'file', path: 'data', batch_size: 10, limits: { max_depth: 64 }, contract: { new_columns: 'freeze' } } });
    ok(src, { sources: { a: { type: 'kafka', brokers: 'k:9092', topics: ['t'], start: { timestamp: 0 } }, b: { type: 'nats', stream: 'S' } } });
    ok(src, { source: { type: 'file', path: 'data', batch_size: '${BS}', follow: '${FOLLOW:-false}', contract: { new_columns: '${POLICY}' } } });
    bad(src, { source: { type: 'file', path: 'data', colour: 'red' } }, /unknown key "colour"/);
    bad(src, { source: { type: 'file', path: 'data', batch_size: 'ten' } }, /source.batch_size: matches none of anyOf/);
    bad(src, { source: { path: 'data' } }, /missing required key "type"/);
    bad(src, { source: { type: 'file', path: 'x' }, sources: {} }, /matches 2 of oneOf/);
    bad(src, { sourcez: {} }, /unknown key "sourcez"/);
    bad(src, { sources: { 'bad-name': { type: 'file', path: 'x' } } }, /bad name/);
    ok(sink, { sinks: { lake: { type: 'parquet', path: 'out', retry: { max_attempts: 3 }, on_error: 'dlq', circuit: { failures: 2 } } } });
    bad(sink, { sink: { type: 'parquet', path: 'out', circuit: { cooldown: 5 } } }, /unknown key "cooldown"/);
    bad(sink, { sink: { type: 'nope', path: 'out' } }, /expected one of/);
  });
});

// ---- docs: layout and links ----

function mdFiles(): string[] {
  const out = ['README.md'];
  const walk = (d: string) => {
    for (const e of fs.readdirSync(path.join(ROOT, d), { withFileTypes: true })) {
      if (e.isDirectory()) walk(`${d}/${e.name}`);
      else if (e.name.endsWith('.md')) out.push(`${d}/${e.name}`);
    }
  };
  walk('docs');
  return out;
}

/** GitHub's heading anchors of a Markdown file. */
function anchors(text: string): Set<string> {
  const out = new Set<string>();
  const seen = new Map<string, number>();
  let fence = false;
  for (const line of text.split('\n')) {
    if (/^```/.test(line)) fence = !fence;
    const m = !fence && /^#{1,6} (.*)$/.exec(line);
    if (!m) continue;
    const base = m[1]
      .trim()
      .toLowerCase()
      .replace(/[^\p{L}\p{N} _-]/gu, '')
      .replace(/ /g, '-');
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    out.add(n ? `${base}-${n}` : base);
  }
  return out;
}

describe('docs', () => {
  it('README keeps the quick start and stays short', () => {
    const readme = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8');
    expect(readme).toContain('npm ci && npm run demo');
    expect(readme).toContain('npm ci && npm test');
    expect(readme.split('\n').length).toBeLessThan(300);
  });

  it('every relative link points at a file and heading that exist', () => {
    const broken: string[] = [];
    for (const rel of mdFiles()) {
      const text = fs.readFileSync(path.join(ROOT, rel), 'utf8').replace(/```[\s\S]*?```/g, '');
      for (const m of text.matchAll(/\]\(([^)\s]+)\)/g)) {
        const link = m[1];
        if (/^[a-z]+:/.test(link)) continue;
        const [file, anchor] = link.split('#');
        const target = file ? path.join(path.dirname(path.join(ROOT, rel)), file) : path.join(ROOT, rel);
        if (!fs.existsSync(target)) {
          broken.push(`${rel}: ${link} (no such file)`);
          continue;
        }
        if (anchor && !anchors(fs.readFileSync(target, 'utf8')).has(anchor)) broken.push(`${rel}: ${link} (no such heading)`);
      }
    }
    expect(broken).toEqual([]);
  });
});
