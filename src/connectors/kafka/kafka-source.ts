import type { Admin, Consumer, EachBatchPayload, IHeaders, KafkaMessage } from 'kafkajs';
import type { Logger } from 'pino';
import { SluiceError, errorMessage } from '../../errors.js';
import type { ConnectorContext, MessageMeta, PollLimits, RawMessage, Source, SourceChunk, SourceLag } from '../types.js';
import { blockOfBuffers } from '../payload-block.js';
import { withTimeout } from '../../util/with-timeout.js';
import { backoff, retry, sleep } from '../../util/retry.js';
import { fileSafeTopic, isDlqTopic, kafkaClient, messageKey, type KafkaSourceConfig } from './kafka-config.js';
import { KafkaFetchQueue, tpKey, type Fetch, type KafkaPosition, type Slice } from './kafka-fetch-queue.js';
import { KafkaOffsetCommitter, type OffsetCommit, type Ticket } from './kafka-offset-committer.js';

export type { KafkaPosition } from './kafka-fetch-queue.js';

/** What a dead letter needs of the message it came from (`RawMessage.raw`). */
export interface KafkaOrigin {
  topic: string;
  partition: number;
  message: KafkaMessage;
}

/** A chunk's slices (one partition's run of one fetch each) with their commit tickets. */
type AckToken = { slice: Slice<KafkaMessage>; ticket: Ticket }[];

const EMPTY = Buffer.alloc(0);

/**
 * One message as kafkajs fetched it: the engine loads the batch's value bytes as one block,
 * so strings (the payload, key, headers) are made only when asked for — the payload for a
 * dead letter, `meta` when models read metadata.
 */
class KafkaEntry implements RawMessage {
  constructor(
    private readonly topic: string,
    private readonly partition: number,
    private readonly message: KafkaMessage,
  ) {}

  get payload(): string {
    return this.message.value ? this.message.value.toString('utf8') : '';
  }

  get coords(): { topic: string; partition: number; offset: number } {
    return { topic: this.topic, partition: this.partition, offset: Number(this.message.offset) };
  }

  get raw(): KafkaOrigin {
    return { topic: this.topic, partition: this.partition, message: this.message };
  }

  get meta(): MessageMeta {
    const m = this.message;
    return {
      topic: this.topic,
      key: m.key ? m.key.toString('utf8') : undefined,
      partition: this.partition,
      offset: Number(m.offset),
      timestamp: Number(m.timestamp),
      headers: headerText(m.headers),
    };
  }
}

/**
 * Bytes one fetch takes from a broker: a quarter of max_buffer_bytes (a few brokers' responses
 * in memory stay about that), never less than one partition's max_bytes_per_partition.
 */
export function fetchMaxBytes(cfg: Pick<KafkaSourceConfig, 'max_buffer_bytes' | 'max_bytes_per_partition'>): number {
  return Math.max(cfg.max_bytes_per_partition, Math.floor(cfg.max_buffer_bytes / 4));
}

/** The group is rebalancing (kafkajs keeps the protocol error's type, sometimes one cause deep). */
function isRebalance(err: unknown): boolean {
  for (let e = err as { type?: string; cause?: unknown; originalError?: unknown } | undefined, i = 0; e && i < 4; i++) {
    if (e.type === 'REBALANCE_IN_PROGRESS' || e.type === 'ILLEGAL_GENERATION' || e.type === 'UNKNOWN_MEMBER_ID') return true;
    e = (e.originalError ?? e.cause) as typeof e;
  }
  return /rebalanc/i.test(errorMessage(err));
}

/** Header values as text; repeated headers joined with commas. */
export function headerText(headers: IHeaders | undefined): Record<string, string> | undefined {
  if (!headers) return undefined;
  const out: Record<string, string> = {};
  let any = false;
  for (const [k, v] of Object.entries(headers)) {
    if (v === undefined) continue;
    out[k] = (Array.isArray(v) ? v : [v]).map((x) => x.toString()).join(',');
    any = true;
  }
  return any ? out : undefined;
}

