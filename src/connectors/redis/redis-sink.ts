import type { DuckDBConnection } from '@duckdb/node-api';
import { SluiceError, errorMessage } from '../../errors.js';
import { ident } from '../../sql/quote.js';
import { idPrefix, jsonRowBatches, nullTemplateError, rowId, templateSql } from '../row-json.js';
import { withTimeout } from '../../util/with-timeout.js';
import type { ConnectorContext, Sink, SinkWrite } from '../types.js';
import type { RedisSinkConfig } from './redis-config.js';
import { connectRedis, redact } from './redis-streams-source.js';

// The few parts of node-redis the sink uses.
interface RedisBatchLike {
  addCommand(args: string[]): RedisBatchLike;
  exec(): Promise<unknown[]>;
  execAsPipeline(): Promise<unknown[]>;
}
interface RedisClientLike {
  readonly isReady: boolean;
  get(key: string): Promise<string | null>;
  multi(): RedisBatchLike;
  destroy(): void;
}

/**
 * Rows to Redis, `batch_rows` commands per round trip.
 * - `set`: SET <key template> <row JSON> [EX ttl_seconds], sent as a pipeline. Idempotent: a
 *   replayed flush writes the same values to the same keys (within a flush the last row of a
 *   key wins).
 * - `xadd`: XADD <stream> [MAXLEN ~ n] * <field> <row JSON> sluice_id <id>. Each batch of
 *   entries goes in one MULTI/EXEC together with the flush's progress marker
 *   (`sluice:xadd:<stream>:<prefix>/<model>/<flush name>` = rows written, expiring after
 *   dedupe_ttl_seconds); a replayed flush first reads the marker and skips the rows it counts.
 *   Effectively once while the marker lives (and as durable as Redis's own persistence).
 *   Entries get Redis's ids (`*`): ids derived from flush names could not be kept increasing.
 */
export class RedisSink implements Sink {
  readonly idempotent = true;
  private client?: RedisClientLike;
  private ok = true;
  private readonly prefix: string;

  constructor(
    private readonly cfg: RedisSinkConfig,
    private readonly ctx: ConnectorContext,
  ) {
    this.prefix = idPrefix(cfg.id_prefix, ctx.projectDir);
  }

  async connect(): Promise<void> {
    this.client = (await connectRedis(this.cfg.url, this.ctx.log, 'sink')) as unknown as RedisClientLike;
  }

  async write(w: SinkWrite, db: DuckDBConnection): Promise<void> {
    // A write given up on sends nothing more: its retry must not race it.
    const stop = new AbortController();
    try {
      // node-redis queues commands while it reconnects: a write waits at most timeout_ms. Its
      // queued commands may still run later; the retry is safe (SET is idempotent, an XADD batch
      // lands with its marker, which the retry reads after it).
      const work = this.cfg.mode === 'set' ? this.writeSet(w, db, stop.signal) : this.writeXadd(w, db, stop.signal);
      await withTimeout(work, this.cfg.timeout_ms, `no answer from Redis within ${this.cfg.timeout_ms} ms`);
      this.ok = true;
    } catch (err) {
      stop.abort();
      this.ok = false;
      if (err instanceof SluiceError) throw err;
      throw new SluiceError('SINK', `redis sink: ${this.cfg.mode} of ${w.model}/${w.name} to ${redact(this.cfg.url)} failed: ${errorMessage(err)}`, {
        cause: err,
        retryable: true,
      });
    }
  }

  private async writeSet(w: SinkWrite, db: DuckDBConnection, stop: AbortSignal): Promise<void> {
    const template = this.cfg.key!;
    const ttl = this.cfg.ttl_seconds ? ['EX', String(this.cfg.ttl_seconds)] : [];
    // delete_column: a row where it is true deletes its key (a pipeline keeps the rows' order: the last of a key wins).
    const del = this.cfg.delete_column ? [`CASE WHEN ${ident(this.cfg.delete_column)} IS TRUE THEN 'd' END`] : [];
    for await (const batch of jsonRowBatches(w, db, [templateSql(template), ...del], this.cfg.batch_rows)) {
      stop.throwIfAborted();
      const pipe = this.client!.multi();
      batch.rows.forEach((r, i) => {
        if (r[1] === null) throw nullTemplateError('redis', w, batch.first + i, 'key', template);
        pipe.addCommand(r[2] === 'd' ? ['DEL', r[1]] : ['SET', r[1], r[0]!, ...ttl]);
      });
      await pipe.execAsPipeline();
    }
  }

  private async writeXadd(w: SinkWrite, db: DuckDBConnection, stop: AbortSignal): Promise<void> {
    const template = this.cfg.stream!;
    const marker = `sluice:xadd:${template}:${this.prefix}/${w.model}/${w.name}`;
    const done = Number((await this.client!.get(marker)) ?? 0);
    if (done > 0) this.ctx.log.info({ model: w.model, flush: w.name, rows: done }, 'redis sink: skipping the rows of a replayed flush already in the stream');
    const trim = this.cfg.maxlen ? ['MAXLEN', '~', String(this.cfg.maxlen)] : [];
    for await (const batch of jsonRowBatches(w, db, [templateSql(template)], this.cfg.batch_rows)) {
      const end = batch.first + batch.rows.length;
      if (end <= done) continue;
      stop.throwIfAborted();
      const tx = this.client!.multi();
      batch.rows.forEach((r, i) => {
        const row = batch.first + i;
        if (row < done) return;
        if (r[1] === null) throw nullTemplateError('redis', w, row, 'stream', template);
        tx.addCommand(['XADD', r[1], ...trim, '*', this.cfg.field, r[0]!, 'sluice_id', rowId(this.prefix, w, row)]);
      });
      tx.addCommand(['SET', marker, String(end), 'EX', String(this.cfg.dedupe_ttl_seconds)]);
      await tx.exec();
    }
  }

  healthy(): boolean {
    return this.ok && Boolean(this.client?.isReady);
  }

  async close(): Promise<void> {
    this.client?.destroy();
    this.client = undefined;
  }
}
