import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { FileSource, fileSourceSchema } from '../../src/connectors/file/file-source.js';
import { MergedSource } from '../../src/engine/merged-source.js';
import type { SourceBatch } from '../../src/engine/batcher.js';
import { silentLogger } from '../../src/ops/logger.js';
import { ackBatch, batcherOf } from '../helpers/batches.js';

// The source of a pipeline reading two sources (a stream join of two sources), over two real
// file sources: each batch holds one source's messages, both are read in turn while both have a
// backlog, the position is both positions, and a restart from a committed position reads each
// source on from its own.

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-merged-source-'));
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

function fileSource(dir: string, batch: number): { src: FileSource; cfg: ReturnType<typeof fileSourceSchema.parse> } {
  const cfg = fileSourceSchema.parse({ type: 'file', path: dir, batch_size: batch, batch_timeout_ms: 50 });
  return { src: new FileSource(cfg, { projectDir: root, log: silentLogger(), workerId: 'w' }), cfg };
}

function lines(dir: string, prefix: string, n: number): string[] {
  fs.mkdirSync(dir, { recursive: true });
  const out = Array.from({ length: n }, (_, i) => JSON.stringify({ [prefix]: i }));
  fs.writeFileSync(path.join(dir, 'data.ndjson'), `${out.join('\n')}\n`);
  return out;
}

/** Reads the merged source, committing (acking) each batch; stops after `stopAfter` batches (a crash after that commit). */
async function readMerged(a: string, b: string, batch: number, position?: unknown, stopAfter = Infinity): Promise<{ batches: SourceBatch[]; position: unknown }> {
  const x = fileSource(a, batch);
  const y = fileSource(b, batch);
  const merged = new MergedSource([
    { name: 'a', source: x.src },
    { name: 'b', source: y.src },
  ]);
  await merged.open(position);
  const batcher = batcherOf(merged, x.cfg);
  const signal = new AbortController().signal;
  const batches: SourceBatch[] = [];
  let at = position;
  try {
    for (let next = await batcher.next(signal); next && batches.length < stopAfter; next = await batcher.next(signal)) {
      if (next.messages.length === 0) continue;
      // The file source hands bytes, not strings (and reuses an acked batch's buffer): the texts now.
      const texts = next.block ? Array.from(next.block.starts, (st, i) => next.block!.data.toString('utf8', st, next.block!.ends[i])) : next.messages.map((m) => m.payload);
      batches.push({ ...next, messages: next.messages.map((m, i) => ({ ...m, payload: texts[i] })) });
      await ackBatch(merged, next);
      at = next.position;
    }
  } finally {
    await merged.close();
  }
  return { batches, position: at };
}

describe('MergedSource', () => {
  it('hands over batches of one source each, both in turn, every message once, with both positions', async () => {
    const a = lines(path.join(root, 'turn', 'a'), 'a', 2500);
    const b = lines(path.join(root, 'turn', 'b'), 'b', 1200);
    const { batches, position } = await readMerged(path.join(root, 'turn', 'a'), path.join(root, 'turn', 'b'), 200);
    for (const bt of batches) {
      expect(bt.origin === 'a' || bt.origin === 'b').toBe(true);
      // One source's messages only, and those of the source the batch says.
      expect(bt.messages.every((m) => m.payload.startsWith(`{"${bt.origin}":`))).toBe(true);
    }
    expect(batches.filter((bt) => bt.origin === 'a').flatMap((bt) => bt.messages.map((m) => m.payload))).toEqual(a);
    expect(batches.filter((bt) => bt.origin === 'b').flatMap((bt) => bt.messages.map((m) => m.payload))).toEqual(b);
    // While both had a backlog they were read in turn: b's messages are all in before a's last batches.
    const firstB = batches.findIndex((bt) => bt.origin === 'b');
    const lastB = batches.findLastIndex((bt) => bt.origin === 'b');
    expect(firstB).toBeLessThanOrEqual(1);
    const aBefore = batches
      .slice(0, lastB)
      .filter((bt) => bt.origin === 'a')
      .reduce((n, bt) => n + bt.messages.length, 0);
    expect(aBefore).toBeLessThan(2 * 1200 + 400);
    expect(Object.keys(position as object).sort()).toEqual(['a', 'b']);
    // Keys of output files are each source's own.
    expect(batches.every((bt) => bt.first?.startsWith(`${bt.origin}-`))).toBe(true);
  });

  it('a restart from a committed position reads each source on from its own position: nothing twice, nothing lost', async () => {
    const a = lines(path.join(root, 'resume', 'a'), 'a', 1500);
    const b = lines(path.join(root, 'resume', 'b'), 'b', 1500);
    const dirA = path.join(root, 'resume', 'a');
    const dirB = path.join(root, 'resume', 'b');
    const first = await readMerged(dirA, dirB, 100, undefined, 5);
    expect(first.batches).toHaveLength(5);
    const rest = await readMerged(dirA, dirB, 100, first.position);
    const all = [...first.batches, ...rest.batches];
    const of = (o: string) => all.filter((bt) => bt.origin === o).flatMap((bt) => bt.messages.map((m) => m.payload));
    expect(of('a')).toEqual(a);
    expect(of('b')).toEqual(b);
  });

  it('ends (null) once both sources are read, also when one is empty', async () => {
    const a = lines(path.join(root, 'empty', 'a'), 'a', 30);
    fs.mkdirSync(path.join(root, 'empty', 'b'), { recursive: true });
    fs.writeFileSync(path.join(root, 'empty', 'b', 'data.ndjson'), '');
    const { batches } = await readMerged(path.join(root, 'empty', 'a'), path.join(root, 'empty', 'b'), 100);
    expect(batches.flatMap((bt) => bt.messages.map((m) => m.payload))).toEqual(a);
    expect(batches.every((bt) => bt.origin === 'a')).toBe(true);
  });
});
