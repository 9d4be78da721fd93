import path from 'node:path';
import type { z } from 'zod';
import type { ConfigIssue } from '../errors.js';
import { sinkSpec, sinks as sinkSpecs, sourceSpec, sources as sourceSpecs, type SinkSpec, type SourceSpec } from '../connectors/registry.js';
import { SINK_POLICY_KEYS, SOURCE_POLICY_KEYS, sinkPolicySchema, sourcePolicySchema } from '../connectors/shared-config.js';
import type { NamedSink, NamedSource } from './project-types.js';
import { applyTargetOverrides, type ActiveTarget } from './targets.js';
import { checkSchema, readYaml, type YamlFile } from './yaml-file.js';

// config/sources.yml and config/sinks.yml: their named blocks, each checked against its
// connector type's schema and the engine's policy keys.

export interface ConnectorFileContext {
  /** The environment `${VAR}` is interpolated from. */
  env: NodeJS.ProcessEnv;
  target: ActiveTarget | undefined;
  issues: ConfigIssue[];
  show: (file: string) => string;
}

type Block = [name: string, raw: unknown, keyPath: (string | number)[]];

/** The named sources of config/sources.yml; a missing file or an invalid block is an issue. */
export function loadSources(configDir: string, ctx: ConnectorFileContext): NamedSource[] {
  const sources: NamedSource[] = [];
  const read = readBlocks(path.join(configDir, 'sources.yml'), 'source', 'sources', ctx);
  if (!read) return sources;
  const { yaml, blocks } = read;
  for (const [name, raw, keyPath] of blocks) {
    const c = checkBlock(yaml, raw, keyPath, SOURCE_POLICY_KEYS, sourcePolicySchema, sourceSpecs, sourceSpec, 'source', ctx.issues);
    if (c) sources.push({ name, type: c.spec.type, spec: c.spec as SourceSpec, cfg: c.cfg as NamedSource['cfg'], policy: c.policy, file: yaml.file, line: yaml.lineOf(keyPath) });
  }
  return sources;
}

/**
 * The named sinks of config/sinks.yml, and every sink name the file declares, valid or not: a
 * model naming one with a config error is not told it is unknown.
 */
export function loadSinks(configDir: string, ctx: ConnectorFileContext): { sinks: NamedSink[]; declared: Set<string> } {
  const sinks: NamedSink[] = [];
  const declared = new Set<string>();
  const read = readBlocks(path.join(configDir, 'sinks.yml'), 'sink', 'sinks', ctx);
  if (!read) return { sinks, declared };
  const { yaml, blocks } = read;
  for (const [name, raw, keyPath] of blocks) {
    declared.add(name);
    const c = checkBlock(yaml, raw, keyPath, SINK_POLICY_KEYS, sinkPolicySchema, sinkSpecs, sinkSpec, 'sink', ctx.issues);
    if (c) sinks.push({ name, type: c.spec.type, spec: c.spec as SinkSpec, cfg: c.cfg, policy: c.policy, file: yaml.file, line: yaml.lineOf(keyPath), lineOf: (k) => yaml.lineOf([...keyPath, ...k]) });
  }
  return { sinks, declared };
}

/** Reads the file with the target's overrides applied; undefined (and an issue) when it is missing. */
function readBlocks(file: string, single: 'source' | 'sink', plural: 'sources' | 'sinks', ctx: ConnectorFileContext): { yaml: YamlFile; blocks: Block[] } | undefined {
  const yaml = readYaml(file, ctx.env, ctx.issues, ctx.show(file));
  applyTargetOverrides(yaml, single, plural, ctx.target, ctx.issues);
  if (!yaml) {
    ctx.issues.push({ file: ctx.show(file), message: `missing: a project needs config/${plural}.yml with a \`${single}:\` or \`${plural}:\` block` });
    return undefined;
  }
  return { yaml, blocks: yaml.value !== undefined ? namedBlocks(yaml, single, plural, ctx.issues) : [] };
}

