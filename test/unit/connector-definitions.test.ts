import { describe, expect, it } from 'vitest';
import { dlqDefaultsBesideWal, sinkSpec, sinks, sourceSpec, sources } from '../../src/connectors/registry.js';
import type { NamedSource } from '../../src/project/project-loader.js';
import { consumerConflicts } from '../../src/project/consumer-conflicts.js';

// The connector definitions as the rest of sluice sees them (src/connectors/registry.ts): what
// each declares, and the shared-consumer check asking them for their identity.

const META = ['_topic', '_key', '_partition', '_offset', '_id', '_timestamp', '_headers'];

describe('connector definitions', () => {
  it('one definition per type and kind', () => {
    for (const list of [sources, sinks]) {
      expect(new Set(list.map((d) => d.type)).size).toBe(list.length);
    }
    expect(sourceSpec('kafka')?.kind).toBe('source');
    expect(sinkSpec('kafka')?.kind).toBe('sink');
    expect(sourceSpec('parquet')).toBeUndefined();
  });

  it('every source says where its dead letters go and which metadata columns it fills', () => {
    for (const s of sources) {
      expect(['directory', 'broker']).toContain(s.dlq.kind);
      for (const c of s.metadata) expect(META).toContain(c);
      // A broker DLQ is the broker's: the source opens it itself.
      if (s.dlq.kind === 'broker') expect(s.createDlq).toBeTypeOf('function');
    }
    expect(sources.filter(dlqDefaultsBesideWal).map((s) => s.type)).toEqual(['file', 'generator']);
  });
});

describe('shared consumers, from the definitions', () => {
  const source = (name: string, type: string, raw: Record<string, unknown>, line: number): NamedSource => {
    const spec = sourceSpec(type)!;
    return { name, type, spec, cfg: spec.schema.parse({ type, ...raw }) as NamedSource['cfg'], policy: {} as NamedSource['policy'], file: 'config/sources.yml', line };
  };

  it('two sources of one consumer on one broker are reported (localhost is 127.0.0.1); other groups, brokers or types are not', () => {
    const issues = consumerConflicts([
      source('a', 'kafka', { brokers: 'localhost:9092', topics: ['orders'] }, 2),
      source('b', 'kafka', { brokers: ['127.0.0.1:9092'], topics: ['refunds'] }, 6),
      source('c', 'kafka', { brokers: '127.0.0.1:9092', topics: ['x'], group_id: 'other' }, 10),
      source('d', 'kafka', { brokers: 'elsewhere:9092', topics: ['x'] }, 14),
      source('e', 'redis_streams', { url: 'redis://localhost:6379', stream: 'orders' }, 18),
      source('f', 'redis_streams', { url: 'redis://127.0.0.1:6379/1', stream: 'orders' }, 22),
      source('g', 'file', { path: 'data' }, 26),
      source('h', 'file', { path: 'data' }, 30),
    ]);
    expect(issues).toHaveLength(1);
    expect(issues[0]).toMatchObject({ file: 'config/sources.yml', line: 6, key: 'sources.b.group_id' });
    expect(issues[0].message).toMatch(/^sources a \(config\/sources\.yml:2\) and b \(config\/sources\.yml:6\) consume as Kafka consumer group "sluice" on the same brokers/);
  });

  it('rabbitmq: one queue on one broker and vhost, from url or parts', () => {
    const issues = consumerConflicts([
      source('a', 'rabbitmq', { url: 'amqp://guest:guest@LOCALHOST:5672/', queue: 'q' }, 2),
      source('b', 'rabbitmq', { host: 'localhost', queue: 'q' }, 6),
      source('c', 'rabbitmq', { host: 'localhost', vhost: 'other', queue: 'q' }, 10),
    ]);
    expect(issues.map((i) => i.key)).toEqual(['sources.b.queue']);
  });
});
