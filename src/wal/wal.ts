import fsp from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import { crashPoint } from '../util/crash-point.js';
import { fsyncDir, fsyncFile, isTempName, writeFileAtomic } from '../util/fs-durable.js';
import { systemClock, type Clock } from '../util/clock.js';

/** The most WAL segments one flush reads (see beginFlush). */
export const MAX_SEGMENTS_PER_FLUSH = 64;

export interface ModelWalState {
  /** Every segment with seq <= flushedSeq is in the sinks. */
  flushedSeq: number;
  /** A flush that was started: exactly these segments under this name, retried until done. */
  inflight?: {
    name: string;
    lastSeq: number;
    /** Sinks that have this flush durably (or whose on_error: dlq took it): never written again. */
    done?: string[];
  };
}

export interface WalState {
  version: 2;
  /** Sequence number of the last committed batch. */
  seq: number;
  /**
   * What the engine committed with the last batch, as it gave it (the source position, the DLQ
   * mark, the decode schema, a stateful operator's state, ...). The WAL stores it atomically with
   * the batch's segments and hands it back at open; it never looks inside.
   */
  checkpoint: unknown;
  models: Record<string, ModelWalState>;
}

/** state.json as sluice before checkpoints wrote it: the engine's fields at the top level. */
interface WalStateV1 {
  version: 1;
  seq: number;
  position?: unknown;
  dlq?: unknown;
  structure?: unknown;
  schemas?: unknown;
  models: Record<string, ModelWalState>;
}

export interface Segment {
  model: string;
  seq: number;
  first: string;
  last: string;
  file: string;
  bytes: number;
  /** When the segment was committed (ms since epoch), for max_age_seconds. */
  time: number;
}

const SEG = /^(\d{12})_([^_]+)_([^_]+)\.parquet$/;

/**
 * Durable staging between the source ack and the sinks. One directory per model holds
 * Parquet segments, one per committed batch; state.json (written atomically) is the commit
 * record: it holds the source position, the DLQ mark and what each model has flushed.
 * A segment is committed once state.seq >= its seq; anything newer is a torn batch.
 */
export class Wal {
  state: WalState = { version: 2, seq: 0, checkpoint: undefined, models: {} };
  private segments = new Map<string, Segment[]>();
  /** The state write in progress: writes go one at a time (models may flush concurrently). */
  private writing: Promise<void> = Promise.resolve();

  constructor(
    readonly dir: string,
    private readonly log: Logger,
    /** Stamps segments with their commit time (flush age); segments found at open() keep their files' mtime. */
    private readonly clock: Clock = systemClock,
  ) {}

  private get stateFile(): string {
    return path.join(this.dir, 'state.json');
  }

  modelDir(model: string): string {
    return path.join(this.dir, 'models', model);
  }

