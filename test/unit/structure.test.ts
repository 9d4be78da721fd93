import { describe, expect, it } from 'vitest';
import { countFields, DEFAULT_MERGE, mergeStructure, type MergeOptions, type Structure } from '../../src/engine/structure.js';

const SKIP: MergeOptions = { ...DEFAULT_MERGE, newFields: 'skip' };
const keys = (n: number, type: Structure = 'UBIGINT', prefix = 'k'): Record<string, Structure> => Object.fromEntries(Array.from({ length: n }, (_, i) => [`${prefix}${i}`, type]));

describe('mergeStructure', () => {
  it('reports the fields it adds, at every depth', () => {
    const r = mergeStructure(
      { a: 'VARCHAR', u: { id: 'UBIGINT' }, n: 'NULL', xs: ['NULL'] },
      { b: { c: 'VARCHAR', d: [{ e: 'BOOLEAN' }] }, u: { id: 'UBIGINT', name: 'VARCHAR' }, n: { p: 'DOUBLE' }, xs: [{ q: 'UBIGINT' }] },
    );
    expect(r.conflict).toBeUndefined();
    expect(r.merged).toEqual({ a: 'VARCHAR', u: { id: 'UBIGINT', name: 'VARCHAR' }, n: { p: 'DOUBLE' }, xs: [{ q: 'UBIGINT' }], b: { c: 'VARCHAR', d: [{ e: 'BOOLEAN' }] } });
    expect(r.added).toEqual(['$.b', '$.b.c', '$.b.d', '$.b.d[].e', '$.u.name', '$.n.p', '$.xs[].q']);
    expect(r.skipped).toEqual([]);
    expect(r.collapsed).toEqual([]);
    expect(mergeStructure(undefined, { a: 'VARCHAR', b: ['UBIGINT'] }).added).toEqual(['$.a', '$.b']);
  });

  it('returns the known structure itself when nothing changes', () => {
    const a: Structure = { a: 'DOUBLE', u: { id: 'UBIGINT', tags: ['VARCHAR'] }, j: 'JSON' };
    const r = mergeStructure(a, { a: 'UBIGINT', u: { tags: ['NULL'] }, j: { x: ['VARCHAR'] } });
    expect(r.merged).toBe(a);
    expect(r).toEqual({ merged: a, added: [], skipped: [], collapsed: [] });
  });

  it('lets a JSON node absorb anything, but not the other way round', () => {
    for (const b of [{ x: { y: 'UBIGINT' } }, ['VARCHAR'], 'DOUBLE', 'JSON', 'NULL'] as Structure[]) {
      const r = mergeStructure({ j: 'JSON' }, { j: b });
      expect(r.conflict).toBeUndefined();
      expect(r.merged).toEqual({ j: 'JSON' });
    }
    expect(mergeStructure({ xs: ['JSON'] }, { xs: [{ a: 'UBIGINT' }] }).merged).toEqual({ xs: ['JSON'] });
    expect(mergeStructure({ j: 'NULL' }, { j: 'JSON' }).merged).toEqual({ j: 'JSON' });
    expect(mergeStructure({ o: { a: 'UBIGINT' } }, { o: 'JSON' }).conflict).toBe('$.o is an object in earlier messages but json here');
  });

  it('turns a nested object grown past mapThreshold into JSON, not the top level', () => {
    const opts = { ...DEFAULT_MERGE, mapThreshold: 3 };
    expect(mergeStructure({ m: keys(2) }, { m: keys(3) }, '$', opts)).toEqual({ merged: { m: keys(3) }, added: ['$.m.k2'], skipped: [], collapsed: [] });
    const r = mergeStructure({ m: keys(3), x: 'VARCHAR' }, { m: { k9: { deep: 'VARCHAR' } }, y: 'BOOLEAN' }, '$', opts);
    expect(r).toEqual({ merged: { m: 'JSON', x: 'VARCHAR', y: 'BOOLEAN' }, added: ['$.y'], skipped: [], collapsed: ['$.m'] });
    // A new key holding a map, and a map inside a list.
    expect(mergeStructure({ x: 'VARCHAR' }, { m: keys(4) }, '$', opts)).toEqual({ merged: { x: 'VARCHAR', m: 'JSON' }, added: ['$.m'], skipped: [], collapsed: ['$.m'] });
    expect(mergeStructure({ xs: ['NULL'] }, { xs: [{ m: keys(4, 'UBIGINT', 'K') }] }, '$', opts)).toEqual({
      merged: { xs: [{ m: 'JSON' }] },
      added: ['$.xs[].m'],
      skipped: [],
      collapsed: ['$.xs[].m'],
    });
    // The top level's keys are columns: never a map.
    expect(mergeStructure(keys(3), keys(5), '$', opts).merged).toEqual(keys(5));
    expect(mergeStructure(undefined, keys(500)).merged).toEqual(keys(500));
    // The default threshold is DuckDB's (200).
    expect(mergeStructure({ m: keys(200) }, { m: { k0: 'UBIGINT' } }).merged).toEqual({ m: keys(200) });
    expect(mergeStructure({ m: keys(200) }, { m: { z: 'UBIGINT' } }).merged).toEqual({ m: 'JSON' });
    // Once JSON, the map takes any key.
    expect(mergeStructure({ m: 'JSON' }, { m: keys(1000) }).merged).toEqual({ m: 'JSON' });
  });

  it("with newFields 'skip', merges known keys only", () => {
    const r = mergeStructure({ a: 'UBIGINT', u: { id: 'UBIGINT' } }, { a: 'DOUBLE', b: 'VARCHAR', u: { id: 'BIGINT', name: 'VARCHAR' }, c: { d: 'BOOLEAN' } }, '$', SKIP);
    expect(r).toEqual({ merged: { a: 'DOUBLE', u: { id: 'BIGINT' } }, added: [], skipped: ['$.b', '$.u.name', '$.c'], collapsed: [] });
    // Nothing changes: the same structure back.
    const a: Structure = { a: 'UBIGINT' };
    expect(mergeStructure(a, { b: 'VARCHAR' }, '$', SKIP).merged).toBe(a);
    // No map collapse: new keys are just skipped.
    expect(mergeStructure({ m: keys(3) }, { m: keys(10) }, '$', { newFields: 'skip', mapThreshold: 3 }).merged).toEqual({ m: keys(3) });
    // A NULL meeting a value with fields keeps it as JSON instead of adding them; without fields it adopts it.
    expect(mergeStructure({ n: 'NULL', xs: ['NULL'], s: 'NULL' }, { n: { p: 'DOUBLE' }, xs: [{ q: 'UBIGINT' }], s: ['VARCHAR'] }, '$', SKIP)).toEqual({
      merged: { n: 'JSON', xs: ['JSON'], s: ['VARCHAR'] },
      added: [],
      skipped: [],
      collapsed: ['$.n', '$.xs[]'],
    });
    // Nothing known yet: everything is added (the caller uses 'skip' only once a schema exists).
    expect(mergeStructure(undefined, { a: 'VARCHAR', n: { p: 'DOUBLE' } }, '$', SKIP)).toEqual({
      merged: { a: 'VARCHAR', n: { p: 'DOUBLE' } },
      added: ['$.a', '$.n', '$.n.p'],
      skipped: [],
      collapsed: [],
    });
    // Conflicts on known keys remain conflicts.
    expect(mergeStructure({ a: 'UBIGINT' }, { a: 'VARCHAR' }, '$', SKIP).conflict).toBe('$.a is a number in earlier messages but a string here');
  });

  it('rejects keys that differ only in case, quickly', () => {
    expect(mergeStructure({ a: 'VARCHAR' }, { A: 'VARCHAR' }).conflict).toBe('$.A differs only in case from $.a');
    expect(mergeStructure({ u: { id: 'UBIGINT' } }, { u: { Id: 'UBIGINT' } }).conflict).toBe('$.u.Id differs only in case from $.u.id');
    expect(mergeStructure({ a: 'VARCHAR' }, { b: 'VARCHAR', B: 'VARCHAR' }).conflict).toBe('$.B differs only in case from $.b');
    const r = mergeStructure({ a: 'VARCHAR' }, { b: 'VARCHAR', A: 'VARCHAR' });
    expect(r).toEqual({ merged: { a: 'VARCHAR' }, conflict: '$.A differs only in case from $.a', added: [], skipped: [], collapsed: [] });
    // 500 messages of 1,000 keys each into a schema of 1,000 keys: linear, not quadratic (a
    // search of the known keys per key took a minute).
    const messages = Array.from({ length: 500 }, (_, i) => ({ ...keys(999), [`new${i % 3}`]: 'VARCHAR' }));
    const t0 = performance.now();
    let s: Structure = keys(1000);
    for (const m of messages) s = mergeStructure(s, m).merged;
    expect(performance.now() - t0).toBeLessThan(3000);
    expect(countFields(s)).toBe(1003);
  });

  it('keeps a key named __proto__ as a key', () => {
    const b = JSON.parse('{"__proto__":"UBIGINT","a":"VARCHAR"}') as Structure;
    const r = mergeStructure({ a: 'VARCHAR' }, b);
    expect(r.conflict).toBeUndefined();
    expect(JSON.stringify(r.merged)).toBe('{"a":"VARCHAR","__proto__":"UBIGINT"}');
    expect(Object.getPrototypeOf(r.merged)).toBe(Object.prototype);
    const r2 = mergeStructure(r.merged, JSON.parse('{"__proto__":"DOUBLE"}') as Structure);
    expect(JSON.stringify(r2.merged)).toBe('{"a":"VARCHAR","__proto__":"DOUBLE"}');
  });
});

