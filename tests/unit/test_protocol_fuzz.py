"""Property tests for the request parser (h11's fuzz/afl-server.py invariant, and more).

For any bytes the parser yields requests or raises `HttpError`, never anything else; and
how the bytes are split across reads changes nothing: fed whole, in arbitrary chunks or
byte by byte, the same requests come out and the same status ends the connection.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seckill.http import protocol
from seckill.http.protocol import HttpError, RequestParser
from support.helpers import ROOT
from support.parser_cases import PIECES, SEEDS, SPECIAL, chop, parse

FUZZ = settings(max_examples=400, deadline=None)

def check_splits(data: bytes, cuts: list[int]) -> None:
    whole = parse([data])
    assert parse(chop(data, cuts)) == whole
    assert parse([data[i : i + 1] for i in range(len(data))]) == whole


def cuts_for(data: bytes) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, len(data)), max_size=8)


@FUZZ
@given(st.binary(max_size=512))
def test_any_bytes_parse_or_raise_http_error(data: bytes) -> None:
    parse([data])


@FUZZ
@given(st.data())
def test_any_bytes_split_anywhere_same_outcome(data: st.DataObject) -> None:
    raw = data.draw(st.binary(max_size=512), label="raw")
    check_splits(raw, data.draw(cuts_for(raw), label="cuts"))


@FUZZ
@given(st.data())
def test_grammar_soup_split_anywhere_same_outcome(data: st.DataObject) -> None:
    raw = b"".join(data.draw(st.lists(st.sampled_from(PIECES), max_size=60), label="pieces"))
    check_splits(raw, data.draw(cuts_for(raw), label="cuts"))


@st.composite
def mutated_seed(draw: st.DrawFn) -> bytes:
    """A valid request (or pipeline) with a few bytes inserted, deleted or replaced."""
    raw = bytearray(draw(st.sampled_from(SEEDS)))
    byte = st.one_of(st.sampled_from(SPECIAL), st.binary(min_size=1, max_size=1))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        if op == "insert":
            at = draw(st.integers(0, len(raw)))
            raw[at:at] = draw(byte)
        elif raw:
            at = draw(st.integers(0, len(raw) - 1))
            raw[at : at + 1] = b"" if op == "delete" else draw(byte)
    return bytes(raw)


@FUZZ
@given(st.data())
def test_mutated_request_split_anywhere_same_outcome(data: st.DataObject) -> None:
    raw = data.draw(mutated_seed(), label="raw")
    check_splits(raw, data.draw(cuts_for(raw), label="cuts"))


@FUZZ
@given(st.sampled_from(SEEDS), st.data())
def test_valid_seed_split_anywhere_parses_fully(seed: bytes, data: st.DataObject) -> None:
    outcomes, state = parse(chop(seed, data.draw(cuts_for(seed), label="cuts")))
    assert state == (0, False)
    assert outcomes and all(o[0] == "request" for o in outcomes)
    assert outcomes == parse([seed])[0]


def parse_cold_then_warm(raw: bytes) -> None:
    """Parsed with the memos empty, then again with them full of what the first parse put
    there: the same outcome (next_request's short road for a known header block, and the
    whole-head memo, give what parsing gives)."""
    protocol._BODYLESS.clear()
    protocol._HEADER_BLOCKS.clear()
    cold = parse([raw])
    assert parse([raw]) == cold


@FUZZ
@given(st.data())
def test_mutated_request_same_outcome_with_memos_warm(data: st.DataObject) -> None:
    parse_cold_then_warm(data.draw(mutated_seed(), label="raw"))


@FUZZ
@given(st.data())
def test_grammar_soup_same_outcome_with_memos_warm(data: st.DataObject) -> None:
    parse_cold_then_warm(b"".join(data.draw(st.lists(st.sampled_from(PIECES), max_size=60), label="pieces")))


@FUZZ
@given(
    line=st.sampled_from([b"GET /a?user=%d HTTP/1.1", b"GET /a?u=%d HTTP/1.0", b"POST /a?%d HTTP/1.1",
                          b"GET /a?%d#f HTTP/1.1", b"GET http://h/a?%d HTTP/1.1", b"GETTINGLONG /?%d HTTP/1.1",
                          b"GET /?%d HTTP/1.2", b"GET  /?%d HTTP/1.1"]),
    block=st.sampled_from([b"Host: h", b"Host: h\r\nConnection: close", b"Host: h\r\nHost: h", b"X: y",
                           b"Host: h\r\nContent-Length: 0", b"Host: h\r\nContent-Length: 2",
                           b"Host: h\r\nTransfer-Encoding: chunked", b"Host: h\r\nExpect: 100-continue",
                           b"Host: h\r\nIdempotency-Key: \"k\"", b"Host: h\r\nConnection: keep-alive"]),
    numbers=st.lists(st.integers(0, 10**6), min_size=2, max_size=4),
)
def test_one_off_heads_of_a_known_block_as_parsed_whole(line: bytes, block: bytes, numbers: list[int]) -> None:
    """Requests that differ only in their query (distinct buyers), after the first one's
    header block is memoised: each is what a parser with empty memos makes of it."""
    raws = [line % n + b"\r\n" + block + b"\r\n\r\nok" for n in numbers]
    protocol._HEADER_BLOCKS.clear()
    warm = [parse([raw]) for raw in raws]
    for raw, outcome in zip(raws, warm, strict=True):
        protocol._BODYLESS.clear()
        protocol._HEADER_BLOCKS.clear()
        assert parse([raw]) == outcome


@FUZZ
@given(
    target=st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40),
    minor=st.sampled_from(["0", "1"]),
)
def test_origin_form_targets_split_as_the_rfc_says(target: str, minor: str) -> None:
    """The one-regex road for origin-form request lines gives what the general reading
    gives: a fragment is refused, else path and query split at the first '?'."""
    raw = f"GET /{target} HTTP/1.{minor}\r\nHost: t\r\n\r\n".encode()
    parser = RequestParser()
    parser.feed(raw)
    if "#" in target:
        with pytest.raises(HttpError) as info:
            parser.next_request()
        assert info.value.status == 400
        return
    request = parser.next_request()
    assert request is not None
    path, _, query = f"/{target}".encode().partition(b"?")
    assert (request.target, request.path, request.query) == (f"/{target}".encode(), path, query)
    assert request.http10 == (minor == "0")


def test_atheris_harness_holds_the_same_invariant() -> None:
    """fuzz/fuzz_parser.py (coverage-guided, `make fuzz`) for a short run: it exits 0
    only if no input broke the invariant."""
    pytest.importorskip("atheris", reason="atheris installs on Linux x86_64 only")
    result = subprocess.run(
        [sys.executable, "-m", "fuzz.fuzz_parser", "-runs=30000", "-seed=1"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Done 30000 runs" in result.stderr
