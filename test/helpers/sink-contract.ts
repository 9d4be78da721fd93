import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { freePort, httpGet, sluice, sluiceBg, tempDir, until, waitExit, writeFiles } from './cli.js';

/*
 * The contract every sink must pass (issue 5, item 9), against its real service.
 *
 * How to wire a sink in (one test file per sink, e.g. test/e2e/postgres-contract.test.ts):
 *
 *   import { sinkContract, type SinkUnderTest } from '../helpers/sink-contract.js';
 *   const pg: SinkUnderTest = {
 *     name: 'postgres', idempotent: true,
 *     config: (t) => ({ type: 'postgres', url: '...', table: `events_${t.id}` }),
 *     readRows: async (t, model) => ...SELECT * FROM events_<id>...,
 *     breakIt: async (t) => ..., fixIt: async (t) => ...,
 *   };
 *   sinkContract(pg);
 *
 * Each scenario makes a fresh project (a directory `t.dir`) whose file source reads NDJSON
 * messages, one model `events` (columns below) and one sink: the one `config(t)` returns, as it
 * would stand under `sink:` in config/sinks.yml (relative paths resolve against `t.dir`). The
 * scenario drives the real CLI (`sluice run`, dist/: build first) and then reads back what the
 * sink holds with `readRows(t, 'events')`. `t.id` is unique per scenario (lowercase letters,
 * digits and _), so a sink can name its own table / topic / key prefix / bucket prefix by it.
 *
 * The model's columns: id BIGINT (never NULL, unique), name VARCHAR, amount DOUBLE,
 * flag BOOLEAN, note VARCHAR — and in the schema-growth scenario a later `extra` VARCHAR.
 * Read-back values are compared as text (String(v)); null and undefined both mean NULL, so a
 * sink may return numbers as numbers or strings, and a row written before a column existed may
 * lack the key or hold null.
 *
 * Scenarios:
 *   - idempotent rewrite: the process is SIGKILLed right after the sink wrote a flush and before
 *     the WAL recorded it (SLUICE_CRASH_AT=after-sink-write); the next run writes the same flush
 *     (same `name`) again. Idempotent sinks hold every row once; other sinks at least once and
 *     at most twice (at-least-once, documented in docs/sinks.md, Delivery guarantees).
 *   - schema growth: a second run's model has one more column; old rows read back with it NULL.
 *   - empty batch: input whose messages all fail to decode (they go to the DLQ) and a model that
 *     selects no row: the run exits 0 and the sink holds no row (readRows returns [] also when
 *     the target was never created).
 *   - unicode and NULLs: multibyte text, emoji, quotes, commas, newlines, tabs, backslashes and
 *     NULL in every nullable column come back unchanged.
 *   - large batch: `largeRows` (default 100,000) rows in two batches arrive exactly once.
 *   - failure then recovery: `breakIt(t)` makes writes fail for real (the real service refuses:
 *     a file where a directory must go, a revoked grant, a stopped listener ...), the run keeps
 *     the rows in the WAL and turns /readyz red; `fixIt(t)` repairs it and the same run
 *     delivers every row and exits 0. breakIt may be called before anything was written.
 */

/** One scenario's target: its unique id and the project directory. */
export interface SinkTarget {
  id: string;
  dir: string;
}

/** The service side of a sink, as the contract drives it. */
export interface SinkUnderTest {
  /** For test titles: the sink type. */
  name: string;
  /** What the sink declares (`Sink.idempotent`): a replayed flush cannot duplicate rows. */
  idempotent: boolean;
  /** The sink's config block (without policy keys; the contract adds a fast `retry`). */
  config(t: SinkTarget): Record<string, unknown> | Promise<Record<string, unknown>>;
  /** Every row the sink holds for `model` in target `t` (model columns only); [] if none. */
  readRows(t: SinkTarget, model: string): Promise<Record<string, unknown>[]>;
  /** Makes the sink's writes to `t` fail for real, until fixIt(). */
  breakIt(t: SinkTarget): Promise<void>;
  fixIt(t: SinkTarget): Promise<void>;
  /** Drops what a scenario wrote (tables, topics, keys); project directories are removed anyway. */
  cleanup?(t: SinkTarget): Promise<void>;
  /** Rows of the large-batch scenario (default 100,000). */
  largeRows?: number;
  /** True for formats that cannot tell '' from NULL (CSV): '' may read back as NULL. */
  emptyStringIsNull?: boolean;
}

