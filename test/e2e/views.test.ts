import fs from 'node:fs';
import path from 'node:path';
import { DuckDBInstance } from '@duckdb/node-api';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { jsonLogs, killRepeatedly, sluiceAsync, sluiceBg, tempDir, until, waitExit, writeFiles } from '../helpers/cli.js';
import { projectDeadLetters } from '../helpers/dlq.js';
import { lockPostgres, pgQuery } from '../helpers/sql-db.js';

// Continuously updated aggregates (materialised views), end to end through the CLI into the
// machine's PostgreSQL (strategy: merge): after a run over a file, the table holds exactly what
// the same GROUP BY (or SELECT DISTINCT) gives over the whole file, also when the run is SIGKILLed
// again and again; state_ttl lets idle groups go.

const root = tempDir('sluice-views-');
const id = `${process.pid}_${Date.now() % 100_000}`;
const tables: string[] = [];
let release: () => void = () => {};
beforeAll(async () => {
  release = await lockPostgres();
});
afterAll(async () => {
  for (const t of tables) await pgQuery(`DROP TABLE IF EXISTS ${t}, ${t}_state`).catch(() => {});
  fs.rmSync(root, { recursive: true, force: true });
  release();
});

const MODELS: Record<string, { sql: string; key: string[]; batch: string }> = {
  revenue: {
    sql: 'SELECT customer, sum(amount) AS revenue, count(*) AS orders, count(DISTINCT currency) AS currencies, max(ts) AS last_order FROM incoming WHERE amount > 0 GROUP BY customer\n',
    key: ['customer'],
    batch: 'SELECT customer, sum(amount) AS revenue, count(*) AS orders, count(DISTINCT currency) AS currencies, max(ts) AS last_order FROM events WHERE amount > 0 GROUP BY customer',
  },
  // An aggregate without GROUP BY (one group), over rows most batches do not have.
  rare: {
    sql: "SELECT 'all' AS k, count(*) AS n, sum(amount) AS total FROM incoming WHERE order_id % 5000 = 7\n",
    key: ['k'],
    batch: "SELECT 'all' AS k, count(*) AS n, sum(amount) AS total FROM events WHERE order_id % 5000 = 7",
  },
  pairs: {
    sql: 'SELECT DISTINCT customer, currency FROM incoming\n',
    key: ['customer', 'currency'],
    batch: 'SELECT DISTINCT customer, currency FROM events',
  },
};

/** `n` orders of 97 customers in three currencies (amount 0 for one in ten: filtered out). */
function writeOrders(file: string, n: number): void {
  const t0 = Date.UTC(2026, 0, 1);
  const lines = Array.from({ length: n }, (_, i) =>
    JSON.stringify({ order_id: i, customer: `c${(i * 7) % 97}`, amount: i % 10 === 0 ? 0 : (i % 89) * 10, currency: ['EUR', 'USD', 'GBP'][(i * 5) % 3], ts: new Date(t0 + i * 1000).toISOString() }),
  );
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, `${lines.join('\n')}\n`);
}

function project(name: string, n: number): { p: string; events: string; table: (m: string) => string } {
  const p = path.join(root, name);
  const table = (m: string) => `view_${m}_${name.replaceAll('-', '_')}_${id}`;
  for (const m of Object.keys(MODELS)) tables.push(table(m));
  const sink = (m: string) =>
    `  ${m}_pg:\n    type: postgres\n    database: test\n    table: ${table(m)}\n    state_table: ${table(m)}_state\n    strategy: merge\n    key: [${MODELS[m].key.join(', ')}]\n    auto_migrate: true\n`;
  writeFiles(p, {
    'config/sources.yml': 'source:\n  type: file\n  path: data\n  dlq: .sluice/dlq\n  batch_size: 500\n',
    'config/sinks.yml': `sinks:\n${Object.keys(MODELS).map(sink).join('')}`,
    'config/models.yml': `max_file_bytes: 1\noverrides:\n${Object.keys(MODELS)
      .map((m) => `  ${m}:\n    sink: ${m}_pg\n`)
      .join('')}`,
    ...Object.fromEntries(Object.entries(MODELS).map(([m, x]) => [`models/${m}.sql`, x.sql])),
  });
  const events = path.join(p, 'data', 'orders.ndjson');
  writeOrders(events, n);
  return { p, events, table };
}

/** Each model's PostgreSQL table against the batch query over the whole file: rows as sorted text. */
async function expectTablesEqualBatch(events: string, table: (m: string) => string): Promise<void> {
  const db = await DuckDBInstance.create(':memory:');
  const conn = await db.connect();
  try {
    await conn.run(`CREATE TABLE events AS SELECT * FROM read_json('${events}', columns = {order_id: 'BIGINT', customer: 'VARCHAR', amount: 'BIGINT', currency: 'VARCHAR', ts: 'VARCHAR'})`);
    for (const [m, x] of Object.entries(MODELS)) {
      const want = (await conn.runAndReadAll(x.batch)).getRowObjectsJS().map((r) => Object.values(r).map(String).join('|'));
      const got = (await pgQuery(`SELECT * FROM ${table(m)}`)).map((r) => Object.values(r).map(String).join('|'));
      expect(want.length, m).toBeGreaterThan(0);
      expect(got.sort(), m).toEqual(want.sort());
    }
  } finally {
    conn.closeSync();
    db.closeSync();
  }
}

