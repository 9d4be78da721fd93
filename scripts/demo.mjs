// `npm run demo`: runs the example pipeline in examples/orders end to end, as a user would.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { DuckDBInstance } from '@duckdb/node-api';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const project = path.join(root, 'examples', 'orders');
const cli = path.join(root, 'bin', 'sluice.js');

function sluice(...args) {
  console.log(`\n$ sluice ${args.join(' ')}`);
  const r = spawnSync(process.execPath, [cli, ...args, '--project', project], { stdio: 'inherit' });
  if (r.status !== 0 && !(args[0] === 'test' && r.status === 1)) {
    console.error(`sluice ${args[0]} exited with ${r.status}`);
    process.exit(r.status ?? 1);
  }
}

// Start from a clean slate so the demo shows a full run every time.
for (const d of ['output', '.sluice']) fs.rmSync(path.join(project, d), { recursive: true, force: true });

sluice('validate');
sluice('models', 'list');
sluice('test', '--fixture', path.join(project, 'tests', 'sample.json'), '--model', 'orders');
sluice('run', '--port', '0');
sluice('dlq', 'inspect', '--limit', '5');

console.log('\nThe output is plain Parquet; any engine reads it. With DuckDB:');
const db = await DuckDBInstance.create(':memory:');
const conn = await db.connect();
const q = async (sql) => {
  console.log(`\n> ${sql}`);
  const r = await conn.runAndReadAll(sql);
  console.table(r.getRowObjectsJson());
};
const out = path.join(project, 'output');
await q(`SELECT count(*) AS orders, round(sum(order_total), 2) AS revenue FROM read_parquet('${out}/orders/**/*.parquet')`);
await q(`SELECT product_name, sum(quantity) AS units, round(sum(line_total), 2) AS revenue FROM read_parquet('${out}/purchases/**/*.parquet') GROUP BY 1 ORDER BY revenue DESC LIMIT 5`);
console.log(`\nFiles: ${fs.readdirSync(path.join(out, 'orders')).join(', ')} (orders), ${fs.readdirSync(path.join(out, 'purchases')).join(', ')} (purchases)`);
conn.closeSync();
db.closeSync();
