"""Load for the failover tests: streams of distinct buyers on keep-alive connections,
every answer recorded, and the checks of what the final master holds against it."""

from __future__ import annotations

import asyncio
import itertools
import random
from typing import Any

import redis

from seckill.sales import sale_store
from support.helpers import stream_orders
from support.http_client import close_writer, read_one

History = list[tuple[str, int, dict[str, Any]]]  # (buyer, status, body) per answer


async def buyers(port: int, going: asyncio.Event, history: History, connections: int, pace: float, retry: float,
                 item: str = "hat") -> None:
    """`connections` keep-alive connections, each buying as a new buyer every `pace`
    seconds until `going` is cleared; a buyer asks again after `retry` until it has an
    answer other than 503 (a 503's outcome is unknown). Every answer goes in `history`."""
    names = itertools.count()

    async def connection() -> None:
        reader = writer = None
        buf = b""
        await asyncio.sleep(random.random() * pace)  # spread the connections over the pace
        while going.is_set():
            user = f"b{next(names)}"
            while going.is_set():
                try:
                    if writer is None:
                        reader, writer = await asyncio.open_connection("127.0.0.1", port)
                        buf = b""
                    writer.write(f"GET /seckill/{item}?user={user} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
                    response, buf = await asyncio.wait_for(read_one(reader, buf), 10)
                except (TimeoutError, OSError, asyncio.IncompleteReadError, ConnectionError):
                    if writer is not None:
                        await close_writer(writer)
                    reader = writer = None
                    await asyncio.sleep(retry)
                    continue
                history.append((user, response.status, response.json()))
                if response.headers.get("connection") == "close":
                    await close_writer(writer)
                    reader = writer = None
                if response.status != 503:
                    break
                await asyncio.sleep(retry)
            await asyncio.sleep(pace)
        if writer is not None:
            await close_writer(writer)

    await asyncio.gather(*(connection() for _ in range(connections)))


def check(history: History, client: redis.Redis, item: str = "hat") -> dict[str, int]:
    """The Jepsen-style figures of a run, against the sale's final master: every
    acknowledged win must be recorded (`lost` 0), no seq or buyer twice, sold = orders."""
    orders = stream_orders(client, item)
    sold = int(client.hget(sale_store.sale_key(item), "sold"))
    acknowledged = {(u, b["order"], b["seq"]) for u, s, b in history if s == 200}
    recorded = {(o["user"], o["order"], o["seq"]) for o in orders}
    return {"acknowledged": len(acknowledged), "lost": len(acknowledged - recorded), "recorded": len(recorded),
            "sold": sold, "503s": sum(1 for _, s, _ in history if s == 503),
            "duplicate seqs": len(orders) - len({o["seq"] for o in orders}),
            "duplicate buyers": len(orders) - len({o["user"] for o in orders}),
            "sold minus orders": sold - len(orders)}
