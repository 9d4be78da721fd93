SELECT id, category, title, body FROM incoming WHERE length(body) > 0
