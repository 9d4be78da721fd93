import fs from 'node:fs';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { createClient } from 'redis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { orderMessage } from '../../src/connectors/generator/generator-source.js';
import { minimalScaffold, query, sluice, sluiceBg, tempDir, until, waitExit, writeFiles } from '../helpers/cli.js';
import { dropSocketsOnceConnected, sourceContract } from '../helpers/source-contract.js';

// The redis_streams source against the Redis running on this machine (127.0.0.1:6379).

const URL = 'redis://127.0.0.1:6379';
const redis = createClient({ url: URL });
const dirs: string[] = [];
const streams: string[] = [];

beforeAll(async () => {
  await redis.connect();
  scaffold();
});
// After the file, not after each test: the contract's cases run concurrently.
afterAll(async () => {
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
  for (const s of streams) await redis.del([s, `${s}:dlq`]);
  await redis.quit();
});

function stream(): string {
  const s = `sluice-test-${randomUUID().slice(0, 8)}`;
  streams.push(s);
  return s;
}

async function add(s: string, payloads: string[], field = 'payload'): Promise<void> {
  for (let i = 0; i < payloads.length; i += 500) {
    const multi = redis.multi();
    for (const p of payloads.slice(i, i + 500)) multi.xAdd(s, '*', { [field]: p, origin: 'test' });
    await multi.exec();
  }
}

/** Everything in the stream delivered to the group and acknowledged. */
async function drained(s: string, group = 'sluice'): Promise<boolean> {
  const groups = await redis.xInfoGroups(s).catch(() => []);
  const g = (groups as { name: string; pending: number; lag: number | null }[]).find((x) => x.name === group);
  return Boolean(g && g.pending === 0 && g.lag === 0);
}

const scaffold = (): string => minimalScaffold('sluice-redis-init-', dirs);

function project(s: string, extra = '', files: Record<string, string> = {}): string {
  const root = tempDir('sluice-redis-');
  dirs.push(root);
  const p = path.join(root, 'proj');
  fs.cpSync(scaffold(), p, { recursive: true });
  writeFiles(p, {
    'config/sources.yml': `source:\n  type: redis_streams\n  url: ${URL}\n  stream: ${s}\n  batch_size: 200\n  batch_timeout_ms: 200\n${extra}`,
    'config/models.yml': 'max_age_seconds: 0.3\n',
    ...files,
  });
  return p;
}

const orders = (from: number, n: number) => Array.from({ length: n }, (_, i) => orderMessage(from + i, 3));

async function orderIds(p: string): Promise<{ n: number; d: number }> {
  const r = await query(`SELECT count(*) AS n, count(DISTINCT order_id) AS d FROM read_parquet('${p}/output/orders/*.parquet')`);
  return { n: Number(r[0].n), d: Number(r[0].d) };
}

/** Orders in the output of two workers together. */
async function unionIds(a: string, b: string): Promise<{ n: number; d: number }> {
  const files = [a, b].filter((p) => fs.existsSync(path.join(p, 'output/orders'))).map((p) => `'${p}/output/orders/*.parquet'`);
  const r = await query(`SELECT count(*) AS n, count(DISTINCT order_id) AS d FROM read_parquet([${files.join(', ')}])`);
  return { n: Number(r[0].n), d: Number(r[0].d) };
}

