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
