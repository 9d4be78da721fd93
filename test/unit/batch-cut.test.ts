import { describe, expect, it } from 'vitest';
import { batchCut } from '../../src/connectors/batch-cut.js';

describe('batchCut', () => {
  const sizes = [40, 40, 40, 300, 10];
  const cut = (maxMessages: number, maxBytes: number, strict = false) => batchCut(sizes.length, (i) => sizes[i], { maxMessages, maxBytes, strict });
  it('stops at the count or before the message that would pass the bytes', () => {
    expect(cut(2, 1000)).toEqual({ n: 2, bytes: 80, full: true });
    expect(cut(10, 100)).toEqual({ n: 2, bytes: 80, full: true });
    expect(cut(10, 120)).toEqual({ n: 3, bytes: 120, full: true });
    expect(cut(10, 1000)).toEqual({ n: 5, bytes: 430, full: false });
  });
  it('takes the first message however large, unless strict (the batch holds messages already)', () => {
    expect(batchCut(2, (i) => [500, 1][i], { maxMessages: 10, maxBytes: 100, strict: false })).toEqual({ n: 1, bytes: 500, full: true });
    expect(batchCut(2, (i) => [500, 1][i], { maxMessages: 10, maxBytes: 100, strict: true })).toEqual({ n: 0, bytes: 0, full: true });
    expect(batchCut(0, () => 1, { maxMessages: 10, maxBytes: 100, strict: false })).toEqual({ n: 0, bytes: 0, full: false });
  });
});
