// File benchmark: N order messages (default 500,000) from an NDJSON file through the
// `orders` and `purchases` models to zstd Parquet with `sluice run`, against plain DuckDB
// doing the same job (bench/baseline.mjs: read_json of the same file + the same SQL + COPY to
// zstd Parquet) in the same benchmark run, alternating. Both run as child processes and are
// measured the same way: wall time from spawn to exit, peak RSS from /proc/<pid>/status VmHWM
// polled every 50 ms.
//
//   node bench/run.mjs [file] [--messages 500000] [--runs 3] [--batch-size B (none: no batch keys)] [--contract 1 | --data-tests 1]
import fs from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { DuckDBInstance, version as duckdbVersion } from '@duckdb/node-api';
import { arg, cleanupOnInterrupt, median, timedChild } from './lib.mjs';
import { orderMessage } from '../dist/connectors/generator/generator-source.js';
import { scaffold } from '../dist/cli/init.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const SEED = 42;
const FLAGS = ['messages', 'runs', 'batch-size', 'contract', 'data-tests'];
for (const a of process.argv.slice(2)) {
  if (a.startsWith('--') && !FLAGS.includes(a.slice(2).split('=')[0])) {
    console.error(`unknown flag ${a}; the file benchmark takes ${FLAGS.map((f) => `--${f} N`).join(', ')}`);
    process.exit(2);
  }
}
const N = arg('messages', 500_000);
const RUNS = arg('runs', 3);
// No --batch-size: the source block sets no batch keys (the defaults, as a user gets them).
const BATCH = process.argv.some((a) => a.startsWith('--batch-size')) ? arg('batch-size', 0) : undefined;
// --contract 1: the orders model declares its columns with types under a freeze contract (every row checked and cast).
const CONTRACT = arg('contract', 0) > 0;
// --data-tests 1: seven data tests on the two models, all passing (on_failure warn): what testing every batch costs.
const DATA_TESTS = arg('data-tests', 0) > 0;
if (CONTRACT && DATA_TESTS) {
  console.error('--contract and --data-tests each measure one thing: give one of them');
  process.exit(2);
}
for (const [flag, v] of [['messages', N], ['runs', RUNS], ...(BATCH === undefined ? [] : [['batch-size', BATCH]])]) {
  if (!Number.isInteger(v) || v < 1) {
    console.error(`--${flag} must be a whole number >= 1, got ${v}`);
    process.exit(2);
  }
}
// Large enough that neither threshold fires during the run: each model is flushed once, at
// the end of input, into one Parquet file.
const MAX_FILE_BYTES = 1_073_741_824;
const MAX_AGE_SECONDS = 3600;
const TARGET = 0.5;

const MiB = 2 ** 20;
const ORDERS_CONTRACT = `overrides:\n  orders:\n    contract: { new_columns: freeze, type_changes: freeze }\n    columns:\n${[
  ['order_id', 'BIGINT'],
  ['user_id', 'BIGINT'],
  ['user_name', 'VARCHAR'],
  ['item_count', 'BIGINT'],
  ['order_total', 'DOUBLE'],
  ['currency', 'VARCHAR'],
  ['placed_at', 'TIMESTAMP'],
]
  .map(([n, t]) => `      - { name: ${n}, type: ${t} }\n`)
  .join('')}`;
const MODEL_TESTS = `overrides:
  orders:
    columns:
      - { name: order_id, tests: [not_null, unique] }
      - { name: currency, tests: [{ accepted_values: { values: [EUR, USD, GBP] } }] }
      - { name: order_total, tests: [{ range: { min: 0 } }] }
    tests:
      - expression: item_count >= 0
  purchases:
    columns:
      - { name: sku, tests: [not_null] }
      - { name: quantity, tests: [{ range: { min: 1, max: 100 } }] }
`;
const fmtRate = (r) => Math.round(r).toLocaleString('en-US');
const lit = (s) => `'${s.replace(/'/g, "''")}'`;

