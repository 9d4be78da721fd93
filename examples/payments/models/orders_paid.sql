-- A stream join: each order meets the payments of the same order made within 10 minutes after it.
-- An order that none meets is emitted with NULL payment columns once the watermark passes its
-- 10 minutes (docs/joins.md).
SELECT o.order_id, o.customer_id, o.amount_cents, o.ordered_at,
       p.paid_at, p.method, p.amount_cents AS paid_cents
FROM {{ ref('orders') }} o
LEFT JOIN {{ ref('payments') }} p
  ON p.order_id = o.order_id
 AND p.paid_at BETWEEN o.ordered_at AND o.ordered_at + INTERVAL '10' MINUTE
