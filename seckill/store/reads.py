"""Coalescing read-only script calls (a user's order lookup) into pipelined round trips.

A lookup is one script call reading a few hash fields: microseconds in Redis. Sent one at
a time through redis-py's client it cost about 50 us of this process's time (a pooled
connection, packing in Python, a timeout per call), so 20 clients looping on lookups
took two thirds of a worker from the purchases beside them (bench/lookup_cost.py). Here
the calls made in one loop tick go out as ONE write on a connection of their own (an
OrderedPipe, or a ClusterPipe on a cluster: make_pipe), packed by hiredis, and one task
waits for all of their replies.

Each call's `done(reply)` is called exactly once: with the script's reply, or with the
exception that failed it (a Redis error reply, in its own slot; for the whole group a
lost connection, or TimeoutError at `timeout` after the group's oldest call was made).
A read changes nothing, so a group whose connection failed is sent once more within that
time, and one that met NOSCRIPT (a restarted Redis) after loading the script. Past
`max_waiting` calls not yet done, `call()` refuses (the caller answers 503 at once).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError

from seckill.store.client import BatchPipe


class Faults(Protocol):
    """Where a bug met here is reported (seckill.ops.faults.Faults)."""

    def report(self, site: str, exc: BaseException) -> None: ...

log = logging.getLogger("seckill.reads")

# Reads sent or queued and not yet done, per worker: a stalled Redis cannot grow memory
# with them. (Purchases have their own bound, batcher.DEFAULT_MAX_WAITING.)
DEFAULT_MAX_WAITING = 10_000

Done = Callable[[Any], None]  # called with the reply, or the exception that failed the call


@dataclass(frozen=True)
class Script:
    lua: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.lua.encode()).hexdigest())


class ReadBatcher:
    def __init__(self, redis: Redis, pipe: BatchPipe, *, timeout: float,
                 max_waiting: int = DEFAULT_MAX_WAITING, faults: Faults | None = None) -> None:
        self._redis = redis
        self._pipe = pipe
        self._timeout = timeout
        self._max_waiting = max_waiting
        self._faults = faults
        self._queue: list[tuple[tuple[Any, ...], Script, Done]] = []
        self._first_at = 0.0  # when the oldest queued call was made
        self._waiting = 0  # calls queued or in flight
        self._tasks: set[asyncio.Task[None]] = set()

    def call(self, script: Script, keys: Sequence[str], args: Sequence[str | bytes | int], done: Done) -> bool:
        """Queue `script` for the end of this loop tick; False (not queued: answer 503) when
        too many reads are waiting already."""
        if self._waiting >= self._max_waiting:
            return False
        if not self._queue:
            self._first_at = time.monotonic()
            asyncio.get_running_loop().call_soon(self._send)
        self._queue.append((("EVALSHA", script.sha, len(keys), *keys, *args), script, done))
        self._waiting += 1
        return True

    @property
    def busy(self) -> bool:
        return self._waiting > 0

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks)
        await self._pipe.close()

    def _send(self) -> None:
        queue, self._queue = self._queue, []
        task = asyncio.get_running_loop().create_task(self._round_trip(queue, self._first_at + self._timeout))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _round_trip(self, queue: list[tuple[tuple[Any, ...], Script, Done]], deadline: float) -> None:
        replies: list[Any]
        try:
            replies = await asyncio.wait_for(self._call(queue), max(0.0, deadline - time.monotonic()))
        except Exception as exc:  # whatever failed, each call is told (a 503)
            if not isinstance(exc, TimeoutError | RedisError | OSError) and self._faults is not None:
                self._faults.report("reads", exc)  # not Redis's doing: a bug, logged as one
            log.debug("reads failed: %r", exc)
            replies = [exc] * len(queue)
        finally:
            self._waiting -= len(queue)
        for (_, _, done), reply in zip(queue, replies, strict=True):
            try:
                done(reply)
            except Exception as exc:  # `done` answers its own failures; this is the last guard
                if self._faults is not None:
                    self._faults.report("reads", exc)

    async def _call(self, queue: list[tuple[tuple[Any, ...], Script, Done]]) -> list[Any]:
        commands = [command for command, _, _ in queue]
        try:
            replies = await self._pipe.execute(commands)
        except (RedisConnectionError, OSError):  # (a dead connection: once more, on a new one)
            replies = await self._pipe.execute(commands)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            for script in {queue[i][1] for i in missing}:
                await self._redis.script_load(script.lua)
            again = await self._pipe.execute([commands[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies
