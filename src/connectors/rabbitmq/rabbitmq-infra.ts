import { SluiceError, errorMessage } from '../../errors.js';
import { BrokerPlanner, type InfraChange, type InfraPlanner } from '../infra.js';
import type { ConnectorContext } from '../types.js';
import { connectWithRetry, type AmqpChannelLike, type AmqpConnectionLike } from './rabbitmq-client.js';
import type { RabbitmqConnectionConfig, RabbitmqSinkConfig, RabbitmqSourceConfig } from './rabbitmq-config.js';

/**
 * `sluice plan` / `apply` for the rabbitmq source and sink: their queues, exchanges and
 * bindings, as the connectors declare them at start.
 *
 * What exists is read over AMQP alone (no management plugin): a passive declare tells whether a
 * queue or exchange exists, and declaring it again with sluice's settings on a throwaway channel
 * tells whether it is equivalent (the broker answers PRECONDITION_FAILED naming the argument
 * that differs, and closes that channel; an equivalent declaration changes nothing). That second
 * step runs only for something the passive check has just found, so plan creates nothing (short
 * of the object being deleted between the two checks). AMQP has no way to read a binding: a
 * binding whose queue and exchange both exist is reported as a note, and `sluice run` declares
 * it at start (bindings are idempotent).
 */

// amqplib's channel methods the planner uses beyond the connectors' own surface.
interface AdminChannel extends AmqpChannelLike {
  checkExchange(exchange: string): Promise<unknown>;
  deleteQueue(queue: string): Promise<{ messageCount: number }>;
  deleteExchange(exchange: string): Promise<unknown>;
}

/** A queue or exchange the connector needs. `ifMissing`: why sluice may not create it (it is the user's). */
interface Needed {
  name: string;
  /** What it is to the connector, for the plan (`the dead-letter queue`). */
  role?: string;
  /** Exchanges: the type sluice declares. */
  type?: string;
  ifMissing?: string;
}

export interface RabbitNeeds {
  queues: Needed[];
  exchanges: Needed[];
  bindings: { queue: string; exchange: string; key: string }[];
}

const DURABLE = { durable: true };
const NOT_FOUND = 404;
const PRECONDITION_FAILED = 406;

/** The queues, exchanges and bindings the rabbitmq source declares (or expects). */
export function sourceNeeds(cfg: RabbitmqSourceConfig): RabbitNeeds {
  const ifMissing = cfg.declare.queue ? undefined : 'declare.queue is false, so neither sluice run nor apply creates it';
  const queues: Needed[] = [
    { name: cfg.queue, role: 'the queue the source consumes', ifMissing },
    { name: cfg.dlq ?? `${cfg.queue}.dlq`, role: 'the dead-letter queue', ifMissing },
  ];
  const ex = cfg.declare.exchange;
  const exchanges: Needed[] = ex ? [{ name: ex.name, type: ex.type }] : [];
  for (const b of cfg.declare.bindings) {
    if (exchanges.some((e) => e.name === b.exchange)) continue;
    exchanges.push({ name: b.exchange, ifMissing: `the source does not declare it (declare.exchange), so binding queue ${cfg.queue} to it fails at start` });
  }
  return { queues, exchanges, bindings: cfg.declare.bindings.map((b) => ({ queue: cfg.queue, exchange: b.exchange, key: b.routing_key })) };
}

/** The exchange, queues and bindings the rabbitmq sink declares (or expects). */
export function sinkNeeds(cfg: RabbitmqSinkConfig): RabbitNeeds {
  const exchanges: Needed[] = [];
  if (cfg.exchange) {
    exchanges.push(
      cfg.declare.exchange
        ? { name: cfg.exchange, type: cfg.declare.exchange }
        : { name: cfg.exchange, ifMissing: 'declare.exchange is not set, so neither sluice run nor apply creates it, and publishing to it fails' },
    );
  }
  return {
    queues: cfg.declare.queues.map((q) => ({ name: q.name, role: 'declared by the sink' })),
    exchanges,
    bindings: cfg.exchange ? cfg.declare.queues.map((q) => ({ queue: q.name, exchange: cfg.exchange, key: q.binding_key })) : [],
  };
}

