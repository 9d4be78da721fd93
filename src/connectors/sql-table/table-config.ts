import { z } from 'zod';

/** Keys every SQL-table sink (postgres, mysql) has: where the rows go and how they land. */
export function tableSinkKeys<S extends readonly [string, ...string[]]>(strategies: S) {
  return {
    table: z.string().min(1).optional().describe('target table; default: the model name'),
    strategy: z
      .enum(strategies)
      .default(strategies[0] as S[number])
      .describe(`how rows land: ${strategies.join(', ')}`),
    key: z
      .union([z.string().min(1), z.array(z.string().min(1)).min(1)])
      .optional()
      .transform((v) => (v === undefined ? [] : Array.isArray(v) ? v : [v]))
      .describe('model columns identifying a row (merge, scd2); never NULL'),
    compare_columns: z
      .array(z.string().min(1))
      .min(1)
      .optional()
      .describe('merge: a matched row is updated only when one of these changed (default: any non-key column); scd2: the columns whose change makes a new version'),
    delete_column: z
      .string()
      .min(1)
      .optional()
      .describe("merge: a BOOLEAN column of the model (a session window's _retracted under late: update); a row where it is true deletes its key's row instead of upserting it"),
    auto_migrate: z.boolean().default(false).describe('create missing columns when a model grows; otherwise a write needing them fails until `sluice apply`'),
    connect_timeout_ms: z.number().int().positive().default(10_000).describe('timeout of one connection attempt'),
  };
}

interface TableSinkShape {
  strategy: string;
  key: string[];
  compare_columns?: string[];
  delete_column?: string;
}

/** Cross-key checks shared by the SQL-table sinks (used in their schemas' superRefine). */
export function checkTableSink(c: TableSinkShape, ctx: z.RefinementCtx): void {
  if (c.strategy !== 'append' && c.key.length === 0) ctx.addIssue({ code: 'custom', path: ['key'], message: `strategy ${c.strategy} needs key: the column(s) identifying a row` });
  if (c.strategy === 'append' && c.key.length > 0) ctx.addIssue({ code: 'custom', path: ['key'], message: 'key is used by merge and scd2 only; remove it or set strategy' });
  if (c.strategy === 'append' && c.compare_columns) ctx.addIssue({ code: 'custom', path: ['compare_columns'], message: 'compare_columns is used by merge and scd2 only' });
  if (c.delete_column !== undefined && c.strategy !== 'merge') ctx.addIssue({ code: 'custom', path: ['delete_column'], message: 'delete_column is used by merge only' });
  if (c.delete_column !== undefined && c.key.includes(c.delete_column)) ctx.addIssue({ code: 'custom', path: ['delete_column'], message: `"${c.delete_column}" is a key column` });
  for (const col of c.compare_columns ?? []) {
    if (c.key.includes(col)) ctx.addIssue({ code: 'custom', path: ['compare_columns'], message: `"${col}" is a key column; compare_columns lists the other columns` });
  }
}

/** Columns a model must produce for a SQL-table sink. */
export function tableRequiredColumns(c: TableSinkShape & { valid_from_column?: string }): string[] {
  return [...c.key, ...(c.compare_columns ?? []), ...(c.valid_from_column ? [c.valid_from_column] : []), ...(c.delete_column ? [c.delete_column] : [])];
}
