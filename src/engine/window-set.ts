import path from 'node:path';
import type { Logger } from 'pino';
import { SluiceError, errorMessage } from '../errors.js';
import type { RawMessage } from '../connectors/types.js';
import { backoff, sleep } from '../util/retry.js';
import type { PartitionRun } from './decoder.js';
import type { PartitionWrite, PgWindowStore } from './window-store.js';
import type { DedupOperator } from './dedup.js';
import type { JoinOperator } from './joins.js';
import type { ViewOperator } from './views.js';
import type { WindowCheckpoint, WindowOperator } from './windows.js';

/** A model that keeps state between batches: a windowed aggregation, a stream join, a deduplication or a materialised view. */
export type StateOperator = WindowOperator | JoinOperator | DedupOperator | ViewOperator;

/**
 * The windowed models of a run, their state together. By default the state lives in the
 * worker's WAL directory alone. With a shared state store (sluice.yml `window_state`), each
 * source partition's state is also kept there, so that a partition moving to another worker of
 * the consumer group takes its state along:
 *
 * - before a batch (or a windows pass) runs, begin() locks the store rows of the partitions
 *   this worker holds, drops those another worker has claimed since and those the source no
 *   longer reads (writing their last state first), claims the partitions the source newly
 *   reads (loading their state), and says which of the batch's messages to skip: those of a
 *   partition not held, and those below a claimed partition's offset (its previous owner's WAL
 *   has them);
 * - the batch runs; before its WAL commit (which records the state with each partition's next
 *   offset), write() writes the partitions whose state changed, in the store's transaction;
 * - after the WAL commit, publish() commits that transaction, before the batch is acked (so the
 *   store is never behind the source's committed offset). A crash between the two commits is
 *   the one moment the store is a batch behind this worker's WAL (see docs/windows.md).
 */
export class WindowSet {
  private store?: PgWindowStore;
  private log?: Logger;
  /** Per claimed partition: messages below this offset were handled by its previous owner. */
  private readonly floors = new Map<string, number>();
  /** This batch's next offset per partition (store mode). */
  private offsets = new Map<string, number>();
  /** What was last written to the store per model and partition (its offset, fired, max). */
  private readonly written = new Map<string, string>();
  /** Partitions claimed in the open transaction (not committed in the store yet). */
  private claimed = new Set<string>();
  private locked = false;
  /** Partitions claimed since the start (a metric). */
  claims = 0;
  /** What write() wrote in the open transaction (publish() commits it). */
  private staged?: PartitionWrite[];

  constructor(
    readonly ops: Map<string, StateOperator>,
    private dir = '',
  ) {}

  get size(): number {
    return this.ops.size;
  }

  get(model: string): StateOperator | undefined {
    return this.ops.get(model);
  }

  /** Keeps each source partition's state in `store` too (before restore()). */
  useStore(store: PgWindowStore, log: Logger): void {
    this.store = store;
    this.log = log;
    for (const op of this.ops.values()) op.partitioned = true;
  }

  /** True with a shared state store. */
  get stored(): boolean {
    return this.store !== undefined;
  }

  private dirOf(model: string): string {
    return path.join(this.dir, 'state', model);
  }

  private get tmpDir(): string {
    return path.join(this.dir, 'state');
  }

  async restore(cp: Record<string, WindowCheckpoint> | undefined, walDir: string): Promise<void> {
    this.dir = walDir;
    for (const [m, op] of this.ops) await op.restore(cp?.[m], this.dirOf(m));
  }

  /** The partitions held (store mode). */
  private held(): string[] {
    return [...new Set([...this.ops.values()].flatMap((op) => [...op.held().keys()]))];
  }

  private async drop(part: string): Promise<void> {
    for (const [m, op] of this.ops) {
      await op.dropPart(part);
      this.written.delete(`${m}\0${part}`);
    }
    this.floors.delete(part);
  }

