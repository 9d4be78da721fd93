import { blobValue, type DuckDBConnection } from '@duckdb/node-api';
import type { PayloadBlock } from '../connectors/types.js';

/** A character valid JSON never holds raw (control characters must be escaped; see RFC 8259). */
export const SEPARATOR = '\x1e';
export const NEWLINE = 10;

/**
 * The payloads of a batch as one block of bytes, joined by SEPARATOR (for the scanner; a
 * payload that holds SEPARATOR itself cannot be split apart by DuckDB: see loadPayloads).
 */
export function blockOf(payloads: string[]): PayloadBlock {
  const data = Buffer.from(payloads.join(SEPARATOR));
  const starts = new Uint32Array(payloads.length);
  const ends = new Uint32Array(payloads.length);
  const ascii = data.length === payloads.reduce((n, p) => n + p.length, payloads.length - 1);
  let at = 0;
  for (let i = 0; i < payloads.length; i++) {
    starts[i] = at;
    at += ascii ? payloads[i].length : Buffer.byteLength(payloads[i]);
    ends[i] = at;
    at++;
  }
  return { data, starts, ends };
}

/**
 * The block's bytes with exactly one `sep` byte between messages and nothing around them, as
 * DuckDB splits it; messages in `blank` become empty. Most blocks already are (an NDJSON file
 * without blank lines): then nothing is copied.
 */
function splittable(block: PayloadBlock, sep: number, blank: Set<number>): Buffer {
  const { data, starts, ends } = block;
  const n = starts.length;
  let exact = blank.size === 0 && starts[0] === 0 && ends[n - 1] === data.length;
  for (let i = 1; exact && i < n; i++) exact = starts[i] === ends[i - 1] + 1 && data[ends[i - 1]] === sep;
  if (exact) return data;
  let size = n - 1;
  for (let i = 0; i < n; i++) if (!blank.has(i)) size += ends[i] - starts[i];
  const out = Buffer.allocUnsafe(size);
  let at = 0;
  for (let i = 0; i < n; i++) {
    if (i > 0) out[at++] = sep;
    if (!blank.has(i)) at += data.copy(out, at, starts[i], ends[i]);
  }
  return out;
}

/**
 * Loads a block into table `raw` (id, payload): its bytes travel to DuckDB as one BLOB and
 * are split there, which costs the main thread next to nothing (no string per message, no
 * string parameter to convert). `sep` separates the messages (no payload holds it); messages
 * in `blank` (invalid UTF-8, already dead-lettered) are loaded as empty payloads. Resolves
 * once the load is queued, with the load's completion: the caller can scan meanwhile, and
 * the load does not wait for the main thread to be free to start.
 */
export async function startLoad(conn: DuckDBConnection, raw: string, block: PayloadBlock, sep: number, blank: Set<number>): Promise<{ done: Promise<number> }> {
  const stmt = await conn.prepare(
    `CREATE OR REPLACE TABLE ${raw} AS SELECT (generate_subscripts(s, 1) - 1)::INTEGER AS id, unnest(s) AS payload ` + `FROM (SELECT string_split(decode($1::BLOB), chr(${sep})) AS s)`,
  );
  stmt.bind([blobValue(splittable(block, sep, blank))]);
  const run = stmt.run();
  const done = (async () => {
    try {
      await run;
    } finally {
      stmt.destroySync();
    }
    const r = await conn.runAndReadAll(`SELECT count(*) FROM ${raw}`);
    return Number(r.getRows()[0][0]);
  })();
  done.catch(() => {}); // awaited by the caller; only keeps a failure from counting as unhandled meanwhile
  return { done };
}

async function loadBlock(conn: DuckDBConnection, raw: string, block: PayloadBlock, sep: number, blank: Set<number>): Promise<number> {
  return (await startLoad(conn, raw, block, sep, blank)).done;
}

/** Loads payloads into table `raw` (id, payload); returns the row count. */
export async function loadPayloads(conn: DuckDBConnection, raw: string, payloads: string[]): Promise<number> {
  if (!payloads.some((p) => p.includes(SEPARATOR))) return loadBlock(conn, raw, blockOf(payloads), SEPARATOR.charCodeAt(0), new Set());
  await conn.run(`CREATE OR REPLACE TABLE ${raw} (id INTEGER, payload VARCHAR)`);
  const ap = await conn.createAppender(raw);
  for (let i = 0; i < payloads.length; i++) {
    ap.appendInteger(i);
    ap.appendVarchar(payloads[i]);
    ap.endRow();
  }
  ap.closeSync();
  return payloads.length;
}

/** Returns lap(name): adds the milliseconds since the previous lap (or the start) to timings[name]. */
export function stopwatch(timings: Record<string, number>): (name: string) => void {
  let t = performance.now();
  return (name) => {
    const now = performance.now();
    timings[name] = Math.round((timings[name] ?? 0) + now - t);
    t = now;
  };
}
