import type { ConfigIssue } from '../errors.js';
import type { NamedSource } from './project-loader.js';

/**
 * What a source consumes as, on its broker: two sources with the same identity are, to the
 * broker, two workers of one consumer, and each gets only part of what it should read (or, for
 * Kafka, nothing at all).
 */
interface Identity {
  /** The servers it reaches (host:port): two sources with one in common are on one broker. */
  servers: string[];
  /** Equal for two sources on one broker that share a consumer. */
  key: string;
  /** The key to set apart, as in sources.yml. */
  setting: string;
  /** What they share and what goes wrong, after "sources a (file:line) and b (file:line) ". */
  problem: string;
}

type Cfg = Record<string, unknown>;
const text = (v: unknown): string => String(v ?? '');
/** host:port of each server of a list or comma-separated string, without scheme or credentials. */
const servers = (v: unknown): string[] =>
  (Array.isArray(v) ? v : text(v).split(','))
    .map((x) => text(x).trim().toLowerCase().replace(/^[a-z][a-z0-9+.-]*:\/\//, '').replace(/^[^@/]*@/, '').replace(/\/+$/, ''))
    .filter(Boolean)
    .map(loopback);

/** `localhost` and 127.0.0.1 are one server. */
function loopback(server: string): string {
  return server.replace(/^localhost(?=:|$)/, '127.0.0.1');
}

/** A Redis URL's server and its database (a stream of database 1 is not one of database 0). */
function redisServer(url: string): { server: string; db: string } {
  try {
    const u = new URL(url);
    return { server: loopback(`${u.hostname.toLowerCase()}:${u.port || '6379'}`), db: u.pathname.replace(/^\/+/, '') || '0' };
  } catch {
    return { server: url, db: '0' };
  }
}

/** A RabbitMQ source's broker (host:port) and virtual host, from `url` or its parts. */
function rabbitServer(cfg: Cfg): { server: string; vhost: string } {
  if (cfg.url) {
    try {
      const u = new URL(text(cfg.url));
      const port = u.port || (u.protocol === 'amqps:' ? '5671' : '5672');
      return { server: `${u.hostname.toLowerCase()}:${port}`, vhost: decodeURIComponent(u.pathname.replace(/^\//, '')) || '/' };
    } catch {
      return { server: text(cfg.url), vhost: '/' };
    }
  }
  return { server: `${text(cfg.host).toLowerCase()}:${text(cfg.port)}`, vhost: text(cfg.vhost) || '/' };
}

/** Per source type, what a source consumes as; types without a shared consumer identity are absent. */
const identities: Record<string, (cfg: Cfg) => Identity> = {
  // A queue hands each message to one of its consumers, round robin.
  rabbitmq: (cfg) => {
    const { server, vhost } = rabbitServer(cfg);
    return {
      servers: [loopback(server)],
      key: `${vhost}\0${text(cfg.queue)}`,
      setting: 'queue',
      problem: `consume queue "${text(cfg.queue)}" on the same broker: RabbitMQ hands each message of a queue to one of its consumers, so each would get only part of its messages (bind a queue of its own for each source to the exchange)`,
    };
  },
  // kafkajs: the group's leader assigns only the topics it subscribed to itself, so a member
  // subscribed to other topics gets no partitions (and on the same topics, they split them).
  kafka: (cfg) => ({
    servers: servers(cfg.brokers),
    key: text(cfg.group_id),
    setting: 'group_id',
    problem: `consume as Kafka consumer group "${text(cfg.group_id)}" on the same brokers: the group's leader assigns only the topics it subscribed to itself, so one of them would silently get no partitions (or, on the same topics, each would get only some)`,
  }),
  // One durable consumer delivers each message to one of its clients, with the filter_subject of
  // whichever source created it.
  nats: (cfg) => ({
    servers: servers(cfg.servers),
    key: `${text(cfg.stream)}\0${text(cfg.consumer)}`,
    setting: 'consumer',
    problem: `read stream ${text(cfg.stream)} through the same durable consumer "${text(cfg.consumer)}": it hands each message to one of them, with the filter_subject of the source that created it, so each would get only part of its messages`,
  }),
  // One group hands each entry to one consumer, and a consumer takes over the entries another
  // left pending: with the same consumer name they would even share one pending list.
  redis_streams: (cfg) => {
    const { server, db } = redisServer(text(cfg.url));
    return {
      servers: [server],
      key: `${db}\0${text(cfg.stream)}\0${text(cfg.group)}`,
      setting: 'group',
      problem: `read stream ${text(cfg.stream)} in the same consumer group "${text(cfg.group)}": the group hands each entry to one consumer (and a consumer takes over entries another left pending), so each would see only part of the stream`,
    };
  },
};

/**
 * Sources of the project that would share a consumer on their broker (Kafka group, NATS durable
 * consumer, Redis consumer group, RabbitMQ queue): one issue per shared identity, at the second source's line,
 * naming every source that shares it. Such a project is broken whether its sources run in one
 * process or one process each.
 */
export function consumerConflicts(sources: NamedSource[]): ConfigIssue[] {
  const groups: { identity: Identity; type: string; sources: NamedSource[] }[] = [];
  for (const s of sources) {
    const identity = identities[s.type]?.(s.cfg);
    if (!identity) continue;
    const shared = groups.find((g) => g.type === s.type && g.identity.key === identity.key && g.identity.servers.some((x) => identity.servers.includes(x)));
    if (shared) shared.sources.push(s);
    else groups.push({ identity, type: s.type, sources: [s] });
  }
  const at = (s: NamedSource) => `${s.name} (${s.file}${s.line !== undefined ? `:${s.line}` : ''})`;
  return groups
    .filter((g) => g.sources.length > 1)
    .map(({ identity, sources: shared }) => {
      const second = shared[1];
      const names = `${shared.slice(0, -1).map(at).join(', ')} and ${at(shared[shared.length - 1])}`;
      return {
        file: second.file,
        line: second.line,
        key: `sources.${second.name}.${identity.setting}`,
        message: `sources ${names} ${identity.problem}; give each source its own \`${identity.setting}:\``,
      };
    });
}
