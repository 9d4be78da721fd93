import client from 'prom-client';

/** The metric families every pipeline reports. One registry per pipeline run. */
export class Metrics {
  readonly registry = new client.Registry();
  readonly messagesIn = new client.Counter({ name: 'sluice_messages_received_total', help: 'Messages read from the source', labelNames: ['source'], registers: [this.registry] });
  readonly acked = new client.Counter({ name: 'sluice_messages_acked_total', help: 'Messages acknowledged to the source (their rows and dead letters are durable)', labelNames: ['source'], registers: [this.registry] });
  readonly redelivered = new client.Counter({ name: 'sluice_redelivered_total', help: 'Messages the broker delivered again (possible duplicates)', labelNames: ['source'], registers: [this.registry] });
  readonly rowsOut = new client.Counter({ name: 'sluice_rows_total', help: 'Rows produced per model and staged in the WAL', labelNames: ['model'], registers: [this.registry] });
  readonly rowsWritten = new client.Counter({ name: 'sluice_sink_rows_written_total', help: 'Rows delivered to a sink', labelNames: ['model', 'sink'], registers: [this.registry] });
  readonly deadLettered = new client.Counter({ name: 'sluice_dead_lettered_total', help: 'Messages sent to the DLQ', labelNames: ['stage'], registers: [this.registry] });
  readonly errors = new client.Counter({ name: 'sluice_errors_total', help: 'Errors by stage and type', labelNames: ['stage', 'error_type'], registers: [this.registry] });
  readonly batchDuration = new client.Histogram({
    name: 'sluice_batch_duration_seconds', help: 'Time to decode, transform and stage one batch', registers: [this.registry],
    buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
  });
  readonly walBytes = new client.Gauge({ name: 'sluice_wal_bytes', help: 'Bytes staged in the WAL, not yet flushed', registers: [this.registry] });
  readonly flushes = new client.Counter({ name: 'sluice_flushes_total', help: 'Flushes of a model to its sinks', labelNames: ['model', 'result'], registers: [this.registry] });
  readonly flushDuration = new client.Histogram({
    name: 'sluice_flush_duration_seconds', help: 'Time to write one flush to the sinks', labelNames: ['model'], registers: [this.registry],
    buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
  });
  readonly ackLatency = new client.Summary({
    name: 'sluice_ack_latency_seconds', help: 'Time from publication (the message timestamp) to the source ack', registers: [this.registry],
    percentiles: [0.5, 0.9, 0.99], maxAgeSeconds: 60, ageBuckets: 6,
  });
  readonly ready = new client.Gauge({ name: 'sluice_ready', help: '1 when every sink is healthy and the WAL is replayed', registers: [this.registry] });
}
