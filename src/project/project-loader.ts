import fs from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { ConfigError, type ConfigIssue } from '../errors.js';
import { sinkSpec, sinks as sinkSpecs, sourceSpec, sources as sourceSpecs, type SinkSpec, type SourceSpec } from '../connectors/registry.js';
import { SINK_POLICY_KEYS, SOURCE_POLICY_KEYS, sinkPolicySchema, sourcePolicySchema, type SinkPolicy, type SourcePolicy } from '../connectors/shared-config.js';
import { renderModel, type RenderedModel } from '../sql/template.js';
import { topoSort } from './dag.js';
import { applyTargetOverrides, remapTargetIssues, resolveTarget, targetEnv } from './targets.js';
import { registerConfigSecrets } from '../util/secrets.js';
import { checkSchema, readConfigText, readYaml, type YamlFile } from './yaml-file.js';
import { columnTypeSchema, contractSchema, modelContract, type ModelContract } from './contract-config.js';
import { columnTestSchema, modelDataTests, modelTestSchema, referenceSchema, unitTestsOf, type DataTest, type ReferenceDef, type UnitTest } from './data-test-config.js';

export interface ProjectOptions {
  project?: string;
  config?: string;
  models?: string;
  env?: NodeJS.ProcessEnv;
  /** Target (environment) whose overrides apply; default: sluice.yml's `target:`. */
  target?: string;
}

export interface NamedSource {
  name: string;
  type: string;
  spec: SourceSpec;
  cfg: Record<string, unknown> & { batch_size: number; batch_timeout_ms: number; batch_max_bytes: number; dlq?: string };
  /** limits / contract, enforced by the engine for every source type. */
  policy: SourcePolicy;
  file: string;
  line?: number;
}

export interface NamedSink {
  name: string;
  type: string;
  spec: SinkSpec;
  cfg: Record<string, unknown>;
  /** retry / on_error / circuit, shared by every sink type. */
  policy: SinkPolicy;
  file: string;
  line?: number;
  /** Line of a key inside this sink's block (`['partition_by', 1]`). */
  lineOf?: (keyPath: (string | number)[]) => number | undefined;
}

export interface ModelDef {
  name: string;
  file: string;
  sqlText: string;
  rendered: RenderedModel;
  refs: string[];
  /** The source whose batches feed this model (directly or through refs). */
  source: string;
  sinks: string[];
  maxFileBytes: number;
  maxAgeSeconds: number;
  /** From `config(description=...)` in the SQL or overrides.<model>.description. */
  description?: string;
  /** Documented columns (overrides.<model>.columns). */
  columns: ColumnDoc[];
  /** Data tests (overrides.<model>.columns[].tests and overrides.<model>.tests), normalised. */
  dataTests: DataTest[];
  /** Its schema contract (overrides.<model>.contract and typed columns); undefined when none. */
  contract?: ModelContract;
  /** Model-level tests as declared (shown by `sluice docs`). */
  tests?: unknown[];
}

export interface ColumnDoc {
  name: string;
  description?: string;
  /** Data tests as declared (shown by `sluice docs`). */
  tests?: unknown[];
  /** Where it is documented (config/models.yml). */
  file?: string;
  line?: number;
}

const columnDocSchema = z
  .object({
    name: z.string().min(1).describe('the column as the model outputs it'),
    description: z.string().optional().describe('what the column holds (shown by `sluice docs`)'),
    type: columnTypeSchema.optional(),
    tests: z.array(columnTestSchema).optional().describe('data tests: not_null, unique, accepted_values, range, regex, relationships'),
  })
  .strict();

/** Keys `{{ config(...) }}` accepts at the top of a model's SQL; they win over config/models.yml. */
const sqlConfigSchema = z
  .object({
    sink: z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]).optional(),
    sinks: z.array(z.string().min(1)).min(1).optional(),
    description: z.string().optional(),
    max_file_bytes: z.number().int().positive().optional(),
    max_age_seconds: z.number().positive().optional(),
  })
  .strict();

export interface Project {
  dir: string;
  name: string;
  /** The target (environment) in force, when sluice.yml declares targets. */
  target?: string;
  configDir: string;
  modelsDir: string;
  walPath: string;
  /** While a sink fails, reading pauses once the WAL holds this many bytes. */
  walMaxBytes: number;
  port: number;
  duckdb: { threads?: number; memory_limit?: string };
  /** node.max_heap_mb: the heap limit `sluice run` gives itself (see src/cli/heap.ts). */
  nodeMaxHeapMb?: number;
  /** How long an infrastructure failure (full disk, IO error) is waited out, and how often it is retried. */
  infraErrors: { maxBackoffMs: number; giveUpAfterSeconds: number };
  sources: NamedSource[];
  sinks: NamedSink[];
  /** In dependency order. */
  models: ModelDef[];
  /** Reference tables for `relationships` tests (config/models.yml references:). */
  references: ReferenceDef[];
  /** Unit test cases (tests/*.yml). */
  unitTests: UnitTest[];
}

