import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { orderMessage } from '../../src/connectors/generator/generator-source.js';
import { query, sluiceAsync, sluiceBg, tempDir, until, waitExit, writeFiles } from '../helpers/cli.js';

// node.max_heap_mb: `sluice run` starts itself again as a child with that heap limit (V8 fixes
// it at start). The child must get the limit, pass back its exit code, take stop signals, and
// die with the parent however the parent ends, SIGKILL included.

const root = tempDir('sluice-heap-');
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

function project(name: string, follow: boolean): string {
  const dir = path.join(root, name);
  writeFiles(dir, {
    'sluice.yml': 'node:\n  max_heap_mb: 256\n',
    'config/sources.yml': `source:\n  type: file\n  path: data\n  batch_size: 100\n  batch_timeout_ms: 100\n${follow ? '  follow: true\n  poll_interval_ms: 50\n' : ''}  dlq: .sluice/dlq\n`,
    'config/sinks.yml': 'sink:\n  type: parquet\n  path: output\n',
    'config/models.yml': 'max_age_seconds: 0.2\n',
    'models/orders.sql': 'SELECT incoming.order_id FROM incoming\n',
    'data/a.ndjson': Array.from({ length: 500 }, (_, i) => orderMessage(i, 5)).join('\n') + '\n',
  });
  return dir;
}

function children(pid: number): number[] {
  try {
    return execFileSync('ps', ['-o', 'pid=', '--ppid', String(pid)], { encoding: 'utf8' })
      .split('\n')
      .map((x) => Number(x.trim()))
      .filter((x) => x > 0);
  } catch {
    return [];
  }
}

const alive = (pid: number) => fs.existsSync(`/proc/${pid}`) && !/State:\s+Z/.test(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));

describe('node.max_heap_mb', () => {
  it.concurrent('the run gets the heap limit, and its exit code and output are those of the run', async () => {
    const dir = project('limit', false);
    const r = await sluiceAsync(['run', '--project', dir, '--port', '0', '--log-json', '--log-level', 'debug']);
    expect(r.code, r.stderr.slice(-2000)).toBe(0);
    const events = r.stderr
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    const limits = events.find((e) => e.msg === 'memory limits');
    expect(limits, r.stderr.slice(-2000)).toBeDefined();
    // V8 adds its young generation to the old space it is given.
    expect(Number(limits!.heap_limit_mb)).toBeGreaterThanOrEqual(256);
    expect(Number(limits!.heap_limit_mb)).toBeLessThan(256 * 1.3);
    const [n] = await query(`SELECT count(*)::INT AS n FROM read_parquet('${dir}/output/orders/*.parquet')`);
    expect(n.n).toBe(500);
  });

  it.concurrent('SIGTERM reaches the run (it flushes and exits 0); SIGKILL of the parent kills the run at once', async () => {
    const dir = project('signals', true);
    const first = sluiceBg(['run', '--project', dir, '--port', '0']);
    const [child] = await until(() => children(first.pid!).length > 0 && children(first.pid!), 20_000);
    await until(() => fs.existsSync(path.join(dir, 'output/orders')) && fs.readdirSync(path.join(dir, 'output/orders')).length > 0, 20_000);
    first.kill('SIGTERM');
    const exit = await waitExit(first, 30_000);
    expect(exit, first.err().slice(-2000)).toEqual({ code: 0, signal: null });
    expect(first.err()).toMatch(/stopping: finishing the batch in flight/);
    expect(alive(child)).toBe(false);

    const second = sluiceBg(['run', '--project', dir, '--port', '0']);
    const [child2] = await until(() => children(second.pid!).length > 0 && children(second.pid!), 20_000);
    second.kill('SIGKILL');
    await waitExit(second);
    await until(() => !alive(child2), 5_000).catch(() => {
      throw new Error(`the run (pid ${child2}) outlived its SIGKILLed parent`);
    });
  });
});