export const CONTRACT_MODEL = 'events';
const MODEL_SQL = `SELECT incoming.id::BIGINT AS id, incoming.name::VARCHAR AS name, incoming.amount::DOUBLE AS amount,
  incoming.flag::BOOLEAN AS flag, incoming.note::VARCHAR AS note FROM incoming\n`;
const GROWN_SQL = MODEL_SQL.replace(' FROM incoming', ', incoming.extra::VARCHAR AS extra FROM incoming');

/** Policy keys added to every contract sink: retry quickly so scenarios stay short. */
const FAST_RETRY = { retry: { backoff_ms: 100, max_backoff_ms: 500 } };

export interface ContractRow {
  id: number;
  name: string | null;
  amount: number | null;
  flag: boolean | null;
  note: string | null;
  extra?: string | null;
}

/** Plain rows with ids from..from+n-1: every column set, a note on every third. */
export function plainRows(n: number, from = 1): ContractRow[] {
  return Array.from({ length: n }, (_, i) => {
    const id = from + i;
    return { id, name: `name ${id}`, amount: id + 0.5, flag: id % 2 === 0, note: id % 3 === 0 ? `note ${id}` : null };
  });
}

export const UNICODE_TEXTS = [
  'naïve café — ünïcödé',
  '日本語のテキスト',
  'emoji 🚀👩‍💻 and 𝄞',
  'quote " and \' , comma; semi',
  'new\nline\ttab\r\nCRLF',
  'back\\slash \\n not a newline',
  'zero-width\u200bjoiner',
  '',
];

/** Rows exercising unicode and NULLs: each text in name and note, NULLs in every nullable column. */
export function unicodeRows(): ContractRow[] {
  const rows: ContractRow[] = UNICODE_TEXTS.map((s, i) => ({ id: i + 1, name: s, amount: i * 1.25, flag: i % 2 === 0, note: [...s].reverse().join('') }));
  rows.push({ id: rows.length + 1, name: null, amount: null, flag: null, note: null });
  rows.push({ id: rows.length + 1, name: 'only name', amount: null, flag: null, note: null });
  rows.push({ id: rows.length + 1, name: null, amount: -0.5, flag: false, note: '' });
  return rows;
}

/** A value as text for comparison; undefined and null are both NULL. */
export function asText(v: unknown): string | null {
  if (v === null || v === undefined) return null;
  if (typeof v === 'object') return JSON.stringify(v);
  if (typeof v === 'number' && Number.isInteger(v)) return String(v);
  return String(v);
}

/** Rows normalised for comparison: sorted by id, each column as text, '' as NULL when the sink cannot tell. */
export function normalise(rows: Record<string, unknown>[], columns: string[], emptyIsNull = false): (string | null)[][] {
  return rows
    .map((r) =>
      columns.map((c) => {
        const t = asText(r[c]);
        return emptyIsNull && t === '' ? null : t;
      }),
    )
    .sort((a, b) => Number(a[0]) - Number(b[0]));
}

function expected(rows: ContractRow[], columns: string[], emptyIsNull = false): (string | null)[][] {
  return normalise(rows as unknown as Record<string, unknown>[], columns, emptyIsNull);
}

const COLUMNS = ['id', 'name', 'amount', 'flag', 'note'];

/** Writes a contract project for `sink` in `dir`: file source over data/*.ndjson, the `events` model. */
export async function contractProject(sut: SinkUnderTest, t: SinkTarget, opts: { batchSize?: number; sql?: string } = {}): Promise<void> {
  const sink = { ...(await sut.config(t)), ...FAST_RETRY };
  writeFiles(t.dir, {
    'config/sources.yml': `source:\n  type: file\n  path: data/*.ndjson\n  batch_size: ${opts.batchSize ?? 1000}\n  batch_timeout_ms: 200\n  dlq: .sluice/dlq\n`,
    'config/sinks.yml': `sink: ${JSON.stringify(sink)}\n`,
    'config/models.yml': 'max_age_seconds: 300\n',
    [`models/${CONTRACT_MODEL}.sql`]: opts.sql ?? MODEL_SQL,
  });
  fs.mkdirSync(path.join(t.dir, 'data'), { recursive: true });
}

