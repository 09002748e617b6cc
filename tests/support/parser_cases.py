"""The parser's cases, shared: good and bad requests (tests/unit/test_protocol.py, and
tests/integration/test_api.py sends the bad ones to a server), seed requests and the
split-anywhere invariant (tests/unit/test_protocol_fuzz.py and fuzz/fuzz_parser.py)."""

from __future__ import annotations

from typing import Any

import pytest

from seckill.http.protocol import (
    MAX_BODY,
    MAX_HEAD,
    MAX_HEADERS,
    MAX_REQUEST_LINE,
    HttpError,
    Request,
    RequestParser,
)

WAYS = ["whole", "bytewise", "trailing"]
# What "trailing" appends: a valid request, which must still parse after a good case.
TRAILER = b"GET /next HTTP/1.1\r\nHost: t\r\n\r\n"


def req(
    method: bytes,
    target: bytes,
    path: bytes | None = None,
    query: bytes = b"",
    *,
    headers: list[tuple[bytes, bytes]] | None = None,
    http10: bool = False,
    keep_alive: bool | None = None,
    body: bytes = b"",
) -> dict[str, Any]:
    """The fields a request must have; by default an HTTP/1.1 keep-alive request with Host: t."""
    keys = [value for name, value in headers or () if name == b"idempotency-key"]
    return {
        "method": method,
        "target": target,
        "path": target if path is None else path,
        "query": query,
        "http10": http10,
        "keep_alive": (not http10) if keep_alive is None else keep_alive,
        "headers": ((b"host", b"t"),) if headers is None else tuple(headers),
        "body": body,
        "idempotency_key": b", ".join(keys) if keys else None,  # the fields as one list
    }


NEXT = req(b"GET", b"/next")


def fields(request: Request) -> dict[str, Any]:
    return {name: getattr(request, name) for name in Request.__slots__}


def run(chunks: list[bytes]) -> tuple[list[Request], HttpError | None, RequestParser]:
    """Feed each chunk and take out every complete request after it, as the server does."""
    parser = RequestParser()
    requests: list[Request] = []
    for chunk in chunks:
        parser.feed(chunk)
        try:
            while (request := parser.next_request()) is not None:
                requests.append(request)
        except HttpError as exc:
            return requests, exc, parser
    return requests, None, parser


def split(raw: bytes, way: str) -> list[bytes]:
    if way == "whole":
        return [raw]
    if way == "bytewise":
        return [raw[i : i + 1] for i in range(len(raw))]
    assert way == "trailing"
    return [raw + TRAILER]


def head(*lines: bytes) -> bytes:
    return b"".join(line + b"\r\n" for line in lines) + b"\r\n"


AB = b"GET /limit HTTP/1.0\r\nHost: 127.0.0.1:5000\r\nUser-Agent: ApacheBench/2.3\r\nAccept: */*\r\n\r\n"
AB_HEADERS = [(b"host", b"127.0.0.1:5000"), (b"user-agent", b"ApacheBench/2.3"), (b"accept", b"*/*")]
# wrk.format(): the request line, then Host as host:port from the URL.
WRK = b"GET /limit HTTP/1.1\r\nHost: 127.0.0.1:5000\r\n\r\n"
FORM = b"user=bob"
JSON = b'{"user": "carol"}'
# A request line exactly MAX_REQUEST_LINE long ("GET " + target + " HTTP/1.1").
LONGEST_TARGET = b"/" + b"a" * (MAX_REQUEST_LINE - len(b"GET / HTTP/1.1"))
MANY_HEADERS = [(b"x-%d" % i, b"v") for i in range(MAX_HEADERS - 1)]


FILLER_BASE = head(b"GET / HTTP/1.1", b"Host: t", b"X-Pad: ")


def filler_head(total: int) -> bytes:
    """A valid head exactly `total` bytes long, padded with one large header."""
    return head(b"GET / HTTP/1.1", b"Host: t", b"X-Pad: " + b"p" * (total - len(FILLER_BASE)))


def post(*headers: bytes, version: bytes = b"1.1") -> bytes:
    return head(b"POST / HTTP/" + version, b"Host: t", *headers)


