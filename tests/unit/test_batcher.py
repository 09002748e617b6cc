"""The Batcher with a scripted pipe (no Redis): what it answers when the pipe replies,
raises anything at all, or never replies, and what its gates answer. The admission
script itself is tested against a real Redis elsewhere (test_stock.py, test_orders.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from redis.exceptions import ResponseError

from seckill.admission import batcher as batching
from seckill.admission.batcher import Batcher
from seckill.sales import outcomes
from support.scripted import ScriptedPipe, never


class Waiter:
    def __init__(self, fail_on_finish: bool = False) -> None:
        self.t0 = time.monotonic()
        self.outcomes: list[tuple[int, int]] = []
        self.failures: list[str] = []
        self.done = asyncio.Event()
        self.fail_on_finish = fail_on_finish

    def finish(self, outcome: int, tag: bytes, value: int, until: int = 0) -> None:
        if self.fail_on_finish:
            raise OverflowError("year 10000")
        self.outcomes.append((outcome, value))
        self.done.set()

    def fail(self, site: str, exc: BaseException) -> None:
        if not self.outcomes:
            self.failures.append(site)
            self.done.set()


def make(behave: Callable[[Sequence[tuple[Any, ...]]], Any], **kwargs: Any) -> tuple[Batcher, ScriptedPipe]:
    pipe = ScriptedPipe(behave)
    options: dict[str, Any] = {"timeout": 1.0, "gate_interval": 0.1, **kwargs}
    return Batcher(None, pipe, **options), pipe  # type: ignore[arg-type]


def won(commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Every request of every call wins (the script's "" outcomes form). A call is EVALSHA,
    the sha, 7, seven keys, the batch id, then one user per request."""
    return [[str(len(c) - 11).encode(), b"1000", b"1", b"tag", b""] for c in commands]


async def answers(waiters: list[Waiter], bound: float = 5.0) -> None:
    await asyncio.wait_for(asyncio.gather(*(w.done.wait() for w in waiters)), bound)


@pytest.mark.parametrize("error", [
    AttributeError("'NoneType' object has no attribute 'writelines'"),  # the race seen under CLIENT KILL
    RuntimeError("anything"),
    ConnectionResetError("reset"),
    TimeoutError(),
])
def test_any_failure_of_the_redis_call_answers_every_request_unavailable(error: BaseException) -> None:
    def fail(commands: Sequence[tuple[Any, ...]]) -> Any:
        raise error

    async def run() -> list[Waiter]:
        batcher, _ = make(fail)
        waiters = [Waiter() for _ in range(5)]
        for i, waiter in enumerate(waiters):
            assert batcher.submit(f"item{i % 2}", b"", waiter)
        await answers(waiters)
        assert not batcher.busy
        return waiters

    for waiter in asyncio.run(run()):
        assert waiter.outcomes == [(outcomes.UNAVAILABLE, 0)]


def test_a_request_queued_behind_a_stuck_batch_is_answered_within_the_timeout_of_its_arrival() -> None:
    timeout = 0.5

    async def run() -> tuple[float, float, int]:
        batcher, pipe = make(never, timeout=timeout, max_in_flight=1)
        first, second = Waiter(), Waiter()
        batcher.submit("item", b"", first)
        await asyncio.sleep(timeout / 2)  # the first batch is in flight, stuck
        arrived = time.monotonic()
        batcher.submit("item", b"", second)  # waits for a place in flight
        await answers([first, second])
        return time.monotonic() - arrived, second.outcomes[0][0], len(pipe.calls)

    waited, outcome, _ = asyncio.run(run())
    assert outcome == outcomes.UNAVAILABLE
    # Before: the second batch got a whole timeout of its own once sent (0.75 s here).
    assert waited < timeout + 0.15


def test_a_batch_whose_time_ran_out_in_the_queue_is_not_sent() -> None:
    async def run() -> int:
        batcher, pipe = make(never, timeout=0.2, max_in_flight=1)
        first, second = Waiter(), Waiter()
        batcher.submit("item", b"", first)
        await asyncio.sleep(0)  # sent
        batcher.submit("item", b"", second)  # arrives with the first: same deadline, almost
        batcher._first_at -= 1.0  # (as if it had waited a second already)
        await answers([first, second])
        return len(pipe.calls)

    assert asyncio.run(run()) == 1


