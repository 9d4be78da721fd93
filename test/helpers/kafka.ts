import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { Kafka, logLevel, type Admin, type Message, type Producer, type ProducerRecord } from 'kafkajs';
import { until } from './cli.js';

// librdkafka's Kafka-protocol mock cluster, started by kcat: 3 brokers on loopback ports that
// change at every start; topics auto-create with 4 partitions; a restart loses every record.

export interface MockKafka {
  brokers: string;
  kafka: Kafka;
  admin: Admin;
  /** Sends to the cluster, one kafkajs producer per topic (see TopicProducers). */
  producer: TopicProducers;
  /** Freezes every broker of the cluster (SIGSTOP): requests hang, connections stay open. */
  freeze(): void;
  /** Lets a frozen cluster go on (SIGCONT). */
  thaw(): void;
  /** Kills every TCP connection to the brokers (`ss -K`, root): clients see them drop. */
  dropConnections(): void;
  stop(): Promise<void>;
}

process.env.KAFKAJS_NO_PARTITIONER_WARNING = '1';

export function kcatAvailable(): boolean {
  return spawnSync('sh', ['-c', 'command -v kcat'], { encoding: 'utf8' }).status === 0;
}

/**
 * Starts the mock cluster. kcat runs under `sh` reading this process's pipe on stdin: when
 * the test process dies, the pipe closes and the shell kills kcat, so no cluster outlives it.
 */
export async function startMockKafka(): Promise<MockKafka> {
  if (!kcatAvailable()) throw new Error('kcat is not installed (apt-get install -y kcat)');
  const script = 'kcat -b localhost:0 -X test.mock.num.brokers=3 -C -t sluice-keepalive -q >/dev/null 2>&2 & k=$!; echo "kcat-pid=$k" >&2; cat >/dev/null; kill $k 2>/dev/null; wait $k 2>/dev/null';
  const child: ChildProcess = spawn('sh', ['-c', script], { stdio: ['pipe', 'ignore', 'pipe'] });
  let err = '';
  const brokers = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`kcat printed no bootstrap servers (or the shell no pid): ${err.slice(-500)}`)), 15_000);
    child.stderr!.on('data', (d: Buffer) => {
      // Keep draining stderr for the life of the cluster; remember only what is needed.
      if (err.length < 20_000) err += d.toString();
      const m = /(?:replaced with|bootstrap\.servers=)\s*(\S+)/.exec(err);
      // kcat's own line can come before the shell's echo of its pid: wait for both.
      if (m && /kcat-pid=\d+/.test(err)) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    child.once('exit', (code) => reject(new Error(`kcat exited (${code}): ${err.slice(-500)}`)));
  });
  const kcatPid = Number(/kcat-pid=(\d+)/.exec(err)?.[1]);
  if (!kcatPid) throw new Error(`kcat's pid not found in: ${err.slice(-500)}`);
  const ports = brokers.split(',').map((b) => b.split(':').pop()!);
  // kafkajs' defaults (1 s to connect) fail the test's own client on a loaded machine, right
  // after a test dropped every connection to the brokers: the same timeouts as sluice's.
  const kafka = new Kafka({
    brokers: brokers.split(','),
    clientId: 'sluice-test',
    logLevel: logLevel.NOTHING,
    connectionTimeout: 10_000,
    authenticationTimeout: 10_000,
    requestTimeout: 30_000,
    retry: { retries: 10, initialRetryTime: 100 },
  });
  const admin = kafka.admin();
  await admin.connect();
  const producer = topicProducers(kafka);
  return {
    brokers,
    kafka,
    admin,
    producer,
    freeze: () => process.kill(kcatPid, 'SIGSTOP'),
    thaw: () => process.kill(kcatPid, 'SIGCONT'),
    dropConnections() {
      for (const port of ports) spawnSync('ss', ['-K', 'dst', '127.0.0.1', 'dport', '=', `:${port}`], { stdio: 'ignore' });
    },
    async stop() {
      try {
        process.kill(kcatPid, 'SIGCONT');
      } catch {
        // already gone
      }
      await producer.disconnect().catch(() => {});
      await admin.disconnect().catch(() => {});
      child.stdin!.end();
      await new Promise<void>((r) => {
        if (child.exitCode !== null) return r();
        const t = setTimeout(() => {
          child.kill('SIGKILL');
          r();
        }, 5000);
        child.once('exit', () => {
          clearTimeout(t);
          r();
        });
      });
    },
  };
}

/**
 * Sends records with one connected kafkajs producer per topic. A kafkajs producer refreshes the
 * metadata of every topic it ever sent to, under one lock whose wait times out after
 * requestTimeout: with the topics of concurrent tests piling up on one shared producer, a slow
 * refresh (a new topic's partitions still getting leaders on a loaded machine) made another
 * test's send fail with KafkaJSLockTimeout "updating target topics".
 */
export interface TopicProducers {
  send(record: ProducerRecord): Promise<unknown>;
  disconnect(): Promise<void>;
}

