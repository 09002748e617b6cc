"""Counting what the server does, summed over its workers, for `/metrics` and `/dashboard.json`.

The hot path only adds to plain Python ints in the worker (`WorkerStats`): purchase
results are counted once per script call, not per request (a batch of 80 answers is a
few additions); a request's wait for its batch is one histogram bucket; a sold-out gate
hit is one dict addition. Everything else (requests per status, the gate's answers as
zero-duration requests) is derived when someone asks.

Workers are separate processes and a scrape reaches one of them, so each worker writes a
snapshot of its counters to `<dir>/<pid>.json` every PUBLISH_INTERVAL (atomically: write,
then rename); the one asked reads the others' files and adds its own live counters. A
worker that dies keeps its file, renamed `dead-<pid>.json` by the parent: its counters
stay in the totals (counters never go down), its gauges leave them. A worker killed -9
loses at most its last PUBLISH_INTERVAL of counts.

prometheus-client writes the exposition (both text formats, negotiated on Accept). Its own
multiprocess mode is not used: it writes every increment into an mmap'd file under a
lock, a few microseconds per request at our rates, where these counters cost ~0.2 us.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry

from seckill.sales.outcomes import ANSWERS, Outcome

PUBLISH_INTERVAL = 0.25  # seconds between a worker's snapshots: how stale another worker's counts can be

# Purchase outcomes as metric labels, and the HTTP status each is answered with.
RESULTS = {outcome: (word, status) for outcome, (status, word) in ANSWERS.items()}
# Item names are chosen by clients: an item is its own label value only once this worker
# has seen its sale exist (an admission reply from Redis); every other name, on every path
# (unknown, or refused before Redis answered: 503s while Redis is down), is counted under
# NO_SALE, so a scan of random names cannot grow the metrics.
NO_SALE = "-"
# Sales one worker labels by name; past it, further ones are counted under NO_SALE too.
MAX_LABELLED_SALES = 10_000

# Histogram bounds (Prometheus `le`, inclusive), in seconds and requests.
LATENCY_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BOUNDS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000)


class Histogram:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def observe_waits(self, now: float, requests: Sequence[tuple[bytes, Any]]) -> None:
        """The waits `now - waiter.t0` of one batch's (user, waiter) pairs, counted per batch:
        they are in arrival order, so the waits fall as the list goes on and each bucket is a
        stretch of it, found by bisection (most batches need one or two, not one step per request)."""
        counts, bounds = self.counts, self.bounds
        n = len(requests)
        oldest = now - requests[0][1].t0
        placed = 0  # requests counted so far: the newest ones
        for i, bound in enumerate(bounds):
            if oldest <= bound:  # every request left waited at most this
                counts[i] += n - placed
                break
            # t0 - now >= -bound is exactly now - t0 <= bound (IEEE subtraction is antisymmetric)
            within = n - bisect_left(requests, -bound, 0, n - placed, key=lambda pair: pair[1].t0 - now)
            counts[i] += within - placed
            placed = within
        else:
            counts[-1] += n - placed
        self.sum += n * now - sum([waiter.t0 for _, waiter in requests])

    def dump(self) -> dict[str, Any]:
        return {"counts": self.counts, "sum": self.sum}

    def add(self, dumped: dict[str, Any]) -> None:
        for i, count in enumerate(dumped["counts"]):
            self.counts[i] += count
        self.sum += dumped["sum"]


class WorkerStats:
    """One worker's counters; the hot path writes the attributes directly."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = {}  # (route, status), purchases' results excepted
        self.purchases: dict[tuple[str, int], int] = {}  # (item, batcher outcome) decided by Redis or refused
        self.gate_hits: dict[str, int] = {}  # item: answered sold out by the gate, without Redis
        self.latency = Histogram(LATENCY_BOUNDS)  # purchases that waited for Redis: read to answered
        self.round_trip = Histogram(LATENCY_BOUNDS)  # one pipelined write of script calls to its replies
        self.batch_size = Histogram(BATCH_BOUNDS)  # requests per script call
        self.internal_errors: dict[str, int] = {}  # site: unexpected exceptions (faults.Faults counts)
        self.rate_limited: dict[str, int] = {}  # scope ("ip", "user"): purchases answered 429
        self.sales: set[str] = set()  # items whose sale Redis has shown to exist: their own label

    def count_request(self, route: str, status: int) -> None:
        key = (route, status)
        self.requests[key] = self.requests.get(key, 0) + 1

    def saw_sale(self, item: str) -> None:
        """Redis answered for this item's sale: from now on its results carry its name."""
        if item not in self.sales and len(self.sales) < MAX_LABELLED_SALES:
            self.sales.add(item)

    def forget_sale(self, item: str) -> None:
        self.sales.discard(item)

    def count_results(self, item: str, outcome: Outcome, count: int) -> None:
        if item not in self.sales:
            item = NO_SALE
        key = (item, outcome)
        self.purchases[key] = self.purchases.get(key, 0) + count

    def dump(self, connections: int, in_flight: int) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "requests": [[route, status, n] for (route, status), n in self.requests.items()],
            "purchases": [[item, outcome, n] for (item, outcome), n in self.purchases.items()],
            "gate_hits": self.gate_hits,
            "latency": self.latency.dump(),
            "round_trip": self.round_trip.dump(),
            "batch_size": self.batch_size.dump(),
            "internal_errors": self.internal_errors,
            "rate_limited": self.rate_limited,
            "connections": connections,
            "in_flight": in_flight,
        }


