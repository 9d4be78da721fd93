import { fork, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import { notStarted, type RunDone, type RunRequest, type TaskOutcome } from './task-outcome.js';

// The subprocess pool of a handler: runs its tasks, each one process of the binary its config
// names (`executor.binary_path`: from config only, never from a message), with the task's
// arguments (never through a shell), stdin and env, at most `max_executors` at once; the rest
// wait in line. The tasks are started by a small process of the pool's own (spawner-child.ts):
// forking from sluice, which holds DuckDB's memory, would cost a copy of its page tables per
// task. Each task leads a process group of its own; one that outlives `task_timeout_seconds` is
// killed with its whole group, and so is what a task leaves running when it ends. When sluice is
// gone (even SIGKILLed) the spawner's channel closes and it kills every group still running: no
// task outlives sluice.

export interface PoolConfig {
  binaryPath: string;
  maxExecutors: number;
  taskTimeoutSeconds: number;
  /** Added to every task's environment (never logged). */
  env: Record<string, string>;
  /** stdout and stderr are each kept up to this many bytes; the rest is dropped and the result says so. */
  maxOutputBytes: number;
}

/** What a task runs: the configured binary with these arguments. */
export interface PoolTask {
  id: string;
  args: string[];
  stdin?: string | Uint8Array;
  /** Added to the process's environment, over the pool's. */
  env?: Record<string, string>;
}

export interface PoolResult extends TaskOutcome {
  stdout: string;
  /** stdout as bytes (a binary's output that is not text). */
  stdoutBytes: Buffer;
  stderr: string;
}

/** The spawner's module: beside this one once built; under test (this module as TypeScript source), the built one. */
function spawnerModule(): string {
  const here = fileURLToPath(new URL('./spawner-child.js', import.meta.url));
  if (fs.existsSync(here)) return here;
  return fileURLToPath(new URL('../../dist/engine/spawner-child.js', import.meta.url));
}

export interface PoolStats {
  running: number;
  queued: number;
}

export class ExecutorPool {
  private running = 0;
  private readonly queue: (() => void)[] = [];
  private closed = false;
  private spawner?: ChildProcess;
  private readonly waiting = new Map<number, (d: RunDone) => void>();
  private seq = 0;

  constructor(
    readonly config: PoolConfig,
    /** Called as a task starts, ends, or joins the line (for gauges). */
    private readonly onChange: (s: PoolStats) => void = () => {},
  ) {}

  stats(): PoolStats {
    return { running: this.running, queued: this.queue.length };
  }

  /** Runs a task once a slot is free. */
  async run(task: PoolTask): Promise<PoolResult> {
    if (this.running >= this.config.maxExecutors) {
      await new Promise<void>((resolve) => {
        this.queue.push(resolve);
        this.onChange(this.stats());
      });
    }
    this.running++;
    this.onChange(this.stats());
    try {
      return await this.runNow(task);
    } finally {
      this.running--;
      this.queue.shift()?.();
      this.onChange(this.stats());
    }
  }

  /** The spawner, forked with the first task: its own process group, so that a signal to sluice's does not reach it. */
  private spawnerProcess(): ChildProcess {
    if (this.spawner?.connected) return this.spawner;
    const child = fork(spawnerModule(), [], { detached: true, stdio: ['ignore', 'ignore', 'inherit', 'ipc'], serialization: 'advanced', execArgv: [] });
    child.on('message', (d: RunDone) => {
      const done = this.waiting.get(d.id);
      this.waiting.delete(d.id);
      this.holdOpen();
      done?.(d);
    });
    const lost = () => {
      if (this.spawner === child) this.spawner = undefined;
      // Tasks it had: they are gone with it.
      for (const [id, done] of this.waiting) {
        this.waiting.delete(id);
        done(notStarted(id, 'the process that starts the tasks ended'));
      }
    };
    child.on('exit', lost);
    child.on('error', lost);
    child.unref();
    this.spawner = child;
    return child;
  }

  /** The spawner's channel keeps this process alive only while tasks run (a run that is done exits). */
  private holdOpen(): void {
    const channel = (this.spawner as unknown as { channel?: { ref(): void; unref(): void } } | undefined)?.channel;
    if (this.waiting.size > 0) channel?.ref();
    else channel?.unref();
  }

  private runNow(task: PoolTask): Promise<PoolResult> {
    if (this.closed) return Promise.resolve(poolResult(notStarted(0, 'the pool is closed')));
    const { binaryPath, taskTimeoutSeconds, maxOutputBytes } = this.config;
    const id = ++this.seq;
    const req: RunRequest = {
      op: 'run',
      id,
      cmd: binaryPath,
      args: task.args,
      env: { ...this.config.env, ...task.env },
      ...(task.stdin !== undefined ? { stdin: task.stdin } : {}),
      timeoutMs: taskTimeoutSeconds * 1000,
      maxOutputBytes,
    };
    return new Promise<PoolResult>((resolve) => {
      this.waiting.set(id, (d) => resolve(poolResult(d)));
      const spawner = this.spawnerProcess();
      this.holdOpen();
      spawner.send(req);
    });
  }

  /** Kills every task still running (with its process group) and refuses new ones: the spawner ends. */
  close(): void {
    this.closed = true;
    for (const wake of this.queue.splice(0)) wake();
    if (this.spawner?.connected) this.spawner.send({ op: 'close' });
    this.spawner = undefined;
  }
}

/** What the spawner said of a task, as the pool's result: stdout decoded when a hook reads it (a binary's output may be bytes only). */
function poolResult(d: RunDone): PoolResult {
  const stdout = Buffer.from(d.stdout.buffer, d.stdout.byteOffset, d.stdout.byteLength);
  let text: string | undefined;
  const { op: _, id: __, stdout: ___, stderr, spawnError, ...outcome } = d;
  return {
    ...outcome,
    get stdout() {
      text ??= stdout.toString('utf8');
      return text;
    },
    stdoutBytes: stdout,
    stderr: Buffer.from(stderr.buffer, stderr.byteOffset, stderr.byteLength).toString('utf8'),
    ...(spawnError ? { spawnError } : {}),
  };
}
