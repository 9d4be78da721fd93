-- Each order with its customer (a lookup join on the CRM's table) and its total in EUR (a
-- lookup join on the rates file). An order whose customer is not in the CRM keeps NULLs.
SELECT
    o.order_id,
    o.customer_id,
    c.name                          AS customer_name,
    coalesce(c.tier, 'unknown')     AS tier,
    c.country,
    o.currency,
    o.total,
    round(o.total * r.to_eur, 2)    AS total_eur,
    o.placed_at
FROM incoming AS o
LEFT JOIN customers AS c ON c.id = o.customer_id
LEFT JOIN rates AS r ON r.currency = o.currency
