"""Config: what the user set (flags and environment), nothing wired at run time."""

from __future__ import annotations

import dataclasses
import logging

from seckill.admission import batcher as batching
from seckill.http.connection import Limits

log = logging.getLogger("seckill")




@dataclasses.dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 5000
    uds: str | None = None  # a unix socket to listen on instead of host:port (behind nginx)
    redis: str | None = None  # None: 127.0.0.1:6379 if it answers, else the embedded one
    data_dir: str = "./seckill-data"
    fsync: str = "always"  # the embedded Redis's appendfsync: "always" loses no acknowledged win
    workers: int = 1
    redis_timeout: float = 1.0
    gate_interval: float = 0.1
    max_batch: int = batching.DEFAULT_MAX_BATCH
    max_waiting: int = batching.DEFAULT_MAX_WAITING
    max_in_flight: int | None = None  # None: batching's default, more with --replica-acks (in_flight())
    graceful_timeout: float = 10.0
    keepalive_timeout: float = Limits.keepalive_timeout
    keepalive_requests: int = Limits.keepalive_requests
    header_timeout: float = Limits.header_timeout
    body_timeout: float = Limits.body_timeout
    send_timeout: float = Limits.send_timeout
    max_connections: int = Limits.max_connections
    backlog: int = 2048
    demo: bool = True
    reset_demo: bool = False  # delete the demo sale at start, so it is created afresh
    log_level: str = "info"
    admin_token: str | None = dataclasses.field(default=None, repr=False)  # never in a log
    sweep_interval: float = 1.0
    metrics: bool = True  # /metrics, and the counting behind it
    dashboard: bool = False  # /dashboard and /dashboard.json
    access_log: str | None = None  # a path, or "-" for stdout
    result_log: str | None = None
    log_rotate: str = "midnight"
    log_backups: int = 7
    forwarded_allow_ips: str = "127.0.0.1"
    rate_per_ip: str | None = None  # RATE[/s][:BURST] purchases per client address (app/ratelimit.py)
    rate_per_user: str | None = None  # the same per buyer
    replica_acks: int = 0  # WAIT for this many replicas before a win is answered (admission/batcher.py)
    replica_ack_timeout: float | None = None  # WAIT's timeout; None: half of redis_timeout
    idempotency_ttl: int = 24 * 3600  # seconds a keyed purchase's win answers its retries (app/idempotency.py)
    auth: str | None = None  # "jwt": the buyer is a verified token's subject (app/auth.py)
    jwt_algorithm: str = "HS256"
    jwt_key: str | None = None  # HS*: a secret file (else $SECKILL_JWT_SECRET); others: a PEM public key
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_leeway: float = 5.0
    jwt_user_claim: str = "sub"
    auth_cookie: str | None = None  # with --auth jwt: a cookie that may carry the token

    def in_flight(self) -> int:
        """Batches in flight per worker (--max-in-flight), by default more when WAIT follows each."""
        if self.max_in_flight is not None:
            return self.max_in_flight
        return batching.ACKED_MAX_IN_FLIGHT if self.replica_acks else batching.DEFAULT_MAX_IN_FLIGHT

    def ack_timeout(self) -> float:
        """WAIT's timeout (--replica-ack-timeout): below the Redis timeout, which bounds the batch."""
        return self.replica_ack_timeout if self.replica_ack_timeout is not None else self.redis_timeout / 2
