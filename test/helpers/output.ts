import fs from 'node:fs';
import path from 'node:path';

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