/**
 * Consumes topics in a consumer group. kafkajs fetches per broker and calls `eachBatch` for
 * each partition's fetched messages; the handler queues them (KafkaFetchQueue), from which each
 * poll takes what is there, in order, up to the engine's limits, and holds on until every one
 * of them is acked (rows fsynced in the WAL) and its offset commit went out
 * (KafkaOffsetCommitter), or the fetch is let go. So a partition's next fetch only starts after
 * its previous one is durable, and kafkajs, which lets running handlers finish before it
 * rejoins a rebalancing group, commits everything in flight before a partition changes hands
 * (bounded by revoke_timeout_ms). Past max_buffer_bytes queued, every partition is paused
 * until half of it is left; partitions assigned meanwhile start paused.
 *
 * Offsets: the WAL stores each partition's next offset with the rows, and messages below it
 * are skipped (after seeking there when the group's committed offset is behind), so a crash
 * between the WAL commit and the Kafka commit reads nothing twice. Commits are the next offset
 * after the acked messages of a partition, in order.
 */
export class KafkaSource implements Source {
  private consumer?: Consumer;
  private admin?: Admin;
  private topics: string[] = [];
  private readonly queue: KafkaFetchQueue<KafkaMessage>;
  private readonly committer: KafkaOffsetCommitter;
  private up = false;
  /** A broker connection failed or dropped since the last fetch. */
  private connLost = false;
  private closing = false;
  /** Aborted by close(): ends the waits of a restart. */
  private readonly closed = new AbortController();
  private timestampStart = new Map<string, number>();
  /** The catch-up of the last assignment, while it runs (close() waits for it before disconnecting). */
  private catchingUp: Promise<void> | undefined;
  /** Bumped at each assignment: a catch-up of an older one does nothing. */
  private generation = 0;
  /** The lag query of a /metrics scrape, while it runs. */
  private lagging: Promise<void> | undefined;
  private readonly safeTopics = new Map<string, string>();

  constructor(
    private readonly cfg: KafkaSourceConfig,
    private readonly ctx: ConnectorContext,
  ) {
    this.queue = new KafkaFetchQueue<KafkaMessage>({
      maxBufferBytes: cfg.max_buffer_bytes,
      control: {
        pause: (topics) => this.consumer?.pause(topics),
        resume: (topics) => this.consumer?.resume(topics),
      },
      log: ctx.log,
    });
    this.committer = new KafkaOffsetCommitter(
      (offsets) => this.consumer!.commitOffsets(offsets),
      (err, offsets) => this.commitFailed(err, offsets),
    );
  }

  private get log(): Logger {
    return this.ctx.log;
  }

  private get revokeTimeout(): number {
    return this.cfg.revoke_timeout_ms ?? Math.floor(this.cfg.rebalance_timeout_ms / 2);
  }

