"""Redis Sentinel and --replica-acks with real processes: a master, two replicas and three
Sentinels (the bundled redis-server); the server follows a failover by itself; with
--replica-acks a win is answered only once a replica has it, so failovers lose no
acknowledged win (checked Jepsen-style against the final master), and stalled replicas
turn wins into 503s, never into an unrecorded 200."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from support.buyers import buyers, check
from support.helpers import ROOT, create_sale, poll, stream_orders
from support.http_client import Conn
from support.redis_sentinel import NAME, SentinelGroup, started


@pytest.fixture
def group(tmp_path: Path):  # type: ignore[no-untyped-def]
    deployment = started(tmp_path / "sentinel")
    yield deployment
    deployment.stop()


def buy(port: int, user: str) -> tuple[int, dict[str, Any]]:
    with Conn(port) as conn:
        answer = conn.request(f"GET /seckill/hat?user={user} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    return answer.status, answer.json()


def test_the_server_follows_a_sentinel_failover(start_server, group: SentinelGroup) -> None:  # type: ignore[no-untyped-def]
    create_sale(group.master.client(), "hat", 100)
    server = start_server("--redis-timeout", "1", redis_url=group.url)
    assert buy(server.port, "ann")[0] == 200
    old = group.kill_master()
    new = group.wait_failover(old)
    status, body = poll(lambda: (r := buy(server.port, "bob"))[0] != 503 and r, "a purchase after the failover")
    assert status == 200, body
    orders = stream_orders(new.data(), "hat")
    assert [o["user"] for o in orders] == ["ann", "bob"] and int(new.client().hget("seckill:{hat}", "sold")) == 2
    group.rejoin(old)
    done = subprocess.run([sys.executable, str(ROOT / "seckill_server.py"), "status", "hat", "--redis", group.url],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and '"sold": 2' in done.stdout, done  # the admin CLI takes the same URL


def test_with_replica_acks_stalled_replicas_mean_503_never_an_unreplicated_200(  # type: ignore[no-untyped-def]
        start_server, group: SentinelGroup) -> None:
    create_sale(group.master.client(), "hat", 100)
    server = start_server("--replica-acks", "1", "--redis-timeout", "1", redis_url=group.url)
    server.wait_for(lambda lines: any("every win acknowledged by all" in line or "--replica-acks 1 of 2" in line
                                      for line in lines))
    assert buy(server.port, "ann")[0] == 200
    replicas = group.live_replicas()
    for replica in replicas:
        replica.pause()
    try:
        started_at = time.monotonic()
        answers = [buy(server.port, f"u{i}") for i in range(3)]
        took = time.monotonic() - started_at
    finally:
        for replica in replicas:
            replica.resume()
    assert [status for status, _ in answers] == [503] * 3, answers
    assert took < 3 * 1.5  # each within --redis-timeout (the WAIT's own timeout is half of it)
    assert poll(lambda: buy(server.port, "cat")[0] == 200, "wins once the replicas are back")
    # The 503s' wins may be recorded (outcome unknown), and the order lookup tells.
    assert "ann" in {o["user"] for o in stream_orders(group.master.data(), "hat")}


def test_the_start_up_line_says_what_a_failover_can_lose(start_server, group: SentinelGroup) -> None:  # type: ignore[no-untyped-def]
    for acks, expected in [(0, "--replica-acks 0: a failover can lose the last acknowledged wins"),
                           (1, "--replica-acks 1 of 2 replicas online"),
                           (2, "every win acknowledged by all 2 replicas"),
                           (3, "--replica-acks 3 but the master has 2 replicas online")]:
        server = start_server("--replica-acks", str(acks), "--redis-timeout", "1", redis_url=group.url)
        server.wait_for(lambda lines, expected=expected: any(expected in line for line in lines))
        server.stop()


@pytest.mark.parametrize("acks", [0, 1])
def test_a_manual_failover_is_followed_on_the_announcement_not_when_the_old_master_is_demoted(  # type: ignore[no-untyped-def]
        start_server, group: SentinelGroup, acks: int) -> None:
    """SENTINEL FAILOVER leaves the old master up and taking writes until Sentinel
    reconfigures it (seconds later); writes it takes meanwhile are dropped then. Each
    worker follows +switch-master at once, so wins after the announcement are the new
    master's."""
    create_sale(group.master.client(), "hat", 100)
    server = start_server("--replica-acks", str(acks), "--redis-timeout", "1", workers=2, redis_url=group.url)
    assert buy(server.port, "ann")[0] == 200
    old = group.master
    assert group.sentinels[0].client().execute_command("SENTINEL", "FAILOVER", NAME) in (True, "OK")
    new = group.wait_failover(old)
    server.wait_for(lambda lines: sum("switched from" in line for line in lines) == 2)
    answers = {f"u{i}": buy(server.port, f"u{i}") for i in range(10)}
    assert all(status == 200 for status, _ in answers.values()), answers
    recorded = {o["user"] for o in stream_orders(new.data(), "hat")}
    assert set(answers) <= recorded and "ann" in recorded, recorded


