"""HTTP/1.1 request parsing, sans-I/O.

`RequestParser` is fed bytes with `feed()` and hands out complete requests with
`next_request()`, which has three outcomes (as h11's readers do): a `Request`, `None`
for "need more data", or a raised `HttpError` that carries the status to answer with.
It imports no socket and no event loop, so the tests are plain function calls on bytes;
`http_connection.py` is the asyncio side that drives it.

The parser is strict on purpose (RFC 9112): whatever could frame a message two ways
(request smuggling) or hide in a lenient reading is rejected, and every rejection ends
the connection. The hot path is one `find` for the end of the head, one regex per line
and no per-byte Python loop.
"""

from __future__ import annotations

import re

# --- Limits: each bounds what one client can make a worker hold or scan. -----------
# Request line: nginx's large_client_header_buffers is 8 KiB; gunicorn allows 4094.
MAX_REQUEST_LINE = 8 * 1024
# Whole head: 16 KiB, h11's DEFAULT_MAX_INCOMPLETE_EVENT_SIZE (node.js allows 16 KiB too).
MAX_HEAD = 16 * 1024
# Header fields: gunicorn's and aiohttp's default limit_request_fields.
MAX_HEADERS = 100
# Body: a purchase form or admin JSON is tiny; 64 KiB leaves room and bounds memory.
MAX_BODY = 64 * 1024

KNOWN_METHODS = frozenset(
    {b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE", b"CONNECT"}
)
# Longer than any method we know: refuse before reading on (501, as llhttp/nginx do).
MAX_METHOD = max(map(len, KNOWN_METHODS))

# RFC 9110 5.6.2 token, 5.5 field-value (visible ASCII, obs-text, inner SP/HTAB).
_TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])")
_HEADER_LINE = re.compile(
    rb"(" + _TOKEN + rb"):[ \t]*((?:[\x21-\x7e\x80-\xff](?:[ \t]*[\x21-\x7e\x80-\xff])*)?)[ \t]*"
)
_TOKEN_RE = re.compile(_TOKEN)
_DIGITS = re.compile(rb"[0-9]+")
# A framing header spelt with underscores: some proxies map it to the real one.
_FRAMING_LOOKALIKES = frozenset({b"content_length", b"transfer_encoding"})


