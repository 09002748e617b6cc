"""bench/run.py: this server against the seed's stack, the OpenResty-style gateway and an nginx ceiling, in one run.

    .venv/bin/python bench/run.py               # the full run (~20 minutes): bench/RESULTS.md,
                                                # bench/results.json and bench/results.png
    .venv/bin/python bench/run.py --quick       # 3 s per contender, one run each, to bench/out/
    .venv/bin/python bench/run.py --plot-only   # redraw bench/results.png from bench/results.json
    .venv/bin/python bench/run.py --profile     # also py-spy on the server during (a)
    .venv/bin/python bench/run.py --pin-experiment   # compare CPU pinning schemes

Strategy. One fresh redis-server (AOF everysec, in a temp dir) serves every contender.
Each contender is started, warmed up, measured with the SAME wrk settings
(`wrk -t1 -c100 -d10s --latency -s users.lua`, keep-alive, each request a distinct
`?user=`) and stopped before the next one starts, so they never compete for the CPU:

  (a) seckill, 1 worker, admission: an item with stock 10**12, so every request goes
      through a Redis script call (coalesced: many requests per call);
  (b) seckill, sold out: an item with stock 0, asked once first so the local sold-out
      gate is armed;
  (c) the seed: bench/seed_app.py (Flask + redis-py, SETNX/INCRBY) under
      `gunicorn -k gevent -w 4`;
  (d) nginx `return 200`, one worker: the ceiling for HTTP on this machine;
  (h) the OpenResty-style gateway (bench/openresty/): nginx, one worker, with Debian's
      lua-nginx-module and lua-resty-redis (installed by this script's set-up when missing,
      as root with apt-get; else skipped with the reason), one atomic Lua script call per
      purchase on a pooled Redis connection (check the stock, take a unit, XADD the order:
      the work of our admission), on a sale of 10**12 units as (a);
  (i) the same gateway on a sold-out sale: a lua_shared_dict flag, set by the first script
      call that found it sold out, answers without Redis (the gate of (b));
  (e) (a) with one URL on a second seckill server started with `--no-metrics` (all
      counting off), beside the first and pinned alike; its runs alternate with those
      of (a) one URL (a e, e a, a e, ..., at least 5 rounds), so the ratio metrics on / off (acceptance: >= 0.95)
      is not a drift of the shared machine. If the server rejects the flag, (e) is a
      skipped row with the server's message;
  (f) seckill, a sale of bounded stock (`--sale-stock`, 100,000 units) bought by distinct
      users, a fresh sale per run: wrk from the sale's start, stopped with SIGINT as soon
      as Redis's `sold` (read every 2 ms) reaches the stock; its req/s is Redis's units/s
      over the sale (every admission request wins), about a second of it at these rates;
  (g) the same sale once sold out: wrk for --duration right after (f), in the same run.
      Unlike (a), whose every request is a winner, a real sale's winners are bounded by
      its stock: what an admission costs per winner is paid by (f) only (`--skip sale`).

(a), (c) and (d) are also hit by `ab -c 100 -n 20000` without keep-alive (a new
connection per request). For (a) and (b), Redis round trips per request are the
`cmdstat_evalsha` calls during the run divided by the responses the client received.
Then the exactness run: a sale of 1000 units is hammered by wrk (keep-alive) and
another by ab, and both Redis (sold, orders) and the client (200s) must say 1000.

The lookup cost (bench/lookup_cost.py, `--skip lookup`): its own server, pinned as the
rows, on this Redis; a big sale without a per-user limit (500,000 units sold in 20,000
stream entries by the admission script itself), then purchases of another sale for
`--lookup-seconds` (5) alone and as long beside 20 connections looping on
`GET /seckill/BIG/order?user=U`, `--lookup-rounds` (3) rounds alternating: the ratio of
the purchase rates (target >= 0.5) and the lookups' own rate.

Signed buyers and rate limits (bench/buyer_cost.py, `--skip buyers`): its own one-worker
servers, pinned as the rows, on this Redis: admission with `--auth jwt` HS256 and ES256
(every buyer a token used 5 times) and with the rate limiters on but not tripping, and
sold out with HS256, each as a ratio to the plain server in the same round; and the
first-use verification cost per algorithm.

Replica acknowledgements (bench/replica_acks.py, `--skip replicas`): one replica attached
to this Redis for the section only, one-worker servers with --replica-acks 0 and 1 (1, 2
and 4 batches in flight), admission by distinct users, each a ratio to acks 0 in the same
round (target >= 0.8 for the default), with requests per script call and WAITs a second.

The sale-start storm (bench/storm.py, `--skip storm`): C connections (1,000 and 10,000,
`--storm-connections`) opened idle, then one purchase each at T0 by distinct buyers on a
sale of C/10 units, from a small C client (bench/storm_client.c, built here): the time
until every answer is in, p50/p99, winners and sold against the stock, Redis calls, RSS per
idle connection, for this server (1 and 2 workers), the gateway and nginx `return 200`.

The connection sweep: req/s of (a), (b), (h), (i) and (d) with distinct users at
`wrk -t1 -c N`, N = 100, 1000, 10000 (`--sweep`), each contender while it is up. Its
points are shorter (3 runs of 5 s, `--sweep-duration`, `--sweep-repeat`) and have no
warm-up (the contender has just served the main rows); the point at --connections
(100) is the main table's one-URL row. For 1000 connections the
soft RLIMIT_NOFILE is raised here (wrk, the server and nginx inherit it); a point the
hard limit cannot hold is skipped with a message. The server's default
--max-connections (10000 per worker) is checked, not assumed.

The findings are saved whole as JSON beside the Markdown (bench/results.json), and
drawn (bench/plot.py, matplotlib) as bench/results.png: req/s per row with its ratio to
nginx, and req/s against connections. `--plot-only` redraws from the JSON.

The machine is shared and small, so: every row is the median of `--repeat` runs (3);
before each run we wait (bounded) until other processes leave the CPUs alone, and we
report how much CPU they took during it anyway (cpuwatch.py); and everything is pinned
(`--pin`, the same scheme for every contender: gunicorn's 4 workers and nginx's worker
go where the server goes). `--pin-experiment` compares the schemes (bench/PINNING.md).

Everything started is stopped on the way out (context managers), on errors, Ctrl-C and
SIGTERM too. A missing wrk, ab or nginx skips what needs it, with a message.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import loadgen
import machine
import plot
from contenders import (
    measure_buyers,
    measure_lookup,
    measure_nginx,
    measure_openresty,
    measure_replicas,
    measure_seckill,
    measure_seed,
    measure_storm,
)
from loadgen import LoadError
from report import (
    Findings,
    Round,
    Sample,
    from_json,
    pinning_report,
    render,
    results_table,
    targets_table,
    to_json,
)
from runner import (
    ADMIT_ITEM,
    ADMIT_STOCK,
    DEFAULT_PINNING,
    DEFAULT_SWEEP,
    NO_METRICS_FLAG,
    OUT_DIR,
    PINNING_RESULTS,
    PINNING_WHY,
    PINNINGS,
    RESULTS,
    SALE_STOCK,
    Bench,
    Pinning,
    Tools,
    raise_fd_limit,
)
from services import (
    DEBIAN_NGINX,
    Service,
    StartError,
    bench_redis,
    command_line,
    counts,
    create_sale,
    install_tools,
    nginx_ceiling,
    seckill_server,
    seed_stack,
    stop_on_sigterm,
)

# --- Options ---------------------------------------------------------------------------

QUICK = {"duration": 3.0, "warmup": 1.0, "ab_requests": 5000, "exact_seconds": 2.0, "repeat": 1,
         "sweep_duration": 2.0, "sweep_repeat": 1, "lookup_seconds": 2.0, "lookup_rounds": 1,
         "buyer_seconds": 2.0, "buyer_rounds": 1, "replica_seconds": 2.0, "replica_rounds": 1,
         "storm_repeat": 1}
# The sweep's points are shorter than the main rows' (5 s, not 10 s) to keep the full run
# near 9 minutes (7.5 before (f), (g) and the lookup cost's ~40 s each; more with a busy
# neighbour); the median of 3 still stands for each. The lookup cost's runs are 5 s too.
FULL = {"duration": 10.0, "warmup": 2.0, "ab_requests": 20000, "exact_seconds": 3.0, "repeat": 3,
        "sweep_duration": 5.0, "sweep_repeat": 3, "lookup_seconds": 5.0, "lookup_rounds": 3,
        "buyer_seconds": 5.0, "buyer_rounds": 3, "replica_seconds": 5.0, "replica_rounds": 3,
        "storm_repeat": 3}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where the help text does not already say it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.nargs == 0 or action.default in (None, "") or "default" in text:  # flags too
            return text
        return super()._get_help_string(action) or text


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Benchmark seckill against the seed (Flask/gunicorn) and nginx, in one run; "
                    "writes bench/RESULTS.md.",
        formatter_class=_HelpFormatter,
    )
    load = parser.add_argument_group("load")
    load.add_argument("--duration", type=float, metavar="SECONDS",
                      help=f"wrk run per contender (default {FULL['duration']:g}, "
                           f"--quick {QUICK['duration']:g})")
    load.add_argument("--connections", type=int, default=100, metavar="N",
                      help="concurrent connections, for wrk and ab")
    load.add_argument("--threads", type=int, default=1, metavar="N", help="wrk threads")
    load.add_argument("--warmup", type=float, metavar="SECONDS",
                      help=f"wrk before each measured run, 0 for none (default {FULL['warmup']:g}, "
                           f"--quick {QUICK['warmup']:g})")
    load.add_argument("--ab-requests", type=int, metavar="N",
                      help=f"requests per ab run (default {FULL['ab_requests']}, "
                           f"--quick {QUICK['ab_requests']})")
    load.add_argument("--repeat", type=int, metavar="N",
                      help=f"runs per table row, the median one reported: one disturbed run on this "
                           f"shared machine then moves nothing (default {FULL['repeat']}, "
                           f"--quick {QUICK['repeat']})")
    load.add_argument("--plain-url", action="store_true",
                      help="wrk without users.lua everywhere: the same URL for every request")
    load.add_argument("--quick", action="store_true",
                      help="short run: the --quick values above, results to bench/out/")
    load.add_argument("--quiet-wait", type=float, default=30.0, metavar="SECONDS",
                      help="before each measured run, wait up to this long for other processes "
                           "to use less than --quiet-threshold CPUs (the machine is shared)")
    load.add_argument("--quiet-threshold", type=float, default=0.15, metavar="CPUS",
                      help="CPU use by other processes that counts as quiet")

    sweep = parser.add_argument_group(
        "connection sweep: req/s of (a), (b), (h), (i), (d), distinct users, against wrk -c N")
    sweep.add_argument("--sweep", default=DEFAULT_SWEEP, metavar="LIST",
                       help="comma-separated connection counts; the one equal to --connections "
                            "reuses the main table's row")
    sweep.add_argument("--sweep-duration", type=float, metavar="SECONDS",
                       help=f"wrk run per point (default {FULL['sweep_duration']:g}, "
                            f"--quick {QUICK['sweep_duration']:g})")
    sweep.add_argument("--sweep-repeat", type=int, metavar="N",
                       help=f"runs per point, the median reported (default {FULL['sweep_repeat']}, "
                            f"--quick {QUICK['sweep_repeat']})")

    sale = parser.add_argument_group("a sale of bounded stock: (f) until sold out, (g) sold out")
    sale.add_argument("--sale-stock", type=int, default=SALE_STOCK, metavar="N",
                      help="units of each run's sale; (f) lasts about N / its req/s seconds")

    lookup = parser.add_argument_group(
        "order lookups beside purchases (bench/lookup_cost.py, its defaults otherwise)")
    lookup.add_argument("--lookup-seconds", type=float, metavar="SECONDS",
                        help=f"each run, purchases alone and beside the lookups (default "
                             f"{FULL['lookup_seconds']:g}, --quick {QUICK['lookup_seconds']:g})")
    lookup.add_argument("--lookup-rounds", type=int, metavar="N",
                        help=f"rounds of the pair, alternating (default {FULL['lookup_rounds']}, "
                             f"--quick {QUICK['lookup_rounds']})")

    buyers = parser.add_argument_group(
        "signed buyers and rate limits (bench/buyer_cost.py, its defaults otherwise)")
    buyers.add_argument("--buyer-seconds", type=float, metavar="SECONDS",
                        help=f"each run (default {FULL['buyer_seconds']:g}, --quick {QUICK['buyer_seconds']:g})")
    buyers.add_argument("--buyer-rounds", type=int, metavar="N",
                        help=f"rounds over the servers, the order alternating (default {FULL['buyer_rounds']}, "
                             f"--quick {QUICK['buyer_rounds']})")

    replicas = parser.add_argument_group("replica acknowledgements (bench/replica_acks.py)")
    replicas.add_argument("--replica-seconds", type=float, metavar="SECONDS",
                          help=f"each run (default {FULL['replica_seconds']:g}, --quick {QUICK['replica_seconds']:g})")
    replicas.add_argument("--replica-rounds", type=int, metavar="N",
                          help=f"rounds over the servers, the order alternating (default "
                               f"{FULL['replica_rounds']}, --quick {QUICK['replica_rounds']})")

    storms = parser.add_argument_group("the sale-start storm (bench/storm.py)")
    storms.add_argument("--storm-connections", default="1000,10000", metavar="LIST",
                        help="storm sizes, comma-separated")
    storms.add_argument("--storm-repeat", type=int, metavar="N",
                        help=f"storms per point, the median reported (default {FULL['storm_repeat']}, "
                             f"--quick {QUICK['storm_repeat']})")

    what = parser.add_argument_group("what to run")
    what.add_argument("--skip", default="", metavar="LIST",
                      help="comma-separated parts to leave out: seckill, seed, nginx, ab, exact, "
                           "sweep (the connection sweep), metrics (the --no-metrics row), "
                           "sale ((f) and (g), bounded stock), lookup (order lookups beside "
                           "purchases, bench/lookup_cost.py), buyers (--auth jwt and rate limits, "
                           "bench/buyer_cost.py), replicas (--replica-acks, bench/replica_acks.py), "
                           "openresty ((h) and (i), the OpenResty-style gateway), storm (bench/storm.py)")
    what.add_argument("--exact-stock", type=int, default=1000, metavar="N",
                      help="units of the exactness sales")
    what.add_argument("--exact-seconds", type=float, metavar="SECONDS",
                      help=f"wrk in the exactness run (default {FULL['exact_seconds']:g}, "
                           f"--quick {QUICK['exact_seconds']:g})")
    what.add_argument("--nginx", default=shutil.which("nginx") or DEBIAN_NGINX,
                      metavar="PATH", help="nginx binary")
    what.add_argument("--results", type=Path, metavar="FILE",
                      help="Markdown to write (default bench/RESULTS.md, "
                           "--quick: bench/out/RESULTS-quick.md); the findings (JSON) and the "
                           "picture (PNG) go beside it: bench/results.json and bench/results.png "
                           "for the default, else the same name with .json and .png")
    what.add_argument("--plot-only", action="store_true",
                      help="no benchmark: redraw the picture from the findings saved beside "
                           "--results (default bench/results.json, --quick "
                           "bench/out/RESULTS-quick.json)")

    prof = parser.add_argument_group("profile")
    prof.add_argument("--profile", action="store_true",
                      help="also an extra (a) run with py-spy recording the server, "
                           "to bench/out/profile-admission.*")
    prof.add_argument("--profile-rate", type=int, default=200, metavar="HZ",
                      help="py-spy samples per second")
    prof.add_argument("--profile-native", action="store_true",
                      help="py-spy --native: C frames too (uvloop, the system calls), but it stops "
                           "the process per sample, which here biases the profile towards system "
                           "calls (see bench/pyspy.py)")

    pin = parser.add_argument_group("CPU pinning")
    pin.add_argument("--pin", choices=sorted(PINNINGS), default=DEFAULT_PINNING,
                     help="scheme: " + "; ".join(f"{p.name}: {p.summary}" for p in PINNINGS.values()))
    pin.add_argument("--pin-experiment", action="store_true",
                     help="instead of the benchmark: measure (a), (c), (d) under every scheme, "
                          "--pin-repeats rounds, and write bench/PINNING.md")
    pin.add_argument("--pin-repeats", type=int, default=3, metavar="N",
                     help="rounds of the pinning experiment")
    args = parser.parse_args(argv)
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.results is None:
        args.results = OUT_DIR / "RESULTS-quick.md" if args.quick else RESULTS
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    try:
        args.sweep = sorted({int(n) for n in args.sweep.split(",") if n.strip()})
    except ValueError:
        parser.error(f"--sweep wants numbers separated by commas, not {args.sweep!r}")
    args.storm_connections = counts(parser, "--storm-connections", args.storm_connections)
    if args.storm_repeat < 1:
        parser.error("--storm-repeat must be positive")
    if args.duration <= 0 or args.sweep_duration <= 0 or args.lookup_seconds <= 0 or \
            args.buyer_seconds <= 0 or args.replica_seconds <= 0 or \
            min(args.connections, args.threads, args.repeat, args.sweep_repeat, args.sale_stock,
                args.lookup_rounds, args.buyer_rounds, args.replica_rounds) < 1:
        parser.error("--duration, --sweep-duration, --connections, --threads, --repeat, "
                     "--sweep-repeat, --sale-stock, --lookup-seconds, --lookup-rounds, "
                     "--buyer-seconds, --buyer-rounds, --replica-seconds and --replica-rounds must be positive")
    if min(args.connections, *args.sweep) < args.threads:
        parser.error("wrk needs at least one connection per thread (--connections, --sweep)")
    if args.pin != "none" and ((os.cpu_count() or 1) < 2 or not shutil.which("taskset")):
        print(f"--pin {args.pin} needs two CPUs and taskset: running unpinned", file=sys.stderr)
        args.pin = "none"
    return args


# --- Entry points ---------------------------------------------------------------------------

@contextmanager
def workspace() -> Iterator[tuple[Path, Path]]:
    """(a temp dir for Redis data and nginx's prefix, bench/out/logs emptied for this run)."""
    log_dir = OUT_DIR / "logs"
    shutil.rmtree(log_dir, ignore_errors=True)
    log_dir.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="seckill-bench-") as tmp:
        yield Path(tmp), log_dir


