import type { DuckDBConnection } from '@duckdb/node-api';
import { z } from 'zod';
import { SluiceError } from '../errors.js';
import { ident, lit } from '../sql/quote.js';
import type { SinkWrite } from './types.js';

/**
 * Rows of a flush as JSON objects, the one encoding every service sink (kafka, http, redis,
 * rabbitmq, nats) sends. DuckDB builds the JSON (no JSON work in JavaScript), lossless:
 * - BIGINT, UBIGINT and DECIMAL are JSON numbers with every digit (`9007199254740993`,
 *   `12345678901234567.891`): a consumer needs a big-number aware parser to keep digits past
 *   2^53 (HUGEINT arrives as DOUBLE: the WAL's Parquet has no 128-bit integer);
 * - DOUBLE/FLOAT are numbers in shortest round-trip form; NaN and infinities (no JSON number)
 *   are the strings `"NaN"`, `"Infinity"`, `"-Infinity"`;
 * - TIMESTAMP is `"2024-01-02T03:04:05.123456"` (microseconds, no zone), TIMESTAMP_NS has nine
 *   fractional digits, TIMESTAMPTZ is in UTC with a `Z` (`"2024-01-02T01:04:05.000000Z"`),
 *   whatever the session time zone; DATE `"2024-01-02"`, TIME `"03:04:05"`;
 * - BLOB is base64 text; lists, structs and maps are JSON arrays/objects (values nested in them
 *   keep DuckDB's own to_json form).
 * Columns come in the model's order; NULLs are `null`.
 */

/** A column's expression, for the top-level types whose default JSON form is lossy or invalid. */
function columnExpr(name: string, type: string): string {
  const c = `t.${ident(name)}`;
  switch (type) {
    case 'TIMESTAMP':
    case 'TIMESTAMP_S':
    case 'TIMESTAMP_MS':
      return `strftime(${c}, '%Y-%m-%dT%H:%M:%S.%f')`;
    case 'TIMESTAMP_NS':
      return `strftime(${c}, '%Y-%m-%dT%H:%M:%S.%n')`;
    case 'TIMESTAMP WITH TIME ZONE':
      return `strftime(timezone('UTC', ${c}), '%Y-%m-%dT%H:%M:%S.%fZ')`;
    case 'DOUBLE':
    case 'FLOAT':
      // Text then JSON: a FLOAT's shortest form (1.1), where to_json widens it (1.100000023841858).
      return `CASE WHEN ${c} IS NULL THEN NULL WHEN isfinite(${c}) THEN ${c}::VARCHAR::JSON WHEN isnan(${c}) THEN '"NaN"'::JSON WHEN ${c} > 0 THEN '"Infinity"'::JSON ELSE '"-Infinity"'::JSON END`;
    case 'BLOB':
      return `to_base64(${c})`;
    default:
      return c;
  }
}

/**
 * A template such as `order:{order_id}` as a SQL expression over the flush's rows (alias `t`):
 * `{column}` is the column's value as text; the rest is literal (`{{` and `}}` are braces).
 * NULL when a referenced column is NULL. A template without placeholders is a constant.
 */
export function templateSql(template: string): string {
  const parts: string[] = [];
  for (const piece of parseTemplate(template)) {
    parts.push(piece.column !== undefined ? `CAST(t.${ident(piece.column)} AS VARCHAR)` : lit(piece.text));
  }
  if (parts.length === 0) return `''`;
  // `||` is NULL when any side is: a row lacking a value has no key rather than a wrong one.
  return parts.length === 1 ? `(${parts[0]})` : `(${parts.join(' || ')})`;
}

/** The columns a template names. */
export function templateColumns(template: string | undefined): string[] {
  if (!template) return [];
  return parseTemplate(template).flatMap((p) => (p.column !== undefined ? [p.column] : []));
}

/** What is wrong with a template, or undefined. */
export function templateProblem(template: string): string | undefined {
  try {
    parseTemplate(template);
    return undefined;
  } catch (err) {
    return (err as Error).message;
  }
}

function parseTemplate(template: string): { text: string; column?: string }[] {
  const out: { text: string; column?: string }[] = [];
  let text = '';
  for (let i = 0; i < template.length; i++) {
    const ch = template[i];
    if ((ch === '{' || ch === '}') && template[i + 1] === ch) {
      text += ch;
      i++;
    } else if (ch === '{') {
      const end = template.indexOf('}', i + 1);
      if (end < 0) throw new Error(`unclosed "{" at character ${i + 1} of "${template}"`);
      const column = template.slice(i + 1, end).trim();
      if (!column || column.includes('{')) throw new Error(`expected a column name inside {} at character ${i + 1} of "${template}"`);
      if (text) out.push({ text });
      text = '';
      out.push({ text: '', column });
      i = end;
    } else if (ch === '}') {
      throw new Error(`unmatched "}" at character ${i + 1} of "${template}" (write }} for a brace)`);
    } else text += ch;
  }
  if (text) out.push({ text });
  return out;
}

