import type { z } from 'zod';
import { fileSourceSchema } from './file/file-source.js';
import { generatorSourceSchema } from './generator/generator-source.js';
import { kafkaSinkSchema, kafkaSourceSchema } from './kafka/kafka-config.js';
import { dlqSubject, natsSourceSchema } from './nats/nats-config.js';
import { parquetSinkSchema } from './parquet/parquet-sink.js';
import { rabbitmqSourceSchema } from './rabbitmq/rabbitmq-config.js';
import { dlqStream, redisStreamsSourceSchema } from './redis/redis-config.js';
import type { ConnectorContext, DeadLetterQueue, Sink, Source } from './types.js';

export interface SourceSpec<S extends z.ZodType = z.ZodType> {
  type: string;
  kind: 'source';
  schema: S;
  description: string;
  create(cfg: z.output<S>, ctx: ConnectorContext): Promise<Source>;
  /** Each worker gets its own WAL directory and file names (competing consumers of a queue). */
  workerScoped?: boolean;
  /** The source's dead-letter queue, when `dlq` is configured. */
  createDlq?(cfg: z.output<S>, ctx: ConnectorContext): Promise<DeadLetterQueue | undefined>;
}

export interface SinkSpec<S extends z.ZodType = z.ZodType> {
  type: string;
  kind: 'sink';
  schema: S;
  description: string;
  /** Columns a model must produce for this sink (partition keys, ...). */
  requiredColumns?(cfg: z.output<S>): string[];
  create(cfg: z.output<S>, ctx: ConnectorContext): Promise<Sink>;
}

async function fileDlq(dir: string | undefined, ctx: ConnectorContext): Promise<DeadLetterQueue | undefined> {
  if (!dir) return undefined;
  const { FileDeadLetterQueue } = await import('./file/file-dlq.js');
  const path = await import('node:path');
  const q = new FileDeadLetterQueue(path.resolve(ctx.projectDir, dir));
  await q.open();
  return q;
}

// The one place a connector type is registered. Client libraries load lazily in create().
export const sources: SourceSpec[] = [
  {
    type: 'file',
    kind: 'source',
    schema: fileSourceSchema,
    description: 'NDJSON files (a file, a directory or a glob); finite unless follow: true',
    async create(cfg, ctx) {
      const { FileSource } = await import('./file/file-source.js');
      return new FileSource(cfg as z.output<typeof fileSourceSchema>, ctx);
    },
    createDlq: (cfg, ctx) => fileDlq((cfg as { dlq?: string }).dlq, ctx),
  },
  {
    type: 'generator',
    kind: 'source',
    schema: generatorSourceSchema,
    description: 'synthetic order events for demos and benchmarks',
    async create(cfg, ctx) {
      const { GeneratorSource } = await import('./generator/generator-source.js');
      return new GeneratorSource(cfg as z.output<typeof generatorSourceSchema>, ctx);
    },
    createDlq: (cfg, ctx) => fileDlq((cfg as { dlq?: string }).dlq, ctx),
  },
  {
    type: 'rabbitmq',
    kind: 'source',
    schema: rabbitmqSourceSchema,
    description: 'a RabbitMQ queue, acked after the rows are durable',
    workerScoped: true,
    async create(cfg, ctx) {
      const { RabbitmqSource } = await import('./rabbitmq/rabbitmq-source.js');
      return new RabbitmqSource(cfg as z.output<typeof rabbitmqSourceSchema>, ctx);
    },
    async createDlq(cfg, ctx) {
      const c = cfg as z.output<typeof rabbitmqSourceSchema>;
      const { RabbitDeadLetterQueue } = await import('./rabbitmq/rabbitmq-dlq.js');
      const q = new RabbitDeadLetterQueue(c, c.dlq ?? `${c.queue}.dlq`, ctx.log);
      await q.open();
      return q;
    },
  },
  {
    type: 'redis_streams',
    kind: 'source',
    schema: redisStreamsSourceSchema,
    description: 'a Redis stream read in a consumer group, XACKed after the rows are durable',
    workerScoped: true,
    async create(cfg, ctx) {
      const { RedisStreamsSource } = await import('./redis/redis-streams-source.js');
      return new RedisStreamsSource(cfg as z.output<typeof redisStreamsSourceSchema>, ctx);
    },
    async createDlq(cfg, ctx) {
      const c = cfg as z.output<typeof redisStreamsSourceSchema>;
      const { RedisStreamsDeadLetterQueue } = await import('./redis/redis-streams-dlq.js');
      const q = new RedisStreamsDeadLetterQueue(c, dlqStream(c), ctx.log, ctx.workerId);
      await q.open();
      return q;
    },
  },
  {
    type: 'nats',
    kind: 'source',
    schema: natsSourceSchema,
    description: 'a NATS JetStream stream through a durable pull consumer, acked after the rows are durable',
    workerScoped: true,
    async create(cfg, ctx) {
      const { NatsSource } = await import('./nats/nats-source.js');
      return new NatsSource(cfg as z.output<typeof natsSourceSchema>, ctx);
    },
    async createDlq(cfg, ctx) {
      const c = cfg as z.output<typeof natsSourceSchema>;
      const { NatsDeadLetterQueue } = await import('./nats/nats-dlq.js');
      const q = new NatsDeadLetterQueue(c, dlqSubject(c), ctx.log, ctx.workerId);
      await q.open();
      return q;
    },
  },
  {
    type: 'kafka',
    kind: 'source',
    schema: kafkaSourceSchema,
    description: 'Kafka topics in a consumer group, offsets committed after the rows are durable; effectively-once output',
    workerScoped: true,
    async create(cfg, ctx) {
      const { KafkaSource } = await import('./kafka/kafka-source.js');
      return new KafkaSource(cfg as z.output<typeof kafkaSourceSchema>, ctx);
    },
    async createDlq(cfg, ctx) {
      const { KafkaDeadLetterQueue } = await import('./kafka/kafka-dlq.js');
      const q = new KafkaDeadLetterQueue(cfg as z.output<typeof kafkaSourceSchema>, ctx.log, ctx.workerId);
      await q.open();
      return q;
    },
  },
];

export const sinks: SinkSpec[] = [
  {
    type: 'parquet',
    kind: 'sink',
    schema: parquetSinkSchema,
    description: 'Parquet files on local disk, atomic and idempotent',
    requiredColumns: (cfg) => {
      const c = cfg as z.output<typeof parquetSinkSchema>;
      return [...c.partition_by, ...(c.dedupe_key ? [c.dedupe_key] : [])];
    },
    async create(cfg, ctx) {
      const { ParquetSink } = await import('./parquet/parquet-sink.js');
      return new ParquetSink(cfg as z.output<typeof parquetSinkSchema>, ctx);
    },
  },
  {
    type: 'kafka',
    kind: 'sink',
    schema: kafkaSinkSchema,
    description: 'rows as JSON messages to a Kafka topic, one transaction per flush, key from a column',
    requiredColumns: (cfg) => {
      const c = cfg as z.output<typeof kafkaSinkSchema>;
      return c.key ? [c.key] : [];
    },
    async create(cfg, ctx) {
      const { KafkaSink } = await import('./kafka/kafka-sink.js');
      return new KafkaSink(cfg as z.output<typeof kafkaSinkSchema>, ctx);
    },
  },
];

export function sourceSpec(type: string): SourceSpec | undefined {
  return sources.find((s) => s.type === type);
}

export function sinkSpec(type: string): SinkSpec | undefined {
  return sinks.find((s) => s.type === type);
}
