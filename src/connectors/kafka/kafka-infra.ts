import type { Admin } from 'kafkajs';
import { SluiceError, errorMessage } from '../../errors.js';
import { BrokerPlanner, type InfraChange, type InfraClaim, type InfraNote, type InfraPlanner } from '../infra.js';
import type { ConnectorContext } from '../types.js';
import { dlqTopicFor, isDlqTopic, kafkaClient, type KafkaConnectionConfig, type KafkaSinkConfig, type KafkaSourceConfig } from './kafka-config.js';
import { sleep } from '../../util/retry.js';

/**
 * `sluice plan` / `apply` for the kafka source and sink: the source's topics and dead-letter
 * topics, the sink's topic. What exists is read from the cluster's metadata for existing topics
 * only (asking for a missing topic's metadata makes a broker with auto.create.topics.enable
 * create it). A missing topic is created (CreateTopics); a topic with fewer partitions than
 * `partitions` gets more (CreatePartitions). One with more can only be deleted and created again
 * (Kafka cannot remove partitions), losing its messages: a destructive change for the sink's
 * topic and dead-letter topics, which keeps the topic's replication factor and settings. A topic
 * a source reads is never recreated: its offsets would start at 0 again, while the source's WAL
 * position and the names of its batches, output files and flushes are its offsets.
 *
 * Some brokers take none of these requests: librdkafka's mock cluster (the tests' broker) names
 * no controller among its brokers, and managed services may forbid them. The plan warns of that
 * when it sees it, and apply reports the refusal with what to do instead.
 */

interface TopicNeed {
  topic: string;
  /** What it is to the connector, for the plan. */
  role: string;
  partitions?: number;
  /** Read by the source: never recreated. */
  read?: boolean;
}

/** The topics a connector needs, given the topics that exist (a topic pattern is matched against them). */
type KafkaNeeds = (existing: string[]) => { topics: TopicNeed[]; notes: InfraNote[] };

export function sourceNeeds(cfg: KafkaSourceConfig): KafkaNeeds {
  return (existing) => {
    const notes: InfraNote[] = [];
    let read: TopicNeed[];
    if (cfg.topics) {
      read = cfg.topics.map((topic) => ({ topic, role: 'read by the source', partitions: cfg.partitions, read: true }));
    } else {
      // The same topics the source subscribes to at start: they exist, and have no partition count to check.
      const re = new RegExp(cfg.topic_pattern!);
      const matched = existing.filter((t) => re.test(t) && !t.startsWith('__') && !isDlqTopic(cfg, t)).sort();
      notes.push({
        text: `topic_pattern ${cfg.topic_pattern} matches ${matched.length ? matched.join(', ') : 'no topic'} now; the source reads the topics that match when it starts, so only their dead-letter topics are planned`,
      });
      read = matched.map((topic) => ({ topic, role: 'read by the source (topic_pattern)', read: true }));
    }
    const dlq: TopicNeed[] = cfg.dlq ? [{ topic: cfg.dlq, role: 'dead letters' }] : read.map((r) => ({ topic: dlqTopicFor(cfg, r.topic), role: `dead letters of ${r.topic}` }));
    return { topics: [...read, ...dlq], notes };
  };
}

export function sinkNeeds(cfg: KafkaSinkConfig): KafkaNeeds {
  return () => ({ topics: [{ topic: cfg.topic, role: 'written by the sink', partitions: cfg.partitions }], notes: [] });
}

/** An error's message with those of the errors it gathers (kafkajs reports each topic's error inside one). */
function detail(err: unknown): string {
  const nested = (err as { errors?: unknown }).errors;
  return [...new Set([errorMessage(err), ...(Array.isArray(nested) ? nested.map(errorMessage) : [])])].join('; ');
}

const REFUSERS = "Some clusters refuse admin requests (librdkafka's mock cluster has no controller to take them; managed services may forbid them)";

