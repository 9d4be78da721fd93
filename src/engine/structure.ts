/**
 * JSON structures as DuckDB's json_structure() prints them: a type name ("UBIGINT", "VARCHAR",
 * "NULL", ...), a one-element array for lists, or an object for records. The batch schema of
 * `incoming` is the merge of every message's structure with what earlier batches established.
 */
export type Structure = string | Structure[] | { [key: string]: Structure };

const NUMERIC_RANK: Record<string, number> = { UBIGINT: 1, BIGINT: 2, HUGEINT: 2, DOUBLE: 3 };

export interface MergeResult {
  merged: Structure;
  /** Where the two structures disagree in a way no type can hold both (e.g. object vs string). */
  conflict?: string;
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

/**
 * Merges structure `b` (a new message) into `a` (what is known). NULL and empty lists adopt
 * the other side; integers widen to doubles; objects gain keys. A conflict leaves `a` as it was.
 */
export function mergeStructure(a: Structure | undefined, b: Structure, where = '$'): MergeResult {
  if (a === undefined || a === 'NULL') return { merged: b };
  if (b === 'NULL') return { merged: a };
  const ka = kind(a);
  const kb = kind(b);
  if (ka !== kb) return { merged: a, conflict: `${where} is ${describe(a)} in earlier messages but ${describe(b)} here` };
  if (ka === 'array') {
    const r = mergeStructure((a as Structure[])[0], (b as Structure[])[0], `${where}[]`);
    return r.conflict ? { merged: a, conflict: r.conflict } : { merged: [r.merged] };
  }
  if (ka === 'object') {
    const ao = a as Record<string, Structure>;
    const bo = b as Record<string, Structure>;
    const out: Record<string, Structure> = { ...ao };
    for (const [k, v] of Object.entries(bo)) {
      const existing = Object.keys(out).find((x) => x.toLowerCase() === k.toLowerCase());
      if (existing !== undefined && existing !== k) {
        return { merged: a, conflict: `${where}.${k} differs only in case from ${where}.${existing}` };
      }
      const r = mergeStructure(out[k], v, `${where}.${k}`);
      if (r.conflict) return { merged: a, conflict: r.conflict };
      out[k] = r.merged;
    }
    return { merged: out };
  }
  if (a === b) return { merged: a };
  const ra = NUMERIC_RANK[a as string];
  const rb = NUMERIC_RANK[b as string];
  if (ra && rb) return { merged: ra >= rb ? a : b };
  return { merged: a, conflict: `${where} is ${describe(a)} in earlier messages but ${describe(b)} here` };
}

export function isObjectStructure(s: Structure): s is Record<string, Structure> {
  return kind(s) === 'object';
}
