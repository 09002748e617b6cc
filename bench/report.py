"""What a benchmark run found, and its rendering as Markdown.

run.py fills a `Findings`; `render()` turns it into bench/RESULTS.md: machine, the table
(req/s, p50/p99, ratios to nginx and to the seed measured with the same tool), Redis
round trips, the connection sweep, a sale of bounded stock run by run, metrics on against
off, order lookups beside purchases (bench/lookup_cost.py), the exactness checks, the
targets, the profile, the exact commands. `to_json()` / `from_json()` keep the findings
whole beside it (bench/results.json), so the picture (plot.py) can be redrawn without a
new run. `pinning_report()` renders the pinning experiment's rounds into bench/PINNING.md.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Sequence
from typing import Any

from loadgen import LoadResult
from pyspy import FunctionShare

CONTENDERS = {
    "a": "(a) seckill, admission",
    "b": "(b) seckill, sold out",
    "c": "(c) seed: Flask, gunicorn -k gevent -w 4",
    "d": "(d) nginx `return 200`",
    "e": "(e) seckill, admission, metrics off (`--no-metrics`)",
    "f": "(f) seckill, a sale of bounded stock: admission until sold out",
    "g": "(g) seckill, the same sale once sold out",
    "h": "(h) OpenResty-style gateway, admission (a script call per request)",
    "i": "(i) OpenResty-style gateway, sold out (shared-dict gate)",
}
LOADS = {"wrk": "wrk, keep-alive, distinct users", "wrk1": "wrk, keep-alive, one URL",
         "ab": "ab, no keep-alive"}
DISTURBED = 0.2  # CPUs used by other processes during a run above which we say so
# The connection sweep: admission and sold out, ours and the gateway's, and the ceiling;
# keep-alive, distinct users (the load a sale brings).
SWEEP_CONTENDERS = ("a", "b", "h", "i", "d")
SWEEP_TOOL = "wrk"
# Acceptance for the Prometheus metrics: admission with them on is within 5% of them off.
METRICS_TOOL = "wrk1"
METRICS_BOUND = 0.95


@dataclasses.dataclass
class Row:
    contender: str  # a key of CONTENDERS
    tool: str  # a key of LOADS
    result: LoadResult | None = None
    skipped: str = ""
    redis_rt: float | None = None  # evalsha calls per answered request, seckill only
    all_rps: list[float] = dataclasses.field(default_factory=list)  # every run; `result` is the median
    connections: int | None = None  # the connection sweep's rows: wrk -c N (None: the main table)

    @property
    def rps(self) -> float | None:
        return self.result.rps if self.result else None


@dataclasses.dataclass
class Exactness:
    tool: str
    stock: int
    sold: int
    orders: int
    client: str  # the winners as the load tool counted them, and how
    others: str  # what the other responses were
    passed: bool


@dataclasses.dataclass
class SaleRun:
    """One run of (f) and (g): a fresh sale of `stock` units bought by distinct users, wrk
    stopped (SIGINT) as soon as Redis's `sold` reaches the stock, then wrk on the sold-out
    sale."""

    stock: int
    sellout_s: float | None  # Redis's sold going from `first_seen` to the stock, sampled
    first_seen: int  # sold at the first sample that saw a unit sold
    samples: int  # reads of sold during the admission run
    admission: LoadResult
    sold_out: LoadResult | None
    sold: int  # Redis after the run (`seckill_server.py status`)
    orders: int
    admission_rt: float | None = None  # evalsha calls per answered request
    sold_out_rt: float | None = None

    @property
    def units_per_s(self) -> float | None:
        if not self.sellout_s:
            return None
        return (self.stock - self.first_seen) / self.sellout_s

    @property
    def exact(self) -> bool:
        return self.sold == self.stock and self.orders == self.stock


@dataclasses.dataclass
class LookupRound:
    """One round of bench/lookup_cost.py: purchases alone, and beside the order lookups."""

    alone: LoadResult
    beside: LoadResult
    lookups: LoadResult  # the lookups' own wrk, run alongside `beside`


@dataclasses.dataclass
class LookupCost:
    """bench/lookup_cost.py's finding: purchases of one sale while 20 connections look up
    orders in another, big sale, against the same purchases alone."""

    units: int  # the big sale's units, all sold
    entries: int  # the stream entries they were sold in
    seconds: float
    connections: int  # the purchases' wrk
    lookup_connections: int
    rounds: list[LookupRound] = dataclasses.field(default_factory=list)
    bound: float = 0.5  # target: purchases beside the lookups keep at least this share
    skipped: str = ""

    def medians(self) -> tuple[float, float, float] | None:
        """(purchases alone, purchases beside the lookups, lookups) req/s, medians."""
        if not self.rounds:
            return None
        return (statistics.median(r.alone.rps for r in self.rounds),
                statistics.median(r.beside.rps for r in self.rounds),
                statistics.median(r.lookups.rps for r in self.rounds))

    def ratio(self) -> float | None:
        medians = self.medians()
        return medians[1] / medians[0] if medians and medians[0] else None


@dataclasses.dataclass
class Profile:
    path: str
    samples: int
    rps: float
    native: bool
    top: list[FunctionShare]  # by self time
    own: list[FunctionShare]  # the server's own functions, by total time


# bench/buyer_cost.py: the rows with a target, and the target (× the reference row).
BUYER_BOUNDS = {"hs256": 0.75, "es256": 0.75, "sold_out_hs256": 0.95, "rate_ip": 0.95}


@dataclasses.dataclass
class BuyerRow:
    name: str  # the server's key in SERVERS
    what: str
    against: str  # the plain row it is a ratio of
    rps: list[float] = dataclasses.field(default_factory=list)  # one per round
    cpu_us: list[float] = dataclasses.field(default_factory=list)  # server CPU per request
    non2xx: int = 0
    errors: int = 0


@dataclasses.dataclass
class BuyerCost:
    seconds: float
    rounds: int
    connections: int
    rows: list[BuyerRow] = dataclasses.field(default_factory=list)
    first_use_us: dict[str, float] = dataclasses.field(default_factory=dict)
    skipped: str = ""

    def row(self, name: str) -> BuyerRow:
        return next(r for r in self.rows if r.name == name)

    def ratio(self, name: str) -> float:
        """Median over rounds of the row's req/s over its plain row's, same round."""
        row = self.row(name)
        if row.name == row.against:
            return 1.0
        base = self.row(row.against)
        pairs = [a / b for a, b in zip(row.rps, base.rps, strict=False) if b]
        return statistics.median(pairs) if pairs else 0.0


# bench/replica_acks.py: the row with a target, and the target (× --replica-acks 0, same round).
REPLICA_BOUND = 0.8
REPLICA_ROW = "acks1"


@dataclasses.dataclass
class AckRow:
    name: str  # the configuration's key in replica_acks.CONFIGS
    what: str
    rps: list[float] = dataclasses.field(default_factory=list)  # one per round
    p99_ms: list[float] = dataclasses.field(default_factory=list)
    batch: list[float] = dataclasses.field(default_factory=list)  # requests per script call
    waits_per_s: list[float] = dataclasses.field(default_factory=list)
    non2xx: int = 0
    errors: int = 0


@dataclasses.dataclass
class ReplicaAcks:
    seconds: float
    rounds: int
    connections: int
    rows: list[AckRow] = dataclasses.field(default_factory=list)
    skipped: str = ""

    def row(self, name: str) -> AckRow:
        return next(r for r in self.rows if r.name == name)

    def ratio(self, name: str) -> float:
        """Median over rounds of the row's req/s over the first row's (acks 0), same round."""
        base = self.rows[0]
        pairs = [a / b for a, b in zip(self.row(name).rps, base.rps, strict=False) if b]
        return statistics.median(pairs) if pairs else 0.0


# bench/storm.py: the targets at the largest storm (issue 15).
STORM_TIME_BOUND = 0.5  # seckill's time until every answer is in, × the gateway's
STORM_RSS_BOUND_KB = 1.5  # seckill's RSS per idle keep-alive connection


@dataclasses.dataclass
class StormRun:
    all_in_ms: float  # from T0 until the last answer
    p50_ms: float
    p99_ms: float
    send_ms: float  # the client writing every request
    answered: int
    unanswered: int  # failed, closed or timed out
    won: int  # 200s the client counted
    sold: int  # the sale's sold in Redis afterwards
    redis_calls: int  # EVALSHA calls during the storm
    client_cpu_ms: float
    statuses: dict[str, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class StormRow:
    name: str  # the contender's key in storm.CONTENDERS
    what: str
    connections: int
    stock: int
    runs: list[StormRun] = dataclasses.field(default_factory=list)
    rss_per_connection_kb: float | None = None  # RSS growth with every connection idle, / connections
    skipped: str = ""

    def median(self, key: str) -> float:
        return statistics.median(float(getattr(r, key)) for r in self.runs) if self.runs else 0.0

    @property
    def exact(self) -> bool:
        if self.name == "nginx":  # the floor sells nothing: every request answered is all it can do
            return bool(self.runs) and not any(r.unanswered for r in self.runs)
        return bool(self.runs) and all(r.won == self.stock and r.sold == self.stock and not r.unanswered
                                       for r in self.runs)


@dataclasses.dataclass
class Storm:
    repeat: int
    rows: list[StormRow] = dataclasses.field(default_factory=list)
    client: str = ""
    skipped: str = ""

    def row(self, name: str, connections: int) -> StormRow | None:
        return next((r for r in self.rows if r.name == name and r.connections == connections and r.runs), None)

    def time_ratio(self, name: str, connections: int, against: str = "gateway") -> float | None:
        row, base = self.row(name, connections), self.row(against, connections)
        if row is None or base is None or not base.median("all_in_ms"):
            return None
        return row.median("all_in_ms") / base.median("all_in_ms")


@dataclasses.dataclass
class Findings:
    date: str
    machine: dict[str, str]
    settings: dict[str, str]
    pinning: str
    pinning_why: str
    rows: list[Row] = dataclasses.field(default_factory=list)
    sweep: list[Row] = dataclasses.field(default_factory=list)  # req/s against connections
    exactness: list[Exactness] = dataclasses.field(default_factory=list)
    profile: Profile | None = None
    sale: list[SaleRun] = dataclasses.field(default_factory=list)  # the runs of (f) and (g)
    lookup: LookupCost | None = None
    buyers: BuyerCost | None = None  # bench/buyer_cost.py
    replicas: ReplicaAcks | None = None  # bench/replica_acks.py
    storm: Storm | None = None  # bench/storm.py
    commands: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    def row(self, contender: str, tool: str) -> Row | None:
        for row in self.rows:
            if row.contender == contender and row.tool == tool:
                return row
        return None

    def ratio(self, contender: str, tool: str, baseline: str) -> float | None:
        row, base = self.row(contender, tool), self.row(baseline, tool)
        if row is None or base is None or not row.rps or not base.rps:
            return None
        return row.rps / base.rps

    def sweep_row(self, contender: str, connections: int) -> Row | None:
        for row in self.sweep:
            if row.contender == contender and row.connections == connections:
                return row
        return None

    def sweep_ratio(self, contender: str, connections: int, baseline: str = "d") -> float | None:
        row, base = self.sweep_row(contender, connections), self.sweep_row(baseline, connections)
        if row is None or base is None or not row.rps or not base.rps:
            return None
        return row.rps / base.rps

    def metrics_ratio(self) -> float | None:
        """Admission req/s with metrics on over the same with `--no-metrics`."""
        return self.ratio("a", METRICS_TOOL, "e")


def _num(value: float | None, digits: int = 0, suffix: str = "") -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}{suffix}"


def _ratio(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}×" if value < 10 else f"{value:.1f}×"


def _busy(shares: Sequence[float] | None) -> str:
    return " / ".join(f"{share:.0%}" for share in shares) if shares else "–"


def _range(values: Sequence[float]) -> str:
    if len(values) < 2:
        return str(len(values))
    return f"{len(values)}: {min(values) / 1000:,.1f}k–{max(values) / 1000:,.1f}k"


def _runs(row: Row) -> str:
    """How many runs of how long, and their req/s range: "3 × 5 s: 110.2k–114.0k"."""
    seconds = f" × {row.result.seconds:.0f} s" if row.result and row.result.tool == "wrk" else ""
    spread = _range(row.all_rps)
    return f"{len(row.all_rps)}{seconds}" + (spread[spread.index(":"):] if ":" in spread else "")


def results_table(findings: Findings) -> str:
    lines = [
        "| contender | load | req/s | p50 ms | p99 ms | × nginx | × seed | non-2xx | errors "
        "| Redis round trips/req | other CPU | CPUs busy | runs: req/s range |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in findings.rows:
        name, load = CONTENDERS[row.contender], LOADS[row.tool]
        if row.result is None:
            lines.append(f"| {name} | {load} | skipped: {row.skipped} | | | | | | | | | | |")
            continue
        r = row.result
        lines.append(
            f"| {name} | {load} | {_num(r.rps)} | {_num(r.p50_ms, 2)} | {_num(r.p99_ms, 2)} "
            f"| {_ratio(findings.ratio(row.contender, row.tool, 'd'))} "
            f"| {_ratio(findings.ratio(row.contender, row.tool, 'c'))} "
            f"| {r.non2xx:,} | {r.errors:,} | {_num(row.redis_rt, 4)} | {_num(r.foreign_cpu, 2)} "
            f"| {_busy(r.cpu_busy)} | {_range(row.all_rps)} |"
        )
    return "\n".join(lines)


def targets(findings: Findings) -> list[tuple[str, str, bool | None]]:
    """(target, measured, reached?) for the four targets; None when not measured."""
    a_rt = findings.row("a", "wrk")
    rt = a_rt.redis_rt if a_rt else None
    checks: list[tuple[str, float | None, float, bool]] = []
    for tool, how in (("wrk1", "one URL"), ("wrk", "distinct users")):
        checks += [
            (f"admission ≥ 0.5× nginx (wrk, {how})", findings.ratio("a", tool, "d"), 0.5, True),
            (f"sold-out ≥ 0.8× nginx (wrk, {how})", findings.ratio("b", tool, "d"), 0.8, True),
            (f"admission ≥ 30× the seed (wrk, {how})", findings.ratio("a", tool, "c"), 30.0, True),
            (f"admission ≥ 2.5× the OpenResty-style gateway (wrk, {how})", findings.ratio("a", tool, "h"),
             2.5, True),
            (f"sold-out ≥ 1.0× the gateway's shared-dict gate (wrk, {how})", findings.ratio("b", tool, "i"),
             1.0, True),
        ]
    checks += [
        ("admission ≥ 0.6× nginx (wrk, distinct users)", findings.ratio("a", "wrk", "d"), 0.6, True),
        ("sold-out ≥ 0.9× nginx (wrk, distinct users)", findings.ratio("b", "wrk", "d"), 0.9, True),
    ]
    checks += [
        ("≤ 0.05 Redis round trips per request at "
         f"{findings.settings.get('connections', '?')} connections", rt, 0.05, False),
        (f"admission with metrics on ≥ {METRICS_BOUND:g}× metrics off (wrk, one URL)",
         findings.metrics_ratio(), METRICS_BOUND, True),
    ]
    if findings.lookup is not None:
        checks.append((f"purchases beside order lookups in a big sale ≥ {findings.lookup.bound:g}× "
                       "alone", findings.lookup.ratio(), findings.lookup.bound, True))
    buyers = findings.buyers
    if buyers is not None and not buyers.skipped and buyers.rows:
        for name, bound in BUYER_BOUNDS.items():
            row = buyers.row(name)
            checks.append((f"{row.what} ≥ {bound:g}× {row.against}", buyers.ratio(name), bound, True))
    replicas = findings.replicas
    if replicas is not None and not replicas.skipped and replicas.rows:
        checks.append((f"admission with one replica and --replica-acks 1 ≥ {REPLICA_BOUND:g}× acks 0",
                       replicas.ratio(REPLICA_ROW), REPLICA_BOUND, True))
    storm = findings.storm
    if storm is not None and not storm.skipped and storm.rows:
        largest = max(r.connections for r in storm.rows)
        ours = storm.row("seckill", largest)
        # Met only with exactly `stock` winners, every request answered and no 5xx of ours.
        clean = ours is not None and ours.exact and not any(
            s.startswith("5") for r in ours.runs for s in r.statuses)
        checks.append((f"storm of {largest:,} connections: every answer in ≤ {STORM_TIME_BOUND:g}× the gateway's time "
                       "(exact, all answered, no 5xx)",
                       storm.time_ratio("seckill", largest) if clean else None, STORM_TIME_BOUND, False))
        idle = storm.row("seckill", largest)
        checks.append((f"RSS per idle connection ≤ {STORM_RSS_BOUND_KB:g} KB (at {largest:,})",
                       idle.rss_per_connection_kb if idle else None, STORM_RSS_BOUND_KB, False))
    out: list[tuple[str, str, bool | None]] = []
    for label, value, bound, at_least in checks:
        if value is None:
            out.append((label, "not measured", None))
            continue
        shown = f"{value:.4f}" if not at_least else _ratio(value)
        out.append((label, shown, value >= bound if at_least else value <= bound))
    return out


def targets_table(findings: Findings) -> str:
    lines = ["| target | measured | reached |", "|---|---:|---|"]
    for label, shown, reached in targets(findings):
        mark = "–" if reached is None else ("**yes**" if reached else "no")
        lines.append(f"| {label} | {shown} | {mark} |")
    return "\n".join(lines)


def sweep_table(findings: Findings) -> str:
    lines = [
        "| contender | connections | req/s | p50 ms | p99 ms | × nginx | errors "
        "| Redis round trips/req | other CPU | CPUs busy | runs × length: req/s range |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in findings.sweep:
        name, n = CONTENDERS[row.contender], row.connections or 0
        if row.result is None:
            lines.append(f"| {name} | {n:,} | skipped: {row.skipped} | | | | | | | | |")
            continue
        r = row.result
        lines.append(
            f"| {name} | {n:,} | {_num(r.rps)} | {_num(r.p50_ms, 2)} | {_num(r.p99_ms, 2)} "
            f"| {_ratio(findings.sweep_ratio(row.contender, n))} | {r.errors:,} "
            f"| {_num(row.redis_rt, 4)} | {_num(r.foreign_cpu, 2)} | {_busy(r.cpu_busy)} | {_runs(row)} |"
        )
    return "\n".join(lines)


def metrics_section(findings: Findings) -> str:
    """Admission with metrics on, (a), against the same with `--no-metrics`, (e)."""
    on, off = findings.row("a", METRICS_TOOL), findings.row("e", METRICS_TOOL)
    if off is None or on is None:
        return "Not run."
    if off.result is None or on.result is None:
        return f"Not measured: {off.skipped or on.skipped}"
    ratio = findings.metrics_ratio() or 0.0
    lines = ["| server | load | req/s | p50 ms | p99 ms | Redis round trips/req | other CPU "
             "| runs: req/s range |", "|---|---|---:|---:|---:|---:|---:|---|"]
    for row, what in ((on, "metrics on (the default)"), (off, "`--no-metrics`")):
        r = row.result
        assert r is not None
        lines.append(f"| {what} | {LOADS[row.tool]} | {_num(r.rps)} | {_num(r.p50_ms, 2)} "
                     f"| {_num(r.p99_ms, 2)} | {_num(row.redis_rt, 4)} | {_num(r.foreign_cpu, 2)} "
                     f"| {_range(row.all_rps)} |")
    pairs = [a / b for a, b in zip(on.all_rps, off.all_rps, strict=False) if b]
    verdict = "**yes**" if ratio >= METRICS_BOUND else "**no**"
    disturbed = max(on.result.foreign_cpu or 0.0, off.result.foreign_cpu or 0.0)
    if disturbed > DISTURBED:
        verdict += (f" (but other processes took up to {disturbed:.2f} CPUs during these runs: "
                    "the ratio says more about them than about the metrics; measure again)")
    return (
        "\n".join(lines) + "\n\n"
        f"Metrics on ÷ off: **{ratio:.3f}** ({(ratio - 1) * 100:+.1f}%); acceptance, on within "
        f"{(1 - METRICS_BOUND) * 100:g}% of off (≥ {METRICS_BOUND:g}): {verdict}. "
        + (f"Run by run (the i-th run of each): {', '.join(f'{p:.3f}' for p in pairs)}. "
           if len(pairs) > 1 else "")
        + "Both servers run side by side, pinned alike, against the same Redis; one is idle "
        "while the other is measured, and their runs alternate (on, off, then off, on, ...), "
        "so a drift in the shared machine's load hits both alike. The figures move by a few "
        "per cent from run to run here (the range column): read a ratio within that of 1.0 "
        "as no measurable cost."
    )


def _sold(result: LoadResult | None, rt: float | None) -> str:
    if result is None:
        return "– | – | – | –"
    return f"{_num(result.rps)} | {_num(result.p50_ms, 2)} | {_num(result.p99_ms, 2)} | {_num(rt, 4)}"


def sale_section(findings: Findings) -> str:
    """(f) and (g) run by run: the time to sell out, both phases, Redis's count."""
    runs = findings.sale
    if not runs:
        return "Not run."
    lines = [
        "| run | stock | sold out in (Redis) | units/s (Redis) | admission req/s | p50 ms | p99 ms "
        "| round trips/req | admission requests | sold-out req/s | p50 ms | p99 ms | round trips/req "
        "| sold, orders (Redis) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for index, run in enumerate(runs, 1):
        seconds = "did not sell out" if run.sellout_s is None else f"{run.sellout_s:.3f} s"
        lines.append(
            f"| {index} | {run.stock:,} | {seconds} | {_num(run.units_per_s)} "
            f"| {_sold(run.admission, run.admission_rt)} | {run.admission.requests:,} "
            f"| {_sold(run.sold_out, run.sold_out_rt)} "
            f"| {run.sold:,}, {run.orders:,} {'(exact)' if run.exact else '**(not the stock)**'} |")
    stock = runs[0].stock
    return (
        "\n".join(lines) + "\n\n"
        f"A realistic sale: {stock:,} units, bought by distinct users (wrk -s bench/users.lua, a "
        "distinct `?user=` per request), a fresh sale per run. (f), admission: wrk is started "
        "on the new sale and stopped with SIGINT as soon as Redis's `sold` reaches the stock; "
        "a poller (on the load generator's CPU) reads `sold` every ~2 ms meanwhile. \"sold out "
        "in\" is Redis's own clock of the sale, from the first read that saw a unit sold to "
        "the first that saw them all, and units/s the units sold between those two reads over "
        "that time. Every admission request wins (distinct users, no limit), so units/s is "
        "the admission's req/s, and it is what the main table's (f) row gives as req/s. wrk's "
        "own req/s for the run (\"admission req/s\" here) is a little higher: wrk stops on "
        "its 100 ms tick, so its last tens of milliseconds are fast sold-out answers (its "
        "non-2xx in the main table); its p50, p99 and the round trips per request include "
        "them too. The admission lasts about a second at these rates: short, but timed by "
        "Redis to a few milliseconds (`--sale-stock` makes it longer). (g), sold out: then "
        "wrk for the rows' full duration on the same, now sold-out sale (its sold-out gate "
        "armed by the sale itself, not by a stock-0 sale as in (b)). Unlike (a), where every "
        "request of the run is a winner (stock 10¹²) and pays what an admission costs per "
        "winner, here the winners are bounded by the stock: a real sale's crowd spends "
        "most of its requests in (g). The main table holds the median run of each."
    )


def lookup_table(lookup: LookupCost) -> str:
    lines = ["| round | purchases alone req/s | p99 ms | purchases beside lookups req/s | p99 ms "
             "| ratio | lookups req/s | lookups p50 ms | lookups p99 ms | lookups non-2xx, errors "
             "| other CPU | CPUs busy (beside) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for index, r in enumerate(lookup.rounds, 1):
        ratio = r.beside.rps / r.alone.rps if r.alone.rps else None
        other = max(r.alone.foreign_cpu or 0.0, r.beside.foreign_cpu or 0.0)
        lines.append(
            f"| {index} | {_num(r.alone.rps)} | {_num(r.alone.p99_ms, 2)} | {_num(r.beside.rps)} "
            f"| {_num(r.beside.p99_ms, 2)} | {_num(ratio, 3)} | {_num(r.lookups.rps, 1)} "
            f"| {_num(r.lookups.p50_ms, 1)} | {_num(r.lookups.p99_ms, 1)} "
            f"| {r.lookups.non2xx:,}, {r.lookups.errors:,} | {other:.2f} | {_busy(r.beside.cpu_busy)} |")
    return "\n".join(lines)


def lookup_summary(lookup: LookupCost) -> str:
    medians, ratio = lookup.medians(), lookup.ratio()
    if medians is None or ratio is None:
        return "no round measured"
    alone, beside, lookups = medians
    verdict = "**yes**" if ratio >= lookup.bound else "**no**"
    return (f"Purchases alone {alone:,.0f} req/s, beside the lookups {beside:,.0f} req/s: "
            f"**{ratio:.3f}×** (target ≥ {lookup.bound:g}×: {verdict}); the lookups themselves "
            f"{lookups:,.1f} req/s (medians of {len(lookup.rounds)} rounds).")


def buyer_table(found: BuyerCost) -> str:
    lines = ["| row | req/s (median) | server µs/req | × its reference | target |", "|---|---:|---:|---:|---|"]
    for row in found.rows:
        target = BUYER_BOUNDS.get(row.name)
        ratio = found.ratio(row.name)
        verdict = "" if target is None else f"≥ {target:g}: {'**yes**' if ratio >= target else '**no**'}"
        lines.append(f"| {row.what} | {statistics.median(row.rps):,.0f} | {statistics.median(row.cpu_us):.2f} "
                     f"| {ratio:.3f} ({row.against}) | {verdict} |")
    costs = ", ".join(f"{a} {us:.1f} µs" for a, us in found.first_use_us.items())
    return "\n".join(lines) + f"\n\nFirst use of a token (verification, one core): {costs}."


def buyer_section(findings: Findings) -> str:
    buyers = findings.buyers
    if buyers is None:
        return "Not run."
    if buyers.skipped:
        return f"Not measured: {buyers.skipped}"
    return (f"bench/buyer_cost.py: one-worker servers pinned as the rows, `wrk -t1 -c{buyers.connections}` "
            f"{buyers.rounds} rounds of {buyers.seconds:g} s each, the order alternating; every buyer "
            "sends 5 purchases (a token's first pays its verification, the next four hit the memo).\n\n"
            + buyer_table(buyers))


def replica_table(found: ReplicaAcks) -> str:
    lines = ["| configuration | req/s (median) | × acks 0 (rounds) | p99 ms | requests per script call "
             "| WAITs a second |", "|---|---:|---:|---:|---:|---:|"]
    base = found.rows[0]
    for row in found.rows:
        rounds = ", ".join(f"{a / b:.2f}" for a, b in zip(row.rps, base.rps, strict=False) if b)
        lines.append(f"| {row.what} | {statistics.median(row.rps):,.0f} | {found.ratio(row.name):.3f} ({rounds}) "
                     f"| {statistics.median(row.p99_ms):.1f} | {statistics.median(row.batch):.1f} "
                     f"| {statistics.median(row.waits_per_s):,.0f} |")
    return "\n".join(lines)


def replica_section(findings: Findings) -> str:
    replicas = findings.replicas
    if replicas is None:
        return "Not run."
    if replicas.skipped:
        return f"Not measured: {replicas.skipped}"
    reached = replicas.ratio(REPLICA_ROW) >= REPLICA_BOUND
    return (f"bench/replica_acks.py: the bench's Redis with one replica attached for this section; "
            f"one-worker servers pinned as the rows, `wrk -t1 -c{replicas.connections}` distinct users, "
            f"{replicas.rounds} rounds of {replicas.seconds:g} s each, the order alternating; a sale of "
            "10¹² units, so every batch needs its WAIT. Target: the default with acks (4 batches in flight) "
            f"≥ {REPLICA_BOUND:g}× acks 0: {'**yes**' if reached else '**no**'}.\n\n" + replica_table(replicas))


def storm_table(storm: Storm) -> str:
    lines = ["| contender | connections | stock | every answer in, ms | × gateway | p50 ms | p99 ms "
             "| winners = stock | unanswered | Redis calls | client CPU, ms (share) | RSS per idle connection |",
             "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for row in storm.rows:
        if not row.runs:
            lines.append(f"| {row.what} | {row.connections:,} | {row.stock:,} | skipped: {row.skipped} "
                         "| | | | | | | | |")
            continue
        all_in, cpu = row.median("all_in_ms"), row.median("client_cpu_ms")
        ratio = storm.time_ratio(row.name, row.connections)
        rss = "–" if row.rss_per_connection_kb is None else f"{row.rss_per_connection_kb:.2f} KB"
        winners = ("yes" if row.exact else "**no**") + f" ({', '.join(str(r.won) for r in row.runs)})"
        if row.name == "nginx":
            winners = "– (no sale)"
        lines.append(f"| {row.what} | {row.connections:,} | {row.stock:,} | {all_in:,.0f} "
                     f"| {_ratio(ratio)} | {row.median('p50_ms'):,.0f} | {row.median('p99_ms'):,.0f} | {winners} "
                     f"| {sum(r.unanswered for r in row.runs)} | {row.median('redis_calls'):,.0f} "
                     f"| {cpu:,.0f} ({cpu / all_in:.0%}) | {rss} |")
    return "\n".join(lines)


def storm_section(findings: Findings) -> str:
    storm = findings.storm
    if storm is None:
        return "Not run."
    if storm.skipped:
        return f"Not measured: {storm.skipped}"
    return (f"bench/storm.py: {storm.client}; every contender pinned as the rows; {storm.repeat} storms "
            "per point, medians; a fresh sale per storm whose stock (a tenth of the connections) sells "
            "out during it. Every connection is open and idle before T0, then each sends one purchase "
            "(a distinct buyer) at T0; latencies are from T0. The client's CPU share says how far it is "
            "from being the limit (its kernel time includes loopback's delivery to the contender). RSS "
            "per idle connection: the contender's resident memory with every connection open, less "
            "before, over the connections (the first storm of a contender started afresh for each size; "
            "nginx allocates its connection structures for worker_connections at start, so its figure is "
            "what an accepted connection adds beyond them).\n\n" + storm_table(storm))


def lookup_section(findings: Findings) -> str:
    lookup = findings.lookup
    if lookup is None:
        return "Not run."
    if lookup.skipped:
        return f"Not measured: {lookup.skipped}"
    return (
        lookup_table(lookup) + "\n\n" + lookup_summary(lookup) + "\n\n"
        f"`bench/lookup_cost.py` (here inside `make bench`; `--skip lookup` leaves it out): a "
        f"sale without a per-user limit, {lookup.units:,} units sold to distinct users in "
        f"{lookup.entries:,} stream entries (the admission script called directly, "
        f"{lookup.units // max(1, lookup.entries)} users a call); then purchases of another "
        f"sale (stock 10¹², wrk -c{lookup.connections} with distinct users) for "
        f"{lookup.seconds:g} s alone and {lookup.seconds:g} s while a second wrk keeps "
        f"{lookup.lookup_connections} connections looping on `GET /seckill/BIG/order?user=U` "
        "(a random buyer of the big sale each, bench/lookups.lua), the two in turn, the "
        "order alternating per round, one server pinned as the other rows. ratio: purchases "
        "beside the lookups ÷ alone, in the same round; the summary divides the medians. "
        "Both wrks run on the load generator's CPU (with Redis): CPUs busy says whether it, "
        "rather than the server, was full."
    )


def exactness_table(checks: Sequence[Exactness]) -> str:
    lines = [
        "| load | stock | sold (status) | orders (stream) | winners seen by the client | other answers "
        "| result |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for c in checks:
        lines.append(
            f"| {LOADS[c.tool]} | {c.stock:,} | {c.sold:,} | {c.orders:,} | {c.client} "
            f"| {c.others} | {'**pass**' if c.passed else '**FAIL**'} |"
        )
    return "\n".join(lines)


def profile_table(shares: Sequence[FunctionShare]) -> str:
    lines = ["| function | where | self % | total % |", "|---|---|---:|---:|"]
    for share in shares:
        lines.append(f"| `{share.name}` | {share.where} | {share.self_pct:.1f} | {share.total_pct:.1f} |")
    return "\n".join(lines)


def render(findings: Findings, picture: str | None = None) -> str:
    """The Markdown report; `picture`: the PNG's path relative to it, shown under the title."""
    machine = "\n".join(f"- {k}: {v}" for k, v in findings.machine.items())
    settings = "\n".join(f"- {k}: {v}" for k, v in findings.settings.items())
    commands = "\n".join(f"# {label}\n{cmd}" for label, cmd in findings.commands)
    parts = [
        "# seckill benchmark results",
        f"Generated by `bench/run.py` on {findings.date}. Re-run with `make bench` "
        "(`.venv/bin/python bench/run.py --help` for the knobs)."
        + (f"\n\n![bench results]({picture})" if picture else ""),
        "## Machine\n\n" + machine,
        "## Settings\n\n" + settings,
        "## Pinning\n\n" + f"Scheme **{findings.pinning}**. {findings.pinning_why}",
        "## Results\n\n" + results_table(findings) + "\n\n"
        "Each row is the run with the median req/s of its runs (the last column gives how many "
        "and their range); its latencies, counts and round trips are that run's. × nginx and × "
        "seed compare req/s with the same load tool. non-2xx is expected to be every request for "
        "(b) and (g) (409 sold out), a few per cent for (f) (the sold-out answers of wrk's last "
        "tick, see below; its req/s is Redis's units/s) and 0 elsewhere. errors: wrk's socket "
        "errors (connect, read, write, timeout); ab's failed requests less the \"Length\" ones "
        "(the won bodies differ in length, which ab counts as failures). Redis round trips/req: "
        "`cmdstat_evalsha` calls during the run (INFO commandstats, before and after) divided by "
        "the responses the client received. other CPU: CPUs' worth of time that processes not "
        "started by this benchmark used during the run (the machine is shared); above about 0.2 "
        "the row was disturbed. CPUs busy: how busy CPU 0 / CPU 1 were over the run, interrupts "
        "included; with the split pinning (below) CPU 0 is the contender's and CPU 1 the load "
        "generator's and Redis's, so a saturated CPU 1 beside a CPU 0 with time to spare means "
        "the client, not the contender, set the pace.",
        "## Connections\n\n" + (sweep_table(findings) if findings.sweep else "Not run.")
        + "\n\nreq/s against wrk's connections (`-c N`, one thread, keep-alive, distinct users), "
        "everything else as in the table above. " + findings.settings.get("connection sweep", "")
        + " × nginx compares with nginx at the same number of connections.",
        "## A sale of bounded stock\n\n" + sale_section(findings),
        "## Metrics on vs off\n\n" + metrics_section(findings),
        "## Order lookups beside purchases\n\n" + lookup_section(findings),
        "## Signed buyers and rate limits\n\n" + buyer_section(findings),
        "## Replica acknowledgements\n\n" + replica_section(findings),
        "## The sale-start storm\n\n" + storm_section(findings),
        "## Targets\n\n" + targets_table(findings),
        "## Exactness (bounded stock)\n\n" + (
            exactness_table(findings.exactness) if findings.exactness else "Not run."
        ) + "\n\nPass: sold == orders == stock in Redis (`seckill_server.py status`), every count "
        "of winners the client has equals stock, and no client errors. wrk counts only the "
        "answers it read before its time was up; the winners all come in the first "
        "milliseconds, so that does not blur the count.",
    ]
    if findings.profile:
        p = findings.profile
        parts.append(
            "## Profile of (a)\n\n"
            f"py-spy, {p.samples} samples on the server during a separate profiled (a) run at "
            f"{p.rps:,.0f} req/s (sampling slows it); `{p.path}` opens in "
            "https://www.speedscope.app. Self % is time in the function itself, total % "
            "includes what it calls. "
            + ("With `--native`: C frames count too, but py-spy stops the process per sample "
               "and the samples pile up on system calls (`read`, `write`, `getpid`, "
               "`epoll_pwait`); read it for names, not weights." if p.native else
               "Sampled with `--nonblocking` (stopping the process per sample skews the profile "
               "towards system calls; see bench/pyspy.py). Python frames only: the uvloop row "
               "is C code under the loop (socket reads, epoll), and a function that writes to "
               "a transport carries the `write` system call in its self time.")
            + "\n\nBy self time:\n\n" + profile_table(p.top)
            + "\n\nThe server's own functions, by total time:\n\n" + profile_table(p.own)
        )
    parts.append("## Notes\n\n" + ("\n".join(f"- {n}" for n in findings.notes) or "- none"))
    parts.append("## Commands\n\n```sh\n" + commands + "\n```")
    return "\n\n".join(parts) + "\n"


# --- Findings as JSON ---------------------------------------------------------------------

def to_json(findings: Findings) -> str:
    return json.dumps(dataclasses.asdict(findings), indent=1, ensure_ascii=False) + "\n"


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """The keys of `data` that are fields of `cls`: a file from an older bench still loads."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def _load_row(data: dict[str, Any]) -> Row:
    fields = _known(Row, data)
    result = _load_result(fields.pop("result", None))
    return Row(**fields, result=result)


def _load_result(data: dict[str, Any] | None) -> LoadResult | None:
    if data is None:
        return None
    result = LoadResult(**_known(LoadResult, data))
    result.statuses = {int(k): v for k, v in result.statuses.items()}  # JSON keys are strings
    return result


def _load_sale(data: dict[str, Any]) -> SaleRun:
    fields = _known(SaleRun, data)
    fields["admission"] = _load_result(fields["admission"])
    fields["sold_out"] = _load_result(fields.get("sold_out"))
    return SaleRun(**fields)


def _load_lookup(data: dict[str, Any]) -> LookupCost:
    fields = _known(LookupCost, data)
    rounds = []
    for data_round in fields.get("rounds", []):
        alone, beside, lookups = (_load_result(data_round[k]) for k in ("alone", "beside", "lookups"))
        assert alone is not None and beside is not None and lookups is not None
        rounds.append(LookupRound(alone, beside, lookups))
    fields["rounds"] = rounds
    return LookupCost(**fields)


def from_json(text: str) -> Findings:
    """The Findings that `to_json()` wrote."""
    data = json.loads(text)
    fields = _known(Findings, data)
    fields["rows"] = [_load_row(r) for r in fields.get("rows", [])]
    fields["sweep"] = [_load_row(r) for r in fields.get("sweep", [])]
    fields["exactness"] = [Exactness(**e) for e in fields.get("exactness", [])]
    fields["sale"] = [_load_sale(r) for r in fields.get("sale", [])]
    if fields.get("lookup"):
        fields["lookup"] = _load_lookup(fields["lookup"])
    if fields.get("buyers"):
        buyers = _known(BuyerCost, fields["buyers"])
        buyers["rows"] = [BuyerRow(**r) for r in buyers.get("rows", [])]
        fields["buyers"] = BuyerCost(**buyers)
    if fields.get("replicas"):
        replicas = _known(ReplicaAcks, fields["replicas"])
        replicas["rows"] = [AckRow(**r) for r in replicas.get("rows", [])]
        fields["replicas"] = ReplicaAcks(**replicas)
    if fields.get("storm"):
        storm = _known(Storm, fields["storm"])
        storm["rows"] = [StormRow(**{**_known(StormRow, r), "runs": [StormRun(**_known(StormRun, x))
                                                                    for x in r.get("runs", [])]})
                         for r in storm.get("rows", [])]
        fields["storm"] = Storm(**storm)
    fields["commands"] = [tuple(c) for c in fields.get("commands", [])]
    if fields.get("profile"):
        profile = _known(Profile, fields["profile"])
        profile["top"] = [FunctionShare(**s) for s in profile["top"]]
        profile["own"] = [FunctionShare(**s) for s in profile["own"]]
        fields["profile"] = Profile(**profile)
    return Findings(**fields)


# --- The pinning experiment -------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Sample:
    rps: float
    p99_ms: float
    other_cpu: float  # CPUs other processes used meanwhile

    @property
    def disturbed(self) -> bool:
        return self.other_cpu > DISTURBED


Round = dict[str, Sample]  # contender key -> its sample in one round of one scheme
PIN_CONTENDERS = ("a", "c", "d")


def _cv(values: list[float]) -> float | None:
    """Coefficient of variation in %, None with fewer than two values."""
    if len(values) < 2:
        return None
    return statistics.stdev(values) / statistics.fmean(values) * 100


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}%"


def _value(value: float, ratio: bool) -> str:
    return f"{value:.2f}×" if ratio else f"{value:,.0f} req/s"


def _series(runs: list[Round], key: str) -> tuple[list[float], list[float]]:
    """(every value, the undisturbed values) of a contender's req/s or of a ratio "a/d"."""
    every, calm = [], []
    for run in runs:
        parts = [run.get(k) for k in key.split("/")]
        if any(p is None for p in parts):
            continue
        samples = [p for p in parts if p is not None]
        value = samples[0].rps / samples[1].rps if len(samples) == 2 else samples[0].rps
        every.append(value)
        if not any(p.disturbed for p in samples):
            calm.append(value)
    return every, calm


def pinning_report(rounds: dict[str, list[Round]], *, method: str, schemes: dict[str, str],
                   default: str) -> str:
    """bench/PINNING.md: every scheme's req/s, spread and tail over the rounds."""
    lines = [
        "# CPU pinning experiment",
        "",
        method,
        "",
        "Schemes: " + "; ".join(f"**{name}**: {text}" for name, text in schemes.items()) + ".",
        "",
        "A run is *disturbed* when processes not started by the benchmark (the machine is "
        f"shared) used more than {DISTURBED} CPUs during it. CV is the coefficient of variation "
        "(stdev / mean) over the rounds: lower is steadier.",
        "",
        "| scheme | what | mean | min | max | CV, all runs | CV, undisturbed | undisturbed runs |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    summary = []
    for name, runs in rounds.items():
        calm_cvs = []
        for key in (*PIN_CONTENDERS, "a/d", "a/c"):
            every, calm = _series(runs, key)
            if not every:
                continue
            ratio = "/" in key
            label = f"({key[0]}) ÷ ({key[2]})" if ratio else f"({key})"
            mean, low, high = (_value(v, ratio) for v in (statistics.fmean(every), min(every), max(every)))
            lines.append(
                f"| {name} | {label} | {mean} | {low} | {high} | {_pct(_cv(every))} "
                f"| {_pct(_cv(calm))} | {len(calm)} of {len(every)} |"
            )
            if not ratio and _cv(calm) is not None:
                calm_cvs.append(_cv(calm) or 0.0)
        p99 = statistics.median(r["a"].p99_ms for r in runs if "a" in r) if runs else 0.0
        worst = max((r["a"].p99_ms for r in runs if "a" in r), default=0.0)
        summary.append((name, statistics.fmean(calm_cvs) if calm_cvs else None, p99, worst))
    lines += ["", "| scheme | mean CV of (a), (c), (d), undisturbed runs | (a) p99 ms, median "
              "| (a) p99 ms, worst run |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {_pct(cv)} | {p99:.2f} | {worst:.2f} |" for name, cv, p99, worst in summary]
    lines += ["", f"The benchmark's default is **{default}** (`--pin`); bench/RESULTS.md "
              "says why.", "", "Every run (req/s, other CPU):", ""]
    for name, runs in rounds.items():
        for key in PIN_CONTENDERS:
            values = [f"{r[key].rps:,.0f} ({r[key].other_cpu:.2f})" for r in runs if key in r]
            lines.append(f"- {name} ({key}): " + ", ".join(values))
    return "\n".join(lines) + "\n"
