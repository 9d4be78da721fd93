import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstream, jetstreamManager, type JetStreamManager } from '@nats-io/jetstream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { machineLock } from '../helpers/machine-lock.js';
import { scenarioTargets, writeSinks } from '../helpers/service-sink.js';
import { addInput, contractProject, plainRows, runOnce, sinkContract, type SinkTarget, type SinkUnderTest } from '../helpers/sink-contract.js';

// The nats sink against the machine's NATS JetStream: the contract suite, then subjects from a
// template, Nats-Msg-Id on every message, a replayed flush dropped by the stream's duplicate
// window, and the stream created by the sink. Each scenario has its own stream; breaking it for
// real deletes the stream, so publishes find no responder.

let nc: NatsConnection;
let jsm: JetStreamManager;
// nats.test.ts restarts the NATS server in one test: not while this file runs.
let release: (() => void) | undefined;
beforeAll(async () => {
  release = await machineLock('nats');
  nc = await connect({ servers: '127.0.0.1:4222' });
  jsm = await jetstreamManager(nc);
}, 16 * 60_000);
afterAll(async () => {
  await nc?.drain();
  release?.();
});

const streamOf = (t: SinkTarget) => `SINKTEST_${t.id}`;
const subjects = (t: SinkTarget) => [`sinktest.${t.id}.>`];

async function createStream(t: SinkTarget): Promise<void> {
  await jsm.streams.add({ name: streamOf(t), subjects: subjects(t) }).catch(async (err: unknown) => {
    if (!String(err).includes('already in use')) throw err;
  });
}

interface Got {
  subject: string;
  msgId?: string;
  body: Record<string, unknown>;
}

/** Every message of a stream, in order; [] when it does not exist. */
async function readStream(stream: string): Promise<Got[]> {
  const info = await jsm.streams.info(stream).catch(() => undefined);
  if (!info || info.state.messages === 0) return [];
  const total = info.state.messages;
  const consumer = await jetstream(nc).consumers.get(stream);
  const out: Got[] = [];
  while (out.length < total) {
    const batch = await consumer.fetch({ max_messages: Math.min(10_000, total - out.length), expires: 5000 });
    for await (const m of batch) {
      out.push({ subject: m.subject, msgId: m.headers?.get('Nats-Msg-Id'), body: m.json() });
    }
  }
  await consumer.delete().catch(() => {});
  return out;
}

const natsSut: SinkUnderTest = {
  name: 'nats',
  idempotent: false,
  largeRows: 50_000,
  async config(t) {
    await createStream(t);
    return { type: 'nats', servers: '127.0.0.1:4222', subject: `sinktest.${t.id}.events` };
  },
  readRows: async (t) => (await readStream(streamOf(t))).map((g) => g.body),
  async breakIt(t) {
    await jsm.streams.delete(streamOf(t)).catch(() => {});
  },
  async fixIt(t) {
    await createStream(t);
  },
  async cleanup(t) {
    await jsm.streams.delete(streamOf(t));
  },
};

sinkContract(natsSut);

const target = scenarioTargets('nats', (t) => jsm.streams.delete(streamOf(t)));

describe('nats sink', () => {
  it('subjects from a template; every message has a Nats-Msg-Id naming its flush and row', async () => {
    const t = target();
    await createStream(t);
    await contractProject(natsSut, t);
    writeSinks(t, { type: 'nats', subject: `sinktest.${t.id}.flag.{flag}` });
    addInput(t, 'a.ndjson', plainRows(30));
    const r = runOnce(t);
    expect(r.code, r.stderr).toBe(0);
    const got = await readStream(streamOf(t));
    expect(got.map((g) => g.body.id)).toEqual(plainRows(30).map((x) => x.id));
    for (const g of got) {
      expect(g.subject).toBe(`sinktest.${t.id}.flag.${String(g.body.flag)}`);
      expect(g.msgId).toMatch(/^proj\/events\/part-.+\/\d+$/);
    }
    expect(new Set(got.map((g) => g.msgId)).size).toBe(30);
  }, 60_000);

  it("a flush replayed after a crash is dropped by the stream's duplicate window: every row once", async () => {
    const t = target();
    await contractProject(natsSut, t, { batchSize: 50 });
    await jsm.streams.delete(streamOf(t)); // the contract's config made one; here the sink does
    // The sink creates the stream (stream + subjects), with a 10-minute duplicate window.
    writeSinks(t, { type: 'nats', subject: `sinktest.${t.id}.events`, stream: streamOf(t), subjects: subjects(t), duplicate_window_ms: 600_000 });
    addInput(t, 'a.ndjson', plainRows(150));
    const crashed = runOnce(t, { SLUICE_CRASH_AT: 'after-sink-write', SLUICE_CRASH_AFTER: '1' });
    expect(crashed.code).not.toBe(0);
    expect((await readStream(streamOf(t))).length).toBe(150);
    const again = runOnce(t);
    expect(again.code, again.stderr).toBe(0);
    // The replay did publish the flush again: JetStream said every copy was a duplicate.
    expect(again.stderr).toMatch(/JetStream dropped the copies of a replayed flush .*duplicates=150\b/);
    const info = await jsm.streams.info(streamOf(t));
    expect(info.config.duplicate_window).toBe(600_000 * 1_000_000);
    const got = await readStream(streamOf(t));
    expect(got.map((g) => g.body.id)).toEqual(plainRows(150).map((x) => x.id));
  }, 60_000);

  it('a missing stream without subjects is a clear error at start', async () => {
    const t = target();
    await contractProject(natsSut, t);
    await jsm.streams.delete(streamOf(t));
    writeSinks(t, { type: 'nats', subject: `sinktest.${t.id}.events`, stream: streamOf(t) });
    addInput(t, 'a.ndjson', plainRows(1));
    const r = runOnce(t);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain(`JetStream stream ${streamOf(t)} not found`);
  }, 60_000);
});
