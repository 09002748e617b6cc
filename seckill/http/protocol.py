"""HTTP/1.1 request parsing, sans-I/O.

`RequestParser` is fed bytes with `feed()` and hands out complete requests with
`next_request()`, which has three outcomes (as h11's readers do): a `Request`, `None`
for "need more data", or a raised `HttpError` that carries the status to answer with.
It imports no socket and no event loop, so the tests are plain function calls on bytes;
`connection.py` beside it is the asyncio side that drives it.

The parser is strict on purpose (RFC 9112): whatever could frame a message two ways
(request smuggling) or hide in a lenient reading is rejected, and every rejection ends
the connection. The one leniency is RFC 9112 2.2's: one empty line before each request
line is skipped (a second is refused, so CRLFs cannot hold a connection). The hot path
is one `find` for the end of the head, one regex per line and no per-byte Python loop;
two memos (whole bodyless heads, header blocks) skip even that for what a client sends
again byte for byte.
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
# int() refuses more than 4300 digits; a Content-Length this long is too large anyway.
_MAX_LENGTH_DIGITS = 18
# A byte no head may hold: NUL, or an LF without its CR (RFC 9112 2.2: no bare LF line ends).
_BAD_HEAD_BYTE = re.compile(rb"\x00|(?<!\r)\n")
# absolute-form: the authority runs up to the first "/" or "?" (RFC 3986 3.2).
_AUTHORITY = re.compile(rb"[^/?]*")
# The common request line, origin-form HTTP/1.x, split in one match: path (no ? or #),
# then an optional query (no #). Anything else takes the general road below.
_ORIGIN_FORM_LINE = re.compile(
    rb"(" + _TOKEN + rb") (/[\x21-\x22\x24-\x3e\x40-\x7e]*)(?:\?([\x21-\x22\x24-\x7e]*))? HTTP/1\.([01])"
)
# A framing header spelt with underscores: some proxies map it to the real one.
_FRAMING_LOOKALIKES = frozenset({b"content_length", b"transfer_encoding"})


class HttpError(Exception):
    """The one protocol error: a message for the log and the status to answer with."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Request:
    """One complete request. Header names are lower-cased; values are bytes as sent.
    Identical bodyless requests share one object (see _BODYLESS): treat it as read-only."""

    __slots__ = ("method", "target", "path", "query", "http10", "keep_alive", "headers", "body", "idempotency_key")

    def __init__(
        self,
        method: bytes,
        target: bytes,
        path: bytes,
        query: bytes,
        http10: bool,
        keep_alive: bool,
        headers: tuple[tuple[bytes, bytes], ...],
        body: bytes,
        idempotency_key: bytes | None = None,
    ) -> None:
        self.method = method
        self.target = target
        self.path = path
        self.query = query
        self.http10 = http10
        self.keep_alive = keep_alive
        self.headers = headers
        self.body = body
        # The Idempotency-Key field as sent (fields joined by ", "), None without one: noted
        # once per header block, so a purchase without it pays one attribute read.
        self.idempotency_key = idempotency_key

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def __repr__(self) -> str:
        return f"<Request {self.method.decode()} {self.target.decode()}>"


