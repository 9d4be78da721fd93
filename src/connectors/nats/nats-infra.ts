import type { NatsConnection } from '@nats-io/transport-node';
import { jetstreamManager, RetentionPolicy, StorageType, type JetStreamManager, type StreamInfo } from '@nats-io/jetstream';
import { SluiceError, errorMessage } from '../../errors.js';
import { BrokerPlanner, type InfraChange, type InfraClaim, type InfraPlanner } from '../infra.js';
import { templateColumns } from '../row-json.js';
import type { ConnectorContext } from '../types.js';
import { dlqSubject, type NatsConnectionConfig, type NatsSinkConfig, type NatsSourceConfig } from './nats-config.js';
import { connectNats } from './nats-source.js';

/**
 * `sluice plan` / `apply` for the nats source and sink: the JetStream streams they read and
 * publish to, and the source's dead-letter stream.
 *
 * Plan changes only streams sluice would create itself: a stream given `subjects` in the config
 * (and the dead-letter stream `<stream>_DLQ`) that is missing is created with them (file storage,
 * limits retention, as `sluice run` creates it); one that exists with file storage and limits
 * retention gets the subjects it lacks (an update) and loses those beyond the config (a
 * destructive update), and the sink's duplicate window. A stream with another storage type or
 * retention policy was not made by sluice, and `sluice run` works with it as it is: plan notes
 * how it differs and changes nothing, as for a stream without `subjects` in the config (the
 * user's: plan only checks that it exists) and a stream of another name that captures the
 * dead-letter subject. Plan never deletes a stream.
 */

/** A stream the connector uses. */
interface StreamNeed {
  name: string;
  /** What it is to the connector, for the plan. */
  role: string;
  /** Set: sluice creates the stream with these subjects and keeps them so. Unset: the user's stream. */
  subjects?: string[];
  duplicateWindowMs?: number;
  /** The consequence of a missing stream sluice may not create. */
  ifMissing: string;
}

export interface NatsNeeds {
  streams: StreamNeed[];
  /** The source's dead letters: the subject, captured by a stream (`<stream>_DLQ` when sluice creates it). */
  dlq?: { subject: string; stream: string };
  /** A constant subject the sink publishes to without naming a stream: some stream must capture it. */
  captured?: string;
}

export function sourceNeeds(cfg: NatsSourceConfig): NatsNeeds {
  return {
    streams: [{ name: cfg.stream, role: 'the stream the source reads', subjects: cfg.subjects, ifMissing: 'the source sets no subjects to create it with, so sluice run fails until it exists' }],
    dlq: { subject: dlqSubject(cfg), stream: `${cfg.stream}_DLQ` },
  };
}

export function sinkNeeds(cfg: NatsSinkConfig): NatsNeeds {
  if (!cfg.stream) return { streams: [], captured: templateColumns(cfg.subject).length ? undefined : cfg.subject };
  return {
    streams: [
      {
        name: cfg.stream,
        role: 'the stream the sink publishes to',
        subjects: cfg.subjects,
        duplicateWindowMs: cfg.duplicate_window_ms,
        ifMissing: 'the sink sets no subjects to create it with, so sluice run fails until it exists',
      },
    ],
  };
}

const NS_PER_MS = 1_000_000;
const notFound = (err: unknown) => (err as Error | undefined)?.name === 'StreamNotFoundError';

/** How a stream differs from the file storage and limits retention sluice creates streams with, or undefined. */
function foreignSettings(info: StreamInfo): string | undefined {
  const why: string[] = [];
  if (info.config.storage !== StorageType.File) why.push(`${info.config.storage} storage`);
  if (info.config.retention !== RetentionPolicy.Limits) why.push(`${info.config.retention} retention`);
  return why.length ? why.join(' and ') : undefined;
}

const list = (subjects: string[]) => `subject${subjects.length === 1 ? '' : 's'} ${subjects.join(', ')}`;

/** A stream claimed by a connector: exactly `subjects` (a stream from the config), or at least `needs` (the dead-letter stream). */
interface StreamClaim extends InfraClaim {
  subjects?: string[];
  needs?: string;
  windowMs?: number;
}

function streamClaim(server: string, name: string, c: { subjects?: string[]; needs?: string; windowMs?: number }): StreamClaim {
  const wants = [...(c.subjects ? [`subjects ${c.subjects.join(', ')}`] : []), ...(c.needs ? [`subject ${c.needs} (dead letters)`] : []), ...(c.windowMs ? [`duplicate_window_ms ${c.windowMs}`] : [])];
  const self: StreamClaim = {
    key: `nats ${server} stream ${name}`,
    object: `nats stream ${name}`,
    wants,
    ...c,
    conflict(other) {
      const o = other as StreamClaim;
      if (self.subjects && o.subjects && [...self.subjects].sort().join(' ') !== [...o.subjects].sort().join(' ')) return 'they list other subjects';
      if (self.subjects && o.needs && !self.subjects.includes(o.needs)) return `the dead-letter subject ${o.needs} is not among the subjects the other lists`;
      if (self.windowMs && o.windowMs && self.windowMs !== o.windowMs) return 'they set other duplicate windows';
      return undefined;
    },
  };
  return self;
}

