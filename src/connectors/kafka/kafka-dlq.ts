import { randomUUID } from 'node:crypto';
import type { Admin, Consumer, IHeaders, Kafka, KafkaMessage, Message, Producer } from 'kafkajs';
import type { Logger } from 'pino';
import { SluiceError, errorMessage } from '../../errors.js';
import type { DeadLetter, DeadLetterQueue } from '../types.js';
import { dlqTopicFor, isDlqTopic, kafkaClient, type KafkaSourceConfig } from './kafka-config.js';
import { headerText, type KafkaOrigin } from './kafka-source.js';

export const H = {
  error: 'sluice-error',
  stage: 'sluice-stage',
  topic: 'sluice-topic',
  partition: 'sluice-partition',
  offset: 'sluice-offset',
  model: 'sluice-model',
  time: 'sluice-time',
  worker: 'sluice-worker',
} as const;

interface Found {
  topic: string;
  partition: number;
  message: KafkaMessage;
}

const tpKey = (topic: string, partition: number) => `${topic}:${partition}`;

/**
 * Reads `topics` from `from` (per partition; default the low watermark) up to the high
 * watermark as it is now, without committing anything (a throwaway consumer group), stopping
 * after `limit` messages. Messages come in offset order within a partition.
 */
export async function readTopics(kafka: Kafka, admin: Admin, topics: string[], opts: { from?: Map<string, number>; limit?: number; filter?: (f: Found) => boolean } = {}): Promise<Found[]> {
  const ends = new Map<string, number>();
  const starts = new Map<string, number>();
  for (const topic of topics) {
    for (const p of await admin.fetchTopicOffsets(topic)) {
      const k = tpKey(topic, p.partition);
      const from = Math.max(Number(p.low), opts.from?.get(k) ?? Number(p.low));
      if (from < Number(p.high)) {
        starts.set(k, from);
        ends.set(k, Number(p.high));
      }
    }
  }
  if (ends.size === 0) return [];
  const limit = opts.limit ?? Infinity;
  const found: Found[] = [];
  const consumer = kafka.consumer({ groupId: `sluice-dlq-read-${randomUUID()}`, sessionTimeout: 10_000, heartbeatInterval: 1000, maxWaitTimeInMs: 100, allowAutoTopicCreation: false });
  await consumer.connect();
  try {
    await consumer.subscribe({ topics: [...new Set([...ends.keys()].map((k) => k.slice(0, k.lastIndexOf(':'))))], fromBeginning: true });
    const remaining = new Set(ends.keys());
    let finish!: () => void;
    const done = new Promise<void>((r) => (finish = r));
    consumer.on(consumer.events.GROUP_JOIN, () => {
      for (const [k, from] of starts) consumer.seek({ topic: k.slice(0, k.lastIndexOf(':')), partition: Number(k.slice(k.lastIndexOf(':') + 1)), offset: String(from) });
    });
    await consumer.run({
      autoCommit: false,
      eachBatch: async ({ batch, resolveOffset }) => {
        const k = tpKey(batch.topic, batch.partition);
        const end = ends.get(k);
        if (end === undefined || !remaining.has(k)) return;
        for (const m of batch.messages) {
          const off = Number(m.offset);
          if (off < (starts.get(k) ?? 0)) continue;
          if (off >= end || found.length >= limit) break;
          const f = { topic: batch.topic, partition: batch.partition, message: m };
          if (!opts.filter || opts.filter(f)) found.push(f);
          resolveOffset(m.offset);
        }
        const last = Number(batch.lastOffset());
        if (last + 1 >= end) remaining.delete(k);
        if (remaining.size === 0 || found.length >= limit) finish();
      },
    });
    const timeout = new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), 60_000).unref());
    if ((await Promise.race([done, timeout])) === 'timeout') throw new SluiceError('CONNECT', `reading ${topics.join(', ')} did not finish within 60 s`);
  } finally {
    await consumer.disconnect().catch(() => {});
  }
  const order = (f: Found) => `${f.topic}\u0000${String(f.partition).padStart(6, '0')}\u0000${f.message.offset.padStart(20, '0')}`;
  return found.sort((a, b) => (order(a) < order(b) ? -1 : 1)).slice(0, limit);
}

/**
 * Dead letters produced to `<topic>_dlq` (or `dlq`): the original key, value and headers,
 * plus sluice-error, -stage, -topic, -partition, -offset, -model, -time and -worker headers.
 * append() resolves once every broker replica has the records (acks=-1), before the batch's
 * WAL commit and source offset commit.
 *
 * Kafka cannot delete records, so a crash between this produce and the WAL commit cannot be
 * undone; instead, the WAL commit stores this worker's DLQ end offsets (mark), and on recovery
 * the dead letters this worker produced after them are read back: when the same source message
 * fails again in the replayed batch it is not produced a second time. Each dead letter of a
 * single worker therefore appears once.
 */
