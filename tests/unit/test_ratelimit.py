"""The token buckets, driven by a clock the test moves: burst, refill, the 429's headers,
and memory bounded under a flood of distinct keys."""

from __future__ import annotations

import pytest

from seckill.app import ratelimit
from seckill.app.ratelimit import Limiter, Rate


@pytest.mark.parametrize(("text", "rate"), [
    ("5", Rate(5.0, 5)), ("5/s", Rate(5.0, 5)), ("0.5/s:3", Rate(0.5, 3)), ("10:1", Rate(10.0, 1)),
    ("0.2", Rate(0.2, 1)),
])
def test_rates_parse(text: str, rate: Rate) -> None:
    assert Rate.parse(text) == rate


@pytest.mark.parametrize("text", ["", "0", "-1", "5/m", "5:0", "5:x", "x", "5/s:2:3", "1e9", "5 /s"])
def test_bad_rates_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        Rate.parse(text)


def test_a_burst_then_one_token_per_interval() -> None:
    limiter = Limiter("ip", Rate(2.0, 3))
    now = 1000.0
    assert [limiter.take("a", now) for _ in range(3)] == [0.0, 0.0, 0.0]  # the burst
    assert limiter.take("a", now) == pytest.approx(0.5)  # empty: a token in 1/2 s
    assert limiter.take("b", now) == 0.0  # another key has its own bucket
    assert limiter.take("a", now + 0.49) == pytest.approx(0.01)
    assert limiter.take("a", now + 0.5) == 0.0  # refilled by the clock
    assert limiter.take("a", now + 0.5) > 0
    assert [limiter.take("a", now + 10) for _ in range(3)] == [0.0, 0.0, 0.0]  # refills to the burst, no more
    assert limiter.take("a", now + 10) > 0


def test_the_429_headers_follow_the_draft() -> None:
    limiter = Limiter("user", Rate(0.5, 4))
    headers = limiter.headers(1.2)
    assert headers == (b"Retry-After: 2\r\n"
                       b'RateLimit-Policy: "user";q=4;w=8\r\n'
                       b'RateLimit: "user";r=0;t=2\r\n')


def test_a_flood_of_distinct_keys_stays_under_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ratelimit, "MAX_BUCKETS", 1000)
    limiter = Limiter("ip", Rate(1.0, 1))
    for i in range(100_000):
        limiter.take(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 5.0 + i * 1e-6)
        assert len(limiter) <= 1000
    # Idle buckets (refilled) are what goes first: a key that has waited is as new.
    limiter.take("busy", 10.0)
    assert limiter.take("busy", 10.0) > 0


def test_a_flood_of_busy_keys_is_not_rescanned_every_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ratelimit, "MAX_BUCKETS", 1000)
    # A new key every 1.1 ms, each refilled 1 s after it came: at each scan only the oldest
    # ~10 % are idle (dropping just those would mean a scan every ~90 keys).
    limiter = Limiter("ip", Rate(1.0, 2))
    scans = 0
    prune = Limiter._prune

    def counted(self: Limiter, now: float) -> None:
        nonlocal scans
        scans += 1
        prune(self, now)

    monkeypatch.setattr(Limiter, "_prune", counted)
    for i in range(10_000):
        limiter.take(f"k{i}", i * 0.0011)
        assert len(limiter) <= 1000
    assert scans <= 10_000 // 500 + 1  # a scan per MAX_BUCKETS / 2 new keys at most
