import type { PayloadBlock, PollLimits, Source, SourceChunk } from '../connectors/types.js';
import { systemClock, type Clock } from '../util/clock.js';

/** Time as the batcher sees it (tests inject their own): defined in util/clock.ts, shared by the engine. */
export { systemClock, type Clock };

/** A batch as the engine runs it: one or more chunks of one source, joined. */
export interface SourceBatch {
  messages: SourceChunk['messages'];
  /** The payloads as one block of bytes, when every chunk had one. */
  block?: PayloadBlock;
  /** Payload bytes of `messages`. */
  bytes: number;
  /** The position after the last chunk. */
  position: unknown;
  first?: string;
  last?: string;
  /** The chunks, in poll order: each is acked once the batch is durable. */
  chunks: SourceChunk[];
  /** The source its messages came from, in a pipeline that reads two (see MergedSource). */
  origin?: string;
}

/** The batching keys of a source block (shared-config.ts `batching`). */
export interface BatchingConfig {
  /** The most messages a batch takes (batch_size): a ceiling, not a target. */
  maxMessages: number;
  /** The most payload bytes (batch_max_bytes); a batch always takes its first message. */
  maxBytes: number;
  /** The longest a batch stays open after its first message (batch_timeout_ms). */
  timeoutMs: number;
  /** Where the count ramp starts (below); RAMP_START unless set, never above `maxMessages`. */
  firstMessages?: number;
}

/**
 * The first batch, and the first after a batch that was cut short, takes at most this many
 * messages; each batch that fills up to its count doubles the next one's, up to `maxMessages`.
 * A backlog is then met with batches that grow to the ceiling, while the first one (which also
 * learns the schema) starts the two-lane pipeline early instead of making the other lane wait
 * for a ceiling-sized batch.
 */
export const RAMP_START = 8192;

/** A source block's batching keys (every source schema has them, with their defaults). */
export function batchingOf(cfg: { batch_size: number; batch_max_bytes: number; batch_timeout_ms: number }): BatchingConfig {
  return { maxMessages: cfg.batch_size, maxBytes: cfg.batch_max_bytes, timeoutMs: cfg.batch_timeout_ms };
}

/**
 * Forms batches from what a source hands over, by count, bytes and time, sized by the backlog:
 *
 * - a batch is cut once it holds `maxMessages` messages or `maxBytes` payload bytes;
 * - or once `timeoutMs` has passed since its first message;
 * - or as soon as it holds a message, the source has nothing more at hand and the engine is
 *   waiting for it (`demand()`): light traffic goes through at once, in small batches, and
 *   while the engine is busy with one batch the next grows with the backlog, up to the ceiling;
 * - with no message for `timeoutMs`, an empty batch comes back, so the engine can flush by age.
 *
 * Waits are abortable: `signal` ends the wait at once, with what the batch holds.
 */
export class Batcher {
  private demanded = false;
  /** Cuts the poll in flight when the engine waits and the batch holds a message. */
  private cutNow?: () => void;
  private ended = false;
  /** The count the next batch is cut at (the ramp, see RAMP_START). */
  private target: number;

  constructor(
    private readonly source: Source,
    private readonly cfg: BatchingConfig,
    private readonly clock: Clock = systemClock,
  ) {
    this.target = this.rampStart();
  }

  private rampStart(): number {
    return Math.max(1, Math.min(this.cfg.maxMessages, this.cfg.firstMessages ?? RAMP_START));
  }

  /** The engine is waiting for the next batch: hand it over as soon as it holds a message. */
  demand(): void {
    this.demanded = true;
    this.cutNow?.();
  }

