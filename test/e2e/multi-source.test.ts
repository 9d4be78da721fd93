import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { createClient } from 'redis';
import { connect } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { afterAll, describe, expect, it } from 'vitest';
import { orderMessage } from '../../src/connectors/generator/generator-source.js';
import { freePort, httpGet, query, sluiceAsync, sluiceBg, tempDir, until, untilEvent, waitExit, writeFiles } from '../helpers/cli.js';
import { lockPostgres, pgQuery } from '../helpers/sql-db.js';
import { machineLock } from '../helpers/machine-lock.js';
import { startS3 } from '../helpers/s3.js';
import { readWalState, type WalStateView } from '../helpers/wal.js';

// `sluice run` on a project with several sources: one pipeline per source in one process, with
// the WAL layout of `--source`, one ops server, and stops and failures that reach every pipeline.
// Real components: files on disk, the machine's Redis (127.0.0.1:6379), NATS JetStream
// (127.0.0.1:4222) and PostgreSQL (db test).

const REDIS = 'redis://127.0.0.1:6379';
// The tests run concurrently (each on directories, streams, schemas of its own): the
// directories go when the whole file is done.
const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

const orderLines = (from: number, to: number) => Array.from({ length: to - from }, (_, i) => orderMessage(from + i, 7)).join('\n') + '\n';
const refundLines = (from: number, to: number) =>
  Array.from({ length: to - from }, (_, i) => JSON.stringify({ refund_id: 5000 + from + i, order_id: from + i + 1, amount: (from + i) % 90, reason: 'Late' })).join('\n') + '\n';

interface Shop {
  dir: string;
  stream?: string;
}

/**
 * A project with two file sources, orders (models orders and purchases) and refunds (model
 * refunds), all writing to one Parquet sink `lake`; optionally a third source, a Redis stream
 * `clicks` (model clicks, also to `lake`). `sinks` replaces config/sinks.yml.
 */
function shop(o: { orders?: number; refunds?: number; follow?: boolean; redis?: boolean; maxAge?: number; batch?: number; sinks?: string; models?: string } = {}): Shop {
  const dir = tempDir('sluice-multi-');
  dirs.push(dir);
  const follow = o.follow ? '    follow: true\n    poll_interval_ms: 50\n' : '';
  const batch = `    batch_size: ${o.batch ?? 100}\n    batch_timeout_ms: 100\n`;
  const stream = o.redis ? `sluice-multi-${randomUUID().slice(0, 8)}` : undefined;
  writeFiles(dir, {
    'config/sources.yml':
      `sources:\n  orders:\n    type: file\n    path: data/orders/*.ndjson\n${batch}${follow}  refunds:\n    type: file\n    path: data/refunds/*.ndjson\n${batch}${follow}` +
      (stream ? `  clicks:\n    type: redis_streams\n    url: ${REDIS}\n    stream: ${stream}\n${batch}` : ''),
    'config/sinks.yml': o.sinks ?? 'sinks:\n  lake:\n    type: parquet\n    path: output/lake\n',
    'config/models.yml': o.models ?? `max_age_seconds: ${o.maxAge ?? 300}\n`,
    'models/orders.sql': "SELECT o.order_id, o.user.id AS user_id, len(o.items) AS item_count FROM {{ source('orders') }} AS o\n",
    'models/purchases.sql': "SELECT o.order_id, unnest.sku, unnest.quantity FROM {{ source('orders') }} AS o, unnest(o.items)\n",
    'models/refunds.sql': "SELECT r.refund_id, r.order_id, r.amount, lower(r.reason) AS reason FROM {{ source('refunds') }} AS r\n",
    ...(stream ? { 'models/clicks.sql': "SELECT c.click_id, c.page FROM {{ source('clicks') }} AS c\n" } : {}),
    'data/orders/a.ndjson': orderLines(0, o.orders ?? 60),
    ...(o.refunds === 0 ? {} : { 'data/refunds/a.ndjson': refundLines(0, o.refunds ?? 25) }),
  });
  fs.mkdirSync(path.join(dir, 'data/refunds'), { recursive: true });
  return { dir, stream };
}

type Redis = ReturnType<typeof createClient>;

async function addClicks(redis: Redis, stream: string, from: number, to: number): Promise<void> {
  const multi = redis.multi();
  for (let i = from; i < to; i++) multi.xAdd(stream, '*', { payload: JSON.stringify({ click_id: i, page: `/p/${i % 7}` }) });
  await multi.exec();
}

/** count(*) and count(DISTINCT key) of a model's Parquet output (0, 0 when there is none yet). */
async function counted(dir: string, model: string, key: string): Promise<{ n: number; d: number }> {
  const d = path.join(dir, 'output/lake', model);
  if (!fs.existsSync(d) || !fs.readdirSync(d).some((f) => f.endsWith('.parquet'))) return { n: 0, d: 0 };
  const [r] = await query(`SELECT count(*) AS n, count(DISTINCT (${key})) AS d FROM read_parquet('${d}/*.parquet')`);
  return { n: Number(r.n), d: Number(r.d) };
}

/** counted() of the purchases model as it is when orders from..to are delivered once each (an order may list a sku twice). */
async function expectedPurchases(from: number, to: number): Promise<{ n: number; d: number }> {
  const f = path.join(tempDir('sluice-multi-expect-'), 'o.ndjson');
  fs.writeFileSync(f, orderLines(from, to));
  try {
    const [r] = await query(`SELECT count(*) AS n, count(DISTINCT (order_id, sku)) AS d FROM (SELECT o.order_id, unnest.sku FROM read_json('${f}', format = 'newline_delimited') o, unnest(o.items))`);
    return { n: Number(r.n), d: Number(r.d) };
  } finally {
    fs.rmSync(path.dirname(f), { recursive: true, force: true });
  }
}

/** Runs the CLI without blocking the event loop of the file's concurrent tests (spawnSync would). */
function run(dir: string, args: string[] = [], env: NodeJS.ProcessEnv = {}) {
  return sluiceAsync(['run', '--project', dir, '--port', '0', ...args], { env, timeout: 120_000 });
}

interface Family {
  type: string;
  help: number;
  types: number;
  samples: { name: string; labels: Record<string, string>; value: number }[];
}

