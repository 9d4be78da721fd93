import fs from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { orderMessage } from '../../src/connectors/generator/generator-source.js';
import { freePort, httpGet, parquetFiles, query, sluice, sluiceBg, tempDir, until, waitExit, writeFiles } from '../helpers/cli.js';
import { tryWalState } from '../helpers/wal.js';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

function project(files: Record<string, string> = {}, messages = 50): string {
  const root = tempDir();
  dirs.push(root);
  expect(sluice(['init', 'proj', '--template', 'minimal'], { cwd: root }).code).toBe(0);
  const p = path.join(root, 'proj');
  const lines: string[] = [];
  for (let i = 0; i < messages; i++) lines.push(orderMessage(i, 3));
  writeFiles(p, { 'data/orders.ndjson': lines.join('\n') + '\n', ...files });
  return p;
}

const followSource = 'source:\n  type: file\n  path: data/*.ndjson\n  follow: true\n  poll_interval_ms: 50\n  batch_size: 100\n  batch_timeout_ms: 100\n  dlq: .sluice/dlq\n';

async function countRows(glob: string): Promise<number> {
  if (!fs.existsSync(path.dirname(glob.split('*')[0]))) return 0;
  try {
    const r = await query(`SELECT count(*) AS n FROM read_parquet('${glob}')`);
    return Number(r[0].n);
  } catch {
    return 0;
  }
}

