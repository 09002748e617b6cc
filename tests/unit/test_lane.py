"""The lane: a client's requests of a known shape answered without being parsed.

What must hold: a read the lane takes is one the parser would read as the same request
but for its query (protocol.Shape), and the bytes written, the connection's state and the
counts are those the parse-and-dispatch road gives. So the lane's answers are compared
with a server without lanes, request by request, on the real app: the sold-out gate is
the batcher's own table, set as a sell-out sets it (no stock is touched here)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seckill.admission import batcher as batching
from seckill.app.routes import SeckillApp
from seckill.config import Config
from seckill.http import connection, protocol
from seckill.http.connection import Clock, HttpConnection, Limits, Registry
from seckill.http.protocol import MAX_HEAD, MAX_REQUEST_LINE, HttpError, RequestParser, shape_of
from seckill.ops import faults, metrics
from seckill.sales import outcomes
from seckill.store.client import make_pipe, make_redis
from seckill.store.reads import ReadBatcher

HEAD = b"GET /seckill/phone?user=u1 HTTP/1.1\r\nHost: shop\r\nUser-Agent: t\r\n\r\n"


def parsed(data: bytes) -> protocol.Request:
    parser = RequestParser()
    parser.feed(data)
    request = parser.next_request()
    assert request is not None and not parser.buffered
    return request


# --- Shape (sans-I/O) -----------------------------------------------------------------

def test_a_shape_matches_the_same_request_with_another_query() -> None:
    shape = shape_of(HEAD, parsed(HEAD), "phone")
    assert shape is not None
    assert (shape.prefix, shape.suffix) == (b"GET /seckill/phone?", b" HTTP/1.1\r\nHost: shop\r\nUser-Agent: t\r\n\r\n")
    assert shape.matches(HEAD)
    assert shape.matches(HEAD.replace(b"user=u1", b"user=someone-else&x=%20y"))
    assert shape.matches(HEAD.replace(b"?user=u1", b"?"))


@pytest.mark.parametrize("other", [
    HEAD.replace(b"u1", b"u#1"), HEAD.replace(b"u1", b"u 1"), HEAD.replace(b"u1", b"u\xff1"),
    HEAD.replace(b"u1", b"u\r\n1"), HEAD.replace(b"u1", b"u\x001"),
    HEAD.replace(b"GET", b"HEAD"), HEAD.replace(b"phone", b"phones"), HEAD.replace(b"1.1", b"1.0"),
    HEAD.replace(b"Host: shop", b"Host: shop2"), HEAD + HEAD, b"\r\n" + HEAD, HEAD[:-2],
    HEAD.replace(b"u1", b"u" * (MAX_REQUEST_LINE - 20)),
    HEAD.replace(b"User-Agent: t", b"User-Agent: " + b"t" * (MAX_HEAD - 100)),
], ids=["fragment", "space", "obs-text", "crlf", "nul", "head", "path", "http10", "host", "pipelined",
        "crlf-before", "incomplete", "line-too-long", "head-too-large"])
def test_a_shape_matches_nothing_else(other: bytes) -> None:
    shape = shape_of(HEAD, parsed(HEAD), "phone")
    assert shape is not None and not shape.matches(other)


@pytest.mark.parametrize("line", [MAX_REQUEST_LINE, MAX_REQUEST_LINE + 1])
def test_a_shape_stops_where_the_request_line_limit_does(line: int) -> None:
    shape = shape_of(HEAD, parsed(HEAD), "phone")
    assert shape is not None
    data = shape.prefix + b"q" * (line - len(shape.prefix) - 9) + shape.suffix
    assert data.index(b"\r\n") == line
    parser = RequestParser()
    parser.feed(data)
    try:
        read = parser.next_request() is not None
    except HttpError:
        read = False
    assert shape.matches(data) == read == (line == MAX_REQUEST_LINE)


@pytest.mark.parametrize("data", [
    HEAD.replace(b"GET", b"POST"), HEAD.replace(b"1.1", b"1.0"),
    HEAD.replace(b"User-Agent: t", b"Connection: close"), HEAD.replace(b"User-Agent: t", b"Idempotency-Key: \"k\""),
], ids=["post", "http10", "close", "idempotency-key"])
def test_no_shape_for_a_request_the_lane_must_not_take(data: bytes) -> None:
    assert shape_of(data, parsed(data), "phone") is None


def test_no_shape_unless_the_read_is_exactly_the_request() -> None:
    request = parsed(HEAD)
    assert shape_of(HEAD + HEAD, request, "phone") is None
    assert shape_of(HEAD.replace(b"u1", b"u2"), request, "phone") is None


def test_a_request_without_query_is_its_own_shape() -> None:
    data = HEAD.replace(b"?user=u1", b"")
    shape = shape_of(data, parsed(data), "phone")
    assert shape is not None and shape.matches(data)
    assert not shape.matches(HEAD) and not shape.matches(data.replace(b"phone", b"phone?"))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_what_a_shape_matches_the_parser_reads_as_that_request(query: bytes) -> None:
    """The soundness the lane rests on, for any bytes in the query's place."""
    shape = shape_of(HEAD, parsed(HEAD), "phone")
    assert shape is not None
    data = shape.prefix + query + shape.suffix
    if not shape.matches(data):
        return
    request = parsed(data)
    reference = parsed(HEAD)
    assert (request.method, request.path, request.query, request.http10, request.keep_alive, request.headers,
            request.body, request.idempotency_key) == (reference.method, reference.path, query, False, True,
                                                         reference.headers, b"", None)


