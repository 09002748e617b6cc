"""Start-up: which Redis, the demo sale, the port or socket, one worker or a supervisor."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat

from redis.asyncio import Redis
from redis.exceptions import RedisError

from seckill import __version__
from seckill.app import auth
from seckill.config import Config
from seckill.exits import EXIT_BIND, EXIT_REDIS, EXIT_USAGE, Fatal
from seckill.ops import metrics
from seckill.process.supervisor import supervise
from seckill.process.worker import Wiring, run_worker
from seckill.sales import sale_store
from seckill.store.client import make_redis
from seckill.store.embedded import (
    DEFAULT_LOCAL_URL,
    EmbeddedRedis,
    RedisStartError,
    answers,
    mask_url,
)

log = logging.getLogger("seckill")


# --- The parent: Redis, the demo sale, workers ------------------------------------

def resolve_redis(config: Config) -> tuple[str, EmbeddedRedis | None]:
    """The Redis URL to use, starting the embedded one if needed. Exits 3 if none answers."""
    if config.redis is not None:
        if not asyncio.run(_ping(config.redis, config.redis_timeout)):
            raise Fatal(f"Redis at {mask_url(config.redis)} does not answer", EXIT_REDIS)
        return config.redis, None
    if answers("127.0.0.1", 6379):
        log.info("using the Redis on 127.0.0.1:6379")
        return DEFAULT_LOCAL_URL, None
    embedded = EmbeddedRedis(config.data_dir, appendfsync=config.fsync)
    try:
        url = embedded.start()
    except RedisStartError as exc:
        raise Fatal(str(exc), EXIT_REDIS) from exc
    log.info("started embedded redis-server %s at %s (AOF, appendfsync %s, in %s)",
             embedded.binary, url, config.fsync, embedded.data_dir)
    return url, embedded


async def _ping(url: str, timeout: float) -> bool:
    redis = make_redis(url, max(timeout, 2.0))
    try:
        return bool(await redis.ping())
    except (RedisError, OSError):
        return False
    finally:
        await redis.aclose()


async def _prepare(config: Config, url: str) -> None:
    redis = make_redis(url, max(config.redis_timeout, 5.0))
    try:
        await redis.script_load(sale_store.ADMIT_LUA)
        await _log_durability(redis)
        await _log_replication(redis, config.replica_acks)
        if config.demo:
            await _demo_sale(redis, config.reset_demo)
    finally:
        await redis.aclose()


async def _demo_sale(redis: Redis, reset: bool) -> None:
    """The seed's demo sale: created once (a restart keeps what was sold), or afresh with
    --reset-demo. A demo left sold out by an earlier run says so, and how to start over."""
    item = sale_store.DEMO_ITEM
    if reset:
        await sale_store.delete_sale(redis, item)
    if await sale_store.create_sale(redis, item, sale_store.Terms(stock=sale_store.DEMO_STOCK),
                                    sale_store.DEMO_SOLD):
        log.info("created the demo sale %r: stock %d, %d already sold%s", item, sale_store.DEMO_STOCK,
                 sale_store.DEMO_SOLD, " (--reset-demo)" if reset else "")
        return
    status = await sale_store.sale_status(redis, item)
    if status is not None and status["remaining"] == 0:
        log.info("the demo sale %r is sold out (%d of %d, from an earlier run): start with --reset-demo "
                 "(make run ARGS=--reset-demo) to sell it again", item, status["sold"], status["stock"])


async def _log_durability(redis: Redis) -> None:
    """Say at start-up what a Redis crash would do to acknowledged wins (README: Limits and
    guarantees), from the Redis's own persistence settings."""
    settings = {}
    try:
        for name in ("appendonly", "appendfsync", "save"):  # one per call: Redis < 7 takes one
            settings.update(await redis.config_get(name))
    except (RedisError, OSError):  # CONFIG is often disabled on managed Redis
        log.info("Redis persistence unknown (CONFIG GET refused): see README, Durability of a win")
        return
    aof, fsync, save = (
        x.decode() if isinstance(x, bytes) else str(x)
        for x in (settings.get(k, "") for k in ("appendonly", "appendfsync", "save"))
    )
    if aof == "yes" and fsync == "always":
        log.info("Redis persistence: AOF, appendfsync always: an acknowledged win survives a Redis crash")
    elif aof == "yes":
        log.warning("Redis persistence: AOF, appendfsync %s: a Redis crash can lose the last ~1 s of "
                    "acknowledged wins and sell their units again (appendfsync always loses none)", fsync)
    else:
        log.warning("Redis persistence: %s: a Redis crash loses acknowledged wins (use appendonly yes, "
                    "appendfsync always)", f"RDB snapshots ({save})" if save else "none")