export const projectSchema = z
  .object({
    name: z.string().min(1).optional(),
    wal: z
      .object({
        path: z.string().min(1).optional(),
        max_bytes: z.number().int().positive().optional().describe('while a sink fails, reading pauses once the WAL holds this many bytes (default 1 GiB)'),
      })
      .strict()
      .optional(),
    server: z.object({ port: z.number().int().min(0).max(65535).optional() }).strict().optional(),
    infra_errors: z
      .object({
        max_backoff_ms: z.number().int().positive().optional().describe('while a disk is full or failing, the same batch is retried with backoff up to this wait (default 30000)'),
        give_up_after_seconds: z.number().nonnegative().optional().describe('exit non-zero once an infrastructure failure has lasted this long, leaving everything unacked for the next start (default 0: wait until it is fixed)'),
      })
      .strict()
      .optional(),
    node: z
      .object({
        max_heap_mb: z.number().int().min(64).optional().describe("the Node.js heap limit of `sluice run` in MiB (default: Node's own, about 4 GiB); sluice runs itself as a child with it"),
      })
      .strict()
      .optional(),
    duckdb: z
      .object({
        threads: z.number().int().positive().optional().describe('DuckDB threads (default: one per core but one)'),
        memory_limit: z.string().min(1).optional().describe("DuckDB memory limit, e.g. '2GB'"),
      })
      .strict()
      .optional(),
  })
  .strict();

const flushKeys = {
  max_file_bytes: z.number().int().positive().optional().describe('flush a model once its WAL holds this many bytes'),
  max_age_seconds: z.number().positive().optional().describe('flush a model once its oldest WAL row is this old'),
};

export const modelsSchema = z
  .object({
    ...flushKeys,
    overrides: z
      .record(
        z.string(),
        z
          .object({
            ...flushKeys,
            sink: z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]).optional().describe('the sink (or sinks) of this model'),
            sinks: z.array(z.string().min(1)).min(1).optional().describe('the sinks of this model; each gets every row'),
            description: z.string().optional().describe('what the model produces (shown by `sluice docs`)'),
            columns: z.array(columnDocSchema).optional().describe('documented columns: name and description'),
            contract: contractSchema.optional().describe('what the model may output beyond its declared columns: new_columns and type_changes, each evolve | freeze | discard_row | discard_value'),
            tests: z.array(modelTestSchema).optional().describe('model-level data tests: SQL expressions every row must satisfy'),
          })
          .strict(),
      )
      .optional(),
    references: z.record(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'must be a plain identifier'), referenceSchema).optional().describe('reference tables for relationships tests, loaded into DuckDB at start'),
  })
  .strict();

export const DEFAULT_MAX_FILE_BYTES = 128 * 1024 * 1024;
export const DEFAULT_MAX_AGE_SECONDS = 300;
export const DEFAULT_PORT = 9400;
export const DEFAULT_WAL_MAX_BYTES = 1024 * 1024 * 1024;

/**
 * Loads a project directory: sluice.yml, config/{sources,sinks,models}.yml and models/*.sql.
 * Everything that can be checked without DuckDB is checked here; all problems are thrown
 * together as one ConfigError.
 */
