import fs from 'node:fs';
import { z } from 'zod';
import { batching } from '../shared-config.js';
import { idPrefixKey, templateString } from '../row-json.js';

/** TLS settings shared by connectors that speak TLS. */
export const tlsSchema = z
  .object({
    enabled: z.boolean().default(true),
    ca: z.string().optional().describe('path to a PEM CA bundle'),
    cert: z.string().optional().describe('path to a PEM client certificate'),
    key: z.string().optional().describe('path to the PEM key of the client certificate'),
    reject_unauthorized: z.boolean().default(true),
  })
  .strict();

const reconnectSchema = z
  .object({
    initial_ms: z.number().int().positive().default(200),
    max_ms: z.number().int().positive().default(10_000),
  })
  .strict();

export const connectionKeys = {
  url: z.string().optional().describe('amqp:// or amqps:// URL; overrides host, port, vhost, username and password'),
  host: z.string().default('localhost'),
  port: z.number().int().positive().default(5672),
  vhost: z.string().default('/'),
  username: z.string().default('guest'),
  password: z.string().default('guest'),
  heartbeat_seconds: z.number().int().nonnegative().default(10),
  tls: tlsSchema.optional(),
  reconnect: reconnectSchema.default({ initial_ms: 200, max_ms: 10_000 }),
};

export const rabbitmqSourceSchema = z
  .object({
    type: z.literal('rabbitmq'),
    ...connectionKeys,
    queue: z.string().min(1).describe('queue to consume'),
    dlq: z.string().min(1).optional().describe('queue for dead letters (published with confirms before the original is acked)'),
    prefetch: z.number().int().positive().optional().describe('unacked messages the broker may send ahead; default 4 x batch_size, at most 40,000'),
    declare: z
      .object({
        queue: z.boolean().default(true).describe('declare the queue (and the dlq) as durable if missing'),
        exchange: z
          .object({ name: z.string().min(1), type: z.enum(['direct', 'topic', 'fanout', 'headers']).default('topic') })
          .strict()
          .optional(),
        bindings: z.array(z.object({ exchange: z.string().min(1), routing_key: z.string().default('#') }).strict()).default([]),
      })
      .strict()
      .default({ queue: true, bindings: [] }),
    ...batching,
  })
  .strict();
export type RabbitmqSourceConfig = z.output<typeof rabbitmqSourceSchema>;
export type RabbitmqConnectionConfig = Pick<RabbitmqSourceConfig, 'url' | 'host' | 'port' | 'vhost' | 'username' | 'password' | 'heartbeat_seconds' | 'tls' | 'reconnect'>;

/** The URL and socket options amqplib needs. */
export function connectionArgs(cfg: RabbitmqConnectionConfig): { url: string; socket: Record<string, unknown> } {
  const tls = cfg.tls?.enabled ? cfg.tls : undefined;
  let url = cfg.url;
  if (!url) {
    const proto = tls ? 'amqps' : 'amqp';
    url = `${proto}://${encodeURIComponent(cfg.username)}:${encodeURIComponent(cfg.password)}@${cfg.host}:${cfg.port}/${encodeURIComponent(cfg.vhost)}`;
  }
  const u = new URL(url);
  if (!u.searchParams.has('heartbeat')) u.searchParams.set('heartbeat', String(cfg.heartbeat_seconds));
  const socket: Record<string, unknown> = {};
  if (tls) {
    if (tls.ca) socket.ca = [fs.readFileSync(tls.ca)];
    if (tls.cert) socket.cert = fs.readFileSync(tls.cert);
    if (tls.key) socket.key = fs.readFileSync(tls.key);
    socket.rejectUnauthorized = tls.reject_unauthorized;
  }
  return { url: u.toString(), socket };
}

/** The URL without its password, for logs. */
export function safeUrl(url: string): string {
  const u = new URL(url);
  if (u.password) u.password = '***';
  return u.toString();
}

export const rabbitmqSinkSchema = z
  .object({
    type: z.literal('rabbitmq'),
    ...connectionKeys,
    exchange: z.string().default('').describe('exchange the rows are published to ("" = the default exchange, which routes to the queue named by the routing key)'),
    routing_key: templateString('routing key: a constant, or a template such as orders.{region} ({column} = the column as text)').default(''),
    declare: z
      .object({
        exchange: z.enum(['direct', 'topic', 'fanout', 'headers']).optional().describe('declare the exchange (durable) with this type if missing'),
        queues: z
          .array(z.object({ name: z.string().min(1), binding_key: z.string().default('#') }).strict())
          .default([])
          .describe('declare these queues (durable) and bind them to the exchange'),
      })
      .strict()
      .default({ queues: [] }),
    persistent: z.boolean().default(true).describe('delivery mode 2: messages survive a broker restart in durable queues'),
    mandatory: z.boolean().default(true).describe('a message no queue takes fails the write instead of being dropped by the broker'),
    batch_rows: z.number().int().positive().default(1000).describe('messages published before waiting for their confirms'),
    confirm_timeout_ms: z.number().int().positive().default(30_000).describe('a batch not confirmed within this long fails (and is retried)'),
    ...idPrefixKey,
  })
  .strict();
export type RabbitmqSinkConfig = z.output<typeof rabbitmqSinkSchema>;