async def _log_replication(redis: Redis, acks: int) -> None:
    """Say at start-up what a failover could lose with the replicas found and --replica-acks
    (README: Limits and guarantees), and warn when the setting and the replicas disagree."""
    try:
        info = await redis.info("replication")
        setting = (await redis.config_get("min-replicas-to-write")).get("min-replicas-to-write", "0")
    except (RedisError, OSError):
        log.info("Redis replication unknown (INFO or CONFIG GET refused): see README, Durability of a win")
        return
    replicas = sum(1 for key, value in info.items() if key.startswith("slave") and isinstance(value, dict)
                   and value.get("state") == "online")
    floor = int(setting.decode() if isinstance(setting, bytes) else setting or 0)
    if replicas == 0 and acks == 0:
        return  # one Redis: the persistence line above says it all
    if acks > replicas:
        log.warning("--replica-acks %d but the master has %d replicas online: every win answers 503 until "
                    "%d are", acks, replicas, acks)
    elif acks == 0:
        log.warning("Redis replication: %d replicas online, --replica-acks 0: a failover can lose the last "
                    "acknowledged wins and sell their units again (--replica-acks 1 loses none to a failover "
                    "that promotes an acknowledging replica)", replicas)
    elif acks < replicas:
        log.warning("Redis replication: --replica-acks %d of %d replicas online: a failover keeps every "
                    "acknowledged win if it promotes the most up-to-date replica (Sentinel does, with equal "
                    "replica-priority); one that promotes another can lose wins (see README)", acks, replicas)
    else:
        log.info("Redis replication: every win acknowledged by all %d replicas before it is answered", replicas)
    if replicas and floor < max(acks, 1):
        log.info("Redis min-replicas-to-write is %d: a master cut off from its replicas keeps accepting "
                 "writes that a failover would then drop (answered 503 with --replica-acks)", floor)


def check_port_free(host: str, port: int) -> None:
    """Refuse to start beside another server: SO_REUSEPORT would silently share the port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As the listener itself binds: a live listener still refuses, the TIME_WAIT
        # sockets of connections a previous server closed do not (a restart behind nginx).
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            reason = "address in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise Fatal(f"cannot listen on {host}:{port}: {reason}", EXIT_BIND) from exc


def bind_unix_socket(path: str, backlog: int) -> socket.socket:
    """The --uds socket, bound by the parent so every worker accepts from it. A stale
    socket file (no server behind it) is replaced; a live one is refused, as a port is."""
    if os.path.lexists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise Fatal(f"cannot listen on {path}: it exists and is not a socket", EXIT_BIND)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)  # left by a server that died
            else:
                raise Fatal(f"cannot listen on {path}: another server answers there", EXIT_BIND)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise Fatal(f"cannot listen on {path}: {exc.strerror}", EXIT_BIND) from exc
    os.chmod(path, 0o666)  # the proxy in front usually runs as another user (uvicorn does the same)
    sock.listen(backlog)
    return sock


def main_serve(config: Config) -> int:
    try:
        auth.verifier_for(config)  # here, for a one-line error rather than a worker's traceback
    except (ValueError, OSError) as exc:
        raise Fatal(f"--auth jwt: {exc}", EXIT_USAGE) from exc
    for path in (config.access_log, config.result_log):
        if path is not None and path != "-":
            try:  # here, for a one-line error rather than a worker's traceback
                os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
            except OSError as exc:
                raise Fatal(f"cannot write the log {path}: {exc.strerror}", EXIT_USAGE) from exc
    listening = None
    if config.uds is not None:
        listening = bind_unix_socket(config.uds, config.backlog)
    else:
        check_port_free(config.host, config.port)
    try:
        return _serve_with_redis(config, listening)
    finally:
        if listening is not None:
            listening.close()
            with contextlib.suppress(OSError):
                os.unlink(config.uds)  # type: ignore[arg-type]


def _serve_with_redis(config: Config, listening: socket.socket | None) -> int:
    url, embedded = resolve_redis(config)
    try:
        try:
            asyncio.run(_prepare(config, url))
        except (RedisError, OSError) as exc:
            raise Fatal(f"Redis at {mask_url(url)} failed during start-up: {exc}", EXIT_REDIS) from exc
        where = f"unix:{config.uds}" if config.uds else f"http://{config.host}:{config.port}"
        log.info(
            "seckill %s serving %s with %d worker%s, Redis %s, redis timeout %gs",
            __version__, where, config.workers, "" if config.workers == 1 else "s", mask_url(url),
            config.redis_timeout,
        )
        if config.admin_token is not None:
            log.info("admin API at %s/admin/items (Authorization: Bearer <the admin token>)", where)
        if config.dashboard:
            log.info("dashboard at %s/dashboard%s", where,
                     " (its data needs the admin token)" if config.admin_token is not None else "")
        log.info(
            "limits per worker: %d connections, %d requests per connection, timeouts: header %gs, "
            "body %gs, keep-alive %gs, send %gs, graceful %gs; %d purchases waiting for Redis at most",
            config.max_connections, config.keepalive_requests, config.header_timeout, config.body_timeout,
            config.keepalive_timeout, config.send_timeout, config.graceful_timeout, config.max_waiting,
        )
        if config.workers == 1:
            run_worker(config, Wiring(url), embedded.stop if embedded is not None else lambda: None, listening)
            return 0
        board = metrics.Board.create() if config.metrics else metrics.Board(None)
        try:
            wiring = Wiring(url, str(board.directory) if board.directory else None)
            return supervise(config, wiring, listening, board)
        finally:
            board.remove()
    finally:
        if embedded is not None:
            embedded.stop()
