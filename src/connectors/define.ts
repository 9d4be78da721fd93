import type { z } from 'zod';
import type { InfraPlanner } from './infra.js';
import type { ConnectorContext, DeadLetterQueue, MessageMeta, Sink, Source } from './types.js';

/** A metadata column of `incoming` a source can fill (MessageMeta's fields, `_`-prefixed). */
export type MetadataColumn = `_${keyof MessageMeta}`;

/** Where a source's dead letters go. */
export type SourceDlq =
  /**
   * NDJSON files in a directory, `dlq:` naming it; with `defaultBesideWal`, a source without
   * `dlq:` dead-letters to `<wal.path>/dlq` (per source in a project of several).
   */
  | { kind: 'directory'; defaultBesideWal: boolean }
  /** A queue, stream, subject or topic of the source's own broker (`dlq:` or a name derived from the source). */
  | { kind: 'broker' };

/**
 * What a source consumes as, on its broker: two sources of one definition with the same `key`
 * on a common server are, to the broker, two workers of one consumer, and each gets only part
 * of what it should read.
 */
export interface ConsumerIdentity {
  /** The servers it reaches (host:port, lower case, localhost as 127.0.0.1). */
  servers: string[];
  /** Equal for two sources on one broker that share a consumer. */
  key: string;
  /** The key to set apart, as in sources.yml. */
  setting: string;
  /** What they share and what goes wrong, after "sources a (file:line) and b (file:line) ". */
  problem: string;
}

export interface RequiredColumn {
  key: (string | number)[];
  column?: string;
  /** A SQL expression over the model's columns (every column it references is required). */
  expr?: string;
}

/** The `type:` literal of a connector schema's output. */
type TypeName<S extends z.ZodType> = z.output<S> extends { type: infer T extends string } ? T : never;

/**
 * A source as its folder defines it: `cfg` is the output of `schema` in every function. Each
 * function loads the client library it needs itself (a dynamic import), so that a project that
 * does not use the connector never loads it.
 */
export interface SourceDefinitionOf<S extends z.ZodType> {
  /** The `type:` of config/sources.yml, equal to the schema's literal. */
  type: TypeName<S>;
  schema: S;
  /** One line for the reference docs. */
  description: string;
  dlq: SourceDlq;
  /** The metadata columns its messages fill (MessageMeta); the others are NULL. */
  metadata: readonly MetadataColumn[];
  /** Each worker gets its own WAL directory and file names (competing consumers of a queue). */
  workerScoped?: boolean;
  /**
   * Its messages come in partitions (MessageMeta topic and partition, an `offset` in coords)
   * that a consumer group divides among its workers, and Source.partitions() says which this
   * worker reads: a shared window state store can move a partition's window state with it.
   */
  partitioned?: boolean;
  create(cfg: z.output<S>, ctx: ConnectorContext): Promise<Source>;
  /** Opens the source's dead-letter queue (undefined: none configured). */
  createDlq?(cfg: z.output<S>, ctx: ConnectorContext): Promise<DeadLetterQueue | undefined>;
  /** What the source needs to exist outside sluice (queues, streams, topics, its DLQ's), for `sluice plan` / `apply`. */
  planner?(cfg: z.output<S>, ctx: ConnectorContext): Promise<InfraPlanner>;
  /** The consumer it reads as on its broker, for the shared-consumer check; absent: it shares none. */
  identity?(cfg: z.output<S>): ConsumerIdentity | undefined;
}

export interface SinkDefinitionOf<S extends z.ZodType> {
  /** The `type:` of config/sinks.yml, equal to the schema's literal. */
  type: TypeName<S>;
  schema: S;
  /** One line for the reference docs. */
  description: string;
  /**
   * Columns a model must produce for this sink (partition keys, ...): a column name, or the
   * config key (path inside the sink block) with the column or SQL expression it names.
   */
  requiredColumns?(cfg: z.output<S>): (string | RequiredColumn)[];
  /**
   * The columns a row replaces the earlier row of (the sink upserts by them: a materialised
   * view may write to it), or undefined when the sink appends.
   */
  upsertKey?(cfg: z.output<S>): string[] | undefined;
  create(cfg: z.output<S>, ctx: ConnectorContext): Promise<Sink>;
  /** What the sink needs to exist outside sluice (tables, queues, streams, topics), for `sluice plan` / `apply`. */
  planner?(cfg: z.output<S>, ctx: ConnectorContext): Promise<InfraPlanner>;
}

