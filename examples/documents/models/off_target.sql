-- SQL after code: the handler's rows, read like a model's.
SELECT id, category, ratio, target FROM {{ ref('compress') }} WHERE ratio > target
