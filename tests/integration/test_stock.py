"""Stock exactness: winners == stock == orders in the stream, under concurrency, with two
workers; the admission script's idempotency; and no path that re-creates a lost sale."""

from __future__ import annotations

import asyncio
import re
import select
import subprocess

import pytest
import redis

from seckill.sales import sale_store
from support.helpers import admit, create_sale, require_tool, stream_orders
from support.http_client import Conn, fetch, get, hammer


@pytest.mark.slow
def test_exactly_stock_winners_under_concurrency(start_server, redis_client: redis.Redis) -> None:
    create_sale(redis_client, "phone", 1000)
    server = start_server(workers=2)
    connections, per_connection = 200, 100  # 20,000 requests, distinct users
    paths = [[f"/seckill/phone?user=u{c}-{i}" for i in range(per_connection)] for c in range(connections)]
    answers = asyncio.run(hammer(server.port, paths))

    assert len(answers) == connections * per_connection
    statuses = [a.status for a in answers]
    assert set(statuses) <= {200, 409}, {s for s in statuses if s not in (200, 409)}
    won = [a.json() for a in answers if a.status == 200]
    assert len(won) == 1000
    order_ids = [w["order"] for w in won]
    assert len(set(order_ids)) == 1000
    assert sorted(w["seq"] for w in won) == list(range(1, 1001))

    stream = stream_orders(redis_client, "phone")
    assert len(stream) == 1000
    streamed = {o["order"]: o["user"] for o in stream}
    assert set(streamed) == set(order_ids)
    assert sorted(o["seq"] for o in stream) == list(range(1, 1001))
    assert len(set(streamed.values())) == 1000  # distinct users, each won once
    by_order = {w["order"]: w for w in won}
    assert all(by_order[o["order"]]["seq"] == o["seq"] for o in stream)
    assert fetch(server.port, "GET", "/stock/phone").json() == {
        "item": "phone", "stock": 1000, "sold": 1000, "remaining": 0,
    }
    # Both workers took part (SO_REUSEPORT spread the connections).
    batches = {str(o["batch"]).split(".")[0] for o in stream}
    assert len(batches) == 2


