import type { ColumnType } from './contracts.js';
import type { Structure } from './structure.js';
import type { WindowCheckpoint } from './windows.js';

/**
 * What the engine commits in the WAL with every batch, atomically with its rows: where the
 * source is, what of the DLQ is committed, and the schemas decoding and the models have
 * established (so that a restart decodes and types the same way). A stateful operator adds
 * its state here, so that it commits with the source position it reflects.
 */
export interface Checkpoint {
  /** The source's position after the batch (the source's own token). */
  position: unknown;
  /** What of the DLQ is committed (the DLQ's own token). */
  dlq: unknown;
  /** The schema of `incoming` established so far. */
  structure?: Structure;
  /** A pipeline of two sources: each one's schema (instead of `structure`). */
  structures?: Record<string, Structure | undefined>;
  /** Each handler's output schema so far (handlers type their rows as `incoming` is typed). */
  handlers?: Record<string, Structure | undefined>;
  /** Each model's output schema so far (columns and types), so widened types stay widened. */
  schemas?: Record<string, ColumnType[]>;
  /** Each windowed model's watermark and state files (engine/windows.ts). */
  windows?: Record<string, WindowCheckpoint>;
}

/** The checkpoint the WAL handed back (nothing before the first commit). */
export function asCheckpoint(stored: unknown): Checkpoint {
  if (stored && typeof stored === 'object') return stored as Checkpoint;
  return { position: undefined, dlq: undefined };
}
