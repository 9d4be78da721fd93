import { defineSink } from '../define.js';
import { tableRequiredColumns } from '../sql-table/table-config.js';
import { postgresSinkSchema } from './postgres-config.js';

export const postgresSink = defineSink({
  type: 'postgres',
  schema: postgresSinkSchema,
  description: 'a PostgreSQL table: append (COPY), merge (upsert) or scd2; effectively-once through a state table',
  requiredColumns: (cfg) => tableRequiredColumns(cfg),
  upsertKey: (cfg) => (cfg.strategy === 'merge' ? cfg.key : undefined),
  async create(cfg, ctx) {
    const { PostgresSink } = await import('./postgres-sink.js');
    return new PostgresSink(cfg, ctx);
  },
  async planner(cfg, ctx) {
    const { postgresPlanner } = await import('./postgres-table.js');
    return postgresPlanner(cfg, ctx);
  },
});
