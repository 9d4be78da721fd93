/**
 * JSON structures as DuckDB's json_structure() prints them: a type name ("UBIGINT", "VARCHAR",
 * "NULL", ...), a one-element array for lists, or an object for records. The batch schema of
 * `incoming` is the merge of every message's structure with what earlier batches established.
 */
export type Structure = string | Structure[] | { [key: string]: Structure };

const NUMERIC_RANK: Record<string, number> = { UBIGINT: 1, BIGINT: 2, HUGEINT: 2, DOUBLE: 3 };

export interface MergeOptions {
  /**
   * 'add': keys the schema does not know are added to it. 'skip': they are not (the message's
   * values for them are dropped, see `skipped`), while known keys still merge (a number still
   * widens). The caller uses 'skip' only once a schema exists: merged into nothing (`a`
   * undefined at `$`), every key is added whatever this says.
   */
  newFields: 'add' | 'skip';
  /**
   * A nested object (not `$`, whose keys are the columns of `incoming`) that would grow past
   * this many keys becomes JSON, as DuckDB's JSON reader turns such objects into maps (its
   * map_inference_threshold): keys that are data (ids, timestamps) must not become columns.
   */
  mapThreshold: number;
  /**
   * `a` (an object) is the caller's own, seen by nothing else yet: its top level is changed in
   * place rather than copied, which makes merging many messages one after the other cost what
   * they add rather than the size of the schema each. `merged` is then `a` itself, and
   * MergeResult.undo puts `a` back as it was, for a message the caller refuses after all (a
   * conflict puts it back by itself).
   */
  inPlace?: boolean;
}

export const DEFAULT_MERGE: MergeOptions = { newFields: 'add', mapThreshold: 200 };

export interface MergeResult {
  merged: Structure;
  /** Where the two structures disagree in a way no type can hold both (e.g. object vs string). */
  conflict?: string;
  /** Paths of the fields the merge added (`$.a.b`, `$.items[].sku`), at every depth. */
  added: string[];
  /** Paths of new fields not added because MergeOptions.newFields is 'skip'. */
  skipped: string[];
  /**
   * Paths that became JSON: objects grown past MergeOptions.mapThreshold (their fields are no
   * longer fields of the schema) and, with newFields 'skip', a NULL (only nulls so far) that
   * meets a value with fields: it keeps the value as JSON rather than add the fields.
   */
  collapsed: string[];
  /** With MergeOptions.inPlace: reverts the changes the merge made to `a`. */
  undo?: () => void;
}

function kind(s: Structure): 'object' | 'array' | 'scalar' {
  if (Array.isArray(s)) return 'array';
  if (typeof s === 'object') return 'object';
  return 'scalar';
}

function describe(s: Structure): string {
  const k = kind(s);
  if (k === 'object') return 'an object';
  if (k === 'array') return 'a list';
  if (s === 'VARCHAR') return 'a string';
  if (s === 'BOOLEAN') return 'a boolean';
  if (typeof s === 'string' && s in NUMERIC_RANK) return 'a number';
  return String(s).toLowerCase();
}

interface Ctx {
  opts: MergeOptions;
  added: string[];
  skipped: string[];
  collapsed: string[];
  conflict?: string;
  /** The object changed in place (MergeOptions.inPlace), and how to revert each change, in order. */
  inPlace?: Record<string, Structure>;
  undo: Array<() => void>;
}

const NOTHING: Record<string, Structure> = Object.freeze(Object.create(null) as Record<string, Structure>);

/** Sets o[k] as an own property, even for the key "__proto__" (a message may hold it). */
function put(o: Record<string, Structure>, k: string, v: Structure): void {
  if (k === '__proto__') Object.defineProperty(o, k, { value: v, writable: true, enumerable: true, configurable: true });
  else o[k] = v;
}

/**
 * Merges structure `b` (a new message) into `a` (what is known). NULL and empty lists adopt
 * the other side; integers widen to doubles; objects gain keys (see MergeOptions); a JSON node
 * absorbs anything. A conflict leaves `a` as it was (and reports nothing added). When nothing
 * changes, `merged` is `a` itself.
 *
 * Recursive, to the depth of the structures: the caller bounds it, since only messages within
 * limits.max_depth (see overLimits) are merged.
 */
export function mergeStructure(a: Structure | undefined, b: Structure, where = '$', opts: MergeOptions = DEFAULT_MERGE): MergeResult {
  const inPlace = opts.inPlace && a !== undefined && kind(a) === 'object' && !Object.isFrozen(a) ? (a as Record<string, Structure>) : undefined;
  const c: Ctx = { opts, added: [], skipped: [], collapsed: [], inPlace, undo: [] };
  const undo = () => {
    for (let i = c.undo.length - 1; i >= 0; i--) c.undo[i]();
    c.undo.length = 0;
  };
  // Merged into nothing, everything is new: 'skip' is for once a schema exists.
  const skip = opts.newFields === 'skip' && !(where === '$' && (a === undefined || a === 'NULL'));
  const merged = merge(a, b, where, c, skip);
  if (c.conflict !== undefined) {
    undo();
    return { merged: a as Structure, conflict: c.conflict, added: [], skipped: [], collapsed: [] };
  }
  return { merged, added: c.added, skipped: c.skipped, collapsed: c.collapsed, ...(c.undo.length ? { undo } : {}) };
}

