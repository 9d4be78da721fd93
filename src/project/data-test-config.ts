import { z } from 'zod';
import type { ConfigIssue } from '../errors.js';
import { durationSchema } from './duration.js';
import { checkSchema, type YamlFile } from './yaml-file.js';

/** What happens during `run` when a data test finds failing rows. */
export type OnFailure = 'warn' | 'dlq' | 'fail';

export type DataTestKind = 'not_null' | 'unique' | 'accepted_values' | 'range' | 'regex' | 'relationships' | 'expression';

/** One data test of one model, as declared in config/models.yml, normalised. */
export interface DataTest {
  kind: DataTestKind;
  /** Unique within the model: the declared `name`, else `<kind>_<model>_<column>` (dbt's habit). */
  name: string;
  model: string;
  /** The tested column; undefined for model-level expression tests. */
  column?: string;
  onFailure: OnFailure;
  values?: (string | number | boolean)[];
  min?: number;
  max?: number;
  pattern?: string;
  /** relationships: the reference table and its column. */
  to?: string;
  field?: string;
  expression?: string;
  /** Where it is declared. */
  file?: string;
  line?: number;
}

/**
 * A reference table (config/models.yml references:): a file of the project (CSV, Parquet,
 * JSON) or a PostgreSQL / MySQL table or query, loaded into DuckDB at start for models to join
 * and for `relationships` tests; refreshed every `refresh_interval` (interval text) when set.
 */
export interface ReferenceDef {
  name: string;
  csv?: string;
  parquet?: string;
  json?: string;
  postgres?: string;
  mysql?: string;
  table?: string;
  query?: string;
  refresh_interval?: string;
  max_rows: number;
  endpoint?: string;
  region?: string;
  force_path_style?: boolean;
  file?: string;
  line?: number;
}

const policy = {
  name: z
    .string()
    .regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'must be a plain identifier (letters, digits, _)')
    .optional()
    .describe('the test name in reports, logs, metrics and DLQ errors'),
  on_failure: z.enum(['warn', 'dlq', 'fail']).optional().describe("during run: warn (log + metric, default), dlq (the rows' messages go to the DLQ), fail (stop before the batch is committed)"),
};

const scalar = z.union([z.string(), z.number(), z.boolean()]);

/** The settings each column test kind takes (a bare `not_null` / `unique` takes none). */
const columnTestKinds = {
  not_null: z.object(policy).strict(),
  unique: z.object(policy).strict(),
  accepted_values: z.object({ values: z.array(scalar).min(1).describe('the values the column may hold (nulls pass)'), ...policy }).strict(),
  range: z
    .object({ min: z.number().optional().describe('smallest allowed value (inclusive)'), max: z.number().optional().describe('largest allowed value (inclusive)'), ...policy })
    .strict()
    .refine((r) => r.min !== undefined || r.max !== undefined, 'needs min, max or both')
    .refine((r) => r.min === undefined || r.max === undefined || r.min <= r.max, 'min is greater than max'),
  regex: z.object({ pattern: z.string().min(1).describe("a regular expression (DuckDB's RE2 syntax) the value must match somewhere; anchor with ^...$ for a full match"), ...policy }).strict(),
  relationships: z
    .object({ to: z.string().min(1).describe('a reference table declared under `references:`'), field: z.string().min(1).describe('its column holding the allowed values'), ...policy })
    .strict(),
} as const;

type ColumnTestKind = keyof typeof columnTestKinds;
const BARE: ColumnTestKind[] = ['not_null', 'unique'];

function zodMessage(i: z.core.$ZodIssue, known: string[]): string {
  if (i.code === 'unrecognized_keys') return `unknown key${i.keys.length > 1 ? 's' : ''} ${i.keys.map((k) => `"${k}"`).join(', ')} (known keys: ${known.join(', ')})`;
  if (i.code === 'invalid_type' && /received undefined/.test(i.message)) return `is required (expected ${i.expected})`;
  return i.message.replace(/^Invalid input: /, '');
}

