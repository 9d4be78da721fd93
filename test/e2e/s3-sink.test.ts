import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { orderMessage } from '../../src/connectors/generator/generator-source.js';
import { killRepeatedly, query, sluice, tempDir, writeFiles } from '../helpers/cli.js';
import { readerSql } from '../helpers/file-sink-contract.js';
import { startS3, type S3Server } from '../helpers/s3.js';
import { sinkContract, type SinkUnderTest } from '../helpers/sink-contract.js';

// File sinks on S3-compatible storage: a real s3rver on loopback (its own process), objects read
// back with the S3 client and DuckDB. Crash test: `sluice run` SIGKILLed at random moments and
// at a fixed point between partition uploads and the _SUCCESS manifest.

const BUCKET = 'sluice-test';
let s3: S3Server;
const dirs: string[] = [];

beforeAll(async () => {
  s3 = await startS3();
  await s3.createBucket(BUCKET);
  // The sluice processes the tests start inherit these (the AWS SDK's default credential chain).
  Object.assign(process.env, s3.env);
});

afterAll(async () => {
  await s3?.stop();
  for (const d of [...dirs, s3?.dir]) if (d) fs.rmSync(d, { recursive: true, force: true });
});

function s3Config(prefix: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { type: 'parquet', path: `s3://${BUCKET}/${prefix}`, endpoint: s3.endpoint, force_path_style: true, ...extra };
}

/** Rows of every object of `type` under `prefix`, read with DuckDB after downloading them. */
async function readBack(prefix: string, type: 'parquet' | 'jsonl' | 'csv' = 'parquet'): Promise<Record<string, unknown>[]> {
  const keys = (await s3.keys(BUCKET, `${prefix}/`)).filter((k) => k.includes(`.${type}`));
  if (keys.length === 0) return [];
  const local = await s3.download(BUCKET, `${prefix}/`);
  dirs.push(local);
  return query(readerSql(type, `${local}/**/*.${type}*`));
}

const parquetOnS3: SinkUnderTest = {
  name: 'parquet-s3',
  idempotent: true,
  config: (t) => s3Config(t.id),
  readRows: (t, model) => readBack(`${t.id}/${model}`),
  // Breaking it for real: the S3 server stops listening; fixing it: it starts again.
  breakIt: () => s3.stop(),
  fixIt: () => s3.start(),
  largeRows: 50_000,
};

sinkContract(parquetOnS3);

function project(files: Record<string, string>, messages: string[]): string {
  const root = tempDir('sluice-s3-proj-');
  dirs.push(root);
  writeFiles(root, {
    'config/sources.yml': 'source:\n  type: file\n  path: data\n  batch_size: 500\n  batch_timeout_ms: 200\n  dlq: .sluice/dlq\n',
    'config/models.yml': 'max_age_seconds: 300\n',
    'data/a.ndjson': messages.join('\n') + '\n',
    ...files,
  });
  return root;
}

/** Orders placed one every 7 hours from 2024-01-30 (so they span months and days), with an offset. */
function datedOrders(n: number): string[] {
  return Array.from({ length: n }, (_, i) => {
    const o = JSON.parse(orderMessage(i, 5)) as Record<string, unknown>;
    const t = new Date(Date.UTC(2024, 0, 30) + i * 7 * 3600_000);
    // Every other order carries a +02:00 offset: its UTC day decides its directory.
    const local = new Date(t.getTime() + 2 * 3600_000).toISOString().slice(0, 19);
    o.placed_at = i % 2 ? `${local}+02:00` : t.toISOString();
    return JSON.stringify(o);
  });
}

function run(p: string): void {
  const r = sluice(['run', '--project', p, '--port', '0', '--log-level', 'warn']);
  expect(r.code, r.stderr).toBe(0);
}

function utcDay(iso: string): string {
  return new Date(iso).toISOString().slice(0, 10);
}

