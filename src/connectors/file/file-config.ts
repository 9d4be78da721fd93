import { z } from 'zod';
import { batching, dlqKey } from '../shared-config.js';

export const fileSourceSchema = z
  .object({
    type: z.literal('file'),
    path: z.string().min(1).describe('an NDJSON file, a directory of them, or a glob; .json files hold one message or an array'),
    follow: z.boolean().default(false).describe('keep tailing the files for new lines instead of stopping at the end'),
    poll_interval_ms: z.number().int().positive().default(250).describe('how often to look for new data when following'),
    ...batching,
    ...dlqKey,
  })
  .strict();
export type FileSourceConfig = z.output<typeof fileSourceSchema>;
