import type { PollLimits, Source, SourceChunk, SourceLag } from '../connectors/types.js';

// The source of a pipeline that reads two sources (a stream join of two sources): one Source
// over both, so that the engine's batching, WAL commit and acks stay as they are for one.
//
// - Every batch holds the messages of one source (its chunks carry `origin`), so that each is
//   decoded by its own source's rules into its own schema: once a batch holds a source's
//   messages, a poll that would hand over the other's ends the batch instead (an empty chunk
//   marked full).
// - A fresh batch takes whichever source has messages at hand, the one not taken last first,
//   so that both are read in turn when both have a backlog (a join's buffers stay at its bound).
// - The position is both sources' positions, `{ [source]: position }`, each the position after
//   the last chunk handed over: what a commit stores is where each source resumes.
// - A poll of one source may still be in flight when the batch is cut: its chunk waits for the
//   next poll (never two polls of one source at once), and an ack goes to its own source.

interface Side {
  name: string;
  source: Source;
  /** The poll of this source in flight, if any. */
  inflight?: Promise<void>;
  ctl?: AbortController;
  /** A chunk polled and not handed over yet. */
  stash?: SourceChunk;
  /** The source has said null: it is exhausted. */
  ended: boolean;
  /** A poll that failed: thrown by the next poll. */
  error?: unknown;
  /** Its poll came back empty and full: the batch being formed has no room for its next message. */
  cut?: boolean;
}

/** What a merged chunk's ackToken holds: the chunk its source handed over. */
interface MergedToken {
  side: number;
  chunk: SourceChunk;
}

export class MergedSource implements Source {
  private readonly sides: Side[];
  private readonly positions: Record<string, unknown> = {};
  /** The source of the batch being formed (of the last chunk handed over). */
  private current = -1;
  /** A settled poll wakes the poll waiting for one. */
  private wake?: () => void;
  /** Polls settled so far: a poll waits for the next to settle. */
  private settled = 0;

  constructor(sources: { name: string; source: Source }[]) {
    this.sides = sources.map((s) => ({ ...s, ended: false }));
  }

  async open(position: unknown): Promise<void> {
    const at = position && typeof position === 'object' ? (position as Record<string, unknown>) : {};
    for (const s of this.sides) {
      this.positions[s.name] = at[s.name];
      await s.source.open(at[s.name]);
    }
  }

  async poll(limits: PollLimits, signal: AbortSignal): Promise<SourceChunk | null> {
    for (;;) {
      for (const s of this.sides) {
        if (s.error !== undefined) {
          const e = s.error;
          s.error = undefined;
          throw e;
        }
      }
      const seen = this.settled;
      const handed = this.handOver(limits);
      if (handed !== undefined) return handed;
      if (signal.aborted) return this.empty(false);
      // Poll what may have messages: while a batch of one source forms, only that source.
      const polling = limits.strict && this.current >= 0 ? [this.sides[this.current]] : this.sides;
      for (const s of polling) if (!s.ended && !s.stash && !s.inflight) this.start(s, limits);
      await new Promise<void>((resolve) => {
        const done = () => {
          signal.removeEventListener('abort', done);
          this.wake = undefined;
          resolve();
        };
        this.wake = done;
        signal.addEventListener('abort', done, { once: true });
        if (signal.aborted || this.settled !== seen) done();
      });
      // A poll of the other source that settled at the same moment is taken into account too.
      await new Promise((r) => setImmediate(r));
    }
  }

  /** What the poll hands over now: a chunk, the cut of the batch (empty, full), null at the end of both, or undefined to wait. */
  private handOver(limits: PollLimits): SourceChunk | null | undefined {
    const cur = this.current >= 0 ? this.sides[this.current] : undefined;
    if (limits.strict && cur) {
      if (cur.cut) {
        cur.cut = false;
        return this.empty(true);
      }
      if (cur.stash) return this.fits(cur.stash, limits) ? this.take(this.current) : this.empty(true);
      // The batch's source has nothing at hand, or has ended, and the other one has messages: the batch ends here.
      if (this.sides.some((s) => s !== cur && s.stash) || (cur.ended && !cur.inflight)) return this.sides.every((s) => s.ended && !s.stash) ? null : this.empty(true);
      return undefined;
    }
    const n = this.sides.length;
    for (let k = 1; k <= n; k++) {
      const i = (this.current + k + n) % n;
      if (this.sides[i].stash) return this.take(i);
    }
    if (this.sides.every((s) => s.ended && !s.inflight)) return null;
    return undefined;
  }

  /** Whether a chunk polled earlier (for a batch with more room) fits the room left in this one. */
  private fits(chunk: SourceChunk, limits: PollLimits): boolean {
    if (chunk.messages.length > limits.maxMessages) return false;
    return (chunk.bytes ?? 0) <= limits.maxBytes;
  }

  private take(i: number): SourceChunk {
    const s = this.sides[i];
    const chunk = s.stash!;
    s.stash = undefined;
    s.cut = false;
    this.current = i;
    this.positions[s.name] = chunk.position;
    const token: MergedToken = { side: i, chunk };
    // Output files are named from their first and last keys: each source's own, apart.
    const key = (k: string | undefined) => (k === undefined ? undefined : `${s.name}-${k}`);
    return { ...chunk, position: { ...this.positions }, ackToken: token, origin: s.name, first: key(chunk.first), last: key(chunk.last) };
  }

  private empty(full: boolean): SourceChunk {
    return { messages: [], position: { ...this.positions }, ...(full ? { full: true } : {}) };
  }

  private start(s: Side, limits: PollLimits): void {
    const ctl = new AbortController();
    s.ctl = ctl;
    s.inflight = s.source.poll({ ...limits }, ctl.signal).then(
      (chunk) => {
        if (chunk === null) s.ended = true;
        else if (chunk.messages.length > 0) s.stash = chunk;
        else if (chunk.full && limits.strict) s.cut = true;
      },
      (err: unknown) => {
        s.error = err ?? new Error('poll failed');
      },
    );
    void s.inflight.finally(() => {
      s.inflight = undefined;
      s.ctl = undefined;
      this.settled++;
      this.wake?.();
    });
  }

  async ack(chunk: SourceChunk): Promise<void> {
    const t = chunk.ackToken as MergedToken | undefined;
    if (!t) return; // an empty chunk: nothing to acknowledge
    await this.sides[t.side].source.ack(t.chunk);
  }

  /** The partitions each source reads (Source.partitions), by source. */
  partitionsBySource(): Map<string, string[] | undefined> {
    return new Map(this.sides.map((s) => [s.name, s.source.partitions?.()]));
  }

  partitions(): string[] | undefined {
    const all: string[] = [];
    for (const s of this.sides) {
      if (!s.source.partitions) continue;
      const p = s.source.partitions();
      if (p === undefined) return undefined;
      all.push(...p);
    }
    return all;
  }

  healthy(): boolean {
    return this.sides.every((s) => s.source.healthy?.() ?? true);
  }

  async lag(): Promise<SourceLag[]> {
    const out: SourceLag[] = [];
    for (const s of this.sides) if (s.source.lag) out.push(...(await s.source.lag()));
    return out;
  }

  /** Stops the polls in flight, then closes both sources (each once, the first error thrown). */
  async close(): Promise<void> {
    for (const s of this.sides) s.ctl?.abort();
    await Promise.all(this.sides.map((s) => s.inflight));
    let first: unknown;
    for (const s of this.sides) {
      try {
        await s.source.close();
      } catch (err) {
        first ??= err;
      }
    }
    if (first !== undefined) throw first;
  }
}
