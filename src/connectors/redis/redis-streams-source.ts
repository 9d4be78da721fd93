import { createClient, RESP_TYPES } from 'redis';
import type { Logger } from 'pino';
import { SluiceError, errorMessage } from '../../errors.js';
import type { ConnectorContext, MessageMeta, PollLimits, RawMessage, Source, SourceChunk, SourceLag } from '../types.js';
import { blockOfBuffers } from '../payload-block.js';
import { abortion, backoff, sleep } from '../../util/retry.js';
import { withTimeout } from '../../util/with-timeout.js';
import type { RedisStreamsSourceConfig } from './redis-config.js';
import { batchCut } from '../batch-cut.js';

/**
 * Stream replies as they come off the wire: every bulk string a Buffer (a view of the socket's
 * chunk, no copy, no string), maps as flat arrays. node-redis' own XREADGROUP reply builds a
 * string and an object per entry, which dominated the source's cost.
 */
const RAW_REPLY = { typeMapping: { [RESP_TYPES.BLOB_STRING]: Buffer, [RESP_TYPES.MAP]: Array } };

const EMPTY = Buffer.alloc(0);

/** The longest a blocking read waits before looking at the abort signal and the clock again. */
const BLOCK_SLICE_MS = 250;
const EMPTY_CHUNK: SourceChunk = { messages: [], bytes: 0, position: undefined };
/** Ids per XACK command. */
const ACK_CHUNK = 1000;

const RECONNECT = backoff({ initialMs: 100, maxMs: 3_000 });

/** Opens a node-redis client that reconnects by itself with capped backoff. */
function newClient(url: string) {
  return createClient({ url, socket: { reconnectStrategy: (retries) => RECONNECT(retries + 1) } });
}
type Client = ReturnType<typeof newClient>;

export async function connectRedis(url: string, log: Logger, what: string): Promise<Client> {
  const client = newClient(url);
  let warned = false;
  client.on('error', (err) => {
    if (!warned) log.warn({ err: new Error(errorMessage(err)), what }, 'Redis connection error; reconnecting');
    warned = true;
  });
  client.on('ready', () => {
    if (warned) log.info({ what }, 'reconnected to Redis');
    warned = false;
  });
  try {
    await connectWithin(client, 30_000);
  } catch (err) {
    throw new SluiceError('CONNECT', `cannot connect to Redis at ${redact(url)}: ${errorMessage(err)}`);
  }
  return client;
}

async function connectWithin(client: { connect(): Promise<unknown>; destroy(): void }, ms: number): Promise<void> {
  try {
    await withTimeout(client.connect(), ms, `no connection within ${ms / 1000} s`);
  } catch (err) {
    client.destroy();
    throw err;
  }
}

export function redact(url: string): string {
  return url.replace(/\/\/([^:@/]*):([^@/]*)@/, '//$1:***@');
}

/**
 * One stream entry, kept as the reply's Buffers: strings (payload, id, fields) are made only
 * when asked for — the payload for a dead letter, `meta` when models read metadata.
 */
class RedisEntry implements RawMessage {
  constructor(
    private readonly cfg: RedisStreamsSourceConfig,
    readonly id: string,
    /** Field names and values, alternating. */
    private readonly fields: Buffer[],
    /** The message's bytes: the `field` value, or for `field: '*'` all fields as JSON. */
    private readonly bytes: Uint8Array,
    readonly redelivered: boolean,
  ) {}

  get payload(): string {
    return Buffer.from(this.bytes.buffer, this.bytes.byteOffset, this.bytes.byteLength).toString('utf8');
  }

  get coords(): { stream: string; id: string } {
    return { stream: this.cfg.stream, id: this.id };
  }

  /** The entry as node-redis shows it (id, fields as text): what the DLQ copies. */
  get raw(): { id: string; message: Record<string, string> } {
    return { id: this.id, message: fieldsOf(this.fields) };
  }

  // `_topic` the stream, `_id` the entry id, `_timestamp` from it, `_headers` the other fields.
  get meta(): MessageMeta {
    const id = this.id;
    const { field } = this.cfg;
    let headers: Record<string, string> | undefined;
    if (field !== '*') {
      headers = fieldsOf(this.fields);
      delete headers[field];
    }
    return { topic: this.cfg.stream, id, timestamp: Number(id.split('-')[0]), headers };
  }
}

