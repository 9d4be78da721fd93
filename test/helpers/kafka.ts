import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { Kafka, logLevel, type Admin, type Message, type Producer } from 'kafkajs';

// librdkafka's Kafka-protocol mock cluster, started by kcat: 3 brokers on loopback ports that
// change at every start; topics auto-create with 4 partitions; a restart loses every record.

export interface MockKafka {
  brokers: string;
  kafka: Kafka;
  admin: Admin;
  producer: Producer;
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
  const script = 'kcat -b localhost:0 -X test.mock.num.brokers=3 -C -t sluice-keepalive -q >/dev/null 2>&2 & k=$!; cat >/dev/null; kill $k 2>/dev/null; wait $k 2>/dev/null';
  const child: ChildProcess = spawn('sh', ['-c', script], { stdio: ['pipe', 'ignore', 'pipe'] });
  const brokers = await new Promise<string>((resolve, reject) => {
    let err = '';
    const timer = setTimeout(() => reject(new Error(`kcat printed no bootstrap servers: ${err.slice(-500)}`)), 15_000);
    child.stderr!.on('data', (d: Buffer) => {
      // Keep draining stderr for the life of the cluster; remember only what is needed.
      if (err.length < 20_000) err += d.toString();
      const m = /(?:replaced with|bootstrap\.servers=)\s*(\S+)/.exec(err);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    child.once('exit', (code) => reject(new Error(`kcat exited (${code}): ${err.slice(-500)}`)));
  });
  const kafka = new Kafka({ brokers: brokers.split(','), clientId: 'sluice-test', logLevel: logLevel.NOTHING, retry: { retries: 10, initialRetryTime: 100 } });
  const admin = kafka.admin();
  await admin.connect();
  const producer = kafka.producer({ allowAutoTopicCreation: true });
  await producer.connect();
  return {
    brokers,
    kafka,
    admin,
    producer,
    async stop() {
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

/** A topic name no other test uses (`-` and `_` included on purpose: they are file-name separators). */
export function uniqueTopic(prefix = 'sluice-test'): string {
  return `${prefix}_${randomUUID().slice(0, 8)}`;
}

/** Produces messages in large batches, acks=all. */
export async function produce(producer: Producer, topic: string, messages: (Message | string)[], batch = 10_000): Promise<void> {
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
  const ends = await admin.fetchTopicOffsets(topic);
  const committed = await admin.fetchOffsets({ groupId: group, topics: [topic] });
  const c = new Map(committed[0]?.partitions.map((p) => [p.partition, Number(p.offset)]) ?? []);
  return ends.every((p) => Number(p.high) === 0 || (c.get(p.partition) ?? -1) >= Number(p.high));
}

/** Every message of a topic (a throwaway group, nothing committed), values as text with headers. */
export async function readAll(kafka: Kafka, admin: Admin, topic: string, timeoutMs = 30_000): Promise<{ partition: number; offset: number; key: string | null; value: string; headers: Record<string, string> }[]> {
  const ends = new Map((await admin.fetchTopicOffsets(topic)).map((p) => [p.partition, Number(p.high)]));
  const total = [...ends.values()].reduce((a, b) => a + b, 0);
  const out: { partition: number; offset: number; key: string | null; value: string; headers: Record<string, string> }[] = [];
  if (total === 0) return out;
  const consumer = kafka.consumer({ groupId: `sluice-test-read-${randomUUID()}`, sessionTimeout: 10_000, heartbeatInterval: 1000, maxWaitTimeInMs: 100 });
  await consumer.connect();
  await consumer.subscribe({ topics: [topic], fromBeginning: true });
  let done!: () => void;
  const finished = new Promise<void>((r) => (done = r));
  await consumer.run({
    eachMessage: async ({ partition, message }) => {
      const headers: Record<string, string> = {};
      for (const [k, v] of Object.entries(message.headers ?? {})) if (v !== undefined) headers[k] = v.toString();
      out.push({ partition, offset: Number(message.offset), key: message.key?.toString() ?? null, value: message.value?.toString() ?? '', headers });
      if (out.length >= total) done();
    },
  });
  const t = setTimeout(done, timeoutMs);
  await finished;
  clearTimeout(t);
  await consumer.disconnect();
  return out.sort((a, b) => a.partition - b.partition || a.offset - b.offset);
}