# --- The lane on a connection of the real app -------------------------------------------

class Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True

    abort = close

    def write_eof(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    resume_reading = pause_reading

    def set_write_buffer_limits(self, high: int) -> None:
        pass

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 1234) if name == "peername" else None


def make_app(lanes: bool, **settings_: Any) -> SeckillApp:
    config = Config(redis="redis://127.0.0.1:1", demo=False, **settings_)  # (never connected here)
    redis = make_redis(config.redis or "", config.redis_timeout)
    stats = metrics.WorkerStats()
    errors = faults.Faults(stats.internal_errors)
    batcher = batching.Batcher(redis, make_pipe(redis), timeout=1.0, gate_interval=0.1, stats=stats, faults=errors)
    app = SeckillApp(config, redis, batcher, ReadBatcher(redis, make_pipe(redis), timeout=1.0, faults=errors),
                     metrics.Board(None), stats, Registry(), errors)
    app._lanes = lanes
    app._buyer_lanes = app._buyer_lanes and lanes
    batcher.gates["phone"] = (time.monotonic() + 3600, outcomes.SOLD_OUT, 0.0)
    return app


def connect(app: SeckillApp, requests: int = 1000) -> tuple[HttpConnection, Transport]:
    conn = HttpConnection(app, Clock(100.0), Registry(), Limits(keepalive_requests=requests))
    transport = Transport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    return conn, transport


def state(conn: HttpConnection, transport: Transport, app: SeckillApp) -> tuple[Any, ...]:
    return (b"".join(transport.written), transport.closed, conn.closing, conn._requests_left, len(conn._pending),
            dict(app.gate_hits or {}))


def feed(data: bytes, *connections: tuple[HttpConnection, Transport]) -> None:
    """The same read to each connection its client has not seen closed."""
    for conn, transport in connections:
        if not transport.closed:
            conn.data_received(data)


