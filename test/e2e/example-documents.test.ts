import fs from 'node:fs';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ROOT, query, sluiceAsync, tempDir } from '../helpers/cli.js';
import { lockPostgres, pgQuery } from '../helpers/sql-db.js';

// examples/documents, run as a user would: validate, test, lineage and run. Each document's row
// (its best gzip level and ratio, from three gzip processes) equals what zlib makes of the same
// body at the same levels, in Parquet and in the machine's PostgreSQL (under a table name of
// this test's own, through RATIOS_TABLE); the SQL model after the handler keeps those over target.

const root = tempDir('sluice-example-documents-');
const table = `example_ratios_${process.pid}`;
const env = { RATIOS_TABLE: table };
let release: () => void = () => {};
beforeAll(async () => {
  release = await lockPostgres();
});
afterAll(async () => {
  await pgQuery(`DROP TABLE IF EXISTS ${table}, ${table}_applied`).catch(() => {});
  fs.rmSync(root, { recursive: true, force: true });
  release();
});

describe('examples/documents', () => {
  it('validates, tests, shows the handler in its lineage, and runs: each document compressed by gzip at three levels, the best kept, in Parquet and PostgreSQL', async () => {
    const p = path.join(root, 'documents');
    fs.cpSync(path.join(ROOT, 'examples', 'documents'), p, { recursive: true, filter: (src) => !/[\\/](output|\.sluice)$/.test(src) });
    const v = await sluiceAsync(['validate', '--project', p], { env });
    expect(v.code, v.stderr).toBe(0);
    const t = await sluiceAsync(['test', '--project', p], { env });
    expect(t.code, t.stdout + t.stderr).toBe(0);
    expect(t.stdout).toMatch(/compress \(2 rows\)/);
    const l = await sluiceAsync(['lineage', '--project', p], { env });
    expect(l.stdout).toMatch(/model compress \[handler\]\n[\s\S]*sink warehouse \(postgres\)[\s\S]*model off_target/);
    const r = await sluiceAsync(['run', '--project', p, '--port', '0'], { env, timeout: 180_000 });
    expect(r.code, r.stderr.slice(-2000)).toBe(0);
    expect(r.stderr).toMatch(/targets loaded categories=4 handler=compress/);

    // What gzip -1, -6, -9 make of each body, run here apart from sluice.
    const docs = fs
      .readFileSync(path.join(p, 'data/documents.ndjson'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { id: number; category: string; body: string })
      .filter((d) => d.body.length > 0);
    const targets = JSON.parse(fs.readFileSync(path.join(p, 'reference/targets.json'), 'utf8')) as Record<string, number>;
    const got = await query(`SELECT id, category, bytes, best_level, best_bytes, ratio, target FROM read_parquet('${p}/output/compress/*.parquet') ORDER BY id`);
    expect(got).toHaveLength(docs.length);
    const want: unknown[][] = [];
    for (let i = 0; i < docs.length; i += 8) {
      const part = await Promise.all(
        docs.slice(i, i + 8).map(async (d) => {
          const sizes = await Promise.all([1, 6, 9].map((level) => gzipSize(d.body, level)));
          const best = Math.min(...sizes);
          const bytes = Buffer.byteLength(d.body);
          return [d.id, d.category, bytes, [1, 6, 9][sizes.indexOf(best)], best, Math.round((best / bytes) * 1000) / 1000, targets[d.category]];
        }),
      );
      want.push(...part);
    }
    expect(got.map((r) => [Number(r.id), r.category, Number(r.bytes), Number(r.best_level), Number(r.best_bytes), Number(r.ratio), Number(r.target)])).toEqual(want);
    const pg = await pgQuery<{ id: number; ratio: number }>(`SELECT id, ratio FROM ${table} ORDER BY id`);
    expect(pg.map((x) => [Number(x.id), Number(x.ratio)])).toEqual(got.map((x) => [Number(x.id), Number(x.ratio)]));
    const off = await query(`SELECT id FROM read_parquet('${p}/output/off_target/*.parquet') ORDER BY id`);
    expect(off.map((x) => Number(x.id))).toEqual(got.filter((x) => Number(x.ratio) > Number(x.target)).map((x) => Number(x.id)));
    expect(off.length).toBeGreaterThan(0);
  });
});

/** The size of what `gzip -c -<level>` makes of `text`. */
function gzipSize(text: string, level: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = execFile('/usr/bin/gzip', ['-c', `-${level}`], { encoding: 'buffer' }, (err, stdout) => (err ? reject(err) : resolve(stdout.length)));
    child.stdin?.end(text);
  });
}
