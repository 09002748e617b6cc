"""bench/batch_cost.py: what one hot item costs its Redis, per script call and per request.

    .venv/bin/python bench/batch_cost.py [--fsync everysec|always] [--connections 10,100,1000]

One server worker (pinned to CPU 0), wrk -t1 with distinct users (pinned to CPU 1) on a
sale of 10**12 units, so every request wins and runs the whole admission script. For each
connection count: req/s (wrk), requests per script call (the server's own
`seckill_batch_size` histogram, before and after), and Redis's time per call
(`INFO commandstats`, reset before the run). The README's scale-out arithmetic comes from
this. Needs wrk and taskset.
"""

from __future__ import annotations

import argparse
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import redis

from seckill.store.embedded import EmbeddedRedis

ROOT = Path(__file__).resolve().parent.parent

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def metric(text: str, name: str) -> float:
    return sum(float(m[1]) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()  # type: ignore[no-any-return]


def wait_listening(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)  # start-up only: nothing else to wait on
    raise SystemExit(f"the server did not listen on {port}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fsync", choices=["everysec", "always"], default="everysec")
    parser.add_argument("--connections", default="10,100,1000")
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args()

    server_redis = EmbeddedRedis(tempfile.mkdtemp(prefix="batch-cost-"), appendfsync=args.fsync)
    url = server_redis.start()
    port = free_port()
    server = subprocess.Popen(["taskset", "-c", "0", sys.executable, str(ROOT / "seckill_server.py"),
                               "--port", str(port), "--redis", url, "--no-demo"],
                              stderr=subprocess.DEVNULL)
    try:
        wait_listening(port)
        subprocess.run([sys.executable, str(ROOT / "seckill_server.py"), "create", "hot", "--stock", str(10**12),
                        "--redis", url], stdout=subprocess.DEVNULL, check=True)
        client = redis.Redis.from_url(url)
        print(f"AOF appendfsync {args.fsync}; one worker; wrk -t1, distinct users, {args.duration:g} s each")
        print("| connections | req/s | requests per script call | Redis µs per call | Redis µs per request "
              "| Redis busy |")
        print("|---:|---:|---:|---:|---:|---:|")
        for conns in (int(n) for n in args.connections.split(",")):
            client.config_resetstat()
            before = scrape(port)
            out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{args.duration:g}s",
                                  "-s", str(ROOT / "bench/users.lua"), f"http://127.0.0.1:{port}/seckill/hot"],
                                 capture_output=True, text=True, check=True).stdout
            after = scrape(port)
            rps = float(re.search(r"Requests/sec:\s+(\S+)", out)[1])  # type: ignore[index]
            calls = metric(after, "seckill_batch_size_count") - metric(before, "seckill_batch_size_count")
            requests = metric(after, "seckill_batch_size_sum") - metric(before, "seckill_batch_size_sum")
            stats = client.info("commandstats")["cmdstat_evalsha"]
            per_call = float(stats["usec_per_call"])
            size = requests / calls
            busy = stats["usec"] / (args.duration * 1e6) * 100
            print(f"| {conns} | {rps:,.0f} | {size:.1f} | {per_call:.0f} | {per_call / size:.2f} | {busy:.0f} % |")
    finally:
        server.terminate()
        server.wait()
        server_redis.stop()


if __name__ == "__main__":
    main()
