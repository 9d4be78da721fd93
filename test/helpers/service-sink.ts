import fs from 'node:fs';
import path from 'node:path';
import { afterAll } from 'vitest';
import { tempDir } from './cli.js';
import type { SinkTarget } from './sink-contract.js';

/**
 * Scenario targets for a sink's own tests beside the contract (same shape: a unique id and a
 * project directory). Each target's `cleanup` runs after the file's tests, then its directory
 * is removed.
 */
export function scenarioTargets(prefix: string, cleanup?: (t: SinkTarget) => Promise<unknown>): () => SinkTarget {
  const made: SinkTarget[] = [];
  let n = 0;
  afterAll(async () => {
    for (const t of made) {
      await cleanup?.(t).catch(() => {});
      fs.rmSync(path.dirname(t.dir), { recursive: true, force: true });
    }
  });
  return () => {
    const dir = path.join(tempDir(`sluice-${prefix}-sink-`), 'proj');
    fs.mkdirSync(dir, { recursive: true });
    const t = { id: `${prefix[0]}${process.pid}_${n++}`, dir };
    made.push(t);
    return t;
  };
}

/** Replaces a scenario project's sink block. */
export function writeSinks(t: SinkTarget, sink: Record<string, unknown>): void {
  fs.writeFileSync(path.join(t.dir, 'config/sinks.yml'), `sink: ${JSON.stringify(sink)}\n`);
}

/** The dead letters of a contract project (its file DLQ). */
export function dlqRecords(t: SinkTarget): { error: string; stage: string; payload: string }[] {
  const dir = path.join(t.dir, '.sluice/dlq');
  if (!fs.existsSync(dir)) return [];
  return fs
    .readdirSync(dir)
    .filter((f) => f.endsWith('.ndjson'))
    .flatMap((f) => fs.readFileSync(path.join(dir, f), 'utf8').split('\n').filter(Boolean))
    .map((l) => JSON.parse(l) as { error: string; stage: string; payload: string });
}
