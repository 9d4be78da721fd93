import fs from 'node:fs';
import path from 'node:path';
import { DuckDBInstance } from '@duckdb/node-api';
import { createClient } from 'redis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { jsonLogs, killRepeatedly, sluiceAsync, tempDir, writeFiles } from '../helpers/cli.js';
import { projectDeadLetters } from '../helpers/dlq.js';
import { jsonlRows } from '../helpers/output.js';
import { lockPostgres, myQuery, pgQuery } from '../helpers/sql-db.js';
import { BATCH_QUERIES, WINDOW_MODELS } from '../helpers/window-data.js';

// Session windows under late: update, end to end through the CLI on real files. A late event
// reopens the emitted sessions it belongs to: a session it extends is emitted again with the
// next _revision, and one that no longer exists as it was (merged into another, or its start
// moved) is retracted (_retracted). Whatever the batches and crashes, the latest version of
// each session (its user and start), less the retracted ones, is what plain DuckDB's session
// query gives over every event kept.

const root = tempDir('sluice-session-update-');
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

interface Row {
  user: string;
  session_start: string;
  session_end: string;
  clicks: number;
  first_id: number;
  last_id: number;
  _revision: number;
  _retracted: boolean;
}

const outputRows = (p: string) => jsonlRows<Row>(p, 'sessions');

/** The latest version of each session (user, start), less the retracted ones, as "user start end clicks first last". */
function latest(rows: Row[]): string[] {
  const by = new Map<string, Row>();
  for (const r of rows) {
    const k = `${r.user} ${r.session_start}`;
    const had = by.get(k);
    if (!had || had._revision < r._revision) by.set(k, r);
  }
  return [...by.values()]
    .filter((r) => !r._retracted)
    .map((r) => `${r.user} ${r.session_start.slice(0, 19)} ${r.session_end.slice(0, 19)} ${r.clicks} ${r.first_id} ${r.last_id}`)
    .sort();
}

/** The session query over the events of `file` (less the ids in `without`), in latest()'s form. */
async function batchSessions(file: string, without: Set<number> = new Set()): Promise<string[]> {
  const db = await DuckDBInstance.create(':memory:');
  const conn = await db.connect();
  try {
    await conn.run(`CREATE TABLE events AS SELECT * FROM read_json('${file}', format = 'newline_delimited', columns = {id: 'UBIGINT', ts: 'VARCHAR', "user": 'VARCHAR'})`);
    if (without.size) await conn.run(`DELETE FROM events WHERE id IN (${[...without].join(', ')})`);
    const r = await conn.runAndReadAll(
      `SELECT "user", strftime(session_start, '%Y-%m-%d %H:%M:%S'), strftime(session_end, '%Y-%m-%d %H:%M:%S'), clicks, first_id, last_id FROM (${BATCH_QUERIES.sessions})`,
    );
    return r
      .getRows()
      .map((x) => x.join(' '))
      .sort();
  } finally {
    conn.closeSync();
    db.closeSync();
  }
}

function sessionProject(name: string, events: string, window: string, batch: number, sinks = 'sink:\n  type: jsonl\n  path: ./output\n', models = ''): string {
  const p = path.join(root, name);
  writeFiles(p, {
    'config/sources.yml': `source:\n  type: file\n  path: data\n  batch_size: ${batch}\n  dlq: .sluice/dlq\n`,
    'config/sinks.yml': sinks,
    'config/models.yml': `${models}overrides:\n  sessions:\n    window:\n      late: update\n${window}`,
    'models/sessions.sql': WINDOW_MODELS['models/sessions.sql'],
    'data/events.ndjson': events,
  });
  return p;
}

async function run(p: string): Promise<Record<string, unknown>> {
  const r = await sluiceAsync(['run', '--project', p, '--port', '0', '--log-json'], { timeout: 120_000 });
  expect(r.code, r.stderr.slice(-2000)).toBe(0);
  return jsonLogs(r.stderr).find((l) => l.msg === 'done')!;
}

const T0 = Date.UTC(2026, 0, 1, 0, 10, 0);
const at = (s: number) => new Date(T0 + s * 1000).toISOString();

/**
 * A clickstream of `n` events of 30 users, one every 0.4 s of event time: a user clicks in
 * bursts (two minutes on, a minute off, shifted per user), out of order by up to 8 s; one event
 * in `lateOneIn` comes late, 20 s to `maxBehind` seconds (10 minutes) behind the stream (a late one may bridge two sessions
 * or move a session's start). Deterministic.
 */
function clickstream(n: number, lateOneIn = 40, maxBehind = 600): string {
  let seed = 7;
  const rand = () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const lines: string[] = [];
  for (let i = 0; i < n; i++) {
    const now = i * 0.4;
    let u = Math.floor(rand() * 30);
    // Off for a minute in every three (shifted per user): the next user clicks instead.
    while (Math.floor((now + u * 13) / 60) % 3 === 2) u = (u + 1) % 30;
    const behind = rand() < 1 / lateOneIn ? 20 + rand() * (maxBehind - 20) : rand() * 8;
    lines.push(JSON.stringify({ id: i, ts: at(Math.round((now - behind) * 1000) / 1000), user: `u${u}` }));
  }
  return `${lines.join('\n')}\n`;
}

