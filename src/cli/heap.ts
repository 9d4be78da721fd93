import { spawn } from 'node:child_process';
import os from 'node:os';
import v8 from 'node:v8';
import { onStopSignal } from './stop-signals.js';

/**
 * node.max_heap_mb of sluice.yml. V8 fixes its heap limit when the process starts, so a run
 * whose project asks for another limit starts itself again, as a child with
 * --max-old-space-size, and passes it its stop signals and its exit code. The child dies with
 * the parent: when the parent ends in any way (SIGKILL included), the IPC channel closes and
 * the child kills itself at once, as if it had been killed with it. The child does not read
 * the setting again (SLUICE_HEAP_CHILD).
 */
const CHILD = 'SLUICE_HEAP_CHILD';

/** True when this process should start itself again to get a heap of `mb` MiB. */
export function needsHeap(mb: number | undefined): mb is number {
  if (mb === undefined || process.env[CHILD]) return false;
  const limit = v8.getHeapStatistics().heap_size_limit / 2 ** 20;
  // V8 adds its young generation to the old-space size it is given: a few percent either way.
  return Math.abs(limit - mb) / mb > 0.15;
}

/** Runs this command again in a child with a heap of `mb` MiB; resolves with its exit code. */
export function runWithHeap(mb: number): Promise<number> {
  const args = [...process.execArgv.filter((a) => !a.startsWith('--max-old-space-size')), `--max-old-space-size=${mb}`, ...process.argv.slice(1)];
  const child = spawn(process.execPath, args, { stdio: ['inherit', 'inherit', 'inherit', 'ipc'], env: { ...process.env, [CHILD]: String(mb) } });
  onStopSignal((sig) => child.kill(sig));
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code, signal) => resolve(code ?? 128 + (signal ? (os.constants.signals[signal] ?? 0) : 0)));
  });
}

/**
 * In the child of runWithHeap: dies with its parent. bin/sluice.js calls this first thing, so
 * that a parent killed while the child still starts is noticed too.
 */
export function dieWithParent(): void {
  if (!process.env[CHILD] || !process.send) return;
  if (!process.connected) process.kill(process.pid, 'SIGKILL');
  process.once('disconnect', () => process.kill(process.pid, 'SIGKILL'));
  // The channel must not keep the process alive once the command is done.
  process.channel?.unref();
}