type Outcome<T> = { ok: true; value: T } | { ok: false; code: number; message: string };

/** The broker's reason in a PRECONDITION_FAILED answer, e.g. `inequivalent arg 'durable' (received 'true' but current is 'false')`. */
function inequivalence(message: string): string {
  const m = /inequivalent arg '([^']+)' for \w+ '.*?' in vhost '.*?': (.*?)"?$/.exec(message);
  return m ? `inequivalent arg '${m[1]}' (${m[2]})` : message;
}

export class RabbitPlanner extends BrokerPlanner<RabbitmqConnectionConfig, RabbitNeeds> {
  private conn?: AmqpConnectionLike;

  private async connection(): Promise<AmqpConnectionLike> {
    if (!this.conn) {
      // A short deadline: plan reports an unreachable broker instead of waiting for it.
      const conn = await connectWithRetry(this.cfg, this.ctx.log, { deadline: Date.now() + 2000 });
      conn.on('error', () => {});
      this.conn = conn;
    }
    return this.conn;
  }

  /**
   * Runs `fn` on a channel of its own: a refused check or declaration closes its channel, and
   * comes back as the broker's reply code and text. Anything else (the connection failing) throws.
   */
  private async attempt<T>(fn: (ch: AdminChannel) => Promise<T>): Promise<Outcome<T>> {
    const conn = await this.connection();
    const ch = (await conn.createChannel()) as AdminChannel;
    ch.on('error', () => {});
    try {
      const value = await fn(ch);
      await ch.close().catch(() => {});
      return { ok: true, value };
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      if (typeof code !== 'number') throw new SluiceError('CONNECT', `rabbitmq: ${errorMessage(err)}`, { cause: err });
      return { ok: false, code, message: errorMessage(err) };
    }
  }

  /** Runs one step of a change; a refusal becomes the error apply reports. */
  private async must(what: string, fn: (ch: AdminChannel) => Promise<unknown>): Promise<void> {
    const r = await this.attempt(fn);
    if (!r.ok) throw new SluiceError('CONNECT', `rabbitmq: ${what} failed: ${r.message}`);
  }

  /**
   * One queue or exchange: created when missing (or reported, when it is the user's), compared
   * by declaring it again when it exists, and recreated when the broker finds it inequivalent.
   * `declare` is undefined for an object sluice does not declare (it only needs to exist).
   */
  private async planObject<C>(
    o: {
      what: string;
      ifMissing?: string;
      check: (ch: AdminChannel) => Promise<C>;
      declare?: (ch: AdminChannel) => Promise<unknown>;
      remove: (ch: AdminChannel) => Promise<unknown>;
      created: string;
      recreated: (reason: string, found: C) => string;
    },
    st: { changes: InfraChange[]; absent: Set<string>; fresh: Set<string> },
  ): Promise<void> {
    const { what, declare } = o;
    const check = await this.attempt(o.check);
    if (!check.ok && check.code !== NOT_FOUND) throw new SluiceError('CONNECT', `rabbitmq: checking ${what} failed: ${check.message}`);
    if (!check.ok && !declare) {
      st.absent.add(what);
      this.found.push({ text: `${what} does not exist; ${o.ifMissing}`, problem: true });
      return;
    }
    if (!declare) return; // the user's: sluice only needs it to exist
    if (!check.ok) {
      st.fresh.add(what);
      st.changes.push({ object: `rabbitmq ${what}`, summary: o.created, destructive: false, apply: () => this.must(`declaring ${what}`, declare) });
      return;
    }
    const same = await this.attempt(declare);
    if (same.ok) return;
    if (same.code !== PRECONDITION_FAILED) {
      this.found.push({ text: `${what} exists, but cannot be compared with what sluice declares: ${same.message}` });
      return;
    }
    st.fresh.add(what);
    st.changes.push({
      object: `rabbitmq ${what}`,
      summary: o.recreated(inequivalence(same.message), check.value),
      destructive: true,
      apply: async () => {
        await this.must(`deleting ${what}`, o.remove);
        await this.must(`declaring ${what}`, declare);
      },
    });
  }

