SELECT order_id, customer_id, amount_cents, ordered_at
FROM {{ ref('orders_paid') }}
WHERE paid_at IS NULL
