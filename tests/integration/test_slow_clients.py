"""Slow and greedy clients: what one client may take of a worker (http_connection.Limits),
over real sockets. Timeouts are set to a second or so; each test waits for the event
(an answer, a close) with a bound, and asserts an absence only over a stated window."""

from __future__ import annotations

import select
import socket
import statistics
import threading
import time

import redis

from seckill.sales import sale_store
from support.helpers import create_sale
from support.http_client import Conn, fetch, get, parse_one


def test_keepalive_requests_closes_after_the_last(start_server, redis_client: redis.Redis) -> None:
    server = start_server("--keepalive-requests", "3")
    with Conn(server.port) as conn:
        first = [conn.request(get("/healthz")) for _ in range(2)]
        assert all("connection" not in r.headers for r in first)
        last = conn.request(get("/healthz"))
        assert last.status == 200 and last.headers["connection"] == "close"
        assert conn.closed_by_server()
    with Conn(server.port) as conn:  # pipelined past the limit: the rest is not read
        conn.send(get("/healthz") * 5)
        answers = conn.responses(3)
        assert [r.headers.get("connection") for r in answers] == [None, None, "close"]
        assert conn.closed_by_server()


def test_keepalive_requests_counts_purchases_too(start_server, redis_client: redis.Redis) -> None:
    create_sale(redis_client, "hat", 10)
    server = start_server("--keepalive-requests", "2")
    with Conn(server.port) as conn:
        conn.send(get("/seckill/hat?user=a") + get("/seckill/hat?user=b") + get("/seckill/hat?user=c"))
        answers = conn.responses(2)
        assert [r.status for r in answers] == [200, 200]
        assert answers[1].headers["connection"] == "close"
        assert conn.closed_by_server()
    assert int(redis_client.hget(sale_store.sale_key("hat"), "sold") or 0) == 2


def test_stalled_body_gets_408_by_its_own_timeout(start_server, redis_client: redis.Redis) -> None:
    # The head deadline is long; the body's per-read timeout is what fires.
    server = start_server("--header-timeout", "60", "--body-timeout", "1")
    with Conn(server.port, timeout=10) as conn:
        conn.send(b"POST /seckill/hat HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nuser")
        response = conn.responses(1)[0]
        assert response.status == 408
        assert response.headers["connection"] == "close"
        assert conn.closed_by_server()


def test_head_deadline_is_not_extended_by_trickled_bytes(start_server, redis_client: redis.Redis) -> None:
    server = start_server("--header-timeout", "2")
    raw = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 100
    with Conn(server.port, timeout=15) as conn:
        started = time.monotonic()
        sent = 0
        while True:  # a byte every 0.2 s, well within any per-read timeout
            readable, _, _ = select.select([conn.sock], [], [], 0.2)
            if readable:
                break
            conn.send(raw[sent : sent + 1])
            sent += 1
            assert sent < len(raw), "trickling never hit the deadline"
        elapsed = time.monotonic() - started
        response = conn.responses(1)[0]
        assert response.status == 408
        assert conn.closed_by_server()
    # From the first byte: trickling all 100 bytes would take 20 s. The worker's clock
    # advances once a second, so the deadline fires within a second either side of 2 s.
    assert 1 <= elapsed < 4, elapsed


def test_max_connections_waits_in_the_backlog_not_dropped(start_server, redis_client: redis.Redis) -> None:
    server = start_server("--max-connections", "2")
    first, second = Conn(server.port), Conn(server.port)
    try:
        assert first.request(get("/healthz")).status == 200
        assert second.request(get("/healthz")).status == 200
        with Conn(server.port) as third:  # the kernel completes the handshake; we do not accept
            third.send(get("/healthz"))
            readable, _, _ = select.select([third.sock], [], [], 1.0)
            assert not readable, "a third connection was served past --max-connections 2"
            first.close()  # room again: the waiting client is accepted and answered
            assert third.responses(1)[0].status == 200
        assert second.request(get("/healthz")).status == 200
    finally:
        first.close()
        second.close()
    assert "not accepting until one closes" in server.log