describe('redis_streams source', () => {
  it('good entries become rows and are XACKed; bad ones go to the DLQ stream with the reason; inspect and replay', async () => {
    const s = stream();
    const msgs = orders(0, 300);
    msgs[10] = '{"order_id": 11, ';
    await add(s, msgs);
    const p = project(s);
    const child = sluiceBg(['run', '--project', p, '--port', '0'], { env: { SLUICE_WORKER_ID: 'r1' } });
    await until(() => drained(s), 30_000);
    await until(async () => fs.existsSync(path.join(p, 'output/orders')) && (await orderIds(p)).n === 299, 30_000);
    child.kill('SIGTERM');
    expect((await waitExit(child)).code, child.err()).toBe(0);
    expect(await orderIds(p)).toEqual({ n: 299, d: 299 });

    const dead = await redis.xRange(`${s}:dlq`, '-', '+');
    expect(dead).toHaveLength(1);
    expect(dead![0].message).toMatchObject({ payload: '{"order_id": 11, ', origin: 'test', sluice_stage: 'decode', sluice_worker: 'r1' });
    expect(dead![0].message.sluice_error).toMatch(/invalid JSON/);
    expect(JSON.parse(dead![0].message.sluice_source)).toMatchObject({ stream: s });

    const inspect = sluice(['dlq', 'inspect', '--project', p]);
    expect(inspect.code, inspect.stderr).toBe(0);
    expect(inspect.stdout).toMatch(/1 dead letter/);
    expect(inspect.stdout).toMatch(/invalid JSON/);
    expect(await redis.xLen(`${s}:dlq`)).toBe(1); // inspect consumes nothing

    const replay = sluice(['dlq', 'replay', '--project', p]);
    expect(replay.code, replay.stderr).toBe(0);
    expect(await redis.xLen(`${s}:dlq`)).toBe(0);
    const back = await redis.xRevRange(s, '+', '-', { COUNT: 1 });
    expect(back![0].message).toEqual({ payload: '{"order_id": 11, ', origin: 'test' });
  });

  it('models see the entry id, stream, time and other fields as _id, _topic, _timestamp, _headers', async () => {
    const s = stream();
    await add(s, orders(0, 5));
    const p = project(s, '', {
      'models/meta.sql': "SELECT incoming.order_id, incoming._topic, incoming._id, incoming._timestamp, incoming._headers['origin'] AS origin FROM incoming\n",
    });
    const child = sluiceBg(['run', '--project', p, '--port', '0']);
    await until(() => drained(s), 30_000);
    await until(() => fs.existsSync(path.join(p, 'output/meta')), 30_000);
    child.kill('SIGTERM');
    expect((await waitExit(child)).code, child.err()).toBe(0);
    const ids = ((await redis.xRange(s, '-', '+')) ?? []).map((e) => e.id);
    const rows = await query(`SELECT order_id, _topic, _id, epoch_ms(_timestamp) AS ms, origin FROM read_parquet('${p}/output/meta/*.parquet') ORDER BY order_id`);
    expect(rows).toEqual(ids.map((id, i) => ({ order_id: String(i + 1), _topic: s, _id: id, ms: id.split('-')[0], origin: 'test' })));
  });

  it('payloads holding newlines or the batch separator byte (0x1E) keep their batch in step; field "*" hands over all fields', async () => {
    const s = stream();
    const pretty = JSON.stringify(JSON.parse(orders(1, 1)[0]), null, 2); // valid JSON across lines
    const withSep = `${orders(2, 1)[0]}\x1e`; // not JSON: the 0x1E byte trails it
    await add(s, [orders(0, 1)[0], pretty, withSep, orders(3, 1)[0]]);
    const p = project(s, '', { 'models/meta.sql': "SELECT incoming.order_id, incoming._id, incoming._headers['origin'] AS origin FROM incoming\n" });
    const child = sluiceBg(['run', '--project', p, '--port', '0']);
    await until(() => drained(s), 30_000);
    await until(async () => fs.existsSync(path.join(p, 'output/meta')) && fs.existsSync(path.join(p, 'output/orders')), 30_000);
    child.kill('SIGTERM');
    expect((await waitExit(child)).code, child.err()).toBe(0);
    const ids = ((await redis.xRange(s, '-', '+')) ?? []).map((e) => e.id);
    const rows = await query(`SELECT order_id, _id, origin FROM read_parquet('${p}/output/meta/*.parquet') ORDER BY order_id`);
    expect(rows).toEqual([0, 1, 3].map((i) => ({ order_id: String(i + 1), _id: ids[i], origin: 'test' })));
    const dead = (await redis.xRange(`${s}:dlq`, '-', '+')) ?? [];
    expect(dead.map((e) => e.message.payload)).toEqual([withSep]);
    expect(JSON.parse(dead[0].message.sluice_source)).toEqual({ stream: s, id: ids[2] });

    const t = stream();
    await redis.xAdd(t, '*', { order_id: '7', note: 'line\none' });
    await redis.xAdd(t, '*', { order_id: '8', note: 'sep\x1etwo' });
    const q = project(t, '  field: "*"\n', { 'models/star.sql': 'SELECT incoming.order_id, incoming.note, incoming._headers IS NULL AS no_headers FROM incoming\n' });
    fs.rmSync(path.join(q, 'models/orders.sql'));
    fs.rmSync(path.join(q, 'models/purchases.sql'));
    const star = sluiceBg(['run', '--project', q, '--port', '0']);
    await until(() => drained(t), 30_000);
    await until(() => fs.existsSync(path.join(q, 'output/star')), 30_000);
    star.kill('SIGTERM');
    expect((await waitExit(star)).code, star.err()).toBe(0);
    expect(await query(`SELECT order_id, note, no_headers FROM read_parquet('${q}/output/star/*.parquet') ORDER BY order_id`)).toEqual([
      { order_id: '7', note: 'line\none', no_headers: true },
      { order_id: '8', note: 'sep\x1etwo', no_headers: true },
    ]);
  });

  it('acknowledges pending entries deleted from the stream before it could read them again', async () => {
    const s = stream();
    await add(s, orders(0, 10));
    await redis.xGroupCreate(s, 'sluice', '0');
    // This worker's consumer read 10 entries and died; 3 of them were deleted since.
    const r = await redis.xReadGroup('sluice', 'r2', { key: s, id: '>' }, { COUNT: 10 });
    const ids = r![0].messages.map((m) => m!.id);
    await redis.xDel(s, [ids[0], ids[4], ids[9]]);
    const p = project(s);
    const child = sluiceBg(['run', '--project', p, '--port', '0'], { env: { SLUICE_WORKER_ID: 'r2' } });
    await until(() => drained(s), 30_000);
    await until(async () => fs.existsSync(path.join(p, 'output/orders')) && (await orderIds(p)).n === 7, 30_000);
    child.kill('SIGTERM');
    expect((await waitExit(child)).code, child.err()).toBe(0);
    expect(await orderIds(p)).toEqual({ n: 7, d: 7 });
  });

  it('acknowledges its pending entries when every one of them was deleted and nothing new comes', async () => {
    const s = stream();
    await add(s, orders(0, 10));
    await redis.xGroupCreate(s, 'sluice', '0');
    const r = await redis.xReadGroup('sluice', 'r3', { key: s, id: '>' }, { COUNT: 10 });
    await redis.xDel(
      s,
      r![0].messages.map((m) => m!.id),
    );
    // The batch they make holds no message: the engine acks none such, the source does.
    const child = sluiceBg(['run', '--project', project(s), '--port', '0', '--log-json'], { env: { SLUICE_WORKER_ID: 'r3' } });
    try {
      await until(() => child.err().includes('reading from the source'), 30_000);
      // Read within the first batch window (200 ms); left pending for good without the source's ack.
      await until(() => drained(s), 10_000);
    } finally {
      child.kill('SIGTERM');
    }
    expect((await waitExit(child)).code, child.err()).toBe(0);
  });

  it('takes over entries a dead consumer left pending', async () => {
    const s = stream();
    await add(s, orders(0, 100));
    await redis.xGroupCreate(s, 'sluice', '0');
    // A consumer reads 60 entries and dies without acknowledging them.
    const r = await redis.xReadGroup('sluice', 'ghost', { key: s, id: '>' }, { COUNT: 60 });
    expect(r![0].messages).toHaveLength(60);
    const p = project(s, '  claim_idle_ms: 300\n');
    const child = sluiceBg(['run', '--project', p, '--port', '0', '--log-json']);
    await until(() => drained(s), 30_000);
    await until(async () => fs.existsSync(path.join(p, 'output/orders')) && (await orderIds(p)).n === 100, 30_000);
    child.kill('SIGTERM');
    expect((await waitExit(child)).code, child.err()).toBe(0);
    expect(await orderIds(p)).toEqual({ n: 100, d: 100 });
    expect(child.err()).toMatch(/took over entries another consumer left pending/);
  });

  it('entries a worker holds while a failing sink pauses its reading stay its own: another consumer does not take them over and read them twice', async () => {
    // Two workers in one group, claim_idle_ms 2 s. Worker c1's orders sink fails (its output
    // path is a file) and, with wal.max_bytes 1, reading pauses while c1 holds a batch it read
    // and has not acked. Worker c2 looks every second for entries idle for 2 s: without c1
    // keeping its held entries fresh, c2 takes them over and both write them. (Retries every
    // half second and no circuit breaker: c1 writes as soon as its sink works again.)
    const s = stream();
    const extra = '  claim_idle_ms: 2000\n';
    const sink = { 'config/sinks.yml': 'sink:\n  type: parquet\n  path: ./output\n  retry:\n    backoff_ms: 200\n    max_backoff_ms: 500\n  circuit:\n    failures: 100000\n' };
    const a = project(s, extra, { 'sluice.yml': 'name: held\nwal:\n  max_bytes: 1\n', ...sink });
    const b = project(s, extra, sink);
    writeFiles(a, { 'config/sources.yml': fs.readFileSync(path.join(a, 'config/sources.yml'), 'utf8').replace('batch_timeout_ms: 200', 'batch_timeout_ms: 1000') });
    for (const p of [a, b]) fs.rmSync(path.join(p, 'models/purchases.sql'), { force: true });
    fs.mkdirSync(path.join(a, 'output'), { recursive: true });
    fs.writeFileSync(path.join(a, 'output/orders'), 'not a directory\n');
    await add(s, orders(0, 50));
    const c1 = sluiceBg(['run', '--project', a, '--port', '0', '--log-json'], { env: { SLUICE_WORKER_ID: 'c1' } });
    let c2: ReturnType<typeof sluiceBg> | undefined;
    let n = 50;
    try {
      await until(() => c1.err().includes('reading from the source'), 30_000);
      // Trickled in until reading pauses, so that the batch c1 holds then is not empty.
      for (let i = 0; i < 300 && !c1.err().includes('reading paused'); i++) {
        await add(s, orders(n, 5));
        n += 5;
        await new Promise((r) => setTimeout(r, 60));
      }
      await until(() => c1.err().includes('reading paused'), 30_000);
      const heldBy = async (consumer: string) => (await redis.xPendingRange(s, 'sluice', '-', '+', 10_000, { consumer })).length;
      const held = await heldBy('c1');
      expect(held).toBeGreaterThan(0);
      c2 = sluiceBg(['run', '--project', b, '--port', '0', '--log-json'], { env: { SLUICE_WORKER_ID: 'c2' } });
      await until(() => c2!.err().includes('reading from the source'), 30_000);
      await new Promise((r) => setTimeout(r, 6000)); // three times claim_idle_ms
      expect(await heldBy('c1')).toBe(held);
      fs.rmSync(path.join(a, 'output/orders'));
      await until(async () => (await drained(s)) && fs.existsSync(path.join(a, 'output/orders')), 30_000);
      await until(async () => (await unionIds(a, b)).n === n, 30_000);
    } finally {
      c1.kill('SIGTERM');
      c2?.kill('SIGTERM');
    }
    expect((await waitExit(c1)).code, c1.err().slice(-2000)).toBe(0);
    expect((await waitExit(c2!)).code, c2!.err().slice(-2000)).toBe(0);
    expect(await unionIds(a, b)).toEqual({ n, d: n });
    expect(c2!.err()).not.toMatch(/took over entries/);
  }, 90_000);
});

sourceContract('redis_streams', {
  concurrent: true,
  redelivers: true,
  ends: false,
  dlq: { declared: true },
  reconnect: { declared: true, messages: 2000, rounds: 3 },
  lag: { declared: true },
  sizes: { kills: 8000 },
  async source() {
    const s = stream();
    return {
      project: project(s),
      put: (payloads) => add(s, payloads),
      drained: () => drained(s),
      dropConnections: (pid) => dropSocketsOnceConnected(pid, 6379),
    };
  },
});