def test_after_one_gated_answer_the_lane_answers_without_the_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    app, plain = make_app(lanes=True), make_app(lanes=False)
    conn, transport = connect(app)
    other, other_transport = connect(plain)
    for data in (HEAD, HEAD.replace(b"u1", b"u2")):
        conn.data_received(data)
        other.data_received(data)
    assert conn._shape is not None and conn._shape.key == "phone"

    def refuse(self: RequestParser) -> None:
        raise AssertionError("parsed")

    monkeypatch.setattr(RequestParser, "next_request", refuse)
    conn.data_received(HEAD.replace(b"u1", b"u3"))
    monkeypatch.undo()
    other.data_received(HEAD.replace(b"u1", b"u3"))
    assert state(conn, transport, app) == state(other, other_transport, plain)
    assert b"409 Conflict" in transport.written[-1] and app.gate_hits == {"phone": 3}


def test_the_lane_declines_once_the_gate_opens() -> None:
    async def run() -> None:
        app = make_app(lanes=True)
        conn, transport = connect(app)
        conn.data_received(HEAD)
        app.batcher.gates["phone"] = (time.monotonic() - 1, outcomes.SOLD_OUT, 0.0)
        conn.data_received(HEAD.replace(b"u1", b"u2"))
        assert len(transport.written) == 1 and len(conn._pending) == 1  # to the batcher, as parsed
        app.batcher._queues.clear()  # (nothing is sent: this test has no Redis)
        app.batcher._waiting = 0

    asyncio.run(run())


def test_the_last_request_a_connection_may_make_is_not_laned() -> None:
    app, plain = make_app(lanes=True), make_app(lanes=False)
    conn, transport = connect(app, requests=3)
    other, other_transport = connect(plain, requests=3)
    for n in range(3):
        conn.data_received(HEAD.replace(b"u1", b"u%d" % n))
        other.data_received(HEAD.replace(b"u1", b"u%d" % n))
    assert state(conn, transport, app) == state(other, other_transport, plain)
    assert b"Connection: close" in transport.written[-1] and transport.closed


VARIANTS = [
    HEAD.replace(b"u1", b"u9"), HEAD.replace(b"?user=u1", b""), HEAD.replace(b"GET", b"HEAD"),
    HEAD.replace(b"u1", b"u#1"), HEAD.replace(b"1.1", b"1.0"), HEAD.replace(b"User-Agent: t", b"Connection: close"),
    HEAD.replace(b"phone", b"bad!item"), HEAD + HEAD.replace(b"u1", b"u7"), HEAD[:20], HEAD[20:],
    HEAD.replace(b"u1", b"u" * (MAX_REQUEST_LINE - 30)), b"\r\n" + HEAD, HEAD.replace(b"Host: shop", b"Host: x"),
    HEAD.replace(b"GET", b"BREW"), b"garbage\r\n\r\n",
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(VARIANTS), max_size=12), st.integers(2, 12))
def test_a_laned_connection_answers_as_one_without_lanes(reads: list[bytes], requests: int) -> None:
    app, plain = make_app(lanes=True), make_app(lanes=False)
    conn, transport = connect(app, requests)
    other, other_transport = connect(plain, requests)
    for data in [HEAD, *reads]:
        feed(data, (conn, transport), (other, other_transport))
        assert state(conn, transport, app) == state(other, other_transport, plain)


def test_shape_of_refuses_what_the_parser_refuses() -> None:
    data = b"GET /a?q HTTP/1.1\r\nHost: h\r\n\r\n"
    with pytest.raises(HttpError):
        parsed(data.replace(b"Host: h\r\n", b""))
    assert shape_of(data, parsed(data), "a") is not None


# --- An open sale: the lane queues the purchase, as the route does ----------------------

def queued(app: SeckillApp) -> list[tuple[str, bytes, int]]:
    return [(item, user, waiter.mode) for item, queue in app.batcher._queues.items()  # type: ignore[attr-defined]
            for user, waiter in queue]


def open_sale(app: SeckillApp) -> SeckillApp:
    del app.batcher.gates["phone"]
    return app


# What the batcher would answer once Redis replied (scripted: no Redis here). A client
# such as wrk or ab waits for it before its next request, which the lane then takes.
WON = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def answer_pending(*conns: HttpConnection) -> None:
    for conn in conns:
        for slot in list(conn._pending):
            slot.set(WON)


