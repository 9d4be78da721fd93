import type { z } from 'zod';
import { fileSourceSchema } from './file/file-source.js';
import { generatorSourceSchema } from './generator/generator-source.js';
import { kafkaSinkSchema, kafkaSourceSchema } from './kafka/kafka-config.js';
import { dlqSubject, natsSinkSchema, natsSourceSchema } from './nats/nats-config.js';
import { csvSinkSchema, fileSinkRequirements, jsonlSinkSchema, parquetSinkSchema, type FileSinkConfig } from './files/file-sink-config.js';
import { httpSinkSchema } from './http/http-config.js';
import { rabbitmqSinkSchema, rabbitmqSourceSchema } from './rabbitmq/rabbitmq-config.js';
import { dlqStream, redisSinkSchema, redisStreamsSourceSchema } from './redis/redis-config.js';
import { templateColumns } from './row-json.js';
import type { ConnectorContext, DeadLetterQueue, Sink, Source } from './types.js';
import type { InfraPlanner } from './infra.js';
import { postgresSinkSchema } from './postgres/postgres-config.js';
import { mysqlSinkSchema } from './mysql/mysql-config.js';
import { tableRequiredColumns } from './sql-table/table-config.js';

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
  /** What the source needs to exist outside sluice (queues, streams, topics, its DLQ's), for `sluice plan` / `apply`. */
  planner?(cfg: z.output<S>, ctx: ConnectorContext): Promise<InfraPlanner>;
}

export interface RequiredColumn {
  key: (string | number)[];
  column?: string;
  /** A SQL expression over the model's columns (every column it references is required). */
  expr?: string;
}