def test_a_client_that_does_not_read_is_dropped_after_send_timeout(start_server,
                                                                   redis_client: redis.Redis) -> None:
    # With room for one connection, the next client is served only once the reader that
    # takes none of its answers has been dropped.
    server = start_server("--max-connections", "1", "--send-timeout", "1", "--keepalive-requests", "10000000")
    greedy = socket.create_connection(("127.0.0.1", server.port))
    greedy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    greedy.settimeout(0.5)
    requests = get("/healthz") * 2000
    try:
        # Pipeline answers it never reads until the server stops reading from it (our send
        # blocks) or has already dropped it (reset).
        stopped = False
        for _ in range(2000):
            try:
                greedy.sendall(requests)
            except (TimeoutError, ConnectionResetError, BrokenPipeError):
                stopped = True
                break
        assert stopped, "the server kept reading from a client that reads nothing"
        with Conn(server.port, timeout=15) as patient:
            started = time.monotonic()
            assert patient.request(get("/healthz")).status == 200
            assert time.monotonic() - started < 10
    finally:
        greedy.close()


def _p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100)[98]


def _latencies(port: int, count: int) -> list[float]:
    out = []
    with Conn(port) as conn:
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        request = get("/healthz")
        for _ in range(count):
            started = time.perf_counter()
            assert conn.request(request).status == 200
            out.append(time.perf_counter() - started)
    return out


def test_slowloris_is_cut_by_the_head_deadline_while_others_are_served(start_server,
                                                                        redis_client: redis.Redis) -> None:
    """500 sockets trickle a head one byte a second; a normal client keeps its latency
    (p99 within 10x of its unloaded p99) and every slow socket gets 408 at the deadline."""
    server = start_server("--header-timeout", "3")
    unloaded = _latencies(server.port, 1000)
    slow = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(500)]
    raw = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slowloris: " + b"z" * 50
    stop = threading.Event()

    def trickle() -> None:
        # Each socket at its own phase in the second, so the sends are spread evenly.
        started = time.monotonic()
        step = 1.0 / len(slow)
        for n in range(len(raw) * len(slow)):
            if stop.wait(max(0.0, started + n * step - time.monotonic())):
                return
            sock = slow[n % len(slow)]
            try:
                sock.send(raw[n // len(slow) : n // len(slow) + 1])
            except OSError:
                pass  # answered and closed: the deadline did its work

    trickler = threading.Thread(target=trickle)
    trickler.start()
    try:
        loaded = []
        deadline = time.monotonic() + 2.5  # while every slow socket is still trickling
        while time.monotonic() < deadline:
            loaded += _latencies(server.port, 100)
        answers = []
        for sock in slow:  # every slow socket: a 408, then the server's close
            sock.settimeout(15)
            buf = b""
            try:
                while (chunk := sock.recv(4096)):
                    buf += chunk
            except ConnectionResetError:
                pass  # it sent a byte after our close: a reset, after the answer it queued
            parsed = parse_one(buf)
            assert parsed is not None, buf
            answers.append(parsed[0].status)
    finally:
        stop.set()
        trickler.join()
        for sock in slow:
            sock.close()
    assert answers == [408] * 500
    p99_unloaded, p99_loaded = _p99(unloaded), _p99(loaded)
    print(f"normal client p99: unloaded {p99_unloaded * 1e6:.0f} us, "
          f"beside 500 slowloris sockets {p99_loaded * 1e6:.0f} us ({len(loaded)} requests)")
    assert p99_loaded < 10 * p99_unloaded, (p99_unloaded, p99_loaded)
    assert fetch(server.port, "GET", "/healthz").status == 200


def test_an_error_answer_reaches_a_client_still_sending(start_server, redis_client: redis.Redis) -> None:
    """413 while the client is still sending its body: we half-close and discard its input
    (lingering close) instead of closing with input unread, which would send a reset that
    can destroy the answer. The client sees the answer, then a clean end (no reset)."""
    server = start_server()
    with Conn(server.port) as conn:
        conn.send(b"POST /seckill/hat HTTP/1.1\r\nHost: t\r\nContent-Length: 2000000\r\n\r\n")
        conn.sock.sendall(b"u" * 2_000_000)  # as clients do: the body follows, unasked
        response = conn.responses(1)[0]
        assert response.status == 413 and response.headers["connection"] == "close"
        assert conn.sock.recv(65536) == b""  # FIN, not ECONNRESET
