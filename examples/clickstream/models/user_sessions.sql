-- Each user's sessions: a session ends when 30 seconds pass without a click.
SELECT
    SESSION_START(ts, INTERVAL '30' SECOND)    AS session_start,
    SESSION_END(ts, INTERVAL '30' SECOND)      AS session_end,
    "user",
    count(*)                                   AS clicks,
    arg_min(page, ts)                          AS landing_page,
    sum(amount)                                AS spent_cents,
    bool_or(page = '/checkout')                AS converted
FROM incoming
GROUP BY SESSION(ts, INTERVAL '30' SECOND), "user"
