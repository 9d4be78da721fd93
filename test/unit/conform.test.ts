import { describe, expect, it } from 'vitest';
import { useDuckDB } from '../helpers/duckdb.js';
import { conformance, nonConforming } from '../../src/engine/conform.js';
import { mergeStructure, type Structure } from '../../src/engine/structure.js';
import { DEFAULT_MESSAGE_LIMITS, overLimits } from '../../src/engine/limits.js';

// The decode fast path may only say "conforms" when DuckDB agrees: json_structure() of the
// message merged into the schema changes nothing. Each case is checked against DuckDB itself.

const SCHEMA: Structure = {
  id: 'UBIGINT',
  delta: 'BIGINT',
  price: 'DOUBLE',
  name: 'VARCHAR',
  ok: 'BOOLEAN',
  nothing: 'NULL',
  raw: 'JSON',
  user: { id: 'UBIGINT', tags: ['VARCHAR'] },
  items: [{ sku: 'VARCHAR', qty: 'UBIGINT' }],
  grid: [['DOUBLE']],
};

const CONFORMING = [
  '{"id":1}',
  '{"id":1,"delta":-5,"price":2.5,"name":"a","ok":true}',
  '  {"id" : 1 ,\n "name":"x"}\t',
  '{"price":7}',
  '{"price":-7}',
  '{"delta":7}',
  '{"id":null,"user":null,"items":null,"grid":null,"nothing":null,"raw":null}',
  '{"user":{"id":3,"tags":[]}}',
  '{"user":{"tags":["a","b",null]}}',
  '{"items":[]}',
  '{"items":[{"sku":"a","qty":1},{"qty":2},{"sku":null}]}',
  '{"grid":[[1,2.5],[],[-3e2]]}',
  '{"name":"quote \\" and backslash \\\\"}',
  '{"name":"ends in backslash \\\\"}',
  '{"name":"unicode \\u00e9 é"}',
  '{"ok":false,"id":0}',
  '{"id":123456789012345678}',
  '{"name":"1e5","price":1E+2}',
  // A JSON node takes any value (DuckDB keeps it as JSON text).
  '{"raw":{"a":1}}',
  '{"raw":1}',
  '{"raw":"s","id":1}',
  '{"raw":[1,"a",{"b":[null,true]}],"id":1}',
  '{"raw":{"s":"]}\\"{[","t":[[],{}]},"name":"x"}',
  '{"raw":{},"id":2}',
  '{"raw":false}',
  '{"raw":-0.5e3}',
];

const NOT_CONFORMING = [
  '{"id":-1}', // needs BIGINT
  '{"id":1.0}', // DOUBLE in DuckDB's eyes
  '{"id":1e3}',
  '{"delta":0.5}',
  '{"id":"1"}',
  '{"name":1}',
  '{"ok":1}',
  '{"nothing":1}',
  '{"raw":{"a":1}',
  '{"raw":[1,2}',
  '{"raw":{"a":"}',
  '{"raw":tru}',
  '{"raw":1e400}',
  '{"raw":nul}',
  '{"extra":1}',
  '{"ID":1}',
  '{"id":1,"id":2}',
  '{"u\\u0073er":{}}',
  '{}',
  '{"user":{}}',
  '{"user":{"id":1,"other":2}}',
  '{"user":{"tags":[1]}}',
  '{"items":[{"sku":"a","qty":-1}]}',
  '{"items":{"sku":"a"}}',
  '{"grid":[1]}',
  '[{"id":1}]',
  '"id"',
  'null',
  '',
  '{"id":1',
  '{"id":1}x',
  '{"id":1,}',
  '{"id":01}',
  '{"id":1.}',
  '{"id":12345678901234567890}',
  '{"price":1e400}',
  '{"name":"unterminated}',
  '{"id":tru}',
];

