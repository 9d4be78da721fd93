import { describe, expect, it } from 'vitest';
import type { RawMessage } from '../../src/connectors/types.js';
import { BatchExecutor, compileModels, DEFAULT_DECODE_RULES, type DecodeRules } from '../../src/engine/executor.js';
import type { ModelDef } from '../../src/project/project-loader.js';
import { useDuckDB } from '../helpers/duckdb.js';

// The engine's decode rules on hostile messages, in process on a real DuckDB: per-message
// limits, the map collapse of nested objects with ever-new keys, the column cap of `incoming`
// and its contract (evolve, freeze, discard_row, discard_value).

const model = (name: string, sql: string): ModelDef => ({ name, file: `models/${name}.sql`, refs: [], rendered: { sql } }) as unknown as ModelDef;
const msg = (payload: string, i = 0): RawMessage => ({ payload, coords: { line: i + 1 } }) as RawMessage;

function deep(levels: number): string {
  return '{"a":'.repeat(levels) + '1' + '}'.repeat(levels);
}

describe('decode rules', () => {
  const conn = useDuckDB();

  async function executor(sql: string, rules: Partial<DecodeRules> = {}, limits: Partial<DecodeRules['limits']> = {}): Promise<BatchExecutor> {
    const r: DecodeRules = { ...DEFAULT_DECODE_RULES, ...rules, limits: { ...DEFAULT_DECODE_RULES.limits, ...limits } };
    const ex = new BatchExecutor(conn(), await compileModels(conn(), [model('m', sql)]), 'default', conn(), r);
    await ex.init();
    return ex;
  }

  it('a message nested 5,000 levels deep is dead-lettered at decode naming the limit; the rest of its batch goes on', async () => {
    const ex = await executor('SELECT incoming.id FROM incoming');
    const out = await ex.process([msg('{"id":1}'), msg(`{"id":2,"x":${deep(5000)}}`, 1), msg('{"id":3}', 2)]);
    expect(out.failures).toEqual([{ index: 1, stage: 'decode', error: 'message nests deeper than limits.max_depth (128)' }]);
    expect((await ex.readOutput('m')).rows).toEqual([{ id: 1 }, { id: 3 }]);
  });

  it("a top-level field named like one of sluice's own columns, in any case, is dead-lettered at decode; the rest of the batch goes on", async () => {
    const ex = await executor('SELECT * FROM incoming');
    const out = await ex.process([msg('{"id":1}'), msg('{"id":2,"__sluice_row":5}', 1), msg('{"id":3,"__SLUICE_Message":6}', 2), msg('{"id":4,"__sluice_msg":7}', 3), msg('{"id":5}', 4)]);
    expect(out.failures.map((f) => [f.index, f.stage])).toEqual([
      [1, 'decode'],
      [2, 'decode'],
      [3, 'decode'],
    ]);
    for (const f of out.failures) expect(f.error).toMatch(/^field __sluice_(row|message|msg) is reserved by sluice/i);
    expect((await ex.readOutput('m')).rows).toEqual([{ id: 1 }, { id: 5 }]);
  });

  it('messages 1,000 and 2,000 levels deep cost milliseconds, not seconds', async () => {
    const ex = await executor('SELECT incoming.id FROM incoming');
    await ex.process([msg('{"id":0}')]);
    for (const levels of [1000, 2000]) {
      const t = performance.now();
      const out = await ex.process([msg(`{"id":1,"x":${deep(levels)}}`)]);
      const ms = performance.now() - t;
      expect(out.failures[0].error).toMatch(/max_depth/);
      // Before the linear check: 2.2 s and 8.3 s. A generous bound for a loaded machine.
      expect(ms).toBeLessThan(1000);
    }
  });

  it('max_message_bytes and max_fields dead-letter with the limit in the error', async () => {
    const ex = await executor('SELECT incoming.id FROM incoming', {}, { maxBytes: 400, maxFields: 50 });
    const big = `{"id":1,"s":"${'x'.repeat(500)}"}`;
    // 2 + 17 * 3 = 53 keys, over the 50 allowed, in a message under the 400 bytes.
    const wide = JSON.stringify({ id: 3, o: Object.fromEntries(Array.from({ length: 17 }, (_, i) => [`${i}`, { a: 1, b: 2 }])) });
    expect(wide.length).toBeLessThan(400);
    const out = await ex.process([msg(big), msg('{"id":2}', 1), msg(wide, 2)]);
    expect(out.failures.map((f) => f.error)).toEqual([`message is ${big.length} bytes, over limits.max_message_bytes (400)`, 'message has more than limits.max_fields (50) fields']);
    expect((await ex.readOutput('m')).rows).toEqual([{ id: 2 }]);
  });

  it('a nested object whose keys keep changing becomes one JSON column, kept so on the next batches', async () => {
    const ex = await executor('SELECT incoming.id, incoming.scores, json_type(incoming.scores) AS t FROM incoming', { mapThreshold: 5 });
    const batch = (from: number) => Array.from({ length: 10 }, (_, i) => msg(JSON.stringify({ id: from + i, scores: { [`user${from + i}`]: from + i } }), i));
    const first = await ex.process(batch(0));
    expect(first.failures).toEqual([]);
    expect(first.contract.changes).toEqual([{ model: 'incoming', column: '$.scores', kind: 'type_change', from: 'STRUCT', to: 'JSON' }]);
    const out = await ex.readOutput('m');
    // In `incoming` it is a JSON value (json_type answers); the model's table keeps its text.
    expect(out.columns.map((c) => c.name)).toEqual(['id', 'scores', 't']);
    expect(out.rows[7]).toEqual({ id: 7, scores: '{"user7":7}', t: 'OBJECT' });
    const second = await ex.process(batch(100));
    expect(second.failures).toEqual([]);
    expect(ex.structure).toEqual({ id: 'UBIGINT', scores: 'JSON' });
    expect((await ex.readOutput('m')).rows[3]).toEqual({ id: 103, scores: '{"user103":103}', t: 'OBJECT' });
  });

  it('incoming stops at max_columns: a message that would add a field past it is dead-lettered, the schema stays bounded', async () => {
    const ex = await executor('SELECT incoming.a, incoming.b FROM incoming', { maxColumns: 50 });
    const messages = Array.from({ length: 2000 }, (_, i) => msg(JSON.stringify({ a: i, b: 'x', [`k${i}`]: i }), i));
    const out = await ex.process(messages);
    const rows = (await ex.readOutput('m')).rows;
    expect(rows.length + out.failures.length).toBe(2000);
    expect(rows.length).toBe(48);
    expect(out.failures.every((f) => /^the message adds field \$\.k\d+ but incoming's schema has reached limits\.max_columns \(50 fields\)$/.test(f.error))).toBe(true);
    expect(Object.keys(ex.structure as object)).toHaveLength(50);
  });

  it('contract.new_columns: freeze dead-letters, discard_row drops, discard_value keeps the row without the new field', async () => {
    const first = [msg('{"id":1,"name":"a"}')];
    const next = [msg('{"id":2,"name":"b","extra":true}'), msg('{"id":3,"name":"c"}', 1)];

    const freeze = await executor('SELECT * FROM incoming', { newColumns: 'freeze' });
    await freeze.process(first);
    const f = await freeze.process(next);
    expect(f.failures).toEqual([{ index: 0, stage: 'decode', error: "new field $.extra: incoming's schema is frozen (contract.new_columns: freeze)" }]);
    expect((await freeze.readOutput('m')).rows).toEqual([{ id: 3, name: 'c' }]);
    expect(f.contract.violations).toEqual([{ model: 'incoming', column: '$.extra', kind: 'new_column', policy: 'freeze', rows: 1 }]);

    const dropRow = await executor('SELECT * FROM incoming', { newColumns: 'discard_row' });
    await dropRow.process(first);
    const d = await dropRow.process(next);
    expect(d.failures).toEqual([]);
    expect((await dropRow.readOutput('m')).rows).toEqual([{ id: 3, name: 'c' }]);
    expect(d.contract.violations).toEqual([{ model: 'incoming', column: '$.extra', kind: 'new_column', policy: 'discard_row', rows: 1 }]);

    const dropValue = await executor('SELECT * FROM incoming', { newColumns: 'discard_value' });
    await dropValue.process(first);
    const v = await dropValue.process(next);
    expect(v.failures).toEqual([]);
    expect((await dropValue.readOutput('m')).rows).toEqual([
      { id: 2, name: 'b' },
      { id: 3, name: 'c' },
    ]);
    expect(v.contract.violations).toEqual([{ model: 'incoming', column: '$.extra', kind: 'new_column', policy: 'discard_value', rows: 1 }]);
  });

  it('a message with more top-level keys than max_columns is dead-lettered without DuckDB working out its structure (evolve); discard_value keeps its known fields', async () => {
    const wide = JSON.stringify({ a: 1, b: 'x', ...Object.fromEntries(Array.from({ length: 20_000 }, (_, i) => [`w${i}`, i])) });
    const ex = await executor('SELECT incoming.a, incoming.b FROM incoming', { maxColumns: 50 });
    // Before any schema too: the message could never be a row.
    const out = await ex.process([msg(wide), msg('{"a":1,"b":"y"}', 1), msg(wide, 2)]);
    expect(out.failures).toEqual([
      { index: 0, stage: 'decode', error: 'message has 20002 top-level keys, over limits.max_columns (50)' },
      { index: 2, stage: 'decode', error: 'message has 20002 top-level keys, over limits.max_columns (50)' },
    ]);
    expect((await ex.readOutput('m')).rows).toEqual([{ a: 1, b: 'y' }]);
    expect(ex.structure).toEqual({ a: 'UBIGINT', b: 'VARCHAR' });
    // 51 keys, one of them twice: 50 distinct, which fit.
    const dup = `{${Array.from({ length: 50 }, (_, i) => `"d${i}":${i}`).join(',')},"d0":7}`;
    const fits = await (await executor('SELECT incoming.d1, incoming.d49 FROM incoming', { maxColumns: 50 })).process([msg(dup)]);
    expect(fits.failures).toEqual([]);

    const keep = await executor('SELECT incoming.a, incoming.b FROM incoming', { maxColumns: 50, newColumns: 'discard_value' });
    await keep.process([msg('{"a":0,"b":"z"}')]);
    const kept = await keep.process([msg(wide)]);
    expect(kept.failures).toEqual([]);
    expect((await keep.readOutput('m')).rows).toEqual([{ a: 1, b: 'x' }]);
  });
});
