import type { SinkSpec, SourceSpec } from '../connectors/registry.js';
import type { SinkPolicy, SourcePolicy } from '../connectors/shared-config.js';
import type { RenderedModel } from '../sql/template.js';
import type { ModelContract } from './contract-config.js';
import type { Handler, HandlerInput } from './handler-def.js';
import type { DataTest, ReferenceDef, UnitTest } from './data-test-config.js';

// What loading a project yields (src/project/project-loader.ts) and what the layers above read.

export interface ProjectOptions {
  project?: string;
  config?: string;
  models?: string;
  env?: NodeJS.ProcessEnv;
  /** Target (environment) whose overrides apply; default: sluice.yml's `target:`. */
  target?: string;
}

export interface NamedSource {
  name: string;
  type: string;
  spec: SourceSpec;
  cfg: Record<string, unknown> & { batch_size: number; batch_timeout_ms: number; batch_max_bytes: number; dlq?: string };
  /** limits / contract, enforced by the engine for every source type. */
  policy: SourcePolicy;
  file: string;
  line?: number;
}

export interface NamedSink {
  name: string;
  type: string;
  spec: SinkSpec;
  cfg: Record<string, unknown>;
  /** retry / on_error / circuit, shared by every sink type. */
  policy: SinkPolicy;
  file: string;
  line?: number;
  /** Line of a key inside this sink's block (`['partition_by', 1]`). */
  lineOf?: (keyPath: (string | number)[]) => number | undefined;
}

export interface ModelDef {
  name: string;
  file: string;
  sqlText: string;
  rendered: RenderedModel;
  refs: string[];
  /** The source whose batches feed this model (directly or through refs); the first of `feeds`. */
  source: string;
  /**
   * Every source whose batches feed it: one, or two for a stream join of two sources and the
   * models downstream of it (their sources then run as one pipeline: see pipelineGroups).
   */
  feeds: string[];
  sinks: string[];
  maxFileBytes: number;
  maxAgeSeconds: number;
  /** From `config(description=...)` in the SQL or overrides.<model>.description. */
  description?: string;
  /** Documented columns (overrides.<model>.columns). */
  columns: ColumnDoc[];
  /** Data tests (overrides.<model>.columns[].tests and overrides.<model>.tests), normalised. */
  dataTests: DataTest[];
  /** Its schema contract (overrides.<model>.contract and typed columns); undefined when none. */
  contract?: ModelContract;
  /** Model-level tests as declared (shown by `sluice docs`). */
  tests?: unknown[];
  /** A windowed model's settings (overrides.<model>.window), defaults filled in. */
  window?: WindowSettings;
  /** Where overrides.<model>.window is (config/models.yml). */
  windowAt?: { file: string; line?: number };
  /** A materialised view: a group idle this long (wall clock) is let go (overrides.<model>.state_ttl). */
  stateTtl?: string;
  /** Where overrides.<model>.state_ttl is. */
  stateTtlAt?: { file: string; line?: number };
  /** A handler (handlers/<name>.ts), not SQL: `rendered.sql` then reads its input, and `sqlText` is its code. */
  handler?: HandlerDef;
}

/** A handler step of the DAG (src/project/handler-files.ts). */
export interface HandlerDef {
  spec: Handler;
  from: HandlerInput;
  /** The keys of its output schema, when that is a zod object. */
  outputColumns?: string[];
  /** Its subprocess pool (overrides.<handler>.executor), defaults filled in. */
  executor?: ExecutorSettings;
}

/** A handler's subprocess pool (config/models.yml `overrides.<handler>.executor`). */
export interface ExecutorSettings {
  binaryPath: string;
  maxExecutors: number;
  taskTimeoutSeconds: number;
  windowSize: number;
  maxRetries: number;
  maxOutputBytes: number;
  /** Added to every task's environment; never logged. */
  env: Record<string, string>;
  /** Where overrides.<handler>.executor is. */
  at: { file: string; line?: number };
}

/** How a windowed model treats time, late events and its limits (config/models.yml `overrides.<model>.window`). */
export interface WindowSettings {
  /** Allowed out-of-orderness: the watermark trails the largest event time by this much (interval text). */
  lateness: string;
  /** How long a window's state is kept after it is emitted, for late updates (`late: update`). */
  allowedLateness: string;
  /** A partition with no message for this long stops holding the watermark back. */
  idleTimeout: string;
  /** What happens to an event whose window was already emitted. */
  late: 'drop' | 'dlq' | 'update' | 'reopen';
  /** A deduplicating model: how long (event time) a key is remembered past its latest row. */
  ttl?: string;
  /** Sessions are cut at multiples of this duration from the epoch (session windows). */
  maxSessionDuration?: string;
  /** Distinct groups one window may hold. */
  maxGroupsPerWindow?: number;
  /** Over maxGroupsPerWindow: stop the run (`fail`) or dead-letter the messages that would add a group (`dlq`). */
  onMaxGroups: 'fail' | 'dlq';
}

export const DEFAULT_WINDOW_SETTINGS: WindowSettings = { lateness: '0 seconds', allowedLateness: '0 seconds', idleTimeout: '60 seconds', late: 'dlq', onMaxGroups: 'fail' };

export interface ColumnDoc {
  name: string;
  description?: string;
  /** Data tests as declared (shown by `sluice docs`). */
  tests?: unknown[];
  /** Where it is documented (config/models.yml). */
  file?: string;
  line?: number;
}

export interface Project {
  dir: string;
  name: string;
  /** The target (environment) in force, when sluice.yml declares targets. */
  target?: string;
  configDir: string;
  modelsDir: string;
  walPath: string;
  /** While a sink fails, reading pauses once the WAL holds this many bytes. */
  walMaxBytes: number;
  port: number;
  duckdb: { threads?: number; memory_limit?: string };
  /** sluice.yml window_state: a shared store of windowed models' state per source partition. */
  windowState?: { postgres: string; table: string; at: { file: string; line?: number } };
  /** node.max_heap_mb: the heap limit `sluice run` gives itself (see src/cli/heap.ts). */
  nodeMaxHeapMb?: number;
  /** How long an infrastructure failure (full disk, IO error) is waited out, and how often it is retried. */
  infraErrors: { maxBackoffMs: number; giveUpAfterSeconds: number };
  sources: NamedSource[];
  sinks: NamedSink[];
  /** In dependency order. */
  models: ModelDef[];
  /** Reference tables for `relationships` tests (config/models.yml references:). */
  references: ReferenceDef[];
  /** Unit test cases (tests/*.yml). */
  unitTests: UnitTest[];
}
