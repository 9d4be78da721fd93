import type { Structure } from './structure.js';

/**
 * The decode fast path: does merging this message's json_structure() into the schema change
 * nothing? A compiled scanner answers that from the raw JSON text, without building the
 * message as JavaScript objects (a full JSON.parse costs several times more): every key known
 * and spelled exactly, no key twice, every value of the schema's type or null, a list's
 * elements conforming to its element structure (the grammar around them checked, the
 * contents of strings not: see string()). Numbers are typed from their text as DuckDB
 * types them: an integer without sign is UBIGINT, with a minus BIGINT, with a fraction or an
 * exponent DOUBLE.
 *
 * The answer "no" is always safe: such a message is decoded exactly by DuckDB (see
 * BatchExecutor.prepare), which also has the last word on what is valid JSON. So anything
 * unusual says "no": escapes in keys, an empty object (DuckDB's structure is JSON), integers
 * too long to be sure of their type, a schema node of type JSON.
 */
export type Conformance = (payload: string) => boolean;

const NUL = 1;
const BOOL = 2;
const STR = 4;
const UINT = 8;
const INT = 16;
const DBL = 32;

type Node =
  | { kind: 'scalar'; allowed: number }
  | { kind: 'object'; names: string[]; keys: Map<string, number>; children: Node[]; seen: Int32Array }
  | { kind: 'list'; element: Node };

const ALLOWED: Record<string, number> = {
  VARCHAR: NUL | STR,
  BOOLEAN: NUL | BOOL,
  UBIGINT: NUL | UINT,
  BIGINT: NUL | UINT | INT,
  HUGEINT: NUL | UINT | INT,
  DOUBLE: NUL | UINT | INT | DBL,
};

function compile(s: Structure): Node {
  if (Array.isArray(s)) return { kind: 'list', element: compile(s[0]) };
  if (typeof s === 'object') {
    const entries = Object.entries(s);
    return {
      kind: 'object',
      names: entries.map(([k]) => k),
      keys: new Map(entries.map(([k], i) => [k, i])),
      children: entries.map(([, v]) => compile(v)),
      seen: new Int32Array(entries.length),
    };
  }
  // NULL (only nulls seen so far), JSON and anything else: only null changes nothing.
  return { kind: 'scalar', allowed: ALLOWED[s] ?? NUL };
}

// The scanner's state: one payload at a time, on one thread.
let src = '';
let pos = 0;
let generation = 0;

function ws(): void {
  const s = src;
  let p = pos;
  for (;;) {
    const c = s.charCodeAt(p);
    if (c === 32 || c === 10 || c === 13 || c === 9) p++;
    else break;
  }
  pos = p;
}

function literal(word: string): boolean {
  if (!src.startsWith(word, pos)) return false;
  pos += word.length;
  return true;
}

/**
 * Skips a string value starting at `pos` (a quote). Its contents are not validated here (raw
 * control characters, bad escapes): DuckDB rejects such a message when it converts the batch,
 * and BatchExecutor.execute() then dead-letters exactly it.
 */
function string(): boolean {
  const s = src;
  const end = s.indexOf('"', pos + 1);
  if (end < 0) return false;
  if (s.charCodeAt(end - 1) !== 92) {
    pos = end + 1;
    return true;
  }
  // A backslash before the quote: walk the escapes to find the real end.
  let p = pos + 1;
  for (;;) {
    const c = s.charCodeAt(p);
    if (c === 34) {
      pos = p + 1;
      return true;
    }
    if (c !== c) return false; // the end of the text
    p += c === 92 ? 2 : 1;
  }
}

function digits(): number {
  const s = src;
  const start = pos;
  let p = pos;
  for (;;) {
    const c = s.charCodeAt(p);
    if (c >= 48 && c <= 57) p++;
    else break;
  }
  pos = p;
  return p - start;
}

