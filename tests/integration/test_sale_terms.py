"""Per-user limits and sale windows, enforced inside the admission script."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time

import redis

from seckill.sales import sale_store
from support.helpers import ROOT, admit, create_sale, stream_orders
from support.http_client import fetch, hammer


def now_ms() -> int:
    return int(time.time() * 1000)


def test_per_user_limit_under_concurrency(start_server, redis_client: redis.Redis) -> None:
    """1000 users x 5 requests, interleaved over 250 connections, stock 500, 2 workers."""
    create_sale(redis_client, "phone", 500, per_user=1)
    server = start_server(workers=2)
    asks = [f"u{u}" for u in range(1000) for _ in range(5)]
    random.Random(7).shuffle(asks)
    paths = [[f"/seckill/phone?user={user}" for user in asks[c::250]] for c in range(250)]
    answers = asyncio.run(hammer(server.port, paths))

    assert len(answers) == 5000
    results = [a.json()["result"] for a in answers]
    assert set(results) <= {"won", "sold_out", "already_bought"}
    assert results.count("won") == 500
    orders = stream_orders(redis_client, "phone")
    winners = [o["user"] for o in orders]
    assert len(winners) == 500 and len(set(winners)) == 500  # no user twice
    buyers = redis_client.hgetall(sale_store.sale_keys("phone").buyers)  # user -> live order seqs
    assert len(buyers) == 500 and sorted(int(v) for v in buyers.values()) == [o["seq"] for o in orders]


def test_same_user_twice_in_one_batch(redis_client: redis.Redis) -> None:
    create_sale(redis_client, "hat", 10, per_user=1)
    reply = admit(redis_client, "hat", "b1", ["a", "a", "b", "", "a"])
    assert reply[4] == b"WAWUA"
    assert [o["user"] for o in stream_orders(redis_client, "hat")] == ["a", "b"]
    assert admit(redis_client, "hat", "b2", ["b", "c"])[4] == b"AW"


def test_per_user_two_and_sold_out_in_order(redis_client: redis.Redis) -> None:
    create_sale(redis_client, "hat", 3, per_user=2)
    assert admit(redis_client, "hat", "b1", ["a", "a", "a", "b", "c"])[4] == b"WWAWS"


def test_limit_needs_a_user(start_server, redis_client: redis.Redis) -> None:
    create_sale(redis_client, "hat", 10, per_user=1)
    server = start_server()
    response = fetch(server.port, "GET", "/seckill/hat")
    assert response.status == 400
    assert response.json() == {"result": "user_required", "item": "hat"}
    first = fetch(server.port, "GET", "/seckill/hat?user=ann")
    again = fetch(server.port, "GET", "/seckill/hat?user=ann")
    assert (first.status, again.status) == (200, 409)
    assert again.json() == {"result": "already_bought", "item": "hat"}


def test_window_not_started_then_open_then_ended(start_server, redis_client: redis.Redis) -> None:
    start = now_ms() + 1500
    create_sale(redis_client, "hat", 1, starts_at=start, ends_at=start + 60_000)
    create_sale(redis_client, "old", 5, ends_at=now_ms() - 1000)
    server = start_server()
    early = fetch(server.port, "GET", "/seckill/hat?user=a")
    assert early.status == 403
    body = early.json()
    assert body["result"] == "not_started" and 0 < body["starts_in"] <= 1.5
    time.sleep(body["starts_in"])  # wait on the clock, exactly as long as the server said
    statuses = []
    while not statuses or statuses[-1] == 403:  # Redis's clock may be a hair behind ours
        statuses.append(fetch(server.port, "GET", "/seckill/hat?user=b").status)
        assert len(statuses) < 1000
    assert statuses[-1] == 200
    assert fetch(server.port, "GET", "/seckill/hat?user=c").status == 409
    ended = fetch(server.port, "GET", "/seckill/old?user=a")
    assert ended.status == 403 and ended.json() == {"result": "ended", "item": "old"}
    assert stream_orders(redis_client, "old") == []


def test_sold_out_gate_never_hides_not_started(start_server, redis_client: redis.Redis) -> None:
    """An item with no stock that has not started answers not_started, not sold_out."""
    create_sale(redis_client, "hat", 0, starts_at=now_ms() + 60_000)
    server = start_server()
    for _ in range(3):
        assert fetch(server.port, "GET", "/seckill/hat?user=a").json()["result"] == "not_started"
    assert redis_client.keys("seckill:{hat}:batch:*") == []  # nothing granted, nothing stored


def test_calls_that_grant_nothing_store_no_batch_key(redis_client: redis.Redis) -> None:
    """Before the start, after the end, sold out or all refused: the call changed nothing,
    so nothing is kept for a replay (it may simply run again). A call that granted keeps
    its reply, and its replay grants nothing twice."""
    create_sale(redis_client, "early", 10, starts_at=now_ms() + 60_000)
    create_sale(redis_client, "late", 10, ends_at=now_ms() - 1000)
    create_sale(redis_client, "gone", 1)
    create_sale(redis_client, "once", 5, per_user=1)
    granted = admit(redis_client, "gone", "g0", ["a"])
    assert int(granted[0]) == 1
    assert int(admit(redis_client, "once", "o0", ["a"])[0]) == 1
    for n in range(50):
        assert admit(redis_client, "early", f"e{n}", ["a", ""])[4] == b"N"
        assert admit(redis_client, "late", f"l{n}", ["a"])[4] == b"E"
        assert int(admit(redis_client, "gone", f"g{n + 1}", ["b", "c"])[0]) == 0
        assert admit(redis_client, "once", f"o{n + 1}", ["a", "a"])[4] == b"AA"
    assert sorted(redis_client.scan_iter("seckill:{*}:batch:*")) == [
        sale_store.batch_key("gone", "g0").encode(), sale_store.batch_key("once", "o0").encode()]
    # A replay of a call that granted nothing runs again; of one that granted, returns its reply.
    assert admit(redis_client, "early", "e0", ["a", ""])[4] == b"N"
    assert admit(redis_client, "gone", "g0", ["a"]) == granted
    assert len(stream_orders(redis_client, "gone")) == 1
    assert redis_client.hget(sale_store.sale_key("gone"), "sold") == b"1"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "seckill_server.py"), *args],
                          capture_output=True, text=True, timeout=30, cwd=ROOT)


def test_cli_create_and_update_terms(redis_client: redis.Redis, redis_server) -> None:  # type: ignore[no-untyped-def]
    url = ["--redis", redis_server.url]
    made = run_cli("create", "hat", "--stock", "5", "--per-user", "1",
                   "--starts-at", "2030-01-01T10:00:00Z", "--ends-at", "2030-01-01T11:00:00+00:00", *url)
    assert made.returncode == 0, made.stderr
    status = json.loads(made.stdout)
    assert (status["per_user"], status["starts_at"], status["ends_at"]) == (
        1, "2030-01-01T10:00:00Z", "2030-01-01T11:00:00Z")
    raised = json.loads(run_cli("update", "hat", "--stock", "8", "--starts-at", "none", *url).stdout)
    assert (raised["stock"], raised["starts_at"], raised["per_user"]) == (8, None, 1)
    redis_client.hset(sale_store.sale_key("hat"), "sold", 6)
    lowered = run_cli("update", "hat", "--stock", "5", *url)
    assert lowered.returncode == 1 and "below the units already sold" in lowered.stderr  # refused, not misused
    assert run_cli("update", "nope", "--stock", "5", *url).returncode == 1
    backwards = run_cli("create", "cap", "--stock", "1", "--starts-at", "2030-01-02", "--ends-at", "2030-01-01", *url)
    assert backwards.returncode == 2 and "ends_at must be after starts_at" in backwards.stderr
    no_start = run_cli("create", "cap", "--stock", "1", "--starts-at", "none", *url)  # as if not given
    assert no_start.returncode == 0 and json.loads(no_start.stdout)["starts_at"] is None
    bad = run_cli("create", "cap", "--stock", "1", "--starts-at", "tomorrow", *url)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_a_batch_larger_than_luas_stack(redis_client: redis.Redis) -> None:
    """9000 requests in one call (over Lua's ~8000-value unpack limit), named and limited."""
    create_sale(redis_client, "hat", 8000, per_user=1)
    users = [f"u{i % 8500}" for i in range(9000)]
    reply = admit(redis_client, "hat", "big", users)
    assert int(reply[0]) == 8000
    assert reply[4].count(b"W") == 8000 and reply[4].count(b"A") == 500
    assert redis_client.hlen(sale_store.sale_keys("hat").buyers) == 8000


def test_a_limit_is_added_to_an_unlisted_sale_only_before_its_first_order(redis_client: redis.Redis,  # type: ignore[no-untyped-def]
                                                                         redis_server) -> None:
    """Every new sale lists its buyers; one made by an older version (no `listed`) that has
    orders has lists missing its earlier wins, so a limit would undercount: refused."""
    url = ["--redis", redis_server.url]
    for item in ("hat", "cap", "new"):
        create_sale(redis_client, item, 10)
    for item in ("hat", "cap"):
        redis_client.hdel(sale_store.sale_key(item), "listed")  # as an older version made them
    assert int(admit(redis_client, "hat", "b1", ["a"])[0]) == 1
    refused = run_cli("update", "hat", "--per-user", "1", *url)
    assert refused.returncode == 1 and "before the first order" in refused.stderr
    assert int(admit(redis_client, "new", "b1", ["a"])[0]) == 1
    assert run_cli("update", "new", "--per-user", "1", *url).returncode == 0  # listed from the start
    assert admit(redis_client, "new", "b2", ["a", "b"])[4] == b"AW"
    assert run_cli("update", "cap", "--per-user", "1", *url).returncode == 0
    assert admit(redis_client, "cap", "b1", ["a", "a"])[4] == b"WA"
    # Lifting the limit keeps the lists, so putting it back is exact.
    assert run_cli("update", "cap", "--per-user", "0", *url).returncode == 0
    assert int(admit(redis_client, "cap", "b2", ["a"])[0]) == 1
    assert run_cli("update", "cap", "--per-user", "2", *url).returncode == 0
    assert admit(redis_client, "cap", "b3", ["a", "b"])[4] == b"AW"
