import fs from 'node:fs';
import path from 'node:path';
import { DuckDBInstance } from '@duckdb/node-api';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, jsonLogs, sluice, sluiceAsync, sluiceBg, tempDir, until, untilEvent, waitExit, writeFiles } from '../helpers/cli.js';
import { metric, scrape } from '../helpers/metrics.js';
import { jsonlRows } from '../helpers/output.js';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import { startS3 } from '../helpers/s3.js';
import { lockPostgres, myQuery, pgQuery } from '../helpers/sql-db.js';

// Lookup joins: models join reference tables (config/models.yml references:) by name. Files of
// the project (CSV, Parquet, JSON) and tables of the machine's PostgreSQL and MariaDB, loaded
// at start; a PostgreSQL reference refreshed during a run is seen within its refresh_interval,
// swapped in whole between batches (no batch joins two versions), and a refresh that fails
// keeps the last version.

const root = tempDir('sluice-references-');
const id = `${process.pid}`;
const pgTable = `ref_${id}`;
const myTable = `ref_${id}`;
let release: () => void = () => {};
beforeAll(async () => {
  release = await lockPostgres();
});
afterAll(async () => {
  fs.rmSync(root, { recursive: true, force: true });
  await pgQuery(`DROP TABLE IF EXISTS ${pgTable}`).catch(() => {});
  await myQuery(`DROP TABLE IF EXISTS ${myTable}`).catch(() => {});
  release();
});

const rows = jsonlRows;

const ORDERS = Array.from({ length: 500 }, (_, i) => ({ id: i, customer: i % 7, ccy: ['EUR', 'USD', 'GBP', 'JPY'][i % 4], amount: i * 3 }));

