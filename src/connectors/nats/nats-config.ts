import { z } from 'zod';
import { batching } from '../shared-config.js';

export const natsSourceSchema = z
  .object({
    type: z.literal('nats'),
    servers: z.union([z.string(), z.array(z.string()).min(1)]).default('127.0.0.1:4222').describe('NATS server(s), host:port or nats:// URLs'),
    user: z.string().optional(),
    password: z.string().optional(),
    token: z.string().optional(),
    stream: z.string().min(1).describe('the JetStream stream to consume'),
    subjects: z.array(z.string().min(1)).optional().describe('create the stream with these subjects when it is missing'),
    consumer: z.string().min(1).default('sluice').describe('durable pull consumer (created when missing; shared by the workers)'),
    filter_subject: z.string().min(1).optional().describe('only messages on this subject'),
    start: z.enum(['earliest', 'latest']).default('earliest').describe('where a new consumer starts'),
    ack_wait_ms: z.number().int().positive().default(30_000).describe('redelivery after this long without an ack (a crashed worker)'),
    max_ack_pending: z
      .number()
      .int()
      .positive()
      .optional()
      .describe("the consumer's bound on messages delivered and not yet acked, over all workers; default 4 x batch_size"),
    dlq: z.string().min(1).optional().describe('subject for dead letters; default sluice.dlq.<stream>, captured by stream <stream>_DLQ'),
    ...batching,
  })
  .strict();
export type NatsSourceConfig = z.output<typeof natsSourceSchema>;

/** The consumer's max_ack_pending: room for the batch being committed and the one being read, per worker. */
export function maxAckPending(cfg: NatsSourceConfig): number {
  return cfg.max_ack_pending ?? 4 * cfg.batch_size;
}

export function dlqSubject(cfg: NatsSourceConfig): string {
  return cfg.dlq ?? `sluice.dlq.${cfg.stream}`;
}

/** Messages the DLQ took: the source terminates these (no redelivery) instead of acking them. */
export const deadLettered = new WeakSet<object>();
