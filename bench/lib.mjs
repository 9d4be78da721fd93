import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { batching, heldAheadDefault } from '../dist/connectors/shared-config.js';

/**
 * Polls a child's peak resident set (VmHWM in /proc/<pid>/status) until it exits; returns a
 * getter. VmHWM is the kernel's high-water mark for the whole process, so DuckDB's worker
 * threads (in-process) are covered; the last reading before exit is the peak up to then.
 */
export function trackPeakRss(child, everyMs = 50) {
  let peak = 0;
  const read = () => {
    try {
      const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${child.pid}/status`, 'utf8'));
      if (m) peak = Math.max(peak, Number(m[1]) * 1024);
    } catch {
      // the process is gone; keep the last reading
    }
  };
  read();
  const poll = setInterval(read, everyMs);
  child.on('exit', () => clearInterval(poll));
  return () => peak;
}

/** CPU seconds (user + system, all threads) process `pid` has used so far; 0 once it is gone. */
export function cpuSeconds(pid) {
  try {
    // Fields after the command name (which may hold spaces): utime and stime are the 12th and 13th.
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / CLOCK_TICKS;
  } catch {
    return 0;
  }
}
/**
 * Seconds the threads of process `pid` have spent waiting on a run queue for a CPU so far (the
 * second field of each /proc/<pid>/task/<tid>/schedstat); 0 once it is gone. On a shared machine
 * this says how much of a drain was spent runnable but not running.
 */
export function runQueueSeconds(pid) {
  let ns = 0;
  try {
    for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
      try {
        ns += Number(fs.readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[1]);
      } catch {
        // the thread ended meanwhile
      }
    }
  } catch {
    return 0;
  }
  return ns / 1e9;
}
/** USER_HZ: 100 on every Linux this runs on (getconf CLK_TCK). */
const CLOCK_TICKS = 100;

/** Pids of the processes named exactly `name` on this machine (a local broker), [] if none. */
export function pidsNamed(name) {
  try {
    return execFileSync('pgrep', ['-x', name], { encoding: 'utf8' }).split('\n').filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

/** CPU seconds of several processes together (see cpuSeconds). */
const cpuOf = (pids) => pids.reduce((sum, pid) => sum + cpuSeconds(pid), 0);

/** A numeric flag: `--name N` or `--name=N`; a missing or non-numeric value is an error. */
export function arg(name, def) {
  const argv = process.argv.slice(2);
  let raw;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === `--${name}`) raw = argv[i + 1];
    else if (argv[i].startsWith(`--${name}=`)) raw = argv[i].slice(name.length + 3);
    else continue;
    if (raw === undefined || raw === '' || !Number.isFinite(Number(raw)) || Number(raw) < 0) {
      console.error(`--${name} needs a non-negative number, got ${raw === undefined ? 'nothing' : JSON.stringify(raw)}`);
      process.exit(2);
    }
  }
  return raw === undefined ? def : Number(raw);
}

/** The median; for an even count, the mean of the two middle values. */
export const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

// ---------------------------------------------------------------------------------------------
// Broker drains: sluice against a bare consumer of the same client library and against sluice on
// a file of the same messages, alternating in one run. Used by rabbitmq.mjs, nats.mjs,
// redis-streams.mjs and kafka.mjs.

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Exits 2 on a flag this benchmark does not take. */
export function checkFlags(bench, flags) {
  for (const a of process.argv.slice(2)) {
    if (a.startsWith('--') && !flags.includes(a.slice(2).split('=')[0])) {
      console.error(`unknown flag ${a}; the ${bench} benchmark takes ${flags.map((f) => `--${f} N`).join(', ')}`);
      process.exit(2);
    }
  }
}

/** The 1,000 distinct order messages (seed 42) a backlog cycles through, and their line items. */
export function orderBodies(orderMessage, count = 1000) {
  const bodies = Array.from({ length: count }, (_, i) => Buffer.from(orderMessage(i, 42)));
  const items = bodies.map((b) => JSON.parse(b.toString()).items.length);
  /** Line items in the first n messages of the backlog. */
  const itemsIn = (n) => {
    let total = 0;
    for (let i = 0; i < n; i++) total += items[i % count];
    return total;
  };
  return { bodies, itemsIn };
}

/**
 * A scaffolded project (`orders` + `purchases`) reading `sourceYaml`, writing Parquet under
 * <dir>/output, with thresholds that never fire during a drain (one flush, at shutdown).
 */
export async function benchProject(dir, sourceYaml, threads = 0) {
  const { scaffold } = await import('../dist/cli/init.js');
  fs.rmSync(dir, { recursive: true, force: true });
  await scaffold(dir, 'bench');
  fs.writeFileSync(path.join(dir, 'config/sources.yml'), sourceYaml);
  fs.writeFileSync(path.join(dir, 'config/sinks.yml'), `sink:\n  type: parquet\n  path: ${path.join(dir, 'output')}\n`);
  fs.writeFileSync(path.join(dir, 'config/models.yml'), 'max_file_bytes: 1073741824\nmax_age_seconds: 3600\n');
  if (threads) fs.writeFileSync(path.join(dir, 'sluice.yml'), `name: bench\nduckdb:\n  threads: ${threads}\n`);
}

/** `sluice run` of a project as a child process, JSON logs on stderr (kept), peak RSS tracked. */
export function startSluice(dir, port, logLevel = 'info') {
  // SLUICE_BENCH_NODE_ARGS: options for sluice's node, e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof".
  const nodeArgs = (process.env.SLUICE_BENCH_NODE_ARGS ?? '').split(' ').filter(Boolean);
  const child = spawn(process.execPath, [...nodeArgs, path.join(ROOT, 'bin/sluice.js'), 'run', '--project', dir, '--port', String(port), '--log-json', '--log-level', logLevel], {
    env: { ...process.env, SLUICE_WORKER_ID: 'bench' },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let err = '';
  child.stderr.on('data', (d) => (err += d));
  const peak = trackPeakRss(child, 50);
  const exited = new Promise((resolve) => child.on('exit', (code) => resolve(code)));
  const lines = () =>
    err
      .trim()
      .split('\n')
      .map((l) => {
        try {
          return JSON.parse(l);
        } catch {
          return {};
        }
      });
  return { child, err: () => err, lines, peak, exited };
}

/** Waits until sluice logs that it reads from the source (fails if it exits first). */
export async function untilReading(s) {
  while (!s.err().includes('reading from the source')) {
    if (s.child.exitCode !== null) throw new Error(s.err());
    await sleep(5);
  }
}

/** The log time (ms) of sluice's first line with message `msg` (JSON logs), once it has come. */
async function logTime(s, msg) {
  for (;;) {
    const line = s.lines().find((l) => l.msg === msg);
    if (line) return line.time;
    if (s.child.exitCode !== null) throw new Error(`sluice exited ${s.child.exitCode}: ${s.err().slice(-2000)}`);
    await sleep(5);
  }
}

/**
 * Waits until sluice's `batch committed` lines (debug level: each after its batch was acked) add
 * up to n messages; returns the log time (ms) of the line that got there. Reads sluice's stderr
 * only: polling its /metrics instead cost it ~2.5 ms of CPU a request, on its JavaScript thread.
 */
export async function untilCommitted(s, n) {
  let seen = 0;
  let acked = 0;
  for (;;) {
    const text = s.err();
    const end = text.lastIndexOf('\n');
    if (end > seen) {
      for (const line of text.slice(seen, end).split('\n')) {
        if (!line.includes('"batch committed"')) continue;
        const l = JSON.parse(line);
        acked += l.messages;
        if (acked >= n) return l.time;
      }
      seen = end + 1;
    }
    if (s.child.exitCode !== null) throw new Error(`sluice exited ${s.child.exitCode} after ${acked} of ${n} messages: ${s.err().slice(-2000)}`);
    await sleep(5);
  }
}

/** Row counts of the `orders` and `purchases` Parquet output of a bench project. */
export async function outputRows(dir) {
  const { DuckDBInstance } = await import('@duckdb/node-api');
  const db = await DuckDBInstance.create(':memory:');
  const conn = await db.connect();
  try {
    const count = async (model) => Number((await conn.runAndReadAll(`SELECT count(*) FROM read_parquet('${path.join(dir, 'output', model)}/**/*.parquet')`)).getRows()[0][0]);
    return { orders: await count('orders'), purchases: await count('purchases') };
  } finally {
    conn.closeSync();
    db.closeSync();
  }
}

/** Mean milliseconds per batch of each debug-logged stage timing (`--log-level debug`), if any. */
function stageTimings(lines) {
  const sums = {};
  let batches = 0;
  for (const l of lines) {
    if (l.msg !== 'batch committed' || !l.ms) continue;
    batches++;
    for (const [k, v] of Object.entries(l.ms)) if (typeof v === 'number') sums[k] = (sums[k] ?? 0) + v;
  }
  if (!batches) return undefined;
  return Object.fromEntries(Object.entries(sums).map(([k, v]) => [k, Math.round(v / batches)]));
}

// ---------------------------------------------------------------------------------------------
// Where a drain's time goes: the engine's `batch committed` debug lines summed over the batches.
//
// The engine reads and prepares batch N+1 (read, then check, load, decode, convert on the loading
// lane) while its main loop runs batch N through the models, stages its WAL segments, commits and
// acks. So only the main loop's stages add up to the drain's time: `wait` (logged per batch: the
// loop waiting for the batch to be read and prepared) + models + tests + stage + commit + ack +
// `other` (the rest of each batch's gap between log timestamps: flushes due, bookkeeping) = the
// span from "reading from the source" to the last commit. read/check/load/decode/convert are
// durations of work that overlapped the previous batch: they matter only through `wait`. (`read`
// is the batch's own: from asking the batcher to the hand-over, idle time included.)

/** Main-loop stages, in order: together they make up the span. */
export const LOOP_STAGES = ['wait', 'models', 'tests', 'stage', 'commit', 'ack', 'other'];
/** Stages that overlap the previous batch (the source's read and the loading lane). */
export const OVERLAPPED_STAGES = ['read', 'check', 'load', 'decode', 'convert'];
const STAGE_LABEL = {
  wait: 'waiting for the next batch',
  models: 'models',
  tests: 'data tests',
  stage: 'stage (WAL segments, fsync)',
  commit: 'commit (WAL state)',
  ack: 'ack to the source',
  other: 'flushes due, bookkeeping',
  span: 'span: start to last commit',
  read: 'read (source)',
  check: 'check (JSON scan, JS thread)',
  load: 'load (into DuckDB)',
  decode: 'decode (exact, slow path)',
  convert: 'convert (json_transform)',
};

/**
 * Milliseconds per stage summed over a drain's batches, from sluice's JSON log lines at debug
 * level; undefined if there is no `batch committed` line with timings.
 */
export function stageSums(lines) {
  const start = lines.find((l) => l.msg === 'reading from the source')?.time;
  const batches = lines.filter((l) => l.msg === 'batch committed' && l.ms && typeof l.time === 'number');
  if (start === undefined || !batches.length) return undefined;
  const sums = Object.fromEntries([...LOOP_STAGES, ...OVERLAPPED_STAGES].map((k) => [k, 0]));
  let prev = start;
  for (const l of batches) {
    const ms = l.ms;
    const stage = ms.stage ?? 0;
    const commit = ms.commit ?? 0;
    const loop = (ms.models ?? 0) + (ms.tests ?? 0) + (ms.stage_and_commit ?? stage + commit) + (ms.ack ?? 0);
    // Lines written before the engine logged `wait` leave it in `other`'s place.
    const gap = l.time - prev - loop;
    sums.wait += ms.wait ?? gap;
    sums.other += ms.wait === undefined ? 0 : gap - ms.wait;
    prev = l.time;
    for (const k of ['models', 'tests', 'ack', ...OVERLAPPED_STAGES]) sums[k] += ms[k] ?? 0;
    sums.stage += stage;
    // stage_and_commit also covers what lies between the two (the checkpoint, contract reports).
    sums.commit += (ms.stage_and_commit ?? stage + commit) - stage;
  }
  sums.span = prev - start;
  sums.batches = batches.length;
  return sums;
}

/** Per stage, the median over runs of stageSums() results. */
export function medianStages(runs) {
  const keys = [...LOOP_STAGES, 'span', ...OVERLAPPED_STAGES, 'batches'];
  return Object.fromEntries(keys.map((k) => [k, Math.round(median(runs.map((r) => r[k] ?? 0)))]));
}

/**
 * Which main-loop stage takes the broker drain's extra time over the file drain (stage sums of
 * each, e.g. medians over runs): { stage, extra, total, share }, and for `wait`, whether the
 * source's read or the preparation of the batch grew more (`cause`).
 */
export function extraTime(broker, file) {
  const total = broker.span - file.span;
  const deltas = LOOP_STAGES.map((k) => [k, (broker[k] ?? 0) - (file[k] ?? 0)]).sort((a, b) => b[1] - a[1]);
  const [stage, extra] = deltas[0];
  let cause;
  if (stage === 'wait') {
    const read = broker.read - file.read;
    const each = Object.fromEntries(['check', 'load', 'decode', 'convert'].map((k) => [k, broker[k] - file[k]]));
    const prepare = Object.values(each).reduce((sum, v) => sum + v, 0);
    cause = { read, prepare, each, by: read >= prepare ? 'read' : 'prepare' };
  }
  return { stage, extra, total, share: total > 0 ? extra / total : 0, deltas: Object.fromEntries(deltas), cause };
}

const pct = (x) => `${Math.round(x * 100)} %`;
const signed = (ms) => `${ms >= 0 ? '+' : ''}${ms}`;

/** Lines of a table of stage sums: on the broker, on the file, the difference. */
export function stageTable(broker, file, label) {
  const row = (k) => `    ${STAGE_LABEL[k].padEnd(30)} ${String(broker[k]).padStart(10)} ${String(file[k]).padStart(10)} ${signed(broker[k] - file[k]).padStart(10)}`;
  return [
    `  sluice ms summed over the batches (${broker.batches} on ${label}, ${file.batches} on file)`,
    `    ${''.padEnd(30)} ${'on broker'.padStart(10)} ${'on file'.padStart(10)} ${'extra'.padStart(10)}`,
    '  main loop (adds up to the span):',
    ...LOOP_STAGES.filter((k) => k !== 'tests' || broker.tests || file.tests).map(row),
    row('span'),
    '  overlapped with the previous batch (count only through "waiting"):',
    ...OVERLAPPED_STAGES.map(row),
  ];
}

/** One sentence: where the broker drain's extra time goes. */
export function extraTimeVerdict(x, label) {
  if (x.total <= 0) return `sluice on ${label} took no longer than on the file (span ${signed(x.total)} ms)`;
  const more = (ms) => (ms >= 0 ? `${ms} ms more` : `${-ms} ms less`);
  let s = `sluice on ${label} takes ${x.total} ms longer than on the file; the largest part, ${x.extra} ms, is ${STAGE_LABEL[x.stage]}`;
  if (x.cause) {
    const each = Object.entries(x.cause.each)
      .sort((a, b) => b[1] - a[1])
      .map(([k, v]) => `${k} ${signed(v)}`)
      .join(', ');
    s +=
      x.cause.by === 'read'
        ? ` (the source's reads took ${more(x.cause.read)}; check/load/decode/convert ${more(x.cause.prepare)}: ${each})`
        : ` (check/load/decode/convert took ${more(x.cause.prepare)}: ${each}; the source's reads ${more(x.cause.read)})`;
  }
  const others = Object.entries(x.deltas)
    .filter(([k, v]) => k !== x.stage && v !== 0)
    .map(([k, v]) => `${k} ${signed(v)}`);
  return `${s}${others.length ? `; other main-loop stages ${others.join(', ')} ms` : ''}`;
}

/** An NDJSON file of the first n messages of a backlog cycling through `bodies` (Buffers). */
export function backlogFile(file, bodies, n) {
  const fd = fs.openSync(file, 'w');
  try {
    const NL = Buffer.from('\n');
    for (let i = 0; i < n; i += 10_000) {
      const chunk = [];
      for (let j = i; j < Math.min(n, i + 10_000); j++) chunk.push(bodies[j % bodies.length], NL);
      fs.writeSync(fd, Buffer.concat(chunk));
    }
  } finally {
    fs.closeSync(fd);
  }
  return file;
}

/**
 * The file source a drain's backlog is read from by sluice-on-file: the same batch keys as the
 * broker's source block (`batchYaml(flags)`: none at sluice's defaults).
 */
export const fileSourceYaml = (file, keysYaml) => `source:\n  type: file\n  path: ${JSON.stringify(file)}\n  follow: true\n  poll_interval_ms: 20\n${keysYaml}`;

/**
 * Drains a backlog of n messages with `sluice run` on `sourceYaml`, logging at debug level: timed
 * by sluice's own log times, from "reading from the source" to the `batch committed` line that
 * makes n (every row durable in the WAL and acked), then SIGTERM (flush, exit 0) and a check that
 * the Parquet output holds n orders and `items` purchases.
 */
export async function sluiceDrain(sourceYaml, n, { prefix = 'sluice-bench-', threads = 0, items, brokerPids = () => [] } = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  try {
    await benchProject(dir, sourceYaml, threads);
    const port = 19000 + Math.floor(Math.random() * 1000);
    const s = startSluice(dir, port, 'debug');
    const start = await logTime(s, 'reading from the source');
    // The main thread's CPU too: JavaScript (the source's client library, the JSON check) runs there.
    const mainThread = `${s.child.pid}/task/${s.child.pid}`;
    const cpu0 = { sluice: cpuSeconds(s.child.pid), js: cpuSeconds(mainThread), queued: runQueueSeconds(s.child.pid), broker: cpuOf(brokerPids()) };
    const end = await untilCommitted(s, n);
    const cpu = {
      consumer: cpuSeconds(s.child.pid) - cpu0.sluice,
      js: cpuSeconds(mainThread) - cpu0.js,
      queued: runQueueSeconds(s.child.pid) - cpu0.queued,
      broker: cpuOf(brokerPids()) - cpu0.broker,
    };
    const secs = (end - start) / 1000;
    s.child.kill('SIGTERM');
    const code = await s.exited;
    if (code !== 0) throw new Error(`sluice exited ${code}: ${s.err().slice(-2000)}`);
    const lines = s.lines();
    const done = lines.find((l) => l.msg === 'done');
    if (!done || done.messages < n) throw new Error(`sluice processed ${done?.messages} of ${n}`);
    const rows = await outputRows(dir);
    if (rows.orders !== n || (items !== undefined && rows.purchases !== items)) {
      const warned = [...new Set(lines.filter((l) => l.level === 40).map((l) => l.msg))].slice(0, 5);
      throw new Error(
        `output: ${rows.orders} orders (want ${n}), ${rows.purchases} purchases (want ${items ?? 'any'}); sluice's summary: ${done.messages} messages, ${done.redelivered} redelivered, ${done.dead_lettered} dead-lettered, ${lines.filter((l) => l.msg === 'batch committed').length} batches; warnings: ${warned.join(' | ') || 'none'}`,
      );
    }
    return { rate: n / secs, secs, cpu, jsBusy: cpu.js / secs, peak: s.peak(), rows, timings: stageTimings(lines), stages: stageSums(lines) };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

export function machine() {
  return {
    cpu: os.cpus()[0]?.model,
    cpus: os.cpus().length,
    mem_gib: Math.round(os.totalmem() / 2 ** 30),
    node: process.version,
    loadavg_1m_at_end: Number(os.loadavg()[0].toFixed(2)),
  };
}

/**
 * What a source block that sets no batch keys gets (src/connectors/shared-config.ts, read from
 * dist so that these cannot drift from sluice): batch_size is a ceiling (the engine sizes
 * batches from the backlog, ramping up to it), batch_timeout_ms, and `held_ahead`, the default of
 * RabbitMQ's `prefetch` and JetStream's `max_ack_pending` (min(4 x batch_size, 40,000)).
 */
export const SLUICE_DEFAULTS = (() => {
  const batchSize = batching.batch_size.parse(undefined);
  return { batch_size: batchSize, batch_timeout_ms: batching.batch_timeout_ms.parse(undefined), held_ahead: heldAheadDefault(batchSize) };
})();

/**
 * The bare consumers' batch (messages per ack, pull or read) when no --batch-size is given: the
 * 10,000 they used while the benchmarks set `batch_size: 10000`, so that their figures stay
 * comparable with those measured before.
 */
export const BARE_BATCH_DEFAULT = 10_000;

/** The timeout written beside --batch-size (the value the benchmarks have always set: also sluice's default). */
const BATCH_TIMEOUT_MS = 1000;

/** True if `--name` was given on the command line (with or without `=value`). */
export const given = (name) => process.argv.slice(2).some((a) => a === `--${name}` || a.startsWith(`--${name}=`));

/** The batch keys a source block sets: none at sluice's defaults (no --batch-size), else batch_size B and batch_timeout_ms 1000. */
export const batchKeys = (flags) => (flags.batch === undefined ? {} : { batch_size: flags.batch, batch_timeout_ms: BATCH_TIMEOUT_MS });

/** `keys` as lines of a source block (two-space indent); '' for none. */
export const keysYaml = (keys) =>
  Object.entries(keys)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `  ${k}: ${v}\n`)
    .join('');

/** The batch keys of a source block, as YAML lines ('' at sluice's defaults). */
export const batchYaml = (flags) => keysYaml(batchKeys(flags));

const thousands = (n) => n.toLocaleString('en-US');

/**
 * How sluice's source block is set, for the header line: "batch_size default (...)" when it sets
 * no batch keys, as the file benchmark prints; `others` describes any further keys.
 */
export function describeSluiceKeys(flags, others = []) {
  const batch =
    flags.batch === undefined
      ? `batch_size default (no batch keys set: a ceiling of ${thousands(SLUICE_DEFAULTS.batch_size)}, batches sized from the backlog; batch_timeout_ms ${SLUICE_DEFAULTS.batch_timeout_ms})`
      : `batch_size ${thousands(flags.batch)}, batch_timeout_ms ${BATCH_TIMEOUT_MS}`;
  return [batch, ...others].join(', ');
}

/**
 * The flags every drain benchmark takes (plus `extra`: { name: default, or (flags) => default }):
 * --messages (200,000), --runs (5), --batch-size (none: sluice's defaults, no batch keys set; the
 * bare consumer's batch is then BARE_BATCH_DEFAULT), --threads (sluice's default), --debug (1: each
 * run's mean per-batch stage timings are printed too). Unknown flags exit 2. Besides the flags:
 * `bareBatch` (the bare consumer's batch: B, or 10,000) and `heldAhead` (the prefetch /
 * max_ack_pending sluice uses when its block does not set one: min(4 x B, 40,000), 40,000 at the
 * defaults).
 */
export function drainFlags(bench, extra = {}) {
  checkFlags(bench, ['messages', 'runs', 'batch-size', 'threads', 'debug', ...Object.keys(extra)]);
  const flags = { messages: arg('messages', 200_000), runs: arg('runs', 5), batch: arg('batch-size', undefined), threads: arg('threads', 0), debug: arg('debug', 0) };
  flags.bareBatch = flags.batch ?? BARE_BATCH_DEFAULT;
  flags.heldAhead = heldAheadDefault(flags.batch ?? SLUICE_DEFAULTS.batch_size);
  for (const [k, def] of Object.entries(extra)) flags[k] = arg(k, typeof def === 'function' ? def(flags) : def);
  for (const k of ['messages', 'runs', ...(flags.batch === undefined ? [] : ['batch'])]) {
    if (!Number.isInteger(flags[k]) || flags[k] < 1) {
      console.error(`--${k === 'batch' ? 'batch-size' : k} must be a whole number >= 1, got ${flags[k]}`);
      process.exit(2);
    }
  }
  return flags;
}

/**
 * Runs `flags.runs` rounds — fill, bare consumer drain, fill, sluice drain of `sourceYaml`, then
 * sluice draining the same backlog from an NDJSON file (`bodies` cycled, the same batch keys:
 * batchYaml(flags)) — prints each run, the medians and where sluice on the broker spends its time
 * beyond sluice on the file (both at debug log level: stageSums), and returns the summary (also
 * written to bench/results/<name>.json, with `extra()` merged in). `fill(n)` queues n messages
 * (the backlog of orderBodies(): `itemsIn(n)` line items); `bare(n)` drains them and returns
 * msg/s. `sluiceKeys` are the tuning keys `sourceYaml` sets beyond the connection ({} at sluice's
 * defaults) and `sluiceSettings` says what the unset ones default to (header line); `bareKeys` /
 * `bareSettings` the same for the bare consumer.
 */
export async function drainBench({
  name,
  title,
  baseline,
  flags,
  fill,
  bare,
  sourceYaml,
  sluiceKeys = batchKeys(flags),
  sluiceSettings = describeSluiceKeys(flags),
  bareKeys = {},
  bareSettings = '',
  bodies,
  itemsIn,
  label = name,
  brokerPids = () => [],
  extra = async () => ({}),
}) {
  const TARGET = 0.8;
  const n = flags.messages;
  console.log(`${title} benchmark: ${n} order messages, ${flags.runs} run(s)`);
  console.log(`  sluice: ${sluiceSettings}`);
  if (bareSettings) console.log(`  ${baseline}: ${bareSettings}`);
  console.log(
    `  sluice also drains the same messages from an NDJSON file, with the same batch keys (${Object.keys(batchKeys(flags)).length ? keysYaml(batchKeys(flags)).trim().replace(/\n\s*/g, ', ') : 'none'})`,
  );
  const file = backlogFile(path.join(os.tmpdir(), `sluice-bench-${name}-${process.pid}.ndjson`), bodies, n);
  // Also when the process ends with this still pending (a broker connection lost mid-fill).
  const removeFile = () => fs.rmSync(file, { force: true });
  process.once('exit', removeFile);
  try {
    const b = [];
    const s = [];
    const f = [];
    const peaks = [];
    const timings = [];
    const stages = { broker: [], file: [] };
    // CPU microseconds per message of each side and of the broker while it served that side.
    const cpu = { bare: [], bareBroker: [], sluice: [], sluiceBroker: [], sluiceFile: [] };
    // How busy sluice's main (JavaScript) thread was during each drain: CPU seconds / seconds.
    const js = { broker: [], file: [] };
    // Seconds sluice's threads were runnable but waited for a CPU (summed over threads), each drain.
    const queued = { broker: [], file: [] };
    const perMessage = (secs) => Math.round(((secs * 1e6) / n) * 100) / 100;
    const drainOpts = { threads: flags.threads, items: itemsIn(n) };
    for (let r = 0; r < flags.runs; r++) {
      await fill(n);
      // The bare consumer runs in this process: its CPU is this process's (connecting and joining
      // the group included, which counts against the baseline).
      const own0 = process.cpuUsage();
      const broker0 = cpuOf(brokerPids());
      b.push(await bare(n));
      const own = process.cpuUsage(own0);
      cpu.bare.push(perMessage((own.user + own.system) / 1e6));
      cpu.bareBroker.push(perMessage(cpuOf(brokerPids()) - broker0));
      await fill(n);
      const got = await sluiceDrain(sourceYaml, n, { ...drainOpts, prefix: `sluice-bench-${name}-`, brokerPids });
      cpu.sluice.push(perMessage(got.cpu.consumer));
      cpu.sluiceBroker.push(perMessage(got.cpu.broker));
      s.push(got.rate);
      peaks.push(got.peak);
      if (got.timings) timings.push(got.timings);
      // The same messages and models from a file, right after: the source's own overhead.
      const onFile = await sluiceDrain(fileSourceYaml(file, batchYaml(flags)), n, { ...drainOpts, prefix: `sluice-bench-${name}-file-` });
      cpu.sluiceFile.push(perMessage(onFile.cpu.consumer));
      js.broker.push(got.jsBusy);
      js.file.push(onFile.jsBusy);
      queued.broker.push(got.cpu.queued);
      queued.file.push(onFile.cpu.queued);
      f.push(onFile.rate);
      if (got.stages && onFile.stages) {
        stages.broker.push(got.stages);
        stages.file.push(onFile.stages);
      }
      console.log(
        `run ${r + 1}: ${baseline} ${Math.round(b[r])} msg/s, sluice ${Math.round(got.rate)} msg/s (ratio ${(got.rate / b[r]).toFixed(2)}), sluice on file ${Math.round(onFile.rate)} msg/s (sluice-on-${label} / sluice-on-file ${(got.rate / onFile.rate).toFixed(2)}), sluice peak RSS ${(got.peak / 2 ** 20).toFixed(0)} MiB, output ${got.rows.orders} orders + ${got.rows.purchases} purchases`,
      );
      console.log(
        `       CPU µs per message: ${baseline} ${cpu.bare[r]}${brokerPids().length ? ` + broker ${cpu.bareBroker[r]}` : ''}; sluice ${cpu.sluice[r]}${brokerPids().length ? ` + broker ${cpu.sluiceBroker[r]}` : ''}; sluice on file ${cpu.sluiceFile[r]}; sluice's JS thread busy ${pct(got.jsBusy)} on ${label}, ${pct(onFile.jsBusy)} on file; its threads waited for a CPU ${got.cpu.queued.toFixed(1)} s on ${label}, ${onFile.cpu.queued.toFixed(1)} s on file`,
      );
      if (got.stages && onFile.stages) {
        const row = (st) =>
          LOOP_STAGES.filter((k) => k !== 'tests' || st.tests)
            .map((k) => `${k} ${st[k]}`)
            .join(', ');
        console.log(`       ms summed over the batches, on ${label}: ${row(got.stages)} (span ${got.stages.span}); on file: ${row(onFile.stages)} (span ${onFile.stages.span})`);
      }
      if (flags.debug && got.timings)
        console.log(
          `       sluice ms per batch (mean): ${Object.entries(got.timings)
            .map(([k, v]) => `${k} ${v}`)
            .join(', ')}`,
        );
    }
    const ratios = s.map((x, i) => Number((x / b[i]).toFixed(2)));
    const fileRatios = s.map((x, i) => Number((x / f[i]).toFixed(2)));
    const st = stages.broker.length ? { broker: medianStages(stages.broker), file: medianStages(stages.file) } : undefined;
    const x = st ? extraTime(st.broker, st.file) : undefined;
    const summary = {
      benchmark: name,
      date: new Date().toISOString(),
      messages: n,
      batch_size: flags.batch ?? 'default',
      runs: flags.runs,
      // The tuning keys each side set ({} for sluice at its defaults: batch_size a ceiling of
      // SLUICE_DEFAULTS.batch_size, batch_timeout_ms and prefetch / max_ack_pending defaulted).
      sluice_source_keys: sluiceKeys,
      sluice_on_file_source_keys: batchKeys(flags),
      sluice_defaults: SLUICE_DEFAULTS,
      baseline,
      bare_settings: bareKeys,
      bare_msgs_per_s: Math.round(median(b)),
      sluice_msgs_per_s: Math.round(median(s)),
      sluice_on_file_msgs_per_s: Math.round(median(f)),
      ratio: Number((median(s) / median(b)).toFixed(2)),
      median_run_ratio: Number(median(ratios).toFixed(2)),
      run_ratios: ratios,
      file_ratio: Number((median(s) / median(f)).toFixed(2)),
      median_run_file_ratio: Number(median(fileRatios).toFixed(2)),
      run_file_ratios: fileRatios,
      bare_runs: b.map(Math.round),
      sluice_runs: s.map(Math.round),
      sluice_on_file_runs: f.map(Math.round),
      sluice_peak_rss_mib: Math.round(median(peaks) / 2 ** 20),
      sluice_run_queue_seconds: { broker: Number(median(queued.broker).toFixed(2)), file: Number(median(queued.file).toFixed(2)) },
      sluice_js_thread_busy: { broker: Number(median(js.broker).toFixed(2)), file: Number(median(js.file).toFixed(2)) },
      cpu_us_per_message: {
        bare: median(cpu.bare),
        sluice: median(cpu.sluice),
        sluice_on_file: median(cpu.sluiceFile),
        ...(brokerPids().length ? { broker_serving_bare: median(cpu.bareBroker), broker_serving_sluice: median(cpu.sluiceBroker) } : {}),
      },
      ...(st ? { stage_ms_summed: { median: st, extra_time: x, runs: stages } } : {}),
      ...(timings.length ? { sluice_ms_per_batch: timings } : {}),
      ...(await extra()),
      machine: machine(),
    };
    console.log(
      `\nmedian: sluice ${summary.sluice_msgs_per_s} msg/s vs ${baseline} ${summary.bare_msgs_per_s} msg/s -> ratio ${summary.ratio} (target >= ${TARGET}); per-run ratios ${ratios.join(', ')}, median ${summary.median_run_ratio}`,
    );
    console.log(
      `median: sluice-on-${label} ${summary.sluice_msgs_per_s} msg/s vs sluice-on-file ${summary.sluice_on_file_msgs_per_s} msg/s -> ratio ${summary.file_ratio} (target >= ${TARGET}); per-run ratios ${fileRatios.join(', ')}, median ${summary.median_run_file_ratio}`,
    );
    const c = summary.cpu_us_per_message;
    console.log(
      `CPU µs per message (medians): ${baseline} ${c.bare}${c.broker_serving_bare !== undefined ? ` + broker ${c.broker_serving_bare}` : ''}, sluice ${c.sluice}${c.broker_serving_sluice !== undefined ? ` + broker ${c.broker_serving_sluice}` : ''}, sluice on file ${c.sluice_on_file}`,
    );
    if (st) {
      console.log(`\nwhere the time goes (medians over the runs):`);
      for (const line of stageTable(st.broker, st.file, label)) console.log(line);
      console.log(`${summary.median_run_file_ratio < TARGET ? `below ${TARGET}: ` : ''}${extraTimeVerdict(x, label)}`);
      // Stage times are wall times: the client library's work on the JavaScript thread lands in
      // whichever stage waits for that thread (the check, or models waiting for their callbacks).
      console.log(
        `sluice's process: ${Math.round((c.sluice - c.sluice_on_file) * 100) / 100} µs of CPU a message more on ${label} than on the file (${c.sluice} vs ${c.sluice_on_file}); its JavaScript thread busy ${pct(summary.sluice_js_thread_busy.broker)} of the drain on ${label}, ${pct(summary.sluice_js_thread_busy.file)} on the file; its threads waited ${summary.sluice_run_queue_seconds.broker} s for a CPU on ${label}, ${summary.sluice_run_queue_seconds.file} s on the file (summed over threads)`,
      );
    }
    console.log(
      `machine: ${summary.machine.cpu}, ${summary.machine.cpus} CPUs, ${summary.machine.mem_gib} GiB, Node.js ${summary.machine.node}, 1-min load average at the end ${summary.machine.loadavg_1m_at_end}`,
    );
    fs.mkdirSync(path.join(ROOT, 'bench/results'), { recursive: true });
    fs.writeFileSync(path.join(ROOT, `bench/results/${name}.json`), JSON.stringify(summary, null, 2) + '\n');
    return summary;
  } finally {
    process.off('exit', removeFile);
    removeFile();
  }
}

/**
 * The child processes and temp dir a benchmark has in flight: an interrupt (Ctrl-C) stops the
 * ones and removes the other. Call once; set `child` (or add to `children`) and `dir` as they
 * come and go.
 */
export function cleanupOnInterrupt() {
  const inFlight = { child: undefined, children: new Set(), dir: undefined };
  process.on('SIGINT', () => {
    for (const c of [inFlight.child, ...inFlight.children]) if (c && c.exitCode === null) c.kill('SIGKILL');
    if (inFlight.dir) fs.rmSync(inFlight.dir, { recursive: true, force: true });
    console.error('\ninterrupted');
    process.exit(130);
  });
  return inFlight;
}

/**
 * Runs `node <args>` in `cwd` as a child process, timed from spawn to exit, its peak RSS by
 * VmHWM; rejects with the end of its output when it fails. `inFlight` (cleanupOnInterrupt) holds
 * the child while it runs, so an interrupt stops it.
 */
export function timedChild(label, args, cwd, inFlight) {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn(process.execPath, args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    inFlight.child = child;
    let out = '';
    const keep = (d) => {
      out += d;
      if (out.length > 64_000) out = out.slice(-32_000);
    };
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    const peak = trackPeakRss(child, 50);
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      const secs = (performance.now() - t0) / 1000;
      inFlight.child = undefined;
      if (code !== 0) reject(new Error(`${label} exited ${signal ?? code}:\n${out.slice(-4000)}`));
      else resolve({ secs, peak: peak() });
    });
  });
}