describe('lookup joins on reference files', () => {
  it('a model joins CSV, Parquet and JSON references by name: the output equals DuckDB joining the whole input', async () => {
    const p = path.join(root, 'files');
    writeFiles(p, {
      'config/sources.yml': 'source:\n  type: file\n  path: data\n  batch_size: 60\n',
      'config/sinks.yml': 'sink:\n  type: jsonl\n  path: ./output\n',
      'config/models.yml': 'references:\n  customers:\n    csv: reference/customers.csv\n  rates:\n    parquet: reference/rates.parquet\n  regions:\n    json: reference/regions.json\n',
      'models/enriched.sql': `SELECT o.id, c.name, c.country, g.region, o.amount * r.rate AS amount_eur
FROM incoming AS o
LEFT JOIN customers AS c ON c.id = o.customer
LEFT JOIN rates AS r ON r.ccy = o.ccy
LEFT JOIN regions AS g ON g.code = c.country
`,
      'data/orders.ndjson': `${ORDERS.map((o) => JSON.stringify(o)).join('\n')}\n`,
      // Customer 6 is not in the file: a left join gives NULLs.
      'reference/customers.csv': `id,name,country\n${[0, 1, 2, 3, 4, 5].map((i) => `${i},c${i},${['FR', 'US', 'JP'][i % 3]}`).join('\n')}\n`,
      'reference/regions.json': JSON.stringify([
        { code: 'FR', region: 'emea' },
        { code: 'US', region: 'amer' },
        { code: 'JP', region: 'apac' },
      ]),
      'tests/sample.json': JSON.stringify([{ id: 1, customer: 2, ccy: 'USD', amount: 10 }]),
    });
    const db = await DuckDBInstance.create(':memory:');
    const conn = await db.connect();
    try {
      await conn.run(`COPY (SELECT * FROM (VALUES ('EUR', 1.0), ('USD', 0.9), ('GBP', 1.2)) AS t(ccy, rate)) TO '${path.join(p, 'reference', 'rates.parquet')}' (FORMAT parquet)`);
      const v = sluice(['validate', '--project', p]);
      expect(v.stderr).toBe('');
      expect(v.code).toBe(0);
      const r = await sluiceAsync(['run', '--project', p, '--port', '0', '--log-json']);
      expect(r.code, r.stderr.slice(-2000)).toBe(0);
      const loaded = jsonLogs(r.stderr).filter((l) => l.msg === 'reference table loaded');
      expect(loaded.map((l) => [l.reference, l.rows])).toEqual([
        ['customers', 6],
        ['rates', 3],
        ['regions', 3],
      ]);
      const got = rows(p, 'enriched')
        .map((x) => JSON.stringify([x.id, x.name, x.country, x.region, x.amount_eur === null ? null : Number(x.amount_eur)]))
        .sort();
      const ref = (f: string) => `'${path.join(p, 'reference', f)}'`;
      const batch = await conn.runAndReadAll(`SELECT o.id, c.name, c.country, g.region, (o.amount * r.rate)::DOUBLE
        FROM read_json('${path.join(p, 'data', 'orders.ndjson')}') AS o
        LEFT JOIN read_csv(${ref('customers.csv')}, header = true) AS c ON c.id = o.customer
        LEFT JOIN read_parquet(${ref('rates.parquet')}) AS r ON r.ccy = o.ccy
        LEFT JOIN read_json_auto(${ref('regions.json')}) AS g ON g.code = c.country`);
      const expected = batch
        .getRowsJS()
        .map((x) => JSON.stringify(x.map((v) => (typeof v === 'bigint' ? Number(v) : v))))
        .sort();
      expect(got).toHaveLength(500);
      expect(got).toEqual(expected);
      expect(got.filter((x) => x.includes('null')).length).toBeGreaterThan(0);
    } finally {
      conn.closeSync();
      db.closeSync();
    }
    // The lineage shows each reference feeding the model that joins it; the docs site has a section for each.
    const lineage = JSON.parse(sluice(['lineage', '--project', p, '--format', 'json']).stdout) as { nodes: { id: string; type?: string }[]; edges: { from: string; to: string }[] };
    expect(lineage.nodes.filter((n) => n.id.startsWith('reference.')).map((n) => `${n.id} ${n.type}`)).toEqual(['reference.customers csv', 'reference.rates parquet', 'reference.regions json']);
    expect(lineage.edges.filter((e) => e.from.startsWith('reference.'))).toEqual(['customers', 'rates', 'regions'].map((r) => ({ from: `reference.${r}`, to: 'model.enriched' })));
    expect(sluice(['docs', 'generate', '--project', p]).code).toBe(0);
    const site = fs.readFileSync(path.join(p, '.sluice', 'docs', 'index.html'), 'utf8');
    for (const r of ['customers', 'rates', 'regions']) expect(site).toContain(`<section class="reference" id="reference-${r}"`);
    // sluice test joins the fixture with the same references.
    const t = sluice(['test', '--project', p]);
    expect(t.code, t.stderr).toBe(0);
    expect(t.stdout).toMatch(/1\s+\| c2\s+\| JP\s+\| apac\s+\| 9/);
  });

  it('a reference over max_rows, or one that cannot be read, stops the run with one line naming it and why', async () => {
    const p = path.join(root, 'refused');
    writeFiles(p, {
      'config/sources.yml': 'source:\n  type: file\n  path: data\n',
      'config/sinks.yml': 'sink:\n  type: jsonl\n  path: ./output\n',
      'config/models.yml': 'references:\n  customers:\n    csv: reference/customers.csv\n    max_rows: 5\n',
      'models/enriched.sql': 'SELECT o.id, c.name FROM incoming AS o LEFT JOIN customers AS c ON c.id = o.customer\n',
      'data/orders.ndjson': `${JSON.stringify(ORDERS[0])}\n`,
      'reference/customers.csv': `id,name\n${Array.from({ length: 8 }, (_, i) => `${i},c${i}`).join('\n')}\n`,
    });
    const r = await sluiceAsync(['run', '--project', p, '--port', '0']);
    expect(r.code).toBe(2);
    expect(r.stderr.trim().split('\n').at(-1)).toBe(
      `error: ${p}/config/models.yml:2: reference customers: 8 rows, over max_rows (5); raise max_rows if the memory is there, or load fewer rows (query:)`,
    );
    expect(fs.existsSync(path.join(p, 'output'))).toBe(false);

    fs.writeFileSync(path.join(p, 'config/models.yml'), `references:\n  customers:\n    postgres: postgres://postgres@127.0.0.1:5432/test\n    table: no_such_table_${id}\n`);
    const q = await sluiceAsync(['run', '--project', p, '--port', '0']);
    expect(q.code).toBe(2);
    expect(q.stderr.trim().split('\n').at(-1)).toMatch(new RegExp(`^error: ${p}/config/models.yml:2: reference customers: .*no_such_table_${id}.* does not exist`));
  });

  it('a reference file on S3 (s3rver) is read at start', async () => {
    const s3 = await startS3();
    try {
      await s3.createBucket('refs');
      await s3.client.send(new PutObjectCommand({ Bucket: 'refs', Key: 'crm/customers.csv', Body: 'id,name\n0,zero\n1,one\n' }));
      const p = path.join(root, 's3');
      writeFiles(p, {
        'config/sources.yml': 'source:\n  type: file\n  path: data\n',
        'config/sinks.yml': 'sink:\n  type: jsonl\n  path: ./output\n',
        'config/models.yml': `references:\n  customers:\n    csv: s3://refs/crm/customers.csv\n    endpoint: ${s3.endpoint}\n    force_path_style: true\n`,
        'models/enriched.sql': 'SELECT o.id, c.name FROM incoming AS o LEFT JOIN customers AS c ON c.id = o.customer\n',
        'data/orders.ndjson': `${ORDERS.slice(0, 3)
          .map((o) => JSON.stringify(o))
          .join('\n')}\n`,
      });
      const r = await sluiceAsync(['run', '--project', p, '--port', '0'], { env: s3.env });
      expect(r.code, r.stderr.slice(-2000)).toBe(0);
      expect(rows(p, 'enriched').sort((a, b) => Number(a.id) - Number(b.id))).toEqual([
        { id: 0, name: 'zero' },
        { id: 1, name: 'one' },
        { id: 2, name: null },
      ]);
      // An object that is not there: one line at start.
      fs.writeFileSync(path.join(p, 'config/models.yml'), `references:\n  customers:\n    csv: s3://refs/crm/nope.csv\n    endpoint: ${s3.endpoint}\n    force_path_style: true\n`);
      const q = await sluiceAsync(['run', '--project', p, '--port', '0'], { env: s3.env });
      expect(q.code).toBe(2);
      expect(q.stderr.trim().split('\n').at(-1)).toMatch(/^error: .*config\/models\.yml:2: reference customers: reading s3:\/\/refs\/crm\/nope\.csv: .*(NoSuchKey|does not exist)/);
    } finally {
      await s3.stop();
    }
  });

  it('validate names a table a model reads that is not a declared reference', () => {
    const p = path.join(root, 'undeclared');
    writeFiles(p, {
      'config/sources.yml': 'source:\n  type: file\n  path: data\n',
      'config/sinks.yml': 'sink:\n  type: jsonl\n  path: ./output\n',
      'config/models.yml': 'references:\n  customers:\n    csv: reference/customers.csv\n',
      'models/enriched.sql': 'WITH o AS (SELECT * FROM incoming) SELECT o.id, c.name FROM o LEFT JOIN custmers AS c ON c.id = o.customer\n',
      'data/orders.ndjson': `${JSON.stringify(ORDERS[0])}\n`,
      'reference/customers.csv': 'id,name\n1,a\n',
    });
    const v = sluice(['validate', '--project', p]);
    expect(v.code).toBe(2);
    expect(v.stderr).toContain(
      `  ${p}/models/enriched.sql: model enriched reads table "custmers", which is not a reference table: declare it under references: in config/models.yml (declared: customers), or read a source with {{ source(...) }} or a model with {{ ref(...) }}\n`,
    );
  });
});

