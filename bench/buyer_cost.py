"""bench/buyer_cost.py: what signed buyers (--auth jwt) and rate limits cost purchases.

    .venv/bin/python bench/buyer_cost.py                          # 3 rounds of 5 s a row (~2.5 min)
    .venv/bin/python bench/buyer_cost.py --seconds 2 --rounds 1   # a smoke run (~30 s)
    .venv/bin/python bench/run.py                                 # also a section of `make bench`
                                                                  # (--skip buyers leaves it out)

Setup. A fresh redis-server (AOF everysec, as bench/run.py's) and, at once, one-worker
servers pinned alike (the server CPU 0; wrk and Redis CPU 1, bench/run.py's "split"):
plain; `--auth jwt` HS256 (the secret in $SECKILL_JWT_SECRET); `--auth jwt
--jwt-algorithm ES256 --jwt-key PUBLIC.pem`; `--rate-per-ip 1000000` (on, never
tripping: every request is from 127.0.0.1, one bucket); and both limits
(`--rate-per-user` too: a bucket made for every buyer). Only the one being measured has
load. Tokens are made beforehand with PyJWT (--tokens per algorithm, each a distinct
`sub`, valid for an hour), more than a run uses, so every token's first request pays a
verification (the memo keeps 10,000) and its next four hit the memo.

Rows, each a ratio to the plain server in the same round (`wrk -t1 -c100`, the order of
the servers alternating per round; medians of the rounds):
  admission, a 10**12-unit sale, buyers sending 5 purchases each (bench/tokens.lua):
    plain (?user=), HS256, ES256 (targets >= 0.75), --rate-per-ip (target >= 0.95), both limits;
  sold out (stock 0, the gate armed): plain, HS256 (target >= 0.95: the gate answers first).
Also the first-use cost of verifying one token per algorithm (HS256, RS256, ES256, EdDSA),
in this process on the server's CPU: app/auth.Verifier._verify, the median of 5 x 2000.

Exit status 0 when measured, 2 when it could not run (no wrk; a server that did not start).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import jwt
import loadgen
from cpuwatch import tree_cpu
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from loadgen import LoadError, LoadResult
from report import BuyerCost, BuyerRow, buyer_table
from services import (
    BENCH_DIR,
    StartError,
    bench_redis,
    command_line,
    create_sale,
    fresh_log_dir,
    seckill_server,
    stop_on_sigterm,
    taskset,
    unpinned_without_taskset,
)

SCRIPT = BENCH_DIR / "tokens.lua"
BUY_ITEM = "bench-buyers"
SOLD_ITEM = "bench-buyers-sold"
SECRET = "bench-secret-" + "x" * 32
USES = 5  # purchases per buyer (per token)


@dataclasses.dataclass
class Options:
    seconds: float = 5.0
    rounds: int = 3
    connections: int = 100
    tokens: int = 60_000


# name -> (what, extra flags, sale, token file key or None, plain row it is compared with)
SERVERS: dict[str, tuple[str, list[str], str, str | None, str]] = {
    "plain": ("admission, no auth (?user=, 5 purchases a buyer)", [], BUY_ITEM, None, "plain"),
    "hs256": ("admission, --auth jwt HS256 (5 purchases a token)", ["--auth", "jwt"], BUY_ITEM, "HS256", "plain"),
    "es256": ("admission, --auth jwt ES256 (5 purchases a token)",
              ["--auth", "jwt", "--jwt-algorithm", "ES256", "--jwt-key", "{es_pem}"], BUY_ITEM, "ES256", "plain"),
    "rate_ip": ("admission, --rate-per-ip on, not tripping", ["--rate-per-ip", "1000000"], BUY_ITEM, None, "plain"),
    "rate_both": ("admission, --rate-per-ip and --rate-per-user on, not tripping",
                  ["--rate-per-ip", "1000000", "--rate-per-user", "1000000"], BUY_ITEM, None, "plain"),
    "sold_out": ("sold out, no auth", [], SOLD_ITEM, None, "sold_out"),
    "sold_out_hs256": ("sold out, --auth jwt HS256", ["--auth", "jwt"], SOLD_ITEM, "HS256", "sold_out"),
}


# --- Tokens -------------------------------------------------------------------------------

def keys() -> dict[str, tuple[Any, Any]]:
    """Per algorithm: (signing key, verifying key)."""
    rs, es, ed = rsa.generate_private_key(public_exponent=65537, key_size=2048), \
        ec.generate_private_key(ec.SECP256R1()), ed25519.Ed25519PrivateKey.generate()
    return {"HS256": (SECRET, SECRET.encode()), "RS256": (rs, rs.public_key()),
            "ES256": (es, es.public_key()), "EdDSA": (ed, ed.public_key())}


def make_tokens(signing: Any, algorithm: str, count: int, prefix: str) -> list[str]:
    exp = int(time.time()) + 3600
    return [jwt.encode({"sub": f"{prefix}{i}", "exp": exp}, signing, algorithm=algorithm) for i in range(count)]


def first_use_costs(all_keys: dict[str, tuple[Any, Any]], count: int = 2000, repeat: int = 5) -> dict[str, float]:
    """µs to verify a token not seen before, per algorithm (Verifier._verify: PyJWT and our checks)."""
    from seckill.app.auth import JwtSettings, Verifier

    costs = {}
    for algorithm, (signing, verifying) in all_keys.items():
        verifier = Verifier(JwtSettings((algorithm,), verifying))  # (a key object, as app/auth.load_key gives)
        tokens = [t.encode() for t in make_tokens(signing, algorithm, count, "c")]
        runs = []
        for _ in range(repeat):
            started = time.perf_counter()
            for token in tokens:
                verifier._verify(token)
            runs.append((time.perf_counter() - started) / count * 1e6)
        costs[algorithm] = statistics.median(runs)
    return costs


# --- Runs ---------------------------------------------------------------------------------

def measure(redis_url: str, log_dir: Path, options: Options, *, server_cpus: str | None,
            client_cpus: str | None, wait_quiet: Callable[[], None],
            record: Callable[[str, str], None] = lambda label, line: None,
            note: Callable[[str], None] = print) -> BuyerCost:
    found = BuyerCost(options.seconds, options.rounds, options.connections)
    if not loadgen.available("wrk"):
        found.skipped = "wrk not found"
        return found
    all_keys = keys()
    print("  first-use verification per algorithm (µs):", end=" ", flush=True)
    if server_cpus and hasattr(os, "sched_setaffinity"):
        mask = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {int(c) for c in server_cpus.split(",")})
    found.first_use_us = first_use_costs(all_keys)
    if server_cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, mask)
    print(", ".join(f"{a} {us:.1f}" for a, us in found.first_use_us.items()))
    create_sale(redis_url, BUY_ITEM, 10**12)
    create_sale(redis_url, SOLD_ITEM, 0)
    with tempfile.TemporaryDirectory(prefix="seckill-buyers-") as tmp, ExitStack() as stack:
        es_pem = Path(tmp) / "es256.pem"
        es_pem.write_bytes(all_keys["ES256"][1].public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        files = {}
        for algorithm in ("HS256", "ES256"):
            files[algorithm] = Path(tmp) / f"{algorithm}.tokens"
            files[algorithm].write_text("\n".join(make_tokens(all_keys[algorithm][0], algorithm,
                                                              options.tokens, "b")) + "\n")
        servers: dict[str, tuple[Any, int]] = {}
        previous = os.environ.get("SECKILL_JWT_SECRET")
        os.environ["SECKILL_JWT_SECRET"] = SECRET  # (inherited by the servers: never a flag)
        try:
            for name, (what, flags, _, _, _) in SERVERS.items():
                flags = [f.replace("{es_pem}", str(es_pem)) for f in flags]
                servers[name] = stack.enter_context(seckill_server(
                    redis_url, log_dir, server_cpus, flags, log_name=f"seckill-buyers-{name}.log"))
                record(f"buyer cost: {what}", servers[name][0].command)
                found.rows.append(BuyerRow(name, what, SERVERS[name][4]))
        finally:
            if previous is None:
                os.environ.pop("SECKILL_JWT_SECRET", None)
            else:
                os.environ["SECKILL_JWT_SECRET"] = previous

        def command(name: str, seconds: float) -> list[str]:
            item, file_key = SERVERS[name][2], SERVERS[name][3]
            url = f"http://127.0.0.1:{servers[name][1]}/seckill/{item}"
            return taskset(["wrk", "-t1", f"-c{options.connections}", f"-d{seconds:g}s", "--latency",
                            "-s", str(SCRIPT), url, "--", str(files[file_key]) if file_key else "-",
                            str(USES)], client_cpus)

        for name in servers:  # warm-up: the first request arms the gate, caches heads
            loadgen.run_wrk(command(name, 1.0), 1.0)
            record(f"buyer cost: load on {name}", command_line(command(name, options.seconds)))
        names = list(servers)
        for index in range(options.rounds):
            order = names if index % 2 == 0 else names[::-1]
            print(f"  round {index + 1}/{options.rounds}")
            for name in order:
                wait_quiet()
                pid = servers[name][0].pid
                before = tree_cpu(pid)
                result: LoadResult = loadgen.run_wrk(command(name, options.seconds), options.seconds)
                used = tree_cpu(pid) - before
                row = found.row(name)
                row.rps.append(result.rps)
                row.cpu_us.append(used / result.requests * 1e6 if result.requests else 0.0)
                expect_non2xx = name.startswith("sold_out")  # 409s by design
                row.non2xx += 0 if expect_non2xx else result.non2xx
                row.errors += result.errors
                print(f"    {name:15} {result.rps:10,.0f} req/s  {row.cpu_us[-1]:6.2f} µs/req server CPU")
    problems = [r.name for r in found.rows if r.non2xx or r.errors]
    if problems:
        note(f"buyer cost: non-2xx answers or errors on {', '.join(problems)}")
    return found


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    d = Options()
    parser = argparse.ArgumentParser(prog="bench/buyer_cost.py", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--seconds", type=float, default=d.seconds, help="each run")
    parser.add_argument("--rounds", type=int, default=d.rounds, help="rounds, the order alternating")
    parser.add_argument("--connections", type=int, default=d.connections, help="wrk -c")
    parser.add_argument("--tokens", type=int, default=d.tokens, help="tokens made per algorithm")
    parser.add_argument("--server-cpus", default="0", metavar="LIST", help="taskset list for the servers")
    parser.add_argument("--client-cpus", default="1", metavar="LIST", help="taskset list for wrk")
    parser.add_argument("--redis-cpus", default="1", metavar="LIST", help="CPUs for Redis's threads")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or min(args.rounds, args.connections, args.tokens) < 1:
        parser.error("--seconds, --rounds, --connections and --tokens must be positive")
    unpinned_without_taskset(args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_sigterm()
    log_dir = fresh_log_dir("buyers")
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="seckill-buyers-redis-") as tmp, \
                bench_redis(Path(tmp) / "redis", args.redis_cpus or None) as store:
            found = measure(store.url, log_dir, Options(args.seconds, args.rounds, args.connections, args.tokens),
                            server_cpus=args.server_cpus or None, client_cpus=args.client_cpus or None,
                            wait_quiet=lambda: None)
    except (StartError, LoadError, subprocess.TimeoutExpired) as exc:
        print(f"buyer cost: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: everything started was stopped", file=sys.stderr)
        return 130
    if found.skipped:
        print(f"buyer cost: not measured: {found.skipped}", file=sys.stderr)
        return 2
    print("\n" + buyer_table(found))
    print(f"server logs: {log_dir}; done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