function topicProducers(kafka: Kafka): TopicProducers {
  const byTopic = new Map<string, Promise<Producer>>();
  const producerFor = (topic: string): Promise<Producer> => {
    let p = byTopic.get(topic);
    if (!p) {
      const made = kafka.producer({ allowAutoTopicCreation: true });
      p = made.connect().then(() => made);
      byTopic.set(topic, p);
    }
    return p;
  };
  return {
    send: async (record) => (await producerFor(record.topic)).send(record),
    async disconnect() {
      await Promise.all([...byTopic.values()].map(async (p) => (await p.catch(() => undefined))?.disconnect().catch(() => {})));
    },
  };
}

/** A topic name no other test uses (`-` and `_` included on purpose: they are file-name separators). */
export function uniqueTopic(prefix = 'sluice-test'): string {
  return `${prefix}_${randomUUID().slice(0, 8)}`;
}

/** Produces messages in large batches, acks=all. */
export async function produce(producer: TopicProducers | Producer, topic: string, messages: (Message | string)[], batch = 10_000): Promise<void> {
  for (let i = 0; i < messages.length; i += batch) {
    const part = messages.slice(i, i + batch).map((m) => (typeof m === 'string' ? { value: m } : m));
    await producer.send({ topic, acks: -1, messages: part });
  }
}

/** Creates the topic (4 partitions) by asking for its metadata, and waits until it has leaders. */
export async function ensureTopic(admin: Admin, topic: string): Promise<void> {
  for (let i = 0; i < 50; i++) {
    try {
      await admin.fetchTopicMetadata({ topics: [topic] });
      const offs = await admin.fetchTopicOffsets(topic);
      if (offs.length > 0) return;
    } catch {
      // auto-creation in progress
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`topic ${topic} did not appear`);
}

/** Messages in the topic now (high - low over partitions). */
export async function topicSize(admin: Admin, topic: string): Promise<number> {
  const offs = await admin.fetchTopicOffsets(topic).catch(() => []);
  return offs.reduce((n, p) => n + Number(p.high) - Number(p.low), 0);
}

/** True when the group has committed every partition of the topic up to its end. */
export async function groupCaughtUp(admin: Admin, group: string, topic: string): Promise<boolean> {
  // kafkajs throws while a topic's metadata is incomplete (just auto-created): not caught up yet.
  const ends = await admin.fetchTopicOffsets(topic).catch(() => undefined);
  if (!ends) return false;
  const committed = await admin.fetchOffsets({ groupId: group, topics: [topic] });
  const c = new Map(committed[0]?.partitions.map((p) => [p.partition, Number(p.offset)]) ?? []);
  return ends.every((p) => Number(p.high) === 0 || (c.get(p.partition) ?? -1) >= Number(p.high));
}

/**
 * Every message of a topic (a throwaway group, nothing committed), values as text with headers.
 * Read until each partition's consumer position reaches its end offset: transaction markers
 * take offsets but are no messages, so a topic written in transactions holds fewer messages
 * than its offsets span. read_committed: an aborted transaction's messages are not returned.
 */
export async function readAll(
  kafka: Kafka,
  admin: Admin,
  topic: string,
  timeoutMs = 30_000,
): Promise<{ partition: number; offset: number; key: string | null; value: string; headers: Record<string, string> }[]> {
  // kafkajs throws (a TypeError inside fetchTopicOffsets) while a just-created topic's metadata
  // is incomplete, as a DLQ topic's is right after its first dead letter: ask again until it is.
  const offsets = await until(() => admin.fetchTopicOffsets(topic).catch(() => undefined), timeoutMs, 100, `the offsets of topic ${topic}`);
  const ends = new Map(offsets.filter((p) => Number(p.high) > Number(p.low)).map((p) => [p.partition, Number(p.high)]));
  const out: { partition: number; offset: number; key: string | null; value: string; headers: Record<string, string> }[] = [];
  if (ends.size === 0) return out;
  const consumer = kafka.consumer({ groupId: `sluice-test-read-${randomUUID()}`, sessionTimeout: 10_000, heartbeatInterval: 1000, maxWaitTimeInMs: 100 });
  const position = new Map<number, number>();
  let done!: () => void;
  const finished = new Promise<void>((r) => (done = r));
  const check = () => {
    if ([...ends].every(([p, high]) => (position.get(p) ?? -1) >= high - 1)) done();
  };
  consumer.on(consumer.events.END_BATCH_PROCESS, ({ payload }) => {
    if (payload.topic !== topic) return;
    position.set(payload.partition, Math.max(position.get(payload.partition) ?? -1, Number(payload.lastOffset)));
    check();
  });
  await consumer.connect();
  await consumer.subscribe({ topics: [topic], fromBeginning: true });
  await consumer.run({
    eachMessage: async ({ partition, message }) => {
      const headers: Record<string, string> = {};
      for (const [k, v] of Object.entries(message.headers ?? {})) if (v !== undefined) headers[k] = v.toString();
      out.push({ partition, offset: Number(message.offset), key: message.key?.toString() ?? null, value: message.value?.toString() ?? '', headers });
    },
  });
  const t = setTimeout(done, timeoutMs);
  await finished;
  clearTimeout(t);
  await consumer.disconnect();
  return out.sort((a, b) => a.partition - b.partition || a.offset - b.offset);
}
