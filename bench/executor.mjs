// Executor benchmark, two parts, each against a baseline measured in the same run, alternating;
// every run is a child process timed from spawn to exit.
//
// 1. The subprocess pool: N inputs (default 10,000), each one run of a CPU-bound binary (Debian's
//    `gzip -9 -c` over one of 64 text files of --kb KiB, default 64), through a handler whose
//    arrange() makes one task per message, with `sluice run` (file source -> SQL model ->
//    handler -> Parquet), against `xargs -P <max_executors> -n 1 gzip -9 -c` over the same files
//    into `wc -c`. Both must give the same total of compressed bytes. Target: ratio >= 0.8.
// 2. The cost of crossing into JavaScript: M messages (default 500,000) through a no-op handler
//    (process() returns its row) against the same rows through a SQL model (SELECT * FROM
//    incoming), both `sluice run` over the same NDJSON file to Parquet.
//
//   node bench/run.mjs executor [--inputs 10000] [--kb 64] [--executors 2] [--messages 500000] [--runs 3]
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { spawn } from 'node:child_process';
import { DuckDBInstance } from '@duckdb/node-api';
import { arg, checkFlags, cleanupOnInterrupt, machine, median, timedChild, trackPeakRss } from './lib.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const TARGET = 0.8;
checkFlags('executor', ['inputs', 'kb', 'executors', 'messages', 'runs']);
const INPUTS = arg('inputs', 10_000);
const KB = arg('kb', 64);
const EXECUTORS = arg('executors', os.availableParallelism());
const MESSAGES = arg('messages', 500_000);
const RUNS = arg('runs', 3);
const FILES = 64;
const inFlight = cleanupOnInterrupt();

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-bench-executor-'));
inFlight.dir = work;

/** Text that compresses like prose: words drawn from a fixed vocabulary. */
function inputFiles() {
  const dir = path.join(work, 'inputs');
  fs.mkdirSync(dir);
  let seed = 7;
  const rand = () => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed / 2 ** 31;
  };
  const words = Array.from({ length: 2000 }, () => Array.from({ length: 2 + Math.floor(rand() * 8) }, () => 'abcdefghij'[Math.floor(rand() * 10)]).join(''));
  const files = [];
  for (let f = 0; f < FILES; f++) {
    const parts = [];
    let size = 0;
    while (size < KB * 1024) {
      const w = words[Math.floor(rand() * words.length)];
      parts.push(w);
      size += w.length + 1;
    }
    const file = path.join(dir, `in${f}.txt`);
    fs.writeFileSync(file, parts.join(' '));
    files.push(file);
  }
  return files;
}

/** A shell pipeline as a child process, timed like timedChild; resolves with its stdout too. */
function timedShell(label, script) {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn('/bin/sh', ['-c', script], { stdio: ['ignore', 'pipe', 'pipe'] });
    inFlight.child = child;
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
    });
    const peak = trackPeakRss(child, 50);
    child.on('exit', (code) => {
      inFlight.child = undefined;
      if (code !== 0) reject(new Error(`${label} exited ${code}`));
      else resolve({ secs: (performance.now() - t0) / 1000, peak: peak(), out });
    });
  });
}

function project(dir, files) {
  const write = (f, text) => {
    fs.mkdirSync(path.dirname(path.join(dir, f)), { recursive: true });
    fs.writeFileSync(path.join(dir, f), text);
  };
  write('config/sinks.yml', 'sink:\n  type: parquet\n  path: ./output\n');
  for (const [f, text] of Object.entries(files)) write(f, text);
  return dir;
}

async function sumColumn(glob, col) {
  const db = await DuckDBInstance.create(':memory:');
  const conn = await db.connect();
  try {
    return Number((await conn.runAndReadAll(`SELECT coalesce(sum(${col}), 0), count(*) FROM read_parquet('${glob}')`)).getRows()[0][0]);
  } finally {
    conn.closeSync();
    db.closeSync();
  }
}