export function loadProject(opts: ProjectOptions = {}): Project {
  const env = opts.env ?? process.env;
  const dir = path.resolve(opts.project ?? '.');
  const configDir = opts.config ? path.resolve(opts.config) : path.join(dir, 'config');
  const modelsDir = opts.models ? path.resolve(opts.models) : path.join(dir, 'models');
  const issues: ConfigIssue[] = [];
  const show = (f: string) => {
    const rel = path.relative(process.cwd(), f);
    return rel && !rel.startsWith('..') ? rel : f;
  };

  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) {
    throw new ConfigError([{ file: show(dir), message: 'project directory does not exist' }]);
  }

  // sluice.yml
  const projFile = path.join(dir, 'sluice.yml');
  const projYaml = readYaml(projFile, env, issues, show(projFile));
  const projVal = projYaml?.value && typeof projYaml.value === 'object' && !Array.isArray(projYaml.value) ? { ...(projYaml.value as Record<string, unknown>) } : (projYaml?.value ?? {});
  const target = resolveTarget(projYaml, projVal as Record<string, unknown>, opts.target ?? (env.SLUICE_TARGET || undefined), issues);
  const proj = projYaml?.value !== undefined ? checkSchema(projYaml, projectSchema, projVal, [], issues) : {};
  const fileEnv = targetEnv(env, target);

  // sources.yml
  const sources: NamedSource[] = [];
  const srcFile = path.join(configDir, 'sources.yml');
  const srcYaml = readYaml(srcFile, fileEnv, issues, show(srcFile));
  applyTargetOverrides(srcYaml, 'source', 'sources', target, issues);
  if (!srcYaml) issues.push({ file: show(srcFile), message: 'missing: a project needs config/sources.yml with a `source:` or `sources:` block' });
  else if (srcYaml.value !== undefined) {
    for (const [name, raw, keyPath] of namedBlocks(srcYaml, 'source', 'sources', issues)) {
      const { policy, rest } = splitPolicy(raw, SOURCE_POLICY_KEYS);
      const c = connectorConfig(srcYaml, rest, keyPath, sourceSpecs, sourceSpec, 'source', issues);
      const pol = checkSchema(srcYaml, sourcePolicySchema, policy, keyPath, issues);
      if (c && pol) sources.push({ name, type: c.spec.type, spec: c.spec as SourceSpec, cfg: c.cfg as NamedSource['cfg'], policy: pol, file: srcYaml.file, line: srcYaml.lineOf(keyPath) });
    }
  }

  // sinks.yml
  const sinks: NamedSink[] = [];
  /** Every sink named in sinks.yml, valid or not: a model naming one with a config error is not told it is unknown. */
  const declaredSinks = new Set<string>();
  const sinkFile = path.join(configDir, 'sinks.yml');
  const sinkYaml = readYaml(sinkFile, fileEnv, issues, show(sinkFile));
  applyTargetOverrides(sinkYaml, 'sink', 'sinks', target, issues);
  if (!sinkYaml) issues.push({ file: show(sinkFile), message: 'missing: a project needs config/sinks.yml with a `sink:` or `sinks:` block' });
  else if (sinkYaml.value !== undefined) {
    for (const [name, raw, keyPath] of namedBlocks(sinkYaml, 'sink', 'sinks', issues)) {
      declaredSinks.add(name);
      const { policy, rest } = splitPolicy(raw, SINK_POLICY_KEYS);
      const c = connectorConfig(sinkYaml, rest, keyPath, sinkSpecs, sinkSpec, 'sink', issues);
      const pol = checkSchema(sinkYaml, sinkPolicySchema, policy, keyPath, issues);
      if (c && pol) sinks.push({ name, type: c.spec.type, spec: c.spec as SinkSpec, cfg: c.cfg, policy: pol, file: sinkYaml.file, line: sinkYaml.lineOf(keyPath), lineOf: (k) => sinkYaml.lineOf([...keyPath, ...k]) });
    }
  }

  // models.yml
  const modFile = path.join(configDir, 'models.yml');
  const modYaml = readYaml(modFile, fileEnv, issues, show(modFile));
  const modCfg = modYaml?.value !== undefined && modYaml ? checkSchema(modYaml, modelsSchema, modYaml.value ?? {}, [], issues) : {};

  // models/*.sql
  const models: ModelDef[] = [];
  if (!fs.existsSync(modelsDir)) {
    issues.push({ file: show(modelsDir), message: 'missing: the models directory holds one SELECT per .sql file' });
  } else if (!fs.statSync(modelsDir).isDirectory()) {
    issues.push({ file: show(modelsDir), message: 'is a file, not the models directory (one SELECT per .sql file)' });
  } else {
    const files = fs.readdirSync(modelsDir).filter((f) => f.endsWith('.sql')).sort();
    if (files.length === 0) issues.push({ file: show(modelsDir), message: 'no models: add a .sql file with a SELECT' });
    for (const f of files) {
      const file = path.join(modelsDir, f);
      const name = f.slice(0, -4);
      const sqlText = readConfigText(file, show(file), issues);
      if (sqlText === undefined) continue;
      if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) {
        issues.push({ file: show(file), message: `model name "${name}" must be a plain identifier (letters, digits, _)` });
        continue;
      }
      const rendered = renderModel(sqlText, show(file), issues);
      models.push({
        name,
        file: show(file),
        sqlText,
        rendered,
        refs: rendered.refs.map((r) => r.name),
        source: '',
        sinks: [],
        columns: [],
        dataTests: [],
        maxFileBytes: DEFAULT_MAX_FILE_BYTES,
        maxAgeSeconds: DEFAULT_MAX_AGE_SECONDS,
      });
    }
  }

  const modelNames = new Set(models.map((m) => m.name));
  const sourceNames = new Set(sources.map((s) => s.name));
  const sinkNames = declaredSinks;

  // Flush settings and sinks per model.
  const overrides = modCfg?.overrides ?? {};
  const references: ReferenceDef[] = Object.entries(modCfg?.references ?? {}).map(([name, r]) => ({ name, ...r, file: modYaml?.file, line: modYaml?.lineOf(['references', name]) }));
  for (const r of references) {
    if (r.csv !== undefined && !fs.existsSync(path.resolve(dir, r.csv))) issues.push({ file: r.file!, line: modYaml?.lineOf(['references', r.name, 'csv']), key: `references.${r.name}.csv`, message: `${r.csv} does not exist (paths are relative to the project directory)` });
  }
  const referenceNames = new Set(references.map((r) => r.name));
  for (const [m] of Object.entries(overrides)) {
    if (!modelNames.has(m) && modYaml) {
      issues.push({ file: modYaml.file, line: modYaml.lineOf(['overrides', m]), key: `overrides.${m}`, message: `no model named "${m}" (models: ${[...modelNames].join(', ') || 'none'})` });
    }
  }
  for (const m of models) {
    const o = overrides[m.name] ?? {};
    const sqlCfg = modelSqlConfig(m, issues);
    m.maxFileBytes = sqlCfg.max_file_bytes ?? o.max_file_bytes ?? modCfg?.max_file_bytes ?? DEFAULT_MAX_FILE_BYTES;
    m.maxAgeSeconds = sqlCfg.max_age_seconds ?? o.max_age_seconds ?? modCfg?.max_age_seconds ?? DEFAULT_MAX_AGE_SECONDS;
    m.description = sqlCfg.description ?? o.description;
    m.columns = (o.columns ?? []).map((c, i) => ({ ...c, file: modYaml?.file, line: modYaml?.lineOf(['overrides', m.name, 'columns', i]) }));
    m.tests = o.tests;
    m.dataTests = modelDataTests(m.name, o, referenceNames, modYaml, issues);
    m.contract = modelContract(m.name, o, modYaml, issues);
    if (o.sink !== undefined && o.sinks !== undefined && modYaml) {
      issues.push({ file: modYaml.file, line: modYaml.lineOf(['overrides', m.name, 'sinks']), key: `overrides.${m.name}.sinks`, message: 'use either `sink:` or `sinks:`, not both' });
    }
    const fromSql = sqlCfg.sinks ?? sqlCfg.sink;
    const yamlKey = o.sinks !== undefined ? 'sinks' : 'sink';
    const fromYaml = o.sinks ?? o.sink;
    // config() in the model's SQL wins over config/models.yml, as in dbt.
    const chosen = fromSql ?? fromYaml;
    if (chosen !== undefined) {
      m.sinks = [...new Set(Array.isArray(chosen) ? chosen : [chosen])];
      const list = Array.isArray(chosen) ? chosen : [chosen];
      list.forEach((s, i) => {
        if (sinkNames.has(s)) return;
        const keyPath = ['overrides', m.name, yamlKey, ...(Array.isArray(chosen) ? [i] : [])];
        const where = fromSql === undefined && modYaml
          ? { file: modYaml.file, line: modYaml.lineOf(keyPath), key: keyPath.join('.') }
          : { file: m.file, line: m.rendered.configLine };
        issues.push({ ...where, message: `unknown sink "${s}" (sinks: ${[...sinkNames].join(', ') || 'none'})` });
      });
    } else if (sinkNames.size === 1) {
      m.sinks = [...sinkNames];
    } else if (sinkNames.size > 1) {
      issues.push({
        file: modYaml?.file ?? show(modFile),
        key: `overrides.${m.name}.sink`,
        message: `model ${m.name}: several sinks are configured (${[...sinkNames].join(', ')}); choose with overrides.${m.name}.sink (one) or overrides.${m.name}.sinks (a list)`,
      });
    }
    for (const r of m.rendered.refs) {
      if (!modelNames.has(r.name)) issues.push({ file: m.file, line: r.line, message: `ref('${r.name}'): no model named "${r.name}"` });
      if (r.name === m.name) issues.push({ file: m.file, line: r.line, message: `ref('${r.name}'): a model cannot read its own output` });
    }
    for (const s of m.rendered.sources) {
      if (!sourceNames.has(s.name)) issues.push({ file: m.file, line: s.line, message: `source('${s.name}'): no source named "${s.name}" (sources: ${[...sourceNames].join(', ') || 'none'})` });
    }
  }

  // The DAG.
  const { order, cycles } = topoSort(models.map((m) => ({ ...m, deps: m.refs })));
  for (const c of cycles) {
    const first = models.find((m) => m.name === c[0]);
    const line = first?.rendered.refs.find((r) => r.name === c[1])?.line;
    issues.push({ file: first?.file ?? show(modelsDir), line, message: `models form a cycle: ${c.join(' -> ')}` });
  }
  const ordered = cycles.length ? models : order.map((o) => models.find((m) => m.name === o.name)!);

  // Which source feeds each model.
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
    if (feeds.size > 1) issues.push({ file: m.file, message: `model ${m.name} reads from several sources (${[...feeds].join(', ')}); stream joins need windows, which are not supported yet` });
    m.source = [...feeds][0] ?? (sources[0]?.name ?? '');
  }
  for (const s of sources) {
    if (sources.length > 1 && !ordered.some((m) => m.source === s.name)) {
      issues.push({ file: s.file, line: s.line, message: `source "${s.name}" is not read by any model` });
    }
  }

  // tests/*.yml: unit test cases.
  const testsDir = path.join(dir, 'tests');
  const testsIsDir = fs.existsSync(testsDir) && fs.statSync(testsDir).isDirectory();
  if (fs.existsSync(testsDir) && !testsIsDir) issues.push({ file: show(testsDir), message: 'is a file, not the tests directory (fixtures and tests/*.yml)' });
  const unitFiles = testsIsDir ? fs.readdirSync(testsDir).filter((f) => /\.ya?ml$/.test(f)).sort() : [];
  const unitTests = unitTestsOf(unitFiles.map((f) => readYaml(path.join(testsDir, f), fileEnv, issues, show(path.join(testsDir, f)))!), sources, ordered, issues);

  remapTargetIssues(issues, target);
  for (const c of [...sources, ...sinks]) registerConfigSecrets(c.cfg);
  registerConfigSecrets(references);
  if (issues.length) throw new ConfigError(issues);

  return {
    dir,
    name: proj?.name ?? path.basename(dir),
    target: target?.name,
    configDir,
    modelsDir,
    walPath: path.resolve(dir, proj?.wal?.path ?? '.sluice/wal'),
    walMaxBytes: proj?.wal?.max_bytes ?? DEFAULT_WAL_MAX_BYTES,
    port: proj?.server?.port ?? DEFAULT_PORT,
    duckdb: proj?.duckdb ?? {},
    nodeMaxHeapMb: proj?.node?.max_heap_mb,
    infraErrors: { maxBackoffMs: proj?.infra_errors?.max_backoff_ms ?? 30_000, giveUpAfterSeconds: proj?.infra_errors?.give_up_after_seconds ?? 0 },
    sources,
    sinks,
    models: ordered,
    references,
    unitTests,
  };
}

