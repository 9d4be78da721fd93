import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ConfigIssue } from '../errors.js';
import { registerSecret } from '../util/secrets.js';
import { ident } from '../sql/quote.js';
import { MODEL_SCHEMA, SOURCE_SCHEMA, type RenderedModel } from '../sql/template.js';
import { handlerProblem, type Handler, type HandlerInput } from './handler-def.js';
import { newModel } from './model-files.js';
import type { ModelDef } from './project-types.js';

// The handlers of handlers/*.ts (and .mts, .js, .mjs): each module is loaded, with no build
// step, by jiti (TypeScript and ESM at run time), and its default export, a handler (see
// handler-def.ts), becomes a step of the DAG named by its file. Loading a handler runs its
// module's top-level code, as loading a config file written in code does.

const EXTENSIONS = ['.ts', '.mts', '.cts', '.js', '.mjs', '.cjs'];

/** `import ... from "sluice"` in a handler: this package's handler API (built, or its source under test). */
function entryPoint(): string {
  const built = fileURLToPath(new URL('../handler-api.js', import.meta.url));
  return fs.existsSync(built) ? built : fileURLToPath(new URL('../handler-api.ts', import.meta.url));
}

type Loader = (id: string) => unknown;
let loader: Loader | undefined;

/** jiti, made once; loaded only when a project has handlers. */
function load(file: string): unknown {
  if (!loader) {
    const { createJiti } = createRequire(import.meta.url)('jiti') as typeof import('jiti');
    loader = createJiti(import.meta.url, { alias: { sluice: entryPoint() }, interopDefault: true, moduleCache: false });
  }
  const mod = loader(file) as { default?: unknown } | undefined;
  return mod && typeof mod === 'object' && 'default' in mod ? mod.default : mod;
}

/** The line of `file` an error's stack points at, when it does. */
function lineIn(err: unknown, file: string): number | undefined {
  const text = err instanceof Error ? `${err.message}\n${err.stack ?? ''}` : '';
  const base = path.basename(file).replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  const m = new RegExp(`${base}:(\\d+)`).exec(text) ?? /\((\d+):\d+\)/.exec(text);
  return m ? Number(m[1]) : undefined;
}

/** The SQL a handler's input is read with (it carries the message index column like any relation of the batch). */
export function handlerInputSql(from: HandlerInput): string {
  if (from.kind === 'ref') return `SELECT * FROM ${MODEL_SCHEMA}.${ident(from.name)}`;
  if (from.kind === 'source') return `SELECT * FROM ${SOURCE_SCHEMA}.${ident(from.name)}`;
  return 'SELECT * FROM incoming';
}

/** The handler modules in `handlersDir` (none when it does not exist), by file name. */
function handlerFileNames(handlersDir: string): string[] {
  if (!fs.existsSync(handlersDir) || !fs.statSync(handlersDir).isDirectory()) return [];
  return fs
    .readdirSync(handlersDir)
    .filter((f) => EXTENSIONS.includes(path.extname(f)) && !f.endsWith('.d.ts') && !f.startsWith('.'))
    .sort();
}

/** Whether the project has handlers (then it needs no SQL model). */
export function hasHandlerFiles(handlersDir: string): boolean {
  return handlerFileNames(handlersDir).length > 0;
}

/** The handlers in `handlersDir` (none when it does not exist), as steps of the DAG beside `models`. */
export function readHandlerFiles(handlersDir: string, models: ModelDef[], issues: ConfigIssue[], show: (file: string) => string): ModelDef[] {
  const out: ModelDef[] = [];
  for (const f of handlerFileNames(handlersDir)) {
    const file = path.join(handlersDir, f);
    const name = f.slice(0, -path.extname(f).length);
    const shown = show(file);
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) {
      issues.push({ file: shown, message: `handler name "${name}" must be a plain identifier (letters, digits, _)` });
      continue;
    }
    const clash = [...models, ...out].find((m) => m.name === name);
    if (clash) {
      issues.push({ file: shown, message: `handler "${name}" has the name of ${clash.handler ? 'handler' : 'model'} ${clash.file}: a step's name is its file's, once in the project` });
      continue;
    }
    let value: unknown;
    try {
      value = load(file);
    } catch (err) {
      const msg = err instanceof Error ? err.message.split('\n')[0] : String(err);
      issues.push({ file: shown, line: lineIn(err, file), message: `cannot load the handler: ${msg}` });
      continue;
    }
    const problem = handlerProblem(value);
    if (problem) {
      issues.push({ file: shown, message: problem });
      continue;
    }
    out.push(handlerModel(name, shown, fs.readFileSync(file, 'utf8'), value as Handler));
  }
  return out;
}

/** A handler as a step of the DAG: what it reads is its `from`, in the form a model's rendered SQL has. */
function handlerModel(name: string, file: string, code: string, handler: Handler): ModelDef {
  const from = handler.from ?? { kind: 'incoming' };
  // Where the handler names its input, for an error about it.
  const at = /\bfrom\s*:/.exec(code);
  const line = at ? code.slice(0, at.index).split('\n').length : 1;
  const rendered: RenderedModel = {
    sql: handlerInputSql(from),
    sources: from.kind === 'source' ? [{ name: from.name, line }] : [],
    refs: from.kind === 'ref' ? [{ name: from.name, line }] : [],
    usesIncoming: from.kind === 'incoming',
    config: {},
  };
  const shape = (handler.output as { shape?: unknown } | undefined)?.shape;
  return {
    ...newModel(name, file, code, rendered),
    ...(handler.description ? { description: handler.description } : {}),
    handler: { spec: handler, from, outputColumns: shape && typeof shape === 'object' ? Object.keys(shape) : undefined },
  };
}

/**
 * A handler that arranges tasks has a pool (overrides.<handler>.executor) whose binary exists and
 * may be run; one that does not, no pool. The binary's path is resolved from the project's
 * directory; the pool's env values are secrets (never shown).
 */
export function checkHandlerExecutors(models: ModelDef[], projectDir: string, issues: ConfigIssue[]): void {
  for (const m of models) {
    const h = m.handler;
    if (!h) continue;
    const arranges = typeof h.spec.arrange === 'function';
    if (arranges && !h.executor) {
      issues.push({ file: m.file, message: `handler ${m.name} arranges tasks: give it a subprocess pool in config/models.yml (overrides.${m.name}.executor.binary_path)` });
      continue;
    }
    if (!h.executor) continue;
    const ex = h.executor;
    for (const v of Object.values(ex.env)) registerSecret(v);
    if (!arranges) {
      issues.push({ ...ex.at, key: `overrides.${m.name}.executor`, message: `handler ${m.name} has a subprocess pool but no arrange() to give it tasks (process() makes rows itself)` });
      continue;
    }
    ex.binaryPath = path.resolve(projectDir, ex.binaryPath);
    try {
      fs.accessSync(ex.binaryPath, fs.constants.X_OK);
      if (!fs.statSync(ex.binaryPath).isFile()) throw new Error('not a file');
    } catch {
      issues.push({ ...ex.at, key: `overrides.${m.name}.executor.binary_path`, message: `${ex.binaryPath} is not a program sluice can run (missing, not a file, or not executable)` });
    }
  }
}
