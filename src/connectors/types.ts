import type { DuckDBConnection } from '@duckdb/node-api';
import type { Logger } from 'pino';

/** One message as the source delivered it: the raw bytes (as text) and where it came from. */
export interface RawMessage {
  payload: string;
  /** Source coordinates (file and line, partition and offset, ...) for the DLQ and logs. */
  coords: Record<string, unknown>;
  /** True when the broker says this message was delivered before (a possible duplicate). */
  redelivered?: boolean;
  /** The source's own message object, for a DLQ that must keep headers and properties. */
  raw?: unknown;
  /** Where the message came from, as models see it in `incoming._key`, `incoming._topic`, ... */
  meta?: MessageMeta;
}

/**
 * Message metadata, the same columns for every source (NULL where a source has no such thing):
 * `_topic` the place read from (Kafka topic, queue, stream, file), `_key` the message's routing
 * (Kafka key, AMQP routing key, NATS subject), `_partition`, `_offset` (Kafka offset, stream
 * sequence, file line), `_id` (message id, Redis entry id), `_timestamp`, `_headers`.
 */
export interface MessageMeta {
  topic?: string;
  key?: string;
  partition?: number;
  offset?: number;
  id?: string;
  /** Milliseconds since the epoch. */
  timestamp?: number;
  headers?: Record<string, string>;
}

/**
 * A batch's payloads as bytes in one buffer: message i is `data[starts[i], ends[i])`, the
 * UTF-8 of `messages[i].payload`. Sources that read bytes in bulk (files) hand this over so
 * that the engine can scan and load the batch without a JavaScript string per message. No
 * payload holds the separator byte: DuckDB splits the batch at it (NDJSON lines never hold a
 * newline; a broker source that joins payloads with 0x1E must check none holds one, or hand
 * over no block). The buffer must stay unchanged until the batch is acked.
 */
export interface PayloadBlock {
  data: Buffer;
  starts: Uint32Array;
  ends: Uint32Array;
  /** The byte between messages in `data` (default 0x0A, a newline). */
  separator?: number;
}

/**
 * Messages a source hands over in one poll, with everything needed to acknowledge them later.
 * The engine joins one or more chunks into a batch (engine/batcher.ts) and acks each of them.
 */
export interface SourceChunk {
  messages: RawMessage[];
  /** The same payloads as one block of bytes (optional; the engine builds one otherwise). */
  block?: PayloadBlock;
  /** Payload bytes of `messages` (optional: the engine counts them otherwise). */
  bytes?: number;
  /** The source position after this chunk; JSON-serialisable, stored in the WAL state at commit. */
  position: unknown;
  /**
   * Sortable keys of the first and last message, used to name output files deterministically.
   * Sources without positions (queues) leave them out; the engine then uses its own batch
   * sequence number, prefixed with the worker id.
   */
  first?: string;
  last?: string;
  /** Whatever the source needs to acknowledge this chunk later. */
  ackToken?: unknown;
  /** True when the source held more than the limits let it hand over: the batch is full. */
  full?: boolean;
  /** The source it came from, in a pipeline that reads two (set by the engine's MergedSource, not by sources). */
  origin?: string;
}

/** What one poll may hand over at most: the room left in the batch the engine is forming. */
export interface PollLimits {
  /** Messages. */
  maxMessages: number;
  /**
   * Payload bytes. A chunk stops before the message that would pass it, but holds its first
   * message however large (the engine dead-letters one over limits.max_message_bytes) unless
   * `strict`.
   */
  maxBytes: number;
  /**
   * True when the batch already holds messages: then `maxBytes` holds for the first message
   * too, and a chunk may come back empty with `full` set.
   */
  strict: boolean;
}

/** A source's backlog: `topic` is the Kafka topic, the stream or the queue. */
export interface SourceLag {
  topic: string;
  partition?: number;
  messages: number;
}

