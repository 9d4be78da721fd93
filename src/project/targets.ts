import { z } from 'zod';
import type { ConfigIssue } from '../errors.js';
import { registerSecret, isSecretName } from '../util/secrets.js';
import { checkSchema, type KeyPath, type YamlFile } from './yaml-file.js';

/**
 * Environments, the dbt way: sluice.yml names targets (`targets: { dev: {...}, prod: {...} }`)
 * and a default (`target: dev`); `--target NAME` picks another. A target overrides, key by key,
 * the named sources and sinks of config/sources.yml and config/sinks.yml, sets `vars` (values for
 * `${VAR}` in every config file; the environment still wins), and may override `wal`, `server`
 * and `duckdb` of sluice.yml.
 */

const block = z.record(z.string(), z.unknown());

export const targetSchema = z
  .object({
    vars: z
      .record(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'a variable name is letters, digits and _'), z.union([z.string(), z.number(), z.boolean()]))
      .optional()
      .describe('values for ${NAME} in config files (an environment variable of the same name wins)'),
    source: block.optional().describe('overrides of the single `source:` block'),
    sources: z.record(z.string(), block).optional().describe('overrides per named source'),
    sink: block.optional().describe('overrides of the single `sink:` block'),
    sinks: z.record(z.string(), block).optional().describe('overrides per named sink'),
    wal: block.optional(),
    server: block.optional(),
    duckdb: block.optional(),
  })
  .strict();

export type TargetDef = z.output<typeof targetSchema>;

export interface ActiveTarget {
  name: string;
  def: TargetDef;
  /** sluice.yml, to point issues about overridden keys at the target's own lines. */
  yaml: YamlFile;
  /** Dotted key of an overridden config value ("sinks.lake.path") -> where the override lives. */
  overridden: Map<string, { file: string; keyPath: KeyPath }>;
}

/**
 * The target in force (the `--target` flag, else sluice.yml's `target:`), validated; undefined
 * when the project declares no targets. The project-level keys it overrides (wal, server, duckdb)
 * are merged into `proj` in place. `target` and `targets` are removed from `proj`.
 */
export function resolveTarget(yaml: YamlFile | undefined, proj: Record<string, unknown>, wanted: string | undefined, issues: ConfigIssue[]): ActiveTarget | undefined {
  const targets = proj.targets;
  const dflt = proj.target;
  delete proj.targets;
  delete proj.target;
  const file = yaml?.file ?? 'sluice.yml';
  if (dflt !== undefined && typeof dflt !== 'string') {
    issues.push({ file, line: yaml?.lineOf(['target']), key: 'target', message: 'expected the name of a target' });
    return undefined;
  }
  const name = wanted ?? dflt;
  if (targets === undefined || targets === null) {
    if (name !== undefined) {
      issues.push({ file, line: yaml?.lineOf(wanted ? [] : ['target']), key: wanted ? undefined : 'target', message: `target "${name}" is not defined: sluice.yml has no \`targets:\`` });
    }
    return undefined;
  }
  if (typeof targets !== 'object' || Array.isArray(targets)) {
    issues.push({ file, line: yaml?.lineOf(['targets']), key: 'targets', message: 'expected a mapping of target name -> overrides' });
    return undefined;
  }
  const names = Object.keys(targets);
  if (name === undefined) {
    issues.push({ file, line: yaml?.lineOf(['targets']), key: 'target', message: `several targets are defined (${names.join(', ')}): set a default with \`target:\` or pass --target` });
    return undefined;
  }
  if (!names.includes(name)) {
    issues.push({
      file,
      line: yaml?.lineOf(wanted ? ['targets'] : ['target']),
      key: wanted ? undefined : 'target',
      message: `no target named "${name}"${wanted ? ' (from --target)' : ''} (targets: ${names.join(', ') || 'none'})`,
    });
    return undefined;
  }
  if (!yaml) return undefined;
  const def = checkSchema(yaml, targetSchema, (targets as Record<string, unknown>)[name] ?? {}, ['targets', name], issues);
  if (!def) return undefined;
  for (const k of ['wal', 'server', 'duckdb'] as const) {
    if (def[k]) proj[k] = deepMerge(proj[k], def[k]);
  }
  for (const [k, v] of Object.entries(def.vars ?? {})) if (isSecretName(k)) registerSecret(v);
  return { name, def, yaml, overridden: new Map() };
}

