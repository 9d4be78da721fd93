import fs from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { parquetFiles, query, sluice, tempDir, writeFiles } from '../helpers/cli.js';

const dirs: string[] = [];
function project(): string {
  const root = tempDir();
  dirs.push(root);
  const r = sluice(['init', 'proj', '--template', 'minimal'], { cwd: root });
  expect(r.code, r.stderr).toBe(0);
  return path.join(root, 'proj');
}
afterEach(() => {
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

describe('sluice CLI end to end', () => {
  it('prints help and exits 0', () => {
    const r = sluice(['--help']);
    expect(r.code).toBe(0);
    for (const cmd of ['init', 'validate', 'compile', 'test', 'run', 'models', 'dlq']) expect(r.stdout).toContain(cmd);
  });

  it('exits 2 on an unknown command or flag', () => {
    expect(sluice(['frobnicate']).code).toBe(2);
    expect(sluice(['validate', '--nope']).code).toBe(2);
  });

  it('init scaffolds a project that validates, tests and runs as generated', async () => {
    const p = project();
    const v = sluice(['validate', '--project', p]);
    expect(v.code, v.stderr).toBe(0);
    expect(v.stdout).toMatch(/ok: project proj: 2 model/);

    const t = sluice(['test', '--project', p, '--fixture', path.join(p, 'tests/sample.json')]);
    expect(t.code, t.stderr).toBe(0);
    expect(t.stdout).toMatch(/orders \(3 rows\)/);
    expect(t.stdout).toMatch(/purchases \(2 rows\)/);

    const run = sluice(['run', '--project', p, '--port', '0']);
    expect(run.code, run.stderr).toBe(0);
    const orders = await query(`SELECT order_id, user_id, item_count, order_total FROM read_parquet('${p}/output/orders/*.parquet') ORDER BY order_id`);
    expect(orders).toHaveLength(50);
    // The same SQL run by plain DuckDB over the same messages gives the same values.
    const expected = await query(`
      SELECT incoming.order_id, incoming.user.id AS user_id, len(incoming.items) AS item_count,
             list_sum([i.price * i.quantity FOR i IN incoming.items]) AS order_total
      FROM read_json('${p}/data/orders.ndjson', format = 'newline_delimited') incoming ORDER BY 1`);
    expect(orders).toEqual(expected);
  });

  it('init (showcase) scaffolds two sources, four models with ref(), docs and targets that validate, test and run as generated', async () => {
    const root = tempDir();
    dirs.push(root);
    const init = sluice(['init', 'shop'], { cwd: root });
    expect(init.code).toBe(0);
    expect(init.stdout).toMatch(/^ {2}sluice run +# every source, each with the models it feeds$/m);
    const p = path.join(root, 'shop');
    const v = sluice(['validate', '--project', p]);
    expect(v.code, v.stderr).toBe(0);
    expect(v.stdout).toMatch(/ok: project shop \(target dev\): 4 model\(s\) \[orders, large_orders, purchases, refunds\], source orders \(file\), refunds \(file\)/);
    const t = sluice(['test', '--project', p]);
    expect(t.code, t.stderr).toBe(0);
    expect(t.stdout).toMatch(/orders \(3 rows\)/);
    expect(t.stdout).toMatch(/refunds \(2 rows\)/);
    expect(t.stdout).toMatch(/5 message\(s\), 5 ok, 0 failed/);
    expect(t.stdout).toContain('7 data test(s): 7 passed, 0 failed; 1 unit test(s): 1 passed, 0 failed');
    // One `sluice run` runs both sources, each as its own pipeline.
    const run = sluice(['run', '--project', p, '--port', '0']);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stderr).toMatch(/done pipeline=orders messages=50 /);
    expect(run.stderr).toMatch(/done pipeline=refunds messages=10 /);
    const big = await query(`SELECT count(*) AS n FROM read_json('${p}/output/alerts/large_orders/*.jsonl')`);
    const want = await query(`SELECT count(*) AS n FROM read_parquet('${p}/output/lake/orders/*.parquet') WHERE order_total > 100`);
    expect(Number(big[0].n)).toBeGreaterThan(0);
    expect(big).toEqual(want);
    const refunds = await query(`SELECT count(*) AS n FROM read_parquet('${p}/output/lake/refunds/*.parquet')`);
    expect(Number(refunds[0].n)).toBe(10);
    expect(sluice(['docs', 'generate', '--project', p]).code).toBe(0);
    expect(fs.existsSync(path.join(p, '.sluice/docs/index.html'))).toBe(true);
  });

  it('test --format json prints rows per model and exits 1 when a message fails', () => {
    const p = project();
    const fixture = path.join(p, 'tests/mixed.ndjson');
    fs.writeFileSync(
      fixture,
      [
        '{"order_id": 1, "user": {"id": 5, "name": "A"}, "items": [{"sku": "X", "name": "x", "quantity": 2, "price": 1.5}], "currency": "EUR", "placed_at": "t"}',
        '{"order_id": 2, "user": {"id": 6, "name": "B"}, "items": [], "currency": "EUR", "placed_at": "t"}',
        'not json at all',
      ].join('\n'),
    );
    const r = sluice(['test', '--project', p, '--fixture', fixture, '--format', 'json']);
    expect(r.code).toBe(1);
    const out = JSON.parse(r.stdout) as { models: Record<string, Record<string, unknown>[]>; failures: { stage: string; error: string }[] };
    expect(out.models.orders.map((o) => o.order_id)).toEqual([1, 2]);
    expect(out.models.purchases).toEqual([{ order_id: 1, sku: 'X', product_name: 'x', quantity: 2, unit_price: 1.5, line_total: 3, user_id: 5, placed_at: 't' }]);
    expect(out.failures).toHaveLength(1);
    expect(out.failures[0].stage).toBe('decode');
    expect(out.failures[0].error).toMatch(/invalid JSON/);
  });

  it('test --model limits the output to one model', () => {
    const p = project();
    const r = sluice(['test', '--project', p, '--fixture', path.join(p, 'tests/sample.json'), '--model', 'purchases']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('purchases (2 rows)');
    expect(r.stdout).not.toContain('orders (');
  });

  it('reports every config error at once with file, line and key, exit 2, no stack trace', () => {
    const p = project();
    fs.writeFileSync(path.join(p, 'config/sources.yml'), 'source:\n  type: file\n  path: data/*.ndjson\n  batch_size: ten\n  colour: blue\n');
    fs.writeFileSync(path.join(p, 'config/sinks.yml'), 'sink:\n  type: parquet\n  path: ${NOPE_NOT_SET}\n');
    fs.writeFileSync(path.join(p, 'models/broken.sql'), "SELECT x FROM {{ ref('missing') }}\n");
    const r = sluice(['validate', '--project', p]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/sources\.yml:4: source\.batch_size: expected number/);
    expect(r.stderr).toMatch(/sources\.yml:5: source\.colour: unknown key "colour"/);
    expect(r.stderr).toMatch(/sinks\.yml:3: environment variable NOPE_NOT_SET is not set/);
    expect(r.stderr).toMatch(/broken\.sql:1: ref\('missing'\): no model named "missing"/);
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });

  it('validate rejects stateful SQL with an explanation', () => {
    const p = project();
    fs.writeFileSync(path.join(p, 'models/totals.sql'), 'SELECT incoming.currency, row_number() OVER () AS n FROM incoming\n');
    const r = sluice(['validate', '--project', p]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/totals\.sql: model totals is stateful: window function row_number\(\) looks at other rows/);
    // An aggregate without a window is a materialised view, which only an upserting sink keeps:
    // the reason, and the alternatives.
    fs.writeFileSync(path.join(p, 'models/totals.sql'), 'SELECT incoming.currency, count(*) AS n FROM incoming GROUP BY 1\n');
    const v = sluice(['validate', '--project', p]);
    expect(v.code).toBe(2);
    expect(v.stderr).toMatch(
      /totals\.sql: model totals aggregates without a window \(a materialised view: each batch writes the current row of every group it changed\), but sink \w+ \(\w+\) appends.*Write it to a sink that upserts .*or group by a window: GROUP BY TUMBLE/,
    );
  });

  it("validate rejects a model column named like one of sluice's own columns, in any case", () => {
    const p = project();
    fs.writeFileSync(path.join(p, 'models/clash.sql'), 'SELECT incoming.order_id, 1 AS __Sluice_Row, 2 AS __sluice_message FROM incoming\n');
    const r = sluice(['validate', '--project', p]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/clash\.sql: model clash has a column named __Sluice_Row, a name sluice keeps for its own use/);
  });

  it('validate reports a SQL syntax error with its line', () => {
    const p = project();
    fs.writeFileSync(path.join(p, 'models/typo.sql'), '-- a comment\nSELECT incoming.order_id\nFROM incoming WHERE AND\n');
    const r = sluice(['validate', '--project', p]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/typo\.sql:3: .*syntax error/i);
  });

  it('--config and --models point at other directories; ${VAR:-default} applies', async () => {
    const p = project();
    fs.renameSync(path.join(p, 'config'), path.join(p, 'conf2'));
    fs.renameSync(path.join(p, 'models'), path.join(p, 'sql'));
    const r = sluice(['run', '--project', p, '--config', path.join(p, 'conf2'), '--models', path.join(p, 'sql'), '--port', '0'], {
      env: { OUTPUT_DIR: path.join(p, 'elsewhere') },
    });
    expect(r.code, r.stderr).toBe(0);
    expect(parquetFiles(path.join(p, 'elsewhere', 'orders'))).toHaveLength(1);
  });

  it('compile prints the rendered SQL and models list shows the DAG', () => {
    const p = project();
    writeFiles(p, { 'models/big_orders.sql': "SELECT order_id, order_total FROM {{ ref('orders') }} WHERE order_total > 100\n" });
    const c = sluice(['compile', '--project', p]);
    expect(c.code, c.stderr).toBe(0);
    expect(c.stdout).toContain('FROM sluice_model."orders" WHERE order_total > 100');
    expect(c.stdout.indexOf('-- orders')).toBeLessThan(c.stdout.indexOf('-- big_orders'));
    const l = sluice(['models', 'list', '--project', p]);
    expect(l.code).toBe(0);
    expect(l.stdout).toMatch(/big_orders\s+\|.*\|\s+orders\s+\|\s+stateless/);
  });

  it('runs ref() chains on every batch', async () => {
    const p = project();
    writeFiles(p, { 'models/big_orders.sql': "SELECT order_id, order_total FROM {{ ref('orders') }} WHERE order_total > 100\n" });
    const r = sluice(['run', '--project', p, '--port', '0']);
    expect(r.code, r.stderr).toBe(0);
    const got = await query(`SELECT count(*) AS n FROM read_parquet('${p}/output/big_orders/*.parquet')`);
    const want = await query(`SELECT count(*) AS n FROM read_parquet('${p}/output/orders/*.parquet') WHERE order_total > 100`);
    expect(Number(got[0].n)).toBeGreaterThan(0);
    expect(got).toEqual(want);
  });

  it('run --model runs one model (and nothing else)', () => {
    const p = project();
    const r = sluice(['run', '--project', p, '--port', '0', '--model', 'models/purchases.sql']);
    expect(r.code, r.stderr).toBe(0);
    expect(parquetFiles(path.join(p, 'output', 'purchases'))).toHaveLength(1);
    expect(fs.existsSync(path.join(p, 'output', 'orders'))).toBe(false);
  });

  it('run --dry-run prints one batch and writes nothing', () => {
    const p = project();
    const r = sluice(['run', '--project', p, '--port', '0', '--dry-run']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/dry run: 50 messages/);
    expect(r.stdout).toMatch(/orders \(50 rows\)/);
    expect(fs.existsSync(path.join(p, 'output', 'orders'))).toBe(false);
    expect(fs.existsSync(path.join(p, '.sluice', 'wal', 'state.json'))).toBe(false);
  });

  it('--log-json writes JSON log lines', () => {
    const p = project();
    const r = sluice(['run', '--project', p, '--port', '0', '--log-json']);
    expect(r.code).toBe(0);
    const lines = r.stderr.trim().split('\n');
    expect(lines.length).toBeGreaterThan(0);
    for (const l of lines) expect(() => JSON.parse(l)).not.toThrow();
    expect(lines.map((l) => JSON.parse(l).msg)).toContain('done');
  });

  it('partitions Parquet output into Hive directories committed as one directory', async () => {
    const p = project();
    writeFiles(p, { 'config/sinks.yml': 'sink:\n  type: parquet\n  path: ./output\n  partition_by: [currency]\n' });
    writeFiles(p, { 'models/purchases.sql': 'SELECT incoming.order_id, unnest.sku, incoming.currency FROM incoming, unnest(incoming.items)\n' });
    const r = sluice(['run', '--project', p, '--port', '0']);
    expect(r.code, r.stderr).toBe(0);
    const files = parquetFiles(path.join(p, 'output', 'orders')).map((f) => path.relative(path.join(p, 'output', 'orders'), f));
    expect(files.length).toBeGreaterThan(1);
    for (const f of files) expect(f).toMatch(/^part-\d+-\d+\/currency=(EUR|USD|GBP)\/data_0\.parquet$/);
    const rows = await query(`SELECT currency, count(*) AS n FROM read_parquet('${p}/output/orders/**/*.parquet', hive_partitioning = true) GROUP BY 1 ORDER BY 1`);
    expect(rows.reduce((n, r) => n + Number(r.n), 0)).toBe(50);
    const staging = path.join(p, 'output', '.staging');
    const leftovers = fs.existsSync(staging) ? fs.readdirSync(staging, { recursive: true }) : [];
    expect(leftovers.filter((f) => String(f).endsWith('.parquet'))).toEqual([]);
  });

  it('validate rejects a partition column a model does not produce', () => {
    const p = project();
    writeFiles(p, { 'config/sinks.yml': 'sink:\n  type: parquet\n  path: ./output\n  partition_by: [user_name]\n' });
    const r = sluice(['validate', '--project', p]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/sinks\.yml:4: sink\.partition_by: model purchases .* has no column "user_name"/);
  });
});