/** Parses Prometheus text, checking its shape: one HELP and TYPE per family, each sample under its family, none twice. */
function parseMetrics(text: string): Map<string, Family> {
  const families = new Map<string, Family>();
  let current: string | undefined;
  const seen = new Set<string>();
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    const meta = /^# (HELP|TYPE) (\S+) (.*)$/.exec(line);
    if (meta) {
      const f = families.get(meta[2]) ?? { type: '', help: 0, types: 0, samples: [] };
      if (meta[1] === 'HELP') f.help++;
      else {
        f.types++;
        f.type = meta[3];
      }
      families.set(meta[2], f);
      current = meta[2];
      continue;
    }
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    expect(m, `not a sample line: ${line}`).not.toBeNull();
    const [, name, labelText, value] = m!;
    expect(seen.has(`${name}{${labelText}}`), `sample twice: ${line}`).toBe(false);
    seen.add(`${name}{${labelText}}`);
    expect(current, `sample before any TYPE: ${line}`).toBeDefined();
    expect([current, `${current}_bucket`, `${current}_sum`, `${current}_count`]).toContain(name);
    const labels: Record<string, string> = {};
    for (const l of (labelText ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    families.get(current!)!.samples.push({ name, labels, value: Number(value) });
  }
  return families;
}

function walState(dir: string, ...rel: string[]): WalStateView {
  return readWalState(path.join(dir, '.sluice/wal', ...rel));
}

/** Segment files still staged in a pipeline's WAL (none once everything is flushed). */
function walSegments(dir: string, source: string): string[] {
  const models = path.join(dir, '.sluice/wal', source, 'models');
  if (!fs.existsSync(models)) return [];
  return fs.readdirSync(models).flatMap((m) => fs.readdirSync(path.join(models, m)).filter((f) => f.endsWith('.parquet')));
}

const worker = () => (process.env.SLUICE_WORKER_ID || os.hostname() || 'worker').replace(/[^A-Za-z0-9.-]/g, '-');

/**
 * Sources a and b (each `source(name)`, a consumer of its own on one stream, so both read every
 * message) share their default DLQ. Two rounds of five good messages and a bad one, each round's
 * two dead letters awaited (so each source's committed DLQ mark lies before the other's dead
 * letters), a graceful stop, and a restart: every dead letter is still there, tagged with its
 * source's worker id.
 */
async function deadLettersSurviveRestart(broker: {
  source: (name: string) => string;
  publish: (payload: string) => Promise<void>;
  count: () => Promise<number>;
  letters: () => Promise<string[]>;
}): Promise<void> {
  const dir = tempDir('sluice-multi-');
  dirs.push(dir);
  const batch = '    batch_size: 50\n    batch_timeout_ms: 100\n';
  writeFiles(dir, {
    'config/sources.yml': `sources:\n  a:\n${broker.source('multi_a')}${batch}  b:\n${broker.source('multi_b')}${batch}`,
    'config/sinks.yml': 'sinks:\n  lake:\n    type: parquet\n    path: output/lake\n',
    'config/models.yml': 'max_age_seconds: 0.3\n',
    'models/a_events.sql': "SELECT e.id FROM {{ source('a') }} AS e\n",
    'models/b_events.sql': "SELECT e.id FROM {{ source('b') }} AS e\n",
  });
  const env = { SLUICE_WORKER_ID: 'm1' };
  const args = ['run', '--project', dir, '--port', '0'];
  const child = sluiceBg(args, { env });
  let stopped = false;
  try {
    for (let round = 0; round < 2; round++) {
      for (let i = 0; i < 5; i++) await broker.publish(JSON.stringify({ id: round * 10 + i }));
      await broker.publish(`{"id": ${round}, not json`);
      await until(async () => (await broker.count()) === 2 * (round + 1), 30_000);
    }
    const events = async () => [await counted(dir, 'a_events', 'id'), await counted(dir, 'b_events', 'id')];
    await until(
      async () =>
        JSON.stringify(await events()) ===
        JSON.stringify([
          { n: 10, d: 10 },
          { n: 10, d: 10 },
        ]),
      20_000,
    ).catch(async (e: Error) => {
      throw new Error(`${e.message}: rows ${JSON.stringify(await events())}\n${child.err().slice(-3000)}`);
    });
    child.kill('SIGTERM');
    stopped = true;
    expect(await waitExit(child, 60_000), child.err()).toEqual({ code: 0, signal: null });
  } finally {
    if (!stopped) child.kill('SIGKILL');
  }
  // The restart recovers each source's DLQ from its mark: neither drops the other's dead letters.
  const again = sluiceBg([...args, '--log-json'], { env });
  try {
    for (const pipeline of ['a', 'b']) await untilEvent(again, { msg: 'reading from the source', pipeline });
  } finally {
    again.kill('SIGTERM');
    expect(await waitExit(again, 60_000), again.err()).toEqual({ code: 0, signal: null });
  }
  expect(again.err()).not.toMatch(/dropped dead letters/);
  expect((await broker.letters()).sort()).toEqual(['m1.a {"id": 0, not json', 'm1.a {"id": 1, not json', 'm1.b {"id": 0, not json', 'm1.b {"id": 1, not json']);
}

describe.concurrent('sluice run with several sources', () => {
  it('runs every source in one process until the files end; the layout is that of --source, so the two can be switched', async () => {
    const s = shop({ orders: 60, refunds: 25 });
    const r = await run(s.dir);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/done pipeline=orders messages=60/);
    expect(r.stderr).toMatch(/done pipeline=refunds messages=25/);
    expect(await counted(s.dir, 'orders', 'order_id')).toEqual({ n: 60, d: 60 });
    expect(await counted(s.dir, 'purchases', 'order_id, sku')).toEqual(await expectedPurchases(0, 60));
    expect(await counted(s.dir, 'refunds', 'refund_id')).toEqual({ n: 25, d: 25 });
    // Each source has the WAL (and default DLQ directory) `--source` gives it.
    expect(walState(s.dir, 'orders').position).toBeDefined();
    expect(walState(s.dir, 'refunds').position).toBeDefined();
    expect(fs.existsSync(path.join(s.dir, '.sluice/wal/state.json'))).toBe(false);

    // One process per source, on the WAL the single process left: each resumes where it was.
    fs.writeFileSync(path.join(s.dir, 'data/orders/b.ndjson'), orderLines(60, 80));
    fs.writeFileSync(path.join(s.dir, 'data/refunds/b.ndjson'), refundLines(25, 30));
    const one = await run(s.dir, ['--source', 'orders']);
    expect(one.code, one.stderr).toBe(0);
    expect(one.stderr).not.toMatch(/pipeline=refunds/);
    expect(await counted(s.dir, 'orders', 'order_id')).toEqual({ n: 80, d: 80 });
    expect(await counted(s.dir, 'refunds', 'refund_id')).toEqual({ n: 25, d: 25 });
    // Back to one process for all: only refunds has anything new.
    fs.writeFileSync(path.join(s.dir, 'data/refunds/c.ndjson'), refundLines(30, 31));
    const all = await run(s.dir);
    expect(all.code, all.stderr).toBe(0);
    expect(all.stderr).toMatch(/done pipeline=orders messages=0/);
    expect(all.stderr).toMatch(/done pipeline=refunds messages=6/);
    expect(await counted(s.dir, 'orders', 'order_id')).toEqual({ n: 80, d: 80 });
    expect(await counted(s.dir, 'refunds', 'refund_id')).toEqual({ n: 31, d: 31 });
    // --source may be repeated; a name that is no source is refused before anything runs.
    const both = await run(s.dir, ['--source', 'orders', '--source', 'refunds']);
    expect(both.code, both.stderr).toBe(0);
    expect(both.stderr).toMatch(/done pipeline=orders messages=0/);
    const bad = await run(s.dir, ['--source', 'orders', '--source', 'nope']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('--source nope: no source named "nope" (sources: orders, refunds)');
  });

  it('--model runs only the sources feeding the models; --dry-run prints one batch of each source under its name', async () => {
    const s = shop({ orders: 30, refunds: 12 });
    const dry = await run(s.dir, ['--dry-run']);
    expect(dry.code, dry.stderr).toBe(0);
    const blocks = dry.stdout.split(/^== source /m).slice(1);
    expect(blocks.map((b) => b.split(' ')[0]).sort()).toEqual(['orders', 'refunds']);
    const orders = blocks.find((b) => b.startsWith('orders'))!;
    expect(orders).toMatch(/dry run: 30 messages, nothing written or acknowledged/);
    expect(orders).toMatch(/^orders \(30 rows\)/m);
    expect(orders).toMatch(/^purchases \(\d+ rows\)/m);
    expect(orders).not.toMatch(/^refunds \(/m);
    expect(blocks.find((b) => b.startsWith('refunds'))).toMatch(/dry run: 12 messages[\s\S]*^refunds \(12 rows\)/m);
    expect(fs.existsSync(path.join(s.dir, 'output'))).toBe(false);

    const only = await run(s.dir, ['--model', 'refunds']);
    expect(only.code, only.stderr).toBe(0);
    expect(fs.existsSync(path.join(s.dir, 'output/lake/orders'))).toBe(false);
    expect(fs.readdirSync(path.join(s.dir, 'output/lake/refunds')).filter((f) => f.endsWith('.parquet'))).toHaveLength(1);
    const wrong = await run(s.dir, ['--model', 'refunds', '--source', 'orders']);
    expect(wrong.code).toBe(2);
    expect(wrong.stderr).toContain('--model refunds (source refunds): not fed by the sources chosen with --source (orders)');
    const unknown = await run(s.dir, ['--model', 'nope']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain('no model named "nope"');
  });

  it('serves one /readyz and /metrics for every pipeline (Redis source included) while following, and SIGTERM flushes everything and exits 0', async () => {
    // Flushes only at the stop: the rows are in the output only if the stop flushed them.
    const s = shop({ orders: 40, refunds: 15, follow: true, redis: true, maxAge: 3600 });
    const redis: Redis = createClient({ url: REDIS });
    await redis.connect();
    const port = await freePort();
    let child: ReturnType<typeof sluiceBg> | undefined;
    let stopped = false;
    try {
      await addClicks(redis, s.stream!, 0, 30);
      child = sluiceBg(['run', '--project', s.dir, '--port', String(port)]);
      const acked = async () => {
        const text = await httpGet(`http://127.0.0.1:${port}/metrics`).then(
          (r) => r.body,
          () => '',
        );
        const get = (src: string) => Number(new RegExp(`sluice_messages_acked_total\\{source="${src}"\\} (\\d+)`).exec(text)?.[1] ?? -1);
        return get('orders') === 40 && get('refunds') === 15 && get('clicks') === 30 ? text : undefined;
      };
      await until(acked, 30_000);
      // More input while running: followed files grow, the stream gets entries.
      fs.appendFileSync(path.join(s.dir, 'data/orders/a.ndjson'), orderLines(40, 55));
      fs.writeFileSync(path.join(s.dir, 'data/refunds/b.ndjson'), refundLines(15, 20));
      await addClicks(redis, s.stream!, 30, 45);
      await until(async () => {
        const text = await httpGet(`http://127.0.0.1:${port}/metrics`).then(
          (r) => r.body,
          () => '',
        );
        return (
          /sluice_messages_acked_total\{source="orders"\} 55\b/.test(text) &&
          /sluice_messages_acked_total\{source="refunds"\} 20\b/.test(text) &&
          /sluice_messages_acked_total\{source="clicks"\} 45\b/.test(text)
        );
      }, 30_000);

      expect((await httpGet(`http://127.0.0.1:${port}/healthz`)).status).toBe(200);
      const ready = await httpGet(`http://127.0.0.1:${port}/readyz`);
      expect(ready.status, ready.body).toBe(200);
      expect(JSON.parse(ready.body)).toEqual({
        ready: true,
        reasons: [],
        sources: Object.fromEntries(['orders', 'refunds', 'clicks'].map((n) => [n, { state: 'running', ready: true, reasons: [] }])),
      });

      const m = await httpGet(`http://127.0.0.1:${port}/metrics`);
      expect(m.status).toBe(200);
      const families = parseMetrics(m.body);
      for (const [name, f] of families) {
        expect([name, f.help, f.types]).toEqual([name, 1, 1]);
        for (const x of f.samples) expect(['orders', 'refunds', 'clicks'], `${x.name} ${JSON.stringify(x.labels)}`).toContain(x.labels.source);
      }
      const sourcesOf = (name: string) => [...new Set(families.get(name)!.samples.map((x) => x.labels.source))].sort();
      for (const name of [
        'sluice_messages_received_total',
        'sluice_messages_acked_total',
        'sluice_rows_total',
        'sluice_batch_duration_seconds',
        'sluice_wal_bytes',
        'sluice_ready',
        'sluice_sink_circuit_state',
        'sluice_ack_latency_seconds',
      ]) {
        expect(sourcesOf(name), name).toEqual(['clicks', 'orders', 'refunds']);
      }
      expect(families.get('sluice_batch_duration_seconds')!.type).toBe('histogram');
      const rows = (src: string, model: string) => families.get('sluice_rows_total')!.samples.find((x) => x.labels.source === src && x.labels.model === model)?.value;
      expect([rows('orders', 'orders'), rows('refunds', 'refunds'), rows('clicks', 'clicks')]).toEqual([55, 20, 45]);
      expect(families.get('sluice_ready')!.samples.map((x) => x.value)).toEqual([1, 1, 1]);
      // The Redis source reports its group's backlog (all read); files have none to report.
      expect(families.get('sluice_source_lag_messages')!.samples.map((x) => [x.labels, x.value])).toEqual([[{ source: 'clicks', topic: s.stream }, 0]]);
      // Nothing was flushed yet (max_age_seconds: 3600).
      for (const model of ['orders', 'purchases', 'refunds', 'clicks']) expect(fs.existsSync(path.join(s.dir, 'output/lake', model)), model).toBe(false);

      child.kill('SIGTERM');
      stopped = true;
      expect(await waitExit(child, 60_000), child.err()).toEqual({ code: 0, signal: null });
      const group = ((await redis.xInfoGroups(s.stream!)) as { name: string; pending: number }[]).find((g) => g.name === 'sluice');
      expect(group?.pending).toBe(0);
    } finally {
      if (!stopped) child?.kill('SIGKILL');
      await redis.del([s.stream!, `${s.stream}:dlq`]);
      await redis.quit();
    }
    expect(await counted(s.dir, 'orders', 'order_id')).toEqual({ n: 55, d: 55 });
    expect(await counted(s.dir, 'purchases', 'order_id, sku')).toEqual(await expectedPurchases(0, 55));
    expect(await counted(s.dir, 'refunds', 'refund_id')).toEqual({ n: 20, d: 20 });
    expect(await counted(s.dir, 'clicks', 'click_id')).toEqual({ n: 45, d: 45 });
    for (const src of ['orders', 'refunds']) expect(walSegments(s.dir, src)).toEqual([]);
    // The Redis source keeps its WAL per worker, under its source's directory, as with --source.
    expect(walSegments(s.dir, path.join('clicks', worker()))).toEqual([]);
    expect(walState(s.dir, 'clicks', worker())).toBeDefined();
  });

  it('/readyz is 503 naming the source whose sink fails and why, while the other sources deliver', async () => {
    const s = shop({ orders: 30, refunds: 10, follow: true, maxAge: 0.3 });
    // A file where refunds' output directory should be: its flushes fail until it is removed.
    fs.mkdirSync(path.join(s.dir, 'output/lake'), { recursive: true });
    fs.writeFileSync(path.join(s.dir, 'output/lake/refunds'), 'in the way');
    const port = await freePort();
    const child = sluiceBg(['run', '--project', s.dir, '--port', String(port)]);
    try {
      const red = await until(async () => {
        const r = await httpGet(`http://127.0.0.1:${port}/readyz`).catch(() => undefined);
        return r?.status === 503 && /flush of refunds failing/.test(r.body) ? r : undefined;
      }, 30_000);
      const body = JSON.parse(red.body) as { ready: boolean; reasons: string[]; sources: Record<string, { ready: boolean; reasons: string[] }> };
      expect(body.ready).toBe(false);
      expect(body.reasons.length).toBeGreaterThan(0);
      for (const reason of body.reasons) expect(reason).toMatch(/^source refunds: /);
      expect(body.reasons.join('\n')).toMatch(/^source refunds: flush of refunds failing: sink lake: parquet sink: writing refunds\/part-\S+ to \S+ failed: /m);
      expect(body.sources.orders).toEqual({ state: 'running', ready: true, reasons: [] });
      expect(body.sources.refunds.ready).toBe(false);
      await until(async () => (await counted(s.dir, 'orders', 'order_id')).n === 30, 20_000);
      fs.rmSync(path.join(s.dir, 'output/lake/refunds'));
      await until(async () => (await httpGet(`http://127.0.0.1:${port}/readyz`)).status === 200, 40_000);
      expect(await counted(s.dir, 'refunds', 'refund_id')).toEqual({ n: 10, d: 10 });
    } finally {
      child.kill('SIGTERM');
      expect((await waitExit(child, 60_000)).code, child.err()).toBe(0);
    }
  });

  // Alone, between the others: its kills land at random moments of runs it times.
  it.sequential('after SIGKILLs at the commit and sink-write points and at random moments, a restart has every row of every source exactly once', async () => {
    const s = shop({ orders: 3000, refunds: 2000, batch: 100, models: 'max_file_bytes: 20000\nmax_age_seconds: 0.2\n' });
    const args = ['run', '--project', s.dir, '--port', '0'];
    for (const [at, after] of [
      ['after-commit', '9'],
      ['after-sink-write', '4'],
      ['sink-temp-written', '3'],
      ['before-commit', '12'],
    ]) {
      const r = await sluiceAsync(args, { env: { SLUICE_CRASH_AT: at, SLUICE_CRASH_AFTER: after }, timeout: 120_000 });
      expect(r.code, `${at}: ${r.stderr.slice(-2000)}`).toBe(-1); // SIGKILLed at that point
    }
    // Then kills at random moments of runs that follow the files (they never end by themselves),
    // each with more input to be in the middle of.
    const sources = fs.readFileSync(path.join(s.dir, 'config/sources.yml'), 'utf8');
    fs.writeFileSync(path.join(s.dir, 'config/sources.yml'), sources.replaceAll('    batch_timeout_ms: 100\n', '    batch_timeout_ms: 100\n    follow: true\n    poll_interval_ms: 50\n'));
    let orders = 3000;
    let refunds = 2000;
    for (let i = 0; i < 3; i++) {
      fs.writeFileSync(path.join(s.dir, `data/orders/m${i}.ndjson`), orderLines(orders, orders + 1500));
      fs.writeFileSync(path.join(s.dir, `data/refunds/m${i}.ndjson`), refundLines(refunds, refunds + 1000));
      orders += 1500;
      refunds += 1000;
      const child = sluiceBg(args);
      await new Promise((r) => setTimeout(r, 400 + Math.floor(Math.random() * 1200)));
      child.kill('SIGKILL');
      expect((await waitExit(child)).signal, child.err()).toBe('SIGKILL');
    }
    fs.writeFileSync(path.join(s.dir, 'config/sources.yml'), sources);
    const last = await run(s.dir);
    expect(last.code, last.stderr.slice(-3000)).toBe(0);
    expect(await counted(s.dir, 'orders', 'order_id')).toEqual({ n: orders, d: orders });
    expect(await counted(s.dir, 'refunds', 'refund_id')).toEqual({ n: refunds, d: refunds });
    expect(await counted(s.dir, 'purchases', 'order_id, sku')).toEqual(await expectedPurchases(0, orders));
    for (const src of ['orders', 'refunds']) expect(walSegments(s.dir, src)).toEqual([]);
  }, 300_000);

  it('when one pipeline fails for good, the others stop gracefully (batches flushed) and the process exits 1 naming the source', async () => {
    const s = shop({
      orders: 50,
      refunds: 0,
      follow: true,
      maxAge: 0.3,
      sinks: 'sinks:\n  lake:\n    type: parquet\n    path: output/lake\n  brittle:\n    type: parquet\n    path: output/brittle\n    retry: { max_attempts: 2, backoff_ms: 50 }\n    on_error: fail\n',
      models: 'max_age_seconds: 0.3\noverrides:\n  orders: { sink: lake }\n  purchases: { sink: lake }\n  refunds: { sink: brittle }\n',
    });
    const child = sluiceBg(['run', '--project', s.dir, '--port', '0']);
    let exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
    try {
      await until(async () => (await counted(s.dir, 'orders', 'order_id')).n === 50, 20_000);
      // Refunds arrive, and their sink cannot take them.
      fs.mkdirSync(path.join(s.dir, 'output/brittle'), { recursive: true });
      fs.writeFileSync(path.join(s.dir, 'output/brittle/refunds'), 'in the way');
      fs.appendFileSync(path.join(s.dir, 'data/orders/a.ndjson'), orderLines(50, 60));
      fs.writeFileSync(path.join(s.dir, 'data/refunds/a.ndjson'), refundLines(0, 5));
      exit = await waitExit(child, 60_000);
    } finally {
      if (!exit) child.kill('SIGKILL');
    }
    expect(exit, child.err()).toEqual({ code: 1, signal: null });
    expect(child.err()).toMatch(/error: source refunds failed: sink brittle failed writing refunds\/part-\S+ \(2 attempts, on_error: fail\): parquet sink: .* \(source orders was stopped\)$/m);
    expect(child.err()).not.toMatch(/\n\s+at /);
    // orders was not killed: it ended its run, with everything it had read flushed.
    expect(child.err()).toMatch(/done pipeline=orders/);
    expect(walSegments(s.dir, 'orders')).toEqual([]);
    const orders = await counted(s.dir, 'orders', 'order_id');
    expect(orders.n).toBe(orders.d);
    expect(orders.n).toBeGreaterThanOrEqual(50);
    // The refunds stay in their WAL for the next run.
    expect(walSegments(s.dir, 'refunds').length).toBeGreaterThan(0);
    fs.rmSync(path.join(s.dir, 'output/brittle/refunds'));
    // The next run delivers them (follow: true never ends by itself: it is stopped).
    const again = sluiceBg(['run', '--project', s.dir, '--port', '0']);
    await until(() => {
      const d = path.join(s.dir, 'output/brittle/refunds');
      return fs.existsSync(d) && fs.readdirSync(d).some((f) => f.endsWith('.parquet'));
    }, 20_000);
    again.kill('SIGTERM');
    expect(await waitExit(again), again.err()).toEqual({ code: 0, signal: null });
    const [r] = await query(`SELECT count(*) AS n FROM read_parquet('${s.dir}/output/brittle/refunds/*.parquet')`);
    expect(Number(r.n)).toBe(5);
  });

  it('a sink path that cannot be created stops every pipeline and exits 1 naming the source', async () => {
    const s = shop({
      orders: 20,
      refunds: 5,
      follow: true,
      sinks: 'sinks:\n  lake:\n    type: parquet\n    path: output/lake\n  nowhere:\n    type: parquet\n    path: data/refunds/a.ndjson/out\n',
      models: 'max_age_seconds: 0.3\noverrides:\n  orders: { sink: lake }\n  purchases: { sink: lake }\n  refunds: { sink: nowhere }\n',
    });
    const r = await sluiceAsync(['run', '--project', s.dir, '--port', '0'], { timeout: 60_000 });
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr).toMatch(/error: source refunds failed: .*ENOTDIR.*data\/refunds\/a\.ndjson\/out.* \(source orders was stopped\)$/m);
    expect(r.stderr).toMatch(/done pipeline=orders/);
  });

  it('a source that fails while starting, after its PostgreSQL sink connected, closes it: the process exits 1 instead of hanging', async () => {
    const release = await lockPostgres();
    const schema = `multi_${process.pid}_${randomUUID().slice(0, 6)}`;
    try {
      await pgQuery(`CREATE SCHEMA ${schema}`);
      const s = shop({ orders: 20, refunds: 5, follow: true, sinks: `sinks:\n  db:\n    type: postgres\n    database: test\n    schema: ${schema}\n    auto_migrate: true\n` });
      // The refunds pipeline's WAL directory is a file: it fails opening its WAL, once its sink
      // holds connections to PostgreSQL (which, left open, kept the process alive for ever).
      fs.mkdirSync(path.join(s.dir, '.sluice/wal'), { recursive: true });
      fs.writeFileSync(path.join(s.dir, '.sluice/wal/refunds'), '');
      const child = sluiceBg(['run', '--project', s.dir, '--port', '0']);
      try {
        expect(await waitExit(child, 30_000).catch((e: Error) => e.message), child.err()).toEqual({ code: 1, signal: null });
      } finally {
        child.kill('SIGKILL');
      }
      expect(child.err()).toMatch(/error: source refunds failed: ENOTDIR: .*\.sluice\/wal\/refunds.* \(source orders was stopped\)$/m);
    } finally {
      await pgQuery(`DROP SCHEMA IF EXISTS ${schema} CASCADE`).catch(() => {});
      release();
    }
  });

  it('two sources write to one PostgreSQL sink: one state table, each model its table, every row once across a crash', async () => {
    const release = await lockPostgres();
    const schema = `multi_${process.pid}_${randomUUID().slice(0, 6)}`;
    try {
      await pgQuery(`CREATE SCHEMA ${schema}`);
      const s = shop({
        orders: 400,
        refunds: 300,
        batch: 50,
        sinks: `sinks:\n  db:\n    type: postgres\n    database: test\n    schema: ${schema}\n    auto_migrate: true\n`,
        models: 'max_file_bytes: 4000\nmax_age_seconds: 0.1\n',
      });
      const crashed = await run(s.dir, [], { SLUICE_CRASH_AT: 'after-sink-write', SLUICE_CRASH_AFTER: '6' });
      expect(crashed.code, crashed.stderr.slice(-2000)).toBe(-1);
      const r = await run(s.dir);
      expect(r.code, r.stderr.slice(-3000)).toBe(0);
      const count = async (t: string, key: string) => (await pgQuery<{ n: string; d: string }>(`SELECT count(*) AS n, count(DISTINCT (${key})) AS d FROM ${schema}.${t}`))[0];
      expect(await count('orders', 'order_id')).toEqual({ n: '400', d: '400' });
      expect(await count('refunds', 'refund_id')).toEqual({ n: '300', d: '300' });
      const purchases = await count('purchases', 'order_id, sku');
      expect({ n: Number(purchases.n), d: Number(purchases.d) }).toEqual(await expectedPurchases(0, 400));
      const applied = await pgQuery<{ model: string; n: string }>(`SELECT model, count(*) AS n FROM ${schema}._sluice_applied GROUP BY model ORDER BY model`);
      expect(applied.map((a) => a.model)).toEqual(['orders', 'purchases', 'refunds']);
    } finally {
      await pgQuery(`DROP SCHEMA IF EXISTS ${schema} CASCADE`).catch(() => {});
      release();
    }
  });

  it('two sources share an S3 sink: the one that ends first and closes its sink leaves the other one writing', async () => {
    const s3 = await startS3();
    try {
      await s3.createBucket('shared');
      const sink = { type: 'parquet', path: 's3://shared/lake', endpoint: s3.endpoint, force_path_style: true, retry: { max_attempts: 2, backoff_ms: 50 }, on_error: 'fail' };
      const s = shop({ orders: 20, refunds: 5, maxAge: 0.3, sinks: `sinks:\n  lake: ${JSON.stringify(sink)}\n` });
      // orders follows its file; refunds ends after its five lines, closing its S3 sink (and its temp files).
      const sources = fs.readFileSync(path.join(s.dir, 'config/sources.yml'), 'utf8');
      fs.writeFileSync(path.join(s.dir, 'config/sources.yml'), sources.replace('    batch_timeout_ms: 100\n', '    batch_timeout_ms: 100\n    follow: true\n    poll_interval_ms: 50\n'));
      const child = sluiceBg(['run', '--project', s.dir, '--port', '0', '--log-json'], { env: s3.env });
      let exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
      try {
        await untilEvent(child, { msg: 'done', pipeline: 'refunds', messages: 5 });
        await until(async () => (await s3.keys('shared', 'lake/orders/')).length > 0, 20_000);
        const before = (await s3.keys('shared', 'lake/orders/')).length;
        // Written after refunds closed its sink: orders' flushes still go through.
        fs.appendFileSync(path.join(s.dir, 'data/orders/a.ndjson'), orderLines(20, 35));
        await until(async () => (await s3.keys('shared', 'lake/orders/')).length > before || child.exitCode !== null, 20_000);
        child.kill('SIGTERM');
        exit = await waitExit(child, 60_000);
      } finally {
        if (!exit) child.kill('SIGKILL');
      }
      expect(exit, child.err()).toEqual({ code: 0, signal: null });
      const local = await s3.download('shared', 'lake');
      dirs.push(local);
      const count = async (model: string, key: string) => (await query(`SELECT count(*) AS n, count(DISTINCT ${key}) AS d FROM read_parquet('${local}/${model}/*.parquet')`))[0];
      expect(await count('orders', 'order_id')).toEqual({ n: '35', d: '35' });
      expect(await count('refunds', 'refund_id')).toEqual({ n: '5', d: '5' });
    } finally {
      await s3.stop();
      fs.rmSync(s3.dir, { recursive: true, force: true });
    }
  });

  it('two NATS sources sharing the default DLQ subject: a restart keeps the dead letters of both', async () => {
    // nats.test.ts restarts the server under this lock.
    const release = await machineLock('nats');
    const nc = await connect({ servers: '127.0.0.1:4222' });
    const jsm = await jetstreamManager(nc);
    const stream = `SLUICE_MULTI_${randomUUID().slice(0, 8).toUpperCase()}`;
    const dlq = `${stream}_DLQ`;
    try {
      await jsm.streams.add({ name: stream, subjects: [`${stream.toLowerCase()}.>`] });
      const js = jetstream(nc);
      const count = async () => (await jsm.streams.info(dlq).catch(() => undefined))?.state.messages ?? 0;
      // Two consumers of one stream: each source reads every message, and both dead-letter to sluice.dlq.<stream>.
      await deadLettersSurviveRestart({
        source: (consumer) => `    type: nats\n    servers: 127.0.0.1:4222\n    stream: ${stream}\n    consumer: ${consumer}\n`,
        publish: async (payload) => void (await js.publish(`${stream.toLowerCase()}.events`, payload)),
        count,
        async letters() {
          const info = await jsm.streams.info(dlq);
          const out: string[] = [];
          for (let seq = info.state.first_seq; seq <= info.state.last_seq; seq++) {
            const m = await jsm.streams.getMessage(dlq, { seq });
            out.push(`${m!.header.get('Sluice-Worker')} ${m!.string()}`);
          }
          return out;
        },
      });
    } finally {
      for (const name of [stream, dlq]) await jsm.streams.delete(name).catch(() => false);
      await nc.close();
      release();
    }
  });

  it('two Redis sources sharing the default DLQ stream: a restart keeps the dead letters of both; a one-source project tags its own as before', async () => {
    const redis: Redis = createClient({ url: REDIS });
    await redis.connect();
    const stream = `sluice-multi-${randomUUID().slice(0, 8)}`;
    const dlq = `${stream}:dlq`;
    try {
      // Two consumer groups on one stream: each source reads every entry, and both dead-letter to <stream>:dlq.
      const source = (group: string) => `    type: redis_streams\n    url: ${REDIS}\n    stream: ${stream}\n    group: ${group}\n`;
      await deadLettersSurviveRestart({
        source,
        publish: async (payload) => void (await redis.xAdd(stream, '*', { payload })),
        count: () => redis.xLen(dlq),
        letters: async () => (await redis.xRange(dlq, '-', '+')).map((e) => `${e.message.sluice_worker} ${e.message.payload}`),
      });

      // A project with one source keeps the plain worker id on its dead letters (and so its DLQ's recovery).
      const single = tempDir('sluice-single-');
      dirs.push(single);
      writeFiles(single, {
        'config/sources.yml': `source:\n${source('single')}`,
        'config/sinks.yml': 'sink:\n  type: parquet\n  path: output/lake\n',
        'config/models.yml': 'max_age_seconds: 0.3\n',
        'models/events.sql': 'SELECT e.id FROM incoming AS e\n',
      });
      const one = sluiceBg(['run', '--project', single, '--port', '0'], { env: { SLUICE_WORKER_ID: 'm1' } });
      try {
        await until(async () => (await redis.xLen(dlq)) === 6, 30_000);
      } finally {
        one.kill('SIGTERM');
        expect(await waitExit(one, 60_000), one.err()).toEqual({ code: 0, signal: null });
      }
      const workers = (await redis.xRange(dlq, '-', '+')).map((e) => e.message.sluice_worker);
      expect(workers.filter((w) => w === 'm1')).toHaveLength(2);
    } finally {
      await redis.del([stream, dlq]);
      await redis.quit();
    }
  });

  it('validate and run refuse sources that would share a consumer (Kafka group, NATS durable consumer, Redis group, RabbitMQ queue), naming both with file and line', async () => {
    const dir = tempDir('sluice-multi-');
    dirs.push(dir);
    const models = { 'models/a_rows.sql': "SELECT x.id FROM {{ source('a') }} AS x\n", 'models/b_rows.sql': "SELECT x.id FROM {{ source('b') }} AS x\n" };
    const project = (a: string, b: string) =>
      writeFiles(dir, { 'config/sources.yml': `sources:\n  a:\n${a}  b:\n${b}`, 'config/sinks.yml': 'sinks:\n  lake:\n    type: parquet\n    path: output/lake\n', ...models });
    const validate = () => sluiceAsync(['validate'], { cwd: dir, timeout: 60_000 });
    /** `validate` refuses sources a and b, saying `problem`. */
    const expectRefused = async (a: string, b: string, problem: string) => {
      project(a, b);
      const r = await validate();
      expect(r.code, r.stderr).toBe(2);
      expect(r.stderr).toContain(problem);
    };
    // No broker listens on port 1: validation refuses before anything connects.
    const kafka = (extra: string) => `    type: kafka\n    brokers: 127.0.0.1:1\n${extra}`;
    project(kafka('    topics: [orders]\n'), kafka('    topics: [refunds]\n'));
    const kafkaProblem =
      'config/sources.yml:6: sources.b.group_id: sources a (config/sources.yml:2) and b (config/sources.yml:6) consume as Kafka consumer group "sluice" on the same brokers: ' +
      "the group's leader assigns only the topics it subscribed to itself, so one of them would silently get no partitions (or, on the same topics, each would get only some); give each source its own `group_id:`";
    const v = await validate();
    expect(v.code, v.stderr).toBe(2);
    expect(v.stderr).toContain(`error: invalid project (1 problem):\n  ${kafkaProblem}\n`);
    const r = await sluiceAsync(['run', '--port', '0'], { cwd: dir, timeout: 30_000 });
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr).toContain(kafkaProblem);
    expect(r.stderr).not.toMatch(/\n\s+at |connect/i);
    // A group each; and the same group on another cluster is another group.
    project(kafka('    topics: [orders]\n    group_id: orders\n'), kafka('    topics: [refunds]\n    group_id: refunds\n'));
    expect((await validate()).code).toBe(0);
    project(kafka('    topics: [orders]\n'), '    type: kafka\n    brokers: [127.0.0.1:2, 127.0.0.1:3]\n    topics: [refunds]\n');
    expect((await validate()).code).toBe(0);
    project(kafka('    topics: [orders]\n'), '    type: kafka\n    brokers: [127.0.0.1:2, 127.0.0.1:1]\n    topics: [refunds]\n');
    expect((await validate()).stderr).toContain('sources a (config/sources.yml:2) and b (config/sources.yml:6) consume as Kafka consumer group "sluice"');

    // NATS: one stream through the default durable consumer (a filter_subject each does not make two consumers).
    const nats = (filter: string, extra = '') => `    type: nats\n    servers: nats://127.0.0.1:4222\n    stream: EVENTS\n    filter_subject: ${filter}\n${extra}`;
    await expectRefused(
      nats('events.a'),
      nats('events.b').replace('nats://', ''),
      'config/sources.yml:7: sources.b.consumer: sources a (config/sources.yml:2) and b (config/sources.yml:7) read stream EVENTS through the same durable consumer "sluice": ' +
        'it hands each message to one of them, with the filter_subject of the source that created it, so each would get only part of its messages; give each source its own `consumer:`',
    );
    project(nats('events.a', '    consumer: a\n'), nats('events.b', '    consumer: b\n'));
    expect((await validate()).code).toBe(0);

    // Redis: one stream in one group, whatever the consumer names; another database is another stream.
    const redis = (url: string, extra = '') => `    type: redis_streams\n    url: ${url}\n    stream: events\n${extra}`;
    await expectRefused(
      redis('redis://127.0.0.1:6379', '    consumer: one\n'),
      redis('redis://user:secret@127.0.0.1:6379/0', '    consumer: two\n'),
      'config/sources.yml:7: sources.b.group: sources a (config/sources.yml:2) and b (config/sources.yml:7) read stream events in the same consumer group "sluice": ' +
        'the group hands each entry to one consumer (and a consumer takes over entries another left pending), so each would see only part of the stream; give each source its own `group:`',
    );
    project(redis('redis://127.0.0.1:6379'), redis('redis://127.0.0.1:6379/1'));
    expect((await validate()).code).toBe(0);
    project(redis('redis://127.0.0.1:6379'), redis('redis://127.0.0.1:6379', '    group: other\n'));
    expect((await validate()).code).toBe(0);

    // RabbitMQ: one queue on one broker and virtual host, whether given by url or by its parts
    // (localhost is 127.0.0.1); another queue or another vhost is fine.
    const rabbit = (at: string, queue: string) => `    type: rabbitmq\n${at}    queue: ${queue}\n`;
    await expectRefused(
      rabbit('    url: amqp://guest:guest@localhost:1/\n', 'orders'),
      rabbit('    host: 127.0.0.1\n    port: 1\n', 'orders'),
      'config/sources.yml:6: sources.b.queue: sources a (config/sources.yml:2) and b (config/sources.yml:6) consume queue "orders" on the same broker: ' +
        'RabbitMQ hands each message of a queue to one of its consumers, so each would get only part of its messages (bind a queue of its own for each source to the exchange); give each source its own `queue:`',
    );
    project(rabbit('    url: amqp://localhost:1\n', 'orders'), rabbit('    url: amqp://localhost:1\n', 'refunds'));
    expect((await validate()).code).toBe(0);
    project(rabbit('    url: amqp://localhost:1/a\n', 'orders'), rabbit('    url: amqp://localhost:1/b\n', 'orders'));
    expect((await validate()).code).toBe(0);
  });

  it('a taken --port: one clear error, before any pipeline starts, as with one source', async () => {
    const s = shop({ orders: 10, refunds: 5 });
    const taken = net.createServer();
    const port = await new Promise<number>((resolve) => taken.listen(0, '0.0.0.0', () => resolve((taken.address() as net.AddressInfo).port)));
    try {
      const message = `error: --port ${port} is in use (another process listens on it): the ops server (/healthz, /readyz, /metrics) cannot start; choose another port with --port or server.port in sluice.yml (0 = no server)\n`;
      const all = await sluiceAsync(['run', '--project', s.dir, '--port', String(port)], { timeout: 60_000 });
      expect(all.code, all.stderr).toBe(2);
      expect(all.stderr.endsWith(message), all.stderr).toBe(true);
      expect(all.stderr).not.toMatch(/EADDRINUSE|\n\s+at /);
      // The server is up before any pipeline reads: nothing was read or staged.
      expect(fs.existsSync(path.join(s.dir, '.sluice/wal'))).toBe(false);
      const one = await sluiceAsync(['run', '--project', s.dir, '--port', String(port), '--source', 'orders'], { timeout: 60_000 });
      expect(one.code, one.stderr).toBe(2);
      expect(one.stderr.endsWith(message), one.stderr).toBe(true);
    } finally {
      await new Promise((r) => taken.close(r));
    }
    // Once the port is free, the same run goes through.
    const ok = await sluiceAsync(['run', '--project', s.dir, '--port', String(port)], { timeout: 60_000 });
    expect(ok.code, ok.stderr).toBe(0);
    expect(await counted(s.dir, 'orders', 'order_id')).toEqual({ n: 10, d: 10 });
  });

  it('a failure after the other sources ended by themselves does not say they were stopped', async () => {
    const s = shop({
      orders: 20,
      refunds: 0,
      maxAge: 0.3,
      sinks: 'sinks:\n  lake:\n    type: parquet\n    path: output/lake\n  brittle:\n    type: parquet\n    path: output/brittle\n    retry: { max_attempts: 2, backoff_ms: 50 }\n    on_error: fail\n',
      models: 'max_age_seconds: 0.3\noverrides:\n  orders: { sink: lake }\n  purchases: { sink: lake }\n  refunds: { sink: brittle }\n',
    });
    // orders reads its file to the end; refunds follows its directory.
    const sources = fs.readFileSync(path.join(s.dir, 'config/sources.yml'), 'utf8');
    fs.writeFileSync(path.join(s.dir, 'config/sources.yml'), sources.replace(/(refunds:[\s\S]*batch_timeout_ms: 100\n)/, '$1    follow: true\n    poll_interval_ms: 50\n'));
    const child = sluiceBg(['run', '--project', s.dir, '--port', '0', '--log-json']);
    let exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
    try {
      await untilEvent(child, { msg: 'done', pipeline: 'orders', messages: 20 });
      fs.mkdirSync(path.join(s.dir, 'output/brittle'), { recursive: true });
      fs.writeFileSync(path.join(s.dir, 'output/brittle/refunds'), 'in the way');
      fs.writeFileSync(path.join(s.dir, 'data/refunds/a.ndjson'), refundLines(0, 5));
      exit = await waitExit(child, 60_000);
    } finally {
      if (!exit) child.kill('SIGKILL');
    }
    expect(exit, child.err()).toEqual({ code: 1, signal: null });
    expect(child.err()).toMatch(/^error: source refunds failed: sink brittle failed writing refunds\/part-\S+ \(2 attempts, on_error: fail\): parquet sink: [^\n]*$/m);
    expect(child.err()).not.toMatch(/stopped\)|stopping the other sources/);
    expect(await counted(s.dir, 'orders', 'order_id')).toEqual({ n: 20, d: 20 });
  });

  it("the sources of one process divide the project's DuckDB threads and memory limit (or sluice's defaults); one source alone has them all", async () => {
    const s = shop({ orders: 10, refunds: 5 });
    // Each model reports the settings of the DuckDB it runs in.
    const settings = ", current_setting('memory_limit') AS mem, current_setting('threads') AS threads";
    writeFiles(s.dir, {
      'models/orders.sql': `SELECT o.order_id${settings} FROM {{ source('orders') }} AS o\n`,
      'models/refunds.sql': `SELECT r.refund_id${settings} FROM {{ source('refunds') }} AS r\n`,
      'sluice.yml': 'duckdb:\n  threads: 4\n  memory_limit: 3GiB\n',
    });
    const seen = async (model: string) =>
      (await query(`SELECT DISTINCT mem, threads::INTEGER AS threads FROM read_parquet('${s.dir}/output/lake/${model}/*.parquet') ORDER BY ALL`)).map((r) => `${r.mem} ${r.threads}`);
    const both = await run(s.dir);
    expect(both.code, both.stderr).toBe(0);
    expect(both.stderr).toContain(`the sources share DuckDB's threads and memory limit sources=2 threads=4 memory_limit=3GiB each={"threads":2,"memory_limit":"1536MiB"}`);
    expect(await seen('orders')).toEqual(['1.5 GiB 2']);
    expect(await seen('refunds')).toEqual(['1.5 GiB 2']);
    // --source runs one pipeline in this process: it has the project's settings whole.
    fs.writeFileSync(path.join(s.dir, 'data/orders/b.ndjson'), orderLines(10, 12));
    const one = await run(s.dir, ['--source', 'orders']);
    expect(one.code, one.stderr).toBe(0);
    expect(one.stderr).not.toMatch(/share DuckDB/);
    expect(await seen('orders')).toEqual(['1.5 GiB 2', '3.0 GiB 4']);

    // Without settings: sluice's defaults (a quarter of the memory, at most 2 GiB; a thread per core but one), halved.
    fs.rmSync(path.join(s.dir, 'sluice.yml'));
    fs.writeFileSync(path.join(s.dir, 'data/refunds/b.ndjson'), refundLines(5, 8));
    const defaults = await run(s.dir);
    expect(defaults.code, defaults.stderr).toBe(0);
    const d = { mem: `${Math.min(2048, Math.floor(os.totalmem() / 4 / 2 ** 20))} MiB` };
    const bytes = (t: string) => {
      const m = /^([\d.]+) (\w+)$/.exec(t)!;
      return Number(m[1]) * { KiB: 2 ** 10, MiB: 2 ** 20, GiB: 2 ** 30, TiB: 2 ** 40 }[m[2]]!;
    };
    const [latest] = await query(`SELECT mem, threads::INTEGER AS threads FROM read_parquet('${s.dir}/output/lake/refunds/*.parquet') WHERE refund_id >= 5005 LIMIT 1`);
    // DuckDB shows memory to one decimal: the half is within that rounding.
    expect(Math.abs(bytes(String(latest.mem)) / (bytes(String(d.mem)) / 2) - 1)).toBeLessThan(0.02);
    expect(Number(latest.threads)).toBe(Math.max(1, Math.floor(Math.max(1, os.availableParallelism() - 1) / 2)));
  });
});

