"""seckill: a flash-sale admission server.

    python seckill_server.py --port 5000            serve (see --help for every flag)
    python seckill_server.py create ITEM --stock N  create a sale (also: update, status,
                                                    list, orders, cancel, confirm, delete)

This module holds the CLI and its `Config`, the routes (`SeckillApp`) and the worker
processes. HTTP parsing is in `protocol.py` (sans-I/O) driven by `http_connection.py`;
the Redis side is `sale_store.py` (keys, scripts), `batcher.py` (coalescing) and
`order_book.py` (orders after the win); `/admin/` is `admin_api.py`.

Workers: with `--workers N > 1` the parent forks N processes that each listen on the
same port (SO_REUSEPORT), restarts one that dies, and passes SIGTERM/SIGINT on for a
graceful drain. With one worker the server runs in the parent process itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import dataclasses
import errno
import functools
import json
import logging
import os
import re
import signal
import socket
import stat
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import uvloop
from redis.asyncio import Redis
from redis.exceptions import RedisError

from seckill.admission import batcher as batching
from seckill.app.admin_api import AdminApi
from seckill.http import bodies
from seckill.http.connection import ANSWER_MARGIN, Clock, HttpConnection, Limits, Listener, Registry, Slot
from seckill.http.protocol import KNOWN_METHODS, HttpError, Request
from seckill.http.responses import (
    CLOSE,
    KEEP,
    KEEP_10,
    MAX_CACHED,
    METHOD_NOT_ALLOWED,
    NOT_FOUND,
    Responses,
    json_body,
    strip_body,
)
from seckill.ops import dashboard, faults, metrics, request_logs
from seckill.sales import order_book, sale_store
from seckill.store.client import make_pipe, make_redis, valid_url
from seckill.store.embedded import (
    DEFAULT_LOCAL_URL,
    EmbeddedRedis,
    RedisStartError,
    answers,
    mask_url,
    recorded_url,
)
from seckill.store.reads import ReadBatcher

__version__ = "0.1.0"

log = logging.getLogger("seckill")

EXIT_USAGE = 2
EXIT_REDIS = 3
EXIT_BIND = 4
EXIT_FORCED = 1  # a second SIGTERM/SIGINT cut the drain short: answers may be missing

MAX_USER = 128  # characters in a user id: room for an email or a UUID, bounds the stream
# `user=<id>` alone, with no byte that query decoding would change (%, +, &, =, #).
_PLAIN_USER_QUERY = re.compile(rb"user=[A-Za-z0-9._~:@!$'()*,;/?-]{0,%d}" % MAX_USER)


@dataclasses.dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 5000
    uds: str | None = None  # a unix socket to listen on instead of host:port (behind nginx)
    redis: str | None = None  # None: 127.0.0.1:6379 if it answers, else the embedded one
    data_dir: str = "./seckill-data"
    fsync: str = "always"  # the embedded Redis's appendfsync: "always" loses no acknowledged win
    workers: int = 1
    redis_timeout: float = 1.0
    gate_interval: float = 0.1
    max_batch: int = batching.DEFAULT_MAX_BATCH
    max_waiting: int = batching.DEFAULT_MAX_WAITING
    max_in_flight: int = batching.DEFAULT_MAX_IN_FLIGHT
    graceful_timeout: float = 10.0
    keepalive_timeout: float = Limits.keepalive_timeout
    keepalive_requests: int = Limits.keepalive_requests
    header_timeout: float = Limits.header_timeout
    body_timeout: float = Limits.body_timeout
    send_timeout: float = Limits.send_timeout
    max_connections: int = Limits.max_connections
    backlog: int = 2048
    demo: bool = True
    log_level: str = "info"
    admin_token: str | None = dataclasses.field(default=None, repr=False)  # never in a log
    sweep_interval: float = 1.0
    metrics: bool = True  # /metrics, and the counting behind it
    dashboard: bool = False  # /dashboard and /dashboard.json
    metrics_dir: str | None = None  # set by the parent: where workers publish their counters (metrics.Board)
    access_log: str | None = None  # a path, or "-" for stdout
    result_log: str | None = None
    log_rotate: str = "midnight"
    log_backups: int = 7
    forwarded_allow_ips: str = "127.0.0.1"


# --- Routes -------------------------------------------------------------------------

_PURCHASE_METHODS = (b"GET", b"POST")
_ALLOW_PURCHASE = b"Allow: GET, POST\r\n"
_ALLOW_GET = b"Allow: GET, HEAD\r\n"
_RETRY_AFTER = b"Retry-After: 1\r\n"
_UNAVAILABLE = json_body({"result": "unavailable"})
_INTERNAL = json_body({"error": "internal"})
_OK = json_body({"status": "ok"})
_NO_STORE = b"Cache-Control: no-store\r\n"
_HTML = b"text/html; charset=utf-8"
_PAGE_HEADERS = b"Content-Security-Policy: %s\r\n%s" % (dashboard.PAGE_CSP, _NO_STORE)
_SOLD_OUT = batching.SOLD_OUT
_monotonic = time.monotonic
_ITEM_CACHE_MAX = 10_000  # validated item names kept per worker; bounds client-chosen keys


# Status and result of each outcome with a fixed answer (WON, NOT_STARTED and UNAVAILABLE
# are built where they are answered).
_OUTCOMES = {
    batching.SOLD_OUT: (409, b"sold_out"),
    batching.ALREADY_BOUGHT: (409, b"already_bought"),
    batching.UNKNOWN_ITEM: (404, b"unknown_item"),
    batching.ENDED: (403, b"ended"),
    batching.USER_REQUIRED: (400, b"user_required"),
}


class Purchase(Slot):
    """A purchase waiting for its batch; becomes the connection's answer when it ends."""

    __slots__ = ("app", "item", "mode", "t0")
    t0: float  # when it was read; set by TimedPurchase (metrics on) only

    def __init__(self, app: SeckillApp, conn: HttpConnection, item: str, mode: int) -> None:
        self.conn = conn
        self.data = None
        self.close = mode == CLOSE
        self.app = app
        self.item = item
        self.mode = mode

    def finish(self, outcome: int, tag: bytes, value: int, until: int = 0) -> None:
        if outcome == batching.WON:
            body = b'{"result":"won","item":"%s","order":"%s-%d","seq":%d}' % (
                self.item.encode(), tag, value, value,
            )
            self.set(self.app.responses.build(200, body, self.mode))
        elif outcome == batching.HELD:
            body = b'{"result":"won","item":"%s","order":"%s-%d","seq":%d,"state":"pending","hold_until":"%s"}' % (
                self.item.encode(), tag, value, value, (sale_store.iso(until) or "").encode(),
            )
            self.set(self.app.responses.build(200, body, self.mode))
        elif outcome == batching.NOT_STARTED:
            self.set(self.app.not_started_answer(self.item, value / 1000, self.mode))
        else:
            self.set(self.app.purchase_answer(self.item, outcome, self.mode))


