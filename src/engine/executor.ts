import fsp from 'node:fs/promises';
import type { DuckDBConnection } from '@duckdb/node-api';
import { SluiceError, errorMessage } from '../errors.js';
import { MSG_COL, analyzeSql } from '../sql/analyze.js';
import { ident, lit } from '../sql/quote.js';
import { MODEL_SCHEMA, SOURCE_SCHEMA } from '../sql/template.js';
import type { ModelDef } from '../project/project-loader.js';
import type { RawMessage } from '../connectors/types.js';
import { isObjectStructure, mergeStructure, type Structure } from './structure.js';

export interface CompiledModel {
  name: string;
  file: string;
  /** Models this one reads with ref(). */
  refs: string[];
  /** SQL with templates rendered and MSG_COL threaded through. */
  sql: string;
  stateful: string[];
  outputColumns: string[] | null;
}

export interface MessageFailure {
  index: number;
  stage: 'decode' | 'transform';
  error: string;
  model?: string;
}

export interface BatchOutcome {
  failures: MessageFailure[];
  /** Rows each model produced for the surviving messages (tables sluice_model.<name>). */
  rows: Map<string, number>;
  /** How many DAG runs error isolation needed (1 when nothing failed). */
  attempts: number;
  /** Milliseconds spent per stage, for debug logs. */
  timings: Record<string, number>;
  /** Models whose rows were written straight to their target file (see process()). */
  written: Set<string>;
}

/** Compiles models for execution: template rendering was done at load; this analyses and rewrites. */
export async function compileModels(conn: DuckDBConnection, models: ModelDef[]): Promise<CompiledModel[]> {
  const out: CompiledModel[] = [];
  for (const m of models) {
    const a = await analyzeSql(conn, m.rendered.sql);
    if (a.error) throw new SluiceError('CONFIG', `${m.file}${a.error.line ? `:${a.error.line}` : ''}: ${a.error.message}`);
    if (a.stateful.length) {
      throw new SluiceError('CONFIG', `${m.file}: model ${m.name} is stateful: ${a.stateful.join('; ')}`);
    }
    out.push({ name: m.name, file: m.file, refs: m.refs, sql: a.rewritten!, stateful: a.stateful, outputColumns: a.outputColumns });
  }
  return out;
}

/** First line of a DuckDB error, without the echoed SQL. */
export function cleanError(err: unknown): string {
  const msg = errorMessage(err);
  const cut = msg.split(/\n\s*\n|\nLINE \d+:/)[0];
  return cut.replace(/\s+/g, ' ').trim();
}

const BINDER = /^(Binder Error|Catalog Error|Parser Error|Not implemented Error)/;

/**
 * Runs a project's models over batches of raw messages inside one DuckDB connection, with
 * per-message semantics: messages that cannot be decoded, that conflict with the schema
 * established so far, or that make a model fail are isolated (by bisection) and reported;
 * the rest of the batch proceeds in one pass.
 */
export class BatchExecutor {
  /** The schema of `incoming` established by the messages seen so far. */
  structure: Structure | undefined;

  constructor(
    private readonly conn: DuckDBConnection,
    private readonly models: CompiledModel[],
    private readonly sourceName: string,
  ) {}

  async init(): Promise<void> {
    await this.conn.run(`CREATE SCHEMA IF NOT EXISTS ${SOURCE_SCHEMA}; CREATE SCHEMA IF NOT EXISTS ${MODEL_SCHEMA}`);
  }