export interface SinkSpec<S extends z.ZodType = z.ZodType> {
  type: string;
  kind: 'sink';
  schema: S;
  description: string;
  /**
   * Columns a model must produce for this sink (partition keys, ...): a column name, or the
   * config key (path inside the sink block) with the column or SQL expression it names.
   */
  requiredColumns?(cfg: z.output<S>): (string | RequiredColumn)[];
  create(cfg: z.output<S>, ctx: ConnectorContext): Promise<Sink>;
  /** What the sink needs to exist outside sluice (tables, queues, streams, topics), for `sluice plan` / `apply`. */
  planner?(cfg: z.output<S>, ctx: ConnectorContext): Promise<InfraPlanner>;
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
    async planner(cfg, ctx) {
      const { rabbitmqSourcePlanner } = await import('./rabbitmq/rabbitmq-infra.js');
      return rabbitmqSourcePlanner(cfg as z.output<typeof rabbitmqSourceSchema>, ctx);
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
    async planner(cfg, ctx) {
      const { natsSourcePlanner } = await import('./nats/nats-infra.js');
      return natsSourcePlanner(cfg as z.output<typeof natsSourceSchema>, ctx);
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
    async planner(cfg, ctx) {
      const { kafkaSourcePlanner } = await import('./kafka/kafka-infra.js');
      return kafkaSourcePlanner(cfg as z.output<typeof kafkaSourceSchema>, ctx);
    },
  },
];

export const sinks: SinkSpec[] = [
  ...(
    [
      ['parquet', parquetSinkSchema, 'Parquet files on local disk or S3, atomic and idempotent'],
      ['jsonl', jsonlSinkSchema, 'JSON Lines files (optionally gzip) on local disk or S3, atomic and idempotent'],
      ['csv', csvSinkSchema, 'CSV files (RFC 4180, optionally gzip) on local disk or S3, atomic and idempotent'],
    ] as const
  ).map(
    ([type, schema, description]): SinkSpec => ({
      type,
      kind: 'sink',
      schema,
      description,
      requiredColumns: (cfg) => fileSinkRequirements(cfg as FileSinkConfig),
      async create(cfg, ctx) {
        const { FileSink } = await import('./files/file-sink.js');
        return FileSink.create(cfg as FileSinkConfig, ctx);
      },
    }),
  ),
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
    async planner(cfg, ctx) {
      const { kafkaSinkPlanner } = await import('./kafka/kafka-infra.js');
      return kafkaSinkPlanner(cfg as z.output<typeof kafkaSinkSchema>, ctx);
    },
  },
  {
    type: 'postgres',
    kind: 'sink',
    schema: postgresSinkSchema,
    description: 'a PostgreSQL table: append (COPY), merge (upsert) or scd2; effectively-once through a state table',
    requiredColumns: (cfg) => tableRequiredColumns(cfg as z.output<typeof postgresSinkSchema>),
    async create(cfg, ctx) {
      const { PostgresSink } = await import('./postgres/postgres-sink.js');
      return new PostgresSink(cfg as z.output<typeof postgresSinkSchema>, ctx);
    },
    async planner(cfg, ctx) {
      const { postgresPlanner } = await import('./postgres/postgres-table.js');
      return postgresPlanner(cfg as z.output<typeof postgresSinkSchema>, ctx);
    },
  },
  {
    type: 'mysql',
    kind: 'sink',
    schema: mysqlSinkSchema,
    description: 'a MariaDB / MySQL table: append (LOAD DATA) or merge (upsert); effectively-once through a state table',
    requiredColumns: (cfg) => tableRequiredColumns(cfg as z.output<typeof mysqlSinkSchema>),
    async create(cfg, ctx) {
      const { MysqlSink } = await import('./mysql/mysql-sink.js');
      return new MysqlSink(cfg as z.output<typeof mysqlSinkSchema>, ctx);
    },
    async planner(cfg, ctx) {
      const { mysqlPlanner } = await import('./mysql/mysql-table.js');
      return mysqlPlanner(cfg as z.output<typeof mysqlSinkSchema>, ctx);
    },
  },
  {
    type: 'http',
    kind: 'sink',
    schema: httpSinkSchema,
    description: 'rows as batched HTTP requests of JSON, retried with backoff, with an Idempotency-Key',
    async create(cfg, ctx) {
      const { HttpSink } = await import('./http/http-sink.js');
      return new HttpSink(cfg as z.output<typeof httpSinkSchema>, ctx);
    },
  },
  {
    type: 'redis',
    kind: 'sink',
    schema: redisSinkSchema,
    description: 'rows to Redis: SET per row (key template, optional TTL) or XADD to a stream',
    requiredColumns: (cfg) => {
      const c = cfg as z.output<typeof redisSinkSchema>;
      return templateColumns(c.mode === 'set' ? c.key : c.stream);
    },
    async create(cfg, ctx) {
      const { RedisSink } = await import('./redis/redis-sink.js');
      return new RedisSink(cfg as z.output<typeof redisSinkSchema>, ctx);
    },
  },
  {
    type: 'rabbitmq',
    kind: 'sink',
    schema: rabbitmqSinkSchema,
    description: 'rows as persistent JSON messages to a RabbitMQ exchange, publisher confirms awaited',
    requiredColumns: (cfg) => templateColumns((cfg as z.output<typeof rabbitmqSinkSchema>).routing_key),
    async create(cfg, ctx) {
      const { RabbitmqSink } = await import('./rabbitmq/rabbitmq-sink.js');
      return new RabbitmqSink(cfg as z.output<typeof rabbitmqSinkSchema>, ctx);
    },
    async planner(cfg, ctx) {
      const { rabbitmqSinkPlanner } = await import('./rabbitmq/rabbitmq-infra.js');
      return rabbitmqSinkPlanner(cfg as z.output<typeof rabbitmqSinkSchema>, ctx);
    },
  },
  {
    type: 'nats',
    kind: 'sink',
    schema: natsSinkSchema,
    description: 'rows as JSON messages published to NATS JetStream, acks awaited, Nats-Msg-Id for dedupe',
    requiredColumns: (cfg) => templateColumns((cfg as z.output<typeof natsSinkSchema>).subject),
    async create(cfg, ctx) {
      const { NatsSink } = await import('./nats/nats-sink.js');
      return new NatsSink(cfg as z.output<typeof natsSinkSchema>, ctx);
    },
    async planner(cfg, ctx) {
      const { natsSinkPlanner } = await import('./nats/nats-infra.js');
      return natsSinkPlanner(cfg as z.output<typeof natsSinkSchema>, ctx);
    },
  },
];

export function sourceSpec(type: string): SourceSpec | undefined {
  return sources.find((s) => s.type === type);
}

export function sinkSpec(type: string): SinkSpec | undefined {
  return sinks.find((s) => s.type === type);
}
