// The reference generated from the config schemas (zod, in src/): the key tables of
// docs/sources.md and docs/sinks.md, and the JSON Schemas in schema/ that editors use to complete
// and check config files. Plain JavaScript with no input of its own: the caller hands over the
// schemas, so `npm run docs:gen` (scripts/gen-docs.mjs) passes the built ones from dist/ and the
// staleness test (test/unit/docs-reference.test.ts) the TypeScript sources.
import fs from 'node:fs';
import path from 'node:path';
import { z } from 'zod';

/** A string holding `${VAR}`: interpolated before the YAML is parsed, so any value may be one. */
const INTERPOLATED = { type: 'string', pattern: '\\$\\{' };
const NAME_PATTERN = '^[A-Za-z_][A-Za-z0-9_]*$';
const MAX_SAFE = Number.MAX_SAFE_INTEGER;

/**
 * @typedef {{ type: string, schema: import('zod').ZodType, description: string }} ConnectorSpec
 * @typedef {{
 *   sources: ConnectorSpec[],
 *   sinks: ConnectorSpec[],
 *   sourcePolicySchema: import('zod').ZodObject,
 *   sinkPolicySchema: import('zod').ZodObject,
 *   projectSchema?: import('zod').ZodObject,
 *   modelsSchema?: import('zod').ZodObject,
 *   targetSchema?: import('zod').ZodObject,
 *   unitTestFileSchema?: import('zod').ZodObject,
 * }} Inputs
 */

/** A zod schema as JSON Schema (what a user writes: the input side, defaults optional). */
export function jsonSchemaOf(schema) {
  const js = z.toJSONSchema(schema, { io: 'input', unrepresentable: 'any' });
  delete js.$schema;
  return tidy(js);
}

/** Drops zod's noise (the safe-integer bounds, `format`, which `${VAR}` values would fail). */
function tidy(node) {
  if (Array.isArray(node)) return node.map(tidy);
  if (!node || typeof node !== 'object') return node;
  const out = {};
  for (const [k, v] of Object.entries(node)) {
    if (k === 'maximum' && v === MAX_SAFE) continue;
    if (k === 'minimum' && v === -MAX_SAFE) continue;
    if (k === 'format' && typeof v === 'string') continue;
    if (k === 'propertyNames' && v && v.type === 'string' && Object.keys(v).length === 1) continue;
    if (k === 'properties' || k === '$defs') out[k] = Object.fromEntries(Object.entries(v).map(([p, s]) => [p, tidy(s)]));
    else out[k] = tidy(v);
  }
  return out;
}

/**
 * Where a number, a boolean or one of a set of words is expected, a `${VAR}` string is allowed
 * too (the value is only known once the environment is read). `type: <const>` stays exact: it
 * picks the connector.
 */
function allowInterpolation(node, key) {
  if (Array.isArray(node)) return node.map((n) => allowInterpolation(n));
  if (!node || typeof node !== 'object') return node;
  const out = {};
  for (const [k, v] of Object.entries(node)) {
    if (k === 'properties') out[k] = Object.fromEntries(Object.entries(v).map(([p, s]) => [p, allowInterpolation(s, p)]));
    else if (k === 'default' || k === 'const' || k === 'enum' || k === 'required') out[k] = v;
    else out[k] = allowInterpolation(v);
  }
  if (out.anyOf) {
    // Flatten members that became anyOf themselves, with one interpolation alternative.
    const members = [];
    for (const m of out.anyOf) {
      const bare = m.anyOf && Object.keys(m).every((k) => k === 'anyOf');
      for (const x of bare ? m.anyOf : [m]) if (!members.some((y) => JSON.stringify(y) === JSON.stringify(x))) members.push(x);
    }
    out.anyOf = members;
    return out;
  }
  const scalar = out.type === 'integer' || out.type === 'number' || out.type === 'boolean' || (out.enum && key !== 'type');
  if (!scalar) return out;
  const { description, default: dflt, ...rest } = out;
  const wrapped = {};
  if (description !== undefined) wrapped.description = description;
  if (dflt !== undefined) wrapped.default = dflt;
  wrapped.anyOf = [rest, INTERPOLATED];
  return wrapped;
}

/** A connector's block: its own keys plus the policy keys every connector of its kind takes. */
function connectorBlock(spec, policy) {
  const own = jsonSchemaOf(spec.schema);
  const pol = jsonSchemaOf(policy);
  const block = {
    title: `${spec.type}`,
    description: spec.description,
    ...own,
    properties: { ...own.properties, ...pol.properties },
  };
  block.required = own.required ?? [];
  if (!block.required.includes('type')) block.required.unshift('type');
  block.additionalProperties = false;
  return allowInterpolation(block);
}