export interface Source {
  /**
   * Opens the source at `position` (as stored by a previous run's commit; undefined = start).
   * Throws SluiceError('CONNECT') when the system cannot be reached.
   */
  open(position: unknown): Promise<void>;
  /**
   * Hands over, in source order, the messages the source holds or can read at once, up to
   * `limits`. With none at hand it waits until one arrives, then returns what it has then (it
   * never waits to fill the limits: the engine sizes and times batches). Returns an empty chunk
   * when `signal` aborts first, and null once a finite source is exhausted. Each chunk's
   * `position` is a snapshot: the engine polls again before acking what it has (never two polls
   * at once). A reply that comes after the abort is kept for the next poll, never dropped.
   */
  poll(limits: PollLimits, signal: AbortSignal): Promise<SourceChunk | null>;
  /**
   * Acknowledges a chunk. Called only after every row its messages produced and every DLQ
   * record of its failed messages is durable; chunks are acked in the order they were polled.
   */
  ack(chunk: SourceChunk): Promise<void>;
  /**
   * The partitions this worker reads now, as `topic/partition` (MessageMeta's topic and
   * partition). A windowed model's watermark waits for each of them until it has an event or
   * has been idle for idle_timeout, so that a partition read late does not find its windows
   * already closed. Undefined until the source knows its first assignment (a consumer group's
   * first join). Optional: a source without partitions omits it.
   */
  partitions?(): string[] | undefined;
  /** False while the source has lost its connection (optional: sources without one omit it). */
  healthy?(): boolean;
  /**
   * Messages waiting in the source that this worker has not handed to the engine yet, asked
   * for on each /metrics scrape (sluice_source_lag_messages). Kafka: per assigned partition;
   * a shared queue or group: its backlog (the same for every worker) plus what this worker
   * holds unread. Throws when the broker cannot tell now. Optional.
   */
  lag?(): Promise<SourceLag[]>;
  close(): Promise<void>;
}

/** A dead-letter record, the same shape for every source. */
export interface DeadLetter {
  payload: string;
  error: string;
  stage: 'decode' | 'transform' | 'sink';
  source: Record<string, unknown>;
  model?: string;
  time: string;
  /** The source's own message (headers, properties), kept by DLQs that can carry it. */
  original?: unknown;
}

export interface DeadLetterQueue {
  /** Appends records and makes them durable (fsync) before resolving. */
  append(records: DeadLetter[]): Promise<void>;
  /** An opaque token describing what is committed now; stored with the WAL state. */
  mark(): unknown;
  /** Drops anything appended after `mark` (records of a batch whose commit never happened). */
  recover(mark: unknown): Promise<void>;
  /** Reads up to `limit` records without consuming them. */
  inspect(limit: number): Promise<DeadLetter[]>;
  /**
   * Moves dead letters back to the source (or `target`) by itself, when the system can
   * (a broker queue). Each is removed from the DLQ only after the broker confirmed the copy.
   */
  replay?(opts: { target?: string; limit?: number }): Promise<{ moved: number }>;
  close(): Promise<void>;
}

export interface ColumnInfo {
  name: string;
  type: string;
}

/**
 * One flush of one model: its rows, prepared by the engine as one relation in the DuckDB
 * connection the sink's `write` is given. The sink reads the rows from there and knows nothing
 * of where the engine keeps them.
 */
export interface SinkWrite {
  model: string;
  /** Deterministic name derived from the source positions the rows came from. */
  name: string;
  rows: number;
  /**
   * The rows, as a relation to SELECT from (a name, ready to follow FROM), valid only until
   * `write` returns. It has the model's `columns` and the engine's columns named in `order`.
   * A plain scan (no join, window or ORDER BY) yields the rows in the order they were staged,
   * the same order on every replay of the flush.
   */
  relation: string;
  /**
   * The model's columns in this flush, in the model's order, with their DuckDB types: the
   * union of the columns of every batch the flush holds (NULL in rows of batches without one).
   * The engine's columns are not among them.
   */
  columns: ColumnInfo[];
  /**
   * The names of the engine's columns of `relation` (BIGINT, never NULL), the same values on a
   * replay of the flush: `row` numbers the rows in the order they were staged (increasing,
   * not contiguous); `message` identifies the source message a row came from (the rows of one
   * message share it), increasing in the order messages were read.
   */
  order: { row: string; message: string };
}

export interface Sink {
  /**
   * True when writing the same flush (`write.name`) again cannot duplicate rows (a replay
   * rewrites or is skipped): the sink is effectively-once. False: at-least-once, a flush
   * replayed after a crash between its write and the WAL's record of it is written again.
   */
  readonly idempotent: boolean;
  /** Prepares the sink (creates directories, connects); removes leftovers of crashed writes. */
  connect(): Promise<void>;
  /**
   * Writes a flush, whose rows it reads from `write.relation` on `db` (the connection the
   * engine prepared them on), durably and atomically: readers see all of it or none of it.
   * Idempotent by `write.name` when `idempotent`: writing the same name again replaces rather
   * than duplicates. Throws SluiceError('SINK') on failure; the caller keeps the WAL and retries
   * under the sink's policy (retry / circuit / on_error), or, when the error is marked
   * `permanent` (the rows can never be written as they are), applies on_error at once.
   */
  write(write: SinkWrite, db: DuckDBConnection): Promise<void>;
  /** False while the last write failed. */
  healthy(): boolean;
  close(): Promise<void>;
}

export interface ConnectorContext {
  projectDir: string;
  log: Logger;
  workerId: string;
  /** Reports the time from a message's publication to its ack, when the source knows both. */
  observeAckLatency?: (seconds: number) => void;
}
