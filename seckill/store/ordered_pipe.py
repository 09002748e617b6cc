"""One Redis connection that carries batches back to back, replies taken in order.

redis-py's Pipeline holds its connection for the whole round trip, so a second batch
either waits for the first one's reply or takes a second connection, and then Redis may
run the later batch first. `OrderedPipe` writes each batch on ONE connection as soon as
it is ready and a single reader task takes the replies in order. Redis runs the batches
in the order they were sent (arrival order holds across batches, not only within one),
and the server parses the next requests while Redis runs the previous batch.

redis-py still does the connecting (AUTH, SELECT, TLS, unix sockets) and, with hiredis,
the parsing; this module only decides when to write and who reads. Commands are encoded
by hiredis's C `pack_command` (redis-py's asyncio connection packs in Python, which took
7% of the server's time on the admission path).

On any failure (a broken socket, or a caller giving up on a reply) the connection is
dropped and every batch still waiting fails: their outcome is unknown, and stale replies
must never be matched to later batches. The next batch connects a NEW connection object:
redis-py disconnects a connection whose read was interrupted, so a reader task cancelled
on the old one, still unwinding, must have nothing of the new one to close (it did, and
a send then found no writer: `'NoneType' object has no attribute 'writelines'`). Whatever
a send raises, the caller gets a `ConnectionError`, and so does every batch behind it.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Sequence
from typing import Any

from hiredis import pack_command
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError


class OrderedPipe:
    def __init__(self, redis: Redis) -> None:
        self._pool = redis.connection_pool
        self._conn: AbstractConnection | None = None
        self._waiting: deque[tuple[int, asyncio.Future[list[Any]]]] = deque()
        self._reader: asyncio.Task[None] | None = None
        self._send_lock = asyncio.Lock()
        self._broken = False

    async def execute(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Send the commands in one write; their replies in order. A reply that is a
        Redis error comes back as the exception, in its slot; a connection failure or
        cancellation fails the whole call."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        async with self._send_lock:  # sends, and so Redis's replies, keep this order
            try:
                conn = await self._connection()
                packed = b"".join(map(pack_command, commands))
                self._waiting.append((len(commands), future))
                await conn.send_packed_command(packed, check_health=False)
            except asyncio.CancelledError as exc:
                self.reset(exc)
                raise
            except Exception as exc:  # (not only OSError: see the module's docstring)
                self.reset(exc)
                raise RedisConnectionError(f"Redis connection lost: {exc!r}") from exc
            if self._reader is None:
                self._reader = loop.create_task(self._read_replies(conn))
        try:
            return await future
        except asyncio.CancelledError:
            # The caller gave up (timeout): its reply may still come and would be taken
            # for the next batch's. Drop the connection and everything behind it.
            self.reset(RedisConnectionError("a batch was abandoned"))
            raise

    async def execute_acked(self, commands: Sequence[tuple[Any, ...]], replicas: int,
                            timeout_ms: int) -> tuple[list[Any], list[Any]]:
        """As execute(), the write ending with `WAIT replicas timeout_ms`: Redis answers it
        once that many replicas have every write of this connection so far. Also, per
        command, the WAIT's reply (a count, or an error)."""
        replies = await self.execute([*commands, ("WAIT", replicas, timeout_ms)])
        waited = replies.pop()
        return replies, [waited] * len(replies)

    def reset(self, exc: BaseException) -> None:
        """Fail every waiting batch and drop the connection (reconnected on next use)."""
        waiting, self._waiting = self._waiting, deque()
        for _, future in waiting:
            if not future.done():
                future.set_exception(RedisConnectionError(f"Redis connection lost: {exc!r}"))
        reader, self._reader = self._reader, None
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
        self._broken = True

    async def close(self) -> None:
        self.reset(RedisConnectionError("closed"))
        if self._conn is not None:
            await self._conn.disconnect()

    async def _connection(self) -> AbstractConnection:
        if self._broken:
            self._broken = False
            old, self._conn = self._conn, None
            if old is not None:
                await old.disconnect(nowait=True)
        conn = self._conn
        if conn is None:
            conn = self._conn = self._pool.make_connection()  # type: ignore[no-untyped-call]  # ours alone
        if not conn.is_connected:
            await conn.connect()
        return conn

    async def _read_replies(self, conn: AbstractConnection) -> None:
        waiting = self._waiting
        try:
            while waiting and self._waiting is waiting:
                count, future = waiting[0]
                replies: list[Any] = []
                for _ in range(count):
                    try:
                        replies.append(await conn.read_response(timeout=math.inf))
                    except ResponseError as exc:
                        replies.append(exc)
                waiting.popleft()
                if not future.done():
                    future.set_result(replies)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            if self._waiting is waiting:
                self.reset(exc)
        finally:
            if self._reader is asyncio.current_task():
                self._reader = None
