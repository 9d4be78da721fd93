import type { Logger } from 'pino';
import { SluiceError, errorMessage } from '../../errors.js';
import { connectionArgs, safeUrl, type RabbitmqConnectionConfig } from './rabbitmq-config.js';
import { backoff, retry } from '../../util/retry.js';

// The few parts of amqplib sluice uses, so the driver stays swappable and the seams testable.
export interface AmqpMessage {
  content: Buffer;
  fields: { deliveryTag: number; redelivered: boolean; exchange: string; routingKey: string };
  properties: { headers?: Record<string, unknown>; [key: string]: unknown };
}
export interface AmqpChannelLike {
  prefetch(count: number): Promise<unknown>;
  assertQueue(queue: string, options?: Record<string, unknown>): Promise<{ messageCount: number }>;
  checkQueue(queue: string): Promise<{ messageCount: number }>;
  assertExchange(exchange: string, type: string, options?: Record<string, unknown>): Promise<unknown>;
  bindQueue(queue: string, exchange: string, pattern: string): Promise<unknown>;
  consume(queue: string, onMessage: (msg: AmqpMessage | null) => void, options?: Record<string, unknown>): Promise<{ consumerTag: string }>;
  cancel(consumerTag: string): Promise<unknown>;
  ack(message: AmqpMessage, allUpTo?: boolean): void;
  nack(message: AmqpMessage, allUpTo?: boolean, requeue?: boolean): void;
  get(queue: string, options?: Record<string, unknown>): Promise<AmqpMessage | false>;
  publish(exchange: string, routingKey: string, content: Buffer, options?: Record<string, unknown>): boolean;
  sendToQueue(queue: string, content: Buffer, options?: Record<string, unknown>): boolean;
  waitForConfirms?(): Promise<void>;
  close(): Promise<void>;
  on(event: string, listener: (...args: unknown[]) => void): unknown;
  once(event: string, listener: (...args: unknown[]) => void): unknown;
}
export interface AmqpConnectionLike {
  createChannel(): Promise<AmqpChannelLike>;
  createConfirmChannel(): Promise<AmqpChannelLike>;
  close(): Promise<void>;
  on(event: string, listener: (...args: unknown[]) => void): unknown;
}

/**
 * Connects, retrying with exponential backoff (`reconnect`) until `deadline` (ms since the
 * epoch) or `signal`; with `once`, makes a single attempt (for a caller that retries itself).
 */
export async function connectWithRetry(cfg: RabbitmqConnectionConfig, log: Logger, opts: { deadline?: number; signal?: AbortSignal; once?: boolean } = {}): Promise<AmqpConnectionLike> {
  const amqp = await import('amqplib');
  const { url, socket } = connectionArgs(cfg);
  try {
    return await retry(async () => (await amqp.connect(url, socket)) as unknown as AmqpConnectionLike, {
      attempts: opts.once ? 1 : undefined,
      backoff: backoff({ initialMs: cfg.reconnect.initial_ms, maxMs: cfg.reconnect.max_ms }),
      deadline: opts.deadline,
      signal: opts.signal,
      onRetry: ({ attempt, delayMs, error }) => {
        if (attempt === 1 || attempt % 10 === 0) log.warn({ url: safeUrl(url), attempt, retry_in_ms: delayMs, err: error }, 'RabbitMQ not reachable; retrying');
      },
    });
  } catch (err) {
    throw new SluiceError('CONNECT', `cannot connect to RabbitMQ at ${safeUrl(url)}: ${errorMessage(err)}`, { cause: err, retryable: true });
  }
}

export function headerString(v: unknown): string | undefined {
  if (v === undefined || v === null) return undefined;
  if (Buffer.isBuffer(v)) return v.toString('utf8');
  return String(v);
}
