import { randomUUID } from 'node:crypto';
import amqp from 'amqplib';

export const AMQP_URL = process.env.SLUICE_TEST_AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672';

export function uniqueQueue(prefix = 'sluice-test'): string {
  return `${prefix}.${randomUUID().slice(0, 8)}`;
}

/** Publishes messages to a queue with publisher confirms (declares the queue durable). */
export async function publish(queue: string, messages: (string | { body: string; headers?: Record<string, unknown>; messageId?: string })[]): Promise<void> {
  const conn = await amqp.connect(AMQP_URL);
  try {
    const ch = await conn.createConfirmChannel();
    await ch.assertQueue(queue, { durable: true });
    for (let i = 0; i < messages.length; i++) {
      const m = messages[i];
      const body = typeof m === 'string' ? m : m.body;
      const opts = typeof m === 'string' ? {} : { headers: m.headers, messageId: m.messageId };
      if (!ch.sendToQueue(queue, Buffer.from(body), { persistent: true, ...opts })) await new Promise((r) => ch.once('drain', r));
      if (i % 5000 === 4999) await ch.waitForConfirms();
    }
    await ch.waitForConfirms();
    await ch.close();
  } finally {
    await conn.close();
  }
}

/** Messages ready in a queue; -1 when the queue does not exist (yet). */
export async function queueDepth(queue: string): Promise<number> {
  const conn = await amqp.connect(AMQP_URL);
  try {
    const ch = await conn.createChannel();
    ch.on('error', () => {});
    try {
      const q = await ch.checkQueue(queue);
      await ch.close();
      return q.messageCount;
    } catch {
      return -1;
    }
  } finally {
    await conn.close();
  }
}

/** Reads (and acks) everything in a queue. */
export async function drain(queue: string): Promise<{ body: string; headers: Record<string, unknown>; properties: Record<string, unknown> }[]> {
  const conn = await amqp.connect(AMQP_URL);
  const out: { body: string; headers: Record<string, unknown>; properties: Record<string, unknown> }[] = [];
  try {
    const ch = await conn.createChannel();
    for (;;) {
      const m = await ch.get(queue, { noAck: true });
      if (!m) break;
      out.push({ body: m.content.toString(), headers: (m.properties.headers ?? {}) as Record<string, unknown>, properties: m.properties as unknown as Record<string, unknown> });
    }
    await ch.close();
  } finally {
    await conn.close();
  }
  return out;
}

export async function deleteQueues(...queues: string[]): Promise<void> {
  const conn = await amqp.connect(AMQP_URL);
  try {
    const ch = await conn.createChannel();
    for (const q of queues) await ch.deleteQueue(q).catch(() => {});
    await ch.close().catch(() => {});
  } finally {
    await conn.close().catch(() => {});
  }
}

export function rabbitSourceYaml(queue: string, extra = ''): string {
  return `source:\n  type: rabbitmq\n  host: 127.0.0.1\n  port: 5672\n  username: guest\n  password: guest\n  queue: ${queue}\n  dlq: ${queue}.dlq\n  batch_size: 200\n  batch_timeout_ms: 200\n${extra}`;
}
