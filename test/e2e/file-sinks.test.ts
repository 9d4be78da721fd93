import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { orderMessage } from '../../src/connectors/generator/generator-source.js';
import { parquetFiles, query, sluice, tempDir, writeFiles } from '../helpers/cli.js';
import { readerSql } from '../helpers/file-sink-contract.js';

// The jsonl and csv sinks and event-time partitioning on local disk, through the real CLI; the
// files are read back with DuckDB. (The sink contract runs in jsonl-contract / csv-contract.)

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

const ORDERS_SQL = `SELECT incoming.order_id, incoming.user.name AS user_name, incoming.items, incoming.currency, incoming.placed_at,
  list_sum([i.price * i.quantity FOR i IN incoming.items]) AS total FROM incoming\n`;

function project(files: Record<string, string>, messages: string[]): string {
  const p = tempDir('sluice-file-sinks-');
  dirs.push(p);
  writeFiles(p, {
    'config/sources.yml': 'source:\n  type: file\n  path: data\n  batch_size: 100\n  batch_timeout_ms: 200\n  dlq: .sluice/dlq\n',
    'config/models.yml': 'max_age_seconds: 300\n',
    'models/orders.sql': ORDERS_SQL,
    'data/a.ndjson': messages.join('\n') + '\n',
    ...files,
  });
  return p;
}

function run(p: string, env: NodeJS.ProcessEnv = {}): void {
  const r = sluice(['run', '--project', p, '--port', '0', '--log-level', 'warn'], { env });
  expect(r.code, r.stderr).toBe(0);
}

/** Orders one every 7 hours from 2024-01-30, every other one with a +02:00 offset. */
function datedOrders(n: number): string[] {
  return Array.from({ length: n }, (_, i) => {
    const o = JSON.parse(orderMessage(i, 5)) as Record<string, unknown>;
    const t = new Date(Date.UTC(2024, 0, 30) + i * 7 * 3600_000);
    o.placed_at = i % 2 ? `${new Date(t.getTime() + 2 * 3600_000).toISOString().slice(0, 19)}+02:00` : t.toISOString();
    return JSON.stringify(o);
  });
}

const rel = (root: string) => (f: string) => path.relative(root, f);

