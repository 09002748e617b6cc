"""OrderedPipe against a real Redis: batches sent back to back keep their order, and a
batch given up on never hands its late reply to the next one."""

from __future__ import annotations

import asyncio

import pytest
import redis
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from seckill.store.embedded import EmbeddedRedis
from seckill.store.ordered_pipe import OrderedPipe


async def _with_pipe(url: str, body) -> None:  # type: ignore[no-untyped-def]
    client = Redis.from_url(url)
    pipe = OrderedPipe(client)
    try:
        await body(pipe)
    finally:
        await pipe.close()
        await client.aclose()


def test_concurrent_batches_run_in_send_order(redis_server: EmbeddedRedis, redis_client: redis.Redis) -> None:
    async def body(pipe: OrderedPipe) -> None:
        results = await asyncio.gather(*(pipe.execute([("INCR", "n"), ("INCR", "n")]) for _ in range(200)))
        assert [r for pair in results for r in pair] == list(range(1, 401))

    asyncio.run(_with_pipe(redis_server.url, body))


def test_error_reply_stays_in_its_slot(redis_server: EmbeddedRedis, redis_client: redis.Redis) -> None:
    async def body(pipe: OrderedPipe) -> None:
        replies = await pipe.execute([("SET", "k", "v"), ("INCR", "k"), ("GET", "k")])
        assert replies[0] == b"OK"
        assert isinstance(replies[1], ResponseError)
        assert replies[2] == b"v"

    asyncio.run(_with_pipe(redis_server.url, body))


def test_abandoned_batch_reply_is_never_given_to_the_next(
    redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    async def body(pipe: OrderedPipe) -> None:
        slow = asyncio.ensure_future(pipe.execute([("BLPOP", "empty", 1)]))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(slow), 0.1)
        slow.cancel()
        with pytest.raises((asyncio.CancelledError, RedisConnectionError)):
            await slow
        assert await pipe.execute([("ECHO", "mine")]) == [b"mine"]

    asyncio.run(_with_pipe(redis_server.url, body))


def test_reconnects_after_redis_restart(own_redis) -> None:
    own, _ = own_redis

    async def body(pipe: OrderedPipe) -> None:
        assert await pipe.execute([("PING",)]) == [b"PONG"]
        own.kill()
        with pytest.raises(RedisConnectionError):
            await pipe.execute([("PING",)])
        own.restart()
        assert await pipe.execute([("PING",)]) == [b"PONG"]

    asyncio.run(_with_pipe(own.url, body))