// ---------------------------------------------------------------------------------------------
// The input: generated once into bench/data/ (gitignored) and reused while its metadata
// matches (message count, seed, size); regenerated otherwise.

const dataDir = path.join(ROOT, 'bench', 'data');
const input = path.join(dataDir, 'orders.ndjson');
const metaFile = path.join(dataDir, 'orders.meta.json');

function cachedMeta() {
  try {
    const meta = JSON.parse(fs.readFileSync(metaFile, 'utf8'));
    if (meta.messages === N && meta.seed === SEED && fs.statSync(input).size === meta.bytes) return meta;
  } catch {
    // missing or unreadable: regenerate
  }
  return undefined;
}

function generate() {
  fs.mkdirSync(dataDir, { recursive: true });
  fs.rmSync(metaFile, { force: true });
  const t0 = performance.now();
  const tmp = input + '.tmp';
  const fd = fs.openSync(tmp, 'w');
  let items = 0;
  let buf = [];
  const flush = () => {
    fs.writeSync(fd, buf.join('\n') + '\n');
    buf = [];
  };
  for (let i = 0; i < N; i++) {
    const m = orderMessage(i, SEED);
    items += JSON.parse(m).items.length;
    buf.push(m);
    if (buf.length === 10_000) flush();
  }
  if (buf.length) flush();
  fs.fsyncSync(fd);
  fs.closeSync(fd);
  fs.renameSync(tmp, input);
  const meta = { messages: N, seed: SEED, purchases: items, bytes: fs.statSync(input).size };
  fs.writeFileSync(metaFile, JSON.stringify(meta, null, 2) + '\n');
  console.log(`generated ${input}: ${N} messages in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  return meta;
}

// ---------------------------------------------------------------------------------------------
// Child processes: timed from spawn to exit, peak RSS by VmHWM.

/** The child and temp dir in flight, so an interrupt can stop and remove them. */
const inFlight = cleanupOnInterrupt();

const timed = (label, args) => timedChild(label, args, ROOT, inFlight);

/** Rows and files per model under `dir`: `<dir>/<model>/**\/*.parquet` (sluice) or `<dir>/<model>.parquet` (baseline). */
async function countRows(globs) {
  const db = await DuckDBInstance.create(':memory:', { threads: '1' });
  const conn = await db.connect();
  const res = {};
  try {
    for (const [model, glob] of Object.entries(globs)) {
      const r = await conn.runAndReadAll(`SELECT count(*), count(DISTINCT filename) FROM read_parquet(${lit(glob)}, filename = true)`);
      const [rows, files] = r.getRows()[0];
      res[model] = { rows: Number(rows), files: Number(files) };
    }
  } finally {
    conn.closeSync();
    db.closeSync();
  }
  return res;
}

function checkCounts(who, counts, meta) {
  const want = { orders: N, purchases: meta.purchases };
  for (const [model, rows] of Object.entries(want)) {
    if (counts[model].rows !== rows) throw new Error(`${who}: ${model} has ${counts[model].rows} rows, expected ${rows}`);
  }
}

async function runSluice(meta) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-bench-file-'));
  inFlight.dir = dir;
  try {
    await scaffold(dir, 'bench');
    fs.rmSync(path.join(dir, 'data'), { recursive: true, force: true }); // the scaffold's sample input
    fs.writeFileSync(path.join(dir, 'config/sources.yml'), `source:\n  type: file\n  path: ${JSON.stringify(input)}\n  follow: false\n${BATCH === undefined ? '' : `  batch_size: ${BATCH}\n`}`);
    fs.writeFileSync(path.join(dir, 'config/sinks.yml'), `sink:\n  type: parquet\n  path: ${JSON.stringify(path.join(dir, 'output'))}\n  compression: zstd\n`);
    fs.writeFileSync(path.join(dir, 'config/models.yml'), `max_file_bytes: ${MAX_FILE_BYTES}\nmax_age_seconds: ${MAX_AGE_SECONDS}\n${CONTRACT ? ORDERS_CONTRACT : DATA_TESTS ? MODEL_TESTS : ''}`);
    const r = await timed('sluice run', [path.join(ROOT, 'bin/sluice.js'), 'run', '--project', dir, '--port', '0', '--log-level', 'warn']);
    const counts = await countRows({
      orders: path.join(dir, 'output/orders/**/*.parquet'),
      purchases: path.join(dir, 'output/purchases/**/*.parquet'),
    });
    checkCounts('sluice', counts, meta);
    return { ...r, counts };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
    inFlight.dir = undefined;
  }
}

async function runBaseline(meta) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-bench-duckdb-'));
  inFlight.dir = dir;
  try {
    const out = path.join(dir, 'baseline');
    const r = await timed('plain DuckDB baseline', [path.join(ROOT, 'bench/baseline.mjs'), input, out]);
    const counts = await countRows({ orders: path.join(out, 'orders.parquet'), purchases: path.join(out, 'purchases.parquet') });
    checkCounts('plain DuckDB', counts, meta);
    return { ...r, counts };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
    inFlight.dir = undefined;
  }
}

