// Hostile-neighbour benchmark: does a source fed hostile input slow down another source of the
// same `sluice run`? A project with two file sources, `good` (N well-formed orders through the
// `orders` and `purchases` models to Parquet) and `bad` (its own model, `SELECT *`, to a Parquet
// sink of its own), in four configurations, alternating within each run:
//
//   a) good alone (the baseline, measured in the same run);
//   b) good + bad in one process, bad = N well-formed orders too (what a second, normal source costs);
//   c) good + bad in one process, bad = M hostile messages: 5,000 levels deep, 20,000 keys
//      (top-level and nested), one new top-level key each (schema explosion), 1 MB strings,
//      invalid UTF-8, truncated JSON; every source with the default limits and contract;
//   d) as c, but the two sources in two processes (`sluice run --source good` and `--source
//      bad`): nothing shared but the machine's cores and disk. c against d is what sharing one
//      process (its JavaScript thread, its libuv pool) costs; d against a, what the hostile
//      source's CPU costs on its own. In d the CPU time of each process during good's run says
//      how the cores were divided.
//
// Measured for good: the time from its pipeline's "reading from the source" to its "end of
// input" (every good message decoded, run through the models and committed to the WAL; log
// timestamps, no polling), msg/s = N / that time. In b, c and d bad is stopped (SIGTERM) as soon
// as good is done, so that bad is busy for the whole of good's run however long that
// is (bad's input is sized to outlast it; the run says so if it did not). Also: the process's
// wall time (spawn to exit, bad's shutdown flush included), its peak RSS (VmHWM, polled every
// 50 ms), and bad's messages, dead letters and rows up to the stop.
//
//   node bench/run.mjs hostile_neighbour [--messages 200000] [--bad-messages 20000] [--runs 5] [--batch-size 10000] [--bad-batch-size 1000] [--debug 1]
//   (SLUICE_BENCH_RUNS=R also sets the number of runs; SLUICE_BENCH_NODE_ARGS passes options to sluice's node)
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { DuckDBInstance } from '@duckdb/node-api';
import { arg, checkFlags, cleanupOnInterrupt, cpuSeconds, machine, median, trackPeakRss } from './lib.mjs';
import { orderMessage } from '../dist/connectors/generator/generator-source.js';
import { ORDERS_SQL, PURCHASES_SQL } from '../dist/cli/init.js';
import { reasonKind } from '../dist/engine/dead-letter-log.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const SEED = 42;
checkFlags('hostile_neighbour', ['messages', 'bad-messages', 'runs', 'batch-size', 'bad-batch-size', 'debug']);
const N = arg('messages', 200_000);
const M = arg('bad-messages', 20_000);
const RUNS = arg('runs', Number(process.env.SLUICE_BENCH_RUNS ?? 5));
const BATCH = arg('batch-size', 10_000);
const BAD_BATCH = arg('bad-batch-size', 1000);
const DEBUG = arg('debug', 0) > 0;
for (const [flag, v] of [
  ['messages', N],
  ['bad-messages', M],
  ['runs', RUNS],
  ['batch-size', BATCH],
  ['bad-batch-size', BAD_BATCH],
]) {
  if (!Number.isInteger(v) || v < 1) {
    console.error(`--${flag} must be a whole number >= 1, got ${v}`);
    process.exit(2);
  }
}
if (M > N) {
  console.error(`--bad-messages (${M}) must not exceed --messages (${N}): the hostile source gets at most as many messages as the good one`);
  process.exit(2);
}
const MiB = 2 ** 20;
const fmt = (x) => Math.round(x).toLocaleString('en-US');
const pct = (x) => `${Math.round(x * 100)}%`;
const lit = (s) => `'${s.replace(/'/g, "''")}'`;

// ---------------------------------------------------------------------------------------------
// Inputs, generated once into bench/data/ (gitignored) and reused while their metadata matches.

const dataDir = path.join(ROOT, 'bench', 'data');
const goodFile = path.join(dataDir, 'neighbour-orders.ndjson');

/**
 * The hostile mix, a cycle of 200 messages spread evenly through the file (an i-th message's kind
 * is KINDS[CYCLE[i % 200]]). Each kind says which limit or check should stop it with the defaults
 * (max_depth 128, max_fields 100,000, max_columns 1,000, map_threshold 200, 16 MiB messages).
 */