class RequestParser:
    """Feed bytes in, take complete requests out. After an error the parser is dead."""

    __slots__ = ("_buf", "_scan_from", "_head", "_body_left", "_closed", "_skipped_crlf", "wants_continue")

    def __init__(self) -> None:
        self._buf = b""
        self._scan_from = 0  # where to resume looking for the end of the head
        # True from skipping the empty line allowed before a request line (RFC 9112 2.2)
        # until that request's head is taken: a second one is refused (see next_request).
        self._skipped_crlf = False
        self._head: Request | None = None  # parsed head waiting for its body
        self._body_left = 0
        self._closed = False
        # A head with `Expect: 100-continue` waits for its body (read it; take_continue() clears it).
        self.wants_continue = False

    @property
    def buffered(self) -> int:
        """Bytes received and not yet turned into a request."""
        return len(self._buf)

    @property
    def mid_request(self) -> bool:
        """True while part of a request has arrived (for idle-close decisions).

        The skipped empty line before a request line is consumed at once: not buffered and
        not a request in progress, so the keep-alive timer still runs, and the next
        request's first byte is what feed() reports as its start (the header timeout's
        clock). A lone CR still buffered counts as begun: it cannot be repeated (only one
        CRLF is skipped), and its LF, or what else follows, is due at once."""
        return bool(self._buf) or self._head is not None

    @property
    def awaiting_body(self) -> bool:
        """True while a request's head has arrived and its body has not, whole."""
        return self._head is not None

    def feed(self, data: bytes) -> bool:
        """Add received bytes; True if they begin a new request (nothing was pending)."""
        if self._buf:
            self._buf += data
            return False
        self._buf = data
        return self._head is None

    def take_continue(self) -> bool:
        """True once when a request's head asked for `100 Continue` before sending its body
        and the body has not come yet: the caller may send the interim response."""
        wanted, self.wants_continue = self.wants_continue, False
        return wanted

    def next_request(self) -> Request | None:
        if self._closed:
            raise HttpError(400, "parser used after an error")
        try:
            request = self._head
            if request is None:
                buf = self._buf
                if not buf:
                    return None
                if buf[0] == 13 and not self._skipped_crlf:  # b"\r": one check per head start
                    # RFC 9112 2.2: a server SHOULD ignore at least one empty line before a
                    # request line (some clients send a CRLF after a POST body). We ignore
                    # exactly one per request, so CRLFs cannot keep a connection busy: a
                    # second one meets the head's own checks below and is refused (400).
                    if len(buf) == 1:
                        return None  # the CRLF's LF may be in the next read
                    if buf[1] == 10:
                        self._skipped_crlf = True
                        buf = self._buf = buf[2:]
                        if not buf:
                            return None
                end = buf.find(b"\r\n\r\n", self._scan_from)
                if end < 0:
                    self._scan_from = max(0, len(buf) - 3)
                    error = _doomed_head(buf, len(buf))
                    if error is not None:
                        raise error
                    return None
                head = buf[:end]
                request = _BODYLESS.get(head)
                if request is not None:  # seen before: the same request, already parsed
                    self._buf = buf[end + 4 :]
                    self._scan_from = 0
                    self._skipped_crlf = False
                    return request
                # The common head on its own road: origin-form HTTP/1.1 and a header block
                # parsed before that frames no body (a client's second request on: the
                # `?user=` of each is what keeps it out of _BODYLESS). The same checks as
                # _parse_head's, with what the block decides decided once (_HeaderBlock.plain).
                line_end = head.find(b"\r\n")
                block = _HEADER_BLOCKS.get(head[line_end + 2 :]) if 0 < line_end <= MAX_REQUEST_LINE else None
                if block is not None and block.plain and end + 4 <= MAX_HEAD:
                    origin = _ORIGIN_FORM_LINE.fullmatch(head, 0, line_end)
                    if origin is not None:
                        method, path, query, minor = origin.groups()
                        if minor == b"1" and len(method) <= MAX_METHOD:
                            request = Request(method, head[len(method) + 1 : line_end - 9], path, query or b"",
                                              False, block.keep_alive, block.headers, b"", block.idempotency_key)
                            self._buf = buf[end + 4 :]
                            self._scan_from = 0
                            self._skipped_crlf = False
                            if not query:
                                if len(_BODYLESS) >= MAX_CACHED_HEADS:
                                    _BODYLESS.clear()
                                _BODYLESS[head] = request
                            return request
                try:
                    if end + 4 > MAX_HEAD:
                        raise HttpError(431, "request head too large")
                    request, length, expects = _parse_head(head)
                except HttpError as exc:
                    # Fed in smaller pieces, a prefix of this head would have met the early
                    # checks first: answer as they would, whatever the split.
                    raise _doomed_head(buf, end + 3) or exc from None
                rest = buf[end + 4 :]
                self._skipped_crlf = False
                if not length:
                    if not request.query:  # a query string mostly carries one-off data
                        if len(_BODYLESS) >= MAX_CACHED_HEADS:
                            _BODYLESS.clear()
                        _BODYLESS[head] = request
                    self._buf = rest
                    self._scan_from = 0
                    return request
                self._head = request
                self._body_left = length
                self.wants_continue = expects
                self._buf = rest
            buf = self._buf
            if len(buf) < self._body_left:
                return None
            request.body = buf[: self._body_left]
            self._buf = buf[self._body_left :]
            self._head = None
            self.wants_continue = False
            self._scan_from = 0
            return request
        except HttpError:
            self._closed = True
            raise


