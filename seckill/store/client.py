"""Making the Redis client and the batch pipe for a `--redis` URL.

A plain URL (redis://, rediss://, unix://) gives one `redis.asyncio.Redis` and one
`ordered_pipe.OrderedPipe` per worker. A `redis+cluster://[:password@]host:port[,host:port]`
URL gives redis-py's asyncio `RedisCluster` (every host:port a startup node) and a pipe
per cluster node (cluster_pipe.py). A `redis+sentinel://[:password@]host:port[,host:port]
/MASTER_NAME[?db=N]` URL gives the master that those Sentinels name (redis-py's asyncio
Sentinel: every connection asks them where the master is when it connects, and a
connection to a master since demoted, which answers READONLY, is dropped so the next one
asks again); the password is the master's and replicas', the Sentinels' own is not
supported.

The cluster client is handed around typed as `Redis`: every call the server makes on it
(HMGET, EVAL, SADD, XRANGE, SCRIPT LOAD, PING, pipelines...) has the same signature on
both, and each of those calls names keys of one sale, so of one slot ({item} hash tag).
What differs is how a cluster fails: redis-py raises `RedisClusterException`, which is
not a `RedisError`, when no startup node answers or a slot is not covered. `Cluster`
turns those into `ClusterUnavailable`, a `RedisError`, so every caller's existing
`except RedisError` (503, exit 3, a logged sweep failure) covers a cluster too.
"""

from __future__ import annotations

import re
from typing import Any, Protocol, cast
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import RedisClusterException

from seckill.store.cluster_pipe import ClusterPipe, ClusterUnavailable
from seckill.store.ordered_pipe import OrderedPipe

SCHEMES = ("redis", "rediss", "unix")
CLUSTER_SCHEME = "redis+cluster"
SENTINEL_SCHEME = "redis+sentinel"


class BatchPipe(Protocol):
    async def execute(self, commands: Any) -> list[Any]: ...

    async def execute_acked(self, commands: Any, replicas: int, timeout_ms: int) -> tuple[list[Any], list[Any]]: ...

    def reset(self, exc: BaseException) -> None: ...

    async def close(self) -> None: ...


class Cluster(RedisCluster):
    """redis-py's asyncio RedisCluster whose own failures are RedisErrors (see above)."""

    async def initialize(self, *args: Any, **kwargs: Any) -> Cluster:
        try:
            await super().initialize(*args, **kwargs)
        except RedisClusterException as exc:
            raise ClusterUnavailable(str(exc)) from exc
        return self

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute_command(*args, **kwargs)
        except RedisClusterException as exc:
            raise ClusterUnavailable(str(exc)) from exc


def _hosts(netloc: str) -> list[tuple[str, int]] | None:
    nodes = []
    for address in netloc.rpartition("@")[2].split(","):
        host, colon, port = address.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")  # [::1]:7000
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            return None
        nodes.append((host, int(port)))
    return nodes


def cluster_nodes(url: str) -> list[tuple[str, int]] | None:
    """The host:port pairs of a redis+cluster:// URL; None if it is not one, or malformed."""
    parts = urlsplit(url)
    if parts.scheme != CLUSTER_SCHEME or parts.query or parts.fragment or parts.path not in ("", "/", "/0"):
        return None
    return _hosts(parts.netloc)


_SENTINEL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_SENTINEL_QUERY = re.compile(r"(?:db=([0-9]{1,2}))?")


def sentinel_of(url: str) -> tuple[list[tuple[str, int]], str, int] | None:
    """(the Sentinels' host:port pairs, the master's name, the db) of a redis+sentinel://
    URL; None if it is not one, or malformed."""
    parts = urlsplit(url)
    name = parts.path.removeprefix("/")
    query = _SENTINEL_QUERY.fullmatch(parts.query)
    if parts.scheme != SENTINEL_SCHEME or parts.fragment or not _SENTINEL_NAME.fullmatch(name) or query is None:
        return None
    nodes = _hosts(parts.netloc)
    if nodes is None:
        return None
    return nodes, name, int(query.group(1) or 0)


def valid_url(text: str) -> bool:
    return urlsplit(text).scheme in SCHEMES or cluster_nodes(text) is not None or sentinel_of(text) is not None


def make_redis(url: str, timeout: float) -> Redis:
    nodes = cluster_nodes(url)
    if nodes is not None:
        parts = urlsplit(url)
        cluster = Cluster(
            startup_nodes=[ClusterNode(host, port) for host, port in nodes],
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=0,
            driver_info=None,  # no CLIENT SETINFO (Redis < 7.2 refuses it); lib_name=None is deprecated here
        )
        return cast(Redis, cluster)  # the same commands (see the module's docstring)
    sentinel = sentinel_of(url)
    if sentinel is not None:
        hosts, name, db = sentinel
        parts = urlsplit(url)
        manager = Sentinel(hosts, socket_timeout=timeout, socket_connect_timeout=timeout)  # type: ignore[no-untyped-call]
        return manager.master_for(  # type: ignore[no-any-return]
            name, redis_class=Redis, socket_timeout=timeout, socket_connect_timeout=timeout,
            health_check_interval=0, db=db, lib_name=None, lib_version=None,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None)
    return Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=0,
        lib_name=None, lib_version=None,  # no CLIENT SETINFO: Redis < 7.2 refuses it
    )


def is_cluster(redis: Redis) -> bool:
    return isinstance(redis, RedisCluster)


def make_pipe(redis: Redis) -> BatchPipe:
    if isinstance(redis, RedisCluster):
        return ClusterPipe(redis)
    return OrderedPipe(redis)