class Totals:
    """The server's counters: every worker's snapshot added up."""

    def __init__(self) -> None:
        self.workers = 0
        self.requests: dict[tuple[str, int], int] = {}
        self.results: dict[tuple[str, str], int] = {}  # (item, result label)
        self.gate_hits: dict[str, int] = {}
        self.latency = Histogram(LATENCY_BOUNDS)
        self.round_trip = Histogram(LATENCY_BOUNDS)
        self.batch_size = Histogram(BATCH_BOUNDS)
        self.internal_errors: dict[str, int] = {}
        self.rate_limited: dict[str, int] = {}
        self.connections = 0
        self.in_flight = 0

    def add(self, dumped: dict[str, Any], live: bool) -> None:
        for route, status, n in dumped["requests"]:
            _add(self.requests, (route, status), n)
        for item, outcome, n in dumped["purchases"]:
            result, status = RESULTS[outcome]
            _add(self.results, (item, result), n)
            _add(self.requests, ("purchase", status), n)
        for item, n in dumped["gate_hits"].items():
            _add(self.gate_hits, item, n)
            _add(self.results, (item, "sold_out"), n)
            _add(self.requests, ("purchase", 409), n)
            self.latency.counts[0] += n  # answered on arrival, without waiting for Redis
        self.latency.add(dumped["latency"])
        self.round_trip.add(dumped["round_trip"])
        self.batch_size.add(dumped["batch_size"])
        for site, n in dumped.get("internal_errors", {}).items():
            _add(self.internal_errors, site, n)
        for scope, n in dumped.get("rate_limited", {}).items():
            _add(self.rate_limited, scope, n)
        if live:
            self.workers += 1
            self.connections += dumped["connections"]
            self.in_flight += dumped["in_flight"]

    def results_by_label(self, item: str | None = None) -> dict[str, int]:
        out: dict[str, int] = {}
        for (name, result), n in self.results.items():
            if item is None or name == item:
                _add(out, result, n)
        return out


def _add(counts: dict[Any, int], key: Any, n: int) -> None:
    counts[key] = counts.get(key, 0) + n


