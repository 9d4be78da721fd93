import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { orderMessage } from '../../src/connectors/generator/generator-source.js';
import { freePort, httpGet, jsonLogs, killRepeatedly, query, sluiceAsync, sluiceBg, until, waitExit, writeFiles } from './cli.js';
import { metric, scrape } from './metrics.js';

// The contract every source passes, whatever the system behind it (issue 14, item 5): order
// within a partition, graceful stop, no loss across SIGKILLs, redelivery of unacked work, DLQ
// routing, reconnect after dropped connections, lag reporting. `sourceContract` declares the
// same cases for every target; a case a source cannot have (no connection to drop, no lag to
// report) is left out by the target's typed capability, with the reason written there.

/** The cases of the contract; a target gets the name when it makes a source for one. */
export type ContractCase = 'order' | 'graceful-stop' | 'kills' | 'redelivery' | 'dlq' | 'reconnect' | 'lag';

/** A case the source cannot have, and why: the case is not declared (never a skipped test). */
export interface NotDeclared {
  declared: false;
  reason: string;
}

/** A power of the source a case needs: `{ declared: true, ...settings }` or why it has none. */
export type Capability<T extends object = object> = ({ declared: true } & T) | NotDeclared;

/** One source under test, fresh for one case: its broker side and a project reading it. */
export interface SourceUnderTest {
  /** A project whose config/sources.yml reads this source (its models and sinks are the case's to set). */
  project: string;
  /** Appends messages, in this order, to what the source reads, durably (confirmed by the broker, or written). */
  put(payloads: string[]): Promise<void>;
  /** True once everything put is delivered to the project's source and acknowledged (committed). */
  drained(): Promise<boolean>;
  /**
   * Drops the connections of the sluice process `pid` to the broker (see dropSocketsOf: only
   * that process's, so test files running at the same time keep theirs). Needed by `reconnect`.
   */
  dropConnections?(pid: number): Promise<void>;
}

/** How the contract drives one kind of source. */
export interface SourceContractTarget {
  /**
   * A new source (a queue, stream, topic or file of its own) and a project reading it, set up
   * for `scenario` where the source needs it (a NATS ack_wait, a Kafka batch size, a Kafka
   * cluster of its own to drop connections to).
   */
  source(scenario: ContractCase): Promise<SourceUnderTest>;
  /**
   * True when the broker hands a dead worker's unacknowledged messages out again (counted in
   * `sluice_redelivered_total`); false when a restart reads again from the committed position
   * (a file, the generator, Kafka's committed offsets).
   */
  redelivers: boolean;
  /**
   * True for a finite source: once it has read everything put, the worker drains and exits 0
   * by itself (the generator); false when it waits for more until stopped.
   */
  ends: boolean;
  /** Poison messages can be put (they go to the source's DLQ, read back with `sluice dlq inspect`). */
  dlq: Capability;
  /** The source holds network connections that can drop; `messages` put over `rounds` drops. */
  reconnect: Capability<{ messages: number; rounds: number }>;
  /** The source reports `sluice_source_lag_messages`: one sample per partition when `partitions` is set, else one without. */
  lag: Capability<{ partitions?: number }>;
  /** Message counts per case, where the defaults do not suit the source. */
  sizes?: Partial<Record<'order' | 'graceful-stop' | 'kills' | 'redelivery', number>>;
  /**
   * Declare the cases concurrent (describe.concurrent): they run together, and together with
   * the concurrent describe blocks next to the call, as the file runs its other tests.
   */
  concurrent?: boolean;
}

const DEFAULT_SIZES = { order: 3000, 'graceful-stop': 20_000, kills: 6000, redelivery: 2000 } as const;

/**
 * Declares the source contract for `under`: one `describe(name)` with the same cases for every
 * source, less those the target says it cannot have (see `Capability`).
 */
