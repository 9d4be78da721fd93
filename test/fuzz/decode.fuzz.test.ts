import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { isUtf8 } from 'node:buffer';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { DuckDBInstance, blobValue, type DuckDBConnection } from '@duckdb/node-api';
import { BatchExecutor, compileModels, type CompiledModel, type MessageFailure } from '../../src/engine/executor.js';
import { blockOfBuffers } from '../../src/connectors/payload-block.js';
import type { RawMessage } from '../../src/connectors/types.js';
import type { ModelDef } from '../../src/project/project-loader.js';
import { MSG_COL } from '../../src/sql/analyze.js';
import { budget, preview, showBytes, timed, type Budget } from './fuzz-budget.js';
import { bigCorpus, crashCorpus, smallCorpus } from '../fixtures/hostile/make-corpus.mjs';

// The decode path under hostile input (issue: "fuzzing as part of the suite").
//
// The property, for every message: processing never throws, and the message is EITHER
// dead-lettered (in `failures`, with a stage and a non-empty reason) OR its one output row of
// `SELECT * FROM incoming` is exactly what DuckDB itself makes of that message alone:
//
//   S   = json_structure(m)                                        -- DuckDB's own schema of m
//   row = to_json(t) FROM (SELECT unnest(json_transform(m, S'))) t  -- S' = S normalised, below
//
// and the executor's row is the same to_json(), taken inside DuckDB from its output table, so
// no JavaScript conversion stands between the two strings compared. `m` is the bytes the
// executor was handed (a JavaScript string payload is its UTF-8, as Buffer.from makes it: a raw
// lone surrogate becomes U+FFFD, the only thing a string can hold that bytes cannot).
//
// S' differs from S in one documented way: a nested object (not the top level) with more than
// 200 keys is one JSON column (rules.mapThreshold, like read_json's map_inference_threshold).
//
// Dead-lettering is checked too, so that "dead-letter everything" cannot pass:
//  - bytes that are not UTF-8: the reason says so;
//  - nesting deeper than limits.max_depth (128; `{` and `[` outside strings, as limits.ts
//    documents): the reason names limits.max_depth, and DuckDB is never asked (a 20,000-deep
//    message crashes json_structure());
//  - a message DuckDB makes a row of may be dead-lettered only for a documented reason: keys
//    that differ only in case, or a limit (limits.max_columns, ...); anything else (a
//    transform error on `SELECT *`, a reason-less failure) fails the property;
//  - a message DuckDB cannot read, reads as something other than an object, or cannot make a
//    row of (unnest() refuses an empty key next to others) must be dead-lettered: never thrown.
// Each message also goes through the same executor a second time, its schema now established,
// which takes the fast path (conform.ts scans the raw bytes): the outcome must not change.
//
// A whole generated batch goes through once more, to exercise bisection and the isolation of
// bad messages: every message is dead-lettered or has exactly one row, a message refused alone
// is refused in the batch, one accepted alone is refused in the batch only for a type conflict
// or a limit, and every row is DuckDB's reading of that message with the schema the batch
// established (as read_json reads every record of a file with one schema).
//
// Budget: see fuzz-budget.ts (SLUICE_FUZZ_RUNS / SLUICE_FUZZ_SECONDS / SLUICE_FUZZ_SEED).

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '..', '..');
const CORPUS_DIR = path.join(ROOT, 'test', 'fixtures', 'hostile');
/** Seconds `npm test` gives the generated properties together (the corpus runs besides). */
const PROPERTY_SECONDS = 14;

const MAX_DEPTH = 128; // limits.max_depth's default (src/engine/limits.ts)
const MAP_THRESHOLD = 200; // the default map threshold (DecodeRules.mapThreshold)

/** A message: its bytes, and the JavaScript string when it came as one (`text`). */
class Hostile {
  constructor(
    readonly label: string,
    readonly bytes: Buffer,
    readonly text?: string,
  ) {}

  static text(label: string, text: string): Hostile {
    return new Hostile(label, Buffer.from(text), text);
  }

  /** The payload a source hands over: the string, or the bytes decoded (invalid ones replaced). */
  get payload(): string {
    return this.text ?? this.bytes.toString('utf8');
  }

  /** How fast-check prints a counterexample. */
  [fc.toStringMethod](): string {
    return `${this.label} [${this.bytes.length} bytes${this.text === undefined ? ', given as bytes' : ''}]: ${this.text !== undefined ? preview(this.text) : showBytes(this.bytes)}`;
  }

  toString(): string {
    return this[fc.toStringMethod]();
  }
}

// ---------------------------------------------------------------------------------------------
// What DuckDB makes of a message alone, and what the executor made of it.

/** Nesting as limits.ts counts it: `{` and `[` outside strings (escapes honoured). */
function depthOf(b: Uint8Array): number {
  let depth = 0;
  let max = 0;
  for (let p = 0; p < b.length; p++) {
    const c = b[p];
    if (c === 0x22) {
      for (p++; p < b.length && b[p] !== 0x22; p++) if (b[p] === 0x5c) p++;
    } else if (c === 0x7b || c === 0x5b) max = Math.max(max, ++depth);
    else if ((c === 0x7d || c === 0x5d) && depth > 0) depth--;
  }
  return max;
}

