import type { Admin, Consumer, EachBatchPayload, IHeaders, KafkaMessage } from 'kafkajs';
import type { Logger } from 'pino';
import { SluiceError, errorMessage } from '../../errors.js';
import type { ConnectorContext, MessageMeta, RawMessage, Source, SourceBatch, SourceLag } from '../types.js';
import { blockOfBuffers } from '../payload-block.js';
import { withTimeout } from '../../util/with-timeout.js';
import { backoff, retry, sleep } from '../../util/retry.js';
import { fileSafeTopic, isDlqTopic, kafkaClient, messageKey, type KafkaSourceConfig } from './kafka-config.js';

/** What a dead letter needs of the message it came from (`RawMessage.raw`). */
export interface KafkaOrigin {
  topic: string;
  partition: number;
  message: KafkaMessage;
}

/** Next offset to read per partition, keyed `topic:partition`; stored in the WAL at each commit. */
export type KafkaPosition = Record<string, number>;

/** One eachBatch call of kafkajs, held until every chunk of it is committed (or let go). */
interface HeldFetch {
  chunks: Chunk[];
  released: boolean;
  wake: () => void;
  /** Makes the holding handler look at its chunks again (an ack, a rebalance). */
  poke: () => void;
}

/** Up to batch_size messages of one partition; a batch is one or more whole chunks. */
interface Chunk {
  topic: string;
  partition: number;
  tp: string;
  messages: KafkaMessage[];
  bytes: number;
  epoch: number;
  held: HeldFetch;
  /** Read by the engine (so it will be acked); chunks not handed out can be dropped at any time. */
  handedOut: boolean;
  /** Acked and its offset commit attempted, or let go (the holding handler is poked then). */
  finished: boolean;
}

const tpKey = (topic: string, partition: number) => `${topic}:${partition}`;

const EMPTY = Buffer.alloc(0);

