"""Client bodies and query strings, parsed so that the only thing they can raise is
`HttpError` (a 400 or 415 for the client), never an exception of ours.

A request body is at most `protocol.MAX_BODY` bytes, but JSON that nests a thousand
levels deep makes the decoder recurse past Python's limit (`RecursionError`), so its
depth is bounded before it is decoded. JSON is UTF-8 only (RFC 8259 8.1) and strictly
JSON: `json.loads(bytes)` would also take UTF-16/32, UTF-8-encoded surrogates
(`surrogatepass`) and NaN/Infinity. Query strings and forms go through `parse_qsl`
in strict mode; admin numbers are ASCII digits only (`'²'.isdigit()` is true, and
`int('²')` raises).
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl

from seckill.http.protocol import HttpError

# JSON nesting a body may have: ours are flat objects ({"user": ...}, a sale's terms).
# Bounds the decoder's recursion, far below Python's limit of ~1000 frames.
MAX_JSON_DEPTH = 32

# A JSON string (so that brackets inside strings do not count), or a bracket. DOTALL: an
# escaped newline (invalid, refused by the decoder) must not end the string early and
# shift every later string boundary; unrolled ([^"\\]* runs) to stay linear and quick.
_STRING_OR_BRACKET = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[\]{}]', re.DOTALL)
_DIGITS = re.compile(r"[0-9]{1,18}")  # ASCII only; 18 digits stay below 2**63


def json_value(body: bytes) -> Any:
    """The JSON a body holds; HttpError(400) if it is not JSON or nests too deep."""
    depth = 0
    for match in _STRING_OR_BRACKET.finditer(body):
        char = match.group()
        if char in (b"[", b"{"):
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise HttpError(400, f"JSON nests deeper than {MAX_JSON_DEPTH} levels")
        elif char in (b"]", b"}"):
            depth -= 1
    try:
        # utf-8-sig: strict UTF-8, a leading BOM ignored (RFC 8259 8.1 allows that much).
        return json.loads(body.decode("utf-8-sig"), parse_constant=_not_json)
    except (ValueError, RecursionError):  # (UnicodeDecodeError is a ValueError)
        raise HttpError(400, "the body is not valid JSON") from None


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def form_pairs(data: bytes, blanks: bool = False) -> list[tuple[str, str]]:
    """A query string or urlencoded form as (name, value) pairs, as parse_qsl gives them
    (`blanks`: keep fields without a value); HttpError(400) if malformed."""
    if not data:
        return []
    try:
        return parse_qsl(data.decode("ascii"), keep_blank_values=blanks, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise HttpError(400, "malformed query string or form") from None


def ascii_int(text: str) -> int | None:
    """A number of ASCII digits (at most 18), or None for anything else."""
    return int(text) if _DIGITS.fullmatch(text) else None
