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

/** One `orders` model keeping the order id, without deduplication, flushing often. */
function useOrdersProject(p: string): void {
  writeFiles(p, {
    'config/sinks.yml': 'sink:\n  type: parquet\n  path: ./output\n',
    'config/models.yml': 'max_file_bytes: 100000\nmax_age_seconds: 0.3\n',
    'models/orders.sql': 'SELECT incoming.order_id FROM incoming\n',
  });
  fs.rmSync(path.join(p, 'models/purchases.sql'), { force: true });
}

/** Order ids of the output in file-name order, rows in file order. */
async function outputSequence(p: string): Promise<number[]> {
  const rows = await query(
    `SELECT order_id FROM read_parquet('${p}/output/orders/*.parquet', filename = true, file_row_number = true) ORDER BY filename, file_row_number`,
  );
  return rows.map((r) => Number(r.order_id));
}

/**
 * Runs a worker until the broker is drained and the output holds `n` rows (a drained queue can
 * still have messages in the worker's prefetch), then stops it with SIGTERM.
 */
async function runUntilDrained(p: string, drained: () => Promise<boolean>, n: number): Promise<void> {
  const w = sluiceBg(['run', '--project', p, '--port', '0', '--log-json'], { env: { SLUICE_WORKER_ID: 'c1' } });
  await until(() => w.err().includes('reading from the source'), 60_000);
  await until(async () => (await drained()) && fs.existsSync(path.join(p, 'output/orders')) && (await outputSequence(p)).length >= n, 90_000, 200);
  w.kill('SIGTERM');
  expect(await waitExit(w, 60_000), w.err().slice(-3000)).toEqual({ code: 0, signal: null });
}

/** With orders 1..n queued, one worker writes them in source order, each once. */
export async function expectSourceOrder(p: string, n: number, drained: () => Promise<boolean>): Promise<void> {
  useOrdersProject(p);
  await runUntilDrained(p, drained, n);
  expect(await outputSequence(p)).toEqual(Array.from({ length: n }, (_, i) => i + 1));
}

/**
 * With orders 1..n queued: SIGTERM a worker in the middle of the stream (it must finish its
 * batches, flush, ack and exit 0), start another, let it drain. Without dedupe_key, every order
 * must be in the output exactly once: a graceful stop leaves nothing to redeliver.
 */
export async function expectGracefulStopLosesNothing(p: string, n: number, drained: () => Promise<boolean>): Promise<void> {
  useOrdersProject(p);
  const w = sluiceBg(['run', '--project', p, '--port', '0', '--log-json'], { env: { SLUICE_WORKER_ID: 'c1' } });
  await until(() => w.err().includes('"msg":"flushed"'), 60_000, 20);
  w.kill('SIGTERM');
  expect(await waitExit(w, 60_000), w.err().slice(-3000)).toEqual({ code: 0, signal: null });
  const first = (await outputSequence(p)).length;
  expect(first).toBeGreaterThan(0);
  expect(first).toBeLessThan(n); // stopped in the middle
  await runUntilDrained(p, drained, n);
  const ids = await outputSequence(p);
  expect(ids.length).toBe(n);
  expect(new Set(ids).size).toBe(n);
}