describe('conformance scanner', () => {
  const conn = useDuckDB();

  /** DuckDB's verdict: the message parses and its structure merges into SCHEMA as a no-op. */
  async function duckdbConforms(payload: string): Promise<boolean> {
    const r = await conn().runAndReadAll(`SELECT TRY(json_structure($1::VARCHAR))::VARCHAR`, [payload]);
    const s = r.getRows()[0][0];
    if (s === null) return false;
    const st = JSON.parse(String(s)) as Structure;
    if (typeof st !== 'object' || Array.isArray(st)) return false;
    const m = mergeStructure(SCHEMA, st);
    return !m.conflict && JSON.stringify(m.merged) === JSON.stringify(SCHEMA);
  }

  const scan = conformance(SCHEMA);
  /** The scanner's verdict on a payload alone, which must equal its verdict inside a block. */
  const check = (p: string): boolean => {
    const alone = Buffer.from(p);
    const verdict = scan(alone, 0, alone.length);
    const before = Buffer.from('{"id":1}\n');
    const block = Buffer.concat([before, alone, Buffer.from('\n{"id":2}')]);
    expect({ p, inBlock: scan(block, before.length, before.length + alone.length) }).toEqual({ p, inBlock: verdict });
    return verdict;
  };

  it('judges a message by its own bytes: what follows it in the block never completes it', async () => {
    const parts = ['{"id":1', '{"id":2}', '{"user":{"tags":["a"]}', '}', '{"name":"x'];
    const block = Buffer.from(parts.join(''));
    const at = (i: number) => parts.slice(0, i).join('').length;
    expect(scan(block, at(0), at(1))).toBe(false); // {"id":1 + the next message's bytes
    expect(scan(block, at(1), at(2))).toBe(true);
    expect(scan(block, at(2), at(3))).toBe(false); // the closing brace is the next message's
    expect(scan(block, at(2), at(4))).toBe(true);
    expect(scan(block, at(4), block.length)).toBe(false); // a string cut at the end of the buffer
    const block2 = { data: block, starts: Uint32Array.of(at(0), at(1), at(2)), ends: Uint32Array.of(at(1), at(2), at(3)) };
    expect(await nonConforming(block2, scan)).toEqual([0, 2]);
    expect(await nonConforming(block2, scan, [1, 2])).toEqual([2]);
  });

  it('accepts messages that change nothing, as DuckDB confirms', async () => {
    for (const p of CONFORMING) {
      expect({ p, duckdb: await duckdbConforms(p) }).toEqual({ p, duckdb: true });
      expect({ p, scanner: check(p) }).toEqual({ p, scanner: true });
    }
  });

  it('sends everything else to the exact path', async () => {
    for (const p of NOT_CONFORMING) expect({ p, scanner: check(p) }).toEqual({ p, scanner: false });
    // Never stricter in the unsafe direction: whatever DuckDB rejects, the scanner rejects too.
    for (const p of NOT_CONFORMING) if (!(await duckdbConforms(p))) expect({ p, scanner: check(p) }).toEqual({ p, scanner: false });
  });

  it('agrees with DuckDB on generated messages', async () => {
    // Random messages over the schema's fields with values of every JSON type.
    let seed = 7;
    const rnd = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    const values = ['1', '-2', '0', '3.5', '-0.5', '1e2', '"s"', '"\\"q\\""', 'true', 'false', 'null', '[]', '{}', '[1]', '["a"]', '{"id":1}', '[[1.5]]', '[{"sku":"x","qty":2}]', '{"tags":["t"]}'];
    const keys = [...Object.keys(SCHEMA), 'other'];
    let agreed = 0;
    for (let i = 0; i < 400; i++) {
      const n = 1 + rnd(3);
      const fields = Array.from({ length: n }, () => `"${keys[rnd(keys.length)]}":${values[rnd(values.length)]}`);
      const p = `{${fields.join(',')}}`;
      const scanner = check(p);
      if (scanner) expect({ p, duckdb: await duckdbConforms(p) }).toEqual({ p, duckdb: true });
      if (scanner) agreed++;
    }
    expect(agreed).toBeGreaterThan(20); // the generator does produce conforming messages
  });
});

