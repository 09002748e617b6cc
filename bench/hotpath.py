"""The request path's own CPU per request, without sockets: an A/B tool for the Python.

wrk rows move ±30 % run to run on this shared machine, more than any one change to the
request path can show, and half of a request's CPU is the kernel's anyway. Here the
worker's real objects (SeckillApp, Batcher, OrderedPipe to a real Redis, HttpConnection)
serve fake client connections in this process: each round feeds one request to each of
C connections (as wrk's closed loop at -cC does), then waits until all are answered.
What is timed is this process's CPU (time.process_time) per request: the parser,
dispatch, the gate or the batcher and its Redis client, the answer's bytes. Not timed:
the client sockets' system calls and uvloop's reads (a fake transport), Redis itself
(another process, on the other CPU).

    .venv/bin/python bench/hotpath.py                      # this tree, every row
    .venv/bin/python bench/hotpath.py --ab /tmp/old        # A/B: old and new in turn, row by row

For --ab, `git worktree add /tmp/old <commit>` first. Each tree is measured by its own
child process (this file, run with that tree's `seckill` first on its path), pinned to
CPU 0; Redis (no persistence) is on CPU 1. The two take turns row by row, each a short
run, so that a pair sees the same machine (its speed drifts over seconds here); the
new/old figure is the median of the pairs' ratios (below 1: the new tree spends less),
the rows it does not change are the control.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ROWS = ("soldout-distinct", "soldout-one-url", "admission-distinct", "admission-one-url")
CONNECTIONS = 100


class CountingTransport:
    """What HttpConnection writes to: counts answers, keeps the last one's status line."""

    __slots__ = ("answered", "last", "done")

    def __init__(self, done: list[Any]) -> None:
        self.answered = 0
        self.last = b""
        self.done = done

    def write(self, data: bytes) -> None:
        self.answered += 1
        self.last = data
        box = self.done
        box[0] -= 1
        if not box[0] and box[1] is not None:
            box[1].set_result(None)

    def close(self) -> None:
        raise AssertionError("a bench connection was closed")

    abort = write_eof = close

    def pause_reading(self) -> None:
        pass

    resume_reading = pause_reading

    def set_write_buffer_limits(self, high: int) -> None:
        pass

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else None


class Bench:
    """The worker's objects serving fake connections, one sale per row (made by `start`)."""

    async def start(self, redis_url: str, rows: list[str]) -> None:
        from seckill.admission import batcher as batching
        from seckill.app.routes import SeckillApp
        from seckill.config import Config
        from seckill.http.connection import Clock, HttpConnection, Limits, Registry
        from seckill.ops import faults, metrics
        from seckill.sales import sale_store
        from seckill.store.client import make_pipe, make_redis
        from seckill.store.reads import ReadBatcher

        config = Config(redis=redis_url, demo=False)  # metrics on, as by default
        self.redis = redis = make_redis(redis_url, config.redis_timeout)
        stats = metrics.WorkerStats()
        errors = faults.Faults(stats.internal_errors)
        self.batcher = batching.Batcher(
            redis, make_pipe(redis), timeout=config.redis_timeout, gate_interval=config.gate_interval,
            max_batch=config.max_batch, max_waiting=config.max_waiting, max_in_flight=config.in_flight(),
            stats=stats, faults=errors)
        registry = Registry()
        self.reads = ReadBatcher(redis, make_pipe(redis), timeout=config.redis_timeout, faults=errors)
        app = SeckillApp(config, redis, self.batcher, self.reads, metrics.Board(None), stats, registry, errors)
        self.loop = asyncio.get_running_loop()
        clock = Clock(self.loop.time())
        limits = Limits(keepalive_requests=10**9)
        self.done: list[Any] = [0, None]
        self.conns = []
        for _ in range(CONNECTIONS):
            conn = HttpConnection(app, clock, registry, limits)
            conn.connection_made(CountingTransport(self.done))  # type: ignore[arg-type]
            self.conns.append(conn)
        self.n = 0
        self.paths = {}
        for row in rows:
            item = f"hp{row.replace('-', '')}{os.getpid()}"
            stock = 0 if row.startswith("soldout") else 10**12
            await sale_store.create_sale(redis, item, sale_store.Terms(stock=stock))
            self.paths[row] = b"/seckill/" + item.encode()
            for _ in range(20):  # warm-up: memos, the sold-out sale's gate, Redis's script cache
                await self.burst(row)

    async def burst(self, row: str) -> None:
        """One request on each connection (distinct buyers or one URL), until all are answered."""
        done = self.done
        done[0], done[1] = len(self.conns), self.loop.create_future()
        path = self.paths[row]
        distinct = row.endswith("distinct")
        n = self.n
        for conn in self.conns:
            n += 1
            query = b"?user=u%d" % n if distinct else b""
            conn.data_received(b"GET %s%s HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n" % (path, query))
        self.n = n
        if done[0]:
            await done[1]

    async def measure(self, row: str, requests: int) -> dict[str, Any]:
        """CPU and wall µs per request over `requests` requests of `row`; the answers' statuses."""
        before = self.n
        cpu = time.process_time()
        wall = time.perf_counter()
        while self.n - before < requests:
            await self.burst(row)
        cpu = time.process_time() - cpu
        wall = time.perf_counter() - wall
        count = self.n - before
        statuses = sorted({int(conn._transport.last[9:12]) for conn in self.conns})  # type: ignore[union-attr]
        return {"cpu_us": cpu / count * 1e6, "wall_us": wall / count * 1e6, "statuses": statuses}