/** A number at `pos`: its DuckDB type bit, or 0 when invalid or not certain. */
function number(): number {
  let neg = false;
  if (src.charCodeAt(pos) === 45) {
    neg = true;
    pos++;
  }
  const first = src.charCodeAt(pos);
  const intDigits = digits();
  if (intDigits === 0 || (first === 48 && intDigits > 1)) return 0;
  let type = neg ? INT : UINT;
  if (src.charCodeAt(pos) === 46) {
    pos++;
    if (digits() === 0) return 0;
    type = DBL;
  }
  const e = src.charCodeAt(pos);
  if (e === 101 || e === 69) {
    pos++;
    const sign = src.charCodeAt(pos);
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
  const c = src.charCodeAt(pos);
  if (c === 110) return literal('null');
  if (n.kind === 'object') return c === 123 && object(n);
  if (n.kind === 'list') return c === 91 && list(n);
  const allowed = n.allowed;
  if (c === 34) return (allowed & STR) !== 0 && string();
  if (c === 116) return (allowed & BOOL) !== 0 && literal('true');
  if (c === 102) return (allowed & BOOL) !== 0 && literal('false');
  if (c === 45 || (c >= 48 && c <= 57)) return (allowed & number()) !== 0;
  return false;
}

function object(n: Extract<Node, { kind: 'object' }>): boolean {
  const gen = (generation = (generation + 1) | 0);
  let next = 0;
  pos++;
  ws();
  if (src.charCodeAt(pos) !== 34) return false; // {} or not a key
  for (;;) {
    if (src.charCodeAt(pos) !== 34) return false;
    const start = pos + 1;
    // Producers mostly write keys in the same order: try the key after the last one first,
    // which needs neither a substring nor a hash.
    const guess = n.names[next];
    let idx: number | undefined;
    if (guess !== undefined && src.startsWith(guess, start) && src.charCodeAt(start + guess.length) === 34) {
      idx = next;
      pos = start + guess.length + 1;
    } else {
      const end = src.indexOf('"', start);
      if (end < 0) return false;
      const key = src.slice(start, end);
      if (key.includes('\\')) return false;
      pos = end + 1;
      idx = n.keys.get(key);
    }
    if (idx === undefined || n.seen[idx] === gen) return false;
    next = idx + 1;
    n.seen[idx] = gen;
    ws();
    if (src.charCodeAt(pos) !== 58) return false;
    pos++;
    if (!value(n.children[idx])) return false;
    ws();
    const c = src.charCodeAt(pos);
    pos++;
    if (c === 125) return true;
    if (c !== 44) return false;
    ws();
  }
}

function list(n: Extract<Node, { kind: 'list' }>): boolean {
  pos++;
  ws();
  if (src.charCodeAt(pos) === 93) {
    pos++;
    return true;
  }
  for (;;) {
    if (!value(n.element)) return false;
    ws();
    const c = src.charCodeAt(pos);
    pos++;
    if (c === 93) return true;
    if (c !== 44) return false;
  }
}

/** The conformance test of a message (a JSON object) against the structure of `incoming`. */
export function conformance(s: Structure | undefined): Conformance {
  if (s === undefined || typeof s !== 'object' || Array.isArray(s)) return () => false;
  const root = compile(s) as Extract<Node, { kind: 'object' }>;
  return (payload) => {
    src = payload;
    pos = 0;
    try {
      ws();
      if (src.charCodeAt(pos) !== 123 || !object(root)) return false;
      ws();
      return pos === src.length;
    } finally {
      src = '';
    }
  };
}

/** Indexes of the payloads that do not conform (or are not valid JSON). */
export function nonConforming(payloads: string[], check: Conformance, among?: number[]): number[] {
  const out: number[] = [];
  if (among) {
    for (const i of among) if (!check(payloads[i])) out.push(i);
  } else {
    for (let i = 0; i < payloads.length; i++) if (!check(payloads[i])) out.push(i);
  }
  return out;
}
