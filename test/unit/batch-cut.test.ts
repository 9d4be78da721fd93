import { describe, expect, it } from 'vitest';
import { batchCut } from '../../src/connectors/batch-cut.js';

describe('batchCut', () => {
  const sizes = [40, 40, 40, 300, 10];
  const cut = (maxCount: number, maxBytes: number) => batchCut(sizes.length, (i) => sizes[i], maxCount, maxBytes);
  it('stops at the count or before the message that would pass the bytes', () => {
    expect(cut(2, 1000)).toEqual({ n: 2, bytes: 80 });
    expect(cut(10, 100)).toEqual({ n: 2, bytes: 80 });
    expect(cut(10, 120)).toEqual({ n: 3, bytes: 120 });
  });
  it('always takes the first message, however large', () => {
    expect(batchCut(2, (i) => [500, 1][i], 10, 100)).toEqual({ n: 1, bytes: 500 });
    expect(batchCut(0, () => 1, 10, 100)).toEqual({ n: 0, bytes: 0 });
  });
});