type Structure = string | Structure[] | { [k: string]: Structure };

/** S': nested objects over the map threshold become JSON (the one documented normalisation). */
function collapseMaps(s: Structure, top = true): Structure {
  if (Array.isArray(s)) return [collapseMaps(s[0], false)];
  if (typeof s === 'object' && s !== null) {
    const keys = Object.keys(s);
    if (!top && keys.length > MAP_THRESHOLD) return 'JSON';
    const out: Record<string, Structure> = {};
    for (const k of keys) Object.defineProperty(out, k, { value: collapseMaps(s[k], false), enumerable: true, writable: true, configurable: true });
    return out;
  }
  return s;
}

/** What DuckDB's json_structure() makes of a message alone. */
type Shape = { kind: 'unreadable'; why: string } | { kind: 'not-object'; structure: string } | { kind: 'too-deep' } | { kind: 'object'; structure: string };

type Reading = { kind: 'row'; json: string } | { kind: 'unreadable'; why: string };

const sqlLit = (s: string) => `'${s.replace(/'/g, "''")}'`;
const firstLine = (e: unknown) => (e instanceof Error ? e.message : String(e)).split('\n')[0];
/** A table alias no message key can shadow (generated keys are short, or from fixed lists). */
const ROW = 'fuzz_row_alias_7f3a';

/** DuckDB's schema of `bytes` alone; never asked past limits.max_depth (it may crash). */
async function duckShape(conn: DuckDBConnection, bytes: Buffer): Promise<Shape> {
  if (depthOf(bytes) > MAX_DEPTH) return { kind: 'too-deep' };
  try {
    const r = await conn.runAndReadAll('SELECT json_structure(decode($1::BLOB))::VARCHAR', [blobValue(bytes)]);
    const structure = String(r.getRows()[0][0]);
    const s = JSON.parse(structure) as Structure;
    return typeof s === 'object' && !Array.isArray(s) ? { kind: 'object', structure } : { kind: 'not-object', structure };
  } catch (e) {
    return { kind: 'unreadable', why: firstLine(e) };
  }
}

/** DuckDB's row of `bytes` read with `schema`: to_json(unnest(json_transform(m, schema))). */
async function duckRow(conn: DuckDBConnection, bytes: Buffer, schema: Structure): Promise<Reading> {
  try {
    const r = await conn.runAndReadAll(`SELECT to_json(${ROW})::VARCHAR FROM (SELECT unnest(json_transform(decode($1::BLOB), ${sqlLit(JSON.stringify(schema))}))) ${ROW}`, [blobValue(bytes)]);
    return { kind: 'row', json: String(r.getRows()[0][0]) };
  } catch (e) {
    return { kind: 'unreadable', why: firstLine(e) };
  }
}

/** DuckDB's reading of a message alone, computed as far as a check needs it. */
class Alone {
  private shapeP?: Promise<Shape>;
  private rowP?: Promise<Reading | undefined>;
  constructor(private readonly bytes: Buffer) {}
  shape(): Promise<Shape> {
    return (this.shapeP ??= duckShape(conn, this.bytes));
  }
  /** The row with S' (undefined when json_structure() gives no object). */
  row(): Promise<Reading | undefined> {
    return (this.rowP ??= this.shape().then((s) => (s.kind === 'object' ? duckRow(conn, this.bytes, collapseMaps(JSON.parse(s.structure) as Structure)) : undefined)));
  }
}

interface Outcome {
  failure?: MessageFailure;
  /** to_json() of its output row, MSG_COL left out. */
  rows: string[];
  /** What the executor was handed for this message. */
  given: Buffer;
}

type Run = { ok: true; outcomes: Outcome[]; structure: unknown; path: 'block' | 'strings' } | { ok: false; threw: string; path: 'block' | 'strings' };

const TRAILER = new RegExp(`(?:,|(?<=\\{))"${MSG_COL}":(\\d+)\\}$`);

/**
 * Runs one batch through `ex`: as a block of bytes (what the file and broker sources hand over)
 * when `asBlock` and no message holds the block separator, else as string payloads.
 */
async function runBatch(conn: DuckDBConnection, ex: BatchExecutor, hs: Hostile[], asBlock: boolean): Promise<Run> {
  const messages: RawMessage[] = hs.map((h, i) => ({ payload: h.payload, coords: { i } }));
  const block = asBlock ? blockOfBuffers(hs.map((h) => h.bytes)) : undefined;
  const pathTaken = block ? 'block' : 'strings';
  let failures: MessageFailure[];
  try {
    const out = block ? await ex.execute(await ex.prepare(messages, 0, block)) : await ex.process(messages);
    failures = out.failures;
  } catch (e) {
    return { ok: false, threw: e instanceof Error ? (e.stack ?? e.message) : String(e), path: pathTaken };
  }
  const outcomes: Outcome[] = hs.map((h) => ({ rows: [], given: block ? h.bytes : Buffer.from(h.payload) }));
  for (const f of failures) {
    if (outcomes[f.index].failure) throw new Error(`message ${f.index} has two failures: ${JSON.stringify([outcomes[f.index].failure, f])}`);
    outcomes[f.index].failure = f;
  }
  const exists = await conn.runAndReadAll(`SELECT count(*) FROM duckdb_tables() WHERE schema_name = 'sluice_model' AND table_name = 'm'`);
  if (Number(exists.getRows()[0][0]) > 0) {
    const r = await conn.runAndReadAll(`SELECT to_json(${ROW})::VARCHAR FROM sluice_model.m ${ROW}`);
    for (const [v] of r.getRows()) {
      const json = String(v);
      const m = TRAILER.exec(json);
      if (!m) throw new Error(`an output row without ${MSG_COL} last: ${preview(json)}`);
      const rest = json.slice(0, m.index) + '}';
      outcomes[Number(m[1])].rows.push(rest);
    }
  }
  return { ok: true, outcomes, structure: ex.structure, path: pathTaken };
}

