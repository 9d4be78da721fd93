import fs from 'node:fs';
import path from 'node:path';
import { expect } from 'vitest';
import { killRepeatedly, query, sluiceBg, until, waitExit, writeFiles } from './cli.js';

// Scenarios every broker source must pass, whatever the broker (the start of issue 4's contract
// suite). `drained` says when the broker holds nothing unacknowledged for the project's source.

/** One `orders` model with `dedupe_key: order_id` on the sink, flushing often. */
export function useDedupeOrdersProject(p: string): void {
  writeFiles(p, {
    'config/sinks.yml': 'sink:\n  type: parquet\n  path: ./output\n  dedupe_key: order_id\n',
    'config/models.yml': 'max_file_bytes: 200000\nmax_age_seconds: 0.5\n',
    'models/orders.sql': 'SELECT incoming.order_id, incoming.user.id AS user_id FROM incoming\n',
  });
  fs.rmSync(path.join(p, 'models/purchases.sql'), { force: true });
}

/**
 * With orders 1..n queued: SIGKILL the worker at random moments `kills` times, then let a last
 * worker drain the source and stop with SIGTERM; every order must be in the output exactly once.
 */
export async function expectNoLossNoDuplicateAcrossKills(p: string, n: number, drained: () => Promise<boolean>, kills = 10): Promise<void> {
  useDedupeOrdersProject(p);
  const done = await killRepeatedly(['run', '--project', p, '--port', '0', '--log-level', 'warn'], { SLUICE_WORKER_ID: 'k1' }, kills);
  expect(done).toBeGreaterThanOrEqual(kills);
  const last = sluiceBg(['run', '--project', p, '--port', '0', '--log-json'], { env: { SLUICE_WORKER_ID: 'k1' } });
  await until(() => last.err().includes('reading from the source'), 60_000);
  await until(drained, 90_000, 200);
  await new Promise((r) => setTimeout(r, 700));
  last.kill('SIGTERM');
  expect(await waitExit(last, 60_000), last.err().slice(-3000)).toEqual({ code: 0, signal: null });
  const r = await query(`SELECT count(*) AS n, count(DISTINCT order_id) AS d, min(order_id) AS lo, max(order_id) AS hi FROM read_parquet('${p}/output/orders/*.parquet')`);
  expect(r[0]).toEqual({ n: String(n), d: String(n), lo: '1', hi: String(n) });
}
