import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { freePort, jsonLogs, killRepeatedly, sluiceAsync, sluiceBg, tempDir, until, waitExit, writeFiles } from '../helpers/cli.js';
import { metric, scrape } from '../helpers/metrics.js';
import { projectDeadLetters } from '../helpers/dlq.js';
import { expectEquivalent, jsonlRows, type Comparison } from '../helpers/output.js';
import { compareJoins, joinSql, ORDERS_SQL, PAYMENTS_SQL, writeOrdersAndPayments } from '../helpers/join-data.js';

// Stream-stream interval joins, end to end through the CLI on real files: each kind of join
// gives exactly what plain DuckDB's join over the whole input gives, with the same time bound
// (batch equivalence), also when the run is SIGKILLed again and again (rewind equivalence); late
// rows follow the model's policy.

const root = tempDir('sluice-joins-');
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

const KINDS = ['INNER', 'LEFT', 'RIGHT', 'FULL'];

/** Orders and payments read as two CTEs of incoming, bounded asymmetrically with strict comparisons. */
const CTE_SQL = `WITH o AS (SELECT id, CAST(ts AS TIMESTAMP) AS t FROM incoming WHERE kind = 'order'),
     p AS (SELECT order_id, CAST(ts AS TIMESTAMP) AS t, paid FROM incoming WHERE kind = 'payment')
SELECT o.id, o.t AS ordered_at, p.t AS paid_at, p.paid
FROM o FULL JOIN p ON o.id = p.order_id AND o.t > p.t - INTERVAL 5 MINUTE AND o.t < p.t + INTERVAL 1 MINUTE
`;

const MODELS: Record<string, string> = {
  ...Object.fromEntries(KINDS.map((k) => [`paid_${k.toLowerCase()}`, joinSql(k)])),
  by_cte: CTE_SQL,
};

function project(name: string, orders: number, models = MODELS, yml = 'lateness: 3 minutes'): { p: string; events: string } {
  const p = path.join(root, name);
  writeFiles(p, {
    'config/sources.yml': 'source:\n  type: file\n  path: data\n  dlq: .sluice/dlq\n  batch_size: 2000\n',
    'config/sinks.yml': 'sink:\n  type: parquet\n  path: ./output\n',
    'config/models.yml': `overrides:\n${Object.keys(models)
      .map((m) => `  ${m}:\n    window:\n      ${yml.replaceAll('\n', '\n      ')}\n`)
      .join('')}`,
    'models/orders.sql': ORDERS_SQL,
    'models/payments.sql': PAYMENTS_SQL,
    ...Object.fromEntries(Object.entries(models).map(([m, sql]) => [`models/${m}.sql`, sql])),
  });
  const events = path.join(p, 'data', 'events.ndjson');
  writeOrdersAndPayments(events, orders);
  return { p, events };
}

async function compareAll(p: string, events: string, models = MODELS): Promise<Record<string, Comparison>> {
  return compareJoins(p, events, models);
}

