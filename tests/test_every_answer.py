"""Every request answered, end to end: over real sockets, a real Redis and the server as
a subprocess. An unexpected exception in an answer path (made to happen with the
test-only SECKILL_INJECT_FAULTS hook) is a 500 and a close, counted and logged once; a
body that would make the JSON decoder recurse is a 400; client-chosen item names add no
metric series, also while Redis is down."""

from __future__ import annotations

import uuid

import pytest

from conftest import create_sale
from http_client import Conn, fetch, get

NESTED = b"[" * 1100


def test_a_deeply_nested_json_purchase_is_400_after_the_answers_ahead(start_server, redis_client) -> None:  # type: ignore[no-untyped-def]
    create_sale(redis_client, "cap", 10)
    server = start_server()
    with Conn(server.port) as conn:
        conn.send(get("/healthz") + b"POST /seckill/cap HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(NESTED), NESTED))
        ok, refused = conn.responses(2)
        assert ok.status == 200
        assert refused.status == 400  # (a well-framed request: the connection serves on)
        assert conn.request(get("/healthz")).status == 200
    assert fetch(server.port, "GET", "/stock/cap").json()["sold"] == 0
    assert "Traceback" not in server.log


@pytest.mark.parametrize(("site", "path", "extra"), [
    ("healthz", "/healthz", ()),  # a synchronous route: counted and logged as "dispatch"
    ("stock", "/stock/cap", ()),  # answers made later, after Redis
    ("readyz", "/readyz", ()),
    ("order", "/seckill/cap/order?user=ann", ()),
    ("dashboard.json", "/dashboard.json", ("--dashboard",)),
])
def test_an_exception_in_an_answer_path_is_500_close_counted_and_logged_once(  # type: ignore[no-untyped-def]
        start_server, redis_client, monkeypatch, site: str, path: str, extra: tuple[str, ...]) -> None:
    create_sale(redis_client, "cap", 10)
    monkeypatch.setenv("SECKILL_INJECT_FAULTS", site)
    server = start_server(*extra)
    with Conn(server.port) as conn:
        conn.send(get(path))
        (answer,) = conn.responses(1)
        assert answer.status == 500 and answer.json() == {"error": "internal"}
        assert answer.headers["connection"] == "close"
        assert conn.closed_by_server()
    # The next client is served, and the fault was counted and logged once.
    bought = fetch(server.port, "GET", "/seckill/cap?user=bob")
    assert bought.status == 200 and bought.json()["result"] == "won"
    counted = "dispatch" if site == "healthz" else site
    metrics = fetch(server.port, "GET", "/metrics").body.decode()
    assert f'seckill_internal_errors_total{{site="{counted}"}} 1.0' in metrics
    assert server.stop() == 0
    assert sum(f"internal error at {counted}" in line for line in server.lines) == 1


def test_purchases_of_random_names_while_redis_is_down_add_no_series(start_server, own_redis) -> None:  # type: ignore[no-untyped-def]
    own, _ = own_redis
    server = start_server("--redis-timeout", "0.2", redis_url=own.url)
    own.stop()
    names = [uuid.uuid4().hex for _ in range(200)]
    with Conn(server.port) as conn:
        for name in names:
            assert conn.request(get(f"/seckill/{name}")).status == 503
    metrics = fetch(server.port, "GET", "/metrics").body.decode()
    assert not any(name in metrics for name in names)
    assert 'seckill_purchases_total{item="-",result="unavailable"} 200.0' in metrics
