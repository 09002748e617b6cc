"""A Redis Cluster whose masters have replicas: the master of a hot sale is killed -9 under
load, the cluster promotes its replica, the batch pipe follows (a refused connection
reloads the slot table), and with --replica-acks 1 (WAIT after each master's write) no
acknowledged win is lost: checked against the new master, Jepsen-style."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.cluster import ClusterNode
from redis.cluster import RedisCluster as SyncCluster

from seckill.sales import sale_store
from support.buyers import History, buyers, check
from support.helpers import create_sale, poll
from support.redis_cluster import RedisCluster

STOCK = 1500  # smaller than the demand: it sells out after the fault
CONNECTIONS = 200
PACE = 1.0
RETRY = 0.2
NODE_TIMEOUT_MS = 1000  # cluster-node-timeout: a master silent this long is failed over


@pytest.fixture
def replicated(tmp_path: Path) -> Iterator[RedisCluster]:
    cluster = RedisCluster(tmp_path / "cluster", replicas=1, node_timeout_ms=NODE_TIMEOUT_MS)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.mark.parametrize("acks", [1, 0])
def test_a_hot_sales_master_killed_under_load_its_replica_takes_over_exactly(  # type: ignore[no-untyped-def]
        start_server, replicated: RedisCluster, acks: int) -> None:
    client = SyncCluster(startup_nodes=[ClusterNode("127.0.0.1", node.port) for node in replicated.nodes])
    create_sale(client, "hat", STOCK, per_user=1)
    client.close()
    index = replicated.owner(sale_store.sale_key("hat"))
    server = start_server("--replica-acks", str(acks), "--redis-timeout", "1", workers=2, redis_url=replicated.url)
    history: History = []

    def answered_after(seen: int, result: str | None = None) -> bool:
        return any(s != 503 if result is None else b.get("result") == result for _, s, b in history[seen:])

    async def run() -> float:
        going = asyncio.Event()
        going.set()
        load = asyncio.create_task(buyers(server.port, going, history, CONNECTIONS, PACE, RETRY))
        try:
            await asyncio.to_thread(poll, lambda: answered_after(0, "won"), "wins under load", 30)
            old = replicated.kill_master(index)
            killed, seen = time.monotonic(), len(history)
            await asyncio.to_thread(replicated.wait_failover, index)
            # The new master has no replica until the old one is back: with acks on, its
            # wins answer 503 until then (as they must).
            await asyncio.to_thread(replicated.rejoin, index, old)
            await asyncio.to_thread(poll, lambda: answered_after(seen, "won"), "wins after the failover", 30)
            window = time.monotonic() - killed
            await asyncio.to_thread(poll, lambda: answered_after(len(history) - 20, "sold_out"), "sold out", 60)
            return window
        finally:
            going.clear()
            await load

    try:
        window = asyncio.run(run())
    except AssertionError:
        print("server log:", server.log[-4000:])
        raise
    figures = check(history, replicated.client(index))
    print(f"\ncluster, replica-acks {acks}: failover of master {index}, 503 window {window:.1f} s; {figures}; "
          f"answers {Counter(s for _, s, _ in history)}")
    assert figures["duplicate seqs"] == 0 and figures["duplicate buyers"] == 0, figures
    assert figures["sold"] <= STOCK and figures["acknowledged"] > 0, figures
    if acks:  # without acks the failover may lose wins: reported above, not asserted either way
        assert figures["lost"] == 0 and figures["sold minus orders"] == 0, figures
