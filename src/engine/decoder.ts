import { isUtf8 } from 'node:buffer';
import type { DuckDBConnection, DuckDBPreparedStatement } from '@duckdb/node-api';
import { SluiceError, errorMessage } from '../errors.js';
import { MSG_COL, reservedColumn } from '../sql/analyze.js';
import { ident, lit } from '../sql/quote.js';
import type { MessageMeta, PayloadBlock, RawMessage } from '../connectors/types.js';
import type { SourcePolicy } from '../connectors/shared-config.js';
import { countFields, isObjectStructure, mergeStructure, type Structure } from './structure.js';
import { DEFAULT_MESSAGE_LIMITS, overLimits, topLevelKeysOver, type MessageLimits } from './limits.js';
import { conformance, nonConforming, type Conformance } from './conform.js';
import { asInfraError } from './infra-errors.js';
import type { ContractKind, ContractReport } from './contracts.js';
import { blockOf, loadPayloads, NEWLINE, SEPARATOR, startLoad, stopwatch } from './batch-load.js';
import { Slices } from './slices.js';

/** Messages of one source partition in a batch: message indexes lo..hi. */
export interface PartitionRun {
  part: string;
  lo: number;
  hi: number;
}

/** The partitions of a batch's messages, as runs of consecutive messages. */
export function partitionRuns(messages: RawMessage[]): PartitionRun[] {
  const runs: PartitionRun[] = [];
  for (let i = 0; i < messages.length; i++) {
    const meta = messages[i].meta;
    const part = meta?.partition === undefined ? '' : `${meta.topic ?? ''}/${meta.partition}`;
    const last = runs.at(-1);
    if (last && last.part === part) last.hi = i;
    else runs.push({ part, lo: i, hi: i });
  }
  return runs;
}

