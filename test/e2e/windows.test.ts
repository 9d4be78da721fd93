import fs from 'node:fs';
import path from 'node:path';
import { DuckDBInstance } from '@duckdb/node-api';
import { afterAll, describe, expect, it } from 'vitest';
import { jsonLogs, killRepeatedly, sluiceAsync, sluiceBg, tempDir, until, waitExit, writeFiles } from '../helpers/cli.js';
import { projectDeadLetters } from '../helpers/dlq.js';
import { jsonlRows } from '../helpers/output.js';
import { compareWithBatch, loadEvents, WINDOW_MODELS, WINDOW_MODELS_YML, writeClicks } from '../helpers/window-data.js';

// Windowed aggregation, end to end through the CLI on real files: each kind of window gives
// exactly what plain DuckDB's GROUP BY over the whole input gives (batch equivalence), also when
// the run is SIGKILLed again and again (rewind equivalence), and late events follow the model's
// policy with exact counts.

const root = tempDir('sluice-windows-');
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

const MODELS = ['revenue', 'moving', 'sessions', 'buckets', 'revenue_5m', 'revenue_eur'];

function project(name: string, events: number, source = ''): string {
  const p = path.join(root, name);
  writeFiles(p, {
    'config/sources.yml': `source:\n  type: file\n  path: data\n  dlq: .sluice/dlq\n${source}`,
    'config/sinks.yml': 'sink:\n  type: parquet\n  path: ./output\n',
    'config/models.yml': WINDOW_MODELS_YML,
    ...WINDOW_MODELS,
  });
  writeClicks(path.join(p, 'data', 'clicks.ndjson'), 0, events);
  return p;
}

async function compareAll(p: string): Promise<Record<string, { output: number; batch: number; extra: number; missing: number }>> {
  const db = await DuckDBInstance.create(':memory:');
  const conn = await db.connect();
  try {
    await loadEvents(conn, [path.join(p, 'data', 'clicks.ndjson')]);
    const out: Record<string, { output: number; batch: number; extra: number; missing: number }> = {};
    for (const m of MODELS) out[m] = await compareWithBatch(conn, path.join(p, 'output'), m);
    return out;
  } finally {
    conn.closeSync();
    db.closeSync();
  }
}

function expectEquivalent(result: Record<string, { output: number; batch: number; extra: number; missing: number }>): void {
  for (const [model, r] of Object.entries(result)) {
    expect(r.batch, `${model}: the batch query has rows`).toBeGreaterThan(0);
    expect({ model, ...r }).toEqual({ model, output: r.batch, batch: r.batch, extra: 0, missing: 0 });
  }
}

