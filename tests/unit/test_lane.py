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
from seckill.http import protocol
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


def make_app(lanes: bool) -> SeckillApp:
    config = Config(redis="redis://127.0.0.1:1", demo=False)  # (never connected: the gate answers)
    redis = make_redis(config.redis or "", config.redis_timeout)
    stats = metrics.WorkerStats()
    errors = faults.Faults(stats.internal_errors)
    batcher = batching.Batcher(redis, make_pipe(redis), timeout=1.0, gate_interval=0.1, stats=stats, faults=errors)
    app = SeckillApp(config, redis, batcher, ReadBatcher(redis, make_pipe(redis), timeout=1.0, faults=errors),
                     metrics.Board(None), stats, Registry(), errors)
    app._lanes = lanes
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
        for each, t in ((conn, transport), (other, other_transport)):
            if not t.closed:
                each.data_received(data)
        assert state(conn, transport, app) == state(other, other_transport, plain)


def test_shape_of_refuses_what_the_parser_refuses() -> None:
    data = b"GET /a?q HTTP/1.1\r\nHost: h\r\n\r\n"
    with pytest.raises(HttpError):
        parsed(data.replace(b"Host: h\r\n", b""))
    assert shape_of(data, parsed(data), "a") is not None