  /** Loads the state, sweeps temp files, drops torn and already-flushed segments. */
  async open(models: string[]): Promise<void> {
    await fsp.mkdir(path.join(this.dir, 'models'), { recursive: true });
    try {
      const text = await fsp.readFile(this.stateFile, 'utf8');
      const read = JSON.parse(text) as WalState | WalStateV1;
      if (read.version === 1) {
        // Written before checkpoints: its engine fields become the checkpoint, as the engine had them.
        const { position, dlq, structure, schemas } = read;
        this.state = { version: 2, seq: read.seq, checkpoint: { position, dlq, structure, schemas }, models: read.models };
      } else this.state = read;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
        throw new Error(`WAL state ${this.stateFile} is unreadable (${(err as Error).message}); move it away to start over`);
      }
    }
    for (const e of await fsp.readdir(this.dir)) {
      if (isTempName(e)) await fsp.rm(path.join(this.dir, e), { force: true });
    }
    const known = new Set([...models, ...(await fsp.readdir(path.join(this.dir, 'models')))]);
    for (const model of known) {
      const ms = (this.state.models[model] ??= { flushedSeq: 0 });
      const dir = this.modelDir(model);
      await fsp.mkdir(dir, { recursive: true });
      const segs: Segment[] = [];
      for (const name of await fsp.readdir(dir)) {
        const file = path.join(dir, name);
        if (isTempName(name)) {
          await fsp.rm(file, { force: true });
          continue;
        }
        const m = SEG.exec(name);
        if (!m) continue;
        const seq = Number(m[1]);
        if (seq > this.state.seq) {
          this.log.warn({ model, seq }, 'dropping WAL segment of a batch that never committed (it will be read again)');
          await fsp.rm(file, { force: true });
          continue;
        }
        if (seq <= ms.flushedSeq) {
          await fsp.rm(file, { force: true });
          continue;
        }
        const st = await fsp.stat(file);
        segs.push({ model, seq, first: m[2], last: m[3], file, bytes: st.size, time: st.mtimeMs });
      }
      segs.sort((a, b) => a.seq - b.seq);
      this.segments.set(model, segs);
    }
  }

  /** Drops a segment that cannot be read (a corrupt tail), keeping a copy aside. */
  async quarantine(seg: Segment, reason: string): Promise<void> {
    const dir = path.join(this.dir, 'corrupt');
    await fsp.mkdir(dir, { recursive: true });
    await fsp.rename(seg.file, path.join(dir, `${seg.model}-${path.basename(seg.file)}`));
    const list = this.segments.get(seg.model) ?? [];
    this.segments.set(
      seg.model,
      list.filter((s) => s !== seg),
    );
    this.log.warn({ model: seg.model, seq: seg.seq, reason }, 'dropped a corrupt WAL segment (moved to wal/corrupt)');
  }

  nextSeq(): number {
    return this.state.seq + 1;
  }

  /** Where to stage a model's rows for batch `seq`, and the final name once fsynced. */
  segmentPaths(model: string, seq: number, first: string, last: string): { tmp: string; final: string } {
    const dir = this.modelDir(model);
    const base = `${String(seq).padStart(12, '0')}_${first}_${last}.parquet`;
    return { tmp: path.join(dir, `.${base}.tmp`), final: path.join(dir, base) };
  }

  /** Makes a staged segment durable and visible (it counts only after commit()). */
  async publishSegment(model: string, seq: number, first: string, last: string, tmp: string, final: string): Promise<void> {
    await fsyncFile(tmp);
    await fsp.rename(tmp, final);
    const st = await fsp.stat(final);
    (this.segments.get(model) ?? this.segments.set(model, []).get(model)!).push({
      model,
      seq,
      first,
      last,
      file: final,
      bytes: st.size,
      time: this.clock.now(),
    });
  }

  /**
   * Commits batch `seq` with the engine's `checkpoint`: after this returns, its segments and the
   * checkpoint survive a crash, together.
   */
  async commit(seq: number, checkpoint: unknown, touched: string[]): Promise<void> {
    await Promise.all(touched.map((m) => fsyncDir(this.modelDir(m))));
    const before = { seq: this.state.seq, checkpoint: this.state.checkpoint };
    this.state.seq = seq;
    this.state.checkpoint = checkpoint;
    try {
      await this.writeState();
    } catch (err) {
      // Not committed (a full disk, say): the state stays what is on disk, so that the batch
      // can be tried again with the same sequence number.
      Object.assign(this.state, before);
      throw err;
    }
  }

  /**
   * Forgets a batch that did not commit: removes its staged and published segments (those
   * after the committed seq) from disk and from the pending lists, so that the batch can be
   * staged again. What could not be removed is swept at the next open().
   */
  async abandon(): Promise<void> {
    const committed = this.state.seq;
    for (const [model, list] of this.segments) {
      const gone = list.filter((s) => s.seq > committed);
      if (gone.length === 0) continue;
      this.segments.set(
        model,
        list.filter((s) => s.seq <= committed),
      );
      for (const s of gone) await fsp.rm(s.file, { force: true }).catch(() => {});
    }
    for (const model of this.segments.keys()) {
      const dir = this.modelDir(model);
      const names = await fsp.readdir(dir).catch(() => [] as string[]);
      for (const name of names) {
        const seq = Number(/^\.?(\d{12})_/.exec(name)?.[1] ?? 0);
        if (seq > committed) await fsp.rm(path.join(dir, name), { force: true }).catch(() => {});
      }
    }
  }

  /**
   * Writes the state as it is when this write's turn comes, so it holds every change made
   * before the call (and maybe later ones: a change is made only once it may be recorded).
   */
  async writeState(): Promise<void> {
    const write = this.writing.then(() => writeFileAtomic(this.stateFile, JSON.stringify(this.state)));
    this.writing = write.catch(() => {});
    await write;
  }

  pending(model: string): Segment[] {
    return this.segments.get(model) ?? [];
  }

  modelsWithRows(): string[] {
    return [...this.segments].filter(([, list]) => list.length > 0).map(([m]) => m);
  }

  pendingBytes(model: string): number {
    return this.pending(model).reduce((n, s) => n + s.bytes, 0);
  }

  totalBytes(): number {
    let n = 0;
    for (const list of this.segments.values()) for (const s of list) n += s.bytes;
    return n;
  }

  /** Starts (or resumes) a flush of a model: the segments it covers and the output name. */
  async beginFlush(model: string): Promise<{ name: string; segments: Segment[]; done: string[] } | undefined> {
    const ms = (this.state.models[model] ??= { flushedSeq: 0 });
    const segs = this.pending(model);
    if (!ms.inflight) {
      if (segs.length === 0) return undefined;
      // A backlog (a sink down for a while) is delivered in several flushes of at most
      // MAX_SEGMENTS_PER_FLUSH segments: one read over all of them made memory grow with the
      // length of the outage.
      const last = segs[Math.min(segs.length, MAX_SEGMENTS_PER_FLUSH) - 1];
      ms.inflight = { name: `part-${segs[0].first}-${last.last}`, lastSeq: last.seq };
      await this.writeState();
      crashPoint('after-flush-intent');
    }
    const covered = segs.filter((s) => s.seq <= ms.inflight!.lastSeq);
    if (covered.length === 0) {
      ms.inflight = undefined;
      await this.writeState();
      return undefined;
    }
    return { name: ms.inflight.name, segments: covered, done: ms.inflight.done ?? [] };
  }

  /**
   * Records that `sink` has the model's inflight flush, so a retry of the flush (or a restart)
   * writes only to the sinks still missing. `checkpoint`: the engine's new checkpoint, when the
   * flush changed it (its rows were dead-lettered instead), committed in the same state write.
   */
  async markSinkDone(model: string, sink: string, checkpoint?: { checkpoint: unknown }): Promise<void> {
    const inflight = this.state.models[model]?.inflight;
    if (!inflight) return;
    inflight.done = [...new Set([...(inflight.done ?? []), sink])];
    if (checkpoint) this.state.checkpoint = checkpoint.checkpoint;
    await this.writeState();
  }

  /** Records a flush as delivered, then removes its segments. */
  async endFlush(model: string): Promise<void> {
    const ms = this.state.models[model];
    if (!ms?.inflight) return;
    const last = ms.inflight.lastSeq;
    const { flushedSeq, inflight } = ms;
    ms.flushedSeq = last;
    ms.inflight = undefined;
    try {
      await this.writeState();
    } catch (err) {
      // Not recorded: the flush stays in flight (its sinks marked done), to be ended again.
      ms.flushedSeq = flushedSeq;
      ms.inflight = inflight;
      throw err;
    }
    const segs = this.pending(model);
    let n = 0;
    for (const s of segs) {
      if (s.seq > last) continue;
      if (n++ === 1) crashPoint('mid-truncate');
      await fsp.rm(s.file, { force: true });
    }
    this.segments.set(
      model,
      segs.filter((s) => s.seq > last),
    );
  }

  hasInflight(model: string): boolean {
    return Boolean(this.state.models[model]?.inflight);
  }
}
