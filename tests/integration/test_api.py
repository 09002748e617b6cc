"""The server over real sockets, against a real Redis: every API row, keep-alive,
pipelining, HTTP/1.0 and 1.1, and malformed requests answered with a close."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from seckill.http.protocol import HttpError
from seckill.store.embedded import EmbeddedRedis, free_port
from support.helpers import ServerProcess, create_sale, stream_orders
from support.http_client import Conn, fetch, get, parse_one
from support.parser_cases import BAD, PIECES, SEEDS


@pytest.fixture
def server(start_server, redis_client: redis.Redis):  # type: ignore[no-untyped-def]
    return start_server()


def test_purchase_answers_won_then_sold_out(server, redis_client: redis.Redis) -> None:
    create_sale(redis_client, "hat", 2)
    first = fetch(server.port, "GET", "/seckill/hat?user=alice")
    second = fetch(server.port, "POST", "/seckill/hat", b"user=bob",
                   {"Content-Type": "application/x-www-form-urlencoded"})
    third = fetch(server.port, "POST", "/seckill/hat", b'{"user": "carol"}',
                  {"Content-Type": "application/json"})
    assert (first.status, second.status, third.status) == (200, 200, 409)
    assert first.json()["result"] == "won" and first.json()["item"] == "hat"
    assert third.json() == {"result": "sold_out", "item": "hat"}
    orders = {o["order"]: o for o in stream_orders(redis_client, "hat")}
    assert set(orders) == {first.json()["order"], second.json()["order"]}
    assert orders[first.json()["order"]]["user"] == "alice"
    assert orders[second.json()["order"]]["user"] == "bob"


def test_response_headers(server, redis_client: redis.Redis) -> None:
    create_sale(redis_client, "hat", 1)
    response = fetch(server.port, "GET", "/seckill/hat")
    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["content-length"]) == len(response.body)
    assert re.fullmatch(r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT", response.headers["date"])
    assert response.headers["connection"] == "close"


def test_unknown_item_is_404(server, redis_client: redis.Redis) -> None:
    response = fetch(server.port, "GET", "/seckill/nothing")
    assert response.status == 404
    assert response.json() == {"result": "unknown_item", "item": "nothing"}


@pytest.mark.parametrize("item", ["a" * 65, "sp%20ace", "br{ce}", "sl/ash", "qu'ote", "%00"])
def test_invalid_item_name_is_400(server, item: str) -> None:
    assert fetch(server.port, "GET", f"/seckill/{item}").status == 400


def test_invalid_user_is_400(server, redis_client: redis.Redis) -> None:
    create_sale(redis_client, "hat", 5)
    assert fetch(server.port, "GET", "/seckill/hat?user=" + "x" * 129).status == 400
    assert fetch(server.port, "GET", "/seckill/hat?user=%01").status == 400
    assert fetch(server.port, "POST", "/seckill/hat", b'{"user": 5}',
                 {"Content-Type": "application/json"}).status == 400
    assert fetch(server.port, "POST", "/seckill/hat", b"{not json",
                 {"Content-Type": "application/json"}).status == 400
    assert fetch(server.port, "POST", "/seckill/hat", b"<user/>",
                 {"Content-Type": "text/xml"}).status == 415
    assert len(stream_orders(redis_client, "hat")) == 0


def test_sold_out_is_answered_before_the_user_is_read(server, redis_client: redis.Redis) -> None:
    # The gate's answer is the same for anyone; it skips parsing the user (the cost of
    # nearly every request after a sell-out), so a malformed user hears 409 too.
    create_sale(redis_client, "hat", 1)
    assert fetch(server.port, "GET", "/seckill/hat?user=first").status == 200
    for path in ("/seckill/hat?user=%01", "/seckill/hat?user=" + "x" * 129, "/seckill/hat?user=ok"):
        response = fetch(server.port, "GET", path)
        assert (response.status, response.json()["result"]) == (409, "sold_out")


def test_limit_is_the_demo_item(start_server, redis_client: redis.Redis) -> None:
    server = start_server(demo=True)
    assert fetch(server.port, "GET", "/stock/limit").json() == {
        "item": "limit", "stock": 100, "sold": 95, "remaining": 5,
    }
    results = [fetch(server.port, "GET", "/limit").status for _ in range(6)]
    assert results == [200] * 5 + [409]
    assert fetch(server.port, "POST", "/limit").status == 409


def test_demo_is_not_reseeded(start_server, redis_client: redis.Redis) -> None:
    create_sale(redis_client, "limit", 10, 10)
    server = start_server(demo=True)
    assert fetch(server.port, "GET", "/limit").status == 409
    assert fetch(server.port, "GET", "/stock/limit").json()["remaining"] == 0


def test_stock(server, redis_client: redis.Redis) -> None:
    create_sale(redis_client, "hat", 10, 3)
    fetch(server.port, "GET", "/seckill/hat")
    assert fetch(server.port, "GET", "/stock/hat").json() == {
        "item": "hat", "stock": 10, "sold": 4, "remaining": 6,
    }
    assert fetch(server.port, "GET", "/stock/none").status == 404
    assert fetch(server.port, "GET", "/stock/b%20d").status == 400


def test_health_and_readiness(server) -> None:
    assert fetch(server.port, "GET", "/healthz").status == 200
    assert fetch(server.port, "GET", "/readyz").status == 200
    head = fetch(server.port, "HEAD", "/healthz")
    assert head.status == 200 and head.body == b""


def test_readyz_and_purchases_answer_503_when_redis_is_down(start_server, own_redis) -> None:
    own, r = own_redis
    create_sale(r, "hat", 5)
    server = start_server("--redis-timeout", "0.5", redis_url=own.url)
    assert fetch(server.port, "GET", "/readyz").status == 200
    own.kill()
    response = fetch(server.port, "GET", "/seckill/hat")
    assert response.status == 503
    assert response.json() == {"result": "unavailable"}
    assert response.headers["retry-after"] == "1"
    assert fetch(server.port, "GET", "/readyz").status == 503
    assert fetch(server.port, "GET", "/stock/hat").status == 503
    assert fetch(server.port, "GET", "/healthz").status == 200


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/", 404),
        ("GET", "/nope", 404),
        ("GET", "/seckill", 404),
        ("GET", "/seckill/", 400),
        ("PUT", "/seckill/hat", 405),
        ("DELETE", "/limit", 405),
        ("HEAD", "/seckill/hat", 405),
        ("POST", "/stock/hat", 405),
        ("POST", "/healthz", 405),
        ("BREW", "/limit", 501),
    ],
)
def test_routing_errors(server, method: str, path: str, status: int) -> None:
    response = fetch(server.port, method, path)
    assert response.status == status
    if status == 405:
        assert "GET" in response.headers["allow"]


def test_keep_alive_http11(server, redis_client: redis.Redis) -> None:
    create_sale(redis_client, "hat", 1)
    with Conn(server.port) as conn:
        assert conn.request(get("/healthz")).status == 200
        assert conn.request(get("/seckill/hat")).status == 200
        assert conn.request(get("/seckill/hat")).status == 409
        response = conn.request(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert response.headers["connection"] == "close"
        assert conn.closed_by_server()


def test_http10_closes_unless_keep_alive(server) -> None:
    with Conn(server.port) as conn:
        response = conn.request(b"GET /healthz HTTP/1.0\r\n\r\n")
        assert response.status == 200 and response.headers["connection"] == "close"
        assert conn.closed_by_server()
    with Conn(server.port) as conn:  # as `ab -k` sends it
        for _ in range(3):
            response = conn.request(b"GET /healthz HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            assert response.headers["connection"] == "keep-alive"


def test_pipelined_requests_are_answered_in_order(server, redis_client: redis.Redis) -> None:
    create_sale(redis_client, "hat", 2)
    with Conn(server.port) as conn:
        conn.send(get("/seckill/hat?user=1") + get("/healthz") + get("/seckill/hat?user=2")
                  + get("/stock/hat") + get("/seckill/hat?user=3") + get("/nope"))
        answers = conn.responses(6)
    assert [r.status for r in answers] == [200, 200, 200, 200, 409, 404]
    assert answers[0].json()["seq"] < answers[2].json()["seq"]
    assert answers[3].json()["item"] == "hat"


def test_pipelined_close_stops_reading(server, redis_client: redis.Redis) -> None:
    create_sale(redis_client, "hat", 5)
    with Conn(server.port) as conn:
        conn.send(get("/seckill/hat") + b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
                  + get("/seckill/hat"))
        answers = conn.responses(2)
        assert [r.status for r in answers] == [200, 200]
        assert conn.closed_by_server()
    assert len(stream_orders(redis_client, "hat")) == 1


@pytest.fixture(scope="module")
def shared_server(redis_server: EmbeddedRedis) -> Iterator[ServerProcess]:
    """One server for the many hostile-request cases (each starts a connection of its own)."""
    port = free_port()
    server = ServerProcess(["--port", str(port), "--redis", redis_server.url, "--no-demo"], 1, port)
    server.wait_listening()
    yield server
    assert server.stop() == 0


def send_bytewise(sock: socket.socket, raw: bytes) -> None:
    """One byte per send, until the server answers early and closes (then sends fail)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i in range(len(raw)):
        try:
            sock.send(raw[i : i + 1])
        except OSError:
            return


