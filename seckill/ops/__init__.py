"""Running it: Prometheus metrics shared by the workers (metrics), the live dashboard
(dashboard), access and result logs (request_logs), and unexpected exceptions counted
and logged once (faults)."""
