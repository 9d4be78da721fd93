import { DuckDBInstance } from '@duckdb/node-api';
const c = await (await DuckDBInstance.create(':memory:')).connect();
for (const q of ['SELECT now()', 'SELECT CURRENT_TIMESTAMP', 'SELECT proctime()', 'SELECT get_current_timestamp()']) {
  const r = await c.runAndReadAll(`SELECT json_serialize_sql($1::VARCHAR)`, [q]);
  const n = JSON.parse(String(r.getRows()[0][0])).statements[0].node.select_list[0];
  console.log(q, n.class, n.function_name, n.children?.length);
}