describe('stream joins', () => {
  it.concurrent('validate accepts a stream join; `models list` and `compile` show its kind, inputs, bound, watermark and late policy', async () => {
    const { p } = project('listed', 10);
    const v = await sluiceAsync(['validate', '--project', p]);
    expect(v.code, v.stderr).toBe(0);
    const list = await sluiceAsync(['models', 'list', '--project', p]);
    expect(list.code).toBe(0);
    expect(list.stdout).toMatch(/paid_left .*stream join: left join of o and p on o\.ts − p\.ts from -10 minutes to 2 minutes/);
    const compiled = await sluiceAsync(['compile', '--project', p]);
    expect(compiled.code).toBe(0);
    expect(compiled.stdout).toMatch(
      /-- by_cte \(.*models\/by_cte\.sql\): stream join: full join of o and p on o\.t − p\.t from -5 minutes to 1 minute · watermark: max time - 3 minutes · idle partitions after 60 seconds · late: dlq/,
    );
  });

  it.concurrent('validate refuses what a stream join cannot do, naming the model and the reason', async () => {
    const bad: Record<string, [string, RegExp]> = {
      one_sided: [
        "SELECT o.id FROM {{ ref('orders') }} o JOIN {{ ref('payments') }} p ON p.order_id = o.id AND p.ts >= o.ts\n",
        /model one_sided joins two streams, but a stream join needs its time bound on both sides, so that its state can be let go: no lower bound on o\.ts − p\.ts/,
      ],
      grouped: [
        "SELECT o.id, count(*) AS n FROM {{ ref('orders') }} o JOIN {{ ref('payments') }} p ON p.order_id = o.id AND p.ts BETWEEN o.ts AND o.ts + INTERVAL 1 MINUTE GROUP BY o.id\n",
        /model grouped joins two streams, but GROUP BY combines rows of different messages/,
      ],
      three: [
        "SELECT o.id FROM {{ ref('orders') }} o JOIN {{ ref('payments') }} p ON p.order_id = o.id AND p.ts BETWEEN o.ts AND o.ts + INTERVAL 1 MINUTE JOIN (SELECT 1 AS one) c ON c.one = 1\n",
        /model three joins two streams, but a stream join joins two relations: write it as a model of its own, and join the third relation in a model that refs it/,
      ],
      empty_bound: [
        "SELECT o.id FROM {{ ref('orders') }} o JOIN {{ ref('payments') }} p ON p.order_id = o.id AND p.ts BETWEEN o.ts + INTERVAL 5 MINUTE AND o.ts + INTERVAL 1 MINUTE\n",
        /model empty_bound joins two streams, but the time bound is empty/,
      ],
    };
    const { p } = project('refused', 10, Object.fromEntries(Object.entries(bad).map(([m, [sql]]) => [m, sql])));
    const v = await sluiceAsync(['validate', '--project', p]);
    expect(v.code).toBe(2);
    for (const [, re] of Object.values(bad)) expect(v.stderr).toMatch(re);
    // late: update is a window's policy; a join takes drop, dlq or reopen.
    const { p: q } = project('refused-late', 10, { paid_inner: joinSql('INNER') }, 'late: update');
    const w = await sluiceAsync(['validate', '--project', q]);
    expect(w.code).toBe(2);
    expect(w.stderr).toMatch(/config\/models\.yml:3: .*model paid_inner joins two streams: late: update is for windows; a stream join takes drop, dlq or reopen/);
  });

  it.concurrent("over 20000 orders and their payments, out of order, every kind of join equals plain DuckDB's join over the whole file", async () => {
    const { p, events } = project('equivalence', 20_000);
    const r = await sluiceAsync(['run', '--project', p, '--port', '0', '--log-json'], { timeout: 240_000 });
    expect(r.code, r.stderr.slice(-2000)).toBe(0);
    const done = jsonLogs(r.stderr).find((l) => l.msg === 'done')!;
    expect(done.dead_lettered).toBe(0);
    expectEquivalent(await compareAll(p, events));
  }, 300_000);

  it.concurrent('SIGKILLed 10 times during the joins: the output equals the batch join (and so an uninterrupted run)', async () => {
    const { p, events } = project('rewind', 30_000);
    const kills = await killRepeatedly(['run', '--project', p, '--port', '0'], {}, 10);
    expect(kills).toBe(10);
    const before = await compareAll(p, events);
    expect(before.paid_full.output).toBeLessThan(before.paid_full.batch); // the kills came while there was work left
    const r = await sluiceAsync(['run', '--project', p, '--port', '0'], { timeout: 240_000 });
    expect(r.code, r.stderr.slice(-2000)).toBe(0);
    expectEquivalent(await compareAll(p, events));
    expect(projectDeadLetters(p)).toEqual([]);
  }, 300_000);

  it.concurrent('a late row is dead-lettered with the reason, dropped and counted, or (reopen) meets the rows the buffers still hold', async () => {
    const at = (m: number) => new Date(Date.UTC(2026, 0, 1, 0, m)).toISOString();
    // Orders and their payments in order (none for order 1), then a payment of order 1 whose time
    // is far behind the watermark (both sides are at minute 29 or 30 by then).
    const lines = [
      ...Array.from({ length: 31 }, (_, i) => [{ kind: 'order', id: i, ts: at(i), amount: i }, ...(i === 1 ? [] : [{ kind: 'payment', order_id: i, ts: at(i), paid: i }])]).flat(),
      { kind: 'payment', order_id: 1, ts: at(2), paid: 1 },
    ];
    const paid = Array.from({ length: 31 }, (_, i) => ({ id: i, paid: i })).filter((r) => r.id !== 1);
    const sql = "SELECT o.id, p.paid FROM {{ ref('orders') }} o JOIN {{ ref('payments') }} p ON p.order_id = o.id AND p.ts BETWEEN o.ts AND o.ts + INTERVAL 5 MINUTE\n";
    const run = async (name: string, yml: string) => {
      const p = path.join(root, name);
      writeFiles(p, {
        'config/sources.yml': 'source:\n  type: file\n  path: data\n  dlq: .sluice/dlq\n  batch_size: 10\n',
        'config/sinks.yml': 'sink:\n  type: jsonl\n  path: ./output\n',
        'config/models.yml': `overrides:\n  paid:\n    window:\n      ${yml}\n`,
        'models/orders.sql': ORDERS_SQL,
        'models/payments.sql': PAYMENTS_SQL,
        'models/paid.sql': sql,
        'data/events.ndjson': `${lines.map((l) => JSON.stringify(l)).join('\n')}\n`,
      });
      const r = await sluiceAsync(['run', '--project', p, '--port', '0', '--log-json']);
      expect(r.code, r.stderr.slice(-2000)).toBe(0);
      const done = jsonLogs(r.stderr).find((l) => l.msg === 'done')!;
      return { p, done, rows: jsonlRows(p, 'paid') };
    };
    const [dlq, drop, reopen] = await Promise.all([run('late-dlq', 'late: dlq'), run('late-drop', 'late: drop'), run('late-reopen', 'late: reopen\n      allowed_lateness: 30 minutes')]);
    const byId = (rows: Record<string, unknown>[]) => rows.sort((a, b) => Number(a.id) - Number(b.id));
    expect(byId(dlq.rows)).toEqual(paid);
    expect(dlq.done.late).toEqual({ paid: { drop: 0, dlq: 1, reopen: 0 } });
    const dead = projectDeadLetters(dlq.p);
    expect(dead).toHaveLength(1);
    expect(dead[0].error).toMatch(/late: its time \(p\.ts\) is before the join's watermark 2026-01-01T00:(29|30):00\.000Z; rows it could have met are gone/);
    expect(byId(drop.rows)).toEqual(paid);
    expect(drop.done.late).toEqual({ paid: { drop: 1, dlq: 0, reopen: 0 } });
    expect(projectDeadLetters(drop.p)).toEqual([]);
    // Under reopen, order 1 is still buffered (30 minutes past the watermark): the late payment meets it.
    expect(byId(reopen.rows)).toEqual(byId([...paid, { id: 1, paid: 1 }]));
    expect(reopen.done.late).toEqual({ paid: { drop: 0, dlq: 0, reopen: 1 } });
  }, 120_000);

  it.concurrent('metrics: rows buffered per side, and unmatched rows emitted once the watermark passes their bound', async () => {
    const at = (m: number) => new Date(Date.UTC(2026, 0, 1, 0, m)).toISOString();
    // Orders 0-9 at minutes 0-9, paid 0-4; then order 100 and its payment at minute 30: the
    // watermark (lateness 0) at minute 30 lets orders 0-9 go (their bound ends 5 minutes after
    // them), 5-9 unmatched; order 100 and its payment stay buffered.
    const lines = [
      ...Array.from({ length: 10 }, (_, i) => [{ kind: 'order', id: i, ts: at(i), amount: i }, ...(i < 5 ? [{ kind: 'payment', order_id: i, ts: at(i), paid: i }] : [])]).flat(),
      { kind: 'order', id: 100, ts: at(30), amount: 100 },
      { kind: 'payment', order_id: 100, ts: at(30), paid: 100 },
    ];
    const p = path.join(root, 'metrics');
    writeFiles(p, {
      'config/sources.yml': 'source:\n  type: file\n  path: data\n  follow: true\n  dlq: .sluice/dlq\n',
      'config/sinks.yml': 'sink:\n  type: jsonl\n  path: ./output\n',
      'models/orders.sql': ORDERS_SQL,
      'models/payments.sql': PAYMENTS_SQL,
      'models/paid.sql': "SELECT o.id, p.paid FROM {{ ref('orders') }} o LEFT JOIN {{ ref('payments') }} p ON p.order_id = o.id AND p.ts BETWEEN o.ts AND o.ts + INTERVAL 5 MINUTE\n",
      'data/events.ndjson': `${lines.map((l) => JSON.stringify(l)).join('\n')}\n`,
    });
    const port = await freePort();
    const run = sluiceBg(['run', '--project', p, '--port', String(port)]);
    try {
      await until(async () => metric(await scrape(port), 'sluice_join_unmatched_rows_total', { model: 'paid', side: 'left' }) === 5, 30_000, 200);
      const text = await scrape(port);
      expect(metric(text, 'sluice_join_unmatched_rows_total', { model: 'paid', side: 'right' })).toBe(0);
      expect(metric(text, 'sluice_join_buffered_rows', { model: 'paid', side: 'left' })).toBe(1);
      expect(metric(text, 'sluice_join_buffered_rows', { model: 'paid', side: 'right' })).toBe(1);
    } finally {
      run.kill('SIGTERM');
    }
    expect(await waitExit(run, 30_000), run.err().slice(-2000)).toEqual({ code: 0, signal: null });
    const rows = jsonlRows<{ id: number; paid: number | null }>(p, 'paid').sort((a, b) => a.id - b.id);
    expect(rows).toEqual([...[0, 1, 2, 3, 4].map((i) => ({ id: i, paid: i })), ...[5, 6, 7, 8, 9].map((i) => ({ id: i, paid: null })), { id: 100, paid: 100 }]);
  }, 60_000);
});