describe('jsonl and csv sinks', () => {
  it('write the same rows as parquet: csv with a header, CRLF, RFC 4180 quoting and nested values as JSON; gzip when asked', async () => {
    const messages = Array.from({ length: 60 }, (_, i) => orderMessage(i, 3));
    // Quotes, commas and a line break in a value: RFC 4180 quoting must keep the row whole.
    const tricky = JSON.parse(orderMessage(60, 3)) as Record<string, unknown>;
    (tricky.user as Record<string, unknown>).name = 'O"Brien, Jr.\r\nline two';
    messages.push(JSON.stringify(tricky));
    const p = project(
      {
        'config/sinks.yml': 'sinks:\n  pq:\n    type: parquet\n    path: out/pq\n  js:\n    type: jsonl\n    path: out/js\n    compression: gzip\n  cs:\n    type: csv\n    path: out/cs\n',
        'config/models.yml': 'max_age_seconds: 300\noverrides:\n  orders:\n    sinks: [pq, js, cs]\n',
      },
      messages,
    );
    run(p);
    const files = (d: string) => parquetFiles(path.join(p, 'out', d, 'orders')).map(rel(path.join(p, 'out', d, 'orders')));
    expect(files('js')).toEqual(['part-000000000000-000000000060.jsonl.gz']);
    expect(files('cs')).toEqual(['part-000000000000-000000000060.csv']);
    const csvFile = path.join(p, 'out/cs/orders/part-000000000000-000000000060.csv');
    const text = fs.readFileSync(csvFile, 'utf8');
    expect(text.startsWith('order_id,user_name,items,currency,placed_at,total\r\n')).toBe(true);
    expect(text).toContain('"O""Brien, Jr.\r\nline two"');
    expect(text.split('\r\n').length).toBe(61 + 2 + 1); // header, 61 rows, one line break inside a value, trailing CRLF

    const order = 'ORDER BY order_id';
    const pq = await query(`SELECT order_id, user_name, to_json(items)::VARCHAR AS items, currency, placed_at, total FROM read_parquet('${p}/out/pq/orders/*.parquet') ${order}`);
    const js = await query(`SELECT order_id, user_name, to_json(items)::VARCHAR AS items, currency, placed_at, total FROM (${readerSql('jsonl', `${p}/out/js/orders/*.jsonl.gz`)}) ${order}`);
    const cs = await query(`SELECT order_id, user_name, items, currency, placed_at, total FROM read_csv('${csvFile}', header = true, all_varchar = true) ORDER BY order_id::INTEGER`);
    expect(pq).toHaveLength(61);
    // A JSON reader detects timestamps in text: compare instants.
    const instant = (v: unknown) => {
      const s = String(v).replace(' ', 'T');
      return new Date(/Z$/.test(s) ? s : `${s}Z`).toISOString();
    };
    const norm = (rows: Record<string, unknown>[]) =>
      rows.map((r) => ({
        ...r,
        order_id: String(r.order_id),
        items: JSON.stringify(JSON.parse(String(r.items))),
        placed_at: instant(r.placed_at),
        total: r.total === null ? null : Number(r.total).toFixed(2),
      }));
    expect(norm(js)).toEqual(norm(pq));
    expect(norm(cs)).toEqual(norm(pq));
  });

  it('partition jsonl and csv by expressions and by hive_date from the data time (UTC), committed per flush', async () => {
    const messages = datedOrders(90);
    const p = project(
      {
        'config/sinks.yml': [
          'sinks:',
          '  js:',
          '    type: jsonl',
          '    path: out/js',
          '    layout: hive_date',
          '    time_column: placed_at',
          '    partition_by: currency',
          '  cs:',
          '    type: csv',
          '    path: out/cs',
          '    partition_by:',
          '      - year(placed_at::TIMESTAMP)',
          "      - date_trunc('month', placed_at::TIMESTAMP)",
          "      - { name: size, expr: \"CASE WHEN len(items) > 1 THEN 'multi' ELSE 'single' END\" }",
          '',
        ].join('\n'),
        'config/models.yml': 'max_age_seconds: 300\noverrides:\n  orders:\n    sinks: [js, cs]\n',
      },
      messages,
    );
    run(p);
    const jsRoot = path.join(p, 'out/js/orders');
    const jsFiles = parquetFiles(jsRoot).map(rel(jsRoot));
    for (const f of jsFiles) expect(f).toMatch(/^part-\d+-\d+\/year=2024\/month=(01|02|03)\/day=\d\d\/currency=(EUR|USD|GBP)\/data_0\.jsonl$/);
    const rows = await query(
      `SELECT order_id, placed_at, year, month, day, currency FROM read_json('${jsRoot}/**/*.jsonl', format = 'newline_delimited', hive_partitioning = true, hive_types_autocast = false)`,
    );
    expect(rows).toHaveLength(90);
    for (const r of rows) expect(`${r.year}-${r.month}-${r.day}`).toBe(new Date(String(r.placed_at)).toISOString().slice(0, 10));
    // The source's currency comes back from the path; the files themselves do not repeat it.
    const inFile = await query(`SELECT * FROM read_json('${jsRoot}/**/*.jsonl', format = 'newline_delimited', hive_partitioning = false) LIMIT 1`);
    expect(Object.keys(inFile[0])).not.toContain('currency');

    const csRoot = path.join(p, 'out/cs/orders');
    const csFiles = parquetFiles(csRoot).map(rel(csRoot));
    for (const f of csFiles) expect(f).toMatch(/^part-\d+-\d+\/year=2024\/month=2024-0[123]-01\/size=(multi|single)\/data_0\.csv$/);
    const cs = await query(`SELECT order_id, items, month, size FROM read_csv('${csRoot}/**/*.csv', header = true, hive_partitioning = true, hive_types_autocast = false, all_varchar = true)`);
    expect(cs).toHaveLength(90);
    for (const r of cs) expect(r.size).toBe((JSON.parse(String(r.items)) as unknown[]).length > 1 ? 'multi' : 'single');
    expect(new Set(cs.map((r) => r.month))).toEqual(new Set(['2024-01-01', '2024-02-01']));
  });

  it('a partitioned jsonl flush killed before its commit is written once by the next run', async () => {
    const messages = datedOrders(300);
    const p = project(
      { 'config/sinks.yml': 'sink:\n  type: jsonl\n  path: out\n  layout: hive_date\n  time_column: placed_at\n', 'config/models.yml': 'max_file_bytes: 5000\nmax_age_seconds: 300\n' },
      messages,
    );
    const crashed = sluice(['run', '--project', p, '--port', '0', '--log-level', 'error'], { env: { SLUICE_CRASH_AT: 'sink-staged', SLUICE_CRASH_AFTER: '2' } });
    expect(crashed.code).toBe(-1);
    run(p);
    const got = await query(`SELECT count(*) AS n, count(DISTINCT order_id) AS d FROM read_json('${p}/out/orders/**/*.jsonl', format = 'newline_delimited')`);
    expect(got[0]).toEqual({ n: '300', d: '300' });
    const staging = path.join(p, 'out', '.staging');
    expect(fs.existsSync(staging) ? fs.readdirSync(staging, { recursive: true }).filter((f) => String(f).includes('.json')) : []).toEqual([]);
  });
});