const KINDS = {
  deep_object: 5, //   {"v":{"a":{"a":...}}}, 5,000 levels: max_depth
  deep_list: 5, //     {"v":[[[...]]]}, 5,000 levels: max_depth
  wide_top: 1, //      20,000 top-level keys: max_columns
  wide_nested: 1, //   {"attrs":{20,000 keys}}: map_threshold, kept as one JSON column (accepted)
  new_key: 97, //      one new top-level key each: evolves to max_columns, then dead-lettered
  big_string: 1, //    {"s":"<1,000,000 characters>"}: under max_message_bytes, accepted
  bad_utf8: 45, //     an order with 0xFF 0xFE in a string: not UTF-8
  truncated: 45, //    the first half of an order: not JSON
};
// SLUICE_BENCH_HOSTILE=kind,kind,...: only these kinds (same weights), to see which one costs
// the neighbour what; the input then goes to a file of its own.
const ONLY = (process.env.SLUICE_BENCH_HOSTILE ?? '')
  .split(',')
  .map((k) => k.trim())
  .filter(Boolean);
for (const k of ONLY) {
  if (!(k in KINDS)) {
    console.error(`SLUICE_BENCH_HOSTILE: unknown kind ${k}; the kinds are ${Object.keys(KINDS).join(', ')}`);
    process.exit(2);
  }
}
const MIX = ONLY.length ? Object.fromEntries(Object.entries(KINDS).filter(([k]) => ONLY.includes(k))) : KINDS;
const badFile = path.join(dataDir, `neighbour-hostile${ONLY.length ? `-${[...ONLY].sort().join('-')}` : ''}.ndjson`);
const CYCLE = (() => {
  // Deterministic interleaving: each kind at evenly spaced slots (largest weights first).
  const slots = [];
  for (const [kind, w] of Object.entries(MIX)) for (let j = 0; j < w; j++) slots.push({ kind, at: (j + 0.5) / w });
  return slots.sort((a, b) => a.at - b.at || MIX[b.kind] - MIX[a.kind]).map((s) => s.kind);
})();
const DEPTH = 5000;
const WIDE = 20_000;
const BIG = 1_000_000;

function hostileMessage(i) {
  const kind = CYCLE[i % CYCLE.length];
  const head = `{"id":${i},"kind":"${kind}"`;
  switch (kind) {
    case 'deep_object':
      return Buffer.from(`${head},"v":${'{"a":'.repeat(DEPTH - 2)}1${'}'.repeat(DEPTH - 2)}}`);
    case 'deep_list':
      return Buffer.from(`${head},"v":${'['.repeat(DEPTH - 1)}${']'.repeat(DEPTH - 1)}}`);
    case 'wide_top':
      return Buffer.from(`${head},${Array.from({ length: WIDE - 2 }, (_, k) => `"w${k}":${k}`).join(',')}}`);
    case 'wide_nested':
      return Buffer.from(`${head},"attrs":{${Array.from({ length: WIDE }, (_, k) => `"a${k}":${k}`).join(',')}}}`);
    case 'new_key':
      return Buffer.from(`${head},"k_${i}":${i}}`);
    case 'big_string':
      return Buffer.from(`${head},"s":"${String.fromCharCode(97 + (i % 26)).repeat(BIG)}"}`);
    case 'bad_utf8': {
      const m = Buffer.from(orderMessage(i, SEED));
      const at = m.indexOf('"name":"') + 8;
      m[at] = 0xff;
      m[at + 1] = 0xfe;
      return m;
    }
    case 'truncated': {
      const m = orderMessage(i, SEED);
      return Buffer.from(m.slice(0, Math.floor(m.length / 2)));
    }
  }
  throw new Error(kind);
}

