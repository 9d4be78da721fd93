import { z } from 'zod';
import { idPrefixKey } from '../row-json.js';

export const httpSinkSchema = z
  .object({
    type: z.literal('http'),
    url: z
      .string()
      .url()
      .refine((u) => /^https?:\/\//i.test(u), 'expected an http:// or https:// URL')
      .describe('endpoint the rows are sent to; user:password@ in it is sent as Basic authentication'),
    method: z.enum(['POST', 'PUT', 'PATCH']).default('POST').describe('HTTP method of every request'),
    format: z.enum(['json_array', 'ndjson']).default('json_array').describe('body: one JSON array of row objects (application/json), or one row object per line (application/x-ndjson)'),
    batch_rows: z.number().int().positive().default(500).describe('rows per request'),
    headers: z.record(z.string(), z.string()).default({}).describe('extra request headers (values may use ${VAR} from the environment)'),
    auth_token_env: z.string().min(1).optional().describe('name of an environment variable holding a token sent as `<auth_header>: <auth_scheme> <token>`'),
    auth_header: z.string().min(1).default('Authorization').describe('header carrying the token'),
    auth_scheme: z.string().default('Bearer').describe('word before the token ("" sends the token alone)'),
    timeout_ms: z.number().int().positive().default(30_000).describe('time limit of one request, answer included'),
    ...idPrefixKey,
  })
  .strict();
export type HttpSinkConfig = z.output<typeof httpSinkSchema>;