// ---------------------------------------------------------------------------------------------

const meta = cachedMeta() ?? generate();
// Warm the page cache so the first child does not pay for reading the input from disk.
{
  const fd = fs.openSync(input, 'r');
  const b = Buffer.allocUnsafe(8 * MiB);
  while (fs.readSync(fd, b, 0, b.length, null) > 0);
  fs.closeSync(fd);
}

const require = createRequire(import.meta.url);
const machine = {
  os: `${os.type()} ${os.release()} ${os.arch()}`,
  cpu: os.cpus()[0]?.model ?? 'unknown',
  cpus: os.cpus().length,
  mem_total_bytes: os.totalmem(),
  mem_total_gib: Number((os.totalmem() / 2 ** 30).toFixed(1)),
  node: process.version,
  duckdb: duckdbVersion(),
  duckdb_node_api: require('@duckdb/node-api/package.json').version,
};

console.log(
  `file benchmark: ${N.toLocaleString('en-US')} order messages (${(meta.bytes / MiB).toFixed(0)} MiB NDJSON, ${meta.purchases.toLocaleString('en-US')} line items), ` +
    `batch_size ${BATCH ?? 'default'}, ${RUNS} run(s), sluice and plain DuckDB alternating`,
);
console.log(
  `machine: ${machine.cpu}, ${machine.cpus} CPUs, ${machine.mem_total_gib} GiB; ${machine.os}; Node.js ${machine.node}, DuckDB ${machine.duckdb} (@duckdb/node-api ${machine.duckdb_node_api})`,
);
console.log('peak RSS = VmHWM of the child process (DuckDB threads are in-process, so it covers them)\n');

const runs = [];
try {
  for (let i = 0; i < RUNS; i++) {
    const base = await runBaseline(meta);
    const sl = await runSluice(meta);
    const run = {
      run: i + 1,
      sluice: { seconds: sl.secs, msgs_per_s: N / sl.secs, peak_rss_bytes: sl.peak, files: { orders: sl.counts.orders.files, purchases: sl.counts.purchases.files } },
      baseline: { seconds: base.secs, msgs_per_s: N / base.secs, peak_rss_bytes: base.peak },
    };
    run.ratio = run.sluice.msgs_per_s / run.baseline.msgs_per_s;
    runs.push(run);
    console.log(
      `run ${i + 1}/${RUNS}: sluice ${fmtRate(run.sluice.msgs_per_s)} msg/s (${sl.secs.toFixed(2)} s, peak RSS ${(sl.peak / MiB).toFixed(0)} MiB, ` +
        `${sl.counts.orders.files}+${sl.counts.purchases.files} files) | plain DuckDB ${fmtRate(run.baseline.msgs_per_s)} msg/s ` +
        `(${base.secs.toFixed(2)} s, peak RSS ${(base.peak / MiB).toFixed(0)} MiB) | ratio ${run.ratio.toFixed(2)}`,
    );
  }
} catch (err) {
  console.error(`\nbenchmark failed: ${err.message}`);
  process.exit(1);
}

