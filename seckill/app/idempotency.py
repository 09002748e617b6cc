"""Idempotency-Key (draft-ietf-httpapi-idempotency-key-header): retry-safe purchases.

A purchase may carry `Idempotency-Key: "<key>"`, a structured-field string (RFC 8941
3.3.3) of 1 to MAX_KEY characters. The admission script records a keyed purchase's win
under the sale's hash tag, with the buyer, in the same atomic call that grants it
(sale_store.ADMIT_LUA's keyed call), for --idempotency-ttl seconds; a retry with the
same key by the same buyer gets that win again (200, `Idempotent-Replayed: true`) and
changes nothing, from any worker or server. The answers of the draft:

  400  the key is malformed (not one sf-string, empty, or too long)
  409  a retry while this worker still has the first request unanswered (another
       worker's retry meets the record or is decided afresh, which is as safe)
  422  the key won for another buyer, or (plain Redis) in another sale

Only wins are recorded: a request that won nothing changed nothing, so its retry is
simply decided again; the records are bounded by the stock, not by what clients send.
"""

from __future__ import annotations

import re

from seckill.http.protocol import HttpError

MAX_KEY = 64  # characters: a UUID is 36; bounds the record key Redis keeps for a day

# One sf-string, with the spaces a field value may have around it: printable ASCII, `"`
# and `\` escaped by `\`.
_SF_STRING = re.compile(rb' *"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)" *')
_ESCAPE = re.compile(rb'\\(["\\])')


def parse_key(value: bytes) -> str:
    """The key an Idempotency-Key field names; HttpError(400) if it is not one sf-string of
    1 to MAX_KEY characters."""
    match = _SF_STRING.fullmatch(value)
    if match is None:
        raise HttpError(400, 'Idempotency-Key must be one quoted string, e.g. Idempotency-Key: "8e03978e-40d5"')
    key = _ESCAPE.sub(rb"\1", match.group(1))
    if not 0 < len(key) <= MAX_KEY:
        raise HttpError(400, f"Idempotency-Key must be 1 to {MAX_KEY} characters")
    return key.decode("ascii")
