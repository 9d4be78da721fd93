import { createClient } from 'redis';
import type { Logger } from 'pino';
import { SluiceError, errorMessage } from '../../errors.js';
import type { ConnectorContext, MessageMeta, RawMessage, Source, SourceBatch } from '../types.js';
import { sleep } from '../file/file-source.js';
import { payloadOf, type RedisStreamsSourceConfig } from './redis-config.js';

interface Entry {
  id: string;
  message: Record<string, string>;
}

/** The longest a blocking read waits before looking at the abort signal and the clock again. */
const BLOCK_SLICE_MS = 250;

/** Opens a node-redis client that reconnects by itself with capped backoff. */
function newClient(url: string) {
  return createClient({ url, socket: { reconnectStrategy: (retries) => Math.min(100 * 2 ** Math.min(retries, 5), 3_000) } });
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
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      client.connect(),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no connection within ${ms / 1000} s`)), ms);
      }),
    ]);
  } catch (err) {
    client.destroy();
    throw err;
  } finally {
    clearTimeout(timer);
  }
}

export function redact(url: string): string {
  return url.replace(/\/\/([^:@/]*):([^@/]*)@/, '//$1:***@');
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

  constructor(
    private readonly cfg: RedisStreamsSourceConfig,
    private readonly ctx: ConnectorContext,
  ) {
    this.consumer = cfg.consumer ?? ctx.workerId;
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
  }

  async read(signal: AbortSignal): Promise<SourceBatch | null> {
    const { batch_size, batch_timeout_ms } = this.cfg;
    const entries: Entry[] = [];
    const redelivered = new Set<string>();
    const idleDeadline = Date.now() + batch_timeout_ms;
    let firstAt = 0;
    while (!signal.aborted && entries.length < batch_size) {
      const now = Date.now();
      if (entries.length > 0 && now - firstAt >= batch_timeout_ms) break;
      if (entries.length === 0 && now >= idleDeadline) break;
      let got: Entry[];
      try {
        got = await this.fetch(batch_size - entries.length, entries.length ? firstAt + batch_timeout_ms : idleDeadline, redelivered);
      } catch (err) {
        // Redis is away: the client reconnects by itself; hand back what we have (or an empty
        // batch) so the engine keeps flushing by age.
        this.log.debug({ err: new Error(errorMessage(err)) }, 'reading the stream failed');
        await sleep(Math.min(500, Math.max(1, idleDeadline - Date.now())), signal);
        if (entries.length === 0 && Date.now() >= idleDeadline) break;
        continue;
      }
      if (got.length && entries.length === 0) firstAt = Date.now();
      entries.push(...got);
    }
    const { stream, field } = this.cfg;
    const messages: RawMessage[] = entries.map((e) => ({
      payload: payloadOf(e.message, field),
      coords: { stream, id: e.id },
      redelivered: redelivered.has(e.id),
      raw: e,
      // `_topic` the stream, `_id` the entry id, `_timestamp` from it, `_headers` the other fields.
      get meta(): MessageMeta {
        const headers = field === '*' ? undefined : Object.fromEntries(Object.entries(e.message).filter(([k]) => k !== field));
        return { topic: stream, id: e.id, timestamp: Number(e.id.split('-')[0]), headers };
      },
    }));
    return { messages, position: undefined, ackToken: entries.map((e) => e.id) };
  }

  /** Up to `max` entries: own pending first, then claimed, then new (blocking until `until`). */
  private async fetch(max: number, until: number, redelivered: Set<string>): Promise<Entry[]> {
    const client = this.client!;
    const { stream, group } = this.cfg;
    if (this.ownPending !== undefined) {
      const r = await client.xReadGroup(group, this.consumer, { key: stream, id: this.ownPending }, { COUNT: max });
      const got = entriesOf(r);
      if (got.length === 0) {
        this.ownPending = undefined;
      } else {
        this.ownPending = got[got.length - 1].id;
        for (const e of got) redelivered.add(e.id);
        this.log.info({ entries: got.length }, 'reading entries this consumer had not acknowledged before it stopped');
        return got;
      }
    }
    if (this.cfg.claim_idle_ms > 0 && Date.now() >= this.nextClaim) {
      this.nextClaim = Date.now() + Math.max(1000, this.cfg.claim_idle_ms / 2);
      const got = await this.claim(max);
      if (got.length) {
        for (const e of got) redelivered.add(e.id);
        return got;
      }
    }
    const block = Math.max(1, Math.min(BLOCK_SLICE_MS, until - Date.now()));
    return entriesOf(await this.reader!.xReadGroup(group, this.consumer, { key: stream, id: '>' }, { COUNT: max, BLOCK: block }));
  }

  /** Takes over entries other consumers left pending longer than claim_idle_ms. */
  private async claim(max: number): Promise<Entry[]> {
    const client = this.client!;
    const { stream, group, claim_idle_ms } = this.cfg;
    const pending = await client.xPendingRange(stream, group, '-', '+', Math.min(max, 1000), { IDLE: claim_idle_ms });
    const ids = pending.filter((p) => p.consumer !== this.consumer).map((p) => p.id);
    if (ids.length === 0) return [];
    const claimed = (await client.xClaim(stream, group, this.consumer, claim_idle_ms, ids)) as (Entry | null)[];
    const got = claimed.filter((e): e is Entry => e !== null);
    // Claimed ids whose entries were deleted from the stream: nothing to process, ack them.
    const gone = ids.filter((id) => !got.some((e) => e.id === id));
    if (gone.length) await client.xAck(stream, group, gone);
    if (got.length) this.log.warn({ entries: got.length }, 'took over entries another consumer left pending');
    return got;
  }

  async ack(batch: SourceBatch): Promise<void> {
    const ids = [...this.unacked, ...((batch.ackToken as string[] | undefined) ?? [])];
    if (ids.length === 0) return;
    try {
      // Chunks issued together go out as one pipeline (one round trip); XACK is idempotent, so
      // a partial failure just acks the rest again with the next batch.
      const chunks: Promise<number>[] = [];
      for (let i = 0; i < ids.length; i += 1000) chunks.push(this.client!.xAck(this.cfg.stream, this.cfg.group, ids.slice(i, i + 1000)));
      await Promise.all(chunks);
      this.unacked = [];
    } catch (err) {
      // The rows are durable; the entries stay pending in Redis and are acked with the next batch.
      this.unacked = ids;
      this.log.warn({ entries: ids.length, err: new Error(errorMessage(err)) }, 'XACK failed; retrying with the next batch');
    }
  }

  healthy(): boolean {
    return Boolean(this.client?.isReady && this.reader?.isReady);
  }

  async close(): Promise<void> {
    if (this.unacked.length && this.client?.isReady) await this.ack({ messages: [], position: undefined });
    for (const c of [this.reader, this.client]) c?.destroy();
    this.reader = undefined;
    this.client = undefined;
  }
}

function entriesOf(reply: unknown): Entry[] {
  if (!reply) return [];
  const streams = reply as { name: string; messages: (Entry | null)[] }[];
  return streams.flatMap((s) => s.messages.filter((m): m is Entry => m !== null));
}