def get(*headers: bytes, target: bytes = b"/", version: bytes = b"1.1") -> bytes:
    return head(b"GET " + target + b" HTTP/" + version, b"Host: t", *headers)


GOOD = [
    pytest.param(head(b"GET / HTTP/1.1", b"Host: t"), [req(b"GET", b"/")], id="get-http11-host"),
    pytest.param(
        head(b"GET /limit HTTP/1.0"),
        [req(b"GET", b"/limit", headers=[], http10=True)],
        id="http10-closes",
    ),
    # ab -k: HTTP/1.0 asking for keep-alive (RFC 9112 9.3 / RFC 2068 19.7.1).
    pytest.param(
        head(b"GET /limit HTTP/1.0", b"Connection: Keep-Alive", b"Host: t"),
        [req(b"GET", b"/limit", headers=[(b"connection", b"Keep-Alive"), (b"host", b"t")],
             http10=True, keep_alive=True)],
        id="http10-keep-alive",
    ),
    pytest.param(
        head(b"GET / HTTP/1.1", b"Host: t", b"Connection: close"),
        [req(b"GET", b"/", headers=[(b"host", b"t"), (b"connection", b"close")], keep_alive=False)],
        id="http11-connection-close",
    ),
    # Idempotency-Key is noted as sent (the app parses it); two fields are one list.
    pytest.param(
        head(b"GET / HTTP/1.1", b"Host: t", b'Idempotency-Key: "a"', b'idempotency-key: "b"'),
        [req(b"GET", b"/", headers=[(b"host", b"t"), (b"idempotency-key", b'"a"'), (b"idempotency-key", b'"b"')])],
        id="idempotency-key-fields",
    ),
    # RFC 9112 9.6: "close" among other connection options still closes.
    pytest.param(
        head(b"GET / HTTP/1.1", b"Host: t", b"Connection: keep-alive, Close"),
        [req(b"GET", b"/", headers=[(b"host", b"t"), (b"connection", b"keep-alive, Close")],
             keep_alive=False)],
        id="http11-connection-list-with-close",
    ),
    pytest.param(
        head(b"POST /seckill/hat HTTP/1.1", b"Host: t",
             b"Content-Type: application/x-www-form-urlencoded", b"Content-Length: 8") + FORM,
        [req(b"POST", b"/seckill/hat", body=FORM, headers=[
            (b"host", b"t"), (b"content-type", b"application/x-www-form-urlencoded"),
            (b"content-length", b"8")])],
        id="post-form-body",
    ),
    pytest.param(
        head(b"POST /admin/items HTTP/1.1", b"Host: t", b"Content-Type: application/json",
             b"Content-Length: %d" % len(JSON)) + JSON,
        [req(b"POST", b"/admin/items", body=JSON, headers=[
            (b"host", b"t"), (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(JSON))])],
        id="post-json-body",
    ),
    pytest.param(
        head(b"POST / HTTP/1.1", b"Host: t", b"Content-Length: 0"),
        [req(b"POST", b"/", headers=[(b"host", b"t"), (b"content-length", b"0")])],
        id="post-empty-body",
    ),
    pytest.param(
        head(b"GET /a HTTP/1.1", b"Host: t")
        + head(b"POST /b HTTP/1.1", b"Host: t", b"Content-Length: 8") + FORM
        + head(b"GET /c?x=1 HTTP/1.1", b"Host: t", b"Connection: close"),
        [
            req(b"GET", b"/a"),
            req(b"POST", b"/b", body=FORM, headers=[(b"host", b"t"), (b"content-length", b"8")]),
            req(b"GET", b"/c?x=1", b"/c", b"x=1",
                headers=[(b"host", b"t"), (b"connection", b"close")], keep_alive=False),
        ],
        id="pipelined-in-order",
    ),
    pytest.param(
        head(b"GET /seckill/hat?user=alice&n=1 HTTP/1.1", b"Host: t"),
        [req(b"GET", b"/seckill/hat?user=alice&n=1", b"/seckill/hat", b"user=alice&n=1")],
        id="query-split",
    ),
    pytest.param(
        head(b"GET /p?a?b=/c HTTP/1.1", b"Host: t"),
        [req(b"GET", b"/p?a?b=/c", b"/p", b"a?b=/c")],
        id="query-split-at-first-question-mark",
    ),
    pytest.param(
        head(b"GET /p? HTTP/1.1", b"Host: t"), [req(b"GET", b"/p?", b"/p", b"")], id="empty-query"
    ),
    # RFC 9112 3.2.2: absolute-form, as sent to a proxy; the server serves its path.
    pytest.param(
        head(b"GET http://example.com/seckill/hat?user=a HTTP/1.1", b"Host: example.com"),
        [req(b"GET", b"http://example.com/seckill/hat?user=a", b"/seckill/hat", b"user=a",
             headers=[(b"host", b"example.com")])],
        id="absolute-form",
    ),
    pytest.param(
        head(b"GET HTTPS://Example.com:8443/x HTTP/1.1", b"Host: t"),
        [req(b"GET", b"HTTPS://Example.com:8443/x", b"/x")],
        id="absolute-form-https-port-any-case",
    ),
    pytest.param(
        head(b"GET http://example.com HTTP/1.1", b"Host: t"),
        [req(b"GET", b"http://example.com", b"/")],
        id="absolute-form-empty-path",
    ),
    # RFC 3986 3.2: the authority ends at "?" too, so a "/" in the query is not the path.
    pytest.param(
        head(b"GET http://example.com?next=/a HTTP/1.1", b"Host: t"),
        [req(b"GET", b"http://example.com?next=/a", b"/", b"next=/a")],
        id="absolute-form-query-without-path",
    ),
    # RFC 9112 3.2.4: asterisk-form, only for OPTIONS.
    pytest.param(head(b"OPTIONS * HTTP/1.1", b"Host: t"), [req(b"OPTIONS", b"*")], id="options-asterisk"),
    # RFC 9112 5.1: optional whitespace around the value is not part of it.
    pytest.param(
        head(b"GET / HTTP/1.1", b"Host:t", b"X-A:   spaced  value \t ", b"X-B:\tx", b"X-Empty:",
             b"X-Blank: \t "),
        [req(b"GET", b"/", headers=[(b"host", b"t"), (b"x-a", b"spaced  value"), (b"x-b", b"x"),
                                    (b"x-empty", b""), (b"x-blank", b"")])],
        id="header-value-whitespace-trimmed",
    ),
    pytest.param(
        head(b"GET / HTTP/1.1", b"HOST: t", b"X-Mixed-Case: Value Kept", b"CONTENT-LENGTH: 0"),
        [req(b"GET", b"/", headers=[(b"host", b"t"), (b"x-mixed-case", b"Value Kept"),
                                    (b"content-length", b"0")])],
        id="header-names-lowercased",
    ),
    # RFC 9110 5.5: obs-text (bytes 0x80-0xff) is allowed in a value.
    pytest.param(
        head(b"GET / HTTP/1.1", b"Host: t", b"X-Name: caf\xc3\xa9"),
        [req(b"GET", b"/", headers=[(b"host", b"t"), (b"x-name", b"caf\xc3\xa9")])],
        id="header-value-obs-text",
    ),
    pytest.param(
        AB, [req(b"GET", b"/limit", headers=AB_HEADERS, http10=True)], id="ab-request"
    ),
    pytest.param(
        AB.replace(b"HTTP/1.0\r\n", b"HTTP/1.0\r\nConnection: Keep-Alive\r\n"),
        [req(b"GET", b"/limit", headers=[(b"connection", b"Keep-Alive"), *AB_HEADERS],
             http10=True, keep_alive=True)],
        id="ab-k-request",
    ),
    pytest.param(
        WRK, [req(b"GET", b"/limit", headers=[(b"host", b"127.0.0.1:5000")])], id="wrk-request"
    ),
    # Limits, on the accepting side of each boundary.
    pytest.param(
        head(b"GET " + LONGEST_TARGET + b" HTTP/1.1", b"Host: t"),
        [req(b"GET", LONGEST_TARGET)],
        id="request-line-at-limit",
    ),
    pytest.param(
        filler_head(MAX_HEAD),
        [req(b"GET", b"/", headers=[(b"host", b"t"), (b"x-pad", b"p" * (MAX_HEAD - len(FILLER_BASE)))])],
        id="head-at-limit",
    ),
    pytest.param(
        head(b"GET / HTTP/1.1", b"Host: t", *(b"%s: %s" % pair for pair in MANY_HEADERS)),
        [req(b"GET", b"/", headers=[(b"host", b"t"), *MANY_HEADERS])],
        id="header-count-at-limit",
    ),
    pytest.param(
        head(b"POST / HTTP/1.1", b"Host: t", b"Content-Length: %d" % MAX_BODY) + b"b" * MAX_BODY,
        [req(b"POST", b"/", body=b"b" * MAX_BODY,
             headers=[(b"host", b"t"), (b"content-length", b"%d" % MAX_BODY)])],
        id="body-at-limit",
    ),
    # RFC 9110 8.6: leading zeros are still a valid Content-Length.
    pytest.param(
        head(b"POST / HTTP/1.1", b"Host: t", b"Content-Length: 0002") + b"ok",
        [req(b"POST", b"/", body=b"ok", headers=[(b"host", b"t"), (b"content-length", b"0002")])],
        id="content-length-leading-zeros",
    ),
    # RFC 9112 2.2: one empty line before a request line is ignored (one per request).
    pytest.param(
        b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        [req(b"GET", b"/", headers=[(b"host", b"a")])],
        id="empty-line-before-request",
    ),
    pytest.param(
        get(target=b"/a") + b"\r\n" + get(target=b"/b"),
        [req(b"GET", b"/a"), req(b"GET", b"/b")],
        id="empty-line-between-pipelined-requests",
    ),
    # What some clients send after a POST body (RFC 9112 2.2); nothing is left buffered.
    pytest.param(
        post(b"Content-Length: 8") + FORM + b"\r\n",
        [req(b"POST", b"/", body=FORM, headers=[(b"host", b"t"), (b"content-length", b"8")])],
        id="empty-line-after-body",
    ),
    pytest.param(
        b"\r\n" + post(b"Content-Length: 8") + FORM + b"\r\n" + get(target=b"/b") + b"\r\n",
        [req(b"POST", b"/", body=FORM, headers=[(b"host", b"t"), (b"content-length", b"8")]),
         req(b"GET", b"/b")],
        id="empty-line-before-each-request",
    ),
    # The body is counted from the byte after the head: a CRLF there is body, not skipped.
    pytest.param(
        post(b"Content-Length: 2") + b"\r\n",
        [req(b"POST", b"/", body=b"\r\n", headers=[(b"host", b"t"), (b"content-length", b"2")])],
        id="crlf-body-is-body",
    ),
    # The skipped line does not count towards the head's limit.
    pytest.param(
        b"\r\n" + filler_head(MAX_HEAD),
        [req(b"GET", b"/", headers=[(b"host", b"t"), (b"x-pad", b"p" * (MAX_HEAD - len(FILLER_BASE)))])],
        id="empty-line-before-head-at-limit",
    ),
]


