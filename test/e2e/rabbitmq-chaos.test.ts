import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { orderMessage } from '../../src/connectors/generator/generator-source.js';
import { query, sluice, sluiceBg, tempDir, until, waitExit, writeFiles } from '../helpers/cli.js';
import { deleteQueues, publish, queueDepth, rabbitSourceYaml, uniqueQueue } from '../helpers/rabbit.js';

// Chaos against the real broker: workers SIGKILLed at random moments while messages are
// queued, then restarted; afterwards every message's rows must be in the output.

const root = tempDir('sluice-rchaos-');
const queues: string[] = [];
afterAll(async () => {
  fs.rmSync(root, { recursive: true, force: true });
  await deleteQueues(...queues.flatMap((q) => [q, `${q}.dlq`]));
});

const N = 12_000;
const orders = Array.from({ length: N }, (_, i) => orderMessage(i, 9));

function project(name: string, queue: string, sinkExtra = ''): string {
  const p = path.join(root, name);
  writeFiles(p, {
    'config/sources.yml': rabbitSourceYaml(queue),
    'config/sinks.yml': `sink:\n  type: parquet\n  path: ./output\n${sinkExtra}`,
    'config/models.yml': 'max_file_bytes: 200000\nmax_age_seconds: 0.5\n',
    'models/orders.sql': 'SELECT incoming.order_id, incoming.user.id AS user_id FROM incoming\n',
  });
  return p;
}

async function chaos(p: string, queue: string, kills: number): Promise<number> {
  let done = 0;
  for (let i = 0; done < kills && i < kills * 3; i++) {
    const child = sluiceBg(['run', '--project', p, '--port', '0', '--log-level', 'warn'], { env: { SLUICE_WORKER_ID: 'w1' } });
    await new Promise((r) => setTimeout(r, 400 + Math.floor(Math.random() * 1200)));
    if (child.exitCode === null) {
      child.kill('SIGKILL');
      done++;
    }
    await waitExit(child);
  }
  // A last worker drains the queue and shuts down cleanly.
  const last = sluiceBg(['run', '--project', p, '--port', '0', '--log-json'], { env: { SLUICE_WORKER_ID: 'w1' } });
  await until(() => last.err().includes('reading from the source'), 60_000);
  await until(async () => (await queueDepth(queue)) === 0, 90_000, 200);
  await new Promise((r) => setTimeout(r, 700));
  last.kill('SIGTERM');
  const res = await waitExit(last, 60_000);
  expect(res, last.err().slice(-3000)).toEqual({ code: 0, signal: null });
  return done;
}

describe('rabbitmq chaos', () => {
  for (const dedupe of [true, false]) {
    it(`SIGKILLs a worker at least 10 times: no message lost${dedupe ? ', no duplicate with dedupe_key' : ', duplicates bounded'}`, async () => {
      const queue = uniqueQueue('sluice-chaos');
      queues.push(queue);
      await publish(queue, orders);
      const p = project(`chaos-${dedupe}`, queue, dedupe ? '  dedupe_key: order_id\n' : '');
      const kills = await chaos(p, queue, 10);
      expect(kills).toBeGreaterThanOrEqual(10);
      const r = await query(`SELECT count(*) AS n, count(DISTINCT order_id) AS d, min(order_id) AS lo, max(order_id) AS hi FROM read_parquet('${p}/output/orders/*.parquet')`);
      expect(r[0].d).toBe(String(N));
      expect([r[0].lo, r[0].hi]).toEqual(['1', String(N)]);
      const duplicates = Number(r[0].n) - N;
      if (dedupe) expect(duplicates).toBe(0);
      // Without dedupe, each kill can repeat at most what was unacked: prefetch (4 x batch_size).
      else expect(duplicates).toBeLessThanOrEqual(kills * 800);
      console.log(`chaos (dedupe_key ${dedupe ? 'on' : 'off'}): ${kills} kills, ${duplicates} duplicate rows`);
    }, 240_000);
  }

  it('scales out: two workers on one queue write their own files, no loss, no collision', async () => {
    const queue = uniqueQueue('sluice-scale');
    queues.push(queue);
    await publish(queue, orders);
    const p = project('scale', queue);
    const a = sluiceBg(['run', '--project', p, '--port', '0'], { env: { SLUICE_WORKER_ID: 'a' } });
    const b = sluiceBg(['run', '--project', p, '--port', '0'], { env: { SLUICE_WORKER_ID: 'b' } });
    await until(() => a.err().includes('reading from the source') && b.err().includes('reading from the source'), 60_000);
    await until(async () => (await queueDepth(queue)) === 0, 90_000, 200);
    await new Promise((r) => setTimeout(r, 700));
    a.kill('SIGTERM');
    b.kill('SIGTERM');
    expect((await waitExit(a)).code, a.err()).toBe(0);
    expect((await waitExit(b)).code, b.err()).toBe(0);
    const files = fs.readdirSync(path.join(p, 'output/orders'));
    expect(files.some((f) => f.startsWith('part-a.'))).toBe(true);
    expect(files.some((f) => f.startsWith('part-b.'))).toBe(true);
    expect(fs.readdirSync(path.join(p, '.sluice/wal')).sort()).toEqual(['a', 'b']);
    const r = await query(`SELECT count(*) AS n, count(DISTINCT order_id) AS d FROM read_parquet('${p}/output/orders/*.parquet')`);
    expect(r[0]).toEqual({ n: String(N), d: String(N) });
  }, 180_000);
});