class HttpError(Exception):
    """The one protocol error: a message for the log and the status to answer with."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Request:
    """One complete request. Header names are lower-cased; values are bytes as sent."""

    __slots__ = ("method", "target", "path", "query", "http10", "keep_alive", "headers", "body")

    def __init__(
        self,
        method: bytes,
        target: bytes,
        path: bytes,
        query: bytes,
        http10: bool,
        keep_alive: bool,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> None:
        self.method = method
        self.target = target
        self.path = path
        self.query = query
        self.http10 = http10
        self.keep_alive = keep_alive
        self.headers = headers
        self.body = body

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def __repr__(self) -> str:
        return f"<Request {self.method.decode()} {self.target.decode()}>"


class RequestParser:
    """Feed bytes in, take complete requests out. After an error the parser is dead."""

    __slots__ = ("_buf", "_scan_from", "_head", "_body_left", "_closed")

    def __init__(self) -> None:
        self._buf = b""
        self._scan_from = 0  # where to resume looking for the end of the head
        self._head: Request | None = None  # parsed head waiting for its body
        self._body_left = 0
        self._closed = False

    @property
    def buffered(self) -> int:
        """Bytes received and not yet turned into a request."""
        return len(self._buf)

    @property
    def mid_request(self) -> bool:
        """True while part of a request has arrived (for idle-close decisions)."""
        return bool(self._buf) or self._head is not None

    def feed(self, data: bytes) -> None:
        if self._buf:
            self._buf += data
        else:
            self._buf = data

    def next_request(self) -> Request | None:
        if self._closed:
            raise HttpError(400, "parser used after an error")
        try:
            return self._next()
        except HttpError:
            self._closed = True
            raise

    def _next(self) -> Request | None:
        request = self._head
        if request is None:
            buf = self._buf
            end = buf.find(b"\r\n\r\n", self._scan_from)
            if end < 0:
                self._check_incomplete_head(buf)
                return None
            if end + 4 > MAX_HEAD:
                self._check_request_line(buf)
                raise HttpError(431, "request head too large")
            request, length = _parse_head(buf[:end])
            rest = buf[end + 4 :]
            if not length:
                self._buf = rest
                self._scan_from = 0
                return request
            self._head = request
            self._body_left = length
            self._buf = rest
        buf = self._buf
        if len(buf) < self._body_left:
            return None
        request.body = buf[: self._body_left]
        self._buf = buf[self._body_left :]
        self._head = None
        self._scan_from = 0
        return request

    def _check_incomplete_head(self, buf: bytes) -> None:
        """Reject early what can never become a valid head, instead of waiting for more."""
        self._scan_from = max(0, len(buf) - 3)
        self._check_request_line(buf)
        if len(buf) > MAX_HEAD:
            raise HttpError(431, "request head too large")
        if buf.count(b"\n") != buf.count(b"\r\n"):
            raise HttpError(400, "bare LF in request head")
        if b"\x00" in buf:
            raise HttpError(400, "NUL byte in request head")
        space = buf.find(b" ")
        method = buf[:space] if space >= 0 else buf[: MAX_METHOD + 1]
        if method and _TOKEN_RE.fullmatch(method) is None:
            raise HttpError(400, "malformed request line")
        if len(method) > MAX_METHOD:
            raise HttpError(501, "method not implemented")

    @staticmethod
    def _check_request_line(buf: bytes) -> None:
        line_end = buf.find(b"\r\n")
        if line_end > MAX_REQUEST_LINE or (line_end < 0 and len(buf) > MAX_REQUEST_LINE):
            raise HttpError(414, "request line too long")


def _parse_head(head: bytes) -> tuple[Request, int]:
    """Parse a head (without its final CRLFCRLF); return the request and its body length."""
    lines = head.split(b"\r\n")
    line = lines[0]
    if len(line) > MAX_REQUEST_LINE:
        raise HttpError(414, "request line too long")
    match = _REQUEST_LINE.fullmatch(line)
    if match is None:
        # Leading empty lines (RFC 9112 2.2 lets servers skip them) are refused too:
        # no client we serve sends them and they only widen the grammar.
        raise HttpError(400, "malformed request line")
    method, target, major, minor = match.groups()
    if major != b"1" or minor not in (b"0", b"1"):
        raise HttpError(505, "HTTP version not supported")
    http10 = minor == b"0"
    if len(lines) - 1 > MAX_HEADERS:
        raise HttpError(431, "too many header fields")

    headers: list[tuple[bytes, bytes]] = []
    length = -1
    chunked = False
    hosts = 0
    connection = b""
    header_line = _HEADER_LINE.fullmatch
    for raw in lines[1:]:
        m = header_line(raw)
        if m is None:
            if raw[:1] in (b" ", b"\t"):
                raise HttpError(400, "obsolete line folding")
            raise HttpError(400, "malformed header field")
        name = m.group(1).lower()
        value = m.group(2)
        headers.append((name, value))
        if name == b"content-length":
            if length >= 0:
                raise HttpError(400, "duplicate Content-Length")
            if _DIGITS.fullmatch(value) is None:
                raise HttpError(400, "invalid Content-Length")
            length = int(value)
            if length > MAX_BODY:
                raise HttpError(413, "request body too large")
        elif name == b"transfer-encoding":
            chunked = True
        elif name == b"host":
            hosts += 1
        elif name == b"connection":
            connection = connection + b"," + value.lower() if connection else value.lower()
        elif name in _FRAMING_LOOKALIKES:
            raise HttpError(400, "underscore in a framing header name")

    if chunked:
        if length >= 0:
            raise HttpError(400, "both Content-Length and Transfer-Encoding")
        if http10:
            raise HttpError(400, "Transfer-Encoding in HTTP/1.0")
        raise HttpError(501, "Transfer-Encoding not implemented")
    if not http10 and hosts != 1:
        raise HttpError(400, "HTTP/1.1 needs exactly one Host header")

    if connection:
        tokens = {t.strip() for t in connection.split(b",")}
        keep_alive = b"close" not in tokens and (not http10 or b"keep-alive" in tokens)
    else:
        keep_alive = not http10

    if b"#" in target:
        raise HttpError(400, "fragment in request target")
    if target[:1] == b"/":
        path, _, query = target.partition(b"?")
    elif target == b"*":
        if method != b"OPTIONS":
            raise HttpError(400, "asterisk-form target needs OPTIONS")
        path, query = b"*", b""
    elif target[:7].lower() == b"http://" or target[:8].lower() == b"https://":
        # absolute-form (RFC 9112 3.2.2): what a proxy sends; serve its path.
        after = target.partition(b"://")[2]
        slash = after.find(b"/")
        path, _, query = (after[slash:] if slash >= 0 else b"/").partition(b"?")
    else:
        raise HttpError(400, "malformed request target")
    return (
        Request(method, target, path, query, http10, keep_alive, headers, b""),
        max(length, 0),
    )
