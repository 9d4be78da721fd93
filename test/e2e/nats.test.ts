import fs from 'node:fs';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { connect, headers, type NatsConnection } from '@nats-io/transport-node';
import { jetstream, jetstreamManager, type JetStreamManager } from '@nats-io/jetstream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { machineLock } from '../helpers/machine-lock.js';
import { restartNats } from '../helpers/nats.js';
import { orderMessage } from '../../src/connectors/generator/generator-source.js';
import { jsonLogs, minimalScaffold, query, sluice, sluiceBg, tempDir, until, waitExit, writeFiles } from '../helpers/cli.js';
import { dropSocketsOnceConnected, expectReconnectAfterDrop, sourceContract, type ContractCase, type SourceContractTarget, type SourceUnderTest } from '../helpers/source-contract.js';

// The nats source against the NATS server with JetStream running on this machine. One file:
// a test restarts the server, so nothing else talks to NATS meanwhile.

let nc: NatsConnection;
let jsm: JetStreamManager;
const dirs: string[] = [];
const streams: string[] = [];

beforeAll(async () => {
  nc = await connect({ servers: '127.0.0.1:4222', maxReconnectAttempts: -1, reconnectTimeWait: 250 });
  jsm = await jetstreamManager(nc);
  scaffold();
});
// After the file, not after each test: the contract's cases run concurrently.
afterAll(async () => {
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
  for (const s of streams) for (const name of [s, `${s}_DLQ`]) await jsm.streams.delete(name).catch(() => false);
  await nc.close();
});

function stream(): string {
  const s = `SLUICE_TEST_${randomUUID().slice(0, 8).toUpperCase()}`;
  streams.push(s);
  return s;
}

async function publish(s: string, payloads: string[]): Promise<void> {
  const js = jetstream(nc);
  const acks: Promise<unknown>[] = [];
  for (let i = 0; i < payloads.length; i++) {
    const h = headers();
    h.set('Origin', 'test');
    acks.push(js.publish(`${s.toLowerCase()}.orders`, payloads[i], { headers: h }));
    if (acks.length >= 500) await Promise.all(acks.splice(0));
  }
  await Promise.all(acks);
}

/** Every message delivered to the consumer and acknowledged (or terminated). */
async function drained(s: string): Promise<boolean> {
  const info = await jsm.consumers.info(s, 'sluice').catch(() => undefined);
  return Boolean(info && info.num_pending === 0 && info.num_ack_pending === 0);
}

/**
 * A new stream and a project reading it, as the contract drives them. Where the case waits on
 * redeliveries or stops workers, ack_wait is 2 s: a batch the worker is merely slow with can be
 * redelivered after ack_wait (the server's 30 s default would make the case wait that long for
 * what a killed worker held).
 */
async function natsSource(scenario: ContractCase): Promise<SourceUnderTest & { stream: string }> {
  const s = stream();
  await jsm.streams.add({ name: s, subjects: [`${s.toLowerCase()}.>`] });
  return {
    stream: s,
    project: project(s, scenario === 'lag' || scenario === 'dlq' ? '' : '  ack_wait_ms: 2000\n'),
    put: (payloads) => publish(s, payloads),
    drained: () => drained(s),
    dropConnections: (pid) => dropSocketsOnceConnected(pid, 4222),
  };
}

const natsTarget: SourceContractTarget = {
  concurrent: true,
  source: natsSource,
  redelivers: true,
  ends: false,
  dlq: { declared: true },
  reconnect: { declared: true, messages: 1500, rounds: 2 },
  lag: { declared: true },
};

sourceContract('nats', natsTarget);

const scaffold = (): string => minimalScaffold('sluice-nats-init-', dirs);

function project(s: string, extra = '', files: Record<string, string> = {}): string {
  const root = tempDir('sluice-nats-');
  dirs.push(root);
  const p = path.join(root, 'proj');
  fs.cpSync(scaffold(), p, { recursive: true });
  writeFiles(p, {
    'config/sources.yml': `source:\n  type: nats\n  servers: 127.0.0.1:4222\n  stream: ${s}\n  subjects: ["${s.toLowerCase()}.>"]\n  batch_size: 200\n  batch_timeout_ms: 300\n${extra}`,
    'config/models.yml': 'max_age_seconds: 0.3\n',
    ...files,
  });
  return p;
}