// Each test has a project directory of its own, and most run concurrently: the first two here,
// then the blocks after this one together. The SIGKILL test runs alone, between them: its kills
// land at random moments of runs it times.
describe('windowed models', () => {
  it.concurrent('validate accepts windowed models; `models list`, `compile` and `lineage` show each window, its watermark and late policy', async () => {
    const p = project('listed', 10);
    const v = await sluiceAsync(['validate', '--project', p], { timeout: 60_000 });
    expect(v.stderr + v.stdout).not.toMatch(/stateful/);
    expect(v.code).toBe(0);
    const list = await sluiceAsync(['models', 'list', '--project', p], { timeout: 60_000 });
    expect(list.code).toBe(0);
    expect(list.stdout).toMatch(/revenue .*TUMBLE\(ts, INTERVAL '1' MINUTE\)/);
    expect(list.stdout).toMatch(/sessions .*SESSION\(ts, INTERVAL '30' SECOND\) per "user" · watermark: max event time - 20 seconds · idle partitions after 60 seconds · late: dlq/);
    const compiled = await sluiceAsync(['compile', '--project', p], { timeout: 60_000 });
    expect(compiled.code).toBe(0);
    expect(compiled.stdout).toMatch(/-- moving \(.*models\/moving.sql\): windowed: HOP\(ts, INTERVAL '1' MINUTE, INTERVAL '5' MINUTE\) · watermark: max event time - 20 seconds/);
    const lineage = await sluiceAsync(['lineage', '--project', p], { timeout: 60_000 });
    expect(lineage.code).toBe(0);
    expect(lineage.stdout).toMatch(/model revenue \[windowed: TUMBLE\(ts, INTERVAL '1' MINUTE\) per currency · .*late: dlq\]/);
    expect(lineage.stdout).toMatch(/model revenue_eur\n/); // a stateless model reading a windowed one
  });

  it.concurrent("over a million out-of-order events, each kind of window equals plain DuckDB's GROUP BY over the whole file", async () => {
    const p = project('equivalence', 1_000_000);
    const r = await sluiceAsync(['run', '--project', p, '--port', '0', '--log-json'], { timeout: 240_000 });
    expect(r.code, r.stderr.slice(-2000)).toBe(0);
    const done = jsonLogs(r.stderr).find((l) => l.msg === 'done')!;
    expect(done.messages).toBe(1_000_000);
    expect(done.dead_lettered).toBe(0);
    expectEquivalent(await compareAll(p));
  }, 300_000);

  it('SIGKILLed ten times part-way, a run over a file gives the uninterrupted output: no window row missing or twice', async () => {
    // Small batches: many commits, state compactions, and kills between them.
    const p = project('rewind', 300_000, '  batch_size: 4000\n');
    const kills = await killRepeatedly(['run', '--project', p, '--port', '0'], {}, 10);
    expect(kills).toBe(10);
    const r = await sluiceAsync(['run', '--project', p, '--port', '0'], { timeout: 180_000 });
    expect(r.code, r.stderr.slice(-2000)).toBe(0);
    expectEquivalent(await compareAll(p));
    expect(projectDeadLetters(p)).toEqual([]);
  }, 300_000);
});