  async open(position: unknown): Promise<void> {
    const cfg = this.cfg;
    if (position && typeof position === 'object') {
      this.queue.restore(position as KafkaPosition);
      this.committer.restore(position as KafkaPosition);
    }
    const kafka = await kafkaClient(cfg, this.log, 'source', (broker, message) => {
      if (this.closing) return;
      if (!this.connLost) this.log.warn({ broker, reason: message }, 'Kafka connection lost; reconnecting');
      this.connLost = true;
      this.up = false;
    });
    this.admin = kafka.admin();
    try {
      await this.admin.connect();
      this.topics = await this.resolveTopics();
      if (typeof cfg.start === 'object') await this.timestampOffsets(cfg.start.timestamp);
    } catch (err) {
      await this.admin.disconnect().catch(() => {});
      throw new SluiceError('CONNECT', `cannot reach Kafka at ${cfg.brokers.join(',')}: ${errorMessage(err)}`, { cause: err, retryable: true });
    }
    if (this.topics.length === 0) throw new SluiceError('CONFIG', `no topic matches topic_pattern ${cfg.topic_pattern}`);
    const consumer = kafka.consumer({
      groupId: cfg.group_id,
      sessionTimeout: cfg.session_timeout_ms,
      rebalanceTimeout: cfg.rebalance_timeout_ms,
      heartbeatInterval: cfg.heartbeat_interval_ms,
      maxWaitTimeInMs: cfg.max_wait_ms,
      maxBytesPerPartition: cfg.max_bytes_per_partition,
      // kafkajs keeps a broker's whole fetch response (every batch of it, decoded) until each of
      // its batches' handlers returned, and a handler here returns once its messages are
      // committed: what a stalled run holds is a fetch per broker, not max_buffer_bytes, unless
      // a fetch is kept small against it (kafkajs' default is 10 MB per broker).
      maxBytes: fetchMaxBytes(cfg),
      allowAutoTopicCreation: false,
      // Any crash is followed by a restart (a new join); the WAL position keeps it exact. Not
      // once closing: a restart kafkajs schedules after close() disconnected would connect
      // again and keep the process alive after its run ended.
      retry: { initialRetryTime: 250, maxRetryTime: 5000, retries: 8, restartOnFailure: async () => !this.closing },
    });
    this.consumer = consumer;
    const ev = consumer.events;
    consumer.on(ev.GROUP_JOIN, (e) => this.onAssign(e.payload.memberAssignment));
    consumer.on(ev.FETCH, () => {
      if (!this.up && !this.closing) this.log.info(this.connLost ? 'reconnected to Kafka' : 'Kafka consumer fetching again');
      this.connLost = false;
      this.up = true;
    });
    consumer.on(ev.CRASH, (e) => {
      this.up = false;
      if (this.closing) return;
      this.log.warn({ err: new Error(errorMessage(e.payload.error)), restart: e.payload.restart }, 'Kafka consumer crashed; reconnecting');
      this.queue.dropAll();
      if (!e.payload.restart) void this.restart();
    });
    try {
      await consumer.connect();
      await consumer.subscribe({ topics: this.topics, fromBeginning: cfg.start !== 'latest' });
      await this.run();
    } catch (err) {
      await consumer.disconnect().catch(() => {});
      await this.admin.disconnect().catch(() => {});
      throw new SluiceError('CONNECT', `cannot consume from Kafka at ${cfg.brokers.join(',')}: ${errorMessage(err)}`, { cause: err, retryable: true });
    }
    this.log.info({ topics: this.topics, group: cfg.group_id }, 'consuming from Kafka');
  }

  private run(): Promise<void> {
    return this.consumer!.run({
      autoCommit: false,
      eachBatchAutoResolve: false,
      partitionsConsumedConcurrently: 16,
      eachBatch: (p) => this.onFetch(p),
    });
  }

  /** A crash kafkajs does not restart itself from: start over after a pause, until closed. */
  private async restart(): Promise<void> {
    const pause = backoff({ initialMs: 500, maxMs: 10_000 });
    await sleep(pause(1), this.closed.signal);
    await retry(
      async () => {
        if (this.closing) return;
        await this.consumer!.disconnect().catch(() => {});
        await this.consumer!.connect();
        await this.consumer!.subscribe({ topics: this.topics, fromBeginning: this.cfg.start !== 'latest' });
        await this.run();
        // close() came while this was connecting: its disconnect may have come first.
        if (this.closing) await this.consumer!.disconnect().catch(() => {});
      },
      {
        backoff: (attempt) => pause(attempt + 1),
        signal: this.closed.signal,
        onRetry: ({ error, delayMs }) => this.log.warn({ err: new Error(errorMessage(error)), retry_in_ms: delayMs }, 'Kafka consumer restart failed'),
      },
    ).catch(() => {}); // only once closed
  }

  private async resolveTopics(): Promise<string[]> {
    if (this.cfg.topics) return this.cfg.topics;
    const re = new RegExp(this.cfg.topic_pattern!);
    return (await this.admin!.listTopics()).filter((t) => re.test(t) && !t.startsWith('__') && !isDlqTopic(this.cfg, t)).sort();
  }

  /** start: {timestamp}: the first offset at or after it, per partition (used where nothing is committed). */
  private async timestampOffsets(ts: number | string): Promise<void> {
    const ms = typeof ts === 'number' ? ts : Date.parse(ts);
    for (const topic of this.topics) {
      for (const { partition, offset } of await this.admin!.fetchTopicOffsetsByTimestamp(topic, ms)) {
        this.timestampStart.set(tpKey(topic, partition), Number(offset));
      }
    }
  }