def test_an_exception_while_answering_fails_the_requests_not_answered_yet() -> None:
    async def run() -> list[Waiter]:
        batcher, _ = make(won)
        waiters = [Waiter(), Waiter(fail_on_finish=True), Waiter()]
        for waiter in waiters:
            batcher.submit("item", b"", waiter)
        await answers([waiters[0], waiters[2]])
        return waiters

    first, broken, last = asyncio.run(run())
    assert first.outcomes == [(outcomes.WON, 1)]  # answered before it raised: stays answered
    assert broken.failures == ["batch"]
    assert last.failures == ["batch"]


def test_the_not_started_gate_answers_until_just_before_the_start_redis_gave() -> None:
    starts_in_ms = 200

    def not_started(commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        return [[b"0", b"-1", b"0", b"tag", b"N", str(starts_in_ms).encode()] for _ in commands]

    async def run() -> tuple[Any, float, Any]:
        batcher, pipe = make(not_started, gate_interval=10.0)
        waiter = Waiter()
        sent = time.monotonic()
        batcher.submit("item", b"", waiter)
        await answers([waiter])
        gate = batcher.gate("item")
        assert waiter.outcomes == [(outcomes.NOT_STARTED, starts_in_ms)]
        await asyncio.sleep(starts_in_ms / 1000 - batching.START_MARGIN + 0.01)
        return gate, sent, batcher.gate("item")

    gate, sent, later = asyncio.run(run())
    assert gate is not None and gate[1] == outcomes.NOT_STARTED
    start = gate[2]
    assert sent <= start - starts_in_ms / 1000 <= sent + 0.1  # measured from the send: the earliest start
    assert gate[0] == pytest.approx(start - batching.START_MARGIN)  # not the 10 s gate interval
    assert later is None  # from START_MARGIN before the start, Redis decides again


@pytest.mark.parametrize(("reply", "outcome"), [
    ([b"0", b"0", b"1", b"tag", b""], outcomes.SOLD_OUT),
    ([b"0", b"-1", b"0", b"tag", b"E"], outcomes.ENDED),
])
def test_sold_out_and_ended_are_gated_for_the_gate_interval(reply: list[bytes], outcome: int) -> None:
    async def run() -> Any:
        batcher, _ = make(lambda commands: [reply for _ in commands], gate_interval=5.0)
        waiter = Waiter()
        batcher.submit("item", b"", waiter)
        await answers([waiter])
        return batcher.gate("item"), batcher.gate("other")

    gate, other = asyncio.run(run())
    assert gate is not None and gate[1] == outcome
    assert other is None


def test_a_queue_longer_than_max_batch_is_split_into_calls_of_at_most_max_batch() -> None:
    async def run() -> tuple[list[int], list[Waiter]]:
        batcher, pipe = make(won, max_batch=3)
        waiters = [Waiter() for _ in range(7)]
        for i, waiter in enumerate(waiters):
            batcher.submit("item", f"u{i}".encode(), waiter)
        await answers(waiters)
        return [len(call) - 11 for batch in pipe.calls for call in batch], waiters  # users per call

    sizes, waiters = asyncio.run(run())
    assert sizes == [3, 3, 1]  # one pipeline of three script calls
    assert all(w.outcomes and w.outcomes[0][0] == outcomes.WON for w in waiters)


def test_at_most_max_in_flight_batches_are_sent_and_the_rest_waits_for_a_place() -> None:
    async def run() -> tuple[list[int], int]:
        gate = asyncio.Event()
        in_flight: list[int] = []
        sent = 0

        async def slow(commands: Sequence[tuple[Any, ...]]) -> list[Any]:
            nonlocal sent
            sent += 1
            in_flight.append(sent)
            await gate.wait()
            return won(commands)

        batcher, pipe = make(slow, max_in_flight=2)
        waiters = []
        for i in range(4):  # four ticks, one purchase each
            waiter = Waiter()
            waiters.append(waiter)
            batcher.submit(f"item{i}", b"", waiter)
            await asyncio.sleep(0)
        await asyncio.sleep(0)
        at_most = len(pipe.calls)
        gate.set()
        await answers(waiters)
        return [len(batch) for batch in pipe.calls], at_most

    batches, at_most = asyncio.run(run())
    assert at_most == 2  # the third and fourth waited while two were in flight
    assert batches == [1, 1, 2]  # then went out together, as one pipeline of two calls


# --- Keyed purchases (Idempotency-Key) -------------------------------------------------

def test_a_keyed_purchase_goes_in_its_own_call_with_its_record_and_claim_keys() -> None:
    def keyed_won(commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        return [[b"1", b"9", b"5", b"tag", b"W", b"", b""] if c[2] > 7 else won([c])[0] for c in commands]

    async def run() -> tuple[list[Any], Waiter, Waiter]:
        batcher, pipe = make(keyed_won, idempotency_ttl=60)
        plain, keyed = Waiter(), Waiter()
        batcher.submit("hat", b"bob", plain)
        assert batcher.submit_keyed("hat", b"ann", "k1", keyed) is None
        await answers([plain, keyed])
        return pipe.calls, plain, keyed

    calls, plain, keyed = asyncio.run(run())
    commands = calls[0]
    assert len(commands) == 2 and commands[0][2] == 7  # the plain call is as before
    assert commands[1][2] == 9 and commands[1][3 + 7:3 + 9] == ("seckill:{hat}:idem:k1", "seckill:idem:k1")
    assert commands[1][-3:][1:] == ("60", b"ann")  # ttl, then the users
    assert (plain.outcomes, keyed.outcomes) == ([(outcomes.WON, 1)], [(outcomes.WON, 5)])


def test_on_a_cluster_a_keyed_call_names_only_keys_of_its_sale() -> None:
    async def run() -> list[Any]:
        batcher, pipe = make(lambda cs: [[b"1", b"9", b"5", b"tag", b"W", b"", b""] for _ in cs], claims=False)
        waiter = Waiter()
        batcher.submit_keyed("hat", b"ann", "k1", waiter)
        await answers([waiter])
        return pipe.calls[0][0]

    command = asyncio.run(run())
    assert command[2] == 8 and all(str(key).startswith("seckill:{hat}") for key in command[3:11])


def test_the_same_buyers_key_is_in_flight_until_answered_and_free_after_any_outcome() -> None:
    def fail(commands: Sequence[tuple[Any, ...]]) -> Any:
        raise ConnectionResetError("reset")

    async def run() -> list[Any]:
        batcher, _ = make(fail)
        first = Waiter()
        seen = [batcher.submit_keyed("hat", b"ann", "k", first),
                batcher.submit_keyed("hat", b"ann", "k", Waiter()),  # the first is not answered
                batcher.submit_keyed("hat", b"bob", "k", Waiter())]  # another buyer's key
        await answers([first])
        seen.append(first.outcomes[0][0])
        seen.append(batcher.submit_keyed("hat", b"ann", "k", Waiter()))  # a 503 freed it
        return seen

    assert asyncio.run(run()) == [None, outcomes.KEY_IN_FLIGHT, None, outcomes.UNAVAILABLE, None]


@pytest.mark.parametrize("reply", [
    [b"1", b"9", b"5", b"tag", b"R", b"", b""],  # an R without its replay
    [b"1", b"9", b"5", b"tag", b"WW", b"", b""],  # a letter per request, and one request
    [b"1", b"9", b"5", b"tag", b"X", b"", b""],
    [b"1", b"9", b"5", b"tag", b""],  # a plain call's shape
    [b"0", b"9", b"5", b"tag", b"R", b"", b"", b"5 x"],
])
def test_a_keyed_reply_of_a_shape_the_script_never_gives_is_unavailable(reply: list[bytes]) -> None:
    async def run() -> Waiter:
        batcher, _ = make(lambda cs: [reply for _ in cs])
        waiter = Waiter()
        batcher.submit_keyed("hat", b"ann", "k", waiter)
        await answers([waiter])
        return waiter

    assert asyncio.run(run()).outcomes == [(outcomes.UNAVAILABLE, 0)]


def test_a_keyed_reply_answers_each_letter() -> None:
    reply = [b"1", b"0", b"7", b"tag", b"RWCIS", b"", b"", b"3 1700000000000"]

    async def run() -> list[Waiter]:
        batcher, _ = make(lambda cs: [reply for _ in cs])
        waiters = [Waiter() for _ in range(5)]
        for i, waiter in enumerate(waiters):
            batcher.submit_keyed("hat", f"u{i}".encode(), f"k{i}", waiter)
        await answers(waiters)
        assert batcher.gate("hat") is not None  # nothing remains: the sold-out gate
        return waiters

    assert [w.outcomes for w in asyncio.run(run())] == [
        [(outcomes.REPLAYED, 3)], [(outcomes.WON, 7)], [(outcomes.KEY_REUSED, 0)],
        [(outcomes.KEY_IN_FLIGHT, 0)], [(outcomes.SOLD_OUT, 0)]]


# --- --replica-acks: WAIT after each pipeline -------------------------------------------

def acked(replicas: Any, grant: bool = True) -> Callable[[Sequence[tuple[Any, ...]]], list[Any]]:
    """Calls that win (or find it sold out), then the WAIT's reply: `replicas` (a count, or
    a Redis error)."""
    def behave(commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        *calls, wait = commands
        assert wait[0] == "WAIT" and all(c[0] == "EVALSHA" for c in calls), commands
        replies = won(calls) if grant else [[b"0", b"0", b"1", b"tag", b""] for _ in calls]
        return [*replies, replicas]
    return behave


@pytest.mark.parametrize(("replicas", "grant", "expected", "resets"), [
    (2, True, outcomes.WON, 0),  # every replica has the batch: the win stands
    (1, True, outcomes.WON, 0),  # as many as asked for
    (0, True, outcomes.UNAVAILABLE, 1),  # a win no replica has: 503, and connect again
    (ResponseError("ERR WAIT cannot be used with replica instances"), True, outcomes.UNAVAILABLE, 1),
    (0, False, outcomes.SOLD_OUT, 1),  # granted nothing, changed nothing: answered as it is
])
def test_with_replica_acks_a_win_is_answered_only_once_enough_replicas_have_it(
        replicas: Any, grant: bool, expected: int, resets: int) -> None:
    async def run() -> tuple[list[Waiter], ScriptedPipe]:
        batcher, pipe = make(acked(replicas, grant), replica_acks=1, ack_timeout=0.25)
        waiters = [Waiter() for _ in range(4)]
        for i, waiter in enumerate(waiters):
            assert batcher.submit(f"item{i % 2}", b"", waiter)
        await answers(waiters)
        return waiters, pipe

    waiters, pipe = asyncio.run(run())
    assert all(w.outcomes[0][0] == expected for w in waiters), [w.outcomes for w in waiters]
    assert all(call[-1] == ("WAIT", 1, 250) for call in pipe.calls)
    assert len(pipe.resets) == resets * len(pipe.calls)  # once per short WAIT


def test_without_replica_acks_no_wait_is_sent() -> None:
    async def run() -> ScriptedPipe:
        batcher, pipe = make(won)
        waiter = Waiter()
        assert batcher.submit("hat", b"", waiter)
        await answers([waiter])
        return pipe

    assert [c[0] for c in asyncio.run(run()).calls[0]] == ["EVALSHA"]


@pytest.mark.parametrize(("flags", "expected"), [
    ({}, batching.DEFAULT_MAX_IN_FLIGHT),
    ({"replica_acks": 1}, batching.ACKED_MAX_IN_FLIGHT),
    ({"replica_acks": 1, "max_in_flight": 1}, 1),
    ({"max_in_flight": 8}, 8),
])
def test_batches_in_flight_default_to_more_with_replica_acks_unless_set(flags: dict[str, int],
                                                                        expected: int) -> None:
    from seckill.config import Config

    assert Config(**flags).in_flight() == expected  # type: ignore[arg-type]
