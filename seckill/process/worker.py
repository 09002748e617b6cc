"""One worker process: the listener, the app, the clock, and a graceful drain."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import socket
from collections.abc import Callable

import uvloop

from seckill.admission import batcher as batching
from seckill.app.logged import LoggedApp
from seckill.app.routes import SeckillApp
from seckill.config import Config
from seckill.exits import EXIT_FORCED
from seckill.http.connection import ANSWER_MARGIN, App, Clock, HttpConnection, Limits, Listener, Registry
from seckill.ops import faults, metrics
from seckill.sales import order_book
from seckill.store.client import is_cluster, make_pipe, make_redis
from seckill.store.reads import ReadBatcher
from seckill.store.sentinel_watch import follow_switches

log = logging.getLogger("seckill")


@dataclasses.dataclass(frozen=True)
class Wiring:
    """What start-up found or made for the workers, beside what the user set (Config): the
    Redis in use, and where workers publish their counters (--workers N, metrics on)."""

    redis_url: str
    metrics_dir: str | None = None


async def serve(config: Config, wiring: Wiring, abort: Callable[[], None] | None = None,
                listening: socket.socket | None = None, index: int = 0) -> None:
    """Run one worker until SIGTERM/SIGINT, then drain within the graceful timeout.

    Alone (`abort` given: the clean-up of the process, e.g. stopping the embedded Redis),
    a second signal calls it and exits at once. Under `supervise()` (no `abort`) later
    signals are ignored: one stop often reaches a worker twice (Ctrl-C hits the whole
    process group, systemd signals the whole cgroup, and the parent relays it too), and
    the parent is who answers a second signal, by killing the workers.

    `listening`: a socket bound by the parent (--uds) that every worker accepts from;
    without it each worker binds host:port itself (SO_REUSEPORT)."""
    loop = asyncio.get_running_loop()
    redis = make_redis(wiring.redis_url, config.redis_timeout)
    stats = metrics.WorkerStats() if config.metrics else None
    errors = faults.Faults(stats.internal_errors if stats is not None else None)
    batch_pipe, read_pipe = make_pipe(redis), make_pipe(redis)
    batcher = batching.Batcher(
        redis, batch_pipe, timeout=config.redis_timeout, gate_interval=config.gate_interval,
        max_batch=config.max_batch, max_waiting=config.max_waiting,
        max_in_flight=config.in_flight(), stats=stats, faults=errors,
        idempotency_ttl=config.idempotency_ttl, claims=not is_cluster(redis),
        replica_acks=config.replica_acks, ack_timeout=config.ack_timeout(),
    )
    clock = Clock(loop.time())
    limits = Limits(
        header_timeout=config.header_timeout, body_timeout=config.body_timeout,
        keepalive_timeout=config.keepalive_timeout, keepalive_requests=config.keepalive_requests,
        send_timeout=config.send_timeout, max_connections=config.max_connections,
        answer_timeout=config.redis_timeout + ANSWER_MARGIN,
    )
    registry = Registry(limits.max_connections)
    reads = ReadBatcher(redis, read_pipe, timeout=config.redis_timeout, faults=errors)
    app = SeckillApp(config, redis, batcher, reads, metrics.Board(wiring.metrics_dir), stats, registry, errors)
    logged = LoggedApp(app, config, rotator=index == 0) if app.logged else None  # worker 0 rotates
    front: App = app if logged is None else logged
    line_logs = [] if logged is None else logged.logs

    def factory() -> HttpConnection:
        return HttpConnection(front, clock, registry, limits)

    if listening is not None:
        registry.listener = await Listener.serve_socket(factory, listening, config.backlog)
        where = f"unix:{config.uds}"
    else:
        registry.listener = await Listener.open(factory, config.host, config.port, config.backlog)
        where = f"{config.host}:{config.port}"
    stop = asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():
            if abort is None:
                return
            log.warning("worker %d: second signal, exiting without finishing", os.getpid())
            abort()
            os._exit(EXIT_FORCED)
        log.info("worker %d draining: answering what was read, within %gs", os.getpid(),
                 config.graceful_timeout)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)

    def on_hangup() -> None:
        """SIGHUP: read the token keys again (app/auth.py); connections go on meanwhile."""
        verifier = app.verifier
        if verifier is None:
            log.info("worker %d: SIGHUP: nothing to reload (no --auth)", os.getpid())
            return
        try:
            what = verifier.reload()
        except (ValueError, OSError) as exc:
            log.error("worker %d: SIGHUP: keys not reloaded, the old ones stay: %s", os.getpid(), exc)
        else:
            log.info("worker %d: SIGHUP: reloaded %s", os.getpid(), what)

    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})  # (blocked by the supervisor until now)

    def tick() -> None:
        # Once a second: the Date header, the coarse clock, idle and stalled connections.
        clock.now = loop.time()
        app.responses.refresh_date()
        for conn in list(registry.conns):
            conn.expire(clock.now)
        for line_log in line_logs:
            line_log.tick()
        errors.flush()
        ticker[0] = loop.call_at(clock.now + 1.0, tick)

    ticker = [loop.call_later(1.0, tick)]
    if app.board.directory is not None:
        def publish() -> None:
            app.publish()
            publisher[0] = loop.call_later(metrics.PUBLISH_INTERVAL, publish)

        publisher = [loop.call_soon(publish)]
    sweeper = loop.create_task(order_book.run_sweeper(redis, config.sweep_interval))
    switches = loop.create_task(follow_switches(redis, [batch_pipe, read_pipe]))  # (Sentinel only)
    log.info("worker %d listening on %s", os.getpid(), where)
    await stop.wait()
    sweeper.cancel()
    switches.cancel()

    # Graceful: stop accepting, answer what was read, close idle keep-alives, exit.
    deadline = loop.time() + config.graceful_timeout
    registry.shutdown()
    try:
        await asyncio.wait_for(batcher.drain(), max(0.0, deadline - loop.time()))
        await asyncio.wait_for(registry.wait_empty(), max(0.0, deadline - loop.time()))
    except TimeoutError:
        log.warning("graceful timeout: %d connections still open", len(registry.conns))
    ticker[0].cancel()
    if app.board.directory is not None:
        publisher[0].cancel()
        app.publish()  # the last counts, for the other workers' scrapes and the dashboard
    for line_log in line_logs:
        line_log.close()
    await batcher.close()
    await reads.close()
    await redis.aclose()


def run_worker(config: Config, wiring: Wiring, abort: Callable[[], None] | None = None,
               listening: socket.socket | None = None, index: int = 0) -> None:
    uvloop.run(serve(config, wiring, abort, listening, index))
