"""A sale's life as one unit: create and delete keep the sale list `seckill:items` true
while they race each other, on a plain Redis (one script call each) and on a Redis
Cluster (where the list is in another slot: a converging order, see sale_store)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import redis
import redis.asyncio as aioredis

from seckill.sales import sale_store
from seckill.store.client import make_redis
from support.redis_cluster import RedisCluster, keyslot

ROUNDS = 300
TERMS = sale_store.Terms(stock=5)


async def _race(create_with: Any, delete_with: Any, check: Callable[[int], Awaitable[None]]) -> None:
    """ROUNDS rounds of a delete racing a create of the same sale, each on its own
    connection; the sale exists before odd rounds, not before even ones, and which call
    is sent first alternates every two rounds."""
    for round_ in range(ROUNDS):
        if round_ % 2:
            await sale_store.create_sale(create_with, "hat", TERMS)
        calls = [sale_store.create_sale(create_with, "hat", TERMS), sale_store.delete_sale(delete_with, "hat")]
        await asyncio.gather(*(calls if round_ // 2 % 2 else calls[::-1]))
        await check(round_)


def test_delete_racing_create_keeps_the_list_exact(redis_server, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    """Whoever wins, the sale exists exactly when its name is listed (the sweepers and
    the admin list read the list)."""

    async def run() -> None:
        one, two = aioredis.Redis.from_url(redis_server.url), aioredis.Redis.from_url(redis_server.url)
        outcomes = set()

        async def check(round_: int) -> None:
            exists = bool(await one.exists(sale_store.sale_key("hat")))
            listed = bool(await one.sismember(sale_store.ITEMS_KEY, "hat"))
            assert exists == listed, f"round {round_}: sale exists {exists}, listed {listed}"
            outcomes.add(exists)

        try:
            await _race(one, two, check)
        finally:
            await one.aclose()
            await two.aclose()
        assert outcomes == {True, False}  # both orders happened: it was a race

    asyncio.run(run())


def test_create_and_delete_are_one_script_call_each(redis_server, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    """On a plain Redis nothing but the scripts touch the sale or the list (MONITOR)."""

    async def run() -> list[str]:
        client = aioredis.Redis.from_url(redis_server.url)
        try:
            async with client.monitor() as monitor:
                await sale_store.create_sale(client, "hat", TERMS)
                await sale_store.delete_sale(client, "hat")
                await client.ping()
                seen: list[str] = []
                while True:
                    info = await monitor.next_command()
                    if info["command"] == "PING":
                        return seen
                    if info.get("client_type") != "lua":  # (a script's own commands are shown too)
                        seen.append(info["command"].split()[0].upper())
        finally:
            await client.aclose()

    commands = asyncio.run(run())
    assert commands.count("EVALSHA") + commands.count("EVAL") == 2, commands
    assert not {"SADD", "SREM", "DEL", "EXISTS"} & set(commands), commands


def test_updating_a_sale_missing_from_the_list_puts_it_back(redis_server, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    """A sale made before the list existed is listed by its next update."""

    async def run() -> None:
        client = aioredis.Redis.from_url(redis_server.url)
        try:
            await sale_store.create_sale(client, "hat", TERMS)
            await client.srem(sale_store.ITEMS_KEY, "hat")
            assert await sale_store.update_sale(client, "hat", sale_store.Terms(stock=6))
            assert [s["item"] for s in await sale_store.list_sales(client)] == ["hat"]
            assert not await sale_store.update_sale(client, "cap", sale_store.Terms(stock=6))
            assert not await client.sismember(sale_store.ITEMS_KEY, "cap")
        finally:
            await client.aclose()

    asyncio.run(run())


# --- on a Redis Cluster ------------------------------------------------------------------


def test_on_a_cluster_a_live_sale_is_never_left_unlisted(cluster: RedisCluster) -> None:
    """The list is in another slot than the sale, so no call changes both. What holds:
    once the calls return, a sale that exists is listed (a name without a sale may stay
    behind; readers skip it, and the next delete of the name removes it)."""
    cluster.flush()
    assert keyslot(sale_store.sale_key("hat")) != keyslot(sale_store.ITEMS_KEY)

    async def run() -> set[tuple[bool, bool]]:
        one, two = make_redis(cluster.url, 5.0), make_redis(cluster.url, 5.0)
        seen = set()

        async def check(round_: int) -> None:
            exists = bool(await one.exists(sale_store.sale_key("hat")))
            listed = bool(await one.sismember(sale_store.ITEMS_KEY, "hat"))
            assert listed or not exists, f"round {round_}: the sale exists but is not listed"
            seen.add((exists, listed))

        try:
            await _race(one, two, check)
            await sale_store.delete_sale(one, "hat")  # a delete with nothing racing it: unlisted
            assert not await one.sismember(sale_store.ITEMS_KEY, "hat")
            assert await sale_store.list_sales(one) == []
        finally:
            await one.aclose()
            await two.aclose()
        return seen

    seen = asyncio.run(run())
    # Both orders happened (it was a race): the create won, and the delete did (its name may stay behind).
    assert (True, True) in seen and any(not exists for exists, _ in seen)
