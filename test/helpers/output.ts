import fs from 'node:fs';
import path from 'node:path';
import { expect } from 'vitest';

/** A model's rows in a project's JSONL output (`<project>/output/<model>/*.jsonl`; none while it has no file). */
export function jsonlRows<T = Record<string, unknown>>(p: string, model: string): T[] {
  const dir = path.join(p, 'output', model);
  if (!fs.existsSync(dir)) return [];
  return fs
    .readdirSync(dir)
    .filter((f) => f.endsWith('.jsonl'))
    .flatMap((f) => fs.readFileSync(path.join(dir, f), 'utf8').split('\n').filter(Boolean))
    .map((l) => JSON.parse(l) as T);
}

/** What compareWithBatch / compareJoin found for one model: rows in the output, in the batch query's result, and in one only. */
export interface Comparison {
  output: number;
  batch: number;
  extra: number;
  missing: number;
}

/** Each model's output holds exactly the batch query's rows (and the batch query has some). */
export function expectEquivalent(result: Record<string, Comparison>): void {
  for (const [model, r] of Object.entries(result)) {
    expect(r.batch, `${model}: the batch query has rows`).toBeGreaterThan(0);
    expect({ model, ...r }).toEqual({ model, output: r.batch, batch: r.batch, extra: 0, missing: 0 });
  }
}
