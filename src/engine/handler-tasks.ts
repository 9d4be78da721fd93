import { isSecretName } from '../util/secrets.js';
import type { ErrorAction, HandlerContext, HandlerMessage, HandlerSpec, Task, TaskError, TaskResult, TaskSpec } from '../project/handler-def.js';
import type { ExecutorSettings } from '../project/project-types.js';
import { cleanError } from './decoder.js';
import type { ExecutorPool, PoolResult } from './executor-pool.js';

// A handler's subprocess flow over the messages of one batch (drakkar's poll -> execute ->
// sink, inside sluice's batch): the messages in windows of executor.window_size, each window
// arranged into tasks; every task on the pool (at most max_executors at once, across windows);
// a failed task goes to onError (retry, skip, fail, or replacement tasks); then, per window,
// onTaskComplete for each task that succeeded, onMessageComplete per message (fan-in) and
// onWindowComplete. Whatever fails a message (a hook's throw, a task that fails for good, a row
// its output schema refuses) sends it to the DLQ with the reason; the others keep their rows.

type Msg = HandlerMessage<Record<string, unknown>>;
type Spec = HandlerSpec<Record<string, unknown>, Record<string, unknown>>;

/** What became of one message: its rows so far, or why it fails. */
export interface MessageState {
  rows: unknown[];
  error?: string;
}

/** What the flow needs of the handler's step. */
export interface TaskFlowEnv {
  name: string;
  spec: Spec;
  settings: ExecutorSettings;
  pool: ExecutorPool;
  ctx: HandlerContext;
  /** Runs a hook, timed (per hook) for /metrics. */
  hook<T>(name: string, fn: () => T | Promise<T>): Promise<T>;
  /** The rows a hook returned, checked against the output schema: the rows, or why they are refused. */
  accept(made: unknown): { rows: unknown[] } | { error: string };
  /** A task's outcome, for /metrics and the debug log. */
  observe(task: Task, status: 'ok' | 'failed' | 'timeout' | 'retried' | 'skipped', result?: PoolResult): void;
  /** A fresh task id. */
  nextId(): string;
}

/** Runs the handler's tasks for `messages`; returns each message's state. */
export async function runTaskFlow(env: TaskFlowEnv, messages: Msg[]): Promise<Map<Msg, MessageState>> {
  const state = new Map<Msg, MessageState>(messages.map((m) => [m, { rows: [] }]));
  const windows: Msg[][] = [];
  for (let i = 0; i < messages.length; i += env.settings.windowSize) windows.push(messages.slice(i, i + env.settings.windowSize));
  await Promise.all(windows.map((w) => runWindow(env, w, state)));
  return state;
}

function fail(state: Map<Msg, MessageState>, messages: Msg[], error: string): void {
  for (const m of messages) {
    const s = state.get(m);
    if (s && s.error === undefined) s.error = error;
  }
}

async function runWindow(env: TaskFlowEnv, window: Msg[], state: Map<Msg, MessageState>): Promise<void> {
  const { spec, ctx } = env;
  let specs: TaskSpec<Record<string, unknown>>[];
  try {
    specs = (await env.hook('arrange', () => spec.arrange!(window, env.pool.stats(), ctx))) ?? [];
  } catch (err) {
    fail(state, window, `handler ${env.name}: arrange() threw: ${cleanError(err)}`);
    return;
  }
  const made = toTasks(env, specs, window, 1);
  if ('error' in made) {
    fail(state, window, `handler ${env.name}: arrange() ${made.error}`);
    return;
  }
  const done = (await Promise.all(made.tasks.map((t) => runTask(env, t, state)))).flat();
  await completeWindow(env, window, done, state);
}

/** The hooks after a window's tasks: each task's rows, each message's, the window's. */
async function completeWindow(env: TaskFlowEnv, window: Msg[], done: TaskResult[], state: Map<Msg, MessageState>): Promise<void> {
  const { spec, ctx } = env;
  const add = (hook: string, to: Msg, made: unknown, failing: Msg[]) => {
    const a = env.accept(made);
    if ('error' in a) fail(state, failing, `handler ${env.name}: ${hook}() ${a.error}`);
    else state.get(to)?.rows.push(...a.rows);
  };
  const live = (m: Msg) => state.get(m)?.error === undefined;
  if (spec.onTaskComplete) {
    for (const r of done) {
      if (!r.task.messages.every(live)) continue;
      try {
        add('onTaskComplete', r.task.messages[0], await env.hook('onTaskComplete', () => spec.onTaskComplete!(r, ctx)), r.task.messages);
      } catch (err) {
        fail(state, r.task.messages, `handler ${env.name}: onTaskComplete() threw on task ${r.task.id}: ${cleanError(err)}`);
      }
    }
  }
  if (spec.onMessageComplete) {
    for (const m of window.filter(live)) {
      const results = done.filter((r) => r.task.messages.includes(m));
      try {
        add('onMessageComplete', m, await env.hook('onMessageComplete', () => spec.onMessageComplete!({ message: m, results }, ctx)), [m]);
      } catch (err) {
        fail(state, [m], `handler ${env.name}: onMessageComplete() threw: ${cleanError(err)}`);
      }
    }
  }
  const left = window.filter(live);
  if (spec.onWindowComplete && left.length > 0) {
    const results = done.filter((r) => r.task.messages.every(live));
    try {
      add('onWindowComplete', left[left.length - 1], await env.hook('onWindowComplete', () => spec.onWindowComplete!(results, left, ctx)), left);
    } catch (err) {
      fail(state, left, `handler ${env.name}: onWindowComplete() threw: ${cleanError(err)}`);
    }
  }
}

