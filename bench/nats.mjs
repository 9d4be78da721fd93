// NATS JetStream benchmark: sluice draining a stream backlog of order messages through the
// `orders` and `purchases` models to Parquet, against a bare @nats-io/jetstream durable pull
// consumer (explicit acks, flushed every batch) draining the same backlog in the same run.
//
//   node bench/run.mjs nats [--messages 200000] [--runs 5] [--batch-size 10000] [--threads T] [--debug 1]
import { connect } from '@nats-io/transport-node';
import { AckPolicy, DeliverPolicy, jetstream, jetstreamManager } from '@nats-io/jetstream';
import { drainBench, drainFlags, orderBodies, pidsNamed } from './lib.mjs';
import { orderMessage } from '../dist/connectors/generator/generator-source.js';

const flags = drainFlags('nats');
const SERVERS = process.env.SLUICE_BENCH_NATS ?? '127.0.0.1:4222';
const { bodies, itemsIn } = orderBodies(orderMessage);
const STREAM = `SLUICE_BENCH_${process.pid}`;
const SUBJECT = `sluice.bench.${process.pid}`;

const nc = await connect({ servers: SERVERS });
const jsm = await jetstreamManager(nc);
await jsm.streams.add({ name: STREAM, subjects: [SUBJECT] });

/** An empty stream holding n messages (published with JetStream acks), no consumers. */
async function fill(n) {
  for (const c of await jsm.consumers.list(STREAM).next()) await jsm.consumers.delete(STREAM, c.name);
  await jsm.streams.purge(STREAM);
  const js = jetstream(nc);
  let acks = [];
  for (let i = 0; i < n; i++) {
    acks.push(js.publish(SUBJECT, bodies[i % bodies.length]));
    if (acks.length === 2000) {
      await Promise.all(acks);
      acks = [];
    }
  }
  await Promise.all(acks);
}

/**
 * The baseline: a durable pull consumer with sluice's settings (explicit acks, max_ack_pending
 * 4 x batch), pulling continuously (`consume`, a batch buffered) and flushing the acks to the
 * server every batch, as sluice does after each WAL commit.
 */
async function bare(n) {
  await jsm.consumers.add(STREAM, {
    durable_name: 'bare',
    ack_policy: AckPolicy.Explicit,
    deliver_policy: DeliverPolicy.All,
    ack_wait: 30_000_000_000,
    max_ack_pending: 4 * flags.batch,
  });
  const consumer = await jetstream(nc).consumers.get(STREAM, 'bare');
  const t0 = performance.now();
  const it = await consumer.consume({ max_messages: flags.batch });
  let got = 0;
  for await (const m of it) {
    m.ack();
    got++;
    if (got % flags.batch === 0 || got === n) await nc.flush();
    if (got === n) break;
  }
  const secs = (performance.now() - t0) / 1000;
  await it.close();
  return n / secs;
}

await drainBench({
  name: 'nats',
  title: 'NATS JetStream',
  baseline: 'bare JetStream consumer',
  flags,
  fill,
  bare,
  brokerPids: () => (process.env.SLUICE_BENCH_NATS ? [] : pidsNamed('nats-server')),
  sourceYaml: `source:\n  type: nats\n  servers: ${SERVERS}\n  stream: ${STREAM}\n  batch_size: ${flags.batch}\n  batch_timeout_ms: 1000\n`,
  bodies,
  itemsIn,
});
await jsm.streams.delete(STREAM);
await nc.close();
