import fs from 'node:fs';
import path from 'node:path';
import { DuckDBInstance } from '@duckdb/node-api';
import { afterAll, describe, expect, it } from 'vitest';
import { jsonLogs, killRepeatedly, sluiceAsync, tempDir, writeFiles } from '../helpers/cli.js';
import { projectDeadLetters } from '../helpers/dlq.js';
import { type Comparison, expectEquivalent, jsonlRows } from '../helpers/output.js';

// Deduplication over time, end to end through the CLI on real files: the first row per key,
// written as QUALIFY row_number() = 1 or DISTINCT ON, equals the same query over the whole input
// when every copy of a message comes after it within the ttl (an at-least-once source's
// redeliveries), also when the run is SIGKILLed again and again; a key is forgotten ttl after its
// latest copy; late copies follow the policy.

const root = tempDir('sluice-dedup-');
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

const MODELS: Record<string, string> = {
  firsts: 'SELECT order_id, ts, amount FROM incoming QUALIFY row_number() OVER (PARTITION BY order_id ORDER BY ts) = 1\n',
  by_customer: 'SELECT DISTINCT ON (customer, order_id) customer, order_id, amount FROM incoming ORDER BY customer, order_id, ts\n',
};

/**
 * `n` orders a second apart, out of order by up to 20 s; every fourth order is delivered again
 * 1 to 200 messages later (the copy identical), some twice.
 */
function writeOrders(file: string, n: number): void {
  let s = 3;
  const rnd = () => {
    s = (s * 1103515245 + 12345) % 2147483648;
    return s / 2147483648;
  };
  const t0 = Date.UTC(2026, 0, 1);
  const lines: [number, string][] = [];
  for (let i = 0; i < n; i++) {
    const line = JSON.stringify({ order_id: i, customer: `c${i % 300}`, ts: new Date(t0 + i * 1000).toISOString(), amount: i % 1000 });
    const at = i + rnd() * 20;
    lines.push([at, line]);
    if (i % 4 === 0) lines.push([at + 1 + rnd() * 200, line]);
    if (i % 12 === 0) lines.push([at + 1 + rnd() * 200, line]);
  }
  lines.sort((a, b) => a[0] - b[0]);
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, `${lines.map((l) => l[1]).join('\n')}\n`);
}

function project(name: string, n: number): { p: string; events: string } {
  const p = path.join(root, name);
  writeFiles(p, {
    'config/sources.yml': 'source:\n  type: file\n  path: data\n  dlq: .sluice/dlq\n  batch_size: 1000\n',
    'config/sinks.yml': 'sink:\n  type: parquet\n  path: ./output\n',
    'config/models.yml': `overrides:\n${Object.keys(MODELS)
      .map((m) => `  ${m}:\n    window:\n      ttl: 1 hour\n      lateness: 30 seconds\n`)
      .join('')}`,
    ...Object.fromEntries(Object.entries(MODELS).map(([m, sql]) => [`models/${m}.sql`, sql])),
  });
  const events = path.join(p, 'data', 'orders.ndjson');
  writeOrders(events, n);
  return { p, events };
}

async function compareAll(p: string, events: string): Promise<Record<string, Comparison>> {
  const db = await DuckDBInstance.create(':memory:');
  const conn = await db.connect();
  try {
    await conn.run(`CREATE TABLE incoming AS SELECT * FROM read_json('${events}', columns = {order_id: 'BIGINT', customer: 'VARCHAR', ts: 'VARCHAR', amount: 'BIGINT'})`);
    const out: Record<string, Comparison> = {};
    for (const [m, sql] of Object.entries(MODELS)) {
      await conn.run(`CREATE OR REPLACE TABLE want AS ${sql}`);
      const cols = (await conn.runAndReadAll('SELECT * FROM want LIMIT 0'))
        .columnNames()
        .map((c) => `"${c}"`)
        .join(', ');
      await conn.run(`CREATE OR REPLACE TABLE got AS SELECT ${cols} FROM read_parquet('${path.join(p, 'output', m)}/**/*.parquet')`);
      const n = async (q: string) => Number((await conn.runAndReadAll(q)).getRows()[0][0]);
      out[m] = {
        output: await n('SELECT count(*) FROM got'),
        batch: await n('SELECT count(*) FROM want'),
        extra: await n('SELECT count(*) FROM (SELECT * FROM got EXCEPT ALL SELECT * FROM want)'),
        missing: await n('SELECT count(*) FROM (SELECT * FROM want EXCEPT ALL SELECT * FROM got)'),
      };
    }
    return out;
  } finally {
    conn.closeSync();
    db.closeSync();
  }
}

