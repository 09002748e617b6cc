"""A BatchPipe that does what a test says (no Redis): for the batcher's unit tests."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Sequence
from typing import Any


class ScriptedPipe:
    """A BatchPipe whose execute() does what the test says."""

    def __init__(self, behave: Callable[[Sequence[tuple[Any, ...]]], Any]) -> None:
        self.behave = behave
        self.calls: list[Sequence[tuple[Any, ...]]] = []
        self.resets: list[BaseException] = []

    async def execute(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        self.calls.append(commands)
        result = self.behave(commands)
        if inspect.isawaitable(result):  # (a coroutine, or a future that never resolves: `never`)
            result = await result
        return result  # type: ignore[no-any-return]

    async def execute_acked(self, commands: Sequence[tuple[Any, ...]], replicas: int,
                            timeout_ms: int) -> tuple[list[Any], list[Any]]:
        """As OrderedPipe's: the WAIT is the last command the test's function sees."""
        replies = await self.execute([*commands, ("WAIT", replicas, timeout_ms)])
        waited = replies.pop()
        return replies, [waited] * len(replies)

    def reset(self, exc: BaseException) -> None:
        self.resets.append(exc)

    async def close(self) -> None:
        pass


def never(commands: Sequence[tuple[Any, ...]]) -> Any:
    return asyncio.get_running_loop().create_future()  # a Redis that never answers
