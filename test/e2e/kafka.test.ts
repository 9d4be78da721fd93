import fs from 'node:fs';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { orderMessage } from '../../src/connectors/generator/generator-source.js';
import { query, sluice, sluiceBg, tempDir, until, waitExit, writeFiles } from '../helpers/cli.js';
import { expectGracefulStopLosesNothing, expectNoLossNoDuplicateAcrossKills, expectSourceOrder } from '../helpers/contract.js';
import { ensureTopic, groupCaughtUp, produce, readAll, startMockKafka, topicSize, uniqueTopic, type MockKafka } from '../helpers/kafka.js';

// The kafka source, DLQ and sink against librdkafka's Kafka-protocol mock cluster (kcat), started
// here: 3 brokers, topics auto-created with 4 partitions. Rebalances take session timeout - 1 s,
// so the groups run with a 4 s session timeout.

let mk: MockKafka;
const dirs: string[] = [];

beforeAll(async () => {
  mk = await startMockKafka();
});
afterEach(() => {
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});
afterAll(async () => {
  await mk?.stop();
});

/**
 * The source block; each topic is read by its own group (named after it), so no test waits for
 * another's members. `extra` overrides or adds keys.
 */
function sourceYml(topic: string, extra: Record<string, string | number> = {}): string {
  const keys: Record<string, string | number> = {
    type: 'kafka',
    brokers: mk.brokers,
    topics: `[${topic}]`,
    group_id: `g-${topic}`,
    session_timeout_ms: 4000,
    rebalance_timeout_ms: 4000,
    heartbeat_interval_ms: 400,
    max_wait_ms: 100,
    batch_size: 500,
    batch_timeout_ms: 200,
    ...extra,
  };
  return `source:\n${Object.entries(keys).map(([k, v]) => `  ${k}: ${v}`).join('\n')}\n`;
}

function project(topic: string, extra: Record<string, string | number> = {}, files: Record<string, string> = {}): string {
  const root = tempDir('sluice-kafka-');
  dirs.push(root);
  expect(sluice(['init', 'proj'], { cwd: root }).code).toBe(0);
  const p = path.join(root, 'proj');
  writeFiles(p, { 'config/sources.yml': sourceYml(topic, extra), 'config/models.yml': 'max_age_seconds: 0.3\n', ...files });
  return p;
}

const orders = (from: number, n: number) => Array.from({ length: n }, (_, i) => orderMessage(from + i, 4));

async function orderIds(p: string): Promise<{ n: number; d: number }> {
  if (!fs.existsSync(path.join(p, 'output/orders'))) return { n: 0, d: 0 };
  const r = await query(`SELECT count(*) AS n, count(DISTINCT order_id) AS d FROM read_parquet('${p}/output/orders/*.parquet')`);
  return { n: Number(r[0].n), d: Number(r[0].d) };
}

const caughtUp = (topic: string, group = `g-${topic}`) => () => groupCaughtUp(mk.admin, group, topic);

/** Peak resident memory of a process (kB), from /proc. */
function peakRssKb(pid: number): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : 0;
}

