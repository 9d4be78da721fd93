import type { Logger } from 'pino';
import type { PollLimits } from '../types.js';

/** The part of a fetched kafkajs message (KafkaMessage) the queue reads. */
export interface FetchedMessage {
  offset: string;
  value: Buffer | null;
  key?: Buffer | null;
}

export interface TopicPartition {
  topic: string;
  partition: number;
}

/** Stops and restarts fetching from partitions: the kafkajs consumer's pause and resume. */
export interface FetchControl {
  pause(topics: { topic: string; partitions: number[] }[]): void;
  resume(topics: { topic: string; partitions: number[] }[]): void;
}

/** Next offset to read per partition, keyed `topic:partition`; stored in the WAL at each commit. */
export type KafkaPosition = Record<string, number>;

export const tpKey = (topic: string, partition: number): string => `${topic}:${partition}`;

/** What a fetched message counts for against max_buffer_bytes (kafkajs keeps more than its value). */
export const bufferedBytes = (m: FetchedMessage): number => (m.value?.length ?? 0) + (m.key?.length ?? 0) + 64;

/** Partitions grouped by topic, as kafkajs' pause and resume take them. */
export function byTopic(parts: Iterable<TopicPartition>): { topic: string; partitions: number[] }[] {
  const m = new Map<string, number[]>();
  for (const { topic, partition } of parts) {
    let list = m.get(topic);
    if (!list) m.set(topic, (list = []));
    list.push(partition);
  }
  return [...m].map(([topic, partitions]) => ({ topic, partitions }));
}

/**
 * One fetch of one partition (a kafkajs eachBatch call), in offset order. The handler that
 * fetched it holds on until the fetch is settled: every message handed out and finished (acked
 * and its commit attempted), or the fetch let go (its messages not handed out are dropped, to
 * be fetched again).
 */
export class Fetch<M extends FetchedMessage = FetchedMessage> {
  readonly tp: string;
  /** The next message to hand out. */
  next = 0;
  /** Messages handed out and not finished yet. */
  inFlight = 0;
  finished = 0;
  released = false;
  private readonly wakers = new Set<() => void>();

  constructor(
    readonly topic: string,
    readonly partition: number,
    readonly messages: readonly M[],
  ) {
    this.tp = tpKey(topic, partition);
  }

  /** Every message finished, or the fetch let go: its handler may return. */
  get settled(): boolean {
    return this.released || this.finished === this.messages.length;
  }

  /** Resolves at the fetch's next change (a slice finished, let go, a rebalance began), or after `ms`. */
  changed(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.wakers.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.wakers.add(done);
    });
  }

  poke(): void {
    for (const w of [...this.wakers]) w();
  }
}

/** Messages one poll takes of one fetch: a run of one partition, in offset order. */
export interface Slice<M extends FetchedMessage = FetchedMessage> {
  readonly fetch: Fetch<M>;
  readonly messages: M[];
  /** Offsets of the first and the last message. */
  readonly first: number;
  readonly last: number;
  /** Payload (value) bytes. */
  readonly bytes: number;
  finished: boolean;
}

export interface FetchQueueOptions {
  /** Bytes queued (bufferedBytes) above which every assigned partition is paused; resumed at half of it. */
  maxBufferBytes: number;
  control: FetchControl;
  log: Logger;
}

/**
 * The messages kafkajs fetched and the engine has not taken yet, per fetch, in arrival order.
 *
 * - `take` hands out, in order, up to a poll's limits: by count, by value bytes (the first
 *   message always), splitting a fetch where a limit falls (its rest leads the next take).
 * - Every partition's messages are handed out once, in offset order: a fetch's messages below
 *   the partition's floor (what is queued or handed out already) are skipped, and letting a
 *   fetch go drops the partition's queued messages behind it too, so no gap can open.
 * - Backpressure: past maxBufferBytes queued, every assigned partition is paused until half of
 *   it is left. Partitions assigned while paused start paused and stay so until the engine asks
 *   for more (`ready`).
 * - Rebalance: once one begins nothing more is handed out, and every fetch is let go as soon as
 *   the engine holds none of its messages unfinished. A new assignment drops everything queued
 *   (kafkajs fetches the partitions it keeps again, from their committed offsets; the floor skips
 *   what was handed out) and keeps the handed-out positions.
 */
export class KafkaFetchQueue<M extends FetchedMessage = FetchedMessage> {
  /** Fetches with messages not handed out, in arrival order. */
  private fifo: Fetch<M>[] = [];
  /** Fetches not settled. */
  private readonly held = new Set<Fetch<M>>();
  /** Next offset handed out, per partition (the WAL position). */
  private readonly handed = new Map<string, number>();
  /** Next offset queued, per partition; fetched messages below it are skipped. */
  private queuedUpTo = new Map<string, number>();
  private assigned = new Map<string, TopicPartition>();
  private buffered = 0;
  private pausedNow = false;
  /** Partitions were assigned while paused: they stay paused until the engine asks for more. */
  private holdPaused = false;
  private rebalancingNow = false;
  private closed = false;
  private readonly waiters = new Set<() => void>();

