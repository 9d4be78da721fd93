import { spawn } from 'node:child_process';
import { notStarted, type RunDone, type RunRequest } from './task-outcome.js';

// The process that starts a handler pool's tasks (see executor-pool.ts), forked by sluice with
// an IPC channel. Forking is what starting a process costs, and it grows with the memory of the
// process that forks (its page tables are copied): sluice holds DuckDB's hundreds of megabytes,
// this process next to nothing, so tasks start here. It also kills what they leave: a task's
// process group when the task ends or outlives its timeout, and every group still running when
// sluice is gone (the channel closes, also after a SIGKILL of sluice).

const groups = new Set<number>();

function killGroup(pid: number | undefined): void {
  if (pid === undefined) return;
  try {
    process.kill(-pid, 'SIGKILL');
  } catch {
    // Already gone.
  }
}

/** Keeps the first `max` bytes of a stream, and whether there were more. */
function capture(max: number): { add: (b: Buffer) => void; bytes: () => Buffer; truncated: () => boolean } {
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
    bytes: () => Buffer.concat(chunks),
    truncated: () => over,
  };
}

function run(req: RunRequest): void {
  const started = performance.now();
  let child: ReturnType<typeof spawn>;
  try {
    child = spawn(req.cmd, req.args, { detached: true, env: { ...process.env, ...req.env }, stdio: ['pipe', 'pipe', 'pipe'] });
  } catch (err) {
    reply(notStarted(req.id, String((err as Error).message ?? err)));
    return;
  }
  const pid = child.pid;
  if (pid !== undefined) groups.add(pid);
  const out = capture(req.maxOutputBytes);
  const err = capture(req.maxOutputBytes);
  child.stdout!.on('data', out.add);
  child.stderr!.on('data', err.add);
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    killGroup(pid);
  }, req.timeoutMs);
  let spawnError: string | undefined;
  child.on('error', (e) => {
    spawnError = e.message;
  });
  // A binary that does not read its stdin closes it: that is not the task's failure.
  child.stdin!.on('error', () => {});
  child.stdin!.end(req.stdin);
  child.on('close', (exitCode, signal) => {
    clearTimeout(timer);
    if (pid !== undefined) {
      // What the task started and left behind ends with it.
      killGroup(pid);
      groups.delete(pid);
    }
    const done: RunDone = {
      op: 'done',
      id: req.id,
      exitCode,
      signal,
      stdout: out.bytes(),
      stderr: err.bytes(),
      stdoutTruncated: out.truncated(),
      stderrTruncated: err.truncated(),
      durationMs: Math.round(performance.now() - started),
      pid,
      timedOut,
      ...(spawnError ? { spawnError } : {}),
    };
    reply(done);
  });
}

function reply(msg: RunDone): void {
  if (process.connected) process.send!(msg);
}

/** sluice is gone (or closed the pool): every task still running goes with it. */
function end(): void {
  for (const pid of groups) killGroup(pid);
  process.exit(0);
}

if (process.send) {
  process.on('message', (m: RunRequest | { op: 'close' }) => {
    if (m.op === 'run') run(m);
    else if (m.op === 'close') end();
  });
  process.on('disconnect', end);
}
