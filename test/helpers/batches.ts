import type { Source } from '../../src/connectors/types.js';
import { Batcher, batchingOf, type SourceBatch } from '../../src/engine/batcher.js';

/** A source's batching keys, as its schema gave them. */
export type BatchKeys = Parameters<typeof batchingOf>[0];

/** Batches of `src` as the engine forms them (engine/batcher.ts), from its batching keys. */
export function batcherOf(src: Source, cfg: BatchKeys): Batcher {
  return new Batcher(src, batchingOf(cfg));
}

/** Acks every chunk of a batch, in order, as the engine does once the batch is durable. */
export async function ackBatch(src: Source, b: SourceBatch): Promise<void> {
  for (const c of b.chunks) await src.ack(c);
}
