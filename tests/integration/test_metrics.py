"""/metrics: Prometheus exposition of the whole server's counts, whichever worker is scraped."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from typing import Any

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from seckill.ops import metrics
from support.helpers import create_sale, poll
from support.http_client import Conn, fetch, hammer


def scrape(port: int, accept: str | None = None) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """One scrape on a fresh connection (so it reaches either worker), as
    {sample name: {sorted labels: value}}, parsed by prometheus-client's own parser."""
    response = fetch(port, "GET", "/metrics", headers={"Accept": accept} if accept else None)
    assert response.status == 200, response.body
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(response.body.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict[str, Any], name: str, **labels: str) -> float:
    return samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0)  # type: ignore[no-any-return]


def expected_totals(samples: dict[str, Any], stock: int, requests: int) -> bool:
    """The counts a known load must give: `requests` distinct users buying `stock` units."""
    refused = requests - stock
    return (
        value(samples, "seckill_purchases_total", item="phone", result="won") == stock
        and value(samples, "seckill_purchases_total", item="phone", result="sold_out") == refused
        and value(samples, "seckill_requests_total", route="purchase", status="200") == stock
        and value(samples, "seckill_requests_total", route="purchase", status="409") == refused
        and value(samples, "seckill_request_duration_seconds_count", route="purchase") == requests
        # What the gate did not answer went to Redis in script calls:
        and value(samples, "seckill_batch_size_sum") + value(samples, "seckill_sold_out_gate_hits_total",
                                                              item="phone") == requests
    )


@pytest.mark.slow
def test_one_worker_of_two_reports_the_totals_of_both(start_server, redis_client: redis.Redis) -> None:
    stock, connections, per_connection = 300, 100, 10
    requests = connections * per_connection
    create_sale(redis_client, "phone", stock)
    server = start_server(workers=2)
    paths = [[f"/seckill/phone?user=u{c}-{i}" for i in range(per_connection)] for c in range(connections)]
    answers = asyncio.run(hammer(server.port, paths))
    assert sum(a.status == 200 for a in answers) == stock  # the known load

    # 100 connections were spread over both workers by the kernel (SO_REUSEPORT), and each
    # scrape, on a connection of its own, reaches either. Another worker's counts arrive
    # within metrics.PUBLISH_INTERVAL: wait until ten scrapes in a row give the totals.
    poll(lambda: all(expected_totals(scrape(server.port), stock, requests) for _ in range(10)),
         "ten scrapes in a row with the totals")
    samples = scrape(server.port)
    assert value(samples, "seckill_workers") == 2
    assert value(samples, "seckill_redis_round_trip_seconds_count") >= 1
    assert value(samples, "seckill_batches_in_flight") == 0
    assert value(samples, "seckill_build_info", version="0.1.0") == 1

    # A worker killed -9 keeps its counts in the totals (the parent keeps its last
    # snapshot); its replacement starts from zero beside them.
    pids = [int(m[1]) for line in server.lines if (m := re.search(r"worker (\d+) listening on", line))]
    os.kill(pids[0], signal.SIGKILL)
    server.wait_listening(3)
    poll(lambda: value(scrape(server.port), "seckill_workers") == 2, "two live workers again")
    poll(lambda: all(expected_totals(scrape(server.port), stock, requests) for _ in range(10)),
         "ten scrapes in a row with the totals after the kill")


def test_open_connections_and_the_exposition_formats(start_server) -> None:
    server = start_server()
    samples = scrape(server.port)
    assert value(samples, "seckill_open_connections") == 1  # the scrape's own
    assert value(samples, "seckill_requests_total", route="metrics", status="200") == 1
    # OpenMetrics when the scraper asks for it (Prometheus does), the text format otherwise.
    response = fetch(server.port, "GET", "/metrics", headers={"Accept": "application/openmetrics-text"})
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.body.endswith(b"# EOF\n")
    plain = fetch(server.port, "GET", "/metrics")
    assert plain.headers["content-type"].startswith("text/plain")
    assert fetch(server.port, "HEAD", "/metrics").status == 200
    assert fetch(server.port, "POST", "/metrics").status == 405


def test_client_chosen_names_and_refusals_are_counted_without_new_labels(start_server) -> None:
    server = start_server()
    for i in range(20):
        assert fetch(server.port, "GET", f"/seckill/nosuch{i}?user=u").status == 404
    assert fetch(server.port, "GET", "/no/such/page").status == 404
    assert fetch(server.port, "GET", "/seckill/bad%20name").status == 400
    assert fetch(server.port, "GET", "/seckill/x?user=%ff").status == 400
    with Conn(server.port) as conn:
        assert conn.request(b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: x\r\n\r\n").status == 400
    samples = scrape(server.port)
    assert value(samples, "seckill_purchases_total", item="-", result="unknown_item") == 20
    assert not [labels for labels in samples["seckill_purchases_total"] if "nosuch" in str(labels)]
    assert value(samples, "seckill_requests_total", route="purchase", status="404") == 20
    assert value(samples, "seckill_requests_total", route="not_found", status="404") == 1
    assert value(samples, "seckill_requests_total", route="purchase", status="400") == 2
    assert value(samples, "seckill_requests_total", route="unrouted", status="400") == 1


def test_redis_down_is_counted_unavailable(start_server, own_redis) -> None:
    server_redis, client = own_redis
    create_sale(client, "phone", 10)
    server = start_server("--redis-timeout", "0.5", redis_url=server_redis.url)
    assert fetch(server.port, "GET", "/seckill/phone?user=a").status == 200
    server_redis.stop()
    assert fetch(server.port, "GET", "/seckill/phone?user=b").status == 503
    samples = scrape(server.port)
    assert value(samples, "seckill_purchases_total", item="phone", result="won") == 1
    assert value(samples, "seckill_purchases_total", item="phone", result="unavailable") == 1
    assert value(samples, "seckill_requests_total", route="purchase", status="503") == 1


def test_no_metrics_turns_the_endpoint_off(start_server) -> None:
    server = start_server("--no-metrics")
    assert fetch(server.port, "GET", "/metrics").status == 404
    assert fetch(server.port, "GET", "/limit").status in (200, 404, 409)


@given(st.lists(st.floats(min_value=0, max_value=5, allow_nan=False), min_size=1, max_size=300))
def test_a_batch_of_waits_counts_as_each_wait_would(waits: list[float]) -> None:
    """The per-batch histogram update (one bisection per bucket edge crossed) gives the same
    buckets as observing each request's wait alone."""

    class Waiter:
        def __init__(self, t0: float) -> None:
            self.t0 = t0

    now = 1000.0
    requests = [(b"", Waiter(now - wait)) for wait in sorted(waits, reverse=True)]  # arrival order
    batch, alone = metrics.Histogram(metrics.LATENCY_BOUNDS), metrics.Histogram(metrics.LATENCY_BOUNDS)
    batch.observe_waits(now, requests)
    for _, waiter in requests:
        alone.observe(now - waiter.t0)
    assert batch.counts == alone.counts
    assert batch.sum == pytest.approx(alone.sum, abs=1e-6)