describe('file sink config errors name the file, key and line', () => {
  const base = { 'data/a.ndjson': orderMessage(0, 1) + '\n' };
  const validate = (sinks: string) => {
    const p = project({ ...base, 'config/sinks.yml': sinks }, [orderMessage(0, 1)]);
    return sluice(['validate', '--project', p]);
  };

  it('a partition expression over a column the model lacks', () => {
    const r = validate('sink:\n  type: csv\n  path: out\n  partition_by:\n    - currency\n    - { name: day, expr: "date_trunc(\'day\', shipped_at)" }\n');
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/sinks\.yml:6: sink\.partition_by\.1: model orders \(.*orders\.sql\) has no column "shipped_at"/);
  });

  it('a time_column the model lacks, and hive_date without a time_column', () => {
    const r = validate('sinks:\n  a:\n    type: jsonl\n    path: out\n    layout: hive_date\n    time_column: shipped_at\n');
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/sinks\.yml:6: sinks\.a\.time_column: model orders .* has no column "shipped_at"/);
    const r2 = validate('sink:\n  type: parquet\n  path: out\n  layout: hive_date\n');
    expect(r2.code).toBe(2);
    expect(r2.stderr).toMatch(/sinks\.yml:4: sink\.layout: layout: hive_date needs time_column/);
  });

  it('an expression without a derivable name, an invalid expression, an S3 key on a local path', () => {
    const r = validate('sink:\n  type: csv\n  path: out\n  partition_by: [currency, "total > 5"]\n');
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/sinks\.yml:4: sink\.partition_by\.1: cannot derive a directory name from "total > 5": write \{ name: <key>, expr: /);
    const r2 = validate('sink:\n  type: csv\n  path: out\n  partition_by:\n    - { name: x, expr: "year(placed_at" }\n');
    expect(r2.code).toBe(2);
    expect(r2.stderr).toMatch(/sinks\.yml:4: sink\.partition_by: "year\(placed_at" is not one SQL expression/);
    const r3 = validate('sink:\n  type: jsonl\n  path: out\n  endpoint: http://127.0.0.1:9000\n');
    expect(r3.code).toBe(2);
    expect(r3.stderr).toMatch(/sinks\.yml:4: sink\.endpoint: endpoint applies to an s3:\/\/ path only/);
    const r4 = validate('sink:\n  type: jsonl\n  path: out\n  compression: zstd\n');
    expect(r4.code).toBe(2);
    expect(r4.stderr).toMatch(/sinks\.yml:4: sink\.compression: .*"none"\|"gzip"/);
  });
});
