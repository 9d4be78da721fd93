import type { DuckDBConnection } from '@duckdb/node-api';
import type { MessageMeta, RawMessage } from '../connectors/types.js';
import type { Logger } from '../ops/logger.js';
import { schemaError, type HandlerContext } from '../project/handler-def.js';
import type { HandlerDef } from '../project/project-types.js';
import { MSG_COL } from '../sql/analyze.js';
import { ident, lit } from '../sql/quote.js';
import { MODEL_SCHEMA } from '../sql/template.js';
import { BatchDecoder, cleanError, DEFAULT_DECODE_RULES, type MessageFailure } from './decoder.js';
import { toPlain } from './plain-values.js';
import { isObjectStructure, type Structure } from './structure.js';

// A handler's step of a batch (see src/project/handler-def.ts): its input rows leave DuckDB
// for JavaScript, each with the message it comes from; what the handler makes of them comes
// back as JSON and is typed like `incoming` is (a decoder of its own, whose schema widens as
// rows need and is committed with every batch), into sluice_model.<handler>, each row with its
// message's index, so that the models reading it, the WAL and the DLQ treat it as a model's.

/** The batch a handler step runs in: where its messages' payloads and metadata are. */
export interface HandlerBatch {
  /** The lane table of the batch's payloads (id, payload). */
  raw: string;
  /** The batch's messages (their metadata), by index. */
  messages?: RawMessage[];
  /** The source of the batch's messages. */
  source: string;
}

export class HandlerStep {
  private readonly decoder: BatchDecoder;
  /** What the handler made of each input row this batch (by message and row): a row is never handed to it twice in a batch. */
  private made = new Map<string, { rows: unknown[] } | { error: string }>();

  constructor(
    private readonly conn: DuckDBConnection,
    readonly name: string,
    private readonly def: HandlerDef,
    /** Its decoder's lane (tables __raw<lane>, __batch<lane>), apart from the batches'. */
    private readonly lane: number,
    private readonly log: () => Logger,
  ) {
    this.decoder = new BatchDecoder(conn, [], DEFAULT_DECODE_RULES);
  }

  /** The schema of its output rows so far (committed with every batch). */
  get structure(): Structure | undefined {
    return this.decoder.structure;
  }

  set structure(s: Structure | undefined) {
    this.decoder.structure = s;
  }

  /** A new batch: nothing made yet. */
  beginBatch(): void {
    this.made.clear();
  }

  /**
   * Runs the handler over its input (`inputSql`, the rows of the messages still in the batch).
   * Messages whose row fails its input schema, throws, or makes a row that fails its output
   * schema are `refused` (the batch runs again without them); otherwise its rows are in
   * sluice_model.<name>, or it made none and has no schema yet (`absent`).
   */
  async run(inputSql: string, batch: HandlerBatch): Promise<{ refused?: MessageFailure[]; absent?: boolean }> {
    const input = await this.conn.runAndReadAll(`SELECT * FROM (${inputSql}) ORDER BY ${MSG_COL}`);
    const rows = input.getRowObjectsJS();
    const payloads = await this.payloads(batch.raw, rows);
    const failures = new Map<number, string>();
    const out: string[] = [];
    const origin: number[] = [];
    for (const row of rows) {
      const index = Number(row[MSG_COL]);
      if (failures.has(index)) continue;
      const { [MSG_COL]: _, ...fields } = row;
      const value = toPlain(fields) as Record<string, unknown>;
      const key = `${index}\u0000${JSON.stringify(value)}`;
      let made = this.made.get(key);
      if (!made) {
        made = await this.call(value, index, payloads.get(index) ?? '', batch);
        this.made.set(key, made);
      }
      if ('error' in made) {
        failures.set(index, made.error);
        continue;
      }
      for (const r of made.rows) {
        out.push(JSON.stringify(r));
        origin.push(index);
      }
    }
    if (failures.size) return { refused: [...failures].map(([index, error]) => ({ index, stage: 'transform', error, model: this.name })) };
    return this.store(out, origin);
  }

