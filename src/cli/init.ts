import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
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

/** Refund events: the second source of the showcase project. */
function sampleRefunds(count: number): string {
  const reasons = ['damaged', 'late', 'wrong item', 'changed mind'];
  const lines: string[] = [];
  for (let i = 0; i < count; i++) {
    lines.push(
      JSON.stringify({
        refund_id: 5000 + i,
        order_id: 1 + i * 3,
        amount: Math.round((5 + ((i * 37) % 90)) * 100) / 100,
        reason: reasons[i % reasons.length],
        refunded_at: new Date(Date.UTC(2024, 0, 2, 0, 0, i)).toISOString(),
      }),
    );
  }
  return lines.join('\n') + '\n';
}

const SHOWCASE_ORDERS_SQL = `-- One row per order: the order header with its total.
SELECT
    o.order_id,
    o.user.id                                            AS user_id,
    o.user.name                                          AS user_name,
    len(o.items)                                         AS item_count,
    list_sum([i.price * i.quantity FOR i IN o.items])    AS order_total,
    o.currency,
    o.placed_at
FROM {{ source('orders') }} AS o
`;

const SHOWCASE_PURCHASES_SQL = `-- One row per line item of an order (unnest() fans an order out).
SELECT
    o.order_id,
    unnest.sku,
    unnest.name                                  AS product_name,
    unnest.quantity,
    unnest.price                                 AS unit_price,
    round(unnest.price * unnest.quantity, 2)     AS line_total
FROM {{ source('orders') }} AS o, unnest(o.items)
`;

const SHOWCASE_LARGE_ORDERS_SQL = `{{ config(sink='alerts', description='Orders worth more than 100, for the alerting feed.') }}
-- ref() reads another model's output for the same messages; config() above picks the sink
-- (it wins over config/models.yml).
SELECT order_id, user_name, order_total, currency
FROM {{ ref('orders') }}
WHERE order_total > 100
`;

const SHOWCASE_REFUNDS_SQL = `-- Refunds, from the second source.
SELECT
    r.refund_id,
    r.order_id,
    r.amount,
    lower(r.reason)      AS reason,
    r.refunded_at
FROM {{ source('refunds') }} AS r
`;

/** sluice.yml of the showcase: dev and prod targets. */
const showcaseSluiceYml = (name: string) => `name: ${name}

# Environments: --target NAME (or $SLUICE_TARGET) picks one; \`target:\` is the default.
# A target overrides sources and sinks key by key and sets vars for \${VAR} in config files
# (an environment variable of the same name still wins).
target: dev
targets:
  dev:
    vars:
      OUTPUT_DIR: ./output
  prod:
    vars:
      OUTPUT_DIR: ./output-prod
    sinks:
      lake:
        compression: zstd

wal:
  path: .sluice/wal     # durable staging; put it on a persistent volume in production

server:
  port: 9400           # /healthz, /readyz, /metrics during \`sluice run\` (0 = off)
`;

const SHOWCASE_SOURCES_YML = `# Named sources; a model reads one with {{ source('name') }}.
# \`sluice run\` runs every source, each with the models it feeds; --source orders runs one.
sources:
  orders:
    type: file
    path: data/orders.ndjson
    dlq: .sluice/dlq/orders   # dead letters: NDJSON records with the payload and the error
  refunds:
    type: file
    path: data/refunds.ndjson
    dlq: .sluice/dlq/refunds
`;

const SHOWCASE_SINKS_YML = `# Named sinks; a model picks its sink(s) in config/models.yml or with {{ config(sink='...') }}.
sinks:
  lake:
    type: parquet
    path: \${OUTPUT_DIR}/lake
  alerts:
    type: jsonl
    path: \${OUTPUT_DIR}/alerts
`;

const SHOWCASE_MODELS_YML = `# Flush a model's WAL to its sinks when either threshold is reached (and at end of input).
max_file_bytes: 134217728   # 128 MiB
max_age_seconds: 300

# Per model: sink(s), flush thresholds, documentation for \`sluice docs\`, and data tests.
# Data tests run on the fixtures' output in \`sluice test\` and on every batch in \`sluice run\`;
# on_failure: warn (default: log + metric) | dlq (the message goes to the DLQ) | fail (stop).
overrides:
  orders:
    sink: lake
    description: One row per order, with its total.
    columns:
      - name: order_id
        description: The order's id, unique per order.
        tests: [not_null, unique]
      - name: currency
        tests:
          - accepted_values: { values: [EUR, USD, GBP] }
      - name: order_total
        description: Sum of price x quantity over the order's items.
        tests:
          - range: { min: 0, on_failure: dlq }
    tests:
      - expression: item_count >= 0
        name: item_count_not_negative
  purchases:
    sink: lake
    max_age_seconds: 60
    description: One row per line item of an order.
    columns:
      - name: quantity
        tests:
          - range: { min: 1 }
      - name: line_total
        description: unit_price x quantity, rounded to cents.
  refunds:
    sink: lake
    description: Refunds as they are issued.
    columns:
      - name: reason
        tests:
          - accepted_values: { values: [damaged, late, wrong item, changed mind] }
`;

/** tests/orders.yml: unit tests — messages given inline and the exact rows each model must output. */
const SHOWCASE_UNIT_TESTS_YML = `unit_tests:
  - name: large_orders_are_over_100
    description: an order of 2 kettles (118.0) is large; one of filters (6.5) is not
    messages:
      - { order_id: 10, user: { id: 1, name: Ada }, items: [{ sku: SKU-1002, name: Pour-over kettle, quantity: 2, price: 59.0 }], currency: EUR, placed_at: '2024-01-01T00:00:00Z' }
      - { order_id: 11, user: { id: 2, name: Alan }, items: [{ sku: SKU-1003, name: Paper filters x100, quantity: 1, price: 6.5 }], currency: USD, placed_at: '2024-01-01T00:00:01Z' }
    expect:
      orders:
        - { order_id: 10, item_count: 1, order_total: 118.0 }
        - { order_id: 11, item_count: 1, order_total: 6.5 }
      large_orders:
        - { order_id: 10, user_name: Ada, order_total: 118.0 }
`;

