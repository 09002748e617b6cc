"""Redis Cluster (`--redis redis+cluster://...`) against a real three-master cluster: the
cluster pipe (order across nodes, MOVED, ASK, TRYAGAIN, NOSCRIPT), exact stock with two
workers over sales on every master, a slot resharded under load, the admin CLI and API."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.cluster import ClusterNode
from redis.cluster import RedisCluster as SyncCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

from seckill.admission.batcher import ADMIT_SHA
from seckill.sales import sale_store
from seckill.store.client import make_pipe, make_redis, valid_url
from seckill.store.cluster_pipe import ClusterPipe, ClusterUnavailable
from seckill.store.embedded import free_port
from support.helpers import ROOT, admit, create_sale, poll, stream_events, stream_orders
from support.http_client import TOKEN, Response, admin, buy, fetch, get, hammer, parse_one
from support.redis_cluster import RedisCluster, keyslot


@pytest.fixture
def cluster_client(cluster: RedisCluster) -> Iterator[SyncCluster]:
    """A client of the emptied cluster (data and script caches flushed on every master)."""
    cluster.flush()
    client = SyncCluster(startup_nodes=[ClusterNode("127.0.0.1", node.port) for node in cluster.nodes])
    yield client
    client.close()


def items_on_every_master(cluster: RedisCluster, count: int, prefix: str = "item") -> list[str]:
    """`count` item names whose sales are spread over all masters (asserted)."""
    items = [f"{prefix}{i}" for i in range(count)]
    owners = Counter(cluster.owner(sale_store.sale_key(item)) for item in items)
    assert len(owners) == len(cluster.nodes), owners
    return items


def admit_call(item: str, batch_id: str, *users: str) -> tuple[Any, ...]:
    """An admission call as the Batcher sends it."""
    return ("EVALSHA", ADMIT_SHA, 7, *sale_store.admit_keys(item, batch_id), batch_id, *users)


def sold(client: SyncCluster, item: str) -> int:
    return int(client.hget(sale_store.sale_key(item), "sold"))


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "seckill_server.py"), *args],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


# --- the pipe --------------------------------------------------------------------------


async def _with_pipe(url: str, body) -> None:  # type: ignore[no-untyped-def]
    client = make_redis(url, 5.0)
    pipe = make_pipe(client)
    assert isinstance(pipe, ClusterPipe)
    try:
        await body(client, pipe)
    finally:
        await pipe.close()
        await client.aclose()


def test_pipe_answers_in_order_across_masters(cluster: RedisCluster, cluster_client: SyncCluster) -> None:
    items = items_on_every_master(cluster, 6)

    async def body(client: Any, pipe: ClusterPipe) -> None:
        # Interleaved over the masters; each INCR's reply tells which command it answers.
        commands = [("INCRBY", f"n{k}{{{item}}}", 10 * i + k) for k in range(3) for i, item in enumerate(items)]
        replies = await pipe.execute(commands)
        assert replies == [command[2] for command in commands]
        again = await pipe.execute([("GET", command[1]) for command in reversed(commands)])
        assert again == [str(command[2]).encode() for command in reversed(commands)]
        wrong = await pipe.execute([("SET", "s{a}", "x"), ("INCR", "s{a}"), ("GET", "s{a}")])
        assert wrong[0] == b"OK" and isinstance(wrong[1], redis.ResponseError) and wrong[2] == b"x"

    asyncio.run(_with_pipe(cluster.url, body))


def test_pipe_follows_moved_and_ask_and_bounds_tryagain(cluster: RedisCluster, cluster_client: SyncCluster) -> None:
    for item in ("moved", "asked"):
        create_sale(cluster_client, item, 10)

    async def body(client: Any, pipe: ClusterPipe) -> None:
        await client.script_load(sale_store.ADMIT_LUA)  # on every master
        assert await pipe.execute([admit_call("moved", "b1", "a"), admit_call("asked", "b1", "a")])
        # MOVED: the slot went to another master behind the client's back.
        key = sale_store.sale_key("moved")
        slot, source = keyslot(key), cluster.owner(key)
        target = (source + 1) % 3
        assert await asyncio.to_thread(cluster.migrate_slot, slot, target) >= 3  # sale, stream, index, batch
        granted = await pipe.execute([admit_call("moved", "b2", "b", "c")])
        assert granted[0][:3] == [b"2", b"7", b"2"]
        node = client.nodes_manager.get_node_from_slot(slot)
        assert node.port == cluster.nodes[target].port  # learnt from the MOVED reply

        # ASK: mid-migration, a key that is not on the source yet is served by the target.
        key = sale_store.sale_key("asked")
        slot, source = keyslot(key), cluster.owner(key)
        target = (source + 1) % 3
        await asyncio.to_thread(cluster.begin_migration, slot, target)
        try:
            assert await pipe.execute([("SET", "new{asked}", "v")]) == [b"OK"]
            assert cluster.client(target).execute_command("CLUSTER COUNTKEYSINSLOT", slot) == 1
            assert cluster.client(source).execute_command("CLUSTER COUNTKEYSINSLOT", slot) >= 3
            # A script call's keys are split over the two masters: TRYAGAIN until the move
            # ends. Bounded: it gives up (503) and nothing was granted.
            started = time.monotonic()
            stuck = await pipe.execute([admit_call("asked", "b2", "x")])
            assert isinstance(stuck[0], ClusterUnavailable)
            assert time.monotonic() - started < 2
        finally:
            await asyncio.to_thread(cluster.finish_migration, slot, source, target)
        assert sold(cluster_client, "asked") == 1
        done = await pipe.execute([admit_call("asked", "b2", "x"), ("GET", "new{asked}")])
        assert done[0][:3] == [b"1", b"8", b"2"] and done[1] == b"v"
        # The same batch id again (a lost reply resent): its stored reply, nothing granted.
        assert await pipe.execute([admit_call("asked", "b2", "x")]) == [done[0]]
        assert sold(cluster_client, "asked") == 2
        assert len(stream_orders(cluster_client, "asked")) == 2

    asyncio.run(_with_pipe(cluster.url, body))


def test_noscript_is_loaded_on_every_master(cluster: RedisCluster, cluster_client: SyncCluster) -> None:
    items = items_on_every_master(cluster, 6)
    for item in items:
        create_sale(cluster_client, item, 5)

    async def body(client: Any, pipe: ClusterPipe) -> None:
        replies = await pipe.execute([admit_call(item, "b1", "a") for item in items])
        assert all(isinstance(reply, NoScriptError) for reply in replies)
        await client.script_load(sale_store.ADMIT_LUA)  # as Batcher does on NOSCRIPT
        for i in range(len(cluster.nodes)):
            assert cluster.client(i).script_exists(ADMIT_SHA) == [True]
        replies = await pipe.execute([admit_call(item, "b1", "a") for item in items])
        assert [reply[0] for reply in replies] == [b"1"] * len(items)

    asyncio.run(_with_pipe(cluster.url, body))


def test_a_dropped_connection_fails_only_its_master(cluster: RedisCluster, cluster_client: SyncCluster) -> None:
    items = items_on_every_master(cluster, 6)
    victim = cluster.owner(sale_store.sale_key(items[0]))
    on_victim = [item for item in items if cluster.owner(sale_store.sale_key(item)) == victim]

    async def body(client: Any, pipe: ClusterPipe) -> None:
        assert await pipe.execute([("SET", f"k{{{item}}}", item) for item in items]) == [b"OK"] * len(items)
        # The master drops our connection while it is idle (as a restart would).
        assert cluster.client(victim).execute_command("CLIENT KILL", "TYPE", "normal") >= 1
        # Other masters answered: the victim's commands are sent once more, on a new connection.
        assert await pipe.execute([("GET", f"k{{{item}}}") for item in items]) == [i.encode() for i in items]
        # Nothing answered at all: raised, as one Redis does (the Batcher retries, then 503).
        cluster.client(victim).execute_command("CLIENT KILL", "TYPE", "normal")
        with pytest.raises((RedisConnectionError, OSError)):
            await pipe.execute([("GET", f"k{{{item}}}") for item in on_victim])
        assert await pipe.execute([("GET", f"k{{{item}}}") for item in on_victim]) == [i.encode() for i in on_victim]

    asyncio.run(_with_pipe(cluster.url, body))


# --- the server on a cluster -------------------------------------------------------------


def test_exactly_stock_winners_over_every_master(start_server, cluster: RedisCluster,  # type: ignore[no-untyped-def]
                                                 cluster_client: SyncCluster) -> None:
    items = items_on_every_master(cluster, 24)
    stock = 25
    for item in items:
        create_sale(cluster_client, item, stock)
    server = start_server(workers=2, redis_url=cluster.url)
    connections, per_connection = 100, 30  # 3,000 requests for 600 units, distinct users
    paths = [[f"/seckill/{items[(c + i) % len(items)]}?user=u{c}-{i}" for i in range(per_connection)]
             for c in range(connections)]
    answers = asyncio.run(hammer(server.port, paths))

    assert len(answers) == connections * per_connection
    statuses = Counter(a.status for a in answers)
    assert set(statuses) <= {200, 409}, statuses
    won = [a.json() for a in answers if a.status == 200]
    assert Counter(w["item"] for w in won) == dict.fromkeys(items, stock)
    batches = set()
    for item in items:
        assert sold(cluster_client, item) == stock
        stream = stream_orders(cluster_client, item)
        assert len(stream) == stock
        assert sorted(o["seq"] for o in stream) == list(range(1, stock + 1))
        assert {o["order"] for o in stream} == {w["order"] for w in won if w["item"] == item}
        batches |= {str(o["batch"]).split(".")[0] for o in stream}
    users = [o["user"] for item in items for o in stream_orders(cluster_client, item)]
    assert len(users) == len(set(users)) == stock * len(items)  # no user twice
    assert len(batches) == 2  # both workers sold


class Load:
    """Clients buying `item` with a new user each request, until stop(); every answer
    kept with the time it came."""

    def __init__(self, port: int, item: str, connections: int) -> None:
        self.port, self.item, self.connections = port, item, connections
        self.answers: list[tuple[float, Response]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30) -> None:
        self._stop.set()
        self._thread.join(timeout)
        assert not self._thread.is_alive()

    async def _run(self) -> None:
        await asyncio.gather(*(self._client(c) for c in range(self.connections)))

    async def _client(self, c: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        buf, i = b"", 0
        try:
            while not self._stop.is_set():
                i += 1
                writer.write(get(f"/seckill/{self.item}?user=c{c}-{i}"))
                while (parsed := parse_one(buf)) is None:
                    chunk = await reader.read(65536)
                    if not chunk:
                        raise ConnectionError("server closed a keep-alive connection")
                    buf += chunk
                response, buf = parsed
                self.answers.append((time.monotonic(), response))
                if response.headers.get("connection") == "close":  # --keepalive-requests
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        finally:
            writer.close()


def test_a_hot_slot_moves_to_another_master_under_load(start_server, cluster: RedisCluster,  # type: ignore[no-untyped-def]
                                                        cluster_client: SyncCluster) -> None:
    stock = 4000  # sells in a few seconds here: plenty is left when the slot moves
    create_sale(cluster_client, "hot", stock)
    key = sale_store.sale_key("hot")
    slot, source = keyslot(key), cluster.owner(key)
    target = (source + 1) % 3
    # A long timeout: a batch that times out answers 503 though it may have won, and this
    # test counts the winners exactly. (A 503 for a slot still moving is fine: it did not run.)
    # No sweeps: they use the same slot table, and would learn of the move for the pipe.
    server = start_server("--redis-timeout", "5", "--sweep-interval", "3600", workers=2, redis_url=cluster.url)
    load = Load(server.port, "hot", connections=20)
    load.start()
    try:
        poll(lambda: sold(cluster_client, "hot") >= 200, "200 units sold before the move", 30, every=0.02)
        began = time.monotonic()
        moved = cluster.migrate_slot(slot, target)
        ended = time.monotonic()
        assert moved >= 3
        assert cluster.owner(key) == target
        assert cluster.client(target).exists(key) == 1
        sold_at_move = sold(cluster_client, "hot")
        assert sold_at_move < stock  # units were left to sell on the new master
        poll(lambda: sold(cluster_client, "hot") == stock, "the rest to sell after the move", 30, every=0.02)
        poll(lambda: sum(r.status == 409 for t, r in load.answers[-200:] if t > ended) >= 100,
             "sold-out answers after the move", 30, every=0.02)
    finally:
        load.stop()
    statuses = Counter(r.status for _, r in load.answers)
    assert set(statuses) <= {200, 409, 503}, statuses  # 503: outcome unknown, never a grant
    won = [r.json() for _, r in load.answers if r.status == 200]
    assert len(won) == stock, statuses
    # Every unit left at the end of the move was sold, and answered 200, on the new master.
    assert sum(1 for t, r in load.answers if r.status == 200 and t > ended) >= stock - sold_at_move > 0
    stream = stream_orders(cluster_client, "hot")
    assert len(stream) == stock == sold(cluster_client, "hot")
    assert sorted(o["seq"] for o in stream) == list(range(1, stock + 1))
    assert {o["order"] for o in stream} == {w["order"] for w in won}
    assert len({o["user"] for o in stream}) == stock
    served_during = sum(1 for t, r in load.answers if began <= t <= ended and r.status != 503)
    print(f"move: {ended - began:.3f}s, {served_during} answered meanwhile, {sold_at_move} sold; {statuses}")


# --- administration ----------------------------------------------------------------------


def test_admin_cli_on_a_cluster(cluster: RedisCluster, cluster_client: SyncCluster) -> None:
    url = ["--redis", cluster.url]
    created = run_cli("create", "hat", "--stock", "10", "--sold", "4", *url)
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["remaining"] == 6
    assert run_cli("create", "hat", "--stock", "9", *url).returncode == 1
    assert run_cli("create", "cap", "--stock", "3", *url).returncode == 0
    status = json.loads(run_cli("status", "hat", *url).stdout)
    assert (status["stock"], status["sold"], status["remaining"]) == (10, 4, 6)
    admit(cluster_client, "hat", "b1", ["ann", "bob"])
    orders = [json.loads(line) for line in run_cli("orders", "hat", *url).stdout.splitlines()]
    assert [(o["event"], o["seq"], o["user"]) for o in orders] == [("won", 5, "ann"), ("won", 6, "bob")]
    listed = [json.loads(line) for line in run_cli("list", *url).stdout.splitlines()]
    assert [(s["item"], s["stock"]) for s in listed] == [("cap", 3), ("hat", 10)]
    assert cluster.owner(sale_store.sale_key("hat")) != cluster.owner(sale_store.sale_key("cap"))
    deleted = run_cli("delete", "cap", *url)
    assert deleted.returncode == 0 and not cluster_client.exists(sale_store.sale_key("cap"))


def test_admin_api_orders_and_holds_on_a_cluster(start_server, cluster: RedisCluster,  # type: ignore[no-untyped-def]
                                                 cluster_client: SyncCluster) -> None:
    server = start_server("--admin-token", TOKEN, "--sweep-interval", "0.05", redis_url=cluster.url)
    port = server.port
    assert admin(port, "PUT", "/admin/items/hat", {"stock": 3, "per_user": 1}).status == 201
    assert admin(port, "PUT", "/admin/items/cap", {"stock": 2, "hold_seconds": 1}).status == 201
    assert cluster.owner(sale_store.sale_key("hat")) != cluster.owner(sale_store.sale_key("cap"))
    listed = admin(port, "GET", "/admin/items").json()["items"]
    assert [(s["item"], s["stock"]) for s in listed] == [("cap", 2), ("hat", 3)]
    order = buy(port, "hat", "ann")["order"]
    assert buy(port, "hat", "ann")["result"] == "already_bought"
    assert fetch(port, "GET", "/seckill/hat/order?user=ann").json()["orders"][0]["order"] == order
    cluster.flush_scripts()  # as a restarted master: the admission and order scripts load again
    cancelled = admin(port, "POST", f"/admin/items/hat/orders/{order}/cancel")
    assert cancelled.json()["state"] == "cancelled"
    page = admin(port, "GET", "/admin/items/hat/orders").json()
    assert [(o["order"], o["state"]) for o in page["orders"]] == [(order, "cancelled")]
    assert buy(port, "hat", "cy")["result"] == "won"
    # A hold nobody pays expires: the sweeper (every worker runs one) finds it on its master.
    assert buy(port, "cap", "bob")["state"] == "pending"
    poll(lambda: admin(port, "GET", "/admin/items/cap").json()["expired"] == 1, "the hold to expire", 15, every=0.02)
    assert [e["event"] for e in stream_events(cluster_client, "cap")] == ["won", "expired"]
    assert admin(port, "DELETE", "/admin/items/cap").status == 200
    assert fetch(port, "GET", "/stock/cap").status == 404
    assert fetch(port, "GET", "/readyz").status == 200


@pytest.mark.parametrize("url", [
    "redis+cluster://",
    "redis+cluster://127.0.0.1",
    "redis+cluster://127.0.0.1:7000,",
    "redis+cluster://127.0.0.1:70000",
    "redis+cluster://127.0.0.1:abc",
    "redis+cluster://127.0.0.1:7000/1",  # a cluster has one database
    "redis+clusters://127.0.0.1:7000",
])
def test_a_bad_cluster_url_is_one_line_and_exit_2(url: str) -> None:
    assert not valid_url(url)
    for args in (["--port", str(free_port())], ["status", "hat"]):
        result = run_cli(*args, "--redis", url)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("seckill-server: error: "), result.stderr


def test_cluster_urls_accepted() -> None:
    for url in ("redis+cluster://127.0.0.1:7000", "redis+cluster://:pw@h1:7000,h2:7001,[::1]:7002"):
        assert valid_url(url)
    client: Any = make_redis("redis+cluster://:p%40ss@127.0.0.1:7000,127.0.0.1:7001/", 1.5)  # (connects lazily)
    assert sorted(client.nodes_manager.startup_nodes) == ["127.0.0.1:7000", "127.0.0.1:7001"]
    kwargs = client.get_connection_kwargs()
    assert (kwargs["password"], kwargs["socket_timeout"], kwargs["driver_info"]) == ("p@ss", 1.5, None)


def test_an_unreachable_cluster_or_a_plain_redis_exits_3(redis_server) -> None:  # type: ignore[no-untyped-def]
    plain = redis_server.url.replace("redis://", "redis+cluster://").removesuffix("/0")
    for url in (f"redis+cluster://127.0.0.1:{free_port()},127.0.0.1:{free_port()}", plain):
        for args in (["--port", str(free_port())], ["status", "hat"]):
            result = run_cli(*args, "--redis", url)
            assert result.returncode == 3, result.stderr
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_keyed_purchases_on_a_cluster(start_server, cluster: RedisCluster,  # type: ignore[no-untyped-def]
                                      cluster_client: SyncCluster) -> None:
    """Idempotency-Key on a cluster: the record is in the sale's slot, a retry replays the
    win with two workers; without a claim outside the slot, the key is per sale (README)."""
    server = start_server(workers=2, redis_url=cluster.url)
    hat, cap = items_on_every_master(cluster, 3, "idem")[:2]
    for item in (hat, cap):
        create_sale(cluster_client, item, 5)
    field = {"Idempotency-Key": '"k"'}
    answers = [fetch(server.port, "GET", f"/seckill/{hat}?user=ann", headers=field) for _ in range(4)]
    assert {a.body for a in answers} == {answers[0].body} and answers[0].json()["result"] == "won"
    assert [a.headers.get("idempotent-replayed") for a in answers] == [None, "true", "true", "true"]
    assert fetch(server.port, "GET", f"/seckill/{hat}?user=bob", headers=field).status == 422
    other_sale = fetch(server.port, "GET", f"/seckill/{cap}?user=ann", headers=field)
    assert other_sale.json()["result"] == "won"  # per sale here: no call spans two slots
    assert sold(cluster_client, hat) == 1 and len(stream_orders(cluster_client, hat)) == 1
    assert cluster_client.exists(f"seckill:{{{hat}}}:idem:k") and not cluster_client.exists("seckill:idem:k")
