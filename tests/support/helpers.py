"""Helpers the tests share: waiting on a condition, tools that must exist in CI, sales and
orders straight in Redis, a Redis of a test's own (to kill, stop, restart), and the server
run as a subprocess the way a user runs it (ServerProcess)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from seckill.sales import order_book, sale_store
from seckill.store.embedded import EmbeddedRedis

ROOT = Path(__file__).resolve().parents[2]


IN_CI = os.environ.get("CI") == "true"


def poll(condition: Callable[[], Any], what: str, timeout: float = 10.0, every: float = 0.005) -> Any:
    """Wait, bounded, for a condition we cannot be told about; its first truthy value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(every)


def require_tool(name: str) -> str:
    """The path of an external tool; skip without it, but fail in CI where it must exist."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (Debian: apt-get install {_DEBIAN.get(name, name)})"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


_DEBIAN = {"ab": "apache2-utils", "wrk": "wrk", "nginx": "nginx"}


def create_sale(client: redis.Redis, item: str, stock: int, sold: int = 0, per_user: int = 0,
                starts_at: int | None = None, ends_at: int | None = None, hold_seconds: int = 0) -> None:
    """Create a sale with the same script the CLI uses (times in ms since the epoch)."""
    created = client.eval(sale_store.CREATE_LUA, 1, sale_store.sale_key(item), stock, sold, per_user,
                          "" if starts_at is None else starts_at, "" if ends_at is None else ends_at,
                          hold_seconds or "")
    client.sadd(sale_store.ITEMS_KEY, item)
    assert created == 1


def stream_events(client: redis.Redis, item: str) -> list[dict[str, Any]]:
    """Every record of the item's stream (order_book.records), oldest first."""
    return [record for entry_id, fields in client.xrange(sale_store.orders_key(item))
            for record in order_book.records(entry_id, fields)]


def stream_orders(client: redis.Redis, item: str) -> list[dict[str, Any]]:
    """Every win the item's stream records, oldest first."""
    return [record for record in stream_events(client, item) if record["event"] == "won"]


def admit(client: redis.Redis, item: str, batch_id: str, users: list[str]) -> list[Any]:
    """One admission script call, as the batcher makes it."""
    keys = sale_store.admit_keys(item, batch_id)
    return client.eval(sale_store.ADMIT_LUA, len(keys), *keys, batch_id, *users)  # type: ignore[no-any-return]


def kill_storm(url: str, every: float, duration: float) -> tuple[int, int]:
    """CLIENT KILL TYPE normal, sparing ourselves, every `every` s for `duration` s (in a
    thread beside the load): the rounds, and the connections killed."""
    killer = redis.Redis.from_url(url)
    rounds = killed = 0
    end = time.monotonic() + duration
    try:
        while time.monotonic() < end:
            killed += int(killer.client_kill_filter(_type="normal", skipme=True))
            rounds += 1
            time.sleep(every)  # the storm's schedule
    finally:
        killer.close()
    return rounds, killed


class OwnRedis(EmbeddedRedis):
    """A Redis of one test's own, to kill, stall or restart without disturbing the others."""

    @contextlib.contextmanager
    def stalled(self) -> Iterator[None]:
        """SIGSTOP Redis for the block (it keeps its sockets, answers nothing), then SIGCONT."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.process.pid, signal.SIGCONT)

    def restart(self, timeout: float = 10.0) -> None:
        """Start again on the same port and data (after kill() or stop())."""
        self._spawn(timeout)

    def kill(self) -> None:
        """Kill -9, as a crash would (tests)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None



class ServerProcess:
    """`seckill_server.py` as a child process, its log collected by a reader thread."""

    def __init__(self, args: list[str], workers: int, port: int) -> None:
        self.port = port
        self.workers = workers
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "seckill_server.py"), *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        with self.proc.stderr:
            for line in self.proc.stderr:
                with self._changed:
                    self.lines.append(line.rstrip("\n"))
                    self._changed.notify_all()
        with self._changed:
            self.lines.append("<exit>")
            self._changed.notify_all()

    def wait_for(self, predicate, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
        """Block until the log satisfies predicate(lines); fail if it does not in time."""
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(self.lines) or "<exit>" in self.lines,
                                          timeout):
                raise AssertionError("server log never showed the expected line:\n" + self.log)
            if not predicate(self.lines):
                raise AssertionError("server exited:\n" + self.log)

    def listening_count(self) -> int:
        return sum(" listening on " in line for line in self.lines)

    def wait_listening(self, count: int | None = None) -> None:
        want = self.workers if count is None else count
        self.wait_for(lambda lines: sum(" listening on " in x for x in lines) >= want)

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("server did not stop on SIGTERM:\n" + self.log) from None
        finally:
            self._reader.join(5)


def refuses_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return False
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        # Our SYN sat in the backlog of a listener closed just then: ask again.
        return False


def unread_bytes_at(port: int) -> int:
    """Bytes waiting unread in the receive queues of the connections to a local TCP port
    (/proc/net/tcp): with Redis stopped, a command a worker sent to it shows up here."""
    total = 0
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            rx_queue = int(fields[4].split(":")[1], 16)
            if local_port == port and fields[3] == "01":  # ESTABLISHED
                total += rx_queue
    return total
