import { loopback } from '../consumer-identity.js';
import { defineSink, defineSource } from '../define.js';
import { templateColumns } from '../row-json.js';
import { dlqStream, redisSinkSchema, redisStreamsSourceSchema } from './redis-config.js';

/** A Redis URL's server and its database (a stream of database 1 is not one of database 0). */
function redisServer(url: string): { server: string; db: string } {
  try {
    const u = new URL(url);
    return { server: loopback(`${u.hostname.toLowerCase()}:${u.port || '6379'}`), db: u.pathname.replace(/^\/+/, '') || '0' };
  } catch {
    return { server: url, db: '0' };
  }
}

export const redisStreamsSource = defineSource({
  type: 'redis_streams',
  schema: redisStreamsSourceSchema,
  description: 'a Redis stream read in a consumer group, XACKed after the rows are durable',
  dlq: { kind: 'broker' },
  metadata: ['_topic', '_id', '_timestamp', '_headers'],
  workerScoped: true,
  async create(cfg, ctx) {
    const { RedisStreamsSource } = await import('./redis-streams-source.js');
    return new RedisStreamsSource(cfg, ctx);
  },
  async createDlq(cfg, ctx) {
    const { RedisStreamsDeadLetterQueue } = await import('./redis-streams-dlq.js');
    const q = new RedisStreamsDeadLetterQueue(cfg, dlqStream(cfg), ctx.log, ctx.workerId);
    await q.open();
    return q;
  },
  // One group hands each entry to one consumer, and a consumer takes over the entries another
  // left pending: with the same consumer name they would even share one pending list.
  identity(cfg) {
    const { server, db } = redisServer(cfg.url);
    return {
      servers: [server],
      key: `${db}\0${cfg.stream}\0${cfg.group}`,
      setting: 'group',
      problem: `read stream ${cfg.stream} in the same consumer group "${cfg.group}": the group hands each entry to one consumer (and a consumer takes over entries another left pending), so each would see only part of the stream`,
    };
  },
});

export const redisSink = defineSink({
  type: 'redis',
  schema: redisSinkSchema,
  description: 'rows to Redis: SET per row (key template, optional TTL) or XADD to a stream',
  requiredColumns: (cfg) => [...templateColumns(cfg.mode === 'set' ? cfg.key : cfg.stream), ...(cfg.delete_column ? [cfg.delete_column] : [])],
  upsertKey: (cfg) => (cfg.mode === 'set' ? templateColumns(cfg.key) : undefined),
  async create(cfg, ctx) {
    const { RedisSink } = await import('./redis-sink.js');
    return new RedisSink(cfg, ctx);
  },
});
