"""Sales and orders as Redis keeps them: keys, the Lua scripts and their replies, terms
(sale_store); orders after the win, lookups, cancel, confirm, the hold sweeper
(order_book)."""