class TimedPurchase(Purchase):
    """A Purchase that notes when it was read (metrics on): the batcher turns that into the
    latency histogram once per batch (metrics.Histogram.observe_waits)."""

    __slots__ = ()

    # Purchase.__init__ written out rather than called: one Python call less per purchase.
    def __init__(self, app: SeckillApp, conn: HttpConnection, item: str, mode: int) -> None:
        self.conn = conn
        self.data = None
        self.close = mode == CLOSE
        self.app = app
        self.item = item
        self.mode = mode
        self.t0 = time.monotonic()


class SeckillApp:
    def __init__(self, config: Config, redis: Redis, batcher: batching.Batcher, reads: ReadBatcher,
                 stats: metrics.WorkerStats | None = None, registry: Registry | None = None,
                 faults_: faults.Faults | None = None) -> None:
        self.config = config
        self.redis = redis
        self.batcher = batcher
        self.reads = reads
        self.admin = AdminApi(redis, config.admin_token)
        self.responses = Responses()
        self._items: dict[bytes, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.faults = faults_ or faults.Faults(stats.internal_errors if stats is not None else None)
        # Metrics (None: off): the hot path adds to these directly.
        self.stats = stats
        self.registry = registry
        self.board = metrics.Board(config.metrics_dir)
        self._purchase_class = Purchase if stats is None else TimedPurchase
        self.gate_hits = None if stats is None else stats.gate_hits
        # Logs (off by default): a dispatch that also reports each answer, and slots that do.
        self.logs: list[request_logs.LineLog] = []
        self.access_log: request_logs.LineLog | None = None
        self.result_log: request_logs.LineLog | None = None
        self._slot_class: type[Slot] = Slot
        self._trust = request_logs.ProxyTrust(config.forwarded_allow_ips)
        self._when = (0, "")  # $time_local, made once a second

    def open_logs(self, rotator: bool) -> None:
        """Start the --access-log and --result-log writers (worker 0 rotates them)."""
        config = self.config
        every = request_logs.parse_rotation(config.log_rotate)
        for name in ("access_log", "result_log"):
            path = getattr(config, name)
            if path is not None:
                log_ = request_logs.LineLog(path, every, config.log_backups, rotator)
                setattr(self, name, log_)
                self.logs.append(log_)
        if self.logs:
            self.dispatch = self._dispatch_logged  # type: ignore[method-assign]
            self._slot_class = _reporting(Slot)
            self._purchase_class = _reporting(self._purchase_class)

    def dispatch(self, request: Request, conn: HttpConnection) -> bytes | Slot:
        if conn.closing:
            mode = CLOSE
        else:
            mode = KEEP_10 if request.http10 else KEEP
        if request.method not in KNOWN_METHODS:
            conn.closing = True
            self.count("unrouted", 501)
            return self.responses.get(501, json_body({"error": "method not implemented"}), CLOSE)
        try:
            path = request.path
            if path[:9] == b"/seckill/":  # the hot route first, without a call to _route
                answer = self._purchase(request, conn, path[9:], mode)
            else:
                answer = self._route(request, conn, mode)
        except HttpError as exc:
            self.count(_route_name(request.path), exc.status)
            answer = self.responses.get(exc.status, json_body({"error": exc.reason}), mode)
        if request.method == b"HEAD" and answer.__class__ is bytes:
            return strip_body(answer)
        return answer

    def internal_error(self, site: str, exc: BaseException) -> bytes:
        """An unexpected exception at `site`: counted, logged (rate-limited), answered 500 and a close."""
        self.faults.report(site, exc)
        self.count("unrouted", 500)
        return self.responses.get(500, _INTERNAL, CLOSE)

    def count(self, route: str, status: int) -> None:
        """Metrics: one answer on a route other than a purchase's result (those are counted per batch)."""
        if self.stats is not None:
            self.stats.count_request(route, status)

    def refused(self, conn: HttpConnection, status: int, answer: bytes) -> None:
        self.count("unrouted", status)
        if self.access_log is not None:
            self.report(None, conn, answer)

    def _dispatch_logged(self, request: Request, conn: HttpConnection) -> bytes | Slot:
        answer = SeckillApp.dispatch(self, request, conn)
        if isinstance(answer, bytes):
            self.report(request, conn, answer)
        else:
            answer.request = request  # type: ignore[attr-defined]  # reported when set (_reporting)
        return answer

    def report(self, request: Request | None, conn: HttpConnection, answer: bytes) -> None:
        """Log one answer: the access log's line, and the result log's for a purchase decision."""
        now = time.time()
        second = int(now)
        if self._when[0] != second:
            self._when = (second, request_logs.local_time(now))
        status = int(answer[9:12])
        client = conn.peer_address
        if request is not None:
            client = self._trust.client(client, request.header(b"x-forwarded-for"), request.header(b"x-real-ip"))
        if self.access_log is not None:
            if request is None:
                line, referer, agent = None, None, None
            else:
                line = b"%s %s %s" % (request.method, request.target, b"HTTP/1.0" if request.http10 else b"HTTP/1.1")
                referer, agent = request.header(b"referer"), request.header(b"user-agent")
            sent = len(answer) - answer.index(b"\r\n\r\n") - 4
            self.access_log.add(request_logs.combined(client, self._when[1], line, status, sent, referer, agent))
        if self.result_log is not None and request is not None:
            self._report_result(request, answer, now, client)

    def _report_result(self, request: Request, answer: bytes, now: float, client: str) -> None:
        path = request.path
        if path == b"/limit":
            item = "limit"
        elif path[:9] == b"/seckill/" and not path.endswith(b"/order"):
            item = path[9:].decode("latin-1")
        else:
            return
        body = answer[answer.index(b"\r\n\r\n") + 4:]
        try:
            decided = json.loads(body) if body else {}
            user = _user(request).decode()
        except (ValueError, HttpError):
            return  # a malformed request: no decision was made
        result = decided.get("result")
        if result is None:  # refused before any decision (bad item name, wrong method)
            return
        assert self.result_log is not None
        self.result_log.add(request_logs.result_line(now, item, user, result, decided.get("order"), client))

    def _route(self, request: Request, conn: HttpConnection, mode: int) -> bytes | Slot:
        path = request.path
        if path == b"/limit":
            return self._purchase(request, conn, b"limit", mode)
        route = _route_name(path)
        if route == "admin":
            refusal = self.admin.check(request)
            if refusal is not None:
                self.count(route, refusal[0])
                return self.responses.build(*refusal[:2], mode, refusal[2])
            return self._later(conn, mode, request, self.admin.handle(request), cache=False, route=route)
        if route in ("dashboard", "dashboard.json") and not self.config.dashboard:
            route = "not_found"
        elif route == "metrics" and self.stats is None:
            route = "not_found"
        if route == "not_found":
            self.count(route, 404)
            return self.responses.get(404, NOT_FOUND, mode)
        if request.method != b"GET" and request.method != b"HEAD":
            self.count(route, 405)
            return self.responses.get(405, METHOD_NOT_ALLOWED, mode, _ALLOW_GET)
        if route == "healthz":
            faults.inject("healthz")
            self.count(route, 200)
            return self.responses.get(200, _OK, mode)
        if route == "readyz":
            return self._later(conn, mode, request, self._ready(), route=route)
        if route == "metrics":
            self.count(route, 200)
            body, content_type = metrics.exposition(self.totals(), __version__, request.header(b"accept"))
            return self.responses.build(200, body, mode, content_type=content_type)
        if route == "dashboard":
            self.count(route, 200)
            return self.responses.get(200, dashboard.PAGE, mode, _PAGE_HEADERS, content_type=_HTML)
        if route == "dashboard.json":
            refusal = self.admin.check(request, required=False)
            if refusal is not None:
                self.count(route, refusal[0])
                return self.responses.build(*refusal[:2], mode, refusal[2])
            return self._later(conn, mode, request, self._dashboard(), cache=False, route=route)
        return self._later(conn, mode, request, self._stock(self._item(path[7:])), route=route)

    def _snapshot(self) -> dict[str, Any]:
        """This worker's counters and gauges (metrics on)."""
        assert self.stats is not None
        return self.stats.dump(len(self.registry.conns) if self.registry else 0, self.batcher.in_flight)

    def totals(self) -> metrics.Totals:
        """The server's counters, over all workers (metrics on)."""
        return self.board.totals(self._snapshot())

    def publish(self) -> None:
        """Write this worker's counters where the other workers read them (metrics.Board)."""
        if self.stats is not None and self.board.directory is not None:
            try:
                self.board.publish(self._snapshot())
            except OSError as exc:  # a full tmpfs: the scrape of another worker misses ours
                log.warning("cannot publish metrics: %s", exc)

    async def _dashboard(self) -> tuple[int, bytes, bytes]:
        totals = self.totals() if self.stats is not None else metrics.Totals()
        try:
            sales: list[dict[str, Any]] | None = await asyncio.wait_for(
                sale_store.list_sales(self.redis), self.config.redis_timeout)
        except (TimeoutError, RedisError, OSError):
            sales = None
        return 200, json_body(metrics.dashboard(totals, __version__, time.time(), sales)), _NO_STORE

    def _item(self, raw: bytes) -> str:
        item = self._items.get(raw)
        if item is None:
            text = raw.decode("latin-1")
            if not sale_store.valid_item(text):
                raise HttpError(400, "item names are 1-64 characters of A-Z a-z 0-9 _ . : -")
            item = text
            if len(self._items) < _ITEM_CACHE_MAX:
                self._items[raw] = item
        return item

    # Purchases: the hot path.
    def _purchase(self, request: Request, conn: HttpConnection, raw_item: bytes, mode: int) -> bytes | Slot:
        item = self._items.get(raw_item)
        if item is None:
            if raw_item[-6:] == b"/order":
                return self._order_lookup(request, conn, raw_item[:-6], mode)
            item = self._item(raw_item)
        if request.method not in _PURCHASE_METHODS:
            self.count("purchase", 405)
            return self.responses.get(405, METHOD_NOT_ALLOWED, mode, _ALLOW_PURCHASE)
        batcher = self.batcher
        gate = batcher.gates.get(item)  # (batcher.gate() inlined: this is every request)
        if gate is not None and _monotonic() < gate[0]:
            # Before reading the user: after a sell-out this is nearly every request, and
            # the answer is the same for anyone (a malformed user too).
            outcome = gate[1]
            if outcome == _SOLD_OUT:
                hits = self.gate_hits
                if hits is not None:
                    hits[item] = hits.get(item, 0) + 1
                return self.purchase_answer(item, outcome, mode)
            if self.stats is not None:
                self.stats.count_results(item, outcome, 1)
            if outcome == batching.NOT_STARTED:
                return self.not_started_answer(item, gate[2] - time.monotonic(), mode)
            return self.purchase_answer(item, outcome, mode)
        user = _user(request) if request.query or request.body else b""
        purchase = self._purchase_class(self, conn, item, mode)
        if not batcher.submit(item, user, purchase):
            if self.stats is not None:
                self.stats.count_results(item, batching.UNAVAILABLE, 1)
            return self.purchase_answer(item, batching.UNAVAILABLE, mode)
        return purchase

    def purchase_answer(self, item: str, outcome: int, mode: int) -> bytes:
        """The answer for an outcome other than WON (those carry an order: Purchase.finish)."""
        memo = self.responses.memo
        key = (outcome, item, mode)
        answer = memo.get(key)
        if answer is not None:
            return answer
        if outcome == batching.UNAVAILABLE:
            answer = self.responses.build(503, _UNAVAILABLE, mode, _RETRY_AFTER)
        else:
            status, result = _OUTCOMES[outcome]
            body = b'{"result":"%s","item":"%s"}' % (result, item.encode())
            answer = self.responses.build(status, body, mode)
        if len(memo) < MAX_CACHED:
            memo[key] = answer
        return answer

    def not_started_answer(self, item: str, starts_in: float, mode: int) -> bytes:
        body = b'{"result":"not_started","item":"%s","starts_in":%.3f}' % (item.encode(), max(0.0, starts_in))
        return self.responses.build(403, body, mode)

    def _order_lookup(self, request: Request, conn: HttpConnection, raw_item: bytes, mode: int) -> bytes | Slot:
        """GET /seckill/{item}/order?user=U: the user's live orders, e.g. after a 503."""
        if request.method != b"GET" and request.method != b"HEAD":
            self.count("order", 405)
            return self.responses.get(405, METHOD_NOT_ALLOWED, mode, _ALLOW_GET)
        item = self._item(raw_item)
        user = _user(request).decode()
        if not user:
            raise HttpError(400, "user is required: ?user=...")
        # Not a task per lookup, as _later makes: the ReadBatcher sends the lookups of one
        # tick together and calls back (a lookup cost five purchases' time through redis-py).
        slot = self._slot_class(conn, conn.closing)
        head = request.method == b"HEAD"

        def done(reply: Any) -> None:
            try:
                faults.inject("order")
                if isinstance(reply, BaseException):
                    log.debug("order lookup failed: %r", reply)
                    status, body, extra = 503, _UNAVAILABLE, _RETRY_AFTER
                else:
                    status, body, extra = self._orders_answer(item, user, order_book.lookup_orders(reply))
                self.count("order", status)
                answer = self.responses.build(status, body, mode, extra)
                slot.set(strip_body(answer) if head else answer)
            except Exception as exc:
                slot.fail("order", exc)

        if not self.reads.call(*order_book.lookup_call(item, user), done):
            self.count("order", 503)
            return self.responses.get(503, _UNAVAILABLE, mode, _RETRY_AFTER)
        return slot

    @staticmethod
    def _orders_answer(item: str, user: str, orders: list[dict[str, Any]] | None) -> tuple[int, bytes, bytes]:
        if orders is None:
            return 404, json_body({"result": "unknown_item", "item": item}), b""
        if not orders:
            return 404, json_body({"result": "no_order", "item": item, "user": user}), b""
        return 200, json_body({"item": item, "user": user, "orders": orders}), b""

    # Slow paths: a few Redis calls each, answered through a slot.
    def _later(self, conn: HttpConnection, mode: int, request: Request, work: Any, cache: bool = True,
               route: str = "stock") -> Slot:
        slot = self._slot_class(conn, conn.closing)
        head = request.method == b"HEAD"

        async def run() -> None:
            # The one way a background answer is made: whatever raises, the slot is answered.
            try:
                try:
                    faults.inject(route)
                    status, body, extra = await asyncio.wait_for(work, self.config.redis_timeout)
                except (TimeoutError, RedisError, OSError) as exc:
                    log.debug("redis call failed: %r", exc)
                    status, body, extra = 503, _UNAVAILABLE, _RETRY_AFTER
                finally:
                    work.close()  # (never started if the fault came first: not awaited)
                self.count(route, status)
                if cache:
                    answer = self.responses.get(status, body, mode, extra)
                else:
                    answer = self.responses.build(status, body, mode, extra)
                slot.set(strip_body(answer) if head else answer)
            except Exception as exc:
                slot.fail(route, exc)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return slot

    async def _stock(self, item: str) -> tuple[int, bytes, bytes]:
        status = await sale_store.sale_status(self.redis, item)
        if status is None:
            return 404, json_body({"result": "unknown_item", "item": item}), b""
        public = {k: status[k] for k in ("item", "stock", "sold", "remaining")}
        return 200, json_body(public), b""

    async def _ready(self) -> tuple[int, bytes, bytes]:
        await self.redis.ping()
        return 200, _OK, b""


def _reporting(base: type[Any]) -> type[Any]:
    """`base` (a Slot) that logs its answer when it is set (SeckillApp.report)."""

    class Reporting(base):  # type: ignore[misc]
        __slots__ = ("request",)

        def set(self, data: bytes) -> None:
            app = self.app if hasattr(self, "app") else self.conn._app
            request = getattr(self, "request", None)
            if request is not None:
                app.report(request, self.conn, data)
            base.set(self, data)

    Reporting.__name__ = f"Reporting{base.__name__}"
    return Reporting


_ROUTES = {b"/healthz": "healthz", b"/readyz": "readyz", b"/metrics": "metrics", b"/dashboard": "dashboard",
           b"/dashboard.json": "dashboard.json", b"/limit": "purchase"}


def _route_name(path: bytes) -> str:
    """The metrics label of a path: a fixed set, whatever clients ask for."""
    name = _ROUTES.get(path)
    if name is not None:
        return name
    if path[:9] == b"/seckill/":
        return "order" if path.endswith(b"/order") else "purchase"
    if path[:7] == b"/stock/":
        return "stock"
    if path[:7] == b"/admin/":
        return "admin"
    return "not_found"


def _user(request: Request) -> bytes:
    """The buyer's id from `?user=` or a form/JSON body (the body wins); b"" when anonymous."""
    if not request.body and _PLAIN_USER_QUERY.fullmatch(request.query):
        return request.query[5:]  # what parse_qsl would give, without its cost
    user = _form_user(request.query)
    if request.body:
        ctype = (request.header(b"content-type") or b"").split(b";")[0].strip().lower()
        if ctype == b"application/json":
            data = bodies.json_value(request.body)
            named = data.get("user", "") if isinstance(data, dict) else None
            if not isinstance(named, str):
                raise HttpError(400, "user must be a string")
            user = named or user
        elif ctype in (b"", b"application/x-www-form-urlencoded"):
            user = _form_user(request.body) or user
        else:
            raise HttpError(415, "body must be a form or JSON")
    if len(user) > MAX_USER or not user.isprintable():
        raise HttpError(400, f"user must be at most {MAX_USER} printable characters")
    return user.encode()


def _form_user(form: bytes) -> str:
    """The last `user` in a query string or urlencoded form; "" if none."""
    user = ""
    for key, value in bodies.form_pairs(form):
        if key == "user":
            user = value
    return user


# --- One worker ---------------------------------------------------------------------

async def serve(config: Config, abort: Callable[[], None] | None = None,
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
    assert config.redis is not None
    redis = make_redis(config.redis, config.redis_timeout)
    stats = metrics.WorkerStats() if config.metrics else None
    errors = faults.Faults(stats.internal_errors if stats is not None else None)
    batcher = batching.Batcher(
        redis, make_pipe(redis), timeout=config.redis_timeout, gate_interval=config.gate_interval,
        max_batch=config.max_batch, max_waiting=config.max_waiting,
        max_in_flight=config.max_in_flight, stats=stats, faults=errors,
    )
    clock = Clock(loop.time())
    # Config has a field of the same name for each limit (the flags), but the answer deadline.
    limits = Limits(answer_timeout=config.redis_timeout + ANSWER_MARGIN, **{
        f.name: getattr(config, f.name) for f in dataclasses.fields(Limits) if f.name != "answer_timeout"})
    registry = Registry(limits.max_connections)
    reads = ReadBatcher(redis, make_pipe(redis), timeout=config.redis_timeout, faults=errors)
    app = SeckillApp(config, redis, batcher, reads, stats, registry, errors)
    app.open_logs(rotator=index == 0)
    def factory() -> HttpConnection:
        return HttpConnection(app, clock, registry, limits)

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

    def tick() -> None:
        # Once a second: the Date header, the coarse clock, idle and stalled connections.
        clock.now = loop.time()
        app.responses.refresh_date()
        for conn in list(registry.conns):
            conn.expire(clock.now)
        for line_log in app.logs:
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
    log.info("worker %d listening on %s", os.getpid(), where)
    await stop.wait()
    sweeper.cancel()

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
    for line_log in app.logs:
        line_log.close()
    await batcher.close()
    await reads.close()
    await redis.aclose()


def run_worker(config: Config, abort: Callable[[], None] | None = None,
               listening: socket.socket | None = None, index: int = 0) -> None:
    uvloop.run(serve(config, abort, listening, index))


# --- The parent: Redis, the demo sale, workers ------------------------------------

def resolve_redis(config: Config) -> tuple[str, EmbeddedRedis | None]:
    """The Redis URL to use, starting the embedded one if needed. Exits 3 if none answers."""
    if config.redis is not None:
        if not asyncio.run(_ping(config.redis, config.redis_timeout)):
            die(f"Redis at {mask_url(config.redis)} does not answer", EXIT_REDIS)
        return config.redis, None
    if answers("127.0.0.1", 6379):
        log.info("using the Redis on 127.0.0.1:6379")
        return DEFAULT_LOCAL_URL, None
    embedded = EmbeddedRedis(config.data_dir, appendfsync=config.fsync)
    try:
        url = embedded.start()
    except RedisStartError as exc:
        die(str(exc), EXIT_REDIS)
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


async def _prepare(config: Config) -> None:
    assert config.redis is not None
    redis = make_redis(config.redis, max(config.redis_timeout, 5.0))
    try:
        await redis.script_load(sale_store.ADMIT_LUA)
        await _log_durability(redis)
        if config.demo and await sale_store.create_sale(
            redis, sale_store.DEMO_ITEM, sale_store.Terms(stock=sale_store.DEMO_STOCK), sale_store.DEMO_SOLD
        ):
            log.info("created the demo sale %r: stock %d, %d already sold",
                     sale_store.DEMO_ITEM, sale_store.DEMO_STOCK, sale_store.DEMO_SOLD)
    finally:
        await redis.aclose()


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
            die(f"cannot listen on {host}:{port}: {reason}", EXIT_BIND)


def bind_unix_socket(path: str, backlog: int) -> socket.socket:
    """The --uds socket, bound by the parent so every worker accepts from it. A stale
    socket file (no server behind it) is replaced; a live one is refused, as a port is."""
    if os.path.lexists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            die(f"cannot listen on {path}: it exists and is not a socket", EXIT_BIND)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)  # left by a server that died
            else:
                die(f"cannot listen on {path}: another server answers there", EXIT_BIND)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        die(f"cannot listen on {path}: {exc.strerror}", EXIT_BIND)
    os.chmod(path, 0o666)  # the proxy in front usually runs as another user (uvicorn does the same)
    sock.listen(backlog)
    return sock


def main_serve(config: Config) -> int:
    for path in (config.access_log, config.result_log):
        if path is not None and path != "-":
            try:  # here, for a one-line error rather than a worker's traceback
                os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
            except OSError as exc:
                die(f"cannot write the log {path}: {exc.strerror}", EXIT_USAGE)
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
    config = dataclasses.replace(config, redis=url)
    try:
        try:
            asyncio.run(_prepare(config))
        except (RedisError, OSError) as exc:
            die(f"Redis at {mask_url(url)} failed during start-up: {exc}", EXIT_REDIS)
        log.info(
            "seckill %s serving %s with %d worker%s, Redis %s, redis timeout %gs",
            __version__, f"unix:{config.uds}" if config.uds else f"http://{config.host}:{config.port}",
            config.workers, "" if config.workers == 1 else "s", mask_url(url), config.redis_timeout,
        )
        log.info(
            "limits per worker: %d connections, %d requests per connection, timeouts: header %gs, "
            "body %gs, keep-alive %gs, send %gs, graceful %gs; %d purchases waiting for Redis at most",
            config.max_connections, config.keepalive_requests, config.header_timeout, config.body_timeout,
            config.keepalive_timeout, config.send_timeout, config.graceful_timeout, config.max_waiting,
        )
        if config.workers == 1:
            run_worker(config, embedded.stop if embedded is not None else lambda: None, listening)
            return 0
        board = metrics.Board.create() if config.metrics else metrics.Board(None)
        try:
            shared = dataclasses.replace(config, metrics_dir=str(board.directory) if board.directory else None)
            return supervise(shared, listening, board)
        finally:
            board.remove()
    finally:
        if embedded is not None:
            embedded.stop()


_PARENT_SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}
CRASH_WINDOW = 10.0  # seconds; more than CRASH_LIMIT worker deaths in it and we give up
CRASH_LIMIT = 10


