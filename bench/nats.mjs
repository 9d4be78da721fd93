// NATS JetStream benchmark: sluice draining a stream backlog of order messages through the
// `orders` and `purchases` models to Parquet, against a bare @nats-io/jetstream durable pull
// consumer (explicit acks, flushed every batch) draining the same backlog in the same run.
//
// Without --batch-size or --max-ack-pending, sluice's source block sets no batch keys and no
// max_ack_pending: what a user gets (batch_size a ceiling of 25,000, batch_timeout_ms 1000,
// max_ack_pending min(4 x batch_size, 40,000) = 40,000). The bare consumer then gets the same
// max_ack_pending, 40,000, and pulls and flushes its acks per 10,000 messages, as it did when the
// benchmark set batch_size 10,000. With --batch-size B: sluice's batch_size B and
// batch_timeout_ms 1000, the bare consumer's batch B; both max_ack_pending min(4 x B, 40,000).
//
//   node bench/run.mjs nats [--messages 200000] [--runs 5] [--batch-size B] [--max-ack-pending M] [--threads T] [--debug 1]
import { connect } from '@nats-io/transport-node';
import { AckPolicy, DeliverPolicy, jetstream, jetstreamManager } from '@nats-io/jetstream';
import { batchKeys, describeSluiceKeys, drainBench, drainFlags, keysYaml, orderBodies, pidsNamed } from './lib.mjs';
import { orderMessage } from '../dist/connectors/generator/generator-source.js';

const flags = drainFlags('nats', { 'max-ack-pending': undefined });
// sluice's max_ack_pending key, set only when given; the bare consumer uses what sluice then uses.
const MAX_ACK_PENDING = flags['max-ack-pending'];
const BARE_MAX_ACK_PENDING = MAX_ACK_PENDING ?? flags.heldAhead;
const BATCH = flags.bareBatch;
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
 * The baseline: a durable pull consumer with sluice's settings (explicit acks, its
 * max_ack_pending), pulling continuously (`consume`, a batch buffered) and flushing the acks to
 * the server every batch, as sluice does after each WAL commit.
 */
async function bare(n) {
  await jsm.consumers.add(STREAM, {
    durable_name: 'bare',
    ack_policy: AckPolicy.Explicit,
    deliver_policy: DeliverPolicy.All,
    ack_wait: 30_000_000_000,
    max_ack_pending: BARE_MAX_ACK_PENDING,
  });
  const consumer = await jetstream(nc).consumers.get(STREAM, 'bare');
  const t0 = performance.now();
  const it = await consumer.consume({ max_messages: BATCH });
  let got = 0;
  for await (const m of it) {
    m.ack();
    got++;
    if (got % BATCH === 0 || got === n) await nc.flush();
    if (got === n) break;
  }
  const secs = (performance.now() - t0) / 1000;
  await it.close();
  return n / secs;
}

// The keys sluice's block sets beyond the connection ({} at its defaults).
const sluiceKeys = { ...batchKeys(flags), ...(MAX_ACK_PENDING === undefined ? {} : { max_ack_pending: MAX_ACK_PENDING }) };
await drainBench({
  name: 'nats',
  title: 'NATS JetStream',
  baseline: 'bare JetStream consumer',
  flags,
  fill,
  bare,
  brokerPids: () => (process.env.SLUICE_BENCH_NATS ? [] : pidsNamed('nats-server')),
  sourceYaml: `source:\n  type: nats\n  servers: ${SERVERS}\n  stream: ${STREAM}\n${keysYaml(sluiceKeys)}`,
  sluiceKeys,
  sluiceSettings: describeSluiceKeys(flags, [
    MAX_ACK_PENDING === undefined ? `max_ack_pending default (${flags.heldAhead.toLocaleString('en-US')})` : `max_ack_pending ${MAX_ACK_PENDING.toLocaleString('en-US')}`,
  ]),
  bareKeys: { max_ack_pending: BARE_MAX_ACK_PENDING, max_messages: BATCH, ack_flush_every: BATCH },
  bareSettings: `max_ack_pending ${BARE_MAX_ACK_PENDING.toLocaleString('en-US')}${MAX_ACK_PENDING === undefined ? " (sluice's)" : ''}, consume max_messages ${BATCH.toLocaleString('en-US')}, acks flushed every ${BATCH.toLocaleString('en-US')} messages${flags.batch === undefined ? ' (as when the benchmark set batch_size 10,000)' : ''}`,
  bodies,
  itemsIn,
});
await jsm.streams.delete(STREAM);
await nc.close();
