import fs from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { sluice } from '../helpers/cli.js';
import { showcase } from '../helpers/showcase.js';

// The showcase project (sluice init), made once for this file.
const shop = showcase();
const variant = shop.variant;
let p: string;
beforeAll(() => {
  p = shop.dir();
});

describe('sluice lineage', () => {
  it('ascii: a tree from each source down to the sinks', () => {
    const r = sluice(['lineage', '--project', p]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.trim()).toBe(
      [
        'source orders (file)',
        '├── model orders',
        '│   ├── sink lake (parquet)',
        '│   └── model large_orders',
        '│       └── sink alerts (jsonl)',
        '└── model purchases',
        '    └── sink lake (parquet)',
        'source refunds (file)',
        '└── model refunds',
        '    └── sink lake (parquet)',
      ].join('\n'),
    );
  });

  it('--model with --upstream / --downstream', () => {
    const up = sluice(['lineage', '--project', p, '--model', 'large_orders', '--upstream']);
    expect(up.code, up.stderr).toBe(0);
    expect(up.stdout.trim()).toBe(['upstream of large_orders:', 'model large_orders', '└── model orders', '    └── source orders (file)'].join('\n'));
    const down = sluice(['lineage', '--project', p, '--model', 'orders', '--downstream']);
    expect(down.stdout.trim()).toBe(['downstream of orders:', 'model orders', '├── sink lake (parquet)', '└── model large_orders', '    └── sink alerts (jsonl)'].join('\n'));
    expect(sluice(['lineage', '--project', p, '--upstream']).code).toBe(2);
    const bad = sluice(['lineage', '--project', p, '--model', 'nope']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/no model named "nope" \(models: orders, large_orders, purchases, refunds\)/);
  });

  it('mermaid flowchart LR and json nodes + edges', () => {
    const m = sluice(['lineage', '--project', p, '--format', 'mermaid']);
    expect(m.code, m.stderr).toBe(0);
    const lines = m.stdout.split('\n');
    expect(lines[0]).toBe('flowchart LR');
    expect(lines).toContain('  source_orders(["orders (file)"])');
    expect(lines).toContain('  sink_lake[("lake (parquet)")]');
    expect(lines).toContain('  model_orders --> model_large_orders');
    expect(lines).toContain('  model_large_orders --> sink_alerts');
    const j = sluice(['lineage', '--project', p, '--format', 'json', '--model', 'refunds']);
    const g = JSON.parse(j.stdout) as { nodes: { id: string; kind: string }[]; edges: { from: string; to: string }[] };
    expect(g.nodes.map((n) => n.id)).toEqual(['source.refunds', 'model.refunds', 'sink.lake']);
    expect(g.edges).toEqual([
      { from: 'source.refunds', to: 'model.refunds' },
      { from: 'model.refunds', to: 'sink.lake' },
    ]);
  });

  it('config(sink=...) in the SQL wins over config/models.yml', () => {
    // The scaffold's refunds model, with a config() line on top (its documented columns stay).
    const sql = fs.readFileSync(path.join(p, 'models/refunds.sql'), 'utf8');
    const d = variant({ 'models/refunds.sql': `{{ config(sink='alerts') }}\n${sql}` });
    const c = sluice(['compile', '--project', d, '--model', 'refunds']);
    expect(c.code, c.stderr).toBe(0);
    expect(c.stdout).toMatch(/-- refunds \(.*\): stateless, source refunds, sink alerts/);
  });

  it('validate reports unknown names, cycles, unused sources and bad config() keys with file and line', () => {
    const d = variant({
      'models/refunds.sql': "-- refunds\n{{ config(sink='nowhere') }}\nSELECT r.refund_id FROM {{ source('refundz') }} AS r\n",
      'models/a.sql': "SELECT x FROM {{ ref('b') }}\n",
      'models/b.sql': "SELECT x\nFROM {{ ref('a') }}\n",
      'models/c.sql': "{{ config(snk='lake') }}\nSELECT o.order_id FROM {{ ref('orderz') }} AS o\n",
    });
    const r = sluice(['validate', '--project', d]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/models\/refunds\.sql:2: unknown sink "nowhere" \(sinks: lake, alerts\)/);
    expect(r.stderr).toMatch(/models\/refunds\.sql:3: source\('refundz'\): no source named "refundz" \(sources: orders, refunds\)/);
    expect(r.stderr).toMatch(/models\/(a|b)\.sql:\d: models form a cycle: (a -> b -> a|b -> a -> b)/);
    expect(r.stderr).toMatch(/models\/c\.sql:1: config\(\.\.\.\): unknown key snk/);
    expect(r.stderr).toMatch(/models\/c\.sql:2: ref\('orderz'\): no model named "orderz"/);
    expect(r.stderr).toMatch(/config\/sources\.yml:\d+: source "refunds" is not read by any model/);
  });

  it('documented columns are checked against the model, with the line in models.yml', () => {
    const yml = fs.readFileSync(path.join(p, 'config/models.yml'), 'utf8').replace('      - name: line_total', '      - name: line_totl');
    const d = variant({ 'config/models.yml': yml });
    const r = sluice(['validate', '--project', d]);
    expect(r.code).toBe(2);
    const line = yml.split('\n').findIndex((l) => l.includes('line_totl')) + 1;
    expect(r.stderr).toContain(`config/models.yml:${line}: model purchases has no column "line_totl" to document`);
  });

  it('models list and compile show stateful models with the reason', () => {
    const d = variant({ 'models/totals.sql': "{{ config(sink='lake') }}\nSELECT o.currency, count(*) AS n FROM {{ source('orders') }} AS o GROUP BY 1\n" });
    const l = sluice(['models', 'list', '--project', d]);
    expect(l.code, l.stderr).toBe(0);
    expect(l.stdout).toMatch(/totals .*\| materialised view: a row per o\.currency kept current/);
    expect(l.stdout).toMatch(/refunds .*\| stateless/);
    const c = sluice(['compile', '--project', d, '--model', 'totals']);
    expect(c.stdout).toMatch(/-- totals \(.*\): materialised view: a row per o\.currency kept current/);
    // Its sink appends: validate says so, and what to do instead.
    const v = sluice(['validate', '--project', d]);
    expect(v.code).toBe(2);
    expect(v.stderr).toMatch(/model totals aggregates without a window .*but sink lake \(\w+\) appends/);
  });
});
