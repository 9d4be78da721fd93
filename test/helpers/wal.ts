import fs from 'node:fs';
import path from 'node:path';

export interface WalStateView {
  seq: number;
  /** The engine's checkpoint fields (src/engine/checkpoint.ts). */
  // biome-ignore lint/suspicious/noExplicitAny: each source's position has its own shape; a test reads the one its source writes
  position?: any;
  dlq?: unknown;
  structure?: unknown;
  schemas?: Record<string, { name: string; type: string }[]>;
  models: Record<string, { flushedSeq: number; inflight?: { name: string; lastSeq: number; done?: string[] } }>;
}

/** A WAL's state.json as tests look at it: the engine's checkpoint fields beside seq and models. */
export function readWalState(walDir: string): WalStateView {
  const s = JSON.parse(fs.readFileSync(path.join(walDir, 'state.json'), 'utf8')) as { seq: number; checkpoint?: Record<string, unknown>; models: WalStateView['models'] };
  return { seq: s.seq, models: s.models, ...(s.checkpoint ?? {}) };
}

/** readWalState, or undefined while the WAL has no state yet. */
export function tryWalState(walDir: string): WalStateView | undefined {
  return fs.existsSync(path.join(walDir, 'state.json')) ? readWalState(walDir) : undefined;
}
