"""HttpConnection without sockets: a fake transport, a coarse clock moved by hand, and an
app whose routes are scripted. What these pin down is the invariant the connection owns:
every request read gets exactly one answer, or its connection is closed, within a bound,
whatever the app raises."""

from __future__ import annotations

from typing import Any

import pytest

from seckill.http.connection import Clock, HttpConnection, Limits, Registry, Slot
from seckill.http.protocol import Request
from seckill.http.responses import CLOSE, KEEP, Responses, json_body


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False
        self.aborted = False
        self.eof = False
        self.reading = True
        self.high = 0

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = self.closed = True

    def write_eof(self) -> None:
        self.eof = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def set_write_buffer_limits(self, high: int) -> None:
        self.high = high

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 1234) if name == "peername" else None

    @property
    def output(self) -> bytes:
        return b"".join(self.written)


class App:
    """Routes: /ok answers at once, /later gives a slot the test fills, /boom raises."""

    def __init__(self) -> None:
        self.responses = Responses()
        self.slots: list[Slot] = []
        self.errors: list[tuple[str, BaseException]] = []

    def dispatch(self, request: Request, conn: HttpConnection) -> bytes | Slot:
        if request.path == b"/boom":
            raise RecursionError("a bug")
        if request.path == b"/later":
            slot = Slot(conn, conn.closing)
            self.slots.append(slot)
            return slot
        return self.responses.get(200, json_body({"path": request.path.decode()}), KEEP)

    def refused(self, conn: HttpConnection, status: int, answer: bytes) -> None:
        pass

    def internal_error(self, site: str, exc: BaseException) -> bytes:
        self.errors.append((site, exc))
        return self.responses.get(500, json_body({"error": "internal"}), CLOSE)


def connect(limits: Limits | None = None) -> tuple[HttpConnection, FakeTransport, App, Clock]:
    app, clock = App(), Clock(100.0)
    conn = HttpConnection(app, clock, Registry(), limits or Limits())  # type: ignore[arg-type]
    transport = FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    return conn, transport, app, clock


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: a\r\n\r\n".encode()


def statuses(data: bytes) -> list[int]:
    return [int(part[9:12]) for part in data.split(b"HTTP/1.1 ")[1:] for part in [b"HTTP/1.1 " + part]]


def test_an_exception_in_dispatch_answers_500_and_closes_after_the_answers_ahead() -> None:
    conn, transport, app, _ = connect()
    conn.data_received(get("/ok") + get("/boom") + get("/ok"))
    assert statuses(transport.output) == [200, 500]
    assert b'{"error":"internal"}' in transport.output and b"Connection: close" in transport.output
    assert [site for site, _ in app.errors] == ["dispatch"]
    assert transport.eof or transport.closed  # closing (half-closed: it may still be sending)


def test_a_slot_is_answered_once() -> None:
    conn, transport, app, _ = connect()
    conn.data_received(get("/later"))
    slot = app.slots[0]
    slot.set(app.responses.get(200, b"{}", KEEP))
    slot.set(app.responses.get(409, b"{}", KEEP))
    assert statuses(transport.output) == [200]


def test_a_failed_slot_answers_500_and_a_late_answer_is_dropped() -> None:
    conn, transport, app, _ = connect()
    conn.data_received(get("/later") + get("/ok"))
    app.slots[0].fail("stock", ValueError("year 10000"))
    app.slots[0].set(app.responses.get(200, b"{}", KEEP))
    # The 500 closes: the pipelined /ok behind it is not answered.
    assert statuses(transport.output) == [500]
    assert app.errors[0][0] == "stock"


def test_fail_after_the_answer_changes_nothing() -> None:
    conn, transport, app, _ = connect()
    conn.data_received(get("/later"))
    app.slots[0].set(app.responses.get(200, b"{}", KEEP))
    app.slots[0].fail("stock", ValueError("late"))
    assert statuses(transport.output) == [200]
    assert not transport.closed and not transport.eof


def test_an_answer_owed_past_the_deadline_gets_500_and_a_close() -> None:
    conn, transport, app, clock = connect(Limits(answer_timeout=3.0))
    conn.data_received(get("/later"))
    clock.now += 2.9
    conn.expire(clock.now)
    assert transport.output == b""
    clock.now += 0.2
    conn.expire(clock.now)
    assert statuses(transport.output) == [500]
    assert app.errors[0][0] == "overdue"


def test_the_deadline_is_the_head_answers_while_later_ones_are_ready() -> None:
    conn, transport, app, clock = connect(Limits(answer_timeout=3.0))
    conn.data_received(get("/later"))
    clock.now += 2.0
    conn.data_received(get("/later"))
    app.slots[1].set(app.responses.get(200, b"{}", KEEP))  # ready, waits for the head
    clock.now += 1.5
    conn.expire(clock.now)
    assert statuses(transport.output) == [500]  # the head's deadline, not the second's


