import { connect, type NatsConnection } from '@nats-io/transport-node';
import { AckPolicy, DeliverPolicy, jetstream, jetstreamManager, type Consumer, type ConsumerInfo, type JetStreamManager, type JsMsg } from '@nats-io/jetstream';
import type { Logger } from 'pino';
import { SluiceError, errorMessage } from '../../errors.js';
import type { ConnectorContext, MessageMeta, PollLimits, RawMessage, Source, SourceChunk, SourceLag } from '../types.js';
import { sleep } from '../../util/retry.js';
import { deadLettered, maxAckPending, type NatsConnectionConfig, type NatsSourceConfig } from './nats-config.js';
import { batchCut } from '../batch-cut.js';

/** keepHeld runs every 1/KEEP_HELD_PARTS of ack_wait and refreshes what was held that long. */
const KEEP_HELD_PARTS = 6;
/** How long the server holds an empty pull open; the pump then asks again. */
const PULL_EXPIRES_MS = 5_000;
/** Pulls failing in a row before the source says it is unhealthy (and warns). */
const PULL_FAILURES_UNHEALTHY = 3;

/**
 * Connects with reconnects that never give up (the engine waits; /readyz tells). `onState`
 * hears whether the connection is up.
 */
export async function connectNats(cfg: NatsConnectionConfig, log: Logger, what: string, onState?: (up: boolean) => void): Promise<NatsConnection> {
  let nc: NatsConnection;
  try {
    nc = await connect({
      servers: cfg.servers,
      user: cfg.user,
      pass: cfg.password,
      token: cfg.token,
      name: `sluice ${what}`,
      maxReconnectAttempts: -1,
      reconnectTimeWait: 250,
      timeout: 10_000,
    });
  } catch (err) {
    throw new SluiceError('CONNECT', `cannot connect to NATS at ${String(cfg.servers)}: ${errorMessage(err)}`);
  }
  void (async () => {
    for await (const s of nc.status()) {
      if (s.type === 'disconnect') {
        log.warn({ what }, 'NATS connection lost; reconnecting');
        onState?.(false);
      }
      if (s.type === 'reconnect') {
        log.info({ what }, 'reconnected to NATS');
        onState?.(true);
      }
    }
  })();
  return nc;
}

/**
 * Consumes a JetStream stream through a durable pull consumer with explicit acks. A batch's
 * messages are acked once the engine says it is durable (acks flushed to the server);
 * dead-lettered messages are terminated instead (no redelivery). Unacked messages of a worker
 * that died come back after `ack_wait_ms`, to whichever worker pulls next.
 */
export class NatsSource implements Source {
  private nc?: NatsConnection;
  private jsm?: JetStreamManager;
  private consumer?: Consumer;
  private connected = false;
  /** Messages pulled ahead, not yet handed to the engine (about batch_size at most). */
  private buffer: JsMsg[] = [];
  /** Payload bytes in `buffer`. */
  private bufferBytes = 0;
  /** Average payload bytes of the messages of the last pull: sizes the next one. */
  private msgBytes = 0;
  /** When each buffered message arrived (same order as `buffer`). */
  private arrivals: number[] = [];
  /** Tells the server that messages held ahead are still wanted (see keepHeld). */
  private holdTimer?: NodeJS.Timeout;
  /** Batches handed to the engine and not acked yet, with when they last got a working(). */
  private handedOut = new Map<JsMsg[], number>();
  /** Pulls that failed in a row (a deleted consumer, a server without JetStream...). */
  private pullFailures = 0;
  /** The consumer's ack_wait (an existing consumer keeps its own), in ms. */
  private ackWaitMs = 30_000;
  private waiters: Array<() => void> = [];
  private pump?: Promise<void>;
  private fetching?: { stop(): void };
  private closing = false;

  constructor(
    private readonly cfg: NatsSourceConfig,
    private readonly ctx: ConnectorContext,
  ) {}

  private get log(): Logger {
    return this.ctx.log;
  }

