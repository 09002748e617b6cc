"""Purchases and their answers: what a purchase needs to answer itself when its batch ends.

A `Purchase` is the request's place in its connection's answer queue (a `Slot`) and the
batcher's `Waiter` in one object: `finish()` turns the outcome into the answer's bytes
through `PurchaseAnswers` (built from the outcome table, memoised where they repeat) and
sets the slot. It holds the answers and nothing else of the app.

`ReportingSlot` and `ReportingPurchase` (the access and result logs are on: app/logged.py)
also tell their reporter what was decided and answered, when it is.
"""

from __future__ import annotations

import time
from typing import Protocol

from seckill.http.connection import HttpConnection, Slot
from seckill.http.protocol import Request
from seckill.http.responses import CLOSE, MAX_CACHED, Responses, json_body
from seckill.sales import outcomes
from seckill.sales.outcomes import ANSWERS, Outcome
from seckill.sales.sale_store import iso

RETRY_AFTER = b"Retry-After: 1\r\n"
REPLAYED = b"Idempotent-Replayed: true\r\n"  # (as Stripe's API marks a replayed answer)
UNAVAILABLE_BODY = json_body({"result": "unavailable"})

# Status and result of each outcome with a fixed answer (WON, HELD, REPLAYED, NOT_STARTED
# and UNAVAILABLE are built where they are answered).
_FIXED = {o: (status, word.encode()) for o, (status, word) in ANSWERS.items()
          if o not in (outcomes.WON, outcomes.HELD, outcomes.REPLAYED, outcomes.NOT_STARTED, outcomes.UNAVAILABLE)}

# A decision, for the result log: the outcome, the item, and the order id when won.
Decision = tuple[Outcome, str, str | None]


class Reporter(Protocol):
    """Who logs answers (app/logged.py's LoggedApp)."""

    def report(self, request: Request | None, conn: HttpConnection, answer: bytes,
               decision: Decision | None) -> None: ...


class PurchaseAnswers:
    """The answer bytes of every purchase outcome."""

    __slots__ = ("responses", "decided")

    def __init__(self, responses: Responses) -> None:
        self.responses = responses
        self.decided: Decision | None = None  # the last answer made without an order (app/logged.py)

    def held(self, item: str, tag: bytes, seq: int, until: int, mode: int, extra: bytes = b"") -> bytes:
        """A win held until confirmed or `until` (ms since the epoch). (A plain win's answer
        is built in Purchase.finish itself: a call less per win.)"""
        body = b'{"result":"won","item":"%s","order":"%s-%d","seq":%d,"state":"pending","hold_until":"%s"}' % (
            item.encode(), tag, seq, seq, (iso(until) or "").encode())
        return self.responses.build(200, body, mode, extra)

    def replayed(self, item: str, tag: bytes, seq: int, until: int, mode: int) -> bytes:
        """A keyed purchase's win again, for its retry: the same body, marked as a replay."""
        if until:
            return self.held(item, tag, seq, until, mode, REPLAYED)
        body = b'{"result":"won","item":"%s","order":"%s-%d","seq":%d}' % (item.encode(), tag, seq, seq)
        return self.responses.build(200, body, mode, REPLAYED)

    def sold_out(self, item: str, mode: int) -> bytes:
        """The sold-out answer, kept in Responses.by_mode with its decision (the purchase
        route reads it there itself while the item's gate is shut)."""
        kept = self.responses.by_mode[mode].get(item)
        if kept is None:
            status, result = _FIXED[outcomes.SOLD_OUT]
            body = b'{"result":"%s","item":"%s"}' % (result, item.encode())
            kept = (self.responses.build(status, body, mode), (outcomes.SOLD_OUT, item, None))
            if len(self.responses.by_mode[mode]) < MAX_CACHED:
                self.responses.by_mode[mode][item] = kept
        self.decided = kept[1]
        return kept[0]

    def not_started(self, item: str, starts_in: float, mode: int) -> bytes:
        self.decided = (outcomes.NOT_STARTED, item, None)
        body = b'{"result":"not_started","item":"%s","starts_in":%.3f}' % (item.encode(), max(0.0, starts_in))
        return self.responses.build(403, body, mode)

    def refused(self, item: str, outcome: Outcome, mode: int) -> bytes:
        """The answer for an outcome without an order (sold out, unavailable, ...)."""
        if outcome == outcomes.SOLD_OUT:
            return self.sold_out(item, mode)
        self.decided = (outcome, item, None)
        memo = self.responses.memo
        key = (outcome, item, mode)
        answer = memo.get(key)
        if answer is not None:
            return answer
        if outcome == outcomes.UNAVAILABLE:
            answer = self.responses.build(503, UNAVAILABLE_BODY, mode, RETRY_AFTER)
        else:
            status, result = _FIXED[outcome]
            body = b'{"result":"%s","item":"%s"}' % (result, item.encode())
            answer = self.responses.build(status, body, mode)
        if len(memo) < MAX_CACHED:
            memo[key] = answer
        return answer