// ---------------------------------------------------------------------------------------------
// The property's checks. Each throws an Error saying what was wrong, with the message shown.

const UTF8_REASON = /not valid UTF-8/;
const DEPTH_REASON = /limits\.max_depth/;
/** Reasons a message DuckDB reads as an object may still be dead-lettered for. */
const DOCUMENTED_REFUSAL = /differs only in case|has an empty key|is reserved by sluice|limits\.max_(columns|fields|depth|message_bytes)/;

function fail(h: Hostile, what: string, detail: Record<string, unknown> = {}): never {
  const lines = [`${what}`, `  message: ${h}`];
  for (const [k, v] of Object.entries(detail)) lines.push(`  ${k}: ${typeof v === 'string' ? preview(v, 600) : JSON.stringify(v)}`);
  throw new Error(lines.join('\n'));
}

/** One message's outcome against DuckDB's reading of it alone. */
async function checkAlone(h: Hostile, o: Outcome, alone: Alone, pass: string): Promise<void> {
  const shape = await alone.shape();
  const detail = { pass, outcome: o.failure ?? o.rows, duckdb: shape };
  if (o.failure && o.rows.length) fail(h, 'dead-lettered AND given output rows', detail);
  if (o.failure) {
    const f = o.failure;
    if (typeof f.error !== 'string' || f.error.trim() === '') fail(h, 'dead-lettered without a reason', detail);
    if (f.stage !== 'decode' && f.stage !== 'transform') fail(h, `dead-lettered with stage ${String(f.stage)}`, detail);
    if (!isUtf8(o.given)) {
      if (!UTF8_REASON.test(f.error)) fail(h, 'bytes that are not UTF-8 dead-lettered for another reason', detail);
    } else if (shape.kind === 'too-deep') {
      if (!DEPTH_REASON.test(f.error)) fail(h, `nests deeper than ${MAX_DEPTH} but the reason does not name limits.max_depth`, detail);
    } else if (shape.kind === 'object' && !DOCUMENTED_REFUSAL.test(f.error)) {
      const row = await alone.row();
      if (row?.kind === 'row') fail(h, 'DuckDB reads this message as an object, but it was dead-lettered for an undocumented reason', { ...detail, row });
    }
    return;
  }
  if (o.rows.length !== 1) fail(h, `neither dead-lettered nor exactly one output row (${o.rows.length} rows)`, detail);
  if (shape.kind === 'too-deep') fail(h, `nests deeper than limits.max_depth (${MAX_DEPTH}) but was processed`, detail);
  if (shape.kind === 'unreadable') fail(h, 'DuckDB cannot read this message, yet it was processed', detail);
  if (shape.kind === 'not-object') fail(h, 'DuckDB reads this message as no object, yet it was processed', detail);
  const ref = await alone.row();
  if (ref?.kind !== 'row') fail(h, 'DuckDB cannot make a row of this message alone, yet it was processed', { ...detail, row: ref });
  if (o.rows[0] !== ref.json) fail(h, 'the output row differs from DuckDB reading the message alone', { ...detail, row: o.rows[0], expected: ref.json });
}

// ---------------------------------------------------------------------------------------------

let db: DuckDBInstance;
let conn: DuckDBConnection;
let compiled: CompiledModel[];

beforeAll(async () => {
  db = await DuckDBInstance.create(':memory:');
  conn = await db.connect();
  const model = { name: 'm', file: 'models/m.sql', refs: [], rendered: { sql: 'SELECT * FROM incoming' } } as unknown as ModelDef;
  compiled = await compileModels(conn, [model]);
});
afterAll(() => {
  conn?.closeSync();
  db?.closeSync();
});

async function freshExecutor(): Promise<BatchExecutor> {
  const ex = new BatchExecutor(conn, compiled, 'src');
  await ex.init();
  return ex;
}

/**
 * One check at a time on the shared database: a property that fast-check interrupts at its
 * time limit (or a test vitest times out) leaves its run going, which must not write the
 * model's table while the next one reads it.
 */
let queue: Promise<unknown> = Promise.resolve();
function serial<T>(fn: () => Promise<T>): Promise<T> {
  const run = queue.then(fn, fn);
  queue = run.catch(() => undefined);
  return run;
}

