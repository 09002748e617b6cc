"""Making the Redis client and the batch pipe for a `--redis` URL.

A plain URL (redis://, rediss://, unix://) gives one `redis.asyncio.Redis` and one
`redis_pipe.OrderedPipe` per worker. A `redis+cluster://host:port[,host:port]` URL gives
redis-py's asyncio `RedisCluster` and a pipe per cluster node (cluster_pipe.py).
"""

from __future__ import annotations

from typing import Any, Protocol
from urllib.parse import urlsplit

from redis.asyncio import Redis

from redis_pipe import OrderedPipe

SCHEMES = ("redis", "rediss", "unix")


class BatchPipe(Protocol):
    async def execute(self, commands: Any) -> list[Any]: ...

    async def close(self) -> None: ...


def valid_url(text: str) -> bool:
    return urlsplit(text).scheme in SCHEMES


def make_redis(url: str, timeout: float) -> Redis:
    return Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=0,
        lib_name=None, lib_version=None,  # no CLIENT SETINFO: Redis < 7.2 refuses it
    )


def make_pipe(redis: Redis) -> BatchPipe:
    return OrderedPipe(redis)
