"""bench/runner.py: the run's state and its rules: where results go, the pinning schemes,
file descriptor limits, and `Bench` (the tools, the settings, each contender's findings).
bench/run.py is the command; bench/contenders.py measures each contender; bench/report.py
writes the report."""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import loadgen
import redis
from cpuwatch import CpuWatch
from loadgen import LoadResult
from report import (
    DISTURBED,
    Findings,
    Row,
)
from services import (
    BENCH_DIR,
    command_line,
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
GATEWAY_ADMIT_ITEM = "bench-gw"  # (h), in the gateway's own keys (gw:{item})
GATEWAY_SOLD_OUT_ITEM = "bench-gw-soldout"  # (i)
SALE_ITEM = "bench-sale"  # (f) and (g): a fresh sale per run, bench-sale-1, bench-sale-2, ...
SALE_STOCK = 100_000  # a realistic stock: winners bounded by it, not by the run's length
SALE_POLL = 0.002  # seconds between two reads of the sale's sold while (f) runs
EXACT_WRK_ITEM = "bench-exact-wrk"
EXACT_AB_ITEM = "bench-exact-ab"
METRICS_REPEAT = 5  # rounds of the on/off pair at least (each: on, off or off, on)
NO_METRICS_FLAG = "--no-metrics"  # the server's switch that turns all counting off, for (e)
DEFAULT_SWEEP = "100,1000,10000"  # wrk connections of the connection sweep
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


# --- One benchmark run -------------------------------------------------------------------

def raise_fd_limit(connections: int) -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE so that wrk, the server and nginx (children
    inherit it) can each hold `connections` sockets; (the limit before, the limit now)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # The gateway (h) holds a Redis socket beside each client's: twice as many.
    want = max(2 * connections + 4 * FD_HEADROOM, FD_FLOOR)
    if hard != resource.RLIM_INFINITY and hard < want:
        try:  # root may raise the hard limit (up to fs.nr_open)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, want))
            hard = want
        except (ValueError, OSError):
            pass
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
