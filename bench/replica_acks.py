"""bench/replica_acks.py: what --replica-acks costs, and how WAIT meets batches in flight.

    .venv/bin/python bench/replica_acks.py                            # 3 rounds of 5 s a row (~1.5 min)
    .venv/bin/python bench/replica_acks.py --seconds 2 --rounds 1     # a smoke run
    .venv/bin/python bench/run.py                                     # also a section of `make bench`
                                                                      # (--skip replicas leaves it out)

Setup. The bench's redis-server (AOF everysec; alone, a fresh one) gains one replica (the
bundled redis-server, `--replicaof`, pinned with Redis) for this section only, and one-worker
servers, pinned alike, run at once on a sale of 10**12 units (every request wins, so every
batch needs its WAIT): --replica-acks 0, and 1 with 1, 2 and 4 (the default with acks)
batches in flight. Only the one being measured has load (wrk -t1 -c100, distinct users,
bench/users.lua); the order alternates per round. For each: req/s and its ratio to acks 0
in the same round (target >= 0.8 for the default), p99, requests per script call (the
server's own `seckill_batch_size` histogram) and WAITs a second (Redis's commandstats; the
time a WAIT blocks is not in Redis's own figures).

Why in flight matters: Redis runs one connection's commands in order, and a WAIT blocks
its connection until the replica answers; the next batch, already sent behind it, waits
in Redis's input buffer meanwhile. So batches on one connection do not overlap their
WAITs; what more batches in flight still buy is that the next is already at Redis, and
that the ones behind it fill while they wait (measured: 4 beat 2 in three of four runs).

Exit status 0 when measured, 2 when it could not run (no wrk; a server or replica that did
not start).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import loadgen
import redis
from loadgen import LoadError
from report import AckRow, ReplicaAcks, replica_table
from services import (
    Service,
    StartError,
    bench_redis,
    command_line,
    create_sale,
    fresh_log_dir,
    pin_threads,
    running,
    seckill_server,
    stop_on_sigterm,
    taskset,
    unpinned_without_taskset,
)

from seckill.store.embedded import find_redis_server, free_port

ITEM = "bench-replica-acks"
SYNC_TIMEOUT = 30.0  # seconds for the replica's first full sync


@dataclasses.dataclass
class Options:
    seconds: float = 5.0
    rounds: int = 3
    connections: int = 100


# name -> (what, extra flags); the first is the reference
CONFIGS: dict[str, tuple[str, list[str]]] = {
    "off": ("--replica-acks 0", []),
    "acks1_inflight1": ("--replica-acks 1, 1 batch in flight", ["--replica-acks", "1", "--max-in-flight", "1"]),
    "acks1_inflight2": ("--replica-acks 1, 2 in flight (as without acks)",
                        ["--replica-acks", "1", "--max-in-flight", "2"]),
    "acks1": ("--replica-acks 1, 4 in flight (the default with acks)", ["--replica-acks", "1"]),
}


def metric(text: str, name: str) -> float:
    return sum(float(m[1]) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def batch_counts(port: int) -> tuple[float, float]:
    """(script calls, requests in them) so far, from the server's own histogram."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return metric(text, "seckill_batch_size_count"), metric(text, "seckill_batch_size_sum")


@contextmanager
def replica_of(master_url: str, data: Path, log_dir: Path, cpus: str | None) -> Iterator[redis.Redis]:
    """One replica of the master at master_url, synced; detached and stopped on the way out."""
    binary = find_redis_server()
    if binary is None:
        raise StartError("no redis-server for the replica")
    master = redis.Redis.from_url(master_url)
    host, port = master.connection_pool.connection_kwargs["host"], master.connection_pool.connection_kwargs["port"]
    replica_port = free_port()
    data.mkdir(parents=True, exist_ok=True)
    service = Service("replica", [binary, "--port", str(replica_port), "--bind", "127.0.0.1", "--dir", str(data),
                                  "--save", "", "--appendonly", "no", "--replicaof", str(host), str(port)],
                      log_dir / "replica.log")
    with running(service):
        pin_threads(service.pid, cpus)
        client = redis.Redis(port=replica_port)
        deadline = time.monotonic() + SYNC_TIMEOUT
        while True:
            try:
                if client.info("replication").get("master_link_status") == "up":
                    break
            except redis.ConnectionError:
                pass
            if time.monotonic() > deadline or service.exited():
                raise StartError(f"the replica did not sync: {service.log_tail()}")
            time.sleep(0.05)  # start-up only: Redis has no event to await for its sync
        yield client


