import os from 'node:os';
import fs from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import type { ConfigIssue } from '../errors.js';
import { modelContract } from './contract-config.js';
import { modelDataTests, type ReferenceDef } from './data-test-config.js';
import { DEFAULT_MAX_AGE_SECONDS, DEFAULT_MAX_FILE_BYTES, modelsSchema, type ModelsConfig } from './project-schema.js';
import { DEFAULT_WINDOW_SETTINGS, type ModelDef } from './project-types.js';
import { checkSchema, readYaml, type YamlFile } from './yaml-file.js';

// config/models.yml and `{{ config(...) }}`: what each model's settings are (flush thresholds,
// docs, data tests, contract, sinks), and the reference tables of relationships tests.

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

type SqlConfig = z.output<typeof sqlConfigSchema>;
type ModelOverride = NonNullable<ModelsConfig['overrides']>[string];

export interface ModelsFile {
  /** config/models.yml as read; undefined when there is none. */
  yaml: YamlFile | undefined;
  /** Its settings, checked; undefined when invalid. */
  cfg: ModelsConfig | undefined;
  /** Its path as issues show it, whether it exists or not. */
  shown: string;
}

/** Reads config/models.yml (optional) and checks it. */
export function readModelsFile(configDir: string, env: NodeJS.ProcessEnv, issues: ConfigIssue[], show: (file: string) => string): ModelsFile {
  const modFile = path.join(configDir, 'models.yml');
  const yaml = readYaml(modFile, env, issues, show(modFile));
  const cfg = yaml?.value !== undefined && yaml ? checkSchema(yaml, modelsSchema, yaml.value ?? {}, [], issues) : {};
  return { yaml, cfg, shown: show(modFile) };
}

