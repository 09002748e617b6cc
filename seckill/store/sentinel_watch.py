"""Follow a Sentinel failover the moment it is announced, not when a write first fails.

A Sentinel-managed connection asks the Sentinels where the master is only when it
connects. A crashed master breaks our connections and the next batch asks; but a master
demoted by a failover it survived (a manual `SENTINEL FAILOVER`, a partition that healed)
is told so by Sentinel only seconds later, and until then it takes our writes, which the
new master never sees: with --replica-acks 0 those wins are answered 200 and lost. So each
worker listens for Sentinel's `+switch-master <name> <old ip> <old port> <new ip> <new
port>` on one Sentinel (the next one when that connection fails) and, for our master's
name, drops the batch pipes' connections and the pool's idle ones: the next batch asks
the Sentinels again. (With --replica-acks a short WAIT does the same, see the Batcher.)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from redis.asyncio import Redis
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from seckill.store.client import BatchPipe

log = logging.getLogger("seckill.sentinel")

CHANNEL = "+switch-master"
RETRY_PAUSE = 1.0  # before the next Sentinel when one fails: a dead one must not spin us


def sentinel_pool(redis: Redis) -> SentinelConnectionPool | None:
    pool = redis.connection_pool
    return pool if isinstance(pool, SentinelConnectionPool) else None


async def follow_switches(redis: Redis, pipes: Sequence[BatchPipe]) -> None:
    """Run until cancelled: on every `+switch-master` for our master, reset `pipes` and
    close the pool's idle connections (in-use ones fail on their own or finish)."""
    pool = sentinel_pool(redis)
    if pool is None:
        return
    name = pool.service_name
    sentinels = pool.sentinel_manager.sentinels
    at = 0
    while True:
        kwargs = sentinels[at].connection_pool.connection_kwargs
        # Its own client, without a read timeout: the channel is silent between failovers.
        listener = Redis(host=kwargs.get("host", "localhost"), port=kwargs.get("port", 26379),
                         socket_connect_timeout=kwargs.get("socket_connect_timeout"),
                         lib_name=None, lib_version=None)
        try:
            async with listener.pubsub() as pubsub:
                await pubsub.subscribe(CHANNEL)
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    fields = message["data"].decode(errors="replace").split()
                    if fields[:1] != [name]:
                        continue
                    log.warning("Sentinel: master %r switched from %s to %s; following", name,
                                ":".join(fields[1:3]), ":".join(fields[3:5]))
                    switched = RedisConnectionError(f"Sentinel switched master {name!r}")
                    for pipe in pipes:
                        pipe.reset(switched)
                    await pool.disconnect(inuse_connections=False)
        except (RedisError, OSError) as exc:
            log.info("Sentinel %s:%s: %s; listening on the next one", kwargs.get("host"), kwargs.get("port"), exc)
        finally:
            await listener.aclose()
        at = (at + 1) % len(sentinels)
        await asyncio.sleep(RETRY_PAUSE)
