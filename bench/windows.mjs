// Windows benchmark: N clickstream events (default 1,000,000, out of order by up to 15 s) from
// an NDJSON file through windowed models with `sluice run` (state, watermarks, emission as
// windows close), against plain DuckDB running the same GROUP BY as one batch query over the
// whole file (bench/windows-baseline.mjs), in the same benchmark run, alternating. Both are
// child processes measured the same way: wall time from spawn to exit, peak RSS by VmHWM.
// Each run's outputs are checked to be the same rows before its times count.
//
//   node bench/run.mjs windows [--messages 1000000] [--runs 3] [--model revenue|moving|sessions|buckets|all]
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { DuckDBInstance, version as duckdbVersion } from '@duckdb/node-api';
import { checkFlags, arg, cleanupOnInterrupt, median, timedChild } from './lib.mjs';
import { WINDOW_MODELS, LATENESS, clicksFile } from './clicks.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const MiB = 2 ** 20;
const TARGET = 0.5;
const KINDS = ['revenue', 'moving', 'sessions', 'buckets'];
checkFlags('windows', ['messages', 'runs', 'model']);
const N = arg('messages', 1_000_000);
const RUNS = arg('runs', 3);
const modelFlag = (() => {
  const i = process.argv.indexOf('--model');
  const v = i > 0 ? process.argv[i + 1] : (process.argv.find((a) => a.startsWith('--model='))?.slice(8) ?? 'all');
  if (v !== 'all' && !KINDS.includes(v)) {
    console.error(`--model takes ${KINDS.join(', ')} or all, got ${v}`);
    process.exit(2);
  }
  return v;
})();
const MODELS = modelFlag === 'all' ? KINDS : [modelFlag];
const lit = (s) => `'${s.replace(/'/g, "''")}'`;
const fmtRate = (r) => Math.round(r).toLocaleString('en-US');

const dataDir = path.join(ROOT, 'bench', 'data');
const input = clicksFile(dataDir, N);

const inFlight = cleanupOnInterrupt();

const timed = (label, args) => timedChild(label, args, ROOT, inFlight);

/** Rows only in one of the two outputs, per model (0 and 0: the same rows). */
async function compare(sluiceDir, baseDir) {
  const db = await DuckDBInstance.create(':memory:', { threads: '1' });
  const conn = await db.connect();
  const res = {};
  try {
    for (const m of MODELS) {
      const base = `read_parquet(${lit(path.join(baseDir, `${m}.parquet`))})`;
      const cols = (await conn.runAndReadAll(`SELECT * FROM ${base} LIMIT 0`))
        .columnNames()
        .map((c) => `"${c}"`)
        .join(', ');
      const mine = `(SELECT ${cols} FROM read_parquet(${lit(path.join(sluiceDir, m, '**', '*.parquet'))}))`;
      const n = async (q) => Number((await conn.runAndReadAll(q)).getRows()[0][0]);
      res[m] = {
        rows: await n(`SELECT count(*) FROM ${base}`),
        diff: (await n(`SELECT count(*) FROM (SELECT * FROM ${mine} EXCEPT ALL SELECT * FROM ${base})`)) + (await n(`SELECT count(*) FROM (SELECT * FROM ${base} EXCEPT ALL SELECT * FROM ${mine})`)),
      };
      if (res[m].diff !== 0) throw new Error(`model ${m}: sluice and plain DuckDB differ by ${res[m].diff} rows`);
    }
  } finally {
    conn.closeSync();
    db.closeSync();
  }
  return res;
}

const machine = { cpu: os.cpus()[0]?.model ?? 'unknown', cpus: os.cpus().length, mem_total_gib: Number((os.totalmem() / 2 ** 30).toFixed(1)), node: process.version, duckdb: duckdbVersion() };
console.log(`windows benchmark: ${N.toLocaleString('en-US')} events, models ${MODELS.join(', ')}, lateness ${LATENESS}, ${RUNS} run(s), sluice and plain DuckDB alternating`);
console.log(`machine: ${machine.cpu}, ${machine.cpus} CPUs, ${machine.mem_total_gib} GiB; Node.js ${machine.node}, DuckDB ${machine.duckdb}\n`);

