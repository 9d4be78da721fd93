import type { PayloadBlock } from './types.js';

/** The byte a broker source puts between payloads (valid JSON never holds it raw). */
export const BLOCK_SEPARATOR = 0x1e;

/**
 * Joins payloads given as bytes (a broker client's buffers) into one PayloadBlock, so the
 * engine needs no JavaScript string per message. Undefined when a payload holds the
 * separator: the batch then goes the string way (SourceBatch without a block).
 */
export function blockOfBuffers(payloads: Uint8Array[]): PayloadBlock | undefined {
  let size = payloads.length - 1;
  for (const p of payloads) {
    if (p.includes(BLOCK_SEPARATOR)) return undefined;
    size += p.length;
  }
  const data = Buffer.allocUnsafe(Math.max(0, size));
  const starts = new Uint32Array(payloads.length);
  const ends = new Uint32Array(payloads.length);
  let at = 0;
  for (let i = 0; i < payloads.length; i++) {
    if (i > 0) data[at++] = BLOCK_SEPARATOR;
    starts[i] = at;
    data.set(payloads[i], at);
    at += payloads[i].length;
    ends[i] = at;
  }
  return { data, starts, ends, separator: BLOCK_SEPARATOR };
}
