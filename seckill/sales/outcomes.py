"""What a purchase can come to: one enum, and one table of how each is answered.

The admission script's per-request letters and the shapes of its reply are decoded
beside the script itself (sale_store.ADMIT_LETTERS, sale_store.admit_reply_ok).
"""

from __future__ import annotations

from enum import IntEnum


class Outcome(IntEnum):
    WON = 0
    SOLD_OUT = 1
    UNKNOWN_ITEM = 2
    UNAVAILABLE = 3  # Redis slow or unreachable: the outcome is unknown
    ALREADY_BOUGHT = 4  # the sale's per-user limit
    NOT_STARTED = 5
    ENDED = 6
    USER_REQUIRED = 7  # a per-user limit needs a named buyer
    HELD = 8  # won, as a hold: pending until confirmed or its deadline
    REPLAYED = 9  # a retry of a keyed purchase that won: the first answer again
    KEY_REUSED = 10  # the Idempotency-Key is another buyer's or another sale's
    KEY_IN_FLIGHT = 11  # a retry while the first request with its key is not answered yet


# Each outcome's HTTP status and its word: the answer's "result" and the metric label
# (seckill_purchases_total{result=}). A hold is a win to the buyer and to the counts. A
# replay is answered as the win it repeats (won, with Idempotent-Replayed) and counted
# apart, so the won counts still add up to the units sold.
ANSWERS: dict[Outcome, tuple[int, str]] = {
    Outcome.WON: (200, "won"),
    Outcome.HELD: (200, "won"),
    Outcome.SOLD_OUT: (409, "sold_out"),
    Outcome.ALREADY_BOUGHT: (409, "already_bought"),
    Outcome.UNKNOWN_ITEM: (404, "unknown_item"),
    Outcome.NOT_STARTED: (403, "not_started"),
    Outcome.ENDED: (403, "ended"),
    Outcome.USER_REQUIRED: (400, "user_required"),
    Outcome.UNAVAILABLE: (503, "unavailable"),
    Outcome.REPLAYED: (200, "replayed"),
    Outcome.KEY_REUSED: (422, "key_reused"),
    Outcome.KEY_IN_FLIGHT: (409, "in_flight"),
}
assert set(ANSWERS) == set(Outcome)

# Plain names for the hot paths: a module global is one dict lookup, `Outcome.WON` two.
WON, SOLD_OUT, UNKNOWN_ITEM, UNAVAILABLE = Outcome.WON, Outcome.SOLD_OUT, Outcome.UNKNOWN_ITEM, Outcome.UNAVAILABLE
ALREADY_BOUGHT, NOT_STARTED, ENDED = Outcome.ALREADY_BOUGHT, Outcome.NOT_STARTED, Outcome.ENDED
USER_REQUIRED, HELD, REPLAYED = Outcome.USER_REQUIRED, Outcome.HELD, Outcome.REPLAYED
KEY_REUSED, KEY_IN_FLIGHT = Outcome.KEY_REUSED, Outcome.KEY_IN_FLIGHT
