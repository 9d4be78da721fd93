import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { orderMessage } from '../../src/connectors/generator/generator-source.js';
import { query, sluiceBg, tempDir, waitExit, writeFiles } from '../helpers/cli.js';
import { projectDeadLetters } from '../helpers/dlq.js';

// Hostile input through the CLI, with default settings: a schema explosion (every message adds
// a new top-level key) and a soak of deep, wide, huge and broken messages among good orders.
// The run must finish, keep every good message, dead-letter the rest with the limit that caught
// it, and stay within a stated memory bound (peak RSS of the process, read from /proc).

const root = tempDir('sluice-hostile-');
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

/** The process's peak resident memory so far (VmHWM), in bytes; 0 once it is gone. */
function peakRss(pid: number): number {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

/** Runs the project to its end; returns the exit, the seconds it took and its peak RSS. */
async function measuredRun(dir: string): Promise<{ code: number | null; stderr: string; seconds: number; rss: number }> {
  const t = performance.now();
  const child = sluiceBg(['run', '--project', dir, '--port', '0']);
  let rss = 0;
  const timer = setInterval(() => (rss = Math.max(rss, peakRss(child.pid!))), 50);
  const exit = await waitExit(child, 240_000);
  clearInterval(timer);
  return { code: exit.code, stderr: child.err(), seconds: (performance.now() - t) / 1000, rss };
}

const GiB = 2 ** 30;

describe('hostile input with default settings', () => {
  it('20,000 messages each adding a new top-level key: incoming stops at max_columns, the run keeps its pace and its memory flat', async () => {
    const dir = path.join(root, 'explosion');
    const lines = Array.from({ length: 20_000 }, (_, i) => JSON.stringify({ a: i, b: 'x', [`k${i}`]: i }));
    writeFiles(dir, {
      'config/sources.yml': 'source:\n  type: file\n  path: data\n  dlq: .sluice/dlq\n',
      'config/sinks.yml': 'sink:\n  type: parquet\n  path: output\n',
      'models/m.sql': 'SELECT incoming.a, incoming.b FROM incoming\n',
      'data/keys.ndjson': lines.join('\n') + '\n',
    });
    const r = await measuredRun(dir);
    expect(r.code, r.stderr.slice(-2000)).toBe(0);
    const [out] = await query(`SELECT count(*)::INT AS n, count(DISTINCT a)::INT AS d FROM read_parquet('${dir}/output/m/*.parquet')`);
    const letters = projectDeadLetters(dir);
    expect(Number(out.n) + letters.length).toBe(20_000);
    expect(out.n).toBe(out.d);
    expect(letters.every((l) => /limits\.max_columns \(1000 fields\)/.test(l.error))).toBe(true);
    console.log(`schema explosion: ${r.seconds.toFixed(1)} s, peak RSS ${(r.rss / 2 ** 20).toFixed(0)} MiB, ${out.n} rows, ${letters.length} dead letters`);
    // Before the column cap: 12,000 of them in 343 s and 22.5 GB. Generous bounds for a loaded machine.
    expect(r.seconds).toBeLessThan(90);
    expect(r.rss).toBeLessThan(1 * GiB);
  });

  it('soak: deep, wide, huge, broken and invalid UTF-8 messages among 30,000 orders; every order kept, each other message dead-lettered with its reason, RSS bounded', async () => {
    const dir = path.join(root, 'soak');
    const parts: Buffer[] = [];
    let hostile = 0;
    const wide = JSON.stringify(Object.fromEntries(Array.from({ length: 20_000 }, (_, i) => [`w${i}`, i])));
    const huge = JSON.stringify({ order_id: -1, blob: 'x'.repeat(20 * 2 ** 20) });
    for (let i = 0; i < 30_000; i++) {
      parts.push(Buffer.from(orderMessage(i, 3) + '\n'));
      if (i % 600 !== 17) continue;
      const kind = (i / 600) | 0;
      hostile++;
      if (kind % 5 === 0) parts.push(Buffer.from('{"x":'.repeat(5000) + '1' + '}'.repeat(5000) + '\n'));
      else if (kind % 5 === 1) parts.push(Buffer.from(wide + '\n'));
      else if (kind % 5 === 2) parts.push(Buffer.from(huge + '\n'));
      else if (kind % 5 === 3) parts.push(Buffer.concat([Buffer.from('{"order_id": "'), Buffer.from([0xc3, 0x28, 0xff]), Buffer.from('"}\n')]));
      else parts.push(Buffer.from('{"order_id": 12, "items": [1, 2\n'));
    }
    writeFiles(dir, {
      'config/sources.yml': 'source:\n  type: file\n  path: data\n  dlq: .sluice/dlq\n',
      'config/sinks.yml': 'sink:\n  type: parquet\n  path: output\n',
      'models/orders.sql': 'SELECT incoming.order_id, incoming.currency, len(incoming.items) AS items FROM incoming\n',
    });
    fs.mkdirSync(path.join(dir, 'data'), { recursive: true });
    fs.writeFileSync(path.join(dir, 'data/mixed.ndjson'), Buffer.concat(parts));
    const r = await measuredRun(dir);
    expect(r.code, r.stderr.slice(-2000)).toBe(0);
    const [out] = await query(`SELECT count(*)::INT AS n, count(DISTINCT order_id)::INT AS d, min(order_id)::INT AS lo, max(order_id)::INT AS hi FROM read_parquet('${dir}/output/orders/*.parquet')`);
    expect(out).toEqual({ n: 30_000, d: 30_000, lo: 1, hi: 30_000 });
    const letters = projectDeadLetters(dir);
    expect(letters.length).toBe(hostile);
    const reasons = new Set(letters.map((l) => l.error.replace(/\d+/g, 'N')));
    expect([...reasons].some((x) => x.includes('max_depth'))).toBe(true);
    expect([...reasons].some((x) => x.includes('max_columns'))).toBe(true);
    expect([...reasons].some((x) => x.includes('max_message_bytes'))).toBe(true);
    expect([...reasons].some((x) => x.includes('UTF-N') || x.includes('UTF-8'))).toBe(true);
    expect([...reasons].some((x) => x.startsWith('invalid JSON'))).toBe(true);
    expect(letters.every((l) => l.stage === 'decode')).toBe(true);
    console.log(`soak: ${r.seconds.toFixed(1)} s, peak RSS ${(r.rss / 2 ** 20).toFixed(0)} MiB, ${letters.length} dead letters`);
    expect(r.rss).toBeLessThan(1 * GiB);
  });
});
