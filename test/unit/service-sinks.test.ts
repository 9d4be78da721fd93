import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { useDuckDB } from '../helpers/duckdb.js';
import { ConfigError } from '../../src/errors.js';
import { scaffold } from '../../src/cli/init.js';
import { loadProject } from '../../src/project/project-loader.js';
import { jsonRowBatches, jsonRowChunks, templateColumns, templateProblem, templateSql } from '../../src/connectors/row-json.js';
import { retryAfterMs } from '../../src/connectors/http/http-sink.js';
import { prepareFlush } from '../../src/engine/flush-relation.js';

// The row->JSON encoding the service sinks share, routing templates, Retry-After parsing and
// the sinks' config errors (file, line, key).

const tmp: string[] = [];
afterAll(() => {
  for (const d of tmp) fs.rmSync(d, { recursive: true, force: true });
});
function tempDir(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-svc-sinks-'));
  tmp.push(d);
  return d;
}

describe('rows as JSON', () => {
  const conn = useDuckDB();

  it('is lossless: digits of big integers and decimals, UTC ISO instants, NaN/Infinity as strings, base64 blobs, nested values, NULLs', async () => {
    const file = path.join(tempDir(), 'seg.parquet');
    await conn().run(`SET TimeZone = 'America/New_York'`);
    await conn().run(`COPY (SELECT 0 AS __sluice_msg, 9007199254740993::BIGINT AS b, 18446744073709551615::UBIGINT AS ub,
      12345678901234567.891::DECIMAL(38,3) AS d, TIMESTAMP '2024-01-02 03:04:05.123456' AS ts, TIMESTAMPTZ '2024-01-02 03:04:05+02' AS tz,
      TIMESTAMP_NS '2024-01-02 03:04:05.123456789' AS tns, DATE '2024-01-02' AS dt, TIME '03:04:05' AS tm, 'nan'::DOUBLE AS n, 'inf'::DOUBLE AS pi,
      '-inf'::FLOAT AS ni, 1.1::FLOAT AS f, 0.1::DOUBLE AS g, NULL::DOUBLE AS nd, '\\x00\\xFFab'::BLOB AS bl, 'é"\n\\' AS "we'ird",
      NULL::INTEGER AS nl, [1, 2] AS l, {'a': 1, 'b': 'x'} AS st, true AS bo
      UNION ALL SELECT 1, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL) TO '${file}'`);
    const rows: (string | null)[][] = [];
    const flush = await prepareFlush(conn(), { model: 'm', name: 'f', files: [file] });
    for await (const chunk of jsonRowChunks(flush.write, conn())) rows.push(...chunk);
    await flush.release();
    await conn().run(`RESET TimeZone`);
    expect(rows[0][0]).toBe(
      '{"b":9007199254740993,"ub":18446744073709551615,"d":12345678901234567.891,"ts":"2024-01-02T03:04:05.123456","tz":"2024-01-02T01:04:05.000000Z",' +
        '"tns":"2024-01-02T03:04:05.123456789","dt":"2024-01-02","tm":"03:04:05","n":"NaN","pi":"Infinity","ni":"-Infinity","f":1.1,"g":0.1,"nd":null,' +
        '"bl":"AP9hYg==","we\'ird":"é\\"\\n\\\\","nl":null,"l":[1,2],"st":{"a":1,"b":"x"},"bo":true}',
    );
    expect(JSON.parse(rows[1][0]!)).toEqual(Object.fromEntries(Object.keys(JSON.parse(rows[0][0]!) as object).map((k) => [k, null])));
  });

  it('numbers rows across segments in order and regroups them into batches; templates evaluate per row, NULL when a column is', async () => {
    const dir = tempDir();
    const segs = [0, 1, 2].map((i) => path.join(dir, `s${i}.parquet`));
    for (let i = 0; i < 3; i++) {
      await conn().run(`COPY (SELECT range AS __sluice_msg, ${i} * 1000 + range AS id, CASE WHEN range = 2 THEN NULL ELSE 'eu' END AS region
        FROM range(1000)) TO '${segs[i]}'`);
    }
    const batches: { first: number; ids: number[]; keys: (string | null)[] }[] = [];
    const flush = await prepareFlush(conn(), { model: 'm', name: 'f', files: segs });
    for await (const b of jsonRowBatches(flush.write, conn(), [templateSql('o:{region}:{id}')], 700)) {
      batches.push({ first: b.first, ids: b.rows.map((r) => (JSON.parse(r[0]!) as { id: number }).id), keys: b.rows.map((r) => r[1]) });
    }
    await flush.release();
    expect(batches.map((b) => [b.first, b.ids.length])).toEqual([
      [0, 700],
      [700, 700],
      [1400, 700],
      [2100, 700],
      [2800, 200],
    ]);
    expect(batches.flatMap((b) => b.ids)).toEqual(Array.from({ length: 3000 }, (_, i) => i));
    const keys = batches.flatMap((b) => b.keys);
    expect(keys[0]).toBe('o:eu:0');
    expect(keys[2]).toBeNull();
    expect(keys[1002]).toBeNull();
    expect(keys[2999]).toBe('o:eu:2999');
  });
});