class Purchase(Slot):
    """A purchase waiting for its batch; becomes the connection's answer when it ends."""

    __slots__ = ("answers", "item", "mode", "t0")
    t0: float  # when it was read; set by TimedPurchase (metrics on) only

    def __init__(self, answers: PurchaseAnswers, conn: HttpConnection, item: str, mode: int) -> None:
        self.conn = conn
        self.data = None
        self.close = mode == CLOSE
        self.answers = answers
        self.item = item
        self.mode = mode

    def finish(self, outcome: Outcome, tag: bytes, value: int, until: int = 0) -> None:
        if outcome == outcomes.WON:
            body = b'{"result":"won","item":"%s","order":"%s-%d","seq":%d}' % (self.item.encode(), tag, value, value)
            self.set(self.answers.responses.build(200, body, self.mode))
        elif outcome == outcomes.HELD:
            self.set(self.answers.held(self.item, tag, value, until, self.mode))
        elif outcome == outcomes.NOT_STARTED:
            self.set(self.answers.not_started(self.item, value / 1000, self.mode))
        elif outcome == outcomes.REPLAYED:
            self.set(self.answers.replayed(self.item, tag, value, until, self.mode))
        else:
            self.set(self.answers.refused(self.item, outcome, self.mode))


class TimedPurchase(Purchase):
    """A Purchase that notes when it was read (metrics on): the batcher turns that into the
    latency histogram once per batch (metrics.Histogram.observe_waits)."""

    __slots__ = ()

    # Purchase.__init__ written out rather than called: one Python call less per purchase.
    def __init__(self, answers: PurchaseAnswers, conn: HttpConnection, item: str, mode: int) -> None:
        self.conn = conn
        self.data = None
        self.close = mode == CLOSE
        self.answers = answers
        self.item = item
        self.mode = mode
        self.t0 = time.monotonic()


# --- With the access and result logs on ---------------------------------------------------

class ReportingSlot(Slot):
    """A slot that tells its reporter the request and the answer, when it is answered."""

    __slots__ = ("request", "reporter")

    def __init__(self, conn: HttpConnection, close: bool) -> None:
        super().__init__(conn, close)
        self.request: Request | None = None
        self.reporter: Reporter | None = None

    def watch(self, reporter: Reporter, request: Request) -> None:
        self.reporter, self.request = reporter, request

    def set(self, data: bytes) -> None:
        if self.data is None and self.reporter is not None:
            self.reporter.report(self.request, self.conn, data, None)
        super().set(data)


class ReportingPurchase(Purchase):
    """A purchase that tells its reporter the request, the decision and the answer. (It
    notes when it was read whether or not metrics are on: with logs, that is no cost.)"""

    __slots__ = ("request", "reporter", "decision")

    def __init__(self, answers: PurchaseAnswers, conn: HttpConnection, item: str, mode: int) -> None:
        super().__init__(answers, conn, item, mode)
        self.t0 = time.monotonic()
        self.request: Request | None = None
        self.reporter: Reporter | None = None
        self.decision: Decision | None = None

    def watch(self, reporter: Reporter, request: Request) -> None:
        self.reporter, self.request = reporter, request

    def finish(self, outcome: Outcome, tag: bytes, value: int, until: int = 0) -> None:
        won = outcome == outcomes.WON or outcome == outcomes.HELD or outcome == outcomes.REPLAYED
        self.decision = (outcome, self.item, f"{tag.decode()}-{value}" if won else None)
        super().finish(outcome, tag, value, until)

    def set(self, data: bytes) -> None:
        if self.data is None and self.reporter is not None:
            self.reporter.report(self.request, self.conn, data, self.decision)
        super().set(data)