  private safeTopic(topic: string): string {
    let s = this.safeTopics.get(topic);
    if (s === undefined) this.safeTopics.set(topic, (s = fileSafeTopic(topic)));
    return s;
  }
  /** A new generation of the group: what is still queued belongs to the old one and is dropped. */
  private onAssign(assignment: Record<string, number[]>): void {
    // A join that completes while closing leads nowhere (and its catch-up would reconnect the admin client).
    if (this.closing) return;
    this.generation++;
    this.up = true;
    const parts = Object.entries(assignment).flatMap(([topic, ps]) => ps.map((partition) => ({ topic, partition })));
    const before = new Set(this.queue.assignment().map((p) => tpKey(p.topic, p.partition)));
    const now = new Set(parts.map((p) => tpKey(p.topic, p.partition)));
    const added = [...now].filter((k) => !before.has(k));
    const revoked = [...before].filter((k) => !now.has(k));
    this.log.info({ partitions: [...now], added, revoked }, 'Kafka partitions assigned');
    this.committer.assign(parts);
    this.queue.assign(parts);
    // Positions as of the assignment, before anything new is read: what the WAL holds (to
    // commit where the group is behind) and what was handed out (to seek to).
    const durable = this.committer.durable();
    const catchUp = this.catchUp(
      parts.map((p) => ({ ...p, durable: durable[tpKey(p.topic, p.partition)], handed: this.queue.handedUpTo(p.topic, p.partition) })),
      this.generation,
    );
    this.catchingUp = catchUp;
    void catchUp.finally(() => {
      if (this.catchingUp === catchUp) this.catchingUp = undefined;
    });
  }

  /**
   * Where the WAL is ahead of the group's committed offset (a crash after the WAL commit, before
   * the Kafka commit), seek there and commit it; where nothing is committed and start is a
   * timestamp, seek to its offset. Messages below the handed-out position are skipped regardless.
   */
  private async catchUp(parts: { topic: string; partition: number; durable: number | undefined; handed: number | undefined }[], generation: number): Promise<void> {
    if (parts.length === 0) return;
    try {
      const topics = [...new Set(parts.map((p) => p.topic))];
      const committed = new Map<string, number>();
      for (const t of await this.admin!.fetchOffsets({ groupId: this.cfg.group_id, topics })) {
        for (const p of t.partitions) committed.set(tpKey(t.topic, p.partition), Number(p.offset));
      }
      if (generation !== this.generation) return;
      const commits: OffsetCommit[] = [];
      for (const { topic, partition, durable, handed } of parts) {
        const k = tpKey(topic, partition);
        const theirs = committed.get(k) ?? -1;
        // The engine may hold messages past the WAL (read ahead): seek past them, commit only the WAL's.
        const mine = handed ?? durable;
        if (mine !== undefined && mine > theirs) this.consumer!.seek({ topic, partition, offset: String(mine) });
        if (durable !== undefined && durable > theirs) commits.push({ topic, partition, offset: String(durable) });
        if (mine === undefined && theirs < 0 && this.timestampStart.has(k)) {
          const at = this.timestampStart.get(k)!;
          this.consumer!.seek({ topic, partition, offset: String(at) });
          this.queue.skipBelow(topic, partition, at);
        }
      }
      if (commits.length) {
        // Through the committer: never back past a commit of this generation's acks meanwhile.
        const done = await this.committer.commitAhead(commits);
        if (done.outcome === 'committed') {
          this.log.info({ partitions: done.offsets.map((c) => `${c.topic}:${c.partition}@${c.offset}`) }, 'committed offsets the WAL already had (a crash or a failed commit came between the two)');
        }
      }
    } catch (err) {
      this.log.warn({ err: new Error(errorMessage(err)) }, 'could not compare the WAL position with the committed offsets; messages below the WAL position are skipped anyway');
    }
  }

  /** kafkajs' eachBatch: queue the partition's new messages and hold on until they are committed. */
  private async onFetch(p: EachBatchPayload): Promise<void> {
    const { batch } = p;
    if (this.closing || !this.queue.isAssigned(batch.topic, batch.partition)) return;
    const fetch = this.queue.add(batch.topic, batch.partition, batch.messages);
    if (!fetch) {
      // Nothing past what was queued or handed out already (usually a fetch again after a seek).
      p.resolveOffset(batch.lastOffset());
      return;
    }
    await this.hold(fetch, p);
    if (!fetch.released) p.resolveOffset(batch.lastOffset());
  }