def supervise(config: Config, listening: socket.socket | None = None,
              board: metrics.Board | None = None) -> int:
    signal.pthread_sigmask(signal.SIG_BLOCK, _PARENT_SIGNALS)
    children: dict[int, int] = {}
    deaths: list[float] = []

    parent = os.getpid()

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                _stop_with_parent(parent)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _PARENT_SIGNALS)
                run_worker(config, listening=listening, index=index)
            except BaseException:
                log.exception("worker %d crashed", index)
                code = 1
            finally:
                os._exit(code)
        children[pid] = index

    for index in range(config.workers):
        spawn(index)
    stopping = False
    deadline = 0.0
    exit_code = 0
    while children:
        if stopping:
            info = signal.sigtimedwait(_PARENT_SIGNALS, max(0.0, deadline - time.monotonic()))
            if info is None:  # past the graceful timeout
                for pid in children:
                    os.kill(pid, signal.SIGKILL)
        else:
            info = signal.sigwaitinfo(_PARENT_SIGNALS)
        if info is not None and info.si_signo != signal.SIGCHLD:
            if stopping:  # a second signal: stop now
                log.warning("second signal: killing %d workers without finishing", len(children))
                for pid in children:
                    os.kill(pid, signal.SIGKILL)
                exit_code = EXIT_FORCED
            else:
                stopping = True
                deadline = time.monotonic() + config.graceful_timeout + 1.0
                log.info("stopping %d workers", len(children))
                for pid in children:
                    os.kill(pid, signal.SIGTERM)
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            index = children.pop(pid)
            if board is not None:
                board.retire(pid)  # its counters stay in the totals, its gauges leave
            if stopping:
                continue
            log.error("worker %d (pid %d) died: %s", index, pid, _describe_status(status))
            now = time.monotonic()
            deaths = [t for t in deaths if now - t < CRASH_WINDOW] + [now]
            if len(deaths) > CRASH_LIMIT:
                log.error("workers keep dying; giving up")
                stopping, exit_code = True, 1
                deadline = now + config.graceful_timeout
                for other in children:
                    os.kill(other, signal.SIGTERM)
                continue
            spawn(index)
    return exit_code


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _stop_with_parent(parent: int) -> None:
    """Have the kernel send this worker SIGTERM (a drain) when the parent dies: a parent
    killed -9 (the OOM killer; supervisord, which signals the parent alone) must not leave
    its workers serving the port unsupervised, where no new server can listen."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before that: SIGTERM is blocked, delivered once unblocked
        os.kill(os.getpid(), signal.SIGTERM)


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"


# --- CLI ----------------------------------------------------------------------------

class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default, except where there is none to show."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30, width=100)

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None:
            return action.help or ""
        return super()._get_help_string(action) or ""


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, as a CLI tool's should be."""

    def error(self, message: str) -> NoReturn:
        die(f"{message} (see --help)", EXIT_USAGE)