/** Why a topic the source reads is not recreated, and what the user can do instead. */
function keepReadTopic(topic: string, now: number, want: number): string {
  return (
    `topic ${topic} has ${now} partitions, more than partitions: ${want}, and Kafka cannot remove partitions; plan never recreates a topic a source reads: ` +
    "a new topic starts its offsets at 0 again, while sluice keeps the source's position in its WAL and names batches, output files and flushes by topic, partition and offset, " +
    'so new messages would be skipped as already read, or written under names earlier output already has. ' +
    `Keep partitions: ${now} (or drop the key), or move the source to a topic of a new name; to recreate this one by hand, first reset sluice's state for it: ` +
    "the WAL (wal.path), the consumer group's committed offsets, and the output already written from it"
  );
}

/** A topic setting set on the topic itself, as CreateTopics takes it. */
interface TopicSetting {
  name: string;
  value: string;
}

/** How to create the topic with the cluster's own tools, with what is known of it. */
function toolsCommand(topic: string, partitions?: number, replicas?: number, settings: TopicSetting[] = []): string {
  const flags = [`--topic ${topic}`, partitions ? `--partitions ${partitions}` : '', replicas ? `--replication-factor ${replicas}` : '', ...settings.map((s) => `--config ${s.name}=${s.value}`)];
  return `kafka-topics.sh --create ${flags.filter(Boolean).join(' ')}`;
}

/**
 * Waits until the cluster no longer lists `topic`, which it has been asked to delete (brokers
 * remove a topic's partitions in the background). A SluiceError saying so when it is still
 * listed after `timeoutMs`; `recreate` tells how to finish by hand.
 */
export async function topicGone(admin: Pick<Admin, 'listTopics'>, topic: string, timeoutMs: number, recreate: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    let listed: string[];
    try {
      listed = await admin.listTopics();
    } catch (err) {
      throw new SluiceError('CONNECT', `kafka: topic ${topic} was deleted, but listing the topics failed while waiting for it to go: ${detail(err)}. Once it is gone, ${recreate}`, { cause: err });
    }
    if (!listed.includes(topic)) return;
    if (Date.now() >= deadline) {
      throw new SluiceError(
        'CONNECT',
        `kafka: timed out: topic ${topic} was deleted, but the cluster still lists it ${timeoutMs / 1000} s later (it may still be removing it). Once it is gone, ${recreate}`,
      );
    }
    await sleep(Math.min(500, Math.max(1, deadline - Date.now())));
  }
}

/** A topic claimed by a connector; `partitions` as its config declares them. */
interface TopicClaim extends InfraClaim {
  partitions?: number;
}

function topicClaim(cluster: string, t: TopicNeed): TopicClaim {
  return {
    key: `kafka ${cluster} topic ${t.topic}`,
    object: `kafka topic ${t.topic}`,
    wants: t.partitions ? [`partitions: ${t.partitions}`] : [],
    partitions: t.partitions,
    ...(t.read ? { keep: "it reads the topic, and a recreated topic's offsets start at 0 again, below the position sluice keeps for it" } : {}),
    conflict(other) {
      const theirs = (other as TopicClaim).partitions;
      return t.partitions && theirs && theirs !== t.partitions ? `one wants ${t.partitions} partitions, the other ${theirs}` : undefined;
    },
  };
}

export class KafkaPlanner extends BrokerPlanner<KafkaConnectionConfig, KafkaNeeds> {
  private admin?: Admin;

  private async client(): Promise<Admin> {
    if (!this.admin) {
      const admin = (await kafkaClient(this.cfg, this.ctx.log, 'plan')).admin();
      try {
        await admin.connect();
      } catch (err) {
        await admin.disconnect().catch(() => {});
        throw new SluiceError('CONNECT', `cannot reach Kafka at ${this.cfg.brokers.join(',')}: ${errorMessage(err)}`, { cause: err });
      }
      this.admin = admin;
    }
    return this.admin;
  }

  /** Reads what exists; a failure is the plan's error for this connector. */
  private async read<T>(what: string, fn: (admin: Admin) => Promise<T>): Promise<T> {
    const admin = await this.client();
    try {
      return await fn(admin);
    } catch (err) {
      throw new SluiceError('CONNECT', `kafka: reading ${what} from ${this.cfg.brokers.join(',')} failed: ${detail(err)}`, { cause: err });
    }
  }

