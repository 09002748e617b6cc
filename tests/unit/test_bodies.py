"""bodies.py: client bodies and query strings, whose only failure is `HttpError` (400).

Each bad input must raise `HttpError` with status 400, never another exception (a
RecursionError from deep JSON, a UnicodeDecodeError, a ValueError from int()); hypothesis
tries arbitrary bytes for the same invariant, as h11's fuzz/afl-server.py does for its parser.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seckill.http.bodies import MAX_JSON_DEPTH, ascii_int, form_pairs, json_value
from seckill.http.protocol import MAX_BODY, HttpError

FUZZ = settings(max_examples=400, deadline=None)


def refused(call: Any, *args: Any) -> HttpError:
    """The HttpError `call(*args)` raises; any other outcome fails the test."""
    with pytest.raises(HttpError) as info:
        call(*args)
    assert info.value.status == 400, info.value.reason
    return info.value


def nested(depth: int, opener: bytes = b"[", closer: bytes = b"]") -> bytes:
    return opener * depth + closer * depth


def objects(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


# --- json_value ---------------------------------------------------------------------

BAD_JSON = [
    # Nesting past MAX_JSON_DEPTH (32); 2000 deep would recurse past Python's limit.
    pytest.param(nested(MAX_JSON_DEPTH + 1), id="arrays-33-deep"),
    pytest.param(objects(MAX_JSON_DEPTH + 1), id="objects-33-deep"),
    pytest.param(nested(2000), id="arrays-2000-deep"),
    pytest.param(objects(2000), id="objects-2000-deep"),
    pytest.param(b"[{" * 1000 + b"1" + b"}]" * 1000, id="mixed-2000-deep"),
    pytest.param(b"[" * 2000, id="arrays-2000-open"),
    pytest.param(b"{" * 2000, id="objects-2000-open"),
    pytest.param(b"[" * 30000, id="arrays-30000-open"),
    pytest.param(b'{"a":' * 2000, id="objects-2000-open-with-keys"),
    # A closing bracket first does not buy depth for later ones.
    pytest.param(b"]" * 100 + nested(100), id="closers-first"),
    pytest.param(b"[]" * 40 + nested(MAX_JSON_DEPTH + 1), id="deep-after-shallow"),
    # Escapes inside strings: an escaped quote does not end the string, an escaped
    # backslash does not escape the quote after it, so the real brackets after count.
    pytest.param(b'["\\"",' + nested(40) + b"]", id="escaped-quote-then-deep"),
    pytest.param(b'["\\\\",' + nested(40) + b"]", id="escaped-backslash-then-deep"),
    pytest.param(b'["\\\\\\"",' + nested(40) + b"]", id="backslash-and-quote-then-deep"),
    pytest.param(b'"\\\n"' + nested(2000), id="escaped-newline-then-deep"),
    pytest.param(b'"\\\n' + b'"' + b"[" * 2000, id="escaped-newline-then-quote-and-deep"),
    # Unterminated strings, with or without brackets inside.
    pytest.param(b'"abc', id="unterminated-string"),
    pytest.param(b'["abc', id="unterminated-string-in-array"),
    pytest.param(b'{"user": "bob', id="unterminated-value"),
    pytest.param(b'"' + b"[" * 2000, id="unterminated-string-of-brackets"),
    pytest.param(b'"abc\\', id="unterminated-after-backslash"),
    pytest.param(b'"\\"', id="only-an-escaped-quote"),
    pytest.param(b'"', id="lone-quote"),
    # Not UTF-8 (RFC 8259 8.1: JSON is UTF-8).
    pytest.param(b'"\xff"', id="byte-ff"),
    pytest.param(b'"\xc3"', id="truncated-sequence"),
    pytest.param(b'{"user": "caf\xe9"}', id="latin-1"),
    pytest.param(b'"\xc0\xaf"', id="overlong-slash"),
    pytest.param(b'"\xed\xa0\x80"', id="utf-8-encoded-surrogate"),  # json.loads(bytes) takes it
    pytest.param(b'"\xf4\x90\x80\x80"', id="past-u10ffff"),
    pytest.param('{"a": 1}'.encode("utf-16"), id="utf-16-with-bom"),  # json.loads(bytes) takes it
    pytest.param('{"a": 1}'.encode("utf-16-le"), id="utf-16-le"),
    pytest.param('{"a": 1}'.encode("utf-32"), id="utf-32"),
    # Not JSON.
    pytest.param(b"{user: 1}", id="unquoted-key"),
    pytest.param(b"{'user': 'bob'}", id="single-quotes"),
    pytest.param(b"[1,]", id="trailing-comma"),
    pytest.param(b'{"a": 1,}', id="trailing-comma-object"),
    pytest.param(b"[1 2]", id="missing-comma"),
    pytest.param(b"{}{}", id="two-values"),
    pytest.param(b"1 2", id="two-numbers"),
    pytest.param(b"[1]]", id="extra-closer"),
    pytest.param(b"[", id="open-bracket"),
    pytest.param(b"}", id="close-brace"),
    pytest.param(b"NaN", id="nan"),  # json.loads takes these three
    pytest.param(b"[Infinity]", id="infinity"),
    pytest.param(b'{"stock": -Infinity}', id="minus-infinity"),
    pytest.param(b"True", id="python-true"),
    pytest.param(b"nul", id="truncated-null"),
    pytest.param(b"0x10", id="hex"),
    pytest.param(b"01", id="leading-zero"),
    pytest.param(b"+1", id="plus"),
    pytest.param(b".5", id="bare-fraction"),
    pytest.param(b"1" * 5000, id="5000-digit-int"),  # int() refuses over 4300 digits
    pytest.param(b"[" + b"1" * 5000 + b"]", id="5000-digit-int-in-array"),
    pytest.param(b'"a\x00b"', id="nul-in-string"),
    pytest.param(b'"a\nb"', id="raw-newline-in-string"),
    pytest.param(b'"\\x41"', id="invalid-escape"),
    pytest.param(b'"\\u12"', id="short-unicode-escape"),
    pytest.param(b"\x00", id="nul"),
    pytest.param(b"user=bob", id="a-form"),
    pytest.param(b"\xef\xbb\xbf", id="only-a-bom"),
    pytest.param(b"\xef\xbb\xbf\xef\xbb\xbf{}", id="two-boms"),
    # Empty.
    pytest.param(b"", id="empty"),
    pytest.param(b" ", id="space"),
    pytest.param(b"\r\n", id="crlf"),
]


@pytest.mark.parametrize("body", BAD_JSON)
def test_bad_json_is_a_400(body: bytes) -> None:
    refused(json_value, body)


def test_too_deep_says_so() -> None:
    assert "deeper than 32" in refused(json_value, nested(MAX_JSON_DEPTH + 1)).reason


GOOD_JSON = [
    pytest.param(b'{"user": "carol"}', {"user": "carol"}, id="purchase"),
    pytest.param(b'{"stock": 10, "per_user": 1, "starts_at": null, "open": true}',
                 {"stock": 10, "per_user": 1, "starts_at": None, "open": True}, id="sale-terms"),
    pytest.param(b"{}", {}, id="empty-object"),
    pytest.param(b" \t\r\n[ ] \n", [], id="whitespace-around"),
    pytest.param(b"0", 0, id="number"),
    pytest.param(b"-1.5e3", -1500.0, id="float"),
    pytest.param(b'"caf\xc3\xa9 \\u00e9 \\ud83d\\ude00"', "café é \U0001f600", id="utf-8-and-escapes"),
    pytest.param(b"\xef\xbb\xbf{}", {}, id="utf-8-bom-ignored"),  # RFC 8259 8.1 allows that
    # At the limit: 32 deep.
    pytest.param(nested(MAX_JSON_DEPTH), json.loads(nested(MAX_JSON_DEPTH)), id="arrays-32-deep"),
    pytest.param(objects(MAX_JSON_DEPTH), json.loads(objects(MAX_JSON_DEPTH)), id="objects-32-deep"),
    # Brackets inside strings are not nesting.
    pytest.param(b'["' + b"[" * 2000 + b'"]', ["[" * 2000], id="brackets-in-a-string"),
    pytest.param(b'{"' + b"{" * 100 + b'": "' + b"]" * 100 + b'"}', {"{" * 100: "]" * 100},
                 id="brackets-in-key-and-value"),
    pytest.param(b'["\\"' + b"[" * 100 + b'"]', ['"' + "[" * 100], id="escaped-quote-then-brackets"),
    pytest.param(b'["\\\\", "' + b"[" * 100 + b'"]', ["\\", "[" * 100], id="escaped-backslash"),
    pytest.param(b'["a\\"b\\\\\\"c"]', ['a"b\\"c'], id="escapes-mixed"),
    pytest.param(b"[" * 20 + b'"' + b"]" * 40 + b'"' + b"]" * 20, json.loads(b"[" * 20 + b'"' + b"]" * 40
                 + b'"' + b"]" * 20), id="closers-in-a-string-inside-nesting"),
    # A body at MAX_BODY of one long string.
    pytest.param(b'"' + b"x" * (MAX_BODY - 2) + b'"', "x" * (MAX_BODY - 2), id="max-body-string"),
]


@pytest.mark.parametrize(("body", "value"), GOOD_JSON)
def test_good_json_is_decoded(body: bytes, value: Any) -> None:
    assert json_value(body) == value


def json_or_refused(body: bytes) -> None:
    try:
        json_value(body)
    except HttpError as exc:
        assert exc.status == 400


@FUZZ
@given(st.binary(max_size=2048))
def test_any_bytes_decode_or_raise_http_error(body: bytes) -> None:
    json_or_refused(body)


JSON_PIECES = [b"[", b"]", b"{", b"}", b'"', b"\\", b'\\"', b"\\\\", b":", b",", b"1", b"-", b"e",
               b'"a":', b" ", b"\n", b"null", b"true", b"NaN", b"\xff", b"\xc3\xa9", b"\xed\xa0\x80"]


@FUZZ
@given(st.lists(st.sampled_from(JSON_PIECES), max_size=200), st.integers(0, 3000))
def test_json_soup_decodes_or_raises_http_error(pieces: list[bytes], deep: int) -> None:
    body = b"".join(pieces)
    json_or_refused(body)
    json_or_refused(b"[" * deep + body)
    json_or_refused(body + b"{" * deep)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=30,
)


def depth_of(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth_of, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth_of, value.values()), default=0)
    return 0


@FUZZ
@given(JSON_VALUES, st.booleans())
def test_json_within_the_depth_round_trips(value: Any, ascii: bool) -> None:
    body = json.dumps(value, ensure_ascii=ascii).encode("utf-8")
    if depth_of(value) <= MAX_JSON_DEPTH:
        assert json_value(body) == value
    else:
        refused(json_value, body)


# --- ascii_int ----------------------------------------------------------------------

@pytest.mark.parametrize(("text", "number"), [
    ("0", 0), ("7", 7), ("10", 10), ("000123", 123), ("9" * 18, 10**18 - 1), ("1" + "0" * 17, 10**17),
])
def test_ascii_int_takes_1_to_18_ascii_digits(text: str, number: int) -> None:
    assert ascii_int(text) == number


@pytest.mark.parametrize("text", [
    pytest.param("²", id="superscript-two"),  # '²'.isdigit() is True; int('²') raises
    pytest.param("١", id="arabic-indic-one"),  # int('١') is 1
    pytest.param("１", id="fullwidth-one"),
    pytest.param("1²", id="digit-then-superscript"),
    pytest.param("+1", id="plus"),
    pytest.param("-1", id="minus"),
    pytest.param(" 1", id="leading-space"),
    pytest.param("1 ", id="trailing-space"),
    pytest.param("1\n", id="trailing-newline"),
    pytest.param("\t1", id="leading-tab"),
    pytest.param("1e3", id="exponent"),
    pytest.param("1.0", id="decimal-point"),
    pytest.param("1_000", id="underscore"),
    pytest.param("0x10", id="hex"),
    pytest.param("", id="empty"),
    pytest.param("9" * 19, id="19-digits"),
    pytest.param("1" * 5000, id="5000-digits"),
    pytest.param("ten", id="word"),
])
def test_ascii_int_refuses_everything_else(text: str) -> None:
    assert ascii_int(text) is None


@FUZZ
@given(st.text(max_size=25))
def test_ascii_int_is_int_of_ascii_digits_only(text: str) -> None:
    plain = 1 <= len(text) <= 18 and all(c in "0123456789" for c in text)
    assert ascii_int(text) == (int(text) if plain else None)


# --- form_pairs ---------------------------------------------------------------------

@pytest.mark.parametrize("data", [
    pytest.param(b"user=caf\xc3\xa9", id="raw-utf-8"),
    pytest.param(b"user=\xff", id="raw-byte-ff"),
    pytest.param(b"\xe9=1", id="raw-latin-1-name"),
    pytest.param(b"user=%ff", id="encoded-invalid-utf-8"),
    pytest.param(b"user=%c3", id="encoded-truncated-sequence"),
    pytest.param(b"user=%ed%a0%80", id="encoded-surrogate"),
    pytest.param(b"user=%c0%af", id="encoded-overlong"),
    pytest.param(b"%ff=1", id="encoded-invalid-name"),
    pytest.param(b"user=bob&n=%80", id="bad-second-field"),
])
@pytest.mark.parametrize("blanks", [False, True])
def test_form_pairs_refuses_what_is_not_ascii_or_not_utf_8(data: bytes, blanks: bool) -> None:
    refused(form_pairs, data, blanks)


@pytest.mark.parametrize(("data", "blanks", "pairs"), [
    (b"", False, []),
    (b"user=bob", False, [("user", "bob")]),
    (b"user=bob&n=1&user=ann", False, [("user", "bob"), ("n", "1"), ("user", "ann")]),
    (b"user=a+b%20c", False, [("user", "a b c")]),
    (b"user=caf%C3%A9", False, [("user", "café")]),
    (b"user=%zz", False, [("user", "%zz")]),  # not an escape: kept as sent, as parse_qsl does
    (b"a=1&&b=2", False, [("a", "1"), ("b", "2")]),
    (b"limit=", False, []),
    (b"limit=", True, [("limit", "")]),
    (b"flag", True, [("flag", "")]),
])
def test_form_pairs(data: bytes, blanks: bool, pairs: list[tuple[str, str]]) -> None:
    assert form_pairs(data, blanks) == pairs


@FUZZ
@given(st.binary(max_size=512), st.booleans())
def test_any_form_bytes_parse_or_raise_http_error(data: bytes, blanks: bool) -> None:
    try:
        pairs = form_pairs(data, blanks)
    except HttpError as exc:
        assert exc.status == 400
    else:
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in pairs)
