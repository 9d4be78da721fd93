import type { Logger } from 'pino';
import { errorMessage } from '../../errors.js';
import type { ConnectorContext, MessageMeta, PollLimits, RawMessage, Source, SourceChunk, SourceLag } from '../types.js';
import { abortion, sleep } from '../../util/retry.js';
import { connectWithRetry, type AmqpChannelLike, type AmqpConnectionLike, type AmqpMessage } from './rabbitmq-client.js';
import type { RabbitmqSourceConfig } from './rabbitmq-config.js';
import { batchCut } from '../batch-cut.js';
import { heldAheadDefault } from '../shared-config.js';

/** A delivery as the engine sees it; its coordinates (for the DLQ and logs) are built only when asked for. */
class AmqpRawMessage implements RawMessage {
  readonly payload: string;
  readonly redelivered: boolean;

  constructor(
    readonly raw: AmqpMessage,
    private readonly queue: string,
  ) {
    this.payload = raw.content.toString('utf8');
    this.redelivered = raw.fields.redelivered;
  }

  /** `_topic` the queue, `_key` the routing key, `_id` the message id, `_timestamp`, `_headers`. */
  get meta(): MessageMeta {
    const { fields, properties } = this.raw;
    const ts = Number(properties.timestamp);
    const headers = properties.headers ? Object.fromEntries(Object.entries(properties.headers as Record<string, unknown>).map(([k, v]) => [k, headerText(v)])) : undefined;
    return {
      topic: this.queue,
      key: fields.routingKey,
      id: properties.messageId === undefined ? undefined : String(properties.messageId),
      timestamp: Number.isFinite(ts) && ts > 0 ? (ts < 1e11 ? ts * 1000 : ts) : undefined,
      headers,
    };
  }

  get coords(): Record<string, unknown> {
    const { fields, properties } = this.raw;
    return { queue: this.queue, routing_key: fields.routingKey, exchange: fields.exchange, delivery_tag: fields.deliveryTag, redelivered: fields.redelivered, message_id: properties.messageId };
  }
}

function headerText(v: unknown): string {
  if (typeof v === 'string') return v;
  if (Buffer.isBuffer(v)) return v.toString('utf8');
  return JSON.stringify(v);
}

interface AckToken {
  generation: number;
  last: AmqpMessage;
}

/**
 * Consumes one queue with manual acks. Messages are acknowledged (multiple-ack up to the
 * batch's last delivery tag) only when the engine says the batch is durable. A dropped
 * connection bumps a generation counter: batches of an older generation are never acked
 * (their channel is gone; the broker redelivers them), and consuming resumes after a
 * reconnect with backoff.
 */
export class RabbitmqSource implements Source {
  private conn?: AmqpConnectionLike;
  private ch?: AmqpChannelLike;
  private generation = 0;
  /** Deliveries not handed to the engine yet, in delivery order (up to prefetch). */
  private buffer: AmqpMessage[] = [];
  /** Payload bytes in `buffer`. */
  private bufferBytes = 0;
  private wake?: () => void;
  private closing = false;
  private reconnecting?: Promise<void>;
  /** Messages handed out on a channel that died before they were acked (come back as redeliveries). */
  lostAcks = 0;

  constructor(
    private readonly cfg: RabbitmqSourceConfig,
    private readonly ctx: ConnectorContext,
  ) {}

  private get log(): Logger {
    return this.ctx.log;
  }

  async open(_position: unknown): Promise<void> {
    await this.connect(Date.now() + 30_000);
  }

  private async connect(deadline?: number, signal?: AbortSignal): Promise<void> {
    const conn = await connectWithRetry(this.cfg, this.log, { deadline, signal });
    const gen = ++this.generation;
    this.buffer = [];
    this.bufferBytes = 0;
    const lost = (why: string) => (err?: unknown) => {
      if (gen !== this.generation || this.closing) return;
      this.log.warn({ reason: why, err: err instanceof Error ? err : undefined }, 'RabbitMQ connection lost; reconnecting');
      this.dropConnection();
    };
    conn.on('error', () => {}); // 'close' follows; handled there
    conn.on('close', lost('connection closed'));
    const ch = await conn.createChannel();
    ch.on('error', () => {});
    ch.on('close', lost('channel closed'));
    const c = this.cfg;
    if (c.declare.queue) await ch.assertQueue(c.queue, { durable: true });
    else await ch.checkQueue(c.queue);
    if (c.declare.exchange) await ch.assertExchange(c.declare.exchange.name, c.declare.exchange.type, { durable: true });
    for (const b of c.declare.bindings) await ch.bindQueue(c.queue, b.exchange, b.routing_key);
    await ch.prefetch(c.prefetch ?? heldAheadDefault(c.batch_size));
    await ch.consume(
      c.queue,
      (msg) => {
        if (!msg) {
          lost('consumer cancelled by the broker')();
          return;
        }
        if (gen !== this.generation) return;
        this.buffer.push(msg);
        this.bufferBytes += msg.content.length;
        this.wake?.();
      },
      { noAck: false },
    );
    this.conn = conn;
    this.ch = ch;
    if (gen > 1) this.log.info({ queue: c.queue }, 'reconnected to RabbitMQ');
  }

