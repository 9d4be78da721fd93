import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { expect } from 'vitest';
import { orderMessage } from '../../src/connectors/generator/generator-source.js';
import { freePort, httpGet, killRepeatedly, query, sluiceAsync, sluiceBg, until, waitExit, writeFiles } from './cli.js';

// The contract every source must pass, whatever the broker (issue 4): order within a partition,
// graceful stop, no loss across SIGKILLs, redelivery of unacked work, DLQ routing, reconnect.
// Each scenario gets a project whose config/sources.yml reads the source under test, and either
// `drained` (true when the broker holds nothing unacknowledged for the project's source) or a
// `SourceUnderTest` with the broker side of the source.

/** The broker side of a source, as a contract scenario drives it. */
export interface SourceUnderTest {
  /** Appends messages, in this order, to what the project's source reads (durably: confirmed). */
  put(payloads: string[]): Promise<void>;
  /** True once everything put is delivered to the project's source and acknowledged. */
  drained(): Promise<boolean>;
  /**
   * True when the broker hands a dead worker's unacknowledged messages out again (counted in
   * `sluice_redelivered_total`); false for a file, which is read again from the committed position.
   */
  redelivers: boolean;
  /**
   * Drops the connections of the sluice process `pid` to the broker (see dropSocketsOf: only
   * that process's, so test files running at the same time keep theirs).
   */
  dropConnections?(pid: number): Promise<void>;
}

/**
 * Kills the TCP connections process `pid` holds to 127.0.0.1:`port` (`ss -K`, as a dropped
 * network path or a broker closing them would): the client sees a reset and must reconnect.
 * Returns how many were killed.
 */
export function dropSocketsOf(pid: number, port: number): number {
  const out = spawnSync('ss', ['-tnpH', 'dst', `127.0.0.1:${port}`], { encoding: 'utf8' }).stdout ?? '';
  let n = 0;
  for (const line of out.split('\n')) {
    if (!line.includes(`pid=${pid},`)) continue;
    const sport = line.trim().split(/\s+/)[3]?.split(':').pop();
    if (!sport) continue;
    spawnSync('ss', ['-K', 'dst', `127.0.0.1:${port}`, 'sport', '=', `:${sport}`], { stdio: 'ignore' });
    n++;
  }
  return n;
}

/** Orders 1..n as the generator makes them (order_id = i + 1). */
export const contractOrders = (n: number, from = 0): string[] => Array.from({ length: n }, (_, i) => orderMessage(from + i, 7));

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
  // The model's directory exists a moment before its first file is renamed into it.
  const dir = path.join(p, 'output/orders');
  if (!fs.existsSync(dir) || !fs.readdirSync(dir).some((f) => f.endsWith('.parquet'))) return [];
  const rows = await query(`SELECT order_id FROM read_parquet('${p}/output/orders/*.parquet', filename = true, file_row_number = true) ORDER BY filename, file_row_number`);
  return rows.map((r) => Number(r.order_id));
}

/**
 * Runs a worker until the broker is drained and the output holds `n` rows (a drained queue can
 * still have messages in the worker's prefetch), then stops it with SIGTERM; returns its summary
 * (the `done` log line).
 */
async function runUntilDrained(p: string, drained: () => Promise<boolean>, n: number): Promise<Record<string, unknown>> {
  const w = sluiceBg(['run', '--project', p, '--port', '0', '--log-json'], { env: { SLUICE_WORKER_ID: 'c1' } });
  try {
    await until(() => w.err().includes('reading from the source'), 60_000);
    await until(
      async () => {
        if (w.exitCode !== null) throw new Error(`the worker exited (${w.exitCode})`);
        return (await drained()) && fs.existsSync(path.join(p, 'output/orders')) && (await outputSequence(p)).length >= n;
      },
      90_000,
      200,
    );
  } catch (err) {
    const rows = fs.existsSync(path.join(p, 'output/orders')) ? (await outputSequence(p)).length : 0;
    w.kill('SIGKILL');
    throw new Error(`${(err as Error).message}: drained ${await drained()}, ${rows} of ${n} rows; worker log:\n${w.err().slice(-3000)}`);
  }
  w.kill('SIGTERM');
  expect(await waitExit(w, 60_000), w.err().slice(-3000)).toEqual({ code: 0, signal: null });
  return doneLine(w.err());
}

function doneLine(log: string): Record<string, unknown> {
  const done = log
    .trim()
    .split('\n')
    .map((l) => {
      try {
        return JSON.parse(l) as Record<string, unknown>;
      } catch {
        return {};
      }
    })
    .find((l) => l.msg === 'done');
  expect(done, log.slice(-3000)).toBeDefined();
  return done!;
}

const ascending = (ids: number[]) => [...ids].sort((a, b) => a - b);
const oneToN = (n: number) => Array.from({ length: n }, (_, i) => i + 1);

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
  // Small flushes, so the first comes early and the stop lands mid-stream even when the source
  // is fast (at 100 kB, a quick Kafka worker read a whole 6000-message topic before its first).
  writeFiles(p, { 'config/models.yml': 'max_file_bytes: 5000\nmax_age_seconds: 0.3\n' });
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

