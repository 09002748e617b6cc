"""bench/replica_acks.py: what --replica-acks costs, and how WAIT meets batches in flight.

    .venv/bin/python bench/replica_acks.py [--rounds 3] [--duration 5] [--connections 100]

A master (AOF everysec) and one replica, both the bundled redis-server; one server worker
pinned to CPU 0, wrk -t1 with distinct users pinned to CPU 1, on a sale of 10**12 units
(every request wins, so every batch needs its WAIT). Configurations, run in turn in each
round (the machine is noisy; compare within a round): --replica-acks 0, and 1 with 1, 2
(the default) and 4 batches in flight. For each: req/s and its ratio to acks 0, p99
latency, requests per script call (the server's histogram) and WAITs a second (Redis's
commandstats; the time a WAIT blocks is not in Redis's own figures).

Why in flight matters: Redis runs one connection's commands in order, and a WAIT blocks
its connection until the replica answers; the next batch, already sent behind it, waits
in Redis's input buffer meanwhile. So batches on one connection do not overlap their
WAITs; what a second batch in flight still buys is that it is already at Redis, and that
the one behind it fills while both wait. Needs wrk and taskset.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
from batch_cost import free_port, metric, scrape, wait_listening

from seckill.store.embedded import EmbeddedRedis, find_redis_server

ROOT = Path(__file__).resolve().parent.parent

CONFIGS = [
    ("--replica-acks 0", []),
    ("--replica-acks 1, 1 in flight", ["--replica-acks", "1", "--max-in-flight", "1"]),
    ("--replica-acks 1, 2 in flight", ["--replica-acks", "1"]),
    ("--replica-acks 1, 4 in flight", ["--replica-acks", "1", "--max-in-flight", "4"]),
]


def start_replica(master_port: int, data: Path) -> tuple[subprocess.Popen[bytes], redis.Redis]:
    binary = find_redis_server()
    if binary is None:
        raise SystemExit("no redis-server")
    port = free_port()
    data.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
                             "--save", "", "--appendonly", "no", "--replicaof", "127.0.0.1", str(master_port)],
                            stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if client.info("replication").get("master_link_status") == "up":
                return proc, client
        except redis.ConnectionError:
            pass
        time.sleep(0.05)  # start-up only
    proc.kill()
    raise SystemExit("the replica did not sync")


def run_one(url: str, master: redis.Redis, extra: list[str], conns: int, duration: float) -> dict[str, float]:
    port = free_port()
    server = subprocess.Popen(["taskset", "-c", "0", sys.executable, str(ROOT / "seckill_server.py"),
                               "--port", str(port), "--redis", url, "--no-demo", *extra],
                              stderr=subprocess.DEVNULL)
    try:
        wait_listening(port)
        master.config_resetstat()
        before = scrape(port)
        out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{duration:g}s", "--latency",
                              "-s", str(ROOT / "bench/users.lua"), f"http://127.0.0.1:{port}/seckill/hot"],
                             capture_output=True, text=True, check=True).stdout
        after = scrape(port)
    finally:
        server.terminate()
        server.wait()
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    p99 = re.search(r"99%\s+(\S+)", out)[1]  # type: ignore[index]
    calls = metric(after, "seckill_batch_size_count") - metric(before, "seckill_batch_size_count")
    requests = metric(after, "seckill_batch_size_sum") - metric(before, "seckill_batch_size_sum")
    waits = master.info("commandstats").get("cmdstat_wait", {"calls": 0, "usec_per_call": 0})
    return {"rps": float(re.search(r"Requests/sec:\s+(\S+)", out)[1]),  # type: ignore[index]
            "p99_ms": _ms(p99), "size": requests / calls if calls else 0.0, "waits": float(waits["calls"]),
            "wait_us": float(waits["usec_per_call"]), "non_2xx": float(non_2xx[1]) if non_2xx else 0.0}


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=100)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="replica-acks-"))
    master_redis = EmbeddedRedis(str(root / "master"), appendfsync="everysec")
    url = master_redis.start()
    master = redis.Redis.from_url(url)
    replica, _ = start_replica(int(url.rsplit(":", 1)[1].split("/")[0]), root / "replica")
    try:
        subprocess.run([sys.executable, str(ROOT / "seckill_server.py"), "create", "hot", "--stock", str(10**12),
                        "--redis", url], stdout=subprocess.DEVNULL, check=True)
        results: dict[str, list[dict[str, float]]] = {name: [] for name, _ in CONFIGS}
        for _ in range(args.rounds):
            for name, extra in CONFIGS:
                results[name].append(run_one(url, master, extra, args.connections, args.duration))
        print(f"one worker, one replica, AOF everysec; wrk -t1 -c{args.connections}, distinct users, every "
              f"request wins; {args.rounds} rounds × {args.duration:g} s, configurations alternating; medians")
        print("| configuration | req/s | × acks 0 (per round) | p99 ms | requests per call | WAITs a second "
              "| non-2xx |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        base = results[CONFIGS[0][0]]
        for name, _ in CONFIGS:
            runs = results[name]
            ratios = sorted(r["rps"] / b["rps"] for r, b in zip(runs, base, strict=True))
            mid = len(runs) // 2

            def median(key: str, runs: list[dict[str, float]] = runs, mid: int = mid) -> float:
                return sorted(r[key] for r in runs)[mid]
            print(f"| {name} | {median('rps'):,.0f} | {ratios[mid]:.2f} ({', '.join(f'{x:.2f}' for x in ratios)}) "
                  f"| {median('p99_ms'):.1f} | {median('size'):.1f} | {median('waits') / args.duration:,.0f} "
                  f"| {median('non_2xx'):.0f} |")
    finally:
        replica.terminate()
        replica.wait()
        master_redis.stop()


if __name__ == "__main__":
    main()
