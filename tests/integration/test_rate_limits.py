"""Rate limits end to end: a burst, then 429s with Retry-After and the RateLimit fields;
the client is the peer unless the peer is a trusted proxy; counted in /metrics."""

from __future__ import annotations

import redis

from support.helpers import create_sale, stream_orders
from support.http_client import Conn


def request(path: str, *headers: str) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: t\r\n" + "".join(f"{h}\r\n" for h in headers) + "\r\n").encode()


def test_a_burst_then_429_with_its_headers_and_nothing_sold_past_it(start_server, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    create_sale(redis_client, "hat", 100)
    server = start_server("--rate-per-ip", "0.1/s:3", "--dashboard")
    with Conn(server.port) as conn:
        answers = [conn.request(request(f"/seckill/hat?user=u{i}")) for i in range(5)]
        metrics = conn.request(request("/metrics")).body.decode()
        board = conn.request(request("/dashboard.json")).json()
    assert [a.status for a in answers] == [200, 200, 200, 429, 429]
    limited = answers[3]
    assert limited.json() == {"result": "rate_limited"}
    assert 1 <= int(limited.headers["retry-after"]) <= 10
    assert limited.headers["ratelimit-policy"] == '"ip";q=3;w=30'
    assert limited.headers["ratelimit"] == f'"ip";r=0;t={limited.headers["retry-after"]}'
    assert len(stream_orders(redis_client, "hat")) == 3
    assert 'seckill_rate_limited_total{scope="ip"} 2.0' in metrics
    assert board["rate_limited"] == 2


def test_an_untrusted_peer_cannot_change_its_address_with_a_header(start_server, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    create_sale(redis_client, "hat", 100)
    server = start_server("--rate-per-ip", "0.1/s:2", "--forwarded-allow-ips", "10.9.9.9")  # not us
    with Conn(server.port) as conn:
        statuses = [conn.request(request("/seckill/hat", f"X-Forwarded-For: 192.0.2.{i}",
                                         f"X-Real-IP: 198.51.100.{i}")).status for i in range(4)]
    assert statuses == [200, 200, 429, 429]


def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_bucket(start_server,  # type: ignore[no-untyped-def]
                                                                        redis_client: redis.Redis) -> None:
    create_sale(redis_client, "hat", 100)
    server = start_server("--rate-per-ip", "0.1/s:1")  # the peer 127.0.0.1 is trusted by default
    with Conn(server.port) as conn:
        first = [conn.request(request("/seckill/hat", f"X-Forwarded-For: 192.0.2.{i}")).status for i in range(3)]
        again = [conn.request(request("/seckill/hat", f"X-Forwarded-For: 192.0.2.{i}")).status for i in range(3)]
    assert (first, again) == ([200] * 3, [429] * 3)


def test_per_user_limits_a_buyer_on_any_connection(start_server, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    create_sale(redis_client, "hat", 100)
    server = start_server("--rate-per-user", "0.1/s:2")
    statuses = []
    for _ in range(3):
        with Conn(server.port) as conn:  # a new connection each time: the buyer is the key
            statuses.append(conn.request(request("/seckill/hat?user=ann")).status)
    with Conn(server.port) as conn:
        other = conn.request(request("/seckill/hat?user=bob")).status
        limited = conn.request(request("/seckill/hat?user=ann"))
    assert statuses == [200, 200, 429] and other == 200
    assert limited.headers["ratelimit-policy"] == '"user";q=2;w=20'


def test_a_bad_rate_is_one_line_and_exit_2() -> None:
    import subprocess
    import sys

    from support.helpers import ROOT

    done = subprocess.run([sys.executable, str(ROOT / "seckill_server.py"), "--rate-per-ip", "5/m"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "is not RATE[/s][:BURST]" in done.stderr, done
    assert len(done.stderr.strip().splitlines()) == 1
