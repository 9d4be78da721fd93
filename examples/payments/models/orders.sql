SELECT order_id, customer_id, amount_cents, CAST(ts AS TIMESTAMP) AS ordered_at
FROM {{ source('orders') }}
