-- Euro revenue per minute, in euros: a stateless model may ref() a windowed one. It sees the
-- windowed model's rows when they are emitted, _revision included.
SELECT window_start, purchases, revenue_cents / 100.0 AS revenue_eur, _revision
FROM {{ ref('revenue_per_minute') }}
WHERE currency = 'EUR'