class Board:
    """Where the workers of one server publish their snapshots (a directory on tmpfs)."""

    def __init__(self, directory: str | None) -> None:
        self.directory = Path(directory) if directory is not None else None

    @classmethod
    def create(cls) -> Board:
        shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        return cls(tempfile.mkdtemp(prefix="seckill-metrics-", dir=shm))

    def publish(self, dumped: dict[str, Any]) -> None:
        if self.directory is None:
            return
        path = self.directory / f"{dumped['pid']}.json"
        temp = path.with_suffix(".tmp")
        temp.write_bytes(json.dumps(dumped, separators=(",", ":")).encode())
        os.replace(temp, path)

    def retire(self, pid: int) -> None:
        """A worker died (the parent reaped it): keep its counters, drop its gauges."""
        if self.directory is not None:
            with contextlib.suppress(FileNotFoundError):
                os.replace(self.directory / f"{pid}.json", self.directory / f"dead-{pid}.json")

    def totals(self, own: dict[str, Any]) -> Totals:
        """The server's totals: this worker's live counters and every other's last snapshot."""
        totals = Totals()
        totals.add(own, live=True)
        if self.directory is not None:
            for path in self.directory.glob("*.json"):
                if path.name == f"{own['pid']}.json":
                    continue
                try:
                    dumped = json.loads(path.read_bytes())
                except (FileNotFoundError, ValueError):  # replaced or retired meanwhile
                    continue
                totals.add(dumped, live=not path.name.startswith("dead-"))
        return totals

    def remove(self) -> None:
        if self.directory is not None:
            for path in self.directory.iterdir():
                with contextlib.suppress(OSError):
                    path.unlink()
            with contextlib.suppress(OSError):
                self.directory.rmdir()


class _Exposition(Collector):
    def __init__(self, totals: Totals, version: str) -> None:
        self.totals = totals
        self.version = version

    def collect(self) -> Iterator[Metric]:
        t = self.totals
        info = GaugeMetricFamily("seckill_build_info", "The server's version", labels=["version"])
        info.add_metric([self.version], 1)
        yield info
        yield GaugeMetricFamily("seckill_workers", "Worker processes serving", value=t.workers)
        requests = CounterMetricFamily("seckill_requests", "HTTP requests answered, by route and status",
                                       labels=["route", "status"])
        for (route, status), n in sorted(t.requests.items()):
            requests.add_metric([route, str(status)], n)
        yield requests
        purchases = CounterMetricFamily(
            "seckill_purchases", f"Purchase decisions by item and result (item {NO_SALE!r}: names with no sale)",
            labels=["item", "result"])
        for (item, result), n in sorted(t.results.items()):
            purchases.add_metric([item, result], n)
        yield purchases
        yield _counter("seckill_sold_out_gate_hits", "Purchases answered sold out locally, without a Redis call",
                       "item", t.gate_hits)
        yield _counter("seckill_internal_errors",
                       "Unexpected exceptions, answered 500 (503 in a Redis call), by code site", "site",
                       t.internal_errors)
        yield _counter("seckill_rate_limited",
                       "Purchases answered 429 by a rate limit (--rate-per-ip, --rate-per-user)", "scope",
                       t.rate_limited)
        yield _histogram("seckill_request_duration_seconds",
                         "Purchase requests from parsed to answered (the sold-out gate's answers count as 0)",
                         t.latency, route="purchase")
        yield _histogram("seckill_redis_round_trip_seconds",
                         "One pipelined write of admission script calls to its last reply", t.round_trip)
        yield _histogram("seckill_batch_size", "Purchase requests per admission script call", t.batch_size)
        yield GaugeMetricFamily("seckill_batches_in_flight", "Pipelines sent to Redis and not yet answered",
                                value=t.in_flight)
        yield GaugeMetricFamily("seckill_open_connections", "Client connections open", value=t.connections)


def _counter(name: str, doc: str, label: str, counts: dict[str, int]) -> CounterMetricFamily:
    """A counter with one label, a sample per key."""
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, n in sorted(counts.items()):
        family.add_metric([key], n)
    return family


def _histogram(name: str, doc: str, h: Histogram, **labels: str) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=list(labels))
    buckets, total = [], 0
    for bound, count in zip((*h.bounds, float("inf")), h.counts, strict=True):
        total += count
        buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
    family.add_metric(list(labels.values()), buckets, h.sum)
    return family


def exposition(totals: Totals, version: str, accept: bytes | None) -> tuple[bytes, bytes]:
    """The metrics page and its content type, in the format the scraper's Accept asks for."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Exposition(totals, version))
    encoder, content_type = choose_encoder((accept or b"").decode("latin-1"))
    return encoder(registry), content_type.encode()