# --- Failover chaos -----------------------------------------------------------------------

STOCK = 3000  # smaller than the demand (~200 a second): it sells out during the run, after the faults
CONNECTIONS = 200  # each a stream of distinct buyers
PACE = 1.0  # seconds between one connection's purchases: ~200 a second in all
RETRY = 0.2  # a 503's outcome is unknown: the same buyer asks again after this
FAILOVERS = 3


def _run_failovers(server_port: int, group: SentinelGroup) -> tuple[list[tuple[str, int, dict[str, Any]]], list[float]]:
    """FAILOVERS kill -9s of the master under load, each old master restarted as a replica;
    then the load goes on until the sale is sold out. Returns every answer and, per
    failover, the time from the kill until the server answered anything but 503 again."""
    history: list[tuple[str, int, dict[str, Any]]] = []
    windows: list[float] = []

    def answered_after(seen: int, result: str | None = None) -> bool:
        return any(s != 503 if result is None else b.get("result") == result for _, s, b in history[seen:])

    async def run() -> None:
        going = asyncio.Event()
        going.set()
        load = asyncio.create_task(buyers(server_port, going, history, CONNECTIONS, PACE, RETRY))
        try:
            for _ in range(FAILOVERS):
                seen = len(history)
                await asyncio.to_thread(poll, lambda seen=seen: answered_after(seen, "won"), "wins under load", 30)
                old = group.kill_master()
                killed, seen = time.monotonic(), len(history)
                await asyncio.to_thread(group.wait_failover, old)
                await asyncio.to_thread(poll, lambda seen=seen: answered_after(seen), "an answer after the failover",
                                        30)
                windows.append(time.monotonic() - killed)
                await asyncio.to_thread(group.rejoin, old)
                await asyncio.to_thread(group.wait_ready)
            await asyncio.to_thread(poll, lambda: answered_after(len(history) - 20, "sold_out"),
                                    "the sale sold out", 60)
        finally:
            going.clear()
            await load

    asyncio.run(run())
    return history, windows


@pytest.mark.parametrize("acks", [1, 0])
def test_failovers_under_load_lose_no_acknowledged_win_with_replica_acks(start_server, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                        acks: int) -> None:
    group = started(tmp_path / "sentinel")
    try:
        create_sale(group.master.client(), "hat", STOCK, per_user=1)
        server = start_server("--replica-acks", str(acks), "--redis-timeout", "1", workers=2,
                              redis_url=group.url)
        try:
            history, windows = _run_failovers(server.port, group)
            group.wait_ready()
        except AssertionError:
            print("server log:", server.log[-3000:])
            for node in group.nodes:
                print(f"redis {node.port} ({'up' if node.process else 'down'}): {node.log_tail()}")
            raise
        figures = check(history, group.master.data())
        print(f"\nreplica-acks {acks}: {len(windows)} failovers, 503 windows "
              f"{', '.join(f'{w:.1f} s' for w in windows)} (and {group.unplanned_failovers} unasked); "
              f"{figures}; answers {Counter(s for _, s, _ in history)}")
        assert figures["duplicate seqs"] == 0 and figures["duplicate buyers"] == 0, figures
        assert figures["sold"] <= STOCK and figures["acknowledged"] > 0, figures
        assert figures["sold minus orders"] == 0, figures
        # Without acks a failover may lose wins: reported above, not asserted either way. With
        # them, a kill -9 loses none. A failover nobody asked for (a live master Sentinel took
        # for down: a stall past down-after-milliseconds) may, as a manual one may: the old
        # master acknowledges with a replica still attached until it is reconfigured (README:
        # Across a failover); the group follows it and the run reports what it lost.
        if acks and not group.unplanned_failovers:
            assert figures["lost"] == 0, figures
    finally:
        group.stop()


@pytest.mark.parametrize("url", [
    "redis+sentinel://127.0.0.1:26379",  # no master name
    "redis+sentinel://127.0.0.1:26379/bad name",
    "redis+sentinel://127.0.0.1/seckill",  # no port
    "redis+sentinel://127.0.0.1:26379/seckill?db=x",
])
def test_a_bad_sentinel_url_is_one_line_and_exit_2(url: str) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "seckill_server.py"), "--redis", url],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "redis+sentinel://" in done.stderr, done
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(("args", "message"), [
    (["--replica-acks", "17"], "--replica-acks"),
    (["--replica-ack-timeout", "0"], "--replica-ack-timeout"),
    (["--replica-ack-timeout", "2", "--redis-timeout", "1"], "must be below --redis-timeout"),
])
def test_replica_ack_settings_that_cannot_work_are_refused(args: list[str], message: str) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "seckill_server.py"), *args],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and message in done.stderr, done
