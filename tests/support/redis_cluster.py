"""A real Redis Cluster for the tests: three masters from the bundled `redis-server`, on
free loopback ports under a temporary directory; optionally a replica per master, which the
cluster promotes when its master dies (`kill_master`, `wait_failover`).

Slots are split in three with CLUSTER ADDSLOTS (Redis 6.2 has no ADDSLOTSRANGE), the nodes
are introduced with CLUSTER MEET, and `start()` returns once every node says
cluster_state:ok and all of them report the same slot table. `migrate_slot()` moves a
slot from its master to another one the way redis-cli --cluster reshard does (SETSLOT
IMPORTING / MIGRATING, MIGRATE the keys, SETSLOT NODE), in two halves so a test can act
while the slot is half moved. Every wait is a bounded poll on a condition.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import redis
from redis.crc import key_slot

from seckill.store.embedded import find_redis_server, ping
from support.helpers import poll

SLOTS = 16384
BUS_OFFSET = 10_000  # Redis 6.2 always puts the cluster bus on port + 10000


class ClusterStartError(Exception):
    pass


def _free_cluster_port() -> int:
    """A free port whose bus port (port + 10000) is free too and below 65536."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port + BUS_OFFSET > 65535:
            continue
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + BUS_OFFSET))
        except OSError:
            continue
        return port
    raise ClusterStartError("no free pair of ports (port, port + 10000)")


