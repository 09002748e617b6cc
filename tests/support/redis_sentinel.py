"""A real Redis Sentinel deployment for the tests: one master, replicas and Sentinels, all
the bundled `redis-server` (a Sentinel is `redis-server CONF --sentinel`), on free
loopback ports under a temporary directory.

`start()` returns once the master has every replica online and every Sentinel knows the
master, every replica and every other Sentinel (Redis's own state, polled with a bound).
`kill_master()` is a crash (kill -9); `wait_failover()` waits until every Sentinel names a
new master and that node says it is one; `rejoin()` restarts a killed node as a replica of
the current master. Every wait is a bounded poll on a condition.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import redis

from seckill.store.embedded import find_redis_server, free_port, ping
from support.helpers import poll

NAME = "seckill"
# A master silent this long is down (Sentinel's down-after-milliseconds). Sentinel PINGs once
# a second: at 1000 one late reply on a busy 2-core machine failed over a live master.
DOWN_AFTER_MS = 3000
FAILOVER_TIMEOUT_MS = 4000


class Node:
    """One redis-server child process (a data node or a Sentinel)."""

    def __init__(self, binary: str, data_dir: Path, args: list[str], port: int | None = None) -> None:
        self.binary = binary
        self.data_dir = data_dir
        self.args = args
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, extra: list[str] | None = None, timeout: float = 10.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [self.binary, *self.args, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.data_dir), "--daemonize", "no",
                "--logfile", str(self.data_dir / "redis.log"), *(extra or [])]
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        start_new_session=True)
        poll(lambda: self.process is not None and (self.process.poll() is not None
                                                     or ping("127.0.0.1", self.port).startswith(b"+PONG")),
             f"redis-server on {self.port}", timeout)
        if self.process.poll() is not None:
            raise RuntimeError(f"redis-server on {self.port} exited: {self.log_tail()}")

    def client(self) -> redis.Redis:
        """Strings out (Sentinel and INFO replies)."""
        return redis.Redis(port=self.port, socket_timeout=5, decode_responses=True)

    def data(self) -> redis.Redis:
        """Bytes out, as the helpers that read sales and streams expect."""
        return redis.Redis(port=self.port, socket_timeout=5)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def pause(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def log_tail(self) -> str:
        try:
            return " | ".join((self.data_dir / "redis.log").read_text(errors="replace").splitlines()[-3:])
        except OSError:
            return ""


class SentinelGroup:
    def __init__(self, root: Path, replicas: int = 2, sentinels: int = 3) -> None:
        binary = find_redis_server()
        if binary is None:
            raise RuntimeError("no redis-server")
        self.binary = binary
        self.root = root
        data_args = ["--appendonly", "no", "--save", ""]
        self.nodes = [Node(binary, root / f"node{i}", data_args) for i in range(1 + replicas)]
        self.sentinels = [Node(binary, root / f"sentinel{i}", []) for i in range(sentinels)]
        self.master = self.nodes[0]
        self.unplanned_failovers = 0  # followed by wait_ready, counted for the test's report

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{NAME}"

    def start(self) -> SentinelGroup:
        self.master.start()
        for node in self.nodes[1:]:
            node.start(["--replicaof", "127.0.0.1", str(self.master.port)])
        for sentinel in self.sentinels:
            conf = sentinel.data_dir / "sentinel.conf"
            sentinel.data_dir.mkdir(parents=True, exist_ok=True)
            conf.write_text(
                f"sentinel monitor {NAME} 127.0.0.1 {self.master.port} {len(self.sentinels) // 2 + 1}\n"
                f"sentinel down-after-milliseconds {NAME} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {NAME} {FAILOVER_TIMEOUT_MS}\n"
                f"sentinel parallel-syncs {NAME} 1\n")
            sentinel.args = [str(conf), "--sentinel"]
            sentinel.start()
        self.wait_ready()
        return self

    def stop(self) -> None:
        for node in [*self.sentinels, *self.nodes]:
            node.stop()

    def live_replicas(self) -> list[Node]:
        return [n for n in self.nodes if n is not self.master and n.process is not None]

    def wait_ready(self, timeout: float = 30.0) -> None:
        """The master Sentinel names has every live replica online; every Sentinel knows them
        all. A failover nobody asked for (a master starved past down-after-milliseconds on a
        busy machine) is followed, not waited out; the timeout names what was missing."""
        missing = ["nothing asked yet"]

        def ready() -> bool:
            try:
                self._follow_named_master()
                replicas = len(self.live_replicas())
                info = self.master.client().info("replication")
                if info.get("role") != "master":
                    missing[0] = f"{self.master.port} is {info.get('role')}"
                    return False
                online = sum(info.get(f"slave{i}", {}).get("state") == "online" for i in range(replicas))
                if online != replicas:
                    missing[0] = f"{online} of {replicas} replicas online at {self.master.port}"
                    return False
                for sentinel in self.sentinels:
                    state = sentinel.client().sentinel_master(NAME)
                    known = [r for r in sentinel.client().sentinel_slaves(NAME)
                             if "s_down" not in r["flags"] and "disconnected" not in r["flags"]]
                    if (state["port"] != self.master.port or len(known) < replicas
                            or state["num-other-sentinels"] != len(self.sentinels) - 1
                            or "s_down" in state["flags"] or "o_down" in state["flags"]):
                        missing[0] = (f"sentinel {sentinel.port}: master {state['port']} {state['flags']}, "
                                      f"{len(known)} replicas up, {state['num-other-sentinels']} other sentinels")
                        return False
                return True
            except (redis.RedisError, KeyError, OSError) as error:
                missing[0] = repr(error)
                return False

        try:
            poll(ready, "the Sentinel group ready", timeout, every=0.05)
        except AssertionError as error:
            raise AssertionError(f"{error}: {missing[0]}") from None

    def _follow_named_master(self) -> None:
        port = self.named_master()
        if port is not None and port != self.master.port:
            node = next((n for n in self.nodes if n.port == port and n.process is not None), None)
            if node is not None and node.client().info("replication").get("role") == "master":
                self.unplanned_failovers += 1
                self.master = node

    def named_master(self) -> int | None:
        """The master's port if every Sentinel names the same one, else None."""
        ports = set()
        for sentinel in self.sentinels:
            try:
                address = sentinel.client().sentinel_get_master_addr_by_name(NAME)
            except (redis.RedisError, OSError):
                return None
            ports.add(int(address[1]) if address else None)
        return ports.pop() if len(ports) == 1 else None

    def kill_master(self) -> Node:
        old = self.master
        old.kill()
        return old

    def wait_failover(self, old: Node, timeout: float = 30.0) -> Node:
        """Every Sentinel names a master other than `old`, and that node says it is one."""
        def promoted() -> Node | None:
            port = self.named_master()
            if port is None or port == old.port:
                return None
            node = next(n for n in self.nodes if n.port == port)
            try:
                return node if node.client().info("replication").get("role") == "master" else None
            except (redis.RedisError, OSError):
                return None

        self.master = poll(promoted, "a failover", timeout, every=0.05)
        return self.master

    def rejoin(self, node: Node) -> None:
        """Start a killed node again, as a replica of the current master."""
        node.start(["--replicaof", "127.0.0.1", str(self.master.port)])

    def wait(self, what: str, condition, timeout: float = 30.0):  # type: ignore[no-untyped-def]
        return poll(condition, what, timeout, every=0.05)


def started(root: Path, replicas: int = 2) -> SentinelGroup:
    group = SentinelGroup(root, replicas=replicas)
    try:
        return group.start()
    except BaseException:
        group.stop()
        raise
