import client from 'prom-client';
import type { SourceLag } from '../connectors/types.js';
import { withTimeout } from '../util/with-timeout.js';

/** How long a scrape waits for the source's backlog before leaving it out. */
const LAG_TIMEOUT_MS = 2000;

/** The metric families every pipeline reports. One registry per pipeline run. */
export class Metrics {
  readonly registry = new client.Registry();
  readonly messagesIn = new client.Counter({ name: 'sluice_messages_received_total', help: 'Messages read from the source', labelNames: ['source'], registers: [this.registry] });
  readonly acked = new client.Counter({
    name: 'sluice_messages_acked_total',
    help: 'Messages acknowledged to the source (their rows and dead letters are durable)',
    labelNames: ['source'],
    registers: [this.registry],
  });
  readonly redelivered = new client.Counter({
    name: 'sluice_redelivered_total',
    help: 'Messages the broker delivered again (possible duplicates)',
    labelNames: ['source'],
    registers: [this.registry],
  });
  readonly rowsOut = new client.Counter({ name: 'sluice_rows_total', help: 'Rows produced per model and staged in the WAL', labelNames: ['model'], registers: [this.registry] });
  readonly rowsWritten = new client.Counter({ name: 'sluice_sink_rows_written_total', help: 'Rows delivered to a sink', labelNames: ['model', 'sink'], registers: [this.registry] });
  readonly deadLettered = new client.Counter({ name: 'sluice_dead_lettered_total', help: 'Messages sent to the DLQ', labelNames: ['stage'], registers: [this.registry] });
  readonly infraErrors = new client.Counter({
    name: 'sluice_infra_errors_total',
    help: 'Failures of the surroundings (full disk, IO error, permissions, memory) that paused the pipeline; nothing was dead-lettered or acked for them',
    labelNames: ['kind'],
    registers: [this.registry],
  });
  readonly stalled = new client.Gauge({ name: 'sluice_stalled', help: '1 while the pipeline waits out an infrastructure failure', registers: [this.registry] });
  readonly errors = new client.Counter({ name: 'sluice_errors_total', help: 'Errors by stage and type', labelNames: ['stage', 'error_type'], registers: [this.registry] });
  readonly batchDuration = new client.Histogram({
    name: 'sluice_batch_duration_seconds',
    help: 'Time to decode, transform and stage one batch',
    registers: [this.registry],
    buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
  });
  readonly walBytes = new client.Gauge({ name: 'sluice_wal_bytes', help: 'Bytes staged in the WAL, not yet flushed', registers: [this.registry] });
  readonly flushes = new client.Counter({ name: 'sluice_flushes_total', help: 'Flushes of a model to its sinks', labelNames: ['model', 'result'], registers: [this.registry] });
  readonly flushDuration = new client.Histogram({
    name: 'sluice_flush_duration_seconds',
    help: 'Time to write one flush to the sinks',
    labelNames: ['model'],
    registers: [this.registry],
    buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
  });
  readonly ackLatency = new client.Summary({
    name: 'sluice_ack_latency_seconds',
    help: 'Time from publication (the message timestamp) to the source ack',
    registers: [this.registry],
    percentiles: [0.5, 0.9, 0.99],
    maxAgeSeconds: 60,
    ageBuckets: 6,
  });
  readonly sinkErrors = new client.Counter({ name: 'sluice_sink_errors_total', help: 'Failed writes of a flush to a sink', labelNames: ['sink', 'error_type'], registers: [this.registry] });
  readonly sinkRetries = new client.Counter({ name: 'sluice_sink_retries_total', help: 'Writes of a flush to a sink that repeat a failed one', labelNames: ['sink'], registers: [this.registry] });
  readonly sinkDeadLettered = new client.Counter({
    name: 'sluice_sink_dead_lettered_rows_total',
    help: 'Rows sent to the DLQ because a sink could not take them (on_error: dlq)',
    labelNames: ['model', 'sink'],
    registers: [this.registry],
  });
  readonly sinkCircuit = new client.Gauge({
    name: 'sluice_sink_circuit_state',
    help: "A sink's circuit breaker: 0 closed, 1 open, 2 half-open (one probe write)",
    labelNames: ['sink'],
    registers: [this.registry],
  });
  readonly sinkWriteDuration = new client.Histogram({
    name: 'sluice_sink_write_duration_seconds',
    help: 'Time of one write of a flush to a sink (failed ones too)',
    labelNames: ['sink', 'result'],
    registers: [this.registry],
    buckets: [0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
  });
  readonly dataTestFailures = new client.Counter({
    name: 'sluice_data_test_failures_total',
    help: 'Rows failing a data test during run (whatever its on_failure)',
    labelNames: ['model', 'test'],
    registers: [this.registry],
  });
  readonly schemaChanges = new client.Counter({
    name: 'sluice_schema_changes_total',
    help: "Changes of a model's output schema: a new column or a widened type",
    labelNames: ['model', 'kind'],
    registers: [this.registry],
  });
  readonly contractViolations = new client.Counter({
    name: 'sluice_contract_violations_total',
    help: "Rows breaking a model's schema contract, by kind (new_column, type_change) and policy",
    labelNames: ['model', 'kind', 'policy'],
    registers: [this.registry],
  });
  readonly windowLate = new client.Counter({
    name: 'sluice_window_late_events_total',
    help: "Events of a windowed model whose window was already emitted (rows of a stream join older than its watermark), by the model's late policy (drop, dlq, update; reopen)",
    labelNames: ['model', 'policy'],
    registers: [this.registry],
  });
  readonly joinBuffered = new client.Gauge({
    name: 'sluice_join_buffered_rows',
    help: 'Rows a stream join holds in its buffer, per side (left or right, as the model writes the join), after the last commit',
    labelNames: ['model', 'side'],
    registers: [this.registry],
  });
  readonly joinUnmatched = new client.Counter({
    name: 'sluice_join_unmatched_rows_total',
    help: "Rows of an outer join's side emitted without a match (once the watermark passed their bound)",
    labelNames: ['model', 'side'],
    registers: [this.registry],
  });
  readonly dedupDuplicates = new client.Counter({
    name: 'sluice_dedup_duplicates_total',
    help: 'Rows a deduplicating model dropped as copies of a row of the same key seen within its ttl',
    labelNames: ['model'],
    registers: [this.registry],
  });
  readonly dedupKeys = new client.Gauge({ name: 'sluice_dedup_keys', help: 'Keys a deduplicating model remembers after the last commit', labelNames: ['model'], registers: [this.registry] });
  readonly windowStateRows = new client.Gauge({ name: 'sluice_window_state_rows', help: 'Rows a windowed model holds for its open windows', labelNames: ['model'], registers: [this.registry] });
  readonly windowStateBytes = new client.Gauge({
    name: 'sluice_window_state_bytes',
    help: "Bytes of a windowed model's durable state files in the WAL directory",
    labelNames: ['model'],
    registers: [this.registry],
  });
  readonly windowPartitions = new client.Gauge({
    name: 'sluice_window_partitions_held',
    help: 'With window_state: the source partitions whose window state this worker holds',
    registers: [this.registry],
  });
  readonly windowClaims = new client.Counter({
    name: 'sluice_window_state_claims_total',
    help: "With window_state: partitions' window state this worker claimed from the store (a rebalance handed them over)",
    registers: [this.registry],
  });
  readonly referenceVersion = new client.Gauge({
    name: 'sluice_reference_version',
    help: 'The version of a reference table the models join: 1 as loaded at start, one more for each refresh swapped in',
    labelNames: ['reference'],
    registers: [this.registry],
  });
  readonly referenceAge = new client.Gauge({
    name: 'sluice_reference_age_seconds',
    help: 'Seconds since the version of a reference table in use was loaded',
    labelNames: ['reference'],
    registers: [this.registry],
  });
  readonly referenceRows = new client.Gauge({ name: 'sluice_reference_rows', help: 'Rows of the version of a reference table in use', labelNames: ['reference'], registers: [this.registry] });
  readonly referenceRefreshFailures = new client.Counter({
    name: 'sluice_reference_refresh_failures_total',
    help: 'Refreshes of a reference table that failed (its last version stayed in use)',
    labelNames: ['reference'],
    registers: [this.registry],
  });
  readonly windowOpen = new client.Gauge({ name: 'sluice_window_open_windows', help: 'Windows (or sessions) a windowed model holds rows of', labelNames: ['model'], registers: [this.registry] });
  readonly watermarkLag = new client.Gauge({
    name: 'sluice_watermark_lag_seconds',
    help: "How far a windowed model's watermark trails the wall clock (event time against now)",
    labelNames: ['model'],
    registers: [this.registry],
  });
  /** The counters reportContracts() needs. */
  contractCounters(): { change: (model: string, kind: string) => void; violation: (model: string, kind: string, policy: string, rows: number) => void } {
    return { change: (model, kind) => this.schemaChanges.inc({ model, kind }), violation: (model, kind, policy, rows) => this.contractViolations.inc({ model, kind, policy }, rows) };
  }
  /** The running source's backlog, asked for on each scrape (see Source.lag). */
  private lagOf?: { source: string; lag: () => Promise<SourceLag[]> };
  readonly sourceLag = new client.Gauge({
    name: 'sluice_source_lag_messages',
    help: 'Messages in the source not yet handed to the engine: Kafka, per partition assigned to this worker (sum them across workers); a Redis group, NATS consumer or RabbitMQ queue, its shared backlog as this worker sees it (every worker reports it: take the max)',
    labelNames: ['source', 'topic', 'partition'],
    registers: [this.registry],
    collect: () => this.collectLag(),
  });

  /** Reports `lag` (source `source`'s Source.lag) as sluice_source_lag_messages from now on; undefined stops. */
  watchLag(source: string, lag: (() => Promise<SourceLag[]>) | undefined): void {
    this.lagOf = lag && { source, lag };
    this.sourceLag.reset();
  }

  private async collectLag(): Promise<void> {
    const lagOf = this.lagOf;
    if (!lagOf) return; // watchLag(undefined) cleared the samples
    try {
      const samples = await withTimeout(lagOf.lag(), LAG_TIMEOUT_MS, `no answer within ${LAG_TIMEOUT_MS} ms`);
      if (this.lagOf !== lagOf) return; // the source stopped meanwhile
      this.sourceLag.reset();
      const source = lagOf.source;
      for (const s of samples) this.sourceLag.set(s.partition === undefined ? { source, topic: s.topic } : { source, topic: s.topic, partition: s.partition }, s.messages);
    } catch {
      // The broker cannot tell now (its connection is down; the source says so in the log):
      // no figure rather than a stale one.
      this.sourceLag.reset();
    }
  }
  readonly ready = new client.Gauge({ name: 'sluice_ready', help: '1 when every sink is healthy and the WAL is replayed', registers: [this.registry] });
}

/**
 * Several pipelines' registries as one Prometheus exposition: each family once (one HELP and
 * TYPE line), every sample labelled with its pipeline's `source`, so the pipelines' samples
 * never add up or collide.
 */
export function mergedExposition(parts: () => { source: string; registry: client.Registry }[]): { contentType: string; metrics(): Promise<string> } {
  return {
    contentType: client.Registry.PROMETHEUS_CONTENT_TYPE,
    async metrics() {
      const labelled = await Promise.all(
        parts().map(async ({ source, registry }) =>
          (await registry.getMetricsAsJSON()).map((family) => ({
            ...family,
            // Metrics with a `source` label of their own already carry this pipeline's name.
            values: family.values.map((v) => ({ ...v, labels: { source, ...v.labels } })),
          })),
        ),
      );
      return client.AggregatorRegistry.aggregate(labelled).metrics();
    },
  };
}

/** The metric families of handlers (only in a run that has handlers), on a pipeline's registry. */
export class HandlerMetricFamilies {
  readonly tasks: client.Counter;
  readonly taskDuration: client.Histogram;
  readonly running: client.Gauge;
  readonly queued: client.Gauge;
  readonly utilisation: client.Gauge;
  readonly hookDuration: client.Histogram;

