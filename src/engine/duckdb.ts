import os from 'node:os';
import { DuckDBInstance, type DuckDBConnection } from '@duckdb/node-api';
import { SluiceError } from '../errors.js';

export async function openDuckDB(settings: { threads?: number; memory_limit?: string } = {}): Promise<{ instance: DuckDBInstance; conn: DuckDBConnection }> {
  const config: Record<string, string> = {};
  // Per-batch queries work on one batch (one row group): each runs on the thread that issues
  // it, and two connections run at once. Leave a core to JavaScript (source client, scanner).
  config.threads = String(settings.threads ?? Math.max(1, os.availableParallelism() - 1));
  config.memory_limit = settings.memory_limit ?? defaultMemoryLimit();
  // Every file read (a WAL segment, a state file) is read once and then deleted: caching them
  // only grew memory with the run's length.
  config.enable_external_file_cache = 'false';
  const instance = await DuckDBInstance.create(':memory:', config);
  const conn = await instance.connect();
  return { instance, conn };
}

/**
 * DuckDB's memory limit when duckdb.memory_limit is not set: a quarter of the machine's memory,
 * at most 2 GiB. DuckDB's own default (80% of the memory) leaves nothing to the rest of the
 * process and the machine; a pipeline's queries work on one batch or one flush at a time and
 * spill to disk beyond the limit.
 */
export function defaultMemoryLimit(): string {
  return `${Math.max(64, Math.min(2048, Math.floor(os.totalmem() / 4 / 2 ** 20)))}MiB`;
}

/** The threads and memory limit of one pipeline's DuckDB when `n` pipelines share a process. */
export interface DuckDBShare {
  threads: number;
  memory_limit: string;
  /** What was divided: the project's settings, or DuckDB's defaults where it has none. */
  total: { threads: number; memory_limit: string };
}

/**
 * Divides the project's duckdb.threads and duckdb.memory_limit (DuckDB's defaults where unset:
 * one thread per core but one, 80% of the memory DuckDB sees) among `n` pipelines of one
 * process, so that together they stay within what one pipeline alone would use. `conn` is a
 * connection of an instance opened with `settings`: it tells DuckDB's default memory limit.
 * Each pipeline gets at least one thread.
 */
export async function shareDuckDB(settings: { threads?: number; memory_limit?: string }, n: number, conn: DuckDBConnection): Promise<DuckDBShare> {
  const threads = settings.threads ?? Math.max(1, os.availableParallelism() - 1);
  let bytes = settings.memory_limit ? parseBytes(settings.memory_limit) : undefined;
  let shown = settings.memory_limit;
  if (bytes === undefined) {
    const current = String((await conn.runAndReadAll("SELECT current_setting('memory_limit')")).getRows()[0][0]);
    bytes = parseBytes(current);
    shown = settings.memory_limit ?? `${current} (sluice's default)`;
    if (bytes === undefined) throw new SluiceError('INTERNAL', `cannot read DuckDB's memory limit "${current}"`);
  }
  const each = bytes / n;
  const memory_limit = each >= 2 ** 24 ? `${Math.floor(each / 2 ** 20)}MiB` : `${Math.max(1, Math.floor(each / 2 ** 10))}KiB`;
  return { threads: Math.max(1, Math.floor(threads / n)), memory_limit, total: { threads, memory_limit: shown! } };
}

/** DuckDB's memory units (KB = 1000, KiB = 1024). */
const BYTE_UNITS: Record<string, number> = {
  '': 1,
  b: 1,
  byte: 1,
  bytes: 1,
  k: 1e3,
  kb: 1e3,
  m: 1e6,
  mb: 1e6,
  g: 1e9,
  gb: 1e9,
  t: 1e12,
  tb: 1e12,
  kib: 2 ** 10,
  mib: 2 ** 20,
  gib: 2 ** 30,
  tib: 2 ** 40,
  pib: 2 ** 50,
};
/** Bytes of a memory amount as DuckDB takes or shows it ('2GB', '18.8 GiB'); undefined for anything else. */
function parseBytes(text: string): number | undefined {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$/i.exec(text);
  const unit = m && BYTE_UNITS[m[2].toLowerCase()];
  return unit ? Number(m[1]) * unit : undefined;
}
