-- A five-minute moving average of purchase amounts per currency, every minute: hopping windows.
SELECT
    HOP_START(ts, INTERVAL '1' MINUTE, INTERVAL '5' MINUTE)    AS window_start,
    HOP_END(ts, INTERVAL '1' MINUTE, INTERVAL '5' MINUTE)      AS window_end,
    currency,
    round(avg(amount) FILTER (WHERE amount > 0))               AS avg_purchase_cents,
    count(*) FILTER (WHERE amount > 0)                         AS purchases
FROM incoming
GROUP BY HOP(ts, INTERVAL '1' MINUTE, INTERVAL '5' MINUTE), currency