  /**
   * Runs the models over one batch. With `targets`, a model nothing else refs is written
   * straight to its target Parquet file when the whole batch succeeds at the first attempt
   * (the common case), saving a copy; `written` says which. Otherwise rows stay in
   * sluice_model.<name> for copyOutput() or readOutput().
   */
  async process(messages: RawMessage[], targets?: Map<string, string>): Promise<BatchOutcome> {
    const written = new Set<string>();
    const failures: MessageFailure[] = [];
    const rows = new Map<string, number>();
    const timings: Record<string, number> = {};
    let t = performance.now();
    const lap = (name: string) => {
      const now = performance.now();
      timings[name] = Math.round((timings[name] ?? 0) + now - t);
      t = now;
    };
    await this.conn.run(`CREATE OR REPLACE TABLE __raw (id INTEGER, payload VARCHAR)`);
    const ap = await this.conn.createAppender('__raw');
    for (let i = 0; i < messages.length; i++) {
      ap.appendInteger(i);
      ap.appendVarchar(messages[i].payload);
      ap.endRow();
    }
    ap.closeSync();
    lap('load');

    // Decode: every message must be a JSON object whose structure fits the established schema.
    // One parse per message: TRY() turns unparseable messages into a NULL structure.
    const bad = new Set<number>();
    const groups = await this.conn.runAndReadAll(
      `SELECT TRY(json_structure(payload)) AS s, count(*)::BIGINT AS n FROM __raw GROUP BY s ORDER BY n DESC, s`,
    );
    if (groups.getRows().some(([sv]) => sv === null)) {
      const invalid = await this.conn.runAndReadAll(`SELECT id, payload FROM __raw WHERE payload IS NULL OR NOT json_valid(payload)`);
      for (const [id, payload] of invalid.getRows()) {
        const index = Number(id);
        bad.add(index);
        failures.push({ index, stage: 'decode', error: await this.jsonError(String(payload ?? '')) });
      }
    }
    let merged = this.structure;
    const rejected: { s: string; reason: string }[] = [];
    for (const [sv] of groups.getRows()) {
      if (sv === null) continue;
      const s = String(sv);
      const st = JSON.parse(s) as Structure;
      if (!isObjectStructure(st)) {
        rejected.push({ s, reason: `message is ${Array.isArray(st) ? 'a JSON array' : 'a JSON scalar'}, not an object` });
        continue;
      }
      const r = mergeStructure(merged, st);
      if (r.conflict) rejected.push({ s, reason: `type conflict: ${r.conflict}` });
      else merged = r.merged;
    }
    for (const { s, reason } of rejected) {
      const ids = await this.conn.runAndReadAll(`SELECT id FROM __raw WHERE TRY(json_structure(payload)) = $1`, [s]);
      for (const [id] of ids.getRows()) {
        bad.add(Number(id));
        failures.push({ index: Number(id), stage: 'decode', error: reason });
      }
    }

    lap('decode');
    const good = messages.length - bad.size;
    if (good === 0) {
      for (const m of this.models) rows.set(m.name, 0);
      await this.clearOutputs();
      return { failures, rows, attempts: 0, timings, written };
    }
    this.structure = merged;
    const where = bad.size ? `WHERE id NOT IN (${[...bad].join(',')})` : '';
    const cols = merged && isObjectStructure(merged) && Object.keys(merged).length > 0
      ? `, unnest(json_transform(payload, ${lit(JSON.stringify(merged))}))`
      : '';
    await this.conn.run(`CREATE OR REPLACE TABLE __batch AS SELECT id AS ${MSG_COL}${cols} FROM __raw ${where}`);
    lap('convert');

    // Transform: one pass over the batch; on failure, bisect to the messages that fail.
    let attempts = 1;
    const direct = targets ? this.directTargets(targets) : undefined;
    let res = await this.attempt(null, direct, rows);
    if (res.ok && direct) for (const m of direct.keys()) written.add(m);
    if (!res.ok && direct) for (const f of direct.values()) await fsp.rm(f, { force: true });
    if (!res.ok) {
      rows.clear();
      if (BINDER.test(res.error)) {
        // The same schema binds the same way for every message: they all fail alike.
        const ids = await this.batchIds();
        for (const id of ids) failures.push({ index: id, stage: 'transform', error: res.error, model: res.model });
        await this.clearOutputs();
        for (const m of this.models) rows.set(m.name, 0);
        return { failures, rows, attempts, timings, written };
      }
      for (let round = 0; round < 3 && !res.ok; round++) {
        const ids = await this.batchIds();
        const mid = Math.floor(ids.length / 2);
        const found: MessageFailure[] = [];
        attempts += await this.isolate(ids.slice(0, mid), found);
        attempts += await this.isolate(ids.slice(mid), found);
        if (found.length === 0) {
          // Fails as a whole but no part fails alone: treat every message as failed rather than loop.
          for (const id of ids) failures.push({ index: id, stage: 'transform', error: res.error, model: res.model });
          await this.conn.run(`DELETE FROM __batch`);
        }
        failures.push(...found);
        attempts++;
        res = await this.attempt(null);
      }
      if (!res.ok) throw new SluiceError('TRANSFORM', `batch keeps failing after isolating bad messages: ${res.error}`);
    }
    for (const m of this.models) {
      if (rows.has(m.name)) continue;
      const r = await this.conn.runAndReadAll(`SELECT count(*) FROM ${MODEL_SCHEMA}.${ident(m.name)}`);
      rows.set(m.name, Number(r.getRows()[0][0]));
    }
    failures.sort((a, b) => a.index - b.index);
    lap('models');
    return { failures, rows, attempts, timings, written };
  }

  private async jsonError(payload: string): Promise<string> {
    if (payload.trim() === '') return 'empty message';
    try {
      await this.conn.run(`SELECT json($1::VARCHAR)`, [payload]);
      return 'invalid JSON';
    } catch (err) {
      return `invalid JSON: ${cleanError(err).replace(/^Conversion Error: /, '').replace(/^Invalid Input Error: /, '')}`;
    }
  }

  private async batchIds(): Promise<number[]> {
    const r = await this.conn.runAndReadAll(`SELECT ${MSG_COL} FROM __batch ORDER BY 1`);
    return r.getRows().map((x) => Number(x[0]));
  }