  /**
   * Until the fetch is settled: heartbeats (kafkajs' own stop while a handler runs), and during
   * a rebalance, waits for what the engine holds of it for at most revoke_timeout_ms.
   */
  private async hold(fetch: Fetch<KafkaMessage>, p: EachBatchPayload): Promise<void> {
    let rebalancingSince = 0;
    let lastBeat = Date.now();
    while (!fetch.settled) {
      await fetch.changed(this.cfg.heartbeat_interval_ms);
      if (fetch.settled) break;
      if (this.queue.rebalancing) {
        rebalancingSince ||= Date.now();
        // Fetched after the rebalance began: the engine holds none of it, the new owner reads it.
        if (fetch.inFlight === 0) {
          this.queue.release(fetch);
          break;
        }
        if (Date.now() - rebalancingSince > this.revokeTimeout) {
          this.log.warn(
            { partition: fetch.tp, offsets: `${fetch.messages[0]?.offset}..${fetch.messages[fetch.messages.length - 1]?.offset}`, revoke_timeout_ms: this.revokeTimeout },
            'a rebalance waited too long for batches in flight; letting the partition go uncommitted (its new owner may read them again)',
          );
          this.queue.release(fetch);
          break;
        }
        continue;
      }
      if (Date.now() - lastBeat < this.cfg.heartbeat_interval_ms) continue;
      lastBeat = Date.now();
      try {
        await p.heartbeat();
      } catch (err) {
        // A rebalance: finish what the engine holds (within revoke_timeout_ms), hand out nothing more.
        this.log.info({ partition: fetch.tp, reason: errorMessage(err) }, 'rebalance while batches are in flight; finishing them first');
        this.queue.startRebalance();
      }
    }
  }

  private commitFailed(err: unknown, offsets: OffsetCommit[]): void {
    // The WAL has the position: a restart of this worker skips these; another worker may read them again.
    const rebalance = isRebalance(err);
    if (rebalance) this.queue.startRebalance();
    this.log[rebalance ? 'info' : 'warn'](
      { err: new Error(errorMessage(err)), partitions: offsets.map((o) => `${o.topic}:${o.partition}@${o.offset}`) },
      'Kafka offset commit failed; the WAL keeps the position',
    );
  }

  /**
   * What the queue holds now, in order, up to `limits`; with nothing there (or a rebalance under
   * way), waits for a fetch, the abort of `signal`, or close().
   */
  async poll(limits: PollLimits, signal: AbortSignal): Promise<SourceChunk | null> {
    // The engine is ready for more: partitions held paused since an assignment may resume.
    this.queue.ready();
    for (;;) {
      const slices = this.queue.take(limits);
      if (slices.length > 0) return { ...this.toChunk(slices), full: this.queue.full };
      if (this.queue.full) return { messages: [], position: this.queue.position(), full: true };
      if (signal.aborted || this.closing) return { messages: [], position: this.queue.position() };
      await this.queue.available(signal);
    }
  }

  private toChunk(slices: Slice<KafkaMessage>[]): SourceChunk {
    let n = 0;
    let bytes = 0;
    for (const s of slices) {
      n += s.messages.length;
      bytes += s.bytes;
    }
    const messages: RawMessage[] = new Array(n);
    const values: Buffer[] = new Array(n);
    const token: AckToken = [];
    let i = 0;
    for (const slice of slices) {
      const { topic, partition } = slice.fetch;
      for (const m of slice.messages) {
        messages[i] = new KafkaEntry(topic, partition, m);
        values[i++] = m.value ?? EMPTY;
      }
      token.push({ slice, ticket: this.committer.handOut(topic, partition, slice.first, slice.last) });
    }
    const a = slices[0];
    const z = slices[slices.length - 1];
    // A worker's WAL holds every message once, so (first, last) names its batches uniquely; the
    // worker id in front keeps two workers that read the same messages (a partition handed over
    // before its commit) from writing files of the same name with different rows.
    return {
      messages,
      block: blockOfBuffers(values),
      bytes,
      position: this.queue.position(),
      first: `${this.safeTopic(this.ctx.workerId)}.${messageKey(this.safeTopic(a.fetch.topic), a.fetch.partition, a.messages[0].offset)}`,
      last: messageKey(this.safeTopic(z.fetch.topic), z.fetch.partition, z.messages[z.messages.length - 1].offset),
      ackToken: token,
    };
  }

