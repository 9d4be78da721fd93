import type { PayloadBlock } from '../connectors/types.js';
import type { Structure } from './structure.js';
import { DEFAULT_MESSAGE_LIMITS } from './limits.js';
import { Slices } from './slices.js';

/**
 * The decode fast path: does merging this message's json_structure() into the schema change
 * nothing? A compiled scanner answers that from the raw JSON text, without building the
 * message as JavaScript objects (a full JSON.parse costs several times more), and from its
 * bytes, so a batch needs no JavaScript string per message: every key known
 * and spelled exactly, no key twice, every value of the schema's type or null, a list's
 * elements conforming to its element structure (the grammar around them checked, the
 * contents of strings not: see string()). Numbers are typed from their text as DuckDB
 * types them: an integer without sign is UBIGINT, with a minus BIGINT, with a fraction or an
 * exponent DOUBLE. A schema node of type JSON takes any value, skipped without recursion (see
 * skipAny()). A message conforms only within limits.max_depth and limits.max_fields (see
 * overLimits in limits.ts, which counts alike), so whatever the fast path accepts is within them.
 *
 * The answer "no" is always safe: such a message is decoded exactly by DuckDB (see
 * BatchExecutor.prepare), which also has the last word on what is valid JSON. So anything
 * unusual says "no": escapes in keys, an empty object (DuckDB's structure is JSON), integers
 * too long to be sure of their type, a message over the limits.
 */
export type Conformance = (data: Uint8Array, start: number, end: number) => boolean;

const NUL = 1;
const BOOL = 2;
const STR = 4;
const UINT = 8;
const INT = 16;
const DBL = 32;

type Node =
  | { kind: 'scalar'; allowed: number }
  | { kind: 'object'; names: Uint8Array[]; keys: Map<string, number>; children: Node[]; seen: Int32Array }
  | { kind: 'list'; element: Node }
  | { kind: 'any' };

const ALLOWED: Record<string, number> = {
  VARCHAR: NUL | STR,
  BOOLEAN: NUL | BOOL,
  UBIGINT: NUL | UINT,
  BIGINT: NUL | UINT | INT,
  HUGEINT: NUL | UINT | INT,
  DOUBLE: NUL | UINT | INT | DBL,
};

/** Recursive to the depth of the schema, which only messages within limits.max_depth built. */
function compile(s: Structure): Node {
  if (s === 'JSON') return { kind: 'any' };
  if (Array.isArray(s)) return { kind: 'list', element: compile(s[0]) };
  if (typeof s === 'object') {
    const entries = Object.entries(s);
    return {
      kind: 'object',
      names: entries.map(([k]) => new TextEncoder().encode(k)),
      keys: new Map(entries.map(([k], i) => [k, i])),
      children: entries.map(([, v]) => compile(v)),
      seen: new Int32Array(entries.length),
    };
  }
  // NULL (only nulls seen so far) and anything else: only null changes nothing.
  return { kind: 'scalar', allowed: ALLOWED[s] ?? NUL };
}

// The scanner's state: one message at a time, on one thread. `lim` is the end of the message:
// every loop that can run stops there, and a message is accepted only when the scan ends
// exactly at `lim`, so bytes of the next message are never taken for this one's.
let d: Uint8Array = new Uint8Array(0);
let pos = 0;
let lim = 0;
let generation = 0;
/** Containers open around `pos` and keys seen so far in this message, and their limits. */
let depth = 0;
/**
 * The top-level key the last refused message stopped at because the schema lacks it (no other
 * reason was found before it), else undefined: a message refused for nothing else adds a column.
 */
let unknownTopKey: string | undefined;
let fields = 0;
let maxDepth = 0;
let maxFields = 0;
const utf8 = new TextDecoder();

function ws(): void {
  let p = pos;
  while (p < lim) {
    const c = d[p];
    if (c === 32 || c === 10 || c === 13 || c === 9) p++;
    else break;
  }
  pos = p;
}

const NULL_BYTES = [110, 117, 108, 108];
const TRUE_BYTES = [116, 114, 117, 101];
const FALSE_BYTES = [102, 97, 108, 115, 101];

function literal(word: number[]): boolean {
  if (pos + word.length > lim) return false;
  for (let i = 0; i < word.length; i++) if (d[pos + i] !== word[i]) return false;
  pos += word.length;
  return true;
}