export class NatsPlanner extends BrokerPlanner<NatsConnectionConfig, NatsNeeds> {
  private nc?: NatsConnection;
  private jsm?: JetStreamManager;

  private async manager(): Promise<JetStreamManager> {
    if (!this.jsm) {
      this.nc = await connectNats(this.cfg, this.ctx.log, 'plan');
      this.jsm = await jetstreamManager(this.nc);
    }
    return this.jsm;
  }

  /** The server (its cluster, when it is in one) as it names itself: streams of the same name elsewhere are other streams. */
  private server(): string {
    const info = this.nc?.info;
    return info?.cluster ?? info?.server_id ?? String(this.cfg.servers);
  }

  private async info(name: string): Promise<StreamInfo | undefined> {
    try {
      return await (await this.manager()).streams.info(name);
    } catch (err) {
      if (notFound(err)) return undefined;
      throw new SluiceError('CONNECT', `nats: reading stream ${name} failed: ${errorMessage(err)}`, { cause: err });
    }
  }

  /** The stream that captures `subject`, or undefined. */
  private async capturing(subject: string): Promise<string | undefined> {
    try {
      return await (await this.manager()).streams.find(subject);
    } catch (err) {
      if (notFound(err)) return undefined;
      throw new SluiceError('CONNECT', `nats: looking up the stream of subject ${subject} failed: ${errorMessage(err)}`, { cause: err });
    }
  }

  /** Runs one JetStream call of a change; its failure becomes the error apply reports. */
  private async must(what: string, fn: (jsm: JetStreamManager) => Promise<unknown>): Promise<void> {
    try {
      await fn(await this.manager());
    } catch (err) {
      throw new SluiceError('CONNECT', `nats: ${what} failed: ${errorMessage(err)}`, { cause: err });
    }
  }

  private create(name: string, subjects: string[], role: string, duplicateWindowMs?: number): InfraChange {
    const config = {
      name,
      subjects,
      storage: StorageType.File,
      retention: RetentionPolicy.Limits,
      ...(duplicateWindowMs ? { duplicate_window: duplicateWindowMs * NS_PER_MS } : {}),
    };
    return {
      object: `nats stream ${name}`,
      summary: `+ create stream ${name} (${list(subjects)}; file storage; ${role})`,
      destructive: false,
      apply: () => this.must(`creating stream ${name}`, (jsm) => jsm.streams.add(config)),
    };
  }

  private setSubjects(name: string, subjects: string[], summary: string, destructive: boolean): InfraChange {
    return { object: `nats stream ${name}`, summary, destructive, apply: () => this.must(`updating the subjects of stream ${name}`, (jsm) => jsm.streams.update(name, { subjects })) };
  }

  /** The note for a stream sluice did not make: how it differs from the config, and that plan leaves it so. */
  private leave(s: StreamNeed, info: StreamInfo, foreign: string): void {
    const have = info.config.subjects ?? [];
    const lacks = s.subjects!.filter((x) => !have.includes(x));
    const beyond = have.filter((x) => !s.subjects!.includes(x));
    const window = s.duplicateWindowMs && info.config.duplicate_window !== s.duplicateWindowMs * NS_PER_MS ? s.duplicateWindowMs : undefined;
    const diffs = [
      lacks.length ? `it lacks ${list(lacks)} of the config (messages published to ${lacks.length === 1 ? 'it' : 'them'} are not stored)` : '',
      beyond.length ? `it also has ${list(beyond)}` : '',
      window ? `its duplicate window is ${info.config.duplicate_window / NS_PER_MS} ms, not ${window} ms` : '',
    ].filter(Boolean);
    this.found.push({
      text:
        `stream ${s.name} (${s.role}) has ${foreign}, not the file storage and limits retention sluice creates streams with, so it is not sluice's: plan changes nothing on it, and sluice run uses it as it is` +
        (diffs.length ? `; ${diffs.join('; ')}: change ${diffs.length === 1 ? 'that' : 'those'} yourself if you need to` : ''),
    });
  }

