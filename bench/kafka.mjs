// Kafka benchmark: sluice draining a topic backlog of order messages through the `orders` and
// `purchases` models to Parquet, against a bare kafkajs consumer (same client, same group
// settings, eachBatch, offsets committed after every batch) draining the same backlog in the
// same run, both over 8 fresh topics of 4 partitions. The broker is librdkafka's mock cluster started here by kcat (3 brokers, topics
// with 4 partitions), or SLUICE_BENCH_KAFKA=host:port,... for a real cluster.
//
// Without --batch-size (or the fetch flags), sluice's source block sets no batch keys and no
// fetch keys: what a user gets (batch_size a ceiling of 25,000, batch_timeout_ms 1000,
// max_bytes_per_partition 1 MiB, max_buffer_bytes 32 MiB). The bare consumer then fetches the
// same 1 MiB a partition and commits after every kafkajs batch, as before. With --batch-size B:
// sluice's batch_size B and batch_timeout_ms 1000, and (as before) max_bytes_per_partition 8 MiB
// for both consumers and sluice's max_buffer_bytes 128 MiB; --max-bytes-per-partition and
// --max-buffer-bytes set those keys by themselves.
//
//   node bench/kafka.mjs [--messages 200000] [--runs 5] [--batch-size B] [--max-bytes-per-partition N] [--max-buffer-bytes N] [--threads T] [--debug 1]
import { Kafka, logLevel } from 'kafkajs';
import { batchKeys, describeSluiceKeys, drainBench, drainFlags, keysYaml, orderBodies, startKafkaMock } from './lib.mjs';
import { orderMessage } from '../dist/connectors/generator/generator-source.js';
import { kafkaSourceSchema } from '../dist/connectors/kafka/kafka-config.js';

process.env.KAFKAJS_NO_PARTITIONER_WARNING = '1';
const MiB = 2 ** 20;
const flags = drainFlags('kafka', {
  // As the benchmark set them with a batch_size: one fetch may take a whole batch from a partition.
  'max-bytes-per-partition': (f) => (f.batch === undefined ? undefined : 8 * MiB),
  'max-buffer-bytes': (f) => (f.batch === undefined ? undefined : 128 * MiB),
});
const { bodies, itemsIn } = orderBodies(orderMessage);
const TOPIC = `sluice-bench-${process.pid}`;
const SLUICE_GROUP = `sluice-bench-${process.pid}`;
const BARE_GROUP = `bare-bench-${process.pid}`;
// sluice's fetch keys (set only when given or with --batch-size) and its defaults, from its schema.
const kafkaKeys = kafkaSourceSchema.shape ?? kafkaSourceSchema._def.schema.shape;
const DEFAULT_MAX_BYTES_PER_PARTITION = kafkaKeys.max_bytes_per_partition.parse(undefined);
const DEFAULT_MAX_BUFFER_BYTES = kafkaKeys.max_buffer_bytes.parse(undefined);
const MAX_BYTES_PER_PARTITION = flags['max-bytes-per-partition'];
const MAX_BUFFER_BYTES = flags['max-buffer-bytes'];
// The bare consumer fetches what sluice fetches from a partition.
const BARE_MAX_BYTES_PER_PARTITION = MAX_BYTES_PER_PARTITION ?? DEFAULT_MAX_BYTES_PER_PARTITION;
// The keys sluice's block sets beyond the connection ({} at its defaults; keysYaml skips undefined).
const sluiceKeys = { ...batchKeys(flags), max_bytes_per_partition: MAX_BYTES_PER_PARTITION, max_buffer_bytes: MAX_BUFFER_BYTES };

const mock = process.env.SLUICE_BENCH_KAFKA ? undefined : await startKafkaMock();
const BROKERS = process.env.SLUICE_BENCH_KAFKA ?? mock.brokers;
const kafka = new Kafka({ brokers: BROKERS.split(','), clientId: 'sluice-bench', logLevel: logLevel.NOTHING });
const admin = kafka.admin();
await admin.connect();
const producer = kafka.producer({ allowAutoTopicCreation: true });
await producer.connect();

/**
 * Fresh topics holding n messages together (the mock cluster cannot delete or truncate topics,
 * nor set a group's offsets, and keeps only ~12 MB per partition: TOPICS topics of 4 partitions
 * each hold a 200,000-order backlog). sluice finds them by topic_pattern through
 * SLUICE_BENCH_TOPIC: `${VAR}` in the project's YAML.
 */