const sluiceRate = median(runs.map((r) => r.sluice.msgs_per_s));
const baseRate = median(runs.map((r) => r.baseline.msgs_per_s));
const ratio = sluiceRate / baseRate;
const ratios = runs.map((r) => r.ratio);
const summary = {
  benchmark: 'file',
  date: new Date().toISOString(),
  messages: N,
  purchases_rows: meta.purchases,
  input_bytes: meta.bytes,
  batch_size: BATCH ?? 'default',
  max_file_bytes: MAX_FILE_BYTES,
  max_age_seconds: MAX_AGE_SECONDS,
  runs: RUNS,
  sluice: {
    median_msgs_per_s: Math.round(sluiceRate),
    median_seconds: Number(median(runs.map((r) => r.sluice.seconds)).toFixed(3)),
    median_peak_rss_mib: Math.round(median(runs.map((r) => r.sluice.peak_rss_bytes)) / MiB),
  },
  baseline: {
    what: "plain DuckDB, fresh in-memory instance in a child node process: COPY (model SQL over read_json(file, format='newline_delimited') AS incoming) TO parquet (zstd), both models",
    median_msgs_per_s: Math.round(baseRate),
    median_seconds: Number(median(runs.map((r) => r.baseline.seconds)).toFixed(3)),
    median_peak_rss_mib: Math.round(median(runs.map((r) => r.baseline.peak_rss_bytes)) / MiB),
  },
  ratio: Number(ratio.toFixed(3)),
  ratio_range: [Number(Math.min(...ratios).toFixed(3)), Number(Math.max(...ratios).toFixed(3))],
  target_ratio: TARGET,
  target_met: ratio >= TARGET,
  measurement: 'wall time from spawn to exit of each child process; peak RSS = VmHWM from /proc/<pid>/status polled every 50 ms (DuckDB threads are in-process, so it covers them)',
  machine,
  per_run: runs.map((r) => ({
    run: r.run,
    sluice: { seconds: Number(r.sluice.seconds.toFixed(3)), msgs_per_s: Math.round(r.sluice.msgs_per_s), peak_rss_mib: Math.round(r.sluice.peak_rss_bytes / MiB), files: r.sluice.files },
    baseline: { seconds: Number(r.baseline.seconds.toFixed(3)), msgs_per_s: Math.round(r.baseline.msgs_per_s), peak_rss_mib: Math.round(r.baseline.peak_rss_bytes / MiB) },
    ratio: Number(r.ratio.toFixed(3)),
  })),
};

console.log(`
summary (medians of ${RUNS} run(s), ${N.toLocaleString('en-US')} messages, batch_size ${BATCH ?? 'default'}):
  sluice        ${fmtRate(sluiceRate).padStart(9)} msg/s   peak RSS ${String(summary.sluice.median_peak_rss_mib).padStart(5)} MiB
  plain DuckDB  ${fmtRate(baseRate).padStart(9)} msg/s   peak RSS ${String(summary.baseline.median_peak_rss_mib).padStart(5)} MiB
  ratio sluice/DuckDB ${ratio.toFixed(2)} (per run ${ratios.map((x) => x.toFixed(2)).join(', ')}); target >= ${TARGET}: ${summary.target_met ? 'met' : 'NOT met'}
  machine: ${machine.cpu}, ${machine.cpus} CPUs, ${machine.mem_total_gib} GiB; Node.js ${machine.node}, DuckDB ${machine.duckdb}`);

const resultsDir = path.join(ROOT, 'bench', 'results');
fs.mkdirSync(resultsDir, { recursive: true });
fs.writeFileSync(path.join(resultsDir, 'file.json'), JSON.stringify(summary, null, 2) + '\n');
console.log(`  written to ${path.relative(process.cwd(), path.join(resultsDir, 'file.json')) || path.join(resultsDir, 'file.json')}`);
