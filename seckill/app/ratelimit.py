"""Rate limits on purchases: a token bucket per client address and per buyer.

`--rate-per-ip RATE[/s][:BURST]` and `--rate-per-user RATE[/s][:BURST]`: each key may
spend BURST requests at once and RATE a second after that. The client is the peer, or the
address a trusted proxy names (`--forwarded-allow-ips`): a client that is not a trusted
proxy cannot change its address with a header. Buckets live in each worker (no Redis
round trip), so N workers admit up to N x the rate; nginx's `limit_req` in front gives a
host-wide bound (deploy/nginx.conf).

Memory is bounded: at MAX_BUCKETS keys, the buckets that have refilled (idle keys, which
would be created afresh exactly as they are) are dropped, and if that frees less than a
quarter, the oldest go down to half the cap: a flood of distinct addresses cannot grow memory past the cap (its
keys are then limited less exactly, never more).

Past the limit: `429 {"result":"rate_limited"}` with `Retry-After` and the IETF fields
(draft-ietf-httpapi-ratelimit-headers): `RateLimit-Policy: "<scope>";q=BURST;w=SECONDS`
(w: the time to refill the whole burst) and `RateLimit: "<scope>";r=0;t=SECONDS`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

MAX_BUCKETS = 100_000  # keys per limiter per worker: ~15 MB at worst
_SPEC = re.compile(r"([0-9]+(?:\.[0-9]+)?)(?:/s)?(?::([0-9]+))?")


@dataclass(frozen=True)
class Rate:
    per_second: float
    burst: int

    @classmethod
    def parse(cls, text: str) -> Rate:
        """`RATE[/s][:BURST]`, e.g. `5`, `5/s`, `0.5/s:3` (BURST: at least 1, default RATE)."""
        match = _SPEC.fullmatch(text.strip())
        if match is None:
            raise ValueError(f"{text!r} is not RATE[/s][:BURST], e.g. 5/s:10")
        rate = float(match.group(1))
        burst = int(match.group(2)) if match.group(2) else max(1, math.ceil(rate))
        if rate <= 0 or not 1 <= burst <= 1_000_000 or rate > 1_000_000:
            raise ValueError(f"{text!r}: the rate must be above 0 and the burst from 1 to 1,000,000")
        return cls(rate, burst)


class Limiter:
    """Token buckets for one scope ("ip" or "user"). `take(key, now)` spends a token:
    0.0 if there was one, else the seconds until there is."""

    __slots__ = ("scope", "rate", "_buckets", "policy")

    def __init__(self, scope: str, rate: Rate) -> None:
        self.scope = scope
        self.rate = rate
        self._buckets: dict[str | bytes, tuple[float, float]] = {}  # key -> (tokens, when)
        window = rate.burst / rate.per_second
        self.policy = b'RateLimit-Policy: "%s";q=%d;w=%d\r\n' % (scope.encode(), rate.burst, math.ceil(window))

    def take(self, key: str | bytes, now: float) -> float:
        buckets = self._buckets
        rate = self.rate
        held = buckets.get(key)
        if held is None:
            if len(buckets) >= MAX_BUCKETS:
                self._prune(now)
            tokens = float(rate.burst)
        else:
            tokens = min(float(rate.burst), held[0] + (now - held[1]) * rate.per_second)
        if tokens >= 1.0:
            buckets[key] = (tokens - 1.0, now)
            return 0.0
        buckets[key] = (tokens, now)
        return (1.0 - tokens) / rate.per_second

    def headers(self, wait: float) -> bytes:
        """The 429's extra headers for a wait of `wait` seconds."""
        seconds = max(1, math.ceil(wait))
        return b'Retry-After: %d\r\n%sRateLimit: "%s";r=0;t=%d\r\n' % (
            seconds, self.policy, self.scope.encode(), seconds)

    def __len__(self) -> int:
        return len(self._buckets)

    def _prune(self, now: float) -> None:
        rate, buckets = self.rate, self._buckets
        full = [k for k, (tokens, when) in buckets.items() if tokens + (now - when) * rate.per_second >= rate.burst]
        for key in full:
            del buckets[key]
        if len(buckets) > MAX_BUCKETS * 3 // 4:
            # Few were idle: the oldest go too (dicts keep insertion order), down to half the
            # cap, so the next scan is at least MAX_BUCKETS / 2 new keys away (never one a request).
            for key in list(buckets)[: len(buckets) - MAX_BUCKETS // 2]:
                del buckets[key]
