"""Response bytes, built once and reused.

Every response we send is JSON with a handful of fixed headers, so a response is
`head prefix + body`, and the same (status, body, connection) triple recurs millions of
times during a sale (sold out, unknown item, 503...). `Responses.get()` caches the
finished bytes; the cache is emptied when the `Date` header changes, once a second,
by whoever owns the clock (`refresh_date()`).
"""

from __future__ import annotations

import json
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

SERVER = b"seckill"

# Connection handling of one response: what the header says and whether we close after.
KEEP = 0  # HTTP/1.1 keep-alive: no header needed
KEEP_10 = 1  # HTTP/1.0 keep-alive: must be said
CLOSE = 2

_CONNECTION_HEADER = (b"", b"Connection: keep-alive\r\n", b"Connection: close\r\n")

STATUS_LINES = {
    s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus
}

# Cap on cached responses: bodies naming an item are cached per item, and item names
# come from clients. Past the cap, responses are still built, just not kept.
MAX_CACHED = 4096


# The interim answer to `Expect: 100-continue`: send the body (RFC 9110 15.2.1).
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def json_body(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


NOT_FOUND = json_body({"error": "not found"})
METHOD_NOT_ALLOWED = json_body({"error": "method not allowed"})


class Responses:
    __slots__ = ("_date_line", "_prefix", "_bare_prefix", "memo", "by_mode")

    def __init__(self) -> None:
        self._date_line = b""
        self._prefix: dict[int, bytes] = {}
        self._bare_prefix: dict[int, bytes] = {}  # without Content-Type (not JSON: /metrics, /dashboard)
        # Finished responses: get()'s, under (status, body, conn, extra), and callers' own,
        # under keys cheaper to make than the body. Emptied when the Date changes; whoever
        # adds keeps it under MAX_CACHED.
        self.memo: dict[object, bytes] = {}
        # Callers' finished answers (with what they need beside them) per connection mode,
        # KEEP, KEEP_10, CLOSE, under a str key: a lookup that builds and hashes nothing (a
        # str keeps its hash), for the answer to nearly every request after a sell-out.
        # Emptied with memo; whoever adds keeps each under MAX_CACHED.
        self.by_mode: tuple[dict[str, tuple[bytes, Any]], ...] = ({}, {}, {})
        self.refresh_date()

    def refresh_date(self) -> None:
        self._date_line = b"Date: " + formatdate(usegmt=True).encode() + b"\r\n"
        self._prefix = {}
        self._bare_prefix = {}
        self.memo = {}
        self.by_mode = ({}, {}, {})

    def _head_prefix(self, status: int) -> bytes:
        prefix = self._prefix.get(status)
        if prefix is None:
            prefix = self._prefix[status] = (
                STATUS_LINES[status]
                + b"Server: " + SERVER + b"\r\n"
                + self._date_line
                + b"Content-Type: application/json\r\n"
            )
        return prefix

    def build(self, status: int, body: bytes, conn: int = KEEP, extra: bytes = b"",
              content_type: bytes | None = None) -> bytes:
        """Build (uncached) a response; `extra` is whole header lines, CRLF-terminated.
        The body is JSON unless `content_type` says otherwise."""
        if content_type is None:
            prefix = self._head_prefix(status)
        else:
            bare = self._bare_prefix.get(status)
            if bare is None:
                bare = STATUS_LINES[status] + b"Server: " + SERVER + b"\r\n" + self._date_line
                self._bare_prefix[status] = bare
            prefix = bare + b"Content-Type: " + content_type + b"\r\n"
        return b"%s%s%sContent-Length: %d\r\n\r\n%s" % (
            prefix, _CONNECTION_HEADER[conn], extra, len(body), body,
        )

    def get(self, status: int, body: bytes, conn: int = KEEP, extra: bytes = b"",
            content_type: bytes | None = None) -> bytes:
        """The same as build(), from the cache when it was built this second."""
        key = (status, body, conn, extra, content_type)
        cached = self.memo.get(key)
        if cached is None:
            cached = self.build(status, body, conn, extra, content_type)
            if len(self.memo) < MAX_CACHED:
                self.memo[key] = cached
        return cached


def strip_body(response: bytes) -> bytes:
    """The response to a HEAD request: the same head, no body."""
    return response[: response.index(b"\r\n\r\n") + 4]