describe('mergeStructure in place', () => {
  const IN_PLACE: MergeOptions = { ...DEFAULT_MERGE, inPlace: true };

  it("changes the caller's own object instead of copying it, and undo puts it back exactly", () => {
    const own: Record<string, Structure> = { a: 'UBIGINT', u: { id: 'UBIGINT' }, n: 'NULL' };
    const before = JSON.stringify(own);
    const nested = own.u;
    const r = mergeStructure(own, { a: 'DOUBLE', b: 'VARCHAR', u: { id: 'UBIGINT', name: 'VARCHAR' }, n: { p: 'BOOLEAN' } }, '$', IN_PLACE);
    expect(r.merged).toBe(own);
    expect(own).toEqual({ a: 'DOUBLE', u: { id: 'UBIGINT', name: 'VARCHAR' }, n: { p: 'BOOLEAN' }, b: 'VARCHAR' });
    expect(r.added).toEqual(['$.b', '$.u.name', '$.n.p']);
    // Only the top level is the caller's: a nested object is copied, never changed.
    expect(nested).toEqual({ id: 'UBIGINT' });
    r.undo!();
    expect(JSON.stringify(own)).toBe(before);
    // The keys it added are gone from the case check too: the same key can be added again, and
    // one differing only in case from a kept key is still refused.
    expect(mergeStructure(own, { B: 'VARCHAR' }, '$', IN_PLACE).added).toEqual(['$.B']);
    expect(mergeStructure(own, { A: 'VARCHAR' }, '$', IN_PLACE).conflict).toBe('$.A differs only in case from $.a');
  });

  it('puts the object back by itself on a conflict found after changing it', () => {
    const own: Record<string, Structure> = { a: 'UBIGINT', z: 'VARCHAR' };
    const r = mergeStructure(own, { a: 'DOUBLE', b: 'VARCHAR', c: { d: 'UBIGINT' }, z: 'UBIGINT' }, '$', IN_PLACE);
    expect(r.conflict).toBe('$.z is a string in earlier messages but a number here');
    expect(r.undo).toBeUndefined();
    expect(JSON.stringify(own)).toBe('{"a":"UBIGINT","z":"VARCHAR"}');
    const late = mergeStructure(own, { x: 'VARCHAR', X: 'VARCHAR' }, '$', IN_PLACE);
    expect(late.conflict).toBe('$.X differs only in case from $.x');
    expect(JSON.stringify(own)).toBe('{"a":"UBIGINT","z":"VARCHAR"}');
    expect(mergeStructure(own, { X: 'VARCHAR' }, '$', IN_PLACE).conflict).toBeUndefined();
  });

  it('gives what merging copies gives, message after message, and costs what a message adds', () => {
    // 1,500 messages of 3 keys each, 1,000 of them new: one after the other into one schema.
    const messages: Record<string, Structure>[] = Array.from({ length: 1500 }, (_, i) => ({ id: 'UBIGINT', kind: 'VARCHAR', [`k${i % 1000}`]: i % 7 ? 'UBIGINT' : 'DOUBLE' }));
    let copied: Structure = {};
    for (const m of messages) copied = mergeStructure(copied, m).merged;
    const own: Record<string, Structure> = {};
    const t0 = performance.now();
    for (const m of messages) mergeStructure(own, m, '$', IN_PLACE);
    const inPlace = performance.now() - t0;
    expect(JSON.stringify(own)).toBe(JSON.stringify(copied));
    expect(countFields(own)).toBe(1002);
    // Copying the schema per message is quadratic (0.2-1 s on two loaded cores); in place, linear (a few ms).
    expect(inPlace).toBeLessThan(100);
  });

  it('leaves a frozen or absent structure to the copying merge', () => {
    const frozen = Object.freeze({ a: 'UBIGINT' }) as Structure;
    const r = mergeStructure(frozen, { b: 'VARCHAR' }, '$', IN_PLACE);
    expect(r.merged).toEqual({ a: 'UBIGINT', b: 'VARCHAR' });
    expect(r.merged).not.toBe(frozen);
    expect(mergeStructure(undefined, { b: 'VARCHAR' }, '$', IN_PLACE).merged).toEqual({ b: 'VARCHAR' });
  });
});