function generate(file, what, count, make) {
  const metaFile = file.replace(/\.ndjson$/, '.meta.json');
  try {
    const meta = JSON.parse(fs.readFileSync(metaFile, 'utf8'));
    if (meta.messages === count && meta.what === what && fs.statSync(file).size === meta.bytes) return meta;
  } catch {
    // missing or unreadable: regenerate
  }
  fs.mkdirSync(dataDir, { recursive: true });
  fs.rmSync(metaFile, { force: true });
  const t0 = performance.now();
  const fd = fs.openSync(file + '.tmp', 'w');
  const kinds = {};
  let items = 0;
  let buf = [];
  let bytes = 0;
  const flush = () => {
    fs.writeSync(fd, Buffer.concat(buf));
    buf = [];
    bytes = 0;
  };
  for (let i = 0; i < count; i++) {
    const { body, kind, lineItems } = make(i);
    kinds[kind] = (kinds[kind] ?? 0) + 1;
    items += lineItems ?? 0;
    buf.push(body, Buffer.from('\n'));
    bytes += body.length;
    if (bytes > 16 * MiB) flush();
  }
  if (buf.length) flush();
  fs.closeSync(fd);
  fs.renameSync(file + '.tmp', file);
  const meta = { what, messages: count, seed: SEED, kinds, purchases: items, bytes: fs.statSync(file).size };
  fs.writeFileSync(metaFile, JSON.stringify(meta, null, 2) + '\n');
  console.log(`generated ${path.relative(ROOT, file)}: ${count} messages, ${(meta.bytes / MiB).toFixed(0)} MiB in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  return meta;
}

const goodMeta = generate(goodFile, 'orders', N, (i) => {
  const body = orderMessage(i, SEED);
  return { body: Buffer.from(body), kind: 'order', lineItems: JSON.parse(body).items.length };
});
const badMeta = generate(badFile, `hostile:${JSON.stringify(MIX)}:${DEPTH}:${WIDE}:${BIG}`, M, (i) => ({ body: hostileMessage(i), kind: CYCLE[i % CYCLE.length] }));

// ---------------------------------------------------------------------------------------------
// One `sluice run` of a fresh project: good alone, or good + bad reading `badInput`.

const inFlight = cleanupOnInterrupt();

// The scaffold's models, reading source good (as `o`: `incoming` is refused with two sources).
const fromGood = (sql) => sql.replace(/FROM incoming\b/, "FROM {{ source('good') }} AS o").replace(/\bincoming\./g, 'o.');

function writeProject(dir, badInput) {
  const files = {
    'sluice.yml': 'name: neighbour\nwal:\n  path: .sluice/wal\n',
    'config/sources.yml':
      `sources:\n  good:\n    type: file\n    path: ${JSON.stringify(goodFile)}\n    batch_size: ${BATCH}\n` +
      (badInput ? `  bad:\n    type: file\n    path: ${JSON.stringify(badInput)}\n    batch_size: ${BAD_BATCH}\n` : ''),
    'config/sinks.yml':
      `sinks:\n  good_lake:\n    type: parquet\n    path: ${JSON.stringify(path.join(dir, 'output/good'))}\n    compression: zstd\n` +
      (badInput ? `  bad_lake:\n    type: parquet\n    path: ${JSON.stringify(path.join(dir, 'output/bad'))}\n    compression: zstd\n` : ''),
    // Thresholds that never fire: each model is flushed once, at the end of its source's input.
    'config/models.yml':
      'max_file_bytes: 1073741824\nmax_age_seconds: 3600\noverrides:\n  orders: { sink: good_lake }\n  purchases: { sink: good_lake }\n' + (badInput ? '  bad_all: { sink: bad_lake }\n' : ''),
    'models/orders.sql': fromGood(ORDERS_SQL),
    'models/purchases.sql': fromGood(PURCHASES_SQL),
    ...(badInput ? { 'models/bad_all.sql': "SELECT * FROM {{ source('bad') }}\n" } : {}),
  };
  for (const [rel, content] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(dir, rel)), { recursive: true });
    fs.writeFileSync(path.join(dir, rel), content);
  }
}

/**
 * `sluice run` of the project, as a child process whose JSON log goes to a file, read as it
 * grows (only the lines this needs are kept: a dead-lettered message's payload can be large).
 * `source`: run only that source (--source). Calls onLine(line) for each log line; done()
 * resolves with the exit when the process and the reading of its log are over.
 */
function startSluice(dir, name, source, onLine) {
  const nodeArgs = (process.env.SLUICE_BENCH_NODE_ARGS ?? '').split(' ').filter(Boolean);
  // A file, not a pipe: a pipe this process drains late would block sluice's synchronous log
  // writes (one line per dead letter) and slow it down by itself.
  const logFile = path.join(dir, `${name}.log`);
  const logFd = fs.openSync(logFile, 'w');
  const only = source ? ['--source', source] : [];
  const child = spawn(process.execPath, [...nodeArgs, path.join(ROOT, 'bin/sluice.js'), 'run', '--project', dir, ...only, '--port', '0', '--log-json', '--log-level', DEBUG ? 'debug' : 'info'], {
    cwd: ROOT,
    env: { ...process.env, SLUICE_WORKER_ID: 'bench' },
    stdio: ['ignore', 'ignore', logFd],
  });
  fs.closeSync(logFd);
  inFlight.children.add(child);
  const peak = trackPeakRss(child, 50);
  let tail = '';
  let rest = '';
  const readFd = fs.openSync(logFile, 'r');
  const chunk = Buffer.allocUnsafe(4 * MiB);
  const readLog = () => {
    let n;
    while ((n = fs.readSync(readFd, chunk, 0, chunk.length, null)) > 0) {
      const d = chunk.toString('utf8', 0, n);
      const text = rest + d;
      tail = (tail + d).slice(-4000);
      const lines = text.split('\n');
      rest = lines.pop();
      for (const line of lines) if (line.length < 100_000) onLine(line);
    }
  };
  const poll = setInterval(readLog, 20);
  const done = new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      inFlight.children.delete(child);
      clearInterval(poll);
      readLog();
      fs.closeSync(readFd);
      if (rest) onLine(rest);
      resolve({ code, signal, tail, peak: peak() });
    });
  });
  return { child, done };
}

/**
 * Runs sluice on the project: `mode` 'one' (good alone), 'shared' (both sources in one process)
 * or 'split' (one process per source). Lines without a `pipeline` binding are those of a
 * one-source process: good's, or in split mode bad's when they come from bad's process.
 */
async function runSluice(dir, mode) {
  const t0 = Date.now();
  const ev = {}; // `${pipeline}:${msg}` -> the line (first one)
  const dlq = {}; // pipeline -> { reason -> count }
  const stages = {}; // pipeline -> { sums, batches }  (--debug)
  // CPU seconds of good's process and of its main (JavaScript) thread (and, split, of bad's
  // process), sampled as good's "reading from the source" and "end of input" lines arrive: how
  // busy the cores and the event loop were during good's run.
  const cpu = {};
  let goodChild;
  let badChild;
  const sample = () => ({
    at: performance.now(),
    proc: cpuSeconds(goodChild.pid),
    js: cpuSeconds(`${goodChild.pid}/task/${goodChild.pid}`),
    bad: badChild ? cpuSeconds(badChild.pid) : undefined,
  });
  const stopBad = () => {
    if (mode === 'shared') goodChild.kill('SIGTERM');
    else if (mode === 'split' && badChild.exitCode === null) badChild.kill('SIGTERM');
  };
  const lineHandler = (fallback) => (line) => {
    let l;
    try {
      l = JSON.parse(line);
    } catch {
      return;
    }
    const p = l.pipeline ?? fallback;
    if (l.msg === 'message sent to the DLQ') {
      const reason = `${l.stage}${l.model ? ` (${l.model})` : ''}: ${reasonKind(String(l.error ?? ''))}`;
      (dlq[p] ??= {})[reason] = (dlq[p][reason] ?? 0) + 1;
    } else if (l.msg === 'more messages sent to the DLQ') {
      // Past the first few of a batch, the engine logs one line counting the rest by reason.
      for (const [reason, n] of Object.entries(l.by_reason ?? {})) (dlq[p] ??= {})[reason] = (dlq[p][reason] ?? 0) + n;
    } else if (l.msg === 'batch committed' && l.ms) {
      const s = (stages[p] ??= { sums: {}, batches: 0 });
      s.batches++;
      for (const [k, v] of Object.entries(l.ms)) if (typeof v === 'number') s.sums[k] = (s.sums[k] ?? 0) + v;
    } else if (!ev[`${p}:${l.msg}`]) {
      ev[`${p}:${l.msg}`] = l;
      if (p === 'good' && (l.msg === 'reading from the source' || l.msg === 'end of input')) cpu[l.msg] = sample();
      // Good is done: stop the other source (it finishes its batch in flight and flushes).
      if (p === 'good' && l.msg === 'done' && !ev['bad:done']) stopBad();
    }
  };
  const good = startSluice(dir, 'sluice', mode === 'split' ? 'good' : undefined, lineHandler('good'));
  goodChild = good.child;
  const bad = mode === 'split' ? startSluice(dir, 'bad', 'bad', lineHandler('bad')) : undefined;
  badChild = bad?.child;
  const exits = await Promise.all([good.done, bad?.done]);
  const wall = (Date.now() - t0) / 1000;
  for (const x of exits) if (x && x.code !== 0) throw new Error(`sluice exited ${x.signal ?? x.code}:\n${x.tail}`);
  const [a, b] = [cpu['reading from the source'], cpu['end of input']];
  const secs = a && b ? (b.at - a.at) / 1000 : NaN;
  return {
    wall,
    peak: exits[0].peak + (exits[1]?.peak ?? 0),
    ev,
    dlq,
    stages,
    cores: (b?.proc - a?.proc) / secs,
    js: (b?.js - a?.js) / secs,
    // Split: CPU seconds of each process during good's run.
    ...(mode === 'split' ? { cpuGood: b.proc - a.proc, cpuBad: b.bad - a.bad } : {}),
  };
}

async function countRows(globs) {
  const db = await DuckDBInstance.create(':memory:', { threads: '1' });
  const conn = await db.connect();
  const res = {};
  try {
    for (const [name, glob] of Object.entries(globs)) {
      // No file at all when every message was dead-lettered.
      const files = Number((await conn.runAndReadAll(`SELECT count(*) FROM glob(${lit(glob)})`)).getRows()[0][0]);
      res[name] = files ? Number((await conn.runAndReadAll(`SELECT count(*) FROM read_parquet(${lit(glob)})`)).getRows()[0][0]) : 0;
    }
  } finally {
    conn.closeSync();
    db.closeSync();
  }
  return res;
}

/** Seconds between two of a pipeline's log lines (pino's `time`, epoch ms). */
function between(ev, p, from, to) {
  const a = ev[`${p}:${from}`];
  const b = ev[`${p}:${to}`];
  if (!a || !b) throw new Error(`pipeline ${p}: no "${!a ? from : to}" log line`);
  return (b.time - a.time) / 1000;
}

/**
 * One configuration: 'a' (good alone), 'b' (bad = well-formed orders), 'c' (bad = hostile),
 * 'd' (bad = hostile, in a process of its own).
 */
async function runConfig(cfg) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `sluice-bench-neighbour-${cfg}-`));
  inFlight.dir = dir;
  try {
    const badInput = cfg === 'a' ? undefined : cfg === 'b' ? goodFile : badFile;
    writeProject(dir, badInput);
    const r = await runSluice(dir, cfg === 'a' ? 'one' : cfg === 'd' ? 'split' : 'shared');
    const good = {
      commit: between(r.ev, 'good', 'reading from the source', 'end of input'),
      done: between(r.ev, 'good', 'reading from the source', 'done'),
    };
    const goodDone = r.ev['good:done'];
    if (goodDone.messages !== N || goodDone.dead_lettered !== 0) throw new Error(`${cfg}: good processed ${goodDone.messages} of ${N}, ${goodDone.dead_lettered} dead-lettered`);
    const rows = await countRows({
      orders: path.join(dir, 'output/good/orders/**/*.parquet'),
      purchases: path.join(dir, 'output/good/purchases/**/*.parquet'),
      ...(badInput ? { bad_all: path.join(dir, 'output/bad/bad_all/**/*.parquet') } : {}),
    });
    if (rows.orders !== N || rows.purchases !== goodMeta.purchases) throw new Error(`${cfg}: good wrote ${rows.orders} orders (want ${N}), ${rows.purchases} purchases (want ${goodMeta.purchases})`);
    let bad;
    if (badInput) {
      const d = r.ev['bad:done'];
      if (!d || !(d.messages > 0)) throw new Error(`${cfg}: bad processed ${d?.messages} messages`);
      // SELECT *: one row per message that is not dead-lettered.
      if (rows.bad_all + d.dead_lettered !== d.messages) throw new Error(`${cfg}: bad wrote ${rows.bad_all} rows and dead-lettered ${d.dead_lettered}, of ${d.messages}`);
      if (cfg === 'b' && d.dead_lettered !== 0) throw new Error(`b: ${d.dead_lettered} well-formed orders dead-lettered`);
      const dlLogged = Object.values(r.dlq.bad ?? {}).reduce((a, b) => a + b, 0);
      if (dlLogged !== d.dead_lettered) throw new Error(`${cfg}: ${d.dead_lettered} dead letters counted but ${dlLogged} logged`);
      // "end of input" is logged only when the input ran out, not on a stop.
      const ranOut = r.ev['bad:end of input'];
      bad = {
        messages: d.messages,
        rows: rows.bad_all,
        dead_lettered: d.dead_lettered,
        reasons: r.dlq.bad ?? {},
        outlasted_good: !ranOut || ranOut.time > r.ev['good:end of input'].time,
      };
    }
    const stages = Object.fromEntries(
      Object.entries(r.stages).map(([p, s]) => [p, { batches: s.batches, ...Object.fromEntries(Object.entries(s.sums).map(([k, v]) => [k, Math.round(v / s.batches)])) }]),
    );
    return { wall: r.wall, peak: r.peak, good, bad, stages, cores: r.cores, js: r.js, cpuGood: r.cpuGood, cpuBad: r.cpuBad, load: os.loadavg()[0] };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
    inFlight.dir = undefined;
  }
}

// ---------------------------------------------------------------------------------------------

for (const f of [goodFile, badFile]) {
  // Warm the page cache so the first run does not pay for reading the inputs from disk.
  const fd = fs.openSync(f, 'r');
  const b = Buffer.allocUnsafe(8 * MiB);
  while (fs.readSync(fd, b, 0, b.length, null) > 0);
  fs.closeSync(fd);
}
const mach = machine();
console.log(
  `hostile_neighbour benchmark: good = ${fmt(N)} orders (${(goodMeta.bytes / MiB).toFixed(0)} MiB, batch_size ${BATCH}); bad (batch_size ${BAD_BATCH}) = the same ${fmt(N)} orders (b) or ` +
    `${fmt(M)} hostile messages (c, ${(badMeta.bytes / MiB).toFixed(0)} MiB: ${Object.entries(badMeta.kinds)
      .map(([k, v]) => `${fmt(v)} ${k}`)
      .join(', ')}); ${RUNS} run(s), a/b/c/d alternating (d: c as two processes)`,
);
console.log(`good's time = its pipeline's "reading from the source" -> "end of input" (all ${fmt(N)} committed to the WAL), msg/s = N / that; in b, c and d bad is stopped once good is done\n`);

const CONFIGS = { a: 'good alone', b: 'good + normal bad', c: 'good + hostile bad', d: 'good + hostile bad, two processes' };
const runs = [];
try {
  for (let i = 0; i < RUNS; i++) {
    const run = {};
    for (const cfg of Object.keys(CONFIGS)) run[cfg] = await runConfig(cfg);
    runs.push(run);
    const line = (cfg) => {
      const x = run[cfg];
      const where = cfg === 'd' ? `good's process ${x.cores.toFixed(2)} cores` : `${x.cores.toFixed(2)} cores`;
      return `${cfg}) ${fmt(N / x.good.commit)} msg/s (${x.good.commit.toFixed(2)} s, ${where}, JS thread ${pct(x.js)}; ${cfg === 'd' ? 'processes' : 'process'} ${x.wall.toFixed(1)} s, ${(x.peak / MiB).toFixed(0)} MiB)`;
    };
    const { a, b, c, d } = run;
    console.log(`run ${i + 1}/${RUNS}: ${line('a')} | ${line('b')} | ${line('c')} | ${line('d')}`);
    console.log(
      `       c/a ${(a.good.commit / c.good.commit).toFixed(2)}, c/b ${(b.good.commit / c.good.commit).toFixed(2)}, c/d ${(d.good.commit / c.good.commit).toFixed(2)}, d/a ${(a.good.commit / d.good.commit).toFixed(2)}; ` +
        `d) CPU during good's run: good ${d.cpuGood.toFixed(2)} s, bad ${d.cpuBad.toFixed(2)} s (${pct(d.cpuBad / (d.cpuGood + d.cpuBad))})`,
    );
    console.log(
      `       bad meanwhile: b) ${fmt(b.bad.messages)} orders; c) ${fmt(c.bad.messages)} hostile, ${fmt(c.bad.dead_lettered)} dead-lettered, ${fmt(c.bad.rows)} rows; d) ${fmt(d.bad.messages)} hostile` +
        ['b', 'c', 'd'].map((k) => (run[k].bad.outlasted_good ? '' : ` [${k}: bad ran out of input before good was done: raise --bad-messages]`)).join(''),
    );
    if (DEBUG)
      for (const cfg of Object.keys(CONFIGS))
        console.log(
          `       ${cfg}) ms per batch (mean): ${Object.entries(run[cfg].stages)
            .map(
              ([p, st]) =>
                `${p}: ${Object.entries(st)
                  .map(([k, v]) => `${k} ${v}`)
                  .join(', ')}`,
            )
            .join(' | ')}`,
        );
  }
} catch (err) {
  console.error(`\nbenchmark failed: ${err.message}`);
  process.exit(1);
}