async def serve_commands(redis_url: str, rows: list[str]) -> None:
    """The child: a line "ROW REQUESTS" in, a JSON line out, until stdin ends."""
    bench = Bench()
    await bench.start(redis_url, rows)
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        row, requests = line.split()
        print(json.dumps(await bench.measure(row, int(requests))), flush=True)


class Tree:
    """One child process measuring one tree's code."""

    def __init__(self, name: str, tree: Path, redis_url: str, rows: list[str]) -> None:
        self.name = name
        env = dict(os.environ, PYTHONPATH=str(tree))
        argv = [sys.executable, str(Path(__file__).resolve()), "--child", "--redis", redis_url, "--rows", *rows]
        if (os.cpu_count() or 1) >= 2:
            argv = ["taskset", "-c", "0", *argv]
        self.process = subprocess.Popen(argv, env=env, cwd=tree, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True)
        self._expect("ready", tree)
        self.tree = tree

    def _expect(self, what: str, tree: Path) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line or (what and line.strip() != what):
            self.process.kill()
            sys.exit(f"hotpath: the child for {tree} failed (its error is above)")
        return line

    def measure(self, row: str, requests: int) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{row} {requests}\n")
        self.process.stdin.flush()
        return json.loads(self._expect("", self.tree))  # type: ignore[no-any-return]

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ab", type=Path, metavar="OLD_TREE", help="compare with this tree (a git worktree)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--requests", type=int, default=30_000, help="per row, tree and round")
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    parser.add_argument("--redis", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import uvloop

        uvloop.run(serve_commands(args.redis, args.rows))
        return
    if args.ab is not None and not (args.ab / "seckill").is_dir():
        parser.error(f"--ab {args.ab}: no seckill package there (git worktree add {args.ab} <commit>)")
    from seckill.store.embedded import EmbeddedRedis

    names = [("new", ROOT)] + ([("old", args.ab.resolve())] if args.ab is not None else [])
    samples: dict[str, dict[str, list[float]]] = {name: {row: [] for row in args.rows} for name, _ in names}
    ratios: dict[str, list[float]] = {row: [] for row in args.rows}
    with tempfile.TemporaryDirectory() as data:
        redis = EmbeddedRedis(data, appendfsync="no")
        url = redis.start()
        trees: list[Tree] = []
        try:
            if (os.cpu_count() or 1) >= 2 and redis.process is not None:
                os.sched_setaffinity(redis.process.pid, {1})
            trees = [Tree(name, tree, url, args.rows) for name, tree in names]
            for round_ in range(args.rounds):
                for row in args.rows:
                    got = {}
                    # Old and new back to back, in turn first: the machine's speed drifts
                    # over seconds, and a pair measured within one second sees the same.
                    for tree in trees if round_ % 2 == 0 else trees[::-1]:
                        result = got[tree.name] = tree.measure(row, args.requests)
                        samples[tree.name][row].append(result["cpu_us"])
                        print(f"round {round_ + 1:2} {tree.name:3} {row:20} {result['cpu_us']:6.2f} µs CPU/request"
                              f"  (wall {result['wall_us']:.2f}, statuses {result['statuses']})", flush=True)
                    if "old" in got:
                        ratios[row].append(got["new"]["cpu_us"] / got["old"]["cpu_us"])
        finally:
            for tree in trees:
                tree.close()
            redis.stop()
    print(f"\nmedians over {args.rounds} rounds of {args.requests:,} requests, µs of CPU per request"
          + ("; new/old: the median of the rounds' ratios" if args.ab is not None else "") + ":")
    for row in args.rows:
        line = f"  {row:20} new {statistics.median(samples['new'][row]):6.2f}"
        if args.ab is not None:
            line += (f"  old {statistics.median(samples['old'][row]):6.2f}"
                     f"  new/old {statistics.median(ratios[row]):.3f}"
                     f" (rounds {min(ratios[row]):.3f}-{max(ratios[row]):.3f})")
        print(line)


if __name__ == "__main__":
    main()