/**
 * Streams a flush's rows in the order they were staged (a plain scan of its relation, so a
 * replayed flush numbers its rows the same way), in chunks as DuckDB produces them. Each row
 * is `[json, ...extras]`: `extras` are SQL expressions over the rows (alias `t`), such as
 * templateSql(). `json` is the row as one JSON object of the model's columns (see the
 * encoding above).
 */
export async function* jsonRowChunks(w: Pick<SinkWrite, 'relation' | 'columns'>, db: DuckDBConnection, extras: string[] = []): AsyncGenerator<(string | null)[][]> {
  const struct = `{${w.columns.map((c) => `${lit(c.name)}: ${columnExpr(c.name, c.type)}`).join(', ')}}`;
  const extraSql = extras.map((e, i) => `, ${e} AS x${i}`).join('');
  const sql = `SELECT to_json(${struct})::VARCHAR AS v${extraSql} FROM ${w.relation} t`;
  const result = await db.stream(sql);
  for await (const rows of result.yieldRows()) {
    yield rows.map((r) => r.map((v) => (v === null ? null : String(v))));
  }
}

/**
 * The message id of row `row` of a flush: `<prefix>/<model>/<flush name>/<row>`. The same on a
 * replay of the flush (same rows, same name, same order), different for every other row
 * sluice wrote from the same WAL, so a receiver can drop a replay's copies by it.
 */
export function rowId(prefix: string, w: Pick<SinkWrite, 'model' | 'name'>, row: number): string {
  return `${prefix}/${w.model}/${w.name}/${row}`;
}

/** Shared config key of the sinks that send message ids. */
export const idPrefixKey = {
  id_prefix: z.string().optional().describe("prefix of the message ids (idempotency keys) sent; default the project directory's name"),
};

/** A row whose routing template yields NULL: a permanent error naming the row and the template. */
export function nullTemplateError(sink: string, w: Pick<SinkWrite, 'model' | 'name'>, row: number, what: string, template: string): SluiceError {
  return new SluiceError('SINK', `${sink} sink: row ${row} of ${w.model}/${w.name} has no ${what}: a column of "${template}" is NULL`, { permanent: true });
}

/**
 * jsonRowChunks regrouped into batches of `size` rows; `first` is the batch's first row number.
 * The next batch is read from DuckDB while the caller sends the current one.
 */
export function jsonRowBatches(w: Pick<SinkWrite, 'relation' | 'columns'>, db: DuckDBConnection, extras: string[], size: number): AsyncGenerator<{ first: number; rows: (string | null)[][] }> {
  return readAhead(regroup(w, db, extras, size));
}

/** Yields what `gen` yields, asking it for the next value as soon as the current one is handed out. */
async function* readAhead<T>(gen: AsyncGenerator<T>): AsyncGenerator<T> {
  let next = gen.next();
  try {
    for (;;) {
      const r = await next;
      if (r.done) return;
      next = gen.next();
      yield r.value;
    }
  } finally {
    // The consumer stopped early (an error): let the pending read settle, then close the source.
    await next.catch(() => undefined);
    await gen.return(undefined);
  }
}

async function* regroup(w: Pick<SinkWrite, 'relation' | 'columns'>, db: DuckDBConnection, extras: string[], size: number): AsyncGenerator<{ first: number; rows: (string | null)[][] }> {
  let batch: (string | null)[][] = [];
  let first = 0;
  for await (const chunk of jsonRowChunks(w, db, extras)) {
    for (const r of chunk) {
      batch.push(r);
      if (batch.length >= size) {
        yield { first, rows: batch };
        first += batch.length;
        batch = [];
      }
    }
  }
  if (batch.length > 0) yield { first, rows: batch };
}

/**
 * The prefix of the message ids a sink sends: `id_prefix` when set, else the project
 * directory's name, so that two pipelines writing the same model to one place do not take each
 * other's rows for replays.
 */
export function idPrefix(configured: string | undefined, projectDir: string): string {
  return configured ?? projectDir.split(/[\\/]/).filter(Boolean).pop() ?? 'sluice';
}

/** A config string that is a routing template (`{column}` placeholders), checked when parsed. */
export function templateString(description: string) {
  return z
    .string()
    .min(1)
    .superRefine((v, ctx) => {
      const problem = templateProblem(v);
      if (problem) ctx.addIssue({ code: 'custom', message: problem });
    })
    .describe(description);
}