/**
 * A column test: `not_null`, `unique`, or a one-key mapping `{ kind: { settings } }`. Validated
 * by kind so that a mistake is reported at its own key (`tests.1.accepted_values.values`), not
 * as "no union member matched".
 */
export const columnTestSchema = z.unknown().superRefine((v, ctx) => {
  const known = Object.keys(columnTestKinds).join(', ');
  if (typeof v === 'string') {
    if (!(BARE as string[]).includes(v)) {
      ctx.addIssue({ code: 'custom', message: v in columnTestKinds ? `${v} needs settings: { ${v}: { ... } }` : `unknown test "${v}" (known: ${known})` });
    }
    return;
  }
  if (!v || typeof v !== 'object' || Array.isArray(v) || Object.keys(v).length !== 1) {
    ctx.addIssue({ code: 'custom', message: `expected a test name (not_null, unique) or a mapping with one test kind (${known})` });
    return;
  }
  const [kind, settings] = Object.entries(v)[0];
  const schema = (columnTestKinds as Record<string, z.ZodType>)[kind];
  if (!schema) {
    ctx.addIssue({ code: 'custom', path: [kind], message: `unknown test "${kind}" (known: ${known})` });
    return;
  }
  const r = schema.safeParse(settings ?? {});
  if (!r.success)
    for (const i of r.error.issues) ctx.addIssue({ code: 'custom', path: [kind, ...(i.path as (string | number)[])], message: zodMessage(i, Object.keys((schema as z.ZodObject).shape)) });
});

/** A model-level test: a SQL expression every row must satisfy (rows where it is NULL pass, as in dbt). */
export const modelTestSchema = z
  .object({
    expression: z.string().min(1).describe('a SQL expression over the model\'s columns that every row must satisfy, e.g. "order_total >= 0"'),
    ...policy,
  })
  .strict();

/** The keys of a reference table naming where it is read from (exactly one). */
const REFERENCE_FROM = ['csv', 'parquet', 'json', 'postgres', 'mysql'] as const;

export const referenceSchema = z
  .object({
    csv: z.string().min(1).optional().describe('a CSV file with a header row: relative to the project directory, or s3://bucket/key'),
    parquet: z.string().min(1).optional().describe('a Parquet file (or a local glob): relative to the project directory, or s3://bucket/key'),
    json: z.string().min(1).optional().describe('a JSON file (an array, or one object a line): relative to the project directory, or s3://bucket/key'),
    endpoint: z.string().url().optional().describe('an s3:// file: the S3-compatible endpoint URL (MinIO, s3rver); default AWS'),
    region: z.string().min(1).optional().describe('an s3:// file: the region (default: AWS_REGION, else us-east-1)'),
    force_path_style: z.boolean().optional().describe('an s3:// file: address buckets as <endpoint>/<bucket> (MinIO, s3rver)'),
    postgres: z.string().min(1).optional().describe('a PostgreSQL connection URL, with table: or query:'),
    mysql: z.string().min(1).optional().describe('a MySQL / MariaDB connection URL, with table: or query:'),
    table: z.string().min(1).optional().describe('with postgres or mysql: the table to load'),
    query: z.string().min(1).optional().describe('with postgres or mysql: a SELECT to load instead of a table'),
    refresh_interval: durationSchema.optional().describe('load it again this often, swapped in whole between two batches (default: loaded once, at start)'),
    max_rows: z.number().int().positive().default(1_000_000).describe('a reference with more rows is refused (at start) or not swapped in (a refresh), with its size'),
  })
  .strict()
  .superRefine((r, ctx) => {
    const from = REFERENCE_FROM.filter((k) => r[k] !== undefined);
    if (from.length !== 1) ctx.addIssue({ code: 'custom', message: `needs exactly one of ${REFERENCE_FROM.map((k) => `${k}:`).join(', ')}` });
    const db = r.postgres !== undefined || r.mysql !== undefined;
    if (db && (r.table === undefined) === (r.query === undefined))
      ctx.addIssue({ code: 'custom', message: `${r.postgres !== undefined ? 'postgres' : 'mysql'} needs exactly one of table: or query:` });
    if (!db && (r.table !== undefined || r.query !== undefined)) ctx.addIssue({ code: 'custom', message: 'table: and query: go with postgres: or mysql:, not a file' });
    const s3 = [r.csv, r.parquet, r.json].some((f) => f?.startsWith('s3://'));
    for (const k of ['endpoint', 'region', 'force_path_style'] as const) {
      if (r[k] !== undefined && !s3) ctx.addIssue({ code: 'custom', path: [k], message: `${k} applies to an s3:// file only` });
    }
  });