/** The environment `${VAR}` sees: the target's vars, overridden by the real environment. */
export function targetEnv(env: NodeJS.ProcessEnv, target: ActiveTarget | undefined): NodeJS.ProcessEnv {
  if (!target?.def.vars) return env;
  const vars = Object.fromEntries(Object.entries(target.def.vars).map(([k, v]) => [k, String(v)]));
  return { ...vars, ...Object.fromEntries(Object.entries(env).filter(([, v]) => v !== undefined && v !== '')) };
}

/**
 * Merges the target's overrides into a parsed sources.yml or sinks.yml (in place). A name the
 * file does not declare is an issue at the target's line.
 */
export function applyTargetOverrides(y: YamlFile | undefined, single: 'source' | 'sink', plural: 'sources' | 'sinks', target: ActiveTarget | undefined, issues: ConfigIssue[]): void {
  if (!target || !y?.value || typeof y.value !== 'object') return;
  const doc = y.value as Record<string, unknown>;
  const tKey = ['targets', target.name];
  const apply = (over: Record<string, unknown>, docPath: string[], overPath: string[]) => {
    let cur: unknown = doc;
    for (const seg of docPath) cur = cur && typeof cur === 'object' ? (cur as Record<string, unknown>)[seg] : undefined;
    if (!cur || typeof cur !== 'object' || Array.isArray(cur)) {
      const known = plural in doc && doc[plural] && typeof doc[plural] === 'object' ? Object.keys(doc[plural] as object) : single in doc ? ['(the single `' + single + ':` block)'] : [];
      issues.push({
        file: target.yaml.file,
        line: target.yaml.lineOf([...tKey, ...overPath]),
        key: [...tKey, ...overPath].join('.'),
        message: `${y.file} has no ${single} ${docPath.length > 1 ? `named "${docPath[1]}"` : `\`${single}:\` block`} to override (${known.join(', ') || 'none'})`,
      });
      return;
    }
    const parent = docPath.slice(0, -1).reduce<Record<string, unknown>>((o, k) => o[k] as Record<string, unknown>, doc);
    parent[docPath.at(-1)!] = deepMerge(cur, over);
    for (const leaf of leafPaths(over)) {
      target.overridden.set([...docPath, ...leaf].join('.'), { file: target.yaml.file, keyPath: [...tKey, ...overPath, ...leaf] });
    }
  };
  const one = target.def[single];
  if (one) apply(one, [single], [single]);
  for (const [name, over] of Object.entries(target.def[plural] ?? {})) {
    if (name === 'default' && single in doc) apply(over, [single], [plural, name]);
    else apply(over, [plural, name], [plural, name]);
  }
}

/** Points issues about values the target overrode at the target's lines in sluice.yml. */
export function remapTargetIssues(issues: ConfigIssue[], target: ActiveTarget | undefined): void {
  if (!target?.overridden.size) return;
  for (const i of issues) {
    if (!i.key) continue;
    for (const [dotted, where] of target.overridden) {
      if (i.key === dotted || i.key.startsWith(dotted + '.')) {
        i.message = `${i.message} (set by target ${target.name})`;
        i.file = where.file;
        i.line = target.yaml.lineOf(where.keyPath);
        i.key = where.keyPath.join('.');
        break;
      }
    }
  }
}

function leafPaths(v: unknown, at: string[] = []): string[][] {
  if (v && typeof v === 'object' && !Array.isArray(v)) {
    const out: string[][] = [];
    for (const [k, x] of Object.entries(v)) out.push(...leafPaths(x, [...at, k]));
    return out.length ? out : [at];
  }
  return [at];
}

/** Objects merge key by key; anything else (arrays included) is replaced. */
export function deepMerge(base: unknown, over: unknown): unknown {
  if (!isPlainObject(base) || !isPlainObject(over)) return over;
  const out: Record<string, unknown> = { ...base };
  for (const [k, v] of Object.entries(over)) out[k] = k in out ? deepMerge(out[k], v) : v;
  return out;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return !!v && typeof v === 'object' && !Array.isArray(v);
}