def run_step(bench: Bench, name: str, step: Callable[[], None]) -> None:
    """One contender; a failure to start it is reported and the run goes on."""
    try:
        step()
    except (StartError, LoadError, subprocess.TimeoutExpired) as exc:
        bench.note(f"{name} failed: {exc}")


def companions(results: Path) -> tuple[Path, Path]:
    """(the findings as JSON, the picture) beside a results file: bench/results.json and
    bench/results.png beside bench/RESULTS.md, else the results file's name."""
    stem = "results" if results.resolve() == RESULTS else results.stem
    return results.with_name(stem + ".json"), results.with_name(stem + ".png")


def draw_picture(findings: Findings, path: Path) -> bool:
    try:
        plot.draw(findings, path)
    except ImportError as exc:
        print(f"no picture: {exc} (pip install -e '.[bench]')", file=sys.stderr)
        return False
    print(f"wrote {path}")
    return True


def plot_only(args: argparse.Namespace) -> int:
    """Redraw the picture from saved findings, without a benchmark run."""
    source, picture = companions(args.results)
    try:
        findings = from_json(source.read_text())
    except (OSError, ValueError, TypeError, KeyError) as exc:
        print(f"cannot read the findings in {source}: {exc} (a benchmark run writes them)",
              file=sys.stderr)
        return 2
    return 0 if draw_picture(findings, picture) else 2