/** The reference tables under `references:`; a file that does not exist is an issue. */
export function referencesOf(models: ModelsFile, dir: string, issues: ConfigIssue[]): ReferenceDef[] {
  const modYaml = models.yaml;
  const references: ReferenceDef[] = Object.entries(models.cfg?.references ?? {}).map(([name, r]) => ({ name, ...r, file: modYaml?.file, line: modYaml?.lineOf(['references', name]) }));
  for (const r of references) {
    const key = (['csv', 'parquet', 'json'] as const).find((k) => r[k] !== undefined);
    const file = key && r[key]!;
    // A glob (Parquet) is checked when it is read.
    if (key && file && !file.startsWith('s3://') && !/[*?[]/.test(file) && !fs.existsSync(path.resolve(dir, file)))
      issues.push({
        file: r.file!,
        line: modYaml?.lineOf(['references', r.name, key]),
        key: `references.${r.name}.${key}`,
        message: `${file} does not exist (paths are relative to the project directory)`,
      });
  }
  return references;
}

/** An `overrides.<name>` block naming no model is an issue. */
export function checkOverrideNames(models: ModelsFile, modelNames: Set<string>, issues: ConfigIssue[]): void {
  const modYaml = models.yaml;
  for (const [m] of Object.entries(models.cfg?.overrides ?? {})) {
    if (!modelNames.has(m) && modYaml) {
      issues.push({ file: modYaml.file, line: modYaml.lineOf(['overrides', m]), key: `overrides.${m}`, message: `no model named "${m}" (models: ${[...modelNames].join(', ') || 'none'})` });
    }
  }
}

export interface ModelSettingsContext {
  models: ModelsFile;
  /** Reference tables that relationships tests may name. */
  referenceNames: Set<string>;
  /** Every sink declared in config/sinks.yml. */
  sinkNames: Set<string>;
}

/**
 * Sets a model's flush thresholds, docs, data tests, contract and sinks from its
 * `{{ config(...) }}` and its `overrides.<model>` block (config() wins, as in dbt).
 */
export function configureModel(m: ModelDef, ctx: ModelSettingsContext, issues: ConfigIssue[]): void {
  const { cfg: modCfg, yaml: modYaml } = ctx.models;
  const o: ModelOverride = modCfg?.overrides?.[m.name] ?? {};
  const sqlCfg = modelSqlConfig(m, issues);
  m.maxFileBytes = sqlCfg.max_file_bytes ?? o.max_file_bytes ?? modCfg?.max_file_bytes ?? DEFAULT_MAX_FILE_BYTES;
  m.maxAgeSeconds = sqlCfg.max_age_seconds ?? o.max_age_seconds ?? modCfg?.max_age_seconds ?? DEFAULT_MAX_AGE_SECONDS;
  m.description = sqlCfg.description ?? o.description ?? m.description;
  m.columns = (o.columns ?? []).map((c, i) => ({ ...c, file: modYaml?.file, line: modYaml?.lineOf(['overrides', m.name, 'columns', i]) }));
  m.tests = o.tests;
  m.dataTests = modelDataTests(m.name, o, ctx.referenceNames, modYaml, issues);
  m.contract = modelContract(m.name, o, modYaml, issues);
  if (o.window) {
    const w = o.window;
    m.window = {
      lateness: w.lateness ?? DEFAULT_WINDOW_SETTINGS.lateness,
      allowedLateness: w.allowed_lateness ?? DEFAULT_WINDOW_SETTINGS.allowedLateness,
      idleTimeout: w.idle_timeout ?? DEFAULT_WINDOW_SETTINGS.idleTimeout,
      late: w.late ?? DEFAULT_WINDOW_SETTINGS.late,
      ...(w.ttl ? { ttl: w.ttl } : {}),
      ...(w.max_session_duration ? { maxSessionDuration: w.max_session_duration } : {}),
      ...(w.max_groups_per_window ? { maxGroupsPerWindow: w.max_groups_per_window } : {}),
      onMaxGroups: w.on_max_groups ?? DEFAULT_WINDOW_SETTINGS.onMaxGroups,
    };
    if (modYaml) m.windowAt = { file: modYaml.file, line: modYaml.lineOf(['overrides', m.name, 'window']) };
  }
  if (o.executor) configureExecutor(m, o.executor, modYaml, issues);
  if (o.state_ttl) {
    m.stateTtl = o.state_ttl;
    if (modYaml) m.stateTtlAt = { file: modYaml.file, line: modYaml.lineOf(['overrides', m.name, 'state_ttl']) };
  }
  chooseSinks(m, o, sqlCfg, ctx, issues);
}

/** A handler's subprocess pool (overrides.<handler>.executor), defaults filled in; set on a SQL model, an issue. */
function configureExecutor(m: ModelDef, e: NonNullable<ModelOverride['executor']>, modYaml: ModelsFile['yaml'], issues: ConfigIssue[]): void {
  const at = { file: modYaml?.file ?? m.file, line: modYaml?.lineOf(['overrides', m.name, 'executor']) };
  if (!m.handler) {
    issues.push({ ...at, key: `overrides.${m.name}.executor`, message: `model ${m.name} is SQL: a subprocess pool (executor) belongs to a handler (handlers/<name>.ts with arrange())` });
    return;
  }
  m.handler.executor = {
    binaryPath: e.binary_path,
    maxExecutors: e.max_executors ?? os.availableParallelism(),
    taskTimeoutSeconds: e.task_timeout_seconds ?? 60,
    windowSize: e.window_size ?? 100,
    maxRetries: e.max_retries ?? 3,
    maxOutputBytes: e.max_output_bytes ?? 1024 * 1024,
    env: e.env ?? {},
    at,
  };
}

/**
 * The sinks of a model: from config(), else overrides.<model>.sink(s), else the only sink.
 * Naming an undeclared sink, or leaving the choice open among several, is an issue.
 */
function chooseSinks(m: ModelDef, o: ModelOverride, sqlCfg: SqlConfig, ctx: ModelSettingsContext, issues: ConfigIssue[]): void {
  const modYaml = ctx.models.yaml;
  const sinkNames = ctx.sinkNames;
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
      const where = fromSql === undefined && modYaml ? { file: modYaml.file, line: modYaml.lineOf(keyPath), key: keyPath.join('.') } : { file: m.file, line: m.rendered.configLine };
      issues.push({ ...where, message: `unknown sink "${s}" (sinks: ${[...sinkNames].join(', ') || 'none'})` });
    });
  } else if (sinkNames.size === 1) {
    m.sinks = [...sinkNames];
  } else if (sinkNames.size > 1) {
    issues.push({
      file: modYaml?.file ?? ctx.models.shown,
      key: `overrides.${m.name}.sink`,
      message: `model ${m.name}: several sinks are configured (${[...sinkNames].join(', ')}); choose with overrides.${m.name}.sink (one) or overrides.${m.name}.sinks (a list)`,
    });
  }
}

/** The `{{ config(...) }}` keys of a model, checked; issues point at the config() line. */
function modelSqlConfig(m: ModelDef, issues: ConfigIssue[]): SqlConfig {
  const r = sqlConfigSchema.safeParse(m.rendered.config);
  if (r.success) return r.data;
  for (const i of r.error.issues) {
    const what =
      i.code === 'unrecognized_keys'
        ? `unknown key${i.keys.length > 1 ? 's' : ''} ${i.keys.join(', ')} (known: ${Object.keys(sqlConfigSchema.shape).join(', ')})`
        : `${i.path.join('.')}: ${i.message.replace(/^Invalid input: /, '')}`;
    issues.push({ file: m.file, line: m.rendered.configLine, message: `config(...): ${what}` });
  }
  return {};
}
