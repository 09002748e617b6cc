"""bench/lookup_cost.py: what order lookups in a big sale cost the purchases of another.

    .venv/bin/python bench/lookup_cost.py                          # 3 rounds of 10 s + 10 s (~75 s)
    .venv/bin/python bench/lookup_cost.py --seconds 2 --rounds 1   # a smoke run (~10 s)
    .venv/bin/python bench/lookup_cost.py --json out.json          # the findings as JSON too
    .venv/bin/python bench/run.py                                  # also a section of `make bench`
                                                                   # (--skip lookup leaves it out)

Setup. A fresh redis-server (AOF everysec, as bench/run.py's) and one server worker,
pinned as bench/run.py's default "split" scheme pins its rows: the server on CPU 0, the
load generators and Redis on CPU 1 (--server-cpus, --client-cpus, --redis-cpus). A big
sale WITHOUT a per-user limit (`seckill_server.py create BIG --stock UNITS`) is sold
out at once, bypassing HTTP: the admission script itself (sale_store.ADMIT_LUA, through
the batch keys sale_store.admit_keys(), as tests/conftest.py's `admit` calls it) is
called --entries times, pipelined, with UNITS / ENTRIES distinct users a call
(`b<entry>-<j>`), so the sale's stream holds --entries win entries (default 500,000
units in 20,000 entries, 25 users each). Whatever the script does per named winner
today (or after a change: index its orders), it did for these buyers.

Measurement. Purchases of ANOTHER sale (stock 10**12: every request wins), `wrk -t1
-c100 --latency -s bench/users.lua` (a distinct ?user= per request), for --seconds
alone, and for --seconds while a second wrk keeps 20 connections looping on
`GET /seckill/BIG/order?user=U` (bench/lookups.lua: U a random buyer of the big sale,
so every lookup has one order to find). A round is one of each; the order alternates
per round (alone, beside; beside, alone; ...), so a drift of the shared machine's load
hits both alike. Before each run: a bounded wait until other processes leave the CPUs
alone, and until the server has finished what the previous run left it (lookups still
running when their client went). Printed per round: purchase req/s alone and beside the
lookups, their ratio, the lookups' own req/s and latency; then the medians and the
ratio of the medians against the target (purchases keep >= 50% of their rate).

Exit status: 0 when measured (whether or not the target was reached), 2 when it could
not run (no wrk, a server that did not start). Needs wrk (and taskset to pin).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import loadgen
import redis
from cpuwatch import CpuWatch, tree_cpu
from loadgen import LoadError, LoadResult
from report import LookupCost, LookupRound, lookup_summary, lookup_table
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

BIG_ITEM = "bench-lookup-big"  # the big sale whose orders are looked up
BUY_ITEM = "bench-lookup-buy"  # the sale being bought meanwhile
BUY_STOCK = 10**12  # never runs out: every purchase is an admission
LOOKUP_SCRIPT = BENCH_DIR / "lookups.lua"
FILL_PIPELINE = 500  # admission calls per pipelined round trip while filling the big sale
WARMUP = 1.0  # seconds of purchases before the first round (not counted)
SETTLE_TIMEOUT = 60.0  # seconds to wait for the server to finish the lookups left running
BOUND = 0.5  # target: purchases beside the lookups keep at least this share of their rate


@dataclasses.dataclass(frozen=True)
class Options:
    units: int = 500_000
    entries: int = 20_000
    seconds: float = 10.0
    rounds: int = 3
    connections: int = 100
    lookup_connections: int = 20
    timeout: float = 30.0  # the lookup wrk's --timeout: a slow lookup is a slow answer, not an error


# --- The big sale ------------------------------------------------------------------------

def fill(redis_url: str, item: str, units: int, entries: int) -> float:
    """Sell `units` units of `item` (a sale of that stock, no limit) in `entries` calls of
    the admission script, to distinct users; the seconds it took."""
    from seckill.sales import (
        sale_store,  # the server's own script, as it is on disk now (services put ROOT on the path)
    )

    started = time.monotonic()
    client = redis.Redis.from_url(redis_url)
    sha = client.script_load(sale_store.ADMIT_LUA)
    per, extra = divmod(units, entries)
    pipe = client.pipeline(transaction=False)
    expected: list[int] = []
    for entry in range(entries):
        count = per + (1 if entry < extra else 0)
        batch = f"fill-{entry}"
        keys = sale_store.admit_keys(item, batch)
        pipe.evalsha(sha, len(keys), *keys, batch, *(f"b{entry}-{j}" for j in range(count)))
        expected.append(count)
        if len(expected) == FILL_PIPELINE or entry == entries - 1:
            for want, reply in zip(expected, pipe.execute(), strict=True):
                if not reply or int(reply[0]) != want:
                    raise StartError(f"filling {item}: the admission script granted "
                                     f"{reply[0] if reply else 'nothing'} of {want}: {reply!r}")
            expected = []
    sold = int(client.hget(sale_store.sale_key(item), "sold") or 0)
    length = int(client.xlen(sale_store.orders_key(item)))
    if sold != units or length < entries:
        raise StartError(f"filling {item}: sold {sold} of {units}, {length} stream entries "
                         f"where {entries} were written")
    return time.monotonic() - started


# --- Runs ----------------------------------------------------------------------------------

def lookup_command(url: str, options: Options) -> list[str]:
    return ["wrk", "-t1", f"-c{options.lookup_connections}", f"-d{options.seconds:g}s", "--latency",
            "--timeout", f"{options.timeout:g}s", "-s", str(LOOKUP_SCRIPT), url,
            "--", str(options.entries), str(options.units // options.entries)]


def watched(run: Callable[[], LoadResult]) -> LoadResult:
    """`run()`, with how much CPU others took meanwhile and how busy each CPU was."""
    watch = CpuWatch()
    watch.start()
    result = run()
    result.foreign_cpu = watch.foreign_cpus()
    result.cpu_busy = watch.busy()
    return result


def beside(buy: list[str], lookups: list[str], seconds: float) -> tuple[LoadResult, LoadResult]:
    """The purchase wrk and the lookup wrk at once, started together, the same -d."""
    process = subprocess.Popen(lookups, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        bought = watched(lambda: loadgen.run_wrk(buy, seconds))
        output, _ = process.communicate(timeout=seconds + loadgen.GRACE)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return bought, loadgen.parse_wrk(output, lookups)


def settle(pid: int, timeout: float = SETTLE_TIMEOUT) -> float:
    """Wait until the server (pid and its workers) is idle: lookups whose client has gone
    may still be running. The seconds waited."""
    started = time.monotonic()
    last = tree_cpu(pid)
    while time.monotonic() - started < timeout:
        time.sleep(0.2)
        now = tree_cpu(pid)
        if now - last < 0.02:  # under 10% of a CPU over the interval
            break
        last = now
    return time.monotonic() - started


def quiet_waiter(max_wait: float, threshold: float) -> Callable[[], None]:
    """bench/run.py's wait: up to max_wait s until others use < threshold CPUs."""
    def wait() -> None:
        deadline = time.monotonic() + max_wait
        watch, load = CpuWatch(), None
        while watch.available and time.monotonic() < deadline:
            watch.start()
            time.sleep(0.5)
            load = watch.foreign_cpus()
            if load is not None and load < threshold:
                return
        if load is not None and max_wait > 0:
            print(f"    the machine is busy ({load:.2f} CPUs used by others); measuring anyway")
    return wait


