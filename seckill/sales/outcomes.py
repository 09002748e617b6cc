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


# Each outcome's HTTP status and its word: the answer's "result" and the metric label
# (seckill_purchases_total{result=}). A hold is a win to the buyer and to the counts.
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
}
assert set(ANSWERS) == set(Outcome)

# Plain names for the hot paths: a module global is one dict lookup, `Outcome.WON` two.
WON, SOLD_OUT, UNKNOWN_ITEM, UNAVAILABLE = Outcome.WON, Outcome.SOLD_OUT, Outcome.UNKNOWN_ITEM, Outcome.UNAVAILABLE
ALREADY_BOUGHT, NOT_STARTED, ENDED = Outcome.ALREADY_BOUGHT, Outcome.NOT_STARTED, Outcome.ENDED
USER_REQUIRED, HELD = Outcome.USER_REQUIRED, Outcome.HELD