/**
 * Writes the project `sluice init` creates: two sources (orders, refunds), models reading them
 * with source() and ref(), two sinks, descriptions for `sluice docs`, fixtures for `sluice test`,
 * and dev/prod targets.
 */
export async function scaffoldShowcase(dir: string, name: string): Promise<void> {
  const files: Record<string, string> = {
    'sluice.yml': showcaseSluiceYml(name),
    'config/sources.yml': SHOWCASE_SOURCES_YML,
    'config/sinks.yml': SHOWCASE_SINKS_YML,
    'config/models.yml': SHOWCASE_MODELS_YML,
    'models/orders.sql': SHOWCASE_ORDERS_SQL,
    'models/purchases.sql': SHOWCASE_PURCHASES_SQL,
    'models/large_orders.sql': SHOWCASE_LARGE_ORDERS_SQL,
    'models/refunds.sql': SHOWCASE_REFUNDS_SQL,
    // tests/<source>.json: what `sluice test` (and `sluice docs`, for column types) feeds each source.
    'tests/orders.json':
      JSON.stringify(
        [JSON.parse(orderMessage(0, 7)), JSON.parse(orderMessage(1, 7)), { order_id: 3, user: { id: 9, name: 'Ken' }, items: [], currency: 'USD', placed_at: '2024-01-01T00:00:03Z' }],
        null,
        2,
      ) + '\n',
    'tests/orders.yml': SHOWCASE_UNIT_TESTS_YML,
    'tests/refunds.json':
      JSON.stringify(
        sampleRefunds(2)
          .trim()
          .split('\n')
          .map((l) => JSON.parse(l) as unknown),
        null,
        2,
      ) + '\n',
    'data/orders.ndjson': sampleOrders(50, false),
    'data/refunds.ndjson': sampleRefunds(10),
    '.gitignore': '.sluice/\noutput/\noutput-prod/\n',
  };
  await writeProject(dir, files);
}

/** The JSON Schemas shipped with sluice (schema/ of the package, generated by `npm run docs:gen`). */
const SCHEMA_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'schema');

/** The schema file for a scaffolded YAML file, by its path in the project. */
function schemaFileFor(rel: string): string | undefined {
  if (rel === 'sluice.yml') return 'sluice.schema.json';
  if (rel === 'config/sources.yml') return 'sources.schema.json';
  if (rel === 'config/sinks.yml') return 'sinks.schema.json';
  if (rel === 'config/models.yml') return 'models.schema.json';
  if (/^tests\/[^/]+\.ya?ml$/.test(rel)) return 'unit-tests.schema.json';
  return undefined;
}

/**
 * The first line of a scaffolded YAML file: the yaml-language-server modeline naming its JSON
 * Schema inside this sluice installation (an absolute file URL, valid wherever the project is),
 * so that editors complete and check its keys. None when the installation has no such schema.
 */
export function schemaModeline(rel: string): string | undefined {
  const name = schemaFileFor(rel);
  if (!name) return undefined;
  const file = path.join(SCHEMA_DIR, name);
  return fs.existsSync(file) ? `# yaml-language-server: $schema=${pathToFileURL(file).href}\n` : undefined;
}

async function writeProject(dir: string, files: Record<string, string>): Promise<void> {
  for (const [rel, content] of Object.entries(files)) {
    const p = path.join(dir, rel);
    await fsp.mkdir(path.dirname(p), { recursive: true });
    await fsp.writeFile(p, (schemaModeline(rel) ?? '') + content);
  }
}

/** Writes a minimal project: file source over data/, Parquet sink, the orders and purchases models. */
export async function scaffold(dir: string, name: string, opts: { messages?: number } = {}): Promise<void> {
  const files: Record<string, string> = {
    'sluice.yml': `name: ${name}\n\nwal:\n  path: .sluice/wal     # durable staging; put it on a persistent volume in production\n\nserver:\n  port: 9400           # /healthz, /readyz, /metrics during \`sluice run\` (0 = off)\n`,
    'config/sources.yml': `source:\n  type: file\n  path: data/*.ndjson        # a file, a directory or a glob of NDJSON\n  follow: false             # true: keep tailing for new lines\n  dlq: .sluice/dlq          # dead letters: NDJSON records with the payload and the error\n`,
    'config/sinks.yml': `sink:\n  type: parquet\n  path: \${OUTPUT_DIR:-./output}\n  compression: zstd\n`,
    'config/models.yml': `# Flush a model's WAL to the sink when either threshold is reached (and at end of input).\nmax_file_bytes: 134217728   # 128 MiB\nmax_age_seconds: 300\n\noverrides:\n  purchases:\n    max_age_seconds: 60\n`,
    'models/orders.sql': ORDERS_SQL,
    'models/purchases.sql': PURCHASES_SQL,
    'tests/sample.json':
      JSON.stringify(
        [JSON.parse(orderMessage(0, 7)), JSON.parse(orderMessage(1, 7)), { order_id: 3, user: { id: 9, name: 'Ken' }, items: [], currency: 'USD', placed_at: '2024-01-01T00:00:03Z' }],
        null,
        2,
      ) + '\n',
    'data/orders.ndjson': sampleOrders(opts.messages ?? 50, false),
    '.gitignore': '.sluice/\noutput/\n',
  };
  await writeProject(dir, files);
}
