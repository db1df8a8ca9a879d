"""The retry policy of failed attempts: exponential backoff with jitter, bounded."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """Delay before the next attempt: ``base * 2**(attempt - 1)``, capped, then ±25% jitter."""

    base_seconds: float = 1.0
    max_seconds: float = 3600.0

    def delay_seconds(self, attempt: int, rng: random.Random | None = None) -> float:
        """Return the delay after failed attempt number ``attempt`` (1 for the first)."""
        exponent = min(max(attempt - 1, 0), 60)
        delay = min(self.max_seconds, self.base_seconds * 2**exponent)
        jitter = (rng or random).uniform(0.75, 1.25)
        return min(self.max_seconds, delay * jitter)
