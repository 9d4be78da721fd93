import type { Logger } from 'pino';
import { SluiceError, errorMessage } from '../errors.js';
import { mergedExposition } from '../ops/metrics.js';
import { startServer, type Readiness } from '../ops/server.js';
import { Pipeline, type RunOptions, type RunSummary } from '../engine/pipeline.js';

export interface GroupMember {
  /** The source the pipeline reads: it names the pipeline in logs, /readyz, /metrics and errors. */
  source: string;
  options: Omit<RunOptions, 'signal' | 'log' | 'beforeWrites'>;
}

export interface GroupOptions {
  members: GroupMember[];
  log: Logger;
  /** HTTP port of the one ops server of the process; 0 = none. */
  port: number;
  /** Stops every pipeline gracefully (each finishes its batch in flight and flushes). */
  signal: AbortSignal;
  /** Called as each pipeline ends without an error, with its logger. */
  onEnd?: (source: string, summary: RunSummary, log: Logger) => void;
}

type State = 'starting' | 'running' | 'ended' | 'failed';

interface Member {
  source: string;
  pipeline: Pipeline;
  log: Logger;
  state: State;
  error?: unknown;
}

/**
 * Runs several pipelines in one process, one per source, each as it would run alone (its own
 * WAL, DLQ, sinks and DuckDB). They share one ops server: /readyz is ready when every pipeline
 * is, /metrics has each pipeline's samples labelled with its `source`. A stop signal stops them
 * all; when one fails, the others are stopped gracefully and the failure is thrown, naming its
 * source, once all have ended. Resolves when every pipeline has ended (finite sources end by
 * themselves).
 */
export async function runPipelines(opts: GroupOptions): Promise<Map<string, RunSummary>> {
  const stop = new AbortController();
  const relay = () => stop.abort();
  if (opts.signal.aborted) stop.abort();
  else opts.signal.addEventListener('abort', relay, { once: true });

  // Connecting a sink clears leftovers of interrupted writes in its scratch space and output:
  // no pipeline writes until every pipeline has connected its sinks (or ended trying).
  const sinksConnected = barrier(opts.members.length);
  const members = createMembers(opts, stop.signal, sinksConnected);
  const metrics = mergedExposition(() => members.map((m) => ({ source: m.source, registry: m.pipeline.registry })));

  const outcome: Outcome = { summaries: new Map(), failed: [], stoppedByFailure: [] };
  let server: Awaited<ReturnType<typeof startServer>> | undefined;
  let running = false;
  try {
    server = opts.port > 0 ? await startServer(opts.port, metrics, { ready: () => groupReadiness(members) }) : undefined;
    if (server) opts.log.info({ port: server.port, sources: members.map((m) => m.source) }, 'serving /healthz /readyz /metrics');
    running = true;
    await Promise.all(members.map((m) => runMember(m, { members, stop, outcome, arrive: sinksConnected.arrive, onEnd: opts.onEnd })));
  } finally {
    opts.signal.removeEventListener('abort', relay);
    await server?.close();
    // A pipeline owns the DuckDB handed to it once it runs; one that never ran leaves it here.
    if (!running) for (const { options } of opts.members) closeDuckDB(options.duckdb);
  }

  if (outcome.failed.length) throw groupFailure(outcome);
  return outcome.summaries;
}

/** What the pipelines of a group came to. */
interface Outcome {
  summaries: Map<string, RunSummary>;
  failed: Member[];
  /** The pipelines still going when a failure stopped them (not those that had already ended). */
  stoppedByFailure: Member[];
}

/** A promise that resolves once `count` distinct sources have arrived (a source arriving again counts once). */
function barrier(count: number): { arrive: (source: string) => void; all: Promise<void> } {
  let left = count;
  let open!: () => void;
  const all = new Promise<void>((resolve) => (open = resolve));
  const arrived = new Set<string>();
  const arrive = (source: string) => {
    if (arrived.has(source)) return;
    arrived.add(source);
    if (--left === 0) open();
  };
  return { arrive, all };
}

