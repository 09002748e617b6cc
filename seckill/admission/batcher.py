"""Coalescing purchases into pipelined script calls.

Per worker, purchase requests queue per item. While one Redis round trip is in flight
the next batch accumulates; when it returns (or, if none is in flight, at the end of the
current loop tick) everything waiting goes out as ONE pipeline holding one admission
script call per item (`sale_store.ADMIT_LUA`). At 100 connections that is one round trip
for dozens of requests instead of one each, which is what makes the server fast.

Each request gets its own answer through `Waiter.finish()`. A batch whose outcome is
unknown (timeout, connection lost twice, a Redis error, or anything else that raised
on the way) answers UNAVAILABLE: never "won" without the script's word for it. The
Redis timeout counts from the arrival of the batch's oldest request, so a request queued
behind batches in flight is still answered within it. If answering itself raises (a bug
of ours), every request of the batch not answered yet gets `Waiter.fail()`: a 500.
The waiting queue is bounded; past the bound a request is refused at once
(UNAVAILABLE) rather than growing memory.

The gates answer locally what Redis would answer anyway, for `gate_interval` seconds,
then Redis is asked again (a restock, a new start or end time shows up): SOLD_OUT once
a call reports nothing left, ENDED once the sale has ended, NOT_STARTED before the
start Redis gave (and never from START_MARGIN before it, so a started sale is never
answered NOT_STARTED). A gate never turns an answer into WON.

Purchases with an Idempotency-Key (app/idempotency.py) queue apart and go as keyed script
calls in the same pipeline (their own batch ids): the unkeyed ones pay nothing for them.
They pass no gate (a retry of a win must find its record, whatever the stock is now), and
while one is unanswered, the same buyer's same key is refused at once (KEY_IN_FLIGHT).

With `replica_acks` N (--replica-acks), each pipeline ends with `WAIT N timeout` on the
same connection (on a cluster, each master's write ends with one): Redis answers it once
N replicas have every write of this connection so far, or at the timeout with how many
had. A call that granted or replayed a win is answered only if N did; otherwise
UNAVAILABLE (the win is recorded on the master and may or may not survive a failover: its
batch id, or its Idempotency-Key, makes a retry safe). A call that granted nothing
changed nothing and is answered as it is. (A replay writes
again what it replays, so the WAIT covers it whichever connection first wrote it.)
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError

from seckill.ops.faults import inject
from seckill.sales.outcomes import (
    ENDED,
    HELD,
    KEY_IN_FLIGHT,
    NOT_STARTED,
    REPLAYED,
    SOLD_OUT,
    UNAVAILABLE,
    UNKNOWN_ITEM,
    WON,
    Outcome,
)
from seckill.sales.sale_store import (
    ADMIT_LETTERS,
    ADMIT_LUA,
    KEYED_LETTERS,
    admit_keys,
    admit_reply_ok,
    idempotency_keys,
    keyed_reply_ok,
)
from seckill.store.client import BatchPipe
from seckill.throttle import Throttle

if TYPE_CHECKING:
    from seckill.ops.faults import Faults
    from seckill.ops.metrics import WorkerStats

log = logging.getLogger("seckill.batcher")

# One script call carries at most this many requests: bounds the script's run time
# (Redis serves nobody else meanwhile) and the size of one command.
DEFAULT_MAX_BATCH = 1000
# Requests waiting for Redis in one worker, over all items. Past it: 503 at once.
DEFAULT_MAX_WAITING = 20_000
# Batches sent and not yet answered, per worker. One leaves the server idle while Redis
# runs a batch; two overlap the two (measured: +13% at 100 connections); more only makes
# batches smaller, i.e. more round trips for the same requests.
DEFAULT_MAX_IN_FLIGHT = 2
# With --replica-acks each batch also waits for its WAIT, which blocks the pipe's connection:
# more batches in flight keep the server busy meanwhile. Four read 0.95-0.97x acks 0 in three
# of four bench/replica_acks.py runs (two: 0.63-0.81x there, 0.95x in the fourth).
ACKED_MAX_IN_FLIGHT = 4
# The not-started gate stops this long before the start Redis gave (seconds): its clock and
# ours run at the same rate, and the start is measured from when the call was sent, the
# earliest it can be.
START_MARGIN = 0.05

ADMIT_SHA = hashlib.sha1(ADMIT_LUA.encode()).hexdigest()


class Waiter(Protocol):
    t0: float  # time.monotonic() when the request was read (set when metrics are on)

    def finish(self, outcome: Outcome, tag: bytes, value: int, until: int = 0) -> None:
        """The purchase's outcome. WON and HELD: the order id is `<tag>-<value>` (value is
        the seq), and a hold lasts `until` (ms since the epoch); NOT_STARTED: value is the
        ms until the sale starts."""

    def fail(self, site: str, exc: BaseException) -> None:
        """Answering raised `exc`: a 500, unless the purchase was answered already."""


# How long a keyed purchase's win is remembered for its retries (seconds): a day, as
# Stripe keeps idempotency keys; --idempotency-ttl.
DEFAULT_IDEMPOTENCY_TTL = 24 * 3600

# One script call's requests: (user, waiter) pairs in arrival order, and for a keyed call
# the requests' Idempotency-Keys (None: not keyed).
Call = tuple[str, str, Sequence[tuple[bytes, "Waiter"]], Sequence[str] | None]

# A gate: until when (time.monotonic()), the outcome it answers, and for NOT_STARTED the
# earliest the sale can start (time.monotonic()).
Gate = tuple[float, Outcome, float]


class ReplicaAckError(RedisError):
    """Fewer replicas than --replica-acks acknowledged a call's writes in time: a 503."""


