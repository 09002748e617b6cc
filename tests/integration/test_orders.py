"""After the win: a user's order lookup, cancel, holds and their expiry, restock under
load, and the order CLI (real Redis, real server)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from seckill.sales import order_book, sale_store
from support.helpers import ROOT, admit, create_sale, stream_events, stream_orders
from support.http_client import TOKEN, admin, buy, fetch, get, parse_one


def status(client: redis.Redis, item: str) -> dict[str, int]:
    fields = client.hgetall(sale_store.sale_key(item))
    return {k.decode(): int(v) for k, v in fields.items() if v.lstrip(b"-").isdigit()}


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "seckill_server.py"), *args],
                          capture_output=True, text=True, timeout=30, cwd=ROOT)


def test_a_user_looks_up_their_order(start_server, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    create_sale(redis_client, "hat", 2)
    server = start_server()
    port = server.port
    won = buy(port, "hat", "ann@example.com")
    mine = fetch(port, "GET", "/seckill/hat/order?user=ann@example.com")
    assert mine.status == 200
    assert mine.json() == {"item": "hat", "user": "ann@example.com",
                           "orders": [{"order": won["order"], "seq": won["seq"], "state": "won"}]}
    assert fetch(port, "HEAD", "/seckill/hat/order?user=ann@example.com").status == 200
    nobody = fetch(port, "GET", "/seckill/hat/order?user=bob")
    assert nobody.status == 404 and nobody.json()["result"] == "no_order"
    assert fetch(port, "GET", "/seckill/ghost/order?user=ann").json()["result"] == "unknown_item"
    assert fetch(port, "GET", "/seckill/hat/order").status == 400
    assert fetch(port, "POST", "/seckill/hat/order?user=ann").status == 405
    assert fetch(port, "GET", "/seckill/b@d/order?user=ann").status == 400


def test_cancel_returns_one_unit_once_and_frees_the_slot(start_server, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    create_sale(redis_client, "hat", 1, per_user=1)
    server = start_server("--admin-token", TOKEN, "--gate-interval", "0")
    port = server.port
    order = buy(port, "hat", "ann")["order"]
    assert buy(port, "hat", "bob")["result"] == "sold_out"
    assert buy(port, "hat", "ann")["result"] == "already_bought"

    redis_client.script_flush()  # as after a Redis restart: the script is loaded again
    first = admin(port, "POST", f"/admin/items/hat/orders/{order}/cancel")
    assert first.status == 200 and first.json()["state"] == "cancelled" and first.json()["user"] == "ann"
    after_one = status(redis_client, "hat")
    again = admin(port, "POST", f"/admin/items/hat/orders/{order}/cancel")
    assert again.status == 409 and again.json()["state"] == "cancelled"
    assert status(redis_client, "hat") == after_one  # the second changed nothing
    assert (after_one["sold"], after_one["cancelled"]) == (0, 1)
    assert fetch(port, "GET", "/seckill/hat/order?user=ann").status == 404
    assert [e["event"] for e in stream_events(redis_client, "hat")] == ["won", "cancelled"]
    # The unit is back, and ann's slot is free again.
    assert buy(port, "hat", "ann")["result"] == "won"
    assert buy(port, "hat", "bob")["result"] == "sold_out"


def test_concurrent_cancels_return_one_unit(start_server, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    create_sale(redis_client, "hat", 5)
    server = start_server("--admin-token", TOKEN, workers=2)
    order = buy(server.port, "hat", "ann")["order"]
    barrier = threading.Barrier(16)

    def cancel(_: int) -> int:
        barrier.wait()
        return admin(server.port, "POST", f"/admin/items/hat/orders/{order}/cancel").status

    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(cancel, range(16)))
    assert sorted(statuses) == [200] + [409] * 15
    assert status(redis_client, "hat")["sold"] == 0
    assert [e["event"] for e in stream_events(redis_client, "hat")] == ["won", "cancelled"]


def test_holds_expire_once_with_two_workers_sweeping(start_server, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    create_sale(redis_client, "hat", 10, per_user=1, hold_seconds=1)
    server = start_server("--admin-token", TOKEN, "--sweep-interval", "0.05", "--gate-interval", "0", workers=2)
    port = server.port
    won = [buy(port, "hat", f"u{i}") for i in range(10)]
    assert {w["state"] for w in won} == {"pending"} and status(redis_client, "hat")["pending"] == 10
    paid = {w["order"] for w in won[:4]}
    for order in paid:
        assert admin(port, "POST", f"/admin/items/hat/orders/{order}/confirm").json()["state"] == "confirmed"
    assert admin(port, "POST", f"/admin/items/hat/orders/{won[0]['order']}/confirm").status == 409

    deadline = time.monotonic() + 10  # the holds last 1 s; the sweepers run every 0.05 s
    while status(redis_client, "hat").get("pending", 0) and time.monotonic() < deadline:
        time.sleep(0.05)
    counts = status(redis_client, "hat")
    assert (counts["pending"], counts["confirmed"], counts["expired"], counts["sold"]) == (0, 4, 6, 4)
    expired = [e for e in stream_events(redis_client, "hat") if e["event"] == "expired"]
    assert sorted(e["order"] for e in expired) == sorted(w["order"] for w in won[4:])  # each once
    late = admin(port, "POST", f"/admin/items/hat/orders/{won[9]['order']}/confirm")
    assert late.status == 409 and late.json()["state"] == "expired"
    # The confirmed stay theirs; the expired users may buy again, the confirmed may not.
    assert fetch(port, "GET", "/seckill/hat/order?user=u0").json()["orders"][0]["state"] == "confirmed"
    assert buy(port, "hat", "u9")["result"] == "won"
    assert buy(port, "hat", "u0")["result"] == "already_bought"


def test_a_late_confirm_expires_the_hold_itself(start_server, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    """No sweeper ran yet (an hour apart): the deadline still holds at confirm time."""
    create_sale(redis_client, "hat", 1, hold_seconds=1)
    server = start_server("--admin-token", TOKEN, "--sweep-interval", "3600")
    won = buy(server.port, "hat", "ann")
    [(_, fields)] = redis_client.xrange(sale_store.orders_key("hat"))
    hold_until = int(fields[b"hold_until"])
    assert won["hold_until"] == sale_store.iso(hold_until)
    while (lambda t: t[0] * 1000 + t[1] // 1000)(redis_client.time()) < hold_until:  # Redis's clock decides
        time.sleep(0.05)
    late = admin(server.port, "POST", f"/admin/items/hat/orders/{won['order']}/confirm")
    assert late.status == 409 and late.json()["state"] == "expired"
    assert status(redis_client, "hat")["sold"] == 0
    assert [e["event"] for e in stream_events(redis_client, "hat")] == ["won", "expired"]


def test_restock_mid_load_gives_exactly_the_new_units(start_server, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    gate = 0.5
    create_sale(redis_client, "hat", 100)
    server = start_server("--admin-token", TOKEN, "--gate-interval", str(gate), workers=2)
    wins: list[tuple[float, dict[str, Any]]] = []
    sold_out = asyncio.Event()
    stop = asyncio.Event()

    async def client(c: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        buf, n = b"", 0
        while not stop.is_set():
            n += 1
            writer.write(get(f"/seckill/hat?user=c{c}-{n}"))
            while (parsed := parse_one(buf)) is None:
                chunk = await reader.read(65536)
                assert chunk, "server closed the connection"
                buf += chunk
            response, buf = parsed
            if response.headers.get("connection") == "close":  # --keepalive-requests: reconnect
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            answer = response.json()
            if answer["result"] == "won":
                wins.append((time.monotonic(), answer))
            elif answer["result"] == "sold_out" and len(wins) >= 100:
                sold_out.set()
        writer.close()

    async def run() -> float:
        load = [asyncio.create_task(client(c)) for c in range(40)]
        await asyncio.wait_for(sold_out.wait(), 20)
        restocked = await asyncio.to_thread(admin, server.port, "PUT", "/admin/items/hat", {"stock": 200})
        assert restocked.status == 200
        at = time.monotonic()
        deadline = at + 20
        while len(wins) < 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(gate * 2)  # the load goes on past the gates' next re-check
        stop.set()
        await asyncio.gather(*load)
        return at

    restocked_at = asyncio.run(run())
    assert len(wins) == 200
    assert len({w["seq"] for _, w in wins}) == 200
    assert len(stream_orders(redis_client, "hat")) == 200 and status(redis_client, "hat")["sold"] == 200
    first_new = min(t for t, w in wins if w["seq"] > 100)
    assert first_new - restocked_at < gate + 1.0  # the gates re-check within their interval


def test_cli_list_orders_cancel_confirm(redis_client: redis.Redis, redis_server, start_server) -> None:  # type: ignore[no-untyped-def]
    url = ["--redis", redis_server.url]
    made = run_cli("create", "hat", "--stock", "3", "--hold-seconds", "600", "--per-user", "1", *url)
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["hold_seconds"] == 600
    assert run_cli("create", "cap", "--stock", "1", *url).returncode == 0
    listed = [json.loads(line) for line in run_cli("list", *url).stdout.splitlines()]
    assert [s["item"] for s in listed] == ["cap", "hat"]

    server = start_server()
    orders = [buy(server.port, "hat", user)["order"] for user in ("ann", "bob")]
    confirmed = run_cli("confirm", "hat", orders[0], *url)
    assert confirmed.returncode == 0 and json.loads(confirmed.stdout)["state"] == "confirmed"
    assert run_cli("cancel", "hat", orders[1], *url).returncode == 0
    twice = run_cli("cancel", "hat", orders[1], *url)
    assert twice.returncode == 1 and twice.stderr.count("\n") == 1 and "cancelled" in twice.stderr
    assert run_cli("cancel", "hat", "nope-77", *url).returncode == 1

    printed = [json.loads(line) for line in run_cli("orders", "hat", *url).stdout.splitlines()]
    assert printed == stream_events(redis_client, "hat")
    assert [(r["event"], r["order"]) for r in printed] == [
        ("won", orders[0]), ("won", orders[1]), ("confirmed", orders[0]), ("cancelled", orders[1])]


def test_cli_orders_follow_prints_new_orders(redis_client: redis.Redis, redis_server, start_server) -> None:  # type: ignore[no-untyped-def]
    create_sale(redis_client, "hat", 5)
    server = start_server()
    first = buy(server.port, "hat", "ann")["order"]
    follower = subprocess.Popen(
        [sys.executable, str(ROOT / "seckill_server.py"), "orders", "hat", "--follow", "--redis", redis_server.url],
        stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert follower.stdout is not None
        assert json.loads(follower.stdout.readline())["order"] == first  # the history first
        second = buy(server.port, "hat", "bob")["order"]
        line = json.loads(follower.stdout.readline())  # blocks until the new win arrives
        assert (line["event"], line["order"], line["user"]) == ("won", second, "bob")
    finally:
        follower.terminate()
        follower.wait(10)
        if follower.stdout is not None:
            follower.stdout.close()


def test_cli_and_api_refuse_alike(redis_client: redis.Redis, redis_server, start_server) -> None:  # type: ignore[no-untyped-def]
    url = ["--redis", redis_server.url]
    server = start_server("--admin-token", TOKEN)
    for flags, body in ((["--stock", "-1"], {"stock": -1}),
                        (["--stock", "1", "--per-user", "5000"], {"stock": 1, "per_user": 5000}),
                        (["--stock", "1", "--hold-seconds", "-1"], {"stock": 1, "hold_seconds": -1}),
                        (["--stock", "1", "--ends-at", "soon"], {"stock": 1, "ends_at": "soon"})):
        cli = run_cli("create", "hat", *flags, *url)
        api = admin(server.port, "PUT", "/admin/items/hat", body)
        assert cli.returncode == 2 and api.status == 400
        assert cli.stderr.strip() == f"seckill-server: error: {api.json()['error']}"
    assert not redis_client.exists(sale_store.sale_key("hat"))


@pytest.mark.parametrize("per_user", [0, 3])  # with a limit or without, from the buyers list
def test_lookup_shows_live_orders_only(start_server, redis_client: redis.Redis, per_user: int) -> None:  # type: ignore[no-untyped-def]
    create_sale(redis_client, "hat", 10, per_user=per_user)
    server = start_server("--admin-token", TOKEN)
    port = server.port
    mine = [buy(port, "hat", "ann")["order"] for _ in range(3)]
    buy(port, "hat", "bob")
    assert admin(port, "POST", f"/admin/items/hat/orders/{mine[1]}/cancel").status == 200
    found = fetch(port, "GET", "/seckill/hat/order?user=ann").json()
    assert [o["order"] for o in found["orders"]] == [mine[0], mine[2]]
    assert "complete" not in found
    assert status(redis_client, "hat")["listed"] == 1  # every new sale lists its buyers


def test_a_win_older_than_20000_entries_is_found(start_server, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    """A sale without a limit: the lookup reads the buyers hash, however long the stream
    (a version that searched the stream gave up after 20,000 entries)."""
    create_sale(redis_client, "hat", 30_000)
    first = admit(redis_client, "hat", "first", ["ann"])
    sha = redis_client.script_load(sale_store.ADMIT_LUA)
    with redis_client.pipeline(transaction=False) as pipe:
        for n in range(20_001):  # one stream entry each
            keys = sale_store.admit_keys("hat", f"b{n}")
            pipe.evalsha(sha, len(keys), *keys, f"b{n}", "" if n % 2 else f"u{n}")
        pipe.execute()
    assert redis_client.xlen(sale_store.orders_key("hat")) == 20_002
    server = start_server()
    found = fetch(server.port, "GET", "/seckill/hat/order?user=ann")
    assert found.status == 200, found.body
    assert found.json() == {"item": "hat", "user": "ann",
                            "orders": [{"order": f"{first[3].decode()}-1", "seq": 1, "state": "won"}]}
    assert fetch(server.port, "GET", "/seckill/hat/order?user=u20000").json()["orders"][0]["seq"] == 20_002
    assert fetch(server.port, "GET", "/seckill/hat/order?user=nobody").status == 404


def test_one_user_s_list_is_bounded_in_a_sale_without_a_limit(redis_server, redis_client: redis.Redis) -> None:
    create_sale(redis_client, "hat", 2000)
    reply = admit(redis_client, "hat", "b1", ["ann"] * (sale_store.MAX_PER_USER + 5))
    assert int(reply[0]) == sale_store.MAX_PER_USER + 5  # every one wins: there is no limit
    listed = redis_client.hget(sale_store.sale_keys("hat").buyers, "ann")
    assert [int(s) for s in listed.split()] == list(range(1, sale_store.MAX_PER_USER + 1))  # the first 1000

    async def lookup() -> Any:
        client = aioredis.Redis.from_url(redis_server.url)
        try:
            return await order_book.user_orders(client, "hat", "ann")
        finally:
            await client.aclose()

    assert len(asyncio.run(lookup())) == sale_store.MAX_PER_USER