const med = (f) => median(runs.map(f));
const rate = Object.fromEntries(Object.keys(CONFIGS).map((c) => [c, med((r) => N / r[c].good.commit)]));
const perRun = (x, y) => runs.map((r) => Number((r[y].good.commit / r[x].good.commit).toFixed(2)));
const reasons = {};
for (const r of runs) for (const [k, v] of Object.entries(r.c.bad.reasons)) reasons[k] = (reasons[k] ?? 0) + v;
const summary = {
  benchmark: 'hostile_neighbour',
  date: new Date().toISOString(),
  good_messages: N,
  good_input_bytes: goodMeta.bytes,
  hostile_messages: M,
  hostile_input_bytes: badMeta.bytes,
  hostile_kinds: badMeta.kinds,
  ...(ONLY.length ? { hostile_only: ONLY } : {}),
  batch_size: BATCH,
  bad_batch_size: BAD_BATCH,
  runs: RUNS,
  measured:
    "good's pipeline: log time of 'reading from the source' to 'end of input' (all N committed to the WAL); msg/s = N / that. " +
    "in b, c and d bad is stopped (SIGTERM) once good is done. cores / JS thread: CPU seconds of the process (d: good's process) / of its main thread (/proc) over good's run, divided by its length; d: CPU seconds of each process over good's run. process = spawn to exit (startup and the shutdown flush included; d: the later of the two); peak RSS = VmHWM polled every 50 ms (d: the sum of the two)",
  configs: Object.fromEntries(
    Object.entries(CONFIGS).map(([c, what]) => [
      c,
      {
        what,
        good_msgs_per_s: Math.round(rate[c]),
        good_commit_s: Number(med((r) => r[c].good.commit).toFixed(2)),
        good_done_s: Number(med((r) => r[c].good.done).toFixed(2)),
        process_s: Number(med((r) => r[c].wall).toFixed(2)),
        peak_rss_mib: Math.round(med((r) => r[c].peak) / MiB),
        cores_during_good: Number(med((r) => r[c].cores).toFixed(2)),
        js_thread_busy_during_good: Number(med((r) => r[c].js).toFixed(2)),
        ...(c === 'a'
          ? {}
          : {
              bad_messages: med((r) => r[c].bad.messages),
              bad_dead_lettered: med((r) => r[c].bad.dead_lettered),
              bad_rows: med((r) => r[c].bad.rows),
              bad_outlasted_good_in_every_run: runs.every((r) => r[c].bad.outlasted_good),
            }),
        ...(c === 'd'
          ? {
              good_process_cpu_s_during_good: Number(med((r) => r.d.cpuGood).toFixed(2)),
              bad_process_cpu_s_during_good: Number(med((r) => r.d.cpuBad).toFixed(2)),
              bad_cpu_share_during_good: Number(med((r) => r.d.cpuBad / (r.d.cpuGood + r.d.cpuBad)).toFixed(2)),
            }
          : {}),
      },
    ]),
  ),
  ratio_c_a: Number((rate.c / rate.a).toFixed(2)),
  ratio_c_b: Number((rate.c / rate.b).toFixed(2)),
  ratio_b_a: Number((rate.b / rate.a).toFixed(2)),
  ratio_c_d: Number((rate.c / rate.d).toFixed(2)),
  ratio_d_a: Number((rate.d / rate.a).toFixed(2)),
  ratio_d_b: Number((rate.d / rate.b).toFixed(2)),
  run_ratios: { c_a: perRun('c', 'a'), c_b: perRun('c', 'b'), b_a: perRun('b', 'a'), c_d: perRun('c', 'd'), d_a: perRun('d', 'a') },
  hostile_dead_letters_by_reason_all_runs: reasons,
  per_run: runs.map((r) =>
    Object.fromEntries(
      Object.keys(CONFIGS).map((c) => [
        c,
        {
          good_commit_s: Number(r[c].good.commit.toFixed(3)),
          cores_during_good: Number(r[c].cores.toFixed(2)),
          js_thread_busy_during_good: Number(r[c].js.toFixed(2)),
          loadavg_1m_after: Number(r[c].load.toFixed(2)),
          process_s: Number(r[c].wall.toFixed(2)),
          peak_rss_mib: Math.round(r[c].peak / MiB),
          ...(r[c].bad ? { bad_messages: r[c].bad.messages, bad_dead_lettered: r[c].bad.dead_lettered, bad_rows: r[c].bad.rows, bad_outlasted_good: r[c].bad.outlasted_good } : {}),
          ...(DEBUG ? { ms_per_batch: r[c].stages } : {}),
        },
      ]),
    ),
  ),
  machine: { ...mach, loadavg_1m_at_end: Number(os.loadavg()[0].toFixed(2)) },
};
const cf = summary.configs;
const outlast = ['b', 'c', 'd'].filter((c) => !cf[c].bad_outlasted_good_in_every_run);
console.log(`
summary (medians of ${RUNS} run(s)): good's throughput, ${fmt(N)} orders
  a) good alone        ${fmt(rate.a).padStart(8)} msg/s  (${cf.a.good_commit_s} s to commit, ${cf.a.good_done_s} s flushed; ${cf.a.cores_during_good} cores, JS thread ${pct(cf.a.js_thread_busy_during_good)}; process ${cf.a.process_s} s, peak RSS ${cf.a.peak_rss_mib} MiB)
  b) + normal bad      ${fmt(rate.b).padStart(8)} msg/s  (${cf.b.good_commit_s} s, ${cf.b.good_done_s} s; ${cf.b.cores_during_good} cores, JS ${pct(cf.b.js_thread_busy_during_good)}; process ${cf.b.process_s} s, peak RSS ${cf.b.peak_rss_mib} MiB; bad took ${fmt(cf.b.bad_messages)} orders meanwhile)
  c) + hostile bad     ${fmt(rate.c).padStart(8)} msg/s  (${cf.c.good_commit_s} s, ${cf.c.good_done_s} s; ${cf.c.cores_during_good} cores, JS ${pct(cf.c.js_thread_busy_during_good)}; process ${cf.c.process_s} s, peak RSS ${cf.c.peak_rss_mib} MiB; bad took ${fmt(cf.c.bad_messages)} hostile meanwhile)
  d) + hostile bad, two processes ${fmt(rate.d)} msg/s  (${cf.d.good_commit_s} s, ${cf.d.good_done_s} s; good's process ${cf.d.cores_during_good} cores, JS ${pct(cf.d.js_thread_busy_during_good)}; CPU during good's run: good ${cf.d.good_process_cpu_s_during_good} s, bad ${cf.d.bad_process_cpu_s_during_good} s (${pct(cf.d.bad_cpu_share_during_good)} bad); peak RSS ${cf.d.peak_rss_mib} MiB together; bad took ${fmt(cf.d.bad_messages)} hostile meanwhile)
  ratio c/a ${summary.ratio_c_a} (per run ${summary.run_ratios.c_a.join(', ')}), c/b ${summary.ratio_c_b} (per run ${summary.run_ratios.c_b.join(', ')}), b/a ${summary.ratio_b_a} (per run ${summary.run_ratios.b_a.join(', ')})
  ratio c/d ${summary.ratio_c_d} (per run ${summary.run_ratios.c_d.join(', ')}: what sharing the process costs), d/a ${summary.ratio_d_a} (per run ${summary.run_ratios.d_a.join(', ')}), d/b ${summary.ratio_d_b}
  hostile source (c): ${fmt(cf.c.bad_dead_lettered)} dead-lettered and ${fmt(cf.c.bad_rows)} rows written of ${fmt(cf.c.bad_messages)} read (medians); dead letters of all runs by reason:
${Object.entries(reasons)
  .sort((x, y) => y[1] - x[1])
  .map(([k, v]) => `    ${String(v).padStart(7)}  ${k}`)
  .join('\n')}${outlast.length ? `\n  WARNING: in ${outlast.join(', ')} bad ran out of input before good was done in some run: raise --bad-messages` : ''}
  machine: ${mach.cpu}, ${mach.cpus} CPUs, ${mach.mem_gib} GiB, Node.js ${mach.node}, 1-min load average at the end ${summary.machine.loadavg_1m_at_end}`);
fs.mkdirSync(path.join(ROOT, 'bench/results'), { recursive: true });
const resultFile = `bench/results/hostile_neighbour${ONLY.length ? `-${[...ONLY].sort().join('-')}` : ''}.json`;
fs.writeFileSync(path.join(ROOT, resultFile), JSON.stringify(summary, null, 2) + '\n');
console.log(`  written to ${resultFile}`);
