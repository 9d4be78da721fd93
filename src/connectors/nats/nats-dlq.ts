import { headers as newHeaders, type NatsConnection } from '@nats-io/transport-node';
import { jetstream, jetstreamManager, type JetStreamManager, type JsMsg } from '@nats-io/jetstream';
import type { Logger } from 'pino';
import type { DeadLetter, DeadLetterQueue } from '../types.js';
import { connectNats } from './nats-source.js';
import { deadLettered, type NatsSourceConfig } from './nats-config.js';

const H = {
  error: 'Sluice-Error',
  stage: 'Sluice-Stage',
  stream: 'Sluice-Stream',
  subject: 'Sluice-Subject',
  seq: 'Sluice-Seq',
  model: 'Sluice-Model',
  time: 'Sluice-Time',
  worker: 'Sluice-Worker',
} as const;

/**
 * Dead letters published to a subject (default `sluice.dlq.<stream>`) captured by a stream
 * (`<stream>_DLQ`, created when missing). Each keeps the original body and headers and gains
 * `Sluice-*` headers (error, stage, stream, subject, sequence, model, time, worker); the
 * publish is acknowledged by JetStream before the batch commits, and the original is then
 * terminated rather than acked. The WAL commit records the last dead letter's sequence;
 * on recovery this worker's later ones (their batch never committed and is delivered again)
 * are deleted, so each appears once.
 */
export class NatsDeadLetterQueue implements DeadLetterQueue {
  private nc?: NatsConnection;
  private jsm?: JetStreamManager;
  private last: number | undefined;
  private dlqStream = '';

  constructor(
    private readonly cfg: NatsSourceConfig,
    readonly queue: string,
    private readonly log: Logger,
    private readonly worker: string,
  ) {}

  async open(): Promise<void> {
    this.nc = await connectNats(this.cfg, this.log, 'dlq');
    this.jsm = await jetstreamManager(this.nc);
    try {
      this.dlqStream = await this.jsm.streams.find(this.queue);
    } catch {
      this.dlqStream = `${this.cfg.stream}_DLQ`;
      await this.jsm.streams.add({ name: this.dlqStream, subjects: [this.queue] });
      this.log.info({ stream: this.dlqStream, subject: this.queue }, 'created the dead-letter stream');
    }
  }

  async append(records: DeadLetter[]): Promise<void> {
    const js = jetstream(this.nc!);
    for (const r of records) {
      const original = r.original as JsMsg | undefined;
      const h = newHeaders();
      if (original?.headers) for (const [k, vs] of original.headers) for (const v of vs) h.append(k, v);
      h.set(H.error, r.error.replace(/[\r\n]+/g, ' '));
      h.set(H.stage, r.stage);
      h.set(H.stream, this.cfg.stream);
      if (original) {
        h.set(H.subject, original.subject);
        h.set(H.seq, String(original.seq));
      }
      if (r.model) h.set(H.model, r.model);
      h.set(H.time, r.time);
      h.set(H.worker, this.worker);
      const ack = await js.publish(this.queue, original ? original.data : r.payload, { headers: h });
      this.last = ack.seq;
      if (original) deadLettered.add(original);
    }
  }

  mark(): unknown {
    return this.last;
  }

  async recover(mark: unknown): Promise<void> {
    if (typeof mark !== 'number') return; // no committed dead letter yet: earlier ones are not ours to drop
    this.last = mark;
    const info = await this.jsm!.streams.info(this.dlqStream);
    let dropped = 0;
    for (let seq = mark + 1; seq <= info.state.last_seq; seq++) {
      const m = await this.jsm!.streams.getMessage(this.dlqStream, { seq }).catch(() => null);
      if (m?.header.get(H.worker) === this.worker) {
        await this.jsm!.streams.deleteMessage(this.dlqStream, seq);
        dropped++;
      }
    }
    if (dropped) this.log.warn({ messages: dropped }, 'dropped dead letters of a batch that never committed (it is delivered again)');
  }

  async inspect(limit: number): Promise<DeadLetter[]> {
    const out: DeadLetter[] = [];
    const info = await this.jsm!.streams.info(this.dlqStream);
    for (let seq = info.state.first_seq; seq <= info.state.last_seq && out.length < limit; seq++) {
      const m = await this.jsm!.streams.getMessage(this.dlqStream, { seq }).catch(() => null);
      if (!m) continue;
      const model = m.header.get(H.model);
      out.push({
        payload: m.string(),
        error: m.header.get(H.error),
        stage: (m.header.get(H.stage) || 'decode') as DeadLetter['stage'],
        source: { stream: m.header.get(H.stream), subject: m.header.get(H.subject), seq: Number(m.header.get(H.seq)), dlq_seq: seq },
        ...(model ? { model } : {}),
        time: m.header.get(H.time),
      });
    }
    return out;
  }

  /**
   * Publishes each dead letter back to its original subject (or `target`), original headers
   * only, and deletes it from the DLQ stream once JetStream acknowledged the copy.
   */
  async replay(opts: { target?: string; limit?: number }): Promise<{ moved: number }> {
    const js = jetstream(this.nc!);
    const info = await this.jsm!.streams.info(this.dlqStream);
    const limit = opts.limit ?? Infinity;
    let moved = 0;
    for (let seq = info.state.first_seq; seq <= info.state.last_seq && moved < limit; seq++) {
      const m = await this.jsm!.streams.getMessage(this.dlqStream, { seq }).catch(() => null);
      if (!m) continue;
      const h = newHeaders();
      for (const [k, vs] of m.header) if (!k.startsWith('Sluice-')) for (const v of vs) h.append(k, v);
      const subject = opts.target ?? m.header.get(H.subject);
      if (!subject) continue;
      await js.publish(subject, m.data, { headers: h });
      await this.jsm!.streams.deleteMessage(this.dlqStream, seq);
      moved++;
    }
    return { moved };
  }

  async close(): Promise<void> {
    const nc = this.nc;
    this.nc = undefined;
    await nc?.close();
  }
}
