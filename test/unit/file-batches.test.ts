import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { FileSource, fileSourceSchema } from '../../src/connectors/file/file-source.js';
import { blockOfBuffers } from '../../src/connectors/payload-block.js';
import type { SourceBatch } from '../../src/engine/batcher.js';
import { ackBatch, batcherOf } from '../helpers/batches.js';
import { BatchExecutor, compileModels } from '../../src/engine/executor.js';
import { silentLogger } from '../../src/ops/logger.js';
import type { ModelDef } from '../../src/project/project-loader.js';
import { useDuckDB } from '../helpers/duckdb.js';

// The file source hands the engine each batch as one block of bytes (no string per line);
// these cases check that what reaches the models is exactly the file's messages, line by line,
// whatever the file holds around them.

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-file-batches-'));
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

/**
 * Reads `dir` to the end in batches of up to `batchSize`, as the engine batches it, handing each
 * batch to `use` before acking it (the source reuses an acked batch's buffer).
 */
async function readAll(dir: string, batchSize: number, use: (b: SourceBatch) => Promise<void> = async () => {}): Promise<SourceBatch[]> {
  const cfg = fileSourceSchema.parse({ type: 'file', path: dir, batch_size: batchSize, batch_timeout_ms: 10 });
  const src = new FileSource(cfg, { projectDir: root, log: silentLogger(), workerId: 'w' });
  const out: SourceBatch[] = [];
  await src.open(undefined);
  const signal = new AbortController().signal;
  const batcher = batcherOf(src, cfg);
  for (let b = await batcher.next(signal); b; b = await batcher.next(signal)) {
    out.push(b);
    await use(b);
    await ackBatch(src, b);
  }
  return out;
}

const model = (name: string, sql: string): ModelDef => ({ name, file: `models/${name}.sql`, refs: [], rendered: { sql } }) as unknown as ModelDef;

