import type { MessageMeta } from '../connectors/types.js';

// What a handler is written against: a TypeScript (or JavaScript) module in a project's
// handlers/ directory, `export default defineHandler({...})`, is a step of the DAG beside the
// SQL models. It reads one relation (`incoming`, a source or a model), row by row, and what it
// returns is its own relation, which SQL models read with ref() and which goes to its sinks
// like a model's rows. The package's entry point (src/index.ts) exports these.

/** A schema a handler's input or output is checked against: a zod schema (anything with zod's safeParse). */
export interface HandlerSchema<T> {
  safeParse(value: unknown): { success: true; data: T } | { success: false; error: { issues: readonly { path: readonly PropertyKey[]; message: string }[] } };
}

/** The relation a handler reads: `incoming`, a source, or a model's output. */
export type HandlerInput = { kind: 'incoming' } | { kind: 'source'; name: string } | { kind: 'ref'; name: string };

/** A model's output, as a handler's input: `from: ref('orders')`. */
export function ref(name: string): HandlerInput {
  return { kind: 'ref', name };
}

/** A source's messages, as a handler's input: `from: source('payments')`. */
export function source(name: string): HandlerInput {
  return { kind: 'source', name };
}

/** One row a handler is given, and the message it comes from. */
export interface HandlerMessage<In> {
  /** The row (checked against the handler's `input` schema when it has one, and as that schema parses it). */
  value: In;
  /** The source message's payload, as it arrived (text). */
  raw: string;
  /** The source message's metadata (topic, key, partition, offset, headers, timestamp), as its source gives them. */
  meta: MessageMeta;
  /** Where the message is in its source (file and line, partition and offset, stream id, ...): what the DLQ records. */
  position: Record<string, unknown>;
  /** The source the message came from. */
  source: string;
}

/** What a handler is given besides its rows. */
export interface HandlerContext {
  /** The handler's name (its file's). */
  name: string;
  /** Registers user metrics, shown on the run's /metrics. */
  metrics: HandlerMetrics;
  /** Logs with the handler's name (and, per row, the message's position) attached. */
  log: {
    debug(msg: string, fields?: Record<string, unknown>): void;
    info(msg: string, fields?: Record<string, unknown>): void;
    warn(msg: string, fields?: Record<string, unknown>): void;
    error(msg: string, fields?: Record<string, unknown>): void;
  };
}

type Many<T> = T | T[] | null | undefined;
type Maybe<T> = T | Promise<T>;

/** One process of the handler's binary (overrides.<handler>.executor.binary_path), as arrange() asks for it. */
export interface TaskSpec<In = Record<string, unknown>> {
  /** Its id (default: made up, unique in the run). */
  id?: string;
  /** The binary's arguments (passed as they are, never through a shell). */
  args: string[];
  /** Written to its stdin. */
  stdin?: string | Uint8Array;
  /** Added to its environment. Values of names that look secret (password, secret, token, key, credential, dsn) are never shown. */
  env?: Record<string, string>;
  /** Anything the hooks want back with the result. */
  metadata?: Record<string, unknown>;
  /** The message (or messages) whose output this task makes: its rows go with the first of them, and its failure fails them all. */
  message: HandlerMessage<In> | HandlerMessage<In>[];
}

/** A task as it ran (or runs again). */
export interface Task<In = Record<string, unknown>> extends Omit<TaskSpec<In>, 'message' | 'id'> {
  id: string;
  messages: HandlerMessage<In>[];
  /** 1 on its first run, 2 on its first retry, ... */
  attempt: number;
}

/** What a task's process did. */
export interface TaskResult<In = Record<string, unknown>> {
  task: Task<In>;
  /** null when a signal ended it. */
  exitCode: number | null;
  signal: string | null;
  stdout: string;
  /** stdout as bytes, for a binary whose output is not text. */
  stdoutBytes: Uint8Array;
  stderr: string;
  /** stdout or stderr went past executor.max_output_bytes: what is here is its start. */
  stdoutTruncated: boolean;
  stderrTruncated: boolean;
  durationMs: number;
  /** The pid of its process group leader. */
  pid: number | undefined;
}