describe.concurrent('offline tools', () => {
  function toolsProject(name: string): string {
    const p = path.join(root, name);
    const at = (m: number, s: number) => new Date(Date.UTC(2026, 0, 1, 0, m, s)).toISOString();
    writeFiles(p, {
      'config/sources.yml': 'source:\n  type: file\n  path: data\n  dlq: .sluice/dlq\n',
      'config/sinks.yml': 'sink:\n  type: parquet\n  path: ./output\n',
      'config/models.yml': 'overrides:\n  per_minute:\n    description: clicks per user per minute\n    window:\n      lateness: 5 seconds\n',
      'models/per_minute.sql': 'SELECT TUMBLE_START(ts, INTERVAL \'1\' MINUTE) AS minute, "user", count(*) AS clicks FROM incoming GROUP BY TUMBLE(ts, INTERVAL \'1\' MINUTE), "user"\n',
      'models/busy.sql': 'SELECT minute, "user" FROM {{ ref(\'per_minute\') }} WHERE clicks >= 2\n',
      'tests/sample.json': JSON.stringify([
        { ts: at(0, 1), user: 'a' },
        { ts: at(0, 30), user: 'a' },
        { ts: at(0, 40), user: 'b' },
        { ts: at(1, 5), user: 'a' },
      ]),
      'tests/windows.yml': `unit_tests:
  - name: two_minutes
    messages:
      - { ts: '${at(0, 1)}', user: a }
      - { ts: '${at(0, 59)}', user: a }
      - { ts: '${at(1, 0)}', user: b }
    expect:
      per_minute:
        - { minute: '2026-01-01T00:00:00Z', user: a, clicks: 2 }
        - { minute: '2026-01-01T00:01:00Z', user: b, clicks: 1 }
      busy:
        - { minute: '2026-01-01T00:00:00Z', user: a }
`,
      'data/events.ndjson': '',
    });
    return p;
  }

  it('sluice test runs windowed models over the fixture, closing every window at its end, and their unit tests pass', async () => {
    const p = toolsProject('tools-test');
    const r = await sluiceAsync(['test', '--project', p, '--format', 'json']);
    expect(r.code, r.stderr + r.stdout).toBe(0);
    const out = JSON.parse(r.stdout) as { models: Record<string, Record<string, unknown>[]>; unit_tests: { test: string; passed: boolean }[] };
    const rows = (m: string) => out.models[m].map((x) => JSON.stringify(x)).sort();
    expect(rows('per_minute')).toEqual(
      [
        { minute: '2026-01-01T00:00:00.000Z', user: 'a', clicks: 2 },
        { minute: '2026-01-01T00:00:00.000Z', user: 'b', clicks: 1 },
        { minute: '2026-01-01T00:01:00.000Z', user: 'a', clicks: 1 },
      ]
        .map((x) => JSON.stringify(x))
        .sort(),
    );
    expect(rows('busy')).toEqual([JSON.stringify({ minute: '2026-01-01T00:00:00.000Z', user: 'a' })]);
    expect(out.unit_tests.map((u) => [u.test, u.passed])).toEqual([['two_minutes', true]]);
  });

  it('the docs site shows a windowed model with its badge and its window', async () => {
    const p = toolsProject('tools-docs');
    const r = await sluiceAsync(['docs', 'generate', '--project', p]);
    expect(r.code, r.stderr).toBe(0);
    const html = fs.readFileSync(path.join(p, '.sluice', 'docs', 'index.html'), 'utf8');
    expect(html).toContain('<span class="badge windowed">windowed</span>');
    expect(html).toMatch(/<tr><th>window<\/th><td>TUMBLE\(ts, INTERVAL &#39;1&#39; MINUTE\) per &quot;user&quot; · watermark: max event time - 5 seconds/);
    const lineage = JSON.parse(fs.readFileSync(path.join(p, '.sluice', 'docs', 'lineage.json'), 'utf8')) as { nodes: { id: string; window?: string }[] };
    expect(lineage.nodes.find((n) => n.id === 'model.per_minute')?.window).toMatch(/^TUMBLE/);
    expect(lineage.nodes.find((n) => n.id === 'model.busy')?.window).toBeUndefined();
  });
});

describe.concurrent('late events', () => {
  // Tumbling one-minute windows, no out-of-orderness allowed. Minutes 0..9 have 12 events each,
  // in order; after minute m's events (m >= 3) comes one event of minute m - 2, whose window
  // closed when minute m began; after minute 9, two events of minute 0. Batches of at most 10
  // lines: at least one batch ends inside minute m before its late event is read.
  function lateInput(): string {
    const lines: string[] = [];
    const at = (m: number, s: number) => new Date(Date.UTC(2026, 0, 1, 0, m, s)).toISOString();
    let id = 0;
    for (let m = 0; m < 10; m++) {
      for (let k = 0; k < 12; k++) lines.push(JSON.stringify({ id: id++, ts: at(m, k * 5), v: 1 }));
      if (m >= 3) lines.push(JSON.stringify({ id: id++, ts: at(m - 2, 30), v: 100, late: true }));
    }
    for (let k = 0; k < 2; k++) lines.push(JSON.stringify({ id: id++, ts: at(0, 1), v: 1000, late: true }));
    return `${lines.join('\n')}\n`;
  }

  const TUMBLING = "SELECT TUMBLE_START(ts, INTERVAL '1' MINUTE) AS minute, count(*) AS n, sum(v) AS total FROM incoming GROUP BY TUMBLE(ts, INTERVAL '1' MINUTE)\n";

  function lateProject(policy: string, extra = '', sql = TUMBLING, name = `late-${policy}`): string {
    const p = path.join(root, name);
    writeFiles(p, {
      'config/sources.yml': 'source:\n  type: file\n  path: data\n  batch_size: 10\n  dlq: .sluice/dlq\n',
      'config/sinks.yml': 'sink:\n  type: jsonl\n  path: ./output\n',
      'config/models.yml': `overrides:\n  per_minute:\n    window:\n      late: ${policy}\n${extra}`,
      'models/per_minute.sql': sql,
      'data/events.ndjson': lateInput(),
    });
    return p;
  }

  const outputRows = (p: string) => jsonlRows(p, 'per_minute');

  async function runLate(p: string): Promise<Record<string, unknown>> {
    const r = await sluiceAsync(['run', '--project', p, '--port', '0', '--log-json']);
    expect(r.code, r.stderr.slice(-2000)).toBe(0);
    return jsonLogs(r.stderr).find((l) => l.msg === 'done')!;
  }

  it('late: drop drops exactly the late events and counts them', async () => {
    const p = lateProject('drop');
    const done = await runLate(p);
    expect(done.late).toEqual({ per_minute: { drop: 9, dlq: 0, update: 0 } });
    const rows = outputRows(p);
    expect(rows).toHaveLength(10);
    expect(rows.every((r) => r.n === 12 && r.total === 12)).toBe(true);
    expect(projectDeadLetters(p)).toEqual([]);
  });

  it('late: dlq dead-letters exactly the late events, with the reason', async () => {
    const p = lateProject('dlq');
    const done = await runLate(p);
    expect(done.late).toEqual({ per_minute: { drop: 0, dlq: 9, update: 0 } });
    const dead = projectDeadLetters(p);
    expect(dead).toHaveLength(9);
    for (const d of dead) {
      expect(JSON.parse(d.payload).late).toBe(true);
      expect(d.error).toMatch(/late event: its window was emitted when the watermark passed .*; late: dlq/);
      expect(d.model).toBe('per_minute');
    }
    expect(outputRows(p).every((r) => r.n === 12)).toBe(true);
  });

  it('event times are UTC whatever the machine time zone: an ISO offset is applied, a TIMESTAMPTZ is taken at its instant', async () => {
    const p = path.join(root, 'time-zones');
    const ev = [
      { ts: '2026-01-01T02:00:30+02:00', v: 1 }, // 00:00:30 UTC
      { ts: '2026-01-01T00:00:40Z', v: 2 },
      { ts: '2026-01-01 00:01:10', v: 4 }, // no offset: UTC
      { ts: '2025-12-31T19:01:20-05:00', v: 8 }, // 00:01:20 UTC
    ];
    writeFiles(p, {
      'config/sources.yml': 'source:\n  type: file\n  path: data\n  dlq: .sluice/dlq\n',
      'config/sinks.yml': 'sink:\n  type: jsonl\n  path: ./output\n',
      'models/per_minute.sql': "SELECT TUMBLE_START(ts, INTERVAL '1' MINUTE) AS minute, sum(v) AS total FROM incoming GROUP BY TUMBLE(ts, INTERVAL '1' MINUTE)\n",
      'models/per_minute_tz.sql': "SELECT TUMBLE_START(ts::TIMESTAMPTZ, INTERVAL '1' MINUTE) AS minute, sum(v) AS total FROM incoming GROUP BY TUMBLE(ts::TIMESTAMPTZ, INTERVAL '1' MINUTE)\n",
      'data/events.ndjson': `${ev.map((e) => JSON.stringify(e)).join('\n')}\n`,
    });
    const r = await sluiceAsync(['run', '--project', p, '--port', '0'], { env: { TZ: 'America/New_York' } });
    expect(r.code, r.stderr.slice(-2000)).toBe(0);
    for (const m of ['per_minute', 'per_minute_tz']) {
      const rows = jsonlRows<{ minute: string; total: number }>(p, m)
        .map((x) => `${String(x.minute).slice(0, 19)} ${x.total}`)
        .sort();
      expect(rows, m).toEqual(['2026-01-01 00:00:00 3', '2026-01-01 00:01:00 12']);
    }
  });

  it('late: update re-emits the corrected window with the next revision, and dead-letters what is past allowed_lateness', async () => {
    const p = lateProject('update', '      allowed_lateness: 3 minutes\n');
    const done = await runLate(p);
    expect(done.late).toEqual({ per_minute: { drop: 0, dlq: 2, update: 7 } });
    const rows = outputRows(p);
    const first = rows.filter((r) => r._revision === 0);
    const updated = rows.filter((r) => r._revision === 1);
    expect(first).toHaveLength(10);
    expect(first.every((r) => r.n === 12 && r.total === 12)).toBe(true);
    // Minutes 1..7 each took one late event of value 100.
    expect(updated.map((r) => String(r.minute).slice(11, 16)).sort()).toEqual(['00:01', '00:02', '00:03', '00:04', '00:05', '00:06', '00:07']);
    expect(updated.every((r) => r.n === 13 && r.total === 112)).toBe(true);
    const dead = projectDeadLetters(p);
    expect(dead).toHaveLength(2);
    expect(dead[0].error).toMatch(/its state is gone \(allowed_lateness 3 minutes\); late: update/);
  });

  it('late: update on hopping windows re-emits every emitted window still held that a late event belongs to; the latest revisions equal the batch query', async () => {
    const hop = "SELECT HOP_START(ts, INTERVAL '1' MINUTE, INTERVAL '3' MINUTE) AS minute, count(*) AS n, sum(v) AS total FROM incoming GROUP BY HOP(ts, INTERVAL '1' MINUTE, INTERVAL '3' MINUTE)\n";
    const p = lateProject('update', '      allowed_lateness: 2 minutes\n', hop, 'late-update-hop');
    const done = await runLate(p);
    // Minute m-2's late event (m = 3..9) lands in the windows starting m-4, m-3 (emitted, held:
    // updated) and m-2 (open); the two of minute 0 after minute 9: every window of theirs is gone.
    expect(done.late).toEqual({ per_minute: { drop: 0, dlq: 2, update: 7 } });
    const dead = projectDeadLetters(p);
    expect(dead.map((d) => JSON.parse(d.payload).v)).toEqual([1000, 1000]);
    const rows = outputRows(p) as { minute: string; n: number; total: number; _revision: number }[];
    const latest = new Map<string, { n: number; total: number; _revision: number }>();
    for (const r of rows) if ((latest.get(r.minute)?._revision ?? -1) < r._revision) latest.set(r.minute, r);
    // A window spans three minutes, so two late events can update it: revisions 1 and 2.
    expect(new Set(rows.map((r) => r._revision))).toEqual(new Set([0, 1, 2]));
    const db = await DuckDBInstance.create(':memory:');
    const conn = await db.connect();
    try {
      await conn.run(
        `CREATE TABLE events AS SELECT * FROM read_json('${path.join(p, 'data', 'events.ndjson')}', columns = {id: 'BIGINT', ts: 'VARCHAR', v: 'BIGINT', late: 'BOOLEAN'}) WHERE v <> 1000`,
      );
      const batch = await conn.runAndReadAll(
        `SELECT strftime(s, '%Y-%m-%d %H:%M:%S') AS minute, count(*) AS n, sum(v) AS total FROM (SELECT *, unnest(generate_series(time_bucket(INTERVAL 1 MINUTE, ts::TIMESTAMP) - INTERVAL 2 MINUTE, time_bucket(INTERVAL 1 MINUTE, ts::TIMESTAMP), INTERVAL 1 MINUTE)) AS s FROM events) GROUP BY s ORDER BY s`,
      );
      const expected = batch.getRowObjectsJson().map((r) => `${r.minute} ${r.n} ${r.total}`);
      const got = [...latest].map(([m, r]) => `${String(m).slice(0, 19)} ${r.n} ${r.total}`).sort();
      expect(got).toEqual(expected);
    } finally {
      conn.closeSync();
      db.closeSync();
    }
  });
});

describe.concurrent('session cap', () => {
  it('max_session_duration cuts sessions at multiples of the duration: a user clicking every 10 s for 5 minutes has 3 sessions under a 2-minute cap', async () => {
    const p = path.join(root, 'session-cap');
    const lines = Array.from({ length: 30 }, (_, i) => JSON.stringify({ ts: new Date(Date.UTC(2026, 0, 1, 0, 0, 5 + i * 10)).toISOString(), user: 'a' }));
    writeFiles(p, {
      'config/sources.yml': 'source:\n  type: file\n  path: data\n  dlq: .sluice/dlq\n',
      'config/sinks.yml': 'sink:\n  type: jsonl\n  path: ./output\n',
      'config/models.yml': 'overrides:\n  capped:\n    window:\n      max_session_duration: 2 minutes\n',
      'models/capped.sql':
        "SELECT SESSION_START(ts, INTERVAL '30' SECOND) AS s, SESSION_END(ts, INTERVAL '30' SECOND) AS e, \"user\", count(*) AS n FROM incoming GROUP BY SESSION(ts, INTERVAL '30' SECOND), \"user\"\n",
      'models/uncapped.sql': "SELECT SESSION_START(ts, INTERVAL '30' SECOND) AS s, count(*) AS n FROM incoming GROUP BY SESSION(ts, INTERVAL '30' SECOND)\n",
      'data/events.ndjson': `${lines.join('\n')}\n`,
    });
    const r = await sluiceAsync(['run', '--project', p, '--port', '0']);
    expect(r.code, r.stderr.slice(-2000)).toBe(0);
    const show = (x: { s: string; e?: string; n: number }) => `${x.s.slice(11, 19)} ${x.e ? x.e.slice(11, 19) : ''} ${x.n}`.replace('  ', ' ');
    // Cut at 00:02:00 and 00:04:00: 00:00:05-00:01:55 (12 clicks), 00:02:05-00:03:55 (12), 00:04:05-00:04:55 (6).
    expect(jsonlRows<{ s: string; e: string; n: number }>(p, 'capped').map(show).sort()).toEqual(['00:00:05 00:02:25 12', '00:02:05 00:04:25 12', '00:04:05 00:05:25 6']);
    expect(jsonlRows<{ s: string; n: number }>(p, 'uncapped').map(show)).toEqual(['00:00:05 30']);
  });
});

describe.concurrent('isolation', () => {
  it("a message dead-lettered for another model's error is not in any window", async () => {
    // The first 10 messages lack `extra`, which the stateless model reads: binding fails for the
    // whole batch (batches of 10), and every message of it is dead-lettered. The windowed model
    // ran over that batch too before the failure: none of it may reach its state.
    const p = path.join(root, 'isolation');
    const lines: string[] = [];
    for (let i = 0; i < 30; i++) lines.push(JSON.stringify({ ts: new Date(Date.UTC(2026, 0, 1, 0, 0, i)).toISOString(), ...(i >= 10 ? { extra: i } : {}) }));
    writeFiles(p, {
      'config/sources.yml': 'source:\n  type: file\n  path: data\n  batch_size: 10\n  dlq: .sluice/dlq\n',
      'config/sinks.yml': 'sink:\n  type: jsonl\n  path: ./output\n',
      'models/a_per_minute.sql': "SELECT TUMBLE_START(ts, INTERVAL '1' MINUTE) AS minute, count(*) AS n FROM incoming GROUP BY TUMBLE(ts, INTERVAL '1' MINUTE)\n",
      'models/b_extra.sql': 'SELECT incoming.extra FROM incoming\n',
      'data/events.ndjson': `${lines.join('\n')}\n`,
    });
    const r = await sluiceAsync(['run', '--project', p, '--port', '0']);
    expect(r.code, r.stderr.slice(-2000)).toBe(0);
    expect(projectDeadLetters(p)).toHaveLength(10);
    expect(jsonlRows<{ n: number }>(p, 'a_per_minute').map((x) => x.n)).toEqual([20]);
    expect(jsonlRows(p, 'b_extra')).toHaveLength(20);
  });
});

describe.concurrent('limits and processing time', () => {
  // Three currencies a minute, and a cap of two groups per window.
  function capProject(name: string, policy: string): string {
    const p = path.join(root, name);
    const lines: string[] = [];
    for (let m = 0; m < 5; m++) {
      for (let k = 0; k < 12; k++) lines.push(JSON.stringify({ ts: new Date(Date.UTC(2026, 0, 1, 0, m, k * 5)).toISOString(), currency: ['EUR', 'USD', 'GBP'][k % 3] }));
    }
    writeFiles(p, {
      'config/sources.yml': 'source:\n  type: file\n  path: data\n  batch_size: 7\n  dlq: .sluice/dlq\n',
      'config/sinks.yml': 'sink:\n  type: jsonl\n  path: ./output\n',
      'config/models.yml': `overrides:\n  per_minute:\n    window:\n      max_groups_per_window: 2\n      on_max_groups: ${policy}\n`,
      'models/per_minute.sql': "SELECT TUMBLE_START(ts, INTERVAL '1' MINUTE) AS minute, currency, count(*) AS n FROM incoming GROUP BY TUMBLE(ts, INTERVAL '1' MINUTE), currency\n",
      'data/events.ndjson': `${lines.join('\n')}\n`,
    });
    return p;
  }

  it('max_groups_per_window with on_max_groups: dlq dead-letters exactly the messages of the groups past the cap', async () => {
    const p = capProject('cap-dlq', 'dlq');
    const r = await sluiceAsync(['run', '--project', p, '--port', '0', '--log-json']);
    expect(r.code, r.stderr.slice(-2000)).toBe(0);
    const rows = jsonlRows<{ minute: string; currency: string; n: number }>(p, 'per_minute');
    // Each minute keeps the two currencies that came first (EUR, USD); GBP's four messages a minute are dead-lettered.
    expect(rows.map((x) => `${x.minute.slice(14, 16)} ${x.currency} ${x.n}`).sort()).toEqual(['00', '01', '02', '03', '04'].flatMap((m) => [`${m} EUR 4`, `${m} USD 4`]));
    const dead = projectDeadLetters(p);
    expect(dead).toHaveLength(20);
    expect(dead.every((d) => JSON.parse(d.payload).currency === 'GBP' && /already holds max_groups_per_window \(2\) groups; on_max_groups: dlq/.test(d.error))).toBe(true);
  });

  it('max_groups_per_window with on_max_groups: fail stops the run with one clear line and acknowledges nothing past it', async () => {
    const p = capProject('cap-fail', 'fail');
    const r = await sluiceAsync(['run', '--project', p, '--port', '0']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/model per_minute: the window starting 2026-01-01T00:00:00.000Z would hold more than max_groups_per_window \(2\) groups; raise it, or set on_max_groups: dlq/);
    expect(r.stderr).not.toMatch(/\n\s+at /); // no stack trace at the default log level
    expect(projectDeadLetters(p)).toEqual([]);
    // The batch that met the cap was never committed: a restart reads it again.
    const state = path.join(p, '.sluice', 'wal', 'state.json');
    expect(fs.existsSync(state) ? (JSON.parse(fs.readFileSync(state, 'utf8')) as { seq: number }).seq : 0).toBe(0);
  });

  it('a processing-time window (TUMBLE(PROCTIME(), ...)) closes as time passes, also while the source is quiet', async () => {
    const p = path.join(root, 'processing');
    writeFiles(p, {
      'config/sources.yml': 'source:\n  type: file\n  path: data\n  follow: true\n  dlq: .sluice/dlq\n',
      'config/sinks.yml': 'sink:\n  type: jsonl\n  path: ./output\n',
      'config/models.yml': 'max_age_seconds: 0.2\n',
      'models/per_second.sql': "SELECT TUMBLE_START(PROCTIME(), INTERVAL '1' SECOND) AS second, count(*) AS n FROM incoming GROUP BY TUMBLE(PROCTIME(), INTERVAL '1' SECOND)\n",
      'data/events.ndjson': '',
    });
    const w = sluiceBg(['run', '--project', p, '--port', '0']);
    try {
      await until(() => w.err().includes('reading from the source'), 30_000, 20);
      for (let i = 0; i < 20; i++) {
        fs.appendFileSync(path.join(p, 'data', 'events.ndjson'), `{"i":${i}}\n`);
        await new Promise((r) => setTimeout(r, 100));
      }
      // No more input: the last second's window closes on time alone.
      const total = () => jsonlRows<{ n: number }>(p, 'per_second').reduce((n, x) => n + x.n, 0);
      await until(() => total() === 20, 20_000, 100, 'every event in a closed window, the source quiet');
      expect(total()).toBe(20);
    } finally {
      w.kill('SIGTERM');
      await waitExit(w, 30_000);
    }
  });
});
