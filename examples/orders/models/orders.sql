-- One row per order: the order header with its total.
SELECT
    incoming.order_id,
    incoming.user.id                                            AS user_id,
    incoming.user.name                                          AS user_name,
    len(incoming.items)                                         AS item_count,
    list_sum([i.price * i.quantity FOR i IN incoming.items])    AS order_total,
    incoming.currency,
    incoming.placed_at
FROM incoming
