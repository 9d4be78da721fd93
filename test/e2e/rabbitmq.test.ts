import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { orderMessage } from '../../src/connectors/generator/generator-source.js';
import { freePort, httpGet, jsonLogs, killRepeatedly, query, sluice, sluiceAsync, sluiceBg, tempDir, until, waitExit, writeFiles } from '../helpers/cli.js';
import amqp from 'amqplib';
import { AMQP_URL, deleteQueues, drain, publish, queueDepth, rabbitSourceYaml, uniqueQueue } from '../helpers/rabbit.js';
import { TLS_CA, TLS_PORT } from '../helpers/rabbit-tls.js';
import { machineLock } from '../helpers/machine-lock.js';
import { dropSocketsOnceConnected, sourceContract } from '../helpers/source-contract.js';

// otter's processing contract, row by row, against the RabbitMQ running on this machine.
// One file on purpose: two tests drop every connection or restart the broker, so they run
// last, one after the other, once the rest (each on queues of its own, concurrently: most of
// their time is waiting) is done.

const dirs: string[] = [];
const queues: string[] = [];
afterAll(async () => {
  await deleteQueues(...queues.flatMap((q) => [q, `${q}.dlq`]));
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

// One scaffold made before the tests start, copied for each project: no test blocks the
// event loop on `sluice init` while the others are talking to the broker.
let scaffold = '';
beforeAll(() => {
  const root = tempDir('sluice-rabbit-');
  dirs.push(root);
  const init = sluice(['init', 'proj', '--template', 'minimal'], { cwd: root });
  expect(init.code, init.stderr).toBe(0);
  scaffold = path.join(root, 'proj');
});

function project(queue: string, extra: Record<string, string> = {}): string {
  const root = tempDir('sluice-rabbit-');
  dirs.push(root);
  const p = path.join(root, 'proj');
  fs.cpSync(scaffold, p, { recursive: true });
  writeFiles(p, { 'config/sources.yml': rabbitSourceYaml(queue), 'config/models.yml': 'max_age_seconds: 0.3\n', ...extra });
  return p;
}

function q(): string {
  const name = uniqueQueue();
  queues.push(name);
  return name;
}

async function rows(p: string, model: string): Promise<Record<string, unknown>[]> {
  if (!fs.existsSync(path.join(p, 'output', model))) return [];
  try {
    return await query(`SELECT * FROM read_parquet('${p}/output/${model}/*.parquet')`);
  } catch {
    return [];
  }
}

const orders = (from: number, n: number) => Array.from({ length: n }, (_, i) => orderMessage(from + i, 5));

describe('rabbitmq source', () => {
  it.concurrent('good messages: rows written, acked only after the WAL commit, SIGTERM drains and exits 0', async () => {
    const queue = q();
    await publish(queue, orders(0, 500));
    const p = project(queue);
    const child = sluiceBg(['run', '--project', p, '--port', '0'], { env: { SLUICE_WORKER_ID: 'w1' } });
    await until(async () => (await rows(p, 'orders')).length === 500, 30_000);
    await until(async () => (await queueDepth(queue)) === 0);
    child.kill('SIGTERM');
    expect((await waitExit(child)).code, child.err()).toBe(0);
    const got = await query(`SELECT count(*) AS n, count(DISTINCT order_id) AS d FROM read_parquet('${p}/output/orders/*.parquet')`);
    expect(got[0]).toEqual({ n: '500', d: '500' });
    // File names carry the worker id.
    expect(fs.readdirSync(path.join(p, 'output/orders'))[0]).toMatch(/^part-w1\.\d{12}-w1\.\d{12}\.parquet$/);
  });

  it.concurrent('bad SQL and unparseable JSON go to the DLQ with body, headers, properties, error and stage; the rest proceeds', async () => {
    const queue = q();
    const p = project(queue, { 'models/codes.sql': 'SELECT incoming.order_id, CAST(incoming.code AS INTEGER) AS code FROM incoming\n' });
    const good = (i: number, code: string) => JSON.stringify({ order_id: i, user: { id: 1, name: 'a' }, items: [], currency: 'EUR', placed_at: 't', code });
    await publish(queue, [
      good(1, '10'),
      { body: good(2, 'abc'), headers: { 'x-tenant': 'acme' }, messageId: 'm-2' },
      { body: '{"order_id": 3, ', headers: { 'x-tenant': 'globex' }, messageId: 'm-3' },
      good(4, '40'),
    ]);
    const child = sluiceBg(['run', '--project', p, '--port', '0'], { env: { SLUICE_WORKER_ID: 'w1' } });
    await until(async () => (await rows(p, 'codes')).length === 2, 30_000);
    await until(async () => (await queueDepth(`${queue}.dlq`)) === 2);
    child.kill('SIGTERM');
    expect((await waitExit(child)).code).toBe(0);
    expect(await queueDepth(queue)).toBe(0);
    expect((await rows(p, 'orders')).map((r) => r.order_id).sort()).toEqual(['1', '4']);

    // inspect peeks without consuming
    const insp = await sluiceAsync(['dlq', 'inspect', '--project', p, '--format', 'json']);
    expect(insp.code, insp.stderr).toBe(0);
    const recs = JSON.parse(insp.stdout) as { stage: string; error: string; model?: string; source: { queue: string } }[];
    expect(recs.map((r) => r.stage).sort()).toEqual(['decode', 'transform']);
    expect(recs.find((r) => r.stage === 'transform')?.error).toMatch(/Could not convert string 'abc' to INT32/);
    expect(await queueDepth(`${queue}.dlq`)).toBe(2);

    const dead = await drain(`${queue}.dlq`);
    const t = dead.find((d) => d.properties.messageId === 'm-2')!;
    expect(t.body).toBe(good(2, 'abc'));
    expect(t.headers['x-tenant']).toBe('acme');
    expect(t.headers['x-sluice-stage']).toBe('transform');
    expect(t.headers['x-sluice-model']).toBe('codes');
    expect(t.headers['x-sluice-queue']).toBe(queue);
    expect(t.headers['x-sluice-routing-key']).toBe(queue);
    const d = dead.find((x) => x.properties.messageId === 'm-3')!;
    expect(d.body).toBe('{"order_id": 3, ');
    expect(d.headers['x-sluice-stage']).toBe('decode');
    expect(String(d.headers['x-sluice-error'])).toMatch(/invalid JSON/);
    expect(d.headers['x-tenant']).toBe('globex');
  });

  it.concurrent('dlq replay moves dead letters back with confirms; --target and --limit', async () => {
    const queue = q();
    const p = project(queue);
    await publish(queue, ['not json 1', 'not json 2', 'not json 3']);
    const child = sluiceBg(['run', '--project', p, '--port', '0']);
    await until(async () => (await queueDepth(`${queue}.dlq`)) === 3, 30_000);
    child.kill('SIGTERM');
    expect((await waitExit(child)).code).toBe(0);
    const other = q();
    await publish(other, []);
    const r1 = await sluiceAsync(['dlq', 'replay', '--project', p, '--target', other, '--limit', '1']);
    expect(r1.code, r1.stderr).toBe(0);
    expect(r1.stdout).toMatch(/moved 1 dead letter/);
    expect(await queueDepth(other)).toBe(1);
    const r2 = await sluiceAsync(['dlq', 'replay', '--project', p]);
    expect(r2.stdout).toMatch(/moved 2 dead letter/);
    expect(await queueDepth(`${queue}.dlq`)).toBe(0);
    const back = await drain(queue);
    expect(back.map((b) => b.body).sort()).toEqual(['not json 2', 'not json 3']);
    expect(back[0].headers['x-sluice-replays']).toBe(1);
    expect(back[0].headers['x-sluice-error']).toBeUndefined();
  });

  it.concurrent('declares an exchange and a binding; only matching routing keys arrive', async () => {
    const queue = q();
    const exchange = `${queue}.ex`;
    const p = project(queue, {
      'config/sources.yml': rabbitSourceYaml(
        queue,
        `  declare:\n    queue: true\n    exchange:\n      name: ${exchange}\n      type: topic\n    bindings:\n      - exchange: ${exchange}\n        routing_key: orders.*\n`,
      ),
      'models/routes.sql': 'SELECT incoming.order_id, incoming._key AS routing_key, incoming._topic AS queue FROM incoming\n',
    });
    const child = sluiceBg(['run', '--project', p, '--port', '0']);
    try {
      await until(() => child.err().includes('reading from the source'), 30_000);
      const conn = await amqp.connect(AMQP_URL);
      const ch = await conn.createConfirmChannel();
      for (let i = 0; i < 10; i++) ch.publish(exchange, i % 2 ? 'orders.eu' : 'audit.eu', Buffer.from(orderMessage(i, 5)), { persistent: true });
      await ch.waitForConfirms();
      await ch.deleteExchange(exchange).catch(() => {});
      await conn.close();
      await until(async () => (await rows(p, 'orders')).length === 5, 30_000);
      expect((await rows(p, 'orders')).map((r) => Number(r.order_id)).sort((a, b) => a - b)).toEqual([2, 4, 6, 8, 10]);
      await until(async () => (await rows(p, 'routes')).length === 5, 30_000);
      expect(new Set((await rows(p, 'routes')).map((r) => `${r.routing_key} ${r.queue}`))).toEqual(new Set([`orders.eu ${queue}`]));
    } finally {
      child.kill('SIGTERM');
      await waitExit(child);
    }
  });

  it.concurrent('consumes over TLS: the broker certificate verified against the configured CA, refused without it', async () => {
    const queue = q();
    await publish(queue, orders(0, 50));
    const tlsSource = (tls: string) => rabbitSourceYaml(queue).replace('host: 127.0.0.1\n  port: 5672', `host: localhost\n  port: ${TLS_PORT}`) + tls;
    // Without the CA, the self-signed chain is refused: the run gives up with the reason
    // (after its connect deadline) and consumes nothing.
    const untrusted = project(queue, { 'config/sources.yml': tlsSource('  tls: {}\n') });
    const refused = sluiceBg(['run', '--project', untrusted, '--port', '0']);
    const res = await waitExit(refused, 90_000);
    expect(res.code, refused.err()).toBe(1);
    expect(refused.err()).toMatch(/cannot connect to RabbitMQ at amqps:\/\/\*+@localhost:5671.*self-signed certificate/);
    expect(refused.err()).not.toMatch(/guest:guest/); // credentials masked
    expect(await queueDepth(queue)).toBe(50);
    const p = project(queue, { 'config/sources.yml': tlsSource(`  tls:\n    ca: ${TLS_CA}\n`) });
    const child = sluiceBg(['run', '--project', p, '--port', '0']);
    try {
      await until(async () => (await rows(p, 'orders')).length === 50, 30_000);
      await until(async () => (await queueDepth(queue)) === 0);
    } finally {
      child.kill('SIGTERM');
      expect((await waitExit(child)).code, child.err()).toBe(0);
    }
  });

  it.concurrent('run --dry-run consumes one batch, prints it and acks nothing', async () => {
    const queue = q();
    await publish(queue, orders(0, 20));
    const p = project(queue);
    const r = await sluiceAsync(['run', '--project', p, '--port', '0', '--dry-run']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/dry run: 20 messages/);
    expect(r.stdout).toMatch(/orders \(20 rows\)/);
    await until(async () => (await queueDepth(queue)) === 20);
    expect(fs.existsSync(path.join(p, 'output/orders'))).toBe(false);
  });

  it.concurrent('a worker SIGKILLed with the WAL intact replays it on restart: nothing lost, redeliveries counted', async () => {
    const queue = q();
    await publish(queue, orders(0, 1000));
    const p = project(queue, { 'config/models.yml': 'max_age_seconds: 3600\n' });
    // Killed after committing a batch to the WAL but before acking it, with nothing flushed yet.
    const crashed = await sluiceAsync(['run', '--project', p, '--port', '0'], { env: { SLUICE_CRASH_AT: 'after-commit', SLUICE_CRASH_AFTER: '3', SLUICE_WORKER_ID: 'w1' } });
    expect(crashed.code).toBe(-1);
    expect(fs.existsSync(path.join(p, 'output/orders'))).toBe(false);
    const walSegments = fs.readdirSync(path.join(p, '.sluice/wal/w1/models/orders'));
    expect(walSegments.length).toBe(3);
    // The restart replays the WAL at start whatever the flush age; flushing often from then on
    // lets the test wait for every order in the output before it stops the worker (a graceful
    // stop hands back what was prefetched but not yet read).
    writeFiles(p, { 'config/models.yml': 'max_age_seconds: 0.3\n' });
    const child = sluiceBg(['run', '--project', p, '--port', '0', '--log-json'], { env: { SLUICE_WORKER_ID: 'w1' } });
    await until(async () => (await queueDepth(queue)) === 0 && (await distinctOrders(p)) === 1000, 60_000);
    child.kill('SIGTERM');
    expect((await waitExit(child)).code).toBe(0);
    const got = await query(`SELECT count(*) AS n, count(DISTINCT order_id) AS d FROM read_parquet('${p}/output/orders/*.parquet')`);
    expect(Number(got[0].d)).toBe(1000);
    // Without dedupe_key, duplicates are bounded by the batches in flight (the unacked third batch).
    const dupes = Number(got[0].n) - 1000;
    expect(dupes).toBeGreaterThan(0);
    expect(dupes).toBeLessThanOrEqual(800); // prefetch: 4 x batch_size
    const done = jsonLogs(child.err()).find((l) => l.msg === 'done') as { redelivered: number };
    expect(done.redelivered).toBeGreaterThanOrEqual(dupes);
  });

  it.concurrent('with dedupe_key, messages redelivered after a crash produce no duplicate rows', async () => {
    const queue = q();
    await publish(queue, orders(0, 1000));
    const p = project(queue, {
      'config/models.yml': 'max_age_seconds: 3600\n',
      'config/sinks.yml': 'sink:\n  type: parquet\n  path: ./output\n  dedupe_key: order_id\n',
    });
    const crashed = await sluiceAsync(['run', '--project', p, '--port', '0'], { env: { SLUICE_CRASH_AT: 'after-commit', SLUICE_CRASH_AFTER: '3', SLUICE_WORKER_ID: 'w1' } });
    expect(crashed.code).toBe(-1);
    // The restart replays the WAL at start whatever the flush age; flushing often from then on
    // lets the test wait for every order in the output before it stops the worker (a graceful
    // stop hands back what was prefetched but not yet read).
    writeFiles(p, { 'config/models.yml': 'max_age_seconds: 0.3\n' });
    const child = sluiceBg(['run', '--project', p, '--port', '0', '--log-json'], { env: { SLUICE_WORKER_ID: 'w1' } });
    await until(async () => (await queueDepth(queue)) === 0 && (await distinctOrders(p)) === 1000, 60_000);
    child.kill('SIGTERM');
    expect((await waitExit(child)).code).toBe(0);
    const done = jsonLogs(child.err()).find((l) => l.msg === 'done') as { redelivered: number };
    expect(done.redelivered).toBeGreaterThan(0);
    const o = await query(`SELECT count(*) AS n, count(DISTINCT order_id) AS d FROM read_parquet('${p}/output/orders/*.parquet')`);
    expect(o[0]).toEqual({ n: '1000', d: '1000' });
    const items = orders(0, 1000).reduce((n, m) => n + (JSON.parse(m) as { items: unknown[] }).items.length, 0);
    const pr = await query(`SELECT count(*) AS n FROM read_parquet('${p}/output/purchases/*.parquet')`);
    expect(Number(pr[0].n)).toBe(items);
  });

  it.concurrent('an interrupted dlq replay loses nothing', async () => {
    const queue = q();
    const p = project(queue);
    const N = 6000;
    const bad = Array.from({ length: N }, (_, i) => `bad message ${i}`);
    await publish(queue, bad);
    const child = sluiceBg(['run', '--project', p, '--port', '0']);
    await until(async () => (await queueDepth(`${queue}.dlq`)) === N, 90_000);
    child.kill('SIGTERM');
    expect((await waitExit(child)).code).toBe(0);
    const target = q();
    await publish(target, []);
    // Watched on one open channel (a connection per look is slower than the replay's chunks).
    const conn = await amqp.connect(AMQP_URL);
    try {
      const ch = await conn.createChannel();
      const replay = sluiceBg(['dlq', 'replay', '--project', p, '--target', target]);
      await until(async () => (await ch.checkQueue(target)).messageCount >= 500, 30_000, 2);
      replay.kill('SIGKILL');
      await waitExit(replay);
    } finally {
      await conn.close();
    }
    // Every message is in the DLQ or the target (at most one chunk of 500 in both: published, not yet acked).
    const inDlq = await drain(`${queue}.dlq`);
    const moved = await drain(target);
    expect(moved.length).toBeGreaterThan(0);
    expect(inDlq.length).toBeGreaterThan(0);
    const seen = new Set([...inDlq, ...moved].map((m) => m.body));
    expect(seen.size).toBe(N);
    expect(inDlq.length + moved.length - N).toBeLessThanOrEqual(500);
  });

  it.concurrent('a Parquet write failure keeps the WAL, turns /readyz red, then green once fixed; messages stay acked', async () => {
    const queue = q();
    await publish(queue, orders(0, 100));
    const p = project(queue);
    fs.mkdirSync(path.join(p, 'output'), { recursive: true });
    fs.writeFileSync(path.join(p, 'output', 'orders'), 'in the way');
    const port = await freePort();
    const child = sluiceBg(['run', '--project', p, '--port', String(port)]);
    try {
      await until(async () => {
        try {
          const r = await httpGet(`http://127.0.0.1:${port}/readyz`);
          return r.status === 503 && /flush of orders failing/.test(r.body);
        } catch {
          return false;
        }
      }, 30_000);
      expect(await queueDepth(queue)).toBe(0); // acked: the rows are durable in the WAL
      fs.rmSync(path.join(p, 'output', 'orders'));
      await until(async () => (await httpGet(`http://127.0.0.1:${port}/readyz`)).status === 200, 40_000);
      expect((await rows(p, 'orders')).length).toBe(100);
    } finally {
      child.kill('SIGTERM');
      await waitExit(child);
    }
  }, 90_000);
});

// The source contract, each case on a queue of its own, concurrently with the chaos tests below.
// The connections it drops are its worker's only: the other tests keep theirs.
sourceContract('rabbitmq', {
  concurrent: true,
  redelivers: true,
  ends: false,
  dlq: { declared: true },
  reconnect: { declared: true, messages: 900, rounds: 3 },
  lag: { declared: true },
  async source() {
    const queue = q();
    return {
      project: project(queue),
      put: (payloads) => publish(queue, payloads),
      // Nothing ready in the queue (what the worker holds unacked comes back here if it dies).
      drained: async () => (await queueDepth(queue)) === 0,
      dropConnections: (pid) => dropSocketsOnceConnected(pid, 5672),
    };
  },
});

// Chaos against the real broker: workers SIGKILLed at random moments while messages are
// queued, then restarted; afterwards every message's rows must be in the output.

const root = tempDir('sluice-rchaos-');
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

const N = 12_000;
const chaosOrders = Array.from({ length: N }, (_, i) => orderMessage(i, 9));

function chaosProject(name: string, queue: string, sinkExtra = ''): string {
  const p = path.join(root, name);
  writeFiles(p, {
    'config/sources.yml': rabbitSourceYaml(queue),
    'config/sinks.yml': `sink:\n  type: parquet\n  path: ./output\n${sinkExtra}`,
    'config/models.yml': 'max_file_bytes: 200000\nmax_age_seconds: 0.5\n',
    'models/orders.sql': 'SELECT incoming.order_id, incoming.user.id AS user_id FROM incoming\n',
  });
  return p;
}

async function distinctOrders(p: string): Promise<number> {
  if (!fs.existsSync(path.join(p, 'output/orders'))) return 0;
  const r = await query(`SELECT count(DISTINCT order_id) AS d FROM read_parquet('${p}/output/orders/*.parquet')`).catch(() => [{ d: 0 }]);
  return Number(r[0].d);
}

async function chaos(p: string, queue: string, kills: number): Promise<number> {
  const done = await killRepeatedly(['run', '--project', p, '--port', '0', '--log-level', 'warn'], { SLUICE_WORKER_ID: 'w1' }, kills);
  // A last worker drains the queue and shuts down cleanly.
  const last = sluiceBg(['run', '--project', p, '--port', '0', '--log-json'], { env: { SLUICE_WORKER_ID: 'w1' } });
  await until(() => last.err().includes('reading from the source'), 60_000);
  // An empty queue can still have messages in the worker's prefetch: wait for every order.
  await until(async () => (await queueDepth(queue)) === 0 && (await distinctOrders(p)) === N, 90_000, 200);
  last.kill('SIGTERM');
  const res = await waitExit(last, 60_000);
  expect(res, last.err().slice(-3000)).toEqual({ code: 0, signal: null });
  return done;
}

describe.concurrent('rabbitmq chaos', () => {
  // With dedupe_key (none lost, none duplicated), this is the source contract's case.
  it.concurrent('SIGKILLs a worker at least 10 times without dedupe_key: no message lost, duplicates bounded', async () => {
    const queue = uniqueQueue('sluice-chaos');
    queues.push(queue);
    await publish(queue, chaosOrders);
    const p = chaosProject('chaos', queue);
    const kills = await chaos(p, queue, 10);
    expect(kills).toBeGreaterThanOrEqual(10);
    const r = await query(`SELECT count(*) AS n, count(DISTINCT order_id) AS d, min(order_id) AS lo, max(order_id) AS hi FROM read_parquet('${p}/output/orders/*.parquet')`);
    expect(r[0].d).toBe(String(N));
    expect([r[0].lo, r[0].hi]).toEqual(['1', String(N)]);
    const duplicates = Number(r[0].n) - N;
    // Each kill can repeat at most what was unacked: prefetch (4 x batch_size).
    expect(duplicates).toBeLessThanOrEqual(kills * 800);
    console.log(`chaos (dedupe_key off): ${kills} kills, ${duplicates} duplicate rows`);
  }, 240_000);

  it.concurrent('scales out: two workers on one queue write their own files, no loss, no collision', async () => {
    const queue = uniqueQueue('sluice-scale');
    queues.push(queue);
    await publish(queue, chaosOrders);
    const p = chaosProject('scale', queue);
    const a = sluiceBg(['run', '--project', p, '--port', '0'], { env: { SLUICE_WORKER_ID: 'a' } });
    const b = sluiceBg(['run', '--project', p, '--port', '0'], { env: { SLUICE_WORKER_ID: 'b' } });
    await until(() => a.err().includes('reading from the source') && b.err().includes('reading from the source'), 60_000);
    await until(async () => (await queueDepth(queue)) === 0 && (await distinctOrders(p)) === N, 90_000, 200);
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

describe('rabbitmq broker outages (alone in this file; the broker restart also holds the machine-wide rabbitmq lock)', () => {
  it(
    'survives a full broker restart',
    async () => {
      // Other test files using RabbitMQ (the sink's) hold this lock while they run.
      const release = await machineLock('rabbitmq');
      const queue = q();
      const p = project(queue);
      const port = await freePort();
      const child = sluiceBg(['run', '--project', p, '--port', String(port)]);
      try {
        await until(() => child.err().includes('reading from the source'), 30_000);
        await publish(queue, orders(0, 300));
        await until(async () => (await rows(p, 'orders')).length === 300, 30_000);
        execFileSync('rabbitmqctl', ['stop_app'], { stdio: 'ignore' });
        await until(() => child.err().includes('RabbitMQ connection lost'), 20_000);
        const red = await httpGet(`http://127.0.0.1:${port}/readyz`);
        expect(red.status).toBe(503);
        expect(red.body).toMatch(/source disconnected/);
        execFileSync('rabbitmqctl', ['start_app'], { stdio: 'ignore' });
        execFileSync('rabbitmqctl', ['await_startup'], { stdio: 'ignore' });
        await publish(queue, orders(300, 300));
        await until(async () => new Set((await rows(p, 'orders')).map((r) => r.order_id)).size === 600, 60_000);
        expect(child.err()).toMatch(/reconnected to RabbitMQ/);
      } finally {
        // The broker is up again (a no-op when it is) before anyone else may use it.
        execFileSync('rabbitmqctl', ['start_app'], { stdio: 'ignore' });
        execFileSync('rabbitmqctl', ['await_startup'], { stdio: 'ignore' });
        release();
        child.kill('SIGTERM');
        expect((await waitExit(child, 60_000)).code, child.err()).toBe(0);
      }
    },
    16 * 60_000,
  );
});
