// The clickstream of the windowed-aggregation benchmark and tests, its windowed models, and
// the same aggregations as plain DuckDB queries over the whole input. The events are purchases whose event times
// are out of order by up to JITTER_MS, with users active one minute in four (so that they have
// sessions). Deterministic: event i is always the same line.
import fs from 'node:fs';
import path from 'node:path';

export const BASE_MS = Date.UTC(2026, 0, 1);
export const STEP_MS = 5;
/** The most an event's time lags the order it is written in. */
export const JITTER_MS = 15_000;
/** The windowed models' `lateness`: more than JITTER_MS, so that no event is late. */
export const LATENESS = '20 seconds';

function mix(i, salt) {
  let x = (i + 1) * 2654435761 + salt * 40503;
  x = Math.imul(x ^ (x >>> 16), 0x45d9f3b);
  x = Math.imul(x ^ (x >>> 16), 0x45d9f3b);
  return (x ^ (x >>> 16)) >>> 0;
}

/** Event `i` as an NDJSON line. */
export function clickEvent(i) {
  const t = BASE_MS + i * STEP_MS - (mix(i, 1) % JITTER_MS);
  const slot = Math.floor((BASE_MS + i * STEP_MS) / 60_000);
  const user = `u${(slot % 4) + 4 * (mix(i, 2) % 75)}`;
  const currency = ['EUR', 'USD', 'GBP', 'JPY'][mix(i, 3) % 4];
  return JSON.stringify({ id: i, ts: new Date(t).toISOString(), user, currency, amount: mix(i, 4) % 100_000, page: `/p/${mix(i, 5) % 40}` });
}

/** Writes events from..to-1 to `file`, in pieces (a million lines do not fit one string comfortably). */
export function writeClicks(file, from, to) {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const fd = fs.openSync(file, 'w');
  try {
    for (let a = from; a < to; a += 50_000) {
      const lines = [];
      for (let i = a; i < Math.min(to, a + 50_000); i++) lines.push(clickEvent(i));
      fs.writeSync(fd, `${lines.join('\n')}\n`);
    }
  } finally {
    fs.closeSync(fd);
  }
}

