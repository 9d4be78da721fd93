import { z } from 'zod';

/**
 * Batching keys shared by every source (otter's names), applied by the engine (engine/batcher.ts):
 * ceilings, not targets. Batches are as large as the backlog: small under light traffic (handed
 * over as soon as the engine is free), up to these under a backlog.
 */
export const batching = {
  batch_size: z.number().int().positive().default(25_000).describe('the most messages a batch takes (a ceiling: batches follow the backlog)'),
  batch_timeout_ms: z.number().int().positive().default(1000).describe('the longest a batch stays open after its first message while the engine is busy'),
  batch_max_bytes: z
    .number()
    .int()
    .positive()
    .default(32 * 2 ** 20)
    .describe('a batch stops taking messages once their payloads hold this many bytes (a batch always takes at least one message)'),
};

/**
 * Unacked messages a broker source lets its broker send ahead by default (RabbitMQ's prefetch,
 * JetStream's max_ack_pending): room for the batch being committed, the one being read and a
 * third arriving, bounded so that a large batch_size does not hold a backlog in memory.
 */
export function heldAheadDefault(batchSize: number): number {
  return Math.min(4 * batchSize, 40_000);
}

/** Dead-letter destination shared by every source; for files and generators a directory. */
export const dlqKey = {
  dlq: z.string().min(1).optional().describe('dead-letter destination'),
};

/**
 * What the engine enforces on every source's messages, whatever the source type: limits checked
 * at decode (a message over one is dead-lettered, the limit named in the error) and the contract
 * of `incoming`'s schema. Taken out of a source's block by the project loader before the source
 * type's own schema checks the rest, as the sink policy is.
 */
export const sourcePolicySchema = z
  .object({
    limits: z
      .object({
        max_message_bytes: z
          .number()
          .int()
          .positive()
          .default(16 * 2 ** 20)
          .describe('a larger message is dead-lettered at decode (default 16 MiB)'),
        max_depth: z.number().int().positive().max(10_000).default(128).describe('objects and lists nested deeper are dead-lettered at decode (default 128)'),
        max_fields: z.number().int().positive().default(100_000).describe('a message with more object keys, at every depth together, is dead-lettered at decode (default 100,000)'),
        max_columns: z.number().int().positive().default(1000).describe("fields of incoming's schema, nested ones included; a message that would add one more is dead-lettered (default 1,000)"),
        map_threshold: z.number().int().positive().default(200).describe('a nested object with more distinct keys than this becomes one JSON column instead of a struct (default 200)'),
      })
      .strict()
      .default({ max_message_bytes: 16 * 2 ** 20, max_depth: 128, max_fields: 100_000, max_columns: 1000, map_threshold: 200 }),
    contract: z
      .object({
        new_columns: z
          .enum(['evolve', 'freeze', 'discard_row', 'discard_value'])
          .default('evolve')
          .describe(
            "what a message with a field incoming's schema does not have yet does: evolve (add it, up to limits.max_columns), freeze (dead-letter the message), discard_row (drop the message, counted), discard_value (drop the new field, keep the rest)",
          ),
      })
      .strict()
      .default({ new_columns: 'evolve' }),
  })
  .strict();

export type SourcePolicy = z.output<typeof sourcePolicySchema>;

/** The engine's keys, taken out of a source's block before its own schema checks the rest. */
export const SOURCE_POLICY_KEYS = Object.keys(sourcePolicySchema.shape) as (keyof SourcePolicy)[];

/**
 * Error policy shared by every sink (config/sinks.yml), checked by the project loader beside the
 * sink's own schema, so every sink type has it without declaring it.
 */
export const sinkPolicySchema = z
  .object({
    retry: z
      .object({
        max_attempts: z.number().int().positive().default(5).describe('attempts of one flush before on_error applies'),
        backoff_ms: z.number().int().positive().default(500).describe('wait after the first failure; doubles on every further one'),
        max_backoff_ms: z.number().int().positive().default(30_000).describe('longest wait between attempts'),
      })
      .strict()
      .default({ max_attempts: 5, backoff_ms: 500, max_backoff_ms: 30_000 }),
    on_error: z.enum(['retry', 'dlq', 'fail']).default('retry').describe('after max_attempts (or a permanent error): keep retrying, send the rows to the DLQ, or stop the pipeline'),
    circuit: z
      .object({
        failures: z.number().int().positive().default(5).describe('consecutive failures that open the circuit'),
        cooldown_ms: z.number().int().positive().default(30_000).describe('how long it stays open before one probe write'),
      })
      .strict()
      .default({ failures: 5, cooldown_ms: 30_000 }),
  })
  .strict();

export type SinkPolicy = z.output<typeof sinkPolicySchema>;

/** The policy keys, taken out of a sink's block before its own schema checks the rest. */
export const SINK_POLICY_KEYS = Object.keys(sinkPolicySchema.shape) as (keyof SinkPolicy)[];