def benchmark(args: argparse.Namespace) -> int:
    pin = PINNINGS[args.pin]
    fd_before, fd_now = raise_fd_limit(max([args.connections, *args.sweep, *args.storm_connections]))
    with workspace() as (work_dir, log_dir), bench_redis(work_dir / "redis", pin.redis) as store:
        install_tools(args.nginx)
        tools = Tools.find(args.nginx)
        findings = Findings(
            date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            machine=machine.describe(store.url, tools.nginx, tools.wrk, tools.ab),
            settings=settings_summary(args),
            pinning=f"{pin.name} ({pin.summary})",
            pinning_why=PINNING_WHY if pin.name == DEFAULT_PINNING else "Chosen with --pin.",
        )
        bench = Bench(args, pin, findings, work_dir, log_dir)
        bench.record_command(
            f"redis: seckill.store.embedded.EmbeddedRedis(tmp, appendfsync='everysec'), then its threads "
            f"pinned to CPU {pin.redis or 'any'}",
            command_line([str(store.binary), "--port", str(store.port), "--bind", "127.0.0.1",
                          "--dir", str(store.data_dir), "--appendonly", "yes",
                          "--appendfsync", "everysec", "--save", ""]))
        for name, missing in (("wrk", tools.wrk), ("ab", tools.ab), ("nginx", tools.nginx)):
            if missing is None:
                bench.note(f"{name} not found: what needs it is skipped")
        if "seckill" not in args.skip:
            run_step(bench, "seckill", lambda: measure_seckill(bench, store.url))
        if "lookup" not in args.skip:
            run_step(bench, "lookup", lambda: measure_lookup(bench, store.url))
        if "buyers" not in args.skip:
            run_step(bench, "buyers", lambda: measure_buyers(bench, store.url))
        if "replicas" not in args.skip:
            run_step(bench, "replicas", lambda: measure_replicas(bench, store.url))
        if "seed" not in args.skip:
            run_step(bench, "seed", lambda: measure_seed(bench, store.url))
        if "nginx" not in args.skip:
            run_step(bench, "nginx", lambda: measure_nginx(bench))
        if "openresty" not in args.skip:
            run_step(bench, "openresty", lambda: measure_openresty(bench, store.url))
        if "storm" not in args.skip:
            run_step(bench, "storm", lambda: measure_storm(bench, store.url))
        findings.machine["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        findings.machine["file descriptors"] = (
            f"RLIMIT_NOFILE {fd_now}" + (f" (raised from {fd_before} by bench/run.py; children inherit it)"
                                         if fd_now != fd_before else ""))
    args.results.parent.mkdir(parents=True, exist_ok=True)
    data_path, picture = companions(args.results)
    data_path.write_text(to_json(findings))
    print(f"wrote {data_path}")
    drawn = draw_picture(findings, picture)
    document = render(findings, os.path.relpath(picture, args.results.parent) if drawn else None)
    args.results.write_text(document)
    print("\n" + results_table(findings) + "\n\n" + targets_table(findings))
    print(f"\nwrote {args.results}")
    failed = [c for c in findings.exactness if not c.passed]
    return 1 if failed else 0


