import { z } from 'zod';

/**
 * Config shared by the file sinks (parquet, jsonl, csv): where files go (a local directory or
 * `s3://bucket/prefix`), how they are partitioned, dedupe, and the S3 connection keys.
 */

const IDENT = /^[A-Za-z_][A-Za-z0-9_]*$/;
/** date_trunc units whose result is a whole day or more: written as a DATE (`day=2024-05-01`). */
const DATE_UNITS = new Set(['day', 'week', 'month', 'quarter', 'year', 'decade', 'century', 'millennium']);

/** One directory level of a partitioned flush: `<name>=<value of expr>/`. */
export interface PartitionKey {
  name: string;
  /** SQL over the model's columns; equal to ident(name) for a plain column. */
  expr: string;
  /** Set when the key is a plain model column. */
  column?: string;
}

/**
 * A bare string is a column, or an expression whose key name can be derived: a one-argument
 * function call names its key after the function (`year(placed_at)` -> `year=`), and
 * `date_trunc('<unit>', col)` after the unit (`day=`); other expressions need `{ name, expr }`.
 */
export function partitionKey(s: string): PartitionKey | string {
  const v = s.trim();
  if (IDENT.test(v)) return { name: v, expr: `"${v}"`, column: v };
  const trunc = /^date_trunc\s*\(\s*'([A-Za-z]+)'\s*,\s*([^()]+?)\s*\)$/i.exec(v);
  if (trunc) {
    const unit = trunc[1].toLowerCase();
    return { name: unit, expr: DATE_UNITS.has(unit) ? `CAST(${v} AS DATE)` : v };
  }
  const call = /^([A-Za-z_][A-Za-z0-9_]*)\s*\(\s*[^(),]+\)$/.exec(v);
  if (call) return { name: call[1].toLowerCase(), expr: v };
  return `cannot derive a directory name from "${v}": write { name: <key>, expr: "${v.replaceAll('"', '\\"')}" }`;
}

const partitionItem = z.union([
  z.string().min(1),
  z
    .object({
      name: z.string().regex(IDENT, 'must be a plain identifier (the directory key)'),
      expr: z.string().min(1).describe('SQL expression over the model columns'),
    })
    .strict(),
]);

const partitionBy = z
  .union([partitionItem, z.array(partitionItem).min(1)])
  .optional()
  .transform((v, ctx): PartitionKey[] => {
    const items = v === undefined ? [] : Array.isArray(v) ? v : [v];
    const out: PartitionKey[] = [];
    items.forEach((item, i) => {
      const k = typeof item === 'string' ? partitionKey(item) : { name: item.name, expr: item.expr };
      if (typeof k === 'string') ctx.addIssue({ code: 'custom', message: k, path: Array.isArray(v) ? [i] : [] });
      else out.push(k);
    });
    return out;
  })
  .describe("partition keys as Hive key=value/ directories: columns, `year(col)`, `date_trunc('day', col)` or { name, expr }");

/** Keys shared by every file sink; `format` adds its own (compression, ...). */
export const fileSinkKeys = {
  path: z.string().min(1).describe('output directory or s3://bucket/prefix; files land in <path>/<model>/'),
  partition_by: partitionBy,
  layout: z.enum(['hive', 'hive_date']).default('hive').describe('hive_date: year=YYYY/month=MM/day=DD/ from time_column (UTC), before partition_by keys'),
  time_column: z.string().min(1).optional().describe('the event-time column for layout: hive_date'),
  dedupe_key: z.string().min(1).optional().describe('a model column identifying a message; rows of a redelivered message whose key was already written are dropped'),
  dedupe_window_seconds: z.number().positive().default(86_400).describe('how long written keys are remembered for dedupe_key'),
  endpoint: z.string().url().optional().describe('S3-compatible endpoint URL (MinIO, s3rver); default AWS'),
  region: z.string().min(1).optional().describe('S3 region (default: AWS_REGION, else us-east-1)'),
  force_path_style: z.boolean().optional().describe('address buckets as <endpoint>/<bucket> (MinIO, s3rver); default false'),
  part_size_mb: z.number().int().min(5).optional().describe('multipart upload part size in MiB (default 8, at least 5)'),
  upload_concurrency: z.number().int().positive().optional().describe('parts (and partition files) uploaded at once (default 4)'),
};