describe('file sinks on S3', () => {
  it('writes hive_date + expression partitions as objects, each flush with a _SUCCESS manifest listing them', async () => {
    const messages = datedOrders(120);
    const p = project(
      {
        'config/sinks.yml': `sink: ${JSON.stringify(s3Config('dated', { type: 'jsonl', layout: 'hive_date', time_column: 'placed_at', partition_by: [{ name: 'big', expr: 'total > 50' }] }))}\n`,
        'models/orders.sql': 'SELECT incoming.order_id, incoming.placed_at, list_sum([i.price * i.quantity FOR i IN incoming.items]) AS total FROM incoming\n',
      },
      messages,
    );
    const r = sluice(['run', '--project', p, '--port', '0', '--log-level', 'warn']);
    expect(r.code, r.stderr).toBe(0);
    const keys = await s3.keys(BUCKET, 'dated/');
    const data = keys.filter((k) => k.endsWith('.jsonl'));
    for (const k of data) expect(k).toMatch(/^dated\/orders\/part-[^/]+\/year=2024\/month=\d\d\/day=\d\d\/big=(true|false|__HIVE_DEFAULT_PARTITION__)\/data_0\.jsonl$/);
    // Each flush directory has a _SUCCESS naming exactly its objects.
    const flushes = new Set(data.map((k) => k.split('/').slice(0, 3).join('/')));
    expect(flushes.size).toBeGreaterThan(0);
    for (const f of flushes) {
      const local = await s3.download(BUCKET, `${f}/`);
      dirs.push(local);
      const manifest = JSON.parse(fs.readFileSync(path.join(local, '_SUCCESS'), 'utf8')) as { files: string[] };
      expect(manifest.files.map((x) => `dated/${x}`).sort()).toEqual(data.filter((k) => k.startsWith(`${f}/`)).sort());
    }
    // Every row sits in the directory of its UTC day.
    const local = await s3.download(BUCKET, 'dated/');
    dirs.push(local);
    const rows = await query(`SELECT order_id, placed_at, year, month, day FROM read_json('${local}/**/*.jsonl', format = 'newline_delimited', hive_partitioning = true, hive_types_autocast = false)`);
    expect(rows.length).toBe(120);
    expect(new Set(rows.map((x) => String(x.order_id))).size).toBe(120);
    for (const x of rows) expect(`${x.year}-${x.month}-${x.day}`).toBe(utcDay(String(x.placed_at)));
    expect(new Set(rows.map((x) => `${x.year}-${x.month}`)).size).toBeGreaterThan(1);
  });

  it('uploads a flush above part_size_mb in parts (multipart) and the object holds every row', async () => {
    const messages = Array.from({ length: 40_000 }, (_, i) => orderMessage(i, 9));
    const p = project(
      {
        'config/sources.yml': 'source:\n  type: file\n  path: data\n  batch_size: 40000\n  batch_timeout_ms: 200\n',
        'config/sinks.yml': `sink: ${JSON.stringify(s3Config('big', { type: 'csv', part_size_mb: 5 }))}\n`,
        'models/orders.sql': "SELECT incoming.order_id, incoming.user.name AS user_name, incoming.items, incoming.placed_at, repeat('x', 120) AS pad FROM incoming\n",
      },
      messages,
    );
    const r = sluice(['run', '--project', p, '--port', '0', '--log-level', 'warn']);
    expect(r.code, r.stderr).toBe(0);
    const keys = (await s3.keys(BUCKET, 'big/')).filter((k) => k.endsWith('.csv'));
    expect(keys).toHaveLength(1);
    const local = await s3.download(BUCKET, 'big/');
    dirs.push(local);
    const file = path.join(local, keys[0].slice('big/'.length));
    expect(fs.statSync(file).size).toBeGreaterThan(5 * 1024 * 1024);
    const got = await query(`SELECT count(*) AS n, count(DISTINCT order_id) AS d, min(order_id) AS lo, max(order_id) AS hi FROM read_csv('${file}', header = true)`);
    expect(got[0]).toEqual({ n: '40000', d: '40000', lo: '1', hi: '40000' });
    // Nested values are JSON text in CSV.
    const first = await query(`SELECT items FROM read_csv('${file}', header = true, all_varchar = true) WHERE order_id = '1'`);
    expect(JSON.parse(String(first[0].items))).toEqual(JSON.parse(messages[0]).items);
  }, 120_000);

  it('dedupe_key on S3: keys remembered in the bucket drop a message seen by an earlier flush', async () => {
    const first = Array.from({ length: 50 }, (_, i) => orderMessage(i, 2));
    const p = project(
      {
        'config/sinks.yml': `sink: ${JSON.stringify(s3Config('dedupe', { type: 'jsonl', dedupe_key: 'order_id' }))}\n`,
        'models/orders.sql': 'SELECT incoming.order_id, incoming.currency FROM incoming\n',
      },
      first,
    );
    run(p);
    // A second input file repeats orders 41..50 (a redelivery) and adds 51..80.
    writeFiles(p, { 'data/b.ndjson': Array.from({ length: 40 }, (_, i) => orderMessage(40 + i, 2)).join('\n') + '\n' });
    run(p);
    expect((await s3.keys(BUCKET, 'dedupe/.sluice-keys/orders/')).length).toBe(2);
    const rows = await readBack('dedupe/orders', 'jsonl');
    expect(rows.length).toBe(80);
    expect(new Set(rows.map((r) => String(r.order_id))).size).toBe(80);
  });

  it('a missing bucket or refused credentials stop the run with one clear line', () => {
    const p = project({ 'config/sinks.yml': `sink: ${JSON.stringify({ ...s3Config('x'), path: 's3://no-such-bucket/x' })}\n`, 'models/orders.sql': 'SELECT incoming.order_id FROM incoming\n' }, [
      orderMessage(0, 1),
    ]);
    const r = sluice(['run', '--project', p, '--port', '0']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/bucket "no-such-bucket" does not exist at http:\/\/127\.0\.0\.1:\d+/);
    expect(r.stderr).not.toMatch(/\n\s+at /);
    expect(r.stderr).not.toContain('Warning');
    const p2 = project({ 'config/sinks.yml': `sink: ${JSON.stringify(s3Config('x'))}\n`, 'models/orders.sql': 'SELECT incoming.order_id FROM incoming\n' }, [orderMessage(0, 1)]);
    const r2 = sluice(['run', '--project', p2, '--port', '0'], { env: { AWS_ACCESS_KEY_ID: 'WRONG', AWS_SECRET_ACCESS_KEY: 'WRONG' } });
    expect(r2.code).not.toBe(0);
    expect(r2.stderr).toMatch(/access to s3:\/\/sluice-test\/x denied .*AWS_ACCESS_KEY_ID/);
  });

  it('SIGKILLed during uploads again and again: after restarts every row is in the bucket exactly once, no partial object, every flush has its _SUCCESS', async () => {
    let total = 6000;
    const messages = Array.from({ length: total }, (_, i) => orderMessage(i, 13));
    const p = project(
      {
        'config/sources.yml': 'source:\n  type: file\n  path: data\n  batch_size: 200\n  batch_timeout_ms: 100\n',
        'config/models.yml': 'max_file_bytes: 20000\nmax_age_seconds: 0.2\n',
        'config/sinks.yml': `sink: ${JSON.stringify(s3Config('crash', { partition_by: 'currency' }))}\n`,
        'models/orders.sql': 'SELECT incoming.order_id, incoming.currency, incoming.user.id AS user_id FROM incoming\n',
      },
      messages,
    );
    const args = ['run', '--project', p, '--port', '0', '--log-level', 'error'];
    // A kill between a flush's partition uploads and its manifest, then kills at random moments.
    const fixed = sluice(args, { env: { SLUICE_CRASH_AT: 's3-partitions-uploaded', SLUICE_CRASH_AFTER: '3' } });
    expect(fixed.code, fixed.stderr).toBe(-1);
    // A run that drains the input before its kill gets 12,000 more orders in a new file.
    let extra = 0;
    const more = () => {
      writeFiles(p, { [`data/b${String(extra++).padStart(3, '0')}.ndjson`]: Array.from({ length: 12_000 }, (_, i) => orderMessage(total + i, 13)).join('\n') + '\n' });
      total += 12_000;
    };
    const kills = await killRepeatedly(args, {}, 6, more);
    expect(kills).toBe(6);
    // Whatever is visible between kills is whole: every object parses.
    const partial = await s3.download(BUCKET, 'crash/');
    dirs.push(partial);
    for (const f of fs
      .readdirSync(partial, { recursive: true })
      .map(String)
      .filter((x) => x.endsWith('.parquet'))) {
      await query(`SELECT count(*) FROM read_parquet('${path.join(partial, f)}')`);
    }
    const last = sluice(args);
    expect(last.code, last.stderr).toBe(0);
    const keys = await s3.keys(BUCKET, 'crash/');
    const data = keys.filter((k) => k.endsWith('.parquet'));
    for (const k of data) expect(k).toMatch(/^crash\/orders\/part-[^/]+\/currency=(EUR|USD|GBP)\/data_0\.parquet$/);
    const flushes = new Set(data.map((k) => k.split('/').slice(0, 3).join('/')));
    for (const f of flushes) expect(keys).toContain(`${f}/_SUCCESS`);
    const local = await s3.download(BUCKET, 'crash/');
    dirs.push(local);
    const rows = await query(`SELECT count(*) AS n, count(DISTINCT order_id) AS d, min(order_id) AS lo, max(order_id) AS hi FROM read_parquet('${local}/**/*.parquet')`);
    expect(rows[0]).toEqual({ n: String(total), d: String(total), lo: '1', hi: String(total) });
  }, 180_000);
});