/** One block: the connector type's own keys against its schema, the policy keys against the engine's. */
function checkBlock<T extends { type: string; schema: z.ZodType }, P extends z.ZodType>(
  y: YamlFile,
  raw: unknown,
  keyPath: (string | number)[],
  policyKeys: readonly string[],
  policySchema: P,
  all: T[],
  find: (t: string) => T | undefined,
  kind: string,
  issues: ConfigIssue[],
): { spec: T; cfg: Record<string, unknown>; policy: z.output<P> } | undefined {
  const { policy, rest } = splitPolicy(raw, policyKeys);
  const c = connectorConfig(y, rest, keyPath, all, find, kind, issues);
  const pol = checkSchema(y, policySchema, policy, keyPath, issues);
  return c && pol ? { ...c, policy: pol } : undefined;
}

/** A source or sink block split into the engine's policy keys and the connector type's own keys. */
function splitPolicy(raw: unknown, keys: readonly string[]): { policy: Record<string, unknown>; rest: unknown } {
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) return { policy: {}, rest: raw };
  const policy: Record<string, unknown> = {};
  const rest: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(raw)) (keys.includes(k) ? policy : rest)[k] = v;
  return { policy, rest };
}

/** `single:` (one, named "default") or `plural:` (a map of named blocks). */
function namedBlocks(y: YamlFile, single: string, plural: string, issues: ConfigIssue[]): Block[] {
  const v = y.value;
  if (!v || typeof v !== 'object' || Array.isArray(v)) {
    issues.push({ file: y.file, line: 1, message: `expected a mapping with \`${single}:\` or \`${plural}:\`` });
    return [];
  }
  const obj = v as Record<string, unknown>;
  const out: Block[] = [];
  for (const k of Object.keys(obj)) {
    if (k !== single && k !== plural) issues.push({ file: y.file, line: y.lineOf([k]), key: k, message: `unknown key "${k}" (expected \`${single}:\` or \`${plural}:\`)` });
  }
  if (obj[single] !== undefined && obj[plural] !== undefined) {
    issues.push({ file: y.file, line: y.lineOf([plural]), key: plural, message: `use either \`${single}:\` or \`${plural}:\`, not both` });
  }
  if (obj[single] !== undefined) out.push(['default', obj[single], [single]]);
  if (obj[plural] !== undefined) {
    const m = obj[plural];
    if (!m || typeof m !== 'object' || Array.isArray(m)) {
      issues.push({ file: y.file, line: y.lineOf([plural]), key: plural, message: `expected a mapping of name -> ${single} settings` });
    } else {
      for (const [name, raw] of Object.entries(m)) {
        if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) issues.push({ file: y.file, line: y.lineOf([plural, name]), key: `${plural}.${name}`, message: `name "${name}" must be a plain identifier` });
        out.push([name, raw, [plural, name]]);
      }
    }
  }
  if (out.length === 0 && !(obj[single] !== undefined || obj[plural] !== undefined)) {
    issues.push({ file: y.file, line: 1, message: `expected \`${single}:\` or \`${plural}:\`` });
  }
  return out;
}

/** The connector type named by `type:`, and the block checked against its schema. */
function connectorConfig<T extends { type: string; schema: z.ZodType }>(
  y: YamlFile,
  raw: unknown,
  keyPath: (string | number)[],
  all: T[],
  find: (t: string) => T | undefined,
  kind: string,
  issues: ConfigIssue[],
): { spec: T; cfg: Record<string, unknown> } | undefined {
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) {
    issues.push({ file: y.file, line: y.lineOf(keyPath), key: keyPath.join('.'), message: `expected a mapping with at least \`type:\`` });
    return undefined;
  }
  const type = (raw as Record<string, unknown>).type;
  const known = all.map((s) => s.type).join(', ');
  if (typeof type !== 'string') {
    issues.push({ file: y.file, line: y.lineOf(keyPath), key: [...keyPath, 'type'].join('.'), message: `is required (one of: ${known})` });
    return undefined;
  }
  const spec = find(type);
  if (!spec) {
    issues.push({ file: y.file, line: y.lineOf([...keyPath, 'type']), key: [...keyPath, 'type'].join('.'), message: `unknown ${kind} type "${type}" (one of: ${known})` });
    return undefined;
  }
  const cfg = checkSchema(y, spec.schema, raw, keyPath, issues);
  return cfg ? { spec, cfg: cfg as Record<string, unknown> } : undefined;
}