describe('templates', () => {
  it('names the columns it reads; {{ and }} are braces; malformed ones are explained', () => {
    expect(templateColumns('order:{order_id}:{ region }')).toEqual(['order_id', 'region']);
    expect(templateColumns('plain')).toEqual([]);
    expect(templateSql('a{{b}}{c}')).toBe(`('a{b}' || CAST(t."c" AS VARCHAR))`);
    expect(templateSql("it's")).toBe(`('it''s')`);
    expect(templateProblem('order:{order_id')).toBe('unclosed "{" at character 7 of "order:{order_id"');
    expect(templateProblem('a}b')).toBe('unmatched "}" at character 2 of "a}b" (write }} for a brace)');
    expect(templateProblem('x{}')).toBe('expected a column name inside {} at character 2 of "x{}"');
    expect(templateProblem('ok.{a}')).toBeUndefined();
  });
});

describe('Retry-After', () => {
  it('reads seconds and HTTP dates, caps at 5 minutes, ignores garbage', () => {
    expect(retryAfterMs('2')).toBe(2000);
    expect(retryAfterMs('0.5')).toBe(500);
    expect(retryAfterMs('99999')).toBe(300_000);
    const soon = retryAfterMs(new Date(Date.now() + 10_000).toUTCString())!;
    expect(soon).toBeGreaterThan(8_000);
    expect(soon).toBeLessThanOrEqual(10_000);
    expect(retryAfterMs(new Date(Date.now() - 10_000).toUTCString())).toBe(0);
    expect(retryAfterMs('soon')).toBeUndefined();
    expect(retryAfterMs(null)).toBeUndefined();
  });
});

describe('service sink config errors name the file, line and key', () => {
  async function loadWithSinks(sinks: string): Promise<string> {
    const dir = tempDir();
    await scaffold(dir, 'unit');
    fs.writeFileSync(path.join(dir, 'config/sinks.yml'), sinks);
    try {
      loadProject({ project: dir });
    } catch (e) {
      if (e instanceof ConfigError) return e.message;
      throw e;
    }
    throw new Error('expected a ConfigError');
  }

  it('redis: a mode without its key, a key of the other mode, a malformed template', async () => {
    expect(await loadWithSinks('sink:\n  type: redis\n  mode: xadd\n  ttl_seconds: 5\n')).toMatch(/config\/sinks\.yml:\d+: (sink\.)?stream: mode xadd needs stream/);
    expect(await loadWithSinks('sink:\n  type: redis\n  mode: xadd\n  stream: s\n  ttl_seconds: 5\n')).toMatch(/config\/sinks\.yml:5: (sink\.)?ttl_seconds: ttl_seconds does not apply to mode xadd/);
    expect(await loadWithSinks('sink:\n  type: redis\n  key: "order:{order_id"\n')).toMatch(/config\/sinks\.yml:3: (sink\.)?key: unclosed "\{" at character 7/);
  });

  it('http: a URL that is not http(s), an unknown key; rabbitmq and nats: bad templates and keys', async () => {
    expect(await loadWithSinks('sink:\n  type: http\n  url: ftp://x/y\n')).toMatch(/config\/sinks\.yml:3: (sink\.)?url: expected an http:\/\/ or https:\/\/ URL/);
    expect(await loadWithSinks('sink:\n  type: http\n  url: http://x/y\n  retries: 3\n')).toMatch(/config\/sinks\.yml:\d+: .*retries/);
    expect(await loadWithSinks('sink:\n  type: rabbitmq\n  exchange: e\n  routing_key: "a.{b"\n')).toMatch(/config\/sinks\.yml:4: (sink\.)?routing_key: unclosed/);
    expect(await loadWithSinks('sink:\n  type: nats\n  subject: s\n  subjects: [s]\n')).toMatch(/config\/sinks\.yml:4: (sink\.)?subjects: subjects needs stream/);
  });
});