/** One pipeline per member, stopped by `signal`, each waiting at the barrier before its first write. */
function createMembers(opts: GroupOptions, signal: AbortSignal, sinksConnected: ReturnType<typeof barrier>): Member[] {
  return opts.members.map(({ source, options }) => {
    const log = opts.log.child({ pipeline: source });
    const m: Member = { source, log, state: 'starting', pipeline: undefined as unknown as Pipeline };
    m.pipeline = new Pipeline({
      ...options,
      log,
      signal,
      beforeWrites: () => {
        m.state = 'running';
        sinksConnected.arrive(source);
        return sinksConnected.all;
      },
    });
    return m;
  });
}

/** /readyz of the group: ready when every pipeline is (or has ended), with each one's state and reasons. */
function groupReadiness(members: Member[]): Readiness {
  const reasons: string[] = [];
  const sources: NonNullable<Readiness['sources']> = {};
  for (const m of members) {
    const r =
      m.state === 'starting'
        ? { ok: false, reasons: ['starting: connecting the sinks'] }
        : m.state === 'ended'
          ? { ok: true, reasons: [] }
          : m.state === 'failed'
            ? { ok: false, reasons: [`failed: ${errorMessage(m.error)}`] }
            : m.pipeline.ready();
    sources[m.source] = { state: m.state, ready: r.ok, reasons: r.reasons };
    reasons.push(...r.reasons.map((x) => `source ${m.source}: ${x}`));
  }
  return { ok: reasons.length === 0, reasons, sources };
}

/** Runs one member's pipeline to its end; its failure stops the others. Never throws. */
async function runMember(m: Member, group: { members: Member[]; stop: AbortController; outcome: Outcome; arrive: (source: string) => void; onEnd: GroupOptions['onEnd'] }): Promise<void> {
  const { outcome, stop } = group;
  try {
    const summary = await m.pipeline.run();
    m.state = 'ended';
    outcome.summaries.set(m.source, summary);
    group.onEnd?.(m.source, summary, m.log);
  } catch (err) {
    m.state = 'failed';
    m.error = err;
    outcome.failed.push(m);
    if (!stop.signal.aborted) {
      outcome.stoppedByFailure.push(...group.members.filter((x) => x.state === 'starting' || x.state === 'running'));
      m.log.error({ err }, outcome.stoppedByFailure.length ? `source ${m.source} failed; stopping the other sources` : `source ${m.source} failed`);
    }
    stop.abort();
  } finally {
    group.arrive(m.source);
  }
}

/** The error a group with failed pipelines ends with: each failure, and the sources it stopped. */
function groupFailure({ failed, stoppedByFailure }: Outcome): SluiceError {
  const first = failed[0].error;
  const code = first instanceof SluiceError ? first.code : 'INTERNAL';
  const message = failed.map((m) => `source ${m.source} failed: ${errorMessage(m.error)}`).join('; ');
  // Named only when the failure stopped them: a source that had already ended (or failed) was not.
  const stopped = stoppedByFailure.filter((m) => m.state !== 'failed').map((m) => m.source);
  const note = stopped.length === 0 ? '' : ` (${stopped.length === 1 ? `source ${stopped[0]} was` : `sources ${stopped.join(', ')} were`} stopped)`;
  return new SluiceError(code, message + note, { cause: first });
}

/**
 * Runs one pipeline, with the ops server on `port` (0: none) answering from it: /readyz is its
 * readiness (not ready while it starts and replays its WAL), /metrics its registry.
 */
export async function runPipeline(options: RunOptions, port: number): Promise<RunSummary> {
  const pipeline = new Pipeline(options);
  let server: Awaited<ReturnType<typeof startServer>> | undefined;
  try {
    server = port > 0 ? await startServer(port, pipeline.registry, { ready: () => pipeline.ready() }) : undefined;
  } catch (err) {
    closeDuckDB(options.duckdb);
    throw err;
  }
  if (server) options.log.info({ port: server.port }, 'serving /healthz /readyz /metrics');
  try {
    return await pipeline.run();
  } finally {
    await server?.close();
  }
}

function closeDuckDB(db: RunOptions['duckdb']): void {
  db?.conn.closeSync();
  db?.instance.closeSync();
}
