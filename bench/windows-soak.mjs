// Windows soak: N clickstream events (default 5,000,000; event time advancing 5 ms per event,
// so ~7 hours of event time) through the one-minute tumbling model and the session model with
// `sluice run`, sampling once a second the process's resident memory (VmRSS) and, from
// /metrics, the windowed models' state (rows, bytes of its files, open windows). A bounded state
// shows as flat lines: RSS and state stay the same from the first fifth of the run to the
// last. Prints the samples by fifths, the peaks, and writes bench/results/windows-soak.json.
//
//   node bench/run.mjs windows_soak [--messages 5000000]
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { arg, checkFlags, cleanupOnInterrupt, freePort, rss } from './lib.mjs';
import { LATENESS, WINDOW_MODELS, clicksFile } from './clicks.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const MiB = 2 ** 20;
checkFlags('windows_soak', ['messages']);
const N = arg('messages', 5_000_000);
const MODELS = ['revenue', 'sessions'];

const input = clicksFile(path.join(ROOT, 'bench', 'data'), N);
const inFlight = cleanupOnInterrupt();

/** The windowed models' gauges from /metrics: state rows, state bytes, open windows, acked messages. */
async function gauges(port) {
  try {
    const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    const sum = (name) => [...text.matchAll(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, 'gm'))].reduce((n, m) => n + Number(m[1]), 0);
    return { stateRows: sum('sluice_window_state_rows'), stateBytes: sum('sluice_window_state_bytes'), open: sum('sluice_window_open_windows'), acked: sum('sluice_messages_acked_total') };
  } catch {
    return undefined;
  }
}

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-bench-soak-'));
inFlight.dir = dir;
const p = path.join(dir, 'proj');
fs.mkdirSync(path.join(p, 'config'), { recursive: true });
fs.mkdirSync(path.join(p, 'models'), { recursive: true });
fs.writeFileSync(path.join(p, 'config/sources.yml'), `source:\n  type: file\n  path: ${JSON.stringify(input)}\n`);
fs.writeFileSync(path.join(p, 'config/sinks.yml'), `sink:\n  type: parquet\n  path: ${JSON.stringify(path.join(p, 'output'))}\n`);
fs.writeFileSync(path.join(p, 'config/models.yml'), `max_age_seconds: 10\noverrides:\n${MODELS.map((m) => `  ${m}:\n    window:\n      lateness: ${LATENESS}\n`).join('')}`);
for (const m of MODELS) fs.writeFileSync(path.join(p, 'models', `${m}.sql`), WINDOW_MODELS[`models/${m}.sql`]);
const port = await freePort();
console.log(`windows soak: ${N.toLocaleString('en-US')} events through ${MODELS.join(', ')} (lateness ${LATENESS}); sampling every second`);
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
// By fifths of the input read: the largest RSS and state within each.
const fifths = [1, 2, 3, 4, 5].map((k) => {
  const inFifth = samples.filter((s) => s.acked > ((k - 1) * N) / 5 && s.acked <= (k * N) / 5);
  const max = (f) => (inFifth.length ? Math.max(...inFifth.map(f)) : NaN);
  return {
    fifth: k,
    samples: inFifth.length,
    rss_mib: Math.round(max((s) => s.rss) / MiB),
    state_rows: max((s) => s.stateRows),
    state_kib: Math.round(max((s) => s.stateBytes) / 1024),
    open_windows: max((s) => s.open),
  };
});
const peak = (f) => Math.max(...samples.map(f));
const summary = {
  benchmark: 'windows_soak',
  date: new Date().toISOString(),
  events: N,
  models: MODELS,
  seconds: Number(secs.toFixed(1)),
  events_per_s: Math.round(N / secs),
  peak: { rss_mib: Math.round(peak((s) => s.rss) / MiB), state_rows: peak((s) => s.stateRows), state_kib: Math.round(peak((s) => s.stateBytes) / 1024), open_windows: peak((s) => s.open) },
  by_fifth: fifths,
  malloc_arena_max: process.env.MALLOC_ARENA_MAX ?? 'unset (glibc default: 8 per core)',
  machine: { cpu: os.cpus()[0]?.model ?? 'unknown', cpus: os.cpus().length, mem_total_gib: Number((os.totalmem() / 2 ** 30).toFixed(1)), node: process.version },
};
console.log(`\nMALLOC_ARENA_MAX ${summary.malloc_arena_max}`);
console.log(`ran ${secs.toFixed(1)} s (${summary.events_per_s.toLocaleString('en-US')} events/s); by fifth of the input (largest sample in each):`);
for (const f of fifths) console.log(`  ${f.fifth}/5: RSS ${f.rss_mib} MiB, state ${f.state_rows} rows in ${f.state_kib} KiB of files, ${f.open_windows} open windows (${f.samples} samples)`);
console.log(`peak: RSS ${summary.peak.rss_mib} MiB, state ${summary.peak.state_rows} rows, ${summary.peak.state_kib} KiB, ${summary.peak.open_windows} open windows`);
fs.mkdirSync(path.join(ROOT, 'bench', 'results'), { recursive: true });
fs.writeFileSync(path.join(ROOT, 'bench', 'results', `windows-soak${process.env.MALLOC_ARENA_MAX ? `-arena${process.env.MALLOC_ARENA_MAX}` : ''}.json`), `${JSON.stringify(summary, null, 2)}\n`);