def _doomed_head(buf: bytes, size: int) -> HttpError | None:
    """The error for the first `size` bytes of `buf` if no head can start with them, else None.

    This rejects early what is still incomplete, instead of waiting for more. Each check is
    placed at the byte that first shows it and the earliest wins, so the answer does not
    depend on how the bytes were split across reads.
    """
    size = min(size, MAX_HEAD + 1)  # past MAX_HEAD it is a 431 whatever follows
    errors: list[tuple[int, int, str]] = []
    # The method: a token longer than any we know (501, as llhttp/nginx do), else a token
    # and a space. An empty line past the one next_request skips fails here too.
    method = _TOKEN_RE.match(buf, 0, min(size, MAX_METHOD + 1))
    method_end = method.end() if method is not None else 0
    if method_end > MAX_METHOD:
        errors.append((MAX_METHOD, 501, "method not implemented"))
    elif method_end < size and (method_end == 0 or buf[method_end] != 0x20):
        errors.append((method_end, 400, "malformed request line"))
    # find() and count() run at memchr speed; the regex only runs to place a byte we refuse.
    if buf.find(b"\x00", 0, size) >= 0 or buf.count(b"\n", 0, size) != buf.count(b"\r\n", 0, size):
        bad = _BAD_HEAD_BYTE.search(buf, 0, size)
        assert bad is not None
        errors.append((bad.start(), 400, "NUL or bare LF in request head"))
    if size > MAX_REQUEST_LINE + 1 and buf.find(b"\r\n", 0, MAX_REQUEST_LINE + 2) < 0:
        errors.append((MAX_REQUEST_LINE + 1, 414, "request line too long"))
    if size > MAX_HEAD:
        errors.append((MAX_HEAD, 431, "request head too large"))
    if not errors:
        return None
    _, status, reason = min(errors)
    return HttpError(status, reason)


# Parsed requests without a body or a query string, by their head bytes. Load tools and
# many real clients (a page polled, a button pressed again) send byte-identical requests;
# a hit skips the parse altogether. Such a Request is shared, so nothing may modify a
# Request. A query string (?user=...) mostly makes a head one of a kind, so those are not
# kept (measured: keeping them cost 0.35 us a request for distinct users). The memo is
# emptied when full, so a stream of one-off heads cannot pin it.
_BODYLESS: dict[bytes, Request] = {}
MAX_CACHED_HEADS = 1024  # x MAX_HEAD bounds the memory: 16 MiB at worst

# Parsed header blocks, by their bytes. A client sends the same headers with every
# request (same Host, User-Agent, cookies), so after the first request of a client the
# block costs one dict lookup instead of a regex per line. Parsing is a pure function of
# the bytes, so a hit is exactly what parsing would give; errors are never cached.
_HEADER_BLOCKS: dict[bytes, _HeaderBlock] = {}
MAX_CACHED_HEADER_BLOCKS = 512  # x MAX_HEAD bounds the memory: 8 MiB at worst


class _HeaderBlock:
    __slots__ = ("headers", "length", "codings", "hosts", "connection", "expects_continue", "idempotency_key",
                 "plain", "keep_alive")

    def __init__(self, headers: tuple[tuple[bytes, bytes], ...], length: int, codings: list[bytes] | None,
                 hosts: int, connection: frozenset[bytes], expects_continue: bool,
                 idempotency_key: bytes | None = None) -> None:
        self.idempotency_key = idempotency_key
        self.expects_continue = expects_continue
        self.headers = headers
        self.length = length  # -1: no Content-Length
        self.codings = codings  # Transfer-Encoding's codings, lower-cased; None: no such header
        self.hosts = hosts
        self.connection = connection  # the Connection header's tokens, lower-cased
        # What _parse_head would find of this block in an HTTP/1.1 request, known once: no
        # body and nothing to refuse (next_request's short road), and then whether it
        # keeps the connection.
        self.plain = length <= 0 and codings is None and hosts == 1
        self.keep_alive = b"close" not in connection


_NO_TOKENS: frozenset[bytes] = frozenset()


