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