  /**
   * Runs one admin request of a change; a refusal becomes the error apply reports, with what to
   * do instead. A SluiceError of `fn` is its own report and passes as it is.
   */
  private async must<T>(what: string, instead: string, fn: (admin: Admin) => Promise<T>): Promise<T> {
    const admin = await this.client();
    try {
      return await fn(admin);
    } catch (err) {
      if (err instanceof SluiceError) throw err;
      throw new SluiceError('CONNECT', `kafka: the broker did not ${what}: ${detail(err)}. ${REFUSERS}: ${instead}`, { cause: err });
    }
  }

  /** Creates a missing topic. CreateTopics answers TOPIC_ALREADY_EXISTS (false) for a topic made meanwhile: that is as good. */
  private create(need: TopicNeed, summary: string): InfraChange {
    const { topic, partitions } = need;
    const tools = `create topic ${topic} with the cluster's own tools (${toolsCommand(topic, partitions)})`;
    return {
      object: `kafka topic ${topic}`,
      summary,
      destructive: false,
      apply: async () => {
        await this.must(
          `create topic ${topic}`,
          `${tools}, or let the broker create it when sluice first uses it (auto.create.topics.enable=true; it then has the broker's default partition count)`,
          (admin) => admin.createTopics({ topics: [{ topic, numPartitions: partitions ?? -1 }], waitForLeaders: true }),
        );
      },
    };
  }

  /** The settings set on the topic itself (not the broker's defaults), to create it again with. */
  private async topicSettings(admin: Admin, topic: string): Promise<TopicSetting[]> {
    const { ConfigResourceTypes, ConfigSource } = await import('kafkajs');
    const r = await admin.describeConfigs({ resources: [{ type: ConfigResourceTypes.TOPIC, name: topic }], includeSynonyms: false });
    const own = (r.resources[0]?.configEntries ?? []).filter((e) => e.configSource === ConfigSource.TOPIC_CONFIG || (!e.configSource && !e.isDefault && !e.readOnly));
    const hidden = own.filter((e) => e.configValue === null || e.configValue === undefined).map((e) => e.configName);
    if (hidden.length)
      throw new SluiceError(
        'CONNECT',
        `kafka: the broker does not tell the value of setting ${hidden.join(', ')} of topic ${topic} (sensitive), so it cannot be recreated with it: recreate the topic with the cluster's own tools`,
      );
    return own.map((e) => ({ name: e.configName, value: e.configValue }));
  }

  /**
   * Deletes the topic and creates it with `partitions`, keeping its replication factor and the
   * settings set on it (read again just before the delete: a topic whose settings cannot be read
   * is not deleted).
   */
  private recreate(need: TopicNeed, now: number, replicas: number | undefined): InfraChange {
    const { topic } = need;
    const want = need.partitions!;
    return {
      object: `kafka topic ${topic}`,
      summary: `- recreate topic ${topic} with ${want} partitions, keeping its ${replicas ? `replication factor (${replicas}) and ` : ''}settings: it has ${now}, and Kafka cannot remove partitions; deletes the topic and every message in it`,
      destructive: true,
      apply: async () => {
        const by = `recreate topic ${topic} with the cluster's own tools (kafka-topics.sh --delete --topic ${topic}, then --create with its settings)`;
        const { rf, settings } = await this.must(`describe topic ${topic} (its replication factor and settings, to recreate it with)`, `${by}; nothing was deleted`, async (admin) => {
          const [meta] = (await admin.fetchTopicMetadata({ topics: [topic] })).topics;
          return { rf: meta?.partitions[0]?.replicas.length, settings: await this.topicSettings(admin, topic) };
        });
        const command = toolsCommand(topic, want, rf, settings);
        await this.must(`delete topic ${topic}`, `${by}; nothing was deleted`, (admin) => admin.deleteTopics({ topics: [topic] }));
        const admin = await this.client();
        await topicGone(admin, topic, 30_000, `create it again: ${command}`);
        await this.must(`create topic ${topic} again (it is deleted)`, `create it with the cluster's own tools: ${command}`, async (a) => {
          const made = await a.createTopics({
            topics: [{ topic, numPartitions: want, ...(rf ? { replicationFactor: rf } : {}), configEntries: settings }],
            waitForLeaders: true,
          });
          if (!made) {
            throw new SluiceError(
              'CONNECT',
              `kafka: topic ${topic} exists again: something created it between its delete and apply's create (a producer, with auto.create.topics.enable=true?), with the broker's defaults; delete it and create it with: ${command}`,
            );
          }
        });
      },
    };
  }