/**
 * Skips a string value starting at `pos` (a quote). Its contents are not validated here (raw
 * control characters, bad escapes, bad UTF-8): DuckDB rejects such a message when it loads or
 * converts the batch, and BatchExecutor then dead-letters exactly it.
 */
function string(): boolean {
  for (let p = pos + 1; p < lim; p++) {
    const c = d[p];
    if (c === 34) {
      pos = p + 1;
      return true;
    }
    if (c === 92) p++;
  }
  return false;
}

function digits(): number {
  const start = pos;
  let p = pos;
  while (p < lim) {
    const c = d[p];
    if (c >= 48 && c <= 57) p++;
    else break;
  }
  pos = p;
  return p - start;
}

/** A number at `pos`: its DuckDB type bit, or 0 when invalid or not certain. */
function number(): number {
  let neg = false;
  if (d[pos] === 45) {
    neg = true;
    pos++;
  }
  const first = pos < lim ? d[pos] : 0;
  const intDigits = digits();
  if (intDigits === 0 || (first === 48 && intDigits > 1)) return 0;
  let type = neg ? INT : UINT;
  if (pos < lim && d[pos] === 46) {
    pos++;
    if (digits() === 0) return 0;
    type = DBL;
  }
  const e = pos < lim ? d[pos] : 0;
  if (e === 101 || e === 69) {
    pos++;
    const sign = pos < lim ? d[pos] : 0;
    if (sign === 43 || sign === 45) pos++;
    const n = digits();
    if (n === 0 || n > 2) return 0;
    type = DBL;
  }
  // Integers near the limits of 64 bits: let DuckDB decide (UBIGINT, BIGINT or DOUBLE).
  if (type !== DBL && intDigits > 18) return 0;
  return type;
}

function value(n: Node): boolean {
  ws();
  if (pos >= lim) return false;
  const c = d[pos];
  if (c === 110) return literal(NULL_BYTES);
  if (n.kind === 'object') return c === 123 && object(n);
  if (n.kind === 'list') return c === 91 && list(n);
  if (n.kind === 'any') return skipAny(c);
  const allowed = n.allowed;
  if (c === 34) return (allowed & STR) !== 0 && string();
  if (c === 116) return (allowed & BOOL) !== 0 && literal(TRUE_BYTES);
  if (c === 102) return (allowed & BOOL) !== 0 && literal(FALSE_BYTES);
  if (c === 45 || (c >= 48 && c <= 57)) return (allowed & number()) !== 0;
  return false;
}

/** Does the key at `start` (after its opening quote) spell `name` and end there? */
function keyIs(name: Uint8Array, start: number): boolean {
  const end = start + name.length;
  if (end >= lim || d[end] !== 34) return false;
  for (let i = 0; i < name.length; i++) if (d[start + i] !== name[i]) return false;
  return true;
}

/**
 * Skips any JSON value at `pos` (its first byte `c`), for a schema node of type JSON: a literal
 * or a number as value() reads them, a string, or an object or list as a run of bytes up to
 * its closing bracket, counting brackets and colons outside strings (not recursing, whatever
 * the depth) and failing past maxDepth or maxFields. The grammar inside is not checked (DuckDB
 * has the last word, see string()); the scan stops right after the value and never past `lim`.
 */
function skipAny(c: number): boolean {
  if (c === 34) return string();
  if (c === 116) return literal(TRUE_BYTES);
  if (c === 102) return literal(FALSE_BYTES);
  if (c === 45 || (c >= 48 && c <= 57)) return number() !== 0;
  if (c !== 123 && c !== 91) return false;
  let level = 0;
  for (let p = pos; p < lim; p++) {
    const x = d[p];
    if (x === 34) {
      for (p++; p < lim; p++) {
        const y = d[p];
        if (y === 34) break;
        if (y === 92) p++;
      }
      if (p >= lim) return false;
    } else if (x === 123 || x === 91) {
      if (depth + ++level > maxDepth) return false;
    } else if (x === 125 || x === 93) {
      if (--level === 0) {
        pos = p + 1;
        return true;
      }
    } else if (x === 58) {
      if (++fields > maxFields) return false;
    }
  }
  return false;
}