  /** The partitions assigned now (undefined before the first assignment: not known yet). */
  partitions(): string[] | undefined {
    if (this.generation === 0) return undefined;
    return this.queue.assignment().map((p) => `${p.topic}/${p.partition}`);
  }

  /**
   * Per assigned partition, the messages after the last one handed to the engine: the high
   * watermark minus where reading stands, the further of what this worker handed out and the
   * group's committed offset (a partition that was away and came back may have moved on
   * elsewhere), else the start position. The offsets are asked of the cluster.
   */
  async lag(): Promise<SourceLag[]> {
    if (this.closing || !this.admin) throw new Error('not connected');
    const run = this.lagNow(this.admin);
    // close() waits for it: kafkajs' admin client would connect again after its disconnect.
    this.lagging = run.catch(() => undefined).then(() => undefined);
    return run;
  }

  private async lagNow(admin: Admin): Promise<SourceLag[]> {
    const parts = this.queue.assignment();
    const topics = [...new Set(parts.map((p) => p.topic))];
    if (topics.length === 0) return [];
    const [offsets, groupOffsets] = await Promise.all([
      Promise.all(topics.map(async (topic) => ({ topic, offsets: await admin.fetchTopicOffsets(topic) }))),
      admin.fetchOffsets({ groupId: this.cfg.group_id, topics }),
    ]);
    const ends = new Map<string, { high: number; low: number }>();
    for (const { topic, offsets: os } of offsets) for (const o of os) ends.set(tpKey(topic, o.partition), { high: Number(o.high), low: Number(o.low) });
    const committed = new Map<string, number>();
    for (const { topic, partitions } of groupOffsets) {
      for (const { partition, offset } of partitions) if (Number(offset) >= 0) committed.set(tpKey(topic, partition), Number(offset));
    }
    const out: SourceLag[] = [];
    for (const { topic, partition } of parts) {
      const k = tpKey(topic, partition);
      const end = ends.get(k);
      if (!end) continue;
      const mine = this.queue.handedUpTo(topic, partition);
      const group = committed.get(k);
      const at = mine !== undefined || group !== undefined ? Math.max(mine ?? -1, group ?? -1) : (this.timestampStart.get(k) ?? (this.cfg.start === 'latest' ? end.high : end.low));
      out.push({ topic, partition, messages: Math.max(0, end.high - Math.max(at, end.low)) });
    }
    return out;
  }
  async ack(chunk: SourceChunk): Promise<void> {
    for (const { slice, ticket } of (chunk.ackToken as AckToken | undefined) ?? []) {
      if (slice.finished) continue;
      const ts = Number(slice.messages[slice.messages.length - 1].timestamp);
      if (ts > 0) this.ctx.observeAckLatency?.(Math.max(0, Date.now() - ts) / 1000);
      // The engine goes on at once; the fetch's handler waits for the commit, so a rebalance
      // cannot hand the partition over before it is committed. A fetch let go is not committed:
      // its handler is gone, and a new generation follows.
      void this.committer.ack(ticket, !slice.fetch.released).then((outcome) => {
        if (outcome === 'skipped') this.log.debug({ partition: slice.fetch.tp }, 'not committing a batch of a revoked partition');
        this.queue.finish(slice);
      });
    }
  }

  healthy(): boolean {
    return this.up;
  }

  async close(): Promise<void> {
    this.closing = true;
    this.closed.abort();
    this.queue.close();
    await this.committer.idle();
    this.queue.dropAll();
    await this.consumer?.disconnect().catch((err: unknown) => this.log.warn({ err: new Error(errorMessage(err)) }, 'Kafka consumer disconnect failed'));
    // A catch-up still running would connect the admin client again after its disconnect
    // (waited for at most request_timeout_ms: the disconnect below ends it then).
    const deadline = Date.now() + this.cfg.request_timeout_ms;
    while (this.catchingUp && Date.now() < deadline) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([this.catchingUp, new Promise((r) => (timer = setTimeout(r, Math.max(0, deadline - Date.now()))))]);
      clearTimeout(timer);
    }
    // Likewise a lag query of a scrape in flight (bounded by the scrape's own 2 s timeout).
    if (this.lagging) await withTimeout(this.lagging, 2_000, 'lag query still running').catch(() => {});
    await this.admin?.disconnect().catch(() => {});
  }
}