const TOPICS = 8;
let fills = 0;
let topics = [];
async function fill(n) {
  const prefix = `${TOPIC}-${++fills}`;
  process.env.SLUICE_BENCH_TOPIC = prefix;
  topics = Array.from({ length: TOPICS }, (_, i) => `${prefix}-t${i}`);
  await admin.fetchTopicMetadata({ topics }); // auto-creates them
  const batch = 20_000;
  const sends = [];
  for (let i = 0, k = 0; i < n; i += batch, k++) {
    const messages = [];
    for (let j = i; j < Math.min(n, i + batch); j++) messages.push({ value: bodies[j % bodies.length] });
    sends.push(producer.send({ topic: topics[k % TOPICS], acks: -1, messages }));
    if (sends.length >= 4) await Promise.all(sends.splice(0));
  }
  await Promise.all(sends);
  let kept = 0;
  for (const t of topics) for (const p of await admin.fetchTopicOffsets(t)) kept += Number(p.high) - Number(p.low);
  if (kept !== n) throw new Error(`the broker kept ${kept} of ${n} messages (retention); use fewer --messages`);
}

/** The baseline: a kafkajs consumer in a group, eachBatch, committing each batch's offset. */
async function bare(n) {
  const consumer = kafka.consumer({
    groupId: `${BARE_GROUP}-${process.env.SLUICE_BENCH_TOPIC}`,
    maxBytesPerPartition: BARE_MAX_BYTES_PER_PARTITION,
    maxWaitTimeInMs: 500,
    allowAutoTopicCreation: false,
  });
  await consumer.connect();
  await consumer.subscribe({ topics, fromBeginning: true });
  let got = 0;
  let first = 0;
  let done;
  const finished = new Promise((r) => (done = r));
  await consumer.run({
    autoCommit: false,
    partitionsConsumedConcurrently: 16,
    eachBatch: async ({ batch }) => {
      first ||= performance.now();
      let bytes = 0;
      for (const m of batch.messages) bytes += m.value.length; // touch every message
      if (bytes < 0) throw new Error('unreachable');
      got += batch.messages.length;
      await consumer.commitOffsets([{ topic: batch.topic, partition: batch.partition, offset: String(Number(batch.lastOffset()) + 1) }]);
      if (got >= n) done();
    },
  });
  // Timed from the end of run() (the group joined, nothing fetched yet), as sluice is timed from
  // "reading from the source" (logged once its consumer's run() returned): both include their
  // first fetch. (Until 2026-11-24 this was timed from the first batch, which left the first
  // fetch, ~0.1-0.25 s of a 200,000-message drain here, out of the baseline only.)
  const ran = performance.now();
  await finished;
  const t0 = Math.min(ran, first || ran);
  const secs = (performance.now() - t0) / 1000;
  if (process.env.SLUICE_BENCH_VERBOSE) console.log(`bare: first batch ${Math.round(first - ran)} ms after run() returned`);
  await consumer.disconnect();
  return n / secs;
}

try {
  await drainBench({
    name: 'kafka',
    title: 'Kafka (librdkafka mock cluster via kcat, kafkajs)',
    baseline: 'bare kafkajs consumer',
    flags,
    fill,
    bare,
    brokerPids: () => (mock ? [mock.pid] : []),
    sourceYaml: `source:\n  type: kafka\n  brokers: ${BROKERS}\n  topic_pattern: "^\${SLUICE_BENCH_TOPIC}-t"\n  group_id: "${SLUICE_GROUP}-\${SLUICE_BENCH_TOPIC}"\n${keysYaml(sluiceKeys)}`,
    sluiceKeys,
    sluiceSettings: describeSluiceKeys(flags, [
      MAX_BYTES_PER_PARTITION === undefined ? `max_bytes_per_partition default (${DEFAULT_MAX_BYTES_PER_PARTITION / MiB} MiB)` : `max_bytes_per_partition ${MAX_BYTES_PER_PARTITION / MiB} MiB`,
      MAX_BUFFER_BYTES === undefined ? `max_buffer_bytes default (${DEFAULT_MAX_BUFFER_BYTES / MiB} MiB)` : `max_buffer_bytes ${MAX_BUFFER_BYTES / MiB} MiB`,
    ]),
    bareKeys: { max_bytes_per_partition: BARE_MAX_BYTES_PER_PARTITION, partitions_consumed_concurrently: 16, commit: 'after every kafkajs batch' },
    bareSettings: `maxBytesPerPartition ${BARE_MAX_BYTES_PER_PARTITION / MiB} MiB${MAX_BYTES_PER_PARTITION === undefined ? " (sluice's default)" : ''}, partitionsConsumedConcurrently 16, offsets committed after every kafkajs batch`,
    bodies,
    itemsIn,
  });
} finally {
  await producer.disconnect();
  await admin.disconnect();
  mock?.stop();
}
