import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { chromium } from 'playwright-core';
import { ROOT, httpGet, sluice, sluiceBg, tempDir, until, waitExit } from '../helpers/cli.js';

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

const example = path.join(ROOT, 'examples', 'orders');

describe('sluice docs', () => {
  it('generate writes one self-contained page for examples/orders: lineage, SQL, column types, descriptions, sinks, tests', () => {
    const out = tempDir();
    dirs.push(out);
    const r = sluice(['docs', 'generate', '--project', example, '--out', out]);
    expect(r.code, r.stderr).toBe(0);
    const html = fs.readFileSync(path.join(out, 'index.html'), 'utf8');
    // Nothing fetched from anywhere: no external scripts, styles, images or fonts.
    expect(html).not.toMatch(/<(script|link|img)[^>]+(src|href)=["']?https?:/i);
    expect(html).not.toMatch(/@import|url\(http/i);
    expect(html).toContain('<svg id="lineage"');
    for (const id of ['source.default', 'model.orders', 'model.purchases', 'sink.default']) expect(html).toContain(`data-id="${id}"`);
    // Column types come from DuckDB running the models on tests/sample.json.
    expect(html).toMatch(/<code>order_total<\/code><\/td><td><code>DOUBLE<\/code>/);
    expect(html).toMatch(/<code>item_count<\/code><\/td><td><code>BIGINT<\/code>/);
    expect(html).toContain('list_sum([i.price * i.quantity FOR i IN incoming.items])');
    expect(html).toContain('fixture <code>tests/sample.json</code>');
    // The flush thresholds as the user would write them (max_file_bytes 134217728 is 128 MiB).
    expect(html).toContain('<tr><th>flush</th><td>every 300 s or 128 MiB</td></tr>');
    const lineage = JSON.parse(fs.readFileSync(path.join(out, 'lineage.json'), 'utf8')) as { edges: unknown[] };
    expect(lineage.edges).toContainEqual({ from: 'model.orders', to: 'sink.default' });
  });

  it("shows a model's schema contract: its policies and the declared types", () => {
    const p = tempDir();
    dirs.push(p);
    fs.cpSync(example, p, { recursive: true });
    fs.writeFileSync(
      path.join(p, 'config/models.yml'),
      [
        'overrides:',
        '  orders:',
        '    columns:',
        '      - { name: order_id, type: bigint, description: the order }',
        '      - { name: order_total, type: "DECIMAL(12,2)" }',
        '    contract:',
        '      new_columns: evolve',
        '      type_changes: discard_value',
        '',
      ].join('\n'),
    );
    const out = path.join(p, 'site');
    const r = sluice(['docs', 'generate', '--project', p, '--out', out]);
    expect(r.code, r.stderr).toBe(0);
    const html = fs.readFileSync(path.join(out, 'index.html'), 'utf8');
    const section = (model: string) => {
      const from = html.indexOf(`<section class="model" id="model-${model}"`);
      return html.slice(from, html.indexOf('</section>', from));
    };
    const orders = section('orders');
    expect(orders).toContain('<tr><th>contract</th><td>new columns: <code>evolve</code>, type changes: <code>discard_value</code> (2 declared columns)</td></tr>');
    expect(orders).toMatch(/<code>order_id<\/code><\/td><td><code>BIGINT<\/code> <span class="declared"/);
    expect(orders).toMatch(/<code>order_total<\/code><\/td><td><code>DECIMAL\(12,2\)<\/code> <span class="declared"/);
    // A column outside the contract keeps the type DuckDB gives it on the fixture, unmarked.
    expect(orders).toMatch(/<code>item_count<\/code><\/td><td><code>BIGINT<\/code><\/td>/);
    expect(section('purchases')).toContain('<code>sku</code>');
    expect(section('purchases')).not.toContain('<th>contract</th>');
  });

  it('renders in headless Chromium without console errors; the graph has every node and the descriptions show', async () => {
    const root = tempDir();
    dirs.push(root);
    expect(sluice(['init', 'shop'], { cwd: root }).code).toBe(0);
    const p = path.join(root, 'shop');
    const r = sluice(['docs', 'generate', '--project', p]);
    expect(r.code, r.stderr).toBe(0);
    const page = path.join(p, '.sluice', 'docs', 'index.html');
    const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox'] });
    try {
      const tab = await browser.newPage({ viewport: { width: 1280, height: 900 } });
      const errors: string[] = [];
      const requests: string[] = [];
      tab.on('console', (m) => {
        if (m.type() === 'error') errors.push(m.text());
      });
      tab.on('pageerror', (e) => errors.push(String(e)));
      tab.on('request', (q) => {
        if (!q.url().startsWith('file://')) requests.push(q.url());
      });
      await tab.goto(`file://${page}`);
      const ids = await tab.$$eval('#lineage .node', (ns) => ns.map((n) => n.getAttribute('data-id')));
      expect(ids.sort()).toEqual(['model.large_orders', 'model.orders', 'model.purchases', 'model.refunds', 'sink.alerts', 'sink.lake', 'source.orders', 'source.refunds']);
      expect(await tab.$$eval('#lineage .edge', (es) => es.length)).toBe(8);
      // Every node is drawn inside the SVG and no two overlap.
      const boxes = await tab.$$eval('#lineage .node rect', (rs) => rs.map((r) => r.getBoundingClientRect()).map((b) => ({ x: b.x, y: b.y, w: b.width, h: b.height })));
      for (const [i, a] of boxes.entries()) {
        expect(a.w).toBeGreaterThan(50);
        for (const b of boxes.slice(i + 1)) expect(a.x + a.w <= b.x || b.x + b.w <= a.x || a.y + a.h <= b.y || b.y + b.h <= a.y).toBe(true);
      }
      expect(await tab.textContent('#model-orders .description')).toBe('One row per order, with its total.');
      expect(await tab.textContent('#model-large_orders .description')).toBe('Orders worth more than 100, for the alerting feed.');
      // Hovering a node traces its lineage (the page's script works).
      await tab.hover('#lineage .node[data-id="model.large_orders"]');
      expect(await tab.$$eval('#lineage .node.hl', (ns) => ns.map((n) => n.getAttribute('data-id')).sort())).toEqual(['model.large_orders', 'model.orders', 'sink.alerts', 'source.orders']);
      // The filter box hides other models.
      await tab.fill('#search', 'refund');
      expect(await tab.isVisible('#model-refunds')).toBe(true);
      expect(await tab.isVisible('#model-orders')).toBe(false);
      await tab.fill('#search', '');
      await tab.mouse.move(0, 0);
      await tab.screenshot({ path: path.join(root, 'docs.png') });
      expect(fs.statSync(path.join(root, 'docs.png')).size).toBeGreaterThan(10_000);
      expect(errors).toEqual([]);
      expect(requests).toEqual([]);
    } finally {
      await browser.close();
    }
  });

  it('serve generates the site and serves it over HTTP until stopped', async () => {
    const out = tempDir();
    dirs.push(out);
    const child = sluiceBg(['docs', 'serve', '--project', example, '--out', out, '--port', '0']);
    try {
      const url = await until(() => /serving docs at (http:\/\/\S+)/.exec(child.out())?.[1], 30_000);
      const index = await httpGet(url);
      expect(index.status).toBe(200);
      expect(index.body).toContain('<svg id="lineage"');
      expect((await httpGet(url + 'lineage.json')).status).toBe(200);
      expect((await httpGet(url + 'nope.html')).status).toBe(404);
      expect((await httpGet(url + '..%2f..%2fetc%2fpasswd')).status).not.toBe(200);
    } finally {
      child.kill('SIGTERM');
      await waitExit(child);
    }
  });
});