@pytest.mark.parametrize("way", ["whole", "bytewise"])
@pytest.mark.parametrize(("raw", "status"), BAD)
def test_hostile_request_gets_status_and_close(shared_server: ServerProcess, raw: bytes, status: int,
                                               way: str) -> None:
    """Every case of the parser's table (test_protocol.BAD), over a real socket."""
    with Conn(shared_server.port) as conn:
        if way == "whole":
            conn.send(raw)
        else:
            send_bytewise(conn.sock, raw)
        response = conn.responses(1)[0]
        assert response.status == status
        assert response.headers["connection"] == "close"
        assert "error" in response.json()
        assert conn.closed_by_server()
    # The worker goes on serving the next client.
    assert fetch(shared_server.port, "GET", "/healthz").status == 200
    assert shared_server.proc.poll() is None


def _exchange(port: int, raw: bytes) -> bytes:
    """Send raw bytes, half-close, and take everything the server says until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # it already answered and closed
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except ConnectionResetError:
            pass
        return out


@settings(max_examples=150, deadline=None)
@given(st.one_of(
    st.binary(max_size=2048),
    st.lists(st.sampled_from(PIECES), max_size=80).map(b"".join),
    st.tuples(st.sampled_from(SEEDS), st.integers(0, 200), st.binary(max_size=8)).map(
        lambda t: t[0][: t[1]] + t[2] + t[0][t[1] :]),
))
def test_random_bytes_never_break_a_worker(shared_server: ServerProcess, raw: bytes) -> None:
    """Over a live server: whatever arrives, every answer is well-formed HTTP and the
    worker keeps serving (h11's afl-server.py, over a socket)."""
    out = _exchange(shared_server.port, raw)
    while out:
        if out.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"):
            out = out[25:]
            continue
        parsed = parse_one(out)
        assert parsed is not None, out
        response, out = parsed
        assert 200 <= response.status < 600
    assert shared_server.proc.poll() is None
    assert fetch(shared_server.port, "GET", "/healthz").status == 200


def test_the_shared_server_logged_no_error(shared_server: ServerProcess) -> None:
    # Runs after the hostile and random requests above (same module-scoped server).
    assert "Traceback" not in shared_server.log and " ERROR " not in shared_server.log, shared_server.log


def test_idle_keep_alive_is_closed(start_server, redis_client: redis.Redis) -> None:
    server = start_server("--keepalive-timeout", "1")
    with Conn(server.port, timeout=5) as conn:
        assert conn.request(get("/healthz")).status == 200
        assert conn.closed_by_server()


def test_stalled_request_head_gets_408(start_server, redis_client: redis.Redis) -> None:
    server = start_server("--header-timeout", "1")
    with Conn(server.port, timeout=5) as conn:
        conn.send(b"GET /healthz HTTP/1.1\r\nHo")
        response = conn.responses(1)[0]
        assert response.status == 408
        assert conn.closed_by_server()


def test_many_pipelined_requests_are_all_answered(server, redis_client: redis.Redis) -> None:
    """More pipelined requests than a connection may have pending: reading pauses and
    resumes, every request is answered once, in order."""
    create_sale(redis_client, "hat", 50)
    with Conn(server.port) as conn:
        conn.send(b"".join(get(f"/seckill/hat?user={i}") for i in range(200)))
        answers = conn.responses(200)
    assert [r.status for r in answers] == [200] * 50 + [409] * 150
    assert [r.json()["seq"] for r in answers[:50]] == list(range(1, 51))
    assert json.loads(answers[0].body)["order"].endswith("-1")


def test_client_half_close_still_gets_answers(server, redis_client: redis.Redis) -> None:
    create_sale(redis_client, "hat", 1)
    with Conn(server.port) as conn:
        conn.send(get("/seckill/hat"))
        conn.sock.shutdown(socket.SHUT_WR)
        assert conn.responses(1)[0].status == 200
        assert conn.closed_by_server()


@pytest.mark.parametrize("path", ["/seckill/hat", "/nope", "/healthz", "/stock/hat", "/stock/b%20d"])
def test_head_answers_carry_no_body(server, redis_client: redis.Redis, path: str) -> None:
    """A body after a HEAD answer would be read as the next response: check the next one."""
    create_sale(redis_client, "hat", 1)
    with Conn(server.port) as conn:
        conn.send(f"HEAD {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        head = conn.responses(1, head_only=True)[0]
        assert int(head.headers["content-length"]) > 0
        nxt = conn.request(get("/healthz"))
        assert nxt.status == 200 and nxt.json() == {"status": "ok"}
    assert len(stream_orders(redis_client, "hat")) == 0


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=140))
def test_user_from_query_fast_path_agrees_with_parse_qsl(value: str) -> None:
    """`?user=<id>` skips parse_qsl when nothing in it needs decoding: same answer either way."""
    from urllib.parse import parse_qsl

    from seckill.app.routes import request_user
    from seckill.http.protocol import Request

    query = b"user=" + value.encode()
    request = Request(b"GET", b"/", b"/", query, False, True, (), b"")
    try:
        got: bytes | int = request_user(request)
    except HttpError as exc:
        got = exc.status
    try:
        pairs = parse_qsl(query.decode("ascii"), errors="strict")
        user = next((v for k, v in reversed(pairs) if k == "user"), "")
        expected: bytes | int = user.encode() if len(user) <= 128 and user.isprintable() else 400
    except ValueError:
        expected = 400
    assert got == expected


def test_expect_100_continue_gets_the_interim_answer_then_the_final_one(server, redis_client: redis.Redis) -> None:
    create_sale(redis_client, "hat", 1)
    body = b"user=ann"
    with Conn(server.port) as conn:
        conn.send(b"POST /seckill/hat HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
                  b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n" % len(body))
        while b"\r\n\r\n" not in conn.buf:  # the server speaks first: 100, before any body
            chunk = conn.sock.recv(65536)
            assert chunk, "closed instead of 100 Continue"
            conn.buf += chunk
        assert conn.buf == b"HTTP/1.1 100 Continue\r\n\r\n"
        conn.buf = b""
        answer = conn.request(body)
        assert answer.status == 200 and answer.json()["result"] == "won"
    assert stream_orders(redis_client, "hat")[0]["user"] == "ann"