/** config/sources.yml or config/sinks.yml: `single:` one block, or `plural:` a map of named ones. */
function namedBlocksSchema(kind, specs, policy, title) {
  const single = kind;
  const plural = `${kind}s`;
  const defs = {};
  for (const s of specs) defs[`${kind}_${s.type}`] = connectorBlock(s, policy);
  defs[kind] = {
    description: `one ${kind}: \`type:\` (${specs.map((s) => s.type).join(', ')}) and its keys`,
    type: 'object',
    required: ['type'],
    properties: { type: { enum: specs.map((s) => s.type), description: `the ${kind} type` } },
    oneOf: specs.map((s) => ({ $ref: `#/$defs/${kind}_${s.type}` })),
  };
  return {
    $schema: 'https://json-schema.org/draft/2020-12/schema',
    title,
    description: `\`${single}:\` (one ${kind}, named "default") or \`${plural}:\` (a map of named ${plural}). Generated from sluice's config schemas by \`npm run docs:gen\`.`,
    type: 'object',
    properties: {
      [single]: { $ref: `#/$defs/${kind}`, description: `the project's one ${kind}` },
      [plural]: {
        description: `named ${plural}: name -> ${kind} block`,
        type: 'object',
        propertyNames: { pattern: NAME_PATTERN },
        additionalProperties: { $ref: `#/$defs/${kind}` },
      },
    },
    additionalProperties: false,
    oneOf: [{ required: [single] }, { required: [plural] }],
    $defs: defs,
  };
}

function wholeFileSchema(schema, title, extraProperties = {}) {
  const js = jsonSchemaOf(schema);
  return allowInterpolation({
    $schema: 'https://json-schema.org/draft/2020-12/schema',
    title,
    description: `Generated from sluice's config schemas by \`npm run docs:gen\`.`,
    ...js,
    properties: { ...js.properties, ...extraProperties },
    additionalProperties: false,
  });
}

/**
 * The JSON Schemas, by file name under schema/. sluice.yml and config/models.yml have theirs only
 * when the project loader exports `projectSchema` and `modelsSchema`.
 * @param {Inputs} inputs
 * @returns {Record<string, object>}
 */
export function jsonSchemas(inputs) {
  const out = {
    'sources.schema.json': namedBlocksSchema('source', inputs.sources, inputs.sourcePolicySchema, 'sluice config/sources.yml'),
    'sinks.schema.json': namedBlocksSchema('sink', inputs.sinks, inputs.sinkPolicySchema, 'sluice config/sinks.yml'),
  };
  if (inputs.projectSchema) {
    const targets = inputs.targetSchema
      ? {
          target: { type: 'string', description: 'the target used when neither --target nor $SLUICE_TARGET names one' },
          targets: { type: 'object', description: 'environments: name -> overrides of sources, sinks, wal, server, duckdb, and vars', additionalProperties: jsonSchemaOf(inputs.targetSchema) },
        }
      : {};
    out['sluice.schema.json'] = wholeFileSchema(inputs.projectSchema, 'sluice sluice.yml', targets);
  }
  if (inputs.modelsSchema) out['models.schema.json'] = wholeFileSchema(inputs.modelsSchema, 'sluice config/models.yml');
  if (inputs.unitTestFileSchema) out['unit-tests.schema.json'] = wholeFileSchema(inputs.unitTestFileSchema, 'sluice tests/*.yml (unit tests)');
  return out;
}

// ---- Markdown tables ----

const esc = (s) =>
  String(s)
    .replace(/\|/g, '\\|')
    .replace(/\s*\n\s*/g, ' ');
