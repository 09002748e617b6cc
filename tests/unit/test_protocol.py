"""The sans-I/O request parser, as plain function calls on bytes.

Every case is tried three ways, as h11's `tests/test_io.py` `tr()` does: fed whole, fed
byte by byte, and fed with a valid request after it. A good case must give the same
requests all three ways (and the trailing request must parse after it); a bad case must
raise `HttpError` with the same status all three ways (byte by byte it may come earlier).
RFC sections are RFC 9112 unless said otherwise.
"""

from __future__ import annotations

from typing import Any

import pytest

from seckill.http.protocol import (
    MAX_HEAD,
    HttpError,
    RequestParser,
)
from support.parser_cases import (
    AB,
    BAD,
    FORM,
    GOOD,
    NEXT,
    TRAILER,
    WAYS,
    WRK,
    fields,
    filler_head,
    get,
    head,
    post,
    run,
    split,
)


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize(("raw", "expected"), GOOD)
def test_good_request(raw: bytes, expected: list[dict[str, Any]], way: str) -> None:
    requests, error, parser = run(split(raw, way))
    assert error is None
    if way == "trailing":
        expected = [*expected, NEXT]
    assert [fields(r) for r in requests] == expected
    assert parser.next_request() is None
    assert (parser.buffered, parser.mid_request) == (0, False)


def test_head_at_limit_is_exactly_max_head() -> None:
    assert len(filler_head(MAX_HEAD)) == MAX_HEAD


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize(("raw", "status"), BAD)
def test_bad_request(raw: bytes, status: int, way: str) -> None:
    requests, error, parser = run(split(raw, way))
    assert requests == []
    assert error is not None, "no error raised"
    assert error.status == status, error.reason
    # Dead after an error: it keeps refusing, whatever comes next.
    parser.feed(TRAILER)
    with pytest.raises(HttpError):
        parser.next_request()


def test_long_method_is_refused_complete_or_not() -> None:
    # Found by fuzz/fuzz_parser.py: a complete head with a long method used to parse and
    # wait for its body, while the same bytes split earlier were refused at once.
    for raw in (head(b"FOOBARBAZQUX / HTTP/1.1", b"Host: t"),
                post(b"Content-Length: 47").replace(b"POST", b"$$$$$$$T", 1)):
        for way in WAYS:
            requests, error, _ = run(split(raw, way))
            assert requests == [] and error is not None and error.status == 501


def test_error_after_good_requests_keeps_them() -> None:
    requests, error, _ = run([AB + WRK + b"GET / HTTP/1.1\nHost: t\n\n" + WRK])
    assert [r.target for r in requests] == [b"/limit", b"/limit"]
    assert error is not None and error.status == 400


def test_parser_stays_dead_after_error() -> None:
    parser = RequestParser()
    parser.feed(b"GET / HTTP/2.0\r\nHost: t\r\n\r\n")
    with pytest.raises(HttpError) as first:
        parser.next_request()
    assert first.value.status == 505
    for _ in range(2):
        with pytest.raises(HttpError) as again:
            parser.next_request()
        assert again.value.status == 400
    parser.feed(WRK)
    with pytest.raises(HttpError):
        parser.next_request()


def test_http_error_carries_status_and_reason() -> None:
    exc = HttpError(431, "too many header fields")
    assert (exc.status, exc.reason, str(exc)) == (431, "too many header fields", "too many header fields")


def test_need_more_data_then_request() -> None:
    parser = RequestParser()
    assert parser.next_request() is None
    parser.feed(WRK[:-2])
    assert parser.next_request() is None
    assert parser.next_request() is None  # asking again changes nothing
    parser.feed(WRK[-2:])
    request = parser.next_request()
    assert request is not None and request.path == b"/limit"
    assert parser.next_request() is None


def test_buffered_and_mid_request() -> None:
    parser = RequestParser()
    assert (parser.buffered, parser.mid_request) == (0, False)
    parser.feed(b"")
    assert parser.next_request() is None
    assert (parser.buffered, parser.mid_request) == (0, False)

    post_head = post(b"Content-Length: 8")
    parser.feed(post_head[:10])
    assert parser.next_request() is None
    assert (parser.buffered, parser.mid_request) == (10, True)

    # Head complete, body not: the head is taken, the body bytes wait.
    parser.feed(post_head[10:] + FORM[:3])
    assert parser.next_request() is None
    assert (parser.buffered, parser.mid_request) == (3, True)

    # Head complete, no body byte yet: still mid-request with nothing buffered.
    other = RequestParser()
    other.feed(post_head)
    assert other.next_request() is None
    assert (other.buffered, other.mid_request) == (0, True)

    parser.feed(FORM[3:] + WRK[:5])
    request = parser.next_request()
    assert request is not None and request.body == FORM
    assert parser.next_request() is None
    assert (parser.buffered, parser.mid_request) == (5, True)

    parser.feed(WRK[5:])
    assert parser.next_request() is not None
    assert (parser.buffered, parser.mid_request) == (0, False)


