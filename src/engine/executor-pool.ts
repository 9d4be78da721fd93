import { spawn } from 'node:child_process';
import fs from 'node:fs';

// The subprocess pool of a handler: runs its tasks, each one process of the binary its config
// names (`executor.binary_path`: from config only, never from a message), with the task's
// arguments (never through a shell), stdin and env, at most `max_executors` at once; the rest
// wait in line. A task that outlives `task_timeout_seconds` is killed with its whole process
// group. Each task runs under coreutils' `timeout`, which kills it at its timeout (and a few
// seconds' grace) even when sluice itself is gone (SIGKILLed): no orphan outlives its timeout.

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

export interface PoolResult {
  /** The exit code; null when a signal ended the process. */
  exitCode: number | null;
  /** The signal that ended it (SIGKILL after a timeout), or null. */
  signal: NodeJS.Signals | null;
  stdout: string;
  /** stdout as bytes (a binary's output that is not text). */
  stdoutBytes: Buffer;
  stderr: string;
  /** Whether stdout or stderr went over PoolConfig.maxOutputBytes (what is kept is its start). */
  stdoutTruncated: boolean;
  stderrTruncated: boolean;
  durationMs: number;
  /** The pid of the task's process group leader. */
  pid: number | undefined;
  /** It ran past task_timeout_seconds and was killed. */
  timedOut: boolean;
  /** It could not be started (spawn error). */
  spawnError?: string;
}

/** How long `timeout` waits past a task's own timeout before it kills the task by itself (the pool kills it first while it runs). */
const GRACE_SECONDS = 2;

/** coreutils' timeout, when this machine has it. */
const TIMEOUT_BIN = ['/usr/bin/timeout', '/bin/timeout'].find((p) => fs.existsSync(p));

export interface PoolStats {
  running: number;
  queued: number;
}

export class ExecutorPool {
  private running = 0;
  private readonly queue: (() => void)[] = [];
  private readonly groups = new Set<number>();
  private closed = false;

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
      return await this.spawnTask(task);
    } finally {
      this.running--;
      this.queue.shift()?.();
      this.onChange(this.stats());
    }
  }

  private spawnTask(task: PoolTask): Promise<PoolResult> {
    const { binaryPath, taskTimeoutSeconds, maxOutputBytes } = this.config;
    const started = performance.now();
    const [cmd, args] = TIMEOUT_BIN ? [TIMEOUT_BIN, ['--signal=KILL', `${taskTimeoutSeconds + GRACE_SECONDS}s`, binaryPath, ...task.args]] : [binaryPath, task.args];
    return new Promise<PoolResult>((resolve) => {
      if (this.closed) {
        resolve(failed('the pool is closed', started));
        return;
      }
      const child = spawn(cmd, args, { detached: true, env: { ...process.env, ...this.config.env, ...task.env }, stdio: ['pipe', 'pipe', 'pipe'] });
      const pid = child.pid;
      if (pid !== undefined) this.groups.add(pid);
      const out = capture(maxOutputBytes);
      const err = capture(maxOutputBytes);
      child.stdout.on('data', out.add);
      child.stderr.on('data', err.add);
      let timedOut = false;
      const timer = setTimeout(() => {
        timedOut = true;
        killGroup(pid);
      }, taskTimeoutSeconds * 1000);
      let spawnError: string | undefined;
      child.on('error', (e) => {
        spawnError = e.message;
      });
      // A binary that does not read its stdin closes it: that is not the task's failure.
      child.stdin.on('error', () => {});
      if (task.stdin !== undefined) child.stdin.end(task.stdin);
      else child.stdin.end();
      child.on('close', (code, signal) => {
        clearTimeout(timer);
        if (pid !== undefined) this.groups.delete(pid);
        // `timeout` reports a binary it could not start as 126 (not executable) or 127 (not found).
        if (TIMEOUT_BIN && (code === 126 || code === 127) && !spawnError) {
          const text = err.text();
          if (/timeout: failed to run command/.test(text)) spawnError = text.trim().replace(/^timeout: /, '');
        }
        resolve({
          exitCode: code,
          signal,
          stdout: out.text(),
          stdoutBytes: out.bytes(),
          stderr: err.text(),
          stdoutTruncated: out.truncated(),
          stderrTruncated: err.truncated(),
          durationMs: Math.round(performance.now() - started),
          pid,
          timedOut,
          ...(spawnError ? { spawnError } : {}),
        });
      });
    });
  }

  /** Kills every task still running (with its process group) and refuses new ones. */
  close(): void {
    this.closed = true;
    for (const pid of this.groups) killGroup(pid);
    for (const wake of this.queue.splice(0)) wake();
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

function killGroup(pid: number | undefined): void {
  if (pid === undefined) return;
  try {
    process.kill(-pid, 'SIGKILL');
  } catch {
    // Already gone.
  }
}

/** Keeps the first `max` bytes of a stream, and whether there were more. */
function capture(max: number): { add: (b: Buffer) => void; text: () => string; bytes: () => Buffer; truncated: () => boolean } {
  const chunks: Buffer[] = [];
  let size = 0;
  let over = false;
  return {
    add: (b: Buffer) => {
      if (size >= max) {
        over = true;
        return;
      }
      const keep = b.length <= max - size ? b : b.subarray(0, max - size);
      if (keep.length < b.length) over = true;
      chunks.push(keep);
      size += keep.length;
    },
    text: () => Buffer.concat(chunks).toString('utf8'),
    bytes: () => Buffer.concat(chunks),
    truncated: () => over,
  };
}