  /**
   * Store mode, before a batch or a windows pass: see the class comment. `assigned`: the
   * partitions the source reads now; `messages` and `runs`: the batch's. Returns the indexes
   * of the messages to skip. Retries what fails in the store until it works or `signal` aborts.
   */
  async begin(assigned: string[] | undefined, messages: RawMessage[], runs: PartitionRun[] | undefined, signal: AbortSignal): Promise<Set<number>> {
    this.offsets = new Map();
    if (!this.store) return new Set();
    await this.untilItWorks('claiming partitions', signal, () => this.claim(assigned));
    const skip = new Set<number>();
    const held = new Set(this.held());
    for (const r of runs ?? []) {
      const floor = this.floors.get(r.part);
      for (let i = r.lo; i <= r.hi; i++) {
        if (!held.has(r.part)) {
          skip.add(i);
          continue;
        }
        const offset = Number((messages[i].coords as { offset?: unknown }).offset);
        if (floor !== undefined && offset < floor) {
          skip.add(i);
          continue;
        }
        this.offsets.set(r.part, Math.max(this.offsets.get(r.part) ?? 0, offset + 1));
      }
    }
    if (skip.size) this.log?.info({ messages: skip.size }, 'skipping messages of partitions whose window state another worker holds, or held past them');
    return skip;
  }

  private async claim(assigned: string[] | undefined): Promise<void> {
    const store = this.store!;
    const models = [...this.ops.keys()];
    // Before the source knows its assignment (a first join), the partitions held stay held.
    const now = new Set(assigned ?? this.held());
    // First, in a transaction of its own: the partitions the source no longer reads. Their last
    // state goes to the store (when they are still this worker's) before they are let go.
    const revoked = this.held().filter((p) => !now.has(p));
    if (revoked.length) {
      const current = await store.begin(models, revoked);
      try {
        for (const part of revoked) if ((await this.ownership(part, current)) === 'mine') await store.write(await this.writesOf(part, true));
        await store.finish(true);
      } catch (err) {
        await store.finish(false).catch(() => {});
        throw err;
      }
      for (const part of revoked) await this.drop(part);
      this.log?.info({ partitions: revoked }, 'partitions revoked: their window state is left in the store for their next owner');
    }
    // A partition held without an epoch was never claimed (state from before the store): claimed now.
    for (const part of this.held()) if ([...this.ops.values()].some((op) => op.held().get(part)?.epoch === undefined)) await this.drop(part);
    // Then the batch's transaction: the partitions held stay locked until publish().
    const keep = this.held();
    // The source's assignment decides: a partition it reads is claimed, even from a worker that
    // has not yet seen it go (that one finds it lost at its next batch, and lets it go).
    const claims = [...now].filter((p) => !keep.includes(p)).sort();
    const again = await store.begin(models, [...keep, ...claims]);
    this.locked = true;
    this.claimed = new Set();
    this.staged = undefined;
    for (const part of keep) {
      if ((await this.ownership(part, again)) === 'lost') {
        this.log?.warn({ partition: part }, "another worker claimed this partition's window state; it is claimed back (the source still assigns it here)");
        await this.drop(part);
        claims.push(part);
      }
    }
    for (const part of claims) {
      const snaps = await store.claim(models, part);
      let floor: number | undefined;
      for (const [m, op] of this.ops) {
        const snap = snaps.get(m)!;
        await op.loadPart(part, snap, this.tmpDir);
        if (snap.offset !== null) floor = Math.max(floor ?? 0, snap.offset);
        this.written.set(`${m}\0${part}`, JSON.stringify([snap.offset, snap.fired, snap.max]));
      }
      if (floor !== undefined) this.floors.set(part, floor);
      else this.floors.delete(part);
      this.claimed.add(part);
      this.claims++;
      this.log?.info({ partition: part, offset: floor ?? null }, "claimed a partition's window state");
    }
  }

