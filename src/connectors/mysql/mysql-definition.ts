import { defineSink } from '../define.js';
import { tableRequiredColumns } from '../sql-table/table-config.js';
import { mysqlSinkSchema } from './mysql-config.js';

export const mysqlSink = defineSink({
  type: 'mysql',
  schema: mysqlSinkSchema,
  description: 'a MariaDB / MySQL table: append (LOAD DATA) or merge (upsert); effectively-once through a state table',
  requiredColumns: (cfg) => tableRequiredColumns(cfg),
  upsertKey: (cfg) => (cfg.strategy === 'merge' ? cfg.key : undefined),
  async create(cfg, ctx) {
    const { MysqlSink } = await import('./mysql-sink.js');
    return new MysqlSink(cfg, ctx);
  },
  async planner(cfg, ctx) {
    const { mysqlPlanner } = await import('./mysql-table.js');
    return mysqlPlanner(cfg, ctx);
  },
});