  constructor(private readonly opts: FetchQueueOptions) {}

  /** Sets the handed-out positions (a previous run's, from the WAL). */
  restore(position: KafkaPosition): void {
    for (const [k, v] of Object.entries(position)) if (typeof v === 'number' && Number.isFinite(v)) this.handed.set(k, v);
  }

  /** Next offset handed out per partition: a snapshot. */
  position(): KafkaPosition {
    return Object.fromEntries(this.handed);
  }

  handedUpTo(topic: string, partition: number): number | undefined {
    return this.handed.get(tpKey(topic, partition));
  }

  /** Fetched messages below `offset` are skipped (a start offset sought by timestamp). */
  skipBelow(topic: string, partition: number, offset: number): void {
    const k = tpKey(topic, partition);
    this.queuedUpTo.set(k, Math.max(this.queuedUpTo.get(k) ?? 0, offset));
  }

  get bytes(): number {
    return this.buffered;
  }

  get paused(): boolean {
    return this.pausedNow;
  }

  get rebalancing(): boolean {
    return this.rebalancingNow;
  }

  /** Messages queued and not handed out. */
  get length(): number {
    let n = 0;
    for (const f of this.fifo) n += f.messages.length - f.next;
    return n;
  }

  /** Fetches whose handlers are still holding on. */
  get holding(): number {
    return this.held.size;
  }

  assignment(): TopicPartition[] {
    return [...this.assigned.values()];
  }

  isAssigned(topic: string, partition: number): boolean {
    return this.assigned.has(tpKey(topic, partition));
  }

  /**
   * A new generation of the group: the rebalance is over; everything queued is dropped (its
   * fetches let go); partitions assigned while paused start paused, the others are resumed
   * (kafkajs keeps a pause across rebalances: a partition paused, revoked and given back would
   * never be fetched again).
   */
  assign(parts: TopicPartition[]): void {
    this.rebalancingNow = false;
    const pressed = this.pausedNow;
    this.dropAll(pressed);
    this.assigned = new Map(parts.map((p) => [tpKey(p.topic, p.partition), { topic: p.topic, partition: p.partition }]));
    if (pressed && this.assigned.size > 0) {
      this.holdPaused = true;
      this.opts.control.pause(byTopic(this.assigned.values()));
      this.opts.log.info({ partitions: [...this.assigned.keys()] }, 'backpressure: partitions assigned while paused start paused');
    } else if (this.assigned.size > 0) {
      this.opts.control.resume(byTopic(this.assigned.values()));
    }
    this.wake();
  }

  /**
   * Queues a fetch of an assigned partition: its messages from the partition's floor on (they
   * come in offset order). Undefined when none is new (the handler can resolve the fetch at once).
   */
  add(topic: string, partition: number, messages: readonly M[]): Fetch<M> | undefined {
    const k = tpKey(topic, partition);
    if (this.closed || !this.assigned.has(k)) return undefined;
    const floor = Math.max(this.queuedUpTo.get(k) ?? -1, this.handed.get(k) ?? -1);
    let from = 0;
    while (from < messages.length && Number(messages[from].offset) < floor) from++;
    if (from === messages.length) return undefined;
    const fetch = new Fetch(topic, partition, from === 0 ? messages : messages.slice(from));
    for (const m of fetch.messages) this.buffered += bufferedBytes(m);
    this.fifo.push(fetch);
    this.held.add(fetch);
    this.queuedUpTo.set(k, Number(fetch.messages[fetch.messages.length - 1].offset) + 1);
    this.wake();
    this.checkPressure();
    return fetch;
  }

  /** True when the last take() left queued messages out for its limits. */
  full = false;

  /**
   * Hands out queued messages in order, up to `limits` (the first message always, however
   * large, unless `limits.strict`). Nothing while a rebalance is under way.
   */
  take(limits: PollLimits): Slice<M>[] {
    const out: Slice<M>[] = [];
    this.full = false;
    if (this.rebalancingNow || this.closed) return out;
    let count = 0;
    let bytes = 0;
    let full = false;
    while (this.fifo.length > 0 && count < limits.maxMessages && !full) {
      const f = this.fifo[0];
      const avail = f.messages.length - f.next;
      let n = 0;
      let sliceBytes = 0;
      let buf = 0;
      while (n < avail && count + n < limits.maxMessages) {
        const m = f.messages[f.next + n];
        const len = m.value?.length ?? 0;
        if ((count + n > 0 || limits.strict) && bytes + len > limits.maxBytes) {
          full = true;
          break;
        }
        bytes += len;
        sliceBytes += len;
        buf += bufferedBytes(m);
        n++;
      }
      if (n === 0) break;
      const messages = f.messages.slice(f.next, f.next + n);
      f.next += n;
      f.inFlight += n;
      this.buffered -= buf;
      const last = Number(messages[n - 1].offset);
      out.push({ fetch: f, messages, first: Number(messages[0].offset), last, bytes: sliceBytes, finished: false });
      this.handed.set(f.tp, last + 1);
      count += n;
      if (f.next === f.messages.length) this.fifo.shift();
    }
    if (out.length > 0) this.checkPressure();
    this.full = full || (count >= limits.maxMessages && this.fifo.length > 0);
    return out;
  }

