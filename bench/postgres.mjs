// Postgres benchmark: N order rows (default 500,000; the `orders` model of `sluice init` over
// generated order messages) into PostgreSQL by the postgres sink, with `append`, with `merge`
// into an empty table (upsert on order_id, its primary key: a first load) and with `merge` of
// N other versions of the same orders into that full table (every row updated), against a
// plain COPY of the same rows through the same client (pg + pg-copy-streams, CSV from a file)
// into a table of the same shape without indexes, in the same run, alternating.
//
// What is timed: for sluice, the one flush of the run (its `flushed` log line: reading the WAL
// segments in DuckDB, the CSV export, the COPY, the merge and the state-table insert, the
// commit); for the baseline, COPY of the same rows (exported from sluice's table beforehand,
// untimed) plus its commit. A ratio is baseline time / sluice time (1 = as fast as a bare COPY).
//
//   npm run bench -- postgres [--messages 500000] [--runs 3]
//
// Needs PostgreSQL on 127.0.0.1:5432 (trust, database `test`; PGHOST/PGPORT/PGUSER/PGDATABASE
// override).
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { from as copyFrom, to as copyTo } from 'pg-copy-streams';
import { arg, checkFlags, machine, median } from './lib.mjs';
import { orderMessage } from '../dist/connectors/generator/generator-source.js';
import { ORDERS_SQL } from '../dist/cli/init.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
checkFlags('postgres', ['messages', 'runs']);
const N = arg('messages', 500_000);
const RUNS = arg('runs', 3);
const TARGETS = { append: 0.7, merge: 0.4 };
const PG = {
  host: process.env.PGHOST ?? '127.0.0.1',
  port: Number(process.env.PGPORT ?? 5432),
  user: process.env.PGUSER ?? 'postgres',
  database: process.env.PGDATABASE ?? 'test',
};

async function client() {
  const c = new pg.Client(PG);
  await c.connect();
  return c;
}

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-bench-pg-'));
/** N order messages of a seed (another seed: the same order_ids, other values). */
function orders(seed) {
  const file = path.join(work, `orders-${seed}.ndjson`);
  const fd = fs.openSync(file, 'w');
  for (let i = 0; i < N; i += 10_000) {
    const lines = [];
    for (let j = i; j < Math.min(N, i + 10_000); j++) lines.push(orderMessage(j, seed));
    fs.writeSync(fd, lines.join('\n') + '\n');
  }
  fs.closeSync(fd);
  return file;
}
const input = orders(42);
const changed = orders(43);

