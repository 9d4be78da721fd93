import { fork, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { RunDone, RunRequest, TaskOutcome } from './spawner-child.js';

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
        done({
          op: 'done',
          id,
          exitCode: null,
          signal: null,
          stdout: new Uint8Array(),
          stderr: new Uint8Array(),
          stdoutTruncated: false,
          stderrTruncated: false,
          durationMs: 0,
          pid: undefined,
          timedOut: false,
          spawnError: 'the process that starts the tasks ended',
        });
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
    const started = performance.now();
    if (this.closed) return Promise.resolve(failed('the pool is closed', started));
    const { binaryPath, taskTimeoutSeconds, maxOutputBytes } = this.config;
    const id = ++this.seq;
    const req: RunRequest = {
      op: 'run',
      id,
      cmd: binaryPath,
      args: task.args,
      env: { ...(process.env as Record<string, string>), ...this.config.env, ...task.env },
      ...(task.stdin !== undefined ? { stdin: task.stdin } : {}),
      timeoutMs: taskTimeoutSeconds * 1000,
      maxOutputBytes,
    };
    return new Promise<PoolResult>((resolve) => {
      this.waiting.set(id, (d) => {
        const stdout = Buffer.from(d.stdout.buffer, d.stdout.byteOffset, d.stdout.byteLength);
        const stderr = Buffer.from(d.stderr.buffer, d.stderr.byteOffset, d.stderr.byteLength);
        let text: string | undefined;
        resolve({
          exitCode: d.exitCode,
          signal: d.signal,
          // Decoded when a hook reads it (a binary's output may be bytes only).
          get stdout() {
            text ??= stdout.toString('utf8');
            return text;
          },
          stdoutBytes: stdout,
          stderr: stderr.toString('utf8'),
          stdoutTruncated: d.stdoutTruncated,
          stderrTruncated: d.stderrTruncated,
          durationMs: d.durationMs,
          pid: d.pid,
          timedOut: d.timedOut,
          ...(d.spawnError ? { spawnError: d.spawnError } : {}),
        });
      });
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

function failed(why: string, started: number): PoolResult {
  return {
    exitCode: null,
    signal: null,
    stdout: '',
    stdoutBytes: Buffer.alloc(0),
    stderr: '',
    stdoutTruncated: false,
    stderrTruncated: false,
    durationMs: Math.round(performance.now() - started),
    pid: undefined,
    timedOut: false,
    spawnError: why,
  };
}
