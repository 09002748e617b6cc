"""Unexpected exceptions: what the server does when its own code (or a library under it)
raises something nobody planned for.

The invariant this serves: every request that was read gets exactly one answer, or its
connection is closed, within a bound. The HTTP side owns the answer (`seckill.http.connection`:
a 500 and a close for the request, a deadline for every answer owed); this module owns
the rest: the count (`seckill_internal_errors_total{site}`) and the log, rate-limited
so that an error hit by every request of a sale cannot flood it: the first at a site
is logged with its traceback, further ones in the same second are summed into one line
by the worker's once-a-second `flush()`. Sites are a fixed set of names in the code,
never anything a client chose.

`SECKILL_INJECT_FAULTS=site[,site...]` (tests only) makes those sites raise
`InjectedFault`, so each answer path's handling can be tested for real.
"""

from __future__ import annotations

import logging
import os
import time

log = logging.getLogger("seckill.faults")

# Seconds between two tracebacks logged for one site.
LOG_INTERVAL = 1.0

INJECTED = frozenset(filter(None, os.environ.get("SECKILL_INJECT_FAULTS", "").split(",")))


class InjectedFault(RuntimeError):
    """Raised where SECKILL_INJECT_FAULTS names the site (tests only)."""


def inject(site: str) -> None:
    """Raise InjectedFault if the tests asked for a fault at this site."""
    if INJECTED and site in INJECTED:
        raise InjectedFault(f"fault injected at {site}")


class Faults:
    """Counts and logs unexpected exceptions per site (one per worker)."""

    __slots__ = ("counts", "_logged_at", "_unlogged")

    def __init__(self, counts: dict[str, int] | None = None) -> None:
        self.counts = {} if counts is None else counts  # site -> exceptions (metrics.WorkerStats')
        self._logged_at: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    def report(self, site: str, exc: BaseException) -> None:
        self.counts[site] = self.counts.get(site, 0) + 1
        now = time.monotonic()
        if now - self._logged_at.get(site, -LOG_INTERVAL) < LOG_INTERVAL:
            self._unlogged[site] = self._unlogged.get(site, 0) + 1
            return
        self._logged_at[site] = now
        log.error("internal error at %s: %r", site, exc, exc_info=exc)

    def flush(self) -> None:
        """Log the errors not logged one by one (the worker's tick, once a second)."""
        if self._unlogged:
            unlogged, self._unlogged = self._unlogged, {}
            for site, more in unlogged.items():
                log.error("%d more internal errors at %s in the last second", more, site)