  /**
   * A slice handed out is finished (acked and its commit attempted, or not to be committed).
   * Its fetch settles once all of it is; during a rebalance it is let go once the engine holds
   * none of it unfinished.
   */
  finish(slice: Slice<M>): void {
    if (slice.finished) return;
    slice.finished = true;
    const f = slice.fetch;
    if (f.released) return;
    f.inFlight -= slice.messages.length;
    f.finished += slice.messages.length;
    if (f.settled) this.held.delete(f);
    else if (this.rebalancingNow && f.inFlight === 0) {
      this.release(f);
      return;
    }
    f.poke();
  }

  /** A rebalance began: nothing more is handed out; fetches the engine holds nothing of are let go. */
  startRebalance(): void {
    if (this.rebalancingNow) return;
    this.rebalancingNow = true;
    for (const f of [...this.held]) {
      if (f.inFlight === 0) this.release(f);
      else f.poke();
    }
  }

  /**
   * Lets a fetch go without committing: its messages not handed out are dropped, with the
   * partition's later fetches (the partition is read again from what was handed out).
   */
  release(fetch: Fetch<M>): void {
    if (fetch.released) return;
    // A fetch no longer queued was handed out whole: every queued fetch of its partition is behind it.
    const at = this.fifo.indexOf(fetch);
    const later = this.fifo.slice(at + 1).filter((f) => f.tp === fetch.tp);
    for (const f of [fetch, ...later]) {
      f.released = true;
      const i = this.fifo.indexOf(f);
      if (i >= 0) {
        this.fifo.splice(i, 1);
        for (let j = f.next; j < f.messages.length; j++) this.buffered -= bufferedBytes(f.messages[j]);
      }
      this.held.delete(f);
      f.poke();
    }
    const pos = this.handed.get(fetch.tp);
    if (pos === undefined) this.queuedUpTo.delete(fetch.tp);
    else this.queuedUpTo.set(fetch.tp, pos);
    this.checkPressure();
  }

  /** Lets every fetch go (a crash, a new assignment, close); `keepPressure`: stay paused. */
  dropAll(keepPressure = false): void {
    for (const f of [...this.held]) {
      f.released = true;
      f.poke();
    }
    this.held.clear();
    this.fifo = [];
    this.buffered = 0;
    // Everything not handed out is fetched again: nothing queued stands in the way.
    this.queuedUpTo = new Map(this.handed);
    if (!keepPressure) this.checkPressure();
  }

  /** The engine asks for more: partitions held paused since an assignment may resume. */
  ready(): void {
    if (!this.holdPaused) return;
    this.holdPaused = false;
    this.checkPressure();
  }

  /** Resolves once `take` can hand something out, `signal` aborts, or the queue is closed. */
  available(signal: AbortSignal): Promise<void> {
    if (this.closed || signal.aborted || (this.fifo.length > 0 && !this.rebalancingNow)) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        this.waiters.delete(done);
        signal.removeEventListener('abort', done);
        resolve();
      };
      this.waiters.add(done);
      signal.addEventListener('abort', done, { once: true });
    });
  }

  /** Nothing more is queued or handed out; waits end. */
  close(): void {
    this.closed = true;
    this.wake();
  }

  private wake(): void {
    for (const w of [...this.waiters]) w();
  }

  private checkPressure(): void {
    const high = this.opts.maxBufferBytes;
    if (!this.pausedNow && this.buffered > high) {
      this.pausedNow = true;
      if (this.assigned.size) this.opts.control.pause(byTopic(this.assigned.values()));
      this.opts.log.info({ buffered_bytes: this.buffered }, 'backpressure: Kafka partitions paused');
    } else if (this.pausedNow && !this.holdPaused && !this.rebalancingNow && this.buffered <= high / 2) {
      // (During a rebalance the next assignment decides: it starts paused while this is on.)
      this.pausedNow = false;
      if (this.assigned.size) this.opts.control.resume(byTopic(this.assigned.values()));
      this.opts.log.info({ buffered_bytes: this.buffered }, 'backpressure released: Kafka partitions resumed');
    }
  }
}