def settings_summary(args: argparse.Namespace) -> dict[str, str]:
    return {
        "invocation": shlex.join(["bench/run.py", *sys.argv[1:]]),
        "wrk": f"-t{args.threads} -c{args.connections} -d{args.duration:g}s --latency"
               + ("" if args.plain_url else " -s bench/users.lua (a distinct ?user= per request); "
                  "the \"one URL\" rows without the script, the issue's exact command"),
        "runs": f"{args.repeat} per row, the median (by req/s) reported; each after waiting up to "
                f"{args.quiet_wait:g} s for other processes to use < {args.quiet_threshold:g} CPUs",
        "warm-up": f"{args.warmup:g} s of the same wrk before a row's first run (not counted)",
        "ab": f"-c {args.connections} -n {args.ab_requests}, no keep-alive",
        "exactness": f"stock {args.exact_stock}: wrk {args.exact_seconds:g} s; "
                     f"ab -n {max(3 * args.exact_stock, 2000)}",
        "connections": str(args.connections),
        "connection sweep": (
            "not run" if "sweep" in args.skip else
            f"wrk -t{args.threads} -c N -d{args.sweep_duration:g}s --latency -s bench/users.lua (distinct "
            f"users), N in {', '.join(str(n) for n in args.sweep)}, for (a), (b), (h), (i) and (d); "
            + (f"{args.sweep_repeat} runs per point, the median" if args.sweep_repeat > 1
               else "1 run per point")
            + "; shorter runs than the main rows and no warm-up (the contender has just served "
              "the main rows), to keep the full run short"
            + (f"; the {args.connections}-connection points are the main table's distinct-users rows "
               f"({args.repeat} × {args.duration:g} s)" if args.connections in args.sweep else "")
            + "."),
        "metrics": (
            "not run" if "metrics" in args.skip else
            f"(e) is (a) with one URL on a second server started with {NO_METRICS_FLAG}, beside "
            "the first (pinned alike); the runs of (a) one URL and (e) alternate"),
        "bounded stock": (
            "not run" if "sale" in args.skip else
            f"(f) and (g): {args.repeat} runs, each a fresh sale of {args.sale_stock:,} units "
            f"bought by distinct users: wrk until Redis's sold reaches the stock (then SIGINT), "
            f"then wrk {args.duration:g} s on the sold-out sale; no warm-up (the server has "
            "just served (a) and (b))"),
        "order lookups": (
            "not run" if "lookup" in args.skip else
            f"bench/lookup_cost.py: {args.lookup_rounds} rounds of purchases {args.lookup_seconds:g} s "
            f"alone and {args.lookup_seconds:g} s beside 20 connections of order lookups in a big "
            "sale, its own server (pinned as the rows), this Redis"),
        "signed buyers and rate limits": (
            "not run" if "buyers" in args.skip else
            f"bench/buyer_cost.py: {args.buyer_rounds} rounds of {args.buyer_seconds:g} s on each of its "
            "servers (plain, --auth jwt HS256 / ES256, rate limits; admission and sold out), the order "
            "alternating, pinned as the rows, this Redis"),
        "replica acknowledgements": (
            "not run" if "replicas" in args.skip else
            f"bench/replica_acks.py: {args.replica_rounds} rounds of {args.replica_seconds:g} s on each of "
            "its servers (--replica-acks 0, and 1 with 1, 2, 4 batches in flight), the order alternating, "
            "pinned as the rows, this Redis with one replica attached for the section"),
        "sale-start storm": (
            "not run" if "storm" in args.skip else
            f"bench/storm.py: {', '.join(f'{c:,}' for c in args.storm_connections)} connections, "
            f"{args.storm_repeat} storms per point (medians), each contender started afresh and pinned as "
            "the rows (2 workers: both CPUs), the C client on the client's CPU, this Redis"),
        "order": "one contender at a time: seckill (a, a/e alternating, b, f/g, ab, sweep, "
                 "exactness), the lookup cost (its own server), the buyer cost (its own servers), "
                 "the replica acks (its own servers and replica), seed, nginx (d, sweep), "
                 "the OpenResty-style gateway (h, i, sweep), the storm (its own contenders)",
    }


