import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { useDuckDB } from '../helpers/duckdb.js';
import { parquetSinkSchema } from '../../src/connectors/files/file-sink-config.js';
import { FileSink } from '../../src/connectors/files/file-sink.js';
import { LocalStorage } from '../../src/connectors/files/storage.js';
import { prepareFlush } from '../../src/engine/flush-relation.js';
import { silentLogger } from '../../src/ops/logger.js';

// dedupe_key of a file sink over the relation the engine prepares: within a flush the first
// message (batch, then index in the batch) with a key wins, all of its rows; keys written by
// earlier flushes are dropped; a replay of a flush writes the same rows again.

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-dedupe-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('file sink dedupe_key', () => {
  const conn = useDuckDB();
  const wal = path.join(tmp, 'wal');
  const out = path.join(tmp, 'out');
  fs.mkdirSync(wal);

  async function segment(name: string, rows: string): Promise<string> {
    const f = path.join(wal, `${name}.parquet`);
    await conn().run(`COPY (SELECT * FROM (VALUES ${rows}) v(__sluice_msg, k, v)) TO '${f}'`);
    return f;
  }

  async function write(sink: FileSink, name: string, files: string[]): Promise<string[]> {
    const flush = await prepareFlush(conn(), { model: 'orders', name, files });
    try {
      await sink.write(flush.write, conn());
    } finally {
      await flush.release();
    }
    const r = await conn().runAndReadAll(`SELECT coalesce(k, '-') || ':' || v FROM read_parquet('${path.join(out, 'orders', `${name}.parquet`)}') ORDER BY 1`);
    return r.getRowsJS().map((x) => String(x[0]));
  }

  it('keeps the first message of a key in the flush (all its rows), drops keys of earlier flushes, and replays the same', async () => {
    const cfg = parquetSinkSchema.parse({ type: 'parquet', path: out, dedupe_key: 'k' });
    const sink = new FileSink(cfg, new LocalStorage(out, 'w1', silentLogger()));
    await sink.connect();
    // Batch 1 staged message 3 before message 2 (both k3): the earlier message wins, not the earlier row.
    const b1 = await segment('b1', `(3, 'k3', 'late'), (0, 'k1', 'x'), (0, 'k1', 'y'), (1, 'k1', 'z'), (2, 'k3', 'early'), (4, NULL, 'n1')`);
    const b2 = await segment('b2', `(0, 'k1', 'w'), (1, 'k2', 'a'), (2, NULL, 'n2')`);
    const first = ['-:n1', '-:n2', 'k1:x', 'k1:y', 'k2:a', 'k3:early'];
    expect(await write(sink, 'part-1-2', [b1, b2])).toEqual(first);
    const b3 = await segment('b3', `(0, 'k1', 'again'), (1, 'k4', 'b')`);
    expect(await write(sink, 'part-3-3', [b3])).toEqual(['k4:b']);
    // A replay is not deduplicated against its own remembered keys.
    expect(await write(sink, 'part-1-2', [b1, b2])).toEqual(first);
    await sink.close();
  });
});
