import fsp from 'node:fs/promises';
import { isUtf8 } from 'node:buffer';
import { blobValue, type DuckDBConnection } from '@duckdb/node-api';
import { SluiceError, errorMessage } from '../errors.js';
import { MSG_COL, analyzeSql } from '../sql/analyze.js';
import { ident, lit } from '../sql/quote.js';
import { MODEL_SCHEMA, SOURCE_SCHEMA } from '../sql/template.js';
import type { ModelDef } from '../project/project-loader.js';
import type { MessageMeta, PayloadBlock, RawMessage } from '../connectors/types.js';
import type { SourcePolicy } from '../connectors/shared-config.js';
import { countFields, isObjectStructure, mergeStructure, type Structure } from './structure.js';
import { DEFAULT_MESSAGE_LIMITS, overLimits, type MessageLimits } from './limits.js';
import { conformance, nonConforming, type Conformance } from './conform.js';
import { asInfraError } from './infra-errors.js';
import { applyContract, duckSupertype, emptyReport, resolveContractTypes, SchemaTracker, type ContractKind, type ContractReport, type ModelContract } from './contracts.js';

/** Metadata columns of `incoming` (see MessageMeta) and how each is built from its JSON. */
const META_COLUMNS: Record<string, { field: keyof MessageMeta; type: string; sql?: (x: string) => string }> = {
  _topic: { field: 'topic', type: 'VARCHAR' },
  _key: { field: 'key', type: 'VARCHAR' },
  _partition: { field: 'partition', type: 'INTEGER' },
  _offset: { field: 'offset', type: 'BIGINT' },
  _id: { field: 'id', type: 'VARCHAR' },
  _timestamp: { field: 'timestamp', type: 'BIGINT', sql: (x) => `make_timestamp(${x} * 1000)` },
  _headers: { field: 'headers', type: 'MAP(VARCHAR, VARCHAR)' },
};

/** The metadata columns a model's SQL mentions: only those are added to `incoming`. */
export function metaColumnsUsed(sqls: string[]): string[] {
  return Object.keys(META_COLUMNS).filter((c) => sqls.some((sql) => new RegExp(`(^|[^A-Za-z0-9_])${c}($|[^A-Za-z0-9_])`, 'i').test(sql)));
}

/**
 * What the engine enforces on a source's messages as it decodes them (a source's `limits` and
 * `contract` keys): per-message limits, checked in one linear pass before DuckDB parses a
 * message, and the rules by which `incoming`'s schema may grow.
 */
export interface DecodeRules {
  limits: MessageLimits;
  /** Fields of `incoming`'s schema, nested ones included, beyond which no message adds one. */
  maxColumns: number;
  /** A nested object with more keys becomes one JSON column (see MergeOptions.mapThreshold). */
  mapThreshold: number;
  /** What a message with a field the schema does not have yet does (contract.new_columns). */
  newColumns: 'evolve' | 'freeze' | 'discard_row' | 'discard_value';
}

export const DEFAULT_DECODE_RULES: DecodeRules = { limits: DEFAULT_MESSAGE_LIMITS, maxColumns: 1000, mapThreshold: 200, newColumns: 'evolve' };

/** A source's `limits` and `contract` keys as the executor applies them. */
export function decodeRules(policy: SourcePolicy | undefined): DecodeRules {
  if (!policy) return DEFAULT_DECODE_RULES;
  const l = policy.limits;
  return {
    limits: { maxBytes: l.max_message_bytes, maxDepth: l.max_depth, maxFields: l.max_fields },
    maxColumns: l.max_columns,
    mapThreshold: l.map_threshold,
    newColumns: policy.contract.new_columns,
  };
}

/** Messages decoded exactly by DuckDB per round (see prepare()). */
const DECODE_SAMPLE = 512;

export interface CompiledModel {
  name: string;
  file: string;
  /** Models this one reads with ref(). */
  refs: string[];
  /** SQL with templates rendered and MSG_COL threaded through. */
  sql: string;
  stateful: string[];
  outputColumns: string[] | null;
  /** Its schema contract, types resolved (see contracts.ts). */
  contract?: ModelContract;
}

export interface MessageFailure {
  index: number;
  stage: 'decode' | 'transform';
  error: string;
  model?: string;
  /** A contract's refusal: the column and what it broke. */
  column?: string;
  kind?: ContractKind;
}

