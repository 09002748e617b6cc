"""The example order consumer (examples/order_consumer.py) on a real sale: SIGKILLed
mid-stream and restarted, it writes every order exactly once, acknowledges no entry
twice, and leaves nothing pending."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import redis

from seckill.sales import sale_store
from support.helpers import ROOT, create_sale, stream_events, stream_orders
from support.http_client import hammer

CONSUMER = ROOT / "examples" / "order_consumer.py"
GROUP = "order-service"


def start_consumer(redis_url: str, out: Path, err: Path, *extra: str) -> subprocess.Popen[bytes]:
    with err.open("wb") as err_file:  # the child keeps its own descriptor
        return subprocess.Popen([sys.executable, str(CONSUMER), "shoe", "--redis", redis_url, "--group", GROUP,
                                 "--out", str(out), *extra], stdout=subprocess.DEVNULL, stderr=err_file)


def line_count(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def acked(err: Path) -> list[str]:
    return [line.split()[1] for line in err.read_text().splitlines() if line.startswith("acked ")]


@pytest.mark.parametrize("restart_as", [
    pytest.param(["--consumer", "c1"], id="same-consumer"),  # its own pending entries, read from id 0
    pytest.param(["--consumer", "c2", "--claim-idle", "0"], id="other-consumer"),  # c1's, taken by XAUTOCLAIM
])
def test_sigkill_mid_stream_then_restart_processes_each_order_once(
    start_server, redis_server, redis_client: redis.Redis, tmp_path: Path, restart_as: list[str]
) -> None:
    create_sale(redis_client, "shoe", 300)
    server = start_server()
    paths = [[f"/seckill/shoe?user=u{c}-{i}" for i in range(40)] for c in range(10)]
    answers = asyncio.run(hammer(server.port, paths))
    assert sum(a.status == 200 for a in answers) == 300
    key = sale_store.orders_key("shoe")
    entries = redis_client.xrange(key)
    orders = stream_orders(redis_client, "shoe")
    assert len(orders) == 300 and len(entries) > 1

    out, err1, err2 = tmp_path / "orders.jsonl", tmp_path / "run1.err", tmp_path / "run2.err"
    first = start_consumer(redis_server.url, out, err1, "--consumer", "c1", "--delay", "0.01")
    deadline = time.monotonic() + 30
    while line_count(out) < 40:
        assert first.poll() is None, "consumer exited early:\n" + err1.read_text()
        assert time.monotonic() < deadline, "consumer wrote too little in 30 s:\n" + err1.read_text()
        time.sleep(0.01)
    first.kill()
    first.wait()
    assert line_count(out) < len(orders), "the consumer finished before it could be killed mid-stream"
    assert redis_client.xpending(key, GROUP)["pending"] > 0  # it died holding unacknowledged entries

    second = start_consumer(redis_server.url, out, err2, *restart_as, "--exit-when-idle", "1")
    assert second.wait(60) == 0, err2.read_text()

    written = [json.loads(line) for line in out.read_text().splitlines()]
    by_order = Counter(r["order"] for r in written)
    assert by_order == Counter(o["order"] for o in orders)  # every order, each exactly once
    events = stream_events(redis_client, "shoe")
    assert {(r["id"], r["order"]) for r in written} == {(e["id"], e["order"]) for e in events}
    acks = acked(err1) + acked(err2)
    assert len(acks) == len(set(acks)), [a for a, n in Counter(acks).items() if n > 1]
    assert set(acks) <= {e[0].decode() for e in entries}
    assert redis_client.xpending(key, GROUP)["pending"] == 0
    (group,) = redis_client.xinfo_groups(key)
    assert group["last-delivered-id"] == entries[-1][0]