/** Task specs as tasks (checked: arguments are strings, messages are the window's). */
function toTasks(env: TaskFlowEnv, specs: unknown, window: Msg[], attempt: number): { tasks: Task[] } | { error: string } {
  if (!Array.isArray(specs)) return { error: `returned ${typeof specs}, not a list of tasks` };
  const tasks: Task[] = [];
  for (const s of specs as TaskSpec[]) {
    if (!s || typeof s !== 'object') return { error: `returned a task that is ${JSON.stringify(s)}` };
    if (!Array.isArray(s.args) || s.args.some((a) => typeof a !== 'string')) return { error: 'returned a task whose args are not a list of strings' };
    const messages = Array.isArray(s.message) ? s.message : s.message ? [s.message] : [];
    if (messages.length === 0 || messages.some((m) => !window.includes(m))) return { error: 'returned a task whose message is not one of the messages it was given' };
    const { message: _, id, ...rest } = s;
    tasks.push({ ...rest, id: id ?? env.nextId(), messages, attempt });
  }
  return { tasks };
}

/** Why a task's process failed; undefined when it exited 0. */
function taskError(r: PoolResult): TaskError['kind'] | undefined {
  if (r.spawnError) return 'spawn';
  if (r.timedOut) return 'timeout';
  if (r.signal) return 'signal';
  return r.exitCode === 0 ? undefined : 'exit';
}

function describeFailure(kind: TaskError['kind'], r: PoolResult, timeout: number): string {
  const tail = r.stderr.trim().slice(-300);
  const what =
    kind === 'spawn'
      ? `could not start: ${r.spawnError}`
      : kind === 'timeout'
        ? `ran past its timeout (${timeout} s) and was killed`
        : kind === 'signal'
          ? `was killed by ${r.signal}`
          : `exited with code ${r.exitCode}`;
  return `${what}${tail ? `; stderr: ${tail}` : ''}`;
}

/** Runs a task (and its retries and replacements); returns the results of those that succeeded. */
async function runTask(env: TaskFlowEnv, first: Task, state: Map<Msg, MessageState>): Promise<TaskResult[]> {
  let task = first;
  const { settings } = env;
  for (;;) {
    if (task.messages.every((m) => state.get(m)?.error !== undefined)) return [];
    const r = await env.pool.run({ id: task.id, args: task.args, stdin: task.stdin, env: task.env });
    const result: TaskResult = {
      task,
      exitCode: r.exitCode,
      signal: r.signal,
      // Decoded only when a hook reads it.
      get stdout() {
        return r.stdout;
      },
      stdoutBytes: r.stdoutBytes,
      stderr: r.stderr,
      stdoutTruncated: r.stdoutTruncated,
      stderrTruncated: r.stderrTruncated,
      durationMs: r.durationMs,
      pid: r.pid,
    };
    const kind = taskError(r);
    if (!kind) {
      env.observe(task, 'ok', r);
      return [result];
    }
    env.observe(task, kind === 'timeout' ? 'timeout' : 'failed', r);
    const message = describeFailure(kind, r, settings.taskTimeoutSeconds);
    let action: ErrorAction<Record<string, unknown>> = 'fail';
    if (env.spec.onError) {
      try {
        action = await env.hook('onError', () => env.spec.onError!(task, { kind, message, result }, env.ctx));
      } catch (err) {
        fail(state, task.messages, `handler ${env.name}: onError() threw on task ${task.id}: ${cleanError(err)}`);
        return [];
      }
    }
    const failed = `handler ${env.name}: task ${task.id} (attempt ${task.attempt}) ${message}`;
    if (action === 'retry') {
      if (task.attempt > settings.maxRetries) {
        fail(state, task.messages, `${failed}; no retry left (executor.max_retries: ${settings.maxRetries})`);
        return [];
      }
      env.observe(task, 'retried');
      task = { ...task, attempt: task.attempt + 1 };
      continue;
    }
    if (action === 'skip') {
      env.observe(task, 'skipped');
      return [];
    }
    if (Array.isArray(action)) {
      if (task.attempt > settings.maxRetries) {
        fail(state, task.messages, `${failed}; no replacement left (executor.max_retries: ${settings.maxRetries})`);
        return [];
      }
      const made = toTasks(env, action, task.messages, task.attempt + 1);
      if ('error' in made) {
        fail(state, task.messages, `handler ${env.name}: onError() ${made.error}`);
        return [];
      }
      return (await Promise.all(made.tasks.map((t) => runTask(env, t, state)))).flat();
    }
    if (action !== 'fail') {
      fail(state, task.messages, `handler ${env.name}: onError() returned ${JSON.stringify(action)?.slice(0, 60)}, not 'retry', 'skip', 'fail' or a list of tasks`);
      return [];
    }
    fail(state, task.messages, failed);
    return [];
  }
}

/** A task's env as it may be shown: values of names that look secret (and any *dsn*) masked. */
export function redactedEnv(env: Record<string, string> | undefined): Record<string, string> | undefined {
  if (!env) return undefined;
  return Object.fromEntries(Object.entries(env).map(([k, v]) => [k, isSecretName(k) || /dsn|credential/i.test(k) ? '****' : v]));
}
