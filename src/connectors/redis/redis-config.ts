import { z } from 'zod';
import { batching } from '../shared-config.js';
import { idPrefixKey, templateString } from '../row-json.js';

export const redisStreamsSourceSchema = z
  .object({
    type: z.literal('redis_streams'),
    url: z.string().default('redis://127.0.0.1:6379').describe('redis:// or rediss:// URL (user, password and database in it)'),
    stream: z.string().min(1).describe('the stream to consume'),
    group: z.string().min(1).default('sluice').describe('consumer group (created if missing)'),
    consumer: z.string().min(1).optional().describe("this worker's consumer name; default: the worker id"),
    start: z.enum(['earliest', 'latest']).default('earliest').describe('where a new group starts reading'),
    field: z.string().min(1).default('payload').describe('entry field holding the message; "*" = all fields as one JSON object'),
    claim_idle_ms: z.number().int().nonnegative().default(60_000).describe("take over other consumers' entries pending longer than this (0 = never)"),
    dlq: z.string().min(1).optional().describe('stream for dead letters; default <stream>:dlq'),
    ...batching,
  })
  .strict();
export type RedisStreamsSourceConfig = z.output<typeof redisStreamsSourceSchema>;

export function dlqStream(cfg: RedisStreamsSourceConfig): string {
  return cfg.dlq ?? `${cfg.stream}:dlq`;
}

export const redisSinkSchema = z
  .object({
    type: z.literal('redis'),
    url: z.string().default('redis://127.0.0.1:6379').describe('redis:// or rediss:// URL (user, password and database in it)'),
    mode: z.enum(['set', 'xadd']).default('set').describe('set: one key per row (SET); xadd: one stream entry per row (XADD)'),
    key: templateString('set: the key of a row, a template such as order:{order_id} ({column} = the column as text)').optional(),
    ttl_seconds: z.number().int().positive().optional().describe('set: keys expire after this long (SET ... EX)'),
    delete_column: z
      .string()
      .min(1)
      .optional()
      .describe("set: a BOOLEAN column of the model (a session window's _retracted under late: update); a row where it is true deletes its key (DEL) instead of setting it"),
    stream: templateString('xadd: the stream, a constant or a template such as orders:{region}').optional(),
    maxlen: z.number().int().positive().optional().describe('xadd: trim the stream to about this many entries (MAXLEN ~)'),
    field: z.string().min(1).default('payload').describe("xadd: the entry field holding the row's JSON"),
    batch_rows: z.number().int().positive().default(1000).describe('commands sent together (one MULTI/EXEC for xadd, one pipeline for set)'),
    timeout_ms: z.number().int().positive().default(30_000).describe('a write not answered within this long fails (and is retried)'),
    dedupe_ttl_seconds: z
      .number()
      .int()
      .positive()
      .default(7 * 86_400)
      .describe("xadd: how long a flush's progress marker is kept, i.e. how late a replay is still recognised"),
    ...idPrefixKey,
  })
  .strict()
  .superRefine((c, ctx) => {
    const need = c.mode === 'set' ? 'key' : 'stream';
    if (c[need] === undefined) ctx.addIssue({ code: 'custom', path: [need], message: `mode ${c.mode} needs ${need}` });
    const foreign = c.mode === 'set' ? (['stream', 'maxlen'] as const) : (['key', 'ttl_seconds', 'delete_column'] as const);
    for (const k of foreign) if (c[k] !== undefined) ctx.addIssue({ code: 'custom', path: [k], message: `${k} does not apply to mode ${c.mode}` });
  });
export type RedisSinkConfig = z.output<typeof redisSinkSchema>;
