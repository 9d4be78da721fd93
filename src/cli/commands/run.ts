import v8 from 'node:v8';
import { Option, type Command } from 'commander';
import { SluiceError } from '../../errors.js';
import type { Project } from '../../project/project-loader.js';
import type { RunSummary } from '../../engine/pipeline.js';
import { defaultMemoryLimit, shareDuckDB } from '../../engine/duckdb.js';
import { runPipeline, runPipelines } from '../../runtime/pipeline-group.js';
import { createLogger, type Logger } from '../../ops/logger.js';
import { needsHeap, runWithHeap } from '../heap.js';
import { renderDryRun } from '../dry-run.js';
import { onStopSignal } from '../stop-signals.js';
import { scopeRun, type ScopedRun } from '../source-scope.js';
import { loadAndCheckKeep, type DuckDB } from '../project-check.js';
import type { CliContext, CommonOpts } from './context.js';

type RunOpts = CommonOpts & { model?: string[]; dryRun?: boolean; logJson?: boolean; logLevel: string; port?: string; source?: string[] };

/** `sluice run`. */
export function registerRun(program: Command, ctx: CliContext): void {
  ctx
    .withProject(program.command('run').description('run the pipeline: every source (each with the models it feeds) in this process'))
    .option('--model <name...>', 'run only these models (and the models they ref), and only the sources feeding them')
    .option('--dry-run', 'consume one batch (of each source), print the output, write and acknowledge nothing')
    .option('--log-json', 'JSON log lines (for production)')
    .addOption(new Option('--log-level <level>', 'log level').choices(['trace', 'debug', 'info', 'warn', 'error', 'TRACE', 'DEBUG', 'INFO', 'WARN', 'ERROR']).default('info'))
    .option('--port <port>', 'HTTP port for /healthz /readyz /metrics (0 = off; default from sluice.yml or 9400)')
    .option(
      '--source <name...>',
      'run only these sources and the models they feed (default: all; with several, each is a pipeline of its own, its WAL in <wal.path>/<source>, the same in one process or one process per source)',
    )
    .action(async (o: RunOpts) => {
      await run(o, ctx);
    });
}

async function run(o: RunOpts, { loadAndCheckKeep, setCode }: CliContext): Promise<void> {
  const log = createLogger({ json: o.logJson, level: o.logLevel });
  // Signals first: a stop during startup still ends with a flush and exit 0.
  const signal = stopOnSignal(log);
  const port = o.port !== undefined ? Number(o.port) : undefined;
  if (port !== undefined && (!Number.isInteger(port) || port < 0 || port > 65535)) throw new SluiceError('USAGE', `--port must be 0..65535, got ${o.port}`);
  const checked = await loadAndCheckKeep(o, { consumers: true });
  const { duckdb } = checked;
  if (needsHeap(checked.project.nodeMaxHeapMb)) {
    duckdb.conn.closeSync();
    duckdb.instance.closeSync();
    log.debug({ max_heap_mb: checked.project.nodeMaxHeapMb }, 'starting again with the heap limit of sluice.yml (node.max_heap_mb)');
    setCode(await runWithHeap(checked.project.nodeMaxHeapMb));
    return;
  }
  log.debug(
    {
      heap_limit_mb: Math.round(v8.getHeapStatistics().heap_size_limit / 2 ** 20),
      duckdb_memory_limit: checked.project.duckdb.memory_limit ?? defaultMemoryLimit(),
      uv_threadpool_size: threadPoolSize(),
    },
    'memory limits',
  );
  const runs = await scopeRuns(checked.project, o, duckdb, log);
  await runScoped(runs, o, { log, signal, port, projectPort: checked.project.port, duckdb });
}

/** How a program runs a project (see runProject): what `sluice run`'s flags say. */
export interface RunProjectOptions {
  /** The project directory (default: the current one). */
  project?: string;
  /** The target (environment) whose overrides apply. */
  target?: string;
  /** Only these sources and the models they feed (default: all). */
  sources?: string[];
  /** Only these models and the models they ref. */
  models?: string[];
  /** Port of /healthz /readyz /metrics; 0 (the default here) for none. */
  port?: number;
  /** Stops the run gracefully: the batch in flight is finished and every model flushed. */
  signal?: AbortSignal;
  /** Where the run logs (a pino logger); default: warnings and errors to stderr. */
  log?: Logger;
}

/**
 * Runs a project as `sluice run` does, in this process: loads and checks it (a ConfigError
 * lists every problem), then runs each of its pipelines until its sources end or `signal`
 * stops them. Resolves with each pipeline's summary, by its source.
 */
export async function runProject(opts: RunProjectOptions = {}): Promise<Map<string, RunSummary>> {
  const log = opts.log ?? createLogger({ level: 'warn' });
  const signal = opts.signal ?? new AbortController().signal;
  const o: RunOpts = { project: opts.project, target: opts.target, source: opts.sources, model: opts.models, logLevel: 'info' };
  const checked = await loadAndCheckKeep(o, { consumers: true });
  const runs = await scopeRuns(checked.project, o, checked.duckdb, log);
  return runScoped(runs, o, { log, signal, port: opts.port ?? 0, projectPort: checked.project.port, duckdb: checked.duckdb });
}