/** The mock cluster under `sh`, killed when this process's stdin pipe to it closes. */
export async function startKafkaMock() {
  const script =
    'command -v kcat >/dev/null || exit 127; kcat -b localhost:0 -X test.mock.num.brokers=3 -C -t sluice-keepalive -q >/dev/null & k=$!; echo "kcat pid $k" >&2; cat >/dev/null; kill $k 2>/dev/null';
  const child = spawn('sh', ['-c', script], { stdio: ['pipe', 'ignore', 'pipe'] });
  let pid = 0;
  const brokers = await new Promise((resolve, reject) => {
    let err = '';
    child.stderr.on('data', (d) => {
      if (err.length < 20_000) err += d;
      pid ||= Number(/kcat pid (\d+)/.exec(err)?.[1] ?? 0);
      const m = /(?:replaced with|bootstrap\.servers=)\s*(\S+)/.exec(err);
      if (m) resolve(m[1]);
    });
    child.once('exit', (code) => reject(new Error(`kcat exited ${code}: ${err} (is kcat installed? apt-get install -y kcat)`)));
  });
  return { brokers, pid, stop: () => child.stdin.end() };
}

/** A TCP port free on loopback now (for a run's ops server). */
export const freePort = () =>
  new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });

/** A process's resident memory now (VmRSS, bytes); undefined once it is gone. */
export function rss(pid) {
  try {
    return Number(/VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))[1]) * 1024;
  } catch {
    return undefined;
  }
}