  /** The payloads of the messages `rows` come from, by index. */
  private async payloads(raw: string, rows: Record<string, unknown>[]): Promise<Map<number, string>> {
    if (rows.length === 0) return new Map();
    const first = Number(rows[0][MSG_COL]);
    const last = Number(rows[rows.length - 1][MSG_COL]);
    const r = await this.conn.runAndReadAll(`SELECT id, payload FROM ${raw} WHERE id BETWEEN ${first} AND ${last}`);
    return new Map(r.getRows().map(([id, p]) => [Number(id), String(p ?? '')]));
  }

  /** The handler on one row: the rows it makes (checked against its output schema), or why the message fails. */
  private async call(value: Record<string, unknown>, index: number, raw: string, batch: HandlerBatch): Promise<{ rows: unknown[] } | { error: string }> {
    const { spec } = this.def;
    const message = batch.messages?.[index];
    const meta: MessageMeta = message?.meta ?? {};
    const position = message?.coords ?? {};
    const fail = (what: string) => ({ error: `handler ${this.name}: ${what}` });
    let arg: unknown = value;
    if (spec.input) {
      const r = spec.input.safeParse(value);
      if (!r.success) return fail(`the row does not match its input schema: ${schemaError(r.error)}`);
      arg = r.data;
    }
    let made: unknown;
    try {
      made = await spec.process({ value: arg as Record<string, unknown>, raw, meta, position, source: batch.source }, this.context(position));
    } catch (err) {
      return fail(`process() threw: ${cleanError(err)}`);
    }
    const list = made === null || made === undefined ? [] : Array.isArray(made) ? made : [made];
    const rows: unknown[] = [];
    for (const r of list) {
      let row: unknown = r;
      if (spec.output) {
        const c = spec.output.safeParse(r);
        if (!c.success) return fail(`a row it returned does not match its output schema: ${schemaError(c.error)}`);
        row = c.data;
      }
      if (!row || typeof row !== 'object' || Array.isArray(row)) return fail(`process() returned ${JSON.stringify(row)?.slice(0, 80)}, not an object (a row) or a list of them`);
      rows.push(row);
    }
    return { rows };
  }

  private context(position: Record<string, unknown>): HandlerContext {
    const at = { handler: this.name, position };
    const log = this.log();
    return {
      name: this.name,
      log: {
        debug: (msg, f) => log.debug({ ...f, ...at }, msg),
        info: (msg, f) => log.info({ ...f, ...at }, msg),
        warn: (msg, f) => log.warn({ ...f, ...at }, msg),
        error: (msg, f) => log.error({ ...f, ...at }, msg),
      },
    };
  }

  /** Its rows into sluice_model.<name>, typed by its decoder, each with the index of the message it came from. */
  private async store(out: string[], origin: number[]): Promise<{ refused?: MessageFailure[]; absent?: boolean }> {
    const table = `${MODEL_SCHEMA}.${ident(this.name)}`;
    if (out.length === 0) {
      const s = this.decoder.structure;
      if (!s || !isObjectStructure(s) || Object.keys(s).length === 0) {
        await this.conn.run(`DROP TABLE IF EXISTS ${table}`);
        return { absent: true };
      }
      await this.conn.run(`CREATE OR REPLACE TABLE ${table} AS SELECT NULL::INTEGER AS ${MSG_COL}, unnest(json_transform('{}', ${lit(JSON.stringify(s))})) LIMIT 0`);
      return {};
    }
    const p = await this.decoder.prepare(
      out.map((payload) => ({ payload, coords: {} })),
      this.lane,
    );
    if (p.failures.length) {
      return { refused: p.failures.map((f) => ({ index: origin[f.index], stage: 'transform', error: `handler ${this.name}: a row it returned cannot be stored: ${f.error}`, model: this.name })) };
    }
    const list = `[${origin.join(',')}]::INTEGER[]`;
    await this.conn.run(
      `CREATE OR REPLACE TABLE ${table} AS SELECT o.msg AS ${MSG_COL}, b.* EXCLUDE (${MSG_COL}) FROM ${p.batch} b JOIN (SELECT unnest(l) AS msg, generate_subscripts(l, 1) - 1 AS i FROM (SELECT ${list} AS l)) o ON b.${MSG_COL} = o.i ORDER BY b.${MSG_COL}`,
    );
    return {};
  }
}
