import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { FileSource, fileSourceSchema, ordinalKey, type FilePosition } from '../../src/connectors/file/file-source.js';
import { GeneratorSource, generatorSourceSchema, orderMessage } from '../../src/connectors/generator/generator-source.js';
import type { Source } from '../../src/connectors/types.js';
import type { SourceBatch } from '../../src/engine/batcher.js';
import { ackBatch, batcherOf, type BatchKeys } from '../helpers/batches.js';
import { silentLogger } from '../../src/ops/logger.js';

// batch_max_bytes: a batch stops taking messages once their payloads would pass it (its first
// message is always taken); what is left out comes first in the next batch, and positions chain.

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-batch-bytes-'));
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));
const ctx = { projectDir: root, log: silentLogger(), workerId: 'w' };

/** A source with its batching keys, read as the engine batches it. */
interface Fed {
  src: Source;
  cfg: BatchKeys;
}

function fileSource(dir: string, batchMaxBytes: number, batchSize = 1000): Fed {
  const cfg = fileSourceSchema.parse({ type: 'file', path: dir, batch_size: batchSize, batch_timeout_ms: 10, batch_max_bytes: batchMaxBytes });
  return { src: new FileSource(cfg, ctx), cfg };
}

/**
 * Reads to the end from `position`, acking each batch after reading the next (the engine reads
 * one ahead). The batches come back with their messages copied: the file source reuses an
 * acked batch's buffer, and its messages' payloads are views of it.
 */
async function readAll({ src, cfg }: Fed, position?: unknown): Promise<SourceBatch[]> {
  const out: SourceBatch[] = [];
  await src.open(position);
  const signal = new AbortController().signal;
  const batcher = batcherOf(src, cfg);
  let prev: SourceBatch | undefined;
  for (let b = await batcher.next(signal); b; b = await batcher.next(signal)) {
    if (prev) await ackBatch(src, prev);
    if (b.messages.length) out.push({ ...b, messages: b.messages.map((m) => ({ payload: m.payload, coords: m.coords })) });
    prev = b;
  }
  if (prev) await ackBatch(src, prev);
  await src.close();
  return out;
}

/** Each payload as `id:bytes` (the payloads themselves are too long to show in a failure). */
const sig = (p: string) => `${(JSON.parse(p) as { id: number }).id}:${Buffer.byteLength(p)}`;
const sigs = (bs: SourceBatch[]) => bs.flatMap((b) => b.messages.map((m) => sig(m.payload)));
/** The payloads, compared whole but shown short. */
function expectPayloads(bs: SourceBatch[], want: string[]): void {
  expect(sigs(bs)).toEqual(want.map(sig));
  const got = bs.flatMap((b) => b.messages.map((m) => m.payload));
  expect(got.every((p, i) => p === want[i])).toBe(true);
}
const bytesOf = (b: SourceBatch) => b.messages.reduce((n, m) => n + Buffer.byteLength(m.payload), 0);
/** A JSON line of exactly `size` bytes. */
const line = (id: number, size: number) => {
  const head = JSON.stringify({ id, pad: '' });
  return JSON.stringify({ id, pad: 'x'.repeat(size - head.length) });
};