def drop_queues(*apps: SeckillApp) -> None:
    for app in apps:  # (nothing is sent: these tests have no Redis)
        app.batcher._queues.clear()
        app.batcher._waiting = 0


def test_an_open_sale_s_purchases_take_the_lane_to_the_batcher(monkeypatch: pytest.MonkeyPatch) -> None:
    async def run() -> None:
        app, plain = open_sale(make_app(lanes=True)), open_sale(make_app(lanes=False))
        conn, transport = connect(app)
        other, other_transport = connect(plain)
        conn.data_received(HEAD)
        other.data_received(HEAD)
        assert conn._shape is not None
        answer_pending(conn, other)
        with monkeypatch.context() as patched:
            patched.setattr(RequestParser, "next_request", lambda self: pytest.fail("parsed"))
            conn.data_received(HEAD.replace(b"u1", b"u2"))
        other.data_received(HEAD.replace(b"u1", b"u2"))
        assert queued(app) == queued(plain) == [("phone", b"u1", 0), ("phone", b"u2", 0)]
        assert state(conn, transport, app) == state(other, other_transport, plain)
        drop_queues(app, plain)

    asyncio.run(run())


@pytest.mark.parametrize("config", [{"rate_per_user": "5/s"}, {"auth": "jwt"}])
def test_no_buyer_lane_where_the_route_needs_the_request(config: dict[str, str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECKILL_JWT_SECRET", "s" * 32)
    app = open_sale(make_app(lanes=True, **config))
    assert not app._buyer_lanes


BUYER_VARIANTS = [HEAD.replace(b"u1", b"u%d" % n) for n in range(3)] + [
    HEAD.replace(b"user=u1", b"user=a%20b"), HEAD.replace(b"user=u1", b"u=1"), HEAD.replace(b"?user=u1", b"?"),
    HEAD.replace(b"user=u1", b"user=" + b"x" * 200), HEAD.replace(b"user=u1", b"user=1&user=2"),
]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([HEAD, HEAD.replace(b"?user=u1", b"")]),
       st.lists(st.sampled_from(BUYER_VARIANTS + VARIANTS), max_size=10), st.integers(2, 12))
def test_an_open_sale_s_laned_connection_queues_as_one_without_lanes(first: bytes, reads: list[bytes],
                                                                     requests: int) -> None:
    async def run() -> None:
        app, plain = open_sale(make_app(lanes=True)), open_sale(make_app(lanes=False))
        conn, transport = connect(app, requests)
        other, other_transport = connect(plain, requests)
        for data in [first, *reads]:
            feed(data, (conn, transport), (other, other_transport))
            assert state(conn, transport, app) == state(other, other_transport, plain)
            assert queued(app) == queued(plain)
            answer_pending(conn, other)
        drop_queues(app, plain)

    asyncio.run(run())


def test_a_client_that_moves_to_another_sale_learns_its_shape_and_only_then(monkeypatch: pytest.MonkeyPatch) -> None:
    learnt: list[str] = []

    def learn(data: bytes, request: protocol.Request, key: str) -> protocol.Shape | None:
        learnt.append(key)
        return shape_of(data, request, key)

    monkeypatch.setattr(connection, "shape_of", learn)

    async def run() -> None:
        app = open_sale(make_app(lanes=True))
        conn, _ = connect(app)
        conn.data_received(HEAD)
        answer_pending(conn)
        conn.data_received(HEAD.replace(b"user=u1", b"user=a%20b"))  # declined: parsed, same sale
        answer_pending(conn)
        assert learnt == ["phone"]
        conn.data_received(HEAD.replace(b"phone", b"tv"))
        assert learnt == ["phone", "tv"] and conn._shape is not None and conn._shape.key == "tv"
        drop_queues(app)

    asyncio.run(run())
