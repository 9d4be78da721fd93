import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { DuckDBInstance, type DuckDBConnection } from '@duckdb/node-api';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SluiceError } from '../../src/errors.js';
import { FLUSH_ORDER, prepareFlush } from '../../src/engine/flush-relation.js';

// What a sink is handed for a flush: a relation over the flush's WAL segments with the model's
// columns and the engine's order columns, and nothing of the WAL itself.

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-flush-rel-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('prepareFlush', () => {
  let db: DuckDBInstance;
  let main: DuckDBConnection;
  let other: DuckDBConnection;
  beforeAll(async () => {
    db = await DuckDBInstance.create(':memory:');
    main = await db.connect();
    other = await db.connect();
  });
  afterAll(() => {
    main.closeSync();
    other.closeSync();
    db.closeSync();
  });
  const conn = () => main;

  /** Two batches' segments as the engine stages them: the second batch's model grew a column. */
  async function segments(dir: string): Promise<string[]> {
    fs.mkdirSync(path.join(tmp, dir));
    const files = [path.join(tmp, dir, '1.parquet'), path.join(tmp, dir, '2.parquet')];
    // Rows are staged out of message order; message 1 gave two rows.
    await conn().run(`COPY (SELECT * FROM (VALUES (2, 'c', 30), (0, 'a', 10), (1, 'b', 20), (1, 'b2', 21)) v(__sluice_msg, id, n)) TO '${files[0]}'`);
    await conn().run(`COPY (SELECT * FROM (VALUES (0, 'd', 40, true)) v(__sluice_msg, id, n, late)) TO '${files[1]}'`);
    return files;
  }

  async function read(rel: string, order: string): Promise<unknown[][]> {
    return (await conn().runAndReadAll(`SELECT id, n, late, "${FLUSH_ORDER.message}", "${FLUSH_ORDER.row}" FROM ${rel} ORDER BY ${order}`)).getRowsJS();
  }

  it("holds the model's columns across segments and order columns that a replay reproduces", async () => {
    const files = await segments('evolve');
    const f = await prepareFlush(conn(), { model: 'orders', name: 'part-1-2', files });
    const w = f.write;
    expect(w).toMatchObject({ model: 'orders', name: 'part-1-2', rows: 5, order: FLUSH_ORDER });
    expect(w.columns).toEqual([
      { name: 'id', type: 'VARCHAR' },
      { name: 'n', type: 'INTEGER' },
      { name: 'late', type: 'BOOLEAN' },
    ]);
    expect(JSON.stringify(w)).not.toContain(tmp);
    const byRow = await read(w.relation, `"${FLUSH_ORDER.row}"`);
    // Staged order: the first segment's rows as written, then the second's.
    expect(byRow.map((r) => r[0])).toEqual(['c', 'a', 'b', 'b2', 'd']);
    expect(byRow[4][2]).toBe(true);
    expect(byRow.slice(0, 4).every((r) => r[2] === null)).toBe(true);
    // A plain scan gives the same order (what the service sinks number rows by).
    const scanned = (await conn().runAndReadAll(`SELECT id FROM ${w.relation}`)).getRowsJS().map((r) => r[0]);
    expect(scanned).toEqual(['c', 'a', 'b', 'b2', 'd']);
    // Messages: the rows of one message share the value; ordered by batch, then message index.
    const byMessage = await read(w.relation, `"${FLUSH_ORDER.message}", "${FLUSH_ORDER.row}"`);
    expect(byMessage.map((r) => r[0])).toEqual(['a', 'b', 'b2', 'c', 'd']);
    expect(byMessage[1][3]).toBe(byMessage[2][3]);
    expect(new Set(byMessage.map((r) => r[3])).size).toBe(4);
    // A replay of the flush (the same segments again) gives the same values.
    const again = await prepareFlush(conn(), { model: 'orders', name: 'part-1-2', files });
    expect(again.write.relation).not.toBe(w.relation);
    expect(await read(again.write.relation, `"${FLUSH_ORDER.row}"`)).toEqual(byRow);
    await again.release();
    await f.release();
  });

  it('gives each flush its own view, seen by its connection only, dropped on release', async () => {
    const files = await segments('views');
    const a = await prepareFlush(conn(), { model: 'a', name: 'x', files: files.slice(0, 1) });
    const b = await prepareFlush(conn(), { model: 'b', name: 'x', files: files.slice(1) });
    expect((await conn().runAndReadAll(`SELECT count(*) FROM ${a.write.relation}`)).getRowsJS()[0][0]).toBe(4n);
    expect((await conn().runAndReadAll(`SELECT count(*) FROM ${b.write.relation}`)).getRowsJS()[0][0]).toBe(1n);
    await expect(other.run(`SELECT * FROM ${a.write.relation}`)).rejects.toThrow(/does not exist/);
    await a.release();
    await expect(conn().run(`SELECT * FROM ${a.write.relation}`)).rejects.toThrow(/does not exist/);
    expect((await conn().runAndReadAll(`SELECT count(*) FROM ${b.write.relation}`)).getRowsJS()[0][0]).toBe(1n);
    await b.release();
  });

  it('refuses a model column named like an engine column, and leaves no view behind', async () => {
    const file = path.join(tmp, 'clash.parquet');
    await conn().run(`COPY (SELECT 0 AS __sluice_msg, 1 AS ${FLUSH_ORDER.row}) TO '${file}'`);
    const views = async () => Number((await conn().runAndReadAll(`SELECT count(*) FROM duckdb_views() WHERE temporary`)).getRowsJS()[0][0]);
    const before = await views();
    const err = await prepareFlush(conn(), { model: 'm', name: 'f', files: [file] }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SluiceError);
    expect((err as SluiceError).message).toBe(`model m has a column named ${FLUSH_ORDER.row}, a name sluice keeps for its own use; rename it in the model's SELECT`);
    expect(await views()).toBe(before);
  });
});
