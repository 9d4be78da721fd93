import fs from 'node:fs';
import { createHash } from 'node:crypto';
import type { Logger } from 'pino';
import { z } from 'zod';
import type { Kafka, KafkaConfig, SASLOptions } from 'kafkajs';
import { batching } from '../shared-config.js';
import { tlsSchema } from '../rabbitmq/rabbitmq-config.js';

const saslSchema = z
  .object({
    mechanism: z.enum(['plain', 'scram-sha-256', 'scram-sha-512']).describe('SASL mechanism'),
    username: z.string().min(1),
    password: z.string(),
  })
  .strict();

/** Connection keys of every Kafka connector (source, DLQ, sink). */
export const kafkaConnectionKeys = {
  brokers: z
    .union([z.string().min(1), z.array(z.string().min(1)).min(1)])
    .transform((v) =>
      Array.isArray(v)
        ? v
        : v
            .split(',')
            .map((s) => s.trim())
            .filter(Boolean),
    )
    .describe('bootstrap brokers, host:port (a list or one comma-separated string)'),
  client_id: z.string().min(1).default('sluice').describe('client id sent to the brokers'),
  tls: tlsSchema.optional().describe('TLS to the brokers (the same block as every connector)'),
  sasl: saslSchema.optional().describe('SASL authentication (plain, scram-sha-256, scram-sha-512)'),
  connect_timeout_ms: z.number().int().positive().default(10_000).describe('timeout of one broker connection attempt'),
  request_timeout_ms: z.number().int().positive().default(30_000).describe('a request the broker has not answered within this long fails (and is retried)'),
};

/** The partition count `sluice apply` gives the topics it creates, and raises existing ones to. */
const topicPartitions = (what: string) =>
  z
    .number()
    .int()
    .positive()
    .optional()
    .describe(
      `partitions of ${what}, for \`sluice apply\`: it creates a missing topic with this many and adds partitions to one with fewer (unset: the broker's default, and the count is not checked)`,
    );

export const kafkaSourceSchema = z
  .object({
    type: z.literal('kafka'),
    ...kafkaConnectionKeys,
    topics: z.array(z.string().min(1)).min(1).optional().describe('topics to consume'),
    topic_pattern: z.string().min(1).optional().describe('a regular expression; every existing topic it matches is consumed (dead-letter topics excepted)'),
    group_id: z.string().min(1).default('sluice').describe('consumer group shared by the workers; offsets are committed here'),
    start: z
      .union([z.enum(['earliest', 'latest']), z.object({ timestamp: z.union([z.number().int().nonnegative(), z.string().min(1)]) }).strict()])
      .default('earliest')
      .describe('where a partition without a committed offset starts: earliest, latest, or {timestamp: ms since the epoch or an ISO date}'),
    session_timeout_ms: z.number().int().min(3001).default(30_000).describe('the group drops a worker silent this long'),
    rebalance_timeout_ms: z.number().int().positive().default(60_000).describe('how long the group waits for members to rejoin during a rebalance'),
    heartbeat_interval_ms: z.number().int().positive().default(3000),
    revoke_timeout_ms: z
      .number()
      .int()
      .positive()
      .optional()
      .describe('on a rebalance, how long batches in flight may take to be committed before their partitions are let go; default rebalance_timeout_ms / 2'),
    max_wait_ms: z.number().int().positive().default(500).describe('how long a fetch waits for data on the broker'),
    max_bytes_per_partition: z.number().int().positive().default(1_048_576).describe('bytes one fetch takes from one partition'),
    max_buffer_bytes: z
      .number()
      .int()
      .positive()
      .default(32 * 1024 * 1024)
      .describe('fetched but unprocessed bytes above which every partition is paused; resumed below half of it'),
    dlq: z.string().min(1).optional().describe("topic for dead letters; default <topic>_dlq of the message's topic"),
    partitions: topicPartitions('the topics'),
    ...batching,
  })
  .strict()
  .superRefine((c, ctx) => {
    if (!c.topics === !c.topic_pattern) ctx.addIssue({ code: 'custom', path: ['topics'], message: 'set exactly one of topics and topic_pattern' });
    if (c.topic_pattern) {
      try {
        new RegExp(c.topic_pattern);
      } catch (err) {
        ctx.addIssue({ code: 'custom', path: ['topic_pattern'], message: `not a regular expression: ${(err as Error).message}` });
      }
    }
    if (typeof c.start === 'object' && typeof c.start.timestamp === 'string' && Number.isNaN(Date.parse(c.start.timestamp))) {
      ctx.addIssue({ code: 'custom', path: ['start', 'timestamp'], message: 'expected milliseconds since the epoch or an ISO date' });
    }
  });