describe('lookup joins on database tables', () => {
  it('a MySQL table and a PostgreSQL query load as references', async () => {
    await myQuery(`DROP TABLE IF EXISTS ${myTable}`);
    await myQuery(`CREATE TABLE ${myTable} (id INT PRIMARY KEY, name VARCHAR(20), since DATE)`);
    await myQuery(`INSERT INTO ${myTable} VALUES (0, 'zero', '2024-01-02'), (1, 'one', '2025-03-04')`);
    const p = path.join(root, 'databases');
    writeFiles(p, {
      'config/sources.yml': 'source:\n  type: file\n  path: data\n',
      'config/sinks.yml': 'sink:\n  type: jsonl\n  path: ./output\n',
      'config/models.yml': `references:\n  names:\n    mysql: mysql://root@127.0.0.1:3306/test\n    table: ${myTable}\n  squares:\n    postgres: postgres://postgres@127.0.0.1:5432/test\n    query: SELECT g AS n, g * g AS sq FROM generate_series(0, 9) AS g\n`,
      'models/enriched.sql': 'SELECT o.id, n.name, n.since, s.sq FROM incoming AS o LEFT JOIN names AS n ON n.id = o.customer LEFT JOIN squares AS s ON s.n = o.customer\n',
      'data/orders.ndjson': `${ORDERS.slice(0, 3)
        .map((o) => JSON.stringify(o))
        .join('\n')}\n`,
    });
    const r = await sluiceAsync(['run', '--project', p, '--port', '0']);
    expect(r.code, r.stderr.slice(-2000)).toBe(0);
    expect(rows(p, 'enriched').sort((a, b) => Number(a.id) - Number(b.id))).toEqual([
      { id: 0, name: 'zero', since: '2024-01-02', sq: 0 },
      { id: 1, name: 'one', since: '2025-03-04', sq: 1 },
      { id: 2, name: null, since: null, sq: 4 },
    ]);
  });

  it('a PostgreSQL reference updated during a run is seen within refresh_interval, no batch joins two versions, and a failed refresh keeps the last version', async () => {
    await pgQuery(`DROP TABLE IF EXISTS ${pgTable}`);
    await pgQuery(`CREATE TABLE ${pgTable} (k int PRIMARY KEY, version int)`);
    await pgQuery(`INSERT INTO ${pgTable} SELECT k, 1 FROM generate_series(0, 9) AS k`);
    const p = path.join(root, 'refresh');
    writeFiles(p, {
      'config/sources.yml': 'source:\n  type: file\n  path: data\n  follow: true\n  poll_interval_ms: 50\n',
      'config/sinks.yml': 'sink:\n  type: jsonl\n  path: ./output\n',
      // One flush a batch: each output file holds one batch's rows.
      'config/models.yml': `max_file_bytes: 1\nreferences:\n  versions:\n    postgres: postgres://postgres@127.0.0.1:5432/test\n    table: ${pgTable}\n    refresh_interval: 1 second\n`,
      'models/joined.sql': 'SELECT o.n, v.version FROM incoming AS o JOIN versions AS v ON v.k = o.n % 10\n',
      // A second model of the same batch, run after the first: a message joins one version in both.
      'models/joined_again.sql': "SELECT j.n, v.version FROM {{ ref('joined') }} AS j JOIN versions AS v ON v.k = (j.n + 5) % 10\n",
      'data/events.ndjson': '',
    });
    const port = await freePort();
    const child = sluiceBg(['run', '--project', p, '--port', String(port), '--log-json']);
    const data = path.join(p, 'data', 'events.ndjson');
    let n = 0;
    const feed = setInterval(() => {
      // Ten messages (every key) every 20 ms: batches span both versions' keys.
      fs.appendFileSync(data, `${Array.from({ length: 10 }, () => JSON.stringify({ n: n++ })).join('\n')}\n`);
    }, 20);
    try {
      await until(() => rows(p, 'joined').length > 200, 30_000);
      await pgQuery(`UPDATE ${pgTable} SET version = 2`);
      const updated = Date.now();
      await until(() => rows(p, 'joined').some((r) => r.version === 2), 15_000);
      const seenAfter = Date.now() - updated;
      // refresh_interval 1 s, plus a batch and a flush.
      expect(seenAfter).toBeLessThan(4000);
      await until(async () => metric(await scrape(port), 'sluice_reference_version', { reference: 'versions' }) === 2, 10_000);
      // The table goes away: refreshes fail, version 2 stays in use.
      await pgQuery(`DROP TABLE ${pgTable}`);
      await untilEvent(child, { msg: 'refreshing a reference table failed; its last version stays in use', reference: 'versions', version: 2 }, 15_000);
      const before = rows(p, 'joined').length;
      await until(() => rows(p, 'joined').length > before + 100, 15_000);
      const text = await scrape(port);
      expect(metric(text, 'sluice_reference_refresh_failures_total', { reference: 'versions' })).toBeGreaterThan(0);
      expect(metric(text, 'sluice_reference_version', { reference: 'versions' })).toBe(2);
      expect(metric(text, 'sluice_reference_rows', { reference: 'versions' })).toBe(10);
    } finally {
      clearInterval(feed);
      child.kill('SIGTERM');
    }
    const exit = await waitExit(child);
    expect(exit.code, child.err().slice(-2000)).toBe(0);
    // Each output file is one batch: one version in each; both versions were seen.
    const dir = path.join(p, 'output', 'joined');
    const perFile = fs
      .readdirSync(dir)
      .filter((f) => f.endsWith('.jsonl'))
      .map(
        (f) =>
          new Set(
            fs
              .readFileSync(path.join(dir, f), 'utf8')
              .split('\n')
              .filter(Boolean)
              .map((l) => (JSON.parse(l) as { version: number }).version),
          ),
      );
    expect(perFile.length).toBeGreaterThan(10);
    expect(perFile.filter((s) => s.size > 1)).toEqual([]);
    expect(new Set(perFile.flatMap((s) => [...s]))).toEqual(new Set([1, 2]));
    // Every message was joined (every key is in every version), and only once.
    const all = rows(p, 'joined').map((r) => Number(r.n));
    expect(new Set(all).size).toBe(all.length);
    expect(all.length).toBe(n);
    const first = new Map(rows(p, 'joined').map((r) => [r.n, r.version]));
    const again = rows(p, 'joined_again');
    expect(again).toHaveLength(n);
    expect(again.filter((r) => first.get(r.n) !== r.version)).toEqual([]);
  }, 120_000);
});
