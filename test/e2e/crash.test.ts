import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { DuckDBInstance } from '@duckdb/node-api';
import { orderMessage } from '../../src/connectors/generator/generator-source.js';
import { sluice, sluiceAsync, sluiceBg, tempDir, waitExit, writeFiles } from '../helpers/cli.js';
import { projectDeadLetters } from '../helpers/dlq.js';

// Crash test: SIGKILL `sluice run` at random moments, restart it each time, and prove that
// every message's rows end up in the output exactly once and that readers never see a
// partial file. Nothing is mocked: real processes, real files, DuckDB reading them back.

const KILLS = 24;
const FILES = 3;
const PER_FILE = 8000;

const root = tempDir('sluice-crash-');
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

function setup(name = 'proj', opts: { perFile?: number; partitioned?: boolean; bad?: number } = {}): string {
  const p = path.join(root, name);
  const perFile = opts.perFile ?? PER_FILE;
  const files: Record<string, string> = {
    'config/sources.yml': 'source:\n  type: file\n  path: data\n  batch_size: 300\n  batch_timeout_ms: 200\n  dlq: .sluice/dlq\n',
    'config/sinks.yml': `sink:\n  type: parquet\n  path: ./output\n${opts.partitioned ? '  partition_by: [currency]\n' : ''}`,
    // Small thresholds so flushes happen all the time and kills land in the middle of them.
    'config/models.yml': 'max_file_bytes: 60000\nmax_age_seconds: 0.3\n',
    'models/orders.sql': 'SELECT incoming.order_id, incoming.user.id AS user_id, list_sum([i.price * i.quantity FOR i IN incoming.items]) AS total, incoming.currency FROM incoming\n',
    'models/purchases.sql': `SELECT incoming.order_id, unnest.sku, unnest.quantity${opts.partitioned ? ', incoming.currency' : ''} FROM incoming, unnest(incoming.items)\n`,
  };
  for (let f = 0; f < FILES; f++) {
    const lines: string[] = [];
    for (let i = 0; i < perFile; i++) {
      lines.push(orderMessage(f * perFile + i, 11));
      if (i % 997 === 500 && (opts.bad ?? 0) > f) lines.push(`{"order_id": "broken ${f}-${i}`);
    }
    files[`data/part-${f}.ndjson`] = lines.join('\n') + '\n';
  }
  writeFiles(p, files);
  return p;
}

/** Appends one more input file of `count` orders numbered from `from` + 1 (read after the others). */
function addInput(p: string, n: number, from: number, count: number): void {
  const lines = Array.from({ length: count }, (_, i) => orderMessage(from + i, 11));
  writeFiles(p, { [`data/part-x${String(n).padStart(3, '0')}.ndjson`]: lines.join('\n') + '\n' });
}

/** Reads every visible Parquet file of the output like an outside reader would. */
async function readerPass(conn: Awaited<ReturnType<DuckDBInstance['connect']>>, out: string, problems: string[]): Promise<number> {
  let checked = 0;
  for (const model of ['orders', 'purchases']) {
    const dir = path.join(out, model);
    let names: string[] = [];
    try {
      names = fs.readdirSync(dir);
    } catch {
      continue;
    }
    for (const n of names) {
      if (n.endsWith('.tmp') || n.includes('staging')) continue; // hidden temp names, never matched by *.parquet
      if (!n.endsWith('.parquet')) {
        problems.push(`unexpected entry visible to readers: ${model}/${n}`);
        continue;
      }
      try {
        await conn.run(`SELECT count(*) FROM read_parquet('${path.join(dir, n)}')`);
        checked++;
      } catch (err) {
        // A file renamed away between readdir and read is fine; a torn file is not.
        if (fs.existsSync(path.join(dir, n))) problems.push(`${model}/${n} unreadable: ${(err as Error).message}`);
      }
    }
  }
  return checked;
}