/** libuv's thread pool size: UV_THREADPOOL_SIZE as libuv reads it (bin/sluice.js sets it), else its default. */
function threadPoolSize(): number {
  const n = Number.parseInt(process.env.UV_THREADPOOL_SIZE ?? '', 10);
  return Number.isFinite(n) && n > 0 ? Math.min(n, 1024) : 4;
}

/** An abort signal that the first SIGINT or SIGTERM fires (logging that the run is stopping). */
function stopOnSignal(log: Logger): AbortSignal {
  const ac = new AbortController();
  const stop = (sig: string) => {
    if (ac.signal.aborted) return;
    log.info({ signal: sig }, 'stopping: finishing the batch in flight, then flushing');
    ac.abort();
  };
  onStopSignal(stop);
  return ac.signal;
}

/**
 * The pipelines to run (--source, --model); several share the project's DuckDB threads and
 * memory limit. Closes the DuckDB instance when that fails.
 */
async function scopeRuns(project: Project, o: RunOpts, duckdb: DuckDB, log: Logger): Promise<ScopedRun[]> {
  try {
    let runs = scopeRun(project, o.source, o.model);
    if (runs.length > 1) {
      // The pipelines of one process share the project's DuckDB threads and memory limit.
      const share = await shareDuckDB(project.duckdb, runs.length, duckdb.conn);
      await duckdb.conn.run(`SET threads = ${share.threads}; SET memory_limit = '${share.memory_limit}'`);
      runs = runs.map((r) => ({ ...r, project: { ...r.project, duckdb: { threads: share.threads, memory_limit: share.memory_limit } } }));
      log.info(
        { sources: runs.length, threads: share.total.threads, memory_limit: share.total.memory_limit, each: { threads: share.threads, memory_limit: share.memory_limit } },
        "the sources share DuckDB's threads and memory limit",
      );
      // Each pipeline keeps up to two DuckDB queries on libuv's pool, each holding a thread for
      // its whole length (see bin/sluice.js): past that, one source's file work waits on another's queries.
      const pool = threadPoolSize();
      if (!o.dryRun && pool < 2 * runs.length + 2) {
        log.warn(
          { sources: runs.length, uv_threadpool_size: pool },
          `${runs.length} sources in one process need a libuv thread pool of at least ${2 * runs.length + 2} threads: set UV_THREADPOOL_SIZE (or run some sources in another process with --source)`,
        );
      }
    }
    return runs;
  } catch (e) {
    duckdb.conn.closeSync();
    duckdb.instance.closeSync();
    throw e;
  }
}

interface RunEnv {
  log: Logger;
  signal: AbortSignal;
  /** --port, if given. */
  port: number | undefined;
  /** The port of sluice.yml (or its default). */
  projectPort: Project['port'];
  duckdb: DuckDB;
}

/** Runs one pipeline, or several in this process; a dry run prints each source's batch. */
async function runScoped(runs: ScopedRun[], o: RunOpts, { log, signal, port, projectPort, duckdb }: RunEnv): Promise<Map<string, RunSummary>> {
  const started = Date.now();
  const done = (summary: RunSummary, l: Logger) => {
    if (o.dryRun) return;
    const secs = (Date.now() - started) / 1000;
    l.info(
      {
        messages: summary.messages,
        dead_lettered: summary.deadLettered,
        redelivered: summary.redelivered,
        rows: summary.rows,
        flushes: summary.flushes,
        ...(summary.late ? { late: summary.late } : {}),
        seconds: Number(secs.toFixed(2)),
      },
      'done',
    );
  };
  const print = (s: string) => process.stdout.write(s);
  if (runs.length === 1) {
    const [r] = runs;
    const summary = await runPipeline({ project: r.project, log, models: r.models, scopedWorkerId: r.scopedWorkerId, dryRun: o.dryRun, signal, duckdb }, o.dryRun ? 0 : (port ?? r.project.port));
    if (o.dryRun) print(renderDryRun(summary.dryRun));
    done(summary, log);
    return new Map([[r.source, summary]]);
  }
  // Each source's dry run is printed whole, under its name, as soon as it has its batch.
  return runPipelines({
    members: runs.map((r, i) => ({
      source: r.source,
      options: { project: r.project, models: r.models, scopedWorkerId: r.scopedWorkerId, dryRun: o.dryRun, duckdb: i === 0 ? duckdb : undefined },
    })),
    log,
    port: o.dryRun ? 0 : (port ?? projectPort),
    signal,
    onEnd: (source, summary, l) => {
      if (o.dryRun) print(`== source ${source} ==\n${renderDryRun(summary.dryRun)}\n`);
      done(summary, l);
    },
  });
}