/** Why a task failed: a non-zero exit, a signal, its timeout, or a binary that could not start. */
export interface TaskError<In = Record<string, unknown>> {
  kind: 'exit' | 'signal' | 'timeout' | 'spawn';
  message: string;
  result: TaskResult<In>;
}

/** What onError() decides for a failed task: run it again (up to executor.max_retries), drop it (its messages go on without its rows), fail its messages (to the DLQ), or run these tasks instead. */
export type ErrorAction<In = Record<string, unknown>> = 'retry' | 'skip' | 'fail' | TaskSpec<In>[];

/** One message's tasks, all done (onMessageComplete). */
export interface MessageGroup<In = Record<string, unknown>> {
  message: HandlerMessage<In>;
  /** The results of its tasks that succeeded (skipped ones are not here). */
  results: TaskResult<In>[];
}

/** What the pool holds as arrange() is called. */
export interface Pending {
  running: number;
  queued: number;
}

/** The executor settings onStartup() may change (overrides.<handler>.executor; the binary is config's only). */
export interface ExecutorTuning {
  maxExecutors: number;
  taskTimeoutSeconds: number;
  windowSize: number;
  maxRetries: number;
}

/** A user metric the handler registers (prom-client's, on the run's /metrics). */
export interface HandlerMetrics {
  counter(opts: { name: string; help: string; labelNames?: string[] }): { inc(labels?: Record<string, string> | number, value?: number): void };
  gauge(opts: { name: string; help: string; labelNames?: string[] }): { set(labels: Record<string, string> | number, value?: number): void; inc(v?: number): void; dec(v?: number): void };
  histogram(opts: { name: string; help: string; labelNames?: string[]; buckets?: number[] }): { observe(labels: Record<string, string> | number, value?: number): void };
}

/** What a periodic task or onReady is given. */
export interface ReadyContext extends HandlerContext {
  /** Aborted when the run stops: a periodic task should stop waiting on it. */
  signal: AbortSignal;
}

/** A periodic task (see periodic()). */
export interface Periodic {
  readonly seconds: number;
  readonly onError: 'continue' | 'stop';
  readonly run: (ctx: ReadyContext) => unknown;
  readonly [PERIODIC_MARK]: true;
}

export const PERIODIC_MARK = Symbol.for('sluice.periodic');

/**
 * A task run every `seconds` while the handler runs: started after onReady, never two at once
 * (the next waits for the last to end), stopped when the run stops. A throw is logged; with
 * onError 'stop' the task then stops for good.
 */
export function periodic(opts: { seconds: number; onError?: 'continue' | 'stop' }, run: (ctx: ReadyContext) => unknown): Periodic {
  return Object.freeze({ seconds: opts.seconds, onError: opts.onError ?? 'continue', run, [PERIODIC_MARK]: true as const });
}

/** What a handler module defines (see defineHandler): `process`, or `arrange` and the hooks of a subprocess pool. */
export interface HandlerSpec<In, Out> {
  /** The relation it reads; `incoming` when not given (the project's single source). */
  from?: HandlerInput;
  /** Its input rows are checked against this (a zod schema); a row that fails sends its message to the DLQ with the schema's error. */
  input?: HandlerSchema<In>;
  /** Its output rows are checked against this; a row that fails sends the message it came from to the DLQ. */
  output?: HandlerSchema<Out>;
  /** Shown by `models list`, `docs` and lineage. */
  description?: string;
  /**
   * Called once per input row: returns the rows it makes of it (none, one or several), or a
   * promise of them. A throw sends the row's message to the DLQ with the error; the batch goes
   * on without it. Called again for the same message after a crash (at-least-once).
   */
  process?(message: HandlerMessage<In>, ctx: HandlerContext): Maybe<Many<Out>>;
  /** Before anything starts: may change the pool's settings (return the changes). */
  // biome-ignore lint/suspicious/noConfusingVoidType: a hook that changes nothing returns nothing
  onStartup?(config: ExecutorTuning): Maybe<Partial<ExecutorTuning> | undefined | void>;
  /** Once the sinks are connected, before the first message. */
  onReady?(ctx: ReadyContext): Maybe<void>;
  /** A window of messages (executor.window_size at most) into tasks for the pool. */
  arrange?(messages: HandlerMessage<In>[], pending: Pending, ctx: HandlerContext): Maybe<TaskSpec<In>[]>;
  /** A task that exited 0: the rows it makes (they go with its first message). */
  onTaskComplete?(result: TaskResult<In>, ctx: HandlerContext): Maybe<Many<Out>>;
  /** Every task of one message done (fan-in): the rows it makes (they go with that message). */
  onMessageComplete?(group: MessageGroup<In>, ctx: HandlerContext): Maybe<Many<Out>>;
  /** Every task of a window done: the rows it makes (they go with the window's last message). */
  onWindowComplete?(results: TaskResult<In>[], messages: HandlerMessage<In>[], ctx: HandlerContext): Maybe<Many<Out>>;
  /** A task failed: retry it, skip it, fail its messages (the default), or run other tasks instead. */
  onError?(task: Task<In>, error: TaskError<In>, ctx: HandlerContext): Maybe<ErrorAction<In>>;
  /** The source's partitions this worker reads grew (called before the batch that first shows them). */
  onAssign?(partitions: string[], ctx: HandlerContext): Maybe<void>;
  /** The source's partitions this worker reads shrank. */
  onRevoke?(partitions: string[], ctx: HandlerContext): Maybe<void>;
  /** Periodic tasks, by name: periodic({ seconds }, fn). */
  periodic?: Record<string, Periodic>;
}

