"""Talking to Redis: clients from a URL (client), the ordered pipe that carries batches
back to back (ordered_pipe) and its cluster form (cluster_pipe), coalesced reads
(reads), and the embedded redis-server child (embedded)."""