def die(message: str, code: int) -> NoReturn:
    print(f"seckill-server: error: {message}", file=sys.stderr)
    sys.exit(code)


def _bounded(kind: type, low: float, high: float | None = None) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {kind.__name__}") from None
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"{text} is out of range: must be {bound}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _redis_url(text: str) -> str:
    if not valid_url(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a redis://, rediss://, unix:// or redis+cluster://host:port[,host:port...] URL")
    return text


def _rotation(text: str) -> str:
    try:
        request_logs.parse_rotation(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _proxies(text: str) -> str:
    try:
        request_logs.ProxyTrust(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    return text


def _add_redis_flags(parser: argparse.ArgumentParser) -> None:
    d = Config()
    parser.add_argument(
        "--redis", type=_redis_url, default=None, metavar="URL",
        help="Redis URL (redis://, rediss://, unix://), or a Redis Cluster: "
             "redis+cluster://[:password@]host:port[,host:port...]. Default: 127.0.0.1:6379 if it answers, "
             "else the embedded redis-server under --data-dir",
    )
    parser.add_argument("--data-dir", default=d.data_dir, metavar="DIR",
                        help="where the embedded Redis keeps its AOF and log")


def build_serve_parser() -> argparse.ArgumentParser:
    d = Config()
    parser = _Parser(
        prog="seckill-server",
        description="Flash-sale admission server: HTTP/1.1 on uvloop, stock in Redis.",
        epilog="Sale admin: seckill-server {create,update,status,list,orders,cancel,confirm,delete} ... "
               "(each takes --redis; see seckill-server create --help).",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"seckill {__version__}")
    parser.add_argument("--host", default=d.host, help="address to listen on")
    parser.add_argument("--port", type=_bounded(int, 1, 65535), default=d.port, help="TCP port")
    parser.add_argument("--uds", default=None, metavar="PATH",
                        help="listen on this unix socket instead of --host/--port (behind nginx: "
                        "deploy/nginx.conf); mode 0666, a stale one is replaced, removed at exit")
    _add_redis_flags(parser)
    parser.add_argument("--fsync", choices=["always", "everysec"], default=d.fsync,
                        help="the embedded Redis's AOF fsync: always (an acknowledged win survives a crash; "
                        "about a third fewer wins per second while units remain) or everysec (a crash "
                        "can lose the last ~1 s of wins). A --redis server keeps its own setting")
    parser.add_argument("--workers", type=_bounded(int, 1, 256), default=d.workers,
                        help="worker processes sharing the port (SO_REUSEPORT)")
    parser.add_argument("--redis-timeout", type=_bounded(float, 0.001), default=d.redis_timeout,
                        metavar="SECONDS", help="a Redis call slower than this answers 503")
    parser.add_argument("--gate-interval", type=_bounded(float, 0.0), default=d.gate_interval,
                        metavar="SECONDS",
                        help="a sold-out item is answered 409 locally, re-checked this often")
    parser.add_argument("--max-batch", type=_bounded(int, 1, 100_000), default=d.max_batch,
                        help="requests per script call, at most")
    parser.add_argument("--max-waiting", type=_bounded(int, 1), default=d.max_waiting,
                        help="purchases waiting for Redis per worker before answering 503")
    parser.add_argument("--max-in-flight", type=_bounded(int, 1, 64), default=d.max_in_flight,
                        help="batches sent to Redis and not yet answered, per worker")
    parser.add_argument("--graceful-timeout", type=_bounded(float, 0.0),
                        default=d.graceful_timeout, metavar="SECONDS",
                        help="on SIGTERM, time to finish what was read before exiting")
    parser.add_argument("--keepalive-timeout", type=_bounded(float, 0.0),
                        default=d.keepalive_timeout, metavar="SECONDS",
                        help="close a keep-alive connection idle this long (checked each second)")
    parser.add_argument("--keepalive-requests", type=_bounded(int, 1), default=d.keepalive_requests,
                        metavar="N", help="requests per connection, then Connection: close")
    parser.add_argument("--header-timeout", type=_bounded(float, 0.0), default=d.header_timeout,
                        metavar="SECONDS",
                        help="a request's head must arrive whole within this from its first byte, else 408")
    parser.add_argument("--body-timeout", type=_bounded(float, 0.0), default=d.body_timeout,
                        metavar="SECONDS", help="a request body stalled this long between two reads gets 408")
    parser.add_argument("--send-timeout", type=_bounded(float, 0.0), default=d.send_timeout,
                        metavar="SECONDS",
                        help="a client that takes none of its answers this long (write buffer full) is dropped")
    parser.add_argument("--max-connections", type=_bounded(int, 1), default=d.max_connections,
                        metavar="N", help="open connections per worker; at the limit, stop accepting "
                        "until one closes (new clients wait in the backlog)")
    parser.add_argument("--backlog", type=_bounded(int, 1), default=d.backlog,
                        help="listen backlog per worker")
    parser.add_argument("--no-demo", dest="demo", action="store_false",
                        help="do not create the demo sale 'limit' (stock 100, 95 sold) at start")
    parser.add_argument("--log-level", default=d.log_level,
                        choices=["debug", "info", "warning", "error"], help="server log level")
    parser.add_argument("--admin-token", default=None,
                        metavar="TOKEN", help="enables the /admin/ API for `Authorization: Bearer TOKEN` "
                        "(default: $SECKILL_ADMIN_TOKEN; unset: /admin/ is 404). Prefer the variable: "
                        "a flag shows in ps")
    parser.add_argument("--access-log", default=None, metavar="PATH",
                        help="log each request in nginx's combined format to PATH, or - for stdout (default: off)")
    parser.add_argument("--result-log", default=None, metavar="PATH",
                        help="log each purchase decision (time, item, user, result, order, client) as a JSON "
                        "line to PATH, or - for stdout (default: off)")
    parser.add_argument("--log-rotate", type=_rotation, default=d.log_rotate, metavar="WHEN",
                        help="rotate the access and result logs: midnight, hourly, every N seconds (60s), or never")
    parser.add_argument("--log-backups", type=_bounded(int, 0, 10_000), default=d.log_backups, metavar="N",
                        help="rotated files kept per log")
    parser.add_argument("--forwarded-allow-ips", type=_proxies, default=d.forwarded_allow_ips, metavar="IPS",
                        help="comma-separated addresses or networks of proxies (nginx) whose X-Forwarded-For / "
                        "X-Real-IP name the client in the logs; * trusts any peer; unix-socket peers are trusted")
    parser.add_argument("--no-metrics", dest="metrics", action="store_false",
                        help="no /metrics and no counting behind it (the dashboard then shows sales only)")
    parser.add_argument("--dashboard", action="store_true",
                        help="serve the live sale dashboard at /dashboard (its data, /dashboard.json, needs "
                        "the admin token when one is set)")
    parser.add_argument("--sweep-interval", type=_bounded(float, 0.05, 3600), default=d.sweep_interval,
                        metavar="SECONDS", help="how often each worker expires unpaid holds")
    return parser


def _time_arg(text: str) -> str | None:
    """A --starts-at/--ends-at value as the admin API takes it: 'none' is JSON null."""
    return None if text.lower() == "none" else text


def build_admin_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="seckill-server", description="Sale admin, straight to Redis.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    commands.add_parser = functools.partial(  # type: ignore[method-assign]
        commands.add_parser, formatter_class=_HelpFormatter
    )
    create = commands.add_parser("create", help="create a sale (refused if it exists)")
    update = commands.add_parser("update", help="change a sale's terms while it runs")
    for sub in (create, update):
        sub.add_argument("item")
        # Absent unless given; range checks are sale_store.parse_terms', as for the admin API.
        sub.argument_default = argparse.SUPPRESS
        sub.add_argument("--stock", type=int, help="units for sale")
        sub.add_argument("--per-user", type=int, help="live orders one user may hold (0: no limit; "
                         "a limit needs ?user=)")
        sub.add_argument("--starts-at", type=_time_arg, metavar="TIME",
                         help="ISO-8601 start (UTC unless an offset is given); before it: 403 not_started"
                              + ("; 'none' removes it" if sub is update else ""))
        sub.add_argument("--ends-at", type=_time_arg, metavar="TIME",
                         help="ISO-8601 end; from it on: 403 ended" + ("; 'none' removes it" if sub is update else ""))
        sub.add_argument("--hold-seconds", type=int, metavar="SECONDS",
                         help="a win is a hold, pending until confirmed or this passes (0: no holds)")
        sub.argument_default = None
    create.add_argument("--sold", type=_bounded(int, 0, sale_store.MAX_STOCK), default=0,
                        help="units already sold elsewhere")
    for name, text in (("status", "print a sale's counts as JSON"),
                       ("delete", "delete a sale and its orders")):
        commands.add_parser(name, help=text).add_argument("item")
    commands.add_parser("list", help="print every sale's counts, one JSON line each")
    orders = commands.add_parser("orders", help="print a sale's order events as JSON lines")
    orders.add_argument("item")
    orders.add_argument("--follow", action="store_true", help="then wait for new ones (until Ctrl-C)")
    orders.add_argument("--after", default="0", metavar="ID", help="start after this stream entry id")
    for name, text in (("cancel", "cancel an order: its unit goes back to stock, once"),
                       ("confirm", "confirm a pending hold (it was paid)")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("item")
        sub.add_argument("order", help="order id, <tag>-<seq>")
    for sub in commands.choices.values():
        _add_redis_flags(sub)
    return parser


ADMIN_COMMANDS = ("create", "update", "status", "delete", "list", "orders", "cancel", "confirm")


def main_admin(argv: Sequence[str]) -> int:
    args = build_admin_parser().parse_args(argv)
    if getattr(args, "item", None) is not None and not sale_store.valid_item(args.item):
        die(sale_store.ITEM_RULE, EXIT_USAGE)
    if args.command in ("create", "update"):  # checked before looking for Redis
        given = {name: getattr(args, name) for name in sale_store.TERMS if hasattr(args, name)}
        try:
            args.terms = sale_store.parse_terms(given, creating=args.command == "create")
        except sale_store.SaleError as exc:
            die(str(exc), EXIT_USAGE)
    url = args.redis
    if url is None:
        url = DEFAULT_LOCAL_URL if answers("127.0.0.1", 6379) else recorded_url(args.data_dir)
        if url is None:
            die("no Redis found: pass --redis, or start the server first", EXIT_REDIS)
    try:
        return asyncio.run(_admin(args, url))
    except KeyboardInterrupt:  # orders --follow ends this way
        return 0


async def _admin(args: argparse.Namespace, url: str) -> int:
    redis = make_redis(url, 5.0)
    try:
        try:
            await _admin_command(redis, args)
        except (order_book.OrderError, sale_store.Conflict) as exc:  # no such order; refused by its state
            die(str(exc), 1)
        except sale_store.SaleError as exc:
            die(str(exc), EXIT_USAGE)
        return 0
    except (RedisError, OSError) as exc:
        die(f"Redis at {mask_url(url)}: {exc}", EXIT_REDIS)
    finally:
        await redis.aclose()


async def _admin_command(redis: Redis, args: argparse.Namespace) -> None:
    command = args.command
    if command == "create":
        if not await sale_store.create_sale(redis, args.item, args.terms, args.sold):
            die(f"sale {args.item!r} already exists", 1)
        print(json.dumps(await sale_store.sale_status(redis, args.item)))
    elif command == "update":
        if not await sale_store.update_sale(redis, args.item, args.terms):
            die(f"sale {args.item!r} does not exist", 1)
        print(json.dumps(await sale_store.sale_status(redis, args.item)))
    elif command == "status":
        status = await sale_store.sale_status(redis, args.item)
        if status is None:
            die(f"no sale {args.item!r}", 1)
        print(json.dumps(status))
    elif command == "delete":
        if not await sale_store.delete_sale(redis, args.item):
            die(f"no sale {args.item!r}", 1)
        print(json.dumps({"deleted": args.item}))
    elif command == "list":
        for status in await sale_store.list_sales(redis):
            print(json.dumps(status))
    elif command == "orders":
        if await sale_store.sale_status(redis, args.item) is None:
            die(f"no sale {args.item!r}", 1)
        async for record in order_book.follow(redis, args.item, args.after, 1000 if args.follow else None):
            print(json.dumps(record), flush=True)
    else:
        print(json.dumps(await order_book.change_order(redis, args.item, args.order, command)))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ADMIN_COMMANDS:
        return main_admin(argv)
    if argv and argv[0] == "serve":
        argv = argv[1:]
    args = build_serve_parser().parse_args(argv)
    if args.admin_token is None:  # (not the flag's default: --help would print it)
        args.admin_token = os.environ.get("SECKILL_ADMIN_TOKEN") or None
    config = Config(**vars(args))
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s",
    )
    return main_serve(config)


if __name__ == "__main__":
    sys.exit(main())