// Each test has a project directory (and tables, keys) of its own: the first two run concurrently,
// then the SIGKILL test alone (its kills land at random moments of runs it times), then the two
// blocks after it together.
describe('session windows under late: update', () => {
  it.concurrent('a late event that extends, bridges or precedes emitted sessions re-emits them with the next revision and retracts those that changed identity', async () => {
    // One event a batch, no lateness: the watermark is the largest event time so far.
    const events: [string, number][] = [
      ['a', 0],
      ['a', 10],
      ['a', 20],
      ['a', 60],
      ['a', 70], // sessions a@0 (till 50) and a@60 (till 100)
      ['b', 200],
      ['a', 200], // both emitted; a@200 open (till 230)
      ['a', 40], // bridges a@0 and a@60: a@0 grows to 0..100, a@60 is retracted
      ['a', -5], // moves the start: a@-5 is emitted, a@0 retracted
      ['a', 150], // a lone late session, emitted at once (its end, 180, is behind the watermark)
      ['a', 175], // bridges a@150 and the open a@200: a@150 is retracted; the merged one is emitted when it closes
      ['b', 260],
      ['b', 262],
      ['a', -200], // its session could have merged with one whose state is gone: past allowed_lateness
    ];
    const input = `${events.map(([user, t], id) => JSON.stringify({ id, ts: at(t), user })).join('\n')}\n`;
    const p = sessionProject('exact', input, '      allowed_lateness: 5 minutes\n', 1);
    const done = await run(p);
    expect(done.late).toEqual({ sessions: { drop: 0, dlq: 1, update: 4 } });
    const dead = projectDeadLetters(p);
    expect(dead.map((d) => JSON.parse(d.payload).id)).toEqual([13]);
    expect(dead[0].error).toMatch(/its state is gone \(allowed_lateness 5 minutes\); late: update/);
    const rows = outputRows(p).map((r) => `${r.user} ${r.session_start.slice(14, 19)} ${r.session_end.slice(14, 19)} ${r.clicks} r${r._revision}${r._retracted ? ' retracted' : ''}`);
    expect(rows).toEqual([
      'a 10:00 10:50 3 r0',
      'a 11:00 11:40 2 r0',
      'a 10:00 11:40 6 r1',
      'a 11:00 11:40 2 r1 retracted',
      'a 09:55 11:40 7 r2',
      'a 10:00 11:40 6 r2 retracted',
      'a 12:30 13:00 1 r0',
      'a 12:30 13:00 1 r1 retracted',
      'b 13:20 13:50 1 r0', // closes at b@260
      'a 12:30 13:50 3 r2',
      'b 14:20 14:52 2 r0',
    ]);
    expect(latest(outputRows(p))).toEqual(await batchSessions(path.join(p, 'data', 'events.ndjson'), new Set([13])));
  });

  const N = 12_000;
  const input = clickstream(N);

  it.concurrent('over a clickstream with late events, the latest revisions equal the session query over every event kept, whatever dead-letters', async () => {
    // allowed_lateness 2 minutes: events up to ten minutes late, so some are dead-lettered.
    const p = sessionProject('short', input, '      lateness: 10 seconds\n      allowed_lateness: 2 minutes\n', 200);
    const done = (await run(p)) as { late: { sessions: { dlq: number; update: number; drop: number } } };
    const dead = projectDeadLetters(p);
    expect(done.late.sessions.dlq).toBe(dead.length);
    expect(dead.length).toBeGreaterThan(50);
    expect(done.late.sessions.update).toBeGreaterThan(50);
    const rows = outputRows(p);
    expect(rows.some((r) => r._retracted)).toBe(true);
    expect(latest(rows)).toEqual(await batchSessions(path.join(p, 'data', 'events.ndjson'), new Set(dead.map((d) => Number(JSON.parse(d.payload).id)))));
  });

  it('SIGKILLed ten times part-way, a run keeping every late event gives the session query over the whole input, no version twice', async () => {
    const p = sessionProject('rewind', input, '      lateness: 10 seconds\n      allowed_lateness: 1 hour\n', 150);
    const kills = await killRepeatedly(['run', '--project', p, '--port', '0'], {}, 10);
    expect(kills).toBe(10);
    await run(p);
    expect(projectDeadLetters(p)).toEqual([]);
    const rows = outputRows(p);
    const versions = rows.map((r) => `${r.user} ${r.session_start} ${r._revision}`);
    expect(new Set(versions).size).toBe(versions.length);
    expect(rows.some((r) => r._retracted)).toBe(true);
    expect(latest(rows)).toEqual(await batchSessions(path.join(p, 'data', 'events.ndjson')));
  }, 240_000);
});

