"""The admin HTTP API under /admin/: sales and their orders, behind a bearer token.

    GET    /admin/items                                    every sale, with its counts
    PUT    /admin/items/{item}                             create (201) or update (200)
    GET    /admin/items/{item}                             one sale
    DELETE /admin/items/{item}                             delete a sale and its orders
    GET    /admin/items/{item}/orders?after=ID&limit=N     orders, oldest first
    POST   /admin/items/{item}/orders/{order}/cancel       unit back to stock, once
    POST   /admin/items/{item}/orders/{order}/confirm      a pending hold is paid

With no token configured every /admin/ path is 404, as if it did not exist; a missing
or wrong `Authorization: Bearer` is 401. The token is compared in constant time and
never logged. Nothing here is on the purchase path: each request is a few Redis calls.
Bodies and query strings are read by `bodies` (bounded JSON depth, strict forms, ASCII
digits), so a bad one is a 400 naming what is wrong, never an exception of ours.
"""

from __future__ import annotations

import hmac
from typing import Any

from redis.asyncio import Redis

from seckill.http import bodies
from seckill.http.protocol import HttpError, Request
from seckill.http.responses import METHOD_NOT_ALLOWED, NOT_FOUND, json_body
from seckill.sales import order_book, sale_store

Answer = tuple[int, bytes, bytes]  # status, body, extra header lines

_CHALLENGE = b'WWW-Authenticate: Bearer realm="seckill admin"\r\n'


def _not_allowed(*methods: str) -> Answer:
    return 405, METHOD_NOT_ALLOWED, b"Allow: %s\r\n" % ", ".join(methods).encode()


def _no_sale(item: str) -> Answer:
    return 404, json_body({"error": f"no sale {item!r}"}), b""


class AdminApi:
    def __init__(self, redis: Redis, token: str | None) -> None:
        self.redis = redis
        self._token = token.encode() if token else None

    def check(self, request: Request, required: bool = True) -> Answer | None:
        """The answer that refuses this request before any work (404, 401), or None.
        `required`: without a token configured, refuse (the admin API) or let it pass
        (the dashboard's data, guarded only when a token is set)."""
        if self._token is None:
            return (404, NOT_FOUND, b"") if required else None
        given = request.header(b"authorization") or b""
        scheme, _, credentials = given.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(credentials.strip(), self._token):
            return 401, json_body({"error": "a valid admin token is required (Authorization: Bearer ...)"}), _CHALLENGE
        return None

    async def handle(self, request: Request) -> Answer:
        try:
            return await self._route(request)
        except order_book.OrderError as exc:
            return 404, json_body({"error": str(exc)}), b""
        except order_book.Refused as exc:
            return 409, json_body({"error": str(exc), "state": exc.state}), b""
        except sale_store.Conflict as exc:
            return 409, json_body({"error": str(exc)}), b""
        except sale_store.SaleError as exc:
            return 400, json_body({"error": str(exc)}), b""
        except HttpError as exc:
            return exc.status, json_body({"error": exc.reason}), b""

    async def _route(self, request: Request) -> Answer:
        parts = request.path.decode("latin-1").split("/")[2:]  # after "", "admin"
        method = request.method.decode()
        if method == "HEAD":
            method = "GET"
        if parts[:1] != ["items"] or len(parts) > 6:
            return 404, NOT_FOUND, b""
        if len(parts) == 1:
            if method != "GET":
                return _not_allowed("GET", "HEAD")
            return 200, json_body({"items": await sale_store.list_sales(self.redis)}), b""
        item = parts[1]
        if not sale_store.valid_item(item):
            raise HttpError(400, sale_store.ITEM_RULE)
        if len(parts) == 2:
            return await self._item(method, item, request)
        if parts[2] != "orders":
            return 404, NOT_FOUND, b""
        if len(parts) == 3:
            if method != "GET":
                return _not_allowed("GET", "HEAD")
            return await self._orders(item, request)
        if len(parts) == 5 and parts[4] in ("cancel", "confirm"):
            if method != "POST":
                return _not_allowed("POST")
            record = await order_book.change_order(self.redis, item, parts[3], parts[4])
            return 200, json_body(record), b""
        return 404, NOT_FOUND, b""

    async def _item(self, method: str, item: str, request: Request) -> Answer:
        redis = self.redis
        if method == "GET":
            status = await sale_store.sale_status(redis, item)
            if status is None:
                return _no_sale(item)
            return 200, json_body(status), b""
        if method == "DELETE":
            if not await sale_store.delete_sale(redis, item):
                return _no_sale(item)
            return 200, json_body({"deleted": item}), b""
        if method != "PUT":
            return _not_allowed("GET", "HEAD", "PUT", "DELETE")
        data = _json_object(request)
        created = False
        if await redis.exists(sale_store.sale_key(item)):
            updated = await sale_store.update_sale(redis, item, sale_store.parse_terms(data, creating=False))
        else:
            updated = False
        if not updated:  # no such sale (or deleted meanwhile): create it
            created = await sale_store.create_sale(redis, item, sale_store.parse_terms(data, creating=True))
            if not created:  # created meanwhile by someone else: update it
                await sale_store.update_sale(redis, item, sale_store.parse_terms(data, creating=False))
        return (201 if created else 200), json_body(await sale_store.sale_status(redis, item)), b""

    async def _orders(self, item: str, request: Request) -> Answer:
        query = _query(request, ("after", "limit"))
        after = 0
        if "after" in query:
            try:
                after = order_book.parse_order(query["after"])[1]
            except sale_store.SaleError:
                raise HttpError(400, "after must be an order id like <tag>-<seq>") from None
        limit = order_book.DEFAULT_PAGE
        if "limit" in query:
            limit = bodies.ascii_int(query["limit"]) or 0
            if not 1 <= limit <= order_book.MAX_PAGE:
                raise HttpError(400, f"limit must be an integer from 1 to {order_book.MAX_PAGE}")
        page = await order_book.list_orders(self.redis, item, after, limit)
        if page is None:
            return _no_sale(item)
        return 200, json_body(page), b""


def _json_object(request: Request) -> dict[str, Any]:
    ctype = (request.header(b"content-type") or b"application/json").split(b";")[0].strip().lower()
    if ctype != b"application/json":
        raise HttpError(415, "the body must be application/json")
    data = bodies.json_value(request.body or b"{}")
    if not isinstance(data, dict):
        raise HttpError(400, "the body must be a JSON object")
    return data


def _query(request: Request, known: tuple[str, ...]) -> dict[str, str]:
    """The query's parameters, each one of `known` and given once (HttpError 400 if malformed)."""
    query: dict[str, str] = {}
    for name, value in bodies.form_pairs(request.query, blanks=True):  # (`limit=` is a bad limit)
        if name not in known:
            raise HttpError(400, f"unknown query parameter {name!r}: this takes {', '.join(known)}")
        if name in query:
            raise HttpError(400, f"query parameter {name!r} is given twice")
        query[name] = value
    return query