  constructor(readonly registry: client.Registry) {
    const registers = [registry];
    this.tasks = new client.Counter({
      name: 'sluice_handler_tasks_total',
      help: "Tasks of a handler's subprocess pool, by how they ended (ok, failed, timeout) or what was done about them (retried, skipped)",
      labelNames: ['handler', 'status'],
      registers,
    });
    this.taskDuration = new client.Histogram({
      name: 'sluice_handler_task_duration_seconds',
      help: "Time one task's process ran",
      labelNames: ['handler'],
      registers,
      buckets: [0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
    });
    this.running = new client.Gauge({ name: 'sluice_handler_pool_running', help: "Tasks running in a handler's pool", labelNames: ['handler'], registers });
    this.queued = new client.Gauge({ name: 'sluice_handler_pool_queued', help: "Tasks waiting for a free slot of a handler's pool", labelNames: ['handler'], registers });
    this.utilisation = new client.Gauge({ name: 'sluice_handler_pool_utilisation', help: "Share of a handler's pool slots (max_executors) in use, 0 to 1", labelNames: ['handler'], registers });
    this.hookDuration = new client.Histogram({
      name: 'sluice_handler_hook_duration_seconds',
      help: "Time one call of a handler's hook took (process, arrange, onTaskComplete, ...)",
      labelNames: ['handler', 'hook'],
      registers,
      buckets: [0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5],
    });
  }
}
