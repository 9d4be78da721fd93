/**
 * How many of `count` buffered messages, from the first, a batch takes: at most `maxCount`,
 * and no more payload bytes than `maxBytes` — but always the first, however large (the engine
 * dead-letters it if it is over limits.max_message_bytes). `size(i)` is message i's payload
 * bytes. The rest stay buffered, first in the next batch.
 */
export function batchCut(count: number, size: (i: number) => number, maxCount: number, maxBytes: number): { n: number; bytes: number } {
  let n = 0;
  let bytes = 0;
  while (n < count && n < maxCount) {
    const len = size(n);
    if (n > 0 && bytes + len > maxBytes) break;
    bytes += len;
    n++;
  }
  return { n, bytes };
}