/**
 * The data tests of one model from its override block (`columns[].tests` and `tests`), with
 * default names made unique; relationships naming an undeclared reference are reported.
 */
export function modelDataTests(
  model: string,
  block: { columns?: { name: string; tests?: unknown[] }[]; tests?: z.output<typeof modelTestSchema>[] } | undefined,
  references: Set<string>,
  yaml: YamlFile | undefined,
  issues: ConfigIssue[],
): DataTest[] {
  const out: DataTest[] = [];
  const at = (keyPath: (string | number)[]) => ({ file: yaml?.file, line: yaml?.lineOf(keyPath) });
  (block?.columns ?? []).forEach((c, ci) => {
    (c.tests ?? []).forEach((raw, ti) => {
      const keyPath = ['overrides', model, 'columns', ci, 'tests', ti];
      const [kind, settings] = typeof raw === 'string' ? [raw, {}] : (Object.entries(raw as Record<string, unknown>)[0] as [string, Record<string, unknown> | null]);
      const s = (settings ?? {}) as Record<string, unknown> & { name?: string; on_failure?: OnFailure };
      const t: DataTest = {
        kind: kind as DataTestKind,
        name: s.name ?? `${kind}_${model}_${c.name}`,
        model,
        column: c.name,
        onFailure: s.on_failure ?? 'warn',
        values: s.values as DataTest['values'],
        min: s.min as number | undefined,
        max: s.max as number | undefined,
        pattern: s.pattern as string | undefined,
        to: s.to as string | undefined,
        field: s.field as string | undefined,
        ...at(keyPath),
      };
      if (t.to !== undefined && !references.has(t.to) && yaml) {
        issues.push({
          file: yaml.file,
          line: yaml.lineOf([...keyPath, kind, 'to']),
          key: [...keyPath, kind, 'to'].join('.'),
          message: `no reference table named "${t.to}" (declare it under references:; declared: ${[...references].join(', ') || 'none'})`,
        });
      }
      out.push(t);
    });
  });
  (block?.tests ?? []).forEach((t, i) => {
    out.push({ kind: 'expression', name: t.name ?? `expression_${model}_${i + 1}`, model, expression: t.expression, onFailure: t.on_failure ?? 'warn', ...at(['overrides', model, 'tests', i]) });
  });
  // Names identify a test in metrics and DLQ errors: keep them unique within the model.
  const seen = new Map<string, number>();
  for (const t of out) {
    const n = (seen.get(t.name) ?? 0) + 1;
    seen.set(t.name, n);
    if (n > 1) t.name = `${t.name}_${n}`;
  }
  return out;
}

/** A short label for reports and the docs page: `accepted_values [EUR, USD]`, `range 0..100`. */
export function describeTest(t: DataTest): string {
  const how = t.onFailure === 'warn' ? '' : ` (on_failure: ${t.onFailure})`;
  switch (t.kind) {
    case 'accepted_values':
      return `accepted_values [${t.values!.join(', ')}]${how}`;
    case 'range':
      return `range ${t.min ?? ''}..${t.max ?? ''}${how}`;
    case 'regex':
      return `regex /${t.pattern}/${how}`;
    case 'relationships':
      return `relationships -> ${t.to}.${t.field}${how}`;
    case 'expression':
      return `${t.name}: ${t.expression}${how}`;
    default:
      return `${t.kind}${how}`;
  }
}

