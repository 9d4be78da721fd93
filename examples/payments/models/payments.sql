SELECT order_id, method, amount_cents, CAST(ts AS TIMESTAMP) AS paid_at
FROM {{ source('payments') }}