describe('file batches as bytes', () => {
  const conn = useDuckDB();

  it('CRLF, blank lines, multibyte text, invalid UTF-8 and a last line without newline', async () => {
    const dir = path.join(root, 'mixed');
    fs.mkdirSync(dir);
    const lines = [
      Buffer.from('{"id":1,"name":"plain"}\r\n'),
      Buffer.from('\n   \n'),
      Buffer.from('{"id":2,"name":"café ☕ 𝄞"}\n'),
      Buffer.concat([Buffer.from('{"id":3,"name":"bad '), Buffer.from([0xff, 0xfe]), Buffer.from('"}\n')]),
      Buffer.from('{"id":4,"name":"last"}'),
    ];
    fs.writeFileSync(path.join(dir, 'a.ndjson'), Buffer.concat(lines));
    const batches = await readAll(dir, 100);
    expect(batches).toHaveLength(1);
    const b = batches[0];
    expect(b.block).toBeDefined();
    const at = (i: number) => Buffer.concat(lines.slice(0, i)).length;
    expect(b.messages.map((m) => m.coords)).toEqual([
      { file: 'mixed/a.ndjson', line: 1, offset: 0 },
      { file: 'mixed/a.ndjson', line: 4, offset: at(2) },
      { file: 'mixed/a.ndjson', line: 5, offset: at(3) },
      { file: 'mixed/a.ndjson', line: 6, offset: at(4) },
    ]);
    const ex = new BatchExecutor(conn(), await compileModels(conn(), [model('m', 'SELECT incoming.id, incoming.name FROM incoming')]), 'default');
    await ex.init();
    const outcome = await ex.execute(await ex.prepare(b.messages, 0, b.block));
    expect(outcome.failures).toEqual([{ index: 2, stage: 'decode', error: 'invalid JSON: the message is not valid UTF-8' }]);
    expect((await ex.readOutput('m')).rows).toEqual([
      { id: 1, name: 'plain' },
      { id: 2, name: 'café ☕ 𝄞' },
      { id: 4, name: 'last' },
    ]);
    // A dead letter keeps the bytes it can show (the invalid ones replaced).
    expect(b.messages[2].payload).toBe('{"id":3,"name":"bad \ufffd\ufffd"}');
  });

  it('batches that cut across chunks and files give every line once, in order', async () => {
    const dir = path.join(root, 'many');
    fs.mkdirSync(dir);
    // Lines long enough that 1 MiB read chunks end in the middle of one.
    const pad = 'x'.repeat(700);
    let id = 0;
    for (const f of ['a', 'b', 'c']) {
      const text = Array.from({ length: 2000 }, () => JSON.stringify({ id: ++id, pad })).join('\n');
      fs.writeFileSync(path.join(dir, `${f}.ndjson`), f === 'b' ? text : text + '\n'); // b ends without a newline
    }
    const ex = new BatchExecutor(conn(), await compileModels(conn(), [model('ids', 'SELECT incoming.id FROM incoming')]), 'default');
    await ex.init();
    const seen: number[] = [];
    const batches = await readAll(dir, 1500, async (b) => {
      expect(b.block).toBeDefined();
      const outcome = await ex.execute(await ex.prepare(b.messages, seen.length % 2, b.block));
      expect(outcome.failures).toEqual([]);
      seen.push(...(await ex.readOutput('ids')).rows.map((r) => Number(r.id)));
    });
    expect(batches.map((b) => b.messages.length)).toEqual([1500, 1500, 1500, 1500]);
    expect(seen).toEqual(Array.from({ length: 6000 }, (_, i) => i + 1));
  });

  it('a .json file that is not JSON is one message, dead-lettered whole', async () => {
    const dir = path.join(root, 'json');
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, 'a.json'), '[{"id":1},{"id":2}]');
    fs.writeFileSync(path.join(dir, 'b.json'), '{"id": 3,\n oops');
    const batches = await readAll(dir, 10);
    expect(batches).toHaveLength(1);
    const b = batches[0];
    expect(b.block).toBeUndefined(); // a payload holds a newline: the engine builds its own block
    expect(b.messages.map((m) => m.payload)).toEqual(['{"id":1}', '{"id":2}', '{"id": 3,\n oops']);
    const ex = new BatchExecutor(conn(), await compileModels(conn(), [model('j', 'SELECT incoming.id FROM incoming')]), 'default');
    await ex.init();
    const outcome = await ex.execute(await ex.prepare(b.messages, 0, b.block));
    expect(outcome.failures.map((f) => [f.index, f.stage])).toEqual([[2, 'decode']]);
    expect((await ex.readOutput('j')).rows).toEqual([{ id: 1 }, { id: 2 }]);
  });

  it('a broker block: payloads joined by 0x1E, newlines inside them, load exactly', async () => {
    const payloads = ['{"id":1,\n "name":"pretty"}', '{"id":2,"name":"ünï"}', 'not json', '{"id":4}'];
    const block = blockOfBuffers(payloads.map((p) => Buffer.from(p)))!;
    expect(block.separator).toBe(0x1e);
    const messages = payloads.map((payload, i) => ({ payload, coords: { i } }));
    const ex = new BatchExecutor(conn(), await compileModels(conn(), [model('k', 'SELECT incoming.id, incoming.name FROM incoming')]), 'default');
    await ex.init();
    const outcome = await ex.execute(await ex.prepare(messages, 0, block));
    expect(outcome.failures.map((f) => [f.index, f.stage])).toEqual([[2, 'decode']]);
    expect((await ex.readOutput('k')).rows).toEqual([
      { id: 1, name: 'pretty' },
      { id: 2, name: 'ünï' },
      { id: 4, name: null },
    ]);
    // A payload holding the separator itself: no block, the batch goes the string way.
    expect(blockOfBuffers([Buffer.from('{"a":"\x1e"}')])).toBeUndefined();
  });
});