describe('deduplication over time', () => {
  it.concurrent('over 20000 orders, a third of them delivered again, the first row per key equals the same query over the whole file', async () => {
    const { p, events } = project('equivalence', 20_000);
    const v = await sluiceAsync(['models', 'list', '--project', p]);
    expect(v.stdout).toMatch(/firsts .*deduplicating: the first row per order_id by ts · ttl 1 hours? · watermark: max time - 30 seconds · late: dlq/);
    const r = await sluiceAsync(['run', '--project', p, '--port', '0', '--log-json'], { timeout: 240_000 });
    expect(r.code, r.stderr.slice(-2000)).toBe(0);
    const done = jsonLogs(r.stderr).find((l) => l.msg === 'done')!;
    expect(done.dead_lettered).toBe(0);
    expect(done.messages).toBeGreaterThan(20_000 + 5000); // the copies were read
    expectEquivalent(await compareAll(p, events));
  }, 300_000);

  it.concurrent('SIGKILLed 10 times: the output equals the same query over the whole file', async () => {
    const { p, events } = project('rewind', 40_000);
    const kills = await killRepeatedly(['run', '--project', p, '--port', '0'], {}, 10);
    expect(kills).toBe(10);
    const r = await sluiceAsync(['run', '--project', p, '--port', '0'], { timeout: 240_000 });
    expect(r.code, r.stderr.slice(-2000)).toBe(0);
    expectEquivalent(await compareAll(p, events));
    expect(projectDeadLetters(p)).toEqual([]);
  }, 300_000);

  it.concurrent('a key is forgotten a ttl after its latest copy; a copy behind the watermark is dead-lettered with the reason, or dropped', async () => {
    const at = (m: number) => new Date(Date.UTC(2026, 0, 1, 0, m)).toISOString();
    // Key 1 at minute 0, again at minute 50 (within the hour: dropped), again at minute 170 (120
    // minutes after its latest copy: kept). Other keys move time on, one a minute; the last line
    // is a copy of key 2 (minute 2), far behind the watermark.
    const lines = [...Array.from({ length: 200 }, (_, m) => [{ id: 1000 + m, ts: at(m) }, ...(m === 0 || m === 50 || m === 170 ? [{ id: 1, ts: at(m) }] : [])]).flat(), { id: 2, ts: at(2) }];
    lines.splice(3, 0, { id: 2, ts: at(2) });
    const run = async (name: string, late: string) => {
      const p = path.join(root, name);
      writeFiles(p, {
        'config/sources.yml': 'source:\n  type: file\n  path: data\n  dlq: .sluice/dlq\n  batch_size: 20\n',
        'config/sinks.yml': 'sink:\n  type: jsonl\n  path: ./output\n',
        'config/models.yml': `overrides:\n  firsts:\n    window:\n      ttl: 1 hour\n      late: ${late}\n`,
        'models/firsts.sql': 'SELECT DISTINCT ON (id) id, ts FROM incoming ORDER BY id, ts\n',
        'data/events.ndjson': `${lines.map((l) => JSON.stringify(l)).join('\n')}\n`,
      });
      const r = await sluiceAsync(['run', '--project', p, '--port', '0', '--log-json']);
      expect(r.code, r.stderr.slice(-2000)).toBe(0);
      return { p, done: jsonLogs(r.stderr).find((l) => l.msg === 'done')!, rows: jsonlRows<{ id: number; ts: string }>(p, 'firsts') };
    };
    const [dlq, drop] = await Promise.all([run('ttl-dlq', 'dlq'), run('ttl-drop', 'drop')]);
    for (const x of [dlq, drop]) {
      expect(x.rows.filter((r) => r.id === 1).map((r) => r.ts.slice(11, 16))).toEqual(['00:00', '02:50']);
      expect(x.rows.filter((r) => r.id === 2)).toHaveLength(1);
      expect(x.rows).toHaveLength(200 + 2 + 1);
    }
    expect(dlq.done.late).toEqual({ firsts: { drop: 0, dlq: 1 } });
    const dead = projectDeadLetters(dlq.p);
    expect(dead).toHaveLength(1);
    expect(dead[0].error).toMatch(/late: its time \(ts\) is more than the ttl before the watermark 2026-01-01T03:\d\d:00\.000Z; its key may have been let go/);
    expect(drop.done.late).toEqual({ firsts: { drop: 1, dlq: 0 } });
    expect(projectDeadLetters(drop.p)).toEqual([]);
  }, 120_000);

  it.concurrent('validate refuses a deduplicating model without a ttl, keeping the last row, or late: reopen, with file, line and key', async () => {
    const p = path.join(root, 'refused');
    writeFiles(p, {
      'config/sources.yml': 'source:\n  type: file\n  path: data\n',
      'config/sinks.yml': 'sink:\n  type: jsonl\n  path: ./output\n',
      'config/models.yml':
        'overrides:\n  no_ttl:\n    window:\n      lateness: 10 seconds\n  latest:\n    window:\n      ttl: 1 hour\n  reopened:\n    window:\n      ttl: 1 hour\n      late: reopen\n',
      'models/no_ttl.sql': 'SELECT * FROM incoming QUALIFY row_number() OVER (PARTITION BY id ORDER BY ts) = 1\n',
      'models/latest.sql': 'SELECT * FROM incoming QUALIFY row_number() OVER (PARTITION BY id ORDER BY ts DESC) = 1\n',
      'models/reopened.sql': 'SELECT DISTINCT ON (id) * FROM incoming ORDER BY id, ts\n',
      'data/e.ndjson': '{"id": 1, "ts": "2026-01-01T00:00:00Z"}\n',
    });
    const v = await sluiceAsync(['validate', '--project', p]);
    expect(v.code).toBe(2);
    expect(v.stderr).toMatch(/config\/models\.yml:3: overrides\.no_ttl\.window\.ttl: model no_ttl deduplicates: set overrides\.no_ttl\.window\.ttl/);
    expect(v.stderr).toMatch(/models\/latest\.sql: model latest deduplicates, but a deduplicating model keeps the first row of each key: ORDER BY the time ascending/);
    expect(v.stderr).toMatch(/config\/models\.yml:9: .*model reopened deduplicates: late: reopen is not for it; a deduplicating model takes drop or dlq/);
  });
});
