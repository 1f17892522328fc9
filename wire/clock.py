"""The clock every cortexloop process stamps events with on one machine."""

from __future__ import annotations

import time


def now() -> float:
    """Seconds on the monotonic clock (CLOCK_MONOTONIC on Linux, as ``pylsl.local_clock``)."""
    return time.monotonic()