describe('materialised views', () => {
  it('revenue per customer and the distinct (customer, currency) pairs, kept current in PostgreSQL over many flushes, equal the GROUP BY over the whole file', async () => {
    const { p, events, table } = project('equivalence', 20_000);
    const list = await sluiceAsync(['models', 'list', '--project', p]);
    expect(list.stdout).toMatch(/revenue .*materialised view: a row per customer kept current/);
    expect(list.stdout).toMatch(/pairs .*materialised view: a row per customer, currency kept current/);
    const r = await sluiceAsync(['run', '--project', p, '--port', '0', '--log-json'], { timeout: 240_000 });
    expect(r.code, r.stderr.slice(-2000)).toBe(0);
    const done = jsonLogs(r.stderr).find((l) => l.msg === 'done')!;
    expect(done.flushes).toBeGreaterThan(20);
    // Each batch writes a row per group it changed (97 customers): far fewer than its 500 messages.
    expect((done.rows as Record<string, number>).revenue).toBeLessThan(20_000);
    await expectTablesEqualBatch(events, table);
  }, 300_000);

  it('SIGKILLed 10 times: the PostgreSQL tables equal the GROUP BY over the whole file', async () => {
    const { p, events, table } = project('rewind', 60_000);
    const kills = await killRepeatedly(['run', '--project', p, '--port', '0'], {}, 10);
    expect(kills).toBe(10);
    // The kills came while there was work left: the table does not count every order yet.
    const [partial] = await pgQuery<{ n: string | null }>(`SELECT sum(orders) AS n FROM ${table('revenue')}`).catch(() => [{ n: null }]);
    expect(Number(partial?.n ?? 0)).toBeLessThan(54_000);
    const r = await sluiceAsync(['run', '--project', p, '--port', '0'], { timeout: 240_000 });
    expect(r.code, r.stderr.slice(-2000)).toBe(0);
    await expectTablesEqualBatch(events, table);
    expect(projectDeadLetters(p)).toEqual([]);
  }, 300_000);

  it('state_ttl: a group with no row for longer is let go, and starts again at its next row; a busy group keeps counting', async () => {
    const p = path.join(root, 'ttl');
    const table = `view_ttl_${id}`;
    tables.push(table);
    writeFiles(p, {
      'config/sources.yml': 'source:\n  type: file\n  path: data\n  follow: true\n  poll_interval_ms: 50\n',
      'config/sinks.yml': `sink:\n  type: postgres\n  database: test\n  table: ${table}\n  state_table: ${table}_state\n  strategy: merge\n  key: [customer]\n  auto_migrate: true\n`,
      'config/models.yml': 'max_age_seconds: 0.2\noverrides:\n  totals:\n    state_ttl: 3 seconds\n',
      'models/totals.sql': 'SELECT customer, sum(amount) AS total, count(*) AS n FROM incoming GROUP BY customer\n',
      'data/a.ndjson': '{"customer": "idle", "amount": 10}\n{"customer": "idle", "amount": 20}\n{"customer": "busy", "amount": 1}\n',
    });
    const totals = async () =>
      Object.fromEntries((await pgQuery<{ customer: string; total: number; n: number }>(`SELECT customer, total, n FROM ${table}`).catch(() => [])).map((r) => [r.customer, `${r.total}/${r.n}`]));
    const run = sluiceBg(['run', '--project', p, '--port', '0']);
    try {
      await until(async () => (await totals()).idle === '30/2', 30_000, 100);
      // "busy" gets a row every second (within the ttl); "idle" none for 4.5 s (longer than the ttl).
      for (let i = 0; i < 4; i++) {
        await new Promise((r) => setTimeout(r, 1000));
        fs.appendFileSync(path.join(p, 'data/a.ndjson'), '{"customer": "busy", "amount": 1}\n');
      }
      await new Promise((r) => setTimeout(r, 500));
      fs.appendFileSync(path.join(p, 'data/a.ndjson'), '{"customer": "idle", "amount": 5}\n');
      await until(async () => (await totals()).idle === '5/1', 30_000, 100);
      expect((await totals()).busy).toBe('5/5');
    } finally {
      run.kill('SIGTERM');
    }
    expect(await waitExit(run, 30_000), run.err().slice(-2000)).toEqual({ code: 0, signal: null });
  }, 120_000);

  it('validate takes a view to every sink that upserts (mysql merge, redis set, kafka with a key) and refuses one that appends (redis xadd, kafka without a key)', async () => {
    const p = path.join(root, 'sinks');
    const sinks = {
      my: 'type: mysql\n    database: test\n    table: v\n    strategy: merge\n    key: [customer]',
      kv: 'type: redis\n    key: "v:{customer}"',
      topic: 'type: kafka\n    brokers: 127.0.0.1:9092\n    topic: v\n    key: customer',
      stream: 'type: redis\n    mode: xadd\n    stream: v',
      plain_topic: 'type: kafka\n    brokers: 127.0.0.1:9092\n    topic: w',
    };
    writeFiles(p, {
      'config/sources.yml': 'source:\n  type: file\n  path: data\n',
      'config/sinks.yml': `sinks:\n${Object.entries(sinks)
        .map(([n, c]) => `  ${n}:\n    ${c}\n`)
        .join('')}`,
      'config/models.yml': `overrides:\n  totals:\n    sinks: [${Object.keys(sinks).join(', ')}]\n`,
      'models/totals.sql': 'SELECT customer, sum(amount) AS total FROM incoming GROUP BY customer\n',
      'data/a.ndjson': '{"customer": "a", "amount": 1}\n',
    });
    const v = await sluiceAsync(['validate', '--project', p]);
    expect(v.code).toBe(2);
    const refused = [...v.stderr.matchAll(/but sink (\w+) \((\w+)\) appends/g)].map((m) => `${m[1]} ${m[2]}`);
    expect(refused.sort()).toEqual(['plain_topic kafka', 'stream redis']);
  });
});