const runs = [];
try {
  for (let i = 0; i < RUNS; i++) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-bench-windows-'));
    inFlight.dir = dir;
    try {
      const baseOut = path.join(dir, 'baseline');
      const base = await timed('plain DuckDB baseline', [path.join(ROOT, 'bench/windows-baseline.mjs'), input, baseOut, ...MODELS]);
      const p = path.join(dir, 'proj');
      fs.mkdirSync(path.join(p, 'config'), { recursive: true });
      fs.mkdirSync(path.join(p, 'models'), { recursive: true });
      fs.writeFileSync(path.join(p, 'config/sources.yml'), `source:\n  type: file\n  path: ${JSON.stringify(input)}\n`);
      fs.writeFileSync(path.join(p, 'config/sinks.yml'), `sink:\n  type: parquet\n  path: ${JSON.stringify(path.join(p, 'output'))}\n  compression: zstd\n`);
      fs.writeFileSync(
        path.join(p, 'config/models.yml'),
        `max_file_bytes: 1073741824\nmax_age_seconds: 3600\noverrides:\n${MODELS.map((m) => `  ${m}:\n    window:\n      lateness: ${LATENESS}\n`).join('')}`,
      );
      for (const m of MODELS) fs.writeFileSync(path.join(p, 'models', `${m}.sql`), WINDOW_MODELS[`models/${m}.sql`]);
      const sl = await timed('sluice run', [path.join(ROOT, 'bin/sluice.js'), 'run', '--project', p, '--port', '0', '--log-level', 'warn']);
      const rows = await compare(path.join(p, 'output'), baseOut);
      const run = { run: i + 1, sluice: { seconds: sl.secs, peak: sl.peak }, baseline: { seconds: base.secs, peak: base.peak }, ratio: base.secs / sl.secs, rows };
      runs.push(run);
      console.log(
        `run ${i + 1}/${RUNS}: sluice ${fmtRate(N / sl.secs)} events/s (${sl.secs.toFixed(2)} s, peak RSS ${(sl.peak / MiB).toFixed(0)} MiB) | ` +
          `plain DuckDB ${fmtRate(N / base.secs)} events/s (${base.secs.toFixed(2)} s, peak RSS ${(base.peak / MiB).toFixed(0)} MiB) | ratio ${run.ratio.toFixed(2)} | same rows: ${MODELS.map((m) => `${m} ${rows[m].rows}`).join(', ')}`,
      );
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
      inFlight.dir = undefined;
    }
  }
} catch (err) {
  console.error(`\nbenchmark failed: ${err.message}`);
  process.exit(1);
}

const sluiceSecs = median(runs.map((r) => r.sluice.seconds));
const baseSecs = median(runs.map((r) => r.baseline.seconds));
const ratio = baseSecs / sluiceSecs;
const summary = {
  benchmark: 'windows',
  date: new Date().toISOString(),
  events: N,
  models: MODELS,
  lateness: LATENESS,
  runs: RUNS,
  sluice: { median_events_per_s: Math.round(N / sluiceSecs), median_seconds: Number(sluiceSecs.toFixed(3)), median_peak_rss_mib: Math.round(median(runs.map((r) => r.sluice.peak)) / MiB) },
  baseline: {
    what: 'plain DuckDB, fresh in-memory instance in a child node process: read_json of the file into a table, then each model as one GROUP BY over it, COPY to zstd Parquet',
    median_events_per_s: Math.round(N / baseSecs),
    median_seconds: Number(baseSecs.toFixed(3)),
    median_peak_rss_mib: Math.round(median(runs.map((r) => r.baseline.peak)) / MiB),
  },
  ratio: Number(ratio.toFixed(3)),
  ratio_range: [Number(Math.min(...runs.map((r) => r.ratio)).toFixed(3)), Number(Math.max(...runs.map((r) => r.ratio)).toFixed(3))],
  target_ratio: TARGET,
  target_met: ratio >= TARGET,
  machine,
};
console.log(`
summary (medians of ${RUNS} run(s), ${N.toLocaleString('en-US')} events, ${MODELS.join(', ')}):
  sluice        ${fmtRate(N / sluiceSecs).padStart(9)} events/s   peak RSS ${String(summary.sluice.median_peak_rss_mib).padStart(5)} MiB
  plain DuckDB  ${fmtRate(N / baseSecs).padStart(9)} events/s   peak RSS ${String(summary.baseline.median_peak_rss_mib).padStart(5)} MiB
  ratio sluice/DuckDB ${ratio.toFixed(2)} (per run ${runs.map((r) => r.ratio.toFixed(2)).join(', ')}); target >= ${TARGET}: ${summary.target_met ? 'met' : 'NOT met'}`);
const resultsDir = path.join(ROOT, 'bench', 'results');
fs.mkdirSync(resultsDir, { recursive: true });
fs.writeFileSync(path.join(resultsDir, `windows-${modelFlag}.json`), `${JSON.stringify(summary, null, 2)}\n`);
