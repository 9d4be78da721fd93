import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { orderMessage } from '../../src/connectors/generator/generator-source.js';
import { freePort, query, sluiceAsync, sluiceBg, tempDir, until, waitExit, writeFiles } from '../helpers/cli.js';
import { deadLetters } from '../helpers/dlq.js';
import { metric, scrape } from '../helpers/metrics.js';

// A real full file system: a small tmpfs mounted by the test (the tests run as root, in CI
// too), holding the WAL, the DLQ or a file sink's directory. A ballast file leaves little room,
// so the disk fills in the middle of the run; the test waits until sluice reports the stall on
// /metrics, then deletes the ballast. No message may be dead-lettered or lost because of the
// disk, and every message's rows must be in the output exactly once, also when the process is
// SIGKILLed while the disk is full.

const ORDERS = 12_000;
const root = tempDir('sluice-full-disk-');
const mounts: string[] = [];
afterAll(() => {
  for (const m of mounts) execFileSync('umount', ['-l', m]);
  fs.rmSync(root, { recursive: true, force: true });
});

/** A tmpfs of `bytes`, filled up to `free` bytes left by a ballast file that release() deletes. */
function smallDisk(name: string, bytes: number, free: number): { dir: string; release: () => void } {
  const dir = path.join(root, name);
  fs.mkdirSync(dir, { recursive: true });
  execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${bytes}`, 'tmpfs', dir]);
  mounts.push(dir);
  const ballast = path.join(dir, 'ballast');
  const { bavail, bsize } = fs.statfsSync(dir);
  fs.writeFileSync(ballast, Buffer.alloc(Math.max(0, bavail * bsize - free)));
  return { dir, release: () => fs.rmSync(ballast, { force: true }) };
}

interface Where {
  wal?: string;
  dlq?: string;
  sink?: string;
}

function project(name: string, where: Where, opts: { bad?: number; maxAge?: number } = {}): { dir: string; port: Promise<number> } {
  const dir = path.join(root, name);
  const lines: string[] = [];
  for (let i = 0; i < ORDERS; i++) {
    lines.push(orderMessage(i, 7)); // order_id i + 1
    if (opts.bad && (i + 1) % Math.floor(ORDERS / opts.bad) === 0) lines.push(`{"order_id": ${i + 1}, "broken": `);
  }
  const port = freePort();
  writeFiles(dir, {
    'sluice.yml': `wal:\n  path: ${where.wal ?? '.sluice/wal'}\ninfra_errors:\n  max_backoff_ms: 200\n`,
    'config/sources.yml': `source:\n  type: file\n  path: data\n  batch_size: 500\n  batch_timeout_ms: 100\n  dlq: ${where.dlq ?? '.sluice/dlq'}\n`,
    'config/sinks.yml': `sink:\n  type: parquet\n  path: ${where.sink ?? 'output'}\n  on_error: dlq\n  retry:\n    max_attempts: 2\n    backoff_ms: 50\n    max_backoff_ms: 200\n  circuit:\n    failures: 1000\n`,
    'config/models.yml': `max_age_seconds: ${opts.maxAge ?? 0.2}\n`,
    'models/orders.sql': 'SELECT incoming.order_id, incoming.currency, incoming.placed_at FROM incoming\n',
    'data/orders.ndjson': lines.join('\n') + '\n',
  });
  return { dir, port };
}

async function outputIds(out: string): Promise<{ n: number; distinct: number; min: number; max: number }> {
  const [r] = await query(`SELECT count(*)::INT AS n, count(DISTINCT order_id)::INT AS distinct, min(order_id)::INT AS min, max(order_id)::INT AS max FROM read_parquet('${out}/orders/*.parquet')`);
  return r as { n: number; distinct: number; min: number; max: number };
}

/** Runs until sluice reports an infrastructure stall on /metrics; returns the child. */
async function runUntilStalled(dir: string, port: number): Promise<ReturnType<typeof sluiceBg>> {
  const child = sluiceBg(['run', '--project', dir, '--port', String(port)]);
  await until(async () => child.exitCode !== null || metric(await scrape(port), 'sluice_stalled') === 1, 60_000, 50).catch(() => {
    throw new Error(`sluice never reported a stall on /metrics (sluice_stalled 1); exit ${child.exitCode}\n${child.err().slice(-2000)}`);
  });
  expect(child.exitCode, child.err().slice(-2000)).toBeNull();
  return child;
}

describe('a full disk pauses the pipeline and never blames a message', () => {
  it.concurrent('WAL disk fills mid-run: paused, /readyz red, then resumed once freed; every order once, nothing dead-lettered', async () => {
    const disk = smallDisk('wal-disk', 4 * 2 ** 20, 80_000);
    // No flush before the end: the WAL grows until the disk is full.
    const p = project('wal-full', { wal: path.join(disk.dir, 'wal') }, { maxAge: 3600 });
    const port = await p.port;
    const child = await runUntilStalled(p.dir, port);
    const ready = await fetch(`http://127.0.0.1:${port}/readyz`);
    const body = await ready.text();
    expect(ready.status).toBe(503);
    expect(body).toMatch(/disk full/);
    const m = await scrape(port);
    expect(metric(m, 'sluice_infra_errors_total', { kind: 'disk full' })).toBeGreaterThan(0);
    expect(metric(m, 'sluice_dead_lettered_total')).toBe(0);
    disk.release();
    const exit = await waitExit(child, 120_000);
    expect(exit.code, child.err().slice(-3000)).toBe(0);
    expect(child.err()).toMatch(/paused: disk full while (writing|committing) .*WAL/);
    expect(child.err()).toMatch(/resumed/);
    expect(child.out() + child.err()).toMatch(/dead_lettered=0 /);
    expect(await outputIds(path.join(p.dir, 'output'))).toEqual({ n: ORDERS, distinct: ORDERS, min: 1, max: ORDERS });
    expect(deadLetters(path.join(p.dir, '.sluice/dlq'))).toEqual([]);
  });

  it.concurrent('WAL disk full and the process SIGKILLed while paused: the next run delivers every order exactly once', async () => {
    const disk = smallDisk('wal-disk-kill', 4 * 2 ** 20, 80_000);
    const p = project('wal-full-kill', { wal: path.join(disk.dir, 'wal') }, { maxAge: 3600 });
    const port = await p.port;
    const child = await runUntilStalled(p.dir, port);
    child.kill('SIGKILL');
    await waitExit(child);
    disk.release();
    const again = await sluiceAsync(['run', '--project', p.dir, '--port', '0']);
    expect(again.code, again.stderr.slice(-3000)).toBe(0);
    expect(await outputIds(path.join(p.dir, 'output'))).toEqual({ n: ORDERS, distinct: ORDERS, min: 1, max: ORDERS });
    expect(deadLetters(path.join(p.dir, '.sluice/dlq'))).toEqual([]);
  });

  it.concurrent('DLQ disk fills: the bad messages are dead-lettered once each after it is freed, the good ones are all in the output', async () => {
    const disk = smallDisk('dlq-disk', 1 * 2 ** 20, 20_000);
    const bad = 400;
    const p = project('dlq-full', { dlq: path.join(disk.dir, 'dlq') }, { bad });
    const port = await p.port;
    const child = await runUntilStalled(p.dir, port);
    expect(child.err()).toMatch(/paused: disk full while (appending to the DLQ|writing a batch to the WAL)/);
    disk.release();
    const exit = await waitExit(child, 120_000);
    expect(exit.code, child.err().slice(-3000)).toBe(0);
    const letters = deadLetters(path.join(disk.dir, 'dlq'));
    expect(letters.length).toBe(bad);
    expect(new Set(letters.map((l) => l.payload)).size).toBe(bad);
    expect(letters.every((l) => l.stage === 'decode')).toBe(true);
    expect(await outputIds(path.join(p.dir, 'output'))).toEqual({ n: ORDERS, distinct: ORDERS, min: 1, max: ORDERS });
  });

  it.concurrent('a file sink directory fills: the flush is retried (on_error: dlq does not apply to a full disk), every order once after it is freed', async () => {
    const disk = smallDisk('sink-disk', 2 * 2 ** 20, 20_000);
    const p = project('sink-full', { sink: path.join(disk.dir, 'out') });
    const port = await p.port;
    const child = sluiceBg(['run', '--project', p.dir, '--port', String(port)]);
    await until(async () => child.exitCode !== null || metric(await scrape(port), 'sluice_sink_errors_total') >= 3, 60_000, 50);
    expect(child.exitCode, child.err().slice(-2000)).toBeNull();
    const ready = await fetch(`http://127.0.0.1:${port}/readyz`);
    expect(ready.status).toBe(503);
    disk.release();
    const exit = await waitExit(child, 120_000);
    expect(exit.code, child.err().slice(-3000)).toBe(0);
    expect(child.out() + child.err()).toMatch(/dead_lettered=0 /);
    expect(await outputIds(path.join(disk.dir, 'out'))).toEqual({ n: ORDERS, distinct: ORDERS, min: 1, max: ORDERS });
    expect(deadLetters(path.join(p.dir, '.sluice/dlq'))).toEqual([]);
  });
});
