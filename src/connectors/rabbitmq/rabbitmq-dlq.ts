import type { Logger } from 'pino';
import { SluiceError, errorMessage } from '../../errors.js';
import type { DeadLetter, DeadLetterQueue } from '../types.js';
import { backoff, retry } from '../../util/retry.js';
import { connectWithRetry, headerString, type AmqpChannelLike, type AmqpConnectionLike, type AmqpMessage } from './rabbitmq-client.js';
import type { RabbitmqSourceConfig } from './rabbitmq-config.js';

const H = {
  error: 'x-sluice-error',
  stage: 'x-sluice-stage',
  queue: 'x-sluice-queue',
  routingKey: 'x-sluice-routing-key',
  model: 'x-sluice-model',
  time: 'x-sluice-time',
} as const;

// Message properties copied from the original so a dead letter is the same message plus headers.
const KEEP = ['contentType', 'contentEncoding', 'correlationId', 'replyTo', 'messageId', 'timestamp', 'type', 'appId', 'userId', 'priority', 'expiration'] as const;

/**
 * Dead letters in a RabbitMQ queue. Each keeps the original body, headers and properties and
 * gains the error, the stage and the original queue and routing key as headers. Publishing
 * waits for publisher confirms, so the original is acked only after the broker has the copy.
 */
export class RabbitDeadLetterQueue implements DeadLetterQueue {
  private conn?: AmqpConnectionLike;
  private ch?: AmqpChannelLike;

  constructor(
    private readonly cfg: RabbitmqSourceConfig,
    readonly queue: string,
    private readonly log: Logger,
  ) {}

  /** The confirm channel; connecting retries for up to 30 s, or makes one attempt with `once`. */
  private async channel(once = false): Promise<AmqpChannelLike> {
    if (this.ch) return this.ch;
    const conn = await connectWithRetry(this.cfg, this.log, once ? { once } : { deadline: Date.now() + 30_000 });
    conn.on('error', () => {});
    conn.on('close', () => {
      if (this.conn === conn) {
        this.conn = undefined;
        this.ch = undefined;
      }
    });
    const ch = await conn.createConfirmChannel();
    ch.on('error', () => {});
    ch.on('close', () => {
      if (this.ch === ch) this.ch = undefined;
    });
    if (this.cfg.declare.queue) await ch.assertQueue(this.queue, { durable: true });
    this.conn = conn;
    this.ch = ch;
    return ch;
  }

  async open(): Promise<void> {
    await this.channel();
  }

  async append(records: DeadLetter[]): Promise<void> {
    if (records.length === 0) return;
    // The batch cannot commit without its dead letters: retry through broker restarts (each
    // attempt connects once: the retries are these).
    await retry(
      async () => {
        try {
          const ch = await this.channel(true);
          for (const r of records) {
            const orig = r.original as AmqpMessage | undefined;
            const props: Record<string, unknown> = {};
            for (const k of KEEP) if (orig?.properties[k] !== undefined) props[k] = orig.properties[k];
            const headers: Record<string, unknown> = {
              ...(orig?.properties.headers ?? {}),
              [H.error]: r.error,
              [H.stage]: r.stage,
              [H.queue]: String(r.source.queue ?? this.cfg.queue),
              [H.routingKey]: String(r.source.routing_key ?? ''),
              [H.time]: r.time,
            };
            if (r.model) headers[H.model] = r.model;
            ch.sendToQueue(this.queue, orig?.content ?? Buffer.from(r.payload), { ...props, headers, persistent: true });
          }
          await ch.waitForConfirms!();
        } catch (err) {
          this.ch = undefined;
          throw err;
        }
      },
      {
        attempts: 50,
        backoff: backoff({ initialMs: this.cfg.reconnect.initial_ms, maxMs: this.cfg.reconnect.max_ms }),
        onRetry: ({ error, delayMs }) => this.log.warn({ err: new Error(errorMessage(error)), retry_in_ms: delayMs }, 'publishing dead letters failed; retrying'),
      },
    ).catch((err: unknown) => {
      throw new SluiceError('CONNECT', `cannot publish dead letters to ${this.queue}: ${errorMessage(err)}`, { cause: err, retryable: true });
    });
  }

  mark(): unknown {
    return undefined;
  }

  async recover(): Promise<void> {}

  /** Peeks: gets up to `limit` messages without acking, then closes the channel so all are requeued. */
  async inspect(limit: number): Promise<DeadLetter[]> {
    const conn = await connectWithRetry(this.cfg, this.log, { deadline: Date.now() + 10_000 });
    const out: DeadLetter[] = [];
    try {
      const ch = await conn.createChannel();
      await ch.checkQueue(this.queue);
      for (let i = 0; i < limit; i++) {
        const m = await ch.get(this.queue, { noAck: false });
        if (!m) break;
        out.push(toDeadLetter(m));
      }
      await ch.close();
    } finally {
      await conn.close().catch(() => {});
    }
    return out;
  }

  /** Moves dead letters to `target` (default: their original queue), each acked after its copy is confirmed. */
  async replay(opts: { target?: string; limit?: number }): Promise<{ moved: number }> {
    const conn = await connectWithRetry(this.cfg, this.log, { deadline: Date.now() + 10_000 });
    let moved = 0;
    try {
      const get = await conn.createChannel();
      const pub = await conn.createConfirmChannel();
      await get.checkQueue(this.queue);
      const limit = opts.limit ?? Infinity;
      // In chunks: publish, wait for the broker's confirms, then ack the chunk in the DLQ.
      // Interrupted, at most one chunk is in both queues; none is lost.
      for (;;) {
        const chunk: AmqpMessage[] = [];
        while (chunk.length < 500 && moved + chunk.length < limit) {
          const m = await get.get(this.queue, { noAck: false });
          if (!m) break;
          chunk.push(m);
        }
        if (chunk.length === 0) break;
        for (const m of chunk) {
          const headers = { ...(m.properties.headers ?? {}) };
          const target = opts.target ?? headerString(headers[H.queue]) ?? this.cfg.queue;
          for (const h of Object.values(H)) delete headers[h];
          headers['x-sluice-replays'] = Number(m.properties.headers?.['x-sluice-replays'] ?? 0) + 1;
          const props: Record<string, unknown> = {};
          for (const k of KEEP) if (m.properties[k] !== undefined) props[k] = m.properties[k];
          pub.sendToQueue(target, m.content, { ...props, headers, persistent: true });
        }
        await pub.waitForConfirms!();
        get.ack(chunk[chunk.length - 1], true);
        moved += chunk.length;
      }
      await get.close();
      await pub.close();
    } finally {
      await conn.close().catch(() => {});
    }
    return { moved };
  }

  async close(): Promise<void> {
    const conn = this.conn;
    this.conn = undefined;
    this.ch = undefined;
    await conn?.close().catch(() => {});
  }
}

function toDeadLetter(m: AmqpMessage): DeadLetter {
  const h = m.properties.headers ?? {};
  const stage = headerString(h[H.stage]);
  return {
    payload: m.content.toString('utf8'),
    error: headerString(h[H.error]) ?? '(no error header)',
    stage: stage === 'decode' || stage === 'transform' || stage === 'sink' ? stage : 'transform',
    source: { queue: headerString(h[H.queue]), routing_key: headerString(h[H.routingKey]) },
    ...(h[H.model] ? { model: headerString(h[H.model]) } : {}),
    time: headerString(h[H.time]) ?? '',
  };
}