describe('kafka source', () => {
  it('good messages become rows; a bad one goes to <topic>_dlq with key, headers and sluice-* headers; inspect and replay', async () => {
    const topic = uniqueTopic();
    const msgs = orders(0, 400).map((value, i) => ({ key: `k${i + 1}`, value, headers: { origin: 'test' }, partition: i % 4 }));
    msgs[7].value = '{"order_id": 8, ';
    await produce(mk.producer, topic, msgs);
    const p = project(topic);
    const child = sluiceBg(['run', '--project', p, '--port', '0'], { env: { SLUICE_WORKER_ID: 'w1' } });
    await until(caughtUp(topic), 60_000, 200);
    await until(async () => (await orderIds(p)).n === 399, 30_000);
    child.kill('SIGTERM');
    expect((await waitExit(child)).code, child.err()).toBe(0);
    expect(await orderIds(p)).toEqual({ n: 399, d: 399 });
    // Output files are named by topic, partition and offsets (`_` and `-` of the topic made `~`).
    const files = fs.readdirSync(path.join(p, 'output/orders'));
    expect(files.length).toBeGreaterThan(0);
    for (const f of files) expect(f).toMatch(/^part-sluice~test~[0-9a-f]{8}\.p\d{4}\.o\d{19}-sluice~test~[0-9a-f]{8}\.p\d{4}\.o\d{19}\.parquet$/);

    const dead = await readAll(mk.kafka, mk.admin, `${topic}_dlq`);
    expect(dead).toHaveLength(1);
    const d = dead[0];
    expect(d.value).toBe('{"order_id": 8, ');
    expect(d.key).toBe('k8');
    expect(d.headers.origin).toBe('test');
    expect(d.headers['sluice-stage']).toBe('decode');
    expect(d.headers['sluice-error']).toMatch(/invalid JSON/);
    expect(d.headers['sluice-topic']).toBe(topic);
    expect(d.headers['sluice-partition']).toBe('3');
    expect(d.headers['sluice-offset']).toBe('1'); // the 8th message is the 2nd of partition 3
    expect(Date.parse(d.headers['sluice-time'])).toBeGreaterThan(0);

    const inspect = sluice(['dlq', 'inspect', '--project', p]);
    expect(inspect.code, inspect.stderr).toBe(0);
    expect(inspect.stdout).toMatch(/1 dead letter/);
    expect(inspect.stdout).toMatch(/invalid JSON/);
    expect(await topicSize(mk.admin, `${topic}_dlq`)).toBe(1);

    const before = await topicSize(mk.admin, topic);
    const replay = sluice(['dlq', 'replay', '--project', p]);
    expect(replay.code, replay.stderr).toBe(0);
    expect(replay.stdout).toMatch(/moved 1 dead letter/);
    expect(await topicSize(mk.admin, topic)).toBe(before + 1);
    const back = (await readAll(mk.kafka, mk.admin, topic)).filter((m) => m.value === '{"order_id": 8, ');
    expect(back).toHaveLength(2); // the original and its replayed copy
    const copy = back.find((m) => m.headers['sluice-error'] === undefined && !(m.partition === 3 && m.offset === 1))!;
    expect(copy.key).toBe('k8');
    expect(copy.headers.origin).toBe('test');
    expect(Object.keys(copy.headers).some((k) => k.startsWith('sluice-'))).toBe(false);
    // Replayed once: a second replay has nothing left to move.
    const again = sluice(['dlq', 'replay', '--project', p]);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toMatch(/moved 0 dead letter/);
    expect(await topicSize(mk.admin, topic)).toBe(before + 1);
  }, 120_000);

  it('models see topic, partition, offset, key, timestamp and headers as _topic, _partition, _offset, _key, _timestamp, _headers', async () => {
    const topic = uniqueTopic();
    const t0 = Date.now();
    await produce(mk.producer, topic, [1, 2, 3, 4, 5].map((i) => ({ key: `key-${i}`, value: orderMessage(i - 1, 4), headers: { origin: 'test', n: String(i) }, partition: 2 })));
    const p = project(topic, {}, {
      'models/meta.sql':
        "SELECT incoming.order_id, incoming._topic, incoming._partition, incoming._offset, incoming._key, incoming._headers['origin'] AS origin, incoming._headers['n'] AS n, incoming._timestamp AS ts FROM incoming\n",
    });
    const child = sluiceBg(['run', '--project', p, '--port', '0']);
    await until(caughtUp(topic), 60_000, 200);
    await until(() => fs.existsSync(path.join(p, 'output/meta')), 30_000);
    child.kill('SIGTERM');
    expect((await waitExit(child)).code, child.err()).toBe(0);
    const rows = await query(`SELECT * EXCLUDE (ts), epoch_ms(ts) AS ms FROM read_parquet('${p}/output/meta/*.parquet') ORDER BY order_id`);
    expect(rows.map(({ ms, ...r }) => r)).toEqual(
      [1, 2, 3, 4, 5].map((i) => ({ order_id: String(i), _topic: topic, _partition: 2, _offset: String(i - 1), _key: `key-${i}`, origin: 'test', n: String(i) })),
    );
    for (const r of rows) expect(Math.abs(Number(r.ms) - t0)).toBeLessThan(60_000);
  }, 90_000);

  it('contract: source order kept within a partition; a graceful stop mid-stream loses and repeats nothing', async () => {
    {
      const topic = uniqueTopic();
      await produce(mk.producer, topic, orders(0, 3000).map((value) => ({ value, partition: 1 })));
      await expectSourceOrder(project(topic), 3000, caughtUp(topic));
    }
    {
      const topic = uniqueTopic();
      await produce(mk.producer, topic, orders(0, 20_000));
      await expectGracefulStopLosesNothing(project(topic, { batch_size: 200 }), 20_000, caughtUp(topic));
    }
  }, 150_000);

  it('contract: SIGKILLed 10 times while messages are queued, none lost, no duplicate (dedupe_key on)', async () => {
    const topic = uniqueTopic();
    const N = 20_000;
    await produce(mk.producer, topic, orders(0, N));
    await expectNoLossNoDuplicateAcrossKills(project(topic, { batch_size: 200 }), N, caughtUp(topic));
  }, 240_000);

  it('exactly once WITHOUT dedupe_key across 10 SIGKILLs (random, between the WAL and Kafka commits, between sink write and WAL truncate)', async () => {
    const topic = uniqueTopic();
    const N = 40_000;
    await produce(mk.producer, topic, orders(0, N));
    const p = project(topic, { batch_size: 100 }, {
      'config/sinks.yml': 'sink:\n  type: parquet\n  path: ./output\n',
      'config/models.yml': 'max_file_bytes: 100000\nmax_age_seconds: 0.3\n',
      'models/orders.sql': 'SELECT incoming.order_id FROM incoming\n',
    });
    fs.rmSync(path.join(p, 'models/purchases.sql'));
    const args = ['run', '--project', p, '--port', '0', '--log-json'];
    let kills = 0;
    const crashes: Record<string, number> = {};
    for (let i = 0; kills < 10 && i < 30; i++) {
      const point = i % 4 === 0 ? 'after-commit' : i % 4 === 1 ? 'after-sink-write' : undefined;
      const env: NodeJS.ProcessEnv = { SLUICE_WORKER_ID: 'x1', ...(point ? { SLUICE_CRASH_AT: point, SLUICE_CRASH_AFTER: String(2 + Math.floor(Math.random() * 8)) } : {}) };
      const w = sluiceBg(args, { env });
      await until(() => w.err().includes('reading from the source') || w.exitCode !== null, 60_000, 20);
      if (!point) {
        await new Promise((r) => setTimeout(r, 300 + Math.floor(Math.random() * 1200)));
        if (w.exitCode === null) w.kill('SIGKILL');
      }
      const exit = await waitExit(w, 60_000);
      if (exit.signal === 'SIGKILL') {
        kills++;
        crashes[point ?? 'random'] = (crashes[point ?? 'random'] ?? 0) + 1;
      }
    }
    expect(kills).toBeGreaterThanOrEqual(10);
    expect(crashes['after-commit']).toBeGreaterThanOrEqual(2);
    expect(crashes['after-sink-write']).toBeGreaterThanOrEqual(2);
    const before = await orderIds(p);
    expect(before.n).toBeLessThan(N); // the kills came while there was work left
    const last = sluiceBg(args, { env: { SLUICE_WORKER_ID: 'x1' } });
    await until(caughtUp(topic), 120_000, 200);
    await until(async () => (await orderIds(p)).d === N, 60_000, 200);
    last.kill('SIGTERM');
    expect(await waitExit(last, 60_000), last.err().slice(-3000)).toEqual({ code: 0, signal: null });
    const r = await query(`SELECT count(*) AS n, count(DISTINCT order_id) AS d, min(order_id) AS lo, max(order_id) AS hi FROM read_parquet('${p}/output/orders/*.parquet')`);
    expect(r[0]).toEqual({ n: String(N), d: String(N), lo: '1', hi: String(N) });
  }, 300_000);

  it('two workers split the partitions; a third joining and leaving rebalances them with no loss (duplicates only where the broker refused a commit)', async () => {
    const topic = uniqueTopic();
    await produce(mk.producer, topic, orders(0, 30_000));
    const p = project(topic, { batch_size: 200 }, {
      'config/sinks.yml': 'sink:\n  type: parquet\n  path: ./output\n',
      'models/orders.sql': 'SELECT incoming.order_id, incoming._partition AS part FROM incoming\n',
    });
    fs.rmSync(path.join(p, 'models/purchases.sql'));
    const start = (id: string) => sluiceBg(['run', '--project', p, '--port', '0', '--log-json'], { env: { SLUICE_WORKER_ID: id } });
    /** The partitions a worker was given last. */
    const owned = (w: ReturnType<typeof start>): string[] | undefined => {
      const lines = w.err().split('\n').filter((l) => l.includes('Kafka partitions assigned'));
      return lines.length ? (JSON.parse(lines[lines.length - 1]) as { partitions: string[] }).partitions : undefined;
    };
    const w1 = start('w1');
    const w2 = start('w2');
    const workers = [w1, w2];
    try {
      await until(() => owned(w1)?.length === 2 && owned(w2)?.length === 2, 60_000, 100);
      expect(new Set([...owned(w1)!, ...owned(w2)!]).size).toBe(4);
      const w3 = start('w3');
      workers.push(w3);
      await until(() => (owned(w3)?.length ?? 0) >= 1 && (owned(w1)?.length ?? 0) + (owned(w2)?.length ?? 0) + owned(w3)!.length === 4, 60_000, 100);
      await produce(mk.producer, topic, orders(30_000, 10_000));
      await until(async () => w3.err().includes('"msg":"flushed"'), 30_000, 100);
      w3.kill('SIGTERM');
      expect(await waitExit(w3, 60_000), w3.err().slice(-2000)).toEqual({ code: 0, signal: null });
      await until(() => owned(w1)?.length === 2 && owned(w2)?.length === 2, 60_000, 100);
      await produce(mk.producer, topic, orders(40_000, 10_000));
      await until(caughtUp(topic), 120_000, 200);
      await until(async () => (await orderIds(p)).d === 50_000, 60_000, 200);
    } finally {
      for (const w of workers) w.kill('SIGTERM');
    }
    for (const w of [w1, w2]) expect(await waitExit(w, 60_000), w.err().slice(-2000)).toEqual({ code: 0, signal: null });
    const ids = await orderIds(p);
    expect(ids.d).toBe(50_000); // no loss
    // Batches in flight are committed before a partition is let go. The mock cluster, unlike
    // Kafka, refuses commits once a rebalance is pending: a batch whose commit was refused can
    // be read again by the partition's next owner. Every duplicate must be explained by one.
    const refused = workers.reduce((n, w) => n + (w.err().match(/"msg":"Kafka offset commit failed/g)?.length ?? 0), 0);
    console.log(`kafka rebalance: ${ids.n - ids.d} duplicate rows of 50000; ${refused} commits refused during rebalances (batch_size 200)`);
    expect(ids.n - ids.d).toBeLessThanOrEqual(refused * 200);
    // Every worker wrote output of its own.
    for (const id of ['w1', 'w2', 'w3']) expect(fs.readdirSync(path.join(p, '.sluice/wal', id)).length).toBeGreaterThan(0);
  }, 240_000);

  it('backpressure: with a large lag and a failing sink, memory stays bounded (peak RSS) and partitions pause and resume', async () => {
    const topic = uniqueTopic();
    const LAG = Number(process.env.SLUICE_KAFKA_LAG ?? 100_000);
    const msgs = Array.from({ length: LAG }, (_, i) => `{"order_id":${i + 1},"v":"abcdefghij"}`);
    await produce(mk.producer, topic, msgs, 50_000);
    const p = project(topic, { batch_size: 5000, max_buffer_bytes: 1_000_000 }, {
      'config/sinks.yml': 'sink:\n  type: parquet\n  path: ./output\n',
      'config/models.yml': 'max_age_seconds: 0.3\n',
      'models/orders.sql': 'SELECT incoming.order_id, incoming.v FROM incoming\n',
    });
    fs.rmSync(path.join(p, 'models/purchases.sql'));
    // A file where the model's output directory should be: every flush fails.
    fs.mkdirSync(path.join(p, 'output'), { recursive: true });
    fs.writeFileSync(path.join(p, 'output', 'orders'), 'in the way');
    const w = sluiceBg(['run', '--project', p, '--port', '0', '--log-json'], { env: { SLUICE_WORKER_ID: 'bp' } });
    let peak = 0;
    try {
      await until(() => w.err().includes('flush failed'), 60_000, 100);
      await until(async () => {
        peak = Math.max(peak, peakRssKb(w.pid!));
        return groupCaughtUp(mk.admin, `g-${topic}`, topic);
      }, 180_000, 250);
      peak = Math.max(peak, peakRssKb(w.pid!));
    } finally {
      w.kill('SIGTERM');
      await waitExit(w, 60_000).catch(() => w.kill('SIGKILL'));
    }
    console.log(`kafka backpressure: ${LAG} messages consumed with the sink failing; peak RSS ${Math.round(peak / 1024)} MiB`);
    expect(w.err()).toMatch(/backpressure: Kafka partitions paused/);
    expect(w.err()).toMatch(/backpressure released: Kafka partitions resumed/);
    // Everything is staged in the WAL on disk, nothing reached the sink.
    const staged = await query(`SELECT count(*) AS n FROM read_parquet('${p}/.sluice/wal/bp/models/orders/*.parquet')`);
    expect(Number(staged[0].n)).toBe(LAG);
    expect(peak).toBeGreaterThan(0);
    expect(peak).toBeLessThan(450 * 1024);
  }, 300_000);
});

describe('kafka sink', () => {
  it("a model's rows land in a topic as JSON, keyed by a column, big integers exact, with flush and row headers", async () => {
    const src = uniqueTopic();
    const out = uniqueTopic('sluice-out');
    // The big integer comes in the message: exact through DuckDB, the WAL and to_json.
    await produce(mk.producer, src, orders(0, 1000).map((v) => v.replace(/^\{/, '{"big":9007199254740993,')));
    const p = project(src, {}, {
      'config/sinks.yml': `sink:\n  type: kafka\n  brokers: ${mk.brokers}\n  topic: ${out}\n  key: order_id\n`,
      'models/orders.sql': 'SELECT incoming.order_id, incoming.user.id AS user_id, incoming.big FROM incoming\n',
    });
    fs.rmSync(path.join(p, 'models/purchases.sql'));
    const w = sluiceBg(['run', '--project', p, '--port', '0'], { env: { SLUICE_WORKER_ID: 's1' } });
    try {
      await until(caughtUp(src), 60_000, 200);
      await until(async () => (await topicSize(mk.admin, out)) >= 1000, 60_000, 200);
    } finally {
      w.kill('SIGTERM');
    }
    expect((await waitExit(w, 60_000)).code, w.err()).toBe(0);
    const got = await readAll(mk.kafka, mk.admin, out);
    expect(got).toHaveLength(1000);
    const ids = new Set<number>();
    for (const m of got) {
      expect(m.value).toMatch(/"big":9007199254740993[,}]/);
      const row = JSON.parse(m.value) as { order_id: number; user_id: number };
      expect(m.key).toBe(String(row.order_id));
      expect(Object.keys(row).sort()).toEqual(['big', 'order_id', 'user_id']);
      expect(m.headers['sluice-flush']).toMatch(/^part-/);
      expect(m.headers['sluice-row']).toMatch(/^\d+$/);
      ids.add(row.order_id);
    }
    expect(ids.size).toBe(1000);
  }, 120_000);
});
