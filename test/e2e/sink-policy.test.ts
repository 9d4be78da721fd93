import fs from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { freePort, httpGet, jsonLogs, query, sluice, sluiceBg, tempDir, until, waitExit, writeFiles } from '../helpers/cli.js';
import { projectDeadLetters } from '../helpers/dlq.js';
import { addInput, normalise, plainRows, type ContractRow } from '../helpers/sink-contract.js';
import { metric, scrape } from '../helpers/metrics.js';
import { readWalState, type WalStateView } from '../helpers/wal.js';

// The per-sink error policy (issue 5, item 7) and several sinks per model (item 6), driven
// through the CLI. The failing sink is a real parquet sink whose model directory is replaced by
// a regular file: its mkdir and rename fail for real until the file is removed. Backoff timing,
// the circuit's cooldown and backpressure are tested on an injected clock in
// test/unit/pipeline.test.ts.

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

const MODEL_SQL = 'SELECT incoming.id::BIGINT AS id, incoming.name::VARCHAR AS name, incoming.amount::DOUBLE AS amount, incoming.flag::BOOLEAN AS flag, incoming.note::VARCHAR AS note FROM incoming\n';
const COLUMNS = ['id', 'name', 'amount', 'flag', 'note'];

interface Setup {
  /** Sink name -> policy and extra keys; each a parquet sink writing to out_<name>/. */
  sinks: Record<string, Record<string, unknown>>;
  follow?: boolean;
  batchSize?: number;
  walMaxBytes?: number;
}

function project(s: Setup): string {
  const root = tempDir('sluice-sink-policy-');
  dirs.push(root);
  const p = path.join(root, 'proj');
  const sinks = Object.fromEntries(Object.entries(s.sinks).map(([name, extra]) => [name, { type: 'parquet', path: `out_${name}`, ...extra }]));
  const follow = s.follow ? '  follow: true\n  poll_interval_ms: 50\n' : '';
  writeFiles(p, {
    'sluice.yml': s.walMaxBytes ? `wal:\n  max_bytes: ${s.walMaxBytes}\n` : '',
    'config/sources.yml': `source:\n  type: file\n  path: data/*.ndjson\n${follow}  batch_size: ${s.batchSize ?? 100}\n  batch_timeout_ms: 100\n  dlq: .sluice/dlq\n`,
    'config/sinks.yml': `sinks: ${JSON.stringify(sinks)}\n`,
    'config/models.yml': `max_age_seconds: 0.2\noverrides:\n  events:\n    sinks: ${JSON.stringify(Object.keys(s.sinks))}\n`,
    'models/events.sql': MODEL_SQL,
  });
  fs.mkdirSync(path.join(p, 'data'), { recursive: true });
  return p;
}

const modelDir = (p: string, sink: string) => path.join(p, `out_${sink}`, 'events');
function breakSink(p: string, sink: string): void {
  fs.mkdirSync(path.dirname(modelDir(p, sink)), { recursive: true });
  fs.writeFileSync(modelDir(p, sink), 'not a directory\n');
}
function fixSink(p: string, sink: string): void {
  fs.rmSync(modelDir(p, sink), { force: true });
}

async function rowsOf(p: string, sink: string): Promise<(string | null)[][]> {
  const dir = modelDir(p, sink);
  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory() || fs.readdirSync(dir).filter((f) => f.endsWith('.parquet')).length === 0) return [];
  return normalise(await query(`SELECT * FROM read_parquet('${dir}/*.parquet', union_by_name = true)`), COLUMNS);
}
const expected = (rows: ContractRow[]) => normalise(rows as unknown as Record<string, unknown>[], COLUMNS);

function walState(p: string): WalStateView {
  return readWalState(path.join(p, '.sluice/wal'));
}

