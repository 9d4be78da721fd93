import { spawn, type ChildProcessByStdio } from 'node:child_process';
import type { Writable } from 'node:stream';

// The subprocess pool of a handler: runs its tasks, each one process of the binary its config
// names (`executor.binary_path`: from config only, never from a message), with the task's
// arguments (never through a shell), stdin and env, at most `max_executors` at once; the rest
// wait in line. Each task leads a process group of its own; one that outlives
// `task_timeout_seconds` is killed with its whole group. A watchdog (one small `sh` per pool,
// outside sluice's process group) is told each task's group as it starts and ends: when sluice
// is gone (SIGKILLed), its end of the watchdog's stdin closes, and the watchdog kills the groups
// still running. So no task outlives sluice, and none its timeout while sluice runs.

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
  /** The pid of the task's process (the leader of its process group). */
  pid: number | undefined;
  /** It ran past task_timeout_seconds and was killed. */
  timedOut: boolean;
  /** It could not be started (spawn error). */
  spawnError?: string;
}

/**
 * The watchdog: reads `+<pgid>` as a task starts and `-<pgid>` as it ends; at the end of its
 * input (sluice closed it, or is gone) kills every group still listed. POSIX sh, no other program.
 */
const WATCHDOG = `groups=' '
while read -r line; do
  op=\${line%"\${line#?}"}; pg=\${line#?}
  case "$op" in
    +) groups="$groups$pg " ;;
    -) case "$groups" in *" $pg "*) groups="\${groups%% $pg *} \${groups#* $pg }" ;; esac ;;
  esac
done
for pg in $groups; do kill -9 "-$pg" 2>/dev/null; done`;

export interface PoolStats {
  running: number;
  queued: number;
}

export class ExecutorPool {
  private running = 0;
  private readonly queue: (() => void)[] = [];
  private readonly groups = new Set<number>();
  private closed = false;
  private watchdog?: ChildProcessByStdio<Writable, null, null>;

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

  /** Tells the watchdog (started with the first task) of a group that starts (`+`) or ends (`-`). */
  private watch(op: '+' | '-', pid: number): void {
    if (!this.watchdog) {
      // Its own process group: a signal to sluice's group does not reach it.
      this.watchdog = spawn('/bin/sh', ['-c', WATCHDOG], { detached: true, stdio: ['pipe', 'ignore', 'ignore'] });
      this.watchdog.stdin.on('error', () => {});
      // It must not keep a run that is done from exiting.
      this.watchdog.unref();
      (this.watchdog.stdin as unknown as { unref?: () => void }).unref?.();
    }
    this.watchdog.stdin.write(`${op}${pid}\n`);
  }

  private spawnTask(task: PoolTask): Promise<PoolResult> {
    const { binaryPath, taskTimeoutSeconds, maxOutputBytes } = this.config;
    const started = performance.now();
    return new Promise<PoolResult>((resolve) => {
      if (this.closed) {
        resolve(failed('the pool is closed', started));
        return;
      }
      const child = spawn(binaryPath, task.args, { detached: true, env: { ...process.env, ...this.config.env, ...task.env }, stdio: ['pipe', 'pipe', 'pipe'] });
      const pid = child.pid;
      if (pid !== undefined) {
        this.groups.add(pid);
        this.watch('+', pid);
      }
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
        if (pid !== undefined) {
          // What the task started and left behind ends with it.
          killGroup(pid);
          this.groups.delete(pid);
          this.watch('-', pid);
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

  /** Kills every task still running (with its process group), refuses new ones, and lets the watchdog go. */
  close(): void {
    this.closed = true;
    for (const pid of this.groups) killGroup(pid);
    for (const wake of this.queue.splice(0)) wake();
    this.watchdog?.stdin.end();
    this.watchdog = undefined;
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