/** What a fetched message counts for against max_buffer_bytes. */
const messageBytes = (m: KafkaMessage) => (m.value?.length ?? 0) + (m.key?.length ?? 0) + 64;

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
 * each partition's fetched messages; the handler queues them as chunks of one partition (an
 * engine batch takes chunks, of one or more partitions, up to batch_size, splitting the last
 * one that does not fit: its rest, still in offset order, leads the next batch) and waits
 * until the engine has acked every chunk (rows fsynced in the WAL) and the offset commit went
 * out. So a partition's next fetch only starts after its
 * previous one is durable, and kafkajs, which lets running handlers finish before it rejoins
 * a rebalancing group, commits everything in flight before a partition changes hands
 * (bounded by revoke_timeout_ms). Past max_buffer_bytes queued, every partition is paused
 * until half of it is left; partitions assigned meanwhile start paused.
 *
 * Offsets: the WAL stores each partition's next offset with the rows, and messages below it
 * are skipped (after seeking there when the group's committed offset is behind), so a crash
 * between the WAL commit and the Kafka commit reads nothing twice. Commits are the highest
 * acked offset + 1 per partition (batches are acked in order, so that is contiguous).
 */
export class KafkaSource implements Source {
  private consumer?: Consumer;
  private admin?: Admin;
  private topics: string[] = [];
  /** Next offset handed to the engine, per partition (the WAL position). */
  private position = new Map<string, number>();
  /** Next offset queued; fetched messages below it are skipped. */
  private queuedUpTo = new Map<string, number>();
  private assigned = new Map<string, { topic: string; partition: number }>();
  private epoch = 0;
  private queue: Chunk[] = [];
  private queuedBytes = 0;
  private held = new Set<HeldFetch>();
  private wakeReader: (() => void) | undefined;
  private backpressure = false;
  /**
   * Partitions were assigned while backpressure was on: they stay paused until the engine asks
   * for a new batch (it is making progress again), however empty the dropped queue left things.
   */
  private holdPaused = false;
  /** A rebalance is under way: nothing more is handed out, held fetches let go once their batches in flight are done. */
  private rebalancing = false;
  private up = false;
  /** A broker connection failed or dropped since the last fetch. */
  private connLost = false;
  private closing = false;
  /** Aborted by close(): ends the waits of a restart. */
  private readonly closed = new AbortController();
  private timestampStart = new Map<string, number>();
  private pendingCommits = new Map<string, { topic: string; partition: number; offset: string }>();
  private commitWaiters: (() => void)[] = [];
  private committing: Promise<void> | undefined;
  /** The catch-up of the last assignment, while it runs (close() waits for it before disconnecting). */
  private catchingUp: Promise<void> | undefined;
  /** The lag query of a /metrics scrape, while it runs. */
  private lagging: Promise<void> | undefined;
  private readonly safeTopics = new Map<string, string>();

  constructor(
    private readonly cfg: KafkaSourceConfig,
    private readonly ctx: ConnectorContext,
  ) {}

  private get log(): Logger {
    return this.ctx.log;
  }

  private get revokeTimeout(): number {
    return this.cfg.revoke_timeout_ms ?? Math.floor(this.cfg.rebalance_timeout_ms / 2);
  }

  async open(position: unknown): Promise<void> {
    const cfg = this.cfg;
    if (position && typeof position === 'object') {
      for (const [k, v] of Object.entries(position as KafkaPosition)) if (typeof v === 'number') this.position.set(k, v);
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
      this.dropQueue();
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
    this.epoch++;
    this.up = true;
    this.rebalancing = false;
    const pressed = this.backpressure;
    this.dropQueue(pressed);
    const before = new Set(this.assigned.keys());
    this.assigned.clear();
    for (const [topic, parts] of Object.entries(assignment)) for (const partition of parts) this.assigned.set(tpKey(topic, partition), { topic, partition });
    const added = [...this.assigned.keys()].filter((k) => !before.has(k));
    const revoked = [...before].filter((k) => !this.assigned.has(k));
    this.log.info({ partitions: [...this.assigned.keys()], added, revoked }, 'Kafka partitions assigned');
    if (pressed && this.assigned.size > 0) {
      this.holdPaused = true;
      this.consumer!.pause(this.byTopic([...this.assigned.values()]));
      this.log.info({ partitions: [...this.assigned.keys()] }, 'backpressure: partitions assigned while paused start paused');
    } else if (this.assigned.size > 0) {
      // kafkajs keeps a partition's pause across rebalances: one paused in an earlier generation
      // (backpressure), revoked before it was resumed and given back now would never be fetched.
      this.consumer!.resume(this.byTopic([...this.assigned.values()]));
    }
    // Positions as of the assignment: what this worker's WAL holds, before anything new is read.
    const catchUp = this.catchUp([...this.assigned.values()].map((a) => ({ ...a, mine: this.position.get(tpKey(a.topic, a.partition)) })), this.epoch);
    this.catchingUp = catchUp;
    void catchUp.finally(() => {
      if (this.catchingUp === catchUp) this.catchingUp = undefined;
    });
  }

  /**
   * Where the WAL is ahead of the group's committed offset (a crash after the WAL commit, before
   * the Kafka commit), seek there and commit it; where nothing is committed and start is a
   * timestamp, seek to its offset. Messages below the WAL position are skipped regardless.
   */
  private async catchUp(parts: { topic: string; partition: number; mine: number | undefined }[], epoch: number): Promise<void> {
    if (parts.length === 0) return;
    try {
      const topics = [...new Set(parts.map((p) => p.topic))];
      const committed = new Map<string, number>();
      for (const t of await this.admin!.fetchOffsets({ groupId: this.cfg.group_id, topics })) {
        for (const p of t.partitions) committed.set(tpKey(t.topic, p.partition), Number(p.offset));
      }
      if (epoch !== this.epoch) return;
      const commits: { topic: string; partition: number; offset: string }[] = [];
      for (const { topic, partition, mine } of parts) {
        const k = tpKey(topic, partition);
        const theirs = committed.get(k) ?? -1;
        if (mine !== undefined && mine > theirs) {
          this.consumer!.seek({ topic, partition, offset: String(mine) });
          commits.push({ topic, partition, offset: String(mine) });
        } else if (mine === undefined && theirs < 0 && this.timestampStart.has(k)) {
          const at = this.timestampStart.get(k)!;
          this.consumer!.seek({ topic, partition, offset: String(at) });
          this.queuedUpTo.set(k, Math.max(this.queuedUpTo.get(k) ?? 0, at));
        }
      }
      if (commits.length) {
        await this.consumer!.commitOffsets(commits);
        this.log.info({ partitions: commits.map((c) => `${c.topic}:${c.partition}@${c.offset}`) }, 'committed offsets the WAL already had (a crash or a failed commit came between the two)');
      }
    } catch (err) {
      this.log.warn({ err: new Error(errorMessage(err)) }, 'could not compare the WAL position with the committed offsets; messages below the WAL position are skipped anyway');
    }
  }

  private byTopic(parts: { topic: string; partition: number }[]): { topic: string; partitions: number[] }[] {
    const m = new Map<string, number[]>();
    for (const { topic, partition } of parts) (m.get(topic) ?? m.set(topic, []).get(topic)!).push(partition);
    return [...m].map(([topic, partitions]) => ({ topic, partitions }));
  }

  /** kafkajs' eachBatch: queue the partition's new messages and hold until they are committed. */
  private async onFetch(p: EachBatchPayload): Promise<void> {
    const { batch } = p;
    const k = tpKey(batch.topic, batch.partition);
    if (this.closing || !this.assigned.has(k)) return;
    const floor = Math.max(this.queuedUpTo.get(k) ?? -1, this.position.get(k) ?? -1);
    // Messages come in offset order: skip the ones below the floor (usually none).
    let from = 0;
    while (from < batch.messages.length && Number(batch.messages[from].offset) < floor) from++;
    const msgs = from === 0 ? batch.messages : batch.messages.slice(from);
    if (msgs.length === 0) {
      p.resolveOffset(batch.lastOffset());
      return;
    }
    const epoch = this.epoch;
    const held: HeldFetch = { chunks: [], released: false, wake: () => {}, poke: () => {} };
    const size = this.cfg.batch_size;
    for (let i = 0; i < msgs.length; i += size) {
      const part = msgs.slice(i, i + size);
      let bytes = 0;
      for (const m of part) bytes += messageBytes(m);
      const chunk: Chunk = { topic: batch.topic, partition: batch.partition, tp: k, messages: part, bytes, epoch, held, handedOut: false, finished: false };
      held.chunks.push(chunk);
      this.queue.push(chunk);
      this.queuedBytes += bytes;
    }
    this.queuedUpTo.set(k, Number(msgs[msgs.length - 1].offset) + 1);
    this.held.add(held);
    this.wakeReader?.();
    this.checkBackpressure();
    try {
      const released = new Promise<'released'>((r) => (held.wake = () => r('released')));
      let rebalancingSince = 0;
      let lastBeat = Date.now();
      // Until every chunk is finished (read() may split one in two: held.chunks can grow).
      while (!held.chunks.every((c) => c.finished)) {
        let timer: NodeJS.Timeout | undefined;
        const tick = new Promise<'tick'>((r) => (timer = setTimeout(() => r('tick'), this.cfg.heartbeat_interval_ms)));
        const poked = new Promise<'poked'>((r) => (held.poke = () => r('poked')));
        const why = await Promise.race([released, tick, poked]);
        clearTimeout(timer);
        if (why === 'released') break;
        if (this.rebalancing) {
          rebalancingSince ||= Date.now();
          // Only what the engine holds is waited for; the rest is fetched again by the new owner.
          if (held.chunks.every((c) => c.finished || !c.handedOut)) {
            this.release(held);
            break;
          }
          if (Date.now() - rebalancingSince > this.revokeTimeout) {
            this.log.warn({ partition: k, revoke_timeout_ms: this.revokeTimeout }, 'a rebalance waited too long for batches in flight; letting the partition go uncommitted (its new owner may read them again)');
            this.release(held);
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
          this.log.info({ partition: k, reason: errorMessage(err) }, 'rebalance while batches are in flight; finishing them first');
          this.startRebalance();
        }
      }
    } finally {
      this.held.delete(held);
    }
    if (!held.released) p.resolveOffset(batch.lastOffset());
  }

  private startRebalance(): void {
    if (this.rebalancing) return;
    this.rebalancing = true;
    for (const h of this.held) h.poke();
  }

  /** Lets a held fetch go without committing: its queued chunks are dropped and read again later. */
  private release(held: HeldFetch, keepPressure = false): void {
    if (held.released) return;
    held.released = true;
    for (const c of held.chunks) {
      const i = this.queue.indexOf(c);
      if (i >= 0) {
        this.queue.splice(i, 1);
        this.queuedBytes -= c.bytes;
      }
      c.finished = true;
    }
    const k = held.chunks[0]?.tp;
    if (k !== undefined) {
      const pos = this.position.get(k);
      if (pos === undefined) this.queuedUpTo.delete(k);
      else this.queuedUpTo.set(k, pos);
    }
    held.wake();
    if (!keepPressure) this.checkBackpressure();
  }

  /** Drops every fetched message not handed out; `keepPressure`: stay paused (a new assignment follows). */
  private dropQueue(keepPressure = false): void {
    for (const h of [...this.held]) this.release(h, keepPressure);
    this.queue = [];
    this.queuedBytes = 0;
    // Everything not handed to the engine is fetched again; nothing queued stands in the way.
    this.queuedUpTo = new Map(this.position);
    if (!keepPressure) this.checkBackpressure();
  }

  private checkBackpressure(): void {
    const high = this.cfg.max_buffer_bytes;
    if (!this.backpressure && this.queuedBytes > high) {
      this.backpressure = true;
      if (this.assigned.size) this.consumer?.pause(this.byTopic([...this.assigned.values()]));
      this.log.info({ buffered_bytes: this.queuedBytes }, 'backpressure: Kafka partitions paused');
    } else if (this.backpressure && !this.holdPaused && !this.rebalancing && this.queuedBytes <= high / 2) {
      // (During a rebalance the next assignment decides: it starts paused while this is on.)
      this.backpressure = false;
      if (this.assigned.size) this.consumer?.resume(this.byTopic([...this.assigned.values()]));
      this.log.info({ buffered_bytes: this.queuedBytes }, 'backpressure released: Kafka partitions resumed');
    }
  }

  private snapshot(): KafkaPosition {
    return Object.fromEntries(this.position);
  }

  async read(signal: AbortSignal): Promise<SourceBatch | null> {
    const deadline = Date.now() + this.cfg.batch_timeout_ms;
    if (this.holdPaused) {
      // The engine is ready for more: partitions held paused since an assignment may resume.
      this.holdPaused = false;
      this.checkBackpressure();
    }
    for (;;) {
      while ((this.queue.length === 0 || this.rebalancing) && !signal.aborted && Date.now() < deadline && !this.closing) {
        await new Promise<void>((resolve) => {
          const done = () => {
            clearTimeout(t);
            signal.removeEventListener('abort', done);
            this.wakeReader = undefined;
            resolve();
          };
          const t = setTimeout(done, Math.max(1, deadline - Date.now()));
          signal.addEventListener('abort', done, { once: true });
          this.wakeReader = done;
        });
      }
      // Chunks (a partition's run of messages, in order) up to batch_size messages and
      // batch_max_bytes of values (the first message always); the one that does not fit is
      // split: its head fills the batch, its rest stays first in the queue.
      const take: Chunk[] = [];
      let count = 0;
      let bytes = 0;
      let full = false;
      const size = this.cfg.batch_size;
      const maxBytes = this.cfg.batch_max_bytes;
      while (!this.rebalancing && this.queue.length > 0 && count < size && !full) {
        let chunk = this.queue[0];
        if (chunk.epoch !== this.epoch || chunk.held.released) {
          this.queue.shift();
          this.queuedBytes -= chunk.bytes;
          continue;
        }
        const limit = Math.min(chunk.messages.length, size - count);
        let n = 0;
        while (n < limit) {
          const len = chunk.messages[n].value?.length ?? 0;
          if (count + n > 0 && bytes + len > maxBytes) {
            full = true;
            break;
          }
          bytes += len;
          n++;
        }
        if (n === 0) break;
        if (n < chunk.messages.length) chunk = this.splitHead(chunk, n);
        else this.queue.shift();
        this.queuedBytes -= chunk.bytes;
        chunk.handedOut = true;
        take.push(chunk);
        count += chunk.messages.length;
      }
      this.checkBackpressure();
      if (take.length > 0) return this.toBatch(take);
      if (this.queue.length === 0 || this.rebalancing) return { messages: [], position: this.snapshot() };
    }
  }

  /** Cuts the first n messages off a queued chunk into a chunk of their own (of the same fetch). */
  private splitHead(chunk: Chunk, n: number): Chunk {
    const head: Chunk = { ...chunk, messages: chunk.messages.slice(0, n), bytes: 0, handedOut: false, finished: false };
    for (const m of head.messages) head.bytes += messageBytes(m);
    chunk.messages = chunk.messages.slice(n);
    chunk.bytes -= head.bytes;
    chunk.held.chunks.push(head);
    return head;
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
    const parts = [...this.assigned.values()];
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
      const mine = this.position.get(k);
      const group = committed.get(k);
      const at = mine !== undefined || group !== undefined
        ? Math.max(mine ?? -1, group ?? -1)
        : (this.timestampStart.get(k) ?? (this.cfg.start === 'latest' ? end.high : end.low));
      out.push({ topic, partition, messages: Math.max(0, end.high - Math.max(at, end.low)) });
    }
    return out;
  }

  private toBatch(chunks: Chunk[]): SourceBatch {
    let n = 0;
    for (const chunk of chunks) n += chunk.messages.length;
    const messages: RawMessage[] = new Array(n);
    const values: Buffer[] = new Array(n);
    let i = 0;
    for (const chunk of chunks) {
      const { topic, partition } = chunk;
      for (const m of chunk.messages) {
        messages[i] = new KafkaEntry(topic, partition, m);
        values[i++] = m.value ?? EMPTY;
      }
      this.position.set(chunk.tp, Number(chunk.messages[chunk.messages.length - 1].offset) + 1);
    }
    const a = chunks[0];
    const z = chunks[chunks.length - 1];
    // A worker's WAL holds every message once, so (first, last) names its batches uniquely; the
    // worker id in front keeps two workers that read the same messages (a partition handed over
    // before its commit) from writing files of the same name with different rows.
    return {
      messages,
      block: blockOfBuffers(values),
      position: this.snapshot(),
      first: `${this.safeTopic(this.ctx.workerId)}.${messageKey(this.safeTopic(a.topic), a.partition, a.messages[0].offset)}`,
      last: messageKey(this.safeTopic(z.topic), z.partition, z.messages[z.messages.length - 1].offset),
      ackToken: chunks,
    };
  }

  async ack(batch: SourceBatch): Promise<void> {
    const chunks = (batch.ackToken as Chunk[] | undefined) ?? [];
    let committing = false;
    for (const chunk of chunks) {
      if (chunk.finished) continue;
      const last = chunk.messages[chunk.messages.length - 1];
      const ts = Number(last.timestamp);
      if (ts > 0) this.ctx.observeAckLatency?.(Math.max(0, Date.now() - ts) / 1000);
      if (chunk.epoch !== this.epoch || !this.assigned.has(chunk.tp)) {
        // The partition changed hands since it was read: the WAL has the rows, the new owner the offsets.
        this.log.debug({ partition: chunk.tp }, 'not committing a batch of a revoked partition');
        chunk.finished = true;
        chunk.held.poke();
        continue;
      }
      this.pendingCommits.set(chunk.tp, { topic: chunk.topic, partition: chunk.partition, offset: String(Number(last.offset) + 1) });
      // The engine goes on at once; the held fetch waits for the commit, so a rebalance cannot
      // hand the partition over before it is committed.
      this.commitWaiters.push(() => {
        chunk.finished = true;
        chunk.held.poke();
      });
      committing = true;
    }
    if (committing) this.committing ??= this.commitLoop();
  }

  /** Commits pending offsets, one request at a time, coalescing what arrives meanwhile. */
  private async commitLoop(): Promise<void> {
    try {
      while (this.pendingCommits.size > 0) {
        const offsets = [...this.pendingCommits.values()];
        this.pendingCommits.clear();
        const waiters = this.commitWaiters.splice(0);
        try {
          await this.consumer!.commitOffsets(offsets);
        } catch (err) {
          // The WAL has the position: a restart of this worker skips these; another worker may read them again.
          const rebalance = isRebalance(err);
          if (rebalance) this.startRebalance();
          this.log[rebalance ? 'info' : 'warn']({ err: new Error(errorMessage(err)), partitions: offsets.map((o) => `${o.topic}:${o.partition}@${o.offset}`) }, 'Kafka offset commit failed; the WAL keeps the position');
        }
        for (const w of waiters) w();
      }
    } finally {
      this.committing = undefined;
    }
  }

  healthy(): boolean {
    return this.up;
  }

  async close(): Promise<void> {
    this.closing = true;
    this.closed.abort();
    this.wakeReader?.();
    while (this.committing) await this.committing;
    this.dropQueue();
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
