import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ExecutorPool, type PoolConfig } from '../../src/engine/executor-pool.js';
import { ROOT, processesUnder, tempDir, until } from '../helpers/cli.js';

// The subprocess pool against real programs (coreutils, sh): output, exit codes, signals,
// timeouts that kill the whole process group, the output cap, the concurrency bound, and no
// orphan left past its timeout when the process holding the pool is SIGKILLed.

const root = tempDir('sluice-pool-');
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

const cfg = (over: Partial<PoolConfig>): PoolConfig => ({ binaryPath: '/usr/bin/sha256sum', maxExecutors: 2, taskTimeoutSeconds: 10, env: {}, maxOutputBytes: 1 << 20, ...over });

/** Whether a process (or, negative, a process group) still exists. */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe('executor pool', () => {
  it('runs the binary with the task arguments and stdin; gives exit code, output, duration and pid', async () => {
    const pool = new ExecutorPool(cfg({}));
    const text = 'sluice executor pool\n'.repeat(1000);
    const r = await pool.run({ id: 't1', args: ['-'], stdin: text });
    expect(r.exitCode).toBe(0);
    expect(r.signal).toBeNull();
    expect(r.stdout.split(' ')[0]).toBe(crypto.createHash('sha256').update(text).digest('hex'));
    expect(r.pid).toBeGreaterThan(0);
    expect(r.durationMs).toBeGreaterThanOrEqual(0);
    // A failing run: the program's own exit code and stderr.
    const bad = await pool.run({ id: 't2', args: [path.join(root, 'missing-file')] });
    expect(bad.exitCode).toBe(1);
    expect(bad.stderr).toContain('No such file or directory');
    expect(bad.timedOut).toBe(false);
  });

  it("a task's environment is sluice's, plus the pool's env, plus the task's", async () => {
    const pool = new ExecutorPool(cfg({ binaryPath: '/usr/bin/env', env: { POOL_LEVEL: 'pool', BOTH: 'pool' } }));
    try {
      const r = await pool.run({ id: 'env', args: [], env: { TASK_LEVEL: 'task', BOTH: 'task' } });
      const env = new Map(
        r.stdout
          .trim()
          .split('\n')
          .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
      );
      expect([env.get('POOL_LEVEL'), env.get('TASK_LEVEL'), env.get('BOTH'), env.get('PATH')]).toEqual(['pool', 'task', 'task', process.env.PATH]);
    } finally {
      pool.close();
    }
  });

  it('a task past its timeout is killed with its process group; a task killed by a signal says which', async () => {
    const pool = new ExecutorPool(cfg({ binaryPath: '/bin/sh', taskTimeoutSeconds: 1 }));
    const t0 = Date.now();
    // The shell starts a grandchild in the background: the timeout must take it too.
    const r = await pool.run({ id: 'slow', args: ['-c', 'sleep 30 & echo $!; wait'] });
    expect(r.timedOut).toBe(true);
    expect(r.signal).toBe('SIGKILL');
    expect(Date.now() - t0).toBeLessThan(5000);
    const grandchild = Number(r.stdout.trim());
    expect(grandchild).toBeGreaterThan(0);
    await until(() => !alive(grandchild), 3000, 50, 'the background sleep to be killed with its group');
    const sig = await pool.run({ id: 'segv', args: ['-c', 'kill -SEGV $$'] });
    expect(sig.signal).toBe('SIGSEGV');
    expect(sig.exitCode).toBeNull();
    expect(sig.timedOut).toBe(false);
  });

  it('keeps at most max_output_bytes of stdout and says it cut; a binary that cannot start is a spawn error', async () => {
    const pool = new ExecutorPool(cfg({ binaryPath: '/usr/bin/head', maxOutputBytes: 1000 }));
    const r = await pool.run({ id: 'big', args: ['-c', '5000000', '/dev/zero'] });
    expect(r.exitCode).toBe(0);
    expect(r.stdoutBytes.length).toBe(1000);
    expect(r.stdoutTruncated).toBe(true);
    expect(r.stderrTruncated).toBe(false);
    const missing = new ExecutorPool(cfg({ binaryPath: path.join(root, 'no-such-binary') }));
    const m = await missing.run({ id: 'x', args: [] });
    expect(m.spawnError).toMatch(/no-such-binary/);
  });

  it('runs at most max_executors tasks at once; the rest wait in line', async () => {
    let most = 0;
    let queued = 0;
    const pool = new ExecutorPool(cfg({ binaryPath: '/bin/sleep', maxExecutors: 2 }), (s) => {
      most = Math.max(most, s.running);
      queued = Math.max(queued, s.queued);
    });
    const t0 = Date.now();
    const rs = await Promise.all(Array.from({ length: 6 }, (_, i) => pool.run({ id: `s${i}`, args: ['0.3'] })));
    expect(rs.every((r) => r.exitCode === 0)).toBe(true);
    expect(most).toBe(2);
    expect(queued).toBe(4);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(850); // three rounds of 0.3 s
  });

  it('after a SIGKILL of the process holding the pool, a running task is killed at once by the spawner of the pool (no orphan)', async () => {
    const script = path.join(root, 'pool-holder.mjs');
    fs.writeFileSync(
      script,
      `import { ExecutorPool } from ${JSON.stringify(path.join(ROOT, 'dist/engine/executor-pool.js'))};
const pool = new ExecutorPool({ binaryPath: '/bin/sleep', maxExecutors: 1, taskTimeoutSeconds: 60, env: {}, maxOutputBytes: 1000 }, (s) => { if (s.running) setTimeout(() => console.log('running'), 100); });
pool.run({ id: 'orphan', args: ['60'] });
setInterval(() => {}, 1000);
`,
    );
    try {
      const holder = spawn(process.execPath, [script], { stdio: ['ignore', 'pipe', 'inherit'] });
      await new Promise<void>((resolve) => holder.stdout.once('data', () => resolve()));
      // The task: sleep 60, a child of the pool's spawner (the holder's child), leading its own process group.
      const group = await until(() => processesUnder(holder.pid!, 'sleep')[0], 10_000, 50, 'the task to start');
      expect(group).toBeGreaterThan(0);
      expect(alive(-group)).toBe(true);
      const killedAt = Date.now();
      holder.kill('SIGKILL');
      // Long before its timeout (60 s): the spawner kills it as soon as the holder is gone.
      await until(() => !alive(-group), 10_000, 50, 'the orphaned task to be killed by the spawner');
      expect(Date.now() - killedAt).toBeLessThan(10_000);
    } finally {
      fs.rmSync(script, { force: true });
    }
  });
});
