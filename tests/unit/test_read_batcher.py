"""The ReadBatcher with a scripted pipe (no Redis): every call is told exactly once,
whatever the pipe does; a tick's calls share one write. The lookup script itself runs
against a real Redis in test_orders.py, and through the server in test_every_answer.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

from seckill.store.reads import ReadBatcher, Script
from support.scripted import ScriptedPipe, never

LOOKUP = Script("return ARGV[1]")
OTHER = Script("return KEYS[1]")


class Told:
    """Collects what each call's `done` was given."""

    def __init__(self) -> None:
        self.replies: dict[int, list[Any]] = {}
        self.all = asyncio.Event()
        self.expected = 0

    def done(self, n: int) -> Callable[[Any], None]:
        self.expected += 1

        def call(reply: Any) -> None:
            self.replies.setdefault(n, []).append(reply)
            if len(self.replies) == self.expected:
                self.all.set()
        return call


class Loader:
    """The `redis` a ReadBatcher loads scripts with on NOSCRIPT."""

    def __init__(self) -> None:
        self.loaded: list[str] = []

    async def script_load(self, lua: str) -> str:
        self.loaded.append(lua)
        return "sha"


def make(behave: Callable[[Sequence[tuple[Any, ...]]], Any], **kwargs: Any) -> tuple[ReadBatcher, ScriptedPipe, Loader]:
    pipe, loader = ScriptedPipe(behave), Loader()
    return ReadBatcher(loader, pipe, **{"timeout": 1.0, **kwargs}), pipe, loader  # type: ignore[arg-type]


def echo(commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    return [command[-1] for command in commands]  # the script's ARGV[1]


def test_calls_of_one_tick_share_one_write_and_each_gets_its_own_reply() -> None:
    async def main() -> None:
        reads, pipe, _ = make(echo)
        told = Told()
        for n in range(5):
            assert reads.call(LOOKUP, ["k1", "k2"], [f"u{n}"], told.done(n))
        await asyncio.wait_for(told.all.wait(), 5)
        assert told.replies == {n: [f"u{n}"] for n in range(5)}
        assert len(pipe.calls) == 1
        assert pipe.calls[0][0] == ("EVALSHA", LOOKUP.sha, 2, "k1", "k2", "u0")
        assert not reads.busy
        # The next tick's calls go out in a write of their own.
        again = Told()
        reads.call(LOOKUP, ["k"], ["x"], again.done(0))
        await asyncio.wait_for(again.all.wait(), 5)
        assert len(pipe.calls) == 2

    asyncio.run(main())


@pytest.mark.parametrize("error", [
    RedisConnectionError("lost"),
    ConnectionResetError("reset"),
    ResponseError("OOM command not allowed"),
    AttributeError("a bug in the pipe"),
])
def test_a_failed_group_tells_every_call_the_exception(error: BaseException) -> None:
    async def main() -> None:
        def fail(commands: Sequence[tuple[Any, ...]]) -> Any:
            raise error

        reads, pipe, _ = make(fail)
        told = Told()
        for n in range(3):
            reads.call(LOOKUP, ["k"], [str(n)], told.done(n))
        await asyncio.wait_for(told.all.wait(), 5)
        assert all(replies == [error] for replies in told.replies.values()), told.replies
        # A connection failure is sent once more (a read changes nothing); anything else is not.
        resent = isinstance(error, RedisConnectionError | OSError)
        assert len(pipe.calls) == (2 if resent else 1)

    asyncio.run(main())


def test_a_lost_connection_then_a_reply_is_the_reply() -> None:
    async def main() -> None:
        attempts = []

        def flaky(commands: Sequence[tuple[Any, ...]]) -> Any:
            attempts.append(1)
            if len(attempts) == 1:
                raise RedisConnectionError("Redis restarted while we were idle")
            return echo(commands)

        reads, pipe, _ = make(flaky)
        told = Told()
        reads.call(LOOKUP, ["k"], ["ann"], told.done(0))
        await asyncio.wait_for(told.all.wait(), 5)
        assert told.replies == {0: ["ann"]}

    asyncio.run(main())


def test_noscript_loads_each_missing_script_once_and_resends_only_those() -> None:
    async def main() -> None:
        loaded: set[str] = set()

        def redis(commands: Sequence[tuple[Any, ...]]) -> list[Any]:
            sha = {LOOKUP.sha: LOOKUP.lua, OTHER.sha: OTHER.lua}
            return [command[-1] if sha[command[1]] in loaded or command[1] == OTHER.sha
                    else NoScriptError("NOSCRIPT") for command in commands]

        reads, pipe, loader = make(redis)
        real_load = loader.script_load

        async def load(lua: str) -> str:
            loaded.add(lua)
            return await real_load(lua)

        loader.script_load = load  # type: ignore[method-assign]
        told = Told()
        reads.call(LOOKUP, ["k"], ["a"], told.done(0))
        reads.call(OTHER, ["k"], ["b"], told.done(1))
        reads.call(LOOKUP, ["k"], ["c"], told.done(2))
        await asyncio.wait_for(told.all.wait(), 5)
        assert told.replies == {0: ["a"], 1: ["b"], 2: ["c"]}
        assert loader.loaded == [LOOKUP.lua]
        assert [len(call) for call in pipe.calls] == [3, 2]

    asyncio.run(main())


def test_a_redis_that_never_answers_times_out_from_the_oldest_call() -> None:
    async def main() -> None:
        reads, _, _ = make(never, timeout=0.2)
        told = Told()
        loop = asyncio.get_running_loop()
        started = loop.time()
        reads.call(LOOKUP, ["k"], ["a"], told.done(0))
        reads.call(LOOKUP, ["k"], ["b"], told.done(1))
        await asyncio.wait_for(told.all.wait(), 5)
        assert loop.time() - started < 1.0
        assert all(isinstance(r[0], TimeoutError) for r in told.replies.values()), told.replies
        assert not reads.busy

    asyncio.run(main())


def test_past_max_waiting_a_call_is_refused_and_never_told() -> None:
    async def main() -> None:
        reads, _, _ = make(never, timeout=0.2, max_waiting=2)
        told = Told()
        assert reads.call(LOOKUP, ["k"], ["a"], told.done(0))
        assert reads.call(LOOKUP, ["k"], ["b"], told.done(1))
        refused: list[Any] = []
        assert not reads.call(LOOKUP, ["k"], ["c"], refused.append)
        await asyncio.wait_for(told.all.wait(), 5)
        assert refused == []
        assert reads.call(LOOKUP, ["k"], ["d"], told.done(2))  # room again once those were told

    asyncio.run(main())


def test_a_done_that_raises_does_not_keep_the_others_from_being_told() -> None:
    class Faults:
        def __init__(self) -> None:
            self.sites: list[str] = []

        def report(self, site: str, exc: BaseException) -> None:
            self.sites.append(site)

    async def main() -> None:
        faults = Faults()
        reads, _, _ = make(echo, faults=faults)
        told = Told()

        def boom(reply: Any) -> None:
            raise OverflowError("year 10000")

        reads.call(LOOKUP, ["k"], ["a"], boom)
        reads.call(LOOKUP, ["k"], ["b"], told.done(1))
        await asyncio.wait_for(told.all.wait(), 5)
        assert told.replies == {1: ["b"]}
        assert faults.sites == ["reads"]

    asyncio.run(main())