def test_lone_cr_waits_for_its_lf() -> None:
    parser = RequestParser()
    parser.feed(b"\r")
    assert parser.next_request() is None  # not refused: a CRLF may follow
    assert (parser.buffered, parser.mid_request) == (1, True)  # the start of something
    assert parser.feed(b"\n") is False
    assert parser.next_request() is None
    assert (parser.buffered, parser.mid_request) == (0, False)  # skipped: idle again
    # The request after it begins a new request (its head's clock starts at its first byte).
    assert parser.feed(WRK) is True
    request = parser.next_request()
    assert request is not None and request.path == b"/limit"


def test_skipped_empty_line_after_a_body_leaves_the_connection_idle() -> None:
    parser = RequestParser()
    parser.feed(post(b"Content-Length: 8") + FORM + b"\r\n")
    request = parser.next_request()
    assert request is not None and request.body == FORM
    assert parser.next_request() is None
    assert (parser.buffered, parser.mid_request, parser.awaiting_body) == (0, False, False)
    assert parser.feed(WRK) is True
    assert parser.next_request() is not None
    # One per request: the next request may have its own.
    parser.feed(b"\r\n" + WRK)
    assert parser.next_request() is not None
    assert (parser.buffered, parser.mid_request) == (0, False)


@pytest.mark.parametrize("way", WAYS)
def test_second_empty_line_between_pipelined_requests_is_refused(way: str) -> None:
    raw = b"\r\n" + WRK + b"\r\n\r\n" + WRK
    requests, error, _ = run(split(raw, way))
    assert [r.path for r in requests] == [b"/limit"]
    assert error is not None and error.status == 400


def test_endless_empty_lines_are_refused_at_the_second() -> None:
    parser = RequestParser()
    parser.feed(b"\r\n")
    assert parser.next_request() is None
    parser.feed(b"\r\n")
    with pytest.raises(HttpError) as info:
        parser.next_request()
    assert info.value.status == 400


def test_pipelined_requests_come_out_one_per_call() -> None:
    parser = RequestParser()
    parser.feed(WRK * 3)
    assert parser.buffered == 3 * len(WRK)
    for left in (2, 1, 0):
        assert parser.next_request() is not None
        assert parser.buffered == left * len(WRK)
    assert parser.next_request() is None


def test_request_header_lookup_and_repr() -> None:
    parser = RequestParser()
    parser.feed(AB)
    request = parser.next_request()
    assert request is not None
    assert request.header(b"user-agent") == b"ApacheBench/2.3"
    assert request.header(b"cookie") is None
    assert repr(request) == "<Request GET /limit>"


def test_expect_100_continue_is_asked_once_while_the_body_is_missing() -> None:
    parser = RequestParser()
    parser.feed(post(b"Expect: 100-Continue", b"Content-Length: 5"))
    assert parser.next_request() is None
    assert parser.take_continue() is True
    assert parser.take_continue() is False  # once
    parser.feed(b"hello")
    request = parser.next_request()
    assert request is not None and request.body == b"hello"
    # Body already there, an HTTP/1.0 client, or no body: nothing to ask for.
    for raw in (post(b"Expect: 100-continue", b"Content-Length: 2") + b"hi",
                post(b"Expect: 100-continue", b"Content-Length: 2", version=b"1.0"),
                get(b"Expect: 100-continue")):
        parser = RequestParser()
        parser.feed(raw)
        parser.next_request()
        assert parser.take_continue() is False


def test_a_known_header_block_does_not_lift_the_head_limit() -> None:
    """A header block parsed before (memoised) under a request line long enough to take
    the whole head past MAX_HEAD: 431, as for a block never seen."""
    block = b"Host: t\r\nX-Pad: " + b"p" * (MAX_HEAD // 2 + 200) + b"\r\n\r\n"
    first = RequestParser()
    first.feed(b"GET /?a HTTP/1.1\r\n" + block)
    assert first.next_request() is not None
    parser = RequestParser()
    parser.feed(b"GET /?" + b"q" * (MAX_HEAD // 2 - 100) + b" HTTP/1.1\r\n" + block)
    with pytest.raises(HttpError) as info:
        parser.next_request()
    assert info.value.status == 431