export function sourceContract(name: string, under: SourceContractTarget): void {
  const test = under.concurrent ? it.concurrent : it;
  const suite = under.concurrent ? describe.concurrent : describe;
  const size = (c: keyof typeof DEFAULT_SIZES) => under.sizes?.[c] ?? DEFAULT_SIZES[c];
  suite(`source contract: ${name}`, () => {
    // Longest first: a file running its tests concurrently does not wait on one started last.
    test(`SIGKILLed 10 times while ${size('kills')} messages wait: none lost, none duplicated (dedupe_key)`, async () => {
      await expectNoLossNoDuplicateAcrossKills(under, size('kills'));
    }, 240_000);
    test(`a graceful stop (SIGTERM) mid-stream of ${size('graceful-stop')} messages loses and repeats nothing`, async () => {
      await expectGracefulStopLosesNothing(under, size('graceful-stop'));
    }, 150_000);
    test(`killed before committing a batch: the unacknowledged messages come again (${under.redelivers ? 'redelivered by the broker' : 'read again from the committed position'}), each once in the output`, async () => {
      await expectRedeliveryOfUnacked(under, size('redelivery'));
    }, 120_000);
    test(`${size('order')} messages of one partition are written in source order, each once`, async () => {
      await expectSourceOrder(under, size('order'));
    }, 120_000);
    const { dlq, reconnect, lag } = under;
    if (dlq.declared) {
      test('poison messages go to the DLQ with stage and error (read back with dlq inspect), good ones to the output', async () => {
        await expectDlqRouting(under);
      }, 120_000);
    }
    if (reconnect.declared) {
      test(`its connections dropped ${reconnect.rounds} times: it reconnects, /readyz is green again, nothing lost or repeated (dedupe_key)`, async () => {
        await expectReconnectAfterDrop(under, reconnect.messages, reconnect.rounds);
      }, 150_000);
    }
    if (lag.declared) {
      test('sluice_source_lag_messages reports the backlog: up by what arrives while reading is paused, 0 once drained', async () => {
        await expectLagReported(under, lag.partitions);
      }, 120_000);
    }
  });
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

/** Drops the connections of `pid` to `port` once it holds one (it may still be reconnecting from the last drop). */
export async function dropSocketsOnceConnected(pid: number, port: number): Promise<void> {
  await until(() => dropSocketsOf(pid, port) > 0, 30_000, 20, `process ${pid} to hold a connection to 127.0.0.1:${port} to drop`);
}

/** Orders 1..n as the generator makes them with seed 7 (order_id = i + 1). */
export const CONTRACT_SEED = 7;
export const contractOrders = (n: number, from = 0): string[] => Array.from({ length: n }, (_, i) => orderMessage(from + i, CONTRACT_SEED));

/** One `orders` model with `dedupe_key: order_id` on the sink, flushing often. */
function useDedupeOrdersProject(p: string): void {
  writeFiles(p, {
    'config/sinks.yml': 'sink:\n  type: parquet\n  path: ./output\n  dedupe_key: order_id\n',
    'config/models.yml': 'max_file_bytes: 200000\nmax_age_seconds: 0.5\n',
    'models/orders.sql': 'SELECT incoming.order_id, incoming.user.id AS user_id FROM incoming\n',
  });
  fs.rmSync(path.join(p, 'models/purchases.sql'), { force: true });
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

const ascending = (ids: number[]) => [...ids].sort((a, b) => a - b);
const oneToN = (n: number) => Array.from({ length: n }, (_, i) => i + 1);

type Worker = ReturnType<typeof sluiceBg>;

/** The worker's summary (its `done` log event). */
function doneEvent(w: Worker): Record<string, unknown> {
  const done = jsonLogs(w.err()).find((l) => l.msg === 'done');
  expect(done, `no "done" event in the worker's log:\n${w.err().slice(-3000)}`).toBeDefined();
  return done!;
}

/**
 * Ends a worker that has read everything: a finite source's worker stops by itself; any other
 * is stopped with SIGTERM. Either way it must exit 0 (batches finished, flushed, acked).
 */
async function stopWhenRead(w: Worker, under: SourceContractTarget): Promise<void> {
  if (!under.ends) {
    // Not before it is up: a SIGTERM in the first moments of the process, before Node has
    // loaded the CLI, ends it as the default action does (seen: a last worker after the kills
    // had nothing left to read, and the test stopped it at once).
    await until(() => w.err().includes('reading from the source') || w.exitCode !== null, 60_000, 20, 'the worker reading from the source');
    w.kill('SIGTERM');
  }
  expect(await waitExit(w, 60_000), w.err().slice(-3000)).toEqual({ code: 0, signal: null });
}

/**
 * Runs a worker until the source is drained and the output holds `n` rows (a drained queue can
 * still have messages in the worker's prefetch), then ends it (see stopWhenRead); returns its
 * summary (the `done` log event).
 */
async function runUntilDrained(under: SourceContractTarget, src: SourceUnderTest, n: number): Promise<Record<string, unknown>> {
  const p = src.project;
  const w = sluiceBg(['run', '--project', p, '--port', '0', '--log-json'], { env: { SLUICE_WORKER_ID: 'c1' } });
  try {
    await until(
      async () => {
        // A finite source's worker exits 0 by itself once it has read everything.
        if (w.exitCode !== null && (w.exitCode !== 0 || !under.ends)) throw new Error(`the worker exited (${w.exitCode})`);
        return (await src.drained()) && (await outputSequence(p)).length >= n;
      },
      90_000,
      200,
      `the source drained and ${n} rows in the output`,
    );
  } catch (err) {
    const rows = (await outputSequence(p)).length;
    w.kill('SIGKILL');
    throw new Error(`${(err as Error).message}: drained ${await src.drained()}, ${rows} of ${n} rows; worker log:\n${w.err().slice(-3000)}`);
  }
  await stopWhenRead(w, under);
  return doneEvent(w);
}

/** With orders 1..n put, one worker writes them in source order, each once. */
export async function expectSourceOrder(under: SourceContractTarget, n: number): Promise<void> {
  const src = await under.source('order');
  useOrdersProject(src.project);
  await src.put(contractOrders(n));
  await runUntilDrained(under, src, n);
  expect(await outputSequence(src.project)).toEqual(oneToN(n));
}

/**
 * With orders 1..n put: SIGTERM a worker in the middle of the stream (it must finish its
 * batches, flush, ack and exit 0), start another, let it drain. Without dedupe_key, every order
 * must be in the output exactly once: a graceful stop leaves nothing to redeliver.
 */
export async function expectGracefulStopLosesNothing(under: SourceContractTarget, n: number): Promise<void> {
  const src = await under.source('graceful-stop');
  const p = src.project;
  useOrdersProject(p);
  // Small flushes, so the first comes early and the stop lands mid-stream even when the source
  // is fast (at 100 kB, a quick Kafka worker read a whole 6000-message topic before its first).
  writeFiles(p, { 'config/models.yml': 'max_file_bytes: 5000\nmax_age_seconds: 0.3\n' });
  await src.put(contractOrders(n));
  const w = sluiceBg(['run', '--project', p, '--port', '0', '--log-json'], { env: { SLUICE_WORKER_ID: 'c1' } });
  await until(() => w.err().includes('"msg":"flushed"') || w.exitCode !== null, 60_000, 20, "the worker's first flush");
  w.kill('SIGTERM');
  expect(await waitExit(w, 60_000), w.err().slice(-3000)).toEqual({ code: 0, signal: null });
  const first = (await outputSequence(p)).length;
  expect(first).toBeGreaterThan(0);
  expect(first).toBeLessThan(n); // stopped in the middle
  await runUntilDrained(under, src, n);
  const ids = await outputSequence(p);
  expect(ids.length).toBe(n);
  expect(new Set(ids).size).toBe(n);
}

/**
 * With orders 1..n put: SIGKILL the worker at random moments `kills` times (a finite source
 * that ends between kills gets more orders), then let a last worker drain the source; every
 * order must be in the output exactly once (dedupe_key).
 */
export async function expectNoLossNoDuplicateAcrossKills(under: SourceContractTarget, n: number, kills = 10): Promise<void> {
  const src = await under.source('kills');
  const p = src.project;
  useDedupeOrdersProject(p);
  await src.put(contractOrders(n));
  let total = n;
  const more = async () => {
    await src.put(contractOrders(n, total));
    total += n;
  };
  const done = await killRepeatedly(['run', '--project', p, '--port', '0', '--log-level', 'warn'], { SLUICE_WORKER_ID: 'k1' }, kills, under.ends ? more : undefined);
  expect(done).toBeGreaterThanOrEqual(kills);
  const last = sluiceBg(['run', '--project', p, '--port', '0', '--log-json'], { env: { SLUICE_WORKER_ID: 'k1' } });
  await until(
    async () => {
      if (last.exitCode !== null && (last.exitCode !== 0 || !under.ends)) throw new Error(`the last worker exited (${last.exitCode}):\n${last.err().slice(-3000)}`);
      return (await src.drained()) && new Set(await outputSequence(p)).size >= total;
    },
    120_000,
    200,
    `the source drained and ${total} distinct orders in the output`,
  );
  await stopWhenRead(last, under);
  const r = await query(`SELECT count(*) AS n, count(DISTINCT order_id) AS d, min(order_id) AS lo, max(order_id) AS hi FROM read_parquet('${p}/output/orders/*.parquet')`);
  expect(r[0]).toEqual({ n: String(total), d: String(total), lo: '1', hi: String(total) });
}

/**
 * A mix of good and poison messages: the good ones reach the output, each once; every poison
 * one is in the source's DLQ (as `sluice dlq inspect --format json` shows it) with its payload,
 * stage and error: unparseable JSON and a type conflict fail `decode`, a failed CAST fails
 * `transform` naming the model. Nothing poison reaches the output.
 */
export async function expectDlqRouting(under: SourceContractTarget, good = 300): Promise<void> {
  const src = await under.source('dlq');
  const p = src.project;
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
  await runUntilDrained(under, src, good);
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
 * With orders 1..n put: a worker is SIGKILLed after reading and staging its third batch but
 * before committing it (SLUICE_CRASH_AT=before-commit), so that batch and whatever it had read
 * ahead are unacknowledged. A restarted worker must drop the uncommitted batch from its WAL and
 * get the messages again (from the broker, counted as redeliveries; from the committed position
 * otherwise): without dedupe_key, every order is in the output exactly once.
 */
export async function expectRedeliveryOfUnacked(under: SourceContractTarget, n: number): Promise<void> {
  const src = await under.source('redelivery');
  const p = src.project;
  useOrdersProject(p);
  await src.put(contractOrders(n));
  const crashed = await sluiceAsync(['run', '--project', p, '--port', '0', '--log-json'], {
    env: { SLUICE_CRASH_AT: 'before-commit', SLUICE_CRASH_AFTER: '3', SLUICE_WORKER_ID: 'c1' },
  });
  expect(crashed.signal, `expected the kill before the third commit: ${crashed.stderr.slice(-2000)}`).toBe('SIGKILL');
  expect(await src.drained()).toBe(false); // the killed worker left unacknowledged work
  const done = await runUntilDrained(under, src, n);
  const ids = await outputSequence(p);
  expect(ids.length).toBe(n);
  expect(ascending(ids)).toEqual(oneToN(n));
  if (under.redelivers) expect(Number(done.redelivered)).toBeGreaterThan(0);
  else expect(Number(done.redelivered)).toBe(0);
}

/**
 * While a worker consumes, the broker drops its connections `rounds` times, with orders put
 * before each drop: the worker reconnects by itself (saying so in its log), `/readyz` is green
 * again, and with dedupe_key every order is in the output exactly once.
 */
export async function expectReconnectAfterDrop(under: SourceContractTarget, n: number, rounds: number): Promise<void> {
  const src = await under.source('reconnect');
  if (!src.dropConnections) throw new Error('the reconnect case needs the source to drop connections (SourceUnderTest.dropConnections)');
  const p = src.project;
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
  const received = async () => metric(await scrape(port), 'sluice_messages_received_total');
  try {
    await until(() => w.err().includes('reading from the source'), 60_000, 50, 'the worker reading from the source');
    const per = Math.ceil(n / rounds);
    for (let r = 0; r < rounds; r++) {
      const before = await received();
      await src.put(contractOrders(Math.min(per, n - r * per), r * per));
      // Dropped while it consumes: once it received some of what was just put.
      await until(async () => (await received()) > before, 30_000, 20, `the worker to receive messages of round ${r + 1}`);
      await src.dropConnections(w.pid!);
    }
    await until(async () => (await src.drained()) && new Set(await outputSequence(p)).size === n, 90_000, 200, `the source drained and ${n} distinct orders in the output`);
    await until(async () => (await readyz()) === 200, 30_000, 100, '/readyz to answer 200');
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
export async function expectLagReported(under: SourceContractTarget, partitions?: number): Promise<void> {
  const more = 37;
  const src = await under.source('lag');
  const p = src.project;
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
    const samples = lagSamples(await scrape(port));
    return { samples, total: samples.reduce((n, s) => n + s.value, 0) };
  };
  try {
    await until(() => w.err().includes('reading paused'), 60_000, 50, 'the worker to pause reading (its sink fails)');
    const before = await until(
      async () => {
        const l = await lag();
        return l.samples.length > 0 ? l : undefined;
      },
      20_000,
      100,
      'lag samples in /metrics',
    );
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
    await until(async () => (await lag()).total === before.total + more || undefined, 20_000, 100, `the lag to rise by ${more} from ${before.total}`).catch(async (e: Error) => {
      throw new Error(`${e.message}: it is ${(await lag()).total}`);
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
      'the source drained and the lag at 0',
    );
  } finally {
    w.kill('SIGTERM');
  }
  expect(await waitExit(w, 60_000), w.err().slice(-3000)).toEqual({ code: 0, signal: null });
  expect(ascending(await outputSequence(p))).toEqual(oneToN(40 + more));
}