  /**
   * Whether a partition held is still this worker's: the store has it under this worker's
   * epoch; or under an older epoch, whoever's (a claim of this worker whose transaction failed
   * after the batch that ran with it committed: epochs only grow by claims, so nobody claimed it
   * since): it is taken back.
   */
  private async ownership(part: string, current: Map<string, { owner: string; epoch: number }>): Promise<'mine' | 'lost'> {
    const store = this.store!;
    let back = false;
    for (const [m, op] of this.ops) {
      const epoch = op.held().get(part)?.epoch;
      const row = current.get(`${m}\0${part}`);
      if (epoch === undefined) return 'lost';
      if (row && row.epoch === epoch && row.owner === store.worker) continue;
      if (!row || row.epoch < epoch) {
        back = true;
        continue;
      }
      return 'lost';
    }
    if (back) for (const [m, op] of this.ops) await store.reclaim(m, part, op.held().get(part)!.epoch!);
    return 'mine';
  }

  /** The store writes of a partition: each model whose state changed since its last write (`all`: each model). */
  private async writesOf(part: string, all = false): Promise<PartitionWrite[]> {
    const out: PartitionWrite[] = [];
    for (const [m, op] of this.ops) {
      const st = op.heldAfter().get(part);
      if (!st || st.epoch === undefined) continue;
      const meta = JSON.stringify([st.offset ?? null, Number.isFinite(st.fired) ? st.fired : null, st.max]);
      const rows = op.dirtyAfter(part);
      if (!all && !rows && this.written.get(`${m}\0${part}`) === meta) continue;
      out.push({
        model: m,
        part,
        epoch: st.epoch,
        offset: st.offset ?? null,
        fired: Number.isFinite(st.fired) ? (st.fired as number) : null,
        max: st.max,
        revisions: op.revisionsOf(),
        ...(rows || all ? { rows: await op.exportPart(part, this.tmpDir) } : {}),
      });
    }
    return out;
  }

  /**
   * Store mode, after the batch is staged and before its WAL commit: writes the partitions whose
   * state changes, in the open transaction. When the transaction was lost (the connection
   * dropped), the partitions are locked again first; one that another worker claimed meanwhile
   * stops the run before anything of the batch is committed (a restart goes on from the last
   * commit). Retries until it works or `signal` aborts.
   */
  async write(signal: AbortSignal): Promise<void> {
    if (!this.store) return;
    const store = this.store;
    await this.untilItWorks('writing window state', signal, async () => {
      if (!this.locked) {
        const current = await store.begin([...this.ops.keys()], this.held());
        this.locked = true;
        for (const part of this.held()) {
          if ((await this.ownership(part, current)) === 'lost') {
            throw new SluiceError(
              'INTERNAL',
              `another worker claimed partition ${part}'s window state while this worker ran a batch of it: the batch is not committed; a restart goes on from the last commit`,
            );
          }
          // Claims the lost transaction undid are taken back above; their state is written whole.
          for (const op of this.ops.values()) op.rowsDirty.add(part);
        }
      }
      const writes: PartitionWrite[] = [];
      for (const part of this.held()) writes.push(...(await this.writesOf(part, this.claimed.has(part))));
      await store.write(writes);
      this.staged = writes;
    });
  }

  /**
   * Store mode, at start, before the source is opened: the state of the partitions this worker
   * held at its last commit goes to the store (a crash may have come between that commit and
   * the store's), so that the store is not behind the position the source commits at once.
   * Partitions another worker has claimed since are let go.
   */
  async resync(signal: AbortSignal): Promise<void> {
    if (!this.store || this.held().length === 0) return;
    const store = this.store;
    await this.untilItWorks('writing window state at start', signal, async () => {
      const current = await store.begin([...this.ops.keys()], this.held());
      this.locked = true;
      const writes: PartitionWrite[] = [];
      const lost: string[] = [];
      for (const part of this.held()) {
        if ((await this.ownership(part, current)) === 'lost') lost.push(part);
        else writes.push(...(await this.writesOf(part, true)));
      }
      await store.write(writes);
      await store.finish(true);
      this.locked = false;
      this.wrote(writes);
      for (const part of lost) await this.drop(part);
      if (lost.length) this.log?.info({ partitions: lost }, 'partitions another worker claimed while this one was down: their state here is let go');
    });
  }

  /** Store mode: how many partitions' state this worker holds. */
  get partitionsHeld(): number {
    return this.held().length;
  }