/**
 * A connector's config as the rest of sluice holds it: the output of the definition's own
 * schema (the project loader parses every block with it), its type erased.
 */
export type ConnectorConfig = Record<string, unknown>;

/** Every source definition, as the registry lists them: defineSource's result. */
export interface SourceDefinition {
  readonly kind: 'source';
  readonly type: string;
  readonly schema: z.ZodType;
  readonly description: string;
  readonly dlq: SourceDlq;
  readonly metadata: readonly MetadataColumn[];
  readonly workerScoped: boolean;
  readonly partitioned: boolean;
  create(cfg: ConnectorConfig, ctx: ConnectorContext): Promise<Source>;
  createDlq?(cfg: ConnectorConfig, ctx: ConnectorContext): Promise<DeadLetterQueue | undefined>;
  planner?(cfg: ConnectorConfig, ctx: ConnectorContext): Promise<InfraPlanner>;
  identity?(cfg: ConnectorConfig): ConsumerIdentity | undefined;
}

/** Every sink definition, as the registry lists them: defineSink's result. */
export interface SinkDefinition {
  readonly kind: 'sink';
  readonly type: string;
  readonly schema: z.ZodType;
  readonly description: string;
  requiredColumns?(cfg: ConnectorConfig): (string | RequiredColumn)[];
  upsertKey?(cfg: ConnectorConfig): string[] | undefined;
  create(cfg: ConnectorConfig, ctx: ConnectorContext): Promise<Sink>;
  planner?(cfg: ConnectorConfig, ctx: ConnectorContext): Promise<InfraPlanner>;
}

/**
 * The one place a config loses its type: a definition's functions are only ever called with a
 * config its own schema produced (the loader guarantees it), so the cast restores what the
 * erasure hid.
 */
function typed<S extends z.ZodType>(cfg: ConnectorConfig): z.output<S> {
  return cfg as z.output<S>;
}

/** A source definition, its config type flowing from `schema` into every function. */
export function defineSource<S extends z.ZodType>(def: SourceDefinitionOf<S>): SourceDefinition {
  const { createDlq, planner, identity } = def;
  return {
    kind: 'source',
    type: def.type,
    schema: def.schema,
    description: def.description,
    dlq: def.dlq,
    metadata: def.metadata,
    workerScoped: def.workerScoped ?? false,
    partitioned: def.partitioned ?? false,
    create: (cfg, ctx) => def.create(typed<S>(cfg), ctx),
    createDlq: createDlq && ((cfg, ctx) => createDlq(typed<S>(cfg), ctx)),
    planner: planner && ((cfg, ctx) => planner(typed<S>(cfg), ctx)),
    identity: identity && ((cfg) => identity(typed<S>(cfg))),
  };
}

/** A sink definition, its config type flowing from `schema` into every function. */
export function defineSink<S extends z.ZodType>(def: SinkDefinitionOf<S>): SinkDefinition {
  const { requiredColumns, upsertKey, planner } = def;
  return {
    kind: 'sink',
    type: def.type,
    schema: def.schema,
    description: def.description,
    create: (cfg, ctx) => def.create(typed<S>(cfg), ctx),
    requiredColumns: requiredColumns && ((cfg) => requiredColumns(typed<S>(cfg))),
    upsertKey: upsertKey && ((cfg) => upsertKey(typed<S>(cfg))),
    planner: planner && ((cfg, ctx) => planner(typed<S>(cfg), ctx)),
  };
}

/** True when a source without `dlq:` dead-letters to the directory beside its WAL (`<wal.path>/dlq`). */
export function dlqDefaultsBesideWal(def: SourceDefinition): boolean {
  return def.dlq.kind === 'directory' && def.dlq.defaultBesideWal;
}