def test_an_exception_outside_dispatch_aborts_the_connection() -> None:
    conn, transport, app, _ = connect()

    class BrokenParser:
        wants_continue = False

        def feed(self, data: bytes) -> bool:
            return True

        def next_request(self) -> Request | None:
            raise AttributeError("a bug in the parser")

    conn._parser = BrokenParser()  # type: ignore[assignment]
    conn.data_received(get("/ok"))
    assert transport.aborted
    assert app.errors[0][0] == "http"


def test_requests_buffered_while_writing_was_paused_are_answered_when_it_resumes() -> None:
    from seckill.http.connection import MAX_PIPELINED

    conn, transport, app, _ = connect()
    # More complete requests than may be pending: the rest stay parsed-to-be in the buffer.
    conn.data_received(get("/later") * MAX_PIPELINED + get("/ok") * 5)
    assert not transport.reading
    conn.pause_writing()  # and the client stopped reading what we write
    for slot in app.slots:
        slot.set(app.responses.get(200, b"{}", KEEP))
    assert len(statuses(transport.output)) == MAX_PIPELINED
    conn.resume_writing()  # no new bytes come: the 5 in the buffer are answered now
    assert len(statuses(transport.output)) == MAX_PIPELINED + 5
    assert transport.reading


def test_a_client_dropped_for_not_reading_is_reset() -> None:
    import socket
    import struct

    conn, transport, _, clock = connect(Limits(send_timeout=1.0))
    options: list[tuple[int, int, bytes]] = []

    class Sock:
        def setsockopt(self, level: int, name: int, value: bytes) -> None:
            options.append((level, name, value))

    sock = Sock()
    transport.get_extra_info = lambda name: sock if name == "socket" else None  # type: ignore[method-assign]
    conn.data_received(get("/ok"))
    conn.pause_writing()
    clock.now += 1.0
    conn.expire(clock.now)
    assert options == [(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))]
    assert transport.aborted


@pytest.mark.parametrize("split", [1, 2, 7, 1000])
def test_pipelined_answers_stay_in_order_whatever_the_split(split: int) -> None:
    conn, transport, app, _ = connect()
    data = get("/later") + get("/ok") + get("/later") + get("/ok")
    for i in range(0, len(data), split):
        conn.data_received(data[i : i + split])
    app.slots[1].set(app.responses.get(201, b"{}", KEEP))
    assert transport.output == b""
    app.slots[0].set(app.responses.get(202, b"{}", KEEP))
    assert statuses(transport.output) == [202, 200, 201, 200]


def test_an_idle_keep_alive_connection_closes_at_its_timeout_and_not_before() -> None:
    conn, transport, _, clock = connect(Limits(keepalive_timeout=5.0))
    conn.data_received(get("/ok"))
    conn.last_active = clock.now
    clock.now += 4.9
    conn.expire(clock.now)
    assert not transport.closed
    clock.now += 0.2
    conn.expire(clock.now)
    assert transport.closed
    assert statuses(transport.output) == [200]  # no answer for a connection that asked nothing


def test_a_trickled_head_gets_408_at_the_header_timeout_from_its_first_byte() -> None:
    conn, transport, app, clock = connect(Limits(header_timeout=10.0, keepalive_timeout=60.0))
    head = get("/ok")
    conn.data_received(head[:3])  # the head's first bytes: the header deadline starts here
    for byte in head[3:10]:  # slowloris: a byte now and then does not extend it
        clock.now += 1.0
        conn.data_received(bytes([byte]))
        conn.expire(clock.now)
    assert transport.output == b""
    clock.now += 3.1
    conn.expire(clock.now)
    assert statuses(transport.output) == [408]
    assert b"Connection: close" in transport.output


def test_a_stalled_body_gets_408_after_the_body_timeout_between_reads() -> None:
    conn, transport, _, clock = connect(Limits(body_timeout=2.0, header_timeout=60.0))
    conn.data_received(b"POST /ok HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
    clock.now += 1.5
    conn.data_received(b"de")  # progress: the body timeout counts from the last read
    conn.expire(clock.now)
    clock.now += 1.9
    conn.expire(clock.now)
    assert transport.output == b""
    clock.now += 0.2
    conn.expire(clock.now)
    assert statuses(transport.output) == [408]


def test_after_a_closing_error_input_is_discarded_then_the_socket_closed_at_the_linger_timeout() -> None:
    from seckill.http.connection import LINGER_TIMEOUT

    conn, transport, _, clock = connect()
    conn.data_received(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")  # two Hosts: 400, close
    assert transport.output.startswith(b"HTTP/1.1 400 ")
    assert transport.eof and not transport.closed  # half-closed: our answer, then FIN
    written = transport.output
    conn.data_received(get("/ok") * 3)  # the client still sending: read and discarded
    assert transport.output == written
    clock.now += LINGER_TIMEOUT
    conn.expire(clock.now)
    assert transport.closed
