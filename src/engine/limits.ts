/**
 * Limits on a single message, checked on its raw bytes before anything parses it: a hostile
 * message (thousands of levels deep, or millions of keys) must be dead-lettered, never reach
 * recursive code (json_structure(), JSON.parse, the schema merge) nor grow the schema without
 * bound. Each limit is named by its config key in the reason given.
 */
export interface MessageLimits {
  /** limits.max_message_bytes */
  maxBytes: number;
  /** limits.max_depth: nesting of objects and lists (a top-level object is depth 1). */
  maxDepth: number;
  /** limits.max_fields: object keys at every depth. */
  maxFields: number;
}

export const DEFAULT_MESSAGE_LIMITS: MessageLimits = { maxBytes: 16 * 2 ** 20, maxDepth: 128, maxFields: 100_000 };

const QUOTE = 34;
const BACKSLASH = 92;
const OPEN_BRACE = 123;
const OPEN_BRACKET = 91;
const CLOSE_BRACE = 125;
const CLOSE_BRACKET = 93;
const COLON = 58;

/**
 * One linear, non-recursive pass over a message's bytes [start, end): undefined when it is
 * within the limits, else the reason, naming the limit's config key, e.g.
 * "message is 20000000 bytes, over limits.max_message_bytes (16777216)",
 * "message nests deeper than limits.max_depth (128)",
 * "message has more than limits.max_fields (100000) fields".
 *
 * Depth counts `{` and `[` outside strings; fields count `:` outside strings (one per key in
 * valid JSON; for invalid JSON an approximation, which DuckDB rejects later anyway). Strings
 * are skipped honouring backslash escapes. Stops as soon as a limit is exceeded.
 */
export function overLimits(data: Uint8Array, start: number, end: number, limits: MessageLimits): string | undefined {
  const size = end - start;
  if (size > limits.maxBytes) return `message is ${size} bytes, over limits.max_message_bytes (${limits.maxBytes})`;
  const { maxDepth, maxFields } = limits;
  let depth = 0;
  let fields = 0;
  for (let p = start; p < end; p++) {
    const c = data[p];
    if (c === QUOTE) {
      // To the closing quote (or the end): the outer loop's p++ steps past it.
      for (p++; p < end; p++) {
        const x = data[p];
        if (x === QUOTE) break;
        if (x === BACKSLASH) p++;
      }
    } else if (c === OPEN_BRACE || c === OPEN_BRACKET) {
      if (++depth > maxDepth) return `message nests deeper than limits.max_depth (${maxDepth})`;
    } else if (c === CLOSE_BRACE || c === CLOSE_BRACKET) {
      if (depth > 0) depth--;
    } else if (c === COLON) {
      if (++fields > maxFields) return `message has more than limits.max_fields (${maxFields}) fields`;
    }
  }
  return undefined;
}

/**
 * The number of top-level keys of a message [start, end) whose top level is an object, when
 * more than `max` of them are distinct; else undefined. Also undefined when that cannot be told
 * from the bytes alone (a top-level key with an escape, which may spell another key): then
 * DuckDB decides. Linear and non-recursive, like overLimits: it counts the top-level colons
 * outside strings (one per key in valid JSON), and only when there are more than `max` tells
 * distinct keys apart, by a hash of their bytes (keys that collide count as one, so the
 * distinct count it finds is never more than the true one).
 *
 * Under contract.new_columns evolve, a message with more distinct top-level keys than
 * limits.max_columns can never become a row of `incoming` (each would be a column), so it is
 * dead-lettered before DuckDB works out its structure, which for such a message costs more
 * than all the others of a batch.
 */
export function topLevelKeysOver(data: Uint8Array, start: number, end: number, max: number): number | undefined {
  let p = start;
  while (p < end && (data[p] === 32 || data[p] === 10 || data[p] === 13 || data[p] === 9)) p++;
  if (data[p] !== OPEN_BRACE) return undefined;
  const keys = topKeys(data, p, end, undefined);
  if (keys <= max) return undefined;
  // Open addressing over the keys' hashes (0 marks a free slot: a hash of 0 is taken as 1).
  let size = 1;
  while (size < keys * 2) size <<= 1;
  const table = new Int32Array(size);
  let distinct = 0;
  const counted = topKeys(data, p, end, (h) => {
    const v = h || 1;
    for (let i = v & (size - 1); ; i = (i + 1) & (size - 1)) {
      if (table[i] === v) return;
      if (table[i] === 0) {
        table[i] = v;
        distinct++;
        return;
      }
    }
  });
  return counted >= 0 && distinct > max ? keys : undefined;
}

/**
 * The keys at the top level of the object opening at `open`: one per colon outside strings at
 * depth 1, up to the object's end or the message's (a colon with no string before it, not
 * JSON, ends the count). With `onKey`, passes it each key's FNV-1a hash, and returns -1 at a
 * key with an escape.
 */
function topKeys(data: Uint8Array, open: number, end: number, onKey: ((hash: number) => void) | undefined): number {
  let depth = 0;
  let keys = 0;
  let hash = 0;
  let escaped = false;
  let key = false;
  for (let p = open; p < end; p++) {
    const c = data[p];
    if (c === QUOTE) {
      if (depth === 1 && onKey) {
        let h = 0x811c9dc5;
        escaped = false;
        for (p++; p < end; p++) {
          const x = data[p];
          if (x === QUOTE) break;
          if (x === BACKSLASH) {
            escaped = true;
            p++;
          }
          h = Math.imul(h ^ x, 0x01000193);
        }
        hash = h;
      } else {
        for (p++; p < end; p++) {
          const x = data[p];
          if (x === QUOTE) break;
          if (x === BACKSLASH) p++;
        }
      }
      if (depth === 1) key = true;
    } else if (c === OPEN_BRACE || c === OPEN_BRACKET) {
      depth++;
    } else if (c === CLOSE_BRACE || c === CLOSE_BRACKET) {
      if (--depth <= 0) break;
    } else if (c === COLON && depth === 1) {
      if (!key) break;
      key = false;
      keys++;
      if (onKey) {
        if (escaped) return -1;
        onKey(hash);
      }
    }
  }
  return keys;
}
