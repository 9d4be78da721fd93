import type { DuckDBConnection } from '@duckdb/node-api';
import { SluiceError, errorMessage } from '../../errors.js';
import { idPrefix, jsonRowBatches, nullTemplateError, rowId, templateSql } from '../row-json.js';
import { withTimeout } from '../../util/with-timeout.js';
import type { ConnectorContext, Sink, SinkWrite } from '../types.js';
import { connectWithRetry, type AmqpChannelLike, type AmqpConnectionLike } from './rabbitmq-client.js';
import type { RabbitmqSinkConfig } from './rabbitmq-config.js';

/**
 * Rows as JSON messages to an exchange, on a confirm channel: `batch_rows` messages are
 * published, then their publisher confirms awaited; write() resolves only when the broker
 * confirmed every message of the flush. Messages are persistent, `application/json`, with
 * `message_id` `<prefix>/<model>/<flush name>/<row>` (the same when a flush is replayed) and the
 * headers `sluice-flush`, `sluice-model`, `sluice-row`. With `mandatory`, a message no queue
 * takes comes back from the broker and fails the write. At-least-once: a flush replayed after a
 * crash or failure is published again; consumers drop the copies by message_id.
 */
export class RabbitmqSink implements Sink {
  readonly idempotent = false;
  private conn?: AmqpConnectionLike;
  private ch?: AmqpChannelLike;
  private ok = true;
  private readonly prefix: string;
  /** Messages the broker returned as unroutable since the current batch began. */
  private returned: { routingKey: string; replyText: string }[] = [];

  constructor(
    private readonly cfg: RabbitmqSinkConfig,
    private readonly ctx: ConnectorContext,
  ) {
    this.prefix = idPrefix(cfg.id_prefix, ctx.projectDir);
  }

  async connect(): Promise<void> {
    await this.channel({ deadline: Date.now() + 30_000 });
  }

  /**
   * The confirm channel. At start, connecting retries for a while; in a write it is tried once,
   * since the sink policy retries the write.
   */
  private async channel(connect: { deadline?: number; once?: boolean }): Promise<AmqpChannelLike> {
    if (this.ch) return this.ch;
    const conn = await connectWithRetry(this.cfg, this.ctx.log, connect);
    conn.on('error', () => {});
    conn.on('close', () => {
      if (this.conn === conn) {
        this.conn = undefined;
        this.ch = undefined;
      }
    });
    try {
      const ch = await conn.createConfirmChannel();
      ch.on('error', () => {});
      ch.on('close', () => {
        if (this.ch === ch) this.ch = undefined;
      });
      ch.on('return', (...args: unknown[]) => {
        const m = args[0] as { fields?: { routingKey?: string; replyText?: string } };
        this.returned.push({ routingKey: m.fields?.routingKey ?? '', replyText: m.fields?.replyText ?? 'unroutable' });
      });
      const { exchange, declare } = this.cfg;
      if (declare.exchange && exchange) await ch.assertExchange(exchange, declare.exchange, { durable: true });
      for (const q of declare.queues) {
        await ch.assertQueue(q.name, { durable: true });
        if (exchange) await ch.bindQueue(q.name, exchange, q.binding_key);
      }
      this.conn = conn;
      this.ch = ch;
      return ch;
    } catch (err) {
      await conn.close().catch(() => {});
      throw err;
    }
  }

  async write(w: SinkWrite, db: DuckDBConnection): Promise<void> {
    try {
      await this.writeInner(w, db);
      this.ok = true;
    } catch (err) {
      this.ok = false;
      // A channel in an unknown state (closed by the broker, confirms pending) is replaced.
      const conn = this.conn;
      this.conn = undefined;
      this.ch = undefined;
      await conn?.close().catch(() => {});
      if (err instanceof SluiceError && err.code === 'SINK') throw err;
      throw new SluiceError('SINK', `rabbitmq sink: publishing ${w.model}/${w.name} to exchange "${this.cfg.exchange}" failed: ${errorMessage(err)}`, {
        cause: err,
        retryable: true,
      });
    }
  }

  private async writeInner(w: SinkWrite, db: DuckDBConnection): Promise<void> {
    const ch = await this.channel({ once: true });
    const template = this.cfg.routing_key;
    const base = {
      persistent: this.cfg.persistent,
      mandatory: this.cfg.mandatory,
      contentType: 'application/json',
      appId: 'sluice',
    };
    for await (const batch of jsonRowBatches(w, db, [templateSql(template)], this.cfg.batch_rows)) {
      this.returned = [];
      for (let i = 0; i < batch.rows.length; i++) {
        const [json, key] = batch.rows[i];
        const row = batch.first + i;
        if (key === null) throw nullTemplateError('rabbitmq', w, row, 'routing key', template);
        const fits = ch.publish(this.cfg.exchange, key, Buffer.from(json!), {
          ...base,
          messageId: rowId(this.prefix, w, row),
          timestamp: Math.floor(Date.now() / 1000),
          headers: { 'sluice-flush': w.name, 'sluice-model': w.model, 'sluice-row': row },
        });
        // The socket's buffer is full: let it drain before publishing more (bounded memory).
        if (!fits) await withTimeout(new Promise((resolve) => ch.once('drain', resolve)), this.cfg.confirm_timeout_ms, 'the connection did not drain');
      }
      // Every outstanding publisher confirm; a nack or a lost channel rejects.
      await withTimeout(ch.waitForConfirms!(), this.cfg.confirm_timeout_ms, `no publisher confirms within ${this.cfg.confirm_timeout_ms} ms`);
      if (this.returned.length > 0) {
        const r = this.returned[0];
        throw new SluiceError(
          'SINK',
          `rabbitmq sink: ${this.returned.length} message(s) of ${w.model}/${w.name} reached no queue (exchange "${this.cfg.exchange}", routing key "${r.routingKey}": ${r.replyText}); bind a queue or set mandatory: false`,
          { retryable: true },
        );
      }
    }
  }

  healthy(): boolean {
    return this.ok;
  }

  async close(): Promise<void> {
    const conn = this.conn;
    this.conn = undefined;
    this.ch = undefined;
    await conn?.close().catch(() => {});
  }
}
