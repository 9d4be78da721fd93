// Stream joins benchmark: N orders and N payments (default 1,000,000 each) in one NDJSON file,
// event time advancing 20 ms per order, out of order by up to 10 s; 4 payments in 5 come within
// 4.5 minutes of their order, the others 6 to 30 minutes after it. Through one stream-join model
// (a LEFT join of orders and payments within 5 minutes, both read as CTEs of incoming) with
// `sluice run`, against plain DuckDB running the same join as one batch query over the whole
// file (read once with read_json, then COPY of the join to zstd Parquet), in the same benchmark
// run, alternating. Both are child processes measured the same way: wall time from spawn to
// exit, peak RSS by VmHWM. Each run's outputs are checked to be the same rows before its times
// count.
//
// --soak: one run of sluice alone, sampling once a second its resident memory (VmRSS) and, from
// /metrics, the rows the join buffers (sluice_join_buffered_rows): a bounded state shows as flat
// lines from the first fifth of the input to the last. Prints the samples by fifths and the peaks.
//
// --sources 2: the orders and the payments in two files, read as two sources (one pipeline that
// reads them in turn); the baseline reads the two files.
//
//   node bench/run.mjs joins [--messages 1000000] [--runs 3] [--kind inner|left|full] [--sources 1|2] [--soak]
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { DuckDBInstance, version as duckdbVersion } from '@duckdb/node-api';
import { eventsFile, joinSql, splitFiles } from './joins-data.mjs';
import { arg, checkFlags, cleanupOnInterrupt, freePort, given, median, rss, timedChild } from './lib.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const MiB = 2 ** 20;
const TARGET = 0.5;
const LATENESS = '10 seconds';
checkFlags('joins', ['messages', 'runs', 'kind', 'soak', 'sources']);
const N = arg('messages', 1_000_000);
const RUNS = arg('runs', 3);
const SOAK = given('soak');
/** 2: orders and payments in two files, read as two sources (a join of two sources); 1: one file, one source. */
const SOURCES = arg('sources', 1);
if (SOURCES !== 1 && SOURCES !== 2) {
  console.error(`--sources takes 1 or 2, got ${SOURCES}`);
  process.exit(2);
}
const KIND = (() => {
  const i = process.argv.indexOf('--kind');
  const v = (i > 0 ? process.argv[i + 1] : (process.argv.find((a) => a.startsWith('--kind='))?.slice(7) ?? 'left')).toLowerCase();
  if (!['inner', 'left', 'full'].includes(v)) {
    console.error(`--kind takes inner, left or full, got ${v}`);
    process.exit(2);
  }
  return v;
})();
const lit = (s) => `'${s.replace(/'/g, "''")}'`;
const fmtRate = (r) => Math.round(r).toLocaleString('en-US');

function project(dir, input, sink = 'zstd') {
  const p = path.join(dir, 'proj');
  fs.mkdirSync(path.join(p, 'config'), { recursive: true });
  fs.mkdirSync(path.join(p, 'models'), { recursive: true });
  const file = (f) => `    type: file\n    path: ${JSON.stringify(f)}\n`;
  fs.writeFileSync(
    path.join(p, 'config/sources.yml'),
    SOURCES === 2 ? `sources:\n  orders:\n${file(files.orders)}  payments:\n${file(files.payments)}` : `source:\n  type: file\n  path: ${JSON.stringify(input)}\n`,
  );
  fs.writeFileSync(path.join(p, 'config/sinks.yml'), `sink:\n  type: parquet\n  path: ${JSON.stringify(path.join(p, 'output'))}\n  compression: ${sink}\n`);
  fs.writeFileSync(path.join(p, 'config/models.yml'), `max_file_bytes: 1073741824\nmax_age_seconds: 3600\noverrides:\n  paid:\n    window:\n      lateness: ${LATENESS}\n`);
  fs.writeFileSync(path.join(p, 'models', 'paid.sql'), SOURCES === 2 ? joinSql(KIND, "{{ source('orders') }}", "{{ source('payments') }}") : joinSql(KIND, 'incoming'));
  return p;
}

const machine = { cpu: os.cpus()[0]?.model ?? 'unknown', cpus: os.cpus().length, mem_total_gib: Number((os.totalmem() / 2 ** 30).toFixed(1)), node: process.version, duckdb: duckdbVersion() };
const input = eventsFile(N);
const files = SOURCES === 2 ? splitFiles(N) : undefined;
const inFlight = cleanupOnInterrupt();
console.log(
  `joins benchmark: ${N.toLocaleString('en-US')} orders and as many payments${SOURCES === 2 ? ' in two files (two sources)' : ''}, a ${KIND} join within 5 minutes, lateness ${LATENESS}${SOAK ? ', soak (sluice alone, sampled every second)' : `, ${RUNS} run(s), sluice and plain DuckDB alternating`}`,
);
console.log(`machine: ${machine.cpu}, ${machine.cpus} CPUs, ${machine.mem_total_gib} GiB; Node.js ${machine.node}, DuckDB ${machine.duckdb}\n`);
if (SOAK) await soak();
else await ratio();