/** The mark defineHandler leaves, shared by every copy of this module (a handler may load its own copy). */
export const HANDLER_MARK = Symbol.for('sluice.handler');

export type Handler<In = Record<string, unknown>, Out = Record<string, unknown>> = HandlerSpec<In, Out> & { readonly [HANDLER_MARK]: true };

/** Defines a handler: `export default defineHandler({ from, input, output, process })` in handlers/<name>.ts. */
export function defineHandler<In = Record<string, unknown>, Out = Record<string, unknown>>(spec: HandlerSpec<In, Out>): Handler<In, Out> {
  return Object.freeze({ ...spec, [HANDLER_MARK]: true as const });
}

/** Why `value` (a handler module's default export) is not a handler; undefined when it is one. */
export function handlerProblem(value: unknown): string | undefined {
  if (!value || typeof value !== 'object' || !(HANDLER_MARK in value))
    return 'its default export is not a handler: write `export default defineHandler({ ... })` (import { defineHandler } from "sluice")';
  const h = value as Handler;
  const has = (k: keyof HandlerSpec<unknown, unknown>) => typeof h[k] === 'function';
  if (has('process') === has('arrange'))
    return has('process')
      ? 'the handler has both process() and arrange(): process() makes rows itself, arrange() makes tasks for the subprocess pool; keep one'
      : 'the handler has neither process(message, ctx) nor arrange(messages, pending, ctx)';
  if (has('arrange') && !has('onTaskComplete') && !has('onMessageComplete') && !has('onWindowComplete'))
    return 'the handler arranges tasks but has no onTaskComplete, onMessageComplete or onWindowComplete to make rows of their results';
  for (const [k, p] of Object.entries(h.periodic ?? {})) {
    if (!p || !(PERIODIC_MARK in p) || !(p.seconds > 0)) return `its periodic task ${k} is not periodic({ seconds }, fn) with seconds > 0`;
  }
  for (const k of ['input', 'output'] as const) {
    if (h[k] !== undefined && typeof (h[k] as { safeParse?: unknown }).safeParse !== 'function') return `its ${k} is not a schema (a zod schema, with safeParse)`;
  }
  const f = h.from;
  if (f !== undefined) {
    const ok = f && typeof f === 'object' && (f.kind === 'incoming' || ((f.kind === 'ref' || f.kind === 'source') && typeof f.name === 'string' && f.name !== ''));
    if (!ok) return 'its `from` is not a relation: use ref("model") or source("name"), or leave it out for incoming';
  }
  return undefined;
}

/** A schema error as one line: each issue's path and message. */
export function schemaError(error: { issues: readonly { path: readonly PropertyKey[]; message: string }[] }): string {
  return error.issues.map((i) => `${i.path.length ? `$.${i.path.map(String).join('.')}` : '$'}: ${i.message}`).join('; ');
}