/**
 * A mix of good and poison messages: the good ones reach the output, each once; every poison
 * one is in the source's DLQ (as `sluice dlq inspect --format json` shows it) with its payload,
 * stage and error: unparseable JSON and a type conflict fail `decode`, a failed CAST fails
 * `transform` naming the model. Nothing poison reaches the output.
 */
export async function expectDlqRouting(p: string, src: SourceUnderTest, good = 300): Promise<void> {
  useOrdersProject(p);
  writeFiles(p, { 'models/orders.sql': 'SELECT incoming.order_id, incoming.user.id AS user_id, CAST(incoming.placed_at AS TIMESTAMP) AS placed_at FROM incoming\n' });
  const poison = {
    unparseable: '{"order_id": 100001, "user": ',
    conflict: JSON.stringify({ order_id: 100002, user: 'bob', items: [], currency: 'EUR', placed_at: '2024-01-01T00:00:00Z' }),
    transform: JSON.stringify({ order_id: 100003, user: { id: 5, name: 'Eve' }, items: [], currency: 'EUR', placed_at: 'yesterday' }),
  };
  const msgs = contractOrders(good);
  msgs.splice(Math.floor(good * 0.8), 0, poison.transform);
  msgs.splice(Math.floor(good * 0.4), 0, poison.conflict);
  msgs.splice(Math.floor(good * 0.1), 0, poison.unparseable);
  await src.put(msgs);
  await runUntilDrained(p, () => src.drained(), good);
  expect(ascending(await outputSequence(p))).toEqual(oneToN(good));

  // Async: the callers' it.concurrent neighbours keep their event loop (a blocked one delays their kills and stops).
  const inspect = await sluiceAsync(['dlq', 'inspect', '--project', p, '--format', 'json', '--limit', '100']);
  expect(inspect.code, inspect.stderr).toBe(0);
  const dead = JSON.parse(inspect.stdout) as { payload: string; stage: string; error: string; model?: string; source: Record<string, unknown> }[];
  const byPayload = new Map(dead.map((d) => [d.payload, d]));
  expect(dead).toHaveLength(3);
  expect(byPayload.get(poison.unparseable)).toMatchObject({ stage: 'decode', error: expect.stringMatching(/invalid JSON/) });
  expect(byPayload.get(poison.conflict)).toMatchObject({ stage: 'decode', error: expect.stringMatching(/type conflict: \$\.user/) });
  expect(byPayload.get(poison.transform)).toMatchObject({ stage: 'transform', model: 'orders', error: expect.stringMatching(/yesterday/) });
  for (const d of dead) expect(Object.keys(d.source).length, JSON.stringify(d)).toBeGreaterThan(0);
}

/**
 * With orders 1..n queued: a worker is SIGKILLed after reading and staging its third batch but
 * before committing it (SLUICE_CRASH_AT=before-commit), so that batch and whatever it had read
 * ahead are unacknowledged. A restarted worker must drop the uncommitted batch from its WAL and
 * get the messages again (from the broker, counted as redeliveries; from the committed position
 * for a file): without dedupe_key, every order is in the output exactly once.
 */
export async function expectRedeliveryOfUnacked(p: string, src: SourceUnderTest, n = 2000): Promise<void> {
  useOrdersProject(p);
  await src.put(contractOrders(n));
  const crashed = await sluiceAsync(['run', '--project', p, '--port', '0', '--log-json'], {
    env: { SLUICE_CRASH_AT: 'before-commit', SLUICE_CRASH_AFTER: '3', SLUICE_WORKER_ID: 'c1' },
  });
  expect(crashed.code, `expected the kill before the third commit: ${crashed.stderr.slice(-2000)}`).toBe(-1);
  expect(await src.drained()).toBe(false); // the killed worker left unacknowledged work
  const done = await runUntilDrained(p, () => src.drained(), n);
  const ids = await outputSequence(p);
  expect(ids.length).toBe(n);
  expect(ascending(ids)).toEqual(oneToN(n));
  if (src.redelivers) expect(Number(done.redelivered)).toBeGreaterThan(0);
  else expect(Number(done.redelivered)).toBe(0);
}

/**
 * While a worker consumes, the broker drops every client connection `rounds` times, with orders
 * put before each drop: the worker reconnects by itself (saying so in its log), `/readyz` is
 * green again, and with dedupe_key every order is in the output exactly once.
 */
