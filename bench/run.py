"""bench/run.py: this server against the seed's stack and an nginx ceiling, in one run.

    .venv/bin/python bench/run.py               # the full run (~9 minutes): bench/RESULTS.md,
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

The connection sweep: req/s of (a) and (d) with one URL (the README's headline load)
at `wrk -t1 -c N`, N = 10, 100, 1000 (`--sweep`), each contender while it is up. Its
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
import functools
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path
from typing import Any

import loadgen
import lookup_cost
import machine
import plot
import pyspy
import redis
from cpuwatch import CpuWatch
from loadgen import LoadError, LoadResult
from report import (
    DISTURBED,
    METRICS_TOOL,
    SWEEP_TOOL,
    Exactness,
    Findings,
    Profile,
    Round,
    Row,
    SaleRun,
    Sample,
    from_json,
    pinning_report,
    render,
    results_table,
    targets_table,
    to_json,
)
from services import (
    BENCH_DIR,
    ROOT,
    Service,
    StartError,
    admin,
    bench_redis,
    command_line,
    create_sale,
    http_get,
    nginx_ceiling,
    seckill_server,
    seed_stack,
    stop_on_sigterm,
    taskset,
)

OUT_DIR = BENCH_DIR / "out"
RESULTS = BENCH_DIR / "RESULTS.md"
PINNING_RESULTS = BENCH_DIR / "PINNING.md"

# wrk loads: "wrk" gives every request a distinct ?user= (users.lua), "wrk1" sends one URL.
WRK_LOADS = ("wrk", "wrk1")
ADMIT_ITEM = "bench-admit"
ADMIT_STOCK = 10**12  # never runs out: every request is a Redis admission
SOLD_OUT_ITEM = "bench-soldout"
SALE_ITEM = "bench-sale"  # (f) and (g): a fresh sale per run, bench-sale-1, bench-sale-2, ...
SALE_STOCK = 100_000  # a realistic stock: winners bounded by it, not by the run's length
SALE_POLL = 0.002  # seconds between two reads of the sale's sold while (f) runs
EXACT_WRK_ITEM = "bench-exact-wrk"
EXACT_AB_ITEM = "bench-exact-ab"
METRICS_REPEAT = 5  # rounds of the on/off pair at least (each: on, off or off, on)
NO_METRICS_FLAG = "--no-metrics"  # the server's switch that turns all counting off, for (e)
DEFAULT_SWEEP = "10,100,1000"  # wrk connections of the connection sweep
# File descriptors a process needs beyond its N client sockets (listeners, logs, Redis,
# pipes); the limit is raised to at least FD_FLOOR so that nginx's worker_connections 4096
# fits too.
FD_HEADROOM = 64
FD_FLOOR = 4096


@dataclasses.dataclass(frozen=True)
class Pinning:
    """CPU lists for `taskset -c` (None: not pinned)."""

    name: str
    server: str | None  # the contender: seckill, gunicorn and its workers, nginx
    client: str | None  # wrk, ab (and py-spy)
    redis: str | None
    summary: str


PINNINGS = {
    p.name: p
    for p in (
        Pinning("none", None, None, None, "no taskset: the scheduler places everything"),
        Pinning("split", "0", "1", "1",
                "contender alone on CPU 0; load generator and Redis on CPU 1"),
        Pinning("colocated", "0", "1", "0",
                "contender and Redis on CPU 0; load generator alone on CPU 1"),
    )
}
DEFAULT_PINNING = "split"
# Why DEFAULT_PINNING: what `--pin-experiment` showed (bench/PINNING.md, 5 rounds of 5 s).
PINNING_WHY = (
    "Why, from `--pin-experiment` (bench/PINNING.md, 5 rounds of 5 s per scheme): on a quiet "
    "machine pinning does not make the numbers steadier. The run-to-run spread (CV) of req/s "
    "was 1.6% unpinned, 1.9% split, 2.5% colocated; unpinned showed the only tail spike seen, "
    "one run of (a) with a 61 ms p99, in an earlier round of the experiment. What does move "
    "the numbers is other jobs on this shared machine (a run where they took 0.4 CPU lost a "
    "third of its req/s), hence the quiet wait, the median of 3 runs and the \"other CPU\" "
    "column. So the scheme was picked for what it measures. split gives every contender the "
    "same budget, one core of its own, so the ratios compare designs, not core counts: "
    "unpinned, the seed's 4 workers spread over both cores while our 1-worker server cannot "
    "use a second one, and × seed falls from 33× to 21×. It keeps Redis off the contender's "
    "core, as Redis on its own host would be, where colocated makes each contender pay for "
    "Redis on its one core ((a) lost 22%). And it is the layout the brief suggested. The "
    "cost: wrk shares CPU 1 with Redis, and wrk with users.lua on one core tops out near "
    "190k req/s, below what nginx can do on its core (see \"CPUs busy\"): × nginx is "
    "measured against the client's ceiling as much as against nginx's."
)


# --- Options ---------------------------------------------------------------------------

QUICK = {"duration": 3.0, "warmup": 1.0, "ab_requests": 5000, "exact_seconds": 2.0, "repeat": 1,
         "sweep_duration": 2.0, "sweep_repeat": 1, "lookup_seconds": 2.0, "lookup_rounds": 1}
# The sweep's points are shorter than the main rows' (5 s, not 10 s) to keep the full run
# near 9 minutes (7.5 before (f), (g) and the lookup cost's ~40 s each; more with a busy
# neighbour); the median of 3 still stands for each. The lookup cost's runs are 5 s too.
FULL = {"duration": 10.0, "warmup": 2.0, "ab_requests": 20000, "exact_seconds": 3.0, "repeat": 3,
        "sweep_duration": 5.0, "sweep_repeat": 3, "lookup_seconds": 5.0, "lookup_rounds": 3}


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

    sweep = parser.add_argument_group("connection sweep: req/s of (a) and (d), one URL, against wrk -c N")
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

    what = parser.add_argument_group("what to run")
    what.add_argument("--skip", default="", metavar="LIST",
                      help="comma-separated parts to leave out: seckill, seed, nginx, ab, exact, "
                           "sweep (the connection sweep), metrics (the --no-metrics row), "
                           "sale ((f) and (g), bounded stock), lookup (order lookups beside "
                           "purchases, bench/lookup_cost.py)")
    what.add_argument("--exact-stock", type=int, default=1000, metavar="N",
                      help="units of the exactness sales")
    what.add_argument("--exact-seconds", type=float, metavar="SECONDS",
                      help=f"wrk in the exactness run (default {FULL['exact_seconds']:g}, "
                           f"--quick {QUICK['exact_seconds']:g})")
    what.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx",
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
    if args.duration <= 0 or args.sweep_duration <= 0 or args.lookup_seconds <= 0 or min(
            args.connections, args.threads, args.repeat, args.sweep_repeat, args.sale_stock,
            args.lookup_rounds) < 1:
        parser.error("--duration, --sweep-duration, --connections, --threads, --repeat, "
                     "--sweep-repeat, --sale-stock, --lookup-seconds and --lookup-rounds "
                     "must be positive")
    if min(args.connections, *args.sweep) < args.threads:
        parser.error("wrk needs at least one connection per thread (--connections, --sweep)")
    if args.pin != "none" and ((os.cpu_count() or 1) < 2 or not shutil.which("taskset")):
        print(f"--pin {args.pin} needs two CPUs and taskset: running unpinned", file=sys.stderr)
        args.pin = "none"
    return args


# --- One benchmark run -------------------------------------------------------------------

def raise_fd_limit(connections: int) -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE so that wrk, the server and nginx (children
    inherit it) can each hold `connections` sockets; (the limit before, the limit now)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(connections + FD_HEADROOM, FD_FLOOR)
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        return soft, new
    return soft, soft


def server_max_connections() -> int | None:
    """The server's default --max-connections (per worker), None if it cannot be read."""
    try:
        from seckill.http.connection import Limits  # the server's module, at the repository root
    except Exception:  # the module mid-edit, say: then we pass the flag rather than fail
        return None
    return int(Limits.max_connections)


