import type { DuckDBConnection } from '@duckdb/node-api';
import type { NatsConnection } from '@nats-io/transport-node';
import { jetstream, jetstreamManager, type JetStreamClient, type PubAck } from '@nats-io/jetstream';
import { SluiceError, errorMessage } from '../../errors.js';
import { idPrefix, jsonRowBatches, nullTemplateError, rowId, templateSql } from '../row-json.js';
import type { ConnectorContext, Sink, SinkWrite } from '../types.js';
import type { NatsSinkConfig } from './nats-config.js';
import { connectNats } from './nats-source.js';

/**
 * Rows as JSON messages published to JetStream: `batch_rows` publishes go out together, then
 * their acks (the stream has stored the message) are awaited; write() resolves only when every
 * row of the flush is acked. Every message carries `Nats-Msg-Id: <prefix>/<model>/<flush
 * name>/<row>`, the same when a flush is replayed, so the stream's duplicate window drops the
 * copies of a replay: effectively once for a replay within the window (JetStream's default is 2
 * minutes), at-least-once beyond it.
 */
export class NatsSink implements Sink {
  readonly idempotent = false;
  private nc?: NatsConnection;
  private js?: JetStreamClient;
  private connected = false;
  private ok = true;
  private readonly prefix: string;

  constructor(
    private readonly cfg: NatsSinkConfig,
    private readonly ctx: ConnectorContext,
  ) {
    this.prefix = idPrefix(cfg.id_prefix, ctx.projectDir);
  }

  async connect(): Promise<void> {
    const cfg = this.cfg;
    this.nc = await connectNats(cfg, this.ctx.log, 'sink', (up) => (this.connected = up));
    this.connected = true;
    try {
      await this.ensureStream(this.nc);
    } catch (err) {
      // An open connection would keep the process alive after the error.
      await this.close();
      throw err;
    }
    this.js = jetstream(this.nc, { timeout: cfg.ack_timeout_ms });
  }

  private async ensureStream(nc: NatsConnection): Promise<void> {
    const cfg = this.cfg;
    if (cfg.stream) {
      const jsm = await jetstreamManager(nc);
      try {
        const info = await jsm.streams.info(cfg.stream);
        this.ctx.log.debug({ stream: cfg.stream, duplicate_window_ms: info.config.duplicate_window / 1e6 }, 'nats sink: stream found');
      } catch (err) {
        if (!cfg.subjects) throw new SluiceError('CONNECT', `nats sink: JetStream stream ${cfg.stream} not found (${errorMessage(err)}); set subjects: to create it`);
        await jsm.streams.add({
          name: cfg.stream,
          subjects: cfg.subjects,
          ...(cfg.duplicate_window_ms ? { duplicate_window: cfg.duplicate_window_ms * 1_000_000 } : {}),
        });
        this.ctx.log.info({ stream: cfg.stream, subjects: cfg.subjects }, 'nats sink: created the stream');
      }
    }
  }

  async write(w: SinkWrite, db: DuckDBConnection): Promise<void> {
    try {
      const template = this.cfg.subject;
      let duplicates = 0;
      for await (const batch of jsonRowBatches(w, db, [templateSql(template)], this.cfg.batch_rows)) {
        const acks: Promise<PubAck>[] = [];
        for (let i = 0; i < batch.rows.length; i++) {
          const [json, subject] = batch.rows[i];
          const row = batch.first + i;
          if (subject === null) throw nullTemplateError('nats', w, row, 'subject', template);
          acks.push(this.js!.publish(subject, json!, { msgID: rowId(this.prefix, w, row), timeout: this.cfg.ack_timeout_ms }));
        }
        // Every publish settles before the batch is judged, so none is left unobserved.
        const settled = await Promise.allSettled(acks);
        const failed = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
        if (failed) throw failed.reason;
        for (const s of settled) if ((s as PromiseFulfilledResult<PubAck>).value.duplicate) duplicates++;
      }
      if (duplicates > 0) this.ctx.log.warn({ model: w.model, flush: w.name, duplicates }, 'nats sink: JetStream dropped the copies of a replayed flush');
      this.ok = true;
    } catch (err) {
      this.ok = false;
      if (err instanceof SluiceError) throw err;
      throw new SluiceError('SINK', `nats sink: publishing ${w.model}/${w.name} to ${this.cfg.subject} failed: ${errorMessage(err)}`, { cause: err, retryable: true });
    }
  }

  healthy(): boolean {
    return this.ok && this.connected;
  }

  async close(): Promise<void> {
    const nc = this.nc;
    this.nc = undefined;
    await nc?.drain().catch(() => {});
  }
}