export interface BatchOutcome {
  failures: MessageFailure[];
  /** Rows each model produced for the surviving messages (tables sluice_model.<name>). */
  rows: Map<string, number>;
  /** How many DAG runs error isolation needed (1 when nothing failed). */
  attempts: number;
  /** Milliseconds spent per stage, for debug logs. */
  timings: Record<string, number>;
  /** Models whose rows were written straight to their target file (see execute()). */
  written: Set<string>;
  /** The schema of `incoming` after this batch: what the WAL commit of this batch records. */
  structure: Structure | undefined;
  /** Schema changes and contract violations of this batch. */
  contract: ContractReport;
}

/** A batch loaded and decoded by prepare(), ready for execute(). */
export interface PreparedBatch {
  /** Which of the two lanes' tables it uses (a batch decoded again keeps its lane). */
  lane: number;
  /** The lane table holding the payloads. */
  raw: string;
  /** The lane table holding the messages' metadata, when a model uses any. */
  meta?: string;
  count: number;
  /** The lane table holding the decoded messages as typed rows; undefined when none decoded. */
  batch?: string;
  /** The metadata columns `batch` holds (see metaSql). */
  addedMeta: string[];
  /** Messages that failed to decode (their failures are in `failures`). */
  bad: Set<number>;
  failures: MessageFailure[];
  structure: Structure | undefined;
  timings: Record<string, number>;
  /** What decoding did to `incoming`'s schema: fields turned into JSON, messages or values dropped by its contract. */
  incoming: Pick<ContractReport, 'changes' | 'violations'>;
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
    const typeIssues = await resolveContractTypes(conn, m.name, m.contract);
    if (typeIssues.length) throw new SluiceError('CONFIG', typeIssues.map((i) => `${i.file}${i.line ? `:${i.line}` : ''}: ${i.key}: ${i.message}`).join('\n'));
    out.push({ name: m.name, file: m.file, refs: m.refs, sql: a.rewritten!, stateful: a.stateful, outputColumns: a.outputColumns, contract: m.contract });
  }
  return out;
}

