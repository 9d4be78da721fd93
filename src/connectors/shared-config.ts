import { z } from 'zod';

/** Batching keys shared by every source (otter's names). */
export const batching = {
  batch_size: z.number().int().positive().default(1000).describe('messages per batch'),
  batch_timeout_ms: z.number().int().positive().default(1000).describe('flush a partial batch after this long'),
};

/** Dead-letter destination shared by every source; for files and generators a directory. */
export const dlqKey = {
  dlq: z.string().min(1).optional().describe('dead-letter destination'),
};

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
    on_error: z
      .enum(['retry', 'dlq', 'fail'])
      .default('retry')
      .describe('after max_attempts (or a permanent error): keep retrying, send the rows to the DLQ, or stop the pipeline'),
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
