import fsp from 'node:fs/promises';
import path from 'node:path';
import { orderMessage } from '../connectors/generator/generator-source.js';

export const ORDERS_SQL = `-- One row per order: the order header with its total.
SELECT
    incoming.order_id,
    incoming.user.id                                            AS user_id,
    incoming.user.name                                          AS user_name,
    len(incoming.items)                                         AS item_count,
    list_sum([i.price * i.quantity FOR i IN incoming.items])    AS order_total,
    incoming.currency,
    incoming.placed_at
FROM incoming
`;

export const PURCHASES_SQL = `-- One row per line item: unnest() fans an order out into its items.
SELECT
    incoming.order_id,
    unnest.sku,
    unnest.name                                  AS product_name,
    unnest.quantity,
    unnest.price                                 AS unit_price,
    round(unnest.price * unnest.quantity, 2)     AS line_total,
    incoming.user.id                             AS user_id,
    incoming.placed_at
FROM incoming, unnest(incoming.items)
`;

/** Sample order messages: `count` good ones plus, optionally, two that must go to the DLQ. */
export function sampleOrders(count: number, withBad: boolean): string {
  const lines: string[] = [];
  for (let i = 0; i < count; i++) {
    lines.push(orderMessage(i, 7));
    if (withBad && i === Math.floor(count / 3)) lines.push('{"order_id": 99001, "user": {"id": 3, "name": "Trunc');
    if (withBad && i === Math.floor((2 * count) / 3)) lines.push('{"order_id": 99002, "user": "not-an-object", "items": [], "currency": "EUR", "placed_at": "2024-01-01T00:00:00Z"}');
  }
  return lines.join('\n') + '\n';
}

/** Writes a new project: file source over data/, Parquet sink, the orders and purchases models. */
export async function scaffold(dir: string, name: string, opts: { messages?: number } = {}): Promise<void> {
  const files: Record<string, string> = {
    'sluice.yml': `name: ${name}\n\nwal:\n  path: .sluice/wal     # durable staging; put it on a persistent volume in production\n\nserver:\n  port: 9400           # /healthz, /readyz, /metrics during \`sluice run\` (0 = off)\n`,
    'config/sources.yml': `source:\n  type: file\n  path: data/*.ndjson        # a file, a directory or a glob of NDJSON\n  follow: false             # true: keep tailing for new lines\n  batch_size: 1000\n  batch_timeout_ms: 1000\n  dlq: .sluice/dlq          # dead letters: NDJSON records with the payload and the error\n`,
    'config/sinks.yml': `sink:\n  type: parquet\n  path: \${OUTPUT_DIR:-./output}\n  compression: zstd\n`,
    'config/models.yml': `# Flush a model's WAL to the sink when either threshold is reached (and at end of input).\nmax_file_bytes: 134217728   # 128 MiB\nmax_age_seconds: 300\n\noverrides:\n  purchases:\n    max_age_seconds: 60\n`,
    'models/orders.sql': ORDERS_SQL,
    'models/purchases.sql': PURCHASES_SQL,
    'tests/sample.json': JSON.stringify(
      [JSON.parse(orderMessage(0, 7)), JSON.parse(orderMessage(1, 7)), { order_id: 3, user: { id: 9, name: 'Ken' }, items: [], currency: 'USD', placed_at: '2024-01-01T00:00:03Z' }],
      null,
      2,
    ) + '\n',
    'data/orders.ndjson': sampleOrders(opts.messages ?? 50, false),
    '.gitignore': '.sluice/\noutput/\n',
  };
  for (const [rel, content] of Object.entries(files)) {
    const p = path.join(dir, rel);
    await fsp.mkdir(path.dirname(p), { recursive: true });
    await fsp.writeFile(p, content);
  }
}
