import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino, { type Logger } from 'pino';
import { afterAll, afterEach } from 'vitest';
import type { Sink, Source } from '../../src/connectors/types.js';
import { Pipeline, type RunSummary } from '../../src/engine/pipeline.js';
import { loadProject, type Project } from '../../src/project/project-loader.js';
import type { Clock } from '../../src/util/clock.js';
import { waitFor } from './wait.js';
import { writeFiles } from './cli.js';

// In-process runs of the engine's Pipeline: a project on a temp dir (real DuckDB, real WAL, real
// DLQ), with the source and the sinks given by the test, an injectable clock, and the run's
// structured log events and metrics at hand.

/** One structured log event of a run (pino's JSON object). */
export interface LogEvent {
  level: number;
  msg: string;
  [key: string]: unknown;
}

const LEVEL_NUM: Record<string, number> = { debug: 20, info: 30, warn: 40, error: 50 };

/** A logger that keeps every event (debug and up) as an object, in `events`. */
export function eventLogger(events: LogEvent[]): Logger {
  return pino({ level: 'debug', base: undefined }, { write: (line: string) => void events.push(JSON.parse(line) as LogEvent) });
}

/** The project files of an in-process test, with defaults for what the test leaves out. */
export const DEFAULT_FILES: Record<string, string> = {
  'sluice.yml': 'duckdb:\n  threads: 1\n  memory_limit: 256MiB\n',
  // The source block gives the batching keys and the DLQ (beside the WAL); the test's FakeSource replaces the file source itself.
  'config/sources.yml': 'source:\n  type: file\n  path: data/*.ndjson\n  batch_size: 100\n  batch_timeout_ms: 1000\n',
  'config/sinks.yml': 'sink:\n  type: parquet\n  path: out\n',
  // Every batch is flushed at once (size threshold of one byte): tests that look at flush age set their own.
  'config/models.yml': 'max_file_bytes: 1\n',
  'models/events.sql': 'SELECT incoming.id::BIGINT AS id, incoming.v::VARCHAR AS v FROM incoming\n',
};

/** A source block's YAML with the given keys (type file, as DEFAULT_FILES). */
export function sourceYaml(keys: Record<string, string | number>): string {
  const all: Record<string, string | number> = { type: 'file', path: 'data/*.ndjson', batch_size: 100, batch_timeout_ms: 1000, ...keys };
  return `source:\n${Object.entries(all)
    .map(([k, v]) => `  ${k}: ${v}`)
    .join('\n')}\n`;
}

/** A message of the default model: `{"id": n, "v": "m<n>"}`. */
export const msg = (n: number): string => JSON.stringify({ id: n, v: `m${n}` });
/** The row the default model makes of msg(n). */
export const row = (n: number): { id: string; v: string } => ({ id: String(n), v: `m${n}` });

const dirs: string[] = [];
const running = new Set<RunningPipeline>();

// Registered in the importing test file: runs a failed test left running are stopped after it,
// and the file's project dirs removed at its end.
afterEach(async () => {
  for (const r of [...running]) await r.stop().catch(() => {});
});
afterAll(() => {
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

/** Writes a project (DEFAULT_FILES overridden by `files`) into a new temp dir and loads it. */
export function testProject(files: Record<string, string> = {}): { dir: string; project: Project } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-inproc-'));
  dirs.push(dir);
  writeFiles(dir, { ...DEFAULT_FILES, ...files });
  return { dir, project: loadProject({ project: dir, env: {} }) };
}

export interface RunInProcessOptions {
  project: Project;
  source: Source;
  /** Sink name -> the sink to use for it (the project's config gives its policy). */
  sinks: Record<string, Sink>;
  clock?: Clock;
  walDir?: string;
}

/** A pipeline running in this process. */
export interface RunningPipeline {
  pipeline: Pipeline;
  /** Settles when the run ends (end of input, stop, or failure). */
  result: Promise<RunSummary>;
  /** The run's log events so far. */
  events: LogEvent[];
  /** Stops the run as SIGTERM does (finishing the batch in flight, flushing) and waits for its end. */
  stop(): Promise<RunSummary>;
  /** A metric of the run's registry, summed over the labels not given. */
  metric(name: string, labels?: Record<string, string>): Promise<number>;
  /** Waits for a log event with this msg (and matching `where`) and returns it. */
  event(msg: string | RegExp, opts?: { where?: (e: LogEvent) => boolean; timeoutMs?: number }): Promise<LogEvent>;
}

/** Starts a Pipeline with the test's source, sinks and clock on `project`. */
export function runInProcess(opts: RunInProcessOptions): RunningPipeline {
  const events: LogEvent[] = [];
  const stopper = new AbortController();
  const pipeline = new Pipeline({
    project: opts.project,
    log: eventLogger(events),
    signal: stopper.signal,
    sourceOverride: { source: opts.source, name: opts.project.sources[0].name },
    sinkOverrides: new Map(Object.entries(opts.sinks)),
    clock: opts.clock,
    walDir: opts.walDir,
  });
  const result = pipeline.run();
  const r: RunningPipeline = {
    pipeline,
    result,
    events,
    async stop() {
      stopper.abort();
      return result;
    },
    async metric(name, labels = {}) {
      // A histogram's samples (name_count, name_sum, name_bucket) are asked for by their own names.
      const family = pipeline.registry.getSingleMetric(name) ?? pipeline.registry.getSingleMetric(name.replace(/_(count|sum|bucket)$/, ''));
      if (!family) throw new Error(`no metric named ${name}`);
      const { values } = await family.get();
      return values
        .filter((v) => ((v as { metricName?: string }).metricName ?? name) === name && Object.entries(labels).every(([k, x]) => String((v.labels as Record<string, unknown>)[k]) === x))
        .reduce((n, v) => n + v.value, 0);
    },
    event(msg, { where, timeoutMs } = {}) {
      const matches = (e: LogEvent) => (typeof msg === 'string' ? e.msg === msg : msg.test(e.msg)) && (!where || where(e));
      return waitFor(`a log event ${String(msg)}`, () => events.find(matches), { timeoutMs, describe: () => events.slice(-10).map((e) => `${LEVEL_NAME[e.level] ?? e.level} ${e.msg}`) });
    },
  };
  running.add(r);
  void result.then(
    () => running.delete(r),
    () => running.delete(r),
  );
  return r;
}

const LEVEL_NAME = Object.fromEntries(Object.entries(LEVEL_NUM).map(([k, v]) => [v, k]));