/** A unit test case: messages given inline, the exact rows expected per model. */
export interface UnitTest {
  name: string;
  description?: string;
  /** Messages per source (payloads as JSON text). */
  messages: Map<string, string[]>;
  /** Rows expected per model; only the columns given are compared. */
  expect: Map<string, Record<string, unknown>[]>;
  ordered: boolean;
  file: string;
  line?: number;
}

const message = z.union([z.record(z.string(), z.unknown()), z.string()]).describe('a message: a mapping (sent as JSON) or a string (the raw payload)');

const unitTestSchema = z
  .object({
    name: z
      .string()
      .regex(/^[A-Za-z_][A-Za-z0-9_-]*$/, 'must be a plain name (letters, digits, _ and -)')
      .describe('the case, as reports name it'),
    description: z.string().optional(),
    messages: z
      .union([z.array(message), z.record(z.string(), z.array(message))])
      .describe('the messages: a list (one-source projects, or the source of the expected models) or a mapping source -> list'),
    expect: z.record(z.string(), z.array(z.record(z.string(), z.unknown()))).describe('model -> the exact rows it must output; columns not given are not compared'),
    ordered: z.boolean().optional().describe('compare rows in order (default: as multisets)'),
  })
  .strict();

export const unitTestFileSchema = z.object({ unit_tests: z.array(unitTestSchema).describe('unit test cases') }).strict();

/**
 * The unit test cases of a project's tests/*.yml files. Every file there must hold `unit_tests:`;
 * sources and models they name must exist.
 */
export function unitTestsOf(files: YamlFile[], sources: { name: string }[], models: { name: string; source: string; feeds?: string[] }[], issues: ConfigIssue[]): UnitTest[] {
  const out: UnitTest[] = [];
  const names = new Map<string, { file: string; line?: number }>();
  const sourceNames = sources.map((s) => s.name);
  const modelNames = new Set(models.map((m) => m.name));
  for (const y of files) {
    if (y.value === undefined) continue;
    const parsed = checkSchema(y, unitTestFileSchema, y.value, [], issues);
    parsed?.unit_tests.forEach((c, i) => {
      const at = (...k: (string | number)[]) => ({ file: y.file, line: y.lineOf(['unit_tests', i, ...k]), key: ['unit_tests', i, ...k].join('.') });
      const before = names.get(c.name);
      if (before) issues.push({ ...at('name'), message: `unit test "${c.name}" is already defined ${before.file === y.file ? `at line ${before.line}` : `in ${before.file}`}` });
      else names.set(c.name, { file: y.file, line: y.lineOf(['unit_tests', i]) });
      for (const m of Object.keys(c.expect)) if (!modelNames.has(m)) issues.push({ ...at('expect', m), message: `no model named "${m}" (models: ${[...modelNames].join(', ')})` });
      const messages = new Map<string, string[]>();
      const payloads = (list: (string | Record<string, unknown>)[]) => list.map((m) => (typeof m === 'string' ? m : JSON.stringify(m)));
      if (Array.isArray(c.messages)) {
        const fed = [...new Set(models.filter((m) => m.name in c.expect).flatMap((m) => (m.feeds?.length ? m.feeds : [m.source])))];
        const src = sourceNames.length === 1 ? sourceNames : fed;
        if (src.length === 1) messages.set(src[0], payloads(c.messages));
        else issues.push({ ...at('messages'), message: `the expected models read several sources (${src.join(', ')}): give messages per source (messages: { source: [...] })` });
      } else {
        for (const [s, list] of Object.entries(c.messages)) {
          if (!sourceNames.includes(s)) issues.push({ ...at('messages', s), message: `no source named "${s}" (sources: ${sourceNames.join(', ')})` });
          else messages.set(s, payloads(list));
        }
      }
      out.push({ name: c.name, description: c.description, messages, expect: new Map(Object.entries(c.expect)), ordered: c.ordered ?? false, file: y.file, line: y.lineOf(['unit_tests', i]) });
    });
  }
  return out;
}
