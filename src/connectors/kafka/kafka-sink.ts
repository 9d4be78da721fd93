import type { DuckDBConnection } from '@duckdb/node-api';
import type { Kafka, Message, Producer, Transaction } from 'kafkajs';
import { SluiceError, errorMessage } from '../../errors.js';
import { MSG_COL } from '../../sql/analyze.js';
import { fileList, ident } from '../../sql/quote.js';
import type { ConnectorContext, Sink, SinkWrite } from '../types.js';
import { kafkaClient, type KafkaSinkConfig } from './kafka-config.js';

/**
 * Rows of a model as JSON messages (DuckDB's to_json: BIGINTs and decimals keep every digit)
 * to a topic, keyed by a column, acks=all. By default each flush is one Kafka transaction
 * (transactional id `sluice.<topic>.<worker id>`, so a restarted worker fences its zombie):
 * read_committed consumers see a flush whole or not at all. A flush replayed after a crash
 * between the transaction commit and the WAL truncation is produced again (at-least-once per
 * flush); every message carries `sluice-flush` (the flush name, derived from source offsets)
 * and `sluice-row` (its row number in the flush) headers, the same on a replay, so a consumer
 * can drop the copies.
 */
export class KafkaSink implements Sink {
  private kafka?: Kafka;
  private producer?: Producer;
  private ok = true;

  constructor(
    private readonly cfg: KafkaSinkConfig,
    private readonly ctx: ConnectorContext,
  ) {}

  async connect(): Promise<void> {
    this.kafka = await kafkaClient(this.cfg, this.ctx.log, 'sink');
    await this.ensureProducer().catch((err: unknown) => {
      throw new SluiceError('CONNECT', `cannot reach Kafka at ${this.cfg.brokers.join(',')} for the sink: ${errorMessage(err)}`, { cause: err, retryable: true });
    });
  }

  private async ensureProducer(): Promise<Producer> {
    if (this.producer) return this.producer;
    const p = this.cfg.transactional
      ? this.kafka!.producer({ transactionalId: `sluice.${this.cfg.topic}.${this.ctx.workerId}`, maxInFlightRequests: 1, allowAutoTopicCreation: true })
      : this.kafka!.producer({ idempotent: this.cfg.idempotent, ...(this.cfg.idempotent ? { maxInFlightRequests: 1 } : {}), allowAutoTopicCreation: true });
    await p.connect();
    this.producer = p;
    return p;
  }

  async write(w: SinkWrite, db: DuckDBConnection): Promise<void> {
    try {
      await this.writeInner(w, db);
      this.ok = true;
    } catch (err) {
      this.ok = false;
      // A producer in an unknown state (fenced, aborted, disconnected) is replaced.
      const p = this.producer;
      this.producer = undefined;
      await p?.disconnect().catch(() => {});
      throw new SluiceError('SINK', `kafka sink: producing ${w.model}/${w.name} to ${this.cfg.topic} failed: ${errorMessage(err)}`, { cause: err, retryable: true });
    }
  }

  private async writeInner(w: SinkWrite, db: DuckDBConnection): Promise<void> {
    const producer = await this.ensureProducer();
    const key = this.cfg.key ? `CAST(t.${ident(this.cfg.key)} AS VARCHAR)` : 'NULL::VARCHAR';
    // DuckDB keeps insertion order (files in the given order, rows in file order): a replayed
    // flush numbers its rows the same way.
    const sql = `SELECT to_json(t)::VARCHAR AS v, ${key} AS k
      FROM (SELECT * EXCLUDE (${MSG_COL}) FROM read_parquet(${fileList(w.segments)}, union_by_name = true)) t`;
    const result = await db.stream(sql);
    let tx: Transaction | undefined = this.cfg.transactional ? await producer.transaction() : undefined;
    const send = tx ?? producer;
    const compression = this.cfg.compression === 'gzip' ? 1 : 0;
    let pending: Message[] = [];
    let row = 0;
    const flushPending = async () => {
      if (pending.length === 0) return;
      await send.send({ topic: this.cfg.topic, acks: -1, compression, messages: pending });
      pending = [];
    };
    try {
      for await (const rows of result.yieldRows()) {
        for (const r of rows) {
          pending.push({
            key: r[1] === null ? null : String(r[1]),
            value: String(r[0]),
            headers: { 'sluice-flush': w.name, 'sluice-row': String(row++), 'sluice-model': w.model },
          });
          if (pending.length >= this.cfg.batch_messages) await flushPending();
        }
      }
      await flushPending();
      if (tx) {
        const t = tx;
        tx = undefined;
        await t.commit();
      }
    } catch (err) {
      if (tx) await tx.abort().catch(() => {});
      throw err;
    }
    if (row !== w.rows) this.ctx.log.warn({ model: w.model, rows: row, expected: w.rows }, 'kafka sink produced a different number of rows than the flush holds');
  }

  healthy(): boolean {
    return this.ok;
  }

  async close(): Promise<void> {
    const p = this.producer;
    this.producer = undefined;
    await p?.disconnect().catch(() => {});
  }
}