const S3_ONLY = ['endpoint', 'region', 'force_path_style', 'part_size_mb', 'upload_concurrency'] as const;

interface SharedShape {
  path: string;
  layout: 'hive' | 'hive_date';
  time_column?: string;
}

/** Cross-key rules, as zod issues on the offending key. */
function checkFileSink(cfg: SharedShape & Record<string, unknown>, ctx: z.RefinementCtx): void {
  if (cfg.layout === 'hive_date' && !cfg.time_column) {
    ctx.addIssue({ code: 'custom', path: ['layout'], message: 'layout: hive_date needs time_column: <the event-time column>' });
  }
  if (cfg.time_column && cfg.layout !== 'hive_date') {
    ctx.addIssue({ code: 'custom', path: ['time_column'], message: 'time_column is used by layout: hive_date only' });
  }
  if (!isS3Path(cfg.path)) {
    for (const k of S3_ONLY) {
      if (cfg[k] !== undefined) ctx.addIssue({ code: 'custom', path: [k], message: `${k} applies to an s3:// path only` });
    }
  } else if (!parseS3Path(cfg.path)) {
    ctx.addIssue({ code: 'custom', path: ['path'], message: 'expected s3://<bucket>/<prefix>' });
  }
}

export function isS3Path(p: string): boolean {
  return p.startsWith('s3://');
}

export function parseS3Path(p: string): { bucket: string; prefix: string } | undefined {
  const m = /^s3:\/\/([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:\/(.*))?$/.exec(p);
  if (!m) return undefined;
  return { bucket: m[1], prefix: (m[2] ?? '').replace(/^\/+|\/+$/g, '') };
}

/** The config every file sink has after parsing (format-specific keys aside). */
export interface FileSinkConfig {
  type: 'parquet' | 'jsonl' | 'csv';
  path: string;
  partition_by: PartitionKey[];
  layout: 'hive' | 'hive_date';
  time_column?: string;
  dedupe_key?: string;
  dedupe_window_seconds: number;
  endpoint?: string;
  region?: string;
  force_path_style?: boolean;
  part_size_mb?: number;
  upload_concurrency?: number;
  compression: string;
  row_group_size?: number;
}

export const parquetSinkSchema = z
  .object({
    type: z.literal('parquet'),
    ...fileSinkKeys,
    compression: z.enum(['zstd', 'snappy', 'gzip', 'lz4', 'brotli', 'uncompressed']).default('zstd'),
    row_group_size: z.number().int().positive().optional(),
  })
  .strict()
  .superRefine(checkFileSink);

const textCompression = z.enum(['none', 'gzip']).default('none').describe('gzip writes .jsonl.gz / .csv.gz');

export const jsonlSinkSchema = z
  .object({ type: z.literal('jsonl'), ...fileSinkKeys, compression: textCompression })
  .strict()
  .superRefine(checkFileSink);
export const csvSinkSchema = z
  .object({ type: z.literal('csv'), ...fileSinkKeys, compression: textCompression })
  .strict()
  .superRefine(checkFileSink);

/** Columns and expressions a model must provide, with the config key that asks for them. */
export function fileSinkRequirements(cfg: FileSinkConfig): { key: (string | number)[]; column?: string; expr?: string }[] {
  const out: { key: (string | number)[]; column?: string; expr?: string }[] = [];
  cfg.partition_by.forEach((p, i) => {
    const key: (string | number)[] = cfg.partition_by.length > 1 ? ['partition_by', i] : ['partition_by'];
    out.push(p.column ? { key, column: p.column } : { key, expr: p.expr });
  });
  if (cfg.time_column) out.push({ key: ['time_column'], column: cfg.time_column });
  if (cfg.dedupe_key) out.push({ key: ['dedupe_key'], column: cfg.dedupe_key });
  return out;
}
