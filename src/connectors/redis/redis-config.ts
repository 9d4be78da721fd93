import { z } from 'zod';
import { batching } from '../shared-config.js';

export const redisStreamsSourceSchema = z
  .object({
    type: z.literal('redis_streams'),
    url: z.string().default('redis://127.0.0.1:6379').describe('redis:// or rediss:// URL (user, password and database in it)'),
    stream: z.string().min(1).describe('the stream to consume'),
    group: z.string().min(1).default('sluice').describe('consumer group (created if missing)'),
    consumer: z.string().min(1).optional().describe("this worker's consumer name; default: the worker id"),
    start: z.enum(['earliest', 'latest']).default('earliest').describe('where a new group starts reading'),
    field: z.string().min(1).default('payload').describe('entry field holding the message; "*" = all fields as one JSON object'),
    claim_idle_ms: z
      .number()
      .int()
      .nonnegative()
      .default(60_000)
      .describe("take over other consumers' entries pending longer than this (0 = never)"),
    dlq: z.string().min(1).optional().describe('stream for dead letters; default <stream>:dlq'),
    ...batching,
  })
  .strict();
export type RedisStreamsSourceConfig = z.output<typeof redisStreamsSourceSchema>;

export function dlqStream(cfg: RedisStreamsSourceConfig): string {
  return cfg.dlq ?? `${cfg.stream}:dlq`;
}
