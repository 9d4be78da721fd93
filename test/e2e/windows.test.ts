import fs from 'node:fs';
import path from 'node:path';
import { DuckDBInstance } from '@duckdb/node-api';
import { afterAll, describe, expect, it } from 'vitest';
import { jsonLogs, killRepeatedly, sluice, sluiceAsync, tempDir, writeFiles } from '../helpers/cli.js';
import { projectDeadLetters } from '../helpers/dlq.js';
import { compareWithBatch, loadEvents, WINDOW_MODELS, WINDOW_MODELS_YML, writeClicks } from '../helpers/window-data.js';

// Windowed aggregation, end to end through the CLI on real files: each kind of window gives
// exactly what plain DuckDB's GROUP BY over the whole input gives (batch equivalence), also when
// the run is SIGKILLed again and again (rewind equivalence), and late events follow the model's
// policy with exact counts.

const root = tempDir('sluice-windows-');
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

const MODELS = ['revenue', 'moving', 'sessions', 'buckets', 'revenue_eur'];

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

describe('windowed models', () => {
  it('validate accepts windowed models and `models list` shows each window', () => {
    const p = project('listed', 10);
    const v = sluice(['validate', '--project', p]);
    expect(v.stderr + v.stdout).not.toMatch(/stateful/);
    expect(v.code).toBe(0);
    const list = sluice(['models', 'list', '--project', p]);
    expect(list.code).toBe(0);
    expect(list.stdout).toMatch(/revenue .*TUMBLE\(ts, INTERVAL '1' MINUTE\)/);
    expect(list.stdout).toMatch(/sessions .*SESSION\(ts, INTERVAL '30' SECOND\)/);
  });

  it("over a million out-of-order events, each kind of window equals plain DuckDB's GROUP BY over the whole file", async () => {
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

describe('late events', () => {
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

  function lateProject(policy: string, extra = ''): string {
    const p = path.join(root, `late-${policy}`);
    writeFiles(p, {
      'config/sources.yml': 'source:\n  type: file\n  path: data\n  batch_size: 10\n  dlq: .sluice/dlq\n',
      'config/sinks.yml': 'sink:\n  type: jsonl\n  path: ./output\n',
      'config/models.yml': `overrides:\n  per_minute:\n    window:\n      late: ${policy}\n${extra}`,
      'models/per_minute.sql': "SELECT TUMBLE_START(ts, INTERVAL '1' MINUTE) AS minute, count(*) AS n, sum(v) AS total FROM incoming GROUP BY TUMBLE(ts, INTERVAL '1' MINUTE)\n",
      'data/events.ndjson': lateInput(),
    });
    return p;
  }

  function outputRows(p: string): Record<string, unknown>[] {
    const dir = path.join(p, 'output', 'per_minute');
    return fs
      .readdirSync(dir)
      .filter((f) => f.endsWith('.jsonl'))
      .flatMap((f) => fs.readFileSync(path.join(dir, f), 'utf8').split('\n').filter(Boolean))
      .map((l) => JSON.parse(l) as Record<string, unknown>);
  }

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
});
