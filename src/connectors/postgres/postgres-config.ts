import { z } from 'zod';
import { connectionKeys } from '../sql-table/connection.js';
import { checkTableSink, tableSinkKeys } from '../sql-table/table-config.js';

export const postgresSinkSchema = z
  .object({
    type: z.literal('postgres'),
    ...connectionKeys({ port: 5432, user: 'postgres' }),
    schema: z.string().min(1).default('public').describe('schema of the target table and of the state table'),
    ...tableSinkKeys(['append', 'merge', 'scd2'] as const),
    valid_from_column: z.string().min(1).optional().describe('scd2: the model column holding the event time a version starts at (default: the time of the write)'),
    close_missing: z.boolean().default(false).describe('scd2: a flush is a full snapshot; current rows whose key is not in it are closed'),
    temp_buffers_mb: z
      .number()
      .int()
      .positive()
      .default(256)
      .describe("PostgreSQL's temp_buffers for the sink's session: memory the staging table of a merge or scd2 flush may take before it spills to disk"),
    work_mem_mb: z
      .number()
      .int()
      .positive()
      .default(64)
      .describe("PostgreSQL's work_mem for the sink's session: memory the joins of a merge or scd2 flush with the target may take before they spill to disk"),
    state_table: z.string().min(1).default('_sluice_applied').describe('table recording the flushes applied (effectively-once)'),
  })
  .strict()
  .superRefine((c, ctx) => {
    checkTableSink(c, ctx);
    if (c.strategy !== 'scd2') {
      if (c.valid_from_column) ctx.addIssue({ code: 'custom', path: ['valid_from_column'], message: 'valid_from_column is used by strategy scd2 only' });
      if (c.close_missing) ctx.addIssue({ code: 'custom', path: ['close_missing'], message: 'close_missing is used by strategy scd2 only' });
    }
    if (c.valid_from_column && c.key.includes(c.valid_from_column)) ctx.addIssue({ code: 'custom', path: ['valid_from_column'], message: 'the event-time column cannot be a key column' });
  });
export type PostgresSinkConfig = z.output<typeof postgresSinkSchema>;