export class KafkaDeadLetterQueue implements DeadLetterQueue {
  private kafka?: Kafka;
  private admin?: Admin;
  private producer?: Producer;
  /**
   * Per DLQ partition, an offset at or below the first dead letter not yet covered by a WAL
   * commit (the first offset of the last produce there; lower is safe, only slower to recover).
   */
  private ends = new Map<string, number>();
  /** Source coordinates dead-lettered by a batch that never committed. */
  private already = new Set<string>();

  constructor(
    private readonly cfg: KafkaSourceConfig,
    private readonly log: Logger,
    private readonly worker: string,
  ) {}

  /** The DLQ topic names, for messages. */
  get queue(): string {
    return this.cfg.dlq ?? (this.cfg.topics ? this.cfg.topics.map((t) => `${t}_dlq`).join(', ') : `<topic>_dlq of ${this.cfg.topic_pattern}`);
  }

  async open(): Promise<void> {
    this.kafka = await kafkaClient(this.cfg, this.log, 'dlq');
    this.admin = this.kafka.admin();
    this.producer = this.kafka.producer({ allowAutoTopicCreation: true, maxInFlightRequests: 1 });
    try {
      await this.admin.connect();
      await this.producer.connect();
    } catch (err) {
      await this.close();
      throw new SluiceError('CONNECT', `cannot reach Kafka at ${this.cfg.brokers.join(',')} for the DLQ: ${errorMessage(err)}`, { cause: err, retryable: true });
    }
  }

  /** The dead-letter topics that exist now. */
  private async topics(): Promise<string[]> {
    const existing = new Set(await this.admin!.listTopics());
    if (this.cfg.dlq) return existing.has(this.cfg.dlq) ? [this.cfg.dlq] : [];
    if (this.cfg.topics) return this.cfg.topics.map((t) => `${t}_dlq`).filter((t) => existing.has(t));
    const re = new RegExp(this.cfg.topic_pattern!);
    return [...existing].filter((t) => isDlqTopic(this.cfg, t) && re.test(t.slice(0, -4))).sort();
  }

  async append(records: DeadLetter[]): Promise<void> {
    const byTopic = new Map<string, Message[]>();
    for (const r of records) {
      const o = r.original as KafkaOrigin | undefined;
      const topic = o?.topic ?? String(r.source.topic ?? this.cfg.topics?.[0] ?? '');
      const coord = o ? tpKey(o.topic, o.partition) + `:${o.message.offset}` : undefined;
      if (coord && this.already.delete(coord)) {
        this.log.info({ source: r.source }, 'dead letter already produced before a crash; not produced again');
        continue;
      }
      const headers: IHeaders = { ...(o?.message.headers ?? {}) };
      headers[H.error] = r.error.replace(/[\r\n]+/g, ' ');
      headers[H.stage] = r.stage;
      headers[H.topic] = topic;
      if (o) {
        headers[H.partition] = String(o.partition);
        headers[H.offset] = o.message.offset;
      }
      if (r.model) headers[H.model] = r.model;
      headers[H.time] = r.time;
      headers[H.worker] = this.worker;
      const msg: Message = { key: o?.message.key ?? null, value: o ? o.message.value : r.payload, headers, ...(o && Number(o.message.timestamp) > 0 ? { timestamp: o.message.timestamp } : {}) };
      const dlq = dlqTopicFor(this.cfg, topic);
      (byTopic.get(dlq) ?? byTopic.set(dlq, []).get(dlq)!).push(msg);
    }
    if (byTopic.size === 0) return;
    const res = await this.producer!.sendBatch({ acks: -1, topicMessages: [...byTopic].map(([topic, messages]) => ({ topic, messages })) });
    for (const r of res) {
      const k = tpKey(r.topicName, r.partition);
      if (r.baseOffset !== undefined && Number(r.baseOffset) >= 0) this.ends.set(k, Number(r.baseOffset));
    }
  }

  mark(): unknown {
    return Object.fromEntries(this.ends);
  }

  /**
   * Reads back this worker's dead letters produced after `mark` (in DLQ partitions the mark does
   * not know, from their start): those of a batch that never committed. When a replayed batch
   * dead-letters the same source message, it is not produced again.
   */
  async recover(mark: unknown): Promise<void> {
    const topics = await this.topics();
    const from = new Map<string, number>();
    if (mark && typeof mark === 'object') for (const [k, v] of Object.entries(mark as Record<string, number>)) if (typeof v === 'number') from.set(k, v);
    if (mark !== undefined && topics.length > 0) {
      const mine = await readTopics(this.kafka!, this.admin!, topics, { from, filter: (f) => f.message.headers?.[H.worker]?.toString() === this.worker });
      for (const f of mine) {
        const h = headerText(f.message.headers) ?? {};
        if (h[H.topic] && h[H.partition] && h[H.offset]) this.already.add(`${h[H.topic]}:${h[H.partition]}:${h[H.offset]}`);
      }
      if (this.already.size) this.log.info({ dead_letters: this.already.size }, 'read back the dead letters produced since the last commit; a message dead-lettered again is not produced twice');
    }
    // From here on, whatever is in the DLQ is known: the next mark starts at today's ends.
    this.ends.clear();
    for (const topic of topics) for (const p of await this.admin!.fetchTopicOffsets(topic)) this.ends.set(tpKey(topic, p.partition), Number(p.high));
  }