describe('per-sink error policy', () => {
  it('on_error: dlq sends the rows of a flush the sink cannot take to the DLQ with the sink error, and the run goes on', async () => {
    const p = project({ sinks: { a: { retry: { max_attempts: 2, backoff_ms: 50 }, on_error: 'dlq' } } });
    const rows = plainRows(150);
    addInput({ id: '', dir: p }, 'a.ndjson', rows);
    breakSink(p, 'a');
    const r = sluice(['run', '--project', p, '--port', '0', '--log-level', 'warn']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/on_error: dlq/);
    const dlq = projectDeadLetters(p);
    expect(dlq).toHaveLength(150);
    for (const d of dlq) {
      expect(d.stage).toBe('sink');
      expect(d.model).toBe('events');
      expect(d.error).toMatch(/^sink a: parquet sink: writing events\/part-.* failed/);
      expect(d.source.sink).toBe('a');
    }
    expect(
      normalise(
        dlq.map((d) => JSON.parse(d.payload)),
        COLUMNS,
      ),
    ).toEqual(expected(rows));
    // The WAL is empty: the flush is settled, and a next run writes nothing again.
    expect(fs.readdirSync(path.join(p, '.sluice/wal/models/events'))).toEqual([]);
    fixSink(p, 'a');
    const again = sluice(['run', '--project', p, '--port', '0', '--log-level', 'warn']);
    expect(again.code, again.stderr).toBe(0);
    expect(await rowsOf(p, 'a')).toEqual([]);
    expect(projectDeadLetters(p)).toHaveLength(150);
    // `sluice dlq inspect` shows them with stage sink.
    const inspect = sluice(['dlq', 'inspect', '--project', p, '--format', 'json', '--limit', '3']);
    expect(inspect.code, inspect.stderr).toBe(0);
    expect(JSON.parse(inspect.stdout).map((x: { stage: string }) => x.stage)).toEqual(['sink', 'sink', 'sink']);
  });

  it('max_attempts: 1 applies on_error at the first failure, without a retry', async () => {
    const p = project({ sinks: { a: { retry: { max_attempts: 1, backoff_ms: 50 }, on_error: 'dlq' } } });
    addInput({ id: '', dir: p }, 'a.ndjson', plainRows(10));
    breakSink(p, 'a');
    const r = sluice(['run', '--project', p, '--port', '0', '--log-json']);
    expect(r.code, r.stderr).toBe(0);
    const failures = jsonLogs(r.stderr).filter((l) => l.sink === 'a' && /sink gave up/.test(String(l.msg)));
    expect(failures).toHaveLength(1);
    expect(jsonLogs(r.stderr).filter((l) => typeof l.retry_in_ms === 'number')).toHaveLength(0);
  });

  it('on_error: fail stops the run with exit 1 and keeps the WAL; the next run delivers every row once', async () => {
    const p = project({ sinks: { a: { retry: { max_attempts: 3, backoff_ms: 50 }, on_error: 'fail' } } });
    const rows = plainRows(130);
    addInput({ id: '', dir: p }, 'a.ndjson', rows);
    breakSink(p, 'a');
    const r = sluice(['run', '--project', p, '--port', '0', '--log-level', 'warn']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/sink a failed writing events\/part-\S+ \(3 attempts, on_error: fail\): parquet sink/);
    expect(r.stderr).not.toMatch(/\n\s+at /); // no stack trace below debug level
    expect(fs.readdirSync(path.join(p, '.sluice/wal/models/events')).filter((f) => f.endsWith('.parquet')).length).toBeGreaterThan(0);
    expect(walState(p).models.events.inflight?.name).toMatch(/^part-/);
    fixSink(p, 'a');
    const again = sluice(['run', '--project', p, '--port', '0', '--log-level', 'warn']);
    expect(again.code, again.stderr).toBe(0);
    expect(await rowsOf(p, 'a')).toEqual(expected(rows));
  });
});