describe('countFields', () => {
  it('of a merge without a collapse is the fields before plus those it added (the decoder counts so)', () => {
    // Structures of every kind, merged pairwise both ways.
    const shapes: Structure[] = [
      { a: 'UBIGINT' },
      { a: 'DOUBLE', b: { c: 'VARCHAR', d: ['NULL'] } },
      { b: { d: [{ e: 'BOOLEAN', f: [['UBIGINT']] }] }, g: 'NULL' },
      { g: { h: 'VARCHAR' }, xs: ['NULL'] },
      { xs: [{ q: 'UBIGINT', r: { s: 'JSON' } }], b: 'JSON' },
      { b: { c: 'VARCHAR', i: 'NULL' }, j: [] as Structure[] },
      { k: keys(30) },
      { a: 'NULL', n: { o: { p: { q: 'UBIGINT' } } } },
    ];
    let checked = 0;
    for (const x of shapes) {
      for (const y of shapes) {
        let acc: Structure | undefined;
        for (const z of [x, y, x]) {
          const r = mergeStructure(acc, z);
          if (r.conflict || r.collapsed.length) continue;
          expect(countFields(r.merged)).toBe(countFields(acc) + r.added.length);
          acc = r.merged;
          checked++;
        }
      }
    }
    expect(checked).toBeGreaterThan(100);
  });

  it('counts keys at every depth, through lists, not inside JSON', () => {
    expect(countFields(undefined)).toBe(0);
    expect(countFields('VARCHAR')).toBe(0);
    expect(countFields('JSON')).toBe(0);
    expect(countFields(['UBIGINT'])).toBe(0);
    expect(countFields({ a: 'VARCHAR', j: 'JSON', u: { id: 'UBIGINT', tags: ['VARCHAR'] }, items: [{ sku: 'VARCHAR', q: [[{ x: 'DOUBLE' }]] }] })).toBe(9);
    expect(countFields(keys(100_000))).toBe(100_000);
  });

  it('handles deep structures without recursion', () => {
    let s: Structure = 'UBIGINT';
    for (let i = 0; i < 100_000; i++) s = i % 2 ? { a: s } : [s];
    expect(countFields(s)).toBe(50_000);
  });
});