  async inspect(limit: number): Promise<DeadLetter[]> {
    const found = await readTopics(this.kafka!, this.admin!, await this.topics(), { limit });
    return found.map((f) => toDeadLetter(f));
  }

  /**
   * Produces dead letters back to their original topic (or `target`), with their original key
   * and headers (the sluice-* ones dropped), and records progress as the consumer group
   * `sluice-dlq-replay.<group_id>`: its offset is committed after the copies are acknowledged
   * (acks=-1), so a dead letter is moved once; a crash in between may send a copy twice.
   */
  async replay(opts: { target?: string; limit?: number }): Promise<{ moved: number }> {
    const topics = await this.topics();
    if (topics.length === 0) return { moved: 0 };
    const groupId = `sluice-dlq-replay.${this.cfg.group_id}`;
    const todo = new Map<string, number>();
    for (const topic of topics) {
      const committed = new Map<number, number>();
      for (const t of await this.admin!.fetchOffsets({ groupId, topics: [topic] })) for (const p of t.partitions) committed.set(p.partition, Number(p.offset));
      for (const p of await this.admin!.fetchTopicOffsets(topic)) {
        const start = Math.max(Number(p.low), committed.get(p.partition) ?? -1);
        if (start < Number(p.high)) todo.set(tpKey(topic, p.partition), Number(p.high));
      }
    }
    if (todo.size === 0) return { moved: 0 };
    const limit = opts.limit ?? Infinity;
    let moved = 0;
    const consumer: Consumer = this.kafka!.consumer({ groupId, sessionTimeout: 10_000, heartbeatInterval: 1000, maxWaitTimeInMs: 100, allowAutoTopicCreation: false });
    await consumer.connect();
    let failure: unknown;
    try {
      await consumer.subscribe({ topics, fromBeginning: true });
      let finish!: () => void;
      const done = new Promise<void>((r) => (finish = r));
      await consumer.run({
        autoCommit: false,
        eachBatchAutoResolve: false,
        eachBatch: async ({ batch, resolveOffset }) => {
          const k = tpKey(batch.topic, batch.partition);
          const end = todo.get(k);
          if (end === undefined || failure) return;
          const take: KafkaMessage[] = [];
          for (const m of batch.messages) {
            if (Number(m.offset) >= end || moved + take.length >= limit) break;
            take.push(m);
          }
          try {
            if (take.length) {
              const byTopic = new Map<string, Message[]>();
              for (const m of take) {
                const h = m.headers ?? {};
                const topic = opts.target ?? h[H.topic]?.toString();
                if (!topic) throw new SluiceError('USAGE', `dead letter ${k}@${m.offset} has no ${H.topic} header; use --target`);
                const headers: IHeaders = {};
                for (const [hk, hv] of Object.entries(h)) if (!hk.startsWith('sluice-') && hv !== undefined) headers[hk] = hv;
                (byTopic.get(topic) ?? byTopic.set(topic, []).get(topic)!).push({ key: m.key, value: m.value, headers });
              }
              await this.producer!.sendBatch({ acks: -1, topicMessages: [...byTopic].map(([topic, messages]) => ({ topic, messages })) });
              const next = String(Number(take[take.length - 1].offset) + 1);
              await consumer.commitOffsets([{ topic: batch.topic, partition: batch.partition, offset: next }]);
              resolveOffset(take[take.length - 1].offset);
              moved += take.length;
            }
          } catch (err) {
            failure = err;
            finish();
            return;
          }
          const last = take.length ? Number(take[take.length - 1].offset) : Number(batch.lastOffset());
          if (last + 1 >= end) todo.delete(k);
          if (todo.size === 0 || moved >= limit) finish();
        },
      });
      const timeout = new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), 120_000).unref());
      if ((await Promise.race([done, timeout])) === 'timeout') failure ??= new SluiceError('CONNECT', 'the DLQ replay did not finish within 120 s; run it again to resume');
    } finally {
      await consumer.disconnect().catch(() => {});
    }
    if (failure) throw failure;
    return { moved };
  }

  async close(): Promise<void> {
    await this.producer?.disconnect().catch(() => {});
    await this.admin?.disconnect().catch(() => {});
  }
}

function toDeadLetter(f: Found): DeadLetter {
  const h = headerText(f.message.headers) ?? {};
  const stage = (h[H.stage] ?? 'decode') as DeadLetter['stage'];
  return {
    payload: f.message.value ? f.message.value.toString('utf8') : '',
    error: h[H.error] ?? '',
    stage,
    source: {
      topic: h[H.topic],
      partition: h[H.partition] !== undefined ? Number(h[H.partition]) : undefined,
      offset: h[H.offset] !== undefined ? Number(h[H.offset]) : undefined,
      dlq_topic: f.topic,
      dlq_partition: f.partition,
      dlq_offset: Number(f.message.offset),
    },
    ...(h[H.model] ? { model: h[H.model] } : {}),
    time: h[H.time] ?? '',
  };
}
