import type { ColumnInfo, ConnectorContext } from './types.js';

/**
 * Infrastructure a connector needs outside sluice (database tables, queues, exchanges, streams,
 * topics), as `sluice plan` shows it and `sluice apply` creates it. A connector spec offers a
 * planner through its optional `planner()`; the CLI knows nothing about the system.
 */

/** The columns a model produces, as DuckDB types (inferred from the project's fixtures). */
export interface ModelShape {
  model: string;
  columns: ColumnInfo[];
}

/** One difference between what the project needs and what exists. */
export interface InfraChange {
  /** What it touches, e.g. `postgres table public.orders`. */
  object: string;
  /** One line for the plan, e.g. `+ add column note text`. */
  summary: string;
  /** Drops, recreates or retypes something that holds data: applied only with --allow-destructive. */
  destructive: boolean;
  /** Makes the change; throws SluiceError on failure. */
  apply(): Promise<void>;
}

/** Something the plan found that is no change: what it cannot check, or a problem apply cannot fix. */
export interface InfraNote {
  text: string;
  /**
   * What exists cannot be made to match the config by `sluice apply`: `sluice run` fails on it, or
   * the change it would take is one sluice refuses to make (shown as a warning).
   */
  problem?: boolean;
  /** It speaks of how the connector's changes can be made: dropped when plan leaves none of them. */
  aboutChanges?: boolean;
}

/**
 * An object a planner looks after (a stream, a topic), as the config declares it. Two connectors
 * of a project may name the same object: plan compares their claims so that it never lists
 * changes that undo each other on every apply, nor lets one connector recreate what another
 * depends on.
 */
export interface InfraClaim {
  /** The object across connectors: the system, the cluster as its servers name themselves, and the object's name. */
  key: string;
  /** The object as this connector's changes and notes name it (`InfraChange.object`). */
  object: string;
  /** The settings the config declares for it, for the plan (`subjects a, b`); empty: it only needs to exist. */
  wants: string[];
  /** Set when recreating the object would break this connector: why. No connector's plan then recreates it. */
  keep?: string;
  /** Why this claim and `other` (same key) cannot both be met, or undefined when they can. */
  conflict(other: InfraClaim): string | undefined;
}

export interface InfraPlanner {
  /**
   * False when what the planner looks after does not depend on the models' columns (queues,
   * streams, topics): plan then needs no fixtures for it. Missing means true.
   */
  readonly needsModels?: boolean;
  /** The changes that make the system match what `models` need; nothing is changed yet. */
  plan(models: ModelShape[]): Promise<InfraChange[]>;
  /** The notes of the last plan(). */
  notes?(): InfraNote[];
  /** The objects of the last plan() that other connectors of the project may also name. */
  claims?(): InfraClaim[];
  close(): Promise<void>;
}

/**
 * The frame of a planner for a broker's queues, streams or topics: it needs no model columns,
 * and collects its notes while it plans. Subclasses connect lazily in plan() and close in close().
 */
export abstract class BrokerPlanner<Config, Needs> implements InfraPlanner {
  readonly needsModels = false;
  protected found: InfraNote[] = [];
  protected claimed: InfraClaim[] = [];

  constructor(
    protected readonly cfg: Config,
    protected readonly needs: Needs,
    protected readonly ctx: ConnectorContext,
  ) {}

  abstract plan(): Promise<InfraChange[]>;

  notes(): InfraNote[] {
    return this.found;
  }

  claims(): InfraClaim[] {
    return this.claimed;
  }

  abstract close(): Promise<void>;
}
