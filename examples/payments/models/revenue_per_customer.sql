-- A materialised view (a GROUP BY without a window): one row per customer, rewritten in the
-- warehouse table whenever a batch changes it (docs/views.md).
SELECT customer_id,
       count(*)           AS orders,
       count(paid_at)     AS paid_orders,
       sum(paid_cents)    AS revenue_cents,
       max(paid_at)       AS last_paid_at
FROM {{ ref('orders_paid') }}
GROUP BY customer_id
