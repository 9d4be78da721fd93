import { serverList } from '../consumer-identity.js';
import { defineSink, defineSource } from '../define.js';
import { kafkaSinkSchema, kafkaSourceSchema } from './kafka-config.js';

export const kafkaSource = defineSource({
  type: 'kafka',
  schema: kafkaSourceSchema,
  description: 'Kafka topics in a consumer group, offsets committed after the rows are durable; effectively-once output',
  dlq: { kind: 'broker' },
  metadata: ['_topic', '_key', '_partition', '_offset', '_timestamp', '_headers'],
  workerScoped: true,
  partitioned: true,
  async create(cfg, ctx) {
    const { KafkaSource } = await import('./kafka-source.js');
    return new KafkaSource(cfg, ctx);
  },
  async createDlq(cfg, ctx) {
    const { KafkaDeadLetterQueue } = await import('./kafka-dlq.js');
    const q = new KafkaDeadLetterQueue(cfg, ctx.log, ctx.workerId);
    await q.open();
    return q;
  },
  async planner(cfg, ctx) {
    const { kafkaSourcePlanner } = await import('./kafka-infra.js');
    return kafkaSourcePlanner(cfg, ctx);
  },
  // kafkajs: the group's leader assigns only the topics it subscribed to itself, so a member
  // subscribed to other topics gets no partitions (and on the same topics, they split them).
  identity: (cfg) => ({
    servers: serverList(cfg.brokers),
    key: cfg.group_id,
    setting: 'group_id',
    problem: `consume as Kafka consumer group "${cfg.group_id}" on the same brokers: the group's leader assigns only the topics it subscribed to itself, so one of them would silently get no partitions (or, on the same topics, each would get only some)`,
  }),
});

export const kafkaSink = defineSink({
  type: 'kafka',
  schema: kafkaSinkSchema,
  description: 'rows as JSON messages to a Kafka topic, one transaction per flush, key from a column',
  requiredColumns: (cfg) => (cfg.key ? [cfg.key] : []),
  // A keyed topic (compacted, or read as a table) keeps the latest message per key.
  upsertKey: (cfg) => (cfg.key ? [cfg.key] : undefined),
  async create(cfg, ctx) {
    const { KafkaSink } = await import('./kafka-sink.js');
    return new KafkaSink(cfg, ctx);
  },
  async planner(cfg, ctx) {
    const { kafkaSinkPlanner } = await import('./kafka-infra.js');
    return kafkaSinkPlanner(cfg, ctx);
  },
});
