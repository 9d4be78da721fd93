import { tpKey, type KafkaPosition, type TopicPartition } from './kafka-fetch-queue.js';

/** One partition's offset to commit: the next offset to read, as kafkajs' commitOffsets takes it. */
export interface OffsetCommit {
  topic: string;
  partition: number;
  offset: string;
}

/**
 * What became of an acked ticket: its offset went out in a commit that the broker took
 * (`committed`) or refused (`failed`), or it was not to be committed (`skipped`: its partition
 * changed hands, or a new generation began, since it was handed out; or the caller said so).
 */
export type CommitOutcome = 'committed' | 'failed' | 'skipped';

/** Messages of one partition handed to the engine: offsets `first` to `last`. */
export interface Ticket {
  readonly topic: string;
  readonly partition: number;
  readonly first: number;
  readonly last: number;
}

interface TicketState extends Ticket {
  readonly tp: string;
  readonly generation: number;
  acked: boolean;
  commit: boolean;
  readonly outcome: Promise<CommitOutcome>;
  settle: (o: CommitOutcome) => void;
}

/**
 * Which offsets are safe to commit, and commits them.
 *
 * Every run of messages handed to the engine gets a ticket, in offset order per partition.
 * A partition's offset moves only over a prefix of acked tickets (an ack that comes before an
 * earlier ticket's waits for it), so a commit never passes a message that is not durable. Only
 * tickets handed out in the current generation, of a partition assigned in it, are committed:
 * a generation this worker never saw (it was dropped from the group and joined again) may have
 * had another owner commit further, and the broker takes a commit under the new generation.
 * Acked tickets of older generations still move the durable position (what the WAL holds).
 *
 * Commits go out one request at a time; offsets acked meanwhile are coalesced into the next.
 */
export class KafkaOffsetCommitter {
  private generation = 0;
  private owned = new Set<string>();
  /** Per partition, tickets handed out and not acked, or acked behind an unacked one, in order. */
  private readonly lanes = new Map<string, TicketState[]>();
  /** Last offset handed out per partition (a ticket must start after it). */
  private readonly handedTo = new Map<string, number>();
  /** Next offset after the acked prefix, per partition: what the WAL holds. */
  private readonly durableAt = new Map<string, number>();
  private pending = new Map<string, OffsetCommit>();
  /** Highest offset pending or sent per partition in this generation: a commit never goes back. */
  private highest = new Map<string, number>();
  /** Told the outcome of the next request (their offsets are in `pending`). */
  private waiting: ((o: CommitOutcome) => void)[] = [];
  private running: Promise<void> | undefined;

  constructor(
    private readonly commit: (offsets: OffsetCommit[]) => Promise<void>,
    private readonly onError: (err: unknown, offsets: OffsetCommit[]) => void,
  ) {}

  /** A previous run's positions (from the WAL): durable, and nothing below them is handed out again. */
  restore(position: KafkaPosition): void {
    for (const [k, v] of Object.entries(position)) {
      if (typeof v !== 'number' || !Number.isFinite(v)) continue;
      this.durableAt.set(k, Math.max(this.durableAt.get(k) ?? 0, v));
      this.handedTo.set(k, Math.max(this.handedTo.get(k) ?? -1, v - 1));
    }
  }

  /**
   * A new generation with these partitions. Offsets acked in the one that ended and not sent
   * yet are not sent; tickets of it acked from now on are skipped.
   */
  assign(parts: TopicPartition[]): void {
    this.generation++;
    this.owned = new Set(parts.map((p) => tpKey(p.topic, p.partition)));
    this.pending = new Map();
    this.highest = new Map();
    for (const settle of this.waiting.splice(0)) settle('skipped');
  }

  /** Offsets `first`..`last` of a partition were handed to the engine; after what came before. */
  handOut(topic: string, partition: number, first: number, last: number): Ticket {
    const tp = tpKey(topic, partition);
    const before = this.handedTo.get(tp);
    if (!(last >= first) || (before !== undefined && first <= before)) {
      throw new Error(`Kafka offsets out of order: ${tp} offsets ${first}..${last} handed out after ${before}`);
    }
    this.handedTo.set(tp, last);
    let settle!: (o: CommitOutcome) => void;
    const outcome = new Promise<CommitOutcome>((r) => (settle = r));
    const t: TicketState = { topic, partition, first, last, tp, generation: this.generation, acked: false, commit: true, outcome, settle };
    let lane = this.lanes.get(tp);
    if (!lane) this.lanes.set(tp, (lane = []));
    lane.push(t);
    return t;
  }

  /**
   * The ticket's messages are durable. Resolves once its offset was committed (or the commit
   * failed), or at once when it is skipped; `commit` false: durable, never committed.
   */
  ack(ticket: Ticket, commit = true): Promise<CommitOutcome> {
    const t = ticket as TicketState;
    if (t.acked) return t.outcome;
    t.acked = true;
    t.commit = commit;
    const lane = this.lanes.get(t.tp);
    let offset: number | undefined;
    while (lane && lane.length > 0 && lane[0].acked) {
      const x = lane.shift()!;
      this.durableAt.set(x.tp, Math.max(this.durableAt.get(x.tp) ?? 0, x.last + 1));
      if (x.commit && x.generation === this.generation && this.owned.has(x.tp)) {
        offset = x.last + 1;
        this.waiting.push(x.settle);
      } else {
        x.settle('skipped');
      }
    }
    if (lane?.length === 0) this.lanes.delete(t.tp);
    if (offset !== undefined) this.enqueue({ topic: t.topic, partition: t.partition, offset: String(offset) });
    return t.outcome;
  }

  /**
   * Commits offsets known durable otherwise (a previous run's WAL position, where the group's
   * committed offset is behind it), for partitions assigned now, each only if it is past what
   * this generation committed or is committing already. Resolves with the offsets that went
   * out and the outcome ('skipped' when none did).
   */
  async commitAhead(offsets: OffsetCommit[]): Promise<{ outcome: CommitOutcome; offsets: OffsetCommit[] }> {
    const taken = offsets.filter((o) => this.owned.has(tpKey(o.topic, o.partition)) && Number(o.offset) > (this.highest.get(tpKey(o.topic, o.partition)) ?? -1));
    if (taken.length === 0) return { outcome: 'skipped', offsets: [] };
    const outcome = new Promise<CommitOutcome>((r) => this.waiting.push(r));
    for (const o of taken) this.enqueue(o);
    return { outcome: await outcome, offsets: taken };
  }

  private enqueue(o: OffsetCommit): void {
    const k = tpKey(o.topic, o.partition);
    this.highest.set(k, Math.max(this.highest.get(k) ?? -1, Number(o.offset)));
    this.pending.set(k, { ...o, offset: String(this.highest.get(k)) });
    this.running ??= this.loop();
  }

  /** Next offset after the acked messages, per partition (the restored position included). */
  durable(): KafkaPosition {
    return Object.fromEntries(this.durableAt);
  }

  /** Resolves once no commit is pending or in flight. */
  async idle(): Promise<void> {
    while (this.running) await this.running;
  }

  private async loop(): Promise<void> {
    try {
      while (this.pending.size > 0) {
        const offsets = [...this.pending.values()];
        this.pending = new Map();
        const told = this.waiting.splice(0);
        let outcome: CommitOutcome = 'committed';
        try {
          await this.commit(offsets);
        } catch (err) {
          outcome = 'failed';
          this.onError(err, offsets);
        }
        for (const settle of told) settle(outcome);
      }
    } finally {
      this.running = undefined;
    }
  }
}