def test_seed_demo_with_ab(start_server, redis_client: redis.Redis) -> None:
    """The seed's own check: `ab -c 100 -n 200 /limit` on a fresh server lets exactly 5 win."""
    ab = require_tool("ab")
    server = start_server(demo=True)
    out = subprocess.run(
        [ab, "-q", "-c", "100", "-n", "200", f"http://127.0.0.1:{server.port}/limit"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    assert re.search(r"^Complete requests:\s+200$", out, re.M), out
    assert re.search(r"^Failed requests:\s+\d+", out, re.M)  # lengths differ: won vs sold_out
    assert re.search(r"^Non-2xx responses:\s+195$", out, re.M), out
    assert len(stream_orders(redis_client, "limit")) == 5
    assert fetch(server.port, "GET", "/stock/limit").json()["remaining"] == 0


def test_keys_lost_while_serving_answer_404_never_200(start_server, redis_client: redis.Redis) -> None:
    create_sale(redis_client, "hat", 100)
    create_sale(redis_client, "cap", 1)
    server = start_server()
    assert fetch(server.port, "GET", "/seckill/hat").status == 200
    assert fetch(server.port, "GET", "/seckill/cap").status == 200
    assert fetch(server.port, "GET", "/seckill/cap").status == 409  # gate armed
    redis_client.flushdb()  # Redis lost everything (restart without persistence)
    with Conn(server.port) as conn:
        for _ in range(50):
            assert conn.request(get("/seckill/hat")).status == 404
            assert conn.request(get("/seckill/cap")).status in (404, 409)
    assert not redis_client.exists(sale_store.sale_key("hat"), sale_store.sale_key("cap"))
    assert fetch(server.port, "GET", "/stock/hat").status == 404


def test_admission_grants_in_order_and_replay_changes_nothing(redis_client: redis.Redis) -> None:
    create_sale(redis_client, "hat", 3, 1)
    reply = admit(redis_client, "hat", "b1", ["a", "b", "c", "d"])
    granted, remaining, first_seq = (int(x) for x in reply[:3])
    assert (granted, remaining, first_seq) == (2, 0, 2)
    stream = stream_orders(redis_client, "hat")
    assert [(o["user"], o["seq"]) for o in stream] == [("a", 2), ("b", 3)]  # arrival order wins
    # The same call again, as redis-py would resend it after a lost reply.
    assert admit(redis_client, "hat", "b1", ["a", "b", "c", "d"]) == reply
    assert len(stream_orders(redis_client, "hat")) == 2
    assert redis_client.hget(sale_store.sale_key("hat"), "sold") == b"3"
    # A new batch sees the item sold out.
    assert [int(x) for x in admit(redis_client, "hat", "b2", ["e"])[:3]] == [0, 0, 4]


def test_admission_of_a_missing_item_creates_nothing(redis_client: redis.Redis) -> None:
    assert admit(redis_client, "ghost", "b1", ["a"]) == []
    assert redis_client.keys("*ghost*") == []


def test_sold_out_gate_sees_a_restock(start_server, redis_client: redis.Redis) -> None:
    create_sale(redis_client, "hat", 1)
    # Many requests on the one connection, past the default --keepalive-requests.
    server = start_server("--gate-interval", "0.05", "--keepalive-requests", "1000000")
    with Conn(server.port) as conn:
        assert conn.request(get("/seckill/hat")).status == 200
        assert conn.request(get("/seckill/hat")).status == 409
        redis_client.hincrby(sale_store.sale_key("hat"), "stock", 1)
        # Within the gate interval the answer may still be 409; then the unit is sold.
        statuses = []
        while 200 not in statuses:
            statuses.append(conn.request(get("/seckill/hat")).status)
            assert len(statuses) < 100_000
        assert set(statuses[:-1]) <= {409}
    assert len(stream_orders(redis_client, "hat")) == 2


def test_waiting_queue_is_bounded_while_redis_stalls(start_server, own_redis) -> None:
    """With Redis stopped, past --max-waiting purchases answer 503 at once (without
    Redis) instead of queueing; when Redis resumes the queued ones are served."""
    own, r = own_redis
    create_sale(r, "hat", 100)
    server = start_server("--redis-timeout", "60", "--max-waiting", "5", "--max-in-flight", "1",
                          redis_url=own.url)
    conns = [Conn(server.port) for _ in range(30)]
    try:
        with own.stalled():
            for i, conn in enumerate(conns):
                conn.send(get(f"/seckill/hat?user=u{i}"))
            # At most one batch in flight plus 5 waiting: at least 20 are refused, and
            # they are answered while Redis is still stopped.
            answered: dict[Conn, int] = {}
            while len(answered) < 20:
                readable, _, _ = select.select([c.sock for c in conns if c not in answered], [], [], 30)
                assert readable, "the refusals did not come while Redis was stopped"
                for conn in conns:
                    if conn.sock in readable:
                        answered[conn] = conn.responses(1)[0].status
        assert set(answered.values()) == {503}
        statuses = [conn.responses(1)[0].status for conn in conns if conn not in answered]
        assert 5 <= statuses.count(200) <= 10
        assert set(statuses) <= {200, 503}
        assert len(stream_orders(r, "hat")) == statuses.count(200)
    finally:
        for conn in conns:
            conn.close()


def test_redis_over_a_unix_socket(start_server, tmp_path) -> None:
    from seckill.store.embedded import EmbeddedRedis

    sock = str(tmp_path / "r.sock")
    own = EmbeddedRedis(tmp_path, unixsocket=sock)
    own.start()
    try:
        r = redis.Redis(unix_socket_path=sock)
        create_sale(r, "hat", 1)
        r.close()
        server = start_server(redis_url=f"unix://{sock}")
        assert fetch(server.port, "GET", "/seckill/hat").status == 200
        assert fetch(server.port, "GET", "/seckill/hat").status == 409
    finally:
        own.stop()


def test_orders_entry_round_trips_users(redis_client: redis.Redis) -> None:
    create_sale(redis_client, "hat", 10)
    users = ["", "alice", "a b,c;d", "ü-用户", ""]
    assert int(admit(redis_client, "hat", "b1", users)[0]) == 5
    orders = stream_orders(redis_client, "hat")
    assert [o["user"] for o in orders] == users
    assert [o["seq"] for o in orders] == [1, 2, 3, 4, 5]
    tag = redis_client.hget(sale_store.sale_key("hat"), "tag").decode()
    assert [o["order"] for o in orders] == [f"{tag}-{i}" for i in range(1, 6)]
    assert len({o["batch"] for o in orders}) == 1


def test_batches_are_split_at_max_batch(start_server, redis_client: redis.Redis) -> None:
    create_sale(redis_client, "hat", 60)
    server = start_server("--max-batch", "3")
    paths = [[f"/seckill/hat?user=c{c}-{i}" for i in range(5)] for c in range(20)]
    answers = asyncio.run(hammer(server.port, paths))
    assert sorted(a.status for a in answers).count(200) == 60
    entries = redis_client.xrange(sale_store.orders_key("hat"))
    assert all(int(fields[b"count"]) <= 3 for _, fields in entries)
    assert sum(int(fields[b"count"]) for _, fields in entries) == 60


def test_script_cache_flushed_while_serving(start_server, redis_client: redis.Redis) -> None:
    """NOSCRIPT (Redis restarted or SCRIPT FLUSH): the script is loaded again and the
    purchase goes through, once."""
    create_sale(redis_client, "hat", 5)
    server = start_server()
    assert fetch(server.port, "GET", "/seckill/hat?user=a").status == 200
    redis_client.script_flush()
    assert fetch(server.port, "GET", "/seckill/hat?user=b").status == 200
    assert [o["user"] for o in stream_orders(redis_client, "hat")] == ["a", "b"]


def test_malformed_script_replies_are_refused_whole() -> None:
    """A reply in no shape the script gives answers the whole batch 503, nobody half."""
    from seckill.sales.sale_store import admit_reply_ok

    good = [[], [b"1", b"0", b"1", b"t", b""], [b"0", b"-1", b"0", b"t", b"E"],
            [b"0", b"-1", b"0", b"t", b"N", b"1500"], [b"2", b"0", b"1", b"t", b"WAW"],
            [b"1", b"0", b"1", b"t", b"", b"1764000000000"]]  # the last: a hold
    assert all(admit_reply_ok(reply, 3) for reply in good)
    bad = [None, b"x", [b"1"], [b"1", b"0", b"1", b"t"], [b"1", b"0", b"1", b"t", b"WW"],
           [b"1", b"0", b"1", b"t", b"WXW"], [b"0", b"-1", b"0", b"t", b"E", b"1"],
           [b"1", b"0", b"1", b"t", b"", b"soon"]]
    assert not any(admit_reply_ok(reply, 3) for reply in bad)