/** Adds an input file of messages (one JSON object per line) the next run reads. */
export function addInput(t: SinkTarget, file: string, messages: (object | string)[]): void {
  const text = messages.map((m) => (typeof m === 'string' ? m : JSON.stringify(m))).join('\n');
  fs.writeFileSync(path.join(t.dir, 'data', file), text + (messages.length ? '\n' : ''));
}

/** Runs the pipeline to the end of its input; returns the CLI's result. */
export function runOnce(t: SinkTarget, env: NodeJS.ProcessEnv = {}): { code: number; stderr: string } {
  const r = sluice(['run', '--project', t.dir, '--port', '0', '--log-level', 'warn'], { env, timeout: 120_000 });
  return { code: r.code, stderr: r.stderr };
}

function dlqCount(t: SinkTarget): number {
  const dir = path.join(t.dir, '.sluice/dlq');
  if (!fs.existsSync(dir)) return 0;
  let n = 0;
  for (const f of fs.readdirSync(dir)) {
    if (!f.endsWith('.ndjson')) continue;
    n += fs.readFileSync(path.join(dir, f), 'utf8').split('\n').filter(Boolean).length;
  }
  return n;
}

/**
 * Defines the contract's scenarios for one sink, as a `describe` block. Call it at the top
 * level of a test file.
 */