describe('sluice run', () => {
  it('resumes exactly where the last run stopped', async () => {
    const p = project({}, 40);
    expect(sluice(['run', '--project', p, '--port', '0']).code).toBe(0);
    const more: string[] = [];
    for (let i = 40; i < 70; i++) more.push(orderMessage(i, 3));
    fs.appendFileSync(path.join(p, 'data/orders.ndjson'), more.join('\n') + '\n');
    fs.writeFileSync(path.join(p, 'data/second.ndjson'), orderMessage(70, 3) + '\n');
    expect(sluice(['run', '--project', p, '--port', '0']).code).toBe(0);
    const rows = await query(`SELECT count(*) AS n, count(DISTINCT order_id) AS d, max(order_id) AS mx FROM read_parquet('${p}/output/orders/*.parquet')`);
    expect(rows[0]).toEqual({ n: '71', d: '71', mx: '71' });
    expect(parquetFiles(path.join(p, 'output/orders'))).toHaveLength(2);
  });

  it('models see the input file and line as _topic and _offset', async () => {
    const p = project({ 'models/lines.sql': 'SELECT incoming.order_id, incoming._topic AS file, incoming._offset AS line FROM incoming\n' }, 3);
    expect(sluice(['run', '--project', p, '--port', '0']).code).toBe(0);
    const rows = await query(`SELECT * FROM read_parquet('${p}/output/lines/*.parquet') ORDER BY line`);
    expect(rows).toEqual([1, 2, 3].map((i) => ({ order_id: String(i), file: 'data/orders.ndjson', line: String(i) })));
  });

  it('follows files, flushes by age, and on SIGTERM finishes, flushes and exits 0', async () => {
    const p = project({ 'config/sources.yml': followSource, 'config/models.yml': 'max_age_seconds: 0.5\n' }, 20);
    const child = sluiceBg(['run', '--project', p, '--port', '0']);
    await until(async () => (await countRows(`${p}/output/orders/*.parquet`)) === 20, 20_000);
    const more: string[] = [];
    for (let i = 20; i < 45; i++) more.push(orderMessage(i, 3));
    fs.appendFileSync(path.join(p, 'data/orders.ndjson'), more.join('\n') + '\n');
    await until(async () => (await countRows(`${p}/output/orders/*.parquet`)) === 45, 20_000);
    // Lines written after the last flush are still delivered on shutdown.
    fs.appendFileSync(path.join(p, 'data/orders.ndjson'), orderMessage(45, 3) + '\n');
    await until(() => {
      const s = tryWalState(path.join(p, '.sluice/wal'));
      return s?.position?.ordinal === 46;
    });
    child.kill('SIGTERM');
    const res = await waitExit(child);
    expect(res.code, child.err()).toBe(0);
    const rows = await query(`SELECT count(*) AS n, count(DISTINCT order_id) AS d FROM read_parquet('${p}/output/orders/*.parquet')`);
    expect(rows[0]).toEqual({ n: '46', d: '46' });
  });

  it('a SIGTERM during start-up still ends in a graceful stop (exit 0)', async () => {
    const p = project({ 'config/sources.yml': 'source:\n  type: generator\n  count: 0\n  rate: 500\n' });
    const child = sluiceBg(['run', '--project', p, '--port', '0']);
    // While it is still starting: DuckDB's library is being loaded (mapped), the source not yet read.
    const loadingDuckDB = () => {
      try {
        return fs.readFileSync(`/proc/${child.pid}/maps`, 'utf8').includes('duckdb');
      } catch {
        return false;
      }
    };
    await until(loadingDuckDB, 10_000, 5);
    const startedReading = child.err().includes('reading from the source');
    child.kill('SIGTERM');
    expect(await waitExit(child), child.err()).toEqual({ code: 0, signal: null });
    expect(startedReading).toBe(false);
    expect(child.err()).toMatch(/stopping: finishing the batch in flight/);
  });

  it('serves /healthz, /readyz and /metrics', async () => {
    const p = project({ 'config/sources.yml': followSource, 'config/models.yml': 'max_age_seconds: 0.3\n' }, 30);
    const port = await freePort();
    const child = sluiceBg(['run', '--project', p, '--port', String(port)]);
    try {
      await until(async () => (await countRows(`${p}/output/orders/*.parquet`)) === 30, 20_000);
      expect((await httpGet(`http://127.0.0.1:${port}/healthz`)).status).toBe(200);
      const ready = await httpGet(`http://127.0.0.1:${port}/readyz`);
      expect(ready.status).toBe(200);
      expect(JSON.parse(ready.body)).toEqual({ ready: true, reasons: [] });
      const m = (await httpGet(`http://127.0.0.1:${port}/metrics`)).body;
      expect(m).toMatch(/sluice_messages_received_total\{source="default"\} 30/);
      expect(m).toMatch(/sluice_rows_total\{model="orders"\} 30/);
      expect(m).toMatch(/sluice_batch_duration_seconds_count \d+/);
      expect(m).toMatch(/sluice_flushes_total\{model="orders",result="ok"\} [1-9]/);
      expect(m).toMatch(/sluice_flush_duration_seconds_bucket/);
      expect(m).toMatch(/sluice_wal_bytes \d+/);
      expect(m).toMatch(/sluice_ready 1/);
      expect((await httpGet(`http://127.0.0.1:${port}/nope`)).status).toBe(404);
    } finally {
      child.kill('SIGTERM');
      await waitExit(child);
    }
  });

  it('grows the schema when messages gain fields, nested ones included, in one output file', async () => {
    const p = project(
      {
        'config/sources.yml': 'source:\n  type: file\n  path: data/*.ndjson\n  batch_size: 1\n',
        'models/orders.sql': 'SELECT * FROM incoming\n',
        'models/purchases.sql': 'SELECT incoming.order_id, unnest AS item FROM incoming, unnest(incoming.items)\n',
        'data/orders.ndjson':
          [
            '{"order_id": 1, "items": []}',
            '{"order_id": 2, "items": [{"sku": "a"}]}',
            '{"order_id": 3, "items": [{"sku": "b", "discount": 0.5}], "coupon": "X"}',
            '{"order_id": 4.5, "items": [{"sku": "c"}]}',
          ].join('\n') + '\n',
      },
      0,
    );
    const r = sluice(['run', '--project', p, '--port', '0']);
    expect(r.code, r.stderr).toBe(0);
    expect(fs.readdirSync(path.join(p, 'output/orders'))).toHaveLength(1);
    const o = await query(`SELECT order_id, coupon, len(items) AS n FROM read_parquet('${p}/output/orders/*.parquet') ORDER BY order_id`);
    expect(o).toEqual([
      { order_id: 1, coupon: null, n: '0' },
      { order_id: 2, coupon: null, n: '1' },
      { order_id: 3, coupon: 'X', n: '1' },
      { order_id: 4.5, coupon: null, n: '1' },
    ]);
    const pr = await query(`SELECT order_id, item.sku AS sku, item.discount AS discount FROM read_parquet('${p}/output/purchases/*.parquet') ORDER BY order_id`);
    expect(pr).toEqual([
      { order_id: 2, sku: 'a', discount: null },
      { order_id: 3, sku: 'b', discount: 0.5 },
      { order_id: 4.5, sku: 'c', discount: null },
    ]);
  });

  it('drops a corrupt WAL segment with a warning and goes on', async () => {
    const p = project({}, 30);
    // A first run stages and commits, but is killed before flushing anything.
    const r1 = sluice(['run', '--project', p, '--port', '0'], { env: { SLUICE_CRASH_AT: 'after-flush-intent', SLUICE_CRASH_AFTER: '1' } });
    expect(r1.code).toBe(-1);
    const dir = path.join(p, '.sluice/wal/models/purchases');
    const seg = fs.readdirSync(dir).find((f) => f.endsWith('.parquet'))!;
    const file = path.join(dir, seg);
    fs.writeFileSync(file, fs.readFileSync(file).subarray(0, 100)); // torn tail
    const r2 = sluice(['run', '--project', p, '--port', '0']);
    expect(r2.code, r2.stderr).toBe(0);
    expect(r2.stderr).toMatch(/dropped a corrupt WAL segment/);
    expect(fs.existsSync(path.join(p, '.sluice/wal/corrupt', `purchases-${seg}`))).toBe(true);
    expect(await countRows(`${p}/output/orders/*.parquet`)).toBe(30);
  });

  it('dead-letters failing messages alone and replays them once the model is fixed', async () => {
    const p = project(
      {
        'models/codes.sql': 'SELECT incoming.order_id, CAST(incoming.code AS INTEGER) AS code FROM incoming\n',
      },
      0,
    );
    const msgs = [1, 2, 3, 4, 5, 6].map((i) =>
      JSON.stringify({ order_id: i, user: { id: i, name: 'n' }, items: [], currency: 'EUR', placed_at: 't', code: i === 3 || i === 5 ? `x${i}` : String(i * 10) }),
    );
    msgs.splice(2, 0, '{"order_id": 7, "user": ');
    writeFiles(p, { 'data/orders.ndjson': msgs.join('\n') + '\n' });
    const r = sluice(['run', '--project', p, '--port', '0']);
    expect(r.code, r.stderr).toBe(0);
    expect((await query(`SELECT list(order_id ORDER BY order_id) AS ids FROM read_parquet('${p}/output/codes/*.parquet')`))[0].ids).toEqual(['1', '2', '4', '6']);
    // The good messages of the batch reached every model; the bad ones reached none.
    expect(await countRows(`${p}/output/orders/*.parquet`)).toBe(4);

    const insp = sluice(['dlq', 'inspect', '--project', p, '--format', 'json']);
    expect(insp.code).toBe(0);
    const recs = JSON.parse(insp.stdout) as { stage: string; error: string; model?: string; source: { line: number } }[];
    expect(recs.map((x) => [x.stage, x.source.line, x.model ?? null])).toEqual([
      ['decode', 3, null],
      ['transform', 4, 'codes'],
      ['transform', 6, 'codes'],
    ]);
    expect(recs[1].error).toMatch(/Could not convert string 'x3' to INT32/);
    expect(sluice(['dlq', 'inspect', '--project', p, '--limit', '1']).stdout).toMatch(/3 dead letter\(s\).*showing 1/);

    // Fix the model, replay: the two transform failures go through, the truncated JSON fails again.
    writeFiles(p, { 'models/codes.sql': 'SELECT incoming.order_id, coalesce(TRY_CAST(incoming.code AS INTEGER), -1) AS code FROM incoming\n' });
    const rep = sluice(['dlq', 'replay', '--project', p]);
    expect(rep.code, rep.stderr).toBe(0);
    expect(rep.stdout).toMatch(/replayed 3 dead letter\(s\): 2 delivered, 1 failed again/);
    const codes = await query(`SELECT order_id, code FROM read_parquet('${p}/output/codes/*.parquet') ORDER BY order_id`);
    expect(codes.map((c) => [c.order_id, c.code])).toEqual([
      ['1', 10],
      ['2', 20],
      ['3', -1],
      ['4', 40],
      ['5', -1],
      ['6', 60],
    ]);
    const left = JSON.parse(sluice(['dlq', 'inspect', '--project', p, '--format', 'json']).stdout) as { stage: string }[];
    expect(left.map((x) => x.stage)).toEqual(['decode']);
    expect(fs.readdirSync(path.join(p, '.sluice/dlq')).filter((f) => f.startsWith('replay-'))).toEqual([]);
  });
});