const orders = (from: number, n: number) => Array.from({ length: n }, (_, i) => orderMessage(from + i, 4));

async function orderIds(p: string): Promise<{ n: number; d: number }> {
  if (!fs.existsSync(path.join(p, 'output/orders'))) return { n: 0, d: 0 };
  const r = await query(`SELECT count(*) AS n, count(DISTINCT order_id) AS d FROM read_parquet('${p}/output/orders/*.parquet')`);
  return { n: Number(r[0].n), d: Number(r[0].d) };
}

describe('nats source', () => {
  it('good messages become rows and are acked; a bad one is terminated and dead-lettered with headers; inspect and replay', async () => {
    const s = stream();
    await jsm.streams.add({ name: s, subjects: [`${s.toLowerCase()}.>`] });
    const msgs = orders(0, 300);
    msgs[7] = '{"order_id": 8, ';
    await publish(s, msgs);
    const p = project(s);
    const child = sluiceBg(['run', '--project', p, '--port', '0'], { env: { SLUICE_WORKER_ID: 'n1' } });
    await until(() => drained(s), 30_000);
    await until(async () => (await orderIds(p)).n === 299, 30_000);
    child.kill('SIGTERM');
    expect((await waitExit(child)).code, child.err()).toBe(0);
    expect(await orderIds(p)).toEqual({ n: 299, d: 299 });

    const dlq = await jsm.streams.info(`${s}_DLQ`);
    expect(dlq.state.messages).toBe(1);
    const dead = await jsm.streams.getMessage(`${s}_DLQ`, { seq: dlq.state.first_seq });
    expect(dead!.string()).toBe('{"order_id": 8, ');
    expect(dead!.header.get('Origin')).toBe('test');
    expect(dead!.header.get('Sluice-Stage')).toBe('decode');
    expect(dead!.header.get('Sluice-Error')).toMatch(/invalid JSON/);
    expect(dead!.header.get('Sluice-Subject')).toBe(`${s.toLowerCase()}.orders`);
    expect(dead!.header.get('Sluice-Seq')).toBe('8');

    const inspect = sluice(['dlq', 'inspect', '--project', p]);
    expect(inspect.code, inspect.stderr).toBe(0);
    expect(inspect.stdout).toMatch(/1 dead letter/);
    expect((await jsm.streams.info(`${s}_DLQ`)).state.messages).toBe(1);

    const replay = sluice(['dlq', 'replay', '--project', p]);
    expect(replay.code, replay.stderr).toBe(0);
    expect((await jsm.streams.info(`${s}_DLQ`)).state.messages).toBe(0);
    const info = await jsm.streams.info(s);
    const back = await jsm.streams.getMessage(s, { seq: info.state.last_seq });
    expect(back!.string()).toBe('{"order_id": 8, ');
    expect(back!.header.get('Origin')).toBe('test');
    expect(back!.header.get('Sluice-Error')).toBe('');
  });

  it('models see the subject, stream, sequence and headers as _key, _topic, _offset, _headers', async () => {
    const s = stream();
    await jsm.streams.add({ name: s, subjects: [`${s.toLowerCase()}.>`] });
    await publish(s, orders(0, 5));
    const p = project(s, '', {
      'models/meta.sql':
        "SELECT incoming.order_id, incoming._topic, incoming._key, incoming._offset, incoming._headers['Origin'] AS origin, incoming._timestamp IS NOT NULL AS has_time FROM incoming\n",
    });
    const child = sluiceBg(['run', '--project', p, '--port', '0']);
    await until(() => drained(s), 30_000);
    await until(() => fs.existsSync(path.join(p, 'output/meta')), 30_000);
    child.kill('SIGTERM');
    expect((await waitExit(child)).code, child.err()).toBe(0);
    const rows = await query(`SELECT * FROM read_parquet('${p}/output/meta/*.parquet') ORDER BY order_id`);
    expect(rows).toEqual([1, 2, 3, 4, 5].map((i) => ({ order_id: String(i), _topic: s, _key: `${s.toLowerCase()}.orders`, _offset: String(i), origin: 'test', has_time: true })));
  });

  it('messages trickling in across short batch deadlines arrive promptly, none waits for ack_wait', async () => {
    // A batch deadline (50 ms) shorter than the server's one-second pull: a pull cut short by
    // the client used to drop what the server was still delivering until ack_wait (60 s here).
    const s = stream();
    await jsm.streams.add({ name: s, subjects: [`${s.toLowerCase()}.>`] });
    const p = project(s, '  ack_wait_ms: 60000\n');
    writeFiles(p, { 'config/sources.yml': fs.readFileSync(path.join(p, 'config/sources.yml'), 'utf8').replace('batch_timeout_ms: 300', 'batch_timeout_ms: 50') });
    const child = sluiceBg(['run', '--project', p, '--port', '0']);
    try {
      await until(async () => (await jsm.consumers.info(s, 'sluice').catch(() => undefined)) !== undefined, 30_000);
      const N = 60;
      for (let i = 0; i < N; i++) {
        await publish(s, orders(i, 1));
        await new Promise((r) => setTimeout(r, 5 + (i % 7) * 11));
      }
      const started = Date.now();
      await until(async () => (await orderIds(p)).n === N, 20_000).catch(async (e: Error) => {
        throw new Error(`${e.message}: ${JSON.stringify(await orderIds(p))} after ${Date.now() - started} ms`);
      });
      expect(await orderIds(p)).toEqual({ n: N, d: N });
      expect(await drained(s)).toBe(true);
    } finally {
      child.kill('SIGTERM');
    }
    expect((await waitExit(child)).code, child.err()).toBe(0);
  }, 90_000);

  it('messages held ahead while a failing sink pauses reading are kept in progress: none is delivered again and read twice', async () => {
    // ack_wait 1.5 s; reading pauses once the first flush fails (wal.max_bytes 1), for 6 s while
    // the orders sink fails. The messages the engine and the source hold meanwhile would be
    // delivered again every 1.5 s into the source's open pull, and read twice, without their
    // working() acks.
    const s = stream();
    await jsm.streams.add({ name: s, subjects: [`${s.toLowerCase()}.>`] });
    const p = project(s, '  ack_wait_ms: 1500\n');
    writeFiles(p, {
      'sluice.yml': 'name: held\nwal:\n  max_bytes: 1\n',
      'config/sources.yml': fs.readFileSync(path.join(p, 'config/sources.yml'), 'utf8').replace('batch_size: 200', 'batch_size: 100'),
      'models/purchases.sql': '',
    });
    fs.rmSync(path.join(p, 'models/purchases.sql'));
    fs.mkdirSync(path.join(p, 'output'), { recursive: true });
    fs.writeFileSync(path.join(p, 'output/orders'), 'not a directory\n');
    await publish(s, orders(0, 50));
    const child = sluiceBg(['run', '--project', p, '--port', '0', '--log-json']);
    try {
      // Trickled in from the start: when reading pauses, the engine holds a batch it read and
      // has not acked, and the source holds more.
      await until(() => child.err().includes('reading from the source'), 30_000);
      for (let i = 0; i < 14; i++) {
        await publish(s, orders(50 + i * 5, 5));
        await new Promise((r) => setTimeout(r, 60));
      }
      await until(() => child.err().includes('reading paused'), 30_000);
      await new Promise((r) => setTimeout(r, 6000));
      fs.rmSync(path.join(p, 'output/orders'));
      await until(async () => (await drained(s)) && (await orderIds(p)).d === 120, 30_000);
    } finally {
      child.kill('SIGTERM');
    }
    expect((await waitExit(child)).code, child.err().slice(-2000)).toBe(0);
    expect(await orderIds(p)).toEqual({ n: 120, d: 120 });
    const done = child
      .err()
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { msg: string; redelivered?: number })
      .find((l) => l.msg === 'done');
    expect(done?.redelivered).toBe(0);
  }, 90_000);

  it('a batch that takes longer than ack_wait is kept in progress: none of its messages is delivered again and read twice', async () => {
    // ack_wait 1 s, and each batch of 200 spends seconds in its model (an uncorrelated subquery
    // over 10^8 rows, which DuckDB runs once a batch). Without the source's working() for the
    // batches the engine holds, the server would deliver them again every second.
    const s = stream();
    await jsm.streams.add({ name: s, subjects: [`${s.toLowerCase()}.>`] });
    await publish(s, orders(0, 400));
    const slow = 'SELECT incoming.order_id FROM incoming WHERE (SELECT count(*) FROM range(100000000) t(x) WHERE hash(x) % 7 = 0) > 0\n';
    const p = project(s, '  ack_wait_ms: 1000\n', { 'models/orders.sql': slow, 'models/purchases.sql': '' });
    fs.rmSync(path.join(p, 'models/purchases.sql'));
    const child = sluiceBg(['run', '--project', p, '--port', '0', '--log-json']);
    try {
      await until(async () => (await drained(s)) && (await orderIds(p)).n >= 400, 90_000);
    } finally {
      child.kill('SIGTERM');
    }
    expect((await waitExit(child)).code, child.err().slice(-2000)).toBe(0);
    expect(await orderIds(p)).toEqual({ n: 400, d: 400 });
    const done = jsonLogs(child.err()).find((l) => l.msg === 'done');
    expect(done?.redelivered, JSON.stringify(done)).toBe(0);
  }, 120_000);

  it('a backlog is handed over in chunks of what each read brought, not a message at a time', async () => {
    // The pump hands messages over one promise turn each; a poll that returned as soon as the
    // first had landed made batches of thousands of one-message chunks, each acked and flushed
    // on its own (NATS drained at a third of its speed).
    const s = stream();
    await jsm.streams.add({ name: s, subjects: [`${s.toLowerCase()}.>`] });
    await publish(s, orders(0, 30_000));
    const p = project(s);
    // The default batch keys: batches ramp up past what one pull brings (max_ack_pending 40,000, pulls of up to 20,000).
    writeFiles(p, { 'config/sources.yml': fs.readFileSync(path.join(p, 'config/sources.yml'), 'utf8').replace(/ {2}batch_(size|timeout_ms): \d+\n/g, '') });
    const child = sluiceBg(['run', '--project', p, '--port', '0', '--log-json', '--log-level', 'debug']);
    try {
      await until(async () => (await drained(s)) && (await orderIds(p)).d === 30_000, 60_000);
    } finally {
      child.kill('SIGTERM');
    }
    expect((await waitExit(child)).code, child.err().slice(-2000)).toBe(0);
    const batches = jsonLogs(child.err()).filter((l) => l.msg === 'batch committed') as { messages: number; chunks: number }[];
    const messages = batches.reduce((n, b) => n + b.messages, 0);
    const chunks = batches.reduce((n, b) => n + b.chunks, 0);
    expect(messages).toBe(30_000);
    // One chunk a message was the bug; a read brings hundreds.
    expect(messages / chunks, JSON.stringify(batches.map((b) => [b.messages, b.chunks]))).toBeGreaterThan(50);
  }, 90_000);

  it('a missing stream without subjects: one clear error, and the process exits (its connection closed)', async () => {
    const s = stream();
    const p = project(s);
    writeFiles(p, { 'config/sources.yml': fs.readFileSync(path.join(p, 'config/sources.yml'), 'utf8').replace(/ {2}subjects: .*\n/, '') });
    const child = sluiceBg(['run', '--project', p, '--port', '0']);
    try {
      expect(await waitExit(child, 30_000).catch((e: Error) => e.message), child.err()).toEqual({ code: 1, signal: null });
    } finally {
      child.kill('SIGKILL');
    }
    expect(child.err()).toMatch(new RegExp(`error: JetStream stream ${s} not found .*set subjects: to create it`));
    expect(child.err()).not.toMatch(/\n\s+at /);
  });

  it(
    'survives NATS server restarts: reconnects, /readyz green again, nothing lost or repeated',
    async () => {
      // Other test files using NATS (the sink's) hold this lock while they run.
      const release = await machineLock('nats');
      try {
        // The contract's reconnect case, with the whole server restarted instead of the worker's connections killed.
        const restarting: SourceContractTarget = {
          ...natsTarget,
          async source(scenario) {
            const src = await natsSource(scenario);
            const s = src.stream;
            src.dropConnections = async () => {
              await restartNats();
              // JetStream is back once it serves the stream again (to this test's reconnected client too).
              await until(async () => (await jsm.streams.info(s).catch(() => undefined)) !== undefined, 30_000, 100, `stream ${s} served again after the restart`);
            };
            return src;
          },
        };
        await expectReconnectAfterDrop(restarting, 1000, 2);
      } finally {
        release();
      }
    },
    16 * 60_000,
  );
});
