"""bench/storm.py: the sale-start storm. Everyone is connected and waiting; the sale opens.

    .venv/bin/python bench/storm.py                          # 1,000 and 10,000 connections, 3 storms each
    .venv/bin/python bench/storm.py --connections 1000 --repeat 1   # a smoke run
    .venv/bin/python bench/run.py                            # also a section of `make bench`
                                                             # (--skip storm leaves it out)

For each contender and each C in --connections: C keep-alive connections are opened and
left idle (the buyers waiting on the sale's page); then, at T0, every one sends one
purchase, a distinct buyer each, on a fresh sale whose stock is C / 10, so it sells out
during the storm. Reported per point (the median of --repeat storms): the time from T0
until every answer is in, p50/p99 latency from T0, whether the winners the client counted
and the sale's `sold` in Redis both equal the stock, the Redis calls made (EVALSHA during
the storm), the client's own CPU time, and the contender's resident memory per idle
connection (RSS with all C open, less before, over C; the first storm).

Contenders, each pinned as bench/run.py's rows (contender CPU 0; client and Redis CPU 1):
  seckill   this server, 1 worker;
  seckill2  this server, 2 workers (pinned to both CPUs: it shares CPU 1 with the client);
  gateway   the OpenResty-style gateway of bench/openresty/ (a script call per purchase,
            a shared-dict gate once sold out);
  nginx     nginx `return 200`: the floor, what answering C requests costs at all.

The client is bench/storm_client.c (built here with the system's cc into bench/out/): one
thread on epoll, so that it costs far less per request than any contender; its CPU share
of the storm's time is printed so a reader can check it was not the limit.

Exit status 0 when measured, 2 when it could not run (no cc; a contender that did not start).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import redis
from cpuwatch import _children_of
from report import Storm, StormRow, StormRun, storm_table
from services import (
    BENCH_DIR,
    DEBIAN_NGINX,
    StartError,
    bench_redis,
    counts,
    create_sale,
    fresh_log_dir,
    gateway_missing,
    gateway_sale,
    install_tools,
    nginx_ceiling,
    openresty_gateway,
    seckill_server,
    stop_on_sigterm,
    taskset,
    unpinned_without_taskset,
)

CLIENT_SOURCE = BENCH_DIR / "storm_client.c"
CLIENT_BINARY = BENCH_DIR / "out" / "storm_client"
STORM_TIMEOUT = 30.0  # seconds after T0 before a storm's unanswered requests are given up
ACCEPT_TIMEOUT = 30.0  # seconds for a contender to accept every connection the client opened
STOCK_SHARE = 10  # stock = connections / STOCK_SHARE: it sells out during the storm

CONTENDERS = {
    "seckill": "seckill, 1 worker",
    "seckill2": "seckill, 2 workers",
    "gateway": "OpenResty-style gateway",
    "nginx": "nginx `return 200` (the floor)",
}


@dataclasses.dataclass
class Options:
    connections: tuple[int, ...] = (1000, 10000)
    repeat: int = 3
    nginx: str = shutil.which("nginx") or DEBIAN_NGINX


def build_client() -> str | None:
    """Compile the client if its binary is older than its source; why not, or None."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return "no C compiler (apt-get install gcc) for bench/storm_client.c"
    if CLIENT_BINARY.exists() and CLIENT_BINARY.stat().st_mtime >= CLIENT_SOURCE.stat().st_mtime:
        return None
    CLIENT_BINARY.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([cc, "-O2", "-o", str(CLIENT_BINARY), str(CLIENT_SOURCE)], capture_output=True, text=True)
    return None if done.returncode == 0 else f"cc bench/storm_client.c failed: {done.stderr.strip()[-300:]}"


def _tree(pid: int) -> list[int]:
    children, out, stack = _children_of(), [], [pid]
    while stack:
        current = stack.pop()
        out.append(current)
        stack.extend(children.get(current, []))
    return out


def tree_rss_kb(pid: int) -> int:
    """Resident memory of pid and its descendants, KB (VmRSS)."""
    total = 0
    for current in _tree(pid):
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def tree_sockets(pid: int) -> int:
    """Sockets held by pid and its descendants (their /proc/PID/fd links)."""
    count = 0
    for current in _tree(pid):
        try:
            fds = os.scandir(f"/proc/{current}/fd")
        except OSError:
            continue
        with fds:
            for fd in fds:
                try:
                    count += os.readlink(fd.path).startswith("socket:")
                except OSError:
                    pass
    return count