  /** Finds the failing messages among `ids`; returns the number of DAG runs spent. */
  private async isolate(ids: number[], found: MessageFailure[]): Promise<number> {
    if (ids.length === 0) return 0;
    const res = await this.attempt(`${MSG_COL} BETWEEN ${ids[0]} AND ${ids[ids.length - 1]}`);
    if (res.ok) return 1;
    if (ids.length === 1) {
      found.push({ index: ids[0], stage: 'transform', error: res.error, model: res.model });
      await this.conn.run(`DELETE FROM __batch WHERE ${MSG_COL} = ${ids[0]}`);
      return 1;
    }
    const mid = Math.floor(ids.length / 2);
    return 1 + (await this.isolate(ids.slice(0, mid), found)) + (await this.isolate(ids.slice(mid), found));
  }

  /** Target files of the models no other model reads. */
  private directTargets(targets: Map<string, string>): Map<string, string> {
    const referenced = new Set(this.models.flatMap((m) => m.refs));
    const out = new Map<string, string>();
    for (const m of this.models) {
      const t = targets.get(m.name);
      if (t && !referenced.has(m.name)) out.set(m.name, t);
    }
    return out;
  }

  /** Runs every model in DAG order over the batch (or the part of it matching `filter`). */
  private async attempt(
    filter: string | null,
    direct?: Map<string, string>,
    rows?: Map<string, number>,
  ): Promise<{ ok: true } | { ok: false; error: string; model: string }> {
    const view = `SELECT * FROM __batch${filter ? ` WHERE ${filter}` : ''}`;
    await this.conn.run(`CREATE OR REPLACE VIEW incoming AS ${view}`);
    await this.conn.run(`CREATE OR REPLACE VIEW ${SOURCE_SCHEMA}.${ident(this.sourceName)} AS ${view}`);
    for (const m of this.models) {
      try {
        const target = direct?.get(m.name);
        if (target) {
          const r = await this.conn.run(`COPY (${m.sql}) TO ${lit(target)} (FORMAT parquet, COMPRESSION lz4_raw)`);
          rows?.set(m.name, Number(r.rowsChanged));
        } else {
          await this.conn.run(`CREATE OR REPLACE TABLE ${MODEL_SCHEMA}.${ident(m.name)} AS ${m.sql}`);
        }
      } catch (err) {
        return { ok: false, error: cleanError(err), model: m.name };
      }
    }
    return { ok: true };
  }

  private async clearOutputs(): Promise<void> {
    for (const m of this.models) await this.conn.run(`DROP TABLE IF EXISTS ${MODEL_SCHEMA}.${ident(m.name)}`);
  }

  /** Writes a model's rows of the last batch to a Parquet file, with the message index column. */
  async copyOutput(model: string, file: string, compression = 'lz4_raw'): Promise<void> {
    await this.conn.run(`COPY ${MODEL_SCHEMA}.${ident(model)} TO ${lit(file)} (FORMAT parquet, COMPRESSION ${compression})`);
  }

  /** A model's rows of the last batch, for `test` and `--dry-run`. */
  async readOutput(model: string): Promise<{ columns: { name: string; type: string }[]; rows: Record<string, unknown>[] }> {
    const exists = await this.conn.runAndReadAll(
      `SELECT count(*) FROM duckdb_tables() WHERE schema_name = ${lit(MODEL_SCHEMA)} AND table_name = ${lit(model)}`,
    );
    if (Number(exists.getRows()[0][0]) === 0) return { columns: [], rows: [] };
    const r = await this.conn.runAndReadAll(`SELECT * EXCLUDE (${MSG_COL}) FROM ${MODEL_SCHEMA}.${ident(model)} ORDER BY ${MSG_COL}`);
    const names = r.columnNames();
    const types = r.columnTypes().map((t) => t.toString());
    return { columns: names.map((name, i) => ({ name, type: types[i] })), rows: r.getRowObjectsJS().map((row) => toPlain(row) as Record<string, unknown>) };
  }
}

/** DuckDB values as plain JSON-friendly values: safe integers as numbers, others as strings. */
export function toPlain(v: unknown): unknown {
  if (v === null || v === undefined) return null;
  if (typeof v === 'bigint') return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v.toString();
  if (typeof v === 'number' || typeof v === 'string' || typeof v === 'boolean') return v;
  if (v instanceof Date) return v.toISOString();
  if (Array.isArray(v)) return v.map(toPlain);
  if (v instanceof Uint8Array) return Buffer.from(v).toString('base64');
  if (Object.getPrototypeOf(v) === Object.prototype) {
    return Object.fromEntries(Object.entries(v as Record<string, unknown>).map(([k, x]) => [k, toPlain(x)]));
  }
  return String(v);
}
