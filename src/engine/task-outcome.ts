// What the pool (executor-pool.ts) and the process that starts its tasks (spawner-child.ts) say
// to each other. Apart from both: the spawner's module acts on being loaded in a forked process.

export interface RunRequest {
  op: 'run';
  id: number;
  cmd: string;
  args: string[];
  /** Added to the environment this process has (sluice's, inherited at the fork). */
  env: Record<string, string>;
  stdin?: string | Uint8Array;
  timeoutMs: number;
  maxOutputBytes: number;
}

/** How a task's process ended (what the pool's result says besides its output). */
export interface TaskOutcome {
  /** The exit code; null when a signal ended the process. */
  exitCode: number | null;
  /** The signal that ended it (SIGKILL after a timeout), or null. */
  signal: NodeJS.Signals | null;
  /** Whether stdout or stderr went over the pool's maxOutputBytes (what is kept is its start). */
  stdoutTruncated: boolean;
  stderrTruncated: boolean;
  durationMs: number;
  /** The pid of the task's process (the leader of its process group). */
  pid: number | undefined;
  /** It ran past its timeout and was killed. */
  timedOut: boolean;
  /** It could not be started (spawn error). */
  spawnError?: string;
}

export interface RunDone extends TaskOutcome {
  op: 'done';
  id: number;
  stdout: Uint8Array;
  stderr: Uint8Array;
}

/** A task that never started: why, and nothing else. */
export function notStarted(id: number, why: string): RunDone {
  return {
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
    spawnError: why,
  };
}