  private async planStream(s: StreamNeed): Promise<InfraChange[]> {
    const info = await this.info(s.name);
    if (!info) {
      if (s.subjects) return [this.create(s.name, s.subjects, s.role, s.duplicateWindowMs)];
      this.found.push({ text: `stream ${s.name} (${s.role}) does not exist; ${s.ifMissing}`, problem: true });
      return [];
    }
    if (!s.subjects) {
      this.found.push({ text: `stream ${s.name} (${s.role}) is yours (no subjects for it in the config): plan only checks that it exists` });
      return [];
    }
    const foreign = foreignSettings(info);
    if (foreign) {
      this.leave(s, info, foreign);
      return [];
    }
    const out: InfraChange[] = [];
    const have = info.config.subjects ?? [];
    const add = s.subjects.filter((x) => !have.includes(x));
    const drop = have.filter((x) => !s.subjects!.includes(x));
    if (add.length) out.push(this.setSubjects(s.name, [...have, ...add], `~ add ${list(add)} to stream ${s.name}`, false));
    if (drop.length) {
      out.push(this.setSubjects(s.name, s.subjects, `- remove ${list(drop)} from stream ${s.name}: messages published to ${drop.length === 1 ? 'it' : 'them'} are no longer stored`, true));
    }
    const window = s.duplicateWindowMs;
    if (window && info.config.duplicate_window !== window * NS_PER_MS) {
      out.push({
        object: `nats stream ${s.name}`,
        summary: `~ set the duplicate window of stream ${s.name} to ${window} ms (now ${info.config.duplicate_window / NS_PER_MS} ms)`,
        destructive: false,
        apply: () => this.must(`updating stream ${s.name}`, (jsm) => jsm.streams.update(s.name, { duplicate_window: window * NS_PER_MS })),
      });
    }
    return out;
  }

  /**
   * The dead-letter stream: the stream that captures the subject, else `<stream>_DLQ` (what
   * `sluice run` creates). Only `<stream>_DLQ` with sluice's storage and retention is changed.
   */
  private async planDlq(subject: string, stream: string): Promise<InfraChange[]> {
    const role = 'the dead-letter stream';
    const owner = await this.capturing(subject);
    if (owner && owner !== stream) {
      this.found.push({ text: `dead letters go to stream ${owner}, which captures subject ${subject}; it is not the stream sluice would create (${stream}), so plan leaves it as it is` });
      return [];
    }
    this.claimed.push(streamClaim(this.server(), stream, { needs: subject }));
    const info = await this.info(stream);
    if (!info) return [this.create(stream, [subject], role)];
    const foreign = foreignSettings(info);
    if (owner) {
      if (foreign)
        this.found.push({
          text: `dead-letter stream ${stream} has ${foreign}, not the file storage and limits retention sluice creates streams with: plan changes nothing on it, and sluice run uses it as it is`,
        });
      return [];
    }
    if (foreign) {
      this.found.push({
        problem: true,
        text: `stream ${stream} exists with ${foreign}, not as sluice creates it, and does not capture the dead-letter subject ${subject}: sluice run cannot create it under that name, so dead-lettering fails; add subject ${subject} to it yourself, or set dlq: to a subject another stream captures`,
      });
      return [];
    }
    return [this.setSubjects(stream, [...(info.config.subjects ?? []), subject], `~ add subject ${subject} to stream ${stream} (${role})`, false)];
  }

  async plan(): Promise<InfraChange[]> {
    this.found = [];
    this.claimed = [];
    await this.manager();
    for (const s of this.needs.streams) {
      if (s.subjects) this.claimed.push(streamClaim(this.server(), s.name, { subjects: s.subjects, windowMs: s.duplicateWindowMs }));
    }
    const out: InfraChange[] = [];
    for (const s of this.needs.streams) out.push(...(await this.planStream(s)));
    if (this.needs.dlq) out.push(...(await this.planDlq(this.needs.dlq.subject, this.needs.dlq.stream)));
    const subject = this.needs.captured;
    if (subject && !(await this.capturing(subject))) {
      this.found.push({ text: `no stream captures subject ${subject}, so JetStream refuses what the sink publishes; set stream and subjects on the sink, or create a stream for it`, problem: true });
    }
    return out;
  }

  async close(): Promise<void> {
    const nc = this.nc;
    this.nc = undefined;
    this.jsm = undefined;
    await nc?.close().catch(() => {});
  }
}

export function natsSourcePlanner(cfg: NatsSourceConfig, ctx: ConnectorContext): InfraPlanner {
  return new NatsPlanner(cfg, sourceNeeds(cfg), ctx);
}

export function natsSinkPlanner(cfg: NatsSinkConfig, ctx: ConnectorContext): InfraPlanner {
  return new NatsPlanner(cfg, sinkNeeds(cfg), ctx);
}