function object(n: Extract<Node, { kind: 'object' }>): boolean {
  if (++depth > maxDepth) return false;
  const gen = (generation = (generation + 1) | 0);
  let next = 0;
  pos++;
  ws();
  if (pos >= lim || d[pos] !== 34) return false; // {} or not a key
  for (;;) {
    if (pos >= lim || d[pos] !== 34) return false;
    const start = pos + 1;
    // Producers mostly write keys in the same order: try the key after the last one first,
    // which needs neither a string nor a hash.
    const guess = n.names[next];
    let idx: number | undefined;
    if (guess !== undefined && keyIs(guess, start)) {
      idx = next;
      pos = start + guess.length + 1;
    } else {
      let end = start;
      while (end < lim && d[end] !== 34) {
        if (d[end] === 92) return false; // an escape in a key: let DuckDB decide
        end++;
      }
      if (end >= lim) return false;
      idx = n.keys.get(utf8.decode(d.subarray(start, end)));
      pos = end + 1;
    }
    if (idx === undefined) {
      if (depth === 1) unknownTopKey = utf8.decode(d.subarray(start, pos - 1));
      return false;
    }
    if (n.seen[idx] === gen || ++fields > maxFields) return false;
    next = idx + 1;
    n.seen[idx] = gen;
    ws();
    if (pos >= lim || d[pos] !== 58) return false;
    pos++;
    if (!value(n.children[idx])) return false;
    ws();
    if (pos >= lim) return false;
    const c = d[pos++];
    if (c === 125) {
      depth--;
      return true;
    }
    if (c !== 44) return false;
    ws();
  }
}

function list(n: Extract<Node, { kind: 'list' }>): boolean {
  if (++depth > maxDepth) return false;
  pos++;
  ws();
  if (pos < lim && d[pos] === 93) {
    pos++;
    depth--;
    return true;
  }
  for (;;) {
    if (!value(n.element)) return false;
    ws();
    if (pos >= lim) return false;
    const c = d[pos++];
    if (c === 93) {
      depth--;
      return true;
    }
    if (c !== 44) return false;
  }
}

/**
 * The conformance test of a message (a JSON object) against the structure of `incoming`: also
 * "no" for a message nesting deeper than `limits.maxDepth` or with more than `limits.maxFields`
 * keys (see overLimits).
 */
export function conformance(s: Structure | undefined, limits: { maxDepth: number; maxFields: number } = DEFAULT_MESSAGE_LIMITS): Conformance {
  if (s === undefined || typeof s !== 'object' || Array.isArray(s)) return () => false;
  const root = compile(s) as Extract<Node, { kind: 'object' }>;
  const { maxDepth: depthLimit, maxFields: fieldLimit } = limits;
  return (data, start, end) => {
    d = data;
    pos = start;
    lim = end;
    depth = 0;
    fields = 0;
    unknownTopKey = undefined;
    maxDepth = depthLimit;
    maxFields = fieldLimit;
    ws();
    if (pos >= lim || d[pos] !== 123 || !object(root)) return false;
    ws();
    return pos === lim;
  };
}

/** Messages scanned between two looks at the clock (see Slices). */
const BETWEEN_TICKS = 64;

/**
 * Indexes of the block's messages that do not conform (or are not valid JSON). Gives the event
 * loop a turn every few milliseconds (see Slices): the other batch's DuckDB queries and the
 * other pipelines of the process go on meanwhile, however large the messages. With
 * `newTopKeys`, records for each refused message the top-level key the schema lacks that the
 * scan stopped at, when that was the first thing found wrong (see unknownTopKey).
 */
export async function nonConforming(block: PayloadBlock, check: Conformance, among?: number[], newTopKeys?: Map<number, string>): Promise<number[]> {
  const out: number[] = [];
  const { data, starts, ends } = block;
  const ids = among ?? starts.length;
  const n = typeof ids === 'number' ? ids : ids.length;
  const slices = new Slices();
  for (let from = 0; from < n; from += BETWEEN_TICKS) {
    await slices.tick();
    const to = Math.min(n, from + BETWEEN_TICKS);
    for (let k = from; k < to; k++) {
      const i = typeof ids === 'number' ? k : ids[k];
      if (check(data, starts[i], ends[i])) continue;
      out.push(i);
      if (newTopKeys && unknownTopKey !== undefined) newTopKeys.set(i, unknownTopKey);
    }
  }
  return out;
}
