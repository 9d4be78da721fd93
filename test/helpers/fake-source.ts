import type { PollLimits, RawMessage, Source, SourceChunk } from '../../src/connectors/types.js';

export interface FakeSourceOptions {
  /** The sortable key of a message, for the engine's output names (default `k<payload>`). */
  key?: (payload: string, ordinal: number) => string;
  /** The most messages one poll hands over (a broker's prefetch, say); default: all it holds. */
  maxPerPoll?: number;
  /** Called with each chunk as it is acked, before it is recorded (to look at the WAL then). */
  onAck?: (chunk: SourceChunk) => void | Promise<void>;
  /** Called with each chunk that holds messages, as it is handed over. */
  onPoll?: (chunk: SourceChunk) => void;
}

/**
 * A Source that holds the payloads a test pushed into it and hands them over as the Source
 * contract says: what it holds up to the limits, waiting only while it holds nothing, an empty
 * chunk when the poll is aborted, null once ended and drained. Records every poll's limits,
 * every ack and the position it was opened at. A chunk's position is `{ chunk: n }`, n counting
 * the chunks handed over since it was made.
 */
export class FakeSource implements Source {
  private held: string[] = [];
  private wake?: () => void;
  private ended = false;
  private seq = 0;
  private ordinal = 0;
  readonly polls: PollLimits[] = [];
  /** The payloads of each acked chunk, in ack order. */
  readonly acked: string[][] = [];
  /** The positions `open` was called with. */
  readonly opened: unknown[] = [];
  /** Messages handed over (acked or not). */
  handedOver = 0;
  closed = false;

  constructor(private readonly opts: FakeSourceOptions = {}) {}

  push(...payloads: string[]): void {
    this.held.push(...payloads);
    this.wake?.();
  }

  /** No more messages: polls return null once the held ones are handed over. */
  end(): void {
    this.ended = true;
    this.wake?.();
  }

  /** Messages pushed but not handed over yet. */
  get holding(): number {
    return this.held.length;
  }

  /** Every acked payload, in ack order. */
  get ackedPayloads(): string[] {
    return this.acked.flat();
  }

  async open(position: unknown): Promise<void> {
    this.opened.push(position);
  }

  async poll(limits: PollLimits, signal: AbortSignal): Promise<SourceChunk | null> {
    this.polls.push(limits);
    while (this.held.length === 0 && !this.ended && !signal.aborted) {
      await new Promise<void>((resolve) => {
        this.wake = resolve;
        signal.addEventListener('abort', () => resolve(), { once: true });
      });
      this.wake = undefined;
    }
    if (this.held.length === 0 && this.ended) return null;
    const most = Math.min(limits.maxMessages, this.opts.maxPerPoll ?? Infinity);
    let n = 0;
    let bytes = 0;
    while (n < this.held.length && n < most) {
      const len = Buffer.byteLength(this.held[n]);
      if ((n > 0 || limits.strict) && bytes + len > limits.maxBytes) break;
      bytes += len;
      n++;
    }
    const taken = this.held.splice(0, n);
    const key = this.opts.key ?? ((p: string) => `k${p}`);
    const ordinals = taken.map(() => ++this.ordinal);
    const messages: RawMessage[] = taken.map((payload, i) => ({ payload, coords: { ordinal: ordinals[i] } }));
    const id = ++this.seq;
    this.handedOver += n;
    const chunk: SourceChunk = {
      messages,
      bytes,
      // Full: it stopped at the byte limit (not at the count, nor at maxPerPoll).
      full: this.held.length > 0 && n < most,
      position: { chunk: id },
      first: n ? key(taken[0], ordinals[0]) : undefined,
      last: n ? key(taken[n - 1], ordinals[n - 1]) : undefined,
      ackToken: taken,
    };
    if (n) this.opts.onPoll?.(chunk);
    return chunk;
  }

  async ack(chunk: SourceChunk): Promise<void> {
    await this.opts.onAck?.(chunk);
    this.acked.push(chunk.ackToken as string[]);
  }

  async close(): Promise<void> {
    this.closed = true;
  }
}
