import type { PollLimits } from './types.js';

/**
 * How many of `count` buffered messages, from the first, a poll hands over: at most
 * `limits.maxMessages`, and no more payload bytes than `limits.maxBytes` — but, unless
 * `limits.strict`, always the first, however large (the engine dead-letters it if it is over
 * limits.max_message_bytes). `size(i)` is message i's payload bytes. The rest stay buffered,
 * first in the next poll; `full` tells that some were left.
 */
export function batchCut(count: number, size: (i: number) => number, limits: PollLimits): { n: number; bytes: number; full: boolean } {
  let n = 0;
  let bytes = 0;
  while (n < count && n < limits.maxMessages) {
    const len = size(n);
    if ((n > 0 || limits.strict) && bytes + len > limits.maxBytes) break;
    bytes += len;
    n++;
  }
  return { n, bytes, full: n < count };
}