  async open(_position: unknown): Promise<void> {
    const cfg = this.cfg;
    this.nc = await connectNats(cfg, this.log, 'source', (up) => (this.connected = up));
    this.connected = true;
    const jsm = await jetstreamManager(this.nc);
    this.jsm = jsm;
    try {
      await jsm.streams.info(cfg.stream);
    } catch (err) {
      if (!cfg.subjects) throw new SluiceError('CONNECT', `JetStream stream ${cfg.stream} not found (${errorMessage(err)}); set subjects: to create it`);
      await jsm.streams.add({ name: cfg.stream, subjects: cfg.subjects });
      this.log.info({ stream: cfg.stream, subjects: cfg.subjects }, 'created the stream');
    }
    // JetStream's default max_ack_pending (1000) would cut every pull short of batch_size and
    // leave it waiting for batch_timeout_ms: the consumer gets room for the batches in flight.
    const maxPending = maxAckPending(cfg);
    let existing: ConsumerInfo | undefined;
    try {
      existing = await jsm.consumers.info(cfg.stream, cfg.consumer);
    } catch {
      existing = undefined;
    }
    if (existing) {
      const have = existing.config.max_ack_pending ?? -1;
      if (have !== -1 && have < maxPending) {
        await jsm.consumers.update(cfg.stream, cfg.consumer, { max_ack_pending: maxPending });
        this.log.info({ consumer: cfg.consumer, from: have, to: maxPending }, "raised the consumer's max_ack_pending");
      }
    } else {
      await jsm.consumers.add(cfg.stream, {
        durable_name: cfg.consumer,
        ack_policy: AckPolicy.Explicit,
        ack_wait: cfg.ack_wait_ms * 1_000_000,
        max_ack_pending: maxPending,
        deliver_policy: cfg.start === 'earliest' ? DeliverPolicy.All : DeliverPolicy.New,
        ...(cfg.filter_subject ? { filter_subject: cfg.filter_subject } : {}),
      });
      this.log.info({ stream: cfg.stream, consumer: cfg.consumer }, 'created the durable consumer');
    }
    this.consumer = await jetstream(this.nc).consumers.get(cfg.stream, cfg.consumer);
    this.pump = this.runPump();
    this.ackWaitMs = existing?.config.ack_wait ? existing.config.ack_wait / 1e6 : cfg.ack_wait_ms;
    this.holdTimer = setInterval(() => this.keepHeld(), Math.max(100, Math.floor(this.ackWaitMs / KEEP_HELD_PARTS)));
    this.holdTimer.unref();
  }

  /** The consumer's messages not delivered yet (shared by every worker) and those this worker pulled and holds. */
  async lag(): Promise<SourceLag[]> {
    const info = await this.jsm!.consumers.info(this.cfg.stream, this.cfg.consumer);
    return [{ topic: this.cfg.stream, messages: info.num_pending + this.buffer.length }];
  }

  async poll(limits: PollLimits, signal: AbortSignal): Promise<SourceChunk> {
    if (this.buffer.length === 0) {
      while (this.buffer.length === 0 && !signal.aborted) await this.nextChange(undefined, signal);
      // The pump hands over a pull's messages one promise turn each: without letting it finish
      // what the socket delivered, every chunk held one message, and a batch was made of
      // thousands of chunks, each acked and flushed on its own (NATS drained at a third of
      // its speed with batches over 10,000).
      if (!signal.aborted) await new Promise<void>((resolve) => setImmediate(resolve));
    }
    // Up to the limits (the first always): the rest stay pulled ahead, first in the next chunk
    // (each message is acked on its own).
    const { n, bytes, full } = batchCut(this.buffer.length, (i) => this.buffer[i].data.length, limits);
    const got = this.buffer.splice(0, n);
    this.bufferBytes -= bytes;
    this.arrivals.splice(0, got.length);
    if (got.length) this.handedOut.set(got, Date.now());
    this.changed(); // room for the pump's next pull
    const stream = this.cfg.stream;
    const messages: RawMessage[] = got.map((m) => ({
      payload: m.string(),
      coords: { stream, subject: m.subject, seq: m.seq, delivery: m.info.deliveryCount },
      redelivered: m.info.redelivered,
      raw: m,
      // `_topic` the stream, `_key` the subject, `_offset` the stream sequence, `_id` Nats-Msg-Id.
      get meta(): MessageMeta {
        const headers: Record<string, string> = {};
        if (m.headers) for (const [k, vs] of m.headers) headers[k] = vs.join(',');
        return {
          topic: stream,
          key: m.subject,
          offset: m.seq,
          id: m.headers?.get('Nats-Msg-Id') || undefined,
          timestamp: Math.floor(m.info.timestampNanos / 1e6),
          headers: m.headers ? headers : undefined,
        };
      },
    }));
    return { messages, bytes, full, position: undefined, ackToken: got };
  }