def _line(what: str, result: LoadResult) -> str:
    other = "" if result.foreign_cpu is None else f", other processes {result.foreign_cpu:.2f} CPUs"
    if result.cpu_busy:
        other += ", CPUs busy " + "/".join(f"{b:.0%}" for b in result.cpu_busy)
    return (f"    {what}: {result.rps:,.1f} req/s, p50 {result.p50_ms or 0:.2f} ms, "
            f"p99 {result.p99_ms or 0:.2f} ms, non-2xx {result.non2xx}, errors {result.errors}{other}")


def measure(redis_url: str, log_dir: Path, options: Options, *, server_cpus: str | None,
            client_cpus: str | None, wait_quiet: Callable[[], None],
            record: Callable[[str, str], None] = lambda label, line: None,
            note: Callable[[str], None] = print) -> LookupCost:
    """Fill the big sale, start a server, run the rounds; the finding (skipped: why not)."""
    found = LookupCost(options.units, options.entries, options.seconds, options.connections,
                       options.lookup_connections, bound=BOUND)
    if not loadgen.available("wrk"):
        found.skipped = "wrk not found"
        return found
    create_sale(redis_url, BIG_ITEM, options.units)
    create_sale(redis_url, BUY_ITEM, BUY_STOCK)
    record("lookup cost: sales (each command also takes --redis URL)", "\n".join(
        command_line(["python", "seckill_server.py", "create", item, "--stock", str(stock)])
        for item, stock in ((BIG_ITEM, options.units), (BUY_ITEM, BUY_STOCK))))
    took = fill(redis_url, BIG_ITEM, options.units, options.entries)
    per = options.units // options.entries
    print(f"  {BIG_ITEM}: {options.units:,} units sold in {options.entries:,} admission calls "
          f"({per}+ users each, pipelined {FILL_PIPELINE} a round trip) in {took:.1f} s")
    record(f"lookup cost: {BIG_ITEM} sold out by {options.entries:,} calls of "
           "sale_store.ADMIT_LUA (pipelined)",
           f"EVALSHA <ADMIT_LUA> 7 <sale_store.admit_keys('{BIG_ITEM}', 'fill-N')> fill-N "
           f"bN-0 ... bN-{per - 1}   # N = 0 .. {options.entries - 1}")
    with seckill_server(redis_url, log_dir, server_cpus, log_name="seckill-lookup.log") as (server, port):
        record("lookup cost: seckill server, 1 worker", server.command)
        base = f"http://127.0.0.1:{port}"
        buy = taskset(loadgen.wrk_command(f"{base}/seckill/{BUY_ITEM}", threads=1,
                                          connections=options.connections,
                                          duration=options.seconds, users=True), client_cpus)
        lookups = taskset(lookup_command(f"{base}/seckill/{BIG_ITEM}/order", options), client_cpus)
        record("lookup cost: purchases (alone, and beside the lookups)", command_line(buy))
        record("lookup cost: the lookups, beside the purchases", command_line(lookups))
        loadgen.run_wrk(taskset(loadgen.wrk_command(f"{base}/seckill/{BUY_ITEM}", threads=1,
                                                    connections=options.connections,
                                                    duration=WARMUP, users=True), client_cpus), WARMUP)
        for index in range(options.rounds):
            print(f"  round {index + 1}/{options.rounds}")
            runs: dict[str, LoadResult] = {}
            for what in (("alone", "beside") if index % 2 == 0 else ("beside", "alone")):
                waited = settle(server.pid)
                if waited >= SETTLE_TIMEOUT:
                    note(f"lookup cost: the server was still busy {waited:.0f} s after a run")
                wait_quiet()
                if what == "alone":
                    runs["alone"] = watched(lambda: loadgen.run_wrk(buy, options.seconds))
                    print(_line("purchases alone", runs["alone"]))
                else:
                    runs["beside"], runs["lookups"] = beside(buy, lookups, options.seconds)
                    print(_line(f"purchases beside {options.lookup_connections} lookup connections",
                                runs["beside"]))
                    print(_line("the lookups", runs["lookups"]))
            found.rounds.append(LookupRound(**runs))
            pair = runs["alone"].rps and runs["beside"].rps / runs["alone"].rps
            print(f"    ratio beside / alone: {pair:.3f}")
        settle(server.pid)
    problems = [r for r in found.rounds for x in (r.alone, r.beside) if x.errors or x.non2xx]
    if problems:
        note(f"lookup cost: purchases had non-2xx answers or errors in {len(problems)} runs")
    log = server.log_path.read_text(errors="replace").splitlines() if server.log_path.exists() else []
    bad = [line for line in log if any(w in line for w in (" WARNING ", " ERROR ", "Traceback"))
           and "Redis persistence:" not in line]  # (everysec, as chosen: said at every start)
    if bad:
        note(f"lookup cost: the server logged {len(bad)} warnings/errors, first: `{bad[0].strip()}`")
    return found