def _holds_a_win(reply: object) -> bool:
    """Whether a script reply granted or replayed a win (then it needs the replicas' word)."""
    return isinstance(reply, list) and len(reply) >= 5 and (reply[0] != b"0" or (len(reply) >= 7 and b"R" in reply[4]))


class Batcher:
    def __init__(
        self,
        redis: Redis,
        pipe: BatchPipe,
        *,
        timeout: float,
        gate_interval: float,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_waiting: int = DEFAULT_MAX_WAITING,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        stats: WorkerStats | None = None,
        faults: Faults | None = None,
        idempotency_ttl: int = DEFAULT_IDEMPOTENCY_TTL,
        claims: bool = True,
        replica_acks: int = 0,
        ack_timeout: float = 0.5,
    ) -> None:
        self._redis = redis
        self._pipe = pipe
        self._max_in_flight = max_in_flight
        self._timeout = timeout
        self._gate_interval = gate_interval
        self._max_batch = max_batch
        self._max_waiting = max_waiting
        self._queues: dict[str, list[tuple[bytes, Waiter]]] = {}
        # Keyed purchases per item: (user, waiter) pairs and their keys, side by side.
        self._keyed: dict[str, tuple[list[tuple[bytes, Waiter]], list[str]]] = {}
        self._keys_in_flight: set[tuple[bytes, str]] = set()  # (user, key) queued or sent
        self._idempotency_ttl = str(idempotency_ttl)
        self._claims = claims  # a plain Redis: a key's claim outside the sale (not on a cluster)
        self._replica_acks = replica_acks
        self._ack_timeout_ms = max(1, int(ack_timeout * 1000))
        self._waiting = 0
        self._scheduled = False
        self._in_flight: set[asyncio.Task[None]] = set()
        self.gates: dict[str, Gate] = {}  # item -> its gate (read on the hot path: see gate())
        self._first_at = 0.0  # when the oldest request waiting arrived
        # Batch ids: unique per process start, so a replayed call is recognised and a
        # new one never mistaken for a replay.
        self._id_prefix = f"{os.getpid():x}.{os.urandom(4).hex()}."
        self._next_id = 0
        self._stats = stats  # None: metrics off
        self._faults = faults
        self._warnings = Throttle(1.0)  # failures: a Redis outage must not flood the log

    def gate(self, item: str) -> Gate | None:
        """The gate that answers for this item without Redis now, if any. (The purchase
        route reads `gates` itself, a call less per request; a stale gate stays until it
        is replaced or asked for here.)"""
        gate = self.gates.get(item)
        if gate is None:
            return None
        if time.monotonic() < gate[0]:
            return gate
        del self.gates[item]
        return None

    def submit(self, item: str, user: bytes, waiter: Waiter) -> bool:
        """Queue a purchase for the next batch; False (answer 503) if the queue is full."""
        waiting = self._waiting
        if not waiting:
            self._first_at = time.monotonic()
        elif waiting >= self._max_waiting:
            return False
        queue = self._queues.get(item)
        if queue is None:
            queue = self._queues[item] = []
        queue.append((user, waiter))
        self._waiting += 1
        if not self._scheduled and len(self._in_flight) < self._max_in_flight:
            # Send at the end of this loop tick, with whatever else this tick reads.
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._send)
        return True

    def submit_keyed(self, item: str, user: bytes, key: str, waiter: Waiter) -> Outcome | None:
        """Queue a purchase with an Idempotency-Key: None if queued, else the outcome to
        answer at once (KEY_IN_FLIGHT: this buyer's same key is not answered yet;
        UNAVAILABLE: the queue is full)."""
        mark = (user, key)
        if mark in self._keys_in_flight:
            return KEY_IN_FLIGHT
        waiting = self._waiting
        if not waiting:
            self._first_at = time.monotonic()
        elif waiting >= self._max_waiting:
            return UNAVAILABLE
        queue = self._keyed.get(item)
        if queue is None:
            queue = self._keyed[item] = ([], [])
        queue[0].append((user, waiter))
        queue[1].append(key)
        self._keys_in_flight.add(mark)
        self._waiting += 1
        if not self._scheduled and len(self._in_flight) < self._max_in_flight:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._send)
        return None

    @property
    def in_flight(self) -> int:
        """Pipelines sent to Redis and not yet answered (a metrics gauge)."""
        return len(self._in_flight)

    @property
    def busy(self) -> bool:
        return self._waiting > 0 or bool(self._in_flight)

    async def drain(self) -> None:
        """Wait until every queued purchase has its answer (graceful shutdown)."""
        while self.busy:
            self._send()
            if self._in_flight:
                await asyncio.wait(self._in_flight)

    async def close(self) -> None:
        await self._pipe.close()

    def _send(self) -> None:
        self._scheduled = False
        if not (self._queues or self._keyed) or len(self._in_flight) >= self._max_in_flight:
            return
        queues, self._queues = self._queues, {}
        keyed, self._keyed = self._keyed, {}
        self._waiting = 0
        deadline = self._first_at + self._timeout
        task = asyncio.get_running_loop().create_task(self._round_trip(queues, keyed, deadline))
        self._in_flight.add(task)

    def _calls(self, queues: dict[str, list[tuple[bytes, Waiter]]],
               keyed: dict[str, tuple[list[tuple[bytes, Waiter]], list[str]]]) -> list[Call]:
        """The script calls of one pipeline: each item's queue in slices of max_batch."""
        calls: list[Call] = []
        step = self._max_batch
        for item, queue in queues.items():
            for start in range(0, len(queue), step):
                self._next_id += 1
                calls.append((item, f"{self._id_prefix}{self._next_id:x}", queue[start : start + step], None))
        for item, (queue, keys) in keyed.items():
            for start in range(0, len(queue), step):
                self._next_id += 1
                calls.append((item, f"{self._id_prefix}{self._next_id:x}", queue[start : start + step],
                              keys[start : start + step]))
        return calls

    async def _round_trip(self, queues: dict[str, list[tuple[bytes, Waiter]]],
                          keyed: dict[str, tuple[list[tuple[bytes, Waiter]], list[str]]], deadline: float) -> None:
        calls = self._calls(queues, keyed)
        sent = time.monotonic()
        try:
            if sent >= deadline:  # queued behind batches in flight for the whole timeout
                raise TimeoutError("no Redis reply within the timeout")
            replies = await asyncio.wait_for(self._call(calls), deadline - sent)
        except Exception as exc:  # whatever failed, the outcome is unknown: 503
            if not isinstance(exc, (TimeoutError, RedisError, OSError)) and self._faults is not None:
                self._faults.report("redis", exc)  # not Redis's doing: a bug, logged as one
            self._warn(exc)
            replies = [exc] * len(calls)
        finally:
            self._in_flight.discard(asyncio.current_task())
        now = time.monotonic()
        try:
            inject("batch")
            stats = self._stats
            if stats is not None:
                stats.round_trip.observe(now - sent)
                for _, _, requests, _ in calls:
                    stats.batch_size.observe(len(requests))
                    stats.latency.observe_waits(now, requests)
            for (item, _, requests, keys), reply in zip(calls, replies, strict=True):
                if keys is None:
                    self._answer(item, requests, reply, now, sent)
                else:
                    self._answer_keyed(item, requests, reply, now, sent)
        except Exception as exc:  # a bug of ours: whoever is still waiting gets a 500
            for _, _, requests, _ in calls:
                for _, waiter in requests:
                    waiter.fail("batch", exc)
        finally:
            if keyed:  # answered (or failed): the same keys may be sent again
                for _, _, requests, keys in calls:
                    if keys is not None:
                        self._keys_in_flight.difference_update(
                            zip([user for user, _ in requests], keys, strict=True))
        if (self._queues or self._keyed) and not self._scheduled:
            self._send()

    def _warn(self, exc: BaseException, what: str = "Redis round trip(s) failed") -> None:
        """Log failures, at most once a second."""
        failures = self._warnings.tick()
        if failures:
            log.warning("%d %s, answered 503; last: %s: %s", failures, what, type(exc).__name__, exc)

    async def _call(self, calls: list[Call]) -> list[object]:
        inject("redis")
        try:
            replies = await self._pipeline(calls)
        except (RedisConnectionError, OSError):
            # The connection was dead (Redis restarted or failed over while we were idle,
            # or a batch ahead of this one was abandoned): once more on a fresh one, within
            # the same timeout. Safe even if the first attempt ran: a batch id already run
            # returns its stored reply and grants nothing again (sale_store.ADMIT_LUA).
            replies = await self._pipeline(calls)
        missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if missing:
            # Redis restarted or flushed its script cache. NOSCRIPT means the call did
            # not run, so sending it again is safe (and idempotent on its batch id anyway).
            await self._redis.script_load(ADMIT_LUA)
            again = await self._pipeline([calls[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    async def _pipeline(self, calls: list[Call]) -> list[object]:
        commands: list[tuple[Any, ...]] = [
            ("EVALSHA", ADMIT_SHA, 7, *admit_keys(item, batch_id), batch_id, *[user for user, _ in requests])
            if keys is None else self._keyed_command(item, batch_id, requests, keys)
            for item, batch_id, requests, keys in calls
        ]
        if not self._replica_acks:
            return await self._pipe.execute(commands)
        replies, acks = await self._pipe.execute_acked(commands, self._replica_acks, self._ack_timeout_ms)
        short: ReplicaAckError | None = None
        for index, acked in enumerate(acks):
            if isinstance(acked, int) and acked >= self._replica_acks:
                continue
            if acked is None and isinstance(replies[index], BaseException):
                continue  # never ran (a cluster gave it up): nothing to acknowledge
            short = ReplicaAckError(
                f"WAIT answered {type(acked).__name__}: {acked}" if isinstance(acked, Exception) else
                f"{acked} of {self._replica_acks} replicas acknowledged within {self._ack_timeout_ms} ms")
            if _holds_a_win(replies[index]):
                replies[index] = short
        if short is not None:
            self._warn(short, "batch(es) with wins not acknowledged by enough replicas")
            # Too few replicas may mean this master was demoted by a failover and has not
            # been told yet (Sentinel reconfigures an old master within seconds; until then
            # it takes writes that will be dropped): the next batch connects again, and a
            # Sentinel connection asks where the master is now. The batches behind this one
            # fail with the connection and are sent once more on the new one (the retry).
            self._pipe.reset(short)
        return replies

    def _keyed_command(self, item: str, batch_id: str, requests: Sequence[tuple[bytes, Waiter]],
                       keys: Sequence[str]) -> tuple[Any, ...]:
        pairs = [idempotency_keys(item, key, claim=self._claims) for key in keys]
        records = [pair[0] for pair in pairs]
        claims = [pair[1] for pair in pairs] if self._claims else []
        return ("EVALSHA", ADMIT_SHA, 7 + len(records) + len(claims), *admit_keys(item, batch_id), *records,
                *claims, batch_id, self._idempotency_ttl, *[user for user, _ in requests])

    def _answer(
        self, item: str, requests: Sequence[tuple[bytes, Waiter]], reply: object, now: float, sent: float
    ) -> None:
        stats = self._stats
        if not admit_reply_ok(reply, len(requests)):
            if isinstance(reply, ResponseError) or not isinstance(reply, BaseException):
                # The script failed (Redis out of memory, a bug, bad data), or replied in a
                # shape it never does. Every call of a batch can fail so: rate-limited.
                self._warn(reply if isinstance(reply, BaseException) else ValueError(repr(reply)),
                           f"admission call(s) failed (the last for {item})")
            self._count(item, UNAVAILABLE, len(requests))
            for _, waiter in requests:
                waiter.finish(UNAVAILABLE, b"", 0)
            return
        if not reply:
            if stats is not None:
                stats.forget_sale(item)
            self._count(item, UNKNOWN_ITEM, len(requests))
            for _, waiter in requests:
                waiter.finish(UNKNOWN_ITEM, b"", 0)
            return
        granted, remaining, seq = int(reply[0]), int(reply[1]), int(reply[2])
        tag, outcomes = reply[3], reply[4]
        self._gate(item, remaining, outcomes, reply[5] if outcomes == b"N" else b"", now, sent)
        won, until = WON, 0
        if len(reply) == 6 and outcomes != b"N":
            won, until = HELD, int(reply[5])
        if stats is not None:
            stats.saw_sale(item)
            self._count_reply(item, len(requests), granted, outcomes, won)
        if not outcomes:  # the first `granted` won, the rest found it sold out
            for _, waiter in requests[:granted]:
                waiter.finish(won, tag, seq, until)
                seq += 1
            for _, waiter in requests[granted:]:
                waiter.finish(SOLD_OUT, b"", 0)
        elif outcomes == b"N":
            starts_in = int(reply[5])
            for _, waiter in requests:
                waiter.finish(NOT_STARTED, b"", starts_in)
        elif outcomes == b"E":
            for _, waiter in requests:
                waiter.finish(ENDED, b"", 0)
        else:
            for (_, waiter), letter in zip(requests, outcomes, strict=True):
                outcome = ADMIT_LETTERS[letter]
                if outcome == WON:
                    waiter.finish(won, tag, seq, until)
                    seq += 1
                else:
                    waiter.finish(outcome, b"", 0)


    def _gate(self, item: str, remaining: int, outcomes: bytes, starts_in: bytes, now: float, sent: float) -> None:
        """Gate the item on what a reply said: nothing left, not started (in `starts_in`
        ms), or ended. (Remaining -1: the sale is not open, nobody looked at the stock.)"""
        gate_until = now + self._gate_interval
        if remaining == 0:
            self.gates[item] = (gate_until, SOLD_OUT, 0.0)
        elif outcomes == b"N":
            starts = sent + int(starts_in) / 1000  # the earliest it can start
            self.gates[item] = (min(gate_until, starts - START_MARGIN), NOT_STARTED, starts)
        elif outcomes == b"E":
            self.gates[item] = (gate_until, ENDED, 0.0)

    def _answer_keyed(
        self, item: str, requests: Sequence[tuple[bytes, Waiter]], reply: object, now: float, sent: float
    ) -> None:
        """Answer a keyed call (sale_store.ADMIT_LUA): one letter per request."""
        if reply == [] or not keyed_reply_ok(reply, len(requests)):
            # No such sale ({}), a failure, or a shape no keyed call gives: answered as any call's.
            if not (reply == [] or isinstance(reply, BaseException)):
                reply = ResponseError(f"a keyed call replied {reply!r}")
            self._answer(item, requests, reply, now, sent)
            return
        letters, tag, hold, starts_in = reply[4], reply[3], reply[5], reply[6]
        self._gate(item, int(reply[1]), b"N" if starts_in else b"E" if b"E" in letters else b"",
                   starts_in, now, sent)
        won, until = (HELD, int(hold)) if hold else (WON, 0)
        seq = int(reply[2])
        replays = iter(reply[7:])
        if self._stats is not None:
            self._stats.saw_sale(item)
        for (_, waiter), letter in zip(requests, letters, strict=True):
            outcome = KEYED_LETTERS[letter]
            if outcome == WON:
                self._count(item, won, 1)
                waiter.finish(won, tag, seq, until)
                seq += 1
            elif outcome == REPLAYED:
                first, _, held = next(replays).partition(b" ")
                self._count(item, REPLAYED, 1)
                waiter.finish(REPLAYED, tag, int(first), int(held or 0))
            else:
                self._count(item, outcome, 1)
                waiter.finish(outcome, b"", int(starts_in) if outcome == NOT_STARTED else 0)

    def _count(self, item: str, outcome: Outcome, count: int) -> None:
        if self._stats is not None:
            self._stats.count_results(item, outcome, count)

    def _count_reply(self, item: str, requests: int, granted: int, outcomes: bytes, won: Outcome) -> None:
        """Metrics: one script call's results, counted per call rather than per request."""
        count = self._count
        if not outcomes:
            count(item, won, granted)
            count(item, SOLD_OUT, requests - granted)
        elif outcomes == b"N":
            count(item, NOT_STARTED, requests)
        elif outcomes == b"E":
            count(item, ENDED, requests)
        else:
            for letter, outcome in ADMIT_LETTERS.items():
                n = outcomes.count(letter)
                if n:
                    count(item, won if outcome == WON else outcome, n)
