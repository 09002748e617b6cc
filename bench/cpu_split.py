"""bench/cpu_split.py: where a wrk row's CPU goes, process by process (server, Redis, wrk).

    .venv/bin/python bench/cpu_split.py                   # admission, distinct users, 3 rounds of 8 s
    .venv/bin/python bench/cpu_split.py --one-url         # the one-URL admission row
    .venv/bin/python bench/cpu_split.py --sold-out        # the sold-out sale

With bench/run.py's "split" pinning the server is alone on CPU 0 while wrk and Redis share
CPU 1, so a row is the server's limit only if CPU 0 is the busier: this says what each of
the three costs a request (CPU-seconds from /proc over the run ÷ requests), and so where
the row's ceiling is (1 ÷ the busier core's µs per request; the shares are of a core,
interrupts aside). A fresh redis-server (AOF
everysec, as the bench's) and a one-worker server; wrk -t1 -c100, after 2 s of warm-up.
Exit status 0 when measured, 2 when it could not run.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import loadgen
from cpuwatch import tree_cpu
from services import StartError, bench_redis, create_sale, fresh_log_dir, seckill_server, taskset

SERVER_CPU, CLIENT_CPU = "0", "1"  # bench/run.py's split pinning


def wrk_cpu(argv: list[str], duration: float) -> tuple[loadgen.LoadResult, float]:
    """wrk's result and its own CPU-seconds: the rusage of the children reaped meanwhile,
    wrk alone (taskset execs it)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = loadgen.run_wrk(argv, duration)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return result, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/cpu_split.py", description=__doc__.split("\n")[0])
    parser.add_argument("--one-url", action="store_true", help="no users.lua: every request the same")
    parser.add_argument("--sold-out", action="store_true", help="a sale of 0 units (the gate answers)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args(argv)
    if loadgen.available("wrk") is None:
        print("cpu split: wrk not found (apt-get install wrk)", file=sys.stderr)
        return 2
    item = "split-soldout" if args.sold_out else "split-admit"
    try:
        with tempfile.TemporaryDirectory(prefix="seckill-split-") as tmp, \
                bench_redis(Path(tmp) / "redis", CLIENT_CPU) as store, \
                seckill_server(store.url, fresh_log_dir("split"), SERVER_CPU) as (server, port):
            assert store.process is not None
            create_sale(store.url, item, 0 if args.sold_out else 10**12)
            url = f"http://127.0.0.1:{port}/seckill/{item}"

            def wrk(seconds: float) -> list[str]:
                return taskset(loadgen.wrk_command(url, threads=1, connections=100, duration=seconds,
                                                   users=not args.one_url), CLIENT_CPU)

            loadgen.run_wrk(wrk(2.0), 2.0)  # warm-up
            print(f"{'round':>5} {'req/s':>9} {'server µs/req':>14} {'Redis µs/req':>13} {'wrk µs/req':>11}"
                  f" {'server share':>13} {'Redis+wrk share':>16}")
            for n in range(1, args.rounds + 1):
                server0, redis0 = tree_cpu(server.pid), tree_cpu(store.process.pid)
                result, client = wrk_cpu(wrk(args.seconds), args.seconds)
                server1, redis1 = tree_cpu(server.pid), tree_cpu(store.process.pid)
                requests = result.rps * args.seconds
                per = [(server1 - server0) / requests * 1e6, (redis1 - redis0) / requests * 1e6,
                       client / requests * 1e6]
                print(f"{n:>5} {result.rps:>9,.0f} {per[0]:>14.1f} {per[1]:>13.1f} {per[2]:>11.1f}"
                      f" {per[0] * result.rps / 1e6:>13.0%} {(per[1] + per[2]) * result.rps / 1e6:>16.0%}")
    except (StartError, loadgen.LoadError, subprocess.TimeoutExpired) as exc:
        print(f"cpu split: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