/** A character valid JSON never holds raw (control characters must be escaped; see RFC 8259). */
const SEPARATOR = '\x1e';
const NEWLINE = 10;

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
async function startLoad(conn: DuckDBConnection, raw: string, block: PayloadBlock, sep: number, blank: Set<number>): Promise<{ done: Promise<number> }> {
  const stmt = await conn.prepare(
    `CREATE OR REPLACE TABLE ${raw} AS SELECT (generate_subscripts(s, 1) - 1)::INTEGER AS id, unnest(s) AS payload ` +
      `FROM (SELECT string_split(decode($1::BLOB), chr(${sep})) AS s)`,
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
async function loadPayloads(conn: DuckDBConnection, raw: string, payloads: string[]): Promise<number> {
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
function stopwatch(timings: Record<string, number>): (name: string) => void {
  let t = performance.now();
  return (name) => {
    const now = performance.now();
    timings[name] = Math.round((timings[name] ?? 0) + now - t);
    t = now;
  };
}

function metaJson(meta: MessageMeta | undefined): string {
  return meta ? JSON.stringify(meta) : '{}';
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
  /** The schema of `incoming` established by the messages seen so far (prepared batches included). */
  structure: Structure | undefined;
  private compiled: { structure: Structure | undefined; check: Conformance } | undefined;
  /** Metadata columns each model mentions, and all of them together (see metaColumnsUsed). */
  private readonly metaUsedBy: Map<string, string[]>;
  private readonly metaColumns: string[];
  /** The batch execute() is working on (one at a time). */
  private current!: PreparedBatch;
  /** The models' output schemas so far and their contracts (the WAL state keeps `schemas`). */
  readonly schemas: SchemaTracker;
  /** What the contracts did to the current batch. */
  private report: ContractReport = emptyReport();
  /** `current.structure` as a cache key for contract plans. */
  private shape: { structure: Structure | undefined; key: string } = { structure: undefined, key: '' };

  /**
   * `conn` runs the models; `loadConn` (another connection to the same database, or `conn`
   * itself) loads and decodes, so that one batch can be prepared while another executes.
   */
  constructor(
    private readonly conn: DuckDBConnection,
    private readonly models: CompiledModel[],
    private readonly sourceName: string,
    private readonly loadConn: DuckDBConnection = conn,
    private readonly rules: DecodeRules = DEFAULT_DECODE_RULES,
  ) {
    this.metaUsedBy = new Map(models.map((m) => [m.name, metaColumnsUsed([m.sql])]));
    this.metaColumns = metaColumnsUsed(models.map((m) => m.sql));
    this.schemas = new SchemaTracker(new Map(models.filter((m) => m.contract).map((m) => [m.name, m.contract!])), duckSupertype(conn));
  }

  /**
   * The metadata columns for __batch: those the models use, except where the message has a
   * top-level field of the same name (the message's own field wins).
   */
  private metaSql(raw: string, meta: string | undefined, structure: Structure | undefined): { select: string; from: string; cols: string[] } {
    if (!meta) return { select: '', from: '', cols: [] };
    const own = new Set(structure && isObjectStructure(structure) ? Object.keys(structure).map((k) => k.toLowerCase()) : []);
    const cols = this.metaColumns.filter((c) => !own.has(c));
    if (cols.length === 0) return { select: '', from: '', cols: [] };
    const shape = Object.fromEntries(cols.map((c) => [META_COLUMNS[c].field, META_COLUMNS[c].type]));
    const m = `json_transform(${meta}.payload, ${lit(JSON.stringify(shape))})`;
    const select = cols.map((c) => {
      const x = `${m}.${ident(META_COLUMNS[c].field)}`;
      return `, ${META_COLUMNS[c].sql ? META_COLUMNS[c].sql!(x) : x} AS ${ident(c)}`;
    });
    return { select: select.join(''), from: ` JOIN ${meta} ON ${meta}.id = ${raw}.id`, cols };
  }

  /** The conformance test for `structure`, compiled once per schema. */
  private conformance(structure: Structure | undefined): Conformance {
    if (!this.compiled || this.compiled.structure !== structure) this.compiled = { structure, check: conformance(structure, this.rules.limits) };
    return this.compiled.check;
  }

  async init(): Promise<void> {
    await this.conn.run(`CREATE SCHEMA IF NOT EXISTS ${SOURCE_SCHEMA}; CREATE SCHEMA IF NOT EXISTS ${MODEL_SCHEMA}`);
  }

  /** Loads and decodes a batch, then runs the models over it (prepare() + execute()). */
  async process(messages: RawMessage[], targets?: Map<string, string>): Promise<BatchOutcome> {
    return this.execute(await this.prepare(messages), targets);
  }

  /**
   * First half of a batch: loads the payloads into lane table `__raw<lane>` (on the loading
   * connection) and decodes them: every message must be a JSON object whose structure fits the
   * established schema. The fast path scans the raw text against the schema (conform.ts) while
   * DuckDB loads the batch; the rest are decoded exactly by DuckDB's json_structure(), a
   * sample at a time, each sample possibly widening the schema so that more of the remaining
   * messages conform. Then converts the good ones to typed rows in `__batch<lane>`. Advances
   * `structure`, so that the next batch can be prepared while this one executes (on the other
   * lane).
   */
  async prepare(messages: RawMessage[], lane = 0, given?: PayloadBlock): Promise<PreparedBatch> {
    const timings: Record<string, number> = {};
    const lap = stopwatch(timings);
    const conn = this.loadConn;
    const raw = `__raw${lane}`;
    const bad = new Set<number>();
    const failures: MessageFailure[] = [];
    const payloads = given ? undefined : messages.map((m) => m.payload);
    const block = given ?? blockOf(payloads!);
    if (!isUtf8(block.data)) {
      for (let i = 0; i < messages.length; i++) {
        if (isUtf8(block.data.subarray(block.starts[i], block.ends[i]))) continue;
        bad.add(i);
        failures.push({ index: i, stage: 'decode', error: 'invalid JSON: the message is not valid UTF-8' });
      }
    }
    const maxBytes = this.rules.limits.maxBytes;
    for (let i = 0; i < messages.length; i++) {
      const size = block.ends[i] - block.starts[i];
      if (size <= maxBytes || bad.has(i)) continue;
      bad.add(i);
      failures.push({ index: i, stage: 'decode', error: `message is ${size} bytes, over limits.max_message_bytes (${maxBytes})` });
    }
    // A source's block separates messages by its separator (a newline unless it says); a block
    // built here, by SEPARATOR, which a payload from a broker may hold: those batches go
    // through the appender.
    const { done: loading } = given
      ? await startLoad(conn, raw, block, block.separator ?? NEWLINE, bad)
      : payloads!.some((p) => p.includes(SEPARATOR))
        ? { done: loadPayloads(conn, raw, payloads!) }
        : await startLoad(conn, raw, block, SEPARATOR.charCodeAt(0), bad);
    let slow = await nonConforming(block, this.conformance(this.structure));
    if (bad.size) slow = slow.filter((i) => !bad.has(i));
    // Only messages the fast path refused can be over a limit (it refuses those): one linear
    // pass each, before DuckDB parses them, so that no message is ever taken apart deeper or
    // wider than the limits allow.
    const within: number[] = [];
    for (const i of slow) {
      const over = overLimits(block.data, block.starts[i], block.ends[i], this.rules.limits);
      if (over === undefined) within.push(i);
      else {
        bad.add(i);
        failures.push({ index: i, stage: 'decode', error: over });
      }
    }
    slow = within;
    lap('check');
    const loaded = await loading;
    if (loaded !== messages.length) {
      throw new SluiceError('INTERNAL', `loading a batch of ${messages.length} messages gave ${loaded} rows (a payload holds the separator)`);
    }
    let meta: string | undefined;
    if (this.metaColumns.length) {
      meta = `__meta${lane}`;
      await loadPayloads(conn, meta, messages.map((m) => metaJson(m.meta)));
    }
    lap('load');

    let merged = this.structure;
    const incoming: PreparedBatch['incoming'] = { changes: [], violations: [] };
    while (slow.length > 0) {
      const sample = slow.slice(0, DECODE_SAMPLE);
      const before = merged;
      merged = await this.decodeExactly(conn, raw, sample, messages, merged, bad, failures, incoming);
      slow = slow.slice(DECODE_SAMPLE);
      // The schema grew: more of the rest may conform now.
      if (merged !== before && slow.length > 0) slow = await nonConforming(block, this.conformance(merged), slow);
    }
    if (bad.size < messages.length) this.structure = merged;
    lap('decode');
    const p: PreparedBatch = { lane, raw, meta, count: messages.length, bad, failures, structure: this.structure, timings, addedMeta: [], incoming };
    await this.convert(p, `__batch${lane}`);
    lap('convert');
    return p;
  }

  /**
   * Converts the decoded messages of a prepared batch to typed rows in table `table` (on the
   * loading connection, so that this too happens while the previous batch executes).
   */
  private async convert(p: PreparedBatch, table: string): Promise<void> {
    const { bad, failures, structure, raw } = p;
    const conn = this.loadConn;
    if (bad.size === p.count) return;
    const notBad = () => (bad.size ? `WHERE id NOT IN (${[...bad].join(',')})` : '');
    const cols = structure && isObjectStructure(structure) && Object.keys(structure).length > 0
      ? `, unnest(json_transform(${raw}.payload, ${lit(JSON.stringify(structure))}))`
      : '';
    const { select: metaSelect, from: metaFrom, cols: added } = this.metaSql(raw, p.meta, structure);
    p.addedMeta = added;
    const convert = () =>
      conn.run(`CREATE OR REPLACE TABLE ${table} AS SELECT ${raw}.id AS ${MSG_COL}${cols}${metaSelect} FROM ${raw}${metaFrom} ${notBad().replace('WHERE id', `WHERE ${raw}.id`)}`);
    try {
      await convert();
    } catch (err) {
      const infra = asInfraError(err, 'converting a batch');
      if (infra) throw infra;
      // Only when JavaScript accepted a message DuckDB cannot read (their JSON parsers differ
      // at the edges): dead-letter exactly those and convert the rest.
      if (!cols) throw err;
      const unreadable = await conn.runAndReadAll(
        `SELECT id, payload FROM ${raw} ${notBad() || 'WHERE true'} AND TRY(json_transform(payload, ${lit(JSON.stringify(structure))})) IS NULL`,
      );
      if (unreadable.getRows().length === 0) throw err;
      for (const [id, payload] of unreadable.getRows()) {
        bad.add(Number(id));
        failures.push({ index: Number(id), stage: 'decode', error: await this.jsonError(conn, String(payload ?? '')) });
      }
      if (bad.size === p.count) return;
      await convert();
    }
    p.batch = table;
  }

  /**
   * Second half of a batch: runs the models over the batch's typed rows. With `targets`, a model nothing else refs is written straight to its target
   * Parquet file when the whole batch succeeds at the first attempt (the common case), saving
   * a copy; `written` says which. Otherwise rows stay in sluice_model.<name> for copyOutput()
   * or readOutput().
   */
  async execute(p: PreparedBatch, targets?: Map<string, string>): Promise<BatchOutcome> {
    const written = new Set<string>();
    const { failures, structure } = p;
    const rows = new Map<string, number>();
    const timings = p.timings;
    const lap = stopwatch(timings);
    const nothingGood = async (): Promise<BatchOutcome> => {
      for (const m of this.models) rows.set(m.name, 0);
      await this.clearOutputs();
      failures.sort((a, b) => a.index - b.index);
      return { failures, rows, attempts: 0, timings, written, structure, contract: this.report };
    };
    this.report = emptyReport();
    this.report.changes.push(...p.incoming.changes);
    this.report.violations.push(...p.incoming.violations);
    if (!p.batch) return nothingGood();
    this.current = p;
    if (this.shape.structure !== p.structure) this.shape = { structure: p.structure, key: JSON.stringify(p.structure ?? null) };

    // Transform: one pass over the batch; on failure, bisect to the messages that fail.
    let attempts = 1;
    const direct = targets ? this.directTargets(targets) : undefined;
    let res = await this.attemptPruning(direct, rows);
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
        return { failures, rows, attempts, timings, written, structure, contract: this.report };
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
          await this.conn.run(`DELETE FROM ${p.batch}`);
        }
        failures.push(...found);
        attempts++;
        res = await this.attemptPruning();
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
    for (const m of this.models) {
      const plan = this.schemas.cached(m.name, this.shape.key);
      if (plan && (rows.get(m.name) ?? 0) > 0) this.schemas.establish(m.name, plan.columns);
    }
    this.report.changes.push(...this.schemas.drainChanges());
    return { failures, rows, attempts, timings, written, structure, contract: this.report };
  }

  /**
   * Decodes messages `ids` with DuckDB's json_structure(): unparseable ones and those whose
   * structure conflicts with the schema are added to `bad` and `failures`; the others' structures
   * are merged into the schema, most common first, under the source's rules (see DecodeRules):
   * a nested object past map_threshold keys becomes JSON; a new field is added (evolve) up to
   * max_columns, else the message is dead-lettered; freeze dead-letters it, discard_row drops
   * it, discard_value drops its new fields. Returns the merged schema.
   */
  private async decodeExactly(
    conn: DuckDBConnection,
    raw: string,
    ids: number[],
    messages: RawMessage[],
    structure: Structure | undefined,
    bad: Set<number>,
    failures: MessageFailure[],
    incoming: PreparedBatch['incoming'],
  ): Promise<Structure | undefined> {
    const groups = await conn.runAndReadAll(
      `SELECT TRY(json_structure(payload)) AS s, list(id ORDER BY id) AS ids FROM ${raw} ${ids.length === messages.length ? '' : `WHERE id IN (${ids.join(',')})`} ` +
        `GROUP BY s ORDER BY count(*) DESC, s`,
    );
    const { maxColumns, mapThreshold, newColumns } = this.rules;
    const violation = (column: string, policy: 'freeze' | 'discard_row' | 'discard_value', rows: number) => {
      const v = incoming.violations.find((x) => x.column === column && x.policy === policy);
      if (v) v.rows += rows;
      else incoming.violations.push({ model: 'incoming', column, kind: 'new_column', policy, rows });
    };
    let merged = structure;
    let fields = countFields(merged);
    for (const [sv, idList] of groups.getRows()) {
      const members = (idList as { items: unknown[] }).items.map(Number);
      let reason: string | undefined;
      if (sv === null) {
        for (const i of members) {
          bad.add(i);
          failures.push({ index: i, stage: 'decode', error: await this.jsonError(conn, messages[i].payload) });
        }
        continue;
      }
      const st = JSON.parse(String(sv)) as Structure;
      if (!isObjectStructure(st)) {
        reason = `message is ${Array.isArray(st) ? 'a JSON array' : 'a JSON scalar'}, not an object`;
      } else {
        // The first messages establish the schema whatever the contract: it governs what comes after.
        const policy = merged === undefined ? 'evolve' : newColumns;
        // At the cap nothing can be added: merging without adding is cheaper (no copy of the schema).
        const full = policy === 'evolve' && fields >= maxColumns;
        const r = mergeStructure(merged, st, '$', { newFields: policy === 'evolve' && !full ? 'add' : 'skip', mapThreshold });
        if (r.conflict) reason = `type conflict: ${r.conflict}`;
        else if (full && r.skipped.length) {
          reason = `the message adds field ${r.skipped[0]}${r.skipped.length > 1 ? ` (and ${r.skipped.length - 1} more)` : ''} but incoming's schema has reached limits.max_columns (${maxColumns} fields)`;
        }
        else if (r.skipped.length && policy === 'freeze') {
          reason = `new field ${r.skipped[0]}${r.skipped.length > 1 ? ` (and ${r.skipped.length - 1} more)` : ''}: incoming's schema is frozen (contract.new_columns: freeze)`;
          violation(r.skipped[0], 'freeze', members.length);
        } else if (r.skipped.length && policy === 'discard_row') {
          for (const i of members) bad.add(i);
          violation(r.skipped[0], 'discard_row', members.length);
          continue;
        } else if (r.added.length && countFields(r.merged) > maxColumns) {
          reason = `the message adds field ${r.added[0]}${r.added.length > 1 ? ` (and ${r.added.length - 1} more)` : ''} but incoming's schema has reached limits.max_columns (${maxColumns} fields)`;
        } else {
          if (r.skipped.length) violation(r.skipped[0], 'discard_value', members.length);
          for (const c of r.collapsed) incoming.changes.push({ model: 'incoming', column: c, kind: 'type_change', from: 'STRUCT', to: 'JSON' });
          if (r.merged !== merged && (r.added.length || r.collapsed.length)) fields = countFields(r.merged);
          merged = r.merged;
        }
      }
      if (reason) {
        for (const i of members) {
          bad.add(i);
          failures.push({ index: i, stage: 'decode', error: reason });
        }
      }
    }
    return merged;
  }

  private async jsonError(conn: DuckDBConnection, payload: string): Promise<string> {
    if (payload.trim() === '') return 'empty message';
    try {
      await conn.run(`SELECT json($1::VARCHAR)`, [payload]);
      return 'invalid JSON';
    } catch (err) {
      return `invalid JSON: ${cleanError(err).replace(/^Conversion Error: /, '').replace(/^Invalid Input Error: /, '')}`;
    }
  }

  private async batchIds(): Promise<number[]> {
    const r = await this.conn.runAndReadAll(`SELECT ${MSG_COL} FROM ${this.current.batch} ORDER BY 1`);
    return r.getRows().map((x) => Number(x[0]));
  }

  /** Finds the failing messages among `ids`; returns the number of DAG runs spent. */
  private async isolate(ids: number[], found: MessageFailure[]): Promise<number> {
    if (ids.length === 0) return 0;
    const res = await this.attempt(`${MSG_COL} BETWEEN ${ids[0]} AND ${ids[ids.length - 1]}`);
    if (res.ok) return 1;
    if (res.refused) {
      found.push(...(await this.refuse(res.refused)));
      const gone = new Set(res.refused.map((f) => f.index));
      return 1 + (await this.isolate(ids.filter((i) => !gone.has(i)), found));
    }
    if (ids.length === 1) {
      found.push({ index: ids[0], stage: 'transform', error: res.error, model: res.model });
      await this.conn.run(`DELETE FROM ${this.current.batch} WHERE ${MSG_COL} = ${ids[0]}`);
      return 1;
    }
    const mid = Math.floor(ids.length / 2);
    return 1 + (await this.isolate(ids.slice(0, mid), found)) + (await this.isolate(ids.slice(mid), found));
  }

  /**
   * Runs every model over the whole batch; messages a `freeze` contract refuses go to the
   * failures and leave the batch, which runs again without them.
   */
  private async attemptPruning(direct?: Map<string, string>, rows?: Map<string, number>): Promise<Awaited<ReturnType<BatchExecutor['attempt']>>> {
    for (;;) {
      // Only this run's discards count (refusals stay: their messages have left the batch, and
      // so do those of incoming's contract, applied once at decode).
      this.report.violations = this.report.violations.filter((v) => v.policy === 'freeze' || v.model === 'incoming');
      const res = await this.attempt(null, direct, rows);
      if (res.ok || !res.refused) return res;
      this.current.failures.push(...(await this.refuse(res.refused)));
    }
  }

  /** Removes refused messages from the batch; returns their failures (counted in the report). */
  private async refuse(refused: MessageFailure[]): Promise<MessageFailure[]> {
    await this.conn.run(`DELETE FROM ${this.current.batch} WHERE ${MSG_COL} IN (${refused.map((f) => f.index).join(',')})`);
    for (const f of refused) {
      const v = this.report.violations.find((x) => x.model === f.model && x.column === f.column && x.kind === f.kind && x.policy === 'freeze');
      if (v) v.rows++;
      else this.report.violations.push({ model: f.model!, column: f.column!, kind: f.kind!, policy: 'freeze', rows: 1 });
    }
    return refused;
  }

  /** Runs a model with its contract (or, when its plan is a passthrough, as it is). */
  private async runModel(m: CompiledModel, target: string | undefined): Promise<{ rows?: number; refused?: MessageFailure[] }> {
    const table = `${MODEL_SCHEMA}.${ident(m.name)}`;
    for (;;) {
      let plan = this.schemas.cached(m.name, this.shape.key);
      if (!plan) {
        const d = await this.conn.runAndReadAll(`DESCRIBE (${m.sql})`);
        plan = await this.schemas.plan(m.name, this.shape.key, d.getRows().map((r) => ({ name: String(r[0]), type: String(r[1]) })));
      }
      if (plan.passthrough) {
        if (!target) {
          await this.conn.run(`CREATE OR REPLACE TABLE ${table} AS ${m.sql}`);
          return {};
        }
        const r = await this.conn.run(`COPY (${m.sql}) TO ${lit(target)} (FORMAT parquet, COMPRESSION lz4_raw)`);
        return { rows: Number(r.rowsChanged) };
      }
      const r = await applyContract(this.conn, m.name, m.sql, plan, { table, target }, this.report);
      if ('evolve' in r) {
        await this.schemas.evolve(m.name, r.evolve);
        continue;
      }
      if ('failures' in r) return { refused: r.failures.map((f) => ({ index: f.index, stage: 'transform', error: f.error, model: m.name, column: f.column, kind: f.kind })) };
      return target ? { rows: r.rows } : {};
    }
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
  ): Promise<{ ok: true } | { ok: false; error: string; model: string; refused?: MessageFailure[] }> {
    const where = filter ? ` WHERE ${filter}` : '';
    let shown: string | undefined;
    for (const m of this.models) {
      // A model sees only the metadata columns it mentions: `SELECT *` gets the message alone.
      const hide = this.current.addedMeta.filter((c) => !this.metaUsedBy.get(m.name)!.includes(c));
      const view = `SELECT *${hide.length ? ` EXCLUDE (${hide.map(ident).join(', ')})` : ''} FROM ${this.current.batch}${where}`;
      if (view !== shown) {
        await this.conn.run(`CREATE OR REPLACE VIEW incoming AS ${view}`);
        await this.conn.run(`CREATE OR REPLACE VIEW ${SOURCE_SCHEMA}.${ident(this.sourceName)} AS ${view}`);
        shown = view;
      }
      try {
        const target = direct?.get(m.name);
        const r = await this.runModel(m, target);
        if (r.refused) return { ok: false, error: r.refused[0].error, model: m.name, refused: r.refused };
        if (target) rows?.set(m.name, r.rows!);
      } catch (err) {
        // A full disk or a failing allocation would fail every message alike: never theirs.
        const infra = asInfraError(err, direct?.has(m.name) ? `writing the WAL segment of model ${m.name}` : `running model ${m.name}`);
        if (infra) throw infra;
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
    const r = await this.conn.runAndReadAll(`SELECT * EXCLUDE (${MSG_COL}) FROM ${MODEL_SCHEMA}.${ident(model)} ORDER BY ${MSG_COL}, rowid`);
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