async function compare(sluiceDir, basePath) {
  const db = await DuckDBInstance.create(':memory:', { threads: '1' });
  const conn = await db.connect();
  try {
    const base = `read_parquet(${lit(basePath)})`;
    const mine = `(SELECT order_id, customer_id, amount_cents, ordered_at, paid_at, method FROM read_parquet(${lit(path.join(sluiceDir, 'paid', '**', '*.parquet'))}))`;
    const n = async (q) => Number((await conn.runAndReadAll(q)).getRows()[0][0]);
    const rows = await n(`SELECT count(*) FROM ${base}`);
    const diff =
      (await n(`SELECT count(*) FROM (SELECT * FROM ${mine} EXCEPT ALL SELECT * FROM ${base})`)) + (await n(`SELECT count(*) FROM (SELECT * FROM ${base} EXCEPT ALL SELECT * FROM ${mine})`));
    if (diff !== 0) throw new Error(`sluice and plain DuckDB differ by ${diff} rows`);
    return rows;
  } finally {
    conn.closeSync();
    db.closeSync();
  }
}

async function ratio() {
  const runs = [];
  try {
    for (let i = 0; i < RUNS; i++) {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-bench-joins-'));
      inFlight.dir = dir;
      try {
        const baseOut = path.join(dir, 'baseline.parquet');
        const base = await timedChild(
          'plain DuckDB baseline',
          [path.join(ROOT, 'bench', 'joins-baseline.mjs'), files?.orders ?? input, baseOut, KIND, ...(files ? [files.payments] : [])],
          ROOT,
          inFlight,
        );
        const p = project(dir, input);
        const sl = await timedChild('sluice run', [path.join(ROOT, 'bin/sluice.js'), 'run', '--project', p, '--port', '0', '--log-level', 'warn'], ROOT, inFlight);
        const rows = await compare(path.join(p, 'output'), baseOut);
        const run = { run: i + 1, sluice: { seconds: sl.secs, peak: sl.peak }, baseline: { seconds: base.secs, peak: base.peak }, ratio: base.secs / sl.secs, rows };
        runs.push(run);
        console.log(
          `run ${i + 1}/${RUNS}: sluice ${fmtRate((2 * N) / sl.secs)} events/s (${sl.secs.toFixed(2)} s, peak RSS ${(sl.peak / MiB).toFixed(0)} MiB) | ` +
            `plain DuckDB ${fmtRate((2 * N) / base.secs)} events/s (${base.secs.toFixed(2)} s, peak RSS ${(base.peak / MiB).toFixed(0)} MiB) | ratio ${run.ratio.toFixed(2)} | same ${rows} rows`,
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
  const r = baseSecs / sluiceSecs;
  const summary = {
    benchmark: 'joins',
    date: new Date().toISOString(),
    orders: N,
    sources: SOURCES,
    kind: KIND,
    lateness: LATENESS,
    runs: RUNS,
    sluice: { median_events_per_s: Math.round((2 * N) / sluiceSecs), median_seconds: Number(sluiceSecs.toFixed(3)), median_peak_rss_mib: Math.round(median(runs.map((x) => x.sluice.peak)) / MiB) },
    baseline: {
      what: 'plain DuckDB, fresh in-memory instance in a child node process: read_json of the file into a table, then the join as one query over it, COPY to zstd Parquet',
      median_events_per_s: Math.round((2 * N) / baseSecs),
      median_seconds: Number(baseSecs.toFixed(3)),
      median_peak_rss_mib: Math.round(median(runs.map((x) => x.baseline.peak)) / MiB),
    },
    ratio: Number(r.toFixed(3)),
    ratio_range: [Number(Math.min(...runs.map((x) => x.ratio)).toFixed(3)), Number(Math.max(...runs.map((x) => x.ratio)).toFixed(3))],
    target_ratio: TARGET,
    target_met: r >= TARGET,
    machine,
  };
  console.log(`
summary (medians of ${RUNS} run(s), ${(2 * N).toLocaleString('en-US')} events, ${KIND} join):
  sluice        ${fmtRate((2 * N) / sluiceSecs).padStart(9)} events/s   peak RSS ${String(summary.sluice.median_peak_rss_mib).padStart(5)} MiB
  plain DuckDB  ${fmtRate((2 * N) / baseSecs).padStart(9)} events/s   peak RSS ${String(summary.baseline.median_peak_rss_mib).padStart(5)} MiB
  ratio sluice/DuckDB ${r.toFixed(2)} (per run ${runs.map((x) => x.ratio.toFixed(2)).join(', ')}); target >= ${TARGET}: ${summary.target_met ? 'met' : 'NOT met'}`);
  fs.mkdirSync(path.join(ROOT, 'bench', 'results'), { recursive: true });
  fs.writeFileSync(path.join(ROOT, 'bench', 'results', `joins-${KIND}${SOURCES === 2 ? '-two-sources' : ''}.json`), `${JSON.stringify(summary, null, 2)}\n`);
}

async function soak() {
  const gauges = async (port) => {
    try {
      const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
      const sum = (name, labels = '') => [...text.matchAll(new RegExp(`^${name}(?:\\{[^}]*${labels}[^}]*\\})? (\\S+)$`, 'gm'))].reduce((n, m) => n + Number(m[1]), 0);
      return {
        left: sum('sluice_join_buffered_rows', 'side="left"'),
        right: sum('sluice_join_buffered_rows', 'side="right"'),
        stateBytes: sum('sluice_window_state_bytes'),
        acked: sum('sluice_messages_acked_total'),
      };
    } catch {
      return undefined;
    }
  };
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-bench-joins-soak-'));
  inFlight.dir = dir;
  const p = project(dir, input, 'lz4');
  fs.writeFileSync(path.join(p, 'config/models.yml'), `max_age_seconds: 10\noverrides:\n  paid:\n    window:\n      lateness: ${LATENESS}\n`);
  const port = await freePort();
  const t0 = performance.now();
  const child = spawn(process.execPath, [path.join(ROOT, 'bin/sluice.js'), 'run', '--project', p, '--port', String(port), '--log-level', 'warn'], { stdio: ['ignore', 'inherit', 'inherit'] });
  inFlight.child = child;
  const samples = [];
  const timer = setInterval(async () => {
    const r = rss(child.pid);
    const g = await gauges(port);
    if (r && g) samples.push({ t: (performance.now() - t0) / 1000, rss: r, ...g });
  }, 1000);
  const code = await new Promise((resolve) => child.on('exit', (c) => resolve(c)));
  clearInterval(timer);
  const secs = (performance.now() - t0) / 1000;
  fs.rmSync(dir, { recursive: true, force: true });
  if (code !== 0) {
    console.error(`sluice run exited ${code}`);
    process.exit(1);
  }
  const total = 2 * N;
  const fifths = [1, 2, 3, 4, 5].map((k) => {
    const inFifth = samples.filter((s) => s.acked > ((k - 1) * total) / 5 && s.acked <= (k * total) / 5);
    const max = (f) => (inFifth.length ? Math.max(...inFifth.map(f)) : Number.NaN);
    return {
      fifth: k,
      samples: inFifth.length,
      rss_mib: Math.round(max((s) => s.rss) / MiB),
      buffered_left: max((s) => s.left),
      buffered_right: max((s) => s.right),
      state_kib: Math.round(max((s) => s.stateBytes) / 1024),
    };
  });
  const peak = (f) => Math.max(...samples.map(f));
  const summary = {
    benchmark: 'joins_soak',
    date: new Date().toISOString(),
    orders: N,
    payments: N,
    kind: KIND,
    seconds: Number(secs.toFixed(1)),
    events_per_s: Math.round(total / secs),
    peak: { rss_mib: Math.round(peak((s) => s.rss) / MiB), buffered_left: peak((s) => s.left), buffered_right: peak((s) => s.right), state_kib: Math.round(peak((s) => s.stateBytes) / 1024) },
    by_fifth: fifths,
    machine,
  };
  console.log(`ran ${secs.toFixed(1)} s (${summary.events_per_s.toLocaleString('en-US')} events/s); by fifth of the input (largest sample in each):`);
  for (const f of fifths) console.log(`  ${f.fifth}/5: RSS ${f.rss_mib} MiB, buffered ${f.buffered_left} left + ${f.buffered_right} right rows in ${f.state_kib} KiB of files (${f.samples} samples)`);
  console.log(`peak: RSS ${summary.peak.rss_mib} MiB, buffered ${summary.peak.buffered_left} left + ${summary.peak.buffered_right} right rows, ${summary.peak.state_kib} KiB`);
  fs.mkdirSync(path.join(ROOT, 'bench', 'results'), { recursive: true });
  fs.writeFileSync(path.join(ROOT, 'bench', 'results', `joins-soak${process.env.MALLOC_ARENA_MAX ? `-arena${process.env.MALLOC_ARENA_MAX}` : ''}.json`), `${JSON.stringify(summary, null, 2)}\n`);
}