describe('conformance within limits', () => {
  const SCHEMA2: Structure = { id: 'UBIGINT', raw: 'JSON', after: 'VARCHAR', xs: ['JSON'], deep: { a: { b: 'JSON' } } };
  const scanWith = (limits?: { maxDepth: number; maxFields: number }) => {
    const scan = conformance(SCHEMA2, limits);
    return (p: string): boolean => {
      const b = Buffer.from(p);
      return scan(b, 0, b.length);
    };
  };
  const check = scanWith();
  const nest = (n: number) => '{"a":'.repeat(n) + '1' + '}'.repeat(n);

  it('skips any value of a JSON node and goes on with the next key', () => {
    const value = '{"s":"]}\\\\","q":"\\"{[\\"","l":[[1,{"x":[]}],"}"],"n":null,"e":{}}';
    expect(JSON.parse(value)).toBeTruthy(); // valid JSON, brackets and escaped quotes in strings
    expect(check(`{"raw":${value},"after":"x","id":3}`)).toBe(true);
    expect(check(`{"raw":${value} , "after":1}`)).toBe(false); // the scan resumed at "after": a number is not a string
    expect(check(`{"xs":[${value},1,"a",[]],"id":1}`)).toBe(true);
    expect(check(`{"deep":{"a":{"b":${value}}},"after":"y"}`)).toBe(true);
    expect(check('{"raw":"a\\"}","after":"z"}')).toBe(true);
    expect(check('{"raw":123,"after":"z"}')).toBe(true);
    expect(check('{"raw":{"a":1}}}')).toBe(false); // stops right after the value: the extra brace is seen
    expect(check('{"raw":[1]]}')).toBe(false);
  });

  it('does not conform when the message ends inside a value', () => {
    for (const p of ['{"raw":{"a":[1,2]', '{"raw":{"a":"x}', '{"raw":"abc', '{"raw":"abc\\', '{"raw":[', '{"raw":', '{"raw":tr', '{"raw":{"a":{"b":{}}}'])
      expect({ p, conforms: check(p) }).toEqual({ p, conforms: false });
    // Nor when the value goes on in the bytes after the message.
    const block = Buffer.from('{"raw":{"a":[1]}}{"id":1}');
    expect(conformance(SCHEMA2)(block, 0, 12)).toBe(false);
    expect(conformance(SCHEMA2)(block, 0, 17)).toBe(true);
  });

  it('does not conform past limits.max_depth, counted as overLimits counts it', () => {
    const at = (n: number) => `{"raw":${nest(n - 1)}}`; // the message nests n deep
    expect(check(at(128))).toBe(true);
    expect(check(at(129))).toBe(false);
    expect(check(`{"raw":${nest(5000)}}`)).toBe(false);
    expect(check(`{"raw":${'['.repeat(1_000_000)}}`)).toBe(false);
    const small = scanWith({ maxDepth: 4, maxFields: 100 });
    expect(small('{"deep":{"a":{"b":[1]}}}')).toBe(true);
    expect(small('{"deep":{"a":{"b":[[1]]}}}')).toBe(false);
    expect(small('{"deep":{"a":{"b":{"c":1}}}}')).toBe(true);
    expect(small('{"xs":[[[[]]]]}')).toBe(false);
    // The schema's own nesting counts too.
    expect(scanWith({ maxDepth: 2, maxFields: 100 })('{"deep":{"a":null}}')).toBe(true);
    expect(scanWith({ maxDepth: 2, maxFields: 100 })('{"deep":{"a":{"b":1}}}')).toBe(false);
    for (const [p, lim] of [
      [at(128), DEFAULT_MESSAGE_LIMITS],
      [at(129), DEFAULT_MESSAGE_LIMITS],
    ] as const) {
      const b = Buffer.from(p);
      expect(conformance(SCHEMA2, lim)(b, 0, b.length)).toBe(overLimits(b, 0, b.length, lim) === undefined);
    }
  });

  it('does not conform past limits.max_fields, keys of JSON values included', () => {
    const lim = { maxDepth: 128, maxFields: 5 };
    const small = scanWith(lim);
    expect(small('{"id":1,"raw":{"a":1,"b":2},"after":"x"}')).toBe(true); // 5
    expect(small('{"id":1,"raw":{"a":1,"b":2,"c":3},"after":"x"}')).toBe(false); // 6
    expect(small('{"deep":{"a":{"b":{"x":1}}},"id":1}')).toBe(true); // 5
    expect(small('{"deep":{"a":{"b":{"x":1,"y":2}}},"id":1}')).toBe(false); // 6
    // Same counts as overLimits: under tight limits, a message conforms exactly when it
    // conforms without limits and overLimits lets it through.
    const free = scanWith({ maxDepth: Infinity, maxFields: Infinity });
    const values = ['1', '"[{:"', '{"a":{"b":[1,{"c":"}"}]}}', '[[[[]]]]', '{"x":1,"y":{"z":"\\\\"}}', 'null', '[{"q":[{"r":1}]}]'];
    for (const v1 of values)
      for (const v2 of values) {
        const p = `{"id":1,"raw":${v1},"xs":[${v2},${v1}],"deep":{"a":{"b":${v2}}}}`;
        expect(free(p)).toBe(true);
        for (const tight of [
          { maxDepth: 5, maxFields: 8 },
          { maxDepth: 7, maxFields: 12 },
          { maxDepth: 3, maxFields: 100 },
        ]) {
          const b = Buffer.from(p);
          const within = overLimits(b, 0, b.length, { maxBytes: 1e9, ...tight }) === undefined;
          expect({ p, tight, conforms: scanWith(tight)(p) }).toEqual({ p, tight, conforms: within });
        }
      }
    const many = `{"raw":{${Array.from({ length: 100_001 }, (_, i) => `"k${i}":1`).join(',')}}}`;
    expect(check(many)).toBe(false);
    expect(check(`{"raw":{${Array.from({ length: 99_999 }, (_, i) => `"k${i}":1`).join(',')}}}`)).toBe(true);
  });
});