/** Field names and values, alternating, as an object (a repeated name: the last value wins). */
function fieldsOf(fields: Buffer[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (let k = 0; k + 1 < fields.length; k += 2) out[fields[k].toString('utf8')] = fields[k + 1].toString('utf8');
  return out;
}

/** Same bytes: field names are short, a loop beats a call into C++. */
function sameBytes(a: Buffer, b: Buffer): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Entries read for one batch, in stream order. */
class Entries {
  /**
   * Entry ids as strings: XACK gets them as arguments, and node-redis writes a Buffer argument
   * as a chunk of its own (a writev of 20,000 pieces per 10,000-id XACK), strings as one.
   */
  readonly ids: string[] = [];
  readonly fields: Buffer[][] = [];
  readonly again: boolean[] = [];
  /** Each entry's message bytes (see RedisStreamsSource.measure), for the first `payloads.length` entries. */
  readonly payloads: Uint8Array[] = [];
  /** Bytes of `payloads`. */
  bytes = 0;
  /** Entries whose id was in the pending list but whose data is gone (deleted from the stream). */
  readonly gone: string[] = [];
  /** The id of the last entry seen by the last add(), deleted ones included. */
  lastId: string | undefined;

  get length(): number {
    return this.ids.length;
  }

  /**
   * Cuts the entries from `n` on (all measured) off into an Entries of their own, in order;
   * the deleted ones seen stay here.
   */
  splitAt(n: number): Entries {
    const rest = new Entries();
    // One at a time: a spread of a large batch's entries would pass the engine's argument limit.
    for (let i = n; i < this.ids.length; i++) {
      rest.ids.push(this.ids[i]);
      rest.fields.push(this.fields[i]);
      rest.again.push(this.again[i]);
      rest.payloads.push(this.payloads[i]);
      rest.bytes += this.payloads[i].byteLength;
    }
    this.ids.length = this.fields.length = this.again.length = this.payloads.length = n;
    this.bytes -= rest.bytes;
    return rest;
  }

  /**
   * Adds the entries of a raw XREADGROUP (map of stream -> entries) or XCLAIM (entries) reply;
   * returns how many it saw, deleted ones included.
   */
  add(entries: unknown, redelivered: boolean): number {
    if (!Array.isArray(entries)) return 0;
    let seen = 0;
    for (const e of entries as (null | [Buffer, Buffer[] | null])[]) {
      if (e === null) continue; // XCLAIM of a deleted entry on Redis < 7
      seen++;
      const id = e[0].toString('latin1');
      this.lastId = id;
      if (e[1] === null) {
        this.gone.push(id);
        continue;
      }
      this.ids.push(id);
      this.fields.push(e[1]);
      this.again.push(redelivered);
    }
    return seen;
  }

  /** As add(), for an XREADGROUP reply: [stream, entries] as a flat map (RESP3) or pairs (RESP2). */
  addStreams(reply: unknown, redelivered: boolean): number {
    if (!Array.isArray(reply)) return 0;
    let seen = 0;
    if (reply.length > 0 && Buffer.isBuffer(reply[0])) {
      for (let i = 1; i < reply.length; i += 2) seen += this.add(reply[i], redelivered);
    } else {
      for (const s of reply as [Buffer, unknown][]) seen += this.add(s[1], redelivered);
    }
    return seen;
  }
}

/**
 * Consumes a Redis stream in a consumer group (XREADGROUP). Entries are acknowledged (XACK)
 * only once the engine says their batch is durable. On start, this consumer's own pending
 * entries (read by a previous run that died before acking) are read again first; entries
 * another consumer left pending longer than `claim_idle_ms` are taken over (XPENDING + XCLAIM).
 * Acks are not tied to a connection: an ack that fails while Redis is away is retried.
 */
export class RedisStreamsSource implements Source {
  private client?: Client;
  /** XREADGROUP blocks its connection: it gets its own. */
  private reader?: Client;
  private readonly consumer: string;
  /** Where re-reading this consumer's own pending entries is; undefined once done. */
  private ownPending: string | undefined = '0';
  private nextClaim = 0;
  private unacked: string[] = [];
  private readonly fieldName: Buffer;
  /** Ids of the batches handed to the engine and not acked yet (their ackTokens). */
  private readonly held = new Set<string[]>();
  private keepFresh?: NodeJS.Timeout;
  private freshening = false;
  /**
   * Entries read (so pending for this consumer) and not handed over yet (past the last poll's
   * limits, or read after it was aborted): the next poll starts with them.
   */
  private carry: Entries | undefined;
  /** The stream read in flight, adding to `carry`. */
  private reading: Promise<void> | undefined;
  /** Average message bytes of the entries last read: sizes the next read's COUNT. */
  private entryBytes = 0;

  constructor(
    private readonly cfg: RedisStreamsSourceConfig,
    private readonly ctx: ConnectorContext,
  ) {
    this.consumer = cfg.consumer ?? ctx.workerId;
    this.fieldName = Buffer.from(cfg.field);
  }

  private get log(): Logger {
    return this.ctx.log;
  }

  async open(_position: unknown): Promise<void> {
    this.client = await connectRedis(this.cfg.url, this.log, 'source');
    this.reader = await connectRedis(this.cfg.url, this.log, 'source reader');
    try {
      await this.client.xGroupCreate(this.cfg.stream, this.cfg.group, this.cfg.start === 'earliest' ? '0' : '$', { MKSTREAM: true });
      this.log.info({ stream: this.cfg.stream, group: this.cfg.group, start: this.cfg.start }, 'created the consumer group');
    } catch (err) {
      if (!/BUSYGROUP/.test(errorMessage(err))) throw new SluiceError('CONNECT', `cannot create consumer group ${this.cfg.group} on ${this.cfg.stream}: ${errorMessage(err)}`);
    }
    if (this.cfg.claim_idle_ms > 0) {
      this.keepFresh = setInterval(() => void this.freshen(), Math.max(50, Math.floor(this.cfg.claim_idle_ms / 3)));
      this.keepFresh.unref();
    }
  }

  /**
   * Keeps the entries this worker holds (handed to the engine, not acked yet) from looking
   * abandoned: while reading is paused for a failing sink, or a batch takes long, their idle time
   * would pass claim_idle_ms and another consumer would take them over and process them too.
   * Every third of claim_idle_ms, those still pending for this consumer are claimed again by it
   * (XCLAIM ... JUSTID: idle time reset, delivery count unchanged). The minimum idle time keeps
   * it from taking back an entry another consumer claimed meanwhile.
   */
  private async freshen(): Promise<void> {
    const client = this.client;
    if (this.freshening || !client?.isReady) return;
    const mine = new Set<string>(this.unacked);
    for (const ids of this.held) for (const id of ids) mine.add(id);
    if (this.carry) for (const id of this.carry.ids) mine.add(id);
    if (mine.size === 0) return;
    this.freshening = true;
    try {
      const { stream, group, claim_idle_ms } = this.cfg;
      // This consumer's pending entries, oldest first: the held ones (its own from a previous
      // run are read again, and so held, before any other's are claimed) and room for more.
      const pending = await client.xPendingRange(stream, group, '-', '+', mine.size + 10_000, { consumer: this.consumer });
      const ids = pending.map((p) => p.id).filter((id) => mine.has(id));
      for (let i = 0; i < ids.length; i += ACK_CHUNK) {
        await client.sendCommand(['XCLAIM', stream, group, this.consumer, String(Math.floor(claim_idle_ms / 6)), ...ids.slice(i, i + ACK_CHUNK), 'JUSTID']);
      }
    } catch (err) {
      this.log.debug({ err: new Error(errorMessage(err)) }, 'keeping held entries fresh failed; trying again');
    } finally {
      this.freshening = false;
    }
  }

  async poll(limits: PollLimits, signal: AbortSignal): Promise<SourceChunk> {
    for (;;) {
      // A read still in flight (an abort ended the last poll before it came back) lands in
      // `carry` first: its entries are pending for this consumer and must not be dropped.
      if (this.reading) {
        const landed = await Promise.race([this.reading.then(() => true), abortion(signal).then(() => false)]);
        if (!landed) return EMPTY_CHUNK;
      }
      const entries = this.carry;
      // Pending entries deleted from the stream: nothing to process; acked now.
      if (entries && entries.length === 0 && entries.gone.length) {
        await this.ack({ messages: [], position: undefined, ackToken: entries.gone.splice(0) });
      }
      if (entries && entries.length > 0) return this.handOver(entries, limits);
      if (signal.aborted) return EMPTY_CHUNK;
      const into = (this.carry ??= new Entries());
      this.reading = this.fetch(this.fetchCount(into, limits), into)
        .then(() => this.measure(into))
        .catch(async (err) => {
          // Redis is away: the client reconnects by itself; the engine keeps flushing by age.
          this.log.debug({ err: new Error(errorMessage(err)) }, 'reading the stream failed');
          await sleep(500);
        })
        .finally(() => {
          this.reading = undefined;
        });
    }
  }

  /** Up to the limits of `entries` (the first always); the rest, pending for this consumer already, stay for the next poll. */
  private handOver(entries: Entries, limits: PollLimits): SourceChunk {
    this.measure(entries);
    const { n, bytes, full } = batchCut(entries.length, (i) => entries.payloads[i].byteLength, limits);
    if (n === 0) return { ...EMPTY_CHUNK, full };
    this.carry = n < entries.length ? entries.splitAt(n) : undefined;
    const ids: string[] = entries.gone.length ? entries.gone.concat(entries.ids) : entries.ids;
    const payloads = entries.payloads;
    const messages: RawMessage[] = new Array(entries.length);
    for (let i = 0; i < messages.length; i++) messages[i] = new RedisEntry(this.cfg, entries.ids[i], entries.fields[i], payloads[i], entries.again[i]);
    this.held.add(ids);
    return { messages, block: blockOfBuffers(payloads), bytes, full, position: undefined, ackToken: ids };
  }

  /**
   * Sets the message bytes of the entries added since the last call: each one's `field` value
   * (empty when it has none), or all fields as JSON for '*'.
   */
  private measure(entries: Entries): void {
    const from = entries.payloads.length;
    if (from >= entries.length) return;
    const out = entries.payloads;
    const all = this.cfg.field === '*';
    const name = this.fieldName;
    let added = 0;
    for (let i = from; i < entries.length; i++) {
      const f = entries.fields[i];
      let value: Uint8Array = EMPTY;
      if (all) value = Buffer.from(JSON.stringify(fieldsOf(f)));
      else for (let k = 0; k + 1 < f.length; k += 2) if (sameBytes(f[k], name)) value = f[k + 1];
      out.push(value);
      added += value.byteLength;
    }
    entries.bytes += added;
    this.entryBytes = added / (entries.length - from);
  }

  /**
   * Entries to ask for: room left by the poll's limits, and (once entry sizes are known) about
   * what its bytes leave room for, so that large entries are not read far ahead of their batch.
   */
  private fetchCount(entries: Entries, limits: PollLimits): number {
    const room = Math.max(1, limits.maxMessages - entries.length);
    if (!(this.entryBytes > 0)) return room;
    return Math.max(1, Math.min(room, Math.ceil((limits.maxBytes - entries.bytes) / this.entryBytes)));
  }

  /** Adds up to `max` entries: own pending first, then claimed, then new (blocking a slice at most). */
  private async fetch(max: number, entries: Entries): Promise<void> {
    const { stream, group } = this.cfg;
    const count = String(max);
    if (this.ownPending !== undefined) {
      const before = entries.length;
      const reply = await this.client!.sendCommand(['XREADGROUP', 'GROUP', group, this.consumer, 'COUNT', count, 'STREAMS', stream, this.ownPending], RAW_REPLY);
      if (entries.addStreams(reply, true) === 0) {
        this.ownPending = undefined;
      } else {
        this.ownPending = entries.lastId;
        if (entries.length > before) this.log.info({ entries: entries.length - before }, 'reading entries this consumer had not acknowledged before it stopped');
        return;
      }
    }
    if (this.cfg.claim_idle_ms > 0 && Date.now() >= this.nextClaim) {
      this.nextClaim = Date.now() + Math.max(1000, this.cfg.claim_idle_ms / 2);
      if ((await this.claim(max, entries)) > 0) return;
    }
    entries.addStreams(await this.reader!.sendCommand(['XREADGROUP', 'GROUP', group, this.consumer, 'COUNT', count, 'BLOCK', String(BLOCK_SLICE_MS), 'STREAMS', stream, '>'], RAW_REPLY), false);
  }

  /** Takes over entries other consumers left pending longer than claim_idle_ms; returns how many. */
  private async claim(max: number, entries: Entries): Promise<number> {
    const client = this.client!;
    const { stream, group, claim_idle_ms } = this.cfg;
    const pending = await client.xPendingRange(stream, group, '-', '+', Math.min(max, 1000), { IDLE: claim_idle_ms });
    const ids = pending.filter((p) => p.consumer !== this.consumer).map((p) => p.id);
    if (ids.length === 0) return 0;
    const before = entries.length;
    const claimed = new Entries();
    claimed.add(await client.sendCommand(['XCLAIM', stream, group, this.consumer, String(claim_idle_ms), ...ids], RAW_REPLY), true);
    // Claimed ids whose entries were deleted from the stream: nothing to process, ack them.
    const got = new Set(claimed.ids);
    const gone = ids.filter((id) => !got.has(id));
    if (gone.length) await client.xAck(stream, group, gone);
    for (let i = 0; i < claimed.length; i++) {
      entries.ids.push(claimed.ids[i]);
      entries.fields.push(claimed.fields[i]);
      entries.again.push(true);
    }
    const n = entries.length - before;
    if (n) this.log.warn({ entries: n }, 'took over entries another consumer left pending');
    return n;
  }

  async ack(chunk: SourceChunk): Promise<void> {
    const own = (chunk.ackToken as string[] | undefined) ?? [];
    this.held.delete(own);
    const ids = this.unacked.length ? [...this.unacked, ...own] : own;
    if (ids.length === 0) return;
    try {
      // Chunks issued together go out as one pipeline (one round trip); XACK is idempotent, so
      // a partial failure just acks the rest again with the next batch.
      const chunks: Promise<number>[] = [];
      for (let i = 0; i < ids.length; i += ACK_CHUNK) chunks.push(this.client!.xAck(this.cfg.stream, this.cfg.group, ids.slice(i, i + ACK_CHUNK)));
      await Promise.all(chunks);
      this.unacked = [];
    } catch (err) {
      // The rows are durable; the entries stay pending in Redis and are acked with the next batch.
      this.unacked = ids;
      this.log.warn({ entries: ids.length, err: new Error(errorMessage(err)) }, 'XACK failed; retrying with the next batch');
    }
  }

  /** The group's lag (entries not delivered to any of its consumers yet; Redis 7 or later). */
  async lag(): Promise<SourceLag[]> {
    // Not queued behind a reconnect: a scrape gets no figure rather than a late one.
    if (!this.client?.isReady) throw new Error('not connected');
    const groups = (await this.client.xInfoGroups(this.cfg.stream)) as unknown as { name: unknown; lag?: unknown }[];
    const lag = groups.find((g) => String(g.name) === this.cfg.group)?.lag;
    // null after entries were deleted from the middle of the stream; absent before Redis 7.
    if (lag === null || lag === undefined) throw new Error("Redis does not know the group's lag");
    return [{ topic: this.cfg.stream, messages: Number(lag) + (this.carry?.length ?? 0) }];
  }

  healthy(): boolean {
    return Boolean(this.client?.isReady && this.reader?.isReady);
  }

  async close(): Promise<void> {
    clearInterval(this.keepFresh);
    if (this.unacked.length && this.client?.isReady) await this.ack({ messages: [], position: undefined });
    for (const c of [this.reader, this.client]) c?.destroy();
    this.reader = undefined;
    this.client = undefined;
  }
}