/** `<dir>/clicks-<n>.ndjson` with events 0..n-1, generated the first time it is asked for. */
export function clicksFile(dir, n) {
  const file = path.join(dir, `clicks-${n}.ndjson`);
  if (!fs.existsSync(file)) {
    const t0 = performance.now();
    writeClicks(`${file}.tmp`, 0, n);
    fs.renameSync(`${file}.tmp`, file);
    console.log(`generated ${file} in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  }
  return file;
}

/** The windowed models (and one stateless model reading a windowed one), as model files. */
export const WINDOW_MODELS = {
  'models/revenue.sql': `-- Revenue per currency per minute (tumbling), with a spread of aggregates.
SELECT TUMBLE_START(ts, INTERVAL '1' MINUTE) AS window_start,
       TUMBLE_END(ts, INTERVAL '1' MINUTE) AS window_end,
       currency,
       sum(amount) AS revenue,
       count(*) AS orders,
       count(DISTINCT "user") AS buyers,
       approx_count_distinct(page) AS pages,
       quantile_disc(amount, 0.5) AS median_amount,
       arg_max(id, amount * 1000000 + id) AS top_order,
       count(*) FILTER (WHERE amount > 90000) AS big_orders,
       list(id ORDER BY id)[1:3] AS first_ids
FROM incoming
GROUP BY TUMBLE(ts, INTERVAL '1' MINUTE), currency
HAVING count(*) > 0
`,
  'models/moving.sql': `-- A five-minute moving average, every minute (hopping).
SELECT HOP_START(ts, INTERVAL '1' MINUTE, INTERVAL '5' MINUTE) AS window_start,
       HOP_END(ts, INTERVAL '1' MINUTE, INTERVAL '5' MINUTE) AS window_end,
       avg(amount) AS avg_amount,
       count(*) AS orders
FROM incoming
GROUP BY HOP(ts, INTERVAL '1' MINUTE, INTERVAL '5' MINUTE)
`,
  'models/sessions.sql': `-- User sessions: a gap of 30 seconds ends one.
SELECT SESSION_START(ts, INTERVAL '30' SECOND) AS session_start,
       SESSION_END(ts, INTERVAL '30' SECOND) AS session_end,
       "user",
       count(*) AS clicks,
       min(id) AS first_id,
       max(id) AS last_id
FROM incoming
GROUP BY SESSION(ts, INTERVAL '30' SECOND), "user"
`,
  'models/buckets.sql': `-- DuckDB's own tumbling form, over a filtered input.
SELECT time_bucket(INTERVAL '10 seconds', ts::TIMESTAMP) AS bucket, count(*) AS n, max(amount) AS top
FROM incoming
WHERE amount > 1000
GROUP BY time_bucket(INTERVAL '10 seconds', ts::TIMESTAMP)
`,
  'models/revenue_5m.sql': `-- A windowed model over a windowed one: five-minute revenue from the one-minute windows.
SELECT TUMBLE_START(window_start, INTERVAL '5' MINUTE) AS five, currency, sum(revenue) AS revenue, sum(orders) AS orders
FROM {{ ref('revenue') }}
GROUP BY TUMBLE(window_start, INTERVAL '5' MINUTE), currency
`,
  'models/revenue_eur.sql': `-- A stateless model reading a windowed one.
SELECT window_start, currency, revenue / 100.0 AS revenue_units FROM {{ ref('revenue') }} WHERE currency = 'EUR'
`,
};

export const WINDOW_MODELS_YML = `overrides:
${['revenue', 'moving', 'sessions', 'buckets'].map((m) => `  ${m}:\n    window:\n      lateness: ${LATENESS}\n`).join('')}`;

/** Each model's output as plain DuckDB computes it over the whole input (`events`: a table of the input). */
export const BATCH_QUERIES = {
  revenue: `SELECT time_bucket(INTERVAL 1 MINUTE, ts::TIMESTAMP) AS window_start, time_bucket(INTERVAL 1 MINUTE, ts::TIMESTAMP) + INTERVAL 1 MINUTE AS window_end, currency,
      sum(amount) AS revenue, count(*) AS orders, count(DISTINCT "user") AS buyers, approx_count_distinct(page) AS pages, quantile_disc(amount, 0.5) AS median_amount,
      arg_max(id, amount * 1000000 + id) AS top_order, count(*) FILTER (WHERE amount > 90000) AS big_orders, list(id ORDER BY id)[1:3] AS first_ids
    FROM events GROUP BY 1, 2, 3 HAVING count(*) > 0`,
  moving: `SELECT s AS window_start, s + INTERVAL 5 MINUTE AS window_end, avg(amount) AS avg_amount, count(*) AS orders
    FROM (SELECT *, unnest(generate_series(time_bucket(INTERVAL 1 MINUTE, ts::TIMESTAMP) - INTERVAL 4 MINUTE, time_bucket(INTERVAL 1 MINUTE, ts::TIMESTAMP), INTERVAL 1 MINUTE)) AS s FROM events)
    GROUP BY s`,
  sessions: `WITH o AS (SELECT *, ts::TIMESTAMP AS t FROM events),
      a AS (SELECT *, CASE WHEN t - lag(t) OVER (PARTITION BY "user" ORDER BY t) < INTERVAL 30 SECOND THEN 0 ELSE 1 END AS fresh FROM o),
      b AS (SELECT *, sum(fresh) OVER (PARTITION BY "user" ORDER BY t ROWS UNBOUNDED PRECEDING) AS sid FROM a)
    SELECT min(t) AS session_start, max(t) + INTERVAL 30 SECOND AS session_end, "user", count(*) AS clicks, min(id) AS first_id, max(id) AS last_id FROM b GROUP BY "user", sid`,
  buckets: `SELECT time_bucket(INTERVAL '10 seconds', ts::TIMESTAMP) AS bucket, count(*) AS n, max(amount) AS top FROM events WHERE amount > 1000 GROUP BY 1`,
  revenue_5m: `SELECT time_bucket(INTERVAL 5 MINUTE, ts::TIMESTAMP) AS five, currency, sum(amount) AS revenue, count(*) AS orders FROM events GROUP BY 1, 2`,
  revenue_eur: `SELECT time_bucket(INTERVAL 1 MINUTE, ts::TIMESTAMP) AS window_start, currency, sum(amount) / 100.0 AS revenue_units FROM events WHERE currency = 'EUR' GROUP BY 1, 2`,
};