@dataclasses.dataclass(frozen=True)
class Arm:
    """What one table row measures: a contender (a key of report.CONTENDERS) at a URL."""

    contender: str
    label: str
    url: str

@dataclasses.dataclass
class Tools:
    wrk: str | None
    ab: str | None
    nginx: str | None

    @classmethod
    def find(cls, nginx: str) -> Tools:
        return cls(loadgen.available("wrk"), loadgen.available("ab"),
                   nginx if os.access(nginx, os.X_OK) else None)


class Bench:
    """The state of one run: options, tools, pinning, where logs go, and the findings."""

    def __init__(self, args: argparse.Namespace, pin: Pinning, findings: Findings,
                 work_dir: Path, log_dir: Path) -> None:
        self.args = args
        self.pin = pin
        self.findings = findings
        self.tools = Tools.find(args.nginx)
        self.work_dir = work_dir
        self.log_dir = log_dir

    def note(self, text: str) -> None:
        self.findings.notes.append(text)
        print(f"  note: {text}")

    def record_command(self, label: str, argv_or_line: list[str] | str) -> None:
        line = argv_or_line if isinstance(argv_or_line, str) else command_line(argv_or_line)
        if (label, line) not in self.findings.commands:
            self.findings.commands.append((label, line))

    def skip(self, contender: str, tool: str, reason: str) -> None:
        print(f"  skipping {contender} with {tool}: {reason}")
        self.findings.rows.append(Row(contender, tool, skipped=reason))

    # Load.
    def wrk_argv(self, url: str, duration: float, count_status: bool = False,
                 users: bool = True, connections: int | None = None) -> list[str]:
        argv = loadgen.wrk_command(url, threads=self.args.threads,
                                   connections=connections or self.args.connections,
                                   duration=duration, users=users and not self.args.plain_url,
                                   count_status=count_status)
        return taskset(argv, self.pin.client)

    def wait_quiet(self) -> None:
        """Wait (bounded) until other processes leave the CPUs alone for a moment."""
        deadline = time.monotonic() + self.args.quiet_wait
        watch = CpuWatch()
        load = None
        while watch.available and time.monotonic() < deadline:
            watch.start()
            time.sleep(0.5)
            load = watch.foreign_cpus()
            if load is not None and load < self.args.quiet_threshold:
                return
        if load is not None and self.args.quiet_wait > 0:
            print(f"    the machine is busy ({load:.2f} CPUs used by others); measuring anyway")

    def warm_up(self, url: str, users: bool = True, connections: int | None = None) -> None:
        if self.args.warmup > 0:
            loadgen.run_wrk(self.wrk_argv(url, self.args.warmup, users=users, connections=connections),
                            self.args.warmup)

    def measured(self, label: str, tool: str, argv: list[str], run: Callable[[], LoadResult],
                 which: str = "") -> LoadResult:
        """Run the load tool, noting how much CPU other processes took meanwhile."""
        self.record_command(label, argv)
        print(f"  {label}{which}: {tool} ...", flush=True)
        watch = CpuWatch()
        watch.start()
        result = run()
        result.foreign_cpu = watch.foreign_cpus()
        result.cpu_busy = watch.busy()
        other = "" if result.foreign_cpu is None else f", other processes {result.foreign_cpu:.2f} CPUs"
        if result.cpu_busy:
            other += ", CPUs busy " + "/".join(f"{b:.0%}" for b in result.cpu_busy)
        print(f"    {result.rps:,.0f} req/s, p50 {_ms(result.p50_ms)}, p99 {_ms(result.p99_ms)}, "
              f"non-2xx {result.non2xx}, errors {result.errors}{other}")
        return result

    def wrk(self, label: str, url: str, *, duration: float | None = None,
            count_status: bool = False, which: str = "", users: bool = True,
            connections: int | None = None) -> LoadResult:
        duration = duration or self.args.duration
        argv = self.wrk_argv(url, duration, count_status, users, connections)
        return self.measured(label, "wrk", argv, lambda: loadgen.run_wrk(argv, duration), which)

    def ab(self, label: str, url: str, requests: int | None = None, which: str = "") -> LoadResult:
        argv = taskset(loadgen.ab_command(url, connections=self.args.connections,
                                          requests=requests or self.args.ab_requests), self.pin.client)
        return self.measured(label, "ab", argv, lambda: loadgen.run_ab(argv), which)

    def series(self, contender: str, tool: str, label: str, url: str, *,
               evalsha: EvalshaCounter | None = None, expect_non2xx: bool = False) -> None:
        """One row of the main table (see measure_rows)."""
        self.findings.rows += self.measure_rows(tool, [Arm(contender, label, url)], evalsha=evalsha,
                                                expect_non2xx=expect_non2xx)

    def measure_rows(self, tool: str, arms: list[Arm], *, evalsha: EvalshaCounter | None = None,
                     expect_non2xx: bool = False, connections: int | None = None,
                     duration: float | None = None, repeat: int | None = None,
                     warm_up: bool = True) -> list[Row]:
        """A row per arm: `repeat` (--repeat) rounds, each arm measured once per round after a
        quiet wait (and a warm-up before its first run, unless `warm_up` is False), the run
        with the median req/s
        standing for all. With several arms the rounds alternate their order (A B, B A, ...),
        so a drift in the shared machine's load hits every arm alike."""
        wrk = tool in WRK_LOADS
        if (wrk and not self.tools.wrk) or (tool == "ab" and not self.tools.ab):
            reason = f"{tool} not found" + (" (apt-get install apache2-utils)" if tool == "ab" else "")
            print(f"  skipping {', '.join(arm.label for arm in arms)}: {reason}")
            return [Row(arm.contender, tool, skipped=reason, connections=connections) for arm in arms]
        repeat = repeat or self.args.repeat
        users = tool == "wrk"
        where = f" at {connections} connections" if connections else ""
        runs: dict[Arm, list[tuple[LoadResult, float | None]]] = {arm: [] for arm in arms}
        for index in range(repeat):
            for arm in (arms if index % 2 == 0 else arms[::-1]):
                self.wait_quiet()
                if index == 0 and wrk and warm_up:
                    self.warm_up(arm.url, users, connections)
                before = evalsha.calls() if evalsha else 0
                which = f" [{index + 1}/{repeat}]" if repeat > 1 else ""
                result = (self.wrk(arm.label, arm.url, which=which, users=users, duration=duration,
                                   connections=connections) if wrk
                          else self.ab(arm.label, arm.url, which=which))
                runs[arm].append((result, evalsha.per_request(before, result.requests)
                                  if evalsha else None))
                self.check(f"({arm.contender}) with {tool}{where}", result, expect_non2xx)
        rows = []
        for arm in arms:
            median, redis_rt = sorted(runs[arm], key=lambda run: run[0].rps)[len(runs[arm]) // 2]
            rows.append(Row(arm.contender, tool, median, redis_rt=redis_rt,
                            all_rps=[r.rps for r, _ in runs[arm]], connections=connections))
            name = f"({arm.contender}) with {tool}{where}"
            if self.client_bound(median):
                self.note(f"{name}: the load generator's CPU was saturated while the contender's "
                          "was not: this row measures the client as much as the contender")
            if median.foreign_cpu is not None and median.foreign_cpu > DISTURBED:
                self.note(f"{name}: other processes used {median.foreign_cpu:.2f} CPUs during the "
                          "median run; its numbers are low by an unknown amount")
        return rows

    def every_load(self, contender: str, label: str, url: str) -> None:
        """A row per load: wrk with distinct users, wrk with one URL, ab without keep-alive."""
        self.series(contender, "wrk", label, url)
        self.series(contender, "wrk1", f"{label}, one URL", url)
        if "ab" not in self.args.skip:
            self.series(contender, "ab", f"{label}, no keep-alive", url)

    def client_bound(self, result: LoadResult) -> bool:
        """With the client and the contender on cores of their own: was the client the limit?"""
        if not result.cpu_busy or not self.pin.client or not self.pin.server:
            return False
        if "," in self.pin.client or "," in self.pin.server:
            return False
        client, server = int(self.pin.client), int(self.pin.server)
        if max(client, server) >= len(result.cpu_busy):
            return False
        return result.cpu_busy[client] > 0.97 and result.cpu_busy[server] < 0.9

    def check(self, name: str, result: LoadResult, expect_non2xx: bool) -> None:
        """Errors, and answers other than the ones this contender should give, are findings."""
        if result.errors:
            self.note(f"{name}: {result.errors} errors ({result.error_detail})")
        if expect_non2xx and result.non2xx != result.requests:
            self.note(f"{name}: {result.requests - result.non2xx} of {result.requests} answers were "
                      "2xx where every one should be 409 sold out")
        if not expect_non2xx and result.non2xx:
            self.note(f"{name}: {result.non2xx} non-2xx answers where none were expected")


def _ms(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f} ms"


class EvalshaCounter:
    """Redis's count of EVALSHA calls, the server's round trips when one item is on sale."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)

    def calls(self) -> int:
        stats: dict[str, Any] = self.client.info("commandstats")
        return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))

    def per_request(self, before: int, requests: int) -> float | None:
        return (self.calls() - before) / requests if requests else None


def measure_seckill(bench: Bench, redis_url: str) -> None:
    print("seckill server (contenders a, b, e)")
    pin = bench.pin
    extra = server_limits(bench)
    with seckill_server(redis_url, bench.log_dir, pin.server, extra) as (server, port):
        bench.record_command("seckill server, 1 worker", server.command)
        base = f"http://127.0.0.1:{port}"
        create_sale(redis_url, ADMIT_ITEM, ADMIT_STOCK)
        create_sale(redis_url, SOLD_OUT_ITEM, 0)
        bench.record_command("sales (each command also takes --redis URL)", "\n".join(
            command_line(["python", "seckill_server.py", "create", item, "--stock", str(stock)])
            for item, stock in ((ADMIT_ITEM, ADMIT_STOCK), (SOLD_OUT_ITEM, 0))))
        evalsha = EvalshaCounter(redis_url)
        admit_url = f"{base}/seckill/{ADMIT_ITEM}"
        sold_out_url = f"{base}/seckill/{SOLD_OUT_ITEM}"

        bench.series("a", "wrk", "(a) admission", admit_url, evalsha=evalsha)
        admission_metrics_off(bench, redis_url, admit_url, extra, evalsha)
        status, _ = http_get(port, f"/seckill/{SOLD_OUT_ITEM}")  # arms the sold-out gate
        if status != 409:
            bench.note(f"(b) the first request to a stock-0 sale answered {status}, not 409")
        bench.series("b", "wrk", "(b) sold out", sold_out_url, evalsha=evalsha, expect_non2xx=True)
        bench.series("b", "wrk1", "(b) sold out, one URL", sold_out_url, evalsha=evalsha,
                     expect_non2xx=True)
        if "sale" not in bench.args.skip:
            measure_sale(bench, base, redis_url, evalsha)
        if "ab" not in bench.args.skip:
            bench.series("a", "ab", "(a) admission, no keep-alive", admit_url, evalsha=evalsha)
        connection_sweep(bench, "a", "(a) admission, one URL", admit_url, evalsha)

        if "exact" not in bench.args.skip:
            check_exactness(bench, base, redis_url)
        if bench.args.profile:
            profile_admission(bench, server, admit_url)
    scan_server_log(bench, bench.log_dir / "seckill.log")
    scan_server_log(bench, bench.log_dir / "seckill-no-metrics.log", "the --no-metrics server")


def sold_key(item: str) -> str:
    """The Redis hash holding a sale's `sold` (sale_store's layout)."""
    try:
        from seckill.sales.sale_store import sale_key  # the server's module, at the repository root
    except Exception:  # the module mid-edit, say: its layout as documented
        return f"seckill:{{{item}}}"
    return str(sale_key(item))


class SoldWatch:
    """Reads a sale's `sold` while (f) runs; true (stop wrk) once it reaches the stock.
    Remembers the first read that saw a unit sold and the first that saw them all."""

    def __init__(self, redis_url: str, item: str, stock: int) -> None:
        self.client = redis.Redis.from_url(redis_url)
        self.key = sold_key(item)
        self.stock = stock
        self.first: tuple[float, int] | None = None  # (monotonic time, sold)
        self.full: float | None = None
        self.samples = 0

    def __call__(self) -> bool:
        sold = int(self.client.hget(self.key, "sold") or 0)
        now = time.monotonic()
        self.samples += 1
        if sold and self.first is None:
            self.first = (now, sold)
        if sold >= self.stock:
            self.full = now
            return True
        return False

    @property
    def seconds(self) -> float | None:
        """From the first read that saw a unit sold to the first that saw the stock gone."""
        if self.first is None or self.full is None:
            return None
        return self.full - self.first[0]


@contextmanager
def pinned(cpus: str | None) -> Iterator[None]:
    """This thread on `cpus` for the block (the poller of (f) keeps off the server's CPU)."""
    if not cpus or not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def measure_sale(bench: Bench, base: str, redis_url: str, evalsha: EvalshaCounter) -> None:
    """(f) and (g): a sale of --sale-stock units bought by distinct users, a fresh one per
    run (--repeat). (f): wrk from the start of the sale, stopped with SIGINT as soon as
    Redis's `sold` (read every SALE_POLL s) reaches the stock; (g): then wrk for --duration
    on the sold-out sale. The rows are the median runs of each; every run is in
    findings.sale, with Redis's time to sell out."""
    stock, args = bench.args.sale_stock, bench.args
    if not bench.tools.wrk:
        for contender in ("f", "g"):
            bench.skip(contender, "wrk", "wrk not found")
        return
    # (f)'s -d, a bound it never reaches: wrk is stopped when the units are gone.
    limit = max(30.0, stock / 10_000)
    runs: list[SaleRun] = []
    for index in range(args.repeat):
        item = f"{SALE_ITEM}-{index + 1}"
        create_sale(redis_url, item, stock)
        url = f"{base}/seckill/{item}"
        which = f" [{index + 1}/{args.repeat}]" if args.repeat > 1 else ""
        bench.record_command(f"(f) and (g): a sale per run, {SALE_ITEM}-1 .. -{args.repeat} "
                             "(also takes --redis URL)", command_line(
                                 ["python", "seckill_server.py", "create", f"{SALE_ITEM}-N",
                                  "--stock", str(stock)]))
        bench.wait_quiet()
        watch = SoldWatch(redis_url, item, stock)
        argv = bench.wrk_argv(url, limit)
        before = evalsha.calls()
        with pinned(bench.pin.client):
            admission = bench.measured(
                f"(f) stock {stock:,}, until sold out (wrk stopped by SIGINT then)", "wrk", argv,
                functools.partial(loadgen.run_wrk_until, argv, limit, watch, SALE_POLL), which)
        admission_rt = evalsha.per_request(before, admission.requests)
        seconds = watch.seconds
        if watch.full is None:
            bench.note(f"(f) run {index + 1}: {stock:,} units did not sell out in {limit:g} s")
        else:
            print(f"    sold out in {seconds:.3f} s by Redis's count ({watch.samples} reads)")
        if admission.errors:
            bench.note(f"(f) run {index + 1}: {admission.errors} errors ({admission.error_detail})")
        bench.wait_quiet()
        before = evalsha.calls()
        sold_out = bench.wrk(f"(g) stock {stock:,}, sold out", url, which=which)
        sold_out_rt = evalsha.per_request(before, sold_out.requests)
        bench.check("(g) with wrk", sold_out, expect_non2xx=True)
        status = admin("status", item, redis_url)
        run = SaleRun(stock, seconds, watch.first[1] if watch.first else 0, watch.samples, admission,
                      sold_out, int(status["sold"]), int(status["orders"]), admission_rt, sold_out_rt)
        if not run.exact:
            bench.note(f"(f) run {index + 1}: Redis says sold {run.sold:,}, orders {run.orders:,} "
                       f"of a stock of {stock:,}")
        runs.append(run)
    bench.findings.sale += runs
    # (f)'s req/s is Redis's units/s: every admission request wins, and wrk's own figure
    # also counts the sold-out answers of its last <= 100 ms (it stops on its 100 ms tick).
    admissions = [dataclasses.replace(r.admission, rps=r.units_per_s or r.admission.rps) for r in runs]
    sold_outs = [r.sold_out for r in runs if r.sold_out is not None]
    for contender, results, rts in (("f", admissions, [r.admission_rt for r in runs]),
                                    ("g", sold_outs, [r.sold_out_rt for r in runs])):
        order = sorted(range(len(results)), key=lambda i: results[i].rps)
        median = order[len(order) // 2]
        bench.findings.rows.append(Row(contender, "wrk", results[median], redis_rt=rts[median],
                                       all_rps=[r.rps for r in results]))


def measure_lookup(bench: Bench, redis_url: str) -> None:
    """bench/lookup_cost.py inside the run: its own server, pinned as the rows, this Redis."""
    print("order lookups in a big sale beside purchases of another (bench/lookup_cost.py)")
    options = dataclasses.replace(lookup_cost.Options(), seconds=bench.args.lookup_seconds,
                                  rounds=bench.args.lookup_rounds,
                                  connections=bench.args.connections)
    bench.findings.lookup = lookup_cost.measure(
        redis_url, bench.log_dir, options, server_cpus=bench.pin.server,
        client_cpus=bench.pin.client, wait_quiet=bench.wait_quiet, record=bench.record_command,
        note=bench.note)


def server_limits(bench: Bench) -> list[str]:
    """Flags the server needs for the sweep's largest point: none while its default
    --max-connections (per worker) covers it, which is what we want to measure."""
    largest = max([bench.args.connections, *bench.args.sweep])
    default = server_max_connections()
    if default is not None and default >= largest:
        return []
    bench.note(f"the server's default --max-connections ({default or 'unknown'}) is below "
               f"{largest} connections: it runs with --max-connections {largest}")
    return ["--max-connections", str(largest)]


def admission_metrics_off(bench: Bench, redis_url: str, admit_url: str, extra: list[str],
                          evalsha: EvalshaCounter) -> None:
    """(a) one URL, and (e): the same on a second server started with `--no-metrics`.

    The second server runs beside the first (pinned alike, same Redis, same sale) and the
    two rows' runs alternate, so the ratio on/off is not a drift of the shared machine's
    load. If the server rejects the flag (or --skip metrics), (a) is measured alone and
    (e) is a skipped row.
    """
    on = Arm("a", "(a) admission, one URL", admit_url)
    reason = "--skip metrics"
    with ExitStack() as stack:
        arms = [on]
        if "metrics" not in bench.args.skip:
            try:
                service, port = stack.enter_context(seckill_server(
                    redis_url, bench.log_dir, bench.pin.server, [*extra, NO_METRICS_FLAG],
                    log_name="seckill-no-metrics.log"))
            except (StartError, OSError) as exc:
                reason = f"the server did not start with {NO_METRICS_FLAG} ({exc})"
                print(f"  skipping (e): {reason}")
            else:
                bench.record_command("seckill server, 1 worker, metrics off (beside the first)",
                                     service.command)
                arms.append(Arm("e", f"(e) admission, one URL, {NO_METRICS_FLAG}",
                                f"http://127.0.0.1:{port}/seckill/{ADMIT_ITEM}"))
        # A 5 % question on a machine whose runs differ by a few per cent: more rounds.
        bench.findings.rows += bench.measure_rows(METRICS_TOOL, arms, evalsha=evalsha,
                                                  repeat=max(bench.args.repeat, METRICS_REPEAT))
    if len(arms) == 1:
        bench.findings.rows.append(Row("e", METRICS_TOOL, skipped=reason))


def connection_sweep(bench: Bench, contender: str, label: str, url: str,
                     evalsha: EvalshaCounter | None = None) -> None:
    """req/s of one URL at each --sweep connection count (shorter runs than the main rows, no
    warm-up: the contender has just served the main rows); the count the main table ran at
    reuses the main table's one-URL row."""
    if "sweep" in bench.args.skip:
        return
    fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    for connections in bench.args.sweep:
        main = bench.findings.row(contender, SWEEP_TOOL)
        if connections == bench.args.connections and main is not None and main.result is not None:
            bench.findings.sweep.append(dataclasses.replace(main, connections=connections))
            continue
        if fd_limit != resource.RLIM_INFINITY and connections + FD_HEADROOM > fd_limit:
            reason = f"RLIMIT_NOFILE is {fd_limit} (the hard limit), too few for {connections} sockets"
            print(f"  skipping {label} at {connections} connections: {reason}")
            bench.findings.sweep.append(Row(contender, SWEEP_TOOL, skipped=reason,
                                            connections=connections))
            continue
        bench.findings.sweep += bench.measure_rows(
            SWEEP_TOOL, [Arm(contender, f"{label}, {connections} connections", url)],
            evalsha=evalsha, connections=connections, duration=bench.args.sweep_duration,
            repeat=bench.args.sweep_repeat, warm_up=False)  # warm: it has just served the main rows


def check_exactness(bench: Bench, base: str, redis_url: str) -> None:
    """Bounded stock: Redis (sold, orders) and the client (200s) must both count `stock` winners."""
    stock = bench.args.exact_stock
    if bench.tools.wrk:
        create_sale(redis_url, EXACT_WRK_ITEM, stock)
        bench.wait_quiet()
        result = bench.wrk(f"exactness, stock {stock}", f"{base}/seckill/{EXACT_WRK_ITEM}",
                           duration=bench.args.exact_seconds, count_status=not bench.args.plain_url)
        counts = [("requests − non-2xx", result.requests - result.non2xx)]
        others = f"{result.non2xx:,} non-2xx"
        if result.statuses:
            counts.insert(0, ("200s counted by users.lua", result.statuses.get(200, 0)))
            others = ", ".join(f"{n:,}× {s}" for s, n in sorted(result.statuses.items()) if s != 200)
        bench.findings.exactness.append(exactness(
            "wrk", stock, admin("status", EXACT_WRK_ITEM, redis_url), counts, others, result.errors))
    if bench.tools.ab and "ab" not in bench.args.skip:
        create_sale(redis_url, EXACT_AB_ITEM, stock)
        bench.wait_quiet()
        result = bench.ab(f"exactness, stock {stock}, no keep-alive",
                          f"{base}/seckill/{EXACT_AB_ITEM}", requests=max(3 * stock, 2000))
        counts = [("complete − non-2xx", result.requests - result.non2xx)]
        bench.findings.exactness.append(exactness(
            "ab", stock, admin("status", EXACT_AB_ITEM, redis_url), counts,
            f"{result.non2xx:,} non-2xx", result.errors))
    for check in bench.findings.exactness:
        print(f"    exactness with {check.tool}: {'pass' if check.passed else 'FAIL'} (stock "
              f"{check.stock}, sold {check.sold}, orders {check.orders}, client {check.client})")


def exactness(tool: str, stock: int, status: dict[str, Any], counts: list[tuple[str, int]],
              others: str, errors: int) -> Exactness:
    sold, orders = int(status["sold"]), int(status["orders"])
    passed = (sold == stock and orders == stock and errors == 0
              and all(count == stock for _, count in counts))
    if errors:
        others += f"; {errors} client errors"
    client = "; ".join(f"{count:,} ({how})" for how, count in counts)
    return Exactness(tool, stock, sold, orders, client, others or "none", passed)


def profile_admission(bench: Bench, server: Service, url: str) -> None:
    binary = pyspy.py_spy()
    if binary is None or not bench.tools.wrk:
        bench.note("--profile: py-spy or wrk missing, no profile")
        return
    if not pyspy.can_attach():
        bench.note("--profile: py-spy needs root (or CAP_SYS_PTRACE) to attach; no profile")
        return
    duration = bench.args.duration
    output = OUT_DIR / "profile-admission.speedscope.json"
    argv = taskset(pyspy.record_command(binary, server.pid, max(1.0, duration - 1), output,
                                        bench.args.profile_rate, bench.args.profile_native),
                   bench.pin.client)
    bench.record_command("profile of (a), alongside its wrk", argv)
    output.unlink(missing_ok=True)
    bench.wait_quiet()
    recorder = pyspy.start_recording(argv, bench.log_dir / "py-spy.log")
    try:
        result = bench.wrk("(a) admission, profiled", url)
        recorder.wait(timeout=60)
    finally:
        if recorder.poll() is None:
            recorder.kill()
            recorder.wait()
    if not output.exists():
        bench.note(f"--profile: py-spy wrote nothing; see {bench.log_dir / 'py-spy.log'}")
        return
    summary = pyspy.summarize(output, ROOT)
    bench.findings.profile = Profile(str(output.relative_to(ROOT)), summary.samples, result.rps,
                                     bench.args.profile_native, summary.by_self,
                                     summary.own_by_total)
    text = (f"py-spy, {summary.samples} samples, top functions by self time:\n"
            + _shares(summary.by_self)
            + "\nthe server's own functions by total time (with what they call):\n"
            + _shares(summary.own_by_total))
    (OUT_DIR / "profile-admission.txt").write_text(text + "\n")
    print(f"  ({output})\n{text}")


def _shares(shares: list[pyspy.FunctionShare]) -> str:
    return "\n".join(f"  {s.self_pct:5.1f}% self {s.total_pct:5.1f}% total  {s.name}  ({s.where})"
                     for s in shares)


def scan_server_log(bench: Bench, path: Path, who: str = "the server") -> None:
    """Warnings and errors the server logged during the run are findings too."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return
    bad = [line for line in lines if any(w in line for w in (" WARNING ", " ERROR ", "Traceback"))]
    if bad:
        bench.note(f"{who} logged {len(bad)} warnings/errors, first: `{bad[0].strip()}`")


def measure_seed(bench: Bench, redis_url: str) -> None:
    print("seed: Flask under gunicorn -k gevent -w 4 (contender c)")
    redis.Redis.from_url(redis_url).delete("seed:limit")  # SETNX seeds it again: 95 of 100 sold
    with seed_stack(redis_url, bench.log_dir, bench.pin.server) as (service, port):
        bench.record_command("seed stack", service.command)
        url = f"http://127.0.0.1:{port}/limit"
        bench.every_load("c", "(c) seed", url)


def measure_nginx(bench: Bench) -> None:
    print("nginx return 200 (contender d)")
    if bench.tools.nginx is None:
        for tool in (*WRK_LOADS, "ab"):
            bench.skip("d", tool, f"nginx not found at {bench.args.nginx}")
        return
    with nginx_ceiling(bench.tools.nginx, bench.work_dir / "nginx", bench.log_dir,
                       bench.pin.server) as (service, port):
        bench.record_command("nginx ceiling (config: bench/nginx.conf.template)", service.command)
        url = f"http://127.0.0.1:{port}/seckill/x"
        bench.every_load("d", "(d) nginx", url)
        connection_sweep(bench, "d", "(d) nginx, one URL", url)


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
    fd_before, fd_now = raise_fd_limit(max([args.connections, *args.sweep]))
    with workspace() as (work_dir, log_dir), bench_redis(work_dir / "redis", pin.redis) as store:
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
            f"redis: redis_runner.EmbeddedRedis(tmp, appendfsync='everysec'), then its threads "
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
        if "seed" not in args.skip:
            run_step(bench, "seed", lambda: measure_seed(bench, store.url))
        if "nginx" not in args.skip:
            run_step(bench, "nginx", lambda: measure_nginx(bench))
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
            f"wrk -t{args.threads} -c N -d{args.sweep_duration:g}s --latency, one URL, N in "
            f"{', '.join(str(n) for n in args.sweep)}, for (a) and (d); "
            + (f"{args.sweep_repeat} runs per point, the median" if args.sweep_repeat > 1
               else "1 run per point")
            + "; shorter runs than the main rows and no warm-up (the contender has just served "
              "the main rows), to keep the full run short"
            + (f"; the {args.connections}-connection points are the main table's one-URL rows "
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
        "order": "one contender at a time: seckill (a, a/e alternating, b, f/g, ab, sweep, "
                 "exactness), the lookup cost (its own server), seed, nginx (d, sweep)",
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
