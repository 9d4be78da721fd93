import { z } from 'zod';
import { connectionKeys } from '../sql-table/connection.js';
import { checkTableSink, tableSinkKeys } from '../sql-table/table-config.js';

export const mysqlSinkSchema = z
  .object({
    type: z.literal('mysql'),
    ...connectionKeys({ port: 3306, user: 'root' }),
    ...tableSinkKeys(['append', 'merge'] as const),
    state_table: z.string().min(1).default('_sluice_applied').describe('table recording the flushes applied (effectively-once)'),
  })
  .strict()
  .superRefine((c, ctx) => {
    checkTableSink(c, ctx);
    if (!c.url && !c.database) ctx.addIssue({ code: 'custom', path: ['database'], message: 'is required (or a url naming the database)' });
  });
export type MysqlSinkConfig = z.output<typeof mysqlSinkSchema>;