  /** Store mode: the source's assignment differs from the partitions held (a windows pass claims or lets go). */
  assignmentChanged(assigned: string[] | undefined): boolean {
    if (!this.store || assigned === undefined) return false;
    const held = this.held();
    return held.length !== assigned.length || assigned.some((p) => !held.includes(p));
  }

  /**
   * Store mode, after the batch's WAL commit and commit(): commits what write() wrote (or, after
   * a failure, locks the partitions again and writes them whole) before the batch is acked.
   * Retries until it works or `signal` aborts.
   */
  async publish(signal: AbortSignal): Promise<void> {
    if (!this.store) return;
    const store = this.store;
    await this.untilItWorks('writing window state', signal, async () => {
      if (this.locked && this.staged) {
        const writes = this.staged;
        await store.finish(true);
        this.locked = false;
        this.staged = undefined;
        this.wrote(writes);
        return;
      }
      if (!this.locked) {
        // A failed attempt's transaction is gone: lock again and check the partitions are still ours.
        const current = await store.begin([...this.ops.keys()], this.held());
        this.locked = true;
        for (const part of this.held()) if ((await this.ownership(part, current)) === 'lost') await this.drop(part);
        // Claims the failed transaction undid are taken back above; their state is written whole.
        for (const part of this.held()) for (const op of this.ops.values()) op.rowsDirty.add(part);
      }
      const writes: PartitionWrite[] = [];
      for (const part of this.held()) writes.push(...(await this.writesOf(part, this.claimed.has(part))));
      await store.write(writes);
      await store.finish(true);
      this.locked = false;
      this.wrote(writes);
    });
  }

  /** After a store commit: what it holds now. */
  private wrote(writes: PartitionWrite[]): void {
    this.claimed = new Set();
    for (const w of writes) {
      this.written.set(`${w.model}\0${w.part}`, JSON.stringify([w.offset, w.fired, w.max]));
      if (w.rows) this.ops.get(w.model)!.rowsDirty.delete(w.part);
    }
  }

  private async untilItWorks(what: string, signal: AbortSignal, fn: () => Promise<void>): Promise<void> {
    const pause = backoff({ initialMs: 250, maxMs: 10_000 });
    for (let attempt = 1; ; attempt++) {
      try {
        await fn();
        return;
      } catch (err) {
        this.locked = false;
        this.staged = undefined;
        await this.store!.finish(false).catch(() => {});
        if (signal.aborted || (err instanceof SluiceError && err.code === 'INTERNAL')) throw err;
        const delayMs = pause(attempt);
        this.log?.warn({ err: new Error(errorMessage(err)), attempt, retry_in_ms: delayMs }, `window state store: ${what} failed; retrying`);
        await sleep(delayMs, signal);
      }
    }
  }

  async stage(seq: number): Promise<Record<string, WindowCheckpoint> | undefined> {
    if (this.ops.size === 0) return undefined;
    if (!this.dir) throw new SluiceError('INTERNAL', 'window state staged before the WAL directory was known (restore() first)');
    const out: Record<string, WindowCheckpoint> = {};
    for (const [m, op] of this.ops) out[m] = await op.stage(seq, this.dirOf(m), this.offsets);
    return out;
  }

  async commit(): Promise<void> {
    for (const [m, op] of this.ops) await op.commit(this.dirOf(m));
  }

  async abandon(): Promise<void> {
    for (const [m, op] of this.ops) await op.abandon(this.dirOf(m));
  }

  async close(): Promise<void> {
    await this.store?.close();
  }

  holdsState(): boolean {
    return [...this.ops.values()].some((op) => op.holdsState());
  }

  /** True when time passing alone would close a window now (see WindowOperator.wouldAdvance). */
  wouldAdvance(): boolean {
    return [...this.ops.values()].some((op) => op.wouldAdvance());
  }

  /** True when a model's windows close with time alone: processing time, or partitions that may go idle. */
  get ticks(): boolean {
    return this.ops.size > 0;
  }

  async stats(model: string): Promise<{ rows: number; windows: number; bytes: number }> {
    return this.ops.get(model)!.stats(this.dirOf(model));
  }
}
