import type { DuckDBConnection } from '@duckdb/node-api';
import type { Kafka, Message, Producer, Transaction } from 'kafkajs';
import { SluiceError, errorMessage } from '../../errors.js';
import { ident } from '../../sql/quote.js';
import { jsonRowChunks } from '../row-json.js';
import type { ConnectorContext, Sink, SinkWrite } from '../types.js';
import { kafkaClient, type KafkaSinkConfig } from './kafka-config.js';

/**
 * Rows of a model as JSON messages (row-json.ts: BIGINTs and decimals keep every digit)
 * to a topic, keyed by a column, acks=all. By default each flush is one Kafka transaction
 * (transactional id `sluice.<topic>.<worker id>`, so a restarted worker fences its zombie):
 * read_committed consumers see a flush whole or not at all. A flush replayed after a crash
 * between the transaction commit and the WAL truncation is produced again (at-least-once per
 * flush); every message carries `sluice-flush` (the flush name, derived from source offsets)
 * and `sluice-row` (its row number in the flush) headers, the same on a replay, so a consumer
 * can drop the copies.
 */
export class KafkaSink implements Sink {
  /** A flush replayed after a crash between its commit and the WAL's record of it is produced again. */
  readonly idempotent = false;
  private kafka?: Kafka;
  private producer?: Producer;
  private connecting?: Promise<Producer>;
  private closed = false;
  private ok = true;

  constructor(
    private readonly cfg: KafkaSinkConfig,
    private readonly ctx: ConnectorContext,
  ) {}

  /**
   * Creates the client and tries the brokers for up to `connect_timeout_ms`. Brokers that do
   * not answer by then (down, unreachable, frozen) do not stop the run: the sink is unhealthy
   * (/readyz red), flushes wait in the WAL and each write tries to connect again, as after an
   * outage in the middle of a run. Refused credentials stop the run at start.
   */
  async connect(): Promise<void> {
    this.kafka = await kafkaClient(this.cfg, this.ctx.log, 'sink');
    const first = this.ensureProducer();
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<'late'>((r) => (timer = setTimeout(() => r('late'), this.cfg.connect_timeout_ms)));
    const outcome = await Promise.race([
      first.then(
        () => 'ok' as const,
        (err: unknown) => err,
      ),
      late,
    ]);
    clearTimeout(timer);
    if (outcome === 'ok') return;
    if (outcome instanceof Error && outcome.name === 'KafkaJSSASLAuthenticationError') {
      throw new SluiceError('CONNECT', `Kafka at ${this.cfg.brokers.join(',')} refused the sink's credentials: ${errorMessage(outcome)}`, { cause: outcome });
    }
    this.ok = false;
    const why = outcome === 'late' ? `no answer within ${this.cfg.connect_timeout_ms} ms` : errorMessage(outcome);
    this.ctx.log.warn({ brokers: this.cfg.brokers, topic: this.cfg.topic }, `kafka sink: cannot reach Kafka at start (${why}); rows wait in the WAL and each flush tries again`);
  }

  /** The producer, connected; one connection attempt at a time (a failed one is forgotten). */
  private ensureProducer(): Promise<Producer> {
    if (!this.connecting) {
      const attempt: Promise<Producer> = this.connectProducer().catch((err: unknown) => {
        if (this.connecting === attempt) this.connecting = undefined;
        throw err;
      });
      this.connecting = attempt;
    }
    return this.connecting;
  }

  private async connectProducer(): Promise<Producer> {
    // A failed flush is retried by the SinkRunner (the sink's retry policy): kafkajs does not
    // retry on its own inside it. An idempotent or transactional producer keeps the one retry
    // kafkajs requires of it (a resend with the same sequence number, part of the protocol).
    const retry = { retries: this.cfg.transactional || this.cfg.idempotent ? 1 : 0 };
    const p = this.cfg.transactional
      ? this.kafka!.producer({ transactionalId: `sluice.${this.cfg.topic}.${this.ctx.workerId}`, maxInFlightRequests: 1, allowAutoTopicCreation: true, retry })
      : this.kafka!.producer({ idempotent: this.cfg.idempotent, ...(this.cfg.idempotent ? { maxInFlightRequests: 1 } : {}), allowAutoTopicCreation: true, retry });
    this.producer = p;
    try {
      await p.connect();
    } catch (err) {
      if (this.producer === p) this.producer = undefined;
      await p.disconnect().catch(() => {});
      throw err;
    }
    if (this.closed) {
      await p.disconnect().catch(() => {});
      throw new Error('the sink is closed');
    }
    return p;
  }

  async write(w: SinkWrite, db: DuckDBConnection): Promise<void> {
    try {
      await this.writeInner(w, db);
      this.ok = true;
    } catch (err) {
      this.ok = false;
      // A producer in an unknown state (fenced, aborted, disconnected) is replaced.
      await this.dropProducer();
      throw new SluiceError('SINK', `kafka sink: producing ${w.model}/${w.name} to ${this.cfg.topic} failed: ${errorMessage(err)}`, { cause: err, retryable: true });
    }
  }

  private async writeInner(w: SinkWrite, db: DuckDBConnection): Promise<void> {
    const producer = await this.ensureProducer();
    const key = this.cfg.key ? `CAST(t.${ident(this.cfg.key)} AS VARCHAR)` : 'NULL::VARCHAR';
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
      for await (const rows of jsonRowChunks(w, db, [key])) {
        for (const r of rows) {
          pending.push({
            key: r[1],
            value: r[0]!,
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

  private async dropProducer(): Promise<void> {
    const p = this.producer;
    this.producer = undefined;
    this.connecting = undefined;
    await p?.disconnect().catch(() => {});
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.dropProducer();
  }
}
