// File benchmark: 500k order messages from an NDJSON file through the `orders` and
// `purchases` models to zstd Parquet, against plain DuckDB doing the same job (read_json of
// the same file + the same SQL + COPY to Parquet) in the same run.
//
//   node bench/file.mjs [--messages 500000] [--runs 3] [--batch-size 50000]
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { arg, median, trackPeakRss } from './lib.mjs';
import { orderMessage } from '../dist/connectors/generator/generator-source.js';
import { ORDERS_SQL, PURCHASES_SQL, scaffold } from '../dist/cli/init.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const N = arg('messages', 500_000);
const RUNS = arg('runs', 3);
const BATCH = arg('batch-size', 50_000);

// The input, generated once and cached.
const dataDir = path.join(ROOT, 'bench', 'data');
const input = path.join(dataDir, `orders-${N}.ndjson`);
if (!fs.existsSync(input)) {
  fs.mkdirSync(dataDir, { recursive: true });
  const fd = fs.openSync(input + '.tmp', 'w');
  let buf = [];
  for (let i = 0; i < N; i++) {
    buf.push(orderMessage(i, 42));
    if (buf.length === 10_000) {
      fs.writeSync(fd, buf.join('\n') + '\n');
      buf = [];
    }
  }
  if (buf.length) fs.writeSync(fd, buf.join('\n') + '\n');
  fs.closeSync(fd);
  fs.renameSync(input + '.tmp', input);
}

/** Runs a command as a child process; returns wall seconds and peak RSS (VmHWM). */
function timed(args, env = {}) {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn(process.execPath, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d) => (err += d));
    const peak = trackPeakRss(child);
    child.on('exit', (code) => {
      const secs = (performance.now() - t0) / 1000;
      if (code !== 0) reject(new Error(`${args.join(' ')} exited ${code}: ${err.slice(-2000)}`));
      else resolve({ secs, peak: peak() });
    });
  });
}

async function runSluice() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-bench-file-'));
  await scaffold(dir, 'bench');
  fs.rmSync(path.join(dir, 'data'), { recursive: true, force: true });
  fs.writeFileSync(path.join(dir, 'config/sources.yml'), `source:\n  type: file\n  path: ${input}\n  batch_size: ${BATCH}\n`);
  fs.writeFileSync(path.join(dir, 'config/sinks.yml'), `sink:\n  type: parquet\n  path: ${path.join(dir, 'output')}\n`);
  fs.writeFileSync(path.join(dir, 'config/models.yml'), 'max_file_bytes: 4294967296\nmax_age_seconds: 3600\n');
  const r = await timed([path.join(ROOT, 'bin/sluice.js'), 'run', '--project', dir, '--port', '0', '--log-level', 'warn']);
  const check = await timed([path.join(ROOT, 'bench/count.mjs'), path.join(dir, 'output/orders/*.parquet'), String(N)]);
  void check;
  fs.rmSync(dir, { recursive: true, force: true });
  return r;
}

async function runDuckDB() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-bench-duckdb-'));
  const r = await timed([path.join(ROOT, 'bench/baseline.mjs'), input, dir]);
  fs.rmSync(dir, { recursive: true, force: true });
  return r;
}

console.log(`file benchmark: ${N} order messages (${(fs.statSync(input).size / 2 ** 20).toFixed(0)} MiB NDJSON), batch_size ${BATCH}, ${RUNS} runs`);
const s = [];
const d = [];
for (let i = 0; i < RUNS; i++) {
  const a = await runDuckDB();
  const b = await runSluice();
  d.push(a);
  s.push(b);
  console.log(`run ${i + 1}: plain DuckDB ${(N / a.secs).toFixed(0)} msg/s (${a.secs.toFixed(2)} s, peak RSS ${(a.peak / 2 ** 20).toFixed(0)} MiB) | sluice ${(N / b.secs).toFixed(0)} msg/s (${b.secs.toFixed(2)} s, peak RSS ${(b.peak / 2 ** 20).toFixed(0)} MiB) | ratio ${(a.secs / b.secs).toFixed(2)}`);
}
const ds = median(d.map((x) => x.secs));
const ss = median(s.map((x) => x.secs));
const summary = {
  benchmark: 'file',
  messages: N,
  batch_size: BATCH,
  runs: RUNS,
  duckdb_msgs_per_s: Math.round(N / ds),
  sluice_msgs_per_s: Math.round(N / ss),
  ratio: Number((ds / ss).toFixed(2)),
  duckdb_peak_rss_mib: Math.round(median(d.map((x) => x.peak)) / 2 ** 20),
  sluice_peak_rss_mib: Math.round(median(s.map((x) => x.peak)) / 2 ** 20),
  machine: { cpu: os.cpus()[0]?.model, cpus: os.cpus().length, mem_gib: Math.round(os.totalmem() / 2 ** 30), node: process.version },
};
console.log(`\nmedian: sluice ${summary.sluice_msgs_per_s} msg/s, plain DuckDB ${summary.duckdb_msgs_per_s} msg/s -> ratio ${summary.ratio} (target >= 0.5); peak RSS sluice ${summary.sluice_peak_rss_mib} MiB, DuckDB ${summary.duckdb_peak_rss_mib} MiB`);
fs.mkdirSync(path.join(ROOT, 'bench/results'), { recursive: true });
fs.writeFileSync(path.join(ROOT, 'bench/results/file.json'), JSON.stringify(summary, null, 2) + '\n');
export { ORDERS_SQL, PURCHASES_SQL };