  private dropConnection(): void {
    this.generation++;
    this.buffer = [];
    this.bufferBytes = 0;
    const conn = this.conn;
    this.conn = undefined;
    this.ch = undefined;
    conn?.close().catch(() => {});
    this.wake?.();
  }

  private ensureConnected(signal: AbortSignal): Promise<void> {
    if (this.ch || this.closing) return Promise.resolve();
    this.reconnecting ??= this.connect(undefined, signal)
      .catch((err) => this.log.warn({ err }, 'reconnect attempt failed'))
      .finally(() => {
        this.reconnecting = undefined;
      });
    return this.reconnecting;
  }

  async poll(limits: PollLimits, signal: AbortSignal): Promise<SourceChunk> {
    while (!signal.aborted && this.buffer.length === 0) {
      if (!this.ch) {
        // Reconnect in the background; wait for it (or the abort: the engine flushes the WAL by
        // age while the broker is away), then a pause before the next attempt.
        await Promise.race([this.ensureConnected(signal), abortion(signal)]);
        if (!this.ch) await sleep(this.cfg.reconnect.initial_ms, signal);
        continue;
      }
      await new Promise<void>((resolve) => {
        const done = () => {
          signal.removeEventListener('abort', done);
          this.wake = undefined;
          resolve();
        };
        signal.addEventListener('abort', done, { once: true });
        this.wake = done;
      });
    }
    // Up to the limits (the first always): the rest stay buffered, first in the next chunk. They
    // came after these, so their delivery tags are higher and the multiple-ack of this chunk's
    // last one leaves them unacked.
    const { n, bytes, full } = batchCut(this.buffer.length, (i) => this.buffer[i].content.length, limits);
    const taken = this.buffer.splice(0, n);
    this.bufferBytes -= bytes;
    const messages: RawMessage[] = taken.map((m) => new AmqpRawMessage(m, this.cfg.queue));
    const token: AckToken | undefined = taken.length ? { generation: this.generation, last: taken[taken.length - 1] } : undefined;
    return { messages, bytes, full, position: undefined, ackToken: token };
  }

  async ack(chunk: SourceChunk): Promise<void> {
    const t = chunk.ackToken as AckToken | undefined;
    if (!t) return;
    if (t.generation !== this.generation || !this.ch) {
      // Never ack on a dead channel: the broker requeued these and will deliver them again.
      this.lostAcks += chunk.messages.length;
      this.log.warn({ messages: chunk.messages.length }, 'batch is durable but its channel is gone; the broker will redeliver it');
      return;
    }
    try {
      this.ch.ack(t.last, true);
      this.observeLatency(chunk);
    } catch (err) {
      this.log.warn({ err: new Error(errorMessage(err)) }, 'ack failed; the broker will redeliver the batch');
    }
  }

  healthy(): boolean {
    return this.ch !== undefined;
  }

  /** Publish-to-ack time from the AMQP timestamp property (milliseconds, or seconds if small). */
  private observeLatency(chunk: SourceChunk): void {
    const observe = this.ctx.observeAckLatency;
    if (!observe) return;
    const now = Date.now();
    for (const m of chunk.messages) {
      const ts = Number((m.raw as AmqpMessage).properties.timestamp);
      if (!Number.isFinite(ts) || ts <= 0) continue;
      const ms = ts < 1e11 ? ts * 1000 : ts;
      observe(Math.max(0, now - ms) / 1000);
    }
  }

  /** The queue's ready messages (shared by every consumer) and those delivered to this worker that it holds. */
  async lag(): Promise<SourceLag[]> {
    if (!this.ch) throw new Error('not connected');
    const q = await this.ch.checkQueue(this.cfg.queue);
    return [{ topic: this.cfg.queue, messages: q.messageCount + this.buffer.length }];
  }

  async close(): Promise<void> {
    this.closing = true;
    this.wake?.();
    const conn = this.conn;
    const ch = this.ch;
    this.conn = undefined;
    this.ch = undefined;
    this.buffer = [];
    this.bufferBytes = 0;
    // Acks carry no reply. One round trip on the channel first: when it returns, the broker has
    // processed every ack sent before it, and closing cannot race them (a graceful stop would
    // otherwise redeliver its last batch).
    await ch?.checkQueue(this.cfg.queue).catch(() => {});
    await conn?.close().catch(() => {});
  }
}
