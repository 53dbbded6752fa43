"""In-process token buckets, one per key (a MAC address, a source address), with a bounded key count.

Each key's bucket holds at most ``burst`` tokens and refills at ``rate`` tokens a second; a request
takes one token or is refused. The buckets live in this process only: with N replicas behind a load
balancer a client gets up to N times the rate, so what must hold across replicas is enforced in the
database as well (see ``NetbootService.record_report``). At most ``max_keys`` buckets are kept; the
least recently used are forgotten first (a forgotten key starts again with a full bucket).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from diskci.errors import PlatformError


class RateLimited(PlatformError):
    """A client sent more requests than its rate allows; ``retry_after`` is in seconds."""

    http_status = 429

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TokenBuckets:
    """Token buckets keyed by a string: ``allow(key)`` takes a token when one is there."""

    def __init__(
        self,
        *,
        rate: float,
        burst: float,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("TokenBuckets: rate > 0, burst >= 1 and max_keys >= 1 are required")
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key → (tokens, at)
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        """Take one token from ``key``'s bucket; False (and nothing taken) when it is empty."""
        now = self._clock()
        with self._lock:
            tokens, at = self._buckets.pop(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            allowed = tokens >= 1
            if allowed:
                tokens -= 1
            self._buckets[key] = (tokens, now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
            return allowed

    def retry_after(self) -> int:
        """Whole seconds until an empty bucket holds a token again."""
        return max(1, int(1 / self.rate + 0.999))