describe('batch_max_bytes', () => {
  it('file: ~100 kB lines with a 350,000-byte cap come 3 a batch; positions chain across files, CRLF and blank lines', async () => {
    const dir = path.join(root, 'ndjson');
    fs.mkdirSync(dir);
    const lines = Array.from({ length: 26 }, (_, i) => line(i + 1, 95_000 + (i % 5) * 2_000));
    // a: 13 lines (CRLF, a blank line in the middle), b: 13 lines, the last without a newline.
    fs.writeFileSync(path.join(dir, 'a.ndjson'), lines.slice(0, 6).join('\r\n') + '\r\n\n' + lines.slice(6, 13).join('\r\n') + '\r\n');
    fs.writeFileSync(path.join(dir, 'b.ndjson'), lines.slice(13).join('\n'));
    const batches = await readAll(fileSource(dir, 350_000));
    // 3 lines of 95-103 kB fit, 4 do not; the batch of lines 13-15 spans the two files.
    expect(batches.map((b) => b.messages.length)).toEqual([3, 3, 3, 3, 3, 3, 3, 3, 2]);
    for (const b of batches) expect(bytesOf(b)).toBeLessThanOrEqual(350_000);
    expectPayloads(batches, lines);
    expect(batches.map((b) => [b.first, b.last])).toEqual(batches.map((_, i) => [ordinalKey(3 * i), ordinalKey(Math.min(3 * i + 2, 25))]));
    expect(batches[4].messages.map((m) => m.coords)).toMatchObject([
      { file: 'ndjson/a.ndjson', line: 14 },
      { file: 'ndjson/b.ndjson', line: 1 },
      { file: 'ndjson/b.ndjson', line: 2 },
    ]);
    // Each batch's position points just after its last message: reading from it gives the rest.
    for (let i = 0; i < batches.length; i++) {
      const pos = batches[i].position as FilePosition;
      const rest = await readAll(fileSource(dir, 350_000), pos);
      expect(sigs(rest)).toEqual(sigs(batches.slice(i + 1)));
    }
  });

  it('file: a line bigger than the cap comes alone in its batch, read whole (also across read chunks)', async () => {
    const dir = path.join(root, 'big');
    fs.mkdirSync(dir);
    // The 1 MB line starts 60 kB in: the first 1 MiB read chunk ends inside it.
    const lines = [line(1, 60_000), line(2, 1_000_000), line(3, 30_000), line(4, 30_000), line(5, 1_000_000)];
    fs.writeFileSync(path.join(dir, 'a.ndjson'), lines.join('\n') + '\n');
    const batches = await readAll(fileSource(dir, 100_000));
    expect(batches.map((b) => b.messages.map((m) => JSON.parse(m.payload).id))).toEqual([[1], [2], [3, 4], [5]]);
    expectPayloads(batches, lines);
    expect(batches.map((b) => b.messages.map((m) => m.coords))).toEqual([
      [{ file: 'big/a.ndjson', line: 1, offset: 0 }],
      [{ file: 'big/a.ndjson', line: 2, offset: 60_001 }],
      [
        { file: 'big/a.ndjson', line: 3, offset: 1_060_002 },
        { file: 'big/a.ndjson', line: 4, offset: 1_090_003 },
      ],
      [{ file: 'big/a.ndjson', line: 5, offset: 1_120_004 }],
    ]);
    expect(batches.map((b) => (b.position as FilePosition).files['big/a.ndjson'])).toEqual([
      { offset: 60_001, line: 1 },
      { offset: 1_060_002, line: 2 },
      { offset: 1_120_004, line: 4 },
      { offset: 2_120_005, line: 5 },
    ]);
    // batch_size still applies under the cap.
    const two = await readAll(fileSource(dir, 10_000_000, 2));
    expect(two.map((b) => b.messages.length)).toEqual([2, 2, 1]);
  });

  it('file: a .json array of ~100 kB elements, 3 a batch, positions chain', async () => {
    const dir = path.join(root, 'json');
    fs.mkdirSync(dir);
    const items = Array.from({ length: 10 }, (_, i) => line(i + 1, 100_000));
    fs.writeFileSync(path.join(dir, 'a.json'), `[${items.join(',\n')}]`);
    const batches = await readAll(fileSource(dir, 350_000));
    expect(batches.map((b) => b.messages.length)).toEqual([3, 3, 3, 1]);
    expectPayloads(batches, items);
    expect(batches.map((b) => (b.position as FilePosition).files['json/a.json'].offset)).toEqual([3, 6, 9, 10]);
    const rest = await readAll(fileSource(dir, 350_000), batches[1].position);
    expectPayloads(rest, items.slice(6));
  });

  it('generator: batches stop at the cap and ordinals chain', async () => {
    const cfg = generatorSourceSchema.parse({ type: 'generator', count: 50, batch_max_bytes: 1000 });
    const batches = await readAll({ src: new GeneratorSource(cfg, ctx), cfg });
    const payloads = batches.flatMap((b) => b.messages.map((m) => m.payload));
    expect(payloads).toEqual(Array.from({ length: 50 }, (_, i) => orderMessage(i, 42)));
    for (const b of batches) expect(b.messages.length === 1 || bytesOf(b) <= 1000).toBe(true);
    // Closed as soon as the next message would not fit.
    for (let i = 0; i + 1 < batches.length; i++) expect(bytesOf(batches[i]) + Buffer.byteLength(batches[i + 1].messages[0].payload)).toBeGreaterThan(1000);
    expect(batches.map((b) => b.position)).toEqual(batches.map((_, i) => ({ ordinal: batches.slice(0, i + 1).reduce((n, b) => n + b.messages.length, 0) })));
  });
});
