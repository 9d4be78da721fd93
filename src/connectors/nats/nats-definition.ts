import { serverList } from '../consumer-identity.js';
import { defineSink, defineSource } from '../define.js';
import { templateColumns } from '../row-json.js';
import { dlqSubject, natsSinkSchema, natsSourceSchema } from './nats-config.js';

export const natsSource = defineSource({
  type: 'nats',
  schema: natsSourceSchema,
  description: 'a NATS JetStream stream through a durable pull consumer, acked after the rows are durable',
  dlq: { kind: 'broker' },
  metadata: ['_topic', '_key', '_offset', '_id', '_timestamp', '_headers'],
  workerScoped: true,
  async create(cfg, ctx) {
    const { NatsSource } = await import('./nats-source.js');
    return new NatsSource(cfg, ctx);
  },
  async createDlq(cfg, ctx) {
    const { NatsDeadLetterQueue } = await import('./nats-dlq.js');
    const q = new NatsDeadLetterQueue(cfg, dlqSubject(cfg), ctx.log, ctx.workerId);
    await q.open();
    return q;
  },
  async planner(cfg, ctx) {
    const { natsSourcePlanner } = await import('./nats-infra.js');
    return natsSourcePlanner(cfg, ctx);
  },
  // One durable consumer delivers each message to one of its clients, with the filter_subject of
  // whichever source created it.
  identity: (cfg) => ({
    servers: serverList(cfg.servers),
    key: `${cfg.stream}\0${cfg.consumer}`,
    setting: 'consumer',
    problem: `read stream ${cfg.stream} through the same durable consumer "${cfg.consumer}": it hands each message to one of them, with the filter_subject of the source that created it, so each would get only part of its messages`,
  }),
});

export const natsSink = defineSink({
  type: 'nats',
  schema: natsSinkSchema,
  description: 'rows as JSON messages published to NATS JetStream, acks awaited, Nats-Msg-Id for dedupe',
  requiredColumns: (cfg) => templateColumns(cfg.subject),
  async create(cfg, ctx) {
    const { NatsSink } = await import('./nats-sink.js');
    return new NatsSink(cfg, ctx);
  },
  async planner(cfg, ctx) {
    const { natsSinkPlanner } = await import('./nats-infra.js');
    return natsSinkPlanner(cfg, ctx);
  },
});