/**
 * The whole property for one message: alone in a fresh executor (string payloads for a message
 * that came as a string, a block of bytes for one that came as bytes), then again in the same
 * executor (fast path): same outcome, both as DuckDB reads the message.
 */
function checkMessage(h: Hostile): Promise<void> {
  return serial(async () => {
    const ex = await freshExecutor();
    const asBlock = h.text === undefined;
    const first = await runBatch(conn, ex, [h], asBlock);
    if (!first.ok) fail(h, `process() threw (${first.path} path)`, { error: first.threw });
    const alone = new Alone(first.outcomes[0].given);
    await checkAlone(h, first.outcomes[0], alone, `alone, ${first.path} path`);
    const again = await runBatch(conn, ex, [h], asBlock);
    if (!again.ok) fail(h, `process() threw the second time (${again.path} path, schema established)`, { error: again.threw });
    await checkAlone(h, again.outcomes[0], alone, `again, ${again.path} path, schema established`);
    const was = (o: Outcome) => (o.failure ? 'dead-lettered' : o.rows[0]);
    if (was(first.outcomes[0]) !== was(again.outcomes[0])) {
      fail(h, 'a second pass (schema established: the fast path) changed the outcome', {
        first: first.outcomes[0].failure ?? first.outcomes[0].rows,
        again: again.outcomes[0].failure ?? again.outcomes[0].rows,
      });
    }
  });
}