export async function expectReconnectAfterDrop(p: string, src: SourceUnderTest, n = 1500, rounds = 3): Promise<void> {
  if (!src.dropConnections) throw new Error('expectReconnectAfterDrop needs src.dropConnections');
  useDedupeOrdersProject(p);
  const port = await freePort();
  const w = sluiceBg(['run', '--project', p, '--port', String(port), '--log-json'], { env: { SLUICE_WORKER_ID: 'c1' } });
  const readyz = async () => {
    try {
      return (await httpGet(`http://127.0.0.1:${port}/readyz`)).status;
    } catch {
      return 0;
    }
  };
  try {
    await until(() => w.err().includes('reading from the source'), 60_000);
    const per = Math.ceil(n / rounds);
    for (let r = 0; r < rounds; r++) {
      await src.put(contractOrders(Math.min(per, n - r * per), r * per));
      await new Promise((res) => setTimeout(res, 200));
      await src.dropConnections(w.pid!);
    }
    await until(async () => (await src.drained()) && fs.existsSync(path.join(p, 'output/orders')) && new Set(await outputSequence(p)).size === n, 90_000, 200);
    await until(async () => (await readyz()) === 200, 30_000);
    expect(w.err()).toMatch(/"msg":"reconnected to /);
  } finally {
    w.kill('SIGTERM');
  }
  expect(await waitExit(w, 60_000), w.err().slice(-3000)).toEqual({ code: 0, signal: null });
  const ids = await outputSequence(p);
  expect(ids.length).toBe(n);
  expect(ascending(ids)).toEqual(oneToN(n));
}

/** The sluice_source_lag_messages samples of a /metrics text: labels (source, topic, partition) and value. */
export function lagSamples(metrics: string): { labels: Record<string, string>; value: number }[] {
  const out: { labels: Record<string, string>; value: number }[] = [];
  for (const m of metrics.matchAll(/^sluice_source_lag_messages\{([^}]*)\} (\S+)$/gm)) {
    const labels = Object.fromEntries([...m[1].matchAll(/(\w+)="([^"]*)"/g)].map((l) => [l[1], l[2]]));
    out.push({ labels, value: Number(m[2]) });
  }
  return out;
}

/**
 * sluice_source_lag_messages: with reading paused (wal.max_bytes 1, and an orders sink that
 * fails: its output path is a file), `more` messages put meanwhile raise the reported backlog
 * by exactly their number; once the sink works again the worker drains and it falls to 0.
 * `partitions`: how many partition samples the worker reports (Kafka), else one sample without.
 */
export async function expectLagReported(p: string, src: SourceUnderTest, partitions?: number): Promise<void> {
  const more = 37;
  useOrdersProject(p);
  // Retries every half second and no circuit breaker: the worker writes as soon as the sink works.
  writeFiles(p, { 'config/sinks.yml': 'sink:\n  type: parquet\n  path: ./output\n  retry:\n    backoff_ms: 200\n    max_backoff_ms: 500\n  circuit:\n    failures: 100000\n' });
  const yml = path.join(p, 'sluice.yml');
  const conf = fs.existsSync(yml) ? fs.readFileSync(yml, 'utf8') : '';
  fs.writeFileSync(yml, /^wal:[ \t]*$/m.test(conf) ? conf.replace(/^wal:[ \t]*$/m, 'wal:\n  max_bytes: 1') : `${conf}\nwal:\n  max_bytes: 1\n`);
  fs.mkdirSync(path.join(p, 'output'), { recursive: true });
  fs.writeFileSync(path.join(p, 'output/orders'), 'not a directory\n');
  await src.put(contractOrders(40));
  const port = await freePort();
  const w = sluiceBg(['run', '--project', p, '--port', String(port), '--log-json'], { env: { SLUICE_WORKER_ID: 'c1' } });
  const lag = async () => {
    const samples = lagSamples((await httpGet(`http://127.0.0.1:${port}/metrics`).catch(() => ({ body: '' }))).body);
    return { samples, total: samples.reduce((n, s) => n + s.value, 0) };
  };
  try {
    await until(() => w.err().includes('reading paused'), 60_000);
    const before = await until(async () => {
      const l = await lag();
      return l.samples.length > 0 ? l : undefined;
    }, 20_000);
    if (partitions === undefined) {
      expect(before.samples).toHaveLength(1);
      expect(before.samples[0].labels.partition).toBeUndefined();
    } else {
      expect(before.samples).toHaveLength(partitions);
      expect(new Set(before.samples.map((s) => s.labels.partition)).size).toBe(partitions);
    }
    for (const s of before.samples) expect(s.labels.topic).toBeTruthy();
    for (const s of before.samples) expect(s.labels.source).toBe('default');

    await src.put(contractOrders(more, 40));
    await until(async () => (await lag()).total === before.total + more || undefined, 20_000).catch(async () => {
      throw new Error(`lag went from ${before.total} to ${(await lag()).total}, not +${more}`);
    });
    fs.rmSync(path.join(p, 'output/orders'));
    await until(
      async () => {
        if (!(await src.drained())) return false;
        const l = await lag();
        return l.samples.length > 0 && l.total === 0;
      },
      60_000,
      200,
    );
  } finally {
    w.kill('SIGTERM');
  }
  expect(await waitExit(w, 60_000), w.err().slice(-3000)).toEqual({ code: 0, signal: null });
  expect(ascending(await outputSequence(p))).toEqual(oneToN(40 + more));
}
