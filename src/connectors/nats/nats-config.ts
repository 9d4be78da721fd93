import { z } from 'zod';
import { batching, heldAheadDefault } from '../shared-config.js';
import { idPrefixKey, templateString } from '../row-json.js';

/** Connection keys of every NATS connector (source, DLQ, sink). */
export const natsConnectionKeys = {
  servers: z
    .union([z.string(), z.array(z.string()).min(1)])
    .default('127.0.0.1:4222')
    .describe('NATS server(s), host:port or nats:// URLs'),
  user: z.string().optional(),
  password: z.string().optional(),
  token: z.string().optional(),
};

export const natsSourceSchema = z
  .object({
    type: z.literal('nats'),
    ...natsConnectionKeys,
    stream: z.string().min(1).describe('the JetStream stream to consume'),
    subjects: z.array(z.string().min(1)).optional().describe('create the stream with these subjects when it is missing'),
    consumer: z.string().min(1).default('sluice').describe('durable pull consumer (created when missing; shared by the workers)'),
    filter_subject: z.string().min(1).optional().describe('only messages on this subject'),
    start: z.enum(['earliest', 'latest']).default('earliest').describe('where a new consumer starts'),
    ack_wait_ms: z.number().int().positive().default(30_000).describe('redelivery after this long without an ack (a crashed worker)'),
    max_ack_pending: z.number().int().positive().optional().describe("the consumer's bound on messages delivered and not yet acked, over all workers; default 4 x batch_size, at most 40,000"),
    dlq: z.string().min(1).optional().describe('subject for dead letters; default sluice.dlq.<stream>, captured by stream <stream>_DLQ'),
    ...batching,
  })
  .strict();
export type NatsSourceConfig = z.output<typeof natsSourceSchema>;
export type NatsConnectionConfig = Pick<NatsSourceConfig, 'servers' | 'user' | 'password' | 'token'>;

/** The consumer's max_ack_pending: room for the batch being committed and the one being read, per worker. */
export function maxAckPending(cfg: NatsSourceConfig): number {
  return cfg.max_ack_pending ?? heldAheadDefault(cfg.batch_size);
}

export function dlqSubject(cfg: NatsSourceConfig): string {
  return cfg.dlq ?? `sluice.dlq.${cfg.stream}`;
}

/** Messages the DLQ took: the source terminates these (no redelivery) instead of acking them. */
export const deadLettered = new WeakSet<object>();

export const natsSinkSchema = z
  .object({
    type: z.literal('nats'),
    ...natsConnectionKeys,
    subject: templateString('subject of every row: a constant, or a template such as orders.{region} ({column} = the column as text)'),
    stream: z.string().min(1).optional().describe('check at start that this JetStream stream exists; create it when missing and `subjects` is set'),
    subjects: z.array(z.string().min(1)).min(1).optional().describe('subjects of the stream created when missing'),
    duplicate_window_ms: z.number().int().positive().optional().describe("duplicate window of the stream created when missing (JetStream's default: 2 minutes)"),
    batch_rows: z.number().int().positive().default(1000).describe('publishes in flight before their acks are awaited'),
    ack_timeout_ms: z.number().int().positive().default(30_000).describe('a publish not acked by JetStream within this long fails (and is retried)'),
    ...idPrefixKey,
  })
  .strict()
  .superRefine((c, ctx) => {
    for (const k of ['subjects', 'duplicate_window_ms'] as const) {
      if (c[k] !== undefined && !c.stream) ctx.addIssue({ code: 'custom', path: [k], message: `${k} needs stream (it describes the stream to create)` });
    }
  });
export type NatsSinkConfig = z.output<typeof natsSinkSchema>;
