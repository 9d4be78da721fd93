import { defineSink } from '../define.js';
import type { ConnectorContext } from '../types.js';
import { csvSinkSchema, fileSinkRequirements, jsonlSinkSchema, parquetSinkSchema, type FileSinkConfig } from './file-sink-config.js';

// The three file formats share one sink: only their schemas (format keys) differ.
async function create(cfg: FileSinkConfig, ctx: ConnectorContext) {
  const { FileSink } = await import('./file-sink.js');
  return FileSink.create(cfg, ctx);
}

export const parquetSink = defineSink({
  type: 'parquet',
  schema: parquetSinkSchema,
  description: 'Parquet files on local disk or S3, atomic and idempotent',
  requiredColumns: fileSinkRequirements,
  create,
});

export const jsonlSink = defineSink({
  type: 'jsonl',
  schema: jsonlSinkSchema,
  description: 'JSON Lines files (optionally gzip) on local disk or S3, atomic and idempotent',
  requiredColumns: fileSinkRequirements,
  create,
});

export const csvSink = defineSink({
  type: 'csv',
  schema: csvSinkSchema,
  description: 'CSV files (RFC 4180, optionally gzip) on local disk or S3, atomic and idempotent',
  requiredColumns: fileSinkRequirements,
  create,
});
