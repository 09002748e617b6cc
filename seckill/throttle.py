"""One rule for log lines that a storm could repeat (a Redis outage, a full worker): at
most one per interval, saying how many events it stands for."""

from __future__ import annotations

import time


class Throttle:
    """Counts events; `tick()` says when one may be logged, and for how many."""

    __slots__ = ("interval", "_at", "_count")

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._at = -1e9
        self._count = 0

    def tick(self, events: int = 1) -> int:
        """Count `events`; if a line may be logged now, the events since the last one
        (the caller logs them), else 0."""
        self._count += events
        now = time.monotonic()
        if now - self._at < self.interval:
            return 0
        count, self._count, self._at = self._count, 0, now
        return count
