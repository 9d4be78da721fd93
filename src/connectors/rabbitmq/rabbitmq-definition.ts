import { loopback } from '../consumer-identity.js';
import { defineSink, defineSource } from '../define.js';
import { templateColumns } from '../row-json.js';
import { rabbitmqSinkSchema, rabbitmqSourceSchema, type RabbitmqSourceConfig } from './rabbitmq-config.js';

/** A RabbitMQ source's broker (host:port) and virtual host, from `url` or its parts. */
function rabbitServer(cfg: RabbitmqSourceConfig): { server: string; vhost: string } {
  if (cfg.url) {
    try {
      const u = new URL(cfg.url);
      const port = u.port || (u.protocol === 'amqps:' ? '5671' : '5672');
      return { server: `${u.hostname.toLowerCase()}:${port}`, vhost: decodeURIComponent(u.pathname.replace(/^\//, '')) || '/' };
    } catch {
      return { server: cfg.url, vhost: '/' };
    }
  }
  return { server: `${cfg.host.toLowerCase()}:${cfg.port}`, vhost: cfg.vhost || '/' };
}

export const rabbitmqSource = defineSource({
  type: 'rabbitmq',
  schema: rabbitmqSourceSchema,
  description: 'a RabbitMQ queue, acked after the rows are durable',
  dlq: { kind: 'broker' },
  metadata: ['_topic', '_key', '_id', '_timestamp', '_headers'],
  workerScoped: true,
  async create(cfg, ctx) {
    const { RabbitmqSource } = await import('./rabbitmq-source.js');
    return new RabbitmqSource(cfg, ctx);
  },
  async createDlq(cfg, ctx) {
    const { RabbitDeadLetterQueue } = await import('./rabbitmq-dlq.js');
    const q = new RabbitDeadLetterQueue(cfg, cfg.dlq ?? `${cfg.queue}.dlq`, ctx.log);
    await q.open();
    return q;
  },
  async planner(cfg, ctx) {
    const { rabbitmqSourcePlanner } = await import('./rabbitmq-infra.js');
    return rabbitmqSourcePlanner(cfg, ctx);
  },
  // A queue hands each message to one of its consumers, round robin.
  identity(cfg) {
    const { server, vhost } = rabbitServer(cfg);
    return {
      servers: [loopback(server)],
      key: `${vhost}\0${cfg.queue}`,
      setting: 'queue',
      problem: `consume queue "${cfg.queue}" on the same broker: RabbitMQ hands each message of a queue to one of its consumers, so each would get only part of its messages (bind a queue of its own for each source to the exchange)`,
    };
  },
});

export const rabbitmqSink = defineSink({
  type: 'rabbitmq',
  schema: rabbitmqSinkSchema,
  description: 'rows as persistent JSON messages to a RabbitMQ exchange, publisher confirms awaited',
  requiredColumns: (cfg) => templateColumns(cfg.routing_key),
  async create(cfg, ctx) {
    const { RabbitmqSink } = await import('./rabbitmq-sink.js');
    return new RabbitmqSink(cfg, ctx);
  },
  async planner(cfg, ctx) {
    const { rabbitmqSinkPlanner } = await import('./rabbitmq-infra.js');
    return rabbitmqSinkPlanner(cfg, ctx);
  },
});
