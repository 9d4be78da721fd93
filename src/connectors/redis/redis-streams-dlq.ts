import type { Logger } from 'pino';
import type { DeadLetter, DeadLetterQueue } from '../types.js';
import { connectRedis } from './redis-streams-source.js';
import type { RedisStreamsSourceConfig } from './redis-config.js';

type Client = Awaited<ReturnType<typeof connectRedis>>;

/**
 * Dead letters as entries of a Redis stream (default `<stream>:dlq`): the original entry's
 * fields, plus `sluice_error`, `sluice_stage`, `sluice_source` (stream and id), `sluice_model`
 * and `sluice_time`. XADD returns once Redis has the entry, before the original is acked.
 * The WAL commit records the last dead letter's id; on recovery, this worker's entries added
 * after it (by a batch whose commit never happened, and which is read again) are deleted, so
 * each dead letter appears once. Other workers' entries (`sluice_worker`) are left alone.
 */
export class RedisStreamsDeadLetterQueue implements DeadLetterQueue {
  private client?: Client;
  private last: string | undefined;

  constructor(
    private readonly cfg: RedisStreamsSourceConfig,
    readonly queue: string,
    private readonly log: Logger,
    private readonly worker: string,
  ) {}

  async open(): Promise<void> {
    this.client = await connectRedis(this.cfg.url, this.log, 'dlq');
  }

  async append(records: DeadLetter[]): Promise<void> {
    for (const r of records) {
      const original = (r.original as { message?: Record<string, string> } | undefined)?.message ?? { [this.fieldName()]: r.payload };
      const fields: Record<string, string> = {
        ...original,
        sluice_error: r.error,
        sluice_stage: r.stage,
        sluice_source: JSON.stringify(r.source),
        sluice_time: r.time,
        sluice_worker: this.worker,
        ...(r.model ? { sluice_model: r.model } : {}),
      };
      this.last = await this.client!.xAdd(this.queue, '*', fields);
    }
  }

  mark(): unknown {
    return this.last;
  }

  async recover(mark: unknown): Promise<void> {
    // No mark: no batch of this WAL ever dead-lettered anything; earlier entries are not ours to drop.
    if (typeof mark !== 'string') return;
    this.last = mark;
    const later = ((await this.client!.xRange(this.queue, `(${mark}`, '+')) ?? []).filter((e) => (e.message as Record<string, string>).sluice_worker === this.worker);
    if (later.length === 0) return;
    await this.client!.xDel(
      this.queue,
      later.map((e) => e.id),
    );
    this.log.warn({ entries: later.length }, 'dropped dead letters of a batch that never committed (it is read again)');
  }

  async inspect(limit: number): Promise<DeadLetter[]> {
    const entries = (await this.client!.xRange(this.queue, '-', '+', { COUNT: limit })) ?? [];
    return entries.map((e) => {
      const f = e.message as Record<string, string>;
      let source: Record<string, unknown> = {};
      try {
        source = JSON.parse(f.sluice_source ?? '{}') as Record<string, unknown>;
      } catch {
        // shown without coordinates
      }
      return {
        payload: this.cfg.field === '*' ? JSON.stringify(originalFields(f)) : (f[this.cfg.field] ?? ''),
        error: f.sluice_error ?? '',
        stage: (f.sluice_stage ?? 'decode') as DeadLetter['stage'],
        source: { ...source, dlq_id: e.id },
        ...(f.sluice_model ? { model: f.sluice_model } : {}),
        time: f.sluice_time ?? '',
      };
    });
  }

  /** Adds each dead letter's original fields back to `target` (default: the source stream), then deletes it here. */
  async replay(opts: { target?: string; limit?: number }): Promise<{ moved: number }> {
    const target = opts.target ?? this.cfg.stream;
    let moved = 0;
    const limit = opts.limit ?? Infinity;
    while (moved < limit) {
      const entries = (await this.client!.xRange(this.queue, '-', '+', { COUNT: Math.min(500, limit - moved) })) ?? [];
      if (entries.length === 0) break;
      for (const e of entries) {
        // A crash between the two leaves a copy in both: one duplicate, nothing lost.
        await this.client!.xAdd(target, '*', originalFields(e.message as Record<string, string>));
        await this.client!.xDel(this.queue, e.id);
        moved++;
      }
    }
    return { moved };
  }

  async close(): Promise<void> {
    this.client?.destroy();
    this.client = undefined;
  }

  private fieldName(): string {
    return this.cfg.field === '*' ? 'payload' : this.cfg.field;
  }
}

function originalFields(f: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(f).filter(([k]) => !k.startsWith('sluice_')));
}