export function sinkContract(sut: SinkUnderTest): void {
  const made: SinkTarget[] = [];
  let n = 0;
  const target = (): SinkTarget => {
    const t = { id: `c${process.pid}_${Date.now().toString(36)}_${n++}`.toLowerCase(), dir: path.join(tempDir(`sluice-${sut.name}-contract-`), 'proj') };
    fs.mkdirSync(t.dir, { recursive: true });
    made.push(t);
    return t;
  };
  afterAll(async () => {
    for (const t of made) {
      await sut.cleanup?.(t).catch(() => {});
      fs.rmSync(path.dirname(t.dir), { recursive: true, force: true });
    }
  });
  const read = async (t: SinkTarget, columns = COLUMNS) => normalise(await sut.readRows(t, CONTRACT_MODEL), columns, sut.emptyStringIsNull);

  describe(`sink contract: ${sut.name}`, () => {
    it('a flush written again after a crash (same name) is not duplicated, or at most once more when the sink is not idempotent', async () => {
      const t = target();
      await contractProject(sut, t, { batchSize: 100 });
      const rows = plainRows(250);
      addInput(t, 'a.ndjson', rows);
      const crashed = runOnce(t, { SLUICE_CRASH_AT: 'after-sink-write', SLUICE_CRASH_AFTER: '1' });
      expect(crashed.code, crashed.stderr).not.toBe(0);
      const between = await read(t);
      expect(between.length, 'the crash came after the sink wrote').toBeGreaterThan(0);
      const again = runOnce(t);
      expect(again.code, again.stderr).toBe(0);
      const got = await read(t);
      if (sut.idempotent) {
        expect(got).toEqual(expected(rows, COLUMNS));
      } else {
        const ids = new Map<string, number>();
        for (const r of got) ids.set(r[0]!, (ids.get(r[0]!) ?? 0) + 1);
        expect([...ids.keys()].sort()).toEqual(rows.map((r) => String(r.id)).sort());
        for (const c of ids.values()) expect(c).toBeLessThanOrEqual(2);
        expect(new Set(got.map((r) => JSON.stringify(r)))).toEqual(new Set(expected(rows, COLUMNS).map((r) => JSON.stringify(r))));
      }
    });

    it('schema growth: a model that gains a column between runs keeps old rows (NULL there) and adds the new', async () => {
      const t = target();
      await contractProject(sut, t);
      const first = plainRows(40);
      addInput(t, 'a.ndjson', first);
      const r1 = runOnce(t);
      expect(r1.code, r1.stderr).toBe(0);
      writeFiles(t.dir, { [`models/${CONTRACT_MODEL}.sql`]: GROWN_SQL });
      const second = plainRows(30, 41).map((r) => ({ ...r, extra: `x${r.id}` }));
      addInput(t, 'b.ndjson', second);
      const r2 = runOnce(t);
      expect(r2.code, r2.stderr).toBe(0);
      const cols = [...COLUMNS, 'extra'];
      expect(await read(t, cols)).toEqual(expected([...first.map((r) => ({ ...r, extra: null })), ...second], cols));
    });

    it('empty batches: messages that all fail, and a model that selects nothing, write no row', async () => {
      const t = target();
      await contractProject(sut, t);
      addInput(t, 'a.ndjson', ['not json', '{"id": ', '[1,2]']);
      const r1 = runOnce(t);
      expect(r1.code, r1.stderr).toBe(0);
      expect(dlqCount(t)).toBe(3);
      expect(await read(t)).toEqual([]);
      writeFiles(t.dir, { [`models/${CONTRACT_MODEL}.sql`]: MODEL_SQL.replace('FROM incoming', 'FROM incoming WHERE incoming.id < 0') });
      addInput(t, 'b.ndjson', plainRows(20));
      const r2 = runOnce(t);
      expect(r2.code, r2.stderr).toBe(0);
      expect(await read(t)).toEqual([]);
    });

    it('unicode and NULLs come back unchanged', async () => {
      const t = target();
      await contractProject(sut, t);
      const rows = unicodeRows();
      addInput(t, 'a.ndjson', rows);
      const r = runOnce(t);
      expect(r.code, r.stderr).toBe(0);
      expect(await read(t)).toEqual(expected(rows, COLUMNS, sut.emptyStringIsNull));
    });

    it(`a large flush (${sut.largeRows ?? 100_000} rows) arrives exactly once`, async () => {
      const t = target();
      await contractProject(sut, t, { batchSize: 50_000 });
      const total = sut.largeRows ?? 100_000;
      const rows = plainRows(total);
      addInput(t, 'a.ndjson', rows);
      const r = runOnce(t);
      expect(r.code, r.stderr).toBe(0);
      const got = await read(t);
      expect(got.length).toBe(total);
      expect(new Set(got.map((x) => x[0])).size).toBe(total);
      expect(got[0]).toEqual(expected(rows.slice(0, 1), COLUMNS)[0]);
      expect(got[total - 1]).toEqual(expected(rows.slice(-1), COLUMNS)[0]);
      expect(got.reduce((s, x) => s + Number(x[2]), 0)).toBe(rows.reduce((s, x) => s + x.amount!, 0));
    }, 180_000);

    it('failure then recovery: writes fail for real, /readyz turns red, the rows wait in the WAL and arrive once repaired', async () => {
      const t = target();
      await contractProject(sut, t, { batchSize: 100 });
      const rows = plainRows(300);
      addInput(t, 'a.ndjson', rows);
      await sut.breakIt(t);
      const port = await freePort();
      const child = sluiceBg(['run', '--project', t.dir, '--port', String(port), '--log-level', 'warn']);
      try {
        const red = await until(
          async () => {
            const r = await httpGet(`http://127.0.0.1:${port}/readyz`).catch(() => undefined);
            return r && r.status === 503 && /sink|flush/.test(r.body) ? r : undefined;
          },
          60_000,
          100,
        );
        expect(red.status).toBe(503);
        expect(await read(t).catch(() => [])).toEqual([]);
        expect(child.exitCode).toBeNull();
        await sut.fixIt(t);
        const res = await waitExit(child, 90_000);
        expect(res, child.err().slice(-3000)).toEqual({ code: 0, signal: null });
      } finally {
        if (child.exitCode === null) child.kill('SIGKILL');
      }
      const got = await read(t);
      if (sut.idempotent) expect(got).toEqual(expected(rows, COLUMNS));
      else expect(new Set(got.map((r) => JSON.stringify(r)))).toEqual(new Set(expected(rows, COLUMNS).map((r) => JSON.stringify(r))));
    }, 180_000);
  });
}