# --- The pinning experiment ---------------------------------------------------------------

def pin_round(args: argparse.Namespace, pin: Pinning, work_dir: Path, log_dir: Path) -> Round:
    """(a), (c), (d) under one pinning scheme, each started afresh, with a fresh Redis."""
    findings = Findings("", {}, {}, pin.name, "")
    bench = Bench(args, pin, findings, work_dir, log_dir)
    out: Round = {}
    with bench_redis(Path(tempfile.mkdtemp(dir=work_dir)), pin.redis) as store:
        create_sale(store.url, ADMIT_ITEM, ADMIT_STOCK)
        contenders: list[tuple[str, Callable[[], AbstractContextManager[tuple[Service, int]]], str]] = [
            ("a", lambda: seckill_server(store.url, log_dir, pin.server), f"/seckill/{ADMIT_ITEM}"),
            ("c", lambda: seed_stack(store.url, log_dir, pin.server), "/limit"),
        ]
        if bench.tools.nginx:
            nginx = bench.tools.nginx
            contenders.append(("d", lambda: nginx_ceiling(
                nginx, Path(tempfile.mkdtemp(dir=work_dir)), log_dir, pin.server), "/x"))
        for key, start, path in contenders:
            with start() as (_service, port):
                url = f"http://127.0.0.1:{port}{path}"
                bench.wait_quiet()
                bench.warm_up(url)
                result = bench.wrk(f"{pin.name} ({key})", url)
                out[key] = Sample(result.rps, result.p99_ms or 0.0, result.foreign_cpu or 0.0)
    return out


