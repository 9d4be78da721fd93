import type { SinkDefinition, SourceDefinition } from './define.js';
import { fileSource } from './file/file-definition.js';
import { csvSink, jsonlSink, parquetSink } from './files/files-definition.js';
import { generatorSource } from './generator/generator-definition.js';
import { httpSink } from './http/http-definition.js';
import { kafkaSink, kafkaSource } from './kafka/kafka-definition.js';
import { mysqlSink } from './mysql/mysql-definition.js';
import { natsSink, natsSource } from './nats/nats-definition.js';
import { postgresSink } from './postgres/postgres-definition.js';
import { rabbitmqSink, rabbitmqSource } from './rabbitmq/rabbitmq-definition.js';
import { redisSink, redisStreamsSource } from './redis/redis-definition.js';

export type { ConnectorConfig, ConsumerIdentity, MetadataColumn, RequiredColumn, SinkDefinition, SourceDefinition, SourceDlq } from './define.js';
export { dlqDefaultsBesideWal } from './define.js';

// Every connector, in the order docs and error messages list them: adding one is a folder and a
// line here. The definitions load their client libraries only when a project uses them.
export const sources: SourceDefinition[] = [fileSource, generatorSource, rabbitmqSource, redisStreamsSource, natsSource, kafkaSource];

export const sinks: SinkDefinition[] = [parquetSink, jsonlSink, csvSink, kafkaSink, postgresSink, mysqlSink, httpSink, redisSink, rabbitmqSink, natsSink];

export function sourceSpec(type: string): SourceDefinition | undefined {
  return sources.find((s) => s.type === type);
}

export function sinkSpec(type: string): SinkDefinition | undefined {
  return sinks.find((s) => s.type === type);
}

/** The names the project loader uses (NamedSource.spec, NamedSink.spec). */
export type SourceSpec = SourceDefinition;
export type SinkSpec = SinkDefinition;