describe('crash safety', () => {
  it(`survives ${KILLS} SIGKILLs with every message's rows exactly once`, async () => {
    const p = setup();
    const out = path.join(p, 'output');
    const db = await DuckDBInstance.create(':memory:');
    const reader = await db.connect();
    const problems: string[] = [];
    let reads = 0;
    let kills = 0;
    let total = FILES * PER_FILE;
    let added = 0;

    // A run that drains the input before its kill (a fast machine) gets more input: the loop
    // goes on until KILLS runs were killed mid-way, whatever the machine's speed.
    for (let i = 0; i < KILLS * 3 && kills < KILLS; i++) {
      const child = sluiceBg(['run', '--project', p, '--port', '0', '--log-level', 'warn']);
      const delay = 300 + Math.floor(Math.random() * 900);
      const deadline = Date.now() + delay;
      while (Date.now() < deadline && child.exitCode === null) {
        reads += await readerPass(reader, out, problems);
        await new Promise((r) => setTimeout(r, 20));
      }
      if (child.exitCode === null) {
        child.kill('SIGKILL');
        kills++;
      }
      const res = await waitExit(child);
      if (res.signal === null) {
        expect(res.code, child.err()).toBe(0);
        addInput(p, added++, total, PER_FILE);
        total += PER_FILE;
      }
    }
    expect(kills).toBe(KILLS);
    const last = sluice(['run', '--project', p, '--port', '0', '--log-level', 'warn'], { timeout: 120_000 });
    expect(last.code, last.stderr).toBe(0);
    reads += await readerPass(reader, out, problems);
    expect(problems).toEqual([]);
    expect(reads).toBeGreaterThan(0);

    await verifyExactlyOnce(reader, p, total);
    reader.closeSync();
    db.closeSync();
  }, 300_000);

  // Kills placed exactly where a random kill rarely lands: between the steps of a commit or a flush.
  // These runs crash at their point whatever their timing, each in a project of its own: they run
  // concurrently (after the test above, whose kills land at random moments of runs it times).
  const points = ['before-commit', 'after-commit', 'after-flush-intent', 'sink-temp-written', 'after-sink-write', 'mid-truncate'];
  for (const partitioned of [false, true]) {
    for (const point of points.map((x) => (partitioned && x === 'sink-temp-written' ? 'sink-staged' : x))) {
      it.concurrent(`recovers exactly once from a kill at ${point}${partitioned ? ' (partitioned)' : ''}`, async () => {
        const p = setup(`${point}-${partitioned}`, { perFile: 1500, partitioned, bad: 2 });
        const crashed = await sluiceAsync(['run', '--project', p, '--port', '0', '--log-level', 'error'], { env: { SLUICE_CRASH_AT: point, SLUICE_CRASH_AFTER: '2' }, timeout: 60_000 });
        expect(crashed.code, `expected a kill at ${point}: ${crashed.stderr}`).toBe(-1);
        // A second crash at the same point during recovery, when the run gets that far.
        const again = await sluiceAsync(['run', '--project', p, '--port', '0', '--log-level', 'error'], { env: { SLUICE_CRASH_AT: point, SLUICE_CRASH_AFTER: '2' }, timeout: 60_000 });
        expect([0, -1]).toContain(again.code);
        const r = await sluiceAsync(['run', '--project', p, '--port', '0', '--log-level', 'warn'], { timeout: 60_000 });
        expect(r.code, r.stderr).toBe(0);
        const db = await DuckDBInstance.create(':memory:');
        const conn = await db.connect();
        await verifyExactlyOnce(conn, p, FILES * 1500, partitioned);
        // Each bad message is dead-lettered exactly once, however often its batch was replayed.
        const bad = ['0-500', '0-1497', '1-500', '1-1497'].map((x) => `{"order_id": "broken ${x}`);
        expect(
          projectDeadLetters(p)
            .map((d) => d.payload)
            .sort(),
        ).toEqual(bad.sort());
        conn.closeSync();
        db.closeSync();
      }, 120_000);
    }
  }
});

async function verifyExactlyOnce(reader: Awaited<ReturnType<DuckDBInstance['connect']>>, p: string, total: number, partitioned = false): Promise<void> {
  const out = path.join(p, 'output');
  const glob = partitioned ? '**/*.parquet' : '*.parquet';
  {
    // Exactly once: every order once, and purchases equal to what DuckDB computes from the input.
    const orders = await reader.runAndReadAll(`SELECT count(*), count(DISTINCT order_id), min(order_id), max(order_id) FROM read_parquet('${out}/orders/${glob}')`);
    expect(orders.getRows()[0].map(Number)).toEqual([total, total, 1, total]);
    const diff = await reader.runAndReadAll(`
      WITH got AS (SELECT order_id, sku, quantity FROM read_parquet('${out}/purchases/${glob}')),
           want AS (SELECT incoming.order_id, unnest.sku, unnest.quantity
                    FROM read_json('${p}/data/*.ndjson', format = 'newline_delimited', ignore_errors = true) incoming, unnest(incoming.items)
                    WHERE incoming.order_id IS NOT NULL)
      SELECT (SELECT count(*) FROM (SELECT * FROM got EXCEPT ALL SELECT * FROM want)) AS extra,
             (SELECT count(*) FROM (SELECT * FROM want EXCEPT ALL SELECT * FROM got)) AS missing,
             (SELECT count(*) FROM want) AS wanted`);
    const [extra, missing, wanted] = diff.getRows()[0].map(Number);
    expect({ extra, missing }).toEqual({ extra: 0, missing: 0 });
    expect(wanted).toBeGreaterThan(total / 2);
    // Nothing left behind: WAL drained, no temp files.
    const wal = path.join(p, '.sluice', 'wal', 'models');
    for (const m of fs.readdirSync(wal)) expect(fs.readdirSync(path.join(wal, m))).toEqual([]);
  }
}