describe('several sinks per model', () => {
  it('when one of two sinks fails, the other is written once and not again (even across a SIGKILL), the WAL keeps the rows, reading pauses at wal.max_bytes, and both get every row once repaired', async () => {
    const p = project({
      follow: true,
      walMaxBytes: 1,
      sinks: { a: { retry: { backoff_ms: 100, max_backoff_ms: 200 } }, b: { retry: { backoff_ms: 100, max_backoff_ms: 200 }, circuit: { failures: 1000 } } },
    });
    const first = plainRows(60);
    addInput({ id: '', dir: p }, 'a.ndjson', first);
    breakSink(p, 'b');
    const port = await freePort();
    let child = sluiceBg(['run', '--project', p, '--port', String(port), '--log-json']);
    let aFile = '';
    let aStat: fs.Stats | undefined;
    try {
      await until(async () => metric(await scrape(port).catch(() => ''), 'sluice_sink_errors_total', { sink: 'b' }) >= 3, 30_000);
      // a has the flush; the WAL state records it, and the segments stay for b.
      expect(await rowsOf(p, 'a')).toEqual(expected(first));
      aFile = path.join(modelDir(p, 'a'), fs.readdirSync(modelDir(p, 'a')).find((f) => f.endsWith('.parquet'))!);
      aStat = fs.statSync(aFile);
      const st = walState(p);
      expect(st.models.events.inflight?.done).toEqual(['a']);
      expect(fs.readdirSync(path.join(p, '.sluice/wal/models/events')).filter((f) => f.endsWith('.parquet')).length).toBeGreaterThan(0);
      // Retries of b do not write a again.
      const text = await scrape(port);
      expect(metric(text, 'sluice_sink_write_duration_seconds_count', { sink: 'a' })).toBe(1);
      expect(metric(text, 'sluice_sink_rows_written_total', { sink: 'a' })).toBe(60);
      // Reading is paused: new input is not read (nor acknowledged) while b fails and the WAL is full.
      const ready = await httpGet(`http://127.0.0.1:${port}/readyz`);
      expect(ready.status).toBe(503);
      expect(ready.body).toMatch(/reading paused/);
      const position = JSON.stringify(st.position);
      addInput({ id: '', dir: p }, 'b.ndjson', plainRows(40, 61));
      // Two more retries of b while paused: the loop went round with the new input there to read.
      const errors = metric(await scrape(port), 'sluice_sink_errors_total', { sink: 'b' });
      await until(async () => metric(await scrape(port), 'sluice_sink_errors_total', { sink: 'b' }) >= errors + 2, 30_000, 50, 'two more failed retries of sink b while reading is paused');
      expect(JSON.stringify(walState(p).position)).toBe(position);
      expect(metric(await scrape(port), 'sluice_messages_received_total')).toBe(60);
      child.kill('SIGKILL');
      await waitExit(child);
      // A restart retries only b.
      child = sluiceBg(['run', '--project', p, '--port', String(port), '--log-json']);
      await until(async () => metric(await scrape(port).catch(() => ''), 'sluice_sink_errors_total', { sink: 'b' }) >= 2, 30_000);
      expect(metric(await scrape(port), 'sluice_sink_write_duration_seconds_count', { sink: 'a' })).toBe(0);
      expect(fs.statSync(aFile).mtimeMs).toBe(aStat.mtimeMs);
      expect(fs.statSync(aFile).ino).toBe(aStat.ino);
      fixSink(p, 'b');
      const all = [...first, ...plainRows(40, 61)];
      await until(async () => (await rowsOf(p, 'b')).length === 100 && (await rowsOf(p, 'a')).length === 100, 30_000, 200);
      child.kill('SIGTERM');
      expect(await waitExit(child, 30_000), child.err().slice(-2000)).toEqual({ code: 0, signal: null });
      expect(await rowsOf(p, 'a')).toEqual(expected(all));
      expect(await rowsOf(p, 'b')).toEqual(expected(all));
      expect(fs.statSync(aFile).mtimeMs).toBe(aStat.mtimeMs);
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
    }
  }, 120_000);
});

describe('config', () => {
  it('accepts sink: a and sinks: [a, b]; unknown sink names and policy keys are errors with file, key and line', () => {
    const p = project({ sinks: { a: {}, b: {} } });
    expect(sluice(['validate', '--project', p]).code).toBe(0);
    writeFiles(p, {
      'config/models.yml': 'overrides:\n  events:\n    sinks: [a, nope]\n',
      'config/sinks.yml':
        'sinks:\n  a:\n    type: parquet\n    path: out_a\n    on_error: drop\n    retry:\n      max_attempts: 0\n  b:\n    type: parquet\n    path: out_b\n    circuit: { failures: 2, cooldown: 5 }\n',
    });
    const r = sluice(['validate', '--project', p]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('config/sinks.yml:5: sinks.a.on_error:');
    expect(r.stderr).toContain('config/sinks.yml:7: sinks.a.retry.max_attempts:');
    expect(r.stderr).toContain('config/sinks.yml:11: sinks.b.circuit.cooldown: unknown key "cooldown"');
    expect(r.stderr).toContain('config/models.yml:3: overrides.events.sinks.1: unknown sink "nope" (sinks: a, b)');
    writeFiles(p, {
      'config/models.yml': 'overrides:\n  events:\n    sink: b\n',
      'config/sinks.yml': 'sinks:\n  a: { type: parquet, path: out_a }\n  b: { type: parquet, path: out_b, on_error: dlq }\n',
    });
    expect(sluice(['validate', '--project', p]).code).toBe(0);
  });
});