describe('dlq commands in a project with several sources', () => {
  it("inspect shows every source's DLQ (or one with --source); replay sends each back through its own pipeline", async () => {
    // refunds above 100 fail in the refunds model (a runtime error): dead letters of source refunds, stage transform.
    const s = shop({ orders: 30, refunds: 0 });
    const bad = ['{"refund_id": 1, "order_id": 1, "amount": 500, "reason": "X"}', '{"refund_id": 2, "order_id": 2, "amount": 700, "reason": "Y"}'];
    writeFiles(s.dir, {
      'models/refunds.sql': "SELECT r.refund_id, r.order_id, CASE WHEN r.amount > 100 THEN error('refund above 100') ELSE r.amount END AS amount FROM {{ source('refunds') }} AS r\n",
      'data/refunds/a.ndjson': `${refundLines(0, 5)}${bad.join('\n')}\n`,
      // an order that is not JSON: a dead letter of source orders.
      'data/orders/b.ndjson': '{"order_id": 9999, broken\n',
    });
    const r = await sluiceAsync(['run', '--project', s.dir, '--port', '0'], { timeout: 60_000 });
    expect(r.code, r.stderr).toBe(0);
    expect(await counted(s.dir, 'refunds', 'refund_id')).toEqual({ n: 5, d: 5 });

    const all = await sluiceAsync(['dlq', 'inspect', '--project', s.dir], { timeout: 60_000 });
    expect(all.code, all.stderr).toBe(0);
    expect(all.stdout).toMatch(/^source orders: 1 dead letter\(s\) in .*orders/m);
    expect(all.stdout).toMatch(/^source refunds: 2 dead letter\(s\) in .*refunds/m);
    const one = await sluiceAsync(['dlq', 'inspect', '--project', s.dir, '--source', 'refunds', '--format', 'json'], { timeout: 60_000 });
    expect(one.code, one.stderr).toBe(0);
    const recs = JSON.parse(one.stdout) as { source_name: string; stage: string; payload: string }[];
    expect(recs.map((x) => [x.source_name, x.stage, x.payload])).toEqual(bad.map((b) => ['refunds', 'transform', b]));
    const unknown = await sluiceAsync(['dlq', 'inspect', '--project', s.dir, '--source', 'nope'], { timeout: 60_000 });
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/no source named "nope" \(sources: orders, refunds\)/);

    // The model is repaired; a replay of every source delivers the refunds and dead-letters the broken order again.
    writeFiles(s.dir, { 'models/refunds.sql': "SELECT r.refund_id, r.order_id, r.amount FROM {{ source('refunds') }} AS r\n" });
    const replay = await sluiceAsync(['dlq', 'replay', '--project', s.dir], { timeout: 60_000 });
    expect(replay.code, replay.stderr).toBe(0);
    expect(replay.stdout).toMatch(/^source orders: replayed 1 dead letter\(s\): 0 delivered, 1 failed again/m);
    expect(replay.stdout).toMatch(/^source refunds: replayed 2 dead letter\(s\): 2 delivered, 0 failed again/m);
    expect(await counted(s.dir, 'refunds', 'refund_id')).toEqual({ n: 7, d: 7 });
    const after = await sluiceAsync(['dlq', 'inspect', '--project', s.dir], { timeout: 60_000 });
    expect(after.stdout).toMatch(/^source orders: 1 dead letter\(s\)/m);
    expect(after.stdout).toMatch(/^source refunds: 0 dead letter\(s\)/m);
    const target = await sluiceAsync(['dlq', 'replay', '--project', s.dir, '--target', 'q'], { timeout: 60_000 });
    expect(target.code).toBe(2);
    expect(target.stderr).toMatch(/--target names one queue: choose the source .* with --source/);
  });
});
