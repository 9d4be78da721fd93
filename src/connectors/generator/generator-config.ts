import { z } from 'zod';
import { batching, dlqKey } from '../shared-config.js';

export const generatorSourceSchema = z
  .object({
    type: z.literal('generator'),
    count: z.number().int().nonnegative().default(10_000).describe('messages to produce; 0 = without end'),
    rate: z.number().nonnegative().default(0).describe('messages per second; 0 = as fast as possible'),
    seed: z.number().int().default(42),
    invalid_every: z.number().int().nonnegative().default(0).describe('make every Nth message unparseable (0 = never), to exercise the DLQ'),
    ...batching,
    ...dlqKey,
  })
  .strict();
export type GeneratorSourceConfig = z.output<typeof generatorSourceSchema>;