describe.concurrent('session retractions in upserting sinks', () => {
  // PostgreSQL and MariaDB merge on (user, session_start) and Redis SET on a key made of them,
  // each with delete_column: _retracted. A flush after every batch: retractions meet rows that
  // earlier flushes wrote. The tables and keys left are exactly the session query's rows.
  const id = `${process.pid}`;
  const table = `sess_${id}`;
  const redis = createClient({ url: 'redis://127.0.0.1:6379' });
  let release: () => void = () => {};
  beforeAll(async () => {
    release = await lockPostgres();
    await redis.connect();
  });
  afterAll(async () => {
    await pgQuery(`DROP TABLE IF EXISTS ${table}, ${table}_state`).catch(() => {});
    await myQuery(`DROP TABLE IF EXISTS ${table}, ${table}_state`).catch(() => {});
    for (const k of await redis.keys(`sess:${id}:*`)) await redis.del(k);
    await redis.quit();
    release();
  });

  it('postgres and mysql merge and redis set with delete_column: _retracted hold exactly the session query over every event kept', async () => {
    const merge = (type: string) =>
      `    type: ${type}\n    database: test\n    table: ${table}\n    state_table: ${table}_state\n    strategy: merge\n    key: [user, session_start]\n    delete_column: _retracted\n    auto_migrate: true\n`;
    const sinks = `sinks:\n  files:\n    type: jsonl\n    path: ./output\n  pg:\n${merge('postgres')}  my:\n${merge('mysql')}  kv:\n    type: redis\n    key: "sess:${id}:{user}:{session_start}"\n    delete_column: _retracted\n`;
    const p = sessionProject('sinks', clickstream(1_500, 6, 150), '      lateness: 10 seconds\n      allowed_lateness: 2 minutes\n    sinks: [files, pg, my, kv]\n', 50, sinks, 'max_file_bytes: 1\n');
    const done = (await run(p)) as { late: { sessions: { update: number } }; flushes: number };
    expect(done.late.sessions.update).toBeGreaterThan(10);
    expect(done.flushes).toBeGreaterThan(10);
    // Retractions of sessions written by earlier flushes.
    expect(outputRows(p).filter((r) => r._retracted).length).toBeGreaterThan(3);
    const dead = new Set(projectDeadLetters(p).map((d) => Number(JSON.parse(d.payload).id)));
    const expected = await batchSessions(path.join(p, 'data', 'events.ndjson'), dead);
    const form = (r: { user: string; s: string; e: string; clicks: unknown; first_id: unknown; last_id: unknown }) => `${r.user} ${r.s} ${r.e} ${r.clicks} ${r.first_id} ${r.last_id}`;
    const cols = (fmt: (c: string) => string) => `"user", ${fmt('session_start')} AS s, ${fmt('session_end')} AS e, clicks, first_id, last_id`;
    const pg = await pgQuery(`SELECT ${cols((c) => `to_char(${c}, 'YYYY-MM-DD HH24:MI:SS')`)} FROM ${table}`);
    const my = await myQuery(`SELECT ${cols((c) => `DATE_FORMAT(${c}, '%Y-%m-%d %H:%i:%s')`).replace('"user"', '`user`')} FROM ${table}`);
    expect(pg.map((r) => form(r as never)).sort()).toEqual(expected);
    expect(my.map((r) => form(r as never)).sort()).toEqual(expected);
    const keys = await redis.keys(`sess:${id}:*`);
    const values = (await Promise.all(keys.map((k) => redis.get(k)))).map((v) => JSON.parse(v!) as Row);
    expect(values.every((v) => v._retracted === false)).toBe(true);
    expect(values.map((v) => form({ ...v, s: v.session_start.slice(0, 19).replace('T', ' '), e: v.session_end.slice(0, 19).replace('T', ' ') })).sort()).toEqual(expected);
  });
});

describe.concurrent('delete_column in sink configs', () => {
  it('validate refuses delete_column off merge and off redis set, and a delete_column the model does not have', async () => {
    const sinks = `sinks:
  pg:
    type: postgres
    database: test
    strategy: append
    delete_column: _retracted
  kv:
    type: redis
    mode: xadd
    stream: s
    delete_column: _retracted
`;
    const p = sessionProject('delete-config', '', '', 10, sinks);
    const r = await sluiceAsync(['validate', '--project', p], { timeout: 60_000 });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('config/sinks.yml:6: sinks.pg.delete_column: delete_column is used by merge only');
    expect(r.stderr).toContain('config/sinks.yml:11: sinks.kv.delete_column: delete_column does not apply to mode xadd');
    // Under late: drop there is no _retracted column.
    const merge = 'sinks:\n  pg:\n    type: postgres\n    database: test\n    strategy: merge\n    key: [user, session_start]\n    delete_column: _retracted\n';
    const q = sessionProject('delete-missing', '', '', 10, merge);
    fs.writeFileSync(path.join(q, 'config/models.yml'), 'overrides:\n  sessions:\n    window:\n      late: drop\n');
    const m = await sluiceAsync(['validate', '--project', q], { timeout: 60_000 });
    expect(m.code).toBe(2);
    expect(m.stderr).toMatch(/config\/sinks\.yml:7: sinks\.pg\.delete_column: model sessions \(\S*models\/sessions\.sql\) has no column "_retracted"/);
  });
});