/** Metadata columns of `incoming` (see MessageMeta) and how each is built from its JSON. */
export const META_COLUMNS: Record<string, { field: keyof MessageMeta; type: string; sql?: (x: string) => string }> = {
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

export interface MessageFailure {
  index: number;
  stage: 'decode' | 'transform';
  error: string;
  model?: string;
  /** A contract's refusal: the column and what it broke. */
  column?: string;
  kind?: ContractKind;
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
  /** The source partitions of the messages (set when a windowed model needs them). */
  partitions?: PartitionRun[];
  /** The partitions the source reads (Source.partitions), when it has them and a windowed model needs them. */
  assigned?: string[];
  /** A pipeline of two sources: the source of the messages, and the partitions each source reads. */
  origin?: string;
  assignedBy?: Map<string, string[] | undefined>;
  /** Messages the models skip: a shared window state store says another worker handled them, or holds their partition (see WindowSet.begin). */
  skip?: Set<number>;
  /** The batch's messages (handlers give each row its message's metadata). */
  messages?: RawMessage[];
  /** Messages that failed to decode (their failures are in `failures`). */
  bad: Set<number>;
  failures: MessageFailure[];
  structure: Structure | undefined;
  timings: Record<string, number>;
  /** What decoding did to `incoming`'s schema: fields turned into JSON, messages or values dropped by its contract. */
  incoming: Pick<ContractReport, 'changes' | 'violations'>;
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

/** The schema of `incoming` as exact decoding grows it, with its field count (kept, not recounted). */
interface SchemaSoFar {
  merged: Structure | undefined;
  fields: number;
  /** True once `merged` is an object made by this decode, seen by nothing else: merged into in place. */
  own: boolean;
}

/** Counts `rows` messages (or values) that incoming's contract refused for a new column. */
function addViolation(incoming: PreparedBatch['incoming'], column: string, policy: 'freeze' | 'discard_row' | 'discard_value', rows: number): void {
  const v = incoming.violations.find((x) => x.column === column && x.policy === policy);
  if (v) v.rows += rows;
  else incoming.violations.push({ model: 'incoming', column, kind: 'new_column', policy, rows });
}

/**
 * The first half of a batch: loads the payloads into DuckDB and decodes them into the typed
 * rows of `incoming`, under the source's rules (see DecodeRules); what cannot be decoded is
 * isolated per message. Keeps the schema `incoming` has established (`structure`).
 */
export class BatchDecoder {
  /** The schema of `incoming` established by the messages seen so far (prepared batches included). */
  structure: Structure | undefined;
  private compiled: { structure: Structure | undefined; check: Conformance } | undefined;

  /** `metaColumns`: the metadata columns the models use (see metaColumnsUsed). */
  constructor(
    private readonly loadConn: DuckDBConnection,
    private readonly metaColumns: string[],
    private readonly rules: DecodeRules = DEFAULT_DECODE_RULES,
  ) {}

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
    this.refuseUnreadable(block, messages.length, bad, failures);
    // A source's block separates messages by its separator (a newline unless it says); a block
    // built here, by SEPARATOR, which a payload from a broker may hold: those batches go
    // through the appender.
    const { done: loading } = given
      ? await startLoad(conn, raw, block, block.separator ?? NEWLINE, bad)
      : payloads!.some((p) => p.includes(SEPARATOR))
        ? { done: loadPayloads(conn, raw, payloads!) }
        : await startLoad(conn, raw, block, SEPARATOR.charCodeAt(0), bad);
    const slow = await this.needingExactDecode(block, bad, failures);
    lap('check');
    const loaded = await loading;
    if (loaded !== messages.length) {
      throw new SluiceError('INTERNAL', `loading a batch of ${messages.length} messages gave ${loaded} rows (a payload holds the separator)`);
    }
    let meta: string | undefined;
    if (this.metaColumns.length) {
      meta = `__meta${lane}`;
      await loadPayloads(
        conn,
        meta,
        messages.map((m) => metaJson(m.meta)),
      );
    }
    lap('load');

    const incoming: PreparedBatch['incoming'] = { changes: [], violations: [] };
    const merged = await this.decodeInSamples(slow, block, raw, messages, bad, failures, incoming);
    if (bad.size < messages.length) this.structure = merged;
    lap('decode');
    const p: PreparedBatch = { lane, raw, meta, count: messages.length, messages, bad, failures, structure: this.structure, timings, addedMeta: [], incoming };
    await this.convert(p, `__batch${lane}`);
    lap('convert');
    return p;
  }

  /** Refuses, before anything is loaded, the messages that are not UTF-8 or are over limits.max_message_bytes. */
  private refuseUnreadable(block: PayloadBlock, count: number, bad: Set<number>, failures: MessageFailure[]): void {
    if (!isUtf8(block.data)) {
      for (let i = 0; i < count; i++) {
        if (isUtf8(block.data.subarray(block.starts[i], block.ends[i]))) continue;
        bad.add(i);
        failures.push({ index: i, stage: 'decode', error: 'invalid JSON: the message is not valid UTF-8' });
      }
    }
    const maxBytes = this.rules.limits.maxBytes;
    for (let i = 0; i < count; i++) {
      const size = block.ends[i] - block.starts[i];
      if (size <= maxBytes || bad.has(i)) continue;
      bad.add(i);
      failures.push({ index: i, stage: 'decode', error: `message is ${size} bytes, over limits.max_message_bytes (${maxBytes})` });
    }
  }

  /**
   * The fast path: the messages (not refused yet) whose raw text does not conform to the
   * established schema, so that DuckDB must decode them exactly. Refuses, among them, those
   * that are over a limit or add a key to a schema already at max_columns.
   */
  private async needingExactDecode(block: PayloadBlock, bad: Set<number>, failures: MessageFailure[]): Promise<number[]> {
    // With incoming's schema full, a message whose first fault is a new top-level key would be
    // refused at the cap after DuckDB decoded it: refuse it now (a stream that adds a key per
    // message then goes at the pace of the fast path).
    const { newColumns, maxColumns } = this.rules;
    const full = newColumns === 'evolve' && this.structure !== undefined && countFields(this.structure) >= maxColumns;
    const newTopKeys = full ? new Map<number, string>() : undefined;
    let slow = await nonConforming(block, this.conformance(this.structure), undefined, newTopKeys);
    if (bad.size) slow = slow.filter((i) => !bad.has(i));
    if (newTopKeys?.size) {
      slow = slow.filter((i) => {
        const key = newTopKeys.get(i);
        if (key === undefined) return true;
        bad.add(i);
        failures.push({ index: i, stage: 'decode', error: `the message adds field $.${key} but incoming's schema has reached limits.max_columns (${maxColumns} fields)` });
        return false;
      });
    }
    // Only messages the fast path refused can be over a limit (it refuses those): one linear
    // pass each, before DuckDB parses them, so that no message is ever taken apart deeper or
    // wider than the limits allow.
    const within: number[] = [];
    const slices = new Slices();
    for (const i of slow) {
      await slices.tick();
      const over = overLimits(block.data, block.starts[i], block.ends[i], this.rules.limits) ?? this.tooManyColumns(block, i);
      if (over === undefined) within.push(i);
      else {
        bad.add(i);
        failures.push({ index: i, stage: 'decode', error: over });
      }
    }
    return within;
  }

  /**
   * Decodes messages `slow` exactly, DECODE_SAMPLE at a time, starting from the established
   * schema; after a sample that widened it, the rest are checked against it again (more may
   * conform now). Returns the merged schema.
   */
  private async decodeInSamples(
    slow: number[],
    block: PayloadBlock,
    raw: string,
    messages: RawMessage[],
    bad: Set<number>,
    failures: MessageFailure[],
    incoming: PreparedBatch['incoming'],
  ): Promise<Structure | undefined> {
    let merged = this.structure;
    while (slow.length > 0) {
      const sample = slow.slice(0, DECODE_SAMPLE);
      const before = merged;
      merged = await this.decodeExactly(this.loadConn, raw, sample, messages, merged, bad, failures, incoming);
      slow = slow.slice(DECODE_SAMPLE);
      // The schema grew: more of the rest may conform now.
      if (merged !== before && slow.length > 0) slow = await nonConforming(block, this.conformance(merged), slow);
    }
    return merged;
  }

  /**
   * Why message `i` can never become a row of `incoming` under contract.new_columns evolve: more
   * distinct top-level keys than limits.max_columns (see topLevelKeysOver); else undefined.
   */
  private tooManyColumns(block: PayloadBlock, i: number): string | undefined {
    const { newColumns, maxColumns } = this.rules;
    if (newColumns !== 'evolve') return undefined;
    const n = topLevelKeysOver(block.data, block.starts[i], block.ends[i], maxColumns);
    return n === undefined ? undefined : `message has ${n} top-level keys, over limits.max_columns (${maxColumns})`;
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
    const cols = structure && isObjectStructure(structure) && Object.keys(structure).length > 0 ? `, unnest(json_transform(${raw}.payload, ${lit(JSON.stringify(structure))}))` : '';
    const { select: metaSelect, from: metaFrom, cols: added } = this.metaSql(raw, p.meta, structure);
    p.addedMeta = added;
    const convert = () => conn.run(`CREATE OR REPLACE TABLE ${table} AS SELECT ${raw}.id AS ${MSG_COL}${cols}${metaSelect} FROM ${raw}${metaFrom} ${notBad().replace('WHERE id', `WHERE ${raw}.id`)}`);
    try {
      await convert();
    } catch (err) {
      const infra = asInfraError(err, 'converting a batch');
      if (infra) throw infra;
      // Only when JavaScript accepted a message DuckDB cannot read (their JSON parsers differ
      // at the edges): dead-letter exactly those and convert the rest.
      if (!cols) throw err;
      const unreadable = await conn.runAndReadAll(`SELECT id, payload FROM ${raw} ${notBad() || 'WHERE true'} AND TRY(json_transform(payload, ${lit(JSON.stringify(structure))})) IS NULL`);
      if (unreadable.getRows().length === 0) throw err;
      await this.withJsonCheck(conn, async (check) => {
        for (const [id, payload] of unreadable.getRows()) {
          bad.add(Number(id));
          failures.push({ index: Number(id), stage: 'decode', error: await jsonError(check, String(payload ?? '')) });
        }
      });
      if (bad.size === p.count) return;
      await convert();
    }
    p.batch = table;
  }

  /**
   * Decodes messages `ids` with DuckDB's json_structure(): unparseable ones and those whose
   * structure conflicts with the schema are added to `bad` and `failures`; the others' structures
   * are merged into the schema, most common first, under the source's rules (see mergeGroup).
   * Returns the merged schema.
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
    const schema: SchemaSoFar = { merged: structure, fields: countFields(structure), own: false };
    // Messages of many shapes (each adding keys, say) cost JavaScript time each: the other
    // pipelines of the process get the thread back every few milliseconds.
    const slices = new Slices();
    for (const [sv, idList] of groups.getRows()) {
      await slices.tick();
      const members = (idList as { items: unknown[] }).items.map(Number);
      if (sv === null) {
        await this.withJsonCheck(conn, async (check) => {
          for (const i of members) {
            bad.add(i);
            failures.push({ index: i, stage: 'decode', error: await jsonError(check, messages[i].payload) });
          }
        });
        continue;
      }
      const reason = this.mergeGroup(JSON.parse(String(sv)) as Structure, members, messages, schema, bad, incoming);
      if (reason) {
        for (const i of members) {
          bad.add(i);
          failures.push({ index: i, stage: 'decode', error: reason });
        }
      }
    }
    return schema.merged;
  }

  /**
   * Merges `st`, the structure shared by messages `members`, into the schema under the source's
   * rules (see DecodeRules): a nested object past map_threshold keys becomes JSON; a new field
   * is added (evolve) up to max_columns, else the messages are refused; freeze refuses them,
   * discard_row drops them (into `bad`, with no failure), discard_value drops their new fields.
   * Returns why they are refused, or undefined when they are not.
   */
  private mergeGroup(st: Structure, members: number[], messages: RawMessage[], schema: SchemaSoFar, bad: Set<number>, incoming: PreparedBatch['incoming']): string | undefined {
    const { maxColumns, mapThreshold, newColumns } = this.rules;
    if (!isObjectStructure(st)) {
      // json_structure('{}') is JSON, as for any value it cannot type.
      const empty = st === 'JSON' && members.every((i) => /^\s*\{/.test(messages[i].payload));
      return empty ? 'message is an empty object: no field to make a row of' : `message is ${Array.isArray(st) ? 'a JSON array' : 'a JSON scalar'}, not an object`;
    }
    // The first messages establish the schema whatever the contract: it governs what comes after.
    const policy = schema.merged === undefined ? 'evolve' : newColumns;
    // At the cap nothing can be added: merging without adding is cheaper (no copy of the schema).
    const full = policy === 'evolve' && schema.fields >= maxColumns;
    const r = mergeStructure(schema.merged, st, '$', { newFields: policy === 'evolve' && !full ? 'add' : 'skip', mapThreshold, inPlace: schema.own });
    const refuse = (reason: string): string => {
      r.undo?.();
      return reason;
    };
    const reserved = r.added.find((x) => x.startsWith('$.') && reservedColumn(x.slice(2)) !== undefined);
    if (r.conflict) return refuse(r.conflict.includes('has an empty key') ? r.conflict : `type conflict: ${r.conflict}`);
    if (reserved)
      return refuse(`field ${reserved.slice(2)} is reserved by sluice (it names one of sluice's own columns); rename it in the producer, or drop it with contract.new_columns: discard_value`);
    if (full && r.skipped.length) {
      return refuse(
        `the message adds field ${r.skipped[0]}${r.skipped.length > 1 ? ` (and ${r.skipped.length - 1} more)` : ''} but incoming's schema has reached limits.max_columns (${maxColumns} fields)`,
      );
    }
    if (r.skipped.length && policy === 'freeze') {
      addViolation(incoming, r.skipped[0], 'freeze', members.length);
      return refuse(`new field ${r.skipped[0]}${r.skipped.length > 1 ? ` (and ${r.skipped.length - 1} more)` : ''}: incoming's schema is frozen (contract.new_columns: freeze)`);
    }
    if (r.skipped.length && policy === 'discard_row') {
      r.undo?.();
      for (const i of members) bad.add(i);
      addViolation(incoming, r.skipped[0], 'discard_row', members.length);
      return undefined;
    }
    // Without a collapse, the fields after the merge are those before plus those it added.
    const after = r.collapsed.length ? countFields(r.merged) : schema.fields + r.added.length;
    if (r.added.length && after > maxColumns) {
      return refuse(`the message adds field ${r.added[0]}${r.added.length > 1 ? ` (and ${r.added.length - 1} more)` : ''} but incoming's schema has reached limits.max_columns (${maxColumns} fields)`);
    }
    if (r.skipped.length) addViolation(incoming, r.skipped[0], 'discard_value', members.length);
    for (const c of r.collapsed) incoming.changes.push({ model: 'incoming', column: c, kind: 'type_change', from: 'STRUCT', to: 'JSON' });
    schema.fields = after;
    // A schema made in this call, seen by nothing else yet: later merges change it in place.
    if (r.merged !== schema.merged) schema.own = true;
    schema.merged = r.merged;
    return undefined;
  }

  /**
   * Runs `use` with DuckDB's JSON parse of one payload prepared once: a batch of invalid
   * messages costs a bind and a run each, not a statement parsed and planned each (a fifth of
   * the CPU).
   */
  private async withJsonCheck(conn: DuckDBConnection, use: (check: DuckDBPreparedStatement) => Promise<void>): Promise<void> {
    const check = await conn.prepare('SELECT json($1::VARCHAR)');
    try {
      await use(check);
    } finally {
      check.destroySync();
    }
  }
}

/** Why DuckDB cannot read `payload` as JSON (its parser's own words), `check` being withJsonCheck's. */
async function jsonError(check: DuckDBPreparedStatement, payload: string): Promise<string> {
  if (payload.trim() === '') return 'empty message';
  try {
    check.bindVarchar(1, payload);
    await check.run();
    return 'invalid JSON';
  } catch (err) {
    return `invalid JSON: ${cleanError(err)
      .replace(/^Conversion Error: /, '')
      .replace(/^Invalid Input Error: /, '')}`;
  }
}