def _parse_head(head: bytes) -> tuple[Request, int, bool]:
    """Parse a head (without its final CRLFCRLF); return the request, its body length and
    whether it waits for `100 Continue` (HTTP/1.1 with `Expect: 100-continue`)."""
    line_end = head.find(b"\r\n")
    if line_end < 0:
        line, block_bytes = head, b""
    else:
        line, block_bytes = head[:line_end], head[line_end + 2 :]
    if len(line) > MAX_REQUEST_LINE:
        raise HttpError(414, "request line too long")
    origin = _ORIGIN_FORM_LINE.fullmatch(line)
    if origin is not None:
        method, path, query, minor = origin.groups()
        target = line[len(method) + 1 : -9]
        if query is None:
            query = b""
    else:
        match = _REQUEST_LINE.fullmatch(line)
        if match is None:
            # next_request skips one empty line before the request line (RFC 9112 2.2); a
            # second one is an empty request line here, and refused.
            raise HttpError(400, "malformed request line")
        method, target, major, minor = match.groups()
        if major != b"1" or minor not in (b"0", b"1"):
            raise HttpError(505, "HTTP version not supported")
    if len(method) > MAX_METHOD:
        # As an incomplete head is refused (_doomed_head), so is a complete one: at once,
        # not after its body.
        raise HttpError(501, "method not implemented")
    http10 = minor == b"0"

    block = _HEADER_BLOCKS.get(block_bytes)
    if block is None:
        block = _parse_header_block(block_bytes)
        if len(_HEADER_BLOCKS) >= MAX_CACHED_HEADER_BLOCKS:
            _HEADER_BLOCKS.clear()  # so early one-off blocks cannot keep the memo full
        _HEADER_BLOCKS[block_bytes] = block
    length = block.length
    if block.codings is not None:
        if length >= 0:
            raise HttpError(400, "both Content-Length and Transfer-Encoding")
        if http10:
            raise HttpError(400, "Transfer-Encoding in HTTP/1.0")
        if block.codings[-1:] != [b"chunked"]:
            # RFC 9112 6.3: without chunked last, the body's end cannot be known.
            raise HttpError(400, "chunked must be the final transfer coding")
        # RFC 9112 6.1: a coding we do not implement is a 501. Bodies here are a few bytes
        # of form or JSON, which every client sends with a Content-Length.
        raise HttpError(501, "Transfer-Encoding not implemented")
    if not http10 and block.hosts != 1:
        raise HttpError(400, "HTTP/1.1 needs exactly one Host header")
    tokens = block.connection
    if http10:
        keep_alive = b"keep-alive" in tokens and b"close" not in tokens
    else:
        keep_alive = b"close" not in tokens

    if origin is not None:
        pass  # path and query are known
    elif b"#" in target:
        raise HttpError(400, "fragment in request target")
    elif target[:1] == b"/":
        path, _, query = target.partition(b"?")
    elif target == b"*":
        if method != b"OPTIONS":
            raise HttpError(400, "asterisk-form target needs OPTIONS")
        path, query = b"*", b""
    elif target[:7].lower() == b"http://" or target[:8].lower() == b"https://":
        # absolute-form (RFC 9112 3.2.2): what a proxy sends; serve its path.
        after = target.partition(b"://")[2]
        authority = _AUTHORITY.match(after)
        assert authority is not None  # [^/?]* matches the empty string
        path, _, query = after[authority.end() :].partition(b"?")
        path = path or b"/"
    else:
        raise HttpError(400, "malformed request target")
    return (
        Request(method, target, path, query, http10, keep_alive, block.headers, b"", block.idempotency_key),
        max(length, 0),
        block.expects_continue and not http10,  # RFC 9110 10.1.1: 1.0 clients get no 100
    )


def _parse_header_block(block: bytes) -> _HeaderBlock:
    lines = block.split(b"\r\n") if block else []
    if len(lines) > MAX_HEADERS:
        raise HttpError(431, "too many header fields")
    headers: list[tuple[bytes, bytes]] = []
    length = -1
    codings: list[bytes] | None = None
    hosts = 0
    connection: list[bytes] = []
    expects_continue = False
    idempotency_key: bytes | None = None
    header_line = _HEADER_LINE.fullmatch
    for raw in lines:
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
            length = int(value) if len(value) <= _MAX_LENGTH_DIGITS else MAX_BODY + 1
            if length > MAX_BODY:
                raise HttpError(413, "request body too large")
        elif name == b"transfer-encoding":
            # Several fields are one list (RFC 9110 5.3); empty members are allowed.
            codings = (codings or []) + [c.strip() for c in value.lower().split(b",") if c.strip()]
        elif name == b"host":
            hosts += 1
        elif name == b"connection":
            connection.extend(t.strip() for t in value.lower().split(b","))
        elif name == b"expect":
            # The only expectation HTTP defines; any other we cannot meet (RFC 9110 10.1.1).
            if value.lower() != b"100-continue":
                raise HttpError(417, "only Expect: 100-continue is supported")
            expects_continue = True
        elif name == b"idempotency-key":  # several fields are one list, which no key is
            idempotency_key = value if idempotency_key is None else idempotency_key + b", " + value
        elif name in _FRAMING_LOOKALIKES:
            raise HttpError(400, "underscore in a framing header name")
    return _HeaderBlock(tuple(headers), length, codings, hosts,
                        frozenset(connection) if connection else _NO_TOKENS, expects_continue, idempotency_key)