const sluice = (p) => [path.join(ROOT, 'bin/sluice.js'), 'run', '--project', p, '--port', '0', '--log-level', 'warn'];

async function poolPart(files) {
  const list = path.join(work, 'inputs.txt');
  fs.writeFileSync(list, `${Array.from({ length: INPUTS }, (_, i) => files[i % FILES]).join('\n')}\n`);
  const data = `${Array.from({ length: INPUTS }, (_, i) => JSON.stringify({ id: i, file: files[i % FILES] })).join('\n')}\n`;
  const runs = [];
  for (let i = 0; i < RUNS; i++) {
    const p = project(path.join(work, `pool-${i}`), {
      'config/sources.yml': 'source:\n  type: file\n  path: data/\n',
      'config/models.yml': `max_age_seconds: 3600\noverrides:\n  gz:\n    executor:\n      binary_path: /usr/bin/gzip\n      max_executors: ${EXECUTORS}\n      window_size: 100\n      max_output_bytes: ${KB * 1024 * 2}\n`,
      'models/inputs.sql': 'SELECT id, file FROM incoming\n',
      'handlers/gz.ts':
        "import { defineHandler, ref } from 'sluice';\nexport default defineHandler({\n  from: ref('inputs'),\n  arrange: (messages) => messages.map((m) => ({ args: ['-9', '-c', m.value.file], message: m })),\n  onTaskComplete: (r) => ({ id: r.task.messages[0].value.id, bytes: r.stdoutBytes.length }),\n});\n",
      'data/inputs.ndjson': data,
    });
    const base = await timedShell('xargs', `xargs -P ${EXECUTORS} -n 1 gzip -9 -c < '${list}' | wc -c`);
    const sl = await timedChild('sluice run', sluice(p), ROOT, inFlight);
    const want = Number(base.out.trim());
    const got = await sumColumn(path.join(p, 'output/gz/*.parquet'), 'bytes');
    if (got !== want) throw new Error(`sluice's tasks made ${got} compressed bytes, xargs ${want}`);
    const run = { run: i + 1, sluice: sl.secs, xargs: base.secs, ratio: base.secs / sl.secs, bytes: got };
    runs.push(run);
    console.log(
      `pool run ${i + 1}/${RUNS}: sluice ${(INPUTS / sl.secs).toFixed(0)} tasks/s (${sl.secs.toFixed(2)} s) | xargs -P ${EXECUTORS} ${(INPUTS / base.secs).toFixed(0)} tasks/s (${base.secs.toFixed(2)} s) | ratio ${run.ratio.toFixed(2)} | same output: ${got} bytes`,
    );
    fs.rmSync(p, { recursive: true, force: true });
  }
  return runs;
}

async function crossingPart() {
  const file = path.join(work, 'messages.ndjson');
  const lines = [];
  for (let i = 0; i < MESSAGES; i++) lines.push(JSON.stringify({ id: i, user: `u${i % 997}`, amount: (i * 37) % 10_000, currency: ['EUR', 'USD', 'GBP'][i % 3] }));
  fs.writeFileSync(file, `${lines.join('\n')}\n`);
  const source = `source:\n  type: file\n  path: ${JSON.stringify(file)}\n`;
  const runs = [];
  for (let i = 0; i < RUNS; i++) {
    const sql = project(path.join(work, `sql-${i}`), {
      'config/sources.yml': source,
      'config/models.yml': 'max_age_seconds: 3600\n',
      'models/rows.sql': 'SELECT id, user, amount, currency FROM incoming\n',
    });
    const code = project(path.join(work, `code-${i}`), {
      'config/sources.yml': source,
      'config/models.yml': 'max_age_seconds: 3600\n',
      'handlers/rows.ts': "import { defineHandler } from 'sluice';\nexport default defineHandler({ process: ({ value }) => value });\n",
    });
    const s = await timedChild('sluice run (SQL model)', sluice(sql), ROOT, inFlight);
    const h = await timedChild('sluice run (no-op handler)', sluice(code), ROOT, inFlight);
    const [a, b] = [await sumColumn(path.join(sql, 'output/rows/*.parquet'), 'amount'), await sumColumn(path.join(code, 'output/rows/*.parquet'), 'amount')];
    if (a !== b) throw new Error(`the SQL model and the handler differ: sum(amount) ${a} and ${b}`);
    const run = { run: i + 1, sql: s.secs, handler: h.secs, ratio: s.secs / h.secs };
    runs.push(run);
    console.log(
      `crossing run ${i + 1}/${RUNS}: SQL model ${(MESSAGES / s.secs).toFixed(0)} msg/s (${s.secs.toFixed(2)} s) | no-op handler ${(MESSAGES / h.secs).toFixed(0)} msg/s (${h.secs.toFixed(2)} s) | ratio ${run.ratio.toFixed(2)}`,
    );
    fs.rmSync(sql, { recursive: true, force: true });
    fs.rmSync(code, { recursive: true, force: true });
  }
  return runs;
}