BIG_LINE = b"GET /" + b"a" * MAX_REQUEST_LINE + b" HTTP/1.1"
PAD_HEADER = b"X-Pad: " + b"p" * MAX_HEAD
CHUNKED_POST = (
    head(b"POST / HTTP/1.1", b"Host: t", b"Transfer-Encoding: chunked") + b"5\r\nhello\r\n0\r\n\r\n"
)
# The first bytes of a TLS 1.2 ClientHello: record type 22, version 3.1, length, handshake.
CLIENT_HELLO = bytes.fromhex("160301020001 0001fc 0303") + bytes(range(32)) + b"\x20" + b"\xab" * 32


BAD = [
    # RFC 9110 10.1.1: an expectation other than 100-continue cannot be met.
    pytest.param(post(b"Expect: 200-ok", b"Content-Length: 0"), 417, id="expect-unknown"),
    pytest.param(get(b"Expect: 100-continue, foo"), 417, id="expect-list"),
    # RFC 9112 3: request-line = method SP request-target SP HTTP-version.
    pytest.param(b"GARBAGE\r\n\r\n", 400, id="request-line-one-word"),
    pytest.param(head(b"GET /", b"Host: t"), 400, id="request-line-no-version"),
    pytest.param(head(b"GET  / HTTP/1.1", b"Host: t"), 400, id="request-line-double-space"),
    pytest.param(head(b"GET\t/ HTTP/1.1", b"Host: t"), 400, id="request-line-tab"),
    pytest.param(head(b"GET / HTTP/1.1 ", b"Host: t"), 400, id="request-line-trailing-space"),
    pytest.param(head(b" GET / HTTP/1.1", b"Host: t"), 400, id="request-line-leading-space"),
    pytest.param(head(b"G@T / HTTP/1.1", b"Host: t"), 400, id="method-not-a-token"),
    pytest.param(head(b"GET / http/1.1", b"Host: t"), 400, id="version-lowercase"),
    # RFC 9112 2.2: one empty line before the request line is skipped, a second is refused,
    # so a client cannot hold a connection with CRLFs; however the bytes are split.
    pytest.param(b"\r\n\r\n" + get(), 400, id="two-empty-lines"),
    pytest.param(b"\r\n\r\n", 400, id="two-empty-lines-alone"),
    pytest.param(b"\r\n\r", 400, id="empty-line-then-cr"),
    pytest.param(b"\r\n\r\n\r\n\r\n" + get(), 400, id="many-empty-lines"),
    pytest.param(b"\r\r\n" + get(), 400, id="cr-before-empty-line"),
    pytest.param(b"\n" + get(), 400, id="bare-lf-before-request"),
    pytest.param(b"\r\n\n" + get(), 400, id="empty-line-then-bare-lf"),
    pytest.param(b"\r\n \r\n" + get(), 400, id="whitespace-line-before-request"),
    pytest.param(b"\r\n" + get(version=b"2.0"), 505, id="empty-line-then-bad-version"),
    pytest.param(b"\r\nFOOBARBAZQUX ", 501, id="empty-line-then-long-method"),
    pytest.param(b"\r\n" + filler_head(MAX_HEAD + 1), 431, id="empty-line-then-head-over-limit"),
    # Limits: request line (414, RFC 9112 3), head (431, RFC 6585 5), body (413, RFC 9110 15.5.14).
    pytest.param(head(BIG_LINE, b"Host: t"), 414, id="request-line-too-long"),
    pytest.param(BIG_LINE, 414, id="request-line-too-long-incomplete"),
    pytest.param(head(b"GET " + LONGEST_TARGET + b"a HTTP/1.1", b"Host: t"), 414,
                 id="request-line-one-over-limit"),
    pytest.param(get(PAD_HEADER), 431, id="head-too-large"),
    pytest.param(get(PAD_HEADER)[:-2], 431, id="head-too-large-incomplete"),
    pytest.param(filler_head(MAX_HEAD + 1), 431, id="head-one-over-limit"),
    pytest.param(get(*[b"X-%d: v" % i for i in range(MAX_HEADERS)]), 431, id="too-many-header-fields"),
    pytest.param(post(b"Content-Length: %d" % (MAX_BODY + 1)), 413, id="content-length-over-limit"),
    pytest.param(post(b"Content-Length: " + b"9" * 25), 413, id="content-length-25-digits"),
    # int() refuses over 4300 digits: must still be a 413, not a ValueError.
    pytest.param(post(b"Content-Length: " + b"1" * 5000), 413, id="content-length-5000-digits"),
    # RFC 9112 6.1: a server that does not understand a transfer coding answers 501.
    pytest.param(CHUNKED_POST, 501, id="transfer-encoding-chunked"),
    pytest.param(post(b"Transfer-Encoding: gzip, chunked"), 501, id="transfer-encoding-gzip-chunked"),
    # RFC 9112 6.3: chunked not last (or absent) leaves the body's end unknown: 400.
    pytest.param(post(b"Transfer-Encoding: chunked, gzip"), 400, id="transfer-encoding-chunked-not-last"),
    pytest.param(post(b"Transfer-Encoding: gzip"), 400, id="transfer-encoding-gzip-alone"),
    pytest.param(post(b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip"), 400,
                 id="transfer-encoding-two-fields-chunked-first"),
    pytest.param(post(b"Transfer-Encoding:"), 400, id="transfer-encoding-empty"),
    pytest.param(post(b"Transfer-Encoding: gzip", b"Transfer-Encoding: chunked"), 501,
                 id="transfer-encoding-two-fields-chunked-last"),
    # RFC 9112 6.1: both framing headers is a smuggling attempt.
    pytest.param(post(b"Content-Length: 5", b"Transfer-Encoding: chunked") + b"hello", 400,
                 id="content-length-and-transfer-encoding"),
    pytest.param(post(b"Transfer-Encoding: chunked", b"Content-Length: 5") + b"hello", 400,
                 id="transfer-encoding-and-content-length"),
    # RFC 9112 6.1: Transfer-Encoding in an HTTP/1.0 message is faulty framing.
    pytest.param(post(b"Transfer-Encoding: chunked", version=b"1.0"), 400,
                 id="transfer-encoding-in-http10"),
    # RFC 9112 6.3: several Content-Length values; identical ones are refused by design too.
    pytest.param(post(b"Content-Length: 1", b"Content-Length: 2") + b"ab", 400,
                 id="content-length-differing"),
    pytest.param(post(b"Content-Length: 2", b"Content-Length: 2") + b"ab", 400, id="content-length-twice"),
    # RFC 9110 8.6: Content-Length = 1*DIGIT, nothing else.
    pytest.param(post(b"Content-Length: 5, 5") + b"hello", 400, id="content-length-list"),
    pytest.param(post(b"Content-Length: -1"), 400, id="content-length-negative"),
    pytest.param(post(b"Content-Length: +1") + b"a", 400, id="content-length-plus"),
    pytest.param(post(b"Content-Length: 0x10") + b"a" * 16, 400, id="content-length-hex"),
    pytest.param(post(b"Content-Length: 1 0") + b"a" * 10, 400, id="content-length-inner-space"),
    pytest.param(post(b"Content-Length: 1_0") + b"a" * 10, 400, id="content-length-underscore"),
    pytest.param(post(b"Content-Length:"), 400, id="content-length-empty"),
    pytest.param(post(b"Content-Length: \xd9\xa1") + b"a", 400, id="content-length-non-ascii-digit"),
    # RFC 9112 5.2: obs-fold is refused with a 400.
    pytest.param(get(b"X-A: a", b" folded"), 400, id="obs-fold-space"),
    pytest.param(get(b"X-A: a", b"\tfolded"), 400, id="obs-fold-tab"),
    pytest.param(head(b"GET / HTTP/1.1", b" Host: t"), 400, id="obs-fold-first-field"),
    # RFC 9112 5.1: no whitespace between field name and colon.
    pytest.param(head(b"GET / HTTP/1.1", b"Host : t"), 400, id="space-before-colon"),
    pytest.param(head(b"GET / HTTP/1.1", b"Host\t: t"), 400, id="tab-before-colon"),
    pytest.param(get(b"X-A value"), 400, id="field-without-colon"),
    pytest.param(get(b": value"), 400, id="field-empty-name"),
    pytest.param(get(b"X(A): value"), 400, id="field-name-not-a-token"),
    # RFC 9112 2.2: a bare CR anywhere in the head is refused.
    pytest.param(head(b"GET /\r HTTP/1.1", b"Host: t"), 400, id="bare-cr-request-line"),
    pytest.param(get(b"X-A: a\rb"), 400, id="bare-cr-value"),
    pytest.param(get(b"X-A\r: a"), 400, id="bare-cr-name"),
    pytest.param(get(b"X-A: a\r"), 400, id="bare-cr-before-crlf"),
    pytest.param(get(b"\r"), 400, id="bare-cr-line"),
    pytest.param(b"\rGET / HTTP/1.1\r\nHost: t\r\n\r\n", 400, id="bare-cr-first-byte"),
    # RFC 9112 2.2: bare LF line ends are not accepted here.
    pytest.param(b"GET / HTTP/1.1\nHost: t\n\n", 400, id="bare-lf-everywhere"),
    pytest.param(b"GET / HTTP/1.1\nHost: t\r\n\r\n", 400, id="bare-lf-after-request-line"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: t\n\r\n", 400, id="bare-lf-after-field"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: t\r\n\n", 400, id="bare-lf-final-line"),
    pytest.param(get(b"X-A: a\nb"), 400, id="bare-lf-in-value"),
    # Framing headers spelt with underscores (some proxies map "_" to "-").
    pytest.param(post(b"Content_Length: 5") + b"hello", 400, id="content-length-underscore-name"),
    pytest.param(post(b"Transfer_Encoding: chunked"), 400, id="transfer-encoding-underscore-name"),
    # RFC 9110 5.5: no control characters in a field value.
    pytest.param(get(b"X-A: a\x01b"), 400, id="value-control-01"),
    pytest.param(get(b"X-A: a\x1fb"), 400, id="value-control-1f"),
    pytest.param(get(b"X-A: a\x7fb"), 400, id="value-del-7f"),
    pytest.param(get(b"X-A: a\x0bb"), 400, id="value-vertical-tab"),
    # NUL bytes anywhere in the head.
    pytest.param(head(b"G\x00ET / HTTP/1.1", b"Host: t"), 400, id="nul-in-method"),
    pytest.param(head(b"GET /\x00 HTTP/1.1", b"Host: t"), 400, id="nul-in-target"),
    pytest.param(head(b"GET / HTTP/1.1\x00", b"Host: t"), 400, id="nul-after-version"),
    pytest.param(get(b"X-\x00A: a"), 400, id="nul-in-name"),
    pytest.param(get(b"X-A: a\x00b"), 400, id="nul-in-value"),
    pytest.param(b"\x00" + get(), 400, id="nul-first-byte"),
    # RFC 9112 2.3: a major version we do not speak (505, RFC 9110 15.6.6).
    pytest.param(get(version=b"2.0"), 505, id="http-2.0"),
    pytest.param(get(version=b"1.2"), 505, id="http-1.2"),
    pytest.param(head(b"GET / HTTP/0.9"), 505, id="http-0.9"),
    pytest.param(get(version=b"3.0"), 505, id="http-3.0"),
    # RFC 9112 2.3: HTTP-version = "HTTP/" DIGIT "." DIGIT, exactly.
    pytest.param(get(version=b"1.10"), 400, id="http-1.10"),
    pytest.param(get(version=b"1"), 400, id="http-1"),
    pytest.param(get(version=b"1.1.1"), 400, id="http-1.1.1"),
    pytest.param(head(b"GET / HTTX/1.1", b"Host: t"), 400, id="httx"),
    pytest.param(head(b"GET / HTTP/1,1", b"Host: t"), 400, id="version-comma"),
    # RFC 9112 3.2: an HTTP/1.1 request has exactly one Host.
    pytest.param(head(b"GET / HTTP/1.1"), 400, id="http11-without-host"),
    pytest.param(get(b"Host: u"), 400, id="http11-two-hosts"),
    pytest.param(get(b"Host: t"), 400, id="http11-two-identical-hosts"),
    # A method longer than any we know is refused before the head is complete (501).
    pytest.param(b"FOOBARBAZQUX / HTTP/1.1\r\nHost: t\r\n", 501, id="long-method-incomplete-head"),
    pytest.param(b"FOOBARBAZQUX ", 501, id="long-method-alone"),
    pytest.param(b"CONNECTX ", 501, id="method-one-over-longest"),
    # RFC 9112 3.2: no fragment in the request target.
    pytest.param(get(target=b"/seckill/hat#frag"), 400, id="fragment"),
    pytest.param(get(target=b"/p?q=1#frag"), 400, id="fragment-after-query"),
    # RFC 9112 3.2.4: asterisk-form is only for OPTIONS.
    pytest.param(get(target=b"*"), 400, id="asterisk-form-with-get"),
    # RFC 9112 3.2: origin-form starts with "/"; authority-form and others are refused.
    pytest.param(get(target=b"seckill/hat"), 400, id="target-relative"),
    pytest.param(get(target=b"example.com:443"), 400, id="target-authority-form"),
    pytest.param(get(target=b"ftp://example.com/x"), 400, id="target-other-scheme"),
    pytest.param(get(target=b"?q=1"), 400, id="target-query-only"),
    pytest.param(get(target=b"/caf\xc3\xa9"), 400, id="target-non-ascii"),
    pytest.param(get(target=b"/a\x7f"), 400, id="target-del"),
    pytest.param(CLIENT_HELLO, 400, id="tls-client-hello"),
    # Whichever way the bytes are split, the earliest fault decides the status.
    pytest.param(b"GET / HTTP/2.0\r\nHost: t\nX: y\r\n\r\n", 400, id="bare-lf-beats-version"),
    pytest.param(post(b"Content-Length: 99999999", b"X: a\x00"), 400, id="nul-beats-body-limit"),
    pytest.param(head(b"OPTIONSX* HTTP/1.1", b"Host: t"), 501, id="long-method-in-malformed-line"),
    pytest.param(b"ABCDEFGH\x00 / HTTP/1.1\r\nHost: t\r\n\r\n", 501, id="long-method-beats-nul"),
    pytest.param(head(b"GET /\x00" + b"a" * MAX_REQUEST_LINE + b" HTTP/1.1", b"Host: t"), 400,
                 id="nul-beats-long-request-line"),
]


# --- The split-anywhere invariant -----------------------------------------------------

SEEDS = [
    b"GET /limit HTTP/1.0\r\nHost: 127.0.0.1:5000\r\nUser-Agent: ApacheBench/2.3\r\nAccept: */*\r\n\r\n",
    b"GET /limit HTTP/1.0\r\nConnection: Keep-Alive\r\nHost: 127.0.0.1:5000\r\n\r\n",
    b"GET /limit HTTP/1.1\r\nHost: 127.0.0.1:5000\r\n\r\n",
    b"POST /seckill/hat HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-www-form-urlencoded\r\n"
    b"Content-Length: 8\r\n\r\nuser=bob",
    b'POST /admin/items HTTP/1.1\r\nHost: t\r\nContent-Length: 17\r\n\r\n{"user": "carol"}',
    b"GET /a?x=1 HTTP/1.1\r\nHost: t\r\n\r\nGET /b HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET http://example.com/p?q=1 HTTP/1.1\r\nHost: example.com\r\nX-Empty:\r\n\r\n",
]
# Bytes that matter to the grammar, and pieces of it, so mutations and soups reach past
# the request line instead of dying on its first byte.
SPECIAL = [b"\r", b"\n", b"\x00", b" ", b"\t", b":", b"/", b"?", b"#", b"*", b",", b"0", b"9",
           b"-", b"_", b"\x7f", b"\x80", b"\xff", b"A", b"e"]
PIECES = [*SPECIAL, b"\r\n", b"\r\n\r\n", b"GET", b"POST", b"OPTIONS", b"FOOBARBAZ", b"HTTP/1.1",
          b"HTTP/1.0", b"HTTP/2.0", b"Host: t", b"Content-Length: ", b"Transfer-Encoding: chunked",
          b"Connection: close", b"Connection: keep-alive", b"http://h", b"12", b"99999"]


def as_outcome(request: Request) -> tuple[Any, ...]:
    return ("request", *(getattr(request, name) for name in Request.__slots__ if name != "headers"),
            tuple(request.headers))


def parse(chunks: list[bytes]) -> tuple[list[tuple[Any, ...]], tuple[int, bool] | None]:
    """Outcomes of feeding each chunk and draining, and the final state if no error ended it."""
    parser = RequestParser()
    outcomes: list[tuple[Any, ...]] = []
    for chunk in chunks:
        parser.feed(chunk)
        try:
            while (request := parser.next_request()) is not None:
                outcomes.append(as_outcome(request))
        except HttpError as exc:
            assert 400 <= exc.status < 600
            with pytest.raises(HttpError):  # dead after an error
                parser.next_request()
            return [*outcomes, ("error", exc.status)], None
    return outcomes, (parser.buffered, parser.mid_request)


def chop(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