/** `sluice run` of the orders model over `input` into `table` with `strategy`; returns the flush's seconds. */
async function sluiceLoad(table, strategy, run, input) {
  const dir = path.join(work, `${strategy}-${run}`);
  fs.rmSync(dir, { recursive: true, force: true });
  const files = {
    'config/sources.yml': `source:\n  type: file\n  path: ${input}\n  batch_size: 50000\n  batch_timeout_ms: 1000\n  dlq: .sluice/dlq\n`,
    'config/sinks.yml': `sink:\n  type: postgres\n  host: ${PG.host}\n  port: ${PG.port}\n  user: ${PG.user}\n  database: ${PG.database}\n  table: ${table}\n  strategy: ${strategy}\n${strategy === 'merge' ? '  key: order_id\n' : ''}`,
    // One flush, at the end of input.
    'config/models.yml': 'max_file_bytes: 4294967296\nmax_age_seconds: 3600\n',
    'models/orders.sql': ORDERS_SQL,
  };
  for (const [rel, text] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(dir, rel)), { recursive: true });
    fs.writeFileSync(path.join(dir, rel), text);
  }
  const child = spawn(process.execPath, [path.join(ROOT, 'bin/sluice.js'), 'run', '--project', dir, '--port', '0', '--log-json'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr.on('data', (d) => (err += d));
  const code = await new Promise((r) => child.on('exit', r));
  if (code !== 0) throw new Error(`sluice exited ${code}: ${err.slice(-2000)}`);
  const flushes = err.split('\n').flatMap((l) => {
    try {
      const j = JSON.parse(l);
      return j.msg === 'flushed' ? [j] : [];
    } catch {
      return [];
    }
  });
  if (flushes.length !== 1 || flushes[0].rows !== N) throw new Error(`expected one flush of ${N} rows, got ${JSON.stringify(flushes)}`);
  fs.rmSync(dir, { recursive: true, force: true });
  return flushes[0].ms / 1000;
}

/** Rows of a table, or -1 when an order_id is there twice. */
async function count(c, table) {
  const [{ n, d }] = (await c.query(`SELECT count(*) AS n, count(DISTINCT order_id) AS d FROM ${table}`)).rows;
  return n === d ? Number(n) : -1;
}

/** A plain COPY of `csv` into a fresh table shaped like `like`, through pg-copy-streams; seconds. */
async function plainCopy(c, like, csv) {
  await c.query('DROP TABLE IF EXISTS bench_plain_copy');
  await c.query(`CREATE TABLE bench_plain_copy (LIKE ${like})`);
  const t0 = performance.now();
  await c.query('BEGIN');
  await pipeline(fs.createReadStream(csv), c.query(copyFrom('COPY bench_plain_copy FROM STDIN (FORMAT csv)')));
  await c.query('COMMIT');
  const secs = (performance.now() - t0) / 1000;
  if ((await count(c, 'bench_plain_copy')) !== N) throw new Error('plain COPY lost rows');
  return secs;
}

const c = await client();
const results = { append: [], merge: [], merge_update: [], copy: [] };
try {
  console.log(`postgres benchmark: ${N} order rows, ${RUNS} run(s): sluice append and merge vs a plain COPY (pg-copy-streams)`);
  for (let r = 0; r < RUNS; r++) {
    const secs = {};
    for (const strategy of ['append', 'merge']) {
      const table = `bench_sluice_${strategy}`;
      await c.query(`DROP TABLE IF EXISTS ${table}`);
      await c.query(`DELETE FROM _sluice_applied WHERE target = $1`, [`public.${table}`]).catch(() => {});
      secs[strategy] = await sluiceLoad(table, strategy, r, input);
      const got = await count(c, table);
      if (got !== N) throw new Error(`${table} holds ${got} distinct rows, want ${N}`);
    }
    // Every order again with other values, into the full merge table: N updates.
    const before = (await c.query('SELECT sum(order_total) AS s FROM bench_sluice_merge')).rows[0].s;
    secs.merge_update = await sluiceLoad('bench_sluice_merge', 'merge', `${r}-update`, changed);
    const after = await c.query('SELECT sum(order_total) AS s, count(*) AS n FROM bench_sluice_merge');
    if (Number(after.rows[0].n) !== N || after.rows[0].s === before) throw new Error('the merge of changed orders did not update the table');
    // The same rows, as CSV, for the plain COPY (not timed).
    const csv = path.join(work, 'rows.csv');
    await pipeline(c.query(copyTo('COPY bench_sluice_append TO STDOUT (FORMAT csv)')), fs.createWriteStream(csv));
    secs.copy = await plainCopy(c, 'bench_sluice_append', csv);
    for (const k of Object.keys(results)) results[k].push(secs[k]);
    const rate = (s) => Math.round(N / s).toLocaleString('en-US');
    console.log(
      `run ${r + 1}: plain COPY ${secs.copy.toFixed(2)} s (${rate(secs.copy)} rows/s); sluice append ${secs.append.toFixed(2)} s (ratio ${(secs.copy / secs.append).toFixed(2)}), merge into an empty table ${secs.merge.toFixed(2)} s (ratio ${(secs.copy / secs.merge).toFixed(2)}), merge updating every row ${secs.merge_update.toFixed(2)} s (ratio ${(secs.copy / secs.merge_update).toFixed(2)})`,
    );
  }
} finally {
  for (const t of ['bench_sluice_append', 'bench_sluice_merge', 'bench_plain_copy']) await c.query(`DROP TABLE IF EXISTS ${t}`).catch(() => {});
  await c.end();
  fs.rmSync(work, { recursive: true, force: true });
}

const ratio = (k) => Number((median(results.copy) / median(results[k])).toFixed(2));
const perRun = (k) => results[k].map((s, i) => Number((results.copy[i] / s).toFixed(2)));
const summary = {
  benchmark: 'postgres',
  rows: N,
  runs: RUNS,
  baseline: 'plain COPY through pg-copy-streams',
  copy_s: Number(median(results.copy).toFixed(2)),
  append_s: Number(median(results.append).toFixed(2)),
  merge_s: Number(median(results.merge).toFixed(2)),
  merge_update_s: Number(median(results.merge_update).toFixed(2)),
  append_ratio: ratio('append'),
  merge_ratio: ratio('merge'),
  merge_update_ratio: ratio('merge_update'),
  append_run_ratios: perRun('append'),
  merge_run_ratios: perRun('merge'),
  merge_update_run_ratios: perRun('merge_update'),
  machine: machine(),
};
console.log(
  `\nmedian: plain COPY ${summary.copy_s} s; sluice append ${summary.append_s} s -> ratio ${summary.append_ratio} (target >= ${TARGETS.append}); merge into an empty table ${summary.merge_s} s -> ratio ${summary.merge_ratio} (target >= ${TARGETS.merge}); merge updating every row ${summary.merge_update_s} s -> ratio ${summary.merge_update_ratio}`,
);
console.log(
  `machine: ${summary.machine.cpu}, ${summary.machine.cpus} CPUs, ${summary.machine.mem_gib} GiB, Node.js ${summary.machine.node}, 1-min load average at the end ${summary.machine.loadavg_1m_at_end}`,
);
fs.mkdirSync(path.join(ROOT, 'bench/results'), { recursive: true });
fs.writeFileSync(path.join(ROOT, 'bench/results/postgres.json'), JSON.stringify(summary, null, 2) + '\n');