const m = machine();
console.log(
  `executor benchmark: ${INPUTS.toLocaleString('en-US')} gzip -9 tasks over ${KB} KiB inputs, ${EXECUTORS} executors; ${MESSAGES.toLocaleString('en-US')} messages through a no-op handler; ${RUNS} run(s)`,
);
console.log(`machine: ${m.cpu}, ${m.cpus} CPUs; Node.js ${process.version}\n`);
try {
  const pool = await poolPart(inputFiles());
  const crossing = await crossingPart();
  const poolRatio = median(pool.map((r) => r.xargs)) / median(pool.map((r) => r.sluice));
  const crossRatio = median(crossing.map((r) => r.sql)) / median(crossing.map((r) => r.handler));
  const summary = {
    benchmark: 'executor',
    date: new Date().toISOString(),
    pool: {
      inputs: INPUTS,
      input_kib: KB,
      executors: EXECUTORS,
      binary: 'gzip -9 -c',
      sluice_median_seconds: Number(median(pool.map((r) => r.sluice)).toFixed(3)),
      xargs_median_seconds: Number(median(pool.map((r) => r.xargs)).toFixed(3)),
      ratio: Number(poolRatio.toFixed(3)),
      ratios: pool.map((r) => Number(r.ratio.toFixed(3))),
      target_ratio: TARGET,
      target_met: poolRatio >= TARGET,
    },
    crossing: {
      messages: MESSAGES,
      sql_median_seconds: Number(median(crossing.map((r) => r.sql)).toFixed(3)),
      handler_median_seconds: Number(median(crossing.map((r) => r.handler)).toFixed(3)),
      ratio: Number(crossRatio.toFixed(3)),
      ratios: crossing.map((r) => Number(r.ratio.toFixed(3))),
    },
    machine: m,
  };
  console.log(`
summary (medians of ${RUNS} run(s)):
  pool:     sluice ${summary.pool.sluice_median_seconds} s, xargs -P ${EXECUTORS} ${summary.pool.xargs_median_seconds} s: ratio ${summary.pool.ratio} (target >= ${TARGET}: ${summary.pool.target_met ? 'met' : 'not met'})
  crossing: SQL model ${summary.crossing.sql_median_seconds} s, no-op handler ${summary.crossing.handler_median_seconds} s: ratio ${summary.crossing.ratio} (what crossing into JavaScript costs)`);
  const resultsDir = path.join(ROOT, 'bench', 'results');
  fs.mkdirSync(resultsDir, { recursive: true });
  fs.writeFileSync(path.join(resultsDir, 'executor.json'), `${JSON.stringify(summary, null, 2)}\n`);
} catch (err) {
  console.error(`\nbenchmark failed: ${err.message}`);
  process.exitCode = 1;
} finally {
  fs.rmSync(work, { recursive: true, force: true });
}