  /**
   * Pulls ahead of the engine, about one batch: a pull is never cut short by the client. (A
   * pull stopped at the batch deadline dropped whatever the server was still delivering to it,
   * and those messages came back only after ack_wait — 30 s of latency for no fault.)
   */
  private async runPump(): Promise<void> {
    const { batch_max_bytes } = this.cfg;
    // About a batch ahead, within what the consumer lets this worker hold unacked.
    const ahead = Math.min(this.cfg.batch_size, Math.floor(maxAckPending(this.cfg) / 2));
    while (!this.closing) {
      let room = ahead - this.buffer.length;
      // About a batch's bytes ahead too: once payload sizes are known, a pull asks for what
      // batch_max_bytes leaves room for (at least one message).
      if (this.bufferBytes >= batch_max_bytes) room = 0;
      else if (this.msgBytes > 0) room = Math.min(room, Math.max(1, Math.ceil((batch_max_bytes - this.bufferBytes) / this.msgBytes)));
      if (room <= 0) {
        await this.nextChange();
        continue;
      }
      try {
        const it = await this.consumer!.fetch({ max_messages: room, expires: PULL_EXPIRES_MS });
        this.fetching = it;
        if (this.closing) it.stop();
        let pulled = 0;
        let pulledBytes = 0;
        for await (const m of it) {
          this.pullWorked();
          this.buffer.push(m);
          this.bufferBytes += m.data.length;
          this.arrivals.push(Date.now());
          pulled++;
          pulledBytes += m.data.length;
          this.changed();
        }
        if (pulled) this.msgBytes = pulledBytes / pulled;
        this.pullWorked();
      } catch (err) {
        if (this.closing) break;
        const e = new Error(errorMessage(err));
        if (++this.pullFailures === PULL_FAILURES_UNHEALTHY)
          this.log.warn({ err: e, stream: this.cfg.stream, consumer: this.cfg.consumer }, 'pulling from JetStream keeps failing; /readyz is red until a pull works');
        else this.log.debug({ err: e }, 'pulling from JetStream failed');
        await sleep(250);
      } finally {
        this.fetching = undefined;
      }
    }
  }

  private pullWorked(): void {
    if (this.pullFailures >= PULL_FAILURES_UNHEALTHY) this.log.info({ stream: this.cfg.stream, consumer: this.cfg.consumer }, 'pulling from JetStream works again');
    this.pullFailures = 0;
  }

  /**
   * Messages held ahead, and batches the engine holds without acking them (reading paused while
   * a sink fails, or a batch that is merely slow on a loaded machine), would be delivered again
   * after ack_wait and then read twice: each one held for a sixth of ack_wait gets a working()
   * ("in progress"), which restarts its ack_wait. The timer ticks every sixth too, so a message
   * goes at most about a third of ack_wait without one: two thirds are left for a busy event
   * loop to run the timer late.
   */
  private keepHeld(): void {
    const now = Date.now();
    const before = now - this.ackWaitMs / KEEP_HELD_PARTS;
    for (let i = 0; i < this.buffer.length && this.arrivals[i] <= before; i++) {
      this.buffer[i].working();
      this.arrivals[i] = now;
    }
    for (const [msgs, at] of this.handedOut) {
      if (at > before) continue;
      for (const m of msgs) m.working();
      this.handedOut.set(msgs, now);
    }
  }

  private changed(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }

  /** Resolves at the buffer's next change, after `ms`, or on abort, whichever comes first. */
  private nextChange(ms?: number, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      let timer: NodeJS.Timeout | undefined;
      const done = () => {
        if (timer) clearTimeout(timer);
        signal?.removeEventListener('abort', done);
        resolve();
      };
      this.waiters.push(done);
      if (ms !== undefined) timer = setTimeout(done, ms);
      signal?.addEventListener('abort', done, { once: true });
    });
  }

  async ack(chunk: SourceChunk): Promise<void> {
    const msgs = (chunk.ackToken as JsMsg[] | undefined) ?? [];
    this.handedOut.delete(msgs);
    if (msgs.length === 0) return;
    for (const m of msgs) {
      if (deadLettered.has(m)) m.term();
      else m.ack();
    }
    try {
      await this.nc!.flush();
    } catch (err) {
      // Not confirmed: the server redelivers after ack_wait; the WAL already has the rows.
      this.log.warn({ messages: msgs.length, err: new Error(errorMessage(err)) }, 'acks not confirmed; JetStream will redeliver');
    }
  }

  healthy(): boolean {
    return this.connected && this.pullFailures < PULL_FAILURES_UNHEALTHY;
  }

  async close(): Promise<void> {
    this.closing = true;
    this.fetching?.stop();
    this.changed();
    await this.pump;
    // Pulled but never handed to the engine: back to the stream now, not after ack_wait (those
    // the server was still sending to the stopped pull come back after ack_wait).
    clearInterval(this.holdTimer);
    this.handedOut.clear();
    for (const m of this.buffer.splice(0)) m.nak();
    this.bufferBytes = 0;
    this.arrivals = [];
    const nc = this.nc;
    this.nc = undefined;
    await nc?.drain().catch(() => nc.close());
  }
}