class Node:
    """One cluster-enabled redis-server child process."""

    def __init__(self, binary: str, data_dir: Path, node_timeout_ms: int = 5000) -> None:
        self.binary = binary
        self.data_dir = data_dir
        self.node_timeout_ms = node_timeout_ms
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.client: redis.Redis | None = None
        self.node_id = ""

    def start(self, timeout: float = 10.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # another process may take the port before Redis binds it
            self.port = _free_cluster_port()
            process = self._spawn()
            deadline = time.monotonic() + timeout
            while process.poll() is None and time.monotonic() < deadline:
                if ping("127.0.0.1", self.port).startswith(b"+PONG"):
                    self.process = process
                    self.client = redis.Redis(port=self.port, socket_timeout=10)
                    self.node_id = self.client.execute_command("CLUSTER MYID").decode()
                    return
                time.sleep(0.02)  # start-up: Redis gives no other signal to wait on
            process.kill()
            process.wait()
        raise ClusterStartError(f"cluster node did not start; see {self.data_dir}")

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
             "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{self.port}.conf",
             "--cluster-node-timeout", str(self.node_timeout_ms), "--appendonly", "no", "--save", "",
             "--daemonize", "no", "--logfile", str(self.data_dir / f"redis-{self.port}.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)

    def restart(self, timeout: float = 10.0) -> None:
        """Start a killed node again on its port with its nodes.conf: it rejoins the cluster
        (a former master as a replica of the one promoted in its place)."""
        self.process = self._spawn()
        poll(lambda: ping("127.0.0.1", self.port).startswith(b"+PONG"), f"node {self.port} back", timeout)

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()  # nothing to keep: no persistence
            process.wait()

    def __repr__(self) -> str:
        return f"Node(127.0.0.1:{self.port})"


class RedisCluster:
    """Three masters on loopback (`nodes`, by index), each with `replicas` replicas
    (`replicas_of[index]`); `url` is the server's --redis for them."""

    def __init__(self, data_dir: Path, masters: int = 3, binary: str | None = None, replicas: int = 0,
                 node_timeout_ms: int = 5000) -> None:
        self.binary = binary or find_redis_server()
        self.data_dir = data_dir
        self.nodes: list[Node] = []
        self.masters = masters
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.replicas_of: list[list[Node]] = []
        self.dead: list[Node] = []

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self, timeout: float = 30.0) -> None:
        if self.binary is None:
            raise ClusterStartError("no redis-server binary")
        try:
            for i in range(self.masters):
                node = Node(self.binary, self.data_dir / f"node{i}", self.node_timeout_ms)
                self.nodes.append(node)
                node.start()
            per = SLOTS // self.masters
            for i, node in enumerate(self.nodes):
                last = SLOTS if i == self.masters - 1 else (i + 1) * per
                assert node.client is not None
                node.client.execute_command("CLUSTER ADDSLOTS", *range(i * per, last))
            first = self.client(0)
            for node in self.nodes[1:]:
                first.execute_command("CLUSTER MEET", "127.0.0.1", node.port)
            self.wait_agreed(timeout)
            if self.replicas:
                self._add_replicas(timeout)
        except BaseException:
            self.stop()
            raise

    def _add_replicas(self, timeout: float) -> None:
        assert self.binary is not None
        for i in range(len(self.nodes)):
            mine = [Node(self.binary, self.data_dir / f"node{i}r{r}", self.node_timeout_ms)
                    for r in range(self.replicas)]
            self.replicas_of.append(mine)
            for replica in mine:
                replica.start()
                self.client(0).execute_command("CLUSTER MEET", "127.0.0.1", replica.port)
        total = len(self.all_nodes())
        poll(lambda: all(_known(n) == total for n in self.all_nodes()), "every node to know every other", timeout,
             every=0.02)
        for master, mine in zip(self.nodes, self.replicas_of, strict=True):
            for replica in mine:
                assert replica.client is not None
                replica.client.execute_command("CLUSTER REPLICATE", master.node_id)
        poll(self._replicas_online, "every replica online with its master", timeout, every=0.02)
        self.wait_agreed(timeout)

    def _replicas_online(self) -> bool:
        for master, mine in zip(self.nodes, self.replicas_of, strict=True):
            info = self.client(self.nodes.index(master)).info("replication")
            if info.get("connected_slaves", 0) != len(mine) or any(
                    info[f"slave{r}"]["state"] != "online" for r in range(len(mine))):
                return False
        return True

    def all_nodes(self) -> list[Node]:
        return [*self.nodes, *(r for mine in self.replicas_of for r in mine)]

    def kill_master(self, index: int) -> Node:
        """kill -9 master `index` (it has a replica): the cluster will promote one."""
        node = self.nodes[index]
        assert self.replicas_of and self.replicas_of[index], "a master without a replica"
        if node.process is not None:
            node.process.kill()
            node.process.wait()
            node.process = None
        self.dead.append(node)
        return node

    def wait_failover(self, index: int, timeout: float = 30.0) -> Node:
        """Until a replica of dead master `index` is a master every live node agrees on,
        with the cluster ok; then it is `nodes[index]`."""
        dead = self.nodes[index]

        def promoted() -> Node | None:
            for replica in self.replicas_of[index]:
                assert replica.client is not None
                try:
                    if replica.client.info("replication").get("role") != "master":
                        continue
                    for node in self.all_nodes():
                        if node is dead or node.client is None or node.process is None:
                            continue
                        info = node.client.execute_command("CLUSTER INFO")
                        if info.get("cluster_state") != "ok":
                            return None
                        owners = set(self.slot_owners_of(node).values())
                        if dead.node_id in owners or replica.node_id not in owners:
                            return None
                    return replica
                except (redis.RedisError, OSError):
                    return None
            return None

        replica = poll(promoted, "a replica promoted by the cluster", timeout, every=0.05)
        self.replicas_of[index].remove(replica)
        self.nodes[index] = replica
        return replica

    def rejoin(self, index: int, node: Node) -> None:
        """Restart dead `node` as a replica of master `index` (the one promoted in its place)
        and wait until that master has it online."""
        node.restart()
        self.dead.remove(node)
        self.replicas_of[index].append(node)
        poll(self._replicas_online, "the old master back as a replica", 30, every=0.05)

    def slot_owners_of(self, node: Node) -> dict[int, str]:
        assert node.client is not None
        owners: dict[int, str] = {}
        for first, last, master, *_ in node.client.execute_command("CLUSTER SLOTS"):
            owners.update(dict.fromkeys(range(int(first), int(last) + 1), master[2].decode()))
        return owners

    def stop(self) -> None:
        for node in [*self.all_nodes(), *self.dead]:
            node.stop()

    def client(self, index: int) -> redis.Redis:
        client = self.nodes[index].client
        assert client is not None
        return client

    def slot_owners(self, index: int) -> dict[int, str]:
        """Slot -> master node id, as node `index` sees it."""
        owners: dict[int, str] = {}
        for first, last, master, *_ in self.client(index).execute_command("CLUSTER SLOTS"):
            owners.update(dict.fromkeys(range(int(first), int(last) + 1), master[2].decode()))
        return owners

    def _agreed(self) -> bool:
        known = len(self.all_nodes()) + len(self.dead)
        for node in self.all_nodes():
            assert node.client is not None
            info = node.client.execute_command("CLUSTER INFO")  # (parsed into a dict)
            if info.get("cluster_state") != "ok" or int(info.get("cluster_known_nodes", 0)) != known:
                return False
        tables = [self.slot_owners_of(node) for node in self.all_nodes()]
        return len(tables[0]) == SLOTS and all(t == tables[0] for t in tables[1:])

    def wait_agreed(self, timeout: float = 30.0) -> None:
        """Until every node is ok, knows every other and reports the same slot table."""
        poll(self._agreed, "the cluster nodes to agree on one slot table", timeout, every=0.02)

    def index_of(self, node_id: str) -> int:
        return next(i for i, n in enumerate(self.nodes) if n.node_id == node_id)

    def owner(self, key: str) -> int:
        """The index of the master that holds `key`'s slot (as node 0 sees it)."""
        return self.index_of(self.slot_owners(0)[keyslot(key)])

    def flush(self) -> None:
        for i in range(len(self.nodes)):
            self.client(i).flushall()
        self.flush_scripts()

    def flush_scripts(self) -> None:
        for i in range(len(self.nodes)):
            self.client(i).script_flush()

    # --- resharding, as redis-cli --cluster reshard does it ----------------------

    def begin_migration(self, slot: int, target: int) -> int:
        """Mark `slot` as moving from its master to node `target` (IMPORTING on the
        target, MIGRATING on the source); the source's index. Nothing is moved yet."""
        source = self.index_of(self.slot_owners(target)[slot])
        assert source != target, "the slot is already on the target"
        dst, src = self.nodes[target], self.nodes[source]
        self.client(target).execute_command("CLUSTER SETSLOT", slot, "IMPORTING", src.node_id)
        self.client(source).execute_command("CLUSTER SETSLOT", slot, "MIGRATING", dst.node_id)
        return source

    def finish_migration(self, slot: int, source: int, target: int) -> int:
        """MIGRATE every key of the slot to the target, then give it the slot (target
        first, then the source, then the rest) and wait until all nodes agree. The keys moved."""
        src, dst = self.client(source), self.nodes[target]
        moved = 0
        while keys := src.execute_command("CLUSTER GETKEYSINSLOT", slot, 100):
            src.execute_command("MIGRATE", "127.0.0.1", dst.port, "", 0, 10_000, "KEYS", *keys)
            moved += len(keys)
        order = [target, source] + [i for i in range(len(self.nodes)) if i not in (source, target)]
        for i in order:
            self.client(i).execute_command("CLUSTER SETSLOT", slot, "NODE", dst.node_id)
        self.wait_agreed()
        return moved

    def migrate_slot(self, slot: int, target: int) -> int:
        """Move `slot` and its keys to node `target`; the number of keys moved."""
        source = self.begin_migration(slot, target)
        return self.finish_migration(slot, source, target)


def _known(node: Node) -> int:
    assert node.client is not None
    return int(node.client.execute_command("CLUSTER INFO").get("cluster_known_nodes", 0))


def keyslot(key: str) -> int:
    return int(key_slot(key.encode()))