  /** The next batch; null once a finite source is exhausted and everything was handed over. */
  async next(signal: AbortSignal): Promise<SourceBatch | null> {
    if (this.ended) return null;
    this.demanded = false;
    const { maxBytes, timeoutMs } = this.cfg;
    const maxMessages = this.target;
    const chunks: SourceChunk[] = [];
    let count = 0;
    let bytes = 0;
    // Whether the batch was cut because it filled up (by count or bytes), for the ramp.
    let filled = false;
    // Until the first message: how long to wait before handing back an empty batch.
    let deadline = this.clock.now() + timeoutMs;
    while (!signal.aborted && count < maxMessages && bytes < maxBytes) {
      if (count > 0 && (this.demanded || this.clock.now() >= deadline)) break;
      const chunk = await this.poll({ maxMessages: maxMessages - count, maxBytes: maxBytes - bytes, strict: count > 0 }, deadline, count > 0, signal);
      if (chunk === null) {
        this.ended = true;
        if (count === 0) return null;
        break;
      }
      const n = chunk.messages.length;
      if (n === 0 && chunk.full) {
        filled = true;
        break;
      }
      if (n === 0) {
        if (count === 0 && this.clock.now() >= deadline) break;
        continue;
      }
      if (count === 0) deadline = this.clock.now() + timeoutMs;
      chunks.push(chunk);
      count += n;
      bytes += chunk.bytes ?? payloadBytes(chunk);
      if (chunk.full) filled = true;
      if (this.demanded || chunk.full) break;
    }
    this.ramp(filled || count >= maxMessages || bytes >= maxBytes);
    return join(chunks, bytes);
  }

  /** Doubles the next batch's count after a batch that filled up (a backlog); back to the start after one cut short by time or demand. */
  private ramp(filled: boolean): void {
    this.target = filled ? Math.min(this.cfg.maxMessages, this.target * 2) : this.rampStart();
  }

  /** One poll, cut short at `deadline`, by `signal`, or (once the batch holds a message) by demand. */
  private async poll(limits: PollLimits, deadline: number, holding: boolean, signal: AbortSignal): Promise<SourceChunk | null> {
    const ctl = new AbortController();
    const abort = () => ctl.abort();
    const cancelTimer = this.clock.after(deadline - this.clock.now(), abort);
    signal.addEventListener('abort', abort, { once: true });
    if (holding) this.cutNow = abort;
    try {
      return await this.source.poll(limits, ctl.signal);
    } finally {
      this.cutNow = undefined;
      cancelTimer();
      signal.removeEventListener('abort', abort);
    }
  }
}

function payloadBytes(chunk: SourceChunk): number {
  const b = chunk.block;
  if (b) {
    let n = 0;
    for (let i = 0; i < b.starts.length; i++) n += b.ends[i] - b.starts[i];
    return n;
  }
  let n = 0;
  for (const m of chunk.messages) n += Buffer.byteLength(m.payload);
  return n;
}

/** The chunks as one batch; their blocks joined into one when they all have one, with one separator. */
function join(chunks: SourceChunk[], bytes: number): SourceBatch {
  if (chunks.length === 0) return { messages: [], bytes: 0, position: undefined, chunks };
  const first = chunks[0];
  const last = chunks[chunks.length - 1];
  const base = { bytes, position: last.position, first: first.first, last: last.last, chunks, ...(first.origin ? { origin: first.origin } : {}) };
  if (chunks.length === 1) return { ...base, messages: first.messages, ...(first.block ? { block: first.block } : {}) };
  const messages = chunks.flatMap((c) => c.messages);
  const block = joinBlocks(chunks.map((c) => c.block));
  return { ...base, messages, ...(block ? { block } : {}) };
}

function joinBlocks(blocks: (PayloadBlock | undefined)[]): PayloadBlock | undefined {
  const sep = blocks[0]?.separator ?? 0x0a;
  let size = 0;
  let count = 0;
  for (const b of blocks) {
    if (!b || (b.separator ?? 0x0a) !== sep) return undefined;
    size += b.ends.length ? b.ends[b.ends.length - 1] - b.starts[0] + 1 : 0;
    count += b.starts.length;
  }
  const data = Buffer.allocUnsafe(size);
  const starts = new Uint32Array(count);
  const ends = new Uint32Array(count);
  let at = 0;
  let i = 0;
  for (const b of blocks as PayloadBlock[]) {
    if (!b.starts.length) continue;
    const from = b.starts[0];
    const to = b.ends[b.ends.length - 1];
    b.data.copy(data, at, from, to);
    for (let k = 0; k < b.starts.length; k++, i++) {
      starts[i] = b.starts[k] - from + at;
      ends[i] = b.ends[k] - from + at;
    }
    at += to - from;
    data[at++] = sep;
  }
  return { data: data.subarray(0, Math.max(0, at - 1)), starts, ends, ...(sep !== 0x0a ? { separator: sep } : {}) };
}