# --- Shapes: one client's requests that differ only in their query -------------------
# A client (a load tool, a page's button) sends the same request again and again but for
# its query (?user=...). A Shape is such a request's bytes around its query; a connection
# that has learnt its client's shape can tell that a read is exactly one more of them by
# comparing bytes, without parsing, and let the app answer it (connection.py's lane).

# The bytes a query may hold (_ORIGIN_FORM_LINE's): translate() deletes them, so a query
# is valid when nothing is left.
_QUERY_BYTES = bytes(range(0x21, 0x23)) + bytes(range(0x24, 0x7F))


class Shape:
    """`prefix` (GET, the path, "?") and `suffix` (" HTTP/1.1", the header block, the blank
    line) of a request the parser read (shape_of): every `prefix + q + suffix`, q made of
    query bytes, within the head limits, is a request the parser reads the same way but
    for its query. A request without a query is its own shape: `prefix` is all of it,
    `suffix` empty, and only those very bytes match. `key` is the caller's (what the path
    names)."""

    __slots__ = ("prefix", "suffix", "key", "start", "end", "_shortest", "_longest")

    def __init__(self, prefix: bytes, suffix: bytes, key: str) -> None:
        self.prefix = prefix
        self.suffix = suffix
        self.key = key
        self.start = len(prefix)  # data[start:end]: the query
        self.end = -len(suffix) if suffix else len(prefix)  # (none when exact)
        self._shortest = len(prefix) + len(suffix)
        # The whole head within MAX_HEAD, its request line (prefix, query, " HTTP/1.1")
        # within MAX_REQUEST_LINE: past either, the parser refuses it.
        self._longest = min(MAX_HEAD, MAX_REQUEST_LINE + len(suffix) - 9) if suffix else len(prefix)

    def matches(self, data: bytes) -> bool:
        """Whether `data` is exactly one request of this shape."""
        return (self._shortest <= len(data) <= self._longest and data.startswith(self.prefix)
                and data.endswith(self.suffix) and not data[self.start : self.end].translate(None, _QUERY_BYTES))


# Shapes by (prefix, suffix, key): connections whose clients send alike share one. Emptied
# when full (connections keep theirs), as the memos above.
_SHAPES: dict[tuple[bytes, bytes, str], Shape] = {}
MAX_SHAPES = 1024


def shape_of(data: bytes, request: Request, key: str) -> Shape | None:
    """The shape of `request` if `data` (one read) is exactly its head, and it is a GET of
    HTTP/1.1 that keeps the connection, with a query and no body or Idempotency-Key;
    else None. The parser itself vouches for it: the shape with another query in it
    must parse to this request but for that query."""
    if (request.method != b"GET" or request.http10 or not request.keep_alive or request.body
            or request.idempotency_key is not None or data.find(b"\r\n\r\n") != len(data) - 4):
        return None
    if not request.query and data.startswith(b"GET " + request.path + b" HTTP/1.1\r\n"):
        shape = _SHAPES.get((data, b"", key))
        if shape is None:  # (data is this request, as the parser read it: nothing to probe)
            if len(_SHAPES) >= MAX_SHAPES:
                _SHAPES.clear()
            shape = _SHAPES[(data, b"", key)] = Shape(data, b"", key)
        return shape
    prefix = b"GET " + request.path + b"?"
    if not data.startswith(prefix + request.query):
        return None
    suffix = data[len(prefix) + len(request.query) :]
    if not suffix.startswith(b" HTTP/1.1\r\n"):
        return None
    shape = _SHAPES.get((prefix, suffix, key))
    if shape is not None:
        return shape
    probe = RequestParser()
    probe.feed(prefix + b"probe" + suffix)
    try:
        other = probe.next_request()
    except HttpError:
        return None
    if other is None or probe.buffered or (other.method, other.path, other.query, other.http10, other.keep_alive,
                                           other.headers, other.body, other.idempotency_key) != (
            request.method, request.path, b"probe", False, True, request.headers, b"", None):
        return None
    if len(_SHAPES) >= MAX_SHAPES:
        _SHAPES.clear()
    shape = _SHAPES[(prefix, suffix, key)] = Shape(prefix, suffix, key)
    return shape