def wait_accepted(pid: int, before: int, established: int, timeout: float = ACCEPT_TIMEOUT) -> None:
    """Until the contender holds a socket for each established connection: the client's
    "ready" means the kernel finished the handshakes, not that the contender accepted them
    (they may still be in its listen queue, costing it nothing yet)."""
    deadline = time.monotonic() + timeout
    while tree_sockets(pid) - before < established:
        if time.monotonic() > deadline:
            raise StartError(f"the contender accepted {tree_sockets(pid) - before} of {established} "
                             f"connections in {timeout:g} s")
        time.sleep(0.05)  # a bounded poll: nothing tells us when the last accept() ran


def evalsha_calls(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


def storm(port: int, connections: int, path: str, client_cpus: str | None, pid: int,
          measure_rss: bool) -> tuple[dict[str, object], float | None]:
    """One storm: connect, (RSS), go, the client's report; and the RSS growth per connection."""
    before, sockets = tree_rss_kb(pid), tree_sockets(pid) if measure_rss else 0
    argv = taskset([str(CLIENT_BINARY), str(port), str(connections), path, str(STORM_TIMEOUT)], client_cpus)
    client = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdin is not None and client.stdout is not None
        ready = client.stdout.readline().split()  # blocks until every connection is open
        if not ready or ready[0] != "ready":
            raise StartError(f"storm client: {' '.join(ready) or 'exited'}")
        established = int(ready[1])
        if established < connections:
            raise StartError(f"storm client: {established} of {connections} connections established")
        rss = None
        if measure_rss:
            wait_accepted(pid, sockets, established)
            rss = (tree_rss_kb(pid) - before) / established
        client.stdin.write("go\n")
        client.stdin.flush()
        report = json.loads(client.stdout.readline())
        client.wait(timeout=STORM_TIMEOUT)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    return report, rss


def measure(redis_url: str, log_dir: Path, work_dir: Path, options: Options, *, server_cpus: str | None,
            client_cpus: str | None, wait_quiet: Callable[[], None],
            record: Callable[[str, str], None] = lambda label, line: None,
            note: Callable[[str], None] = print) -> Storm:
    found = Storm(options.repeat, client="bench/storm_client.c (C, one thread, epoll), "
                  f"pinned to CPU {client_cpus or 'any'}")
    why = build_client()
    if why:
        found.skipped = why
        return found
    largest = max(options.connections)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Each process holds its own: the client and our server one socket per connection, the
    # gateway two (its Redis socket per request in flight), within the same limit as nginx's cap.
    if soft != resource.RLIM_INFINITY and soft < largest + 256:
        found.skipped = f"RLIMIT_NOFILE {soft} is too low for {largest:,} connections (run from bench/run.py)"
        return found
    client = redis.Redis.from_url(redis_url)
    gateway_why = gateway_missing() if os.access(options.nginx, os.X_OK) else f"nginx not found at {options.nginx}"
    nginx_why = None if os.access(options.nginx, os.X_OK) else f"nginx not found at {options.nginx}"
    both_cpus = ",".join(sorted({c for c in (server_cpus or "", client_cpus or "") if c})) or None
    # Our default --max-connections (10,000) with room for the bench's own; and nginx's
    # keep-alive timeout (75 s, as the gateway's): buyers wait on the page longer than our 5 s.
    limits = ["--max-connections", str(largest + 64), "--keepalive-timeout", "75"]

    def contender(name: str) -> AbstractContextManager[tuple[object, int]]:
        if name == "seckill":
            return seckill_server(redis_url, log_dir, server_cpus, limits, log_name="seckill-storm.log")
        if name == "seckill2":
            return seckill_server(redis_url, log_dir, both_cpus, [*limits, "--workers", "2"],
                                  log_name="seckill-storm-2.log")
        if name == "gateway":
            return openresty_gateway(options.nginx, redis_url, work_dir / "storm-gateway", log_dir, server_cpus,
                                     largest)
        return nginx_ceiling(options.nginx, work_dir / "storm-nginx", log_dir, server_cpus, largest)

    for name, what in CONTENDERS.items():
        skip = gateway_why if name == "gateway" else nginx_why if name == "nginx" else None
        if skip:
            for connections in options.connections:
                found.rows.append(StormRow(name, what, connections, connections // STOCK_SHARE, skipped=skip))
            continue
        for connections in options.connections:
            # Started afresh for each size: its first storm's RSS is then a fresh process's,
            # not one that holds (or frees) what the smaller storm left.
            with contender(name) as (service, port):
                if connections == options.connections[0]:
                    record(f"storm: {what}", service.command)  # type: ignore[attr-defined]
                pid = service.pid  # type: ignore[attr-defined]  # (RSS: this process and its children)
                row = StormRow(name, what, connections, connections // STOCK_SHARE)
                found.rows.append(row)
                for index in range(options.repeat):
                    item = f"storm-{name}-{connections}-{index}-{int(time.time() * 1000) % 10**8}"
                    if name == "gateway":
                        gateway_sale(redis_url, item, row.stock)
                    elif name != "nginx":
                        create_sale(redis_url, item, row.stock)
                    wait_quiet()
                    calls = evalsha_calls(client)
                    report, rss = storm(port, connections, f"/seckill/{item}?user=storm{index}-", client_cpus, pid,
                                        measure_rss=index == 0)
                    if rss is not None:
                        row.rss_per_connection_kb = rss
                    statuses = {str(k): int(v) for k, v in report["statuses"].items()}  # type: ignore[attr-defined]
                    sold = (int(client.hget(f"gw:{{{item}}}" if name == "gateway" else sale_key(item), "sold") or 0)
                            if name != "nginx" else 0)
                    won = statuses.get("200", 0) if name != "nginx" else 0  # the floor sells nothing
                    run = StormRun(float(report["all_in_ms"]), float(report["p50_ms"]),  # type: ignore[arg-type]
                                   float(report["p99_ms"]), float(report["send_ms"]),  # type: ignore[arg-type]
                                   int(report["answered"]),  # type: ignore[call-overload]
                                   connections - int(report["answered"]),  # type: ignore[call-overload]
                                   won, sold, evalsha_calls(client) - calls,
                                   float(report["client_cpu_ms"]), statuses)  # type: ignore[arg-type]
                    row.runs.append(run)
                    print(f"    {name:9} {connections:6,} connections: all in {run.all_in_ms:7.1f} ms, "
                          f"p50 {run.p50_ms:6.1f}, p99 {run.p99_ms:6.1f}, won {run.won}/{row.stock} (sold "
                          f"{run.sold}), statuses {statuses}, unanswered {run.unanswered}, "
                          f"Redis calls {run.redis_calls}, client CPU "
                          f"{run.client_cpu_ms:.0f} ms" + (f", RSS {rss:.2f} KB/connection" if rss is not None
                                                           else ""), flush=True)
                if row.runs and not row.exact and name != "nginx":
                    note(f"storm: {what} at {connections:,}: winners or answers not exact "
                         f"({[(r.won, r.sold, r.unanswered) for r in row.runs]})")
    return found


def sale_key(item: str) -> str:
    from seckill.sales.sale_store import sale_key as key

    return str(key(item))


@contextmanager
def _raised_fd_limit(connections: int) -> Iterator[None]:
    from runner import raise_fd_limit

    raise_fd_limit(connections)
    yield


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    d = Options()
    parser = argparse.ArgumentParser(prog="bench/storm.py", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--connections", default=",".join(str(c) for c in d.connections), metavar="LIST",
                        help="storm sizes, comma-separated")
    parser.add_argument("--repeat", type=int, default=d.repeat, help="storms per point, the median reported")
    parser.add_argument("--nginx", default=d.nginx, help="nginx binary (the floor and the gateway)")
    parser.add_argument("--server-cpus", default="0", metavar="LIST", help="taskset list for the contenders")
    parser.add_argument("--client-cpus", default="1", metavar="LIST", help="taskset list for the client")
    parser.add_argument("--redis-cpus", default="1", metavar="LIST", help="CPUs for Redis's threads")
    args = parser.parse_args(argv)
    args.connections = counts(parser, "--connections", args.connections)
    if args.repeat < 1:
        parser.error("--repeat must be positive")
    unpinned_without_taskset(args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_sigterm()
    install_tools(args.nginx)  # (nginx for the floor; gateway_missing adds the gateway's modules)
    log_dir = fresh_log_dir("storm")
    started = time.monotonic()
    try:
        with _raised_fd_limit(max(args.connections)), \
                tempfile.TemporaryDirectory(prefix="seckill-storm-") as tmp, \
                bench_redis(Path(tmp) / "redis", args.redis_cpus or None) as store:
            found = measure(store.url, log_dir, Path(tmp), Options(args.connections, args.repeat, args.nginx),
                            server_cpus=args.server_cpus or None, client_cpus=args.client_cpus or None,
                            wait_quiet=lambda: None)
    except (StartError, subprocess.TimeoutExpired) as exc:
        print(f"storm: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: everything started was stopped", file=sys.stderr)
        return 130
    if found.skipped:
        print(f"storm: not measured: {found.skipped}", file=sys.stderr)
        return 2
    print("\n" + storm_table(found))
    print(f"logs: {log_dir}; done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