/** The batch property: isolation, bookkeeping, and every row as DuckDB reads it with the batch's schema. */
function checkBatch(hs: Hostile[]): Promise<void> {
  return serial(async () => {
    const alone: Outcome[] = [];
    for (const h of hs) {
      const r = await runBatch(conn, await freshExecutor(), [h], h.text === undefined);
      if (!r.ok) fail(h, 'process() threw (alone)', { error: r.threw });
      alone.push(r.outcomes[0]);
    }
    const ex = await freshExecutor();
    const show = hs.map((h, i) => `#${i} ${h}`).join('\n    ');
    for (const [pass, asBlock] of [
      ['batch as a block', true],
      ['same batch again as strings, schema established', false],
    ] as const) {
      const run = await runBatch(conn, ex, hs, asBlock);
      if (!run.ok) throw new Error(`process() threw on a batch (${pass}): ${run.threw}\n  batch:\n    ${show}`);
      const schema = run.structure as Structure | undefined;
      for (let i = 0; i < hs.length; i++) {
        const h = hs[i];
        const o = run.outcomes[i];
        const detail = { pass, index: i, outcome: o.failure ?? o.rows, alone: alone[i].failure ?? alone[i].rows, schema };
        if (o.failure && o.rows.length) fail(h, 'dead-lettered AND given output rows in a batch', detail);
        if (!o.failure && o.rows.length !== 1) fail(h, `in a batch: neither dead-lettered nor exactly one row (${o.rows.length})`, detail);
        if (o.failure) {
          if (typeof o.failure.error !== 'string' || !o.failure.error.trim()) fail(h, 'dead-lettered in a batch without a reason', detail);
          if (!alone[i].failure && !/type conflict|differs only in case|has an empty key|is reserved by sluice|limits\.max_/.test(o.failure.error)) {
            fail(h, 'accepted alone, but refused in a batch for a reason other than a conflict with the other messages or a limit', detail);
          }
          continue;
        }
        // Bytes refused alone are refused in a batch too (the bytes may differ: a string payload replaces invalid UTF-8).
        if (alone[i].failure && Buffer.compare(alone[i].given, o.given) === 0) fail(h, 'refused alone, but processed in a batch', detail);
        if (depthOf(o.given) > MAX_DEPTH) fail(h, 'nests deeper than limits.max_depth, yet processed in a batch', detail);
        const ref = await duckRow(conn, o.given, schema!);
        if (ref.kind !== 'row') fail(h, "processed in a batch, but DuckDB cannot read it with the batch's schema", { ...detail, duckdb: ref });
        if (o.rows[0] !== ref.json) fail(h, "the row in a batch differs from DuckDB reading the message with the batch's schema", { ...detail, row: o.rows[0], expected: ref.json });
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Generators.

const KEYS = [
  'a',
  'A',
  'b',
  'id',
  'Id',
  '',
  ' ',
  'a.b',
  '"',
  '\\',
  'é',
  'e\u0301',
  '__proto__',
  'constructor',
  '__sluice_msg',
  '__sluice_row',
  '__SLUICE_MESSAGE',
  '_topic',
  '_key',
  'rowid',
  '\u0000',
  '\ud800',
  '𝄞',
];
const keyArb = fc.oneof(
  { weight: 4, arbitrary: fc.string({ maxLength: 6 }) },
  { weight: 1, arbitrary: fc.string({ unit: 'binary', maxLength: 4 }) },
  { weight: 2, arbitrary: fc.constantFrom(...KEYS) },
);
const valueArb = fc.jsonValue({ maxDepth: 3 });
/** A JSON object as JSON.stringify writes it (keys may repeat case-insensitively, hold lone surrogates, ...). */
const objectArb = fc.dictionary(keyArb, valueArb, { maxKeys: 6 }).map((o) => JSON.stringify(o));
/** Valid JSON texts, objects mostly, laid out in various ways. */
const jsonTextArb = fc
  .tuple(
    fc.oneof({ weight: 8, arbitrary: objectArb }, { weight: 1, arbitrary: fc.jsonValue({ maxDepth: 2 }).map((v) => JSON.stringify(v) ?? 'null') }),
    fc.constantFrom('compact', 'indented', 'crlf', 'padded'),
  )
  .map(([text, layout]) => {
    if (layout === 'compact') return text;
    const indented = JSON.stringify(JSON.parse(text), null, 2) ?? text;
    if (layout === 'indented') return indented;
    if (layout === 'crlf') return indented.replace(/\n/g, '\r\n') + '\r\n';
    return ` \t${text}\r\n \n`;
  });

const jsonMessages = jsonTextArb.map((t) => Hostile.text('JSON', t));

/** Bytes hostile enough to insert: JSON's punctuation, escapes, separators, invalid UTF-8. */
const FRAGMENTS: (string | number[])[] = [
  '{',
  '}',
  '[',
  ']',
  '"',
  ':',
  ',',
  '\\',
  '\\u',
  '\\ud800',
  '\\u0000',
  '\\"',
  'null',
  'tru',
  '1e400',
  '-',
  '.',
  'NaN',
  '\n',
  '\r\n',
  '\r',
  '\t',
  '\ufeff',
  '\u2028',
  ' ',
  [0],
  [0x1e],
  [0xff],
  [0xc3],
  [0xed, 0xa0, 0x80],
  [0xc0, 0x80],
  [0xf4, 0x90, 0x80, 0x80],
  [0x80],
];
const fragmentArb = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom(...FRAGMENTS).map((f) => (typeof f === 'string' ? Buffer.from(f) : Buffer.from(f))) },
  { weight: 1, arbitrary: fc.uint8Array({ minLength: 1, maxLength: 4 }).map((u) => Buffer.from(u)) },
);
const mutationArb = fc.oneof(
  fc.record({ op: fc.constant('flip' as const), at: fc.nat(), byte: fc.integer({ min: 0, max: 255 }) }),
  fc.record({ op: fc.constant('delete' as const), at: fc.nat(), len: fc.integer({ min: 1, max: 8 }) }),
  fc.record({ op: fc.constant('insert' as const), at: fc.nat(), bytes: fragmentArb }),
  fc.record({ op: fc.constant('truncate' as const), at: fc.nat() }),
  fc.record({ op: fc.constant('duplicate' as const), at: fc.nat(), len: fc.integer({ min: 1, max: 16 }) }),
);
type Mutation = typeof mutationArb extends fc.Arbitrary<infer T> ? T : never;
function mutate(b: Buffer, m: Mutation): Buffer {
  const at = b.length ? m.at % (b.length + 1) : 0;
  switch (m.op) {
    case 'flip':
      if (!b.length) return Buffer.from([m.byte]);
      return Buffer.concat([b.subarray(0, at % b.length), Buffer.from([m.byte]), b.subarray((at % b.length) + 1)]);
    case 'delete':
      return Buffer.concat([b.subarray(0, at), b.subarray(at + m.len)]);
    case 'insert':
      return Buffer.concat([b.subarray(0, at), m.bytes, b.subarray(at)]);
    case 'truncate':
      return b.subarray(0, at);
    case 'duplicate':
      return Buffer.concat([b.subarray(0, at + m.len), b.subarray(at)]);
  }
}
const mutatedMessages = fc.tuple(objectArb, fc.array(mutationArb, { minLength: 1, maxLength: 4 }), fc.boolean()).map(([text, ms, asText]) => {
  const bytes = ms.reduce(mutate, Buffer.from(text));
  const label = `mutated JSON (${ms.map((m) => m.op).join(', ')})`;
  return asText && isUtf8(bytes) ? Hostile.text(label, bytes.toString('utf8')) : new Hostile(label, bytes);
});

/** Unicode hostility: escaped and raw lone surrogates, NULs, BOMs, CR/LF, separators, invalid bytes. */
const TEXT_FRAGMENTS = [
  '\\ud800',
  '\\udfff',
  '\\udc00\\ud800',
  '\\ud83d\\ude00',
  '\\ud83d',
  'x\\ud800y',
  '\ud800',
  '\udc00',
  '\ud83d\ude00',
  '\\u0000',
  '\u0000',
  '\ufeff',
  '\r\n',
  '\r',
  '\u2028\u2029',
  '\u001e',
  '\u007f',
  '\uffff',
  '\ufffd',
  'é',
  'e\u0301',
  '\\/',
  '\\b\\f\\n\\r\\t',
];
const BYTE_FRAGMENTS = [
  [0xff],
  [0xfe, 0xff],
  [0xc3, 0x28],
  [0xe2, 0x82],
  [0xc0, 0x80],
  [0xed, 0xa0, 0x80],
  [0xed, 0xbf, 0xbf],
  [0xf5, 0x80, 0x80, 0x80],
  [0xf0, 0x9f, 0x98],
  [0x80, 0x80],
  [0xef, 0xbb, 0xbf],
  [0x00],
];
const unicodeMessages = fc
  .tuple(
    fc.array(fc.oneof(fc.constantFrom(...TEXT_FRAGMENTS), fc.string({ unit: 'binary', maxLength: 3 })), { minLength: 1, maxLength: 3 }),
    fc.option(fc.constantFrom(...BYTE_FRAGMENTS), { freq: 3 }),
    fc.constantFrom('value', 'key', 'before', 'after', 'between', 'array'),
  )
  .map(([frags, bytes, where]) => {
    const f = frags.join('');
    const wrap = (x: string) => {
      switch (where) {
        case 'value':
          return `{"k":"${x}","n":1}`;
        case 'key':
          return `{"${x}":1}`;
        case 'before':
          return `${x}{"a":1}`;
        case 'after':
          return `{"a":1}${x}`;
        case 'between':
          return `{"a":${x}1,${x}"b":"c"}`;
        default:
          return `{"a":["${x}","${x}"]}`;
      }
    };
    if (!bytes) return Hostile.text(`unicode in ${where}`, wrap(f));
    const [pre, post] = wrap('\u0001').split('\u0001');
    return new Hostile(`invalid UTF-8 in ${where}`, Buffer.concat([Buffer.from(pre), Buffer.from(f), Buffer.from(bytes), Buffer.from(post)]));
  });

/** Numbers DuckDB types by their text: huge, tiny, negative zero, NaN, and invalid ones. */
const NUMBERS = [
  '1e400',
  '-1e400',
  '1e-400',
  '-0',
  '-0.0',
  '0e0',
  '1E+2',
  '99999999999999999999999',
  '18446744073709551615',
  '18446744073709551616',
  '9223372036854775807',
  '9223372036854775808',
  '-9223372036854775808',
  '-9223372036854775809',
  '1.7976931348623157e308',
  '2e308',
  '4.9e-324',
  '5e-325',
  'NaN',
  'Infinity',
  '-Infinity',
  'inf',
  '01',
  '+1',
  '.5',
  '5.',
  '0x10',
  '1e',
  '--1',
  '1.5e+',
];
const digits = (min: number, max: number) => fc.string({ unit: fc.constantFrom(...'0123456789'), minLength: min, maxLength: max });
const numberTextArb = fc.oneof(
  fc.constantFrom(...NUMBERS),
  fc
    .tuple(fc.constantFrom('', '-'), digits(1, 400), fc.option(digits(1, 30)), fc.option(fc.tuple(fc.constantFrom('e', 'E'), fc.constantFrom('', '+', '-'), digits(1, 4))))
    .map(([s, i, f, e]) => `${s}${i.replace(/^0+(?=\d)/, '')}${f ? `.${f}` : ''}${e ? e.join('') : ''}`),
  fc.double().map((d) => String(d)),
  fc.bigInt({ min: -(2n ** 130n), max: 2n ** 130n }).map(String),
);
const numberMessages = fc.tuple(fc.array(numberTextArb, { minLength: 1, maxLength: 4 }), fc.constantFrom('fields', 'list', 'nested')).map(([ns, shape]) => {
  const text = shape === 'fields' ? `{${ns.map((n, i) => `"n${i}":${n}`).join(',')}}` : shape === 'list' ? `{"n":[${ns.join(',')}]}` : `{"o":{"n":${ns[0]}},"l":[{"n":${ns[ns.length - 1]}}]}`;
  return Hostile.text(`numbers in ${shape}`, text);
});

/** Objects whose keys repeat: exactly, by case, by escape, by Unicode normalisation. */
const DUP_KEYS = ['a', 'a', 'A', '\\u0061', 'b', 'ä', 'a\\u0308', '', '__sluice_msg'];
const duplicateMessages = fc
  .tuple(
    fc.array(
      fc.tuple(
        fc.constantFrom(...DUP_KEYS),
        fc.oneof(
          valueArb.map((v) => JSON.stringify(v)),
          fc.constantFrom('1', '"x"', 'null', '{"c":1}', '[1]'),
        ),
      ),
      { minLength: 2, maxLength: 6 },
    ),
    fc.boolean(),
  )
  .map(([pairs, nested]) => {
    const obj = `{${pairs.map(([k, v]) => `"${k}":${v}`).join(',')}}`;
    return Hostile.text(`duplicate keys${nested ? ', nested' : ''}`, nested ? `{"outer":${obj},"x":[${obj}]}` : obj);
  });

/** Nesting from 1 to 3,000 levels, around the limit most often; closed or not. */
const deepMessages = fc
  .record({
    depth: fc.oneof(
      { weight: 3, arbitrary: fc.integer({ min: 1, max: 60 }) },
      { weight: 3, arbitrary: fc.integer({ min: 120, max: 136 }) },
      { weight: 2, arbitrary: fc.integer({ min: 1, max: 3000 }) },
    ),
    shape: fc.constantFrom('objects', 'lists', 'mixed'),
    leaf: fc.constantFrom('1', '"x"', 'null', '{}', '[]', '{"z":[1,2]}'),
    closed: fc.oneof({ weight: 5, arbitrary: fc.constant(true) }, { weight: 1, arbitrary: fc.constant(false) }),
  })
  .map(({ depth, shape, leaf, closed }) => {
    // The top-level object is level 1; the leaf's own brackets come on top.
    const n = depth - 1;
    const open = shape === 'objects' ? '{"a":' : shape === 'lists' ? '[' : '[{"a":';
    const close = shape === 'objects' ? '}' : shape === 'lists' ? ']' : '}]';
    const levels = shape === 'mixed' ? Math.floor(n / 2) : n;
    const text = `{"d":${open.repeat(levels)}${leaf}${closed ? close.repeat(levels) : ''}}`;
    return Hostile.text(`${depth} levels of ${shape}${closed ? '' : ', never closed'} (depth ${depthOf(Buffer.from(text))})`, text);
  });

/** Up to 5,000 keys: at the top (columns), one level down (a map), in a list of objects. */
const wideMessages = fc
  .record({
    n: fc.oneof(
      { weight: 3, arbitrary: fc.integer({ min: 0, max: 40 }) },
      { weight: 2, arbitrary: fc.integer({ min: 195, max: 205 }) },
      { weight: 1, arbitrary: fc.integer({ min: 990, max: 1010 }) },
      { weight: 1, arbitrary: fc.integer({ min: 0, max: 5000 }) },
    ),
    at: fc.constantFrom('top', 'nested', 'list'),
    value: fc.constantFrom('int', 'mixed', 'object'),
    prefix: fc.constantFrom('k', 'K', 'key with spaces ', 'é'),
  })
  .map(({ n, at, value, prefix }) => {
    const v = (i: number) => (value === 'int' ? String(i) : value === 'object' ? `{"x":${i}}` : [String(i), `"s${i}"`, 'null', 'true', '[1]'][i % 5]);
    const obj = `{${Array.from({ length: n }, (_, i) => `"${prefix}${i}":${v(i)}`).join(',')}}`;
    const text = at === 'top' ? obj : at === 'nested' ? `{"m":${obj}}` : `{"l":[${obj},${obj}]}`;
    return Hostile.text(`${n} keys (${at}, ${value} values)`, text);
  });

/** Empty and giant (up to 1 MB) strings, as values and as keys. */
const stringMessages = fc
  .record({
    size: fc.oneof({ weight: 2, arbitrary: fc.constant(0) }, { weight: 3, arbitrary: fc.integer({ min: 1, max: 100 }) }, { weight: 1, arbitrary: fc.constantFrom(65_535, 65_536, 2 ** 20) }),
    fill: fc.constantFrom('x', 'é', '𝄞', '\\n', '\\"', '\\\\', '\\u00e9', '\\ud83d\\ude00', ' '),
    as: fc.constantFrom('value', 'key', 'both', 'list'),
  })
  .map(({ size, fill, as }) => {
    const s = fill.repeat(Math.max(0, Math.ceil(size / Buffer.byteLength(fill))));
    const text = as === 'value' ? `{"s":"${s}"}` : as === 'key' ? `{"${s}":1}` : as === 'both' ? `{"${s}":"${s}","t":""}` : `{"l":["${s}","","${s}"]}`;
    return Hostile.text(`${size > 60_000 ? 'giant' : size === 0 ? 'empty' : 'short'} string of ${JSON.stringify(fill)} as ${as}`, text);
  });

const cheapMessages = fc.oneof(jsonMessages, mutatedMessages, unicodeMessages, numberMessages, duplicateMessages);

// ---------------------------------------------------------------------------------------------

/** The corpus: every committed file (an .ndjson line by line), and the big ones built in memory. */
function corpus(): Hostile[] {
  const out: Hostile[] = [];
  const files = fs
    .readdirSync(CORPUS_DIR)
    .filter((f) => /\.(json|ndjson|bin)$/.test(f))
    .sort();
  for (const f of files) {
    const bytes = fs.readFileSync(path.join(CORPUS_DIR, f));
    if (f.endsWith('.ndjson')) {
      let start = 0;
      let line = 1;
      for (let i = 0; i <= bytes.length; i++) {
        if (i === bytes.length || bytes[i] === 0x0a) {
          out.push(new Hostile(`${f}:${line++}`, bytes.subarray(start, i)));
          start = i + 1;
        }
      }
    } else out.push(new Hostile(f, bytes));
  }
  for (const [name, bytes] of Object.entries(bigCorpus())) out.push(new Hostile(`${name} (built in memory)`, bytes));
  return out;
}

describe('decode fuzzing: the seed corpus (test/fixtures/hostile)', () => {
  it('the committed files are what make-corpus.mjs writes', () => {
    for (const [name, bytes] of Object.entries(smallCorpus())) {
      const file = path.join(CORPUS_DIR, name);
      expect(fs.existsSync(file), `${name} is missing: run node test/fixtures/hostile/make-corpus.mjs`).toBe(true);
      expect(Buffer.compare(fs.readFileSync(file), bytes), `${name} differs from make-corpus.mjs`).toBe(0);
      expect(bytes.length).toBeLessThan(100_000);
    }
  });

  const cases = corpus();
  // Each file (each line) alone, given as bytes and as a string: its own test, so that one
  // failure does not hide the others.
  it.each(cases.map((h) => [h.label, h] as const))('%s', async (_label, h) => {
    await checkMessage(h);
    if (isUtf8(h.bytes) && h.bytes.length < 10_000) await checkMessage(Hostile.text(`${h.label} (as a string)`, h.bytes.toString('utf8')));
  });

  it('the small corpus together, as one batch', async () => {
    await checkBatch(cases.filter((h) => h.bytes.length < 20_000 && !h.label.includes('memory')));
  });
});

describe('decode fuzzing: generated messages', () => {
  const props: [string, fc.Arbitrary<Hostile>, number, number][] = [
    ['arbitrary JSON values', jsonMessages, 60, 0.12],
    ['mutated JSON (byte flips, truncations, insertions)', mutatedMessages, 80, 0.16],
    ['lone surrogates, NULs, BOMs, CR/LF and invalid UTF-8', unicodeMessages, 60, 0.12],
    ['huge, tiny and invalid numbers', numberMessages, 50, 0.1],
    ['duplicate keys', duplicateMessages, 40, 0.08],
    ['deep nesting (1 to 3,000 levels)', deepMessages, 30, 0.1],
    ['wide objects (up to 5,000 keys)', wideMessages, 20, 0.08],
    ['empty and giant strings', stringMessages, 20, 0.08],
  ];
  for (const [name, arb, runs, share] of props) {
    const b: Budget = budget(runs, share, PROPERTY_SECONDS);
    it(name, { timeout: b.timeout }, async () => {
      await fc.assert(fc.asyncProperty(arb, timed(b, checkMessage)), b.params as fc.Parameters<[Hostile]>);
    });
  }

  const b = budget(15, 0.16, PROPERTY_SECONDS);
  it('whole batches (bisection and isolation)', { timeout: b.timeout }, async () => {
    await fc.assert(fc.asyncProperty(fc.array(cheapMessages, { minLength: 2, maxLength: 25 }), timed(b, checkBatch)), b.params as fc.Parameters<[Hostile[]]>);
  });
});

describe('decode fuzzing: messages that could crash the process', () => {
  // A message deep enough overflows DuckDB's native stack in json_structure() (a 20,000-deep
  // object does): a crash, not an error. They run in a child process, so that a crash fails
  // this test, naming the message, instead of killing the test worker.
  it('deep and oversized messages are dead-lettered, and the process survives', () => {
    const dist = path.join(ROOT, 'dist', 'engine', 'executor.js');
    expect(fs.existsSync(dist), 'run `npm run build` first (npm test does)').toBe(true);
    const script = `
      import { DuckDBInstance } from '@duckdb/node-api';
      import { BatchExecutor, compileModels } from ${JSON.stringify(pathToImport(dist))};
      import { blockOfBuffers } from ${JSON.stringify(pathToImport(path.join(ROOT, 'dist', 'connectors', 'payload-block.js')))};
      import { crashCorpus } from ${JSON.stringify(pathToImport(path.join(CORPUS_DIR, 'make-corpus.mjs')))};
      const db = await DuckDBInstance.create(':memory:');
      const conn = await db.connect();
      const models = await compileModels(conn, [{ name: 'm', file: 'models/m.sql', refs: [], rendered: { sql: 'SELECT * FROM incoming' } }]);
      const out = {};
      for (const [name, bytes] of Object.entries(crashCorpus())) {
        out[name] = [];
        for (const asBlock of [true, false]) {
          process.stderr.write('running ' + name + (asBlock ? ' as a block' : ' as a string') + '\\n');
          const ex = new BatchExecutor(conn, models, 'src');
          await ex.init();
          const msgs = [{ payload: bytes.toString('utf8'), coords: {} }];
          const r = asBlock ? await ex.execute(await ex.prepare(msgs, 0, blockOfBuffers([bytes]))) : await ex.process(msgs);
          out[name].push(r.failures);
        }
      }
      process.stdout.write(JSON.stringify(out));
    `;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { cwd: ROOT, encoding: 'utf8', timeout: 120_000, maxBuffer: 64 * 2 ** 20 });
    const last = r.stderr
      .trim()
      .split('\n')
      .filter((l) => l.startsWith('running '))
      .pop();
    const why = `exit ${r.status}, signal ${r.signal}${r.status !== 0 && last ? `, while ${last}` : ''}\nstderr: ${r.stderr.slice(-2000)}`;
    expect(r.signal, `the process was killed: ${why}`).toBeNull();
    expect(r.status, why).toBe(0);
    const failures = JSON.parse(r.stdout) as Record<string, MessageFailure[][]>;
    expect(Object.keys(failures).sort()).toEqual(Object.keys(crashCorpus()).sort());
    for (const [name, runs] of Object.entries(failures)) {
      for (const f of runs) {
        expect(f, name).toHaveLength(1);
        expect(f[0].error, name).toMatch(name.startsWith('deep') ? DEPTH_REASON : /limits\.max_message_bytes/);
      }
    }
  });
});

function pathToImport(p: string): string {
  return new URL(`file://${p}`).href;
}