def measure(redis_url: str, log_dir: Path, options: Options, *, server_cpus: str | None,
            client_cpus: str | None, redis_cpus: str | None, wait_quiet: Callable[[], None],
            record: Callable[[str, str], None] = lambda label, line: None,
            note: Callable[[str], None] = print) -> ReplicaAcks:
    found = ReplicaAcks(options.seconds, options.rounds, options.connections)
    if not loadgen.available("wrk"):
        found.skipped = "wrk not found"
        return found
    create_sale(redis_url, ITEM, 10**12)
    master = redis.Redis.from_url(redis_url)
    with tempfile.TemporaryDirectory(prefix="seckill-replica-") as tmp, ExitStack() as stack:
        stack.enter_context(replica_of(redis_url, Path(tmp), log_dir, redis_cpus))
        servers = {}
        for name, (what, flags) in CONFIGS.items():
            servers[name] = stack.enter_context(seckill_server(
                redis_url, log_dir, server_cpus, flags, log_name=f"seckill-replica-{name}.log"))
            record(f"replica acks: {what}", servers[name][0].command)
            found.rows.append(AckRow(name, what))

        def command(name: str, seconds: float) -> list[str]:
            url = f"http://127.0.0.1:{servers[name][1]}/seckill/{ITEM}"
            return taskset(loadgen.wrk_command(url, threads=1, connections=options.connections,
                                               duration=seconds, users=True), client_cpus)

        for name in servers:  # warm-up
            loadgen.run_wrk(command(name, 1.0), 1.0)
        record("replica acks: load", command_line(command("off", options.seconds)))
        names = list(servers)
        for index in range(options.rounds):
            print(f"  round {index + 1}/{options.rounds}")
            for name in names if index % 2 == 0 else names[::-1]:
                wait_quiet()
                port = servers[name][1]
                calls, requests = batch_counts(port)
                waits = master.info("commandstats").get("cmdstat_wait", {}).get("calls", 0)
                result = loadgen.run_wrk(command(name, options.seconds), options.seconds)
                calls_after, requests_after = batch_counts(port)
                waits_after = master.info("commandstats").get("cmdstat_wait", {}).get("calls", 0)
                row = found.row(name)
                row.rps.append(result.rps)
                row.p99_ms.append(result.p99_ms or 0.0)
                row.batch.append((requests_after - requests) / (calls_after - calls) if calls_after > calls else 0.0)
                row.waits_per_s.append((waits_after - waits) / result.seconds if result.seconds else 0.0)
                row.non2xx += result.non2xx
                row.errors += result.errors
                print(f"    {name:16} {result.rps:10,.0f} req/s  batch {row.batch[-1]:5.1f}  "
                      f"{row.waits_per_s[-1]:7,.0f} WAITs/s")
    problems = [r.name for r in found.rows if r.non2xx or r.errors]
    if problems:
        note(f"replica acks: non-2xx answers or errors on {', '.join(problems)}")
    return found


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    d = Options()
    parser = argparse.ArgumentParser(prog="bench/replica_acks.py", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--seconds", type=float, default=d.seconds, help="each run")
    parser.add_argument("--rounds", type=int, default=d.rounds, help="rounds, the order alternating")
    parser.add_argument("--connections", type=int, default=d.connections, help="wrk -c")
    parser.add_argument("--server-cpus", default="0", metavar="LIST", help="taskset list for the servers")
    parser.add_argument("--client-cpus", default="1", metavar="LIST", help="taskset list for wrk")
    parser.add_argument("--redis-cpus", default="1", metavar="LIST", help="CPUs for the Redises' threads")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or min(args.rounds, args.connections) < 1:
        parser.error("--seconds, --rounds and --connections must be positive")
    unpinned_without_taskset(args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_sigterm()
    log_dir = fresh_log_dir("replicas")
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="seckill-replicas-redis-") as tmp, \
                bench_redis(Path(tmp) / "redis", args.redis_cpus or None) as store:
            found = measure(store.url, log_dir, Options(args.seconds, args.rounds, args.connections),
                            server_cpus=args.server_cpus or None, client_cpus=args.client_cpus or None,
                            redis_cpus=args.redis_cpus or None, wait_quiet=lambda: None)
    except (StartError, LoadError, subprocess.TimeoutExpired) as exc:
        print(f"replica acks: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: everything started was stopped", file=sys.stderr)
        return 130
    if found.skipped:
        print(f"replica acks: not measured: {found.skipped}", file=sys.stderr)
        return 2
    print("\n" + replica_table(found))
    print(f"server logs: {log_dir}; done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