# --- Stand-alone -----------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    d = Options()
    parser = argparse.ArgumentParser(
        prog="bench/lookup_cost.py",
        description="Purchases of one sale alone, and while 20 connections look up orders in a "
                    "big sale (no per-user limit, many stream entries): the ratio.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--units", type=int, default=d.units, help="units of the big sale, all sold")
    parser.add_argument("--entries", type=int, default=d.entries,
                        help="admission calls (stream entries) the big sale is sold in")
    parser.add_argument("--seconds", type=float, default=d.seconds, metavar="N",
                        help="each run: purchases alone, and beside the lookups")
    parser.add_argument("--rounds", type=int, default=d.rounds, help="rounds of the pair, alternating")
    parser.add_argument("--connections", type=int, default=d.connections, help="the purchases' wrk -c")
    parser.add_argument("--lookup-connections", type=int, default=d.lookup_connections,
                        help="connections looping on the order lookup")
    parser.add_argument("--timeout", type=float, default=d.timeout, metavar="SECONDS",
                        help="the lookup wrk's --timeout")
    parser.add_argument("--server-cpus", default="0", metavar="LIST",
                        help="taskset list for the server ('' for none)")
    parser.add_argument("--client-cpus", default="1", metavar="LIST",
                        help="taskset list for both wrks ('' for none)")
    parser.add_argument("--redis-cpus", default="1", metavar="LIST",
                        help="CPUs for Redis's threads ('' for none)")
    parser.add_argument("--quiet-wait", type=float, default=30.0, metavar="SECONDS",
                        help="before each run, wait up to this long for other processes to use "
                             "less than --quiet-threshold CPUs")
    parser.add_argument("--quiet-threshold", type=float, default=0.15, metavar="CPUS")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the finding as JSON")
    args = parser.parse_args(argv)
    if min(args.units, args.entries, args.rounds, args.connections, args.lookup_connections) < 1 \
            or args.seconds <= 0 or args.entries > args.units:
        parser.error("--units, --entries (at most --units), --seconds, --rounds and the "
                     "connection counts must be positive")
    unpinned_without_taskset(args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_sigterm()
    options = Options(args.units, args.entries, args.seconds, args.rounds, args.connections,
                      args.lookup_connections, args.timeout)
    started = time.monotonic()
    log_dir = fresh_log_dir("lookup")
    try:
        with tempfile.TemporaryDirectory(prefix="seckill-lookup-") as tmp, \
                bench_redis(Path(tmp) / "redis", args.redis_cpus or None) as store:
            found = measure(store.url, log_dir, options, server_cpus=args.server_cpus or None,
                            client_cpus=args.client_cpus or None,
                            wait_quiet=quiet_waiter(args.quiet_wait, args.quiet_threshold))
    except (StartError, LoadError, subprocess.TimeoutExpired) as exc:
        print(f"lookup cost: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: everything started was stopped", file=sys.stderr)
        return 130
    if found.skipped:
        print(f"lookup cost: not measured: {found.skipped}", file=sys.stderr)
        return 2
    print("\n" + lookup_table(found) + "\n\n" + lookup_summary(found))
    if len(found.rounds) > 1:
        pairs = [r.beside.rps / r.alone.rps for r in found.rounds if r.alone.rps]
        print(f"ratio per round: {', '.join(f'{p:.3f}' for p in pairs)} "
              f"(median {statistics.median(pairs):.3f})")
    if args.json:
        args.json.write_text(json.dumps(dataclasses.asdict(found), indent=1) + "\n")
        print(f"wrote {args.json}")
    print(f"server log: {log_dir / 'seckill-lookup.log'}; done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