/** The merge; on a conflict, sets c.conflict and returns `a`. */
function merge(a: Structure | undefined, b: Structure, where: string, c: Ctx, skip: boolean): Structure {
  if (a === 'JSON') return a;
  if (a === undefined || a === 'NULL') {
    if (skip && countFields(b) > 0) {
      c.collapsed.push(where);
      return 'JSON';
    }
    return adopt(b, where, c);
  }
  if (b === 'NULL') return a;
  const ka = kind(a);
  const kb = kind(b);
  if (ka !== kb) {
    c.conflict = `${where} is ${describe(a)} in earlier messages but ${describe(b)} here`;
    return a;
  }
  if (ka === 'array') {
    const e = merge((a as Structure[])[0], (b as Structure[])[0], `${where}[]`, c, skip);
    return c.conflict !== undefined || e === (a as Structure[])[0] ? a : [e];
  }
  if (ka === 'object') return mergeObject(a as Record<string, Structure>, b as Record<string, Structure>, where, c, skip);
  if (a === b) return a;
  const ra = NUMERIC_RANK[a as string];
  const rb = NUMERIC_RANK[b as string];
  if (ra && rb) return ra >= rb ? a : b;
  c.conflict = `${where} is ${describe(a)} in earlier messages but ${describe(b)} here`;
  return a;
}

/** `b` where nothing (or only nulls) was known: all its fields are added. */
function adopt(b: Structure, where: string, c: Ctx): Structure {
  const k = kind(b);
  if (k === 'scalar') return b;
  if (k === 'array') {
    const e = adopt((b as Structure[])[0], `${where}[]`, c);
    return e === (b as Structure[])[0] ? b : [e];
  }
  return mergeObject(NOTHING, b as Record<string, Structure>, where, c, false);
}

/** Lower-cased key -> key of the schema objects merged into, kept while the object lives. */
const LOWER = new WeakMap<object, Map<string, string>>();

/**
 * `a`'s keys by their lower case. A schema object is never changed once made (a merge copies
 * it), so the map is made once per object and kept: a schema at limits.max_columns meets
 * messages with new keys again and again, and a schema growing a key at a time is looked up
 * without copying it (the keys a merge adds are kept beside it, see mergeObject).
 */
function lowerKeys(a: Record<string, Structure>): Map<string, string> {
  let m = LOWER.get(a);
  if (!m) {
    m = new Map();
    for (const x of Object.keys(a)) m.set(x.toLowerCase(), x);
    LOWER.set(a, m);
  }
  return m;
}

function mergeObject(a: Record<string, Structure>, b: Record<string, Structure>, where: string, c: Ctx, skip: boolean): Structure {
  const bk = Object.keys(b);
  if (!skip && where !== '$') {
    let fresh = 0;
    for (const k of bk) if (!Object.hasOwn(a, k)) fresh++;
    if (fresh > 0 && Object.keys(a).length + fresh > c.opts.mapThreshold) {
      c.collapsed.push(where);
      return 'JSON';
    }
  }
  // Changed in place (see MergeOptions.inPlace), else copied at the first change.
  const own = a === c.inPlace;
  let out: Record<string, Structure> | undefined = own ? a : undefined;
  // Lower-cased key -> key, looked up at the first new key (known keys need no case check):
  // `a`'s own, and those this merge adds (in `a`'s own map when changed in place).
  let lower: Map<string, string> | undefined;
  let addedLower: Map<string, string> | undefined;
  for (const k of bk) {
    const v = b[k];
    if (Object.hasOwn(a, k)) {
      const x = a[k];
      if (x === v || v === 'NULL' || x === 'JSON') continue; // the common case, and cheap
      const m = merge(x, v, `${where}.${k}`, c, skip);
      if (c.conflict !== undefined) return a;
      if (m !== x) {
        put((out ??= { ...a }), k, m);
        if (own) c.undo.push(() => put(a, k, x));
      }
      continue;
    }
    const path = `${where}.${k}`;
    if (!lower) lower = lowerKeys(a);
    const lk = k.toLowerCase();
    const existing = lower.get(lk) ?? addedLower?.get(lk);
    if (existing !== undefined) {
      c.conflict = `${path} differs only in case from ${where}.${existing}`;
      return a;
    }
    if (skip) {
      c.skipped.push(path);
      continue;
    }
    if (k === '') {
      // A struct field needs a name: DuckDB can make no row of such an object.
      c.conflict = `${where} has an empty key (""), which cannot name a column`;
      return a;
    }
    c.added.push(path);
    const value = adopt(v, path, c);
    if (own) {
      lower.set(lk, k);
      put(a, k, value);
      const map = lower;
      c.undo.push(() => {
        delete a[k];
        map.delete(lk);
      });
    } else {
      (addedLower ??= new Map()).set(lk, k);
      put((out ??= { ...a }), k, value);
    }
  }
  return out ?? a;
}

/**
 * Fields of a schema at every depth: an object counts its keys and their fields, a list its
 * element's fields; scalars and JSON count none.
 */
export function countFields(s: Structure | undefined): number {
  if (s === undefined) return 0;
  let n = 0;
  const todo: Structure[] = [s];
  for (let x = todo.pop(); x !== undefined; x = todo.pop()) {
    if (Array.isArray(x)) {
      if (x.length > 0) todo.push(x[0]);
    } else if (typeof x === 'object' && x !== null) {
      const keys = Object.keys(x);
      n += keys.length;
      for (const k of keys) todo.push(x[k]);
    }
  }
  return n;
}

export function isObjectStructure(s: Structure): s is Record<string, Structure> {
  return kind(s) === 'object';
}
