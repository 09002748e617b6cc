"""The routes: one dispatch for every request, purchases, answers and the slow paths."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from seckill import __version__
from seckill.admission import batcher as batching
from seckill.app import auth, idempotency
from seckill.app.admin_api import AdminApi
from seckill.app.purchases import (
    RETRY_AFTER,
    UNAVAILABLE_BODY,
    Purchase,
    PurchaseAnswers,
    ReportingPurchase,
    ReportingSlot,
    TimedPurchase,
)
from seckill.app.ratelimit import Limiter, Rate
from seckill.config import Config
from seckill.http import bodies
from seckill.http.connection import HttpConnection, Registry, Slot
from seckill.http.protocol import KNOWN_METHODS, HttpError, Request, Shape
from seckill.http.responses import (
    CLOSE,
    KEEP,
    KEEP_10,
    METHOD_NOT_ALLOWED,
    NOT_FOUND,
    Responses,
    json_body,
    strip_body,
)
from seckill.ops import dashboard, faults, metrics, request_logs
from seckill.sales import order_book, outcomes, sale_store
from seckill.store.reads import ReadBatcher

log = logging.getLogger("seckill")


MAX_USER = 128  # characters in a user id: room for an email or a UUID, bounds the stream
# `user=<id>` alone, with no byte that query decoding would change (%, +, &, =, #).
_PLAIN_USER_QUERY = re.compile(rb"user=[A-Za-z0-9._~:@!$'()*,;/?-]{0,%d}" % MAX_USER)


# --- Routes -------------------------------------------------------------------------

_PURCHASE_METHODS = (b"GET", b"POST")
_ALLOW_PURCHASE = b"Allow: GET, POST\r\n"
_ALLOW_GET = b"Allow: GET, HEAD\r\n"
_INTERNAL = json_body({"error": "internal"})
_OK = json_body({"status": "ok"})
_RATE_LIMITED = json_body({"result": "rate_limited"})
_NO_STORE = b"Cache-Control: no-store\r\n"
_HTML = b"text/html; charset=utf-8"
_PAGE_HEADERS = b"Content-Security-Policy: %s\r\n%s" % (dashboard.PAGE_CSP, _NO_STORE)
_SOLD_OUT = outcomes.SOLD_OUT
_monotonic = time.monotonic
_ITEM_CACHE_MAX = 10_000  # validated item names kept per worker; bounds client-chosen keys


class SeckillApp:
    def __init__(self, config: Config, redis: Redis, batcher: batching.Batcher, reads: ReadBatcher,
                 board: metrics.Board,
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
        self.board = board
        self.gate_hits = None if stats is None else stats.gate_hits
        self.purchase_answers = PurchaseAnswers(self.responses)
        self.verifier = auth.verifier_for(config)  # None: no --auth, the buyer is ?user=
        self.ip_limit = None if config.rate_per_ip is None else Limiter("ip", Rate.parse(config.rate_per_ip))
        self.user_limit = None if config.rate_per_user is None else Limiter("user", Rate.parse(config.rate_per_user))
        self._trust = request_logs.ProxyTrust(config.forwarded_allow_ips)
        # With the access or result log on (app/logged.py), slots that report their answer.
        self.logged = logged = config.access_log is not None or config.result_log is not None
        self._slot_class: type[Slot] = ReportingSlot if logged else Slot
        self._lanes = not logged and self.ip_limit is None  # (see lane())
        self._buyer_lanes = self._lanes and self.verifier is None and self.user_limit is None
        self._purchase_class: type[Purchase] = (
            ReportingPurchase if logged else Purchase if stats is None else TimedPurchase)

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
            self.count(route_name(request.path), exc.status)
            extra = exc.challenge if isinstance(exc, auth.AuthError) else b""
            answer = self.responses.get(exc.status, json_body({"error": exc.reason}), mode, extra)
        if request.method == b"HEAD" and answer.__class__ is bytes:
            return strip_body(answer)
        return answer

    def lane(self, shape: Shape, data: bytes, conn: HttpConnection) -> bytes | Slot | None:
        """One more GET of a sale (shape.key) from a client whose shape is known, not parsed
        (HttpConnection.data_received): what _purchase would answer it, where that does not
        need the request: while the sale's sold-out gate is shut, the gate's answer (the
        same for anyone); while open, a purchase queued for a buyer named by a plain
        `?user=` (no --auth, no --rate-per-user). Else None, and it goes the usual way.
        Lanes are offered only where _purchase would answer the same: no access or result
        log (each line needs the request), no --rate-per-ip (its bucket comes first)."""
        item = shape.key
        batcher = self.batcher
        gate = batcher.gates.get(item)
        if gate is not None and _monotonic() < gate[0]:
            if gate[1] != _SOLD_OUT:
                return None
            kept = self.responses.by_mode[KEEP].get(item)
            if kept is None:
                return None
            hits = self.gate_hits
            if hits is not None:
                hits[item] = hits.get(item, 0) + 1
            return kept[0]
        if not self._buyer_lanes:
            return None
        query = data[shape.start : shape.end]
        if not query:
            user = b""  # anonymous, as _purchase takes no query
        elif _PLAIN_USER_QUERY.fullmatch(query) is not None:
            user = query[5:]
        else:
            return None
        purchase = self._purchase_class(self.purchase_answers, conn, item, KEEP)
        if not batcher.submit(item, user, purchase):
            return None  # (the usual way answers the full queue)
        return purchase

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

    def _route(self, request: Request, conn: HttpConnection, mode: int) -> bytes | Slot:
        path = request.path
        if path == b"/limit":
            return self._purchase(request, conn, b"limit", mode)
        route = route_name(path)
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
        return 200, json_body(dashboard.data(totals, __version__, time.time(), sales)), _NO_STORE

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
        if self.ip_limit is not None:  # before the gate and the token: a flood costs least here
            client = self._trust.client_of(conn.peer_address, request.headers)
            wait = self.ip_limit.take(client, _monotonic())
            if wait:
                return self._rate_limited(self.ip_limit, wait, mode)
        if request.idempotency_key is not None:  # no gate: a retry of a win must reach its record
            return self._keyed_purchase(request, conn, item, mode)
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
                if self._lanes:
                    conn.offer_shape(request, item)  # its next ones may take the lane (see lane())
                kept = self.responses.by_mode[mode].get(item)  # (PurchaseAnswers.sold_out inlined)
                if kept is not None:
                    self.purchase_answers.decided = kept[1]
                    return kept[0]
                return self.purchase_answers.sold_out(item, mode)
            if self.stats is not None:
                self.stats.count_results(item, outcome, 1)
            if outcome == outcomes.NOT_STARTED:
                return self.purchase_answers.not_started(item, gate[2] - time.monotonic(), mode)
            return self.purchase_answers.refused(item, outcome, mode)
        if self.verifier is None:
            user = request_user(request) if request.query or request.body else b""
        else:
            user = self._buyer(request, item)
        if self.user_limit is not None and user:
            wait = self.user_limit.take(user, _monotonic())  # (bytes: no decode per request)
            if wait:
                return self._rate_limited(self.user_limit, wait, mode)
        purchase = self._purchase_class(self.purchase_answers, conn, item, mode)
        if not batcher.submit(item, user, purchase):
            if self.stats is not None:
                self.stats.count_results(item, outcomes.UNAVAILABLE, 1)
            return self.purchase_answers.refused(item, outcomes.UNAVAILABLE, mode)
        if self._buyer_lanes:
            conn.offer_shape(request, item)  # its next ones may take the lane (see lane())
        return purchase

    def _keyed_purchase(self, request: Request, conn: HttpConnection, item: str, mode: int) -> bytes | Slot:
        """A purchase with an Idempotency-Key (app/idempotency.py)."""
        assert request.idempotency_key is not None
        key = idempotency.parse_key(request.idempotency_key)
        if self.verifier is None:
            user = request_user(request) if request.query or request.body else b""
        else:
            user = self._buyer(request, item)
        if self.user_limit is not None and user:
            wait = self.user_limit.take(user, _monotonic())
            if wait:
                return self._rate_limited(self.user_limit, wait, mode)
        purchase = self._purchase_class(self.purchase_answers, conn, item, mode)
        refusal = self.batcher.submit_keyed(item, user, key, purchase)
        if refusal is not None:
            if self.stats is not None:
                self.stats.count_results(item, refusal, 1)
            return self.purchase_answers.refused(item, refusal, mode)
        return purchase

    def _order_lookup(self, request: Request, conn: HttpConnection, raw_item: bytes, mode: int) -> bytes | Slot:
        """GET /seckill/{item}/order?user=U: the user's live orders, e.g. after a 503."""
        if request.method != b"GET" and request.method != b"HEAD":
            self.count("order", 405)
            return self.responses.get(405, METHOD_NOT_ALLOWED, mode, _ALLOW_GET)
        item = self._item(raw_item)
        if self.verifier is None:
            user = request_user(request).decode()
            if not user:
                raise HttpError(400, "user is required: ?user=...")
        else:  # with --auth, a buyer reads their own orders only
            user = self._buyer(request, None).decode()
        # Not a task per lookup, as _later makes: the ReadBatcher sends the lookups of one
        # tick together and calls back (a lookup cost five purchases' time through redis-py).
        slot = self._slot_class(conn, conn.closing)
        head = request.method == b"HEAD"

        def done(reply: Any) -> None:
            try:
                faults.inject("order")
                if isinstance(reply, BaseException):
                    log.debug("order lookup failed: %r", reply)
                    status, body, extra = 503, UNAVAILABLE_BODY, RETRY_AFTER
                else:
                    status, body, extra = self._orders_answer(item, user, order_book.lookup_orders(reply))
                self.count("order", status)
                answer = self.responses.build(status, body, mode, extra)
                slot.set(strip_body(answer) if head else answer)
            except Exception as exc:
                slot.fail("order", exc)

        if not self.reads.call(*order_book.lookup_call(item, user), done):
            self.count("order", 503)
            return self.responses.get(503, UNAVAILABLE_BODY, mode, RETRY_AFTER)
        return slot

    def _rate_limited(self, limiter: Limiter, wait: float, mode: int) -> bytes:
        self.count("purchase", 429)
        if self.stats is not None:
            self.stats.rate_limited[limiter.scope] = self.stats.rate_limited.get(limiter.scope, 0) + 1
        return self.responses.build(429, _RATE_LIMITED, mode, limiter.headers(wait))

    def _buyer(self, request: Request, item: str | None) -> bytes:
        """With --auth jwt: the verified token's subject (AuthError, a 401, otherwise). A
        `user` the client names is refused, not ignored: it would believe it bought for them."""
        assert self.verifier is not None
        buyer = self.verifier.buyer(request)
        if (request.query or request.body) and request_user(request):
            raise HttpError(400, "with --auth jwt the buyer is the token's subject: send no user")
        if item is not None and buyer.items is not None and item not in buyer.items:
            raise auth.AuthError("the token is not for this sale", "insufficient_scope")
        return buyer.user.encode()

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
                    status, body, extra = 503, UNAVAILABLE_BODY, RETRY_AFTER
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


_ROUTES = {b"/healthz": "healthz", b"/readyz": "readyz", b"/metrics": "metrics", b"/dashboard": "dashboard",
           b"/dashboard.json": "dashboard.json", b"/limit": "purchase"}


def route_name(path: bytes) -> str:
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


_BODY_TYPES = "body must be application/x-www-form-urlencoded or application/json"
# A file upload's encoding for one short field: not worth a multipart parser on the purchase path.
_MULTIPART = _BODY_TYPES + " (multipart/form-data, curl -F, is not accepted: use curl -d user=...)"


def request_user(request: Request) -> bytes:
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
        elif ctype == b"multipart/form-data":
            raise HttpError(415, _MULTIPART)
        else:
            raise HttpError(415, _BODY_TYPES)
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