export type KafkaSourceConfig = z.output<typeof kafkaSourceSchema>;
export type KafkaConnectionConfig = Pick<KafkaSourceConfig, 'brokers' | 'client_id' | 'tls' | 'sasl' | 'connect_timeout_ms' | 'request_timeout_ms'>;

export const kafkaSinkSchema = z
  .object({
    type: z.literal('kafka'),
    ...kafkaConnectionKeys,
    topic: z.string().min(1).describe('topic the rows are produced to, one JSON message per row'),
    key: z.string().min(1).optional().describe('model column whose value is the message key (no key when unset or NULL)'),
    transactional: z.boolean().default(true).describe('one Kafka transaction per flush (implies an idempotent producer with acks=all): read_committed consumers see a flush whole or not at all'),
    idempotent: z.boolean().default(true).describe('idempotent producer when transactional is false'),
    compression: z.enum(['none', 'gzip']).default('none').describe('message compression (the codecs kafkajs has built in)'),
    batch_messages: z.number().int().positive().default(5000).describe('messages per produce request'),
    partitions: topicPartitions('the topic'),
  })
  .strict();
export type KafkaSinkConfig = z.output<typeof kafkaSinkSchema>;

/** The dead-letter topic of messages read from `topic`. */
export function dlqTopicFor(cfg: Pick<KafkaSourceConfig, 'dlq'>, topic: string): string {
  return cfg.dlq ?? `${topic}_dlq`;
}

/** True for a topic sluice writes dead letters to (never consumed through a pattern). */
export function isDlqTopic(cfg: Pick<KafkaSourceConfig, 'dlq'>, topic: string): boolean {
  return topic === cfg.dlq || topic.endsWith('_dlq');
}

/**
 * A topic as it may appear in WAL segment and output file names: `_` (the WAL's separator)
 * and `-` (the flush name's separator) become `~`; long names are cut and given a hash.
 */
export function fileSafeTopic(topic: string): string {
  let t = topic.replace(/[_-]/g, '~').replace(/[^A-Za-z0-9.~]/g, '~');
  if (t.length > 40) t = `${t.slice(0, 28)}~${createHash('sha1').update(topic).digest('hex').slice(0, 10)}`;
  return t;
}

/** A sortable key naming one message: topic, partition (4 digits) and offset (19 digits). */
export function messageKey(safeTopic: string, partition: number, offset: string): string {
  return `${safeTopic}.p${String(partition).padStart(4, '0')}.o${offset.padStart(19, '0')}`;
}

/**
 * The kafkajs client for a connector; kafkajs loads only here. `onConnectionError` hears of
 * every broker connection that fails or drops (kafkajs reconnects by itself).
 */
export async function kafkaClient(cfg: KafkaConnectionConfig, log: Logger, what: string, onConnectionError?: (broker: string, message: string) => void): Promise<Kafka> {
  process.env.KAFKAJS_NO_PARTITIONER_WARNING ??= '1';
  const { Kafka: KafkaCtor, logLevel } = await import('kafkajs');
  const ssl = cfg.tls?.enabled
    ? {
        ...(cfg.tls.ca ? { ca: [fs.readFileSync(cfg.tls.ca)] } : {}),
        ...(cfg.tls.cert ? { cert: fs.readFileSync(cfg.tls.cert) } : {}),
        ...(cfg.tls.key ? { key: fs.readFileSync(cfg.tls.key) } : {}),
        rejectUnauthorized: cfg.tls.reject_unauthorized,
      }
    : undefined;
  const sasl = cfg.sasl ? ({ mechanism: cfg.sasl.mechanism, username: cfg.sasl.username, password: cfg.sasl.password } as SASLOptions) : undefined;
  const child = log.child({ kafka: what });
  const config: KafkaConfig = {
    brokers: cfg.brokers,
    clientId: cfg.client_id,
    connectionTimeout: cfg.connect_timeout_ms,
    requestTimeout: cfg.request_timeout_ms,
    ...(ssl ? { ssl } : {}),
    ...(sasl ? { sasl } : {}),
    retry: { initialRetryTime: 250, maxRetryTime: 5000, retries: 8 },
    logLevel: logLevel.WARN,
    // kafkajs logs through pino at debug (its warnings are retries sluice reports itself).
    logCreator:
      () =>
      ({ level, log: entry }) => {
        const { message, ...rest } = entry;
        if (onConnectionError && level <= logLevel.ERROR && /^Connection (error|timeout)/.test(message)) onConnectionError(String(rest.broker ?? ''), message);
        if (level <= logLevel.ERROR) child.debug({ ...rest, level_kafkajs: 'error' }, `kafkajs: ${message}`);
        else child.debug(rest, `kafkajs: ${message}`);
      },
  };
  return new KafkaCtor(config);
}