const code = (s) => '`' + String(s).replace(/`/g, "'") + '`';

/** A compound type inside another, in parentheses. */
const group = (t) => (/ or |, /.test(t) ? `(${t})` : t);

function typeText(s) {
  if (!s || typeof s !== 'object' || Object.keys(s).filter((k) => k !== 'description' && k !== 'default').length === 0) return 'any';
  if (s.anyOf) return [...new Set(s.anyOf.map(typeText))].join(' or ');
  if (s.const !== undefined) return code(JSON.stringify(s.const));
  if (s.enum) return 'one of ' + s.enum.map((v) => code(v)).join(', ');
  switch (s.type) {
    case 'integer':
    case 'number': {
      const bounds = [];
      if (s.exclusiveMinimum !== undefined) bounds.push(`> ${s.exclusiveMinimum}`);
      if (s.minimum !== undefined) bounds.push(`≥ ${s.minimum}`);
      if (s.exclusiveMaximum !== undefined) bounds.push(`< ${s.exclusiveMaximum}`);
      if (s.maximum !== undefined) bounds.push(`≤ ${s.maximum}`);
      return [s.type, ...bounds].join(' ');
    }
    case 'string':
      return 'string';
    case 'boolean':
      return 'boolean';
    case 'array':
      return `list of ${group(typeText(s.items))}`;
    case 'object':
      if (s.properties) return 'object';
      if (s.additionalProperties && typeof s.additionalProperties === 'object') return `map of ${group(typeText(s.additionalProperties))}`;
      return 'object';
    default:
      return s.type ? String(s.type) : 'any';
  }
}

function defaultText(s) {
  if (s.default === undefined) return '';
  if (s.default && typeof s.default === 'object' && !Array.isArray(s.default)) {
    // An object's defaults are listed on its own keys.
    if (objectMembers(s).length > 0) return '';
    if (Object.keys(s.default).length === 0) return code('{}');
  }
  return code(JSON.stringify(s.default));
}

/** The object schemas a value may be, whose keys get rows of their own: [suffix, schema]. */
function objectMembers(s) {
  const out = [];
  if (s.properties) out.push(['', s]);
  for (const m of s.anyOf ?? []) {
    if (m.properties) out.push(['', m]);
    if (m.type === 'array' && m.items) for (const [suf, x] of objectMembers(m.items)) out.push(['[]' + suf, x]);
  }
  if (s.type === 'array' && s.items) for (const [suf, x] of objectMembers(s.items)) out.push(['[]' + suf, x]);
  if (s.type === 'object' && s.additionalProperties && typeof s.additionalProperties === 'object') {
    for (const [suf, x] of objectMembers(s.additionalProperties)) out.push(['.<name>' + suf, x]);
  }
  return out;
}

function rows(obj, prefix, skip) {
  const out = [];
  const required = new Set(obj.required ?? []);
  for (const [k, s] of Object.entries(obj.properties ?? {})) {
    if (skip?.includes(k)) continue;
    const key = prefix + k;
    const req = required.has(k) && s.default === undefined ? 'yes' : '';
    out.push(`| ${code(key)} | ${esc(typeText(s))} | ${esc(defaultText(s))} | ${req} | ${esc(s.description ?? '')} |`);
    const seen = new Set();
    for (const [suffix, member] of objectMembers(s)) {
      const p = `${key}${suffix}.`;
      for (const r of rows(member, p)) {
        if (!seen.has(r)) {
          seen.add(r);
          out.push(r);
        }
      }
    }
  }
  return out;
}

const HEAD = ['| key | type | default | required | description |', '| --- | --- | --- | --- | --- |'];

function table(schema, skip) {
  return [...HEAD, ...rows(jsonSchemaOf(schema), '', skip)].join('\n');
}

/**
 * The generated Markdown of docs/sources.md (kind 'source') or docs/sinks.md ('sink'): the
 * policy keys every connector of the kind takes, then a table per type.
 * @param {Inputs} inputs
 * @param {'source' | 'sink'} kind
 */
export function referenceMarkdown(inputs, kind) {
  const specs = kind === 'source' ? inputs.sources : inputs.sinks;
  const policy = kind === 'source' ? inputs.sourcePolicySchema : inputs.sinkPolicySchema;
  const parts = [
    '<!-- Generated by `npm run docs:gen` from the config schemas in src/connectors: edit the `.describe()` texts there, not this block. -->',
    '',
    kind === 'source'
      ? "### Keys every source takes\n\nThe engine's policy keys, checked beside each type's own keys (see [errors and limits](errors-and-limits.md)):"
      : "### Keys every sink takes\n\nThe error policy, checked beside each type's own keys (see [error policy](#error-policy-every-sink)):",
    '',
    table(policy),
  ];
  for (const s of specs) {
    const about = s.description.charAt(0).toUpperCase() + s.description.slice(1);
    parts.push('', `### ${code(s.type)} keys`, '', `${esc(about)}.`, '', table(s.schema, ['type']));
  }
  parts.push('');
  return parts.join('\n');
}

/** Replaces what lies between `<!-- generated:TAG -->` and `<!-- /generated:TAG -->`. */
export function splice(text, tag, content) {
  const open = `<!-- generated:${tag} -->`;
  const close = `<!-- /generated:${tag} -->`;
  const a = text.indexOf(open);
  const b = text.indexOf(close);
  if (a < 0 || b < a) throw new Error(`missing the markers ${open} ... ${close}`);
  return text.slice(0, a + open.length) + '\n' + content + text.slice(b);
}

/**
 * Every generated file, by its path relative to the repository, with the content it must have:
 * docs/sources.md and docs/sinks.md (their hand-written text kept around the markers) and the
 * JSON Schemas under schema/.
 * @param {string} root the repository
 * @param {Inputs} inputs
 * @returns {Record<string, string>}
 */
export function generatedFiles(root, inputs) {
  const out = {};
  for (const [kind, file] of [
    ['source', 'docs/sources.md'],
    ['sink', 'docs/sinks.md'],
  ]) {
    const text = fs.readFileSync(path.join(root, file), 'utf8');
    out[file] = splice(text, `${kind}s`, referenceMarkdown(inputs, kind));
  }
  for (const [name, schema] of Object.entries(jsonSchemas(inputs))) out[`schema/${name}`] = JSON.stringify(schema, null, 2) + '\n';
  return out;
}
