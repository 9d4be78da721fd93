-- Revenue per currency per minute of event time: tumbling windows.
SELECT
    TUMBLE_START(ts, INTERVAL '1' MINUTE)          AS window_start,
    TUMBLE_END(ts, INTERVAL '1' MINUTE)            AS window_end,
    currency,
    count(*) FILTER (WHERE amount > 0)             AS purchases,
    sum(amount)                                    AS revenue_cents,
    count(DISTINCT "user")                         AS visitors
FROM incoming
GROUP BY TUMBLE(ts, INTERVAL '1' MINUTE), currency
