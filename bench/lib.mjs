import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

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
// Broker drains: sluice against a bare consumer of the same client library, alternating in one
// run. Used by rabbitmq.mjs, nats.mjs and redis-streams.mjs.

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
    env: { ...process.env, SLUICE_WORKER_ID: 'bench' }, stdio: ['ignore', 'ignore', 'pipe'],
  });
  let err = '';
  child.stderr.on('data', (d) => (err += d));
  const peak = trackPeakRss(child, 50);
  const exited = new Promise((resolve) => child.on('exit', (code) => resolve(code)));
  const lines = () => err.trim().split('\n').map((l) => { try { return JSON.parse(l); } catch { return {}; } });
  return { child, err: () => err, lines, peak, exited };
}

/** Waits until sluice logs that it reads from the source (fails if it exits first). */
export async function untilReading(s) {
  while (!s.err().includes('reading from the source')) {
    if (s.child.exitCode !== null) throw new Error(s.err());
    await sleep(5);
  }
}

/** A metric's value from sluice's /metrics (0 while unreachable). */
export async function metric(port, name) {
  try {
    const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    return Number(new RegExp(`^${name}(?:\\{[^}]*\\})? ([0-9.e+-]+)$`, 'm').exec(text)?.[1] ?? 0);
  } catch {
    return 0;
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

/** Mean seconds per batch of each debug-logged stage timing (`--log-level debug`), if any. */
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

/**
 * Drains a backlog of n messages with `sluice run` on `sourceYaml`: timed from "reading from the
 * source" to sluice_messages_acked_total = n (rows durable in the WAL), then SIGTERM (flush,
 * exit 0) and a check that the Parquet output holds n orders and `items` purchases.
 */
export async function sluiceDrain(sourceYaml, n, { prefix = 'sluice-bench-', threads = 0, logLevel = 'info', items, brokerPids = () => [] } = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  try {
    await benchProject(dir, sourceYaml, threads);
    const port = 19000 + Math.floor(Math.random() * 1000);
    const s = startSluice(dir, port, logLevel);
    await untilReading(s);
    const t0 = performance.now();
    const cpu0 = { sluice: cpuSeconds(s.child.pid), broker: cpuOf(brokerPids()) };
    while ((await metric(port, 'sluice_messages_acked_total')) < n) {
      if (s.child.exitCode !== null) throw new Error(`sluice exited ${s.child.exitCode}: ${s.err().slice(-2000)}`);
      await sleep(10);
    }
    const secs = (performance.now() - t0) / 1000;
    const cpu = { consumer: cpuSeconds(s.child.pid) - cpu0.sluice, broker: cpuOf(brokerPids()) - cpu0.broker };
    s.child.kill('SIGTERM');
    const code = await s.exited;
    if (code !== 0) throw new Error(`sluice exited ${code}: ${s.err().slice(-2000)}`);
    const lines = s.lines();
    const done = lines.find((l) => l.msg === 'done');
    if (!done || done.messages < n) throw new Error(`sluice processed ${done?.messages} of ${n}`);
    const rows = await outputRows(dir);
    if (rows.orders !== n || (items !== undefined && rows.purchases !== items)) {
      throw new Error(`output: ${rows.orders} orders (want ${n}), ${rows.purchases} purchases (want ${items ?? 'any'})`);
    }
    return { rate: n / secs, secs, cpu, peak: s.peak(), rows, timings: stageTimings(lines) };
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
 * The flags every drain benchmark takes (plus `extra`: { name: default }): --messages (200,000),
 * --runs (5), --batch-size (10,000), --threads (sluice's default), --debug (1: sluice logs at debug
 * level and the per-batch stage timings are printed). Unknown flags exit 2.
 */
export function drainFlags(bench, extra = {}) {
  checkFlags(bench, ['messages', 'runs', 'batch-size', 'threads', 'debug', ...Object.keys(extra)]);
  const flags = { messages: arg('messages', 200_000), runs: arg('runs', 5), batch: arg('batch-size', 10_000), threads: arg('threads', 0), debug: arg('debug', 0) };
  for (const [k, def] of Object.entries(extra)) flags[k] = arg(k, typeof def === 'function' ? def(flags) : def);
  for (const k of ['messages', 'runs', 'batch']) {
    if (!Number.isInteger(flags[k]) || flags[k] < 1) {
      console.error(`--${k === 'batch' ? 'batch-size' : k} must be a whole number >= 1, got ${flags[k]}`);
      process.exit(2);
    }
  }
  return flags;
}

/**
 * Runs `flags.runs` alternating pairs — fill, bare consumer drain, fill, sluice drain of
 * `sourceYaml` — prints each run and the medians, and returns the summary (also written to
 * bench/results/<name>.json, with `extra()` merged in). `fill(n)` queues n messages (the
 * backlog of orderBodies(): `itemsIn(n)` line items); `bare(n)` drains them and returns msg/s.
 */
export async function drainBench({ name, title, baseline, flags, fill, bare, sourceYaml, itemsIn, brokerPids = () => [], extra = async () => ({}) }) {
  const TARGET = 0.8;
  const n = flags.messages;
  console.log(`${title} benchmark: ${n} order messages, batch_size ${flags.batch}, ${flags.runs} run(s)`);
  const b = [];
  const s = [];
  const peaks = [];
  const timings = [];
  // CPU microseconds per message of each side and of the broker while it served that side.
  const cpu = { bare: [], bareBroker: [], sluice: [], sluiceBroker: [] };
  const perMessage = (secs) => Math.round((secs * 1e6) / n * 100) / 100;
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
    const got = await sluiceDrain(sourceYaml, n, { prefix: `sluice-bench-${name}-`, threads: flags.threads, logLevel: flags.debug ? 'debug' : 'info', items: itemsIn(n), brokerPids });
    cpu.sluice.push(perMessage(got.cpu.consumer));
    cpu.sluiceBroker.push(perMessage(got.cpu.broker));
    s.push(got.rate);
    peaks.push(got.peak);
    if (got.timings) timings.push(got.timings);
    console.log(`run ${r + 1}: ${baseline} ${Math.round(b[r])} msg/s, sluice ${Math.round(got.rate)} msg/s (ratio ${(got.rate / b[r]).toFixed(2)}), sluice peak RSS ${(got.peak / 2 ** 20).toFixed(0)} MiB, output ${got.rows.orders} orders + ${got.rows.purchases} purchases`);
    console.log(`       CPU µs per message: ${baseline} ${cpu.bare[r]}${brokerPids().length ? ` + broker ${cpu.bareBroker[r]}` : ''}; sluice ${cpu.sluice[r]}${brokerPids().length ? ` + broker ${cpu.sluiceBroker[r]}` : ''}`);
    if (got.timings) console.log(`       sluice ms per batch (mean): ${Object.entries(got.timings).map(([k, v]) => `${k} ${v}`).join(', ')}`);
  }
  const ratios = s.map((x, i) => Number((x / b[i]).toFixed(2)));
  const summary = {
    benchmark: name,
    messages: n,
    batch_size: flags.batch,
    runs: flags.runs,
    baseline,
    bare_msgs_per_s: Math.round(median(b)),
    sluice_msgs_per_s: Math.round(median(s)),
    ratio: Number((median(s) / median(b)).toFixed(2)),
    median_run_ratio: Number(median(ratios).toFixed(2)),
    run_ratios: ratios,
    bare_runs: b.map(Math.round),
    sluice_runs: s.map(Math.round),
    sluice_peak_rss_mib: Math.round(median(peaks) / 2 ** 20),
    cpu_us_per_message: { bare: median(cpu.bare), sluice: median(cpu.sluice), ...(brokerPids().length ? { broker_serving_bare: median(cpu.bareBroker), broker_serving_sluice: median(cpu.sluiceBroker) } : {}) },
    ...(timings.length ? { sluice_ms_per_batch: timings } : {}),
    ...(await extra()),
    machine: machine(),
  };
  console.log(`\nmedian: sluice ${summary.sluice_msgs_per_s} msg/s vs ${baseline} ${summary.bare_msgs_per_s} msg/s -> ratio ${summary.ratio} (target >= ${TARGET}); per-run ratios ${ratios.join(', ')}, median ${summary.median_run_ratio}`);
  const c = summary.cpu_us_per_message;
  console.log(`CPU µs per message (medians): ${baseline} ${c.bare}${c.broker_serving_bare !== undefined ? ` + broker ${c.broker_serving_bare}` : ''}, sluice ${c.sluice}${c.broker_serving_sluice !== undefined ? ` + broker ${c.broker_serving_sluice}` : ''}`);
  console.log(`machine: ${summary.machine.cpu}, ${summary.machine.cpus} CPUs, ${summary.machine.mem_gib} GiB, Node.js ${summary.machine.node}, 1-min load average at the end ${summary.machine.loadavg_1m_at_end}`);
  fs.mkdirSync(path.join(ROOT, 'bench/results'), { recursive: true });
  fs.writeFileSync(path.join(ROOT, `bench/results/${name}.json`), JSON.stringify(summary, null, 2) + '\n');
  return summary;
}

/**
 * The child process and temp dir a benchmark has in flight: an interrupt (Ctrl-C) stops the one
 * and removes the other. Call once; set `child` and `dir` as they come and go.
 */
export function cleanupOnInterrupt() {
  const inFlight = { child: undefined, dir: undefined };
  process.on('SIGINT', () => {
    if (inFlight.child && inFlight.child.exitCode === null) inFlight.child.kill('SIGKILL');
    if (inFlight.dir) fs.rmSync(inFlight.dir, { recursive: true, force: true });
    console.error('\ninterrupted');
    process.exit(130);
  });
  return inFlight;
}