  async plan(): Promise<InfraChange[]> {
    this.found = [];
    // Objects missing and not sluice's to create (their bindings are reported with them), and
    // objects this plan creates or recreates (their bindings are certainly missing then).
    const st = { changes: [] as InfraChange[], absent: new Set<string>(), fresh: new Set<string>() };
    for (const q of dedupe(this.needs.queues)) {
      await this.planObject(
        {
          what: `queue ${q.name}`,
          ifMissing: q.ifMissing,
          check: (ch) => ch.checkQueue(q.name),
          declare: q.ifMissing ? undefined : (ch) => ch.assertQueue(q.name, DURABLE),
          remove: (ch) => ch.deleteQueue(q.name),
          created: `+ declare queue ${q.name} (durable; ${q.role})`,
          recreated: (why, found) =>
            `- recreate queue ${q.name} as durable, without arguments (${q.role}): it exists with other settings, ${why}; deletes the queue and its ${found.messageCount} message(s)`,
        },
        st,
      );
    }
    for (const e of dedupe(this.needs.exchanges)) {
      const type = e.type;
      await this.planObject(
        {
          what: `exchange ${e.name}`,
          ifMissing: e.ifMissing,
          check: (ch) => ch.checkExchange(e.name),
          declare: type ? (ch) => ch.assertExchange(e.name, type, DURABLE) : undefined,
          remove: (ch) => ch.deleteExchange(e.name),
          created: `+ declare exchange ${e.name} (${type}, durable)`,
          recreated: (why) => `- recreate exchange ${e.name} as ${type}, durable: it exists with other settings, ${why}; deletes the exchange and every binding to it`,
        },
        st,
      );
    }
    const { absent, fresh } = st;
    const bindings: InfraChange[] = [];
    for (const b of this.needs.bindings) {
      const q = `queue ${b.queue}`;
      const x = `exchange ${b.exchange}`;
      if (absent.has(q) || absent.has(x)) continue;
      const what = `queue ${b.queue} to exchange ${b.exchange} (routing key ${b.key})`;
      if (fresh.has(q) || fresh.has(x)) {
        bindings.push({
          object: `rabbitmq binding ${b.exchange} -> ${b.queue}`,
          summary: `+ bind ${what}`,
          destructive: false,
          apply: () => this.must(`binding ${what}`, (ch) => ch.bindQueue(b.queue, b.exchange, b.key)),
        });
      } else {
        this.found.push({ text: `binding of ${what}: AMQP cannot read bindings, so it is not checked; sluice run declares it at start (idempotent)` });
      }
    }
    return [...st.changes, ...bindings];
  }

  async close(): Promise<void> {
    const conn = this.conn;
    this.conn = undefined;
    await conn?.close().catch(() => {});
  }
}

function dedupe(items: Needed[]): Needed[] {
  const seen = new Set<string>();
  return items.filter((i) => !seen.has(i.name) && !!seen.add(i.name));
}

export function rabbitmqSourcePlanner(cfg: RabbitmqSourceConfig, ctx: ConnectorContext): InfraPlanner {
  return new RabbitPlanner(cfg, sourceNeeds(cfg), ctx);
}

export function rabbitmqSinkPlanner(cfg: RabbitmqSinkConfig, ctx: ConnectorContext): InfraPlanner {
  return new RabbitPlanner(cfg, sinkNeeds(cfg), ctx);
}
