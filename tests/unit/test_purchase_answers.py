"""The fixed answers of purchases (app/purchases.py): what they say, per connection mode,
and that a kept one never outlives its Date header."""

from __future__ import annotations

import pytest

from seckill.app.purchases import PurchaseAnswers
from seckill.http import responses
from seckill.http.responses import CLOSE, KEEP, KEEP_10, Responses
from seckill.sales import outcomes


@pytest.mark.parametrize(("mode", "connection"), [(KEEP, None), (KEEP_10, b"keep-alive"), (CLOSE, b"close")])
def test_sold_out_answer_and_decision(mode: int, connection: bytes | None) -> None:
    answers = PurchaseAnswers(Responses())
    for _ in range(2):  # built, then kept
        answer = answers.refused("phone", outcomes.SOLD_OUT, mode)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 409 Conflict\r\n")
        assert body == b'{"result":"sold_out","item":"phone"}'
        assert (b"\r\nConnection: " + connection in head) if connection else b"Connection:" not in head
        assert answers.decided == (outcomes.SOLD_OUT, "phone", None)
        answers.decided = None


def test_a_kept_answer_goes_with_its_date(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(responses, "formatdate", lambda usegmt: "Thu, 03 Dec 2026 10:00:00 GMT")
    kept = Responses()
    answers = PurchaseAnswers(kept)
    assert b"Date: Thu, 03 Dec 2026 10:00:00 GMT\r\n" in answers.sold_out("phone", KEEP)
    monkeypatch.setattr(responses, "formatdate", lambda usegmt: "Thu, 03 Dec 2026 10:00:01 GMT")
    kept.refresh_date()
    assert b"Date: Thu, 03 Dec 2026 10:00:01 GMT\r\n" in answers.sold_out("phone", KEEP)