def pin_experiment(args: argparse.Namespace) -> int:
    if not loadgen.available("wrk"):
        print("the pinning experiment needs wrk", file=sys.stderr)
        return 2
    rounds: dict[str, list[Round]] = {name: [] for name in PINNINGS}
    with workspace() as (work_dir, log_dir):
        for round_no in range(args.pin_repeats):
            # Round-robin over the schemes, so drifting noise on a shared host hits all alike.
            for name, pin in PINNINGS.items():
                print(f"round {round_no + 1}/{args.pin_repeats}, scheme {name}")
                rounds[name].append(pin_round(args, pin, work_dir, log_dir))
    raw = {name: [{k: dataclasses.asdict(v) for k, v in r.items()} for r in runs]
           for name, runs in rounds.items()}
    (OUT_DIR / "pinning-samples.json").write_text(json.dumps(raw, indent=1))
    method = (
        f"Generated by `bench/run.py --pin-experiment` on "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}, nproc {os.cpu_count()}: "
        f"{args.pin_repeats} rounds, each scheme in turn within a round (so slow drifts in the "
        f"host's load hit every scheme alike), every contender started afresh, "
        f"{args.warmup:g} s warm-up, then wrk -t{args.threads} -c{args.connections} "
        f"-d{args.duration:g}s --latency -s bench/users.lua."
    )
    document = pinning_report(rounds, method=method, default=DEFAULT_PINNING,
                              schemes={p.name: p.summary for p in PINNINGS.values()})
    path = OUT_DIR / "PINNING-quick.md" if args.quick else PINNING_RESULTS
    path.write_text(document)
    print("\n" + document + f"\nwrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_sigterm()
    OUT_DIR.mkdir(exist_ok=True)
    started = time.monotonic()
    try:
        if args.plot_only:
            return plot_only(args)
        code = pin_experiment(args) if args.pin_experiment else benchmark(args)
    except KeyboardInterrupt:
        print("\ninterrupted: everything started was stopped", file=sys.stderr)
        return 130
    print(f"done in {time.monotonic() - started:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