/** A source or sink block split into the engine's policy keys and the connector type's own keys. */
function splitPolicy(raw: unknown, keys: readonly string[]): { policy: Record<string, unknown>; rest: unknown } {
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) return { policy: {}, rest: raw };
  const policy: Record<string, unknown> = {};
  const rest: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(raw)) (keys.includes(k) ? policy : rest)[k] = v;
  return { policy, rest };
}

/** The `{{ config(...) }}` keys of a model, checked; issues point at the config() line. */
function modelSqlConfig(m: ModelDef, issues: ConfigIssue[]): z.output<typeof sqlConfigSchema> {
  const r = sqlConfigSchema.safeParse(m.rendered.config);
  if (r.success) return r.data;
  for (const i of r.error.issues) {
    const what = i.code === 'unrecognized_keys' ? `unknown key${i.keys.length > 1 ? 's' : ''} ${i.keys.join(', ')} (known: ${Object.keys(sqlConfigSchema.shape).join(', ')})` : `${i.path.join('.')}: ${i.message.replace(/^Invalid input: /, '')}`;
    issues.push({ file: m.file, line: m.rendered.configLine, message: `config(...): ${what}` });
  }
  return {};
}

/** `single:` (one, named "default") or `plural:` (a map of named blocks). */
function namedBlocks(y: YamlFile, single: string, plural: string, issues: ConfigIssue[]): [string, unknown, (string | number)[]][] {
  const v = y.value;
  if (!v || typeof v !== 'object' || Array.isArray(v)) {
    issues.push({ file: y.file, line: 1, message: `expected a mapping with \`${single}:\` or \`${plural}:\`` });
    return [];
  }
  const obj = v as Record<string, unknown>;
  const out: [string, unknown, (string | number)[]][] = [];
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