  async plan(): Promise<InfraChange[]> {
    const existing = await this.read('the topic list', (a) => a.listTopics());
    const { topics, notes } = this.needs(existing);
    this.found = notes;
    // One need per topic; a topic the source reads stays read whatever else it is to it.
    const wanted = [...new Map(topics.map((t) => [t.topic, t])).values()].map((t) => (topics.some((o) => o.topic === t.topic && o.read) ? { ...t, read: true } : t));
    const have = new Set(existing);
    const counted = wanted.filter((t) => t.partitions && have.has(t.topic)).map((t) => t.topic);
    const meta = new Map(
      (counted.length ? (await this.read(`the metadata of ${counted.join(', ')}`, (a) => a.fetchTopicMetadata({ topics: counted }))).topics : []).map((t) => [t.name, t.partitions]),
    );
    const cluster = await this.read('the cluster', (a) => a.describeCluster()).catch(() => undefined);
    this.claimed = wanted.map((t) => topicClaim(cluster?.clusterId ?? [...this.cfg.brokers].sort().join(','), t));
    const out: InfraChange[] = [];
    for (const t of wanted) {
      const parts = t.partitions ? `${t.partitions} partitions` : "the broker's default partition count";
      if (!have.has(t.topic)) {
        out.push(this.create(t, `+ create topic ${t.topic} (${parts}; ${t.role})`));
        continue;
      }
      const now = meta.get(t.topic)?.length;
      if (!t.partitions || now === undefined || now === t.partitions) continue;
      const want = t.partitions;
      if (now < want) {
        out.push({
          object: `kafka topic ${t.topic}`,
          summary: `~ add partitions to topic ${t.topic}: ${now} -> ${want}`,
          destructive: false,
          apply: async () => {
            await this.must(`add partitions to topic ${t.topic}`, `add them with the cluster's own tools (kafka-topics.sh --alter --topic ${t.topic} --partitions ${want})`, (a) =>
              a.createPartitions({ topicPartitions: [{ topic: t.topic, count: want }] }),
            );
          },
        });
      } else if (t.read) {
        this.found.push({ problem: true, text: keepReadTopic(t.topic, now, want) });
      } else {
        out.push(this.recreate(t, now, meta.get(t.topic)?.[0]?.replicas.length));
      }
    }
    if (out.length && cluster) this.checkController(cluster);
    return out;
  }

  /** kafkajs sends CreateTopics, CreatePartitions, DeleteTopics and DescribeConfigs to the controller: warn when the cluster names none it has. */
  private checkController(cluster: { brokers: { nodeId: number }[]; controller: number | null }): void {
    if (cluster.brokers.some((b) => b.nodeId === cluster.controller)) return;
    this.found.push({
      problem: true,
      aboutChanges: true,
      text:
        `the cluster names no controller among its brokers (controller id ${cluster.controller}), so it cannot take the admin requests these changes need (CreateTopics, CreatePartitions, DeleteTopics, DescribeConfigs) ` +
        "and apply will fail on them (librdkafka's mock cluster is such a cluster): make them with the cluster's own tools; a missing topic can also be left to the broker to create when sluice first uses it (auto.create.topics.enable=true)",
    });
  }

  async close(): Promise<void> {
    const admin = this.admin;
    this.admin = undefined;
    await admin?.disconnect().catch(() => {});
  }
}

export function kafkaSourcePlanner(cfg: KafkaSourceConfig, ctx: ConnectorContext): InfraPlanner {
  return new KafkaPlanner(cfg, sourceNeeds(cfg), ctx);
}

export function kafkaSinkPlanner(cfg: KafkaSinkConfig, ctx: ConnectorContext): InfraPlanner {
  return new KafkaPlanner(cfg, sinkNeeds(cfg), ctx);
}
